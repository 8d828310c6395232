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


def test_soc_starts_from_ocv_and_counts_charge_from_the_tick():
    bms, afe = make_bms(capacity_mah=10000)
    afe.cells_mv = [3300] * 4
    run(bms, 1)
    assert bms.est.started
    start = bms.est.soc
    assert abs(start - 0.55) < 0.01  # 3300 mV on the LFP curve
    afe.current_ma = 10000  # 1C charge for 36 s = 1 % of capacity
    run(bms, 360)
    # The counted charge reaches the estimator in whole seconds.
    assert abs(bms.est.soc - start - 0.01) < 0.0005


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


# ---- front-end faults: chip resets, frozen inputs, the chip's own protection


def _closed_bms(**kw):
    bms, afe = make_bms(**kw)
    run(bms, 3)
    assert afe.chg and afe.dsg
    return bms, afe


def test_chip_reset_is_set_up_again_and_fets_wait_for_good_readings():
    from bms.afe import ChipReset

    bms, afe = _closed_bms()
    inits, prot = afe.inits, afe.protections
    afe.fail = ChipReset("power-on defaults")
    run(bms, 1)
    afe.fail = None
    assert afe.inits == inits + 1 and afe.protections == prot + 1  # set up again at once
    assert bms.chip_resets == 1 and not afe.chg and not afe.dsg
    assert "sensor" in bms.prot.names(bms.prot.active)
    run(bms, 19)  # sensor_recover_ms 2000 = 20 ticks of good readings
    assert not afe.chg
    run(bms, 2)
    assert afe.chg and afe.dsg and bms.prot.names(bms.prot.active) == []


def test_chip_that_cannot_be_set_up_again_is_retried_every_tick_with_fets_open():
    from bms.afe import ChipReset

    bms, afe = _closed_bms()
    afe.fail = ChipReset("lost config")
    afe.init_fail = OSError(5)
    run(bms, 1)
    afe.fail = None  # it answers reads, but setting it up keeps failing
    run(bms, 10)
    assert bms.reinit_pending and afe.inits == 1  # only the boot's init succeeded
    assert not afe.chg and not afe.dsg and "afe_comm" in bms.prot.names(bms.prot.active)
    afe.init_fail = None
    run(bms, 1)
    assert not bms.reinit_pending and afe.inits == 2
    run(bms, 25)
    assert afe.chg and afe.dsg


def _step_all_but(afe, still, mv):
    for k in range(len(afe.cells_mv)):
        if k != still:
            afe.cells_mv[k] += mv


def test_frozen_cell_is_caught_when_the_pack_steps_and_it_does_not():
    bms, afe = _closed_bms(cells=4)
    run(bms, 30)  # a pack at rest: constant readings are not a fault
    assert bms.frozen_cell == 0 and afe.chg
    _step_all_but(afe, 2, 25)  # a charge current step: 25 mV of IR drop on every cell but cell 3
    run(bms, 20)  # compared once a second over two seconds
    assert bms.frozen_cell == 3
    run(bms, 6)  # sensor_delay_ms 500
    assert not afe.chg and not afe.dsg and "sensor" in bms.prot.names(bms.prot.active)
    run(bms, 60)  # at rest nothing proves the input alive: it stays flagged
    assert bms.frozen_cell == 3 and not afe.chg
    afe.cells_mv[2] += 20  # it moves again
    run(bms, 25)
    assert bms.frozen_cell == 0
    run(bms, 25)
    assert afe.chg and afe.dsg


def test_a_cell_moving_alone_or_two_cells_moving_is_no_frozen_input():
    bms, afe = _closed_bms(cells=4)
    afe.cells_mv[0] += 200  # one cell drifts alone (a weak cell at the knee)
    run(bms, 30)
    assert bms.frozen_cell == 0
    afe.cells_mv[1] -= 100
    afe.cells_mv[2] -= 100
    run(bms, 30)
    assert bms.frozen_cell == 0 and afe.chg and afe.dsg


