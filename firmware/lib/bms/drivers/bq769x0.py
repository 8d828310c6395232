# TI bq769x0 (BQ76920 / BQ76930 / BQ76940) front-end over I2C.
#
# Facts: shared/reference/afe-facts.md B1 and the datasheet (SLUSBK2I).
# - CRC-8 (poly 0x07) on every transfer when the chip has it: writes carry
#   CRC([addr<<1, reg, data]), later bytes of a block CRC(byte); reads come
#   back data, CRC, data, CRC... with the first CRC over [addr<<1|1, data0].
#   A write with a bad CRC is NACKed and not applied.
# - ADC codes through the factory trim: cell uV = code * gain + offset * 1000
#   (gain 365..396 uV/LSB from ADCGAIN1/2, offset a signed int8 in mV).
# - BAT is the sum of the cell codes / 4: pack uV = 4 * gain * BAT + (channels
#   summed) * offset, minus what the unused (shorted) channels contributed.
# - CC: signed 16 bit at 8.44 uV/LSB every 250 ms (CC_READY); thermistors
#   behind the chip's 10 kOhm pull-up to 3.3 V, V_TS = code * 382 uV, sampled
#   every 2 s (a TEMP_SEL change shows after up to about 2.5 s).
# - The chip suspends balancing itself for the cell measurement slot (OV/UV
#   and the readings are not affected), so read() need not pause it; the host
#   must keep adjacent cells of a group from balancing together.
#
# read() and the per-tick calls allocate nothing: one block read of 0x00..0x33
# into preallocated buffers, integer arithmetic below 2**30.
import time
from micropython import const

from bms.afe import Afe, ChipReset, NTC_OK, NTC_OPEN, NTC_SHORT, HW_SCD, HW_OCD, HW_OV, HW_UV, HW_OTHER
from bms.ntc import OPEN_DC, SHORT_DC
from bms.drivers.crc import crc8_byte

_SYS_STAT = const(0x00)
_CELLBAL1 = const(0x01)
_SYS_CTRL1 = const(0x04)
_SYS_CTRL2 = const(0x05)
_PROTECT1 = const(0x06)
_PROTECT2 = const(0x07)
_PROTECT3 = const(0x08)
_OV_TRIP = const(0x09)
_UV_TRIP = const(0x0A)
_CC_CFG = const(0x0B)
_VC1_HI = const(0x0C)
_BAT_HI = const(0x2A)
_TS1_HI = const(0x2C)
_CC_HI = const(0x32)
_ADCGAIN1 = const(0x50)
_ADCOFFSET = const(0x51)
_ADCGAIN2 = const(0x59)
_BLOCK = const(0x34)  # registers 0x00..0x33 in one read

# SYS_STAT
_CC_READY = const(0x80)
_XREADY = const(0x20)
_OVRD_ALERT = const(0x10)
_UV = const(0x08)
_OV = const(0x04)
_SCD = const(0x02)
_OCD = const(0x01)
_CLEARED_BY_READ = const(0x9D)  # CC_READY | OVRD_ALERT | UV | OV | OCD: SCD stays until clear_faults()
# SYS_CTRL1 / SYS_CTRL2
_ADC_EN = const(0x10)
_TEMP_SEL = const(0x08)
_CC_EN = const(0x40)
_DSG_ON = const(0x02)
_CHG_ON = const(0x01)
_CTRL2_MASK = const(0xE3)

_CC_CFG_VALUE = const(0x19)  # "must be programmed to 0x19"
_CC_NV_PER_LSB = const(8440)
_TS_UV_PER_LSB = const(382)
_CC_MAX_UV = const(200000)  # recommended CC input range (+-200 mV)
_STALE_MS = const(1000)  # no CC_READY for this long: the chip stopped converting
_TS_SETTLE_MS = const(2600)  # TEMP_SEL newly set: temperatures follow within ~2.5 s
_TRIES = const(3)  # a transfer and at most two retries
_CAP = const(0x3FFFFFFF)

_OV_BASE = const(0x2008)  # OV_TRIP full form: 0x2008 | OV_TRIP << 4
_UV_BASE = const(0x1000)  # UV_TRIP full form: 0x1000 | UV_TRIP << 4

