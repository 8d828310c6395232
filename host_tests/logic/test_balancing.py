# Passive balancing decisions: each rule trips just past its condition and
# not before, on the Balancer alone and through the tick.
from array import array

import micropython

from bms import config
from bms import balancing as bal
from bms.balancing import Balancer
from bms.protection import N_ROWS, CELL_OV, AFE_COMM
from bms.status import balance_state

COOL = 250  # 25.0 C
CHARGING = 3000


def _bal(n=4, no_adjacent=False, pairs=None, **changes):
    cfg = config.defaults("lfp", n)
    if changes:
        cfg = cfg.with_values(changes)
    b = Balancer(n, True, no_adjacent)
    b.configure(cfg, n, pairs)
    return b


def _cells(*mv):
    return array("i", mv)


def _ok():
    return bytearray(N_ROWS)


def _decide(b, cells, current=CHARGING, temp=COOL, active=None):
    return b.decide(cells, current, active if active is not None else _ok(), temp)


def test_bleeds_cells_above_start_and_spread():
    b = _bal()
    assert _decide(b, _cells(3420, 3450, 3400, 3410)) == 0b0011
    assert b.cells() == [1, 2]
    assert b.reason == bal.BLEEDING and b.count == 2 and b.allowed == 4
    assert balance_state(b, "board") == "bleeding 2/4"


def test_start_voltage_is_the_highest_cells_own_reading():
    b = _bal()  # bal_start_mv 3400
    assert _decide(b, _cells(3399, 3300, 3300, 3300)) == 0
    assert b.reason == bal.OFF_BELOW_START
    assert balance_state(b, "board") == "off: below start (3399 < 3400 mV)"
    assert _decide(b, _cells(3400, 3300, 3300, 3300)) == 1
    # only the cells at or above the start bleed, however far apart
    assert _decide(b, _cells(3400, 3399, 3300, 3300)) == 1


def test_spread_must_exceed_the_threshold():
    b = _bal()  # bal_delta_mv 15
    assert _decide(b, _cells(3415, 3400, 3405, 3410)) == 0
    assert b.reason == bal.OFF_SPREAD and b.spread_mv == 15
    assert balance_state(b, "board") == "off: spread 15 mV <= 15"
    assert _decide(b, _cells(3416, 3400, 3405, 3410)) == 1
    b = _bal(bal_delta_mv=40)
    assert _decide(b, _cells(3440, 3400, 3400, 3400)) == 0
    assert _decide(b, _cells(3441, 3400, 3400, 3400)) == 1


def test_a_bleeding_cell_continues_to_half_the_spread():
    b = _bal()
    assert _decide(b, _cells(3420, 3400, 3400, 3400)) == 1
    assert _decide(b, _cells(3410, 3400, 3400, 3400)) == 1  # 10 > 7
    assert _decide(b, _cells(3408, 3400, 3400, 3400)) == 1
    assert _decide(b, _cells(3407, 3400, 3400, 3400)) == 0  # within 7: done
    assert _decide(b, _cells(3410, 3400, 3400, 3400)) == 0  # and it needs 15 again to start
    assert _decide(b, _cells(3416, 3400, 3400, 3400)) == 1


def test_hysteresis_belongs_to_the_cell_not_the_pack():
    # Cell 1 bleeds; cell 2 at 10 mV above the lowest does not start
    # because cell 1 is bleeding.
    b = _bal()
    assert _decide(b, _cells(3420, 3410, 3400, 3400)) == 1
    assert _decide(b, _cells(3412, 3410, 3400, 3400)) == 1


def test_not_while_discharging():
    b = _bal()
    cells = _cells(3450, 3400, 3400, 3400)
    assert _decide(b, cells, -1001) == 0
    assert b.reason == bal.OFF_DISCHARGING and balance_state(b, "board") == "off: discharging"
    assert _decide(b, cells, -1000) == 1  # resting


def test_resting_is_configurable():
    cells = _cells(3450, 3400, 3400, 3400)
    b = _bal(bal_idle=0)
    for ma in (-1000, 0, 1000):
        assert _decide(b, cells, ma) == 0, ma
    assert b.reason == bal.OFF_NOT_CHARGING
    assert balance_state(b, "board") == "off: not charging (bal_idle 0)"
    assert _decide(b, cells, 1001) == 1
    b = _bal(bal_idle=1)
    for ma in (-1000, 0, 1000, 1001, 50000):
        assert _decide(b, cells, ma) == 1, ma


