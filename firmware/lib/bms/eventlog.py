# The event log: fault trips and clears, FET state changes, config changes,
# console commands, resets and SOC landmarks, each with the pack's state at
# that moment, in a ring of records on flash that survives a power cut
# mid-write (bms/store.py: a torn record is skipped, older ones stay).
#
# The tick only queues events (push_tick: ints into a preallocated array, no
# allocation); Bms.service() writes them to flash (flush). Events from the
# main loop (console, SOC) go through push(), into a queue of their own: the
# tick may run between any two bytecodes of the main loop, so the two sides
# never write the same queue.
#
# Record (32 bytes, little-endian): seq u32 | code u8, arg u8, boot u16,
# uptime_s u32, value i32, current_ma i32, pack u16 (10 mV), cell_min_mv u16,
# cell_max_mv u16, temp i8 (degC, -128 unknown), soc u8 (%, 255 unknown) |
# CRC-32 of the 28 bytes before it. cell_max_mv 0: no reading yet.
import struct
import time
from array import array

from micropython import const

from bms import config
from bms.fets import STATE_NAMES
from bms.protection import NAMES as ROW_NAMES
from bms.store import Ring

# Event codes (the numbers are stored: add new ones at the end).
EV_BOOT = const(1)  # arg: reset cause (CAUSES)
EV_TRIP = const(2)  # arg: protection row, value: the row's quantity
EV_CLEAR = const(3)  # a row recovered (or was released): arg row, value quantity
EV_STATE = const(4)  # FET state machine: arg new state, value old state
EV_CONFIG_SET = const(5)  # arg: CONFIG_KEYS index, value: new value (chemistry: CHEMISTRIES index)
EV_CONFIG_SAVE = const(6)
EV_CONFIG_PRESET = const(7)  # arg: CHEMISTRIES index
EV_CONFIG_RELOAD = const(8)
EV_CLEAR_CMD = const(9)  # console 'clear': value = latched faults released
EV_FET_CMD = const(10)  # console 'fet': arg FET bits (1 chg, 2 dsg, 3 all), value 1 on / 0 off
EV_SHIP = const(11)
EV_RESET_CMD = const(12)
EV_CHIP_RESET = const(13)  # the front-end restarted and was set up again: value = count since boot
EV_FULL = const(14)  # SOC reset at a full charge: value = SOC x10 before
EV_EMPTY = const(15)  # SOC reset at the low knee: value = SOC x10 before
EV_CAPACITY = const(16)  # new capacity estimate: value = mAh
EV_LOST = const(17)  # value = events lost (queue full, flash failing) since the last such record
EV_SOC_SET = const(18)  # console 'soc set': value = the SOC % set

EVENT_NAMES = (None, "boot", "trip", "clear", "state", "config_set", "config_save", "config_preset",
               "config_reload", "clear_cmd", "fet_cmd", "ship", "reset_cmd", "chip_reset", "full", "empty",
               "capacity", "lost", "soc_set")
CAUSES = ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET", "unknown")
CHEMISTRIES = ("lfp", "nmc", "lto")
FET_BITS = ("none", "chg", "dsg", "all")
# Config keys by stored number. Not config.KEYS: that is sorted, so a new
# setting would renumber the others and old records would name the wrong
# key. Append new settings at the end (a test checks every key is here).
CONFIG_KEYS = (
    "bal_board_max_c", "bal_delta_mv", "bal_idle", "bal_max_cells", "bal_start_mv", "board_max_c",
    "capacity_mah", "cell_ov_clear_mv", "cell_ov_delay_ms", "cell_ov_mv", "cell_ov_recover_ms",
    "cell_ov_warn_mv", "cell_uv_clear_mv", "cell_uv_delay_ms", "cell_uv_mv", "cell_uv_recover_ms",
    "cell_uv_warn_mv", "cells", "chemistry", "chg_max_c", "chg_min_c", "current_warn_pct", "dsg_max_c",
    "dsg_min_c", "oc_recover_ms", "occ_delay_ms", "occ_ma", "ocd1_delay_ms", "ocd1_ma", "ocd2_delay_ms",
    "ocd2_ma", "precharge_ma", "precharge_ms", "precharge_retries", "sensor_delay_ms", "sensor_recover_ms",
    "temp_delay_ms", "temp_hyst_c", "temp_recover_ms", "temp_warn_c", "tick_ms",
    "soc_full_mv", "soc_tail_pct",
)
_UNKNOWN = const(255)