def test_clear_releases_a_frozen_input_after_repair():
    bms, afe = _closed_bms(cells=4)
    _step_all_but(afe, 0, -30)
    run(bms, 30)
    assert bms.frozen_cell == 1 and not afe.dsg
    bms.clear()
    assert bms.frozen_cell == 0
    run(bms, 25)
    assert afe.chg and afe.dsg


def test_chip_protection_trips_the_firmware_row_that_recovers_by_its_own_hysteresis():
    from bms.afe import HW_OV, HW_OCD

    bms, afe = _closed_bms()
    afe.hw_faults = HW_OV  # the chip opened CHG on its own (its threshold, its reading)
    run(bms, 1)
    afe.hw_faults = 0
    assert "cell_ov" in bms.prot.names(bms.prot.active) and not afe.chg and afe.dsg
    run(bms, 25)  # cells read 3300 (below cell_ov_clear 3450) for cell_ov_recover_ms 2000
    assert afe.chg
    afe.hw_faults = HW_OCD
    run(bms, 1)
    afe.hw_faults = 0
    assert "ocd2" in bms.prot.names(bms.prot.active) and not afe.dsg
    assert bms.hw_seen == HW_OCD  # the last reading's bits; status shows them


def test_status_shows_link_counters_and_frozen_cell():
    from bms.status import snapshot

    bms, afe = _closed_bms(cells=4)
    afe.crc_errors = 7
    afe.bus_errors = 2
    _step_all_but(afe, 3, 20)
    run(bms, 30)
    s = snapshot(bms)
    assert s["errors"]["crc"] == 7 and s["errors"]["bus"] == 2 and s["errors"]["chip_resets"] == 0
    assert s["frozen_cell"] == 4 and s["hw_faults"] == []


def test_a_silent_front_end_is_set_up_again_every_5_s_until_it_answers():
    bms, afe = _closed_bms()
    inits = afe.inits
    afe.fail = OSError(19)
    run(bms, 49)
    assert afe.inits == inits and not afe.chg and "afe_comm" in bms.prot.names(bms.prot.active)
    run(bms, 2)  # 5 s silent: the next tick sets it up again first
    assert afe.inits == inits + 1
    run(bms, 50)
    assert afe.inits == inits + 2
    afe.fail = None
    run(bms, 25)
    assert afe.chg and afe.dsg and afe.inits == inits + 2


class _DeafFets(FakeAfe):
    """A chip that stops taking FET commands (a noisy bus)."""

    deaf = False

    def set_fets(self, chg, dsg, pchg=False):
        if self.deaf:
            raise OSError(5)
        FakeAfe.set_fets(self, chg, dsg, pchg)


def test_a_fet_command_the_chip_does_not_take_is_a_link_fault_not_a_crash():
    bms, afe = make_bms(_DeafFets())
    wdt = FakeWdt()
    bms.wdt = wdt
    run(bms, 3)
    afe.deaf = True
    run(bms, 7)  # seen by the tick after the failed write, then afe_comm's 500 ms
    assert wdt.feeds == 10 and bms.tick_errors == 0 and bms.comm_errors == 7
    assert "afe_comm" in bms.prot.names(bms.prot.active) and not bms.fets.chg and not bms.fets.dsg
    afe.deaf = False
    run(bms, 1)
    assert not afe.chg and not afe.dsg  # the open command gets through at once
    run(bms, 25)
    assert afe.chg and afe.dsg


def test_a_chip_that_does_not_answer_at_boot_is_set_up_when_it_does():
    afe = FakeAfe()
    afe.init_fail = OSError(19)
    bms, afe = make_bms(afe)  # no exception: the firmware boots, FETs off
    assert bms.reinit_pending and afe.protections == 0
    run(bms, 10)
    assert not afe.chg and not afe.dsg and "afe_comm" in bms.prot.names(bms.prot.active)
    afe.init_fail = None
    run(bms, 1)
    assert not bms.reinit_pending and afe.inits == 1 and afe.protections == 1
    run(bms, 25)
    assert afe.chg and afe.dsg


