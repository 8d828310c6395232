"""The virtual board: the unmodified firmware on a simulated board and pack,
inside the real MicroPython interpreter. `python -m tools.vboard` (pty,
pacing, monitor) and `python -m tools.scenario` (headless runs) start it;
it can also run by hand from a terminal:

    MICROPYPATH=firmware/lib:tools/sim:.frozen micropython tools/sim/run.py \\
        [--board boards/esp32_mux_16s.json] [--chemistry lfp|nmc] [--cells N]
        [--config FILE | --fs DIR] [--speed X|max] [--paused] [--scenario FILE]
        [--headless --out DIR] [--uart-in FD --uart-out FD] [--cells-mv MV,...]
        [--main firmware/main.py]

The console UART is stdin/stdout, or the file descriptors --uart-in/--uart-out
(the pty relay of tools/vboard.py; --uart-in must be non-blocking). Lines
that start with "sim " drive the simulated hardware instead (`sim help`);
all other bytes reach the firmware's UART unchanged.

The firmware runs exactly as on the board: main(board, config) from
firmware/main.py, which never returns. A watchdog or machine.reset()
restarts it (fresh modules, MCU peripherals reset, pack and chips
unchanged). With --headless the scenario runs as fast as the host can and
the run ends with its result (exit code 0: every expectation met, 1: not,
2: bad arguments or scenario).
"""

import json
import os
import sys

import select

import flash
import machine
import scenario as scmod
import simcmd
import simworld

try:
    import utime as _clock
except ImportError:
    import time as _clock


USAGE = ("usage: run.py [--board FILE] [--chemistry lfp|nmc] [--cells N] [--config FILE | --fs DIR] "
         "[--speed X|max] [--paused] [--scenario FILE] [--headless --out DIR] "
         "[--uart-in FD --uart-out FD] [--cells-mv MV,...] [--main FILE] [--seed N]")
_OPTS = {"--board": "board", "--cells-mv": "cells_mv", "--main": "main", "--config": "config", "--fs": "fs",
         "--chemistry": "chemistry", "--cells": "cells", "--speed": "speed", "--scenario": "scenario",
         "--out": "out", "--uart-in": "uart_in", "--uart-out": "uart_out", "--seed": "seed"}
_FLAGS = {"--paused": "paused", "--headless": "headless"}


def fail(msg):
    print("error: " + msg)
    sys.exit(2)


def parse_args(argv):
    opts = {"board": None, "cells_mv": None, "main": "firmware/main.py", "config": None, "fs": None,
            "chemistry": None, "cells": None, "speed": "1", "scenario": None, "out": None, "uart_in": None,
            "uart_out": None, "seed": None, "paused": False, "headless": False}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _FLAGS:
            opts[_FLAGS[a]] = True
            i += 1
            continue
        key = _OPTS.get(a)
        if key is None or i + 1 >= len(argv):
            print(USAGE)
            fail("bad argument %s" % a)
        opts[key] = argv[i + 1]
        i += 2
    if opts["headless"] and not opts["scenario"]:
        fail("--headless needs --scenario")
    return opts


class Terminal:
    """Connects the world's UART queues to the host: an idle hook.

    Bytes from the host reach the firmware's UART as they come, except a
    line that starts with "sim" + space, which is a simulator command; a few
    bytes at a line start are held back until that is decided.
    """

    def __init__(self, world, inp, out):
        self.world = world
        self.inp = inp
        self.out = out
        self.poller = select.poll()
        self.poller.register(inp, select.POLLIN)
        self.open = True
        self.cmds = simcmd.SimCommands(world, self.say)
        self.hold = bytearray()  # bytes at a line start, maybe "sim "
        self.at_start = True
        self.sim_line = None  # bytearray while inside a sim line
        self.skip_lf = False
        world.wait_input = self.wait

    def wait(self, ms):
        # Sleep until host input arrives or ms pass (world pacing, pause).
        if self.open:
            self.poller.poll(int(ms))
        else:
            _clock.sleep_ms(int(ms))

    def pump(self):
        self.flush()
        if not self.open:
            return
        n = 0
        while n < 512 and self.poller.poll(0):
            b = self.inp.read(1)
            if not b:  # EOF: keep running, stop reading
                self.poller.unregister(self.inp)
                self.open = False
                break
            n += 1
            self.byte(b[0])

    def byte(self, c):
        eol = c == 13 or c == 10
        if self.skip_lf:
            self.skip_lf = False
            if c == 10:
                return
        if self.sim_line is not None:
            if eol:
                raw = bytes(self.sim_line)
                self.sim_line = None
                self.at_start = True
                self.skip_lf = c == 13
                self.command(raw)
            elif len(self.sim_line) < 200:
                self.sim_line.append(c)
            return
        if self.at_start:
            self.hold.append(c)
            h = bytes(self.hold)
            if h == b"sim " or (h[:3] == b"sim" and len(h) == 4 and eol):
                self.hold = bytearray()
                if eol:
                    self.skip_lf = c == 13
                    self.command(b"sim")
                else:
                    self.sim_line = bytearray(b"sim ")
                return
            if b"sim "[:len(h)] == h:
                return  # could still be "sim "
            self.world.uart_feed(h)
            self.hold = bytearray()
            self.at_start = eol
            return
        self.world.uart_feed(bytes((c,)))
        self.at_start = eol

    def command(self, raw):
        for b in raw:
            if b < 32 or b > 126:
                self.say("error: sim commands are plain ASCII")
                return
        for reply in self.cmds.run(raw.decode().strip()):
            self.say(reply)

    def say(self, line):
        self.flush()  # firmware output first: its lines stay whole
        self.write((line + "\r\n").encode())

    def flush(self):
        data = self.world.uart_take()
        if data:
            self.write(data)

    def write(self, data):
        self.out.write(data)
        try:
            self.out.flush()
        except OSError:  # a raw pipe: MicroPython's flush is fsync, EINVAL there
            pass


