# Direct-ADC front-end: cell voltages read by the MCU ADC, either as
# cumulative taps on resistor dividers (small packs) or as one difference
# amplifier per cell behind an analog multiplexer (up to 16S), a shunt
# amplifier for current, NTC dividers, an optional pack-voltage divider, FETs
# on GPIO, bleeders on GPIO or on a 74HC595 chain, and an optional comparator
# output (short circuit) on an alert pin.
#
# All machine objects are passed in. Readings are summed over `oversample`
# samples; every product stays below 2**30 so nothing allocates on ports
# whose small ints are 31 bits.
import time

from micropython import const

from bms.afe import Afe, NTC_OK, NTC_OPEN, NTC_SHORT, HW_SCD
from bms.drivers.gpio_fets import GpioFets
from bms.ntc import OPEN_DC, SHORT_DC

_LIMIT = 1 << 30
_INA_STALE_MS = const(1000)  # an INA226 converts every ~19 ms; a second without a result is a stopped chip


class Linear:
    """y = x_uv * factor / 1000 + offset, rounded, in integer fixed point.

    x_uv is split into its mV and uV parts so each product stays a small int
    for pin voltages up to 4 V.
    """

    def __init__(self, factor, offset=0):
        self.neg = factor < 0
        f = -factor if self.neg else factor
        shift = 14
        while shift and int(f * (1 << shift)) * 4000 >= _LIMIT:
            shift -= 1
        self.mul = int(f * (1 << shift) + 0.5)
        self.shift = shift
        self.half = (1 << shift) >> 1
        self.offset = offset

    def apply(self, x_uv):
        neg = self.neg
        if x_uv < 0:
            x_uv = -x_uv
            neg = not neg
        mul = self.mul
        y = ((x_uv // 1000) * mul + (x_uv % 1000) * mul // 1000 + self.half) >> self.shift
        return (-y if neg else y) + self.offset


class Mux:
    """An analog multiplexer (CD74HC4067: 16 inputs, 4 select lines) in front
    of one ADC input. select() only drives the lines that change, then waits
    for the input to settle through the source impedance."""

    def __init__(self, select_pins, settle_us=20):
        self.pins = select_pins
        self.settle_us = settle_us
        self.addr = -1

    def select(self, addr):
        if addr == self.addr:
            return
        pins = self.pins
        old = self.addr
        for i in range(len(pins)):
            bit = (addr >> i) & 1
            if old < 0 or bit != (old >> i) & 1:
                pins[i].value(bit)
        self.addr = addr
        time.sleep_us(self.settle_us)


class Channel:
    """One ADC input, oversampled, returning microvolts at the pin; with a
    mux, the mux input `addr` is selected first.

    A reading at the top of the ADC's range is not a voltage but "at least
    this much": `saturated` says so, and the driver treats it as unknown.
    """

    def __init__(self, adc, oversample, read_uv, vref_uv=3300000, max_uv=None, mux=None, addr=0):
        self.adc = adc
        self.mux = mux
        self.addr = addr
        self.n = oversample
        self.read_uv = read_uv
        # read_u16 path: uV = raw * k >> 8; 65535 * k < 2**30 for vref <= 4.1 V.
        self.k = (vref_uv * 256 + 32767) // 65535
        top = max_uv if max_uv is not None else vref_uv
        self.sat_uv = top - top // 100
        self.saturated = False

    def uv(self):
        if self.mux is not None:
            self.mux.select(self.addr)
        adc = self.adc
        s = 0
        if self.read_uv:
            for _ in range(self.n):
                s += adc.read_uv()
            v = s // self.n
        else:
            for _ in range(self.n):
                s += adc.read_u16()
            v = (s // self.n * self.k) >> 8
        self.saturated = v >= self.sat_uv
        return v


class PinBleeders:
    """One GPIO per bleeder transistor; bit 0 = cell 1."""

    def __init__(self, pins):
        self.pins = pins
        self.n = len(pins)

    def set(self, mask):
        pins = self.pins
        for i in range(self.n):
            pins[i].value((mask >> i) & 1)


class ShiftBleeders:
    """Bleeders on a chain of 74HC595 shift registers on SPI (8 per chip):
    bytes shift through the chain, a rising edge on the latch (RCLK) moves
    them to the outputs. /OE is pulled up on the board, so the outputs are
    off through reset and boot; the driver holds it high whenever nothing
    should bleed, so "all off" does not depend on the SPI write working,
    and drives it low only after the registers hold the wanted bits."""

    def __init__(self, spi, latch_pin, oe_pin, count):
        self.spi = spi
        self.latch = latch_pin
        self.oe = oe_pin
        self.buf = bytearray(count)
        self.n = 8 * count
        latch_pin.value(0)
        self.set(0)  # clears the random power-up contents

    def set(self, mask):
        oe = self.oe
        if not mask and oe is not None:
            oe.value(1)  # off first, whatever the bus does next
        # Written every tick, not only on change: a register upset by noise
        # is repaired within one tick.
        buf = self.buf
        n = len(buf)
        for j in range(n):
            # The first byte out ends in the last chip: cells 1-8 go last.
            buf[n - 1 - j] = (mask >> (8 * j)) & 0xFF
        self.spi.write(buf)
        self.latch.value(1)
        self.latch.value(0)
        if mask and oe is not None:
            oe.value(0)


def _ntc_status(t, saturated):
    # A pin pulled to the top of the ADC range is an open thermistor even if
    # the range ends below the divider's supply.
    if saturated or t == OPEN_DC:
        return NTC_OPEN
    return NTC_SHORT if t == SHORT_DC else NTC_OK


class AdcDirect(Afe):
    def __init__(self, taps, current, ntcs, board_ntc, chg_pin, dsg_pin, pchg_pin=None,
                 bleeders=None, active_high=True, alert_pin=None, alert_active_low=True, current_max_ma=0,
                 differential=False, pack=None, pack_max_mv=0, alert_trip_ma=0, balance_pause_us=0):
        """taps: [(Channel, Linear)] in mV, lowest cell first: cumulative tap
        voltages, or with differential=True each cell's own voltage.
        current: (Channel, Linear) giving mA, positive = charging, or a
        current monitor chip (drivers/ina226.Ina226) that may also be `pack`
        (its bus input on the pack) and raise the alert.
        ntcs: [(Channel, Ntc)]; board_ntc: (Channel, Ntc) or None.
        bleeders: PinBleeders, ShiftBleeders or None.
        pack: (Channel, Linear) of a pack-voltage divider, or None;
        pack_max_mv: the highest pack voltage it reads below saturation.
        alert_trip_ma: the discharge current at which a current monitor chip
        raises the alert (the board's short-circuit threshold).
        balance_pause_us: if not 0, read() switches the bleeders off, waits
        this long and reads the cells before switching them on again.
        """
        self.taps = taps
        self.differential = differential
        self.pack = pack
        self.pack_measured = pack is not None
        self.pack_max_mv = pack_max_mv
        self.current = current
        self.ina = None if isinstance(current, tuple) else current
        self._ina_ms = time.ticks_ms()
        self.alert_trip_ma = alert_trip_ma
        if self.ina is not None:
            current_max_ma = current_max_ma or self.ina.current_max_ma
        self.ntcs = ntcs
        self.board_ntc = board_ntc
        self.bleeders = bleeders
        # A bleeder's current flows through the sense wires (and any input
        # filter resistor) its cell's taps share: a bleeding cell reads low,
        # its neighbours high, until the bleeders are off and that settled.
        self.balance_pause_us = balance_pause_us
        self._bal_mask = 0
        self.max_cells = len(taps)
        self.n_cells = len(taps)
        self.n_temps = len(ntcs)
        self.has_board_temp = board_ntc is not None
        self.has_precharge = pchg_pin is not None
        self.can_balance = bleeders is not None and bleeders.n > 0
        self.current_max_ma = current_max_ma
        self.gates = GpioFets(chg_pin, dsg_pin, pchg_pin, active_high, alert_pin, alert_active_low)

    def init(self, n_cells):
        if not 1 <= n_cells <= self.max_cells:
            raise ValueError("this board measures 1..%d cells" % self.max_cells)
        self.n_cells = n_cells
        self.set_fets(False, False)
        self.set_balancing(0)
        if self.ina is not None:
            self.ina.init()  # OSError: not there; the core retries

    def configure_protection(self, cfg):
        # Only a current monitor chip is programmable: its alert is the
        # short-circuit comparator (the alert pin's interrupt opens the FETs).
        if self.ina is None or not self.alert_trip_ma:
            return {}
        self.ina.set_alert_ma(self.alert_trip_ma)
        return {"scd_ma": self.alert_trip_ma}

    def alert_handler(self):
        """The callable to attach to the alert pin's IRQ."""
        return self.gates.handler()

    def read(self, m):
        fresh = True
        prev = 0
        n = self.n_cells
        cells = m.cells_mv
        diff = self.differential
        bl = self.bleeders
        bleeding = self._bal_mask if self.balance_pause_us else 0
        if bleeding and bl is not None:
            bl.set(0)
            time.sleep_us(self.balance_pause_us)
        try:
            for i in range(n):
                ch, lin = self.taps[i]
                v = lin.apply(ch.uv())
                # A saturated input hides the real voltage: report an impossible
                # cell so the tick flags a sensor fault instead of trusting it.
                if diff:
                    cells[i] = 0 if ch.saturated else v
                    prev += v
                else:
                    cells[i] = 0 if ch.saturated else v - prev
                    prev = v
        finally:
            if bleeding and bl is not None:
                bl.set(bleeding)
        ina = self.ina
        if ina is not None:
            # Between its conversions the last one stands; it converts
            # several times per tick, so a tick never reads a stale value
            # for long. OSError / ChipReset go to the core.
            try:
                if ina.read():
                    self._ina_ms = time.ticks_ms()
                elif time.ticks_diff(time.ticks_ms(), self._ina_ms) > _INA_STALE_MS:
                    fresh = False  # it stopped converting: its last current is no reading
            finally:
                self.bus_errors = ina.bus_errors  # the link counters status shows
            m.current_ma = ina.current_ma
            if ina.alert:
                self.gates.latch[0] = 1
        else:
            ch, lin = self.current
            m.current_ma = lin.apply(ch.uv())
        if self.pack is ina and ina is not None:
            m.pack_mv = ina.bus_mv
        elif self.pack is not None:
            ch, lin = self.pack
            v = lin.apply(ch.uv())
            m.pack_mv = 0 if ch.saturated else v  # 0 fails the cell-sum check
        else:
            m.pack_mv = prev
        for i in range(self.n_temps):
            ch, ntc = self.ntcs[i]
            t = ntc.convert(ch.uv() // 1000)
            m.temps_dc[i] = t
            m.temp_status[i] = _ntc_status(t, ch.saturated)
        if self.board_ntc is not None:
            ch, ntc = self.board_ntc
            t = ntc.convert(ch.uv() // 1000)
            m.board_dc = t
            m.board_status = _ntc_status(t, ch.saturated)
        m.hw_faults = HW_SCD if self.gates.asserted() else 0
        return fresh

    def set_fets(self, chg, dsg, pchg=False):
        self.gates.set(chg, dsg, pchg)

    def set_balancing(self, mask):
        if self.bleeders is not None:
            self._bal_mask = 0  # unknown until the write went through: nothing to restore
            self.bleeders.set(mask)
            self._bal_mask = mask

    def clear_faults(self):
        # True if the hardware fault is gone (the monitor's latch, then the line).
        return self.gates.release(self.ina is not None and not self.ina.clear_alert())
