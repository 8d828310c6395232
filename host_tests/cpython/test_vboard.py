"""End-to-end tests of the virtual board (tools/vboard.py): the unmodified
firmware under the real MicroPython interpreter, its console on a
pseudo-terminal, driven through plain pyserial and through bmsctl.

Most tests start the board with --paused: virtual time only moves on
`sim step SECONDS`, whose reply comes when the step is done, so the timing
checks below are exact in virtual time and do not depend on the host's speed.
The firmware ticks every 100 ms; a condition first seen at tick k trips at
tick k + delay / 100 ms, so a condition injected between two ticks trips
between delay and delay + 0.1 s after it was injected.
"""
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
import serial

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(ROOT, ".venv", "bin", "python")
BMSCTL = os.path.join(ROOT, ".venv", "bin", "bmsctl")
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")

N_CELLS = 16  # boards/esp32_mux_16s.json, the default board
EPS = 0.005  # s: virtual time also moves by the mux settling waits (sleep_us) inside a tick

if not (os.path.exists(PY) and os.path.exists(MICROPYTHON) and os.path.exists(BMSCTL)):
    pytest.fail("the virtual board needs .venv with micropython and bmsctl: run `make venv`", pytrace=False)


# ---- the console client ------------------------------------------------------------


class Console:
    """A pyserial port on the virtual board's console link.

    Reads line by line; blank lines and the firmware's boot banner are
    skipped (the banner comes at power-up and after every board reset)."""

    BANNER = "openbms ready after"

    def __init__(self, link, timeout=10.0):
        self.link = link
        self.timeout = timeout
        self.ser = serial.Serial(link, 115200, timeout=0.05)
        self.ser.reset_input_buffer()
        self.buf = b""
        self.seen = []  # every non-blank line read, for failure messages

    def close(self):
        self.ser.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, line):
        self.ser.write(line.encode() + b"\n")
        self.ser.flush()

    def readline(self, deadline):
        """The next non-blank line (str), or None at the deadline."""
        while True:
            if b"\n" in self.buf:
                raw, self.buf = self.buf.split(b"\n", 1)
                text = raw.decode("utf-8", "replace").rstrip("\r")
                if not text.strip():
                    continue
                self.seen.append(text)
                return text
            if time.monotonic() >= deadline:
                return None
            self.buf += self.ser.read(self.ser.in_waiting or 1)

    def lines_until(self, prefix, timeout=None, skip_banner=True):
        """Every line up to and including the first that starts with prefix."""
        deadline = time.monotonic() + (timeout or self.timeout)
        got = []
        while True:
            text = self.readline(deadline)
            if text is None:
                raise AssertionError("no line starting %r within %s s; got %r" % (prefix, timeout or self.timeout, got))
            if skip_banner and text.startswith(self.BANNER):
                continue
            got.append(text)
            if text.startswith(prefix):
                return got

    def ask(self, command, prefix, timeout=None):
        """Send command; the first reply line that starts with prefix."""
        self.send(command)
        return self.lines_until(prefix, timeout)[-1]

    def replies(self, command, sentinel="sim show --json", sentinel_prefix="sim: {"):
        """Every line command produced: send it, then a sentinel command whose
        reply marks the end (sim lines are answered in order; for a firmware
        command use a firmware sentinel such as `version`)."""
        self.send(command)
        self.send(sentinel)
        return self.lines_until(sentinel_prefix)[:-1]

    def status(self):
        return json.loads(self.ask("status --json", '{"state"'))

    def faults(self):
        return json.loads(self.ask("faults --json", '{"faults"'))

    def sim(self):
        line = self.ask("sim show --json", "sim: {")
        return json.loads(line[len("sim: "):])

    def sim_ok(self, command):
        """A sim command that must succeed: its one `sim: ` reply line."""
        got = self.replies(command)
        assert len(got) == 1 and got[0].startswith("sim: "), (command, got)
        return got[0]

    def step(self, seconds):
        """Run seconds of virtual time; the virtual time (s) afterwards."""
        line = self.ask("sim step %g" % seconds, "sim: t=", timeout=max(self.timeout, 30))
        assert line.endswith("(paused)"), line
        return float(line.split("=")[1].split()[0])

    def step_until(self, check, limit_s, dt=0.1):
        """Step dt at a time until check(sim show state) holds. Returns
        (t of the last state where it did not hold, t where it first held,
        every state seen, the first included); fails after limit_s."""
        states = [self.sim()]
        start = states[0]["t_s"]
        while not check(states[-1]):
            if states[-1]["t_s"] - start > limit_s:
                raise AssertionError("condition not met within %s s; last sim state %r" % (limit_s, states[-1]))
            self.step(dt)
            states.append(self.sim())
        assert len(states) > 1, "the condition already held before the first step: %r" % states[0]
        return states[-2]["t_s"], states[-1]["t_s"], states