# The decoded record (console `log --json`, bmsctl), in this key order.
FIELDS = ("seq", "boot", "uptime_s", "event", "detail", "value", "pack_mv", "current_ma", "cell_min_mv",
          "cell_max_mv", "soc_pct", "temp_c")

REC_SIZE = const(32)
COUNT = const(256)  # records in the ring: 8 KB
FILE_NAME = "events.bin"
_FMT = "<BBHIiiHHHbB"  # the payload between seq and CRC (24 bytes)
_TICK_QUEUE = const(32)
_MAIN_QUEUE = const(8)
_W = const(9)  # ints per queued event: code, arg, value, then the context
_CTX = const(3)  # context: uptime_s, pack_mv, current_ma, cell_min_mv, cell_max_mv, temp (0.1 degC)
_NO_TEMP = const(-32768)
_RETRY_MS = const(1000)  # after a failed write, leave the flash alone this long
_RETRY_MAX_MS = const(60000)  # and twice as long after each further failure, up to this
_COUNT_MAX = const(0x3FFFFFFF)
_I32 = 0x7FFFFFFF  # not a const: beyond a small int on the board


def path_beside(config_path):
    """events.bin in the folder of the config file."""
    k = config_path.rfind("/")
    return config_path[:k + 1] + FILE_NAME if k >= 0 else FILE_NAME


def cause_code(name):
    for k in range(len(CAUSES) - 1):
        if CAUSES[k] == name:
            return k
    return len(CAUSES) - 1


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


def _name(names, k):
    return names[k] if 0 <= k < len(names) else "?%d" % k


def decode(seq, payload):
    """A record as a dict with the FIELDS keys; names where a number is a name."""
    code, arg, boot, up, value, cur, pack, lo, hi, temp, soc = struct.unpack_from(_FMT, payload, 0)
    detail = None
    if code == EV_BOOT:
        detail = _name(CAUSES, arg)
    elif code in (EV_TRIP, EV_CLEAR):
        detail = _name(ROW_NAMES, arg)
    elif code == EV_STATE:
        detail = _name(STATE_NAMES, arg)
    elif code == EV_CONFIG_SET:
        detail = _name(CONFIG_KEYS, arg)
    elif code == EV_CONFIG_PRESET:
        detail = _name(CHEMISTRIES, arg)
    elif code == EV_FET_CMD:
        detail = _name(FET_BITS, arg)
    reading = hi > 0
    return {
        "seq": seq,
        "boot": boot,
        "uptime_s": up,
        "event": _name(EVENT_NAMES, code) or "?0",
        "detail": detail,
        "value": value,
        "pack_mv": pack * 10 if reading and pack else None,
        "current_ma": cur if reading else None,
        "cell_min_mv": lo if reading else None,
        "cell_max_mv": hi if reading else None,
        "soc_pct": None if soc == _UNKNOWN else soc,
        "temp_c": None if temp == -128 else temp,
    }


