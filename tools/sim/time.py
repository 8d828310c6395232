"""Virtual time for the firmware on the simulated board (MicroPython only).

On MicroPython this file, on MICROPYPATH, replaces the built-in `time` (an
extensible module): while a SimWorld with virtual_time is attached to the
simulated `machine`, ticks_ms() counts the world's milliseconds since the
last board reset, wrapping at 2**30 like ESP32 and RP2, and sleeps let
virtual time pass (timers fire, the watchdog bites). Without a world it is
the host clock. CPython's `time` is built into the interpreter, so this file
never shadows it there.
"""
from utime import *  # noqa: F401,F403  (gmtime, localtime, mktime, ...)
import utime as _host

import machine as _machine

_MASK = 0x3FFFFFFF  # the ports' ticks period is 2**30
_HALF = 0x20000000


def _world():
    w = _machine.world
    return w if w is not None and w.virtual_time else None


def ticks_ms():
    w = _world()
    return _host.ticks_ms() if w is None else w.ticks_ms()


def ticks_us():
    w = _world()
    if w is None:
        return _host.ticks_us()
    return ((w.now_ms - w.boot_ms) * 1000 + w._us) & _MASK


ticks_cpu = ticks_us


def ticks_diff(a, b):
    w = _world()
    if w is None:
        return _host.ticks_diff(a, b)
    d = (a - b) & _MASK
    return d - (_MASK + 1) if d & _HALF else d


def ticks_add(t, delta):
    w = _world()
    if w is None:
        return _host.ticks_add(t, delta)
    return (t + delta) & _MASK


def sleep_us(us):
    w = _world()
    if w is None:
        _host.sleep_us(us)
    else:
        w.sleep_us(us)


def sleep_ms(ms):
    sleep_us(ms * 1000)


def sleep(s):
    sleep_us(int(s * 1000000))
