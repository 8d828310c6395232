# Power-cut-safe flash records (bms/store.py) on a fake flash whose power
# can fail at any byte of a write: after the cut the old or the new data
# loads, never garbage, and no other record is lost.
from bms.store import Ring, Slots


class FakeFlash:
    """Files in RAM. cut_after(k): the next k bytes written reach the flash,
    then the power fails (the write raises OSError, the flash is dead until
    power_on())."""

    def __init__(self):
        self.files = {}
        self.budget = None
        self.dead = False
        self.opens = 0

    def copy(self):
        f = FakeFlash()
        for p in self.files:
            f.files[p] = bytearray(self.files[p])
        return f

    def cut_after(self, k):
        self.budget = k

    def power_on(self):
        self.dead = False
        self.budget = None

    def open(self, path, mode="r"):
        if self.dead:
            raise OSError(5, "no power")
        self.opens += 1
        if "w" in mode:
            self.files[path] = bytearray()
        elif path not in self.files:
            raise OSError(2, "no such file")
        return FakeFile(self, path, "w" in mode or "+" in mode)


class FakeFile:
    def __init__(self, flash, path, writable):
        self.flash = flash
        self.path = path
        self.writable = writable
        self.pos = 0
        self.closed = False

    def _check(self):
        if self.closed:
            raise ValueError("closed file")
        if self.flash.dead:
            raise OSError(5, "no power")

    def seek(self, off, whence=0):
        self._check()
        if whence == 2:
            off += len(self.flash.files[self.path])
        elif whence == 1:
            off += self.pos
        self.pos = off
        return off

    def tell(self):
        return self.pos

    def readinto(self, buf):
        self._check()
        data = self.flash.files[self.path]
        n = min(len(buf), len(data) - self.pos)
        if n <= 0:
            return 0
        buf[0:n] = data[self.pos:self.pos + n]
        self.pos += n
        return n

    def read(self, n=-1):
        self._check()
        data = self.flash.files[self.path]
        end = len(data) if n < 0 else min(len(data), self.pos + n)
        out = bytes(data[self.pos:end])
        self.pos = max(self.pos, end)
        return out

    def write(self, b):
        self._check()
        if not self.writable:
            raise OSError(9, "not open for writing")
        fl = self.flash
        b = bytes(b)
        cut = False
        if fl.budget is not None:
            if len(b) > fl.budget:
                b = b[:fl.budget]
                cut = True
            fl.budget -= len(b)
        data = fl.files[self.path]
        end = self.pos + len(b)
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        data[self.pos:end] = b
        self.pos = end
        if cut:
            fl.dead = True
            fl.budget = None
            raise OSError(5, "power cut")
        return len(b)

    def flush(self):
        self._check()

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _payload(k, size):
    return bytes((k * 7 + i) & 0xFF for i in range(size))


def _raises_oserror(fn):
    try:
        fn()
    except OSError:
        return True
    return False


# ---- Slots ------------------------------------------------------------------------


def test_slots_load_nothing_then_the_newest_save():
    fl = FakeFlash()
    s = Slots("/state.bin", 16, fl.open)
    assert s.load() is None
    s.save(_payload(1, 16))
    s.save(_payload(2, 16))
    assert s.load() == _payload(2, 16)
    assert Slots("/state.bin", 16, fl.open).load() == _payload(2, 16)  # after a reboot
    s.save(_payload(3, 16))
    assert len(fl.files["/state.bin"]) == 2 * s.slot_size
    assert Slots("/state.bin", 16, fl.open).load() == _payload(3, 16)


def test_slots_save_without_load_keeps_the_newest_copy():
    fl = FakeFlash()
    Slots("/s", 8, fl.open).save(_payload(1, 8))
    Slots("/s", 8, fl.open).save(_payload(2, 8))  # each a fresh object, as after a boot
    Slots("/s", 8, fl.open).save(_payload(3, 8))
    assert Slots("/s", 8, fl.open).load() == _payload(3, 8)


