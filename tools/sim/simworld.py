"""The simulated hardware around the MCU: one BMS board and its battery pack.

A SimWorld is built from a board definition (the parsed boards/*.json) and
models the CIRCUIT of the board, not the firmware:

- the pack (pack.Pack: cells with OCV, resistance, an RC pair, capacity,
  self-discharge and a lumped thermal model) and what drives its current
  (sources.py: loads, chargers, solar, shorts, or a manual current source);
- cell measurement: cumulative taps on resistor dividers (tap k sees
  (cell 1 + ... + cell k) / scale), or one difference amplifier per cell
  (cell / scale) behind an analog multiplexer whose select lines are GPIOs;
  an optional pack-voltage divider;
- current sensor: an amplified shunt, pin = zero_mv + measured_ma / ma_per_mv,
  with offset and gain error;
- NTCs: NTC to ground with a pull-up to vref (Beta equation), reading the
  pack's lumped temperature (cell sensors) or the board's (board sensor);
- FETs: gates driven by GPIOs; an open FET blocks current in its direction;
- bleeders: a resistor across a cell, switched by a GPIO or by a 74HC595
  chain on SPI; it drains its own cell and heats the board;
- an alert line from a short-circuit comparator into a GPIO with an IRQ;
- I2C and SPI buses carrying chip models (devices.py);
- a virtual clock carrying timers and the watchdog, paced three ways:
  "step" (idle() = 1 ms, for unit tests), "fast" (idle() sleeps until the
  next timer like a real MCU, in no wall time) and "wall" (the same, paced to
  `speed` x the wall clock);
- two byte queues standing in for the console UART;
- injectable faults (FAULTS).

The simulated `machine` module (tools/sim/machine.py) is a thin layer over
this: every peripheral object keeps its state here so that the test (or
run.py) sees exactly what the firmware did to the hardware.

This file runs under CPython 3.11 and under MicroPython (unix port), so it
sticks to the common subset: no dataclasses/typing/enum, `math` only.
"""

import math

try:  # the host's own clock: MicroPython's `time` may be the virtual one
    from utime import sleep_ms, ticks_diff, ticks_ms
except ImportError:
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

import devices
import pack as packmod
import sources as srcmod
from prng import Prng

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
_ATTN_MAX_UV = (950000, 1250000, 1750000, 2450000)
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

# errno values the ports raise (MicroPython uses Linux numbers).
EIO = 5
ENODEV = 19
ETIMEDOUT = 116

# Faults `sim fault NAME on|off [N]` can inject; N (1-based) picks the cell
# or sensor where it applies.
FAULTS = {
    "afe_nack": "the front-end does not answer (I2C NACK, SPI silent; ADC reads fail); N: only N % of transfers",
    "afe_crc": "bit errors on the front-end link (its CRC catches them); N: in N % of transfers (default all)",
    "afe_reset": "the front-end chip restarts with its power-on registers (a brown-out); turns itself off",
    "stuck_cell": "cell N's measurement input freezes at its present value",
    "ntc_open": "thermistor N open (broken wire)",
    "ntc_short": "thermistor N shorted",
    "load_short": "a short circuit across the pack terminals (5 mOhm)",
    "charger_overvoltage": "the charger's voltage regulation fails: it keeps pushing its current limit",
    "firmware_hang": "the firmware's next hardware access never returns (watchdog starvation)",
}

# Board circuit values the board file does not give (its optional "sim"
# object overrides them).
_SIM_DEFAULTS = {
    "fet_mohm": 0.5,  # both FETs and the shunt in series
    "board_j_per_k": 60.0,  # lumped board thermal mass
    "board_k_per_w": 4.0,  # board to ambient
    "short_mohm": 5.0,  # the load_short fault
    "broken_charger_c": 0.3,  # a faulty charger that appears with charger_overvoltage: 0.3 C
    "power_up_595": 0xA5A5A5A5,  # arbitrary shift-register contents at power-up
    # Resistance of each sense wire between a cell node and the board (wire,
    # crimps, fuse): a bleeder's current flows through its cell's two, so
    # while it conducts that cell reads low by 2 I R and its neighbours high
    # by I R. 0 (the default): readings do not see the bleeders.
    "sense_wire_mohm": 0.0,
}
_MAX_STEP_MS = 1000  # physics sub-step: sources change, integration stays fine
_MIN_STEP_MS = 10  # shorter advances are added to the next physics step


class WatchdogReset(BaseException):
    """The watchdog was not fed in time; the board resets.

    A BaseException (like KeyboardInterrupt) so that a firmware
    `except Exception:` safety net cannot swallow a reset, just as it cannot
    stop a real one. The world also stays "expired" (every later advance()
    raises again) until board_reset() is called.
    """


class BoardReset(BaseException):
    """machine.reset() was called; the board resets (see WatchdogReset)."""


class PowerCut(BaseException):
    """The MCU lost its supply (`sim power cut`); it comes back with
    PWRON_RESET (see WatchdogReset; tools/sim/flash.py tears flash writes)."""


def board_cells(board):
    """How many cells the board can measure."""
    taps = board.get("cell_taps")
    return len(taps) if taps else board["cells"]


def ntc_ohm(cfg, temp_c, is_open=False, is_short=False):
    """Resistance of a Beta-model NTC (board "ntc" entry) at temp_c."""
    if is_short:
        return 0.0
    if is_open:
        return float("inf")
    t = temp_c + 273.15
    t0 = cfg.get("t0_c", 25) + 273.15
    return cfg["r0"] * math.exp(cfg["beta"] * (1.0 / t - 1.0 / t0))


def load_board(path):
    """Parse a board definition file (JSON) into a dict."""
    import json

    with open(path) as f:
        return json.load(f)


