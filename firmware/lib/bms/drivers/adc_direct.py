# Direct-ADC front-end for small packs: cell taps on resistor dividers read by
# the MCU ADC, a shunt amplifier for current, NTC dividers, FETs and bleeders
# on GPIO, and an optional comparator output (short circuit) on an alert pin.
#
# All machine objects are passed in. Readings are summed over `oversample`
# samples; every product stays below 2**30 so nothing allocates on ports
# whose small ints are 31 bits.
from bms.afe import Afe, NTC_OK, NTC_OPEN, NTC_SHORT, HW_SCD
from bms.ntc import OPEN_DC, SHORT_DC

_LIMIT = 1 << 30


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


class Channel:
    """One ADC input, oversampled, returning microvolts at the pin.

    A reading at the top of the ADC's range is not a voltage but "at least
    this much": `saturated` says so, and the driver treats it as unknown.
    """

    def __init__(self, adc, oversample, read_uv, vref_uv=3300000, max_uv=None):
        self.adc = adc
        self.n = oversample
        self.read_uv = read_uv
        # read_u16 path: uV = raw * k >> 8; 65535 * k < 2**30 for vref <= 4.1 V.
        self.k = (vref_uv * 256 + 32767) // 65535
        top = max_uv if max_uv is not None else vref_uv
        self.sat_uv = top - top // 100
        self.saturated = False

    def uv(self):
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


def _ntc_status(t, saturated):
    # A pin pulled to the top of the ADC range is an open thermistor even if
    # the range ends below the divider's supply.
    if saturated or t == OPEN_DC:
        return NTC_OPEN
    return NTC_SHORT if t == SHORT_DC else NTC_OK


class AdcDirect(Afe):
    def __init__(self, taps, current, ntcs, board_ntc, chg_pin, dsg_pin, pchg_pin=None,
                 bal_pins=(), active_high=True, alert_pin=None, alert_active_low=True, current_max_ma=0):
        """taps: [(Channel, Linear)] cumulative tap voltages in mV, lowest first.
        current: (Channel, Linear) giving mA, positive = charging.
        ntcs: [(Channel, Ntc)]; board_ntc: (Channel, Ntc) or None.
        """
        self.taps = taps
        self.current = current
        self.ntcs = ntcs
        self.board_ntc = board_ntc
        self.chg_pin = chg_pin
        self.dsg_pin = dsg_pin
        self.pchg_pin = pchg_pin
        self.bal_pins = bal_pins
        self.on = 1 if active_high else 0
        self.max_cells = len(taps)
        self.n_cells = len(taps)
        self.n_temps = len(ntcs)
        self.has_board_temp = board_ntc is not None
        self.has_precharge = pchg_pin is not None
        self.can_balance = len(bal_pins) > 0
        self.current_max_ma = current_max_ma
        # Written by the hard IRQ, read by the tick: a preallocated byte.
        self._alert = bytearray(1)
        self._alert_pin = alert_pin
        self._alert_idle = 1 if alert_active_low else 0
        self._alert_cb = self._on_alert  # bound once: creating it in the IRQ would allocate
        self.set_fets(False, False)

    def init(self, n_cells):
        if not 1 <= n_cells <= self.max_cells:
            raise ValueError("this board measures 1..%d cells" % self.max_cells)
        self.n_cells = n_cells
        self.set_fets(False, False)
        self.set_balancing(0)

    def alert_handler(self):
        """The callable to attach to the alert pin's IRQ."""
        return self._alert_cb

    def _on_alert(self, _pin):
        # Hard IRQ: latch first (a set_fets running under us re-checks it),
        # then open the FETs now; the tick learns of it later. No allocation.
        self._alert[0] = 1
        self._drive(False, False, False)

    def read(self, m):
        prev = 0
        n = self.n_cells
        cells = m.cells_mv
        for i in range(n):
            ch, lin = self.taps[i]
            tap = lin.apply(ch.uv())
            # A saturated tap hides the real voltage: report an impossible
            # cell so the tick flags a sensor fault instead of trusting it.
            cells[i] = 0 if ch.saturated else tap - prev
            prev = tap
        m.pack_mv = prev
        ch, lin = self.current
        m.current_ma = lin.apply(ch.uv())
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
        # Level as well as edge: an interrupt that was lost (ESP32 pin IRQs
        # are soft, scheduled) or a short present since power-up still counts.
        p = self._alert_pin
        if p is not None and p.value() != self._alert_idle:
            self._alert[0] = 1
        m.hw_faults = HW_SCD if self._alert[0] else 0
        return True

    def set_fets(self, chg, dsg, pchg=False):
        if self._alert[0]:
            chg = dsg = pchg = False  # only 'clear' re-arms after a short
        self._drive(chg, dsg, pchg)
        # An alert interrupt during the pin writes would be undone by them:
        # look again afterwards.
        if self._alert[0]:
            self._drive(False, False, False)

    def _drive(self, chg, dsg, pchg):
        on = self.on
        self.chg_pin.value(on if chg else 1 - on)
        self.dsg_pin.value(on if dsg else 1 - on)
        if self.pchg_pin is not None:
            self.pchg_pin.value(on if pchg else 1 - on)

    def set_balancing(self, mask):
        pins = self.bal_pins
        for i in range(len(pins)):
            pins[i].value((mask >> i) & 1)

    def clear_faults(self):
        # Clear first, then look at the line: an interrupt in between sets the
        # flag again, and a comparator still asserting means the short is
        # still there. Returns True if the hardware fault is gone.
        self._alert[0] = 0
        p = self._alert_pin
        if p is not None and p.value() != self._alert_idle:
            self._alert[0] = 1
        return not self._alert[0]
