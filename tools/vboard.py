"""The virtual board: the unmodified firmware on a simulated board and pack,
under the real MicroPython interpreter, its console UART on a pseudo-terminal
that any serial client (pyserial, bmsctl, screen, minicom) can open.

    python -m tools.vboard --link /tmp/bms [--board esp32_mux_16s] [--chemistry lfp|nmc]
        [--cells N] [--speed X|max] [--scenario FILE] [--paused] [--fs DIR]
        [--seed N] [--monitor] [--log FILE]

--link PATH is a symlink to the pty (e.g. /dev/pts/5); it is removed on exit.
--speed paces virtual time at X times the wall clock (default 1); `max` runs
as fast as the host can. --scenario plays a scenario's pack, profile and
timed actions (its expectations are judged by `python -m tools.scenario`).
--fs DIR keeps the firmware's saved config there across runs (default: a
fresh one per run). --monitor opens `bmsctl monitor` on the link in this
terminal; Ctrl-C ends it and the board. The MicroPython process's own
output (its REPL stream) goes to --log FILE, or to stderr without --monitor.

On the console, lines starting with `sim ` drive the simulator (`sim help`);
everything else reaches the firmware.
"""
import argparse
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import tty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICROPYPATH = ":".join(os.path.join(ROOT, p) for p in ("firmware/lib", "tools/sim", ".frozen"))


class VboardError(Exception):
    pass


def load_scenario(path):
    """The scenario, checked by the same code the board runs (it runs under
    CPython too), so a bad file is refused before anything starts."""
    sim = os.path.join(ROOT, "tools", "sim")
    if sim not in sys.path:
        sys.path.insert(0, sim)
    import scenario

    try:
        return scenario.load(path)
    except scenario.ScenarioError as e:
        raise VboardError(str(e))


def board_file(name):
    path = name if (name.endswith(".json") or os.sep in name) else os.path.join(ROOT, "boards", name + ".json")
    if not os.path.exists(path):
        names = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "boards")) if f.endswith(".json"))
        raise VboardError("no board %s (boards: %s)" % (name, ", ".join(names)))
    return os.path.abspath(path)


def _speed(text):
    if text == "max":
        return text
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("speed must be a number or max, not %r" % text)
    if not 0.01 <= x <= 100000:
        raise argparse.ArgumentTypeError("speed must be 0.01..100000 or max")
    return text


