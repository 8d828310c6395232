# Every row of the protection table, through the whole tick: no trip before
# its delay, trip at the delay, the right FETs, recovery only past the
# recovery threshold and after the recovery delay, latched rows need 'clear'.
from bms import config
from bms.afe import HW_SCD, NTC_OPEN, NTC_SHORT
from bms.protection import NAMES, build_table, CHG, DSG, BOTH
from helpers import FakeAfe, make_bms, run


def _set(what, value):
    """An action that puts one reading of the fake front-end at value."""
    def f(afe):
        if what == "cell":
            afe.cells_mv[2] = value
        elif what == "current":
            afe.current_ma = value
        elif what == "temp":
            afe.temps_c[1] = value
        else:
            afe.board_c = value
    return f


def _normal(afe):
    afe.cells_mv = [3300] * 4
    afe.current_ma = 0
    afe.temps_c = [25, 25]
    afe.board_c = 30
    afe.hw_faults = 0
    afe.fail = None
    afe.temp_status = [0, 0]


# name, trip action, delay ms, hold action (past trip, not past recovery),
# recover action, recovery ms, FETs the row opens, FETs open after the trip
# (otd and utd come with otc and utc: a cell at 60 degC is past 45 as well)
ROWS = (
    ("cell_ov", _set("cell", 3650), 1000, _set("cell", 3450), _set("cell", 3449), 2000, CHG, CHG),
    ("cell_uv", _set("cell", 2800), 2000, _set("cell", 3100), _set("cell", 3101), 2000, DSG, DSG),
    ("occ", _set("current", 50000), 2000, _set("current", 45000), _set("current", 44999), 30000, CHG, CHG),
    ("ocd1", _set("current", -100000), 2000, _set("current", -90000), _set("current", -89999), 30000, DSG, DSG),
    ("ocd2", _set("current", -150000), 200, _set("current", -90000), _set("current", -89999), 30000, DSG, DSG),
    ("otc", _set("temp", 45), 2000, _set("temp", 40), _set("temp", 39.9), 5000, CHG, CHG),
    ("utc", _set("temp", 0), 2000, _set("temp", 5), _set("temp", 5.1), 5000, CHG, CHG),
    ("otd", _set("temp", 60), 2000, _set("temp", 55), _set("temp", 54.9), 5000, DSG, BOTH),
    ("utd", _set("temp", -20), 2000, _set("temp", -15), _set("temp", -14.9), 5000, DSG, BOTH),
    ("ot_board", _set("board", 80), 2000, _set("board", 75), _set("board", 74.9), 5000, BOTH, BOTH),
)


def _fets_open(afe):
    return (0 if afe.chg else CHG) | (0 if afe.dsg else DSG)


