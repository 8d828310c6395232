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
                     _Pin(), _Pin(), None, (), True, alert, True)


def test_alert_handler_opens_fets_without_allocating():
    import micropython

    alert = _Pin(1)
    afe = _board(alert)
    afe.set_fets(True, True)
    assert afe.chg_pin.v == 1 and afe.dsg_pin.v == 1
    handler = afe.alert_handler()
    alert.v = 0
    micropython.heap_lock()  # as in a hard IRQ
    try:
        handler(alert)
    finally:
        micropython.heap_unlock()
    assert afe.chg_pin.v == 0 and afe.dsg_pin.v == 0
    afe.set_fets(True, True)  # the tick cannot switch them back on
    assert afe.chg_pin.v == 0 and afe.dsg_pin.v == 0
    assert not afe.clear_faults()  # comparator still asserting
    alert.v = 1
    assert afe.clear_faults()
    afe.set_fets(True, True)
    assert afe.chg_pin.v == 1


def test_saturated_tap_reads_as_an_impossible_cell():
    from bms.afe import Measurements
    from bms.drivers.adc_direct import AdcDirect

    taps = [(Channel(_Adc([1650000]), 1, True, max_uv=2450000), Linear(2.0)),
            (Channel(_Adc([2450000]), 1, True, max_uv=2450000), Linear(4.0))]
    afe = AdcDirect(taps, (Channel(_Adc([1250000]), 1, True), Linear(100, -125000)), [], None, _Pin(), _Pin())
    m = Measurements(2, 0)
    assert afe.read(m)
    assert m.cells_mv[0] == 3300 and m.cells_mv[1] == 0
