"""TI bq769x0 (BQ76920 / BQ76930 / BQ76940) battery monitor, register level.

Written from the datasheet (SLUSBK2I) and the facts in
shared/reference/afe-facts.md section B1, not from a driver:

- I2C at board["bq769x0"]["addr"]. With CRC (BQ769x003 and friends) every
  write carries a CRC-8 (poly 0x07): the first over [addr<<1, reg, data],
  each later data byte of a block write over that byte alone. A wrong CRC
  byte is NACKed and that write is not applied. Reads answer data, CRC,
  data, CRC...: the first CRC over [addr<<1|1, data0], later ones over the
  byte alone. Without CRC (board crc false) plain auto-increment.
- Register map with power-on values; factory trim ADCGAIN1/ADCOFFSET/
  ADCGAIN2 drawn per instance (reserved bits random too), and every ADC code
  computed through that gain and offset: code = (V - offset) / gain.
- Cell channels wired to the pack as the datasheet's table for partly
  populated stacks says; shorted (unused) channels read about 0.
- Every 250 ms while ADC_EN: cell codes (14 bit), BAT (sum of the cell
  codes / 4: "BAT calculation based on adding up cells"), OV/UV compared in
  code space with OV_TRIP/UV_TRIP in their full 14-bit forms, PROTECT3
  delays. Balancing is suspended for the measurement slot (the datasheet:
  OV/UV are not affected by balancing), so the codes carry no bleed drop.
- Temperatures every 2 s (E2E 939828: "every 2 seconds per group"; the
  TEMP_SEL in force at the sample decides): the external thermistor behind
  the chip's 10 kOhm pull-up to 3.3 V (V_TS = code * 382 uV), or the die
  sensor (1.200 V at 25 degC, -4.2 mV/degC) when TEMP_SEL = 0.
- Coulomb counter every 250 ms while CC_EN (or once for CC_ONESHOT): the
  average shunt voltage over the window at 8.44 uV/LSB, signed 16 bit,
  + = charging; sets CC_READY.
- SYS_STAT write-1-to-clear; a persisting fault sets its bit again. ALERT
  (board "alert" pin, active high) is driven while any SYS_STAT bit is set.
- Hardware protection on the simulated pack: OV clears CHG_ON; UV, OCD and
  SCD clear DSG_ON; OVRD_ALERT and DEVICE_XREADY clear both (SLUSBK2I FET
  table). The host must clear the status bit before the FET can be switched
  on again: while the bit is set a write of CHG_ON/DSG_ON = 1 leaves it 0.
- Adjacent balancing bits are applied as written: the datasheet leaves it to
  the host ("the host controller must ensure that no two adjacent cells are
  balanced simultaneously"); the model counts such writes (hw_state).
- Ship mode: SYS_CTRL1 SHUT_A/SHUT_B written 00, 01, 10 in sequence: FETs
  open, the chip stops answering (address NACK) until power_on_reset().

Runs under CPython and MicroPython.
"""

from chips import checks

try:
    from prng import mix32
except ImportError:  # running without tools/sim on the path
    def mix32(x):
        x &= 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        x ^= x >> 16
        return x

# Registers
SYS_STAT = 0x00
CELLBAL1 = 0x01
SYS_CTRL1 = 0x04
SYS_CTRL2 = 0x05
PROTECT1 = 0x06
PROTECT2 = 0x07
PROTECT3 = 0x08
OV_TRIP = 0x09
UV_TRIP = 0x0A
CC_CFG = 0x0B
VC1_HI = 0x0C
BAT_HI = 0x2A
TS1_HI = 0x2C
CC_HI = 0x32
ADCGAIN1 = 0x50
ADCOFFSET = 0x51
ADCGAIN2 = 0x59

# SYS_STAT bits
CC_READY = 0x80
DEVICE_XREADY = 0x20
OVRD_ALERT = 0x10
UV = 0x08
OV = 0x04
SCD = 0x02
OCD = 0x01
# SYS_CTRL1 / SYS_CTRL2 bits
LOAD_PRESENT = 0x80
ADC_EN = 0x10
TEMP_SEL = 0x08
DELAY_DIS = 0x80
CC_EN = 0x40
CC_ONESHOT = 0x20
DSG_ON = 0x02
CHG_ON = 0x01