def ntc_pin_mv(cfg, temp_c, is_open=False, is_short=False):
    """Voltage (mV) at the ADC pin of an NTC-to-ground with a pull-up to vref."""
    vref = cfg.get("vref_mv", 3300)
    if is_short:  # R = 0: the pin is pulled to ground
        return 0.0
    if is_open:  # R infinite: only the pull-up remains
        return float(vref)
    r = ntc_ohm(cfg, temp_c)
    return vref * r / (r + cfg["pullup"])


def default_pack(board, cells=None, chemistry="lfp"):
    """A pack that fits the board: its cell count, 100 Ah, half full."""
    cap = (board.get("config") or {}).get("capacity_mah", 100000) / 1000.0
    return packmod.Pack(chemistry=chemistry, cells=cells or board["cells"], capacity_ah=cap, soc_pct=50.0)


def _daily(points, hour):
    # Linear interpolation over [[hour, value], ...], wrapping at midnight.
    pts = sorted(points)
    prev = (pts[-1][0] - 24.0, pts[-1][1])
    for h, v in pts:
        if hour <= h:
            span = h - prev[0]
            f = (hour - prev[0]) / span if span else 1.0
            return prev[1] + (v - prev[1]) * f
        prev = (h, v)
    h0, v0 = pts[0]
    span = h0 + 24.0 - prev[0]
    return prev[1] + (v0 - prev[1]) * ((hour - prev[0]) / span if span else 1.0)