_VARIANTS = {"bq76920": 5, "bq76930": 10, "bq76940": 15}
# Pack cell -> cell channel for each populated count (datasheet table of
# unused inputs for partly populated stacks).
_MAP = {
    5: {3: (0, 1, 4), 4: (0, 1, 2, 4), 5: (0, 1, 2, 3, 4)},
    10: {6: (0, 1, 4, 5, 6, 9), 7: (0, 1, 2, 4, 5, 6, 9), 8: (0, 1, 2, 4, 5, 6, 7, 9),
         9: (0, 1, 2, 3, 4, 5, 6, 7, 9), 10: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9)},
    15: {9: (0, 1, 4, 5, 6, 9, 10, 11, 14), 10: (0, 1, 2, 4, 5, 6, 9, 10, 11, 14),
         11: (0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 14), 12: (0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14),
         13: (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14), 14: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14),
         15: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)},
}

SCD_DELAY_US = (70, 100, 200, 400)
SCD_MV = ((22, 33, 44, 56, 67, 78, 89, 100), (44, 67, 89, 111, 133, 155, 178, 200))
OCD_DELAY_MS = (8, 20, 40, 80, 160, 320, 640, 1280)
OCD_MV = ((8, 11, 14, 17, 19, 22, 25, 28, 31, 33, 36, 39, 42, 44, 47, 50),
          (17, 22, 28, 33, 39, 44, 50, 56, 61, 67, 72, 78, 83, 89, 94, 100))
UV_DELAY_MS = (1000, 4000, 8000, 16000)
OV_DELAY_MS = (1000, 2000, 4000, 8000)


def _crc_table():
    t = bytearray(256)
    for i in range(256):
        t[i] = crc8_byte(0, i)
    return bytes(t)


_T = _crc_table()  # CRC-8 of one byte: crc over b0, b1 is _T[_T[b0] ^ b1]


def _at_least(table, want):
    """Index of the smallest entry >= want, else the last (clamped)."""
    for i in range(len(table)):
        if table[i] >= want:
            return i
    return len(table) - 1


