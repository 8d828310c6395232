# CPython test set-up: the firmware's logic package, the simulated machine and
# MicroPython's time/micropython extras, as the board would see them.
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in ("firmware/lib", "tools/sim", "host_tests/shims", "host_tests/logic", "firmware"):
    full = os.path.join(ROOT, p)
    if full not in sys.path:
        sys.path.insert(0, full)
if "tools" not in sys.modules:
    sys.path.insert(0, ROOT)

if not hasattr(time, "ticks_ms"):
    _t0 = time.monotonic()

    def ticks_ms():
        return int((time.monotonic() - _t0) * 1000) & 0x3FFFFFFF

    def ticks_diff(a, b):
        d = (a - b) & 0x3FFFFFFF
        return d - 0x40000000 if d & 0x20000000 else d

    def ticks_add(a, d):
        return (a + d) & 0x3FFFFFFF

    def _sim():
        # With a simulated board attached, time is its virtual clock, as
        # tools/sim/time.py makes it under MicroPython.
        m = sys.modules.get("machine")
        w = getattr(m, "world", None)
        return w if w is not None and getattr(w, "virtual_time", False) else None

    def sleep_ms(ms):
        w = _sim()
        if w is not None:
            w.sleep_us(ms * 1000)
        else:
            time.sleep(ms / 1000)

    def sleep_us(us):
        w = _sim()
        if w is not None:
            w.sleep_us(us)
        else:
            time.sleep(us / 1000000)

    time.ticks_ms = ticks_ms
    time.ticks_diff = ticks_diff
    time.ticks_add = ticks_add
    time.sleep_ms = sleep_ms
    time.sleep_us = sleep_us


def pytest_sessionfinish(session, exitstatus):
    import helpers

    helpers.cleanup()
