"""TI INA226 current/power monitor (SBOS547), register-level model.

Written from the datasheet, not from a driver:

- I2C, 16-bit registers sent MSB first, no CRC. The first data byte of a
  write sets the register pointer; two more bytes write the register it
  points at. A read returns the register at the pointer (the pointer stays).
  Read-only registers acknowledge a write and ignore it.
- Registers: 00h Configuration (POR 4127h; RST bit 15 resets every register
  and self-clears; AVG bits 11-9, VBUSCT 8-6, VSHCT 5-3, MODE 2-0), 01h Shunt
  Voltage (signed, 2.5 uV/LSB, +-81.92 mV), 02h Bus Voltage (1.25 mV/LSB,
  0..40.96 V, D15 always 0), 03h Power (unsigned, 25 x Current_LSB),
  04h Current (signed), 05h Calibration (FS14..FS0; D15 reads 0),
  06h Mask/Enable, 07h Alert Limit, FEh Manufacturer ID 5449h, FFh Die ID
  2260h.
- Conversions: in the continuous modes the ADC converts the shunt voltage
  (VSHCT) then the bus voltage (VBUSCT), over and over; after AVG such
  samples the averages are loaded into the output registers at once and
  CVRF is set. The triggered modes do one such set after the Configuration
  write, then stop; the power-down modes convert nothing. Writing the
  Configuration register halts the conversion in progress and starts over.
- Current = Shunt x CAL / 2048 and Power = Current x Bus / 20000 are computed
  per sample and averaged with the voltages; with CAL = 0 both stay 0.
- Alert: the highest selected of SOL, SUL, BOL, BUL, POL (Mask/Enable bits
  15..11) is compared with the Alert Limit after every single conversion
  (not the average; TI E2E 856374/801705); a trip sets AFF. Transparent
  (LEN = 0): AFF and the pin follow the last comparison. Latched (LEN = 1):
  AFF and the pin stay active until Mask/Enable is read. CNVR also drives the
  pin while CVRF is set. Reading Mask/Enable clears CVRF (and AFF when
  latched); writing Configuration (except power-down) clears CVRF. The pin is
  open drain, active low (APOL = 0) or inverted (APOL = 1).

Simulation: the inputs (world.sensed_current_ma() through the shunt, and
world.pack_terminal_mv() on VBUS when the board wires it there) are sampled
and held at every sync point (a bus transfer, a physics step hook) and every
conversion that ends before the next sync uses the held values. The ALERT
line is driven at the end of each sync, so it follows a short with the
world's step resolution.

Runs under CPython and MicroPython.
"""

REG_CONFIG = 0x00
REG_SHUNT = 0x01
REG_BUS = 0x02
REG_POWER = 0x03
REG_CURRENT = 0x04
REG_CAL = 0x05
REG_MASK = 0x06
REG_LIMIT = 0x07
REG_MFR_ID = 0xFE
REG_DIE_ID = 0xFF

CONFIG_POR = 0x4127
MFR_ID = 0x5449
DIE_ID = 0x2260

RST = 0x8000
_CONFIG_FIXED = 0x4000  # bits 14..12 read 100b: not writable here

SOL = 0x8000
SUL = 0x4000
BOL = 0x2000
BUL = 0x1000
POL = 0x0800
CNVR = 0x0400
AFF = 0x0010
CVRF = 0x0008
OVF = 0x0004
APOL = 0x0002
LEN = 0x0001
_MASK_WRITABLE = SOL | SUL | BOL | BUL | POL | CNVR | APOL | LEN

AVERAGES = (1, 4, 16, 64, 128, 256, 512, 1024)
CONV_US = (140, 204, 332, 588, 1100, 2116, 4156, 8244)

SHUNT_LSB_UV = 2.5
BUS_LSB_MV = 1.25


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