def _cells(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("cells must be an integer, not %r" % text)
    if not 1 <= n <= 32:
        raise argparse.ArgumentTypeError("cells must be 1..32")
    return n


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m tools.vboard", description="run the firmware on a virtual board")
    ap.add_argument("--link", required=True, help="path of the symlink to the console pty")
    ap.add_argument("--board", help="board name (boards/NAME.json) or file; default: the scenario's, else esp32_mux_16s")
    ap.add_argument("--chemistry", choices=("lfp", "nmc"))
    ap.add_argument("--cells", type=_cells, help="populated cells (default: the board's)")
    ap.add_argument("--speed", type=_speed, default="1", help="X times the wall clock, or max (default 1)")
    ap.add_argument("--scenario", help="scenario file (scenarios/*.json)")
    ap.add_argument("--paused", action="store_true", help="start with virtual time stopped (sim step / sim run)")
    ap.add_argument("--fs", help="folder for the firmware's saved config, kept across runs")
    ap.add_argument("--seed", type=int, help="seed of the sensor noise")
    ap.add_argument("--monitor", action="store_true", help="open bmsctl monitor on the link")
    ap.add_argument("--log", help="file for the MicroPython process's own output")
    return ap.parse_args(argv)


class ResetNoise:
    """Drops the tracebacks MicroPython prints when a scheduled tick ends in
    a watchdog or machine.reset() (the board then resets, as it should)."""

    def __init__(self, write):
        self.write = write
        self.block = []
        self.partial = ""  # a line still waiting for its newline

    def feed(self, text):
        # Pipe reads end anywhere: judge whole lines only.
        text = self.partial + text
        cut = text.rfind("\n") + 1
        self.partial = text[cut:]
        for line in text[:cut].splitlines(True):
            if self.block or line.startswith("Traceback (most recent call last):"):
                self.block.append(line)
                if not line.startswith((" ", "Traceback")):
                    if not line.startswith(("WatchdogReset:", "BoardReset:", "PowerCut:")):
                        self.write("".join(self.block))
                    self.block = []
                continue
            self.write(line)

    def flush(self):
        """The end of the stream: what is left is not a reset's traceback."""
        rest = "".join(self.block) + self.partial
        self.block = []
        self.partial = ""
        if rest:
            self.write(rest)


class VirtualBoard:
    def __init__(self, args):
        self.args = args
        self.link = os.path.abspath(args.link)
        self.proc = None
        self.master = self.slave = None
        self.stopping = False
        self.log_path = None
        self.log = None
        self.tmp_fs = None  # removed on exit: nothing was asked to be kept

    # ---- set-up ---------------------------------------------------------

    def check(self):
        """Everything that can be refused before anything starts."""
        a = self.args
        name = a.board
        if a.scenario:
            sc = load_scenario(a.scenario)
            name = name or sc["board"]
        self.board = board_file(name or "esp32_mux_16s")
        try:
            with open(self.board) as f:
                bd = json.load(f)
            most = len(bd["cell_taps"]) if bd.get("cell_taps") else bd["cells"]
        except (ValueError, KeyError, TypeError) as e:
            raise VboardError("board file %s is not usable: %s" % (self.board, e))
        if a.cells and a.cells > most:
            raise VboardError("--cells %d: board %s measures 1..%d cells" % (
                a.cells, os.path.basename(self.board)[:-5], most))
        if a.fs and os.path.exists(a.fs) and not os.path.isdir(a.fs):
            raise VboardError("--fs %s is a file, not a folder" % a.fs)
        if a.log and not os.path.isdir(os.path.dirname(os.path.abspath(a.log))):
            raise VboardError("no folder for --log %s" % a.log)
        parent = os.path.dirname(self.link)
        if not os.path.isdir(parent):
            raise VboardError("no folder %s for --link" % parent)
        if os.path.lexists(self.link) and not os.path.islink(self.link):
            raise VboardError("%s exists and is not a symlink; pick another --link" % self.link)
        exe = os.path.join(ROOT, ".venv", "bin", "micropython")
        if not os.path.exists(exe):
            raise VboardError("no micropython binary in .venv; run `make venv` first")
        self.exe = exe

    def start(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # a serial line: no echo, no line editing
        attrs = termios.tcgetattr(self.slave)
        attrs[4] = attrs[5] = termios.B115200
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        fl = fcntl.fcntl(self.master, fcntl.F_GETFL)
        fcntl.fcntl(self.master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        if os.path.islink(self.link):
            os.unlink(self.link)
        os.symlink(os.ttyname(self.slave), self.link)

        in_r, self.in_w = os.pipe()
        self.out_r, out_w = os.pipe()
        fcntl.fcntl(in_r, fcntl.F_SETFL, fcntl.fcntl(in_r, fcntl.F_GETFL) | os.O_NONBLOCK)
        a = self.args
        cmd = [self.exe, os.path.join(ROOT, "tools", "sim", "run.py"), "--main", os.path.join(ROOT, "firmware", "main.py"),
               "--uart-in", str(in_r), "--uart-out", str(out_w), "--speed", a.speed]
        if a.board:
            cmd += ["--board", self.board]
        for opt, val in (("--chemistry", a.chemistry), ("--cells", a.cells), ("--scenario", a.scenario),
                         ("--seed", a.seed)):
            if val is not None:
                cmd += [opt, os.path.abspath(val) if opt == "--scenario" else str(val)]
        if a.fs:
            fs = os.path.abspath(a.fs)
            os.makedirs(fs, exist_ok=True)
        else:
            fs = self.tmp_fs = tempfile.mkdtemp(prefix="openbms-vboard-")
        cmd += ["--fs", fs]
        if a.paused:
            cmd.append("--paused")
        if a.log or a.monitor:
            self.log_path = a.log or os.path.join(fs, "micropython.log")
            self.log = open(self.log_path, "a")
            sink = self.log.write
        else:
            sink = sys.stderr.write
        self.noise = ResetNoise(lambda text: (sink(text), self.log and self.log.flush()))
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, MICROPYPATH=MICROPYPATH),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     pass_fds=(in_r, out_w), start_new_session=True)
        os.close(in_r)
        os.close(out_w)
        self.relay = threading.Thread(target=self._relay, daemon=True)
        self.relay.start()

    # ---- the relay between the pty and the MicroPython process -------------

    def _relay(self):
        diag = self.proc.stdout.fileno()
        fds = [self.master, self.out_r, diag]
        while fds and not self.stopping:
            try:
                ready = select.select(fds, [], [], 0.2)[0]
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if fd == self.master:
                    if data:
                        self._to_board(data)
                    continue
                if not data:  # the MicroPython process closed it
                    fds.remove(fd)
                    continue
                if fd == self.out_r:
                    self._to_pty(data)
                else:
                    self.noise.feed(data.decode(errors="replace"))

    def _to_board(self, data):
        try:
            os.write(self.in_w, data)
        except OSError:
            pass  # the board is gone; the main thread notices

    def _to_pty(self, data):
        # Like a UART with nobody listening: what the pty cannot take is lost.
        try:
            os.write(self.master, data)
        except (BlockingIOError, OSError):
            pass

    # ---- running and stopping ---------------------------------------------------

    def describe(self):
        a = self.args
        what = os.path.basename(self.board)[:-5]
        return "vboard: %s%s%s at %s, console on %s (%s); Ctrl-C stops" % (
            what, " %dS" % a.cells if a.cells else "", " " + a.chemistry.upper() if a.chemistry else "",
            "full speed" if a.speed == "max" else "%sx" % a.speed, self.link, os.ttyname(self.slave))

    def wait(self):
        """Until the MicroPython process ends; its exit code."""
        while True:
            code = self.proc.poll()
            if code is not None:
                self.relay.join(1)
                return code
            time.sleep(0.1)

    def show_log(self):
        # The board stopped while the monitor had the terminal: say why.
        if self.log:
            self.log.flush()
            with open(self.log_path) as f:
                tail = f.read().splitlines()[-5:]
            for line in tail:
                print("vboard: %s" % line, file=sys.stderr)

    def stop(self):
        self.stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.islink(self.link):
            os.unlink(self.link)
        for fd in (self.master, self.slave):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self.log:
            self.log.close()
        if self.tmp_fs:
            import shutil

            shutil.rmtree(self.tmp_fs, ignore_errors=True)


def _monitor(link):
    from tools import bmsctl

    return bmsctl.main(["--port", link, "--timeout", "3", "monitor"])


def main(argv=None):
    args = parse_args(argv)
    vb = VirtualBoard(args)
    try:
        vb.check()
    except VboardError as e:
        print("vboard: error: %s" % e, file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        vb.start()
        print(vb.describe(), file=sys.stderr)
        if args.monitor:
            time.sleep(0.3)
            if vb.proc.poll() is None:
                code = _monitor(vb.link)
            if vb.proc.poll() not in (None, 0):
                code = 1
                vb.show_log()
        else:
            code = vb.wait()
            if code != 0:
                print("vboard: the MicroPython process ended with code %d" % code, file=sys.stderr)
                code = 1
    except KeyboardInterrupt:
        code = 0
    finally:
        vb.stop()
        if args.monitor and vb.proc is not None and vb.proc.returncode not in (0, -signal.SIGTERM, None) \
                and vb.log_path:
            print("vboard: the board stopped; its output is in %s" % vb.log_path, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
