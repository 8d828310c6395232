"""tools/deploy.py and package.json (CPython only).

The device is a fake MicroPython board on a pseudo-terminal: it speaks the
raw REPL (with raw-paste) as mpremote expects and runs each script under
CPython with os/open/sys/machine/time replaced, so its filesystem is a local
folder and its platform and .mpy version are what a test says. The real
mpremote (the pinned release) drives it, so the command lines deploy
builds are run as they would be on a board."""
import builtins
import errno
import io
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
import tty
import types

from tools import deploy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOARDS = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "boards")) if f.endswith(".json"))
ALL_DRIVERS = ("adc_direct", "bq769x0", "bq769x2", "ltc681x", "ina226", "crc", "gpio_fets")
MPY_ESP32 = 6 | 3 << 8 | 10 << 10  # .mpy v6.3, xtensawin: sys.implementation._mpy of MicroPython 1.24 on ESP32
MPY_RP2 = 6 | 3 << 8 | 4 << 10  # armv6m
READY = b"openbms ready after HARD_RESET ('help' for commands)\r\n"
STATUS = b"state normal  CHG on  DSG on  SOC 50%  uptime 2 s\r\npack 13.20 V  current +0.000 A\r\n"


def _board(name):
    with open(os.path.join(ROOT, "boards", name + ".json")) as f:
        return json.load(f)


# ---- a fake board behind a pty ------------------------------------------------------------


class _Reset(BaseException):
    pass


def _mp_error(e):
    if isinstance(e, OSError):
        return "OSError: [Errno %d] %s" % (e.errno, errno.errorcode.get(e.errno, "EIO"))
    return "%s: %s" % (type(e).__name__, e)