def _load_entry(path):
    """Import the firmware entry module from its file path."""
    i = path.rfind("/")
    folder, name = (path[:i] or "/", path[i + 1:]) if i >= 0 else (".", path)
    if name.endswith(".py"):
        name = name[:-3]
    elif name.endswith(".mpy"):  # compiled firmware (the small-heap benchmark)
        name = name[:-4]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def _board_path(name):
    if name is None:  # the same default as tools/vboard.py
        return "boards/esp32_mux_16s.json"
    if name.endswith(".json") or "/" in name:
        return name
    return "boards/%s.json" % name


def _write_config(path, board, chemistry, cells, changes, keep):
    """A config in the firmware's own format: board limits, then changes."""
    from bms import config

    if keep and config.load(path)[0] is not None:
        return "kept the saved config %s" % path
    try:
        cfg = config.defaults(chemistry, cells).with_values(board.get("config") or {})
        cfg = cfg.with_values(changes or {})
    except config.ConfigError as e:
        fail("config: %s" % e)
    config.save(cfg, path)
    return "wrote %s (%s, %d cells)" % (path, chemistry, cells)


def _mkdirs(path):
    cur = ""
    for part in path.split("/"):
        cur = cur + part + "/" if cur or part else "/"
        if part:
            try:
                os.mkdir(cur)
            except OSError:
                pass


def _int_opt(opts, key):
    try:
        return int(opts[key])
    except ValueError:
        fail("%s must be an integer" % key)


def setup(opts):
    """(world, board path, config path, scenario or None, log lines)."""
    notes = []
    sc = None
    if opts["scenario"]:
        try:
            sc = scmod.load(opts["scenario"])
        except scmod.ScenarioError as e:
            fail(str(e))
    bpath = _board_path(opts["board"] or (sc["board"] if sc else None))
    try:
        board = simworld.load_board(bpath)
    except OSError:
        fail("no board file %s" % bpath)
    except ValueError as e:
        fail("board file %s is not valid JSON: %s" % (bpath, e))
    chem = opts["chemistry"] or (sc.get("chemistry", "lfp") if sc else "lfp")
    if chem not in ("lfp", "nmc"):
        fail("--chemistry must be lfp or nmc")
    # An explicit --board runs the scenario on that board, at its cell count.
    if opts["cells"]:
        cells = _int_opt(opts, "cells")
    elif sc is not None and not opts["board"]:
        cells = sc.get("cells", board["cells"])
    else:
        cells = board["cells"]
    if not 1 <= cells <= simworld.board_cells(board):
        fail("--cells must be 1..%d on board %s" % (simworld.board_cells(board), board.get("name")))
    if sc is not None:
        sc = dict(sc)
        sc["chemistry"] = chem
        sc["cells"] = cells
        if opts["seed"] is not None:  # another draw of the sensor errors
            sc["sensors"] = dict(sc.get("sensors", {}))
            sc["sensors"]["seed"] = _int_opt(opts, "seed")
        try:
            world = scmod.build(sc, board)
        except (scmod.ScenarioError, ValueError) as e:
            fail(str(e))
    else:
        sensors = dict(scmod.DEFAULT_SENSORS)
        if opts["seed"] is not None:
            sensors["seed"] = _int_opt(opts, "seed")
        world = simworld.SimWorld(board, simworld.default_pack(board, cells, chem), sensors)
        if opts["cells_mv"]:
            try:
                mvs = [int(x) for x in opts["cells_mv"].split(",")]
            except ValueError:
                fail("--cells-mv needs integers")
            if len(mvs) != cells:
                fail("--cells-mv needs %d values" % cells)
            for n, mv in enumerate(mvs):
                world.set_cell(n + 1, mv)
    cfg = opts["config"]
    if cfg is None:
        # A fresh folder per run unless one is given (runs may be concurrent).
        fs = opts["fs"] or "/tmp/openbms-vboard-%s" % "".join("%02x" % b for b in os.urandom(4))
        _mkdirs(fs)
        cfg = fs + "/config.json"
        notes.append(_write_config(cfg, board, chem, cells, sc.get("config") if sc else None,
                                   keep=opts["fs"] is not None and not opts["headless"]))
    return world, bpath, cfg, sc, notes