def _cut_every_byte_of_save(prepared, old, new, size):
    slot = Slots("/s", size, prepared.open).slot_size
    for k in range(slot + 1):
        fl = prepared.copy()
        fl.cut_after(k)
        s = Slots("/s", size, fl.open)
        torn = _raises_oserror(lambda: s.save(new))
        assert torn == (k < slot), k
        fl.power_on()
        got = Slots("/s", size, fl.open).load()
        assert got == (old if k < slot else new), (k, got)
        # and the board carries on saving from there
        s2 = Slots("/s", size, fl.open)
        s2.load()
        s2.save(_payload(9, size))
        assert Slots("/s", size, fl.open).load() == _payload(9, size), k


def test_slots_power_cut_at_every_byte_of_a_save_leaves_old_or_new():
    size = 64
    for saves in (1, 2, 3):  # the target slot: past the end of the file, then the older copy each way
        fl = FakeFlash()
        s = Slots("/s", size, fl.open)
        for k in range(saves):
            s.save(_payload(k, size))
        _cut_every_byte_of_save(fl, _payload(saves - 1, size), _payload(50, size), size)


def test_slots_power_cut_in_the_first_save_ever_leaves_nothing():
    for k in range(0, 76, 5):  # a copy is 76 bytes
        fl = FakeFlash()
        fl.cut_after(k)
        assert _raises_oserror(lambda: Slots("/s", 64, fl.open).save(_payload(1, 64)))
        fl.power_on()
        assert Slots("/s", 64, fl.open).load() is None


def test_slots_corrupt_newest_copy_falls_back_to_the_other():
    fl = FakeFlash()
    s = Slots("/s", 16, fl.open)
    s.save(_payload(1, 16))
    s.save(_payload(2, 16))  # slot 1
    fl.files["/s"][s.slot_size + 12] ^= 0x01
    assert Slots("/s", 16, fl.open).load() == _payload(1, 16)
    fl.files["/s"][5] ^= 0x80  # both bad
    assert Slots("/s", 16, fl.open).load() is None


def test_slots_refuse_a_payload_of_the_wrong_size_and_write_nothing():
    fl = FakeFlash()
    s = Slots("/s", 16, fl.open)
    s.save(_payload(1, 16))
    before = bytes(fl.files["/s"])
    try:
        s.save(b"short")
        assert False, "no error"
    except ValueError:
        pass
    assert bytes(fl.files["/s"]) == before


def test_slots_ignore_a_foreign_file():
    fl = FakeFlash()
    fl.files["/s"] = bytearray(b"\xff" * 200)
    s = Slots("/s", 16, fl.open)
    assert s.load() is None
    s.save(_payload(4, 16))
    assert Slots("/s", 16, fl.open).load() == _payload(4, 16)


def test_slots_on_the_real_filesystem():
    from helpers import tmpdir

    path = tmpdir() + "/state.bin"
    s = Slots(path, 20)
    assert s.load() is None
    s.save(_payload(1, 20))
    s.save(_payload(2, 20))
    assert Slots(path, 20).load() == _payload(2, 20)


# ---- Ring -------------------------------------------------------------------------


def _seqs(ring):
    return [seq for seq, _ in ring.records()]


def _ring(fl, count=8):
    return Ring("/ev", 32, count, fl.open)


def test_ring_new_file_is_preallocated_blank():
    fl = FakeFlash()
    r = _ring(fl)
    assert len(fl.files["/ev"]) == 8 * 32
    assert r.next_seq == 1 and _seqs(r) == [] and r.torn == 0 and r.last() is None


def test_ring_records_in_order_across_reopen_and_wrap_around():
    fl = FakeFlash()
    r = _ring(fl)
    for k in range(1, 21):
        assert r.append(_payload(k, 24)) == k
    assert _seqs(r) == list(range(13, 21))  # 8 slots: the newest 8
    r2 = _ring(fl)
    assert r2.next_seq == 21
    got = list(r2.records())
    assert [s for s, _ in got] == list(range(13, 21))
    assert all(p == _payload(s, 24) for s, p in got)
    assert r2.last() == _payload(20, 24)
    assert [s for s, _ in r2.records(18)] == [18, 19, 20]
    r2.append(_payload(21, 24))
    assert _seqs(_ring(fl)) == list(range(14, 22))
    assert len(fl.files["/ev"]) == 8 * 32