def _check_row(name, trip, delay_ms, hold, recover, recover_ms, opens, outcome):
    bms, afe = make_bms()
    run(bms, 3)
    assert afe.chg and afe.dsg, name
    assert bms.fets.state_name() == "normal"
    d = delay_ms // 100
    trip(afe)
    run(bms, d)
    assert name not in bms_faults(bms), "%s tripped before its delay" % name
    assert afe.chg and afe.dsg, name
    run(bms, 1)
    assert name in bms_faults(bms), "%s did not trip at its delay" % name
    assert bms.prot.table.fets[NAMES.index(name)] == opens, name
    assert _fets_open(afe) == outcome, name
    # Holding between the trip and recovery thresholds never recovers.
    hold(afe)
    run(bms, recover_ms // 100 * 3 + 5)
    assert name in bms_faults(bms), "%s recovered before its threshold" % name
    recover(afe)
    run(bms, recover_ms // 100)
    assert name in bms_faults(bms), "%s recovered before its delay" % name
    run(bms, 1)
    assert name not in bms_faults(bms), "%s did not recover" % name
    # Back to a healthy pack: every row (incl. companions) recovers.
    _normal(afe)
    run(bms, 301)
    assert afe.chg and afe.dsg, name


def bms_faults(bms):
    return bms.prot.names(bms.prot.active)


def test_every_value_row_trips_at_its_delay_and_recovers_past_hysteresis():
    for row in ROWS:
        _check_row(*row)


def test_ov_opens_only_chg_and_uv_opens_only_dsg():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 11)
    assert not afe.chg and afe.dsg
    assert bms.fets.state_name() == "discharge"
    afe.cells_mv[0] = 3300
    afe.cells_mv[1] = 2700
    run(bms, 21)
    assert afe.chg and not afe.dsg
    assert bms.fets.state_name() == "charge"


def test_condition_that_ends_before_the_delay_resets_the_count():
    bms, afe = make_bms()
    run(bms, 2)
    for _ in range(5):
        afe.cells_mv[3] = 3700
        run(bms, 10)
        afe.cells_mv[3] = 3300
        run(bms, 1)
    assert "cell_ov" not in bms_faults(bms)
    assert afe.chg


def test_warning_before_trip_switches_nothing():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[0] = 3610  # warn 3600, trip 3650
    afe.temps_c[0] = 43  # otc warns at 42
    run(bms, 100)
    p = bms.prot
    assert p.names(p.warning) == ["cell_ov", "otc"]
    assert bms_faults(bms) == []
    assert afe.chg and afe.dsg


def test_short_circuit_latches_until_clear():
    bms, afe = make_bms()
    run(bms, 2)
    afe.hw_faults = HW_SCD
    run(bms, 1)
    assert "scd" in bms_faults(bms)
    assert not afe.chg and not afe.dsg
    assert bms.fets.state_name() == "fault"
    # The short is gone but the fault stays until the user clears it.
    afe.hw_faults = 0
    run(bms, 1000)
    assert "scd" in bms_faults(bms)
    assert not afe.chg and not afe.dsg
    assert bms.clear() == (1, [])
    assert afe.cleared == 1
    run(bms, 1)
    assert bms_faults(bms) == []
    assert afe.chg and afe.dsg


def test_clear_while_hardware_still_reports_the_short_keeps_it_latched():
    bms, afe = make_bms()
    run(bms, 2)
    afe.hw_faults = HW_SCD
    afe.short_present = True
    run(bms, 1)
    assert bms.clear() == (0, ["scd"])
    run(bms, 5)
    assert "scd" in bms_faults(bms)
    assert not afe.chg and not afe.dsg


def test_clear_with_short_still_present_trips_again():
    bms, afe = make_bms()
    run(bms, 2)
    afe.hw_faults = HW_SCD
    run(bms, 1)
    afe.fail = None
    bms.prot.clear_latched()  # without afe.clear_faults the flag is still up
    run(bms, 1)
    assert "scd" in bms_faults(bms)
    assert not afe.dsg


def test_open_and_shorted_thermistor_is_a_sensor_fault_opening_both():
    for status in (NTC_OPEN, NTC_SHORT):
        bms, afe = make_bms()
        run(bms, 2)
        afe.temp_status[1] = status
        run(bms, 5)
        assert "sensor" not in bms_faults(bms)
        assert "sensor" in bms.prot.names(bms.prot.warning)
        run(bms, 1)
        assert "sensor" in bms_faults(bms)
        assert not afe.chg and not afe.dsg
        afe.temp_status[1] = 0
        run(bms, 20)
        assert "sensor" in bms_faults(bms)
        run(bms, 1)
        assert bms_faults(bms) == []
        assert afe.chg and afe.dsg


def test_implausible_cell_reading_is_a_sensor_fault():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[1] = 0  # broken tap wire
    run(bms, 6)
    assert "sensor" in bms_faults(bms)
    assert not afe.chg and not afe.dsg
    # A broken reading never counts as under-voltage: rows hold.
    assert "cell_uv" not in bms_faults(bms)


def test_stale_reading_is_a_sensor_fault():
    bms, afe = make_bms()
    run(bms, 2)
    afe.fresh = False
    run(bms, 5)
    assert afe.chg and afe.dsg
    run(bms, 1)
    assert "sensor" in bms_faults(bms)
    assert not afe.chg and not afe.dsg


def test_front_end_that_stops_answering_opens_both_with_afe_comm():
    bms, afe = make_bms()
    run(bms, 2)
    afe.fail = OSError(5)
    run(bms, 5)
    assert afe.chg and afe.dsg
    assert bms.comm_errors == 5
    run(bms, 1)
    assert "afe_comm" in bms_faults(bms)
    assert not afe.chg and not afe.dsg
    afe.fail = None
    run(bms, 21)
    assert bms_faults(bms) == []
    assert afe.chg and afe.dsg


def test_rows_hold_while_the_reading_is_missing():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 5)
    afe.fail = OSError(5)
    run(bms, 3)
    afe.fail = None
    run(bms, 5)  # 5 + 5 valid ticks: still one short of the 10-tick delay
    assert "cell_ov" not in bms_faults(bms)
    run(bms, 1)
    assert "cell_ov" in bms_faults(bms)


