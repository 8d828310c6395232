# The direct-ADC driver's integer fixed point, against exact arithmetic.
from bms.drivers.adc_direct import Linear, Channel


def test_linear_matches_exact_scaling_for_divider_ratios():
    for factor in (2.0, 4.0, 6.0, 8.0, 7.9937, 16.5):
        lin = Linear(factor)
        for uv in (0, 1, 999, 150000, 1234567, 2450000, 3300000):
            want = uv * factor / 1000
            assert abs(lin.apply(uv) - want) <= 0.5 + want * 1e-4, (factor, uv, lin.apply(uv), want)


def test_linear_with_offset_and_negative_values():
    # shunt amplifier: 100 mA per mV around a 1250 mV zero
    lin = Linear(100, -125000)
    assert lin.apply(1250000) == 0
    assert lin.apply(1300000) == 5000
    assert lin.apply(1200000) == -5000
    assert lin.apply(50000) == -120000
    inv = Linear(-100)
    assert inv.apply(1000) == -100 and inv.apply(-1000) == 100


def test_large_factor_keeps_small_int_products():
    lin = Linear(1000.0)  # 1 mV per A sensor: 1000 mA per mV
    assert lin.mul * 4000 < (1 << 30)
    assert lin.apply(2500000) == 2500000
    assert lin.apply(1234) == 1234


class _Adc:
    def __init__(self, values):
        self.values = values
        self.i = 0

    def read_uv(self):
        v = self.values[self.i % len(self.values)]
        self.i += 1
        return v

    def read_u16(self):
        return self.read_uv()


def test_channel_oversamples_and_scales_u16():
    ch = Channel(_Adc([1000, 1002, 998, 1000]), 4, True)
    assert ch.uv() == 1000
    full = Channel(_Adc([65535]), 4, False, 3300000)
    assert abs(full.uv() - 3300000) < 100
    half = Channel(_Adc([32768]), 1, False, 3300000)
    assert abs(half.uv() - 1650000) < 100


class _Pin:
    def __init__(self, v=0):
        self.v = v

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


def _board(alert):
    from bms.drivers.adc_direct import AdcDirect

    taps = [(Channel(_Adc([1650000]), 1, True), Linear(2.0 * (i + 1))) for i in range(2)]
    return AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None,
                     _Pin(), _Pin(), None, None, True, alert, True)


def test_alert_handler_opens_fets_without_allocating():
    import micropython

    alert = _Pin(1)
    afe = _board(alert)
    afe.set_fets(True, True)
    assert afe.gates.chg_pin.v == 1 and afe.gates.dsg_pin.v == 1
    handler = afe.alert_handler()
    alert.v = 0
    micropython.heap_lock()  # as in a hard IRQ
    try:
        handler(alert)
    finally:
        micropython.heap_unlock()
    assert afe.gates.chg_pin.v == 0 and afe.gates.dsg_pin.v == 0
    afe.set_fets(True, True)  # the tick cannot switch them back on
    assert afe.gates.chg_pin.v == 0 and afe.gates.dsg_pin.v == 0
    assert not afe.clear_faults()  # comparator still asserting
    alert.v = 1
    assert afe.clear_faults()
    afe.set_fets(True, True)
    assert afe.gates.chg_pin.v == 1


def test_saturated_tap_reads_as_an_impossible_cell():
    from bms.afe import Measurements
    from bms.drivers.adc_direct import AdcDirect

    taps = [(Channel(_Adc([1650000]), 1, True, max_uv=2450000), Linear(2.0)),
            (Channel(_Adc([2450000]), 1, True, max_uv=2450000), Linear(4.0))]
    afe = AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None, _Pin(), _Pin())
    m = Measurements(2, 0)
    assert afe.read(m)
    assert m.cells_mv[0] == 3300 and m.cells_mv[1] == 0


class _LogPin(_Pin):
    def __init__(self, log, name, v=0):
        _Pin.__init__(self, v)
        self.log = log
        self.name = name

    def value(self, v=None):
        if v is not None:
            self.log.append((self.name, v))
        return _Pin.value(self, v)


class _MuxAdc:
    # The mux output: reads the input its select lines choose.
    def __init__(self, pins, inputs_uv):
        self.pins = pins
        self.inputs = inputs_uv

    def read_uv(self):
        addr = 0  # a loop, not sum(): this runs in heap-locked ticks
        for i in range(len(self.pins)):
            addr |= self.pins[i].v << i
        return self.inputs[addr]