class _Os:
    """os as the script on the board sees it, over the fake's folder."""

    sep = "/"

    def __init__(self, dev):
        self.dev = dev

    def _p(self, p):
        return self.dev.root + (p if p.startswith("/") else "/" + p)

    @staticmethod
    def _mp(fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise OSError(e.errno, errno.errorcode.get(e.errno, "EIO")) from None

    def stat(self, p):
        return tuple(self._mp(os.stat, self._p(p)))[:10]

    def mkdir(self, p):
        self._mp(os.mkdir, self._p(p))

    def remove(self, p):
        self.dev.removed.append(p)
        self._mp(os.remove, self._p(p))

    def rmdir(self, p):
        self._mp(os.rmdir, self._p(p))

    def rename(self, a, b):
        self._mp(os.replace, self._p(a), self._p(b))

    def listdir(self, p="/"):
        return sorted(self._mp(os.listdir, self._p(p)))

    def ilistdir(self, p="/"):
        for n in self.listdir(p):
            full = os.path.join(self._p(p), n)
            yield (n, 0x4000 if os.path.isdir(full) else 0x8000, 0, os.path.getsize(full))

    def statvfs(self, p):
        blocks = self.dev.free // 4096
        return (4096, 4096, blocks * 2, blocks, blocks, 0, 0, 0, 0, 255)

    def getcwd(self):
        return "/"

    def chdir(self, p):
        pass


class FakeDevice:
    """A MicroPython board on a pty, its filesystem the folder root."""

    WINDOW = 256  # raw-paste flow-control window

    def __init__(self, root, platform="esp32", mpy=MPY_ESP32, version=(1, 24, 1), free=1 << 21, on_reset=None,
                 fail_write=None):
        self.root = str(root)
        self.fail_write = fail_write  # a device path whose writing fails (the link drops, the disk is full)
        os.makedirs(self.root, exist_ok=True)
        self.platform, self.mpy, self.version, self.free = platform, mpy, version, free
        self.on_reset = on_reset
        self.resets = 0
        self.soft_resets = 0
        self.writes = []  # device paths opened for writing, in order
        self.removed = []
        self.master, self.slave = os.openpty()  # the fake holds the slave: the pty outlives each mpremote
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.mode = "friendly"
        self._boot()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _boot(self):
        impl = types.SimpleNamespace(name="micropython", version=tuple(self.version) + ("",))
        if self.mpy is not None:
            impl._mpy = self.mpy

        def reset():
            raise _Reset()

        self.modules = {
            "os": _Os(self),
            "sys": types.SimpleNamespace(platform=self.platform, implementation=impl, path=["", ".frozen", "/lib"]),
            "machine": types.SimpleNamespace(reset=reset),
            "time": types.SimpleNamespace(sleep_ms=lambda ms: None, sleep=lambda s: None),
        }
        self.modules["uos"] = self.modules["os"]
        real_import = builtins.__import__

        def imp(name, globals=None, locals=None, fromlist=(), level=0):
            if name in self.modules:
                return self.modules[name]
            return real_import(name, globals, locals, fromlist, level)

        def opn(p, mode="r", *args, **kw):
            if any(m in mode for m in "wax+"):
                self.writes.append(p)
                if p == self.fail_write:
                    raise OSError(errno.ENOSPC, "ENOSPC")
            return open(self.modules["os"]._p(p), mode, *args, **kw)

        def prn(*args, **kw):
            kw.pop("file", None)
            print(*args, file=self._out, **kw)

        b = dict(vars(builtins))
        b.update(__import__=imp, open=opn, print=prn)
        self.globals = {"__builtins__": b, "__name__": "__main__"}

    def _send(self, data):
        os.write(self.master, data)

    def _run(self, code):
        """Run one script; its stdout, EOF, stderr, EOF and the prompt go back
        in one write (as a board would send them, mpremote reads them whole)."""
        self._out = io.StringIO()
        err = ""
        try:
            exec(compile(code.decode(), "<stdin>", "exec"), self.globals)
        except _Reset:
            self.resets += 1
            self.mode = "friendly"  # the board reboots into main.py
            self._boot()
            if self.on_reset:
                self.on_reset()
            return
        except BaseException as e:  # noqa: BLE001 - the board prints whatever it was
            err = 'Traceback (most recent call last):\r\n  File "<stdin>", line 1, in <module>\r\n%s\r\n' % _mp_error(e)
        self._send(self._out.getvalue().replace("\n", "\r\n").encode() + b"\x04" + err.encode() + b"\x04>")

    def _serve(self):
        line = b""
        paste = None
        got = 0
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            for c in data:
                ch = bytes((c,))
                if paste is not None:  # raw-paste: collect until Ctrl-D, refill the window as it is used
                    if ch == b"\x04":
                        self._send(b"\x04")
                        self._run(paste)
                        paste = None
                        continue
                    paste += ch
                    got += 1
                    if got == self.WINDOW:
                        got = 0
                        self._send(b"\x01")
                    continue
                if self.mode == "friendly":
                    if ch == b"\x01":
                        self.mode = "raw"
                        line = b""
                        self._send(b"raw REPL; CTRL-B to exit\r\n>")
                    continue
                if ch == b"\x01":
                    if line == b"\x05A":
                        paste, got, line = b"", 0, b""
                        self._send(b"R\x01" + struct.pack("<H", self.WINDOW))
                    else:
                        line = b""
                        self._send(b"\r\nraw REPL; CTRL-B to exit\r\n>")
                elif ch == b"\x02":
                    self.mode = "friendly"
                    line = b""
                elif ch == b"\x03":
                    line = b""
                elif ch == b"\x04":
                    if line:
                        self._send(b"OK")
                        self._run(line)
                    else:  # soft reset
                        self.soft_resets += 1
                        self._boot()
                        self._send(b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
                    line = b""
                else:
                    line += ch

    def file(self, p):
        with open(self.root + p, "rb") as f:
            return f.read()

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


class FakeConsole:
    """The board's console UART on a pty: silent until the board boots, then
    the ready line, and `status` answered while it is up."""

    def __init__(self, ready=READY, status=STATUS, up=False):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.ready, self.status, self.up = ready, status, up
        self.received = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def boot(self):
        self.up = True
        if self.ready:
            os.write(self.master, self.ready)

    def _serve(self):
        buf = b""
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.02)[0]:
                continue
            buf += os.read(self.master, 1024)
            while b"\n" in buf:
                raw, buf = buf.split(b"\n", 1)
                self.received.append(raw.decode().strip())
                if self.up and raw.strip() == b"status":
                    os.write(self.master, self.status)

    def close(self):
        self._stop.set()
        self._thread.join()
        os.close(self.master)
        os.close(self.slave)


class Rig:
    def __init__(self, tmp_path, **kw):
        self.console = FakeConsole()
        self.dev = FakeDevice(tmp_path / "device", on_reset=self.console.boot, **kw)
        self.build = str(tmp_path / "build")

    def deploy(self, capfd, board="esp32_adc_4s", *more):
        code = deploy.main(["--board", board, "--port", self.dev.path, "--console", self.console.path,
                            "--build-dir", self.build, "--timeout", "3", *more])
        out, err = capfd.readouterr()
        self.console.up = False  # until the next reset
        return code, out, err

    def close(self):
        self.dev.close()
        self.console.close()


def _rig(tmp_path, **kw):
    return Rig(tmp_path, **kw)


def _lib_files(dev):
    out = []
    for d, _, files in os.walk(os.path.join(dev.root, "lib")):
        out += [os.path.relpath(os.path.join(d, f), dev.root) for f in files]
    return sorted(out)


# ---- the plan, without a device ---------------------------------------------------------------


def _expected_drivers(board, follow_imports=True):
    want = {board["afe"]}
    if follow_imports and board["afe"] in ("adc_direct", "ltc681x"):
        want.add("gpio_fets")  # FETs on GPIO: imported by those drivers
    if "ina226" in board.get("current", {}):
        want.add("ina226")
    if board["afe"] in ("bq769x0", "bq769x2", "ltc681x"):
        want.add("crc")
    return want


def test_module_selection_for_every_board_on_a_full_driver_set(tmp_path):
    # Every driver present (some are still being written): each board gets
    # its own front-end, the INA226 when its current section names one, the
    # CRC module for checksummed links, and no other AFE's driver.
    lib = tmp_path / "lib"
    (lib / "bms" / "drivers").mkdir(parents=True)
    for rel in ("bms/__init__.py", "bms/app.py", "bms/board.py", "bms/drivers/__init__.py"):
        (lib / rel).write_text("x = 1\n")
    for n in ALL_DRIVERS:
        (lib / "bms" / "drivers" / (n + ".py")).write_text("x = 1\n")
    for name in BOARDS:
        b = _board(name)
        needed, skipped, missing = deploy.select_modules(b, str(lib))
        drivers = {r.split("/")[-1][:-3] for r in needed if r.startswith("bms/drivers/")} - {"__init__"}
        assert drivers == _expected_drivers(b, follow_imports=False), name
        assert missing == []
        assert {"bms/__init__.py", "bms/app.py", "bms/board.py", "bms/drivers/__init__.py"} <= set(needed)
        assert {r.split("/")[-1][:-3] for r in skipped} == set(ALL_DRIVERS) - drivers


def test_a_driver_brings_the_drivers_it_imports(tmp_path):
    lib = tmp_path / "lib"
    (lib / "bms" / "drivers").mkdir(parents=True)
    (lib / "bms" / "drivers" / "__init__.py").write_text("")
    (lib / "bms" / "drivers" / "adc_direct.py").write_text("def f():\n    from bms.drivers import util\n")
    (lib / "bms" / "drivers" / "util.py").write_text("from .crc import crc8\n")
    (lib / "bms" / "drivers" / "crc.py").write_text("def crc8(d):\n    return 0\n")
    (lib / "bms" / "drivers" / "ina226.py").write_text("")
    needed, skipped, missing = deploy.select_modules({"afe": "adc_direct", "cells": 4}, str(lib))
    assert set(needed) == {"bms/drivers/__init__.py", "bms/drivers/adc_direct.py", "bms/drivers/util.py",
                           "bms/drivers/crc.py"}
    assert skipped == ["bms/drivers/ina226.py"] and missing == []
    _, _, missing = deploy.select_modules({"afe": "bq769x2", "cells": 16}, str(lib))
    assert missing == ["bms/drivers/bq769x2.py"]


def test_dry_run_prints_the_plan_for_every_board_and_touches_no_device(tmp_path, capsys, monkeypatch):
    def no_device(*a, **k):
        raise AssertionError("a dry run touched the device")

    monkeypatch.setattr(deploy, "run_mpremote", no_device)
    monkeypatch.setattr(deploy, "open_console", no_device)
    have = set(os.listdir(os.path.join(ROOT, "firmware", "lib", "bms", "drivers")))
    for name in BOARDS:
        b = _board(name)
        code = deploy.main(["--board", "boards/%s.json" % name, "--dry-run", "--build-dir", str(tmp_path)])
        out, err = capsys.readouterr()
        want = _expected_drivers(b)
        absent = sorted(d for d in want if d + ".py" not in have)
        if absent:  # a driver still being written: a clear one-line refusal, nothing planned
            assert code == 1, (name, out, err)
            assert err.count("\n") == 1 and "bms/drivers/%s.py" % absent[0] in err, err
            continue
        assert (code, err) == (0, ""), (name, err)
        copied = {l.split()[0] for l in out.splitlines() if l.startswith("  /")}
        drivers = {p.rsplit("/", 1)[1][:-4] for p in copied if p.startswith("/lib/bms/drivers/")} - {"__init__"}
        assert drivers == want, (name, drivers)
        assert {"/main.py", "/boot.py", "/board.json", "/lib/bms/app.mpy", "/lib/bms/board.mpy"} <= copied
        assert not any(p.endswith(".py") for p in copied if p.startswith("/lib/"))
        assert "/config.json" not in copied
        assert "config.json: written unless the device already has one" in out
        assert "mpremote connect PORT resume exec" in out and "+ reset" in out
        for d in set(ALL_DRIVERS) - want:
            assert "drivers/%s.mpy" % d not in out, (name, d)
        # the image on disk: exactly the planned files, .mpy that mpy-cross wrote, the config in the firmware's format
        img = tmp_path / name
        on_disk = {"/" + os.path.relpath(os.path.join(d, f), img) for d, _, fs in os.walk(img) for f in fs}
        assert on_disk == copied | {"/config.json"}
        assert (img / "lib" / "bms" / "app.mpy").read_bytes()[:2] == b"M\x06"
        cfg = deploy.config.decode((img / "config.json").read_text())
        assert cfg["cells"] == b["cells"]
        for k, v in b.get("config", {}).items():
            assert cfg[k] == v


def test_dry_run_sizes_and_chemistry(tmp_path, capsys):
    code = deploy.main(["--board", "esp32_adc_4s", "--dry-run", "--chemistry", "nmc", "--build-dir", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert code == 0
    size = os.path.getsize(tmp_path / "esp32_adc_4s" / "lib" / "bms" / "app.mpy")
    assert [l for l in out.splitlines() if l.startswith("  /lib/bms/app.mpy ")][0].split()[1:3] == [str(size), "B"]
    assert deploy.config.decode((tmp_path / "esp32_adc_4s" / "config.json").read_text())["chemistry"] == "nmc"


def test_bad_arguments_one_line_exit_2_nothing_done(tmp_path, capsys):
    for args, words in ((["--board", "boards/nope.json"], "unknown board boards/nope.json"),
                        (["--board", "esp32_adc_4s", "--chemistry", "lipo"], "unknown chemistry lipo"),
                        (["--board", "esp32_adc_4s"], "--port is required"),
                        (["--board", "esp32_adc_4s", "--port", "/dev/null", "--frobnicate"], "unrecognized")):
        code = deploy.main(args + ["--build-dir", str(tmp_path / "b")])
        out, err = capsys.readouterr()
        assert code == 2, args
        assert out == "" and err.count("\n") == 1 and err.startswith("deploy: error: ") and words in err, err
        assert not (tmp_path / "b").exists()


def test_no_such_port(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(deploy, "run_mpremote", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    code = deploy.main(["--board", "esp32_adc_4s", "--port", "/dev/ttyNOPE9", "--build-dir", str(tmp_path)])
    _, err = capsys.readouterr()
    assert (code, err) == (3, "deploy: error: no such port /dev/ttyNOPE9\n")


def test_no_board_answers(tmp_path, capsys, monkeypatch):
    port = tmp_path / "ttyX"
    port.write_text("")
    answers = iter([(1, "", "mpremote: could not enter raw repl\n"), subprocess.TimeoutExpired("mpremote", 30),
                    (1, "", "mpremote: failed to access %s (it may be in use by another program)\n" % port)])

    def fake(args, timeout, capture=True):
        assert args[:3] == ["connect", str(port), "resume"]
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(deploy, "run_mpremote", fake)
    for _ in range(3):
        code = deploy.main(["--board", "esp32_adc_4s", "--port", str(port), "--build-dir", str(tmp_path / "b")])
        _, err = capsys.readouterr()
        assert code == 4 and err.count("\n") == 1, err
        assert err.startswith("deploy: error: no MicroPython board answers on %s" % port), err


# ---- against the fake board ------------------------------------------------------------------


def test_probe_script_runs_under_micropython(tmp_path):
    # The probe is MicroPython code: run it in the real interpreter with its
    # root pointed at a folder.
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.mpy").write_bytes(b"M\x06" + bytes(600))
    code = deploy.probe_code(["/lib/a.mpy", "/lib", "/config.json"]).replace("R = ''", "R = %r" % str(tmp_path), 1)
    mp = os.path.join(os.path.dirname(sys.executable), "micropython")
    r = subprocess.run([mp, "-c", code], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.split(deploy.PROBE_MARK, 1)[1])
    import hashlib

    assert info["files"] == {"/lib/a.mpy": [602, hashlib.sha256(b"M\x06" + bytes(600)).hexdigest()],
                             "/lib": [-1, "dir"], "/config.json": None}
    assert info["mpy"] & 0xFF == 6 and isinstance(info["free"], int)


def test_deploy_fresh_board_then_only_changed_files(tmp_path, capfd):
    rig = _rig(tmp_path)
    try:
        dev = rig.dev
        # Old by-hand copies: a .py is imported before the .mpy of the same
        # name, so those of deployed modules must go; others are not ours.
        os.makedirs(dev.root + "/lib/bms/drivers")
        for p in ("/lib/bms/app.py", "/lib/bms/drivers/adc_direct.py", "/lib/keep.py"):
            with open(dev.root + p, "w") as f:
                f.write("old = 1\n")
        code, out, err = rig.deploy(capfd)
        assert code == 0, err
        assert sorted(dev.removed) == ["/lib/bms/app.py", "/lib/bms/drivers/adc_direct.py"]
        assert os.path.exists(dev.root + "/lib/keep.py")
        os.remove(dev.root + "/lib/keep.py")
        assert (dev.resets, dev.soft_resets) == (1, 0)  # `resume`: no soft reset (it would starve the watchdog)
        img = tmp_path / "build" / "esp32_adc_4s"
        assert dev.file("/main.py") == (img / "main.py").read_bytes()
        assert dev.file("/board.json") == open(os.path.join(ROOT, "boards", "esp32_adc_4s.json"), "rb").read()
        assert dev.file("/lib/bms/app.mpy") == (img / "lib" / "bms" / "app.mpy").read_bytes()
        assert "lib/bms/drivers/adc_direct.mpy" in _lib_files(dev)
        assert not any(f.endswith(".py") for f in _lib_files(dev))
        assert not {"lib/bms/drivers/crc.mpy", "lib/bms/drivers/ina226.mpy"} & set(_lib_files(dev))
        assert dev.file("/config.json") == deploy.default_config(_board("esp32_adc_4s"), "lfp").encode()
        assert "config.json: written (the device has none)" in out
        lines = out.splitlines()
        assert lines[-2] == READY.decode().strip() and lines[-1] == STATUS.decode().splitlines()[0]
        assert rig.console.received == ["status"]  # asked once, right after the ready line
        staged = [p for p in dev.writes if p.endswith(".new")]  # every copy lands beside the old file first
        assert sorted(staged) == sorted(p + ".new" for p in ["/main.py", "/boot.py", "/board.json"] +
                                        ["/" + f for f in _lib_files(dev)])
        assert dev.writes[-1] == "/config.json.tmp"  # written through a temporary file, after the code
        assert not [f for f in _lib_files(dev) if f.endswith(".new")] and not os.path.exists(dev.root + "/main.py.new")

        # Nothing changed: nothing copied, config kept, still reset and read back.
        dev.writes.clear()
        code, out, err = rig.deploy(capfd)
        assert code == 0, err
        assert dev.writes == [] and dev.resets == 2
        assert "copied 0 file(s), %d up to date" % len(staged) in out
        assert "config.json: kept, the device has /config.json" in out
        assert out.splitlines()[-1].startswith("state normal")

        # One file differs on the device: only that one is copied.
        with open(dev.root + "/lib/bms/soc.mpy", "ab") as f:
            f.write(b"\0")
        code, out, err = rig.deploy(capfd)
        assert code == 0, err
        assert dev.writes == ["/lib/bms/soc.mpy.new"]
        assert dev.file("/lib/bms/soc.mpy") == (img / "lib" / "bms" / "soc.mpy").read_bytes()
    finally:
        rig.close()


def test_saved_config_and_its_backup_are_never_overwritten(tmp_path, capfd):
    rig = _rig(tmp_path)
    try:
        dev = rig.dev
        mine = deploy.config.encode(deploy.config.defaults("nmc", 4))
        with open(dev.root + "/config.json", "w") as f:
            f.write(mine)
        with open(dev.root + "/config.json.bak", "w") as f:
            f.write("older copy")
        code, out, err = rig.deploy(capfd, "esp32_adc_4s", "--chemistry", "lfp")
        assert code == 0, err
        assert dev.file("/config.json") == mine.encode() and dev.file("/config.json.bak") == b"older copy"
        assert "/config.json" not in dev.writes and "/config.json.tmp" not in dev.writes
        # Only the backup survives (a power cut inside config save): the firmware loads it, so it is kept too.
        os.remove(dev.root + "/config.json")
        dev.writes.clear()
        code, out, err = rig.deploy(capfd)
        assert code == 0, err
        assert not os.path.exists(dev.root + "/config.json") and dev.file("/config.json.bak") == b"older copy"
        assert dev.writes == [] and "config.json: kept, the device has /config.json.bak" in out
    finally:
        rig.close()


def test_a_failed_copy_leaves_the_old_files_whole_and_no_reset(tmp_path, capfd):
    rig = _rig(tmp_path)
    try:
        name, path, board = deploy.resolve_board("esp32_adc_4s")
        plan = deploy.build(name, path, board, "lfp", out_root=str(tmp_path / "old"))
        shutil.copytree(plan.out, rig.dev.root, dirs_exist_ok=True)  # the device holds a complete install
        for p in ("/lib/bms/app.mpy", "/lib/bms/soc.mpy"):  # both differ: both would be copied
            with open(rig.dev.root + p, "ab") as f:
                f.write(b"\0")
        old = {p: rig.dev.file("/" + p) for p in _lib_files(rig.dev)}
        rig.dev.fail_write = "/lib/bms/soc.mpy.new"  # app.mpy.new lands, soc.mpy.new does not
        code, out, err = rig.deploy(capfd)
        assert code == 1 and "copying to %s failed" % rig.dev.path in err and "not reset" in err, err
        assert {p: rig.dev.file("/" + p) for p in _lib_files(rig.dev) if not p.endswith(".new")} == old
        assert rig.dev.resets == 0
        rig.dev.fail_write = None
        code, out, err = rig.deploy(capfd)  # run again: completes
        assert code == 0, err
        assert not [p for p in _lib_files(rig.dev) if p.endswith(".new")]
        img = tmp_path / "build" / "esp32_adc_4s"
        assert rig.dev.file("/lib/bms/soc.mpy") == (img / "lib" / "bms" / "soc.mpy").read_bytes()
    finally:
        rig.close()


def test_mpy_version_mismatch_names_both_and_copies_nothing(tmp_path, capfd):
    rig = _rig(tmp_path, mpy=5 | 0 << 8 | 10 << 10, version=(1, 18, 0))
    try:
        code, out, err = rig.deploy(capfd)
        assert code == 5, err
        assert err.count("\n") == 1, err
        assert "MicroPython 1.18.0" in err and ".mpy v5.0" in err and "mpy-cross writes .mpy v6.3" in err
        assert rig.dev.writes == [] and _lib_files(rig.dev) == []
        assert rig.dev.resets == 1  # back to what it ran (the probe stopped its console loop)
    finally:
        rig.close()


def test_device_without_mpy_support_and_wrong_mcu(tmp_path, capfd):
    rig = _rig(tmp_path, mpy=None)
    try:
        code, _, err = rig.deploy(capfd)
        assert code == 5 and "cannot load .mpy files" in err, err
    finally:
        rig.close()
    rig = _rig(tmp_path / "2", platform="rp2", mpy=MPY_RP2)
    try:
        code, _, err = rig.deploy(capfd)
        assert code == 1 and "board esp32_adc_4s is for esp32, but the device on" in err and "for rp2" in err, err
        assert rig.dev.writes == []
    finally:
        rig.close()


def test_not_enough_space(tmp_path, capfd):
    rig = _rig(tmp_path, free=20000)
    try:
        code, _, err = rig.deploy(capfd)
        assert code == 1 and "not enough space on the device" in err, err
        assert rig.dev.writes == []
    finally:
        rig.close()


# ---- the status line after the reset ------------------------------------------------------------


def _serial(path):
    return deploy.open_console(path, 115200, time.monotonic() + 1)


def test_status_read_back_when_the_ready_line_was_missed():
    con = FakeConsole(ready=b"", up=True)  # the board was up before the port was opened
    ser = _serial(con.path)
    try:
        t = time.monotonic()
        ready, status = deploy.read_status(ser, 0.9)  # asks after a third of the timeout
        assert (ready, status) == (None, STATUS.decode().splitlines()[0])
        assert 0.25 < time.monotonic() - t < 0.85
        assert con.received == ["status"]
    finally:
        ser.close()
        con.close()


def test_status_timeout_and_traceback_are_clear_errors():
    con = FakeConsole(up=False)
    ser = _serial(con.path)
    try:
        try:
            deploy.read_status(ser, 0.5, deploy._console_hint(_board("esp32_adc_4s"), con.path, con.path))
            raise AssertionError("no error")
        except deploy.DeployError as e:
            assert e.code == deploy.EXIT_NO_STATUS
            assert "no 'openbms ready' line or status reply within 0.5 s on the console %s" % con.path in e.message
            assert "UART1 TX GPIO4 RX GPIO5 at 115200 baud" in e.message and "--console" in e.message
        os.write(con.master, b"Traceback (most recent call last):\r\n  File \"main.py\", line 48, in <module>\r\n"
                             b"ValueError: unknown afe 'x' in board y\r\n")
        try:
            deploy.read_status(ser, 2)
            raise AssertionError("no error")
        except deploy.DeployError as e:
            assert e.message == "deployed, but the firmware stopped: ValueError: unknown afe 'x' in board y"
    finally:
        ser.close()
        con.close()


# ---- package.json for mip ---------------------------------------------------------------------------


def _package():
    with open(os.path.join(ROOT, "package.json")) as f:
        return json.load(f)


def test_package_json_lists_every_firmware_file_and_nothing_else():
    pkg = _package()
    assert set(pkg) == {"urls", "deps", "version"} and pkg["deps"] == []
    with open(os.path.join(ROOT, "firmware", "lib", "bms", "app.py")) as f:
        assert 'VERSION = "%s"' % pkg["version"] in f.read()
    firmware = set()
    for d, dirs, files in os.walk(os.path.join(ROOT, "firmware")):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        firmware |= {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/") for f in files}
    srcs = [src for _, src in pkg["urls"]]
    assert len(srcs) == len(set(srcs))
    assert not firmware - set(srcs), "add to package.json: %s" % sorted(firmware - set(srcs))
    assert not set(srcs) - firmware, "gone from firmware/, drop from package.json: %s" % sorted(set(srcs) - firmware)
    for dest, src in pkg["urls"]:
        assert os.path.isfile(os.path.join(ROOT, src)), src
        assert dest == src[len("firmware/"):]  # lib/bms/... and main.py, boot.py, from the filesystem root


def test_mip_installs_the_package_on_the_fake_board(tmp_path):
    # The real mpremote's mip, with the local package.json (relative URLs
    # resolve against its folder, as they do for github:openbms/openbms).
    dev = FakeDevice(tmp_path / "device")
    try:
        r = subprocess.run([deploy._tool("mpremote"), "connect", dev.path, "mip", "install", "--target", "/",
                            os.path.join(ROOT, "package.json")], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        for dest, src in _package()["urls"]:
            with open(os.path.join(ROOT, src), "rb") as f:
                assert dev.file("/" + dest) == f.read(), dest
    finally:
        dev.close()
