"""bmsctl against a fake board on a pseudo-terminal, plus its pure parts
(render, key editing, CSV rows) and the CSV plotting."""
import csv
import fcntl
import json
import os
import select
import subprocess
import sys
import termios
import threading
import time

import pytest

from tools import bmsctl, plotting

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BANNER = b"openbms ready after PWRON_RESET ('help' for commands)\r\n"
SIM_LINE = b"sim: cell 2 = 3310 mV\n"  # the virtual board prints with "\n" only

STATUS = {
    "state": "normal", "cells_mv": [3300, 3310, 3290, 3305], "pack_mv": 13205, "current_ma": -2500,
    "temps_c": [25.0, None], "board_c": 30.0, "soc_pct": None, "chg": True, "dsg": False,
    "faults": ["cell_uv"], "warnings": ["cell_ov"], "balancing": [2], "uptime_s": 3725,
    "errors": {"comm": 1, "tick": 0, "missed": 4}, "reset_cause": "PWRON_RESET",
}
CELLS = {"cells_mv": [3300, 3310, 3290, 3305], "balancing": [2]}
FAULTS = {"faults": ["cell_uv"], "warnings": [], "trips": {"cell_uv": 2},
          "errors": {"comm": 1, "tick": 0, "missed": 4}, "config_problem": None}
CONFIG = {"cell_ov_mv": 3650, "cell_ov_warn_mv": 3600, "cell_uv_mv": 2800, "cell_uv_warn_mv": 2950,
          "bal_start_mv": 3400, "chemistry": "lfp", "cells": 4}


def line(obj):
    return json.dumps(obj).encode() + b"\r\n"


REPLIES = {
    "status --json": line(STATUS),
    "cells --json": line(CELLS),
    "faults --json": line(FAULTS),
    "config get --json": line(CONFIG),
    "config get cells --json": line({"cells": 4}),
    "config get nope --json": b"error: unknown key nope (see 'config get')\r\n",
    "config set cell_ov_mv 3600": b"ok cell_ov_mv = 3600 (not saved: 'config save' keeps it)\r\n",
    "config set cell_ov_mv 9999": b"error: cell_ov_mv must be 1500..4300\r\n",
}


class FakeBoard:
    """Answers each command line written to the pty's slave with a canned reply,
    preceded by a banner, a simulator line and a blank line, which bmsctl must skip."""

    def __init__(self, replies, prelude=BANNER + SIM_LINE + b"\r\n"):
        self.master, self.slave = os.openpty()  # the test holds the slave open: the pty outlives each exchange
        self.path = os.ttyname(self.slave)
        self.replies = replies
        self.prelude = prelude
        self.received = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        buf = b""
        while not self.stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            buf += os.read(self.master, 1024)
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                command = raw.decode().strip()
                self.received.append(command)
                if command in self.replies:
                    os.write(self.master, self.prelude + self.replies[command])

    def close(self):
        self.stop.set()
        self.thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def board():
    b = FakeBoard(REPLIES)
    yield b
    b.close()