def test_table_has_one_row_per_protection_in_name_order():
    t = build_table(config.defaults("lfp"))
    assert len(NAMES) == 14
    assert [t.describe(r)["name"] for r in range(14)] == list(NAMES)
    assert t.describe(0)["opens"] == "chg"
    assert t.describe(1)["opens"] == "dsg"
    for name in ("sensor", "afe_comm", "config", "scd", "ot_board"):
        assert t.describe(NAMES.index(name))["opens"] == "chg+dsg"
    assert t.describe(NAMES.index("scd"))["latch"]


def test_delay_rounds_up_to_whole_ticks():
    # 250 ms at 100 ms ticks: never before 250 ms, so the third tick after.
    bms, afe = make_bms(cell_ov_delay_ms=250)
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 3)
    assert "cell_ov" not in bms_faults(bms)
    run(bms, 1)
    assert "cell_ov" in bms_faults(bms)


def test_zero_delay_trips_on_first_tick():
    bms, afe = make_bms(cell_ov_delay_ms=0)
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 1)
    assert "cell_ov" in bms_faults(bms)
    assert not afe.chg


def test_boot_into_a_fault_never_closes_the_fet_it_forbids():
    # At power-up delays do not apply: no FET closes into a present fault.
    for cells, temps, closed_chg, closed_dsg, fault in (
        ([3750, 3300, 3300, 3300], [25, 25], False, True, "cell_ov"),
        ([2500, 3300, 3300, 3300], [25, 25], True, False, "cell_uv"),
        ([3300, 3300, 3300, 3300], [70, 25], False, False, "otd"),
    ):
        afe = FakeAfe()
        afe.cells_mv = cells
        afe.temps_c = temps
        bms, afe = make_bms(afe)
        for _ in range(15):
            run(bms, 1)
            assert afe.chg == closed_chg and afe.dsg == closed_dsg, (fault, afe.chg, afe.dsg)
        assert fault in bms_faults(bms)


def test_over_current_still_trips_while_a_cell_tap_is_broken():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[1] = 0
    afe.current_ma = -160000
    run(bms, 3)  # ocd2: 200 ms; the sensor row would take 500 ms
    assert "ocd2" in bms_faults(bms)
    assert not afe.dsg


def test_tick_period_change_keeps_pending_delays_in_time():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 6)  # 600 ms of the 1000 ms delay
    bms.apply_config(bms.cfg.with_value("tick_ms", "200"))
    run(bms, 2)  # 1000 ms: not yet (counting restarted at 600 ms, one tick late at most)
    assert "cell_ov" not in bms_faults(bms)
    run(bms, 1)
    assert "cell_ov" in bms_faults(bms)
