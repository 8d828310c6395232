"""The simulator's own commands: console lines starting with `sim ` on the
virtual board, and the timed actions of a scenario. Each command returns its
reply lines; a bad command raises SimCommandError with a one-line message
and changes nothing.

Runs under MicroPython (the virtual board) and CPython (tests).
"""

import json

import simworld

HELP = (
    "sim commands (everything else goes to the firmware's console):",
    "  sim show [--json]          the simulated hardware: time, cells, current, FETs, temperatures, faults",
    "  sim cell N MV | free       pin cell N's open-circuit voltage at MV mV / let it follow its charge again",
    "  sim current MA | profile   an ideal current source, mA (+ = charging) / back to the scenario's sources",
    "  sim temp N C | free        pin thermistor N at C degC (N = board for the board sensor) / release it",
    "  sim ambient C              ambient temperature (the pack and the board drift toward it)",
    "  sim fault NAME on|off [N]  inject or remove a fault (sim fault list)",
    "  sim alert on|off           force the short-circuit comparator line / hand it back to the comparator",
    "  sim pause | run            stop / restart virtual time (the firmware's console keeps answering)",
    "  sim step SECONDS           pause, then run SECONDS of virtual time and report",
    "  sim speed X | max          pace at X times the wall clock, or as fast as the host can",
    "  sim power cut              the MCU's supply fails now: it restarts with PWRON_RESET, the pack carries on",
    "  sim power cut write [B]    the same during the firmware's next flash write, after B bytes of it (default half)",
    "  sim power cut cancel       disarm that",
)


# The words after `sim` (scenario files are checked against them).
COMMANDS = ("help", "show", "cell", "current", "temp", "ambient", "fault", "alert", "pause", "run", "step", "speed",
            "power")


class SimCommandError(ValueError):
    pass


def _int(text, what):
    try:
        return int(text)
    except ValueError:
        raise SimCommandError("%s must be an integer, got '%s'" % (what, text[:20]))


def _float(text, what):
    try:
        v = float(text)
    except ValueError:
        raise SimCommandError("%s must be a number, got '%s'" % (what, text[:20]))
    if v != v or v in (float("inf"), float("-inf")):
        raise SimCommandError("%s must be a finite number" % what)
    return v


def _on_off(text, usage):
    if text not in ("on", "off"):
        raise SimCommandError(usage)
    return text == "on"


def _on(b):
    return "on" if b else "off"