def _pace(world, opts, sc):
    speed = opts["speed"]
    if opts["headless"]:
        speed = "max"
    if speed == "max":
        world.pace = "fast"
        return
    try:
        x = float(speed)
    except ValueError:
        fail("--speed must be a number or max")
    if not 0.01 <= x <= 100000:
        fail("--speed must be 0.01..100000 or max")
    world.pace = "wall"
    world.set_speed(x)


def run(opts):
    try:
        open(opts["main"]).close()
    except OSError:
        fail("firmware entry %s not found" % opts["main"])
    world, bpath, cfg, sc, notes = setup(opts)
    _pace(world, opts, sc)
    world.paused = opts["paused"]
    machine.attach(world)
    fl = flash.Flash(world, cfg).install()  # `sim power cut write` tears the firmware's writes
    runner = None
    term = None
    if opts["headless"]:
        out = opts["out"] or "."
        _mkdirs(out)
        runner = scmod.Runner(world, sc, lambda line: None, out + "/log.csv", headless=True)
    else:
        inp = open(int(opts["uart_in"]), "rb") if opts["uart_in"] else sys.stdin.buffer
        outp = open(int(opts["uart_out"]), "wb") if opts["uart_out"] else sys.stdout.buffer
        term = Terminal(world, inp, outp)
        world.idle_hooks.append(term.pump)
        if sc is not None:
            runner = scmod.Runner(world, sc, term.say, headless=False)
    for n in notes:
        print("sim: " + n)
    t0 = _clock.ticks_ms()

    # Modules present now belong to the simulator; anything imported later is
    # firmware and gets re-imported after a reset, like a real reboot.
    sim_modules = set(sys.modules)
    while True:
        try:
            entry = _load_entry(opts["main"])
            entry.main(bpath, cfg)
            print("*** main() returned")
            sys.exit(1)
        except machine.WatchdogReset:
            cause = machine.WDT_RESET
            _say(term, "*** board reset (watchdog)")
        except machine.BoardReset:
            cause = machine.SOFT_RESET
            _say(term, "*** board reset")
        except simworld.PowerCut as e:
            cause = machine.PWRON_RESET
            _say(term, "*** %s: the board restarts" % e)
        except scmod.ScenarioStop:
            wall = _clock.ticks_diff(_clock.ticks_ms(), t0) / 1000.0
            return _finish(runner, opts, wall)
        except KeyboardInterrupt:
            if term is not None:
                term.flush()
            print()
            sys.exit(0)
        except Exception:
            if term is not None:
                term.flush()  # show what the firmware said before it crashed
            raise
        fl.reset()
        world.board_reset(cause)
        for name in list(sys.modules):
            if name not in sim_modules:
                del sys.modules[name]


def _say(term, line):
    if term is not None:
        term.say(line)
    else:
        print(line)


def _finish(runner, opts, wall):
    res = runner.finish()
    res["wall_s"] = wall
    res["speed"] = res["sim_s"] / wall if wall > 0 else None
    out = opts["out"] or "."
    with open(out + "/result.json", "w") as f:
        f.write(json.dumps(res))
    with open(out + "/console.txt", "w") as f:
        f.write("\n".join(runner.transcript) + "\n")
    for r in res["expectations"]:
        print("%s %s: %s" % ("PASS" if r["passed"] else "FAIL", r["expect"], r["detail"]))
    print("%s %s: %.0f s simulated in %.1f s" % ("PASSED" if res["passed"] else "FAILED", res["scenario"],
                                                   res["sim_s"], wall))
    sys.exit(0 if res["passed"] else 1)


if __name__ == "__main__":
    run(parse_args(sys.argv[1:]))