def run(capsys, port, *args, timeout="1"):
    code = bmsctl.main(["--port", port, "--timeout", timeout, *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- one-shot commands -------------------------------------------------------------


def test_status_human(board, capsys):
    code, out, err = run(capsys, board.path, "status")
    assert (code, err) == (0, "")
    assert board.received == ["status --json"]
    lines = out.splitlines()
    assert lines[0] == "state normal  CHG on  DSG off  SOC --  uptime 1:02:05"
    assert lines[1] == "pack 13.21 V  current -2.500 A  cells 3290..3310 mV (delta 20 mV)"
    assert lines[2] == "temps T1 25.0 C  T2 fault  board 30.0 C"
    assert lines[3] == "faults: cell_uv  warnings: cell_ov  balancing: 2"
    assert lines[4] == "errors: comm 1  tick 0  missed ticks 4  reset cause PWRON_RESET"


def test_status_json_is_the_line_as_received(board, capsys):
    code, out, _ = run(capsys, board.path, "status", "--json")
    assert code == 0
    assert out == line(STATUS).decode().rstrip("\r\n") + "\n"


def test_cells_human_and_json(board, capsys):
    code, out, _ = run(capsys, board.path, "cells")
    assert code == 0
    assert out.splitlines() == [" 1  3300 mV", " 2  3310 mV max bal", " 3  3290 mV min", " 4  3305 mV", "delta 20 mV"]
    code, out, _ = run(capsys, board.path, "cells", "--json")
    assert (code, json.loads(out)) == (0, CELLS)


def test_faults_human_and_json(board, capsys):
    code, out, _ = run(capsys, board.path, "faults")
    assert code == 0
    assert out.splitlines() == ["faults: cell_uv", "warnings: none", "trips since boot: cell_uv 2",
                                "errors: comm 1  tick 0  missed ticks 4"]
    code, out, _ = run(capsys, board.path, "faults", "--json")
    assert (code, json.loads(out)) == (0, FAULTS)


def test_config_get_all_and_one(board, capsys):
    code, out, _ = run(capsys, board.path, "config", "get")
    assert code == 0
    assert out.splitlines() == ["%s = %s" % (k, CONFIG[k]) for k in sorted(CONFIG)]
    code, out, _ = run(capsys, board.path, "config", "get", "cells")
    assert (code, out) == (0, "cells = 4\n")
    code, out, _ = run(capsys, board.path, "config", "get", "cells", "--json")
    assert (code, json.loads(out)) == (0, {"cells": 4})
    assert board.received == ["config get --json", "config get cells --json", "config get cells --json"]


def test_config_set_ok_prints_the_board_line(board, capsys):
    code, out, err = run(capsys, board.path, "config", "set", "cell_ov_mv", "3600")
    assert (code, err) == (0, "")
    assert out == "ok cell_ov_mv = 3600 (not saved: 'config save' keeps it)\n"


def test_board_error_exits_7_with_the_board_line(board, capsys):
    code, out, err = run(capsys, board.path, "config", "set", "cell_ov_mv", "9999")
    assert (code, out) == (bmsctl.EXIT_BOARD_ERROR, "")
    assert err == "bmsctl: error: board replied: error: cell_ov_mv must be 1500..4300\n"
    code, _, err = run(capsys, board.path, "config", "get", "nope")
    assert code == 7 and "unknown key nope" in err


# ---- link failures -----------------------------------------------------------------


def test_port_not_found(tmp_path, capsys):
    code, out, err = run(capsys, str(tmp_path / "ttyNOPE"), "status")
    assert (code, out) == (bmsctl.EXIT_NO_PORT, "")
    assert err.startswith("bmsctl: error: port ") and "not found" in err and err.count("\n") == 1


def test_port_busy_after_timeout(board, capsys):
    holder = os.open(board.path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        code, _, err = run(capsys, board.path, "status", timeout="0.3")
        elapsed = time.monotonic() - t0
    finally:
        os.close(holder)
    assert code == bmsctl.EXIT_BUSY
    assert "busy" in err
    assert 0.3 <= elapsed < 3.0  # retried until the timeout, then gave up (not hung)
    assert board.received == []  # nothing was sent while someone else held the port


def test_busy_port_is_taken_once_released(board, capsys):
    holder = os.open(board.path, os.O_RDWR | os.O_NOCTTY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.2, os.close, [holder]).start()
    code, out, _ = run(capsys, board.path, "status", "--json", timeout="1")
    assert code == 0 and json.loads(out)["state"] == "normal"


def test_no_reply(capsys):
    silent = FakeBoard({})
    try:
        t0 = time.monotonic()
        code, out, err = run(capsys, silent.path, "status", timeout="0.3")
        assert time.monotonic() - t0 < 3.0  # gave up after the timeout, did not hang
    finally:
        silent.close()
    assert (code, out) == (bmsctl.EXIT_NO_REPLY, "")
    assert "no reply to 'status --json'" in err


@pytest.mark.parametrize("junk", [b"state normal CHG on\r\n", b"\xff\xfe\x80garbage\r\n", b'{"state": "norm'])
def test_garbled_reply(junk, capsys):
    noisy = FakeBoard({"status --json": junk})
    try:
        code, out, err = run(capsys, noisy.path, "status", timeout="0.3")
    finally:
        noisy.close()
    assert (code, out) == (bmsctl.EXIT_GARBLED, "")
    assert err.startswith("bmsctl: error: garbled reply to 'status --json'")


def test_junk_before_the_reply_is_waited_past(capsys):
    # e.g. the tail of an earlier reply still on the wire when the port opened
    late = FakeBoard({"status --json": b'"missed": 0}}\r\n' + line(STATUS)})
    try:
        code, out, _ = run(capsys, late.path, "status", "--json")
    finally:
        late.close()
    assert code == 0 and json.loads(out) == STATUS


def test_usage_errors_and_help(capsys):
    assert bmsctl.main(["status"]) == bmsctl.EXIT_USAGE  # no --port
    assert "--port is required" in capsys.readouterr().err
    assert bmsctl.main(["--port", "x", "frobnicate"]) == 2
    capsys.readouterr()
    assert bmsctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    for code, _ in bmsctl.EXIT_CODES:
        assert "\n  %d  " % code in out


# ---- monitor -----------------------------------------------------------------------


def frame_lines(s, cfg=CONFIG, color=True):
    return bmsctl.render(s, cfg, width=80, color=color).splitlines()


def cell_line(lines, n):
    return next(x for x in lines if x.startswith("%2d " % n))


def test_render_colours_cells_by_level():
    s = dict(STATUS, cells_mv=[3620, 3300, 3560, 2990], balancing=[])
    lines = frame_lines(s)
    assert bmsctl.RED in cell_line(lines, 1)  # above the OV warning (3600)
    assert bmsctl.GREEN in cell_line(lines, 2)  # mid range
    assert bmsctl.YELLOW in cell_line(lines, 3)  # within 50 mV of the OV warning
    assert bmsctl.YELLOW in cell_line(lines, 4)  # within 50 mV of the UV warning (2950)
    assert bmsctl.RED not in cell_line(lines, 2) and bmsctl.GREEN not in cell_line(lines, 1)
    assert all(bmsctl.RESET in cell_line(lines, n) for n in range(1, 5))


def test_render_bar_length_is_proportional_between_uv_and_ov():
    s = dict(STATUS, cells_mv=[2800, 3225, 3650, 4000], balancing=[])
    lines = frame_lines(s, color=False)
    filled = [cell_line(lines, n).count("#") for n in range(1, 5)]
    empty = cell_line(lines, 1).count(".")
    assert filled[0] == 0 and filled[2] == empty == filled[3]  # full at OV, clamped above
    assert filled[1] == round(empty / 2)


def test_render_balancing_marks_and_min_max_delta():
    lines = frame_lines(dict(STATUS, balancing=[2, 4]), color=False)
    assert cell_line(lines, 2).endswith("3310 mV bal")
    assert cell_line(lines, 4).endswith("3305 mV bal")
    assert cell_line(lines, 1).endswith("3300 mV")
    assert "min 3290 mV  max 3310 mV  delta 20 mV" in lines
    assert all(len(x) <= 80 for x in lines)


def test_status_and_monitor_show_the_balancing_state():
    s = dict(STATUS, bal="derated 1/2 (board 52 C)")
    assert "faults: cell_uv  warnings: cell_ov  balancing: 2 (derated 1/2 (board 52 C))" in \
        bmsctl.format_status(s).splitlines()
    lines = frame_lines(s, color=False)
    assert lines[lines.index("min 3290 mV  max 3310 mV  delta 20 mV") + 1] == "balancing: derated 1/2 (board 52 C)"
    off = dict(STATUS, balancing=[], bal="off: spread 8 mV <= 15")
    assert "faults: cell_uv  warnings: cell_ov  balancing: none (off: spread 8 mV <= 15)" in \
        bmsctl.format_status(off).splitlines()
    assert not any(x.startswith("balancing") for x in frame_lines(STATUS, color=False))  # older firmware: no line


def test_render_summary_lines():
    lines = frame_lines(STATUS, color=False)
    assert lines[0] == "openbms  state normal  CHG on  DSG off  SOC --  uptime 1:02:05"
    assert lines[1] == "pack 13.205 V  current -2.500 A"
    assert "faults: cell_uv" in lines and "warnings: cell_ov" in lines
    assert "errors: comm 1  tick 0  missed ticks 4" in lines


def test_render_plain_has_no_escapes():
    text = bmsctl.render(dict(STATUS, cells_mv=[3620, 3300, 3560, 2990]), CONFIG, color=False)
    assert "\x1b" not in text
    assert "3620 mV" in text


def test_render_before_the_first_measurement():
    s = dict(STATUS, cells_mv=[], pack_mv=None, current_ma=None, temps_c=[], board_c=None)
    assert "no measurement yet" in frame_lines(s)


def test_monitor_once_prints_one_plain_frame(board, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")  # the frame is as wide as the terminal
    code, out, err = run(capsys, board.path, "monitor", "--once")
    assert (code, err) == (0, "")
    assert board.received == ["config get --json", "status --json"]
    assert out == bmsctl.render(STATUS, CONFIG, width=60, color=False) + "\n"
    assert "\x1b" not in out and "min 3290 mV  max 3310 mV  delta 20 mV" in out


def _take_terminal():
    # In the child: make the pty on stdin its controlling terminal, so Ctrl-C there is a SIGINT.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _read_until(fd, wanted, seen=b"", limit=1.5):
    end = time.monotonic() + limit
    while wanted not in seen and time.monotonic() < end:
        if select.select([fd], [], [], 0.05)[0]:
            seen += os.read(fd, 65536)
    assert wanted in seen
    return seen


@pytest.mark.parametrize("quit_key", [b"q", b"\x03"])
def test_monitor_interactive_sends_typed_lines_and_restores_the_terminal(quit_key):
    sim = FakeBoard(dict(REPLIES, **{"sim cell 1 3700": b"sim: cell 1 = 3700 mV\n"}))
    master, slave = os.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "tools.bmsctl", "--port", sim.path, "monitor", "--interval", "0.2"],
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE, preexec_fn=_take_terminal)
    try:
        seen = _read_until(master, b"\n> ")  # first frame and the command line drawn
        assert bmsctl.GREEN.encode() in seen and bmsctl.HOME.encode() in seen
        os.write(master, b"sim cell 1 3700\n")
        _read_until(master, b"sim: cell 1 = 3700 mV")  # the reply shown in the message area
        during = termios.tcgetattr(slave)
        os.write(master, quit_key)
        _read_until(master, bmsctl.RESET.encode() + b"\r\n")  # drained so the child never blocks writing
        code = proc.wait(1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        after = termios.tcgetattr(slave)
        err = proc.stderr.read()
        proc.stderr.close()
        os.close(master)
        os.close(slave)
        sim.close()
    assert (code, err) == (0, b"")
    assert during[3] & termios.ICANON == 0 and during[3] & termios.ECHO == 0  # cbreak while running
    assert after == before
    assert "sim cell 1 3700" in sim.received


def test_apply_keys_edits_and_enters_lines():
    cmdline, entered, quit_ = bmsctl.apply_keys("", "sim cell 1 37x\x7f00\nstat")
    assert (cmdline, entered, quit_) == ("stat", ["sim cell 1 3700"], False)
    cmdline, entered, quit_ = bmsctl.apply_keys("stat", "\x1b[Aus\r")  # an arrow key is dropped
    assert (cmdline, entered, quit_) == ("", ["status"], False)
    assert bmsctl.apply_keys("", "\n\n")[1] == []  # empty lines send nothing


def test_apply_keys_q_quits_only_on_an_empty_line():
    assert bmsctl.apply_keys("", "q") == ("", [], True)
    assert bmsctl.apply_keys("se", "q") == ("seq", [], False)


# ---- record (CSV) --------------------------------------------------------------------


def test_record_writes_header_and_rows(board, capsys, tmp_path):
    path = tmp_path / "log.csv"
    t0 = time.monotonic()
    code, _, err = run(capsys, board.path, "record", "--csv", str(path), "--interval", "0.05", "--count", "3")
    assert time.monotonic() - t0 < 5.0
    assert code == 0 and "3 rows written" in err
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["t_s", "uptime_s", "state", "chg", "dsg", "pack_mv", "current_ma", "soc_pct",
                       "cell1_mv", "cell2_mv", "cell3_mv", "cell4_mv", "t1_c", "t2_c", "board_c",
                       "faults", "balancing"]
    assert len(rows) == 4
    for row in rows[1:]:
        assert row[1:] == ["3725", "normal", "1", "0", "13205", "-2500", "",
                           "3300", "3310", "3290", "3305", "25.0", "", "30.0", "cell_uv", "2"]
    times = [float(r[0]) for r in rows[1:]]
    assert times == sorted(times) and times[2] - times[0] >= 0.09  # polled at the interval
    assert all(len(r[0].split(".")[1]) == 3 for r in rows[1:])
    assert board.received == ["status --json"] * 3


def test_record_stops_after_duration(board, capsys, tmp_path):
    path = tmp_path / "log.csv"
    code, _, _ = run(capsys, board.path, "record", "--csv", str(path), "--interval", "0.1", "--duration", "0.35")
    assert code == 0
    assert len(path.read_text().splitlines()) == 1 + 4  # polls at 0, 0.1, 0.2, 0.3 s


def test_csv_row_pads_a_reply_with_fewer_cells():
    s = dict(STATUS, cells_mv=[], temps_c=[], board_c=None, faults=[], balancing=[])
    row = bmsctl.csv_row(1.23456, s, 2, 1)
    assert row == ["1.235", 3725, "normal", 1, 0, 13205, -2500, "", "", "", "", "", "", ""]


def test_record_first_poll_failure_exits_with_its_code(capsys, tmp_path):
    path = tmp_path / "log.csv"
    code, _, _ = run(capsys, str(tmp_path / "ttyNOPE"), "record", "--csv", str(path), "--count", "1")
    assert code == bmsctl.EXIT_NO_PORT
    assert not path.exists()  # no empty log left behind


def test_log_csv_still_records_with_a_note(board, capsys, tmp_path):
    path = tmp_path / "log.csv"
    code, out, err = run(capsys, board.path, "log", "--csv", str(path), "--interval", "0.05", "--count", "2")
    assert code == 0 and out == ""
    assert err.splitlines() == ["bmsctl: note: 'log --csv' is now 'record --csv'; 'log' reads the board's event log",
                                "2 rows written to %s" % path]
    assert len(path.read_text().splitlines()) == 3 and board.received == ["status --json"] * 2


# ---- log (the board's event log) ------------------------------------------------------

EVENTS = {"events": [
    {"seq": 7, "boot": 2, "uptime_s": 0, "event": "boot", "detail": "WDT_RESET", "value": 0, "pack_mv": None,
     "current_ma": None, "cell_min_mv": None, "cell_max_mv": None, "soc_pct": None, "temp_c": None},
    {"seq": 8, "boot": 2, "uptime_s": 3605, "event": "trip", "detail": "cell_ov", "value": 3662, "pack_mv": 52480,
     "current_ma": 12000, "cell_min_mv": 3301, "cell_max_mv": 3662, "soc_pct": 98, "temp_c": 31},
    {"seq": 9, "boot": 2, "uptime_s": 3605, "event": "state", "detail": "discharge", "value": 4, "pack_mv": 52480,
     "current_ma": -500, "cell_min_mv": 3301, "cell_max_mv": 3662, "soc_pct": 98, "temp_c": 31},
    {"seq": 10, "boot": 2, "uptime_s": 3700, "event": "config_set", "detail": "chemistry", "value": 1,
     "pack_mv": 52480, "current_ma": 0, "cell_min_mv": 3301, "cell_max_mv": 3662, "soc_pct": None, "temp_c": -5},
], "torn": 1, "dropped": 3}
LOG_REPLIES = {
    "log 20 --json": line(EVENTS),
    "log 2 --json": line(dict(EVENTS, events=EVENTS["events"][2:], torn=0, dropped=0)),
    "log 256 --json": line({"events": [], "torn": 0, "dropped": 0}),
    "log 5 --json": b"error: storage: [Errno 5] EIO\r\n",
}


@pytest.fixture
def log_board():
    b = FakeBoard(LOG_REPLIES)
    yield b
    b.close()


def test_log_reads_the_event_log(log_board, capsys):
    code, out, err = run(capsys, log_board.path, "log")
    assert (code, err) == (0, "")
    assert log_board.received == ["log 20 --json"]
    assert out.splitlines() == [
        "#7 boot 2 +0s boot WDT_RESET no reading soc -- --C",
        "#8 boot 2 +3605s trip cell_ov value=3662 pack=52480mV I=+12.0A cells 3301..3662mV soc 98% 31C",
        "#9 boot 2 +3605s state discharge from normal pack=52480mV I=-0.5A cells 3301..3662mV soc 98% 31C",
        "#10 boot 2 +3700s config_set chemistry=nmc pack=52480mV I=+0.0A cells 3301..3662mV soc -- -5C",
        "(1 torn record skipped)",
        "(3 events lost since boot: queue full or flash failing)",
    ]
    code, out, _ = run(capsys, log_board.path, "log", "2")
    assert code == 0 and len(out.splitlines()) == 2
    code, out, _ = run(capsys, log_board.path, "log", "256")
    assert (code, out) == (0, "log empty\n")


def test_log_json_is_the_line_as_received(log_board, capsys):
    code, out, _ = run(capsys, log_board.path, "log", "--json")
    assert code == 0 and out == line(EVENTS).decode().rstrip("\r\n") + "\n"


def test_log_errors(log_board, capsys, tmp_path):
    code, _, err = run(capsys, log_board.path, "log", "5")
    assert code == bmsctl.EXIT_BOARD_ERROR and "error: storage" in err
    for bad in (["0"], ["257"], ["x"], ["--interval", "1"], ["3", "--csv", str(tmp_path / "x.csv")]):
        code, _, _ = run(capsys, log_board.path, "log", *bad)
        assert code == bmsctl.EXIT_USAGE, bad
    assert log_board.received == ["log 5 --json"]
    assert not (tmp_path / "x.csv").exists()


def test_log_waits_for_a_long_reply_on_a_slow_link(capsys):
    # 256 records at 9600 baud: about 70 s of JSON; the wait covers it.
    seen = {}

    def ask(self, command, parse):
        seen["timeout"] = self.timeout
        return line({"events": [], "torn": 0, "dropped": 0}).decode().strip()

    real = bmsctl.Link.ask
    bmsctl.Link.ask = ask
    try:
        assert bmsctl.main(["--port", "/dev/null", "--baud", "9600", "log", "256"]) == 0
    finally:
        bmsctl.Link.ask = real
    assert seen["timeout"] > 2 + 256 * 200 * 10 / 9600


# ---- plot --------------------------------------------------------------------------


def write_log(path, n=40, truth=False):
    cols = ["sim_t_s", "chg", "dsg", "current_ma", "soc_pct", "cell1_mv", "cell2_mv", "t1_c", "board_c"]
    if truth:
        cols += ["true_cell1_mv", "true_cell2_mv", "true_current_ma", "true_soc_pct", "pack_temp_c"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, cols)
        w.writeheader()
        for i in range(n):
            row = {"sim_t_s": i * 10, "chg": 0 if 10 <= i < 20 else 1, "dsg": 1, "current_ma": 5000,
                   "soc_pct": "" if i < 3 else 50 + i / 2, "cell1_mv": 3300 + i, "cell2_mv": 3310 + i,
                   "t1_c": 25.0, "board_c": "" if i == 5 else 30.0}
            if truth:
                row.update(true_cell1_mv=3301 + i, true_cell2_mv=3309 + i, true_current_ma=5010,
                           true_soc_pct=51 + i / 2, pack_temp_c=24.0)
            w.writerow(row)


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


@pytest.mark.parametrize("truth", [False, True])
def test_plot_writes_a_png(tmp_path, capsys, truth):
    log, png = tmp_path / "log.csv", tmp_path / "log.png"
    write_log(log, truth=truth)
    assert bmsctl.main(["plot", str(log), "--png", str(png)]) == 0
    assert_png(png)


def test_plot_csv_directly_from_a_bmsctl_log(tmp_path):
    log, png = tmp_path / "log.csv", tmp_path / "log.png"
    with open(log, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(bmsctl.csv_header(4, 2))
        for i in range(5):
            w.writerow(bmsctl.csv_row(i * 1.0, dict(STATUS, uptime_s=3725 + i), 4, 2))
    plotting.plot_csv(str(log), str(png), title="bench")
    assert_png(png)


def test_fet_off_spans():
    log_rows = [{"chg": c, "dsg": d} for c, d in (("1", "1"), ("0", "1"), ("0", "1"), ("1", "1"), ("1", "0"))]

    class Log:
        fields, rows = ["chg", "dsg"], log_rows

    assert plotting._fet_off_spans(Log, [0, 1, 2, 3, 4]) == [(1, 3), (4, 4)]


def test_plot_empty_csv_is_a_clear_error(tmp_path, capsys):
    log = tmp_path / "empty.csv"
    log.write_text("sim_t_s,cell1_mv\n")
    with pytest.raises(ValueError, match="no data rows"):
        plotting.plot_csv(str(log), str(tmp_path / "x.png"))
    assert bmsctl.main(["plot", str(log), "--png", str(tmp_path / "x.png")]) == bmsctl.EXIT_OTHER
    err = capsys.readouterr().err
    assert err.startswith("bmsctl: error: plot: ") and "no data rows" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_plot_needs_a_usable_time_column(tmp_path):
    log = tmp_path / "notime.csv"
    log.write_text("cell1_mv\n3300\n")
    with pytest.raises(ValueError, match="no usable time column"):
        plotting.plot_csv(str(log), str(tmp_path / "x.png"))


def test_plot_falls_back_to_t_s_when_uptime_goes_back(tmp_path):
    log = tmp_path / "reset.csv"
    log.write_text("t_s,uptime_s,cell1_mv\n0.0,100,3300\n1.0,101,3301\n2.0,0,3302\n")
    assert plotting._time_axis(plotting._Log(str(log))) == ("t_s", [0.0, 1.0, 2.0])