def test_differential_cells_behind_a_mux_with_pack_divider():
    from bms.afe import Measurements
    from bms.drivers.adc_direct import AdcDirect, Mux

    log = []
    pins = [_LogPin(log, "s%d" % i) for i in range(4)]
    mux = Mux(pins, 0)
    # cell k's amplifier output is (3300 + 10 k) mV / 2 at the mux input k
    adc = _MuxAdc(pins, [(3300 + 10 * k) * 500 for k in range(16)])
    taps = [(Channel(adc, 2, True, mux=mux, addr=k), Linear(2.0)) for k in range(16)]
    pack = (Channel(_Adc([53400 * 1000 // 25]), 1, True), Linear(25.0))
    afe = AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None,
                    _Pin(), _Pin(), differential=True, pack=pack)
    assert afe.pack_measured and afe.max_cells == 16
    m = Measurements(16, 0)
    assert afe.read(m)
    assert list(m.cells_mv) == [3300 + 10 * k for k in range(16)]
    assert m.pack_mv == 53400
    # Only the select lines that change are driven (after the first full
    # select of input 0: 0 -> 1 flips s0; 1 -> 2 flips s0 and s1).
    assert log[4:7] == [("s0", 1), ("s0", 0), ("s1", 1)]


def test_saturated_pack_divider_reads_zero():
    from bms.afe import Measurements
    from bms.drivers.adc_direct import AdcDirect

    taps = [(Channel(_Adc([1650000]), 1, True, max_uv=2450000), Linear(2.0))]
    pack = (Channel(_Adc([2450000]), 1, True, max_uv=2450000), Linear(25.0))
    afe = AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None,
                    _Pin(), _Pin(), differential=True, pack=pack)
    m = Measurements(1, 0)
    afe.read(m)
    assert m.cells_mv[0] == 3300 and m.pack_mv == 0


class _Spi:
    def __init__(self, log):
        self.log = log

    def write(self, buf):
        self.log.append(("spi", bytes(buf)))


def test_shift_register_bleeders_clear_before_enabling_outputs():
    from bms.drivers.adc_direct import ShiftBleeders

    log = []
    oe = _LogPin(log, "oe", 1)
    sr = ShiftBleeders(_Spi(log), _LogPin(log, "latch"), oe, 2)
    assert sr.n == 16
    # cleared and latched with /OE held high: the power-up bits never drive
    assert log == [("latch", 0), ("oe", 1), ("spi", b"\x00\x00"), ("latch", 1), ("latch", 0)]
    del log[:]
    sr.set(0b1000000000000101)  # cells 1, 3 and 16
    # cells 9-16 shift out first (they end in the far chip), MSB first;
    # the outputs are enabled only once the latch holds the new bits
    assert log == [("spi", b"\x80\x05"), ("latch", 1), ("latch", 0), ("oe", 0)]


class _DeadSpi:
    def write(self, buf):
        raise OSError(5)


def test_shift_register_bleeders_all_off_without_the_bus():
    # "Nothing bleeds" is /OE high, set before the SPI write is tried: a
    # dead bus cannot leave a bleeder on.
    from bms.drivers.adc_direct import ShiftBleeders

    oe = _Pin(1)
    sr = ShiftBleeders(_Spi([]), _Pin(), oe, 2)
    sr.set(0x0003)
    assert oe.v == 0
    sr.spi = _DeadSpi()
    try:
        sr.set(0)
    except OSError:
        pass
    assert oe.v == 1


class _QuietSpi:
    def write(self, buf):
        pass


def test_shift_register_bleeders_do_not_allocate():
    import micropython
    from bms.drivers.adc_direct import ShiftBleeders

    sr = ShiftBleeders(_QuietSpi(), _Pin(), None, 2)
    micropython.heap_lock()
    try:
        sr.set(0x8001)
    finally:
        micropython.heap_unlock()




def test_mux_board_tick_runs_with_the_heap_locked():
    # The esp32_mux_16s layout: 16 differential inputs behind a mux, pack
    # divider, shift-register bleeders. The whole tick, driver included,
    # runs with the heap locked (any allocation raises under MicroPython).
    import micropython
    from bms.drivers.adc_direct import AdcDirect, Mux, ShiftBleeders
    from bms.ntc import Ntc
    from helpers import FakeClock, saved_config, tmpdir
    from bms.app import Bms

    pins = [_Pin() for _ in range(4)]
    mux = Mux(pins, 0)
    adc = _MuxAdc(pins, [(3390 + 2 * k) * 500 for k in range(16)])  # a spread above bal_start
    taps = [(Channel(adc, 8, True, mux=mux, addr=k), Linear(2.0)) for k in range(16)]
    total = sum(3390 + 2 * k for k in range(16))
    ntc = (Channel(_Adc([1250000]), 8, True), Ntc(10000, 3950, 10000, 2500, 25, None))
    afe = AdcDirect(taps, (Channel(_Adc([1260000]), 8, True), Linear(200, -250000)), [ntc, ntc], ntc,
                    _Pin(), _Pin(), None, ShiftBleeders(_QuietSpi(), _Pin(), _Pin(1), 2), True, None, True, 220000,
                    True, (Channel(_Adc([total * 1000 // 30]), 8, True), Linear(30.0)), 72000)
    clock = FakeClock()
    bms = Bms(afe, saved_config(tmpdir(), cells=16, bal_delta_mv=10), "test", clock=clock)
    for _ in range(20):
        clock.now += 100
        bms.tick()
    assert bms.valid and bms.tick_errors == 0 and afe.gates.chg_pin.v == 1
    assert bms.bal.mask  # charging at +2 A above bal_start: the top cells bleed
    micropython.heap_lock()
    try:
        for _ in range(20):
            clock.now += 100
            bms.tick()
    finally:
        micropython.heap_unlock()
    assert bms.valid and bms.tick_errors == 0, bms.last_error


# ---- pausing the bleeders while the cells are read ----------------------------


def _sim_board(path, wire_mohm, pause_us):
    # The board's circuit with sense wires of wire_mohm each and pinned cells
    # (no noise, no input error: readings repeat exactly).
    import machine
    import simworld
    from bms import board
    from bms.afe import Measurements

    b = simworld.load_board(path)
    b["sim"] = dict(b.get("sim") or {}, sense_wire_mohm=wire_mohm)
    b["balance_pause_us"] = pause_us
    world = machine.attach(simworld.SimWorld(b))
    n = world.pack.n
    for k in range(n):
        world.set_cell(k + 1, 3400 + 10 * k)
    afe = board.build_afe(b)
    afe.init(n)
    return world, afe, Measurements(n, afe.n_temps, afe.has_board_temp)


def _read(afe, m):
    assert afe.read(m)
    return list(m.cells_mv)


def test_bleeding_through_shared_sense_wires_reads_low_without_a_pause():
    for path in ("boards/esp32_adc_4s.json", "boards/esp32_mux_16s.json"):
        world, afe, m = _sim_board(path, 150, 0)
        unbled = _read(afe, m)
        afe.set_balancing(0b0101)
        bled = _read(afe, m)
        # 3.4 V / 33 Ohm through 150 mOhm: about 15 mV per wire
        assert 25 <= unbled[0] - bled[0] <= 35 and 25 <= unbled[2] - bled[2] <= 35, (path, unbled, bled)
        assert 25 <= bled[1] - unbled[1] <= 35 and 10 <= bled[3] - unbled[3] <= 20, (path, unbled, bled)


def test_balance_pause_reads_the_cells_as_if_nothing_bled():
    for path in ("boards/esp32_adc_4s.json", "boards/esp32_mux_16s.json"):
        world, afe, m = _sim_board(path, 150, 500)
        unbled = _read(afe, m)
        afe.set_balancing(0b0101)
        assert world.bleeding(0) and world.bleeding(2)
        t0 = world.time_us()
        assert _read(afe, m) == unbled, path
        assert world.time_us() - t0 >= 500
        assert world.bleeding(0) and world.bleeding(2) and not world.bleeding(1), path  # on again
        afe.set_balancing(0)
        t0 = world.time_us()
        assert _read(afe, m) == unbled
        assert not world.bleeding(0)


def test_a_bad_balance_pause_in_the_board_file_is_refused():
    import machine
    import simworld
    from bms import board

    for bad in (-1, 20001, "500", 1.5):
        b = simworld.load_board("boards/esp32_adc_4s.json")
        b["balance_pause_us"] = bad
        machine.attach(simworld.SimWorld(b))
        try:
            board.build_afe(b)
            refused = ""
        except ValueError as e:
            refused = str(e)
        assert refused.startswith("balance_pause_us must be an integer 0..20000"), (bad, refused)


class _ByteLog:
    def __init__(self):
        self.buf = bytearray(32)
        self.n = 0


class _BytePin(_Pin):
    # Logs (pin, level) into a bytearray: usable with the heap locked.
    def __init__(self, log, k):
        _Pin.__init__(self)
        self.log = log
        self.k = k

    def value(self, v=None):
        if v is not None:
            log = self.log
            log.buf[log.n] = self.k
            log.buf[log.n + 1] = v
            log.n += 2
        return _Pin.value(self, v)


def test_balance_pause_read_does_not_allocate():
    import micropython
    from bms.afe import Measurements
    from bms.drivers.adc_direct import AdcDirect, PinBleeders

    log = _ByteLog()
    pins = [_BytePin(log, k) for k in range(2)]
    taps = [(Channel(_Adc([1650000]), 1, True), Linear(2.0 * (i + 1))) for i in range(2)]
    afe = AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None,
                    _Pin(), _Pin(), None, PinBleeders(pins), balance_pause_us=50)
    m = Measurements(2, 0)
    afe.set_balancing(0b10)
    log.n = 0
    micropython.heap_lock()
    try:
        afe.read(m)
    finally:
        micropython.heap_unlock()
    # pin, level: both off for the reading, then as they were
    assert list(log.buf[:log.n]) == [0, 0, 1, 0, 0, 0, 1, 1]
    assert m.cells_mv[0] == 3300 and m.cells_mv[1] == 3300
