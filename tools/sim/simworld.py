"""The simulated hardware around the MCU: one BMS board and its battery pack.

A SimWorld is built from a board definition (the parsed boards/*.json) and
models the CIRCUIT of a direct-ADC board, not the firmware:

- cell taps: resistor dividers, tap k sees (cell 1 + ... + cell k) / scale;
- current sensor: an amplified shunt, pin = zero_mv + flowing_ma / ma_per_mv;
- NTCs: NTC to ground with a pull-up to vref (Beta equation);
- FETs: gates driven by GPIOs; a FET that is off blocks current in its
  direction (charge FET blocks charging, discharge FET blocks discharging);
- an alert line from a protection chip into a GPIO with an IRQ;
- a virtual millisecond clock carrying timers and the watchdog;
- two byte queues standing in for the console UART.

The simulated `machine` module (tools/sim/machine.py) is a thin layer over
this: every peripheral object keeps its state here so that the test (or
run.py) sees exactly what the firmware did to the hardware.

This file runs under CPython 3.11 and under MicroPython (unix port), so it
sticks to the common subset: no dataclasses/typing/enum, `math` only.
"""

import math

try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:  # CPython: tools may use the host clock
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        _time.sleep(ms / 1000)


try:
    import micropython as _micropython
except ImportError:
    _micropython = None
# Present on MicroPython; absent on CPython or in a conftest shim.
_heap_lock = getattr(_micropython, "heap_lock", None)
_heap_unlock = getattr(_micropython, "heap_unlock", None)


# machine.reset_cause() values of the ESP32 port.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# machine.Pin constants of the ESP32 port (ports/esp32/machine_pin.c).
# Note PULL_UP is 2 and PULL_DOWN is 1; OUT is "input+output" so reading an
# output pin returns the level it drives.
PIN_IN = 1
PIN_OUT = 3
PIN_OPEN_DRAIN = 7
PIN_PULL_DOWN = 1
PIN_PULL_UP = 2
PIN_IRQ_RISING = 1
PIN_IRQ_FALLING = 2
_MODE_OUTPUT_BIT = 2
_MODE_OD_BIT = 4

# machine.ADC attenuation constants and the input range (mV) each one covers
# on the ESP32; read_uv() saturates at the top of the range.
ATTN_0DB = 0
ATTN_2_5DB = 1
ATTN_6DB = 2
ATTN_11DB = 3
ATTN_MAX_MV = (950, 1250, 1750, 2450)
# read_u16() full scale, as specified for this simulator.
U16_FULL_SCALE_MV = 3300

# machine.Timer modes of the ESP32 port.
TIMER_ONE_SHOT = 0
TIMER_PERIODIC = 1

# ESP32 (original chip) GPIO facts, used only when board["mcu"] == "esp32"
# so that a firmware using a wrong pin fails here as it would on the board.
_ESP32_GPIOS = tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40))
_ESP32_FIRST_INPUT_ONLY = 34
_ESP32_ADC_GPIOS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27) + tuple(range(32, 40))
_ESP32_HW_TIMERS = 4

# LFP-like open-circuit voltage, (state of charge, mV); flat plateau between
# about 3.2 and 3.35 V with steep ends. Only used when world.physics is on.
_OCV_TABLE = (
    (0.00, 2500),
    (0.02, 2900),
    (0.08, 3200),
    (0.30, 3270),
    (0.70, 3300),
    (0.95, 3340),
    (0.99, 3450),
    (1.00, 3600),
)


class WatchdogReset(BaseException):
    """The watchdog was not fed in time; the board resets.

    A BaseException (like KeyboardInterrupt) so that a firmware
    `except Exception:` safety net cannot swallow a reset, just as it cannot
    stop a real one. The world also stays "expired" (every later advance()
    raises again) until board_reset() is called.
    """


class BoardReset(BaseException):
    """machine.reset() was called; the board resets (see WatchdogReset)."""


def load_board(path):
    """Parse a board definition file (JSON) into a dict."""
    import json

    with open(path) as f:
        return json.load(f)


def _interp(x, table, xi, yi):
    # Piecewise-linear interpolation over a monotonic table, clamped at ends.
    if x <= table[0][xi]:
        return float(table[0][yi])
    for k in range(1, len(table)):
        x1 = table[k][xi]
        if x <= x1:
            x0 = table[k - 1][xi]
            y0 = table[k - 1][yi]
            return y0 + (table[k][yi] - y0) * (x - x0) / (x1 - x0)
    return float(table[-1][yi])


