# The INA226 model (tools/sim/chips/ina226.py) on its own, against the
# datasheet (TI SBOS547): register map and power-on values, the LSBs and the
# Configure/Measure/Calculate example, conversion timing, the alert function.
# A small fake world gives exact control of time and of the shunt current.
from chips import ina226 as chip


class FakeWorld:
    def __init__(self, ma=0.0, pack_mv=0.0):
        self.us = 0
        self.ma = ma
        self.pack_mv = pack_mv
        self.step_hooks = []
        self.devices = {}
        self.pins = {}
        self.edges = []

    def time_us(self):
        return self.us

    def sensed_current_ma(self):
        return self.ma

    def pack_terminal_mv(self):
        return self.pack_mv

    def set_input(self, pin, level):
        if self.pins.get(pin) != level:
            self.edges.append((pin, level))
        self.pins[pin] = level

    def add_i2c_device(self, bus, addr, dev):
        self.devices[(bus, addr)] = dev

    def advance_us(self, us):
        # As SimWorld: hooks before and after the step.
        for h in self.step_hooks:
            h(0)
        self.us += us
        for h in self.step_hooks:
            h(us // 1000)


BOARD = {
    "current": {"ina226": {"i2c": 1, "sda": 2, "scl": 3, "addr": 64, "shunt_uohm": 2000}},
    "pack_tap": {"ina226": "bus"},
    "alert": {"pin": 13, "active_low": True, "source": "ina226"},
}
ALERT = 13


def _make(ma=0.0, pack_mv=0.0, board=BOARD):
    w = FakeWorld(ma, pack_mv)
    w.pins[ALERT] = 1  # the board's pull-up
    dev = chip.attach(w, board)
    assert w.devices[(1, 64)] is dev and dev.afe is False
    return w, dev


def rd(dev, reg):
    assert dev.i2c_write(bytes([reg]), False) == 1
    d = dev.i2c_read(2, True)
    return (d[0] << 8) | d[1]


def wr(dev, reg, v):
    assert dev.i2c_write(bytes([reg, v >> 8, v & 0xFF]), True) == 3


def signed(v):
    return v - 0x10000 if v & 0x8000 else v


def test_ids_and_the_pointer_stays_between_reads():
    w, dev = _make()
    assert rd(dev, 0xFE) == 0x5449
    assert rd(dev, 0xFF) == 0x2260
    # A read without a new pointer reads the same register again.
    d = dev.i2c_read(2, True)
    assert (d[0] << 8) | d[1] == 0x2260
    # Big-endian: the MSB comes first.
    dev.i2c_write(b"\xfe", False)
    assert dev.i2c_read(2, True) == b"\x54\x49"


def test_power_on_values():
    w, dev = _make()
    assert rd(dev, 0x00) == 0x4127
    for reg in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        assert rd(dev, reg) == 0, reg


def test_rst_bit_and_power_on_reset_restore_every_register():
    w, dev = _make(ma=1000.0, pack_mv=12000.0)
    wr(dev, 0x05, 2560)
    wr(dev, 0x06, 0x4001)
    wr(dev, 0x07, 0x1234)
    wr(dev, 0x00, 0x4527)  # AVG 16 at 1.1 + 1.1 ms: 35.2 ms
    w.advance_us(40000)
    assert rd(dev, 0x01) != 0 and rd(dev, 0x05) == 2560
    wr(dev, 0x00, 0x8000 | 0x4527)
    assert rd(dev, 0x00) == 0x4127  # RST self-clears; defaults back
    for reg in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        assert rd(dev, reg) == 0, reg
    wr(dev, 0x05, 100)
    wr(dev, 0x00, 0x4000)
    dev.power_on_reset()
    assert rd(dev, 0x00) == 0x4127 and rd(dev, 0x05) == 0


def test_read_only_registers_ignore_writes_and_cal_d15_is_not_stored():
    w, dev = _make()
    for reg in (0x01, 0x02, 0x03, 0x04, 0xFE, 0xFF):
        before = rd(dev, reg)
        wr(dev, reg, 0x5A5A)
        assert rd(dev, reg) == before, reg
    wr(dev, 0x05, 0xFFFF)
    assert rd(dev, 0x05) == 0x7FFF
    # Flags in Mask/Enable are the chip's: a write cannot set them.
    wr(dev, 0x06, 0xFFFF)
    assert rd(dev, 0x06) & 0x001C == 0


def test_datasheet_configure_measure_calculate_example():
    # SBOS547 Table 1: 10 A through 2 mOhm, VBUS 11.98 V, Current_LSB 1 mA.
    cal = int(0.00512 / (0.001 * 0.002) + 0.5)
    assert cal == 2560 == 0x0A00
    w, dev = _make(ma=10000.0, pack_mv=11980.0)
    wr(dev, 0x05, cal)
    w.advance_us(2200)  # POR: 1.1 ms shunt + 1.1 ms bus, no averaging
    assert rd(dev, 0x01) == 0x1F40  # 8000 x 2.5 uV = 20 mV
    assert rd(dev, 0x02) == 0x2570  # 9584 x 1.25 mV = 11.98 V
    assert rd(dev, 0x04) == 0x2710  # 8000 x 2560 / 2048 = 10000 x 1 mA
    assert rd(dev, 0x03) == 0x12B8  # 10000 x 9584 / 20000 = 4792 x 25 mW


def test_shunt_lsb_sign_and_saturation():
    w, dev = _make(ma=1.25)  # 1.25 mA x 2 mOhm = 2.5 uV: one LSB
    w.advance_us(2200)
    assert rd(dev, 0x01) == 1
    w.ma = -40000.0  # -80 mV: the datasheet's two's complement example
    w.advance_us(2200)
    assert rd(dev, 0x01) == 0x8300
    w.ma = -50000.0  # -100 mV: beyond the range
    w.advance_us(2200)
    assert rd(dev, 0x01) == 0x8000
    w.ma = 50000.0
    w.advance_us(2200)
    assert rd(dev, 0x01) == 0x7FFF


def test_bus_voltage_lsb_clamp_and_not_wired():
    w, dev = _make(pack_mv=13337.5)
    w.advance_us(2200)
    assert rd(dev, 0x02) == 10670  # 13337.5 / 1.25
    w.pack_mv = 45000.0
    w.advance_us(2200)
    assert rd(dev, 0x02) == 0x7FFF  # 40.96 V full scale, D15 always 0
    board = dict(BOARD)
    board["pack_tap"] = None
    w2, dev2 = _make(pack_mv=12000.0, board=board)
    w2.advance_us(2200)
    assert rd(dev2, 0x02) == 0


def test_current_and_power_are_zero_until_calibrated():
    w, dev = _make(ma=10000.0, pack_mv=12000.0)
    w.advance_us(2200)
    assert rd(dev, 0x01) == 8000
    assert rd(dev, 0x04) == 0 and rd(dev, 0x03) == 0
    wr(dev, 0x05, 1024)
    w.advance_us(2200)
    assert rd(dev, 0x04) == 4000  # 8000 x 1024 / 2048


def test_conversion_not_ready_before_its_time():
    w, dev = _make(ma=10000.0)
    w.us = 2199
    assert rd(dev, 0x06) & 0x0008 == 0
    assert rd(dev, 0x01) == 0  # registers update only when the set completes
    w.us = 2200
    assert rd(dev, 0x06) & 0x0008
    assert rd(dev, 0x01) == 8000
    # Reading Mask/Enable cleared CVRF.
    assert rd(dev, 0x06) & 0x0008 == 0
    # AVG 16, VBUSCT = VSHCT = 588 us: 16 x 1176 us after the write.
    w.ma = 5000.0  # from the write on
    wr(dev, 0x00, 0x4000 | (2 << 9) | (3 << 6) | (3 << 3) | 7)
    t0 = w.us
    w.us = t0 + 18815
    assert rd(dev, 0x06) & 0x0008 == 0 and rd(dev, 0x01) == 8000
    w.us = t0 + 18816
    assert rd(dev, 0x06) & 0x0008 and rd(dev, 0x01) == 4000


def test_config_write_clears_cvrf_and_restarts_the_conversion():
    w, dev = _make()
    w.advance_us(2200)
    wr(dev, 0x00, 0x4127)
    assert rd(dev, 0x06) & 0x0008 == 0
    w.us += 2199
    assert rd(dev, 0x06) & 0x0008 == 0
    w.us += 1
    assert rd(dev, 0x06) & 0x0008


def test_averaging_mixes_the_samples_of_the_block():
    # AVG 4, 140 us each: four shunt/bus pairs of 280 us.
    w, dev = _make(ma=10000.0)
    wr(dev, 0x00, 0x4000 | (1 << 9) | 7)
    t0 = w.us
    w.us = t0 + 2 * 280  # two samples at 8000
    w.ma = 0.0  # from now on (the read is where the chip sees it)
    rd(dev, 0x06)
    w.us = t0 + 4 * 280  # two at 0
    assert rd(dev, 0x06) & 0x0008
    assert rd(dev, 0x01) == 4000


def test_power_down_and_triggered_modes():
    w, dev = _make(ma=10000.0)
    wr(dev, 0x00, 0x4120)  # power-down
    w.advance_us(100000)
    assert rd(dev, 0x06) & 0x0008 == 0 and rd(dev, 0x01) == 0
    wr(dev, 0x00, 0x4121)  # shunt, triggered: one conversion of 1.1 ms
    w.advance_us(1100)
    assert rd(dev, 0x06) & 0x0008 and rd(dev, 0x01) == 8000
    w.ma = 2000.0
    w.advance_us(100000)
    assert rd(dev, 0x06) & 0x0008 == 0 and rd(dev, 0x01) == 8000  # stopped


def _short_setup(dev, limit_ma, latch=True):
    # SUL at -limit: 2 mOhm, 2.5 uV/LSB -> 0.8 LSB per A.
    raw = limit_ma * 2000 // 1000 * 2 // 5
    wr(dev, 0x07, (-raw) & 0xFFFF)
    wr(dev, 0x06, 0x4000 | (1 if latch else 0))
    rd(dev, 0x06)


def test_latched_alert_holds_until_mask_enable_is_read():
    w, dev = _make(ma=-5000.0)
    _short_setup(dev, 30000)
    w.advance_us(10000)
    assert w.pins[ALERT] == 1 and not dev.alert_active()
    w.ma = -35000.0  # a discharge short beyond 30 A
    w.advance_us(2200)  # the next shunt conversion
    assert w.pins[ALERT] == 0 and rd(dev, 0x06) & 0x0010 == 0x0010
    # That read released it; the short is still there: the next one trips again.
    assert w.pins[ALERT] == 1
    w.advance_us(2200)
    assert w.pins[ALERT] == 0
    w.ma = 0.0  # the FETs opened
    w.advance_us(20000)
    assert w.pins[ALERT] == 0  # latched: still asserted
    assert rd(dev, 0x06) & 0x0010  # AFF still set, and this read clears it
    assert w.pins[ALERT] == 1
    w.advance_us(20000)
    assert w.pins[ALERT] == 1 and rd(dev, 0x06) & 0x0010 == 0


def test_transparent_alert_follows_the_condition():
    w, dev = _make(ma=-35000.0)
    _short_setup(dev, 30000, latch=False)
    w.advance_us(2200)
    assert w.pins[ALERT] == 0
    assert rd(dev, 0x06) & 0x0010
    assert w.pins[ALERT] == 0  # a read does not release it while the short is on
    w.ma = -1000.0
    w.advance_us(2200)
    assert w.pins[ALERT] == 1 and rd(dev, 0x06) & 0x0010 == 0


def test_alert_compares_every_conversion_not_the_average():
    # AVG 1024 at 1.1 ms + 1.1 ms: 2.25 s per averaged result, yet the
    # alert answers after the first shunt conversion of the short.
    w, dev = _make(ma=-1000.0)
    wr(dev, 0x00, 0x4000 | (7 << 9) | (4 << 6) | (4 << 3) | 7)
    _short_setup(dev, 30000)
    w.advance_us(100000)
    w.ma = -40000.0
    w.advance_us(2200)
    assert w.pins[ALERT] == 0
    assert rd(dev, 0x01) == 0  # no averaged result yet


def test_alert_function_priority_and_limit_sign():
    # SOL and SUL both set: SOL (the higher bit) is the one compared, as a
    # signed value: -32000 LSB is not over -100, though it is under it.
    w, dev = _make(ma=-40000.0)
    wr(dev, 0x07, (-100) & 0xFFFF)
    wr(dev, 0x06, 0xC001)
    w.advance_us(2200)
    assert w.pins[ALERT] == 1
    w.ma = -0.25  # -0.5 uV -> 0 LSB: over -100
    w.advance_us(2200)
    assert w.pins[ALERT] == 0


def test_bus_under_voltage_and_power_over_limit():
    w, dev = _make(pack_mv=12000.0)
    wr(dev, 0x07, 8000)  # 10 V
    wr(dev, 0x06, 0x1000)  # BUL, transparent
    w.advance_us(2200)
    assert w.pins[ALERT] == 1
    w.pack_mv = 9000.0
    w.advance_us(2200)
    assert w.pins[ALERT] == 0
    w.pack_mv = 12000.0
    w.advance_us(2200)
    assert w.pins[ALERT] == 1
    wr(dev, 0x05, 2560)  # 1 mA, 25 mW per LSB
    wr(dev, 0x07, 4000)  # 100 W
    wr(dev, 0x06, 0x0800)  # POL
    w.ma = 10000.0  # 12 V x 10 A = 120 W
    w.advance_us(2200)
    assert w.pins[ALERT] == 0 and rd(dev, 0x03) == 4800
    w.ma = 5000.0  # 60 W
    w.advance_us(2200)
    assert w.pins[ALERT] == 1


def test_inverted_polarity_and_conversion_ready_on_the_pin():
    w, dev = _make()
    wr(dev, 0x06, 0x0002)  # APOL, no function: the drain conducts while idle
    w.advance_us(1000)
    assert w.pins[ALERT] == 0
    wr(dev, 0x06, 0x0400)  # CNVR, normal polarity
    rd(dev, 0x06)
    w.advance_us(2200)
    assert w.pins[ALERT] == 0  # conversion ready
    rd(dev, 0x06)  # clears CVRF: released
    assert w.pins[ALERT] == 1


def test_nack_flag():
    w, dev = _make()
    dev.nack = True
    assert dev.i2c_write(b"\x00", False) == -1
    assert dev.i2c_read(2, True) is None
    dev.nack = False
    assert rd(dev, 0xFE) == 0x5449


def test_long_runs_skip_whole_blocks_with_the_same_result():
    w, dev = _make(ma=-2500.0, pack_mv=13000.0)
    wr(dev, 0x05, 2048)
    for _ in range(50):
        w.advance_us(1000000)
    assert signed(rd(dev, 0x01)) == -2000 and signed(rd(dev, 0x04)) == -2000
    assert rd(dev, 0x02) == 10400 and rd(dev, 0x03) == 2000 * 10400 // 20000