def test_a_front_end_gets_5_s_to_its_first_reading_then_it_is_a_sensor_fault():
    afe = FakeAfe()
    afe.fresh = False  # converting, nothing ready yet
    bms, afe = make_bms(afe)
    run(bms, 45)
    assert bms.prot.names(bms.prot.active) == [] and not afe.chg and bms.fets.state_name() == "boot"
    run(bms, 12)  # past 5 s: sensor's 500 ms delay runs
    assert "sensor" in bms.prot.names(bms.prot.active) and not afe.chg
    afe.fresh = True
    run(bms, 25)
    assert afe.chg and afe.dsg


class _DeafBleeders(FakeAfe):
    """A chip whose balancing command fails (the FET pins still work)."""

    deaf = False

    def set_balancing(self, mask):
        if self.deaf:
            raise OSError(5)
        FakeAfe.set_balancing(self, mask)


def test_a_failing_bleeder_command_does_not_keep_the_fets_from_opening():
    bms, afe = make_bms(_DeafBleeders())
    run(bms, 3)
    assert afe.chg and afe.dsg
    afe.deaf = True
    afe.cells_mv[0] = 3700  # the FET commands must still go out although every bleeder write fails
    run(bms, 12)
    assert not afe.chg and not afe.dsg and bms.tick_errors == 0
    assert "cell_ov" in bms.prot.names(bms.prot.active) and "afe_comm" in bms.prot.names(bms.prot.active)


class _SlowSetup(FakeAfe):
    """configure_protection takes long enough for the timer to fire inside it."""

    bms = None
    fail = None
    reads_inside = 0
    raise_in_setup = None

    def configure_protection(self, cfg):
        FakeAfe.configure_protection(self, cfg)
        if self.bms is not None:
            before = self.reads
            self.bms._scheduled_tick(0)  # the timer's tick lands mid-sequence
            self.reads_inside += self.reads - before
        if self.raise_in_setup is not None:
            raise self.raise_in_setup
        return {}

    reads = 0

    def read(self, m):
        self.reads += 1
        return FakeAfe.read(self, m)


def test_a_console_command_on_the_front_end_is_not_interleaved_with_a_tick():
    bms, afe = make_bms(_SlowSetup())
    run(bms, 3)
    afe.bms = bms
    missed = bms.missed_ticks
    bms.apply_config(bms.cfg.with_values({"cell_ov_mv": 3640}))
    assert afe.reads_inside == 0 and bms.missed_ticks == missed + 1
    run(bms, 2)
    assert afe.reads >= 5 and afe.chg  # ticks run again afterwards


def test_a_console_change_the_chip_fails_to_take_is_refused_and_the_chip_set_up_again():
    bms, afe = make_bms(_SlowSetup())
    run(bms, 3)
    afe.raise_in_setup = OSError(5)
    old = bms.cfg
    try:
        bms.apply_config(bms.cfg.with_values({"cell_ov_mv": 3640}))
        raise AssertionError("no error")
    except OSError:
        pass
    assert bms.cfg is old and bms.reinit_pending  # nothing changed; the chip may be half set up
    afe.raise_in_setup = None
    inits = afe.inits
    run(bms, 1)
    assert afe.inits == inits + 1 and not bms.reinit_pending


# ---- SOC, counters and their flash copy ------------------------------------------


def _second(bms, n=1):
    run(bms, 10 * n)  # 100 ms ticks