# Which SYS_STAT bits hold which FET off (SLUSBK2I, FET driving table).
_HOLD_CHG = OV | OVRD_ALERT | DEVICE_XREADY
_HOLD_DSG = UV | OCD | SCD | OVRD_ALERT | DEVICE_XREADY

# Writable bits per register (the rest is reserved or read-only).
_WRITE_MASK = {SYS_CTRL1: 0x1B, SYS_CTRL2: 0xE3, PROTECT1: 0x9F, PROTECT2: 0x7F, PROTECT3: 0xF0,
               OV_TRIP: 0xFF, UV_TRIP: 0xFF, CC_CFG: 0x3F}

_POR = {OV_TRIP: 0xAC, UV_TRIP: 0x97}  # every other register resets to 0

SCD_DELAY_US = (70, 100, 200, 400)
SCD_MV = ((22, 33, 44, 56, 67, 78, 89, 100), (44, 67, 89, 111, 133, 155, 178, 200))
OCD_DELAY_MS = (8, 20, 40, 80, 160, 320, 640, 1280)
OCD_MV = ((8, 11, 14, 17, 19, 22, 25, 28, 31, 33, 36, 39, 42, 44, 47, 50),
          (17, 22, 28, 33, 39, 44, 50, 56, 61, 67, 72, 78, 83, 89, 94, 100))
UV_DELAY_S = (1, 4, 8, 16)
OV_DELAY_S = (1, 2, 4, 8)

VARIANTS = {"bq76920": 5, "bq76930": 10, "bq76940": 15}

# Pack cell k -> cell channel (0-based) for each populated count: the
# datasheet's table of unused inputs (the same table NuttX's driver carries).
CHANNELS = {
    "bq76920": {3: (0, 1, 4), 4: (0, 1, 2, 4), 5: (0, 1, 2, 3, 4)},
    "bq76930": {6: (0, 1, 4, 5, 6, 9), 7: (0, 1, 2, 4, 5, 6, 9), 8: (0, 1, 2, 4, 5, 6, 7, 9),
                9: (0, 1, 2, 3, 4, 5, 6, 7, 9), 10: tuple(range(10))},
    "bq76940": {9: (0, 1, 4, 5, 6, 9, 10, 11, 14), 10: (0, 1, 2, 4, 5, 6, 9, 10, 11, 14),
                11: (0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 14), 12: (0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14),
                13: (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14), 14: (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14),
                15: tuple(range(15))},
}

_CYCLE_US = 250000  # ADC and coulomb-counter period
_TEMP_EVERY = 8  # cycles between temperature samples (2 s)
_CC_UV_PER_LSB = 8.44
_TS_UV_PER_LSB = 382.0
_TS_PULLUP_OHM = 10000.0
_TS_VREF_UV = 3300000.0
_UV_IGNORE_MV = 500  # channels reading below this are left out of the UV check (shorted inputs)


def gain_uv(gain1, gain2):
    """ADC gain in uV/LSB from ADCGAIN1/ADCGAIN2 (the facts' formula)."""
    return 365 + (((gain1 & 0x0C) << 1) | ((gain2 & 0xE0) >> 5))


def offset_mv(offset_reg):
    """ADCOFFSET as the signed int8 it is."""
    return offset_reg - 256 if offset_reg & 0x80 else offset_reg


def ov_full(ov_trip):
    return 0x2008 | (ov_trip << 4)


def uv_full(uv_trip):
    return 0x1000 | (uv_trip << 4)


def attach(world, board):
    """Create the model for board's bq769x0 and put it on its I2C bus."""
    model = Bq769x0Model(world, board)
    cfg = board["bq769x0"]
    world.add_i2c_device(cfg["i2c"], cfg["addr"], model)
    return model


