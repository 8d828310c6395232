# TI INA226 current and bus-voltage monitor on I2C (SBOS547): the pack
# current through a shunt, the pack voltage on VBUS, and a latched shunt
# under-voltage alert (a discharge short) on its open-drain ALERT pin.
#
# 16-bit registers, MSB first, no CRC. read() and the set paths allocate
# nothing: one preallocated 2-byte buffer each way, readfrom_mem_into and
# writeto_mem, small-int arithmetic only.
from micropython import const

from bms.afe import ChipReset

_REG_CONFIG = const(0x00)
_REG_SHUNT = const(0x01)
_REG_BUS = const(0x02)
_REG_CURRENT = const(0x04)
_REG_CAL = const(0x05)
_REG_MASK = const(0x06)
_REG_LIMIT = const(0x07)
_REG_MFR_ID = const(0xFE)
_REG_DIE_ID = const(0xFF)

_MFR_ID = const(0x5449)  # "TI"
_DIE_ID = const(0x2260)
_CONFIG_POR = const(0x4127)
_RST = const(0x8000)

# Configuration: AVG = 16 (010), VBUSCT = VSHCT = 588 us (011), shunt and bus
# continuous (111): a new averaged result every 16 x (588 + 588) us = 18.8 ms,
# five or so per 100 ms tick. The alert compares every single shunt
# conversion, so it answers within about 2 x 588 + 588 us whatever the
# averaging. Bit 14 reads 1 (its power-on value); it is written so.
_CONFIG = const(0x4000 | (2 << 9) | (3 << 6) | (3 << 3) | 7)

# Mask/Enable
_SUL = const(0x4000)  # alert when a shunt conversion is below the limit
_AFF = const(0x0010)
_CVRF = const(0x0008)
_LEN = const(0x0001)  # latched: AFF and the pin stay until Mask/Enable is read
_MASK_SETTABLE = const(0xFC03)

_TRIES = const(3)  # the transfer and at most two retries
_ERR_CAP = const(0x3FFFFFFF)


def _cal_for(lsb_ua, shunt_uohm):
    # CAL = 0.00512 / (Current_LSB x R_shunt) = 2048 x 2500000 / (lsb_ua x uohm),
    # by long division so every intermediate stays a small int.
    d = lsb_ua * shunt_uohm
    q = 2500000 // d
    r = 2500000 % d
    for _ in range(11):
        r <<= 1
        q <<= 1
        if r >= d:
            r -= d
            q += 1
    return q