def test_soc_and_counters_survive_a_reset_and_are_written_rate_limited():
    from helpers import boot_bms

    bms, afe = make_bms(capacity_mah=10000)
    afe.cells_mv = [3445, 3450, 3448, 3446]  # a full charge: SOC is known
    afe.current_ma = 300
    _second(bms, 40)
    assert bms.est.full_count == 1 and bms.est.sigma_pct() < 1
    soc_full = bms.est.soc
    bms.save_state()  # the full charge's own save comes a minute in: start the clock here
    afe.cells_mv = [3300] * 4  # LFP plateau: the OCV at boot will say little
    afe.current_ma = -5000  # C/2 discharge
    saves = []
    real = bms._state.save
    bms._state.save = lambda blob: (saves.append(1), real(blob))
    _second(bms, 300)  # 5 min: -4.2 %, not yet due (10 min and 1 %)
    assert not saves
    _second(bms, 400)  # past 10 min: written once
    assert len(saves) == 1
    soc_then = bms.est.soc
    q_out = bms.est.q_out_mas
    assert abs(q_out / 3600000 - 0.97) < 0.02  # 700 s x 5 A
    bms.reset()  # the console's reset: saved first
    bms2, afe2 = boot_bms(bms.config_path)
    afe2.cells_mv = [3300] * 4
    run(bms2, 1)
    assert bms2.est.started
    # On the plateau the saved value (known since the full charge) wins
    # over the OCV (55 %).
    assert abs(soc_then - (soc_full - 0.097)) < 0.01  # 700 s x 5 A of 10 Ah
    assert abs(bms2.est.soc - soc_then) < 0.02, (bms2.est.soc, soc_then)
    assert bms2.est.q_out_mas == q_out


def test_full_charge_is_logged_and_shown():
    from bms import eventlog

    bms, afe = make_bms(capacity_mah=10000)
    afe.cells_mv = [3300] * 4
    _second(bms)
    afe.cells_mv = [3445, 3450, 3448, 3446]  # at the charge voltage
    afe.current_ma = 300  # the tail: under 5 % of C
    _second(bms, 29)
    assert bms.est.full_count == 0  # not before 30 s
    _second(bms, 2)
    assert bms.est.full_count == 1
    assert bms.est.pct() >= 99  # reset to 100 %; the rested top of the curve then has its say
    events = [d["event"] for d in bms.events.latest(10)]
    assert "full" in events, events


def test_a_chemistry_change_restarts_soc_but_keeps_the_lifetime_counters():
    bms, afe = make_bms(capacity_mah=10000)
    afe.cells_mv = [3300] * 4
    afe.current_ma = -5000
    _second(bms, 60)
    bms.save_state()  # an older copy on flash
    _second(bms, 300)
    q_out = bms.est.q_out_mas
    assert q_out > 1000000
    bms.apply_config(bms.cfg.with_preset("nmc"))
    assert not bms.est.started and bms.est.q_out_mas == q_out
    afe.cells_mv = [3700] * 4
    _second(bms, 2)
    # The new estimator started from the saved state: the counters did not
    # roll back to an older save.
    assert bms.est.started and bms.est.q_out_mas >= q_out


def test_a_boards_own_ocv_curve_is_used_and_a_bad_one_is_reported():
    from helpers import boot_bms, saved_config, tmpdir

    d = tmpdir()
    path = saved_config(d, capacity_mah=10000)
    with open(d + "/ocv_lfp.csv", "w") as f:
        f.write("soc_pct,ocv_v\n0,3.0\n50,3.2\n100,3.4\n")  # a made-up, steep curve
    bms, afe = boot_bms(path)
    afe.cells_mv = [3300] * 4
    run(bms, 1)
    assert abs(bms.est.soc - 0.75) < 0.01  # 3.3 V on that curve, not 55 % on the typical one
    with open(d + "/ocv_lfp.csv", "w") as f:
        f.write("soc_pct,ocv_v\n0,3000\n50,3200\n100,3400\n")  # millivolts: refused
    bms, afe = boot_bms(path)
    assert "ocv_lfp.csv" in bms.last_error and "volts" in bms.last_error
