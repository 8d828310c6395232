"""The type check (make typecheck) can fail: real mistakes against the
MicroPython port stubs, put into a copy of the firmware, are reported for
both ports with the project's mypy config. CPython only; needs the stubs
that `make venv` installs in .venv/stubs/."""
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.dirname(os.path.dirname(sys.executable))
STUBS = os.path.join(VENV, "stubs")
CONFIG = os.path.join(ROOT, "tools", "typecheck", "mypy.ini")

MUTANT = '''import time

import machine


def probe(buf):
    i2c = machine.I2C(0, scl=machine.Pin(5), sda=machine.Pin(4), freq=400000)
    i2c.readfrom_mem_into(8, 0, buf)
    i2c.readfrom_mem_intox(8, 0, buf)
    spi = machine.SPI(1, baudrate=1000000)
    spi.write_readinto(buf, buf)
    t0 = time.ticks_ms()
    late = time.ticks_diff(time.ticks_ms(), t0) > 100
    return late, time.ticks_ms() - t0
'''


def _mypy(port, tree, cache):
    env = dict(os.environ, MYPYPATH=os.path.join(STUBS, port) + os.pathsep + os.path.join(tree, "lib"))
    cmd = [os.path.join(os.path.dirname(sys.executable), "mypy"), "--config-file", CONFIG,
           "--custom-typeshed-dir", os.path.join(STUBS, port), "--platform", port, "--cache-dir", cache,
           os.path.join(tree, "main.py"), os.path.join(tree, "boot.py"), os.path.join(tree, "lib")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree, timeout=120)
    found = set()
    for line in r.stdout.splitlines():
        m = re.match(r"(.+?):(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            found.add((os.path.relpath(os.path.join(tree, m.group(1)), tree), int(m.group(2)), m.group(3)))
    return r.returncode, found, r.stdout


def _line(path, text):
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if text in line:
                return n
    raise AssertionError("%s not in %s" % (text, path))


def _replace(path, old, new):
    with open(path) as f:
        s = f.read()
    assert old in s, (path, old)
    with open(path, "w") as f:
        f.write(s.replace(old, new, 1))


def test_wrong_machine_and_time_usage_fails_for_both_ports(tmp_path):
    assert os.path.isdir(os.path.join(STUBS, "rp2")) and os.path.isdir(os.path.join(STUBS, "esp32")), \
        "MicroPython stubs missing: run make venv"
    tree = str(tmp_path / "firmware")
    shutil.copytree(os.path.join(ROOT, "firmware"), tree, ignore=shutil.ignore_patterns("__pycache__"))
    board = os.path.join(tree, "lib", "bms", "board.py")
    _replace(board, "adc.atten(", "adc.attenuation(")  # no such ADC method
    _replace(board, "return Pin(num, Pin.OUT, value=", "return Pin(num, Pin.OUTPUT, value=")  # no such constant
    _replace(board, "machine.WDT(timeout=", "machine.WDT(timeout_ms=")  # no such keyword
    _replace(os.path.join(tree, "main.py"), "machine.idle()", "machine.idle(1)")  # takes no argument
    with open(os.path.join(tree, "lib", "bms", "mutant.py"), "w") as f:
        f.write(MUTANT)
    mutant = os.path.join("lib", "bms", "mutant.py")
    want = {
        ("lib/bms/board.py", _line(board, "adc.attenuation("), "attr-defined"),
        ("lib/bms/board.py", _line(board, "Pin.OUTPUT"), "attr-defined"),
        ("lib/bms/board.py", _line(board, "timeout_ms="), "call-arg"),
        ("main.py", _line(os.path.join(tree, "main.py"), "machine.idle(1)"), "call-arg"),
        (mutant, _line(os.path.join(tree, mutant), "readfrom_mem_intox"), "attr-defined"),
        (mutant, _line(os.path.join(tree, mutant), "- t0"), "operator"),  # ticks wrap: ticks_diff, not -
    }
    for port in ("rp2", "esp32"):
        code, found, out = _mypy(port, tree, str(tmp_path / ("cache-" + port)))
        assert code == 1, out
        assert want <= found, (port, sorted(want - found), out)
        # the correct calls beside them pass
        assert not [f for f in found if f[0] == mutant and f not in want], (port, out)
