# The human console: line commands on the UART. It is one consumer of the
# UART reader; it runs in the main loop, so it never delays a tick (the tick
# is scheduled and runs between any two bytecodes of the console).
#
# Every command either succeeds or prints exactly one line starting with
# "error:" and changes nothing.
import json

from bms import config, eventlog
from bms.app import VERSION
from bms.fets import STATE_NAMES
from bms.protection import CHG, DSG, BOTH, N_ROWS, NAMES
from bms.status import snapshot, trips

MAX_LINE = 120

HELP = (
    "commands (add --json to status, cells, temps, faults, table, config get, log for one JSON line):",
    "  status                 state, FETs, pack, current, SOC, faults",
    "  cells                  cell voltages, balancing marks",
    "  temps                  temperature sensors",
    "  faults                 active faults, warnings, trip counts",
    "  table                  the protection table in force",
    "  config get [KEY]       settings (all, or one)",
    "  config set KEY VALUE   change a setting now (not saved)",
    "  config preset CHEM     voltages for lfp, nmc or lto",
    "  config save            keep the running settings on flash",
    "  config reload          drop unsaved changes",
    "  fet                    FET state; fet chg|dsg|all on|off; fet ship",
    "  clear                  release latched faults",
    "  log [N]                the latest N events (default 20, at most 256), oldest first",
    "  soc                    SOC, SOH, capacity, cycles, lifetime Ah; soc set PCT",
    "  reset                  FETs off, then restart the board",
    "  version                firmware and board",
)

_FET_BITS = {"chg": CHG, "dsg": DSG, "all": BOTH}


# Keys first, in this order, in every JSON object (MicroPython dicts have no
# order of their own); other keys follow sorted.
_KEY_ORDER = ("state", "cells_mv", "pack_mv", "current_ma", "temps_c", "board_c", "soc_pct", "soh_pct", "capacity_mah",
              "cycles", "ah_in", "ah_out", "chg", "dsg",
              "pchg", "precharge_failed", "faults", "warnings", "balancing", "bal", "uptime_s", "errors",
              "hw_faults", "reset_cause", "config_problem",
              "name", "unit", "above", "trip", "delay_ticks", "warn", "recover", "recover_ticks", "latch", "opens")


def _emit(write, obj):
    """Write obj as JSON in small pieces: no reply is ever built whole in RAM."""
    if isinstance(obj, list):
        write("[")
        for i, x in enumerate(obj):
            if i:
                write(", ")
            _emit(write, x)
        write("]")
    elif isinstance(obj, dict):
        keys = [k for k in _KEY_ORDER if k in obj] + sorted(k for k in obj if k not in _KEY_ORDER)
        write("{")
        for i, k in enumerate(keys):
            write('%s"%s": ' % (", " if i else "", k))
            _emit(write, obj[k])
        write("}")
    else:
        write(json.dumps(obj))


class CommandError(Exception):
    pass


def _on(b):
    return "on" if b else "off"