def test_ring_short_file_from_a_cut_during_creation():
    for k in (0, 1, 31, 32, 100, 255):
        fl = FakeFlash()
        fl.cut_after(k)
        assert _raises_oserror(lambda: _ring(fl))
        fl.power_on()
        assert len(fl.files["/ev"]) == k
        r = _ring(fl)
        assert len(fl.files["/ev"]) == 256 and r.next_seq == 1 and r.torn == 0
        r.append(_payload(1, 24))
        assert _seqs(_ring(fl)) == [1]


def test_ring_short_file_keeps_its_records():
    fl = FakeFlash()
    r = _ring(fl)
    for k in range(1, 4):
        r.append(_payload(k, 24))
    fl.files["/ev"] = fl.files["/ev"][:4 * 32 + 10]  # cut short after seq 3 (slot 3), in slot 4
    r = _ring(fl)
    assert _seqs(r) == [1, 2, 3] and r.next_seq == 4
    assert len(fl.files["/ev"]) == 8 * 32


def test_ring_corrupted_record_in_the_middle_is_skipped():
    fl = FakeFlash()
    r = _ring(fl)
    for k in range(1, 7):
        r.append(_payload(k, 24))
    fl.files["/ev"][3 * 32 + 9] ^= 0x10  # seq 3
    r = _ring(fl)
    assert r.torn == 1 and r.next_seq == 7
    assert _seqs(r) == [1, 2, 4, 5, 6] and r.skipped == 1
    r.append(_payload(7, 24))
    assert _seqs(_ring(fl)) == [1, 2, 4, 5, 6, 7]


def _cut_every_byte_of_append(n_before, count=8):
    base = FakeFlash()
    r = _ring(base, count)
    for k in range(1, n_before + 1):
        r.append(_payload(k, 24))
    new = n_before + 1
    overwritten = new - count  # the record in the slot the append reuses (<= 0: a blank slot)
    for k in range(33):
        fl = base.copy()
        fl.cut_after(k)
        r = _ring(fl, count)
        torn = _raises_oserror(lambda: r.append(_payload(new, 24)))
        assert torn == (k < 32), k
        fl.power_on()
        r = _ring(fl, count)
        got = list(r.records())
        seqs = [s for s, _ in got]
        assert all(p == _payload(s, 24) for s, p in got), k  # never garbage
        keep = [s for s in range(max(1, new - count), new) if s != overwritten or k == 0]
        if k < 32:
            assert seqs == keep, (k, seqs)
            assert r.torn == (1 if k else 0), k
            assert r.next_seq == new
        else:
            assert seqs == keep + [new], (k, seqs)
        # The board carries on: the next append takes the torn slot.
        r.append(_payload(99, 24))
        seqs = _seqs(_ring(fl, count))
        assert seqs[-1] == r.next_seq - 1 and len(seqs) == min(count, r.next_seq - 1), (k, seqs)
        assert r.torn == 0 or k < 32


def test_ring_power_cut_at_every_byte_of_an_append():
    _cut_every_byte_of_append(5)  # into a blank slot
    _cut_every_byte_of_append(11)  # over the oldest record (wrapped)
    _cut_every_byte_of_append(0)  # the very first record


def test_ring_failed_append_is_retried_in_the_same_slot():
    fl = FakeFlash()
    r = _ring(fl)
    r.append(_payload(1, 24))
    fl.cut_after(10)
    assert _raises_oserror(lambda: r.append(_payload(2, 24)))
    fl.power_on()  # e.g. a flash hiccup, not a reboot: the same object goes on
    assert r.next_seq == 2
    assert r.append(_payload(2, 24)) == 2
    assert [p for _, p in _ring(fl).records()] == [_payload(1, 24), _payload(2, 24)]


def test_ring_erased_flash_is_blank_not_torn():
    fl = FakeFlash()
    fl.files["/ev"] = bytearray(b"\xff" * 256)
    r = _ring(fl)
    assert r.torn == 0 and r.next_seq == 1


def test_ring_on_the_real_filesystem():
    from helpers import tmpdir

    path = tmpdir() + "/events.bin"
    r = Ring(path, 32, 16)
    for k in range(1, 20):
        r.append(_payload(k, 24))
    r.close()
    r = Ring(path, 32, 16)
    assert [s for s, _ in r.records()] == list(range(4, 20))
    r.close()