def test_limit_on_number_of_bleeders_takes_the_highest():
    b = _bal(n=8, bal_max_cells=2)
    mask = _decide(b, _cells(3450, 3500, 3460, 3490, 3400, 3400, 3400, 3400))
    assert mask == 0b1010
    assert balance_state(b, "board") == "bleeding 2/2"
    b = _bal(n=8, bal_max_cells=3)
    assert _decide(b, _cells(3450, 3500, 3460, 3490, 3400, 3400, 3400, 3400)) == 0b1110


def test_max_cells_zero_disables_balancing():
    b = _bal(bal_max_cells=0)
    assert _decide(b, _cells(3500, 3400, 3400, 3400)) == 0
    assert b.reason == bal.OFF_DISABLED
    assert balance_state(b, "board") == "off: bal_max_cells 0"


def test_a_board_without_bleeders_never_bleeds():
    b = Balancer(4, False, False)
    b.configure(config.defaults("lfp", 4), 4)
    assert _decide(b, _cells(3500, 3400, 3400, 3400)) == 0
    assert balance_state(b, "board") == "off: no bleeders"


def test_never_two_adjacent_cells_when_the_chip_forbids_it():
    b = _bal(no_adjacent=True)
    assert _decide(b, _cells(3500, 3490, 3480, 3400)) == 0b0101
    assert _decide(b, _cells(3400, 3490, 3500, 3480)) == 0b0100  # 2 and 4 are both next to 3
    b = _bal(no_adjacent=False)
    assert _decide(b, _cells(3500, 3490, 3480, 3400)) == 0b0111


def test_adjacent_cells_of_different_groups_may_bleed_together():
    # A chip with groups of five (bq769x0 CELLBAL1..3): cells 5 and 6 are
    # in different groups, so only the pairs inside a group are forbidden.
    pairs = 0
    for i in range(9):
        if (i + 1) % 5:
            pairs |= 1 << i
    b = _bal(n=10, no_adjacent=True, pairs=pairs, bal_max_cells=4)
    cells = _cells(3400, 3400, 3400, 3400, 3500, 3500, 3400, 3400, 3400, 3400)
    assert _decide(b, cells) == 0b110000
    cells = _cells(3400, 3400, 3400, 3500, 3500, 3400, 3400, 3400, 3400, 3400)
    assert _decide(b, cells) in (0b01000, 0b10000)  # 4 and 5 share a group


def test_any_active_protection_row_stops_balancing():
    cells = _cells(3450, 3400, 3400, 3400)
    for r in range(N_ROWS):
        b = _bal()
        assert _decide(b, cells) == 1
        active = _ok()
        active[r] = 1
        assert _decide(b, cells, active=active) == 0, r
        assert b.reason == bal.OFF_FAULT and b.cells() == []
        assert balance_state(b, "board") == "off: fault"
        assert _decide(b, cells) == 1, r  # and resumes when it clears


def test_derating_falls_linearly_to_one_below_the_board_limit():
    cells = _cells(3500, 3490, 3480, 3470, 3460, 3400, 3400, 3400)
    b = _bal(n=8)  # bal_board_max_c 55: derating from 45 C, 4 bleeders
    for t, want in ((449, 4), (450, 4), (466, 4), (467, 3), (500, 2), (533, 2), (534, 1), (549, 1)):
        _decide(b, cells, temp=t)
        assert (b.allowed, b.count) == (want, want), (t, b.allowed, b.count)
    _decide(b, cells, temp=500)
    assert b.reason == bal.DERATED and b.mask == 0b11
    assert balance_state(b, "board") == "derated 2/2 (board 50 C)"
    _decide(b, cells, temp=440)
    assert b.reason == bal.BLEEDING and b.mask == 0b1111


def test_derated_needs_no_more_than_the_cells_that_need_bleeding():
    b = _bal()
    _decide(b, _cells(3450, 3400, 3400, 3400), temp=480)
    assert (b.allowed, b.count, b.mask) == (3, 1, 1)
    assert balance_state(b, "cells") == "derated 1/3 (cells 48 C)"


def test_stops_at_the_board_limit_and_resumes_below_its_hysteresis():
    cells = _cells(3450, 3440, 3400, 3400)
    b = _bal()  # 55 C, temp_hyst_c 5
    assert _decide(b, cells, temp=549) == 0b01  # derated to one
    assert _decide(b, cells, temp=550) == 0
    assert b.reason == bal.OFF_HOT
    assert balance_state(b, "board") == "off: board hot (board 55 C, resumes below 50 C)"
    for t in (549, 520, 500):
        assert _decide(b, cells, temp=t) == 0, t
    assert _decide(b, cells, temp=499) == 0b11  # 3 allowed at 49.9 C, two need it
    assert b.allowed == 3
    b = _bal(temp_hyst_c=2)
    _decide(b, cells, temp=560)
    assert _decide(b, cells, temp=530) == 0
    assert _decide(b, cells, temp=529) != 0