class Console:
    def __init__(self, bms, write):
        self.bms = bms
        self.write = write  # callable taking a str
        self.buf = bytearray(MAX_LINE)
        self.n = 0
        self.overflow = False
        self.last_cr = False

    # ---- bytes in --------------------------------------------------------------

    def feed(self, data):
        """Take bytes from the UART reader; run each complete line."""
        for b in data:
            if b == 13 or b == 10:
                if b == 10 and self.last_cr:
                    self.last_cr = False
                    continue
                self.last_cr = b == 13
                self._end_line()
                continue
            self.last_cr = False
            if b == 8 or b == 127:  # backspace from a terminal
                if self.n and not self.overflow:
                    self.n -= 1
            elif self.n < MAX_LINE:
                self.buf[self.n] = b
                self.n += 1
            else:
                self.overflow = True

    def _end_line(self):
        n = self.n
        over = self.overflow
        self.n = 0
        self.overflow = False
        if over:
            self.error("line too long (max %d bytes)" % MAX_LINE)
            return
        if not n:
            return
        raw = bytes(self.buf[:n])
        for b in raw:
            if b < 32 or b > 126:
                if b != 9:
                    self.error("line has non-printable or non-ASCII bytes; commands are plain ASCII")
                    return
        self.run(raw.decode())

    # ---- lines -------------------------------------------------------------------

    def out(self, line):
        self.write(line + "\r\n")

    def error(self, msg):
        self.out("error: " + msg)

    def run(self, line):
        words = line.split()
        if not words:
            return
        as_json = "--json" in words
        if as_json:
            words = [w for w in words if w != "--json"]
        if not words:
            self.error("--json needs a command")
            return
        cmd = words[0]
        handler = getattr(self, "cmd_" + cmd, None) if cmd.isalpha() else None
        if handler is None:
            self.error("unknown command '%s' (try 'help')" % cmd[:20])
            return
        try:
            handler(words[1:], as_json)
        except (CommandError, config.ConfigError) as e:
            self.error(str(e))
        except OSError as e:
            self.error("storage: %s" % e)

    def _json(self, obj):
        _emit(self.write, obj)
        self.write("\r\n")

    @staticmethod
    def _no_args(args):
        if args:
            raise CommandError("unexpected argument '%s'" % args[0][:20])

    # ---- commands ------------------------------------------------------------------

    def cmd_help(self, args, as_json):
        self._no_args(args)
        if as_json:
            self._json({"help": HELP})
            return
        for line in HELP:
            self.out(line)

    def cmd_version(self, args, as_json):
        self._no_args(args)
        import sys

        v = {"firmware": VERSION, "board": self.bms.board_name,
             "micropython": ".".join(str(x) for x in sys.implementation.version[:3])}
        if as_json:
            self._json(v)
        else:
            self.out("openbms %s board %s micropython %s" % (v["firmware"], v["board"], v["micropython"]))

    def cmd_status(self, args, as_json):
        self._no_args(args)
        s = snapshot(self.bms)
        if as_json:
            self._json(s)
            return
        soc = "--" if s["soc_pct"] is None else "%d%%" % s["soc_pct"]
        self.out("state %s  CHG %s  DSG %s  SOC %s  uptime %d s"
                 % (s["state"], _on(s["chg"]), _on(s["dsg"]), soc, s["uptime_s"]))
        cells = s["cells_mv"]
        if cells:
            self.out("pack %.2f V  current %+.3f A  cells %d..%d mV (delta %d mV)"
                     % (s["pack_mv"] / 1000, s["current_ma"] / 1000, min(cells), max(cells), max(cells) - min(cells)))
        else:
            self.out("no measurement yet")
        self.out("faults: %s  warnings: %s  balancing: %s (%s)" % (
            ", ".join(s["faults"]) or "none", ", ".join(s["warnings"]) or "none",
            ", ".join(str(c) for c in s["balancing"]) or "none", s["bal"]))
        self.out("SOH %.1f %%  capacity %.1f Ah  cycles %.1f  lifetime in %.1f Ah out %.1f Ah"
                 % (s["soh_pct"], s["capacity_mah"] / 1000, s["cycles"], s["ah_in"], s["ah_out"]))
        if "config_problem" in s:
            self.out("config: " + s["config_problem"])

    def cmd_cells(self, args, as_json):
        self._no_args(args)
        s = snapshot(self.bms)
        if as_json:
            self._json({"cells_mv": s["cells_mv"], "balancing": s["balancing"]})
            return
        cells = s["cells_mv"]
        if not cells:
            self.out("no measurement yet")
            return
        lo = min(cells)
        hi = max(cells)
        for i, mv in enumerate(cells):
            mark = " bal" if (i + 1) in s["balancing"] else ""
            tag = " max" if mv == hi else (" min" if mv == lo else "")
            self.out("%2d %5d mV%s%s" % (i + 1, mv, tag, mark))
        self.out("delta %d mV" % (hi - lo))

    def cmd_temps(self, args, as_json):
        self._no_args(args)
        s = snapshot(self.bms)
        if as_json:
            self._json({"temps_c": s["temps_c"], "board_c": s["board_c"]})
            return
        for i, t in enumerate(s["temps_c"]):
            self.out("T%d %s" % (i + 1, "sensor fault" if t is None else "%.1f C" % t))
        if self.bms.m.has_board_temp:
            self.out("board %s" % ("sensor fault" if s["board_c"] is None else "%.1f C" % s["board_c"]))

    def cmd_faults(self, args, as_json):
        self._no_args(args)
        s = snapshot(self.bms)
        t = trips(self.bms)
        if as_json:
            self._json({"faults": s["faults"], "warnings": s["warnings"], "trips": t,
                        "errors": s["errors"], "hw_faults": s["hw_faults"], "config_problem": self.bms.config_problem or None})
            return
        p = self.bms.prot
        if not s["faults"]:
            self.out("faults: none")
        for r in range(N_ROWS):
            if p.active[r]:
                d = p.table.describe(r)
                self.out("%s: opens %s%s" % (NAMES[r], d["opens"], " (latched: 'clear' to release)" if d["latch"] else ""))
        self.out("warnings: %s" % (", ".join(s["warnings"]) or "none"))
        self.out("trips since boot: %s" % (", ".join("%s %d" % kv for kv in t.items()) or "none"))
        e = s["errors"]
        self.out("errors: comm %d  crc %d  bus %d  chip resets %d  tick %d  missed ticks %d" % (
            e["comm"], e["crc"], e["bus"], e["chip_resets"], e["tick"], e["missed"]))
        if s["hw_faults"]:
            self.out("front-end protection acted: " + ", ".join(s["hw_faults"]))
        if self.bms.frozen_cell:
            self.out("cell %d reading frozen" % self.bms.frozen_cell)
        if self.bms.last_error:
            self.out("last tick error: " + self.bms.last_error)
        if self.bms.config_problem:
            self.out("config: " + self.bms.config_problem)

    def cmd_table(self, args, as_json):
        self._no_args(args)
        t = self.bms.prot.table
        tick = self.bms.cfg["tick_ms"]
        rows = [t.describe(r) for r in range(N_ROWS)]
        if as_json:
            self._json({"tick_ms": tick, "rows": rows})
            return
        self.out("name      unit  trip      delay_ms  warn     recover   rec_ms  latch opens")
        for d in rows:
            op = ">=" if d["above"] else "<="
            unit = d["unit"]
            if unit == "0.1C":  # shown in degC, kept as integers in the table
                unit = "C"
                vals = tuple("%g" % (d[k] / 10) for k in ("trip", "warn", "recover"))
            else:
                vals = tuple(str(d[k]) for k in ("trip", "warn", "recover"))
            self.out("%-9s %-5s %s%-7s %8d  %-8s %-9s %6d  %-5s %s" % (
                d["name"], unit, op, vals[0], d["delay_ticks"] * tick, vals[1], vals[2],
                d["recover_ticks"] * tick, "yes" if d["latch"] else "no", d["opens"]))

    def cmd_config(self, args, as_json):
        if not args:
            raise CommandError("config needs get, set, preset, save or reload")
        sub = args[0]
        rest = args[1:]
        bms = self.bms
        if sub == "get":
            if len(rest) > 1:
                raise CommandError("config get takes at most one key")
            values = bms.cfg.values()
            if rest:
                key = rest[0]
                if key not in values:
                    raise CommandError("unknown key %s (see 'config get')" % key[:40])
                values = {key: values[key]}
            if as_json:
                self._json(values)
            else:
                for k in sorted(values):
                    self.out("%s = %s" % (k, values[k]))
        elif sub == "set":
            if len(rest) != 2:
                raise CommandError("usage: config set KEY VALUE")
            new = bms.cfg.with_value(rest[0], rest[1])
            bms.apply_config(new)
            bms.events.push_config(rest[0], new[rest[0]])
            self.out("ok %s = %s (not saved: 'config save' keeps it)" % (rest[0], new[rest[0]]))
        elif sub == "preset":
            if len(rest) != 1:
                raise CommandError("usage: config preset lfp|nmc|lto")
            bms.apply_config(bms.cfg.with_preset(rest[0]))
            bms.events.push(eventlog.EV_CONFIG_PRESET, eventlog.CHEMISTRIES.index(rest[0]))
            self.out("ok %s preset (not saved: 'config save' keeps it)" % rest[0])
        elif sub == "save":
            self._no_args(rest)
            bms.save_config()
            bms.events.push(eventlog.EV_CONFIG_SAVE)
            self.out("ok saved")
        elif sub == "reload":
            self._no_args(rest)
            bms.reload_config()
            bms.events.push(eventlog.EV_CONFIG_RELOAD)
            self.out("ok reloaded")
        else:
            raise CommandError("config needs get, set, preset, save or reload, not '%s'" % sub[:20])

    def cmd_fet(self, args, as_json):
        bms = self.bms
        if not args:
            f = bms.fets
            v = {"state": STATE_NAMES[f.state], "chg": f.chg, "dsg": f.dsg,
                 "held_chg": bms.prot.holders(CHG), "held_dsg": bms.prot.holders(DSG)}
            if as_json:
                self._json(v)
            else:
                self.out("state %s  CHG %s  DSG %s" % (v["state"], _on(f.chg), _on(f.dsg)))
            return
        if args == ["ship"]:
            bms.events.push(eventlog.EV_SHIP)  # on flash before the front-end cuts the power
            bms.ship()
            self.out("ok ship mode: FETs off until 'fet all on'")
            return
        if len(args) != 2 or args[0] not in _FET_BITS or args[1] not in ("on", "off"):
            raise CommandError("usage: fet [chg|dsg|all on|off | ship]")
        why = bms.request_fet(_FET_BITS[args[0]], args[1] == "on")
        if why:
            raise CommandError("refused: " + why)
        bms.events.push(eventlog.EV_FET_CMD, _FET_BITS[args[0]], 1 if args[1] == "on" else 0)
        self.out("ok %s %s" % (args[0], args[1]))

    def cmd_clear(self, args, as_json):
        self._no_args(args)
        n, held = self.bms.clear()
        if held and not n:
            raise CommandError("%s still present: remove the cause, then 'clear'" % ", ".join(held))
        self.bms.events.push(eventlog.EV_CLEAR_CMD, 0, n)
        msg = "ok released %d latched fault%s" % (n, "" if n == 1 else "s")
        if held:
            msg += "; %s still present" % ", ".join(held)
        self.out(msg)

    def cmd_soc(self, args, as_json):
        est = self.bms.est
        if args:
            if len(args) != 2 or args[0] != "set":
                raise CommandError("usage: soc [set PCT] [--json]")
            try:
                pct = int(args[1])
            except ValueError:
                pct = -1
            if not 0 <= pct <= 100:
                raise CommandError("soc set needs a percentage 0..100, got '%s'" % args[1][:20])
            if not est.started:
                raise CommandError("no valid reading yet: SOC has not started")
            # The owner knows better (a pack just built, a charge while the
            # board was off): believed to within 5 points, then corrected.
            est.reset(pct / 100, 0.05)
            self.bms.events.push(eventlog.EV_SOC_SET, 0, pct)
            try:
                self.bms.save_state()
            except OSError as e:  # set all the same; saved at the next interval
                self.out("ok soc %d%% (not saved yet: storage: %s)" % (pct, e))
                return
            self.out("ok soc %d%%" % pct)
            return
        d = {"soc_pct": est.pct() if est.started else None,
             "sigma_pct": round(est.sigma_pct(), 1) if est.started else None,
             "soh_pct": round(est.soh_pct(), 1), "capacity_mah": est.capacity_mah(),
             "rated_mah": est.rated_mah, "cycles": round(est.cycles(), 2),
             "ah_in": round(est.ah_in(), 1), "ah_out": round(est.ah_out(), 1),
             "full_charges": est.full_count, "capacity_updates": est.cap_updates,
             "offset_ma": int(est.bias * 1000), "r0_mohm": round(est.r0 * 1000, 2)}
        if as_json:
            self._json(d)
            return
        if d["soc_pct"] is None:
            self.out("SOC --  (no valid reading yet)")
        else:
            self.out("SOC %d %% (+-%.1f)  SOH %.1f %% (%.1f of %.1f Ah)" % (
                d["soc_pct"], d["sigma_pct"], d["soh_pct"], d["capacity_mah"] / 1000, d["rated_mah"] / 1000))
        self.out("cycles %.2f  lifetime in %.1f Ah out %.1f Ah  full charges %d  capacity estimates %d" % (
            d["cycles"], d["ah_in"], d["ah_out"], d["full_charges"], d["capacity_updates"]))
        self.out("current sensor offset %+d mA  cell resistance %.2f mOhm (learned)" % (d["offset_ma"], d["r0_mohm"]))

    def cmd_reset(self, args, as_json):
        self._no_args(args)
        self.bms.events.push(eventlog.EV_RESET_CMD)  # on flash before the reset
        self.out("ok resetting")
        self.bms.reset()

    def cmd_log(self, args, as_json):
        if len(args) > 1:
            raise CommandError("usage: log [N] [--json]")
        n = 20
        if args:
            try:
                n = int(args[0])
            except ValueError:
                n = 0
            if not 1 <= n <= eventlog.COUNT:
                raise CommandError("log N must be 1..%d, got '%s'" % (eventlog.COUNT, args[0][:20]))
        ev = self.bms.events
        try:
            ev.flush()  # what the tick queued belongs in the answer
        except OSError:
            pass  # then what is on flash; the queue is written later
        ring = ev.open()  # raises OSError before any output
        w = self.write
        if as_json:
            # Streamed: up to 256 records are never held in RAM at once.
            w('{"events": [')
            for k, d in enumerate(ev.latest(n)):
                w(", {" if k else "{")
                for i, key in enumerate(eventlog.FIELDS):
                    w('%s"%s": ' % (", " if i else "", key))
                    _emit(w, d[key])
                w("}")
            w('], "torn": %d, "dropped": %d}\r\n' % (ring.skipped, ev.dropped))
            return
        empty = True
        for d in ev.latest(n):
            empty = False
            self.out(eventlog.text(d))
        if empty:
            self.out("log empty")
        if ring.skipped:
            self.out("(%d torn record%s skipped)" % (ring.skipped, "" if ring.skipped == 1 else "s"))
        if ev.dropped:
            self.out("(%d event%s lost since boot: queue full or flash failing)"
                     % (ev.dropped, "" if ev.dropped == 1 else "s"))

