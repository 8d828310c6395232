"""The board's flash as the firmware sees it, with power cuts.

Flash(world, config_path).install() replaces the builtin open(): files the
firmware opens for writing in its filesystem folder (the config file's
folder) come back wrapped, so that `sim power cut write [BYTES]` can tear
the next write the way an outage does: its first BYTES (default half of it)
reach the file, the rest never does, and the board is off (PowerCut; it
restarts with PWRON_RESET). Every other open() is the builtin one, and
reads are never wrapped.

Writes go straight to the host file (MicroPython's files are unbuffered),
so what the firmware wrote before a cut is there after it, as on flash that
commits each write. littlefs would instead keep the last committed version
of a file on a cut: the firmware's records must survive the harsher case.

Runs under MicroPython (the virtual board) and CPython (tests).
"""

import builtins

import simworld

_open = builtins.open


def _folder(path):
    k = path.rfind("/")
    return path[:k + 1]


class Flash:
    def __init__(self, world, config_path):
        self.world = world
        self.folder = _folder(config_path)
        self.files = []  # wrapped files still open (closed at a reset: the MCU forgets them)
        self.torn = []  # (bytes of the write, bytes that landed), per cut write

    def install(self):
        builtins.open = self.open
        return self

    def uninstall(self):
        builtins.open = _open

    def open(self, path, mode="r", *args, **kw):
        f = _open(path, mode, *args, **kw)
        if isinstance(path, str) and _folder(path) == self.folder and ("w" in mode or "a" in mode or "+" in mode):
            f = _File(self, f)
            self.files.append(f)
        return f

    def reset(self):
        """The board restarts: whatever it had open is gone."""
        files = self.files
        self.files = []
        for f in files:
            try:
                f._f.close()
            except OSError:
                pass

    def _write(self, f, data):
        w = self.world
        if w.power_off:
            raise simworld.PowerCut("power cut at %d ms" % w.now_ms)
        k = w.power_cut_write
        if k is None:
            return f.write(data)
        n = len(data)
        if k < 0 or k > n:
            k = n // 2 if k < 0 else n
        if k:
            f.write(data[:k])
            f.flush()
        w.power_cut_write = None
        w.power_off = True
        self.torn.append((n, k))
        raise simworld.PowerCut("power cut during a %d-byte flash write, after %d bytes" % (n, k))


class _File:
    # What the firmware gets from open(): the host file, writes checked for a cut.
    def __init__(self, flash, f):
        self._flash = flash
        self._f = f

    def write(self, data):
        return self._flash._write(self._f, data)

    def read(self, *args):
        return self._f.read(*args)

    def readinto(self, buf):
        return self._f.readinto(buf)

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self):
        return self._f.tell()

    def flush(self):
        return self._f.flush()

    def close(self):
        if self in self._flash.files:
            self._flash.files.remove(self)
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