class SimCommands:
    """Runs `sim ...` lines against a world; `on_step_done` lines go to out()."""

    def __init__(self, world, out=None):
        self.world = world
        self.out = out  # callable(line) for replies that come later (sim step)

    def run(self, line):
        """Reply lines for one command line (with or without the `sim` word)."""
        words = line.split()
        if words and words[0] == "sim":
            words = words[1:]
        try:
            return self._run(words)
        except SimCommandError as e:
            return ["error: " + str(e)]
        except ValueError as e:  # the world refused (out of range and the like)
            return ["error: " + str(e)]

    def _run(self, words):
        w = self.world
        if not words or words == ["help"]:
            return list(HELP)
        cmd = words[0]
        args = words[1:]
        if cmd == "show":
            if args == ["--json"]:
                return ["sim: " + json.dumps(self.state())]
            if args:
                raise SimCommandError("usage: sim show [--json]")
            return self.show()
        if cmd == "cell":
            if len(args) != 2:
                raise SimCommandError("usage: sim cell N MV | sim cell N free")
            n = _int(args[0], "cell number")
            if args[1] == "free":
                w.free_cell(n)
                return ["sim: cell %d follows its charge again" % n]
            mv = _float(args[1], "cell voltage")
            if not 0 <= mv <= 6000:
                raise SimCommandError("cell voltage must be 0..6000 mV")
            w.set_cell(n, mv)
            return ["sim: cell %d open-circuit voltage pinned at %g mV" % (n, mv)]
        if cmd == "current":
            if len(args) != 1:
                raise SimCommandError("usage: sim current MA | sim current profile")
            if args[0] == "profile":
                w.set_current(None)
                return ["sim: current from the profile, %d mA flowing" % w.flowing_ma()]
            ma = _int(args[0], "current")
            if not -2000000 <= ma <= 2000000:
                raise SimCommandError("current must be within +-2000000 mA")
            w.set_current(ma)
            return ["sim: current %d mA requested, %d mA flowing" % (ma, w.flowing_ma())]
        if cmd == "temp":
            if len(args) != 2:
                raise SimCommandError("usage: sim temp N C | sim temp N free (N = board for the board sensor)")
            c = None if args[1] == "free" else _float(args[1], "temperature")
            if c is not None and not -60 <= c <= 200:
                raise SimCommandError("temperature must be -60..200 C")
            if args[0] == "board":
                if not self.world.board.get("board_ntc"):
                    raise SimCommandError("this board has no board sensor")
                w.set_board_temp(c)
                return ["sim: board sensor %s" % ("released" if c is None else "pinned at %s C" % c)]
            n = _int(args[0], "sensor number")
            if not 1 <= n <= len(w.temp_pin):
                raise SimCommandError("sensor number out of range (1..%d, or board)" % len(w.temp_pin))
            w.set_temp(n - 1, c)
            return ["sim: sensor %d %s" % (n, "released" if c is None else "pinned at %s C" % c)]
        if cmd == "ambient":
            if len(args) != 1:
                raise SimCommandError("usage: sim ambient C")
            c = _float(args[0], "ambient temperature")
            if not -60 <= c <= 80:
                raise SimCommandError("ambient temperature must be -60..80 C")
            w.set_ambient(c)
            return ["sim: ambient %s C" % c]
        if cmd == "fault":
            if args == ["list"]:
                return ["sim: %-20s %s" % (n, simworld.FAULTS[n]) for n in sorted(simworld.FAULTS)]
            if len(args) not in (2, 3):
                raise SimCommandError("usage: sim fault NAME on|off [N] (sim fault list)")
            on = _on_off(args[1], "usage: sim fault NAME on|off [N]")
            arg = _int(args[2], "fault argument") if len(args) == 3 else None
            w.set_fault(args[0], on, arg)
            v = w.faults.get(args[0])
            where = "" if v is None else (" (%d %%)" if args[0] in ("afe_crc", "afe_nack") else " (%d)") % v
            return ["sim: fault %s %s%s" % (args[0], _on(on), where)]
        if cmd == "alert":
            if len(args) != 1:
                raise SimCommandError("usage: sim alert on|off")
            if not w.board.get("alert"):
                raise SimCommandError("this board has no alert line")
            if _on_off(args[0], "usage: sim alert on|off"):
                w.raise_alert()
                return ["sim: alert line forced active"]
            w.release_alert()
            return ["sim: alert line back to the comparator"]
        if cmd == "pause" and not args:
            w.paused = True
            w.step_to_ms = None
            return ["sim: paused at t=%.3f s" % (w.now_ms / 1000.0)]
        if cmd == "run" and not args:
            w.paused = False
            w.step_to_ms = None
            w.set_speed(w.speed)
            return ["sim: running (%s)" % self._pace()]
        if cmd == "step":
            if len(args) != 1:
                raise SimCommandError("usage: sim step SECONDS")
            s = _float(args[0], "step")
            if not 0 < s <= 7 * 86400:
                raise SimCommandError("step must be 0..604800 s")
            w.paused = True
            w.step_to_ms = w.now_ms + max(1, int(s * 1000 + 0.5))
            w.on_step_done = self._step_done
            return []  # the reply comes when the step is done
        if cmd == "speed":
            if len(args) != 1:
                raise SimCommandError("usage: sim speed X | sim speed max")
            if args[0] == "max":
                w.pace = "fast"
            else:
                x = _float(args[0], "speed")
                if not 0.01 <= x <= 100000:
                    raise SimCommandError("speed must be 0.01..100000 (or max)")
                w.pace = "wall"
                w.set_speed(x)
            return ["sim: %s" % self._pace()]
        if cmd == "power":
            return self._power(args)
        raise SimCommandError("bad sim command '%s' (try sim help)" % " ".join(words)[:40])

    def _power(self, args):
        # The cut itself happens where the firmware next lets time pass, or
        # inside the flash write (tools/sim/flash.py); the board then restarts.
        w = self.world
        usage = "usage: sim power cut | sim power cut write [BYTES] | sim power cut cancel"
        if not args or args[0] != "cut" or len(args) > 3:
            raise SimCommandError(usage)
        if len(args) == 1:
            w.power_off = True
            return ["sim: power cut"]
        if args[1] == "cancel" and len(args) == 2:
            w.power_cut_write = None
            return ["sim: power cut cancelled"]
        if args[1] != "write":
            raise SimCommandError(usage)
        k = -1
        if len(args) == 3:
            k = _int(args[2], "bytes")
            if not 0 <= k <= 65536:
                raise SimCommandError("bytes must be 0..65536")
        w.power_cut_write = k
        return ["sim: power cut armed: during the next flash write, after %s" % (
            "half of it" if k < 0 else "%d bytes of it" % k)]

    def _pace(self):
        w = self.world
        if w.pace == "fast":
            return "as fast as the host runs"
        if w.pace == "wall":
            return "%gx the wall clock" % w.speed
        return "1 ms per idle"

    def _step_done(self):
        if self.out is not None:
            self.out("sim: t=%.3f s (paused)" % (self.world.now_ms / 1000.0))

    def state(self):
        """The simulated hardware as one dict (sim show --json)."""
        w = self.world
        p = w.pack
        n = p.n
        cells = [int(round(w.cell_true_mv(k))) for k in range(n)]
        return {
            "t_s": w.now_ms / 1000.0,
            "time_of_day_h": w.time_of_day_s() / 3600.0,
            "paused": w.paused,
            "pace": w.pace,
            "speed": w.speed,
            "cells_mv": cells,
            "pinned": [k + 1 for k in range(n) if p.pinned(k)],
            "pack_mv": sum(cells),
            "current_ma": w.flowing_ma(),
            "manual_ma": w.manual_ma,
            "chg": w.fet_on("chg"),
            "dsg": w.fet_on("dsg"),
            "bleeding": [k + 1 for k in range(n) if w.bleeding(k)],
            "soc_pct": round(p.soc_pct(), 2),
            "cell_soc_pct": [round(p.cell_soc_pct(k), 2) for k in range(n)],
            "pack_c": round(p.temp_c, 2),
            "sensor_c": [round(w.sensor_temp_c(i), 2) for i in range(len(w.temp_pin))],
            "board_c": round(w.board_temp(), 2),
            "ambient_c": p.ambient_c,
            "faults": dict(w.faults),
            "alert": w.board.get("alert") is not None and w.read_pin(w.board["alert"]["pin"]) == (
                0 if w.board["alert"].get("active_low", True) else 1),
            "resets": w.resets,
            "reset_cause": w.reset_cause,
            "power_cut_write": w.power_cut_write,
            "chip": w.afe_chip.hw_state() if w.afe_chip is not None else None,
        }

    def show(self):
        s = self.state()
        cells = s["cells_mv"]
        marks = " ".join("%d%s%s" % (mv, "*" if k + 1 in s["pinned"] else "", "~" if k + 1 in s["bleeding"] else "")
                         for k, mv in enumerate(cells))
        faults = ", ".join("%s%s" % (k, "" if v is None else "(%d)" % v) for k, v in sorted(s["faults"].items()))
        return [
            "sim: t=%.3f s (day %d %02d:%02d)  %s%s" % (
                s["t_s"], int((self.world.day_start_s + s["t_s"]) // 86400), int(s["time_of_day_h"]),
                int(s["time_of_day_h"] * 60) % 60, "paused, " if s["paused"] else "", self._pace()),
            "sim: cells mV %s  (* pinned, ~ bleeding)" % marks,
            "sim: pack %.3f V  current %d mA%s  CHG %s  DSG %s  true SOC %.1f %%" % (
                s["pack_mv"] / 1000.0, s["current_ma"],
                "" if s["manual_ma"] is None else " (manual %d mA)" % s["manual_ma"],
                _on(s["chg"]), _on(s["dsg"]), s["soc_pct"]),
            "sim: pack %.1f C  sensors %s C  board %.1f C  ambient %.1f C" % (
                s["pack_c"], ", ".join("%.1f" % t for t in s["sensor_c"]), s["board_c"], s["ambient_c"]),
            "sim: faults %s  alert %s  resets %d (last cause %d)" % (
                faults or "none", _on(s["alert"]), s["resets"], s["reset_cause"]),
        ] + (["sim: chip %s" % " ".join("%s=%s" % (k, s["chip"][k]) for k in sorted(s["chip"]))]
             if s["chip"] else [])