class Bq769x0Model:
    afe = True  # the afe_nack / afe_crc faults hit this chip's transfers

    def __init__(self, world, board, crc=None, seed=None):
        self.world = world
        self.board = board
        cfg = board["bq769x0"]
        self.variant = cfg.get("variant", "bq76940")
        if self.variant not in VARIANTS:
            raise ValueError("unknown bq769x0 variant %s" % self.variant)
        self.n_ch = VARIANTS[self.variant]
        self.addr = cfg["addr"]
        self.crc = (cfg.get("crc", True) is not False) if crc is None else bool(crc)
        n = world.pack.n
        table = CHANNELS[self.variant]
        if n not in table:
            raise ValueError("%s: %d cells cannot be wired (the datasheet's table has %d..%d)"
                             % (self.variant, n, min(table), max(table)))
        self.cell_channel = table[n]  # pack cell k -> channel
        self.channel_cell = [-1] * self.n_ch
        for k in range(n):
            self.channel_cell[self.cell_channel[k]] = k
        self.shunt_uohm = board.get("shunt_uohm", 1000)
        alert = board.get("alert")
        self.alert_pin = alert["pin"] if alert else None
        # TS input (0..2) -> ("ntc", i) | ("board", 0); TS inputs this variant has.
        self.n_ts = {"bq76920": 1, "bq76930": 2, "bq76940": 3}[self.variant]
        self.ts_source = [None] * 3
        for i, ntc in enumerate(board.get("ntc") or []):
            self.ts_source[self._ts_index(ntc)] = ("ntc", i)
        if board.get("board_ntc"):
            self.ts_source[self._ts_index(board["board_ntc"])] = ("board", 0)
        self._draw_trim(seed)
        self.regs = bytearray(0x60)
        self.adjacent_writes = 0  # CELLBAL writes with two adjacent bits in a group
        self.writes_nacked = 0  # writes refused for a bad CRC
        self.ship = False
        self._busy = False  # inside a catch-up (an ALERT edge may call back into the bus)
        self._alert_level = 0
        world.step_hooks.append(self._hook)
        self._por()

    def _ts_index(self, cfg):
        name = cfg.get("input", "TS1")
        if name not in ("TS1", "TS2", "TS3"):
            raise ValueError("bq769x0 thermistor input must be TS1..TS3, not %s" % name)
        i = int(name[2]) - 1
        if i >= self.n_ts:
            raise ValueError("%s has no %s" % (self.variant, name))
        return i

    def _draw_trim(self, seed):
        # Factory trim, fixed per instance: the same seed gives the same chip.
        if seed is None:
            seed = self.addr * 131 + len(self.board.get("name", ""))
            for ch in self.board.get("name", ""):
                seed = (seed * 31 + ord(ch)) & 0xFFFFFFFF
        r = [mix32(seed * 4 + j) for j in range(4)]
        g = r[0] & 0x1F  # the 5 gain bits: 365..396 uV/LSB
        # ADCGAIN1 carries gain bits 4:3 in its bits 3:2, ADCGAIN2 bits 2:0
        # in its bits 7:5; the other bits are reserved (random here).
        self.trim_gain1 = ((g >> 3) << 2) | (r[1] & 0xF3)
        self.trim_gain2 = ((g & 0x07) << 5) | (r[1] >> 8 & 0x1F)
        off = (r[2] % 81) - 30  # -30..+50 mV
        self.trim_offset = off & 0xFF
        self.gain = gain_uv(self.trim_gain1, self.trim_gain2)
        self.offset = offset_mv(self.trim_offset)

    def set_trim(self, gain1, offset, gain2):
        """Test hook: give this chip a known factory trim (register values)."""
        self.trim_gain1 = gain1 & 0xFF
        self.trim_offset = offset & 0xFF
        self.trim_gain2 = gain2 & 0xFF
        self.gain = gain_uv(self.trim_gain1, self.trim_gain2)
        self.offset = offset_mv(self.trim_offset)
        self.regs[ADCGAIN1] = self.trim_gain1
        self.regs[ADCOFFSET] = self.trim_offset
        self.regs[ADCGAIN2] = self.trim_gain2

    # ------------------------------------------------------------------
    # Power-on reset, ship mode
    # ------------------------------------------------------------------

    def _por(self):
        r = self.regs
        for i in range(len(r)):
            r[i] = 0
        for reg in _POR:
            r[reg] = _POR[reg]
        r[ADCGAIN1] = self.trim_gain1
        r[ADCOFFSET] = self.trim_offset
        r[ADCGAIN2] = self.trim_gain2
        self.ship = False
        self.ptr = 0
        self._shut_seq = 0
        self._oneshot = False
        self._t = self.world.time_us()
        self._next_cycle = self._t + _CYCLE_US
        self._cycles = 0
        self._cc_acc = 0.0  # mA * us over the running CC window
        self._cc_from = self._t
        self._i_ma = None  # sampled at the next catch-up (not inside the world's set-up)
        self._ov_since = None
        self._uv_since = None
        self._ocd_since = None
        self._scd_since = None
        self.codes = [0] * self.n_ch
        self._update_alert()
        self._fets_changed()

    def power_on_reset(self):
        """The chip restarts: power-on register values, FETs off, out of ship mode."""
        self._por()

    def internal_fault(self):
        """Test hook: an internal fault (excessive transients) sets DEVICE_XREADY."""
        self._catch_up()
        self._set_stat(DEVICE_XREADY)

    # ------------------------------------------------------------------
    # What the world asks
    # ------------------------------------------------------------------

    def fet_on(self, name):
        if self.ship:
            return False
        c2 = self.regs[SYS_CTRL2]
        if name == "chg":
            return bool(c2 & CHG_ON)
        if name == "dsg":
            return bool(c2 & DSG_ON)
        return False  # no precharge driver

    def alert_out(self):
        """Level the chip drives on ALERT (1 while any SYS_STAT bit is set)."""
        return self._alert_level

    def balancing_channels(self):
        r = self.regs
        return r[CELLBAL1] | (r[CELLBAL1 + 1] << 5) | (r[CELLBAL1 + 2] << 10)

    def bleed_mask(self):
        if self.ship:
            return 0
        ch = self.balancing_channels()
        mask = 0
        for c in range(self.n_ch):
            if ch >> c & 1:
                k = self.channel_cell[c]
                if k >= 0:  # a shorted input bridges no cell
                    mask |= 1 << k
        return mask

    def hw_state(self):
        st = self.regs[SYS_STAT]
        tripped = [name for bit, name in ((OV, "OV"), (UV, "UV"), (OCD, "OCD"), (SCD, "SCD"),
                                         (OVRD_ALERT, "OVRD_ALERT"), (DEVICE_XREADY, "XREADY")) if st & bit]
        return {
            "chip": self.variant,
            "crc": self.crc,
            "ship": self.ship,
            "sys_stat": "0x%02x" % st,
            "tripped": tripped,
            "chg": self.fet_on("chg"),
            "dsg": self.fet_on("dsg"),
            "balancing": "0x%04x" % self.balancing_channels(),
            "adjacent_writes": self.adjacent_writes,
            "nacked_writes": self.writes_nacked,
            "gain_uv": self.gain,
            "offset_mv": self.offset,
        }

    # ------------------------------------------------------------------
    # I2C
    # ------------------------------------------------------------------

    def i2c_write(self, data, stop=True):
        if self.ship:
            return -1
        self._catch_up()
        n = len(data)
        if n == 0:
            return 0
        reg = data[0]
        self.ptr = reg
        if not self.crc:
            for i in range(1, n):
                self._write_reg(reg, data[i])
                reg = (reg + 1) & 0xFF
            self.ptr = reg
            return n
        acked = 1
        i = 1
        first = True
        while i < n:
            val = data[i]
            acked += 1  # the data byte itself is acknowledged
            if i + 1 >= n:
                break  # no CRC byte followed: nothing is written
            if first:
                want = checks.crc8(bytes([self.addr << 1, data[0], val]))
            else:
                want = checks.crc8(bytes([val]))
            if data[i + 1] != want:
                self.writes_nacked += 1
                return acked  # the CRC byte is NACKed, the write dropped
            acked += 1
            self._write_reg(reg, val)
            reg = (reg + 1) & 0xFF
            first = False
            i += 2
        self.ptr = reg
        return acked

    def i2c_read(self, n, stop=True):
        if self.ship:
            return None
        self._catch_up()
        out = bytearray(n)
        reg = self.ptr
        if not self.crc:
            for i in range(n):
                out[i] = self._read_reg(reg)
                reg = (reg + 1) & 0xFF
        else:
            i = 0
            first = True
            while i < n:
                d = self._read_reg(reg)
                reg = (reg + 1) & 0xFF
                out[i] = d
                i += 1
                if i < n:
                    if first:
                        out[i] = checks.crc8(bytes([(self.addr << 1) | 1, d]))
                    else:
                        out[i] = checks.crc8(bytes([d]))
                    i += 1
                first = False
        self.ptr = reg
        return bytes(out)

    def _read_reg(self, reg):
        if reg >= len(self.regs):
            return 0
        if CELLBAL1 + 1 <= reg <= CELLBAL1 + 2 and (reg - CELLBAL1) * 5 >= self.n_ch:
            return 0  # CELLBAL2/3 only on the bigger variants
        return self.regs[reg]

    def _write_reg(self, reg, val):
        r = self.regs
        if reg == SYS_STAT:
            if val & 0xBF & r[SYS_STAT]:
                r[SYS_STAT] &= ~(val & 0xBF) & 0xFF  # write 1 to clear; bit 6 reserved
                self._update_alert()
            return
        if CELLBAL1 <= reg <= CELLBAL1 + 2:
            if (reg - CELLBAL1) * 5 >= self.n_ch:
                return  # no such register on this variant
            v = val & 0x1F
            if v & (v >> 1):
                self.adjacent_writes += 1  # applied anyway: the host's job (datasheet)
            if r[reg] != v:
                r[reg] = v
                self.world.changed()
            return
        mask = _WRITE_MASK.get(reg)
        if mask is None:
            return  # read-only (measurements, trim) or reserved: ignored
        if reg == SYS_CTRL1:
            self._shut(val & 0x03)
            r[reg] = (r[reg] & ~mask & 0xFF) | (val & mask)
            return
        if reg == SYS_CTRL2:
            st = r[SYS_STAT]
            v = val & mask
            if st & _HOLD_CHG:
                v &= ~CHG_ON
            if st & _HOLD_DSG:
                v &= ~DSG_ON
            if v & CC_ONESHOT and not v & CC_EN:
                self._start_oneshot()
            old = r[reg]
            r[reg] = v
            if (old ^ v) & CC_EN and v & CC_EN:
                self._restart_cc()
            if (old ^ v) & (CHG_ON | DSG_ON):
                self._fets_changed()
            return
        r[reg] = val & mask

    def _shut(self, bits):
        # SHUT_A/SHUT_B: 00, then 01, then 10 in consecutive SYS_CTRL1 writes.
        if bits == 0:
            self._shut_seq = 1
        elif bits == 1 and self._shut_seq == 1:
            self._shut_seq = 2
        elif bits == 2 and self._shut_seq == 2:
            self._enter_ship()
        else:
            self._shut_seq = 0

    def _enter_ship(self):
        r = self.regs
        r[SYS_CTRL2] &= ~(CHG_ON | DSG_ON) & 0xFF
        self.ship = True
        self._update_alert()
        self._fets_changed()

    # ------------------------------------------------------------------
    # Time: conversions and protection
    # ------------------------------------------------------------------

    def _hook(self, _dt_ms):
        self._catch_up()

    def comparators(self):
        """Run the current comparators on what flows now (and any conversion
        due). The world may call this whenever the current changes, as the
        real comparators watch the shunt all the time; the step hooks call it
        before and after every physics step anyway."""
        self._catch_up()

    def _sensed_ma(self):
        return float(self.world.sensed_current_ma())

    def _catch_up(self):
        # Run every 250 ms cycle that is due, then the current comparators on
        # the current flowing now.
        if self.ship or self._busy:
            return
        self._busy = True
        try:
            self._run_to(self.world.time_us())
        finally:
            self._busy = False

    def _run_to(self, now):
        if self._i_ma is None:
            self._i_ma = self._sensed_ma()
        while self._next_cycle <= now:
            t = self._next_cycle
            self._cc_acc += self._i_ma * (t - self._t)
            self._t = t
            self._cycle(t)
            self._next_cycle = t + _CYCLE_US
        if now > self._t:
            self._cc_acc += self._i_ma * (now - self._t)
            self._t = now
        self._i_ma = self._sensed_ma()
        self._current_protection(now)
        self._override(now)

    def _start_oneshot(self):
        self._oneshot = True
        self._restart_cc()

    def _restart_cc(self):
        self._cc_acc = 0.0
        self._cc_from = self._t

    def _cycle(self, t):
        r = self.regs
        self._cycles += 1
        c1 = r[SYS_CTRL1]
        if c1 & ADC_EN:
            self._convert_cells()
            self._voltage_protection(t)
        # Temperatures: shortly after power-up, then every 2 s, ADC_EN or not
        # for the first (the die sensor), with ADC_EN afterwards.
        if self._cycles % _TEMP_EVERY == 1 and (c1 & ADC_EN or self._cycles == 1):
            self._convert_temps(c1 & TEMP_SEL)
        c2 = r[SYS_CTRL2]
        if c2 & CC_EN or self._oneshot:
            span = t - self._cc_from
            if span > 0:
                avg_ma = self._cc_acc / span
                uv = avg_ma * self.shunt_uohm / 1000.0
                code = int(round(uv / _CC_UV_PER_LSB))
                code = max(-32768, min(32767, code))
                code &= 0xFFFF
                r[CC_HI] = code >> 8
                r[CC_HI + 1] = code & 0xFF
                self._set_stat(CC_READY)
            self._cc_acc = 0.0
            self._cc_from = t
            if self._oneshot and not c2 & CC_EN:
                self._oneshot = False
                r[SYS_CTRL2] &= ~CC_ONESHOT & 0xFF

    def _cell_uv(self, k):
        # Pack cell k as the ADC sees it: balancing is suspended for the
        # measurement slot, so its own bleed drop is not in the reading.
        w = self.world
        v = w.cell_input_mv(k)
        if self.bleed_mask() >> k & 1:
            try:
                v += w.pack.cell_mv(k, w.current_a) - w.cell_true_mv(k)
            except AttributeError:
                pass
        return v * 1000.0

    def _convert_cells(self):
        r = self.regs
        off_uv = self.offset * 1000.0
        total = 0
        for c in range(self.n_ch):
            k = self.channel_cell[c]
            uv = self._cell_uv(k) if k >= 0 else 0.0
            code = int(round((uv - off_uv) / self.gain))
            code = max(0, min(0x3FFF, code))
            self.codes[c] = code
            r[VC1_HI + 2 * c] = code >> 8
            r[VC1_HI + 2 * c + 1] = code & 0xFF
            total += code
        bat = min(0xFFFF, total // 4)
        r[BAT_HI] = bat >> 8
        r[BAT_HI + 1] = bat & 0xFF

    def _ts_uv(self, i, external):
        if external:
            src = self.ts_source[i]
            if src is None:
                ohm = float("inf")  # nothing on the pin: only the pull-up
            elif src[0] == "ntc":
                ohm = self.world.ntc_ohm(src[1])
            else:
                ohm = self.world.board_ntc_ohm()
            if ohm == float("inf"):
                return _TS_VREF_UV
            return _TS_VREF_UV * ohm / (ohm + _TS_PULLUP_OHM)
        try:
            die_c = self.world.board_temp()
        except AttributeError:
            die_c = 25.0
        return 1200000.0 - 4200.0 * (die_c - 25.0)

    def _convert_temps(self, external):
        r = self.regs
        for i in range(self.n_ts):
            code = int(round(self._ts_uv(i, external) / _TS_UV_PER_LSB))
            code = max(0, min(0x3FFF, code))
            r[TS1_HI + 2 * i] = code >> 8
            r[TS1_HI + 2 * i + 1] = code & 0xFF

    def _voltage_protection(self, t):
        r = self.regs
        ov_at = ov_full(r[OV_TRIP])
        uv_at = uv_full(r[UV_TRIP])
        ignore = (_UV_IGNORE_MV * 1000 - self.offset * 1000) // self.gain
        ov = False
        uv = False
        for code in self.codes:
            if code >= ov_at:
                ov = True
            if ignore < code <= uv_at:
                uv = True
        p3 = r[PROTECT3]
        nodelay = r[SYS_CTRL2] & DELAY_DIS
        self._ov_since = self._timed(ov, self._ov_since, t, OV_DELAY_S[(p3 >> 4) & 3] * 1000000, nodelay, OV)
        self._uv_since = self._timed(uv, self._uv_since, t, UV_DELAY_S[(p3 >> 6) & 3] * 1000000, nodelay, UV)

    def _timed(self, cond, since, t, delay_us, nodelay, bit):
        # A condition that has lasted its delay (or any time, nodelay) sets
        # its bit; the timer runs on while it lasts, so a bit cleared by the
        # host comes back at once.
        if not cond:
            return None
        if since is None:
            since = t
        if nodelay or t - since >= delay_us:
            self._set_stat(bit)
        return since

    def _current_protection(self, now):
        r = self.regs
        p1 = r[PROTECT1]
        p2 = r[PROTECT2]
        rsns = 1 if p1 & 0x80 else 0
        # Shunt voltage in uV, + = discharge (SRN above SRP).
        v_uv = -self._i_ma * self.shunt_uohm / 1000.0
        scd_uv = SCD_MV[rsns][p1 & 0x07] * 1000.0
        ocd_uv = OCD_MV[rsns][p2 & 0x0F] * 1000.0
        # SCD_DELAY (70..400 us) is below the world's 1 ms resolution: a
        # short seen is a short tripped, before the next step lets it flow.
        self._scd_since = self._timed(v_uv >= scd_uv, self._scd_since, now,
                                      SCD_DELAY_US[(p1 >> 3) & 3], True, SCD)
        self._ocd_since = self._timed(v_uv >= ocd_uv, self._ocd_since, now,
                                      OCD_DELAY_MS[(p2 >> 4) & 7] * 1000, False, OCD)

    def _override(self, now):
        # OVRD_ALERT: something other than the chip pulls ALERT high (the
        # MCU driving the pin as an output).
        pin = self.alert_pin
        if pin is None or self._alert_level:
            return
        out = getattr(self.world, "pin_out", None)
        if out is not None and out.get(pin) == 1:
            self._set_stat(OVRD_ALERT)

    def _set_stat(self, bits):
        r = self.regs
        if r[SYS_STAT] & bits == bits:
            return
        r[SYS_STAT] |= bits
        c2 = r[SYS_CTRL2]
        new = c2
        if bits & _HOLD_CHG:
            new &= ~CHG_ON & 0xFF
        if bits & _HOLD_DSG:
            new &= ~DSG_ON & 0xFF
        if new != c2:
            r[SYS_CTRL2] = new
            self._fets_changed()
        self._update_alert()

    def _fets_changed(self):
        # The gate outputs may have switched: what flows changes, and the
        # world's record of gate changes (kept from gate-pin watchers on
        # boards with GPIO-driven FETs) gets the time of each one.
        w = self.world
        w.changed()
        now = (self.fet_on("chg"), self.fet_on("dsg"))
        seen = getattr(self, "_fets_seen", (False, False))
        self._fets_seen = now
        g = getattr(w, "gate_changed_ms", None)
        if g is not None:
            if now[0] != seen[0]:
                g["chg"] = w.now_ms
            if now[1] != seen[1]:
                g["dsg"] = w.now_ms

    def _update_alert(self):
        level = 1 if (self.regs[SYS_STAT] and not self.ship) else 0
        if level != self._alert_level:
            self._alert_level = level
            if self.alert_pin is not None:
                self.world.set_input(self.alert_pin, level)
