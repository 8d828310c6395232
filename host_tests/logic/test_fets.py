# FET state machine: boot with FETs off, manual commands obeyed only where no
# protection forbids them, ship mode, precharge with bounded retries.
from bms.fets import Fets
from bms.protection import CHG, DSG
from helpers import FakeAfe, make_bms, run


def test_boot_keeps_fets_off_until_first_valid_measurement():
    afe = FakeAfe()
    afe.fail = OSError(5)
    bms, afe = make_bms(afe)
    run(bms, 3)
    assert bms.fets.state_name() == "boot"
    assert not afe.chg and not afe.dsg
    afe.fail = None
    afe.fresh = False
    run(bms, 3)
    assert bms.fets.state_name() == "boot"
    assert not afe.chg and not afe.dsg
    afe.fresh = True
    afe.temp_status[0] = 1  # open thermistor: not a complete valid reading
    run(bms, 1)
    assert bms.fets.state_name() == "boot"
    afe.temp_status[0] = 0
    run(bms, 1)
    assert bms.fets.state_name() == "normal"
    assert afe.chg and afe.dsg


def test_manual_off_and_on():
    bms, afe = make_bms()
    run(bms, 2)
    assert bms.request_fet(DSG, False) == ""
    run(bms, 1)
    assert afe.chg and not afe.dsg
    assert bms.fets.state_name() == "charge"
    assert bms.request_fet(CHG, False) == ""
    run(bms, 1)
    assert bms.fets.state_name() == "standby"
    assert bms.request_fet(CHG | DSG, True) == ""
    run(bms, 1)
    assert afe.chg and afe.dsg


def test_manual_on_refused_while_protection_forbids():
    bms, afe = make_bms()
    run(bms, 2)
    afe.cells_mv[0] = 3700
    run(bms, 11)
    assert not afe.chg
    why = bms.request_fet(CHG, True)
    assert why == "CHG held off by cell_ov"
    run(bms, 5)
    assert not afe.chg
    # Switching off is always obeyed.
    assert bms.request_fet(DSG, False) == ""
    run(bms, 1)
    assert not afe.dsg
    assert bms.fets.state_name() == "fault"


def test_ship_mode_turns_everything_off_until_switched_on():
    bms, afe = make_bms()
    run(bms, 2)
    bms.ship()
    run(bms, 5)
    assert not afe.chg and not afe.dsg
    assert bms.fets.state_name() == "shutdown"
    bms.request_fet(CHG | DSG, True)
    run(bms, 1)
    assert afe.chg and afe.dsg


def _precharge_bms(**cfg):
    afe = FakeAfe(precharge=True)
    return make_bms(afe, precharge_ms=500, precharge_ma=500, precharge_retries=2, **cfg)


def test_precharge_closes_dsg_once_inrush_has_decayed():
    bms, afe = _precharge_bms()
    afe.current_ma = -20000  # inrush into the load's capacitors
    run(bms, 1)
    assert afe.chg and not afe.dsg and afe.pchg
    assert bms.fets.state_name() == "precharge"
    run(bms, 3)
    assert not afe.dsg and afe.pchg
    afe.current_ma = -100
    run(bms, 1)
    assert afe.dsg and not afe.pchg
    assert bms.fets.state_name() == "normal"


def test_precharge_gives_up_after_bounded_retries():
    bms, afe = _precharge_bms()
    afe.current_ma = -20000  # a load that never stops drawing: a short behind the precharge resistor
    on_ticks = 0
    for _ in range(200):
        run(bms, 1)
        on_ticks += 1 if afe.pchg else 0
        assert not afe.dsg
    assert bms.fets.precharge_failed
    assert not afe.pchg
    # 3 attempts (1 + 2 retries) of 5 ticks each
    assert on_ticks == 15
    assert bms.fets.state_name() == "charge"
    # The user can try again.
    afe.current_ma = 0
    bms.request_fet(DSG, True)
    run(bms, 3)
    assert afe.dsg


def test_fets_state_names():
    f = Fets()
    assert f.state_name() == "boot"


def test_precharge_does_not_finish_on_a_stale_reading():
    bms, afe = _precharge_bms()
    afe.current_ma = 0
    afe.fresh = False  # no reading yet: the 0 mA is not a measurement
    run(bms, 1)
    afe.fresh = True
    afe.current_ma = -20000
    run(bms, 1)
    assert afe.pchg and not afe.dsg
    afe.fresh = False
    run(bms, 3)
    assert not afe.dsg


def test_nothing_switches_on_without_a_fresh_reading():
    bms, afe = make_bms()
    run(bms, 2)
    bms.request_fet(DSG, False)
    run(bms, 1)
    afe.fresh = False
    assert bms.request_fet(DSG, True) == ""
    run(bms, 3)  # within the sensor delay: CHG stays on, DSG stays off
    assert afe.chg and not afe.dsg
    afe.fresh = True
    run(bms, 1)
    assert afe.dsg