def ocv_mv(soc):
    """Open-circuit voltage (mV, float) of the LFP-like model at soc 0..1."""
    return _interp(soc, _OCV_TABLE, 0, 1)


def soc_from_mv(mv):
    """Inverse of ocv_mv()."""
    return _interp(mv, _OCV_TABLE, 1, 0)


def ntc_pin_mv(cfg, temp_c, is_open=False, is_short=False):
    """Voltage (mV) at the ADC pin of an NTC-to-ground with a pull-up to vref."""
    vref = cfg.get("vref_mv", 3300)
    if is_short:  # R = 0: the pin is pulled to ground
        return 0.0
    if is_open:  # R infinite: only the pull-up remains
        return float(vref)
    t = temp_c + 273.15
    t0 = cfg.get("t0_c", 25) + 273.15
    r = cfg["r0"] * math.exp(cfg["beta"] * (1.0 / t - 1.0 / t0))
    return vref * r / (r + cfg["pullup"])


class SimWorld:
    """The board's hardware and the pack, driven by tests or by run.py."""

    def __init__(self, board):
        self.board = board
        self.esp32 = board.get("mcu") == "esp32"

        # --- pack and sensors (what a test or run.py sets) ---
        ncells = board["cells"]
        self.cell_mv = [3300] * ncells
        # Per-tap divider gain error, keyed by tap number (1-based, tap k
        # measures cells 1..k); missing taps are exact (1.0).
        self.tap_gain_error = {}
        self.current_ma = 0  # requested by load/charger, + = charging
        ntcs = board.get("ntc") or []
        self.temps_c = [25.0] * len(ntcs)
        self.ntc_open = [False] * len(ntcs)
        self.ntc_short = [False] * len(ntcs)
        self.board_temp_c = 25.0
        self.board_ntc_open = False
        self.board_ntc_short = False
        # Test hook: {pin: mV} forces the analog voltage of a pin.
        self.analog_mv = {}

        # --- optional pack physics (off: cell voltages stay as set) ---
        self.physics = False
        self.capacity_mah = 100000
        self.cell_soc = [soc_from_mv(mv) for mv in self.cell_mv]
        self._phys_mv = list(self.cell_mv)

        # --- GPIO state, per pin number (shared by every Pin object) ---
        self.pin_out = {}  # levels the MCU actually drives: {pin: 0/1}
        self.pin_in = {}  # levels driven from outside: {pin: 0/1}
        self.pin_mode = {}
        self.pin_pull = {}
        self.pin_latch = {}  # output register, driven once the pin is OUT
        self.pin_irq = {}  # {pin: (Pin object, handler, trigger, hard)}
        self.adc_atten = {}  # per ADC channel, sticky like the hardware

        # --- time, timers, watchdog ---
        self.now_ms = 0
        self.timers = []  # armed machine.Timer objects
        self._timer_seq = 0
        self.wdt_running = False
        self.wdt_timeout_ms = 0
        self.wdt_fed_ms = 0
        self.wdt_expired = False
        self.reset_requested = False
        self.reset_cause = PWRON_RESET
        self.realtime = False
        self._rt_origin = None  # (wall ticks, virtual ms) when realtime began
        self.idle_hooks = []  # called (no args) from every idle()

        # --- console UART: host -> firmware and firmware -> host ---
        self.uart_rx = bytearray()
        self.uart_tx = bytearray()

        # Map each analog pin to what is wired to it.
        self._analog = {}
        for k, tap in enumerate(board.get("cell_taps") or []):
            self._analog[tap["pin"]] = ("tap", k)
        if board.get("current"):
            self._analog[board["current"]["pin"]] = ("current", 0)
        for i, cfg in enumerate(ntcs):
            self._analog[cfg["pin"]] = ("ntc", i)
        if board.get("board_ntc"):
            self._analog[board["board_ntc"]["pin"]] = ("board_ntc", 0)

        # The alert line idles at its inactive level (external pull).
        alert = board.get("alert")
        if alert:
            self.pin_in[alert["pin"]] = 1 if alert.get("active_low", True) else 0

    @classmethod
    def from_file(cls, path):
        return cls(load_board(path))

    # ------------------------------------------------------------------
    # Pack and sensors
    # ------------------------------------------------------------------

    def set_cell(self, n, mv):
        """Set the true voltage of cell n (1-based) in mV."""
        if not 1 <= n <= len(self.cell_mv):
            raise ValueError("cell number out of range")
        self.cell_mv[n - 1] = int(mv)

    def set_current(self, ma):
        """Pack current the load/charger asks for (mA, + = charging)."""
        self.current_ma = int(ma)

    def set_temp(self, i, c):
        """Temperature of NTC i (0-based index into board["ntc"])."""
        self.temps_c[i] = float(c)

    def set_board_temp(self, c):
        self.board_temp_c = float(c)

    def fet_on(self, name):
        """True if FET `name` ("chg"/"dsg") conducts, from its gate GPIO."""
        fets = self.board.get("fets") or {}
        pin = fets.get(name)
        if pin is None:  # no such switch on this board: nothing blocks
            return True
        level = self.pin_out.get(pin, 0)  # undriven gate: pulled low
        if fets.get("active_high", True):
            return level == 1
        return level == 0

    def flowing_ma(self):
        """The current that actually flows (body diodes ignored)."""
        i = self.current_ma
        if i > 0 and not self.fet_on("chg"):
            return 0
        if i < 0 and not self.fet_on("dsg"):
            return 0
        return i

    def pin_mv(self, pin):
        """Analog voltage (mV, float) at a pin, from the circuit."""
        if pin in self.analog_mv:
            return float(self.analog_mv[pin])
        role = self._analog.get(pin)
        if role is None:
            return 0.0
        kind, k = role
        b = self.board
        if kind == "tap":
            tap = b["cell_taps"][k]
            total = 0
            for j in range(k + 1):
                total += self.cell_mv[j]
            return total / tap["scale"] * self.tap_gain_error.get(k + 1, 1.0)
        if kind == "current":
            cur = b["current"]
            return cur["zero_mv"] + self.flowing_ma() / cur["ma_per_mv"]
        if kind == "ntc":
            return ntc_pin_mv(b["ntc"][k], self.temps_c[k], self.ntc_open[k], self.ntc_short[k])
        return ntc_pin_mv(b["board_ntc"], self.board_temp_c, self.board_ntc_open, self.board_ntc_short)

    # ------------------------------------------------------------------
    # GPIO (used by machine.Pin)
    # ------------------------------------------------------------------

    def check_pin(self, pin, output=False):
        """Reject pins the MCU does not have, as the port does."""
        if not self.esp32:
            return
        if pin not in _ESP32_GPIOS:
            raise ValueError("invalid pin")
        if output and pin >= _ESP32_FIRST_INPUT_ONLY:
            raise ValueError("pin can only be input")

    def configure_pin(self, pin, mode=None, pull=-1, value=None):
        """Pin(...)/Pin.init(): mode None/-1 and pull -1 leave those alone."""
        is_mode = mode is not None and mode != -1
        self.check_pin(pin, is_mode and (mode & _MODE_OUTPUT_BIT))
        if value is not None:  # set the output register before the mode
            self.pin_latch[pin] = 1 if value else 0
        if is_mode:
            self.pin_mode[pin] = mode
        if pull != -1:
            self.pin_pull[pin] = pull or 0
        self._update_drive(pin)

    def _update_drive(self, pin):
        # Only a pin in an output mode drives its latch onto the wire; an
        # open-drain pin only ever drives low.
        mode = self.pin_mode.get(pin, 0)
        level = self.pin_latch.get(pin, 0)
        if mode & _MODE_OUTPUT_BIT and not (mode & _MODE_OD_BIT and level):
            self.pin_out[pin] = level
        elif pin in self.pin_out:
            del self.pin_out[pin]

    def write_pin(self, pin, v):
        self.pin_latch[pin] = 1 if v else 0
        self._update_drive(pin)

    def read_pin(self, pin):
        # No allocation here: this runs inside (simulated) hard IRQs.
        if pin in self.pin_out:
            return self.pin_out[pin]
        if pin in self.pin_in:
            return self.pin_in[pin]
        if self.pin_pull.get(pin, 0) & PIN_PULL_UP:
            return 1
        return 0

    def set_pin_irq(self, pin_obj, handler, trigger, hard):
        if handler is None:
            if pin_obj.id in self.pin_irq:
                del self.pin_irq[pin_obj.id]
        else:
            self.pin_irq[pin_obj.id] = (pin_obj, handler, trigger, hard)

    def set_input(self, pin, level):
        """Drive a pin from outside; fires the pin's IRQ on a matching edge."""
        old = self.read_pin(pin)
        self.pin_in[pin] = 1 if level else 0
        new = self.read_pin(pin)
        if old != new:
            self._fire_irq(pin, PIN_IRQ_RISING if new else PIN_IRQ_FALLING)

    def _fire_irq(self, pin, edge):
        entry = self.pin_irq.get(pin)
        if entry is None or not entry[2] & edge:
            return
        pin_obj, handler, trigger, hard = entry
        if hard and _heap_lock is not None:
            # A hard IRQ runs with the heap locked: a handler that allocates
            # gets MemoryError here under MicroPython, as on the board.
            _heap_lock()
            try:
                handler(pin_obj)
            finally:
                _heap_unlock()
        else:
            handler(pin_obj)

    def _alert_levels(self):
        alert = self.board.get("alert")
        if not alert:
            raise RuntimeError("board has no alert pin")
        active = 0 if alert.get("active_low", True) else 1
        return alert["pin"], active

    def raise_alert(self):
        """The protection chip asserts its alert line (fires the IRQ)."""
        pin, active = self._alert_levels()
        self.set_input(pin, active)

    def release_alert(self):
        pin, active = self._alert_levels()
        self.set_input(pin, 1 - active)

    # ------------------------------------------------------------------
    # ADC (used by machine.ADC)
    # ------------------------------------------------------------------

    def adc_init(self, pin, atten=-1):
        if self.esp32 and pin not in _ESP32_ADC_GPIOS:
            raise ValueError("invalid pin")
        if atten != -1:
            self.adc_set_atten(pin, atten)
        elif pin not in self.adc_atten:  # first use: the port picks 0 dB
            self.adc_atten[pin] = ATTN_0DB

    def adc_set_atten(self, pin, atten):
        if not 0 <= atten < len(ATTN_MAX_MV):
            raise ValueError("invalid atten")
        self.adc_atten[pin] = atten

    def _adc_mv(self, pin):
        # What the calibrated ESP32 ADC reports: clamped to the range of the
        # attenuation, 1 mV resolution.
        mv = self.pin_mv(pin)
        top = ATTN_MAX_MV[self.adc_atten.get(pin, ATTN_0DB)]
        if mv < 0:
            mv = 0.0
        elif mv > top:
            mv = top
        return int(mv + 0.5)

    def adc_read_uv(self, pin):
        return self._adc_mv(pin) * 1000

    def adc_read_u16(self, pin):
        return min(65535, (self._adc_mv(pin) * 65535 + U16_FULL_SCALE_MV // 2) // U16_FULL_SCALE_MV)

    # ------------------------------------------------------------------
    # Timers (used by machine.Timer) and the watchdog (machine.WDT)
    # ------------------------------------------------------------------

    def arm_timer(self, t):
        """(Re)start timer t: first expiry one period from now."""
        self.disarm_timer(t)
        if self.esp32 and t.id >= 0:
            # One hardware timer per id: a new Timer(id) object takes it over.
            for other in list(self.timers):
                if other.id == t.id:
                    self.disarm_timer(other)
        self._timer_seq += 1
        t._seq = self._timer_seq  # ties at the same ms run in arming order
        t._deadline = self.now_ms + t._period
        self.timers.append(t)

    def disarm_timer(self, t):
        if t in self.timers:
            self.timers.remove(t)

    def _next_timer(self, limit):
        best = None
        for t in self.timers:
            if t._deadline <= limit and (
                best is None or (t._deadline, t._seq) < (best._deadline, best._seq)
            ):
                best = t
        return best

    def wdt_start(self, timeout_ms):
        # Starting it again (a second WDT()) reconfigures the same watchdog.
        if timeout_ms <= 0:
            raise ValueError("WDT timeout too short")
        self.wdt_running = True
        self.wdt_timeout_ms = timeout_ms
        self.wdt_fed_ms = self.now_ms

    def wdt_feed(self):
        self.wdt_fed_ms = self.now_ms

    def _check_alive(self):
        # A board that has reset stays reset until board_reset() is called,
        # even if something up the stack swallowed the exception.
        if self.wdt_expired:
            raise WatchdogReset("watchdog expired at %d ms" % self.now_ms)
        if self.reset_requested:
            raise BoardReset("machine.reset()")

    def request_reset(self):
        """machine.reset(): never returns."""
        self.reset_requested = True
        raise BoardReset("machine.reset()")

    def advance(self, ms):
        """Move virtual time forward by ms, firing timers in deadline order.

        Each due timer's callback runs with now_ms equal to its deadline and
        gets the timer object. Timers due at the same ms as the watchdog
        deadline run first (they may feed it). Raises WatchdogReset if the
        watchdog is not fed within its timeout.
        """
        if ms < 0:
            raise ValueError("time only moves forward")
        self._check_alive()
        target = self.now_ms + ms
        while True:
            t = self._next_timer(target)
            if self.wdt_running:
                w = self.wdt_fed_ms + self.wdt_timeout_ms
                if w <= target and (t is None or w < t._deadline):
                    self._move_to(w)
                    self.wdt_expired = True
                    raise WatchdogReset("watchdog expired at %d ms" % w)
            if t is None:
                break
            self._move_to(t._deadline)
            if t._periodic:
                t._deadline += t._period
            else:
                self.timers.remove(t)
            if t._callback is not None:
                t._callback(t)
            self._check_alive()  # the callback may have called reset()
        self._move_to(target)

    def ticks_ms(self):
        """The virtual clock, for a time.ticks_ms shim in host tests (the
        firmware's own time.ticks_ms is the host clock, not this one)."""
        return self.now_ms

    def _move_to(self, when):
        if when > self.now_ms:
            if self.physics:
                self._step_physics(when - self.now_ms)
            self.now_ms = when

    def idle(self):
        """machine.idle(): pump the idle hooks, then let 1 ms pass.

        In realtime mode it sleeps so that virtual time follows the wall
        clock; if the firmware fell behind (it blocked without idling), the
        virtual clock catches up in one step, timers and watchdog included.
        """
        for hook in self.idle_hooks:
            hook()
        if not self.realtime:
            self._rt_origin = None
            self.advance(1)
            return
        wall = ticks_ms()
        if self._rt_origin is None:
            self._rt_origin = (wall, self.now_ms)
        wall_virtual = self._rt_origin[1] + ticks_diff(wall, self._rt_origin[0])
        ahead = self.now_ms + 1 - wall_virtual
        if ahead > 0:
            sleep_ms(ahead)
            self.advance(1)
        else:
            self.advance(1 - ahead)

    # ------------------------------------------------------------------
    # Console UART queues
    # ------------------------------------------------------------------

    def uart_feed(self, data):
        """Host -> firmware bytes (what the firmware's UART will read)."""
        if isinstance(data, str):
            data = data.encode()
        self.uart_rx.extend(data)

    def uart_take(self):
        """Firmware -> host bytes written so far; clears them."""
        data = bytes(self.uart_tx)
        self.uart_tx = bytearray()
        return data

    def uart_read(self, n):
        # MicroPython's bytearray has no slice deletion: rebuild instead.
        data = bytes(self.uart_rx[:n])
        self.uart_rx = self.uart_rx[n:]
        return data

    # ------------------------------------------------------------------
    # Reset and physics
    # ------------------------------------------------------------------

    def board_reset(self, cause):
        """The MCU restarts: peripherals back to reset state; the pack,
        external inputs, the clock and the UART queues carry on."""
        self.timers = []
        self.pin_out = {}
        self.pin_mode = {}
        self.pin_pull = {}
        self.pin_latch = {}
        self.pin_irq = {}
        self.adc_atten = {}
        self.wdt_running = False
        self.wdt_expired = False
        self.reset_requested = False
        self.reset_cause = cause

    def _step_physics(self, dt_ms):
        # Coulomb counting per cell against capacity_mah, voltage = OCV(soc).
        # A cell whose voltage was changed by hand restarts from that voltage.
        i = self.flowing_ma()
        if i == 0:
            return
        dsoc = i * dt_ms / 3600000.0 / self.capacity_mah
        for k in range(len(self.cell_mv)):
            if self.cell_mv[k] != self._phys_mv[k]:
                self.cell_soc[k] = soc_from_mv(self.cell_mv[k])
            soc = self.cell_soc[k] + dsoc
            soc = 0.0 if soc < 0 else (1.0 if soc > 1 else soc)
            self.cell_soc[k] = soc
            mv = int(ocv_mv(soc) + 0.5)
            self.cell_mv[k] = mv
            self._phys_mv[k] = mv
