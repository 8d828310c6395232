# FET gates on MCU GPIOs and the alert line that latches them off: a
# short-circuit comparator or a current monitor's alert. Shared by the
# front-ends that do not drive the FETs themselves (adc_direct, ltc681x).
from micropython import const

_HARD_FAIL = (TypeError, ValueError)


class GpioFets:
    def __init__(self, chg_pin, dsg_pin, pchg_pin=None, active_high=True, alert_pin=None, alert_active_low=True):
        """Pins made at their off level by the caller (board.py, from_board)."""
        self.chg_pin = chg_pin
        self.dsg_pin = dsg_pin
        self.pchg_pin = pchg_pin
        self.on = 1 if active_high else 0
        # Written by the hard IRQ, read by the tick: a preallocated byte.
        self.latch = bytearray(1)
        self.alert_pin = alert_pin
        self._idle = 1 if alert_active_low else 0
        self._cb = self._on_alert  # bound once: creating it in the IRQ would allocate
        self.drive(False, False, False)

    def attach(self, trigger_falling, trigger_rising):
        """Hook the alert pin's interrupt (hard where the port has it)."""
        p = self.alert_pin
        if p is None:
            return
        trig = trigger_falling if self._idle else trigger_rising
        try:
            p.irq(handler=self._cb, trigger=trig, hard=True)
        except _HARD_FAIL:  # ESP32: soft pin interrupts only
            p.irq(handler=self._cb, trigger=trig)

    def handler(self):
        """The callable to attach to the alert pin's IRQ."""
        return self._cb

    def _on_alert(self, _pin):
        # Hard IRQ: latch first (a set() running under us re-checks it),
        # then open the FETs now; the tick learns of it later. No allocation.
        self.latch[0] = 1
        self.drive(False, False, False)

    def asserted(self):
        """Level as well as edge: an interrupt that was lost (ESP32 pin IRQs
        are soft, scheduled) or a short present since power-up still counts.
        Latches; True while latched."""
        p = self.alert_pin
        if p is not None and p.value() != self._idle:
            self.latch[0] = 1
        return self.latch[0] != 0

    def set(self, chg, dsg, pchg=False):
        if self.latch[0]:
            chg = dsg = pchg = False  # only 'clear' re-arms after a short
        self.drive(chg, dsg, pchg)
        # An alert interrupt during the pin writes would be undone by them:
        # look again afterwards.
        if self.latch[0]:
            self.drive(False, False, False)

    def drive(self, chg, dsg, pchg):
        on = self.on
        self.chg_pin.value(on if chg else 1 - on)
        self.dsg_pin.value(on if dsg else 1 - on)
        if self.pchg_pin is not None:
            self.pchg_pin.value(on if pchg else 1 - on)

    def release(self, still_present=False):
        """Clear the latch, then look at the line: an interrupt in between
        sets it again, and a line still asserting (or still_present: the
        source says so) keeps it. True if the fault is gone."""
        self.latch[0] = 0
        if still_present:
            self.latch[0] = 1
        self.asserted()
        return not self.latch[0]