def _div_round(a, n):
    # Average of n integer samples, rounded half away from zero.
    if a < 0:
        return -((-a + n // 2) // n)
    return (a + n // 2) // n


def _signed(v):
    return v - 0x10000 if v & 0x8000 else v


class Ina226:
    afe = False  # a current monitor, not the board's front-end

    def __init__(self, world, shunt_uohm, bus_on_pack=False, alert_pin=None, alert_idle=1):
        self.world = world
        self.shunt_uohm = shunt_uohm
        self.bus_on_pack = bus_on_pack
        self.alert_pin = alert_pin
        self.alert_idle = alert_idle  # level of the line when the open drain lets go (the pull)
        self.nack = False  # test hook: the chip does not acknowledge its address
        self.nack_next = 0  # test hook: only the next n address phases go unacknowledged
        self.resets = 0  # power-on and RST resets so far
        self._in_sync = False
        # Built while the world is still being wired: the line idles at the
        # board's pull (the world set it), the inputs are read at the first sync.
        self._pin_level = alert_idle
        self._in_sh = 0
        self._in_bus = 0
        self._held = False
        self._reset_registers()

    # ------------------------------------------------------------------
    # Reset and configuration
    # ------------------------------------------------------------------

    def power_on_reset(self):
        """Every register to its power-on value; conversions restart (mode 7)."""
        self._run_to(self._now())
        self._reset_registers()
        self._hold_inputs()
        self._drive_pin()

    def _reset_registers(self):
        self.config = CONFIG_POR
        self.shunt = 0
        self.bus = 0
        self.power = 0
        self.current = 0
        self.cal = 0
        self.mask = 0
        self.limit = 0
        self.pointer = 0
        self.resets += 1
        self._restart(self._now())

    def _now(self):
        return self.world.time_us()

    def _restart(self, now):
        # A new set of conversions per the Configuration register, from now.
        self._k = 0  # samples completed in this averaging block
        self._acc_sh = self._acc_bus = self._acc_cur = self._acc_pow = 0
        self._ovf = False
        self._last_cur = 0
        mode = self.config & 7
        self._running = (mode & 3) != 0
        self._triggered = mode < 4
        self._n = AVERAGES[(self.config >> 9) & 7]
        self._t_sh = CONV_US[(self.config >> 3) & 7]
        self._t_bus = CONV_US[(self.config >> 6) & 7]
        self._meas = mode & 3  # 1: shunt, 2: bus, 3: both
        self._start_phase = 0 if self._meas & 1 else 1
        self._phase = self._start_phase
        self._block_start = now
        self._next_us = now + self._first_conv_us()

    def _first_conv_us(self):
        # 0: the next conversion to end is the shunt one, 1: the bus one
        return self._t_sh if self._phase == 0 else self._t_bus

    def _sample_us(self):
        m = self._meas
        return (self._t_sh if m & 1 else 0) + (self._t_bus if m & 2 else 0)

    def _write_config(self, v):
        now = self._now()
        self._run_to(now)
        if v & RST:
            self.power_on_reset()
            return
        self.config = _CONFIG_FIXED | (v & 0x0FFF)
        if self.config & 3:  # not a power-down mode
            self.mask &= ~CVRF
        self._restart(now)

    # ------------------------------------------------------------------
    # I2C
    # ------------------------------------------------------------------

    def _nacks(self):
        if self.nack_next > 0:
            self.nack_next -= 1
            return True
        return self.nack

    def i2c_write(self, data, stop=True):
        if self._nacks():
            return -1
        self._sync()
        if not data:
            return 0
        self.pointer = data[0]
        if len(data) >= 3:
            self._write(self.pointer, (data[1] << 8) | data[2])
            self._sync()
        # The chip acknowledges every byte; a lone byte after the pointer
        # is not a complete register write and changes nothing.
        return len(data)

    def i2c_read(self, n, stop=True):
        if self._nacks():
            return None
        self._sync()
        v = self._read(self.pointer)
        out = bytearray(n)
        for i in range(n):
            out[i] = (v >> 8) & 0xFF if i % 2 == 0 else v & 0xFF
        return bytes(out)

    def _write(self, reg, v):
        if reg == REG_CONFIG:
            self._write_config(v)
        elif reg == REG_CAL:
            self.cal = v & 0x7FFF
        elif reg == REG_MASK:
            self.mask = (self.mask & ~_MASK_WRITABLE) | (v & _MASK_WRITABLE)
        elif reg == REG_LIMIT:
            self.limit = v & 0xFFFF
        # 01h-04h, FEh, FFh are read-only: the write is acknowledged and ignored.

    def _read(self, reg):
        if reg == REG_CONFIG:
            return self.config
        if reg == REG_SHUNT:
            return self.shunt & 0xFFFF
        if reg == REG_BUS:
            return self.bus
        if reg == REG_POWER:
            return self.power
        if reg == REG_CURRENT:
            return self.current & 0xFFFF
        if reg == REG_CAL:
            return self.cal
        if reg == REG_MASK:
            v = self.mask
            # Reading clears the conversion-ready flag and, latched, the alert.
            self.mask &= ~CVRF
            if self.mask & LEN:
                self.mask &= ~AFF
            self._drive_pin()
            return v
        if reg == REG_LIMIT:
            return self.limit
        if reg == REG_MFR_ID:
            return MFR_ID
        if reg == REG_DIE_ID:
            return DIE_ID
        return 0  # no register there

    # ------------------------------------------------------------------
    # Time: conversions up to now, with the inputs held since the last sync
    # ------------------------------------------------------------------

    def _on_step(self, _dt_ms):
        self._sync()

    def _sync(self):
        if self._in_sync:
            return
        self._in_sync = True
        try:
            if not self._held:  # first sync: the inputs as they have been since the start
                self._hold_inputs()
            self._run_to(self._now())
            self._drive_pin()  # may fire the MCU's IRQ, which may switch FETs
            self._hold_inputs()
            self.refresh_alert()  # the line is the chip's, whatever drove it meanwhile
        finally:
            self._in_sync = False

    def _hold_inputs(self):
        w = self.world
        self._held = True
        uv = w.sensed_current_ma() * self.shunt_uohm / 1000.0
        self._in_sh = int(_clamp(round(uv / SHUNT_LSB_UV), -32768, 32767))
        mv = w.pack_terminal_mv() if self.bus_on_pack else 0.0
        self._in_bus = int(_clamp(round(mv / BUS_LSB_MV), 0, 32767))

    def _run_to(self, now):
        while self._running and self._next_us <= now:
            if self._k == 0 and self._phase == self._start_phase and not self._triggered:
                block = self._n * self._sample_us()
                whole = (now - self._block_start) // block
                if whole >= 1:
                    # Whole averaging blocks with the same held inputs: each
                    # ends with the same registers and comparisons.
                    self._constant_block()
                    self._block_start += whole * block
                    self._next_us = self._block_start + self._first_conv_us()
                    continue
            self._conversion_done()

    def _current_of(self, sh):
        if self.cal == 0:
            return 0, False
        p = sh * self.cal
        c = p // 2048 if p >= 0 else -((-p) // 2048)  # truncated toward zero
        if c > 32767 or c < -32768:
            return _clamp(c, -32768, 32767), True
        return c, False

    def _power_of(self, cur, bus):
        if self.cal == 0:
            return 0, False
        p = abs(cur) * bus // 20000
        if p > 0xFFFF:
            return 0xFFFF, True
        return p, False

    def _conversion_done(self):
        meas = self._meas
        if self._phase == 0:
            sh = self._in_sh
            cur, ovf = self._current_of(sh)
            self._ovf = self._ovf or ovf
            self._acc_sh += sh
            self._acc_cur += cur
            self._last_cur = cur
            self._compare_shunt(sh)
            if meas & 2:
                self._phase = 1
                self._next_us += self._t_bus
                return
        else:
            bus = self._in_bus
            pw, ovf = self._power_of(self._last_cur, bus)
            self._ovf = self._ovf or ovf
            self._acc_bus += bus
            self._acc_pow += pw
            self._compare_bus(bus, pw)
        # one sample complete
        self._k += 1
        if self._k >= self._n:
            self._load_block()
            self._block_start = self._next_us
            if self._triggered:
                self._running = False
                return
        self._phase = self._start_phase
        self._next_us += self._first_conv_us()

    def _load_block(self):
        n = self._n
        meas = self._meas
        if meas & 1:
            self.shunt = _div_round(self._acc_sh, n)
            self.current = _div_round(self._acc_cur, n)
        if meas & 2:
            self.bus = _div_round(self._acc_bus, n)
            self.power = _div_round(self._acc_pow, n)
        self._finish_block(self._ovf)
        self._k = 0
        self._acc_sh = self._acc_bus = self._acc_cur = self._acc_pow = 0
        self._ovf = False

    def _constant_block(self):
        meas = self._meas
        ovf = False
        if meas & 1:
            self.shunt = self._in_sh
            self.current, ovf = self._current_of(self._in_sh)
            self._last_cur = self.current
            self._compare_shunt(self._in_sh)
        if meas & 2:
            self.bus = self._in_bus
            self.power, o2 = self._power_of(self._last_cur, self._in_bus)
            ovf = ovf or o2
            self._compare_bus(self._in_bus, self.power)
        self._finish_block(ovf)

    def _finish_block(self, ovf):
        m = self.mask | CVRF
        self.mask = (m | OVF) if ovf else (m & ~OVF)

    # ------------------------------------------------------------------
    # Alert function
    # ------------------------------------------------------------------

    def _function(self):
        m = self.mask
        for bit in (SOL, SUL, BOL, BUL, POL):
            if m & bit:
                return bit
        return 0

    def _flag(self, tripped):
        if tripped:
            self.mask |= AFF
        elif not self.mask & LEN:
            self.mask &= ~AFF  # transparent: a conversion without the condition clears it

    def _compare_shunt(self, sh):
        f = self._function()
        lim = _signed(self.limit)
        if f == SOL:
            self._flag(sh > lim)
        elif f == SUL:
            self._flag(sh < lim)

    def _compare_bus(self, bus, pw):
        f = self._function()
        if f == BOL:
            self._flag(bus > self.limit)
        elif f == BUL:
            self._flag(bus < self.limit)
        elif f == POL:
            self._flag(pw > self.limit)

    def alert_active(self):
        """True while the chip asserts its ALERT output (whatever the polarity)."""
        m = self.mask
        return bool(m & AFF) or bool(m & CNVR and m & CVRF)

    def alert_level(self):
        """Level of the ALERT line: pulled low by the open drain, or the pull."""
        on = self.alert_active()
        if self.mask & APOL:
            on = not on  # inverted: the drain conducts while there is no alert
        return 0 if on else self.alert_idle

    def _drive_pin(self):
        if self.alert_pin is None:
            return
        level = self.alert_level()
        if level != self._pin_level:
            self._pin_level = level
            self.world.set_input(self.alert_pin, level)

    def refresh_alert(self):
        """Drive the line again (after something else drove it)."""
        self._pin_level = None
        self._drive_pin()

    # ------------------------------------------------------------------
    # For the world and `sim show`
    # ------------------------------------------------------------------

    def hw_state(self):
        self._sync()
        return {
            "alert": self.alert_active(),
            "aff": bool(self.mask & AFF),
            "mode": self.config & 7,
            "cal": self.cal,
            "shunt_uv": self.shunt * SHUNT_LSB_UV,
            "bus_mv": self.bus * BUS_LSB_MV,
        }


def attach(world, board):
    """Build the board's INA226 from board["current"]["ina226"] and put it on its bus."""
    cfg = board["current"]["ina226"]
    alert = board.get("alert") or {}
    pin = alert["pin"] if alert.get("source") == "ina226" else None
    idle = 1 if alert.get("active_low", True) else 0
    dev = Ina226(world, cfg["shunt_uohm"], board.get("pack_tap") == {"ina226": "bus"}, pin, idle)
    world.add_i2c_device(cfg["i2c"], cfg["addr"], dev)
    world.step_hooks.append(dev._on_step)
    return dev