class SimWorld:
    """The board's hardware and the pack, driven by tests or by run.py.

    pack: a pack.Pack (default: default_pack(board)); its cell count may be
    below the board's (unpopulated inputs: taps tied to the top of the
    stack, difference amplifiers shorted to 0 V).
    sensors: measurement errors {"adc_noise_mv": sigma of each reading at
    the pin, "adc_offset_mv", "adc_gain_pct": sigma of the error each input
    keeps (what is left after calibrating the board: per cell amplifier or
    tap, pack divider and NTC pins; the current's error is the shunt's),
    "shunt_offset_ma", "shunt_gain_pct", "seed"}; all 0 by default so unit
    tests can compute readings by hand.
    """

    def __init__(self, board, pack=None, sensors=None):
        self.board = board
        self.esp32 = board.get("mcu") == "esp32"
        sim = dict(_SIM_DEFAULTS)
        sim.update(board.get("sim") or {})
        self.sim = sim

        # --- the pack and what drives its current ---
        self.pack = pack if pack is not None else default_pack(board)
        if self.pack.n > board_cells(board):
            raise ValueError("board %s measures at most %d cells" % (board.get("name"), board_cells(board)))
        self.sources = []  # sources.py objects (a scenario's profile)
        self.manual_ma = None  # set_current(): an ideal current source replacing the sources
        self.day_start_s = 0.0  # time of day at virtual t = 0 (for the profiles)
        self._fault_sources = []
        self.current_a = 0.0  # what flows now, + = charging (kept up to date)

        # --- sensors and their errors ---
        sensors = sensors or {}
        self.shunt_offset_ma = sensors.get("shunt_offset_ma", 0)
        self.shunt_gain = 1.0 + sensors.get("shunt_gain_pct", 0) / 100.0
        sigma = sensors.get("adc_noise_mv", 0)
        # Noise in integer uV: ADC reads stay allocation-free small-int sums.
        self._noise = [0]
        if sigma:
            g = Prng(sensors.get("seed", 1))
            self._noise = [int(g.gauss(0.0, sigma) * 1000) for _ in range(1024)]
        self._noise_mask = len(self._noise) - 1
        self._noise_i = 0
        # Per-input gain and offset error, keyed by input number (1-based:
        # tap k, or the amplifier of cell k); missing inputs are exact.
        self.tap_gain_error = {}
        self.tap_offset_mv = {}
        self.pin_error = {}  # other analog pins: {pin: (gain, offset mV)}
        ntcs = board.get("ntc") or []
        self.temp_pin = [None] * len(ntcs)  # pinned sensor temperatures, else the pack's
        self.ntc_open = [False] * len(ntcs)
        self.ntc_short = [False] * len(ntcs)
        self.board_temp_c = self.pack.ambient_c  # the board's own lumped temperature
        self.board_temp_pinned = None
        self.board_ntc_open = False
        self.board_ntc_short = False
        # Test hook: {pin: mV} forces the analog voltage of a pin.
        self.analog_mv = {}
        self.faults = {}  # active fault name -> its argument (cell/sensor number)
        self._frozen = {}  # input number -> mV held by stuck_cell
        self._flips = 0  # bit errors injected by afe_crc so far
        self._xfers = {}  # fault name -> front-end transfers seen while it was on (for its rate)

        # --- GPIO state, per pin number (shared by every Pin object) ---
        self.pin_out = {}  # levels the MCU actually drives: {pin: 0/1}
        self.pin_in = {}  # levels driven from outside: {pin: 0/1}
        self.pin_mode = {}
        self.pin_pull = {}
        self.pin_latch = {}  # output register, driven once the pin is OUT
        self.pin_irq = {}  # {pin: (Pin object, handler, trigger, hard)}
        self.adc_atten = {}  # per ADC channel, sticky like the hardware
        self._watchers = {}  # {pin: [callback(level)]} of chip models

        # --- time, timers, watchdog ---
        self.now_ms = 0
        self._phys_debt_ms = 0  # time the pack has not been stepped through yet
        self._us = 0  # sub-millisecond time from sleep_us()
        self.boot_ms = 0  # when the MCU last came out of reset (ticks_ms() is 0 there)
        self.timers = []  # armed machine.Timer objects
        self._timer_seq = 0
        self.wdt_running = False
        self.wdt_timeout_ms = 0
        self.wdt_fed_ms = 0
        self.wdt_expired = False
        self.reset_requested = False
        self.power_off = False  # the supply failed: off until board_reset()
        self.power_cut_write = None  # armed: bytes of the next flash write that land (-1: half)
        self.reset_cause = PWRON_RESET
        self.resets = 0  # board resets so far (watchdog or machine.reset)
        self.virtual_time = True  # time.ticks_ms() reads this clock (tools/sim/time.py)
        self.pace = "step"  # "step", "fast" or "wall" (see the module docstring)
        self.speed = 1.0  # for "wall": virtual seconds per wall second
        self.paused = False
        self.step_to_ms = None  # while paused: run until this time, then pause again
        self.on_step_done = None  # called when a paused step completes
        # wait_input(ms): block up to ms for host input (run.py sets it);
        # the default just sleeps.
        self.wait_input = sleep_ms
        self._rt_origin = None  # (wall ticks, virtual ms) when wall pacing began
        self.idle_hooks = []  # called (no args) from every idle()
        self.step_hooks = []  # called (dt_ms) around every physics step (0: before it)
        self.ambient_profile = None  # [[hour, degC], ...]: daily ambient, interpolated

        # --- console UART: host -> firmware and firmware -> host ---
        self.uart_rx = bytearray()
        self.uart_tx = bytearray()

        # --- buses and chip models ---
        self.spi_devices = {}  # {bus id: [device]}
        self.i2c_devices = {}  # {bus id: {address: device}}
        self.spi_buses = {}  # {bus id: {"sck":, "mosi":, "miso":}} as the firmware set them up
        self.afe_chip = None  # the front-end chip model (tools/sim/chips), if the board has one
        self.current_chip = None  # a separate current monitor chip model (INA226)

        self._map_circuit()
        self._draw_input_errors(sensors)
        self._stale = True  # what flows and the cell voltages need recomputing

    def _draw_input_errors(self, sensors):
        # A fixed error per input, from its own stream of the seed.
        off = sensors.get("adc_offset_mv", 0)
        gain = sensors.get("adc_gain_pct", 0)
        if not (off or gain):
            return
        g = Prng(sensors.get("seed", 1) * 7919 + 17)
        for k in range(len(self._in_scale)):
            self.tap_gain_error[k + 1] = 1.0 + g.gauss(0.0, gain) / 100.0
            self.tap_offset_mv[k + 1] = g.gauss(0.0, off)
        for pin in sorted(self._analog):
            if self._analog[pin][0] in ("pack", "ntc", "board_ntc"):
                self.pin_error[pin] = (1.0 + g.gauss(0.0, gain) / 100.0, g.gauss(0.0, off))

    @classmethod
    def from_file(cls, path, pack=None, sensors=None):
        return cls(load_board(path), pack, sensors)

    # ------------------------------------------------------------------
    # Circuit construction from the board file
    # ------------------------------------------------------------------

    def _map_circuit(self):
        b = self.board
        self._analog = {}  # pin -> ("tap", k) | ("cell", k) | ("pack", 0) | ("current", 0) | ("ntc", i) | ("board_ntc", 0)
        self._diff = b.get("cell_inputs", "cumulative") == "differential"
        self._mux = b.get("mux")
        taps = b.get("cell_taps") or []
        self._in_scale = [1.0 / t["scale"] for t in taps]
        if not taps:  # a front-end chip measures each cell at its own input
            self._diff = True
            self._in_scale = [1.0] * board_cells(b)
        self._mux_map = []  # mux address -> cell-measurement input, -1: nothing wired
        kind = "cell" if self._diff else "tap"
        for k, tap in enumerate(taps):
            if "mux" not in tap:
                self._analog[tap["pin"]] = (kind, k)
        self._mux_addr = 0  # select lines pulled down
        self._mux_pin = None
        if self._mux:
            self._mux_map = [-1] * (1 << len(self._mux["select"]))
            for k, tap in enumerate(taps):
                if "mux" in tap:
                    self._mux_map[tap["mux"]] = k
            self._mux_pin = self._mux["pin"]
            self._analog[self._mux_pin] = ("mux", 0)
            for p in self._mux["select"]:
                self.watch_pin(p, self._on_select)
        if b.get("pack_tap") and "pin" in b["pack_tap"]:
            self._analog[b["pack_tap"]["pin"]] = ("pack", 0)
        if b.get("current") and "pin" in b["current"]:
            self._analog[b["current"]["pin"]] = ("current", 0)
        for i, cfg in enumerate(b.get("ntc") or []):
            if "pin" in cfg:  # else on a chip's input (world.ntc_ohm)
                self._analog[cfg["pin"]] = ("ntc", i)
        if b.get("board_ntc") and "pin" in b["board_ntc"]:
            self._analog[b["board_ntc"]["pin"]] = ("board_ntc", 0)

        # Pins whose level changes what flows (FET gates, bleeders).
        self._current_pins = set()
        f = b.get("fets") or {}
        for name in ("chg", "dsg", "precharge"):
            if f.get(name) is not None:
                self._current_pins.add(f[name])
        self.bleed_ohm = b.get("balance_ohm", 33)
        self.sense_wire_ohm = self.sim["sense_wire_mohm"] / 1000.0
        bal = b.get("balance")
        self._bleed_pins = None
        self.shift595 = None
        if isinstance(bal, list):
            self._bleed_pins = list(bal)
            for p in bal:
                self._current_pins.add(p)
        elif isinstance(bal, dict) and bal.get("shift595"):
            sr = bal["shift595"]
            oe = sr.get("oe")
            if oe is not None:
                self.pin_in[oe] = 1  # the board's pull-up: outputs off until driven low
                self._current_pins.add(oe)
            self.shift595 = devices.Hc595Chain(self, sr["count"], sr["latch"], oe, self.sim["power_up_595"],
                                               (sr["sck"], sr["mosi"]))
            self.add_spi_device(sr["spi"], self.shift595)

        # The alert line idles at its inactive level (external pull).
        alert = b.get("alert")
        self.alert_forced = None  # None: the comparator decides; True/False: forced by a test
        if alert:
            self.pin_in[alert["pin"]] = 1 if alert.get("active_low", True) else 0
        self._alert_trip_ma = alert.get("trip_ma") if alert else None
        self._alert_chip_driven = bool(alert and (alert.get("source") or alert.get("means") == "chip"))
        if self._alert_chip_driven:
            self._alert_trip_ma = None  # a chip model drives the line, not the board's comparator

        # Chip models on the board's buses (tools/sim/chips).
        kind = b.get("afe")
        if kind in ("bq769x0", "bq769x2", "ltc681x"):
            mod = __import__("chips." + kind, None, None, [kind])
            self.afe_chip = mod.attach(self, b)
        cur = b.get("current") or {}
        if "ina226" in cur:
            from chips import ina226

            self.current_chip = ina226.attach(self, b)

    # ------------------------------------------------------------------
    # Pack, sources and sensors (what a test, run.py or a scenario sets)
    # ------------------------------------------------------------------

    def changed(self):
        """Something that affects the circuit changed: recompute lazily.
        Allocation-free (it runs inside simulated hard IRQs)."""
        self._stale = True

    def _set(self):
        # A setter from outside (a test, a sim command): recompute now, so
        # the comparator line follows at once, not at the next ADC read.
        self._stale = True
        self._refresh()

    def set_cell(self, n, mv):
        """Pin cell n's (1-based) open-circuit voltage at mv until free_cell(n)."""
        if not 1 <= n <= self.pack.n:
            raise ValueError("cell number out of range (1..%d)" % self.pack.n)
        self.pack.pin(n - 1, float(mv))
        self._set()

    def free_cell(self, n):
        if not 1 <= n <= self.pack.n:
            raise ValueError("cell number out of range (1..%d)" % self.pack.n)
        self.pack.unpin(n - 1)
        self._set()

    def set_current(self, ma):
        """An ideal current source in place of the sources (mA, + = charging);
        None hands the current back to the sources."""
        self.manual_ma = None if ma is None else int(ma)
        self._set()

    def set_temp(self, i, c):
        """Pin NTC i's (0-based index into board["ntc"]) temperature; None frees it."""
        self.temp_pin[i] = None if c is None else float(c)
        self._set()

    def set_board_temp(self, c):
        self.board_temp_pinned = None if c is None else float(c)
        self._set()

    def set_ambient(self, c):
        self.pack.ambient_c = float(c)
        self._set()

    def sensor_temp_c(self, i):
        """The temperature NTC i sees: pinned, else the pack's."""
        t = self.temp_pin[i]
        return self.pack.temp_c if t is None else t

    def board_temp(self):
        t = self.board_temp_pinned
        return self.board_temp_c if t is None else t

    def time_of_day_s(self):
        return (self.day_start_s + self.now_ms / 1000.0) % 86400.0

    def fet_on(self, name):
        """True if FET `name` ("chg"/"dsg") conducts, from its gate GPIO or
        from the front-end chip that drives the gates."""
        fets = self.board.get("fets") or {}
        if fets.get("driver") == "afe":
            if name == "precharge" and fets.get("precharge") != "afe":
                return False
            return bool(self.afe_chip.fet_on(name))
        pin = fets.get(name)
        if pin is None:  # no such switch on this board: nothing blocks
            return True
        level = self.pin_out.get(pin, 0)  # undriven gate: pulled low
        if fets.get("active_high", True):
            return level == 1
        return level == 0

    def flowing_ma(self):
        """The current that actually flows (mA, + = charging)."""
        self._refresh()
        return int(round(self.current_a * 1000))

    def bleeding(self, k):
        """True if cell k's (0-based) bleeder conducts."""
        self._refresh()
        return bool(self._bleed_mask >> k & 1)

    def _bleeders_now(self):
        # Bit k set: cell k's bleeder conducts (GPIO level or 595 output).
        mask = 0
        if self._bleed_pins is not None:
            out = self.pin_out
            for k in range(len(self._bleed_pins)):
                if out.get(self._bleed_pins[k], 0) == 1:
                    mask |= 1 << k
        elif self.shift595 is not None and self.shift595.enabled():
            mask = self.shift595.latched
        elif self.afe_chip is not None:
            mask = self.afe_chip.bleed_mask()
        return mask & ((1 << self.pack.n) - 1)  # outputs beyond the pack bridge no cell

    # What chip models measure (tools/sim/chips/README.md).

    def cell_input_mv(self, k):
        """mV at the measurement input of pack cell k (0-based), with that
        input's error or its frozen value; 0.0 past the pack's last cell."""
        self._refresh()
        return self._in_mv[k] if k < self.pack.n else 0.0

    def sensed_current_ma(self):
        """mA through the shunt as a sensor sees it (+ = charging)."""
        self._refresh()
        return self.current_a * 1000.0 * self.shunt_gain + self.shunt_offset_ma

    def pack_terminal_mv(self):
        """Sum of the cell terminal voltages (mV)."""
        self._refresh()
        total = 0.0
        for v in self._cell_mv:
            total += v
        return total

    def ntc_ohm(self, i):
        """Resistance of thermistor board["ntc"][i] now (inf open, 0 shorted)."""
        return ntc_ohm(self.board["ntc"][i], self.sensor_temp_c(i), self.ntc_open[i], self.ntc_short[i])

    def board_ntc_ohm(self):
        return ntc_ohm(self.board["board_ntc"], self.board_temp(), self.board_ntc_open, self.board_ntc_short)

    def time_us(self):
        """Virtual microseconds since the simulation began (not reset by an MCU reset)."""
        return self.now_ms * 1000 + self._us

    def cell_true_mv(self, k):
        """Terminal voltage of cell k (0-based) now, as a voltmeter would read it."""
        self._refresh()
        return self._cell_mv[k]

    def _refresh(self):
        # Recompute what flows, the cell voltages and every analog input
        # once per change; ADC reads then only look them up.
        if not self._stale:
            return
        self._stale = False
        p = self.pack
        chg = self.fet_on("chg")
        dsg = self.fet_on("dsg")
        srcs = self.sources if self.manual_ma is None else [srcmod.Constant(self.manual_ma / 1000.0)]
        if self._fault_sources:
            srcs = srcs + self._fault_sources
        i = self.current_a = srcmod.solve(srcs, self.time_of_day_s(), p, chg, dsg) if srcs else 0.0
        mask = self._bleed_mask = self._bleeders_now()
        cells = []
        for k in range(p.n):
            if mask >> k & 1:  # the bleeder's current comes out of its own cell
                cells.append(p.cell_mv(k, i - p.cell_mv(k, i) / 1000.0 / self.bleed_ohm))
            else:
                cells.append(p.cell_mv(k, i))
        self._cell_mv = cells
        inputs = self._in_mv = self._inputs(self._at_board(cells, mask))
        now = {}  # pin -> uV
        for pin in self._analog:
            role = self._analog[pin]
            if role[0] != "mux":
                mv = self._role_mv(role)
                err = self.pin_error.get(pin)
                if err is not None and mv > 0:
                    mv = mv * err[0] + err[1]
                now[pin] = int(mv * 1000)
        self._pin_now = now
        if self._mux:
            self._mux_now = [int(inputs[k] * 1000) if k >= 0 else 0 for k in self._mux_map]
        self._update_comparator()

    def _at_board(self, cells, mask):
        # Cell voltages between the sense wires' board ends (sense_wire_mohm).
        rw = self.sense_wire_ohm
        if not (rw and mask):
            return cells
        seen = list(cells)
        n = len(cells)
        for k in range(n):
            if mask >> k & 1:
                d = cells[k] * rw / self.bleed_ohm  # mV across one wire
                seen[k] -= 2 * d
                if k > 0:
                    seen[k - 1] += d
                if k + 1 < n:
                    seen[k + 1] += d
        return seen

    def _inputs(self, cells):
        # Every cell-measurement input in mV: tap k sees cells 1..k through
        # its divider (unpopulated taps are tied to the top of the stack),
        # or amplifier k sees cell k (unpopulated ones are shorted).
        n = len(cells)
        out = []
        acc = 0.0
        scale = self._in_scale
        for k in range(len(scale)):
            if self._diff:
                v = cells[k] if k < n else 0.0
            else:
                if k < n:
                    acc += cells[k]
                v = acc
            out.append(v * scale[k])
        for k in self.tap_gain_error:
            out[k - 1] *= self.tap_gain_error[k]
        for k in self.tap_offset_mv:
            out[k - 1] += self.tap_offset_mv[k]
        for k in self._frozen:
            out[k] = self._frozen[k]
        return out

    def _on_select(self, _level):
        # A mux select line changed: the mux now passes another input.
        sel = self._mux["select"]
        addr = 0
        for i in range(len(sel)):
            addr |= self.read_pin(sel[i]) << i
        self._mux_addr = addr

    def _role_mv(self, role):
        kind, k = role
        b = self.board
        if kind == "tap" or kind == "cell":
            return self._in_mv[k]
        if kind == "pack":
            total = 0.0
            for v in self._cell_mv:
                total += v
            return total / b["pack_tap"]["scale"]
        if kind == "current":
            cur = b["current"]
            measured = self.current_a * 1000.0 * self.shunt_gain + self.shunt_offset_ma
            return cur["zero_mv"] + measured / cur["ma_per_mv"]
        if kind == "ntc":
            return ntc_pin_mv(b["ntc"][k], self.sensor_temp_c(k), self.ntc_open[k], self.ntc_short[k])
        return ntc_pin_mv(b["board_ntc"], self.board_temp(), self.board_ntc_open, self.board_ntc_short)

    def pin_mv(self, pin):
        """Analog voltage (mV, float) at a pin, from the circuit. After
        changing an attribute directly (ntc_open, tap_gain_error, ...) call
        changed(): readings are computed once per change."""
        if pin in self.analog_mv:
            return float(self.analog_mv[pin])
        self._refresh()
        if pin == self._mux_pin:
            return self._mux_now[self._mux_addr] / 1000.0
        return self._pin_now.get(pin, 0) / 1000.0

    # ------------------------------------------------------------------
    # Faults
    # ------------------------------------------------------------------

    def has_afe_link(self):
        """True if the front-end talks over a checksummed bus (chip models)."""
        for bus in self.i2c_devices.values():
            for dev in bus.values():
                if getattr(dev, "afe", False):
                    return True
        for devs in self.spi_devices.values():
            for dev in devs:
                if getattr(dev, "afe", False):
                    return True
        return False

    def set_fault(self, name, on, arg=None):
        """Inject (on=True) or remove a fault; ValueError says why not.
        arg: the cell or sensor (1-based) of stuck_cell, ntc_open, ntc_short
        (default 1); removing one without arg removes whichever is on."""
        if name not in FAULTS:
            raise ValueError("unknown fault %s (one of %s)" % (name, ", ".join(sorted(FAULTS))))
        if name == "afe_crc" and on and not self.has_afe_link():
            raise ValueError("afe_crc: board %s reads its cells by ADC, it has no checksummed front-end link"
                             % self.board.get("name"))
        if name == "afe_reset":
            if on:
                if self.afe_chip is None and self.current_chip is None:
                    raise ValueError("afe_reset: board %s has no front-end chip" % self.board.get("name"))
                for chip in (self.afe_chip, self.current_chip):
                    if chip is not None:  # a brown-out of the board's measurement supply
                        chip.power_on_reset()
                self.changed()
            return
        top = {"ntc_open": len(self.ntc_open), "ntc_short": len(self.ntc_open), "stuck_cell": self.pack.n,
               "afe_crc": 100, "afe_nack": 100}.get(name)
        if top is None and arg is not None:
            raise ValueError("%s takes no cell or sensor number" % name)
        if arg is not None and not 1 <= arg <= top:
            what = {"stuck_cell": "cell number", "afe_crc": "rate (%)", "afe_nack": "rate (%)"}.get(name, "thermistor number")
            raise ValueError("%s: %s out of range (1..%d)" % (name, what, top))
        if on:
            if top is not None and arg is None:
                arg = 100 if name in ("afe_crc", "afe_nack") else 1
            self._xfers[name] = 0
            if name in self.faults:
                if self.faults[name] != arg:
                    raise ValueError("%s is already on for %d; turn it off first" % (name, self.faults[name]))
                return
            self.faults[name] = arg
        else:
            if name not in self.faults:
                return
            if arg is not None and self.faults[name] != arg:
                raise ValueError("%s is on for %d, not %d" % (name, self.faults[name], arg))
            arg = self.faults.pop(name)
        self._apply_fault(name, on, arg)
        self._set()

    def _apply_fault(self, name, on, arg):
        if name == "ntc_open":
            self.ntc_open[arg - 1] = on
        elif name == "ntc_short":
            self.ntc_short[arg - 1] = on
        elif name == "stuck_cell":
            if on:
                self._refresh()
                # freeze the input carrying this cell (its tap on a divider board)
                self._frozen[arg - 1] = self._in_mv[arg - 1]
            else:
                self._frozen.pop(arg - 1, None)
        elif name == "load_short":
            if on:
                self._short = srcmod.Short(self.sim["short_mohm"] / 1000.0)
                self._fault_sources.append(self._short)
            else:
                self._fault_sources.remove(self._short)
        elif name == "charger_overvoltage":
            chargers = [s for s in self.sources if isinstance(s, srcmod.Charger)]
            if on and not chargers:
                cap_a = self.pack.cells[0].capacity_as / 3600.0
                self._broken = srcmod.Charger(self.sim["broken_charger_c"] * cap_a, 3650)
                self._broken.cv_failed = True
                self._fault_sources.append(self._broken)
            elif not on and getattr(self, "_broken", None) in self._fault_sources:
                self._fault_sources.remove(self._broken)
            for c in chargers:
                c.cv_failed = on

    def _hits(self, name):
        # Is this front-end transfer hit by fault `name` (on at a rate of
        # N %)? Exactly N of every 100 transfers, spread evenly, so runs repeat.
        pct = self.faults.get(name)
        if pct is None:
            return False
        n = self._xfers[name] = self._xfers[name] + 1
        return (n * pct) // 100 != ((n - 1) * pct) // 100

    def _front_end_access(self):
        # Every ADC read goes through here: a failed or hung front-end.
        if "firmware_hang" in self.faults:
            self._hang()
        if self._hits("afe_nack"):
            raise OSError(ETIMEDOUT)

    def _hang(self):
        # The access never returns: time runs on (host input and scenario
        # actions too) until the fault is removed or the watchdog bites.
        while "firmware_hang" in self.faults:
            self._idle(True)

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
        # open-drain pin only ever drives low. No allocation: this runs
        # inside (simulated) hard IRQs.
        old = self.read_pin(pin)
        mode = self.pin_mode.get(pin, 0)
        level = self.pin_latch.get(pin, 0)
        if mode & _MODE_OUTPUT_BIT and not (mode & _MODE_OD_BIT and level):
            self.pin_out[pin] = level
        elif pin in self.pin_out:
            del self.pin_out[pin]
        new = self.read_pin(pin)
        if new != old:
            self._level_changed(pin, new)

    def _level_changed(self, pin, level):
        if pin in self._current_pins:
            self._stale = True
        w = self._watchers.get(pin)
        if w is not None:
            for cb in w:
                cb(level)

    def write_pin(self, pin, v):
        v = 1 if v else 0
        self.pin_latch[pin] = v
        if self.pin_mode.get(pin, 0) == PIN_OUT:  # the common case, fast: a push-pull output
            if self.pin_out.get(pin) != v:
                self.pin_out[pin] = v
                self._level_changed(pin, v)
            return
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

    def watch_pin(self, pin, callback):
        """Chip models: callback(level) on every level change of pin."""
        self._watchers.setdefault(pin, []).append(callback)

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
        """Force the protection alert line active (fires the IRQ)."""
        self.alert_forced = True
        self._update_comparator()

    def release_alert(self):
        """Hand the alert line back to the comparator or the chip driving it."""
        self.alert_forced = None
        chip = self.current_chip or self.afe_chip
        if self._alert_chip_driven and chip is not None and hasattr(chip, "refresh_alert"):
            self.set_input(self.board["alert"]["pin"], 1 if self.board["alert"].get("active_low", True) else 0)
            chip.refresh_alert()
        else:
            self._update_comparator()

    def _update_comparator(self):
        # The short-circuit comparator asserts the line while the discharge
        # current is at or above its threshold.
        if not self.board.get("alert"):
            return
        on = self.alert_forced
        if on is None:
            if self._alert_chip_driven:
                # The chip model drives the line itself; its comparators
                # watch the shunt continuously, not only at physics steps.
                chip = self.afe_chip
                if chip is not None and hasattr(chip, "comparators"):
                    chip.comparators()
                    if self._stale:
                        self._refresh()
                return
            lim = self._alert_trip_ma
            on = lim is not None and -self.current_a * 1000.0 >= lim
        pin, active = self._alert_levels()
        self.set_input(pin, active if on else 1 - active)
        if self._stale:  # the IRQ switched FETs: what flows changed
            self._refresh()

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

    def adc_read_uv(self, pin):
        """What the calibrated ESP32 ADC reports: the pin voltage plus noise,
        clamped to the range of the attenuation, in uV at 1 mV resolution.
        The hot path of the whole simulation: values come precomputed and
        the arithmetic stays in small ints."""
        if self.faults:
            self._front_end_access()
        if self._stale:
            self._refresh()
        if self.analog_mv and pin in self.analog_mv:
            uv = int(self.analog_mv[pin] * 1000)
        elif pin == self._mux_pin:
            uv = self._mux_now[self._mux_addr]
        else:
            uv = self._pin_now.get(pin, 0)
        i = self._noise_i = (self._noise_i + 1) & self._noise_mask
        uv += self._noise[i]
        top = _ATTN_MAX_UV[self.adc_atten.get(pin, ATTN_0DB)] if self.esp32 else U16_FULL_SCALE_MV * 1000
        if uv < 0:
            uv = 0
        elif uv > top:
            uv = top
        return (uv + 500) // 1000 * 1000

    def adc_read_u16(self, pin):
        mv = self.adc_read_uv(pin) // 1000
        if not self.esp32:  # RP2040: a 12-bit conversion scaled as raw << 4 | raw >> 8
            raw = min(4095, (mv * 4095 + U16_FULL_SCALE_MV // 2) // U16_FULL_SCALE_MV)
            return raw << 4 | raw >> 8
        return min(65535, (mv * 65535 + U16_FULL_SCALE_MV // 2) // U16_FULL_SCALE_MV)

    # ------------------------------------------------------------------
    # Buses (used by machine.SPI and machine.I2C)
    # ------------------------------------------------------------------

    def add_spi_device(self, bus, dev):
        self.spi_devices.setdefault(bus, []).append(dev)

    def add_i2c_device(self, bus, addr, dev):
        self.i2c_devices.setdefault(bus, {})[addr] = dev

    def spi_transfer(self, bus, tx):
        """Clock tx out on bus; returns what MISO carried (0xFF: nobody)."""
        rx = None
        pins = self.spi_buses.get(bus)
        for dev in self.spi_devices.get(bus, ()):
            wiring = getattr(dev, "wiring", None)
            if wiring is not None and (pins is None or (pins["sck"], pins["mosi"]) != wiring):
                continue  # the controller clocks other pins than the chip's
            if dev.cs is None or self.read_pin(dev.cs) == 0:
                if self.faults and not self._front_end_access_bus(dev):
                    continue  # a front-end that does not answer leaves MISO to the pull-up
                hit = getattr(dev, "afe", False) and self._hits("afe_crc")
                if hit and self._flips % 2:  # every other bit error on MOSI: the chip's check sees it
                    got = dev.spi_transfer(self._corrupt(tx))
                else:
                    got = dev.spi_transfer(bytes(tx))
                    if hit and got:
                        got = self._corrupt(got)
                if dev.cs is not None and rx is None:
                    rx = got
        return rx if rx is not None else b"\xff" * len(tx)

    def _front_end_access_bus(self, dev):
        # Bus traffic to the front-end chip: a hang or a chip that does not
        # answer. Other chips (a shift register) are not affected.
        if not getattr(dev, "afe", False):
            return True
        if "firmware_hang" in self.faults:
            self._hang()
        return not self._hits("afe_nack")

    def _i2c_nack(self):
        raise OSError(ENODEV if self.esp32 else EIO)

    def i2c_dev(self, bus, addr):
        dev = self.i2c_devices.get(bus, {}).get(addr)
        if dev is None or not self._front_end_access_bus(dev):
            return None
        return dev

    def i2c_write(self, bus, addr, data, stop=True):
        """Start, address+W, data: number of data bytes acknowledged.
        Raises OSError when the address is not acknowledged."""
        dev = self.i2c_dev(bus, addr)
        data = bytes(data)
        if dev is not None and getattr(dev, "afe", False) and len(data) > 1 and self._hits("afe_crc"):
            data = self._corrupt(data)  # on the way to the chip: its CRC check refuses it
        n = -1 if dev is None else dev.i2c_write(data, stop)
        if n < 0:
            self._i2c_nack()
        return n

    def i2c_read(self, bus, addr, n, stop=True):
        dev = self.i2c_dev(bus, addr)
        data = None if dev is None else dev.i2c_read(n, stop)
        if data is None:
            self._i2c_nack()
        if getattr(dev, "afe", False) and data and self._hits("afe_crc"):
            data = self._corrupt(data)
        return data

    def _corrupt(self, data):
        # One flipped bit per transfer, at a position that walks through the
        # bytes and bits (deterministic, so runs repeat exactly).
        b = bytearray(data)
        self._flips += 1
        n = self._flips * 7
        b[n % len(b)] ^= 1 << (n // len(b) % 8)
        return bytes(b)

    def i2c_scan(self, bus):
        return sorted(a for a in self.i2c_devices.get(bus, {}) if self.i2c_dev(bus, a) is not None)

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

    def next_event_ms(self):
        """When the next timer or the watchdog is due (None: nothing is)."""
        t = self._next_timer(1 << 62)
        when = t._deadline if t is not None else None
        if self.wdt_running:
            w = self.wdt_fed_ms + self.wdt_timeout_ms
            if when is None or w < when:
                when = w
        return when

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
        if self.power_off:
            raise PowerCut("power cut at %d ms" % self.now_ms)

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

    def sleep_us(self, us):
        """time.sleep_us/ms on the board: time passes, timers fire."""
        self._us += us
        if self._us >= 1000:
            ms = self._us // 1000
            self._us -= ms * 1000
            self.advance(ms)

    def ticks_ms(self):
        """The MCU's ms counter: 0 at its last reset, wrapping at 2**30 like
        ESP32 and RP2 (tools/sim/time.py serves it to the firmware)."""
        return (self.now_ms - self.boot_ms) & 0x3FFFFFFF

    def _move_to(self, when):
        while when > self.now_ms:
            step = when - self.now_ms
            if step > _MAX_STEP_MS:
                step = _MAX_STEP_MS
            # Hooks see the state twice a step: as the firmware left it at
            # the start (what a tick switched, at the tick's own time) and
            # after the physics moved it on.
            for hook in self.step_hooks:
                hook(0)
            self._step_physics(step)
            self.now_ms += step
            for hook in self.step_hooks:
                hook(step)

    def _step_physics(self, dt_ms):
        # Integrate the pack and the board over dt with what flowed at its
        # start; then everything derived is stale. Slivers of time (the mux
        # settling inside a tick) are saved up: the pack lags the clock by
        # under _MIN_STEP_MS, timers and the watchdog do not.
        dt_ms += self._phys_debt_ms
        if dt_ms < _MIN_STEP_MS:
            self._phys_debt_ms = dt_ms
            return
        self._phys_debt_ms = 0
        self._refresh()
        p = self.pack
        dt = dt_ms / 1000.0
        i = self.current_a
        bleed = None
        heat = i * i * self.sim["fet_mohm"] / 1000.0
        mask = self._bleed_mask
        if mask:
            bleed = [0.0] * p.n
            for k in range(p.n):
                if mask >> k & 1:
                    a = self._cell_mv[k] / 1000.0 / self.bleed_ohm
                    bleed[k] = a
                    heat += a * a * self.bleed_ohm
        p.step(dt, i, bleed)
        if self.ambient_profile:
            p.ambient_c = _daily(self.ambient_profile, self.time_of_day_s() / 3600.0)
        # Board node: exact first-order response to constant heat over dt.
        tau = self.sim["board_j_per_k"] * self.sim["board_k_per_w"]
        target = p.ambient_c + heat * self.sim["board_k_per_w"]
        self.board_temp_c = target + (self.board_temp_c - target) * math.exp(-dt / tau)
        self._stale = True

    # ------------------------------------------------------------------
    # Idle: how the firmware's main loop lets time pass
    # ------------------------------------------------------------------

    def idle(self):
        """machine.idle(): run the idle hooks, then let time pass.

        "step": exactly 1 ms. "fast"/"wall": like a real MCU in idle, until
        the next timer or watchdog deadline (or at once if console bytes
        are waiting); "wall" paces that to speed x the wall clock. Paused:
        no time passes except to complete a `step`.
        """
        self._idle(False)

    def _idle(self, hung):
        # hung: called from a front-end access that does not return; console
        # bytes cannot wake it, and it returns as soon as the hang is lifted.
        for hook in self.idle_hooks:
            hook()
        self._check_alive()
        if hung and "firmware_hang" not in self.faults:
            return
        if self.pace == "step" and not self.paused:
            self.advance(1)
            return
        if self.uart_rx and not hung:
            return  # the UART interrupt wakes the MCU at once
        nxt = self.next_event_ms()
        target = self.now_ms + _MAX_STEP_MS if nxt is None else max(nxt, self.now_ms + 1)
        if self.paused:
            if self.step_to_ms is None:
                self._rt_origin = None
                self.wait_input(50)
                return
            if target >= self.step_to_ms:
                target = self.step_to_ms
                self.advance(target - self.now_ms)
                self.step_to_ms = None
                if self.on_step_done is not None:
                    self.on_step_done()
                return
            self.advance(target - self.now_ms)
            return
        if self.pace == "wall":
            target = self._pace_wall(target)
        self.advance(target - self.now_ms)

    def _pace_wall(self, target):
        # Wait (for host input at most) until the wall clock reaches the
        # virtual target; return the virtual time to move to.
        wall = ticks_ms()
        if self._rt_origin is None:
            self._rt_origin = (wall, self.now_ms)
        w0, v0 = self._rt_origin
        due = w0 + int((target - v0) / self.speed)
        left = ticks_diff(due, wall)
        if left > 0:
            self.wait_input(left)
            wall = ticks_ms()
            now_v = v0 + int(ticks_diff(wall, w0) * self.speed)
            if now_v < target:  # woken early by input
                return max(now_v, self.now_ms)
        elif left < -1000:
            # Far behind (the host is too slow for this speed): do not race
            # to catch up, start pacing afresh from here.
            self._rt_origin = (wall, target)
        return target

    def set_speed(self, speed):
        self.speed = float(speed)
        self._rt_origin = None

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
    # Reset
    # ------------------------------------------------------------------

    def board_reset(self, cause):
        """The MCU restarts: its peripherals back to reset state (FET gates,
        mux select lines and /OE float to their pulls); the pack, chip
        models, external inputs, the clock and what the UART already sent
        carry on; bytes waiting in its receive FIFO are lost."""
        before = {}
        for pin in self._watchers:
            before[pin] = self.read_pin(pin)
        self.timers = []
        self.pin_out = {}
        self.pin_mode = {}
        self.pin_pull = {}
        self.pin_latch = {}
        self.pin_irq = {}
        self.adc_atten = {}
        self.spi_buses = {}
        for pin in before:  # watchers see the pins fall back to their pulls
            level = self.read_pin(pin)
            if level != before[pin]:
                self._level_changed(pin, level)
        self.wdt_running = False
        self.wdt_expired = False
        self.reset_requested = False
        self.power_off = False
        self.power_cut_write = None
        self.reset_cause = cause
        self.boot_ms = self.now_ms
        self.uart_rx = bytearray()  # what sat in the receive FIFO is lost
        self._us = 0
        self.resets += 1
        self.changed()