# ---- starting and stopping the board ------------------------------------------------


def _vboard_cmd(link, *args):
    return [PY, "-m", "tools.vboard", "--link", str(link), *args]


def _wait_link(link, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not os.path.lexists(link):
        if proc.poll() is not None:
            raise AssertionError("vboard ended with %s before creating %s" % (proc.returncode, link))
        if time.monotonic() > deadline:
            raise AssertionError("no link %s within %s s" % (link, timeout))
        time.sleep(0.02)


def _stop(proc, timeout=10.0):
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _no_micropython_left(link):
    # vboard starts MicroPython with tools/sim/run.py; the link path is not on
    # its command line, but the --fs folder (under tmp_path, next to the link) is.
    folder = os.path.dirname(str(link))
    r = subprocess.run(["pgrep", "-f", folder], capture_output=True, text=True)
    return [line for line in r.stdout.split() if int(line) != os.getpid()]


@pytest.fixture
def start_board(tmp_path):
    """start_board(*vboard args) -> (link, process); every board started is
    stopped afterwards (SIGINT, as Ctrl-C), and its link must be gone."""
    started = []

    def start(*args, paused=True):
        link = tmp_path / ("bms%d" % len(started))
        fs = tmp_path / ("fs%d" % len(started))
        cmd = _vboard_cmd(link, "--fs", str(fs), *args) + (["--paused"] if paused else [])
        err_path = tmp_path / ("vboard%d.err" % len(started))
        err = open(err_path, "wb")
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        proc.err_path = err_path  # vboard's stderr: its own lines and the MicroPython process's output
        started.append((link, proc, err))
        _wait_link(str(link), proc)
        return str(link), proc

    yield start
    for link, proc, err in started:
        _stop(proc)
        err.close()
    left = _no_micropython_left(tmp_path / "x")
    for pid in left:  # started by this test (their command line names tmp_path): end them by id
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert left == [], "processes left running after vboard ended: %r" % left
    for link, proc, err in started:
        assert not os.path.lexists(link), "vboard left its link %s behind" % link


@pytest.fixture
def board(start_board):
    """A paused default board (16S LFP); yields its link."""
    link, _proc = start_board()
    return link


@pytest.fixture
def con(board):
    """A console on a paused default board that has booted (1 s stepped)."""
    with Console(board) as c:
        c.step(1)
        yield c


def _both_open(s):
    return not s["chg"] and not s["dsg"]


def _both_closed(s):
    return s["chg"] and s["dsg"]


def assert_between(t_before, t_after, t_inject, lo, hi):
    """The change happened in (t_before, t_after]: t_before at least lo after
    the injection, t_after at most hi after it."""
    assert t_before - t_inject >= lo - EPS, "changed already %.3f s after the injection" % (t_after - t_inject)
    assert t_after - t_inject <= hi + EPS, "changed only %.3f s after the injection" % (t_after - t_inject)


def bmsctl(*args, timeout=20):
    return subprocess.run([BMSCTL, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


# ---- 1. boot ---------------------------------------------------------------------


def test_boot_fets_off_until_the_first_reading_then_normal(board):
    with Console(board) as c:
        s = c.status()
        assert s["state"] == "boot"
        assert (s["chg"], s["dsg"]) == (False, False)
        assert s["cells_mv"] == [] and s["soc_pct"] is None and s["uptime_s"] == 0
        hw = c.sim()
        assert hw["t_s"] == 0.0 and (hw["chg"], hw["dsg"]) == (False, False)

        c.step(1)
        s = c.status()
        hw = c.sim()
        assert s["state"] == "normal"
        assert (s["chg"], s["dsg"]) == (True, True)
        assert (hw["chg"], hw["dsg"]) == (True, True)  # the gates really conduct
        assert len(s["cells_mv"]) == N_CELLS == len(hw["cells_mv"])
        for k, (read, true) in enumerate(zip(s["cells_mv"], hw["cells_mv"]), 1):
            assert abs(read - true) <= 4, "cell %d reads %d mV, the simulator says %d mV" % (k, read, true)
        assert isinstance(s["soc_pct"], (int, float)) and not isinstance(s["soc_pct"], bool)
        assert 0 <= s["soc_pct"] <= 100
        assert s["uptime_s"] == 1
        assert s["faults"] == [] and s["reset_cause"] == "PWRON_RESET"


# ---- 2. pyserial and bmsctl on the same board ------------------------------------------


def test_bmsctl_and_pyserial_share_the_board(board):
    with Console(board) as c:
        c.step(1)
    # The port is closed here: bmsctl opens it exclusively, one exchange at a time.
    r = bmsctl("--port", board, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("state normal  CHG on  DSG on  SOC ") and lines[0].endswith("uptime 0:00:01")
    assert lines[1].startswith("pack ") and "cells " in lines[1]
    assert lines[-1].endswith("reset cause PWRON_RESET")

    r = bmsctl("--port", board, "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["state"] == "normal" and len(s["cells_mv"]) == N_CELLS

    r = bmsctl("--port", board, "cells")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == N_CELLS + 1
    for n, line in enumerate(lines[:-1], 1):
        words = line.split()
        assert int(words[0]) == n and words[2] == "mV" and 3200 < int(words[1]) < 3400, line
    assert lines[-1].startswith("delta ") and lines[-1].endswith(" mV")

    r = bmsctl("--port", board, "faults", "--json")
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)
    assert f["faults"] == [] and f["trips"] == {}

    r = bmsctl("--port", board, "config", "get", "cell_ov_mv", "--json")
    assert (r.returncode, json.loads(r.stdout)) == (0, {"cell_ov_mv": 3650}), r.stderr

    r = bmsctl("--port", board, "config", "set", "bal_delta_mv", "20")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok bal_delta_mv = 20")

    r = bmsctl("--port", board, "config", "set", "cell_ov_mv", "99999")
    assert r.returncode == 7, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("bmsctl: error: board replied: error: cell_ov_mv")
    assert len(r.stderr.splitlines()) == 1

    with Console(board) as c:  # the change bmsctl made is the board's, and the refused one is not
        got = c.replies("config get bal_delta_mv", "config get cell_ov_mv", "cell_ov_mv = ")
        assert got == ["bal_delta_mv = 20"]
        assert c.seen[-1] == "cell_ov_mv = 3650"


def test_bmsctl_port_that_does_not_exist_exits_3(tmp_path):
    r = bmsctl("--port", str(tmp_path / "nothing-here"), "--timeout", "0.5", "status")
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert "not found" in r.stderr


def test_bmsctl_port_locked_by_another_process_exits_4(board):
    target = os.path.realpath(board)
    assert target.startswith("/dev/pts/")
    holder = subprocess.Popen(
        [PY, "-c", "import fcntl, os, sys, time\n"
                   "fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)\n"
                   "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                   "print('locked', flush=True)\n"
                   "time.sleep(60)\n", target],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        r = bmsctl("--port", board, "--timeout", "0.5", "status")
        took = time.monotonic() - t0
        assert r.returncode == 4, (r.stdout, r.stderr)
        assert "busy" in r.stderr
        assert took < 5
    finally:
        holder.kill()
        holder.wait()
    r = bmsctl("--port", board, "--timeout", "2", "status", "--json")  # free again
    assert r.returncode == 0, r.stderr


# ---- 3. fault injection: FET outcome and timing -----------------------------------------


def test_cell_overvoltage_opens_chg_after_1s_and_recovers_after_2s(con):
    orig = con.sim()["cells_mv"][2]
    con.sim_ok("sim cell 3 3700")
    t_inj = con.sim()["t_s"]
    before, after, states = con.step_until(lambda s: not s["chg"], 3)
    assert_between(before, after, t_inj, 1.0, 1.1)
    assert all(s["dsg"] for s in states), "DSG opened on an overvoltage"
    f = con.faults()
    assert "cell_ov" in f["faults"] and f["trips"].get("cell_ov") == 1

    # `sim cell 3 free` lets the cell follow its charge from the state of
    # charge of the pinned voltage (tools/sim/pack.py, Cell.unpin): 3700 mV
    # is beyond full, so the freed cell rests at the model's 100 % OCV
    # (3600 mV), above cell_ov_clear_mv (3450), and CHG rightly stays open.
    con.sim_ok("sim cell 3 free")
    con.step(3)
    s = con.sim()
    assert s["cells_mv"][2] >= 3450 and not s["chg"] and s["dsg"]

    # Back to its normal voltage: CHG closes after the 2 s recovery delay.
    con.sim_ok("sim cell 3 %d" % orig)
    t_rec = con.sim()["t_s"]
    before, after, states = con.step_until(lambda s: s["chg"], 4)
    assert_between(before, after, t_rec, 2.0, 2.1)
    assert all(s["dsg"] for s in states)
    assert con.faults()["faults"] == []
    assert con.status()["state"] == "normal"


def test_cell_undervoltage_opens_dsg_after_2s(con):
    con.sim_ok("sim cell 2 2700")
    t_inj = con.sim()["t_s"]
    before, after, states = con.step_until(lambda s: not s["dsg"], 4)
    assert_between(before, after, t_inj, 2.0, 2.1)
    assert all(s["chg"] for s in states), "CHG opened on an undervoltage"
    assert "cell_uv" in con.faults()["faults"]


def test_afe_nack_opens_both_then_recovers(con):
    comm0 = con.status()["errors"]["comm"]
    con.sim_ok("sim fault afe_nack on")
    t_inj = con.sim()["t_s"]
    before, after, states = con.step_until(_both_open, 2)
    assert_between(before, after, t_inj, 0.5, 0.6)
    assert _both_closed(states[-2]), "CHG and DSG did not open together"
    s = con.status()
    assert "afe_comm" in s["faults"]
    comm1 = s["errors"]["comm"]
    assert comm1 > comm0
    con.step(0.5)
    assert con.status()["errors"]["comm"] > comm1  # every tick that gets no answer counts

    con.sim_ok("sim fault afe_nack off")
    t_off = con.sim()["t_s"]
    before, after, states = con.step_until(_both_closed, 4)
    assert_between(before, after, t_off, 2.0, 2.1)
    assert con.status()["faults"] == []


@pytest.mark.parametrize("fault", ["ntc_open on 1", "ntc_short on 2"])
def test_thermistor_fault_opens_both_as_sensor(con, fault):
    con.sim_ok("sim fault " + fault)
    t_inj = con.sim()["t_s"]
    before, after, states = con.step_until(_both_open, 2)
    assert_between(before, after, t_inj, 0.5, 0.6)
    assert _both_closed(states[-2])
    s = con.status()
    assert "sensor" in s["faults"]
    n = int(fault.split()[-1])
    assert s["temps_c"][n - 1] is None  # the broken sensor reads as unknown
    assert s["temps_c"][2 - n] is not None


def test_load_short_opens_both_at_once_and_latches_until_clear(con):
    con.sim_ok("sim current -20000")
    con.step(0.2)
    s = con.sim()
    assert _both_closed(s) and s["current_ma"] == -20000

    con.sim_ok("sim fault load_short on")
    s = con.sim()  # no virtual time has passed: the comparator's IRQ did it
    assert _both_open(s), "FETs still closed right after the short: %r" % s
    assert s["current_ma"] == 0
    con.step(0.1)
    assert "scd" in con.faults()["faults"]
    assert con.sim()["current_ma"] == 0

    con.sim_ok("sim fault load_short off")
    con.step(3)  # well past any recovery delay: scd is latched
    s = con.sim()
    assert _both_open(s) and s["current_ma"] == 0
    assert con.status()["faults"] == ["scd"]

    got = con.replies("clear", "version", "openbms ")
    assert len(got) == 1 and got[0].startswith("ok released 1 latched fault"), got
    t_clear = con.sim()["t_s"]
    before, after, states = con.step_until(_both_closed, 0.5)
    assert after - t_clear <= 0.2 + EPS
    assert states[-1]["current_ma"] == -20000
    assert con.status()["faults"] == []


def test_charger_overvoltage_opens_chg_below_3700mv(con):
    # Bring the pack near full: pin every cell at 3550 mV, then free it, so
    # each continues from that state of charge (about 98.9 %).
    for n in range(1, N_CELLS + 1):
        con.sim_ok("sim cell %d 3550" % n)
    for n in range(1, N_CELLS + 1):
        con.sim_ok("sim cell %d free" % n)
    con.step(0.1)
    s = con.sim()
    assert s["soc_pct"] > 98 and s["current_ma"] == 0 and _both_closed(s)

    con.sim_ok("sim fault charger_overvoltage on")  # a broken 30 A charger appears
    con.step(0.1)
    assert con.sim()["current_ma"] > 25000
    peak = 0
    s = con.sim()
    while s["chg"]:
        assert s["t_s"] < 1000, "CHG never opened: %r" % s
        peak = max(peak, max(s["cells_mv"]))
        con.step(1 if max(s["cells_mv"]) < 3630 else 0.1)
        s = con.sim()
    peak = max(peak, max(s["cells_mv"]))
    assert peak >= 3640, "CHG opened early, at %d mV" % peak  # not before the 3650 mV threshold (ADC noise aside)
    assert s["dsg"] and s["current_ma"] == 0
    assert "cell_ov" in con.faults()["faults"]
    for _ in range(20):  # the charger keeps trying; nothing more goes in
        con.step(0.5)
        s = con.sim()
        peak = max(peak, max(s["cells_mv"]))
        assert not s["chg"] and s["current_ma"] == 0
    assert peak < 3700, "the highest cell reached %d mV" % peak


def test_stuck_cell_reading_is_caught_once_the_pack_moves(con):
    con.sim_ok("sim fault stuck_cell on 4")
    assert _both_closed(con.sim())
    con.step(6)  # at rest a frozen input looks like a quiet cell: no fault
    assert con.status()["faults"] == []
    con.sim_ok("sim current 40000")  # charging: every other cell steps up by its IR drop
    t0 = con.sim()["t_s"]
    s = con.status()
    while "sensor" not in s["faults"]:
        assert con.sim()["t_s"] - t0 < 7, "frozen cell 4 not caught: %r" % s
        con.step(0.5)
        s = con.status()
    assert s.get("frozen_cell") == 4 and _both_open(con.sim())
    con.sim_ok("sim fault stuck_cell off")  # repaired; the pack rests, so nothing proves it yet
    con.step(3)
    assert con.status().get("frozen_cell") == 4
    con.replies("clear", "version", "openbms ")  # the owner says so
    con.step(3)  # sensor recovers after its 2 s; charging again, cell 4 follows the others
    s = con.status()
    assert "frozen_cell" not in s and s["faults"] == [] and _both_closed(con.sim())


def test_firmware_hang_watchdog_resets_after_4s(con):
    con.sim_ok("sim fault firmware_hang on")
    t_inj = con.sim()["t_s"]
    states = [con.sim()]
    while _both_closed(states[-1]):
        assert states[-1]["t_s"] - t_inj < 6, "no watchdog reset: %r" % states[-1]
        con.step(0.5)
        states.append(con.sim())
    before, after = states[-2]["t_s"], states[-1]["t_s"]
    # The FET pins keep their level while the firmware hangs, until the
    # watchdog (4000 ms from the last feed, the tick before the hang) resets
    # the MCU and the gates fall back to their pull-downs.
    assert before - t_inj >= 3.5 - EPS
    assert 4.0 - EPS <= after - t_inj <= 4.2 + EPS
    assert all(_both_closed(s) for s in states[:-1])
    s = states[-1]
    assert _both_open(s) and s["resets"] == 1 and s["reset_cause"] == 3  # WDT_RESET
    assert "*** board reset (watchdog)" in con.seen

    con.sim_ok("sim fault firmware_hang off")
    con.step(1)
    st = con.status()
    assert st["reset_cause"] == "WDT_RESET"
    assert st["state"] == "normal" and (st["chg"], st["dsg"]) == (True, True)
    assert _both_closed(con.sim())
    assert "openbms ready after WDT_RESET ('help' for commands)" in con.seen


def test_afe_crc_is_refused_on_an_adc_board(con):
    s0 = con.sim()
    st0 = con.status()
    got = con.replies("sim fault afe_crc on")
    assert len(got) == 1 and got[0].startswith("error: "), got
    assert con.sim() == s0
    con.step(1)
    st = con.status()
    assert st["faults"] == [] and (st["chg"], st["dsg"]) == (True, True)
    assert st["errors"] == st0["errors"]
    assert con.sim()["faults"] == {}


# ---- 4. bad input -------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sim frobnicate", "sim cell 99 3000", "sim current lots"])
def test_bad_sim_command_one_error_line_nothing_changes(con, command):
    before = con.sim()
    got = con.replies(command)
    assert len(got) == 1 and got[0].startswith("error: "), got
    assert con.sim() == before


def test_unknown_firmware_command_one_error_line(con):
    before = con.status()
    got = con.replies("frobnicate", "version", "openbms ")
    assert got == ["error: unknown command 'frobnicate' (try 'help')"]
    assert con.status() == before


# ---- 5. lifecycle -------------------------------------------------------------------


def test_sigint_ends_vboard_cleanly(start_board, tmp_path):
    link, proc = start_board()
    with Console(link) as c:
        c.step(1)
        assert c.status()["state"] == "normal"
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    code = proc.wait(10)
    assert code == 0
    assert time.monotonic() - t0 < 5
    assert not os.path.lexists(link)
    assert _no_micropython_left(link) == []


def test_unknown_board_exits_2_with_one_line(tmp_path):
    link = tmp_path / "bms"
    r = subprocess.run(_vboard_cmd(link, "--board", "nosuch"), cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vboard: error: "), r.stderr
    assert "nosuch" in lines[0]
    assert not os.path.lexists(link)


def test_link_that_is_a_regular_file_exits_2_and_is_left_alone(tmp_path):
    link = tmp_path / "bms"
    link.write_text("keep me\n")
    r = subprocess.run(_vboard_cmd(link), cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vboard: error: "), r.stderr
    assert link.is_file() and not link.is_symlink()
    assert link.read_text() == "keep me\n"


# ---- 6. speed -----------------------------------------------------------------------


def test_speed_max_runs_faster_than_real_time(start_board):
    link, _proc = start_board("--speed", "max", paused=False)
    t0 = time.monotonic()
    with Console(link) as c:
        time.sleep(max(0.0, 2.0 - (time.monotonic() - t0)))
        s = c.status()
    assert s["state"] == "normal"
    assert s["uptime_s"] > 10, "only %d s of virtual time in 2 s at --speed max" % s["uptime_s"]


def test_speed_1_follows_the_wall_clock(start_board):
    # Virtual time between two readings matches the wall time between them
    # (start-up, which a loaded machine delays, is left out).
    link, _proc = start_board("--speed", "1", paused=False)
    with Console(link) as c:
        v0 = c.sim()["t_s"]
        w0 = time.monotonic()
        time.sleep(2.0)
        v1 = c.sim()["t_s"]
        wall = time.monotonic() - w0
        s = c.status()
    assert s["state"] == "normal"
    assert abs((v1 - v0) - wall) <= 0.5, "virtual %.2f s in %.2f s of wall time" % (v1 - v0, wall)
    assert s["uptime_s"] >= v1 - 1.5  # the firmware's own clock is the virtual one


# ---- 7. the `make sim` path: monitor in a real terminal ---------------------------------------


class PtyProcess:
    """A command in a real pseudo-terminal (its controlling terminal), as
    `make sim` runs in the user's terminal."""

    def __init__(self, cmd, env=None, rows=40, cols=100):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            try:
                os.chdir(ROOT)
                os.execve(cmd[0], cmd, env or os.environ)
            finally:
                os._exit(127)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.out = b""
        self.code = None

    def pump(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end and self.poll() is None:
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:  # EIO: the terminal's last process is gone
                    break

    def pump_until(self, done, seconds=20):
        """Read the screen until done(text) holds (or the time is up): a
        loaded CI machine draws the first frames late."""
        end = time.monotonic() + seconds
        while not done(self.text()) and time.monotonic() < end and self.poll() is None:
            self.pump(0.1)

    def poll(self):
        if self.code is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def wait(self, timeout):
        end = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < end:
            self.pump(0.05)
        return self.poll()

    def text(self):
        return self.out.decode("utf-8", "replace")

    def close(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def _screen_cells(text):
    """{cell number: mV} from the monitor's cell rows (ANSI codes removed)."""
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    cells = {}
    for line in plain.replace("\r", "\n").split("\n"):
        m = re.match(r"^\s*(\d{1,2}) \S+\s+(\d{3,5}) mV", line)
        if m:
            cells[int(m.group(1))] = int(m.group(2))
    return cells


def _children(pid):
    r = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_make_sim_monitor_in_a_terminal(tmp_path):
    link = tmp_path / "bms"
    # TMPDIR: the fresh firmware folder vboard makes without --fs lands in
    # tmp_path, so the MicroPython process's command line names tmp_path.
    env = dict(os.environ, TERM="xterm", TMPDIR=str(tmp_path))
    p = PtyProcess(_vboard_cmd(link, "--scenario", "scenarios/solar_day.json", "--speed", "60", "--monitor"), env)
    try:
        deadline = time.monotonic() + 10
        while not os.path.lexists(link) and p.poll() is None and time.monotonic() < deadline:
            p.pump(0.05)
        assert os.path.lexists(link), "no link; vboard said %r" % p.text()[-2000:]
        p.pump(0.5)
        mp = _children(p.pid)
        assert len(mp) == 1, "expected one MicroPython child, got %r" % mp

        # bmsctl from outside takes turns with the monitor on the same port.
        r = bmsctl("--port", str(link), "--timeout", "5", "status", "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert len(s["cells_mv"]) == N_CELLS

        p.pump_until(lambda text: sorted(_screen_cells(text)) == list(range(1, N_CELLS + 1)))
        assert p.poll() is None, "vboard ended: %r" % p.text()[-2000:]
        cells = _screen_cells(p.text())
        assert sorted(cells) == list(range(1, N_CELLS + 1)), p.text()[-3000:]
        assert all(2500 < mv < 3700 for mv in cells.values()), cells
        assert "openbms  state normal" in p.text()

        os.write(p.fd, b"\x03")  # Ctrl-C in the terminal
        t0 = time.monotonic()
        code = p.wait(10)
        assert code == 0, "exit %r after Ctrl-C; screen: %r" % (code, p.text()[-2000:])
        assert time.monotonic() - t0 < 5
        assert not os.path.lexists(link)
        assert not _alive(mp[0]), "the MicroPython process %d is still running" % mp[0]
        r = subprocess.run(["pgrep", "-f", str(link)], capture_output=True, text=True)
        assert r.stdout.split() == []
        assert _no_micropython_left(link) == []
    finally:
        p.close()


# ---- the board's own output ------------------------------------------------------------


def test_watchdog_reset_traceback_is_not_printed(start_board):
    # MicroPython prints the exception that ends a scheduled tick; a watchdog
    # reset ends the hung tick that way. vboard drops those tracebacks even
    # when its pipe reads split them mid-line (fifty resets: many splits).
    link, proc = start_board()
    with Console(link) as c:
        c.step(1)
        c.sim_ok("sim fault firmware_hang on")
        c.step(201)  # a reset every 4 s while the hang lasts: fifty tracebacks to drop, not one
        assert c.sim()["resets"] == 50
        c.sim_ok("sim fault firmware_hang off")
        c.step(1)
        assert c.status()["reset_cause"] == "WDT_RESET"
    assert _stop(proc) == 0
    err = proc.err_path.read_text(errors="replace")
    assert "WatchdogReset" not in err and "Traceback" not in err, err


def test_make_sim_with_a_fresh_fs_folder(tmp_path):
    # What `make sim` runs on a fresh checkout, where sim-fs/ does not exist
    # yet: the monitor comes up and Ctrl-C ends both.
    link = tmp_path / "bms"
    fs = tmp_path / "sim-fs" / "esp32_mux_16s"
    env = dict(os.environ, TERM="xterm")
    p = PtyProcess(_vboard_cmd(link, "--board", "esp32_mux_16s", "--scenario", "scenarios/solar_day.json",
                               "--speed", "60", "--fs", str(fs), "--monitor"), env)
    try:
        p.pump_until(lambda text: sorted(_screen_cells(text)) == list(range(1, N_CELLS + 1)))
        assert p.poll() is None, "vboard ended with %r: %r" % (p.code, p.text()[-1500:])
        assert sorted(_screen_cells(p.text())) == list(range(1, N_CELLS + 1)), p.text()[-3000:]
        os.write(p.fd, b"\x03")
        assert p.wait(10) == 0
        assert not os.path.lexists(link)
        assert _no_micropython_left(link) == []
    finally:
        p.close()


# ---- every supported board -------------------------------------------------------


CHIP_BOARDS = {"pico_bq76940_15s": 15, "esp32_bq76952_16s": 16, "esp32_ltc6811x2_24s": 24, "pico_adc_ina226_4s": 4}


@pytest.mark.parametrize("name", sorted(CHIP_BOARDS))
def test_each_front_end_board_boots_on_the_virtual_board_and_reads_its_cells(start_board, name):
    link, _proc = start_board("--board", name)
    with Console(link) as c:
        c.step(8)  # a chip's first conversions (the bq769x0's thermistors take 2.6 s)
        s = c.status()
        hw = c.sim()
        assert s["state"] == "normal" and s["faults"] == [], s
        assert (hw["chg"], hw["dsg"]) == (True, True)  # the chip or the GPIOs really conduct
        assert len(s["cells_mv"]) == CHIP_BOARDS[name] == len(hw["cells_mv"])
        for k, (read, true) in enumerate(zip(s["cells_mv"], hw["cells_mv"]), 1):
            assert abs(read - true) <= 12, "%s: cell %d reads %d mV, the simulator says %d mV" % (name, k, read, true)
        assert s["errors"]["crc"] == 0 and s["errors"]["chip_resets"] == 0
