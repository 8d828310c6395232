# The BMS: one tick reads the front-end, runs the protection table, decides
# the FETs and bleeders and counts charge. The timer only hands the tick to
# the main context; the tick allocates nothing in steady state.
import time

from micropython import const, schedule

from bms import config, soc, store
from array import array

from bms.afe import Measurements, ChipReset, NTC_OK, HW_SCD, HW_OCD, HW_OV, HW_UV, HW_OT, HW_OTHER
from bms.balancing import Balancer
from bms.fets import Fets, BOOT
from bms.protection import (
    Protection, build_table, CHG, DSG, SCD, SENSOR, CELL_OV, CELL_UV, OCD2, OTC, OTD,
    Q_CELL_MAX, Q_CELL_MIN, Q_I_CHG, Q_I_DSG, Q_T_MAX, Q_T_MIN, Q_T_BOARD,
    Q_SCD, Q_SENSOR, Q_COMM, Q_CONFIG,
)
from bms.soc import Coulombs, SocEstimator, EV_FULL, EV_CAPACITY, EV_EMPTY
from bms import eventlog
from bms.protection import N_ROWS

VERSION = "0.1.0"

# Readings outside these are not cells or thermistors but broken wiring.
_CELL_MIN_MV = const(500)
_CELL_MAX_MV = const(5000)
_TEMP_MIN_DC = const(-400)
_TEMP_MAX_DC = const(1250)
_PACK_TOL_MV = const(250)
_COUNT_MAX = const(0x3FFFFFFF)
_DT_MAX_MS = const(2000)
_REINIT_MS = const(5000)  # a silent front-end is set up again this often
_BOOT_GRACE_S = const(5)  # a front-end may take this long to its first reading
# Frozen inputs: see Bms._frozen.
_FROZEN_MS = const(1000)
_SAVE_MS = const(600000)  # counters to flash at most every 10 min of running
_SAVE_MIN_MS = const(60000)  # an event (full charge...) is saved this soon after the last write
_FROZEN_MV = const(10)
_STILL_MV = const(3)


