"""Minimal virtual board: run the firmware against a simulated pack.

Run from the repository root, under MicroPython:

    MICROPYPATH=tools/sim:firmware/lib:.frozen micropython tools/sim/run.py \
        [--board boards/esp32_adc_4s.json] [--cells-mv 3300,3310,3290,3305] \
        [--main firmware/main.py] [--config FILE]

The console UART is the terminal: a line typed on stdin goes to the
firmware's UART, bytes the firmware writes to it go to stdout. Lines that
start with "sim " drive the simulated hardware instead (type "sim help").
The firmware runs exactly as on the board: main(board_path) from
firmware/main.py, which never returns. A watchdog or machine.reset() restarts
it (fresh modules, peripherals reset, pack unchanged); Ctrl-C ends the run.
--config FILE is passed to main() as its second argument (the config file
path); without it main() uses its own default.
"""

import sys

import select

import machine
import simworld

HELP = """sim commands:
  sim cell N MV       set cell N (1-based) to MV millivolts
  sim current MA      pack current asked by load/charger, mA (+ = charging)
  sim temp N C        NTC N (1-based) to C degrees; N = board for the board NTC
  sim alert on|off    assert / release the protection alert line
  sim show            print the simulated hardware state
  sim help            this text"""


def _parse_args(argv):
    opts = {"board": "boards/esp32_adc_4s.json", "cells": None, "main": "firmware/main.py", "config": None}
    names = {"--board": "board", "--cells-mv": "cells", "--main": "main", "--config": "config"}
    i = 0
    while i < len(argv):
        key = names.get(argv[i])
        if key is None or i + 1 >= len(argv):
            print("usage: run.py [--board FILE] [--cells-mv MV,MV,...] [--main FILE] [--config FILE]")
            sys.exit(2)
        opts[key] = argv[i + 1]
        i += 2
    return opts


class Terminal:
    """Connects the world's UART queues to stdin/stdout; runs as an idle hook."""

    def __init__(self, world):
        self.world = world
        self.poller = select.poll()
        self.poller.register(sys.stdin, select.POLLIN)
        self.stdin_open = True
        self.out = getattr(sys.stdout, "buffer", sys.stdout)

    def pump(self):
        self.flush()
        if self.stdin_open and self.poller.poll(0):
            line = sys.stdin.readline()
            if not line:  # EOF: keep running, stop polling
                self.poller.unregister(sys.stdin)
                self.stdin_open = False
            elif line.strip() == "sim" or line.startswith("sim "):
                self.sim_command(line.split()[1:])
            else:
                self.world.uart_feed(line)

    def flush(self):
        data = self.world.uart_take()
        if data:
            self.out.write(data)
            if hasattr(self.out, "flush"):
                self.out.flush()

    def sim_command(self, args):
        try:
            print(self._sim(args))
        except (ValueError, IndexError) as e:
            print("error: %s" % (e.args[0] if e.args else "bad sim command; try sim help"))

    def _sim(self, args):
        w = self.world
        cmd = args[0] if args else "help"
        if cmd == "help":
            return HELP
        if cmd == "cell" and len(args) == 3:
            n, mv = int(args[1]), int(args[2])
            if mv < 0:
                raise ValueError("cell voltage must be >= 0 mV")
            w.set_cell(n, mv)
            return "sim: cell %d = %d mV" % (n, mv)
        if cmd == "current" and len(args) == 2:
            w.set_current(int(args[1]))
            return "sim: current %d mA requested, %d mA flowing" % (w.current_ma, w.flowing_ma())
        if cmd == "temp" and len(args) == 3:
            c = float(args[2])
            if args[1] == "board":
                w.set_board_temp(c)
                return "sim: board temp = %s C" % c
            n = int(args[1])
            if not 1 <= n <= len(w.temps_c):
                raise ValueError("NTC number out of range (1..%d)" % len(w.temps_c))
            w.set_temp(n - 1, c)
            return "sim: temp %d = %s C" % (n, c)
        if cmd == "alert" and len(args) == 2 and args[1] in ("on", "off"):
            if args[1] == "on":
                w.raise_alert()
            else:
                w.release_alert()
            return "sim: alert %s" % args[1]
        if cmd == "show" and len(args) == 1:
            return self.show()
        raise ValueError("bad sim command: %s (try sim help)" % " ".join(args))

    def show(self):
        w = self.world
        fets = "chg %s, dsg %s" % ("on" if w.fet_on("chg") else "off", "on" if w.fet_on("dsg") else "off")
        return "\n".join(
            (
                "sim: t=%d ms, reset cause %d" % (w.now_ms, w.reset_cause),
                "sim: cells mV %s" % (w.cell_mv,),
                "sim: current %d mA requested, %d mA flowing; FETs %s" % (w.current_ma, w.flowing_ma(), fets),
                "sim: temps C %s, board %s" % (w.temps_c, w.board_temp_c),
                "sim: watchdog %s" % (("%d ms" % w.wdt_timeout_ms) if w.wdt_running else "off"),
            )
        )


def _load_entry(path):
    """Import the firmware entry module from its file path."""
    i = path.rfind("/")
    folder, name = (path[:i] or "/", path[i + 1 :]) if i >= 0 else (".", path)
    if name.endswith(".py"):
        name = name[:-3]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def run(opts):
    try:
        open(opts["main"]).close()
    except OSError:
        print("error: firmware entry %s not found" % opts["main"])
        sys.exit(2)
    world = simworld.SimWorld(simworld.load_board(opts["board"]))
    if opts["cells"]:
        mvs = [int(x) for x in opts["cells"].split(",")]
        if len(mvs) != len(world.cell_mv):
            print("error: --cells-mv needs %d values" % len(world.cell_mv))
            sys.exit(2)
        for n, mv in enumerate(mvs):
            world.set_cell(n + 1, mv)
    world.realtime = True
    machine.attach(world)
    term = Terminal(world)
    world.idle_hooks.append(term.pump)

    # Modules present now belong to the simulator; anything imported later is
    # firmware and gets re-imported after a reset, like a real reboot.
    sim_modules = set(sys.modules)
    while True:
        try:
            entry = _load_entry(opts["main"])
            if opts["config"]:
                entry.main(opts["board"], opts["config"])
            else:
                entry.main(opts["board"])
            term.flush()
            print("*** main() returned")
            sys.exit(1)
        except machine.WatchdogReset:
            cause = machine.WDT_RESET
            term.flush()
            print("*** board reset (watchdog)")
        except machine.BoardReset:
            cause = machine.SOFT_RESET
            term.flush()
            print("*** board reset")
        except KeyboardInterrupt:
            term.flush()
            print()
            sys.exit(0)
        except Exception:
            term.flush()  # show what the firmware said before it crashed
            raise
        world.board_reset(cause)
        for name in list(sys.modules):
            if name not in sim_modules:
                del sys.modules[name]


if __name__ == "__main__":
    run(_parse_args(sys.argv[1:]))
