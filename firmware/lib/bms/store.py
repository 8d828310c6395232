# Records on flash that survive a power cut at any byte of a write.
#
# Every record carries a sequence number and a CRC-32: a write that was cut
# short leaves a record whose CRC does not match, which is skipped, and the
# records around it are not written by it. On littlefs (the default on ESP32
# and RP2, copy-on-write: the last committed contents survive) that is the
# whole story. On FAT a torn write is still detected, but FAT may rewrite a
# whole sector, neighbours included: use littlefs (see
# ../shared/reference/micropython-practice.md A3).
#
# Each write is one seek and one write of a whole record from a buffer built
# in place, then a flush (littlefs commits on flush and close). No `machine`:
# every class takes opener(path, mode), builtin open by default, so tests can
# put a fake flash underneath.
import struct

from micropython import const

from bms.config import crc32

_ENOENT = const(2)
_MAGIC = b"oBS1"  # a Slots copy starts with this (a blank or foreign file does not)
_SLOT_HEAD = const(8)  # magic + seq
_CRC = const(4)


def _open_rw(opener, path):
    """The file opened for reading and writing in place; created if missing.
    Never truncates an existing file (that would lose its good records)."""
    try:
        return opener(path, "r+b")
    except OSError as e:
        if not e.args or e.args[0] != _ENOENT:
            raise
    opener(path, "wb").close()
    return opener(path, "r+b")


def _crc_ok(mv, n):
    # mv: memoryview of one record; its last 4 bytes are the CRC of the rest.
    return crc32(mv[:n - _CRC]) & 0xFFFFFFFF == struct.unpack_from("<I", mv, n - _CRC)[0]


def _write_all(f, offset, buf):
    f.seek(offset)
    n = f.write(buf)
    if n is not None and n != len(buf):
        raise OSError(28)  # a short write without an error (full flash): not committed
    f.flush()


class Slots:
    """One payload of fixed size kept as two copies in one file.

    load() returns the newest copy whose CRC is good; save() overwrites the
    other copy, so the newest good one is never touched: a cut at any byte
    leaves the old or the new payload loadable."""

    def __init__(self, path, payload_size, opener=None):
        self.path = path
        self.payload_size = payload_size
        self.slot_size = _SLOT_HEAD + payload_size + _CRC
        self._open = opener or open
        self._buf = bytearray(self.slot_size)
        self._mv = memoryview(self._buf)
        self._scanned = False
        self._newest = -1  # slot of the newest good copy, -1: none
        self._seq = 0

    def load(self):
        """The newest good payload (bytes), or None."""
        found = None
        self._newest = -1
        self._seq = 0
        try:
            f = self._open(self.path, "rb")
        except OSError as e:
            if not e.args or e.args[0] != _ENOENT:
                raise  # a flash that fails is not an empty one: a save now could lose the newer copy
            f = None  # no file yet: nothing saved
        if f is not None:
            try:
                for k in (0, 1):
                    f.seek(k * self.slot_size)
                    if f.readinto(self._buf) != self.slot_size or not self._good():
                        continue
                    seq = struct.unpack_from("<I", self._buf, 4)[0]
                    if self._newest < 0 or seq > self._seq:
                        self._newest = k
                        self._seq = seq
                        found = bytes(self._mv[_SLOT_HEAD:_SLOT_HEAD + self.payload_size])
            finally:
                f.close()
        self._scanned = True
        return found

    def _good(self):
        return self._buf[0:4] == _MAGIC and _crc_ok(self._mv, self.slot_size)

    def save(self, payload):
        if len(payload) != self.payload_size:
            raise ValueError("payload is %d bytes, not %d" % (len(payload), self.payload_size))
        if not self._scanned:
            self.load()
        target = 1 - self._newest if self._newest >= 0 else 0
        seq = (self._seq + 1) & 0xFFFFFFFF
        b = self._buf
        b[0:4] = _MAGIC
        struct.pack_into("<I", b, 4, seq)
        b[_SLOT_HEAD:_SLOT_HEAD + self.payload_size] = payload
        n = self.slot_size - _CRC
        struct.pack_into("<I", b, n, crc32(self._mv[:n]) & 0xFFFFFFFF)
        self._scanned = False  # unknown until this write is known to be complete
        f = _open_rw(self._open, self.path)
        try:
            _write_all(f, target * self.slot_size, b)
        finally:
            f.close()
        self._newest = target
        self._seq = seq
        self._scanned = True