class Bms:
    def __init__(self, afe, config_path, board_name="", wdt=None, reset=None, clock=None, board_defaults=None):
        """board_defaults: the board file's "config" overrides (the current
        limits it is rated for), used when no saved config can be used."""
        self.afe = afe
        self._clock = clock or time.ticks_ms  # tests pass a fake clock
        self.config_path = config_path
        self.board_name = board_name
        self.wdt = wdt
        self.reset_fn = reset
        self.last_error = ""  # set from here on: a bad ocv file is reported at boot
        cfg, _src, problem = config.load(config_path)
        self.config_problem = ""
        if cfg is None:
            self.config_problem = problem or "no config"
        else:
            self.config_problem = self.board_problem(cfg, afe)
        if self.config_problem:
            # No usable copy: run on defaults that fit the board, with both
            # FETs held open by the config row until a config is saved.
            cfg = self.fallback_config(cfg["chemistry"] if cfg else "lfp", afe, board_defaults)
        self.m = Measurements(afe.max_cells, afe.n_temps, afe.has_board_temp)
        self.frozen_cell = 0  # 1-based cell whose reading froze (0: none)
        self.cell_total_mv = 0  # sum of the cells on the last reading
        n = afe.max_cells
        self._ref = array("i", [0] * n)  # each cell's reading a second ago
        self._ref2 = array("i", [0] * n)  # and two seconds ago
        self._strikes = bytearray(n)  # 1: it stood still while the pack stepped
        self._window = 0  # ticks into the second
        self._primed = False  # _ref and _ref2 hold readings
        self.prot = Protection(build_table(cfg))
        self.fets = Fets(afe.has_precharge)
        self.bal = Balancer(cfg["cells"], getattr(afe, "can_balance", False), afe.no_adjacent_balancing)
        self.coulombs = Coulombs()  # charge counted by the tick, taken by service()
        self.est = SocEstimator(cfg["chemistry"], cfg["capacity_mah"], self._load_ocv(cfg["chemistry"]))
        self._state = None  # the counters' flash slots (service() opens them)
        self._saved_at_ms = 0  # counted time since the last counters save
        self._saved_soc = -1.0
        self._save_soon = False  # an event's state waits for _SAVE_MIN_MS
        self.timer = None
        self.comm_errors = 0
        self.chip_resets = 0  # the front-end lost its configuration and was set up again
        self.reinit_pending = False  # it did (or went silent), and setting it up again has not worked yet
        self._silent_ms = 0  # how long the front-end has not answered
        self._write_failed = False  # the last FET/bleeder command was not taken
        self._afe_busy = False  # a console command is using the front-end
        self.hw_seen = 0  # HW_* bits the front-end reported on the last reading
        self.cfg = cfg  # apply_config's "previous config": none yet (n_cells 0)
        self.n_cells = 0
        self.apply_config(cfg, True)
        self.valid = False  # the last tick had a complete plausible reading
        self.have_data = False  # at least one reading has been taken
        self.ticks = 0
        self.uptime_s = 0
        self._ms = 0
        self._last_ms = self._clock()
        self.tick_errors = 0
        self.service_errors = 0  # main-loop work (SOC, flash) that raised
        self.missed_ticks = 0
        self.reset_cause = ""  # set by main.py from machine.reset_cause()
        # The event log: the tick queues what changed (_log_changes), service() writes it.
        self.events = eventlog.EventLog(eventlog.path_beside(config_path), self._event_context,
                                        lambda: self.est.pct() if self.est.started else -1)
        self._logged_rows = bytearray(N_ROWS)  # protection rows active as last logged
        self._logged_state = BOOT
        self._logged_resets = 0
        self._boot_logged = False
        self._pending = False
        self._tick_cb = self._scheduled_tick  # bound once: the timer path must not allocate
        self._timer_cb = self._on_timer

    # ---- configuration -------------------------------------------------------

    @staticmethod
    def fallback_config(chemistry, afe, board_defaults):
        cfg = config.defaults(chemistry, min(4, afe.max_cells))
        try:
            cfg = cfg.with_values(board_defaults or {})
        except config.ConfigError:
            pass
        lim = afe.current_max_ma
        if lim and Bms.board_problem(cfg, afe):
            cfg = cfg.with_values({"occ_ma": lim * 4 // 10, "ocd1_ma": lim * 6 // 10, "ocd2_ma": lim * 8 // 10})
        return cfg

    @staticmethod
    def board_problem(cfg, afe):
        """Why cfg cannot protect a pack on this board, or ""."""
        if cfg["cells"] > afe.max_cells:
            return "cells=%d out of range 1..%d (this board)" % (cfg["cells"], afe.max_cells)
        lim = afe.current_max_ma
        if lim:
            # A limit the sensor cannot reach would never trip.
            for key in ("occ_ma", "ocd1_ma", "ocd2_ma"):
                if cfg[key] >= lim:
                    return "%s=%d beyond what this board measures (below %d)" % (key, cfg[key], lim)
        top = afe.pack_max_mv
        if top and cfg["cells"] * cfg["cell_ov_mv"] >= top:
            # A pack divider that saturates below the trip voltage turns a
            # full pack into a permanent sensor fault.
            return "cells x cell_ov_mv = %d mV beyond the pack divider (below %d mV)" % (
                cfg["cells"] * cfg["cell_ov_mv"], top)
        return ""

    def apply_config(self, cfg, first=False):
        """Make cfg the running configuration (validated already). Raises ConfigError."""
        why = self.board_problem(cfg, self.afe)
        if why:
            raise config.ConfigError(why)
        self._afe_busy = True
        try:
            if cfg["cells"] != self.n_cells:
                self.afe.init(cfg["cells"])
                self._forget_frozen()
            if not self.reinit_pending:
                self.afe.configure_protection(cfg)  # else _reinit does it
        except OSError:
            # The chip may be half set up: the tick sets it up again from
            # scratch (FETs off meanwhile). At boot a chip that does not
            # answer must not stop the firmware; a console change says so.
            self.reinit_pending = True
            if not first:
                raise
        finally:
            self._afe_busy = False
        self.fets.configure(cfg)
        self.bal.configure(cfg, cfg["cells"], getattr(self.afe, "no_adjacent_mask", None))
        if not first and cfg["chemistry"] != self.cfg["chemistry"]:
            # Another curve: SOC starts over (from the OCV or the saved
            # state), the pack's lifetime counters carry on.
            self._save_now()  # the file then holds these counters, not older ones
            old_est = self.est
            self.est = SocEstimator(cfg["chemistry"], cfg["capacity_mah"], self._load_ocv(cfg["chemistry"]))
            self.est.keep_counters(old_est)
        elif first or cfg["capacity_mah"] != self.cfg["capacity_mah"]:
            self.est.set_capacity(cfg["capacity_mah"])
        self.est.configure(cfg["soc_full_mv"], cfg["soc_tail_pct"])
        self.prot.set_table(build_table(cfg))
        self.n_cells = cfg["cells"]
        old = self.cfg
        self.cfg = cfg
        if not first and old["tick_ms"] != cfg["tick_ms"]:
            self.prot.rescale(old["tick_ms"], cfg["tick_ms"])
            if self.timer is not None:
                self.start(self.timer)  # delays are in ticks of the new period

    def save_config(self):
        config.save(self.cfg, self.config_path)
        self.config_problem = ""

    def reload_config(self):
        cfg, _src, problem = config.load(self.config_path)
        if cfg is None:
            raise config.ConfigError("no valid saved config: " + problem)
        self.apply_config(cfg)
        self.config_problem = ""

    # ---- timing ----------------------------------------------------------------

    def start(self, timer):
        """Run the tick from a machine.Timer at the configured period."""
        self.timer = timer
        timer.init(mode=timer.PERIODIC, period=self.cfg["tick_ms"], callback=self._timer_cb)

    def _on_timer(self, _t):
        # Timer context (soft, or hard on RP2): no allocation, just hand over.
        if self._pending:
            # The last tick has not run yet (the main context was busy):
            # this one is lost, and delays run late by a tick. Counted.
            if self.missed_ticks < _COUNT_MAX:  # a big int would allocate in the IRQ
                self.missed_ticks += 1
            return
        self._pending = True
        try:
            schedule(self._tick_cb, 0)
        except Exception:  # schedule queue full: the next period tries again
            self._pending = False
            if self.missed_ticks < _COUNT_MAX:
                self.missed_ticks += 1

    def _scheduled_tick(self, _arg):
        self._pending = False
        if self._afe_busy:
            # A console command is talking to the front-end (set-up, clear,
            # ship): a tick now would interleave its bus traffic with that
            # sequence. This period is lost, as when the loop is busy.
            if self.missed_ticks < _COUNT_MAX:
                self.missed_ticks += 1
            return
        self.tick()

    # ---- the tick ----------------------------------------------------------------

    def tick(self):
        """One protection cycle. Returns True when it ran on fresh, valid data."""
        try:
            ok = self._tick()
        except Exception as e:
            self._fail_safe(e)
            return False
        # A tick that completed decided the FETs (a blind one holds them
        # open), so the loop is in control: feed. A hung loop, or a tick
        # that keeps failing, starves the watchdog and the board resets. A
        # lost sensor must not reboot the board every few seconds: that
        # would drop latched faults and the console with it.
        if self.wdt is not None:
            self.wdt.feed()
        return ok

    def _fail_safe(self, e):
        # Nothing here may depend on the state that just failed: FETs first.
        try:
            self.afe.set_fets(False, False)
        except Exception:
            pass
        try:
            self.afe.set_balancing(0)
        except Exception:
            pass
        self.fets.off()
        self.valid = False
        # A tick that failed proved nothing about the pack: hold both FETs
        # open for the sensor row's recovery delay, and say so in status.
        self.prot.trip_now(SENSOR)
        if self.tick_errors < _COUNT_MAX:
            self.tick_errors += 1
        self.last_error = "%s: %s" % (type(e).__name__, e)

    def _tick(self):
        now = self._clock()
        dt = time.ticks_diff(now, self._last_ms)
        self._last_ms = now
        ms = self._ms + dt
        while ms >= 1000:
            ms -= 1000
            self.uptime_s += 1
        self._ms = ms
        # Counters stay below 2**30: beyond it ints are heap objects on the board.
        self.ticks = (self.ticks + 1) & _COUNT_MAX
        if dt > _DT_MAX_MS:
            dt = _DT_MAX_MS  # keeps current * dt a small int; a long gap is lost anyway

        m = self.m
        p = self.prot
        q = p.q
        qv = p.qvalid
        comm_ok = True
        fresh = False
        try:
            if self.reinit_pending:
                self._reinit()
            fresh = self.afe.read(m)
        except ChipReset:
            # Its registers are back at power-on values (FETs off, its own
            # protection at defaults): set it up again now, and read next tick.
            if self.chip_resets < _COUNT_MAX:
                self.chip_resets += 1
            # What happened while it was down is unknown: FETs stay open
            # until the sensor row has seen good readings for its delay.
            self.prot.trip_now(SENSOR)
            try:
                self._reinit()
            except OSError:
                comm_ok = False
        except OSError:
            comm_ok = False
            if self.comm_errors < _COUNT_MAX:
                self.comm_errors += 1
            # A chip silent for long may have lost power or gone to sleep:
            # set it up again every _REINIT_MS until it answers.
            self._silent_ms += dt
            if self._silent_ms >= _REINIT_MS:
                self._silent_ms = 0
                self.reinit_pending = True
        if comm_ok:
            self._silent_ms = 0
        if self._write_failed:
            comm_ok = False
        q[Q_COMM] = 0 if comm_ok else 1
        qv[Q_COMM] = 1
        q[Q_CONFIG] = 1 if self.config_problem else 0
        qv[Q_CONFIG] = 1
        valid = False
        if fresh:
            self.have_data = True
            valid = self._quantities(m, q, qv)
            self._hw_faults(m.hw_faults)
        else:
            # Nothing new: value rows hold; a missing reading is a sensor fault.
            for k in range(Q_SENSOR):  # the measured quantities come first
                qv[k] = 0
            q[Q_SENSOR] = 1
            # A chip still starting up (its first conversions) is no fault
            # for a few seconds after boot; the FETs stay off meanwhile.
            qv[Q_SENSOR] = 1 if comm_ok and (self.have_data or self.uptime_s >= _BOOT_GRACE_S) else 0
        f = self.fets
        forbid = p.evaluate(valid and f.state == BOOT)
        f.update(forbid, valid, m.current_ma)
        mask = 0
        if valid and f.state != BOOT:
            # The bleeders heat the board: its sensor, else the hottest cell's.
            mask = self.bal.decide(m.cells_mv, m.current_ma, p.active, m.board_dc if m.has_board_temp else q[Q_T_MAX])
        else:
            self.bal.stop()
        # Each command on its own: a bleeder write that fails must not keep
        # the FET decision from reaching the gates. A command the chip did
        # not take (its driver tried every path it has, e.g. FET-off pins)
        # leaves things as the chip last had them, its own protection
        # armed: a link failure (afe_comm), tried again next tick. Raising
        # would starve the watchdog, and a reboot cannot fix a noisy bus.
        failed = False
        try:
            self.afe.set_fets(f.chg, f.dsg, f.pchg)
        except OSError:
            failed = True
        try:
            self.afe.set_balancing(mask)
        except OSError:
            failed = True
        self._write_failed = failed
        if failed and self.comm_errors < _COUNT_MAX:
            self.comm_errors += 1
        if valid:
            self.coulombs.add(m.current_ma, dt)
        self._log_changes()
        self.valid = valid
        return valid

    def _log_changes(self):
        # What changed since the last tick goes to the event log's queue
        # (allocation-free). Rows also change outside the tick (alert pin,
        # console clear, a failed tick): seen here at the next tick.
        ev = self.events
        if not self._boot_logged:
            self._boot_logged = True
            ev.push_tick(eventlog.EV_BOOT, eventlog.cause_code(self.reset_cause), 0)
        p = self.prot
        logged = self._logged_rows
        for r in range(N_ROWS):
            a = p.active[r]
            if a != logged[r]:
                logged[r] = a
                ev.push_tick(eventlog.EV_TRIP if a else eventlog.EV_CLEAR, r, p.q[p.table.quantity[r]])
        s = self.fets.state
        if s != self._logged_state:
            ev.push_tick(eventlog.EV_STATE, s, self._logged_state)
            self._logged_state = s
        if self.chip_resets != self._logged_resets:
            self._logged_resets = self.chip_resets
            ev.push_tick(eventlog.EV_CHIP_RESET, 0, self.chip_resets)

    def _event_context(self, q, i):
        # The pack at an event, for its record (see EventLog); no allocation.
        p = self.prot
        q[i] = self.uptime_s
        if self.have_data:
            q[i + 1] = self.m.pack_mv
            q[i + 2] = self.m.current_ma
            q[i + 3] = p.q[Q_CELL_MIN]
            q[i + 4] = p.q[Q_CELL_MAX]
        else:
            q[i + 1] = q[i + 2] = q[i + 3] = q[i + 4] = 0
        q[i + 5] = p.q[Q_T_MAX] if p.qvalid[Q_T_MAX] else -32768

    def _reinit(self):
        # Raises OSError (still pending) if the chip cannot be set up.
        self.reinit_pending = True
        self.afe.init(self.n_cells)
        self.afe.configure_protection(self.cfg)
        self.reinit_pending = False
        self._forget_frozen()

    def _hw_faults(self, hw):
        # The chip's own protection has acted on a FET: the firmware's row
        # for it trips too, so the FET is not switched back on behind the
        # chip's back, and recovers by the row's own hysteresis and delay.
        self.hw_seen = hw
        if not hw & ~HW_SCD:  # SCD is a quantity of its own (latched row)
            return
        p = self.prot
        if hw & HW_OV:
            p.trip_now(CELL_OV)
        if hw & HW_UV:
            p.trip_now(CELL_UV)
        if hw & HW_OCD:
            p.trip_now(OCD2)
        if hw & HW_OT:
            p.trip_now(OTC)
            p.trip_now(OTD)
        if hw & HW_OTHER:
            p.trip_now(SENSOR)

    def _forget_frozen(self):
        for k in range(len(self._strikes)):
            self._strikes[k] = 0
        self._primed = False
        self.frozen_cell = 0

    def _frozen(self, cells, n):
        """1-based number of a cell whose reading is frozen, or 0.

        A series string carries one current: when it steps, every cell's
        reading steps by its IR drop. Once a second the readings are
        compared with those of two seconds before; if every other cell
        moved by _FROZEN_MV or more, and their average did too, a cell that
        stayed within _STILL_MV has a dead input. It stays flagged until its
        reading moves again or 'clear' (after a repair): with the FETs open
        the pack rests, and a resting pack says nothing either way."""
        old = self._ref2
        prev = self._ref
        if not self._primed:  # the first reading since boot or a re-init
            for k in range(n):
                old[k] = prev[k] = cells[k]
            self._primed = True
            self._window = 0
            return 0
        self._window += 1
        if self._window < _FROZEN_MS // self.cfg["tick_ms"]:
            return self.frozen_cell
        self._window = 0
        moved = 0
        total = 0
        for k in range(n):
            d = cells[k] - old[k]
            total += d
            if d >= _FROZEN_MV or d <= -_FROZEN_MV:
                moved += 1
        step = total >= _FROZEN_MV * n or total <= -_FROZEN_MV * n
        found = 0
        for k in range(n):
            d = cells[k] - old[k]
            if -_STILL_MV <= d <= _STILL_MV:
                if step and n >= 3 and moved == n - 1 and not self._strikes[k]:
                    self._strikes[k] = 1
            else:
                self._strikes[k] = 0
            if self._strikes[k] and not found:
                found = k + 1
            old[k] = prev[k]  # two seconds back, for the next comparison
            prev[k] = cells[k]
        return found

    def _quantities(self, m, q, qv):
        """Fill the table's quantities from a fresh reading; True if all plausible."""
        n = self.n_cells
        cells = m.cells_mv
        hi = lo = cells[0]
        total = 0
        for i in range(n):
            v = cells[i]
            total += v
            if v > hi:
                hi = v
            if v < lo:
                lo = v
        self.cell_total_mv = total  # for the SOC step (service), with q[Q_CELL_MAX]
        ok = _CELL_MIN_MV <= lo and hi <= _CELL_MAX_MV
        self.frozen_cell = self._frozen(cells, n)
        if self.frozen_cell:
            ok = False
        if ok and self.afe.pack_measured:
            d = total - m.pack_mv
            ok = -_PACK_TOL_MV <= d <= _PACK_TOL_MV
        q[Q_CELL_MAX] = hi
        q[Q_CELL_MIN] = lo
        i = m.current_ma
        q[Q_I_CHG] = i if i > 0 else 0
        q[Q_I_DSG] = -i if i < 0 else 0
        qv[Q_CELL_MAX] = qv[Q_CELL_MIN] = 1 if ok else 0
        # Current has its own sensor: a bad cell tap must not blind the
        # over-current rows (a saturated shunt reads at least the limit).
        qv[Q_I_CHG] = qv[Q_I_DSG] = 1

        good = 0
        tmax = -32768
        tmin = 32767
        for k in range(m.n_temps):
            t = m.temps_dc[k]
            if m.temp_status[k] == NTC_OK and _TEMP_MIN_DC <= t <= _TEMP_MAX_DC:
                good += 1
                if t > tmax:
                    tmax = t
                if t < tmin:
                    tmin = t
        q[Q_T_MAX] = tmax
        q[Q_T_MIN] = tmin
        qv[Q_T_MAX] = qv[Q_T_MIN] = 1 if good else 0
        # Every fitted sensor must work: an open thermistor hides a hot cell.
        ok = ok and good == m.n_temps and m.n_temps > 0
        if m.has_board_temp:
            t = m.board_dc
            bok = m.board_status == NTC_OK and _TEMP_MIN_DC <= t <= _TEMP_MAX_DC
            q[Q_T_BOARD] = t
            qv[Q_T_BOARD] = 1 if bok else 0
            ok = ok and bok
        else:
            qv[Q_T_BOARD] = 0
        q[Q_SCD] = 1 if m.hw_faults & HW_SCD else 0
        qv[Q_SCD] = 1
        q[Q_SENSOR] = 0 if ok else 1
        qv[Q_SENSOR] = 1
        return ok

    # ---- main-loop work ------------------------------------------------------------

    def service(self):
        """Work that must stay out of the tick, called from the main loop:
        the state-of-charge estimator (floats), counters and the event log
        to flash. Allocates; never touches the FETs. Returns quickly when
        there is nothing to do."""
        try:
            self.events.flush()
        except Exception as e:  # a failing flash must not hold up the SOC work
            self.service_error(e)
        self._service_soc()

    def _load_ocv(self, chemistry):
        # A board's own cell curve (ocv_lfp.csv ...), if one was copied to
        # the board, else the chemistry's typical curve. A bad file is
        # reported (last_error), not used.
        path = self._data_path("ocv_%s.csv" % chemistry)
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return None
        try:
            return soc.parse_ocv_csv(text)
        except ValueError as e:
            self.last_error = "%s: %s" % (path, e)
            return None

    def _data_path(self, name):
        p = self.config_path
        k = p.rfind("/")
        return p[:k + 1] + name if k >= 0 else name

    def _service_soc(self):
        c = self.coulombs
        est = self.est
        if not self.valid:
            return
        if est.started and c.ms < 1000:
            return
        mean = self.cell_total_mv / self.n_cells  # the last valid reading's (see _quantities)
        hi = self.prot.q[Q_CELL_MAX]
        i = self.m.current_ma
        if not est.started:
            c.take()  # counted before the start belongs to no estimate
            est.start(mean, i, self._restore_state())
            return
        self._saved_at_ms += c.ms
        ev = soc.step(est, c, mean, i, hi)
        if ev & EV_FULL:
            self.events.push(eventlog.EV_FULL, 0, int(est.full_before * 1000))
        if ev & EV_CAPACITY:
            self.events.push(eventlog.EV_CAPACITY, 0, est.capacity_mah())
        if ev & EV_EMPTY:
            self.events.push(eventlog.EV_EMPTY, 0, int(est.empty_before * 1000))
        if ev:
            self._save_soon = True
        # Flash wear: at most one counters write per _SAVE_MS, and only once
        # SOC moved by a percent; a full charge, low knee or new capacity is
        # saved soon (a minute after the last write at the earliest).
        due = self._saved_at_ms >= _SAVE_MS and abs(est.soc - self._saved_soc) >= 0.01
        if due or (self._save_soon and self._saved_at_ms >= _SAVE_MIN_MS):
            try:
                self.save_state()
            except OSError:
                self._saved_at_ms = 0  # a failing flash is tried again next interval, not every second
                raise

    def _restore_state(self):
        try:
            if self._state is None:
                self._state = store.Slots(self._data_path("state.bin"), soc.STATE_SIZE)
            return self.est.restore(self._state.load())
        except OSError as e:
            self.last_error = "state.bin: %s" % e
            return None

    def save_state(self):
        """Write SOC, capacity and counters to flash now (rate-limited by the caller)."""
        if not self.est.started:
            return
        if self._state is None:
            self._state = store.Slots(self._data_path("state.bin"), soc.STATE_SIZE)
        self._state.save(self.est.saved())
        self._saved_at_ms = 0
        self._saved_soc = self.est.soc
        self._save_soon = False

    def service_error(self, e):
        if self.service_errors < _COUNT_MAX:
            self.service_errors += 1
        self.last_error = "service: %s: %s" % (type(e).__name__, e)

    # ---- commands ----------------------------------------------------------------

    def request_fet(self, bits, on):
        """Console FET command; returns "" or why it was refused."""
        why = self.fets.request(bits, on, self.prot.forbid)
        if why:
            held = self.prot.holders(bits & self.prot.forbid)
            return "%s held off by %s" % (("", "CHG", "DSG", "CHG and DSG")[bits & self.prot.forbid], ", ".join(held))
        return ""

    def _exclusive(self, fn):
        # A console command talking to the front-end: no tick in between
        # (see _scheduled_tick).
        self._afe_busy = True
        try:
            return fn()
        finally:
            self._afe_busy = False

    def _save_now(self):
        # SOC and counters as they are now: ship mode, a reset or a new
        # estimator would otherwise lose up to _SAVE_MS of them. A failing
        # flash must not keep the board from going down.
        try:
            self.save_state()
        except OSError as e:
            self.last_error = "state.bin: %s" % e

    def ship(self):
        self.fets.enter_ship()
        self._save_now()
        self._exclusive(self.afe.shutdown)

    def clear(self):
        """Release latched faults: (how many released, names still present)."""
        keep = 0 if self._exclusive(self.afe.clear_faults) else 1 << SCD
        self._forget_frozen()
        return self.prot.clear_latched(keep), self.prot.names_in(keep)

    def reset(self):
        self.fets.off()
        self.afe.set_fets(False, False)
        self._save_now()
        if self.reset_fn is not None:
            self.reset_fn()