class Ina226:
    def __init__(self, i2c, addr=0x40, shunt_uohm=500):
        if shunt_uohm <= 0:
            raise ValueError("shunt_uohm must be > 0")
        self.i2c = i2c
        self.addr = addr
        self.shunt_uohm = shunt_uohm
        # Full scale 81.92 mV across the shunt, in mA.
        self.current_max_ma = 81920000 // shunt_uohm
        # Current_LSB >= full scale / 2**15 = 2.5 uV / R, rounded up to a
        # whole uA so the register's range covers the shunt's full scale.
        self.lsb_ua = (2500000 + shunt_uohm - 1) // shunt_uohm
        self._lsb_ma = self.lsb_ua // 1000
        self._lsb_frac = self.lsb_ua % 1000
        self.cal = _cal_for(self.lsb_ua, shunt_uohm)
        self.bus_errors = 0
        self.crc_errors = 0  # no CRC on this chip; kept for the status counters
        self.current_ma = 0
        self.bus_mv = 0
        self.alert = False
        self.alert_ma = 0
        self._mask = 0  # Mask/Enable as programmed (settable bits)
        self._limit = 0  # Alert Limit as programmed (16-bit pattern)
        self._limit_raw = 0  # the same, signed shunt LSBs
        self._rbuf = bytearray(2)
        self._wbuf = bytearray(2)

    # -- transfers (bounded retries; allocation only on the error path) --

    def _bus_error(self):
        if self.bus_errors < _ERR_CAP:
            self.bus_errors += 1

    def _rd(self, reg):
        buf = self._rbuf
        n = 0
        while True:
            try:
                self.i2c.readfrom_mem_into(self.addr, reg, buf)
                return (buf[0] << 8) | buf[1]
            except OSError:
                self._bus_error()
                n += 1
                if n >= _TRIES:
                    raise

    def _wr(self, reg, v):
        buf = self._wbuf
        buf[0] = (v >> 8) & 0xFF
        buf[1] = v & 0xFF
        n = 0
        while True:
            try:
                self.i2c.writeto_mem(self.addr, reg, buf)
                return
            except OSError:
                self._bus_error()
                n += 1
                if n >= _TRIES:
                    raise

    # -- set-up --

    def init(self):
        """Check the chip, reset it, program conversions and calibration
        (and the alert, if one was set before). OSError if it is not there."""
        if self._rd(_REG_MFR_ID) != _MFR_ID or self._rd(_REG_DIE_ID) != _DIE_ID:
            raise OSError("INA226 not found at 0x%02x" % self.addr)
        self._wr(_REG_CONFIG, _RST)  # every register to its power-on value
        self._wr(_REG_CONFIG, _CONFIG)
        self._wr(_REG_CAL, self.cal)
        if self._rd(_REG_CAL) != self.cal or self._rd(_REG_CONFIG) != _CONFIG:
            raise OSError("INA226 at 0x%02x: configuration did not read back" % self.addr)
        self.current_ma = 0
        self.bus_mv = 0
        self.set_alert_ma(self.alert_ma)

    def set_alert_ma(self, ma):
        """Latched alert, pin active low, when a shunt conversion shows more
        than ma of discharge (shunt under-voltage at -ma); 0 turns it off."""
        if ma < 0:
            raise ValueError("alert current must be >= 0")
        self.alert_ma = ma
        if ma == 0:
            mask = 0
            raw = 0
        else:
            # mA x uOhm / 1000 = uV, split so no product reaches 2**30;
            # then 2.5 uV per LSB, rounded.
            s = self.shunt_uohm
            uv = (ma // 1000) * s + ((ma % 1000) * s + 500) // 1000
            raw = (uv * 2 + 2) // 5
            if raw > 32767:
                raw = 32767  # beyond the shunt's range: trips at saturation
            mask = _SUL | _LEN
        limit = (-raw) & 0xFFFF
        self._wr(_REG_LIMIT, limit)
        self._wr(_REG_MASK, mask)
        self._mask = mask
        self._limit = limit
        self._limit_raw = -raw
        # Reading Mask/Enable back also releases a latch left from before.
        if self._rd(_REG_LIMIT) != limit or self._rd(_REG_MASK) & _MASK_SETTABLE != mask:
            raise OSError("INA226 at 0x%02x: alert setting did not read back" % self.addr)

    # -- per tick --

    def read(self):
        """True if a new averaged result was ready (then current_ma, bus_mv
        are updated); False if not. alert latches the chip's alert flag.
        OSError after the retries; ChipReset if the chip lost its set-up."""
        if self._rd(_REG_CONFIG) != _CONFIG or self._rd(_REG_CAL) != self.cal:
            raise ChipReset("INA226 reset")
        me = self._rd(_REG_MASK)  # clears CVRF and the chip's alert latch
        if me & _MASK_SETTABLE != self._mask:
            raise ChipReset("INA226 alert setting lost")
        if me & _AFF:
            self.alert = True
        if not me & _CVRF:
            return False
        c = self._rd(_REG_CURRENT)
        bus = self._rd(_REG_BUS)
        neg = c & 0x8000
        if neg:
            c = 0x10000 - c
        ma = c * self._lsb_ma + (c * self._lsb_frac + 500) // 1000
        self.current_ma = -ma if neg else ma
        self.bus_mv = (bus * 5 + 2) >> 2  # 1.25 mV per LSB
        return True

    def clear_alert(self):
        """Release the latch; True if the over-current is gone (the latest
        averaged shunt voltage is inside the limit and no new conversion
        tripped since), else the alert stays latched."""
        self._rd(_REG_MASK)  # releases AFF and the pin
        if not self._mask:
            self.alert = False
            return True
        sh = self._rd(_REG_SHUNT)
        if sh & 0x8000:
            sh -= 0x10000
        still = sh < self._limit_raw or bool(self._rd(_REG_MASK) & _AFF)
        self.alert = still
        return not still


def from_board_current(b, machine):
    """The board's INA226 (not yet init()ed), or None if it has none."""
    cur = b.get("current") or {}
    c = cur.get("ina226")
    if c is None:
        return None
    i2c = machine.I2C(c["i2c"], sda=machine.Pin(c["sda"]), scl=machine.Pin(c["scl"]), freq=c.get("freq", 400000))
    return Ina226(i2c, c.get("addr", 0x40), c.get("shunt_uohm", 500))
