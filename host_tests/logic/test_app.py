# The tick as a whole: exceptions end with FETs off, the watchdog is fed by
# every tick that completes (not by failing ones), the timer only schedules,
# the tick does not allocate.
import micropython

from bms.protection import CHG
from helpers import FakeAfe, make_bms, run


class FakeWdt:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


class Boom(FakeAfe):
    def __init__(self):
        FakeAfe.__init__(self)
        self.boom = False

    def read(self, m):
        if self.boom:
            raise ValueError("driver bug")
        return FakeAfe.read(self, m)


def test_exception_in_tick_leaves_fets_off_and_starves_watchdog():
    afe = Boom()
    bms, afe = make_bms(afe)
    wdt = FakeWdt()
    bms.wdt = wdt
    run(bms, 3)
    assert afe.chg and afe.dsg and wdt.feeds == 3
    afe.boom = True
    run(bms, 10)
    assert not afe.chg and not afe.dsg
    assert wdt.feeds == 3
    assert bms.tick_errors == 10
    assert bms.last_error == "ValueError: driver bug"


def test_intermittent_exceptions_do_not_chatter_the_fets():
    afe = Boom()
    bms, afe = make_bms(afe)
    run(bms, 3)
    switched = 0
    last = afe.chg
    for i in range(60):
        afe.boom = i % 2 == 0
        run(bms, 1)
        switched += afe.chg != last
        last = afe.chg
    assert switched == 1  # off at the first failure, held off while they go on
    assert "sensor" in bms.prot.names(bms.prot.active)
    afe.boom = False
    run(bms, 21)
    assert afe.chg and afe.dsg


def test_counters_wrap_below_small_int_limit():
    bms, afe = make_bms()
    run(bms, 1)
    bms.ticks = 0x3FFFFFFF
    run(bms, 2)
    assert bms.ticks == 1


def test_exception_in_logic_after_fets_were_on_turns_them_off():
    bms, afe = make_bms()
    run(bms, 2)
    assert afe.dsg
    bms.bal = None  # any failure past the read
    run(bms, 1)
    assert not afe.chg and not afe.dsg
    assert bms.tick_errors == 1


def test_blind_but_running_loop_feeds_the_watchdog_with_fets_open():
    # No answer from the front-end, then no fresh reading: the tick still
    # completes and holds both FETs open, so the watchdog is fed (a reboot
    # every few seconds would drop latched faults and the console).
    bms, afe = make_bms()
    wdt = FakeWdt()
    bms.wdt = wdt
    run(bms, 2)
    afe.fail = OSError(110)
    run(bms, 6)
    assert not afe.chg and not afe.dsg
    afe.fail = None
    afe.fresh = False
    run(bms, 5)
    assert not afe.chg and not afe.dsg
    assert wdt.feeds == 13


def test_timer_callback_only_schedules_the_tick():
    import bms.app as app

    bms, afe = make_bms()
    reads = []
    real_read = afe.read
    afe.read = lambda m: reads.append(1) or real_read(m)
    calls = [0]
    slot = [None]

    def fake_schedule(f, arg):  # stores without allocating: it runs with the heap locked
        calls[0] += 1
        slot[0] = f

    real_schedule = app.schedule
    app.schedule = fake_schedule
    try:
        micropython.heap_lock()  # as in a hard timer IRQ on RP2
        try:
            bms._on_timer(None)
            bms._on_timer(None)  # fires again before the tick ran
        finally:
            micropython.heap_unlock()
        assert calls[0] == 1 and reads == []  # handed over, nothing read in the IRQ
        assert bms.missed_ticks == 1
        slot[0](0)  # the main context runs it
        assert reads == [1] and bms.ticks == 1
        bms._on_timer(None)
        assert calls[0] == 2 and bms.missed_ticks == 1

        def full(f, arg):
            raise RuntimeError("schedule queue full")

        slot[0](0)
        app.schedule = full
        bms._on_timer(None)
        assert bms.missed_ticks == 2 and not bms._pending
    finally:
        app.schedule = real_schedule


def test_uptime_counts_from_clock():
    bms, afe = make_bms()
    run(bms, 25)
    assert bms.uptime_s == 2
    bms.clock.now += 60000
    bms.tick()
    assert bms.uptime_s == 62


def test_soc_starts_from_ocv_and_counts_charge():
    bms, afe = make_bms(capacity_mah=10000)
    afe.cells_mv = [3300] * 4
    run(bms, 1)
    assert bms.soc.pct() == 50
    afe.current_ma = 10000  # 1C charge for 36 s = 1 % of capacity
    run(bms, 360)
    assert bms.soc.pct() == 51


def _steady(cells):
    afe = FakeAfe(cells=cells, temps=4)
    bms, afe = make_bms(afe, cells=cells)
    afe.cells_mv = [3300 + 7 * i for i in range(cells)]
    afe.current_ma = 12000
    run(bms, 50)  # the first reading allocates once (SOC start); steady state after
    return bms, afe


def _locked_ticks(bms, n, afe=None):
    # MicroPython: with the heap locked any allocation raises MemoryError,
    # which escapes the tick (its error path allocates) and fails the test.
    # CPython: heap_lock is a no-op; the test checks the tick still works.
    micropython.heap_lock()
    try:
        for i in range(n):
            bms.clock.now += 100
            if afe is not None and i % 5 == 0:
                afe.current_ma = -afe.current_ma
            bms.tick()
    finally:
        micropython.heap_unlock()
    assert bms.tick_errors == 0, bms.last_error


def test_tick_allocates_nothing_in_steady_state():
    for cells in (4, 16):
        bms, afe = _steady(cells)
        _locked_ticks(bms, 20, afe)
        assert afe.chg and afe.dsg, cells


def test_tick_while_balancing_and_while_faulted_allocates_nothing():
    afe = FakeAfe(cells=16, temps=4)
    bms, afe = make_bms(afe, cells=16)
    afe.cells_mv = [3450 + 10 * i for i in range(16)]
    afe.current_ma = 5000
    run(bms, 30)
    _locked_ticks(bms, 10)
    assert afe.mask != 0 and bms.bal.cells()  # top cells bleeding
    afe.cells_mv[5] = 3700  # OV trips; balancing stops on any fault
    run(bms, 30)
    assert "cell_ov" in bms.prot.names(bms.prot.active)
    _locked_ticks(bms, 10)
    assert not afe.chg and afe.dsg and afe.mask == 0
    assert bms.request_fet(CHG, True) != ""
