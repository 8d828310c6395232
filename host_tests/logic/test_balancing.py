# Passive balancing decisions.
from array import array

from bms import config
from bms.balancing import Balancer


def _bal(n=4, no_adjacent=False, **changes):
    cfg = config.defaults("lfp", n)
    if changes:
        cfg = cfg.with_values(changes)
    b = Balancer(n, True, no_adjacent)
    b.configure(cfg, n)
    return b


def _cells(*mv):
    return array("i", mv)


def test_bleeds_cells_above_start_and_spread():
    b = _bal()
    assert b.decide(_cells(3420, 3450, 3400, 3410), 3000, 0, 250) == 0b0011
    assert b.cells() == [1, 2]


def test_nothing_below_start_voltage_or_inside_spread():
    b = _bal()
    assert b.decide(_cells(3300, 3390, 3300, 3300), 3000, 0, 250) == 0  # below 3400
    assert b.decide(_cells(3410, 3415, 3405, 3401), 3000, 0, 250) == 0  # spread 14 < 15


def test_not_while_discharging_and_idle_is_configurable():
    b = _bal()
    cells = _cells(3450, 3400, 3400, 3400)
    assert b.decide(cells, -5000, 0, 250) == 0
    assert b.decide(cells, 0, 0, 250) == 1
    b = _bal(bal_idle=0)
    assert b.decide(cells, 0, 0, 250) == 0
    assert b.decide(cells, 5000, 0, 250) == 1


def test_stops_on_fault_and_hot_board():
    b = _bal()
    cells = _cells(3450, 3400, 3400, 3400)
    assert b.decide(cells, 3000, 1, 250) == 0
    assert b.decide(cells, 3000, 0, 550) == 0  # bal_board_max_c 55
    assert b.decide(cells, 3000, 0, 549) == 1


def test_limit_on_number_of_bleeders_takes_the_highest():
    b = _bal(n=8, bal_max_cells=2)
    mask = b.decide(_cells(3450, 3500, 3460, 3490, 3400, 3400, 3400, 3400), 3000, 0, 250)
    assert mask == 0b1010


def test_never_two_adjacent_cells_when_the_chip_forbids_it():
    b = _bal(no_adjacent=True)
    mask = b.decide(_cells(3500, 3490, 3480, 3400), 3000, 0, 250)
    assert mask == 0b0101


def test_a_bleeding_cell_continues_to_half_the_spread():
    b = _bal()
    assert b.decide(_cells(3420, 3400, 3400, 3400), 3000, 0, 250) == 1
    assert b.decide(_cells(3410, 3400, 3400, 3400), 3000, 0, 250) == 1  # 10 > 7
    assert b.decide(_cells(3407, 3400, 3400, 3400), 3000, 0, 250) == 0