class EventLog:
    """context(buf, i): writes uptime_s, pack_mv, current_ma, cell_min_mv,
    cell_max_mv (all 0 before the first reading) and the hottest cell
    temperature in 0.1 degC (-32768 unknown) into buf[i:i+6], allocating
    nothing. soc(): SOC % as an int, or -1; called when the events are
    written (main loop), as the estimator runs there too."""

    def __init__(self, path, context, soc=None, opener=None):
        self.path = path
        self._ctx = context
        self._soc = soc
        self._opener = opener
        self._tq = array("i", [0] * (_TICK_QUEUE * _W))
        self._th = 0  # written by the tick only (modulo 2 x size: full and empty differ)
        self._tt = 0  # written by flush only
        self._mq = array("i", [0] * (_MAIN_QUEUE * _W))
        self._mh = 0
        self._mt = 0
        self.dropped = 0  # events lost since boot (a queue was full)
        self._lost = 0  # of those, not yet in a 'lost' record
        self.ring = None  # opened by the first flush
        self.boot = 0  # this boot's number: the last record's + 1
        self._payload = bytearray(struct.calcsize(_FMT))
        self._failed_ms = None  # when the last flush failed
        self._failed_once = False  # the flush before this one failed too
        self._retry_ms = _RETRY_MS  # how long a failed flash is left alone

    # ---- queueing -----------------------------------------------------------------

    def push_tick(self, code, arg, value):
        """From the tick only: queue an event without allocating."""
        h = self._th
        if (h - self._tt) % (2 * _TICK_QUEUE) >= _TICK_QUEUE:
            self._drop()
            return
        i = (h % _TICK_QUEUE) * _W
        q = self._tq
        q[i] = code
        q[i + 1] = arg
        q[i + 2] = value
        self._ctx(q, i + _CTX)
        self._th = (h + 1) % (2 * _TICK_QUEUE)

    def push(self, code, arg=0, value=0):
        """From the main loop (console, SOC): queue an event and write what
        is queued now, so it is on flash before a command's reply (or a
        reset). A failed write is retried by the next flush."""
        h = self._mh
        if (h - self._mt) % (2 * _MAIN_QUEUE) >= _MAIN_QUEUE:
            self._drop()
        else:
            i = (h % _MAIN_QUEUE) * _W
            q = self._mq
            q[i] = code
            q[i + 1] = arg
            q[i + 2] = value
            self._ctx(q, i + _CTX)
            self._mh = (h + 1) % (2 * _MAIN_QUEUE)
        try:
            self.flush()
        except OSError:
            pass  # kept queued; service() tries again and counts the error

    def push_config(self, key, value):
        """config set KEY VALUE (value as the config holds it)."""
        if key == "chemistry":
            value = CHEMISTRIES.index(value) if value in CHEMISTRIES else -1
        k = CONFIG_KEYS.index(key) if key in CONFIG_KEYS else _UNKNOWN
        self.push(EV_CONFIG_SET, k, value)

    def _drop(self):
        if self.dropped < _COUNT_MAX:
            self.dropped += 1
            self._lost += 1

    def pending(self):
        """Events queued, not yet on flash."""
        return (self._th - self._tt) % (2 * _TICK_QUEUE) + (self._mh - self._mt) % (2 * _MAIN_QUEUE)

    # ---- to flash ------------------------------------------------------------------

    def open(self):
        """Scan the ring on flash (once); raises OSError."""
        if self.ring is None:
            ring = Ring(self.path, REC_SIZE, COUNT, self._opener)
            last = ring.last()
            self.boot = (struct.unpack_from(_FMT, last, 0)[2] + 1) & 0xFFFF if last is not None else 1
            self.ring = ring
        return self.ring

    def flush(self):
        """Write the queued events to flash (main loop). Raises OSError if the
        flash fails (the events stay queued; no retry for _RETRY_MS)."""
        if self._failed_ms is not None:
            if time.ticks_diff(time.ticks_ms(), self._failed_ms) < self._retry_ms:
                return
            self._failed_ms = None
        if not self.pending() and not self._lost and self.ring is not None:
            return
        try:
            self.open()
            try:
                soc = self._soc() if self._soc is not None else -1
            except Exception:  # an estimator in trouble must not keep the trips off flash
                soc = -1
            # The tick's events first: a console event in the same batch was
            # pushed (and flushed) after them or comes from this same call.
            while self._tt != self._th:
                self._write(self._tq, (self._tt % _TICK_QUEUE) * _W, soc)
                self._tt = (self._tt + 1) % (2 * _TICK_QUEUE)
            while self._mt != self._mh:
                self._write(self._mq, (self._mt % _MAIN_QUEUE) * _W, soc)
                self._mt = (self._mt + 1) % (2 * _MAIN_QUEUE)
            if self._lost:
                lost = self._lost
                self._lost = 0
                tmp = array("i", [EV_LOST, 0, lost, 0, 0, 0, 0, 0, _NO_TEMP])  # a record of its own
                self._ctx(tmp, _CTX)
                try:
                    self._write(tmp, 0, soc)
                except OSError:
                    self._lost += lost
                    raise
        except OSError:
            # A failing flash is left alone for longer each time (up to a
            # minute): retrying every second would only wear it further.
            if self._failed_ms is None and self._retry_ms:
                self._retry_ms = min(self._retry_ms * 2, _RETRY_MAX_MS) if self._failed_once else _RETRY_MS
            self._failed_once = True
            self._failed_ms = time.ticks_ms()
            raise
        self._failed_once = False
        self._retry_ms = _RETRY_MS

    def _write(self, q, i, soc):
        temp = q[i + 8]
        struct.pack_into(
            _FMT, self._payload, 0,
            _clamp(q[i], 0, 255), _clamp(q[i + 1], 0, 255), self.boot,
            _clamp(q[i + 3], 0, 0xFFFFFFFF), _clamp(q[i + 2], -_I32, _I32), _clamp(q[i + 5], -_I32, _I32),
            _clamp(q[i + 4] // 10, 0, 0xFFFF), _clamp(q[i + 6], 0, 0xFFFF), _clamp(q[i + 7], 0, 0xFFFF),
            -128 if temp == _NO_TEMP else _clamp((temp + 5) // 10, -127, 127),
            _UNKNOWN if soc < 0 else _clamp(soc, 0, 100))
        self.open().append(self._payload)

    # ---- reading ---------------------------------------------------------------------

    def latest(self, n):
        """The newest n records as dicts, oldest first (a generator: records
        are read one at a time). Afterwards self.ring.skipped says how many
        slots in that range held no good record (torn)."""
        ring = self.open()
        for seq, payload in ring.records(ring.next_seq - n):
            yield decode(seq, payload)


def text(d):
    """One record (a dict as decode() gives, or as `log --json` sent it)
    as the console's `log` prints it; bmsctl prints it the same way."""
    e = d["event"]
    det = d["detail"]
    v = d["value"]
    if e in ("trip", "clear"):
        what = "%s %s value=%d" % (e, det, v)
    elif e == "state":
        what = "state %s from %s" % (det, STATE_NAMES[v] if 0 <= v < len(STATE_NAMES) else v)
    elif e == "config_set":
        if det == "chemistry":
            v = CHEMISTRIES[v] if 0 <= v < len(CHEMISTRIES) else v
        what = "config_set %s=%s" % (det, v)
    elif e == "fet_cmd":
        what = "fet_cmd %s %s" % (det, "on" if v else "off")
    elif e == "clear_cmd":
        what = "clear_cmd released %d" % v
    elif e == "chip_reset":
        what = "chip_reset count %d" % v
    elif e in ("full", "empty"):
        what = "%s soc_before %.1f%%" % (e, v / 10)
    elif e == "capacity":
        what = "capacity %d mAh" % v
    elif e == "lost":
        what = "lost %d event%s" % (v, "" if v == 1 else "s")
    elif det is not None:
        what = "%s %s" % (e, det)
    else:
        what = e
    if d["cell_max_mv"] is None:
        pack = "no reading"
    else:
        pack = "pack=%smV I=%+.1fA cells %d..%dmV" % (
            "--" if d["pack_mv"] is None else d["pack_mv"], d["current_ma"] / 1000, d["cell_min_mv"], d["cell_max_mv"])
    return "#%d boot %d +%ds %s %s soc %s %s" % (
        d["seq"], d["boot"], d["uptime_s"], what, pack,
        "--" if d["soc_pct"] is None else "%d%%" % d["soc_pct"], "--C" if d["temp_c"] is None else "%dC" % d["temp_c"])