class Ring:
    """Fixed-size records in a preallocated file of `count` slots; record
    `seq` lives in slot seq % count, so the oldest is overwritten first.

    A record is seq (u32) + payload + CRC-32. The file is scanned when the
    Ring is built: next_seq follows the newest good record, so a torn record
    (at the head, from a cut mid-append) is simply written again by the next
    append, and no good record is reused or lost but the one in the slot
    being overwritten. Raises OSError if the file cannot be opened."""

    def __init__(self, path, rec_size, count, opener=None):
        self.path = path
        self.rec_size = rec_size
        self.payload_size = rec_size - 4 - _CRC
        self.count = count
        self._open = opener or open
        self._buf = bytearray(rec_size)
        self._mv = memoryview(self._buf)
        self._blank0 = bytes(rec_size)
        self._blank1 = b"\xff" * rec_size  # erased NOR flash
        self._f = None
        self.next_seq = 1
        self.good = 0  # good records found by the scan
        self.torn = 0  # slots with a bad CRC found by the scan
        self.skipped = 0  # see records()
        self._scan()

    def _file(self):
        if self._f is None:
            self._f = _open_rw(self._open, self.path)
        return self._f

    def close(self):
        f = self._f
        self._f = None
        if f is not None:
            f.close()

    def _slot(self, k):
        """Read slot k: its seq if good, 0 if blank, -1 if torn or missing."""
        f = self._file()
        f.seek(k * self.rec_size)
        if f.readinto(self._buf) != self.rec_size:
            return -1
        if _crc_ok(self._mv, self.rec_size):
            seq = struct.unpack_from("<I", self._buf, 0)[0]
            if seq and seq % self.count == k:
                return seq
        if self._buf == self._blank0 or self._buf == self._blank1:
            return 0
        return -1

    def _scan(self):
        f = self._file()
        f.seek(0, 2)
        size = f.tell()
        full = self.count * self.rec_size
        top = 0
        for k in range(min(self.count, size // self.rec_size)):
            s = self._slot(k)
            if s > 0:
                self.good += 1
                if s > top:
                    top = s
            elif s < 0:
                self.torn += 1
        self.next_seq = top + 1
        if size < full:
            # New, or cut short while it was being created: zeros up to the
            # full size (blank slots), a record at a time.
            pos = size
            while pos < full:
                n = min(self.rec_size - pos % self.rec_size, full - pos)
                f.seek(pos)
                f.write(self._blank0[:n])
                pos += n
            f.flush()

    def append(self, payload):
        """Write payload as the next record; returns its seq. On OSError the
        record may be torn; next_seq stays, so a retry writes the same slot."""
        seq = self.next_seq
        b = self._buf
        struct.pack_into("<I", b, 0, seq)
        b[4:4 + self.payload_size] = payload
        n = self.rec_size - _CRC
        struct.pack_into("<I", b, n, crc32(self._mv[:n]) & 0xFFFFFFFF)
        try:
            _write_all(self._file(), (seq % self.count) * self.rec_size, b)
        except OSError:
            try:
                self.close()  # the handle may be broken: open afresh next time
            except OSError:
                pass
            raise
        self.next_seq = seq + 1
        return seq

    def records(self, first=None):
        """(seq, payload bytes) of the good records from seq `first` (default:
        the oldest the ring can hold) to the newest, in seq order. Slots in
        that range without their record (torn) are counted in self.skipped."""
        top = self.next_seq
        start = top - self.count
        if first is not None and first > start:
            start = first
        if start < 1:
            start = 1
        self.skipped = 0
        for seq in range(start, top):
            if self._slot(seq % self.count) == seq:
                yield seq, bytes(self._mv[4:4 + self.payload_size])
            else:
                self.skipped += 1

    def last(self):
        """The newest good record's payload, or None."""
        for _seq, payload in self.records(self.next_seq - 1):
            return payload
        return None