def test_hot_latch_follows_the_temperature_while_nothing_bleeds():
    # The board heats while discharging (no bleeding): at the next charge
    # the latch still holds until it has cooled past the hysteresis.
    cells = _cells(3450, 3400, 3400, 3400)
    b = _bal()
    _decide(b, cells, current=-20000, temp=560)
    assert b.reason == bal.OFF_HOT
    assert _decide(b, cells, temp=520) == 0
    assert _decide(b, cells, temp=480) == 1


def test_unknown_temperature_does_not_derate():
    b = _bal()
    assert _decide(b, _cells(3500, 3480, 3460, 3400), temp=bal.UNKNOWN_DC) == 0b111


# ---- through the tick ------------------------------------------------------


def _tick_bms(**changes):
    from helpers import FakeAfe, make_bms, run

    afe = FakeAfe(cells=8, temps=2, **changes.pop("afe", {}))
    bms, afe = make_bms(afe, cells=8, **changes)
    afe.cells_mv = [3500, 3490, 3480, 3470, 3460, 3400, 3400, 3400]
    afe.current_ma = 5000
    run(bms, 5)
    return bms, afe, run


def test_tick_bleeds_and_reports_state_in_status():
    from bms.status import snapshot

    bms, afe, run = _tick_bms()
    assert afe.mask == 0b1111
    s = snapshot(bms)
    assert s["balancing"] == [1, 2, 3, 4] and s["bal"] == "bleeding 4/4"
    afe.current_ma = -5000
    run(bms, 1)
    assert afe.mask == 0 and snapshot(bms)["bal"] == "off: discharging"


def test_tick_stops_balancing_on_a_fault_that_opens_only_chg():
    from bms.status import snapshot

    bms, afe, run = _tick_bms()
    afe.cells_mv[0] = 3700  # cell_ov opens CHG only
    run(bms, 15)
    assert bms.prot.active[CELL_OV] and afe.dsg
    assert afe.mask == 0 and snapshot(bms)["bal"] == "off: fault"


def test_tick_without_valid_data_bleeds_nothing():
    from bms.status import snapshot

    bms, afe, run = _tick_bms()
    afe.fresh = False  # no reading
    run(bms, 1)
    assert afe.mask == 0 and snapshot(bms)["bal"] == "off: no valid reading"
    assert not bms.prot.active[AFE_COMM]


def test_tick_derates_on_the_board_sensor():
    from bms.status import snapshot

    bms, afe, run = _tick_bms()
    afe.board_c = 52
    run(bms, 1)
    assert afe.mask == 0b11 and snapshot(bms)["bal"] == "derated 2/2 (board 52 C)"
    afe.board_c = 56
    run(bms, 1)
    assert afe.mask == 0 and not any(bms.prot.active)  # below ot_board: no fault, just hot
    afe.board_c = 50
    run(bms, 1)
    assert afe.mask == 0
    afe.board_c = 49
    run(bms, 1)
    assert afe.mask == 0b111


def test_tick_uses_the_hottest_cell_when_the_board_has_no_sensor():
    from bms.status import snapshot

    # bal_board_max_c 40 (derating from 30 C), below the cells' otc at 45
    bms, afe, run = _tick_bms(afe={"board_temp": False}, bal_board_max_c=40)
    afe.temps_c = [25, 35]
    run(bms, 1)
    assert afe.mask == 0b11 and snapshot(bms)["bal"] == "derated 2/2 (cells 35 C)"
    afe.temps_c = [41, 25]
    run(bms, 1)
    assert afe.mask == 0 and snapshot(bms)["bal"] == "off: cells hot (cells 41 C, resumes below 35 C)"


def test_tick_while_derated_or_hot_allocates_nothing():
    bms, afe, run = _tick_bms()
    for board_c in (52, 56, 45, 30):
        afe.board_c = board_c
        run(bms, 2)
        micropython.heap_lock()
        try:
            for _ in range(5):
                bms.clock.now += 100
                bms.tick()
        finally:
            micropython.heap_unlock()
        assert bms.tick_errors == 0 and bms.valid, bms.last_error


def test_status_json_has_the_bal_key_after_balancing():
    from helpers import FakeAfe, make_bms, run
    from bms.console import Console
    import json

    afe = FakeAfe(cells=4)
    bms, afe = make_bms(afe)
    afe.cells_mv = [3300, 3300, 3300, 3300]
    run(bms, 3)
    out = []
    con = Console(bms, out.append)
    con.feed(b"status --json\r\n")
    line = "".join(out).strip()
    s = json.loads(line)
    assert s["bal"] == "off: below start (3300 < 3400 mV)"
    assert line.index('"balancing"') < line.index('"bal"') < line.index('"uptime_s"')