def _div_round(a, b):
    # Rounded a / b for b > 0, symmetric around 0.
    if a < 0:
        return -((-a + b // 2) // b)
    return (a + b // 2) // b


class Bq769x0(Afe):
    pack_measured = True
    no_adjacent_balancing = True
    has_precharge = False
    can_balance = True

    def __init__(self, i2c, addr, variant, crc, shunt_uohm, ntcs, board_ntc=None, alert_pin=None, clock=None):
        """i2c: a machine.I2C; crc: True, False or "detect"; ntcs: [(TS index
        0..2, Ntc)]; board_ntc: (TS index, Ntc) or None; clock: ms ticks
        callable (time.ticks_ms)."""
        if variant not in _VARIANTS:
            raise ValueError("unknown bq769x0 variant %s" % variant)
        n_ch = _VARIANTS[variant]
        self.i2c = i2c
        self.addr = addr
        self.variant = variant
        self.n_ch = n_ch
        self.max_cells = n_ch
        self.crc_mode = crc  # what the board says
        self.crc = crc is not False  # what is in use (settled by init)
        self.shunt_uohm = shunt_uohm
        self.ntcs = ntcs
        self.board_ntc = board_ntc
        self.n_temps = len(ntcs)
        self.has_board_temp = board_ntc is not None
        n_ts = (n_ch + 4) // 5
        for ts, _ in ntcs + ([board_ntc] if board_ntc else []):
            if not 0 <= ts < n_ts:
                raise ValueError("%s has TS1..TS%d only" % (variant, n_ts))
        self.alert_pin = alert_pin
        self.pack_max_mv = 5000 * n_ch  # the cell inputs' range: 5 V each
        self.current_max_ma = _CC_MAX_UV * 1000 // shunt_uohm
        self.crc_errors = 0
        self.bus_errors = 0
        self._clock = clock if clock is not None else time.ticks_ms
        self._ctrl1 = _ADC_EN | (_TEMP_SEL if ntcs or board_ntc else 0)
        self.n_cells = 0
        self._ch = b""
        self._unused = b""
        self.gain = 0
        self.offset_uv = 0
        self._aw = (addr << 1) & 0xFF
        self._ar0 = _T[((addr << 1) | 1) & 0xFF]  # CRC after the read address byte
        # Block read 0x00..0x33: raw (with CRC) and plain register images;
        # writes of one register and of the CELLBAL block. The transfer views
        # into them are sized for the CRC mode by _views().
        self._raw = bytearray(2 * _BLOCK)
        self._r = bytearray(_BLOCK)
        self._w = bytearray(3)
        self._n_bal = n_ch // 5
        self._wb = bytearray(1 + 2 * self._n_bal)
        self._ctrl2 = -1  # SYS_CTRL2 as last seen or written (-1: unknown)
        self._bal = -1  # CELLBAL channel bits as last seen or written
        self._stat = 0
        self._prot = bytearray(5)  # PROTECT1..3, OV_TRIP, UV_TRIP as programmed
        self._prot_set = False
        self._have_cc = False
        self._cc_seen = 0
        self._init_t = 0
        self._settle_ms = 0
        self._views()

    def _views(self):
        # Transfer sizes depend on the CRC mode (allocates: init only).
        c = self.crc
        self._raw_blk = memoryview(self._raw)[0:2 * _BLOCK] if c else memoryview(self._r)[0:_BLOCK]
        self._raw1 = memoryview(self._raw)[0:2] if c else memoryview(self._r)[0:1]
        self._wv = memoryview(self._w)[0:3 if c else 2]
        self._wbv = memoryview(self._wb)[0:(1 + 2 * self._n_bal) if c else (1 + self._n_bal)]

    # ------------------------------------------------------------------
    # Link: bounded retries, CRC checked on every byte
    # ------------------------------------------------------------------

    def _count_crc(self):
        if self.crc_errors < _CAP:
            self.crc_errors += 1

    def _count_bus(self):
        if self.bus_errors < _CAP:
            self.bus_errors += 1

    def _read(self, reg, raw, n):
        """n registers from reg into self._r[0:n]; raw is the transfer view
        (2n bytes with CRC, else self._r itself). OSError after _TRIES."""
        r = self._r
        t = _T
        for _ in range(_TRIES):
            try:
                self.i2c.readfrom_mem_into(self.addr, reg, raw)
            except OSError:
                self._count_bus()
                continue
            if not self.crc:
                return
            b = self._raw
            ok = b[1] == t[self._ar0 ^ b[0]]
            if ok:
                r[0] = b[0]
                for i in range(1, n):
                    d = b[2 * i]
                    if b[2 * i + 1] != t[d]:
                        ok = False
                        break
                    r[i] = d
            if ok:
                return
            self._count_crc()
        raise OSError(5)  # EIO: no good answer after the retries

    def _send(self, buf):
        n = len(buf)
        for _ in range(_TRIES):
            try:
                got = self.i2c.writeto(self.addr, buf)
            except OSError:
                self._count_bus()
                continue
            if got is None or got >= n:
                return
            # A data byte was not acknowledged: the chip refused its CRC.
            self._count_crc()
        raise OSError(5)

    def _write(self, reg, val):
        w = self._w
        w[0] = reg
        w[1] = val
        if self.crc:
            t = _T
            w[2] = t[t[t[self._aw] ^ reg] ^ val]
        self._send(self._wv)

    def _read1(self, reg):
        self._read(reg, self._raw1, 1)
        return self._r[0]

    # ------------------------------------------------------------------
    # Set-up
    # ------------------------------------------------------------------

    def _detect_crc(self):
        # With CRC: write CC_CFG and read it back, both checked. Without CRC
        # only on proof: a CRC chip ignores a write that carries no CRC, so
        # a CRC-less write of a new value to OV_TRIP that reads back means a
        # plain chip (bit errors cannot fake that; a CC_CFG read alone could
        # be the CRC chip's data byte). init() then programs everything.
        i2c = self.i2c
        a = self.addr
        w = self._w
        t = _T
        self.crc = True
        self._views()
        for _ in range(_TRIES):
            try:
                w[0] = _CC_CFG
                w[1] = _CC_CFG_VALUE
                w[2] = t[t[t[self._aw] ^ _CC_CFG] ^ _CC_CFG_VALUE]
                i2c.writeto(a, self._wv)
                i2c.readfrom_mem_into(a, _CC_CFG, self._raw1)
            except OSError:
                continue
            b = self._raw1
            if b[0] == _CC_CFG_VALUE and b[1] == t[self._ar0 ^ b[0]]:
                return
        self.crc = False
        self._views()
        b = self._raw1
        for _ in range(_TRIES):
            try:
                i2c.readfrom_mem_into(a, _OV_TRIP, b)
                old = b[0]
                w[0] = _OV_TRIP
                w[1] = old ^ 0x5A
                i2c.writeto(a, self._wv)
                i2c.readfrom_mem_into(a, _OV_TRIP, b)
                if b[0] != old ^ 0x5A:
                    continue
                w[1] = old
                i2c.writeto(a, self._wv)
                return
            except OSError:
                continue
        self.crc = True
        self._views()
        raise OSError(5)

    def init(self, n_cells):
        table = _MAP[self.n_ch]
        if n_cells not in table:
            raise ValueError("%s measures %d..%d cells" % (self.variant, min(table), max(table)))
        ch = table[n_cells]
        self.n_cells = n_cells
        self._ch = bytes(ch)
        self._unused = bytes([c for c in range(self.n_ch) if c not in ch])
        if self.crc_mode == "detect":
            self._detect_crc()
        else:
            self.crc = self.crc_mode is not False
            self._views()
        self._write(_CC_CFG, _CC_CFG_VALUE)
        before = self._read1(_SYS_CTRL1)
        self._write(_SYS_CTRL2, _CC_EN)  # FETs off, coulomb counter running
        self._ctrl2 = _CC_EN
        self._write(_SYS_CTRL1, self._ctrl1)
        # Factory trim (init only: allocations are fine here).
        self._read(_ADCGAIN1, memoryview(self._raw)[0:4] if self.crc else memoryview(self._r)[0:2], 2)
        g1 = self._r[0]
        off = self._r[1]
        g2 = self._read1(_ADCGAIN2)
        self.gain = 365 + (((g1 & 0x0C) << 1) | ((g2 & 0xE0) >> 5))
        self.offset_uv = (off - 256 if off & 0x80 else off) * 1000
        self.set_balancing(0)
        self._write(_SYS_STAT, 0xBF)  # write 1 to clear everything (bit 6 reserved)
        self._stat = 0
        now = self._clock()
        self._have_cc = False
        self._cc_seen = now
        self._init_t = now
        # Temperatures in the registers were taken with the old TEMP_SEL.
        self._settle_ms = 0 if (before & self._ctrl1) == self._ctrl1 else _TS_SETTLE_MS
        self._prot_set = False

    def configure_protection(self, cfg):
        """The chip's own OV/UV/OCD/SCD as a backup beyond the firmware's
        rows: thresholds and delays at or beyond the firmware's, clamped to
        what the chip can do. Returns what was applied (mV, mA, ms)."""
        gain = self.gain
        off = self.offset_uv
        # OV: the smallest register whose trip voltage is >= cell_ov_mv.
        code = -((off - cfg["cell_ov_mv"] * 1000) // gain)  # ceil((mV*1000 - off) / gain)
        ov = -((_OV_BASE - code) // 16)  # ceil((code - base) / 16)
        ov = max(0, min(255, ov))
        # UV: the largest register whose trip voltage is <= cell_uv_mv.
        code = (cfg["cell_uv_mv"] * 1000 - off) // gain
        uv = (code - _UV_BASE) // 16
        uv = max(0, min(255, uv))
        ov_d = _at_least(OV_DELAY_MS, cfg["cell_ov_delay_ms"])
        uv_d = _at_least(UV_DELAY_MS, cfg["cell_uv_delay_ms"])
        # Currents: shunt mV = mA * uOhm / 1e6. OCD just above ocd2_ma with a
        # delay >= ocd2_delay_ms; SCD about 2 x ocd2_ma, shortest delay. RSNS
        # picks the table range; both must fit it.
        r = self.shunt_uohm
        ocd_want = cfg["ocd2_ma"] * r  # in nV (mV * 1e6)
        scd_want = 2 * ocd_want
        best = None
        for rsns in (0, 1):
            o = _at_least(OCD_MV[rsns], (ocd_want + 999999) // 1000000)
            s = _at_least(SCD_MV[rsns], (scd_want + 999999) // 1000000)
            fits = OCD_MV[rsns][o] * 1000000 >= ocd_want and SCD_MV[rsns][s] * 1000000 >= scd_want
            if fits and (best is None or OCD_MV[rsns][o] < OCD_MV[best[0]][best[1]]):
                best = (rsns, o, s)
        if best is None:
            rsns = 1
            best = (1, _at_least(OCD_MV[1], 1000), _at_least(SCD_MV[1], 1000))  # the largest it has
        rsns, o, s = best
        ocd_d = _at_least(OCD_DELAY_MS, cfg["ocd2_delay_ms"])
        p = self._prot
        p[0] = (rsns << 7) | s  # SCD_DELAY 0: 70 us
        p[1] = (ocd_d << 4) | o
        p[2] = (uv_d << 6) | (ov_d << 4)
        p[3] = ov
        p[4] = uv
        for i in range(5):
            self._write(_PROTECT1 + i, p[i])
        self._prot_set = True
        return {
            "cell_ov_mv": ((_OV_BASE | ov << 4) * gain + off) // 1000,
            "cell_ov_delay_ms": OV_DELAY_MS[ov_d],
            "cell_uv_mv": ((_UV_BASE | uv << 4) * gain + off) // 1000,
            "cell_uv_delay_ms": UV_DELAY_MS[uv_d],
            "ocd_ma": OCD_MV[rsns][o] * 1000000 // r,
            "ocd_delay_ms": OCD_DELAY_MS[ocd_d],
            "scd_ma": SCD_MV[rsns][s] * 1000000 // r,
            "scd_delay_us": SCD_DELAY_US[0],
        }

    # ------------------------------------------------------------------
    # The tick
    # ------------------------------------------------------------------

    def read(self, m):
        self._read(_SYS_STAT, self._raw_blk, _BLOCK)
        r = self._r
        st = r[_SYS_STAT]
        self._stat = st
        # A chip that restarted has lost CC_CFG, ADC_EN/TEMP_SEL or CC_EN;
        # DEVICE_XREADY is its internal fault flag. The core sets it up again.
        if (r[_CC_CFG] & 0x3F) != _CC_CFG_VALUE or (r[_SYS_CTRL1] & 0x18) != self._ctrl1 \
                or not r[_SYS_CTRL2] & _CC_EN or st & _XREADY:
            raise ChipReset("bq769x0 lost its configuration")
        if self._prot_set:
            p = self._prot
            for i in range(5):
                if r[_PROTECT1 + i] != p[i]:
                    raise ChipReset("bq769x0 protection registers changed")
        self._ctrl2 = r[_SYS_CTRL2] & _CTRL2_MASK
        self._bal = r[_CELLBAL1] | (r[_CELLBAL1 + 1] << 5) | (r[_CELLBAL1 + 2] << 10)
        now = self._clock()
        if st & _CC_READY:
            self._have_cc = True
            self._cc_seen = now
        elif not self._have_cc or time.ticks_diff(now, self._cc_seen) > _STALE_MS:
            return False  # no conversion since set-up, or the chip stopped converting
        if time.ticks_diff(now, self._init_t) < self._settle_ms:
            if st & _CC_READY:
                self._write(_SYS_STAT, _CC_READY)
            return False  # thermistor readings not switched over yet
        gain = self.gain
        off = self.offset_uv
        # Cells: 14-bit codes through the trim.
        ch = self._ch
        cells = m.cells_mv
        for i in range(self.n_cells):
            j = _VC1_HI + 2 * ch[i]
            code = ((r[j] & 0x3F) << 8) | r[j + 1]
            cells[i] = _div_round(code * gain + off, 1000)
        # Pack: the sum of every channel's code / 4, less the unused channels.
        bat = (r[_BAT_HI] << 8) | r[_BAT_HI + 1]
        uv = 4 * gain * bat + self.n_ch * off
        un = self._unused
        for i in range(len(un)):
            j = _VC1_HI + 2 * un[i]
            uv -= (((r[j] & 0x3F) << 8) | r[j + 1]) * gain + off
        m.pack_mv = _div_round(uv, 1000)
        if st & _CC_READY:
            cc = (r[_CC_HI] << 8) | r[_CC_HI + 1]
            if cc & 0x8000:
                cc -= 0x10000
            m.current_ma = _div_round(cc * _CC_NV_PER_LSB, self.shunt_uohm)
        for i in range(self.n_temps):
            ts, ntc = self.ntcs[i]
            t = self._temp(ts, ntc)
            m.temps_dc[i] = t
            m.temp_status[i] = NTC_OPEN if t == OPEN_DC else (NTC_SHORT if t == SHORT_DC else NTC_OK)
        if self.board_ntc is not None:
            ts, ntc = self.board_ntc
            t = self._temp(ts, ntc)
            m.board_dc = t
            m.board_status = NTC_OPEN if t == OPEN_DC else (NTC_SHORT if t == SHORT_DC else NTC_OK)
        hw = 0
        if st & _SCD:
            hw |= HW_SCD
        if st & _OCD:
            hw |= HW_OCD
        if st & _OV:
            hw |= HW_OV
        if st & _UV:
            hw |= HW_UV
        if st & _OVRD_ALERT:
            hw |= HW_OTHER
        m.hw_faults = hw
        # Reported: release them (the firmware's rows decide recovery); a
        # fault still present sets its bit again. SCD stays latched.
        clr = st & _CLEARED_BY_READ
        if clr:
            self._write(_SYS_STAT, clr)
        return True

    def _temp(self, ts, ntc):
        r = self._r
        j = _TS1_HI + 2 * ts
        code = ((r[j] & 0x3F) << 8) | r[j + 1]
        return ntc.convert((code * _TS_UV_PER_LSB + 500) // 1000)

    def set_fets(self, chg, dsg, pchg=False):
        if self._stat & _SCD:
            dsg = False  # latched in the chip until clear_faults()
        want = _CC_EN | (_DSG_ON if dsg else 0) | (_CHG_ON if chg else 0)
        # read() refreshes what the register holds every tick: a difference
        # (a write lost, the chip's own protection) is written again.
        if want != self._ctrl2:
            self._ctrl2 = -1  # unknown until the write went through
            self._write(_SYS_CTRL2, want)
            self._ctrl2 = want

    def set_balancing(self, mask):
        ch = self._ch
        bits = 0
        for i in range(self.n_cells):
            if mask >> i & 1:
                c = ch[i]
                # Never two adjacent channels of one group: the later goes.
                if c % 5 and bits >> (c - 1) & 1:
                    continue
                bits |= 1 << c
        if bits == self._bal:
            return
        w = self._wb
        w[0] = _CELLBAL1
        t = _T
        if self.crc:
            crc = t[self._aw] ^ _CELLBAL1
            for g in range(self._n_bal):
                v = (bits >> (5 * g)) & 0x1F
                w[1 + 2 * g] = v
                w[2 + 2 * g] = t[t[crc] ^ v] if g == 0 else t[v]
        else:
            for g in range(self._n_bal):
                w[1 + g] = (bits >> (5 * g)) & 0x1F
        self._bal = -1
        self._send(self._wbv)
        self._bal = bits

    def clear_faults(self):
        self._write(_SYS_STAT, _SCD | _OCD)
        st = self._read1(_SYS_STAT)
        self._stat = st
        return not st & (_SCD | _OCD)

    def shutdown(self):
        """Ship mode: FETs and bleeders off, then SHUT_A/SHUT_B 00, 01, 10.
        The chip answers nothing until it is woken (TS1 boot) and reset."""
        self.set_balancing(0)
        self.set_fets(False, False)
        self._write(_SYS_CTRL1, 0x00)
        self._write(_SYS_CTRL1, 0x01)
        self._write(_SYS_CTRL1, 0x02)


def from_board(b, machine, clock=None):
    """The driver for board dict b, its bus and pins built with `machine`."""
    from bms.ntc import Ntc

    c = b["bq769x0"]
    i2c = machine.I2C(c["i2c"], sda=machine.Pin(c["sda"]), scl=machine.Pin(c["scl"]), freq=c.get("freq", 100000))
    alert = b.get("alert")
    alert_pin = machine.Pin(alert["pin"], machine.Pin.IN) if alert else None

    def ntc(s):
        ts = s.get("input", "TS1")
        if ts not in ("TS1", "TS2", "TS3"):
            raise ValueError("bq769x0 thermistor input must be TS1..TS3, not %s" % ts)
        sh = s.get("sh")
        # The chip's own 10 kOhm pull-up to its 3.3 V regulator.
        return (int(ts[2]) - 1, Ntc(s.get("r0", 10000), s.get("beta", 3950), 10000, 3300, s.get("t0_c", 25),
                                    tuple(sh) if sh else None))

    ntcs = [ntc(s) for s in b.get("ntc") or []]
    board_ntc = ntc(b["board_ntc"]) if b.get("board_ntc") else None
    return Bq769x0(i2c, c["addr"], c.get("variant", "bq76940"), c.get("crc", "detect"), b["shunt_uohm"],
                   ntcs, board_ntc, alert_pin, clock)
