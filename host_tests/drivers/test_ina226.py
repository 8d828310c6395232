# The INA226 driver (firmware/lib/bms/drivers/ina226.py) against the chip
# model (tools/sim/chips/ina226.py) on the simulated pico_adc_ina226_4s
# board, through the simulated machine.I2C: readings against values worked
# out by hand from the datasheet LSBs, the programming read back from the
# model's registers, the alert on a short, a chip reset, NACKs, a wrong chip.
import machine
import simworld

from bms.afe import ChipReset
from bms.drivers import ina226 as drv

BOARD = "boards/pico_adc_ina226_4s.json"
BUS = 1
ADDR = 0x40
ALERT = 13


def _world(shunt_uohm=None, cells=(3300, 3300, 3300, 3300)):
    b = simworld.load_board(BOARD)
    if shunt_uohm is not None:
        chip = dict(b["current"]["ina226"])
        chip["shunt_uohm"] = shunt_uohm
        b["current"] = {"ina226": chip}
    w = simworld.SimWorld(b)
    for i, mv in enumerate(cells):
        w.set_cell(i + 1, mv)
    machine.attach(w)
    # The board's FET gates on: the current source's current flows.
    machine.Pin(b["fets"]["chg"], machine.Pin.OUT, value=1)
    machine.Pin(b["fets"]["dsg"], machine.Pin.OUT, value=1)
    return w, b


def _driver(w, b):
    ina = drv.from_board_current(b, machine)
    ina.init()
    return ina


def _fresh(w, ina, ms=40):
    # Past two averaged results (18.8 ms each): the later one is all taken
    # with the current as set now (the one in progress had older samples).
    w.advance(ms)
    return ina.read()


def test_from_board_current_builds_the_chip_from_the_board_file():
    w, b = _world()
    ina = drv.from_board_current(b, machine)
    assert isinstance(ina, drv.Ina226)
    assert ina.addr == ADDR and ina.shunt_uohm == 500
    assert ina.current_max_ma == 163840  # 81.92 mV / 0.5 mOhm
    assert ina.crc_errors == 0 and ina.bus_errors == 0
    assert drv.from_board_current(simworld.load_board("boards/esp32_adc_4s.json"), machine) is None


def test_init_programs_configuration_and_calibration_read_back_from_the_model():
    w, b = _world()
    ina = _driver(w, b)
    chip = w.current_chip
    # 0.5 mOhm: Current_LSB = 81.92 mV / 0.5 mOhm / 2**15 = 5 mA,
    # CAL = 0.00512 / (0.005 A x 0.0005 Ohm) = 2048.
    assert ina.lsb_ua == 5000 and chip.cal == 2048
    # AVG 16, VBUSCT = VSHCT = 588 us, shunt and bus continuous.
    assert chip.config == 0x4000 | (2 << 9) | (3 << 6) | (3 << 3) | 7
    assert chip.mask == 0 and chip.limit == 0  # no alert until asked


def test_current_and_bus_voltage_against_the_lsbs():
    w, b = _world()
    ina = _driver(w, b)
    w.set_current(12000)  # 12 A x 0.5 mOhm = 6 mV = 2400 LSB of 2.5 uV
    assert _fresh(w, ina)
    assert ina.current_ma == 2400 * 5  # CAL 2048: Current = Shunt, 5 mA each
    # VBUS on the pack's +: its terminal voltage in 1.25 mV steps.
    want = int(w.pack_terminal_mv() / 1.25 + 0.5)
    assert ina.bus_mv == (want * 5 + 2) // 4
    assert 13200 <= ina.bus_mv <= 13300  # 4 x 3.3 V plus the charge IR drop
    w.set_current(-37000)  # discharge: -18.5 mV = -7400 LSB
    assert _fresh(w, ina)
    assert ina.current_ma == -37000
    w.set_current(1234)  # 617 uV = 246.8 LSB -> 247 -> 1235 mA
    assert _fresh(w, ina)
    assert ina.current_ma == 1235
    w.set_current(0)
    assert _fresh(w, ina)
    assert ina.current_ma == 0 and ina.bus_mv == 13200  # 10560 x 1.25 mV


def test_odd_shunt_value_calibration_and_current():
    # 0.33 mOhm: Current_LSB = ceil(2.5 uV / 0.33 mOhm) = 7576 uA,
    # CAL = trunc(0.00512 / (0.007576 x 0.00033)) = 2047.
    w, b = _world(shunt_uohm=330)
    ina = _driver(w, b)
    assert ina.lsb_ua == 7576 and w.current_chip.cal == 2047
    assert ina.current_max_ma == 81920000 // 330
    w.set_current(10000)  # 3.3 mV = 1320 LSB; 1320 x 2047 / 2048 = 1319.36 -> 1319
    assert _fresh(w, ina)
    assert ina.current_ma == (1319 * 7576 + 500) // 1000  # 9993 mA


def test_read_reports_no_new_result_within_one_conversion_set():
    w, b = _world()
    ina = _driver(w, b)
    w.set_current(5000)
    assert _fresh(w, ina)
    w.advance(10)  # less than 18.8 ms after the previous read
    assert ina.read() is False
    w.advance(10)
    assert ina.read() is True


def test_alert_programming_read_back_from_the_model():
    w, b = _world()
    ina = _driver(w, b)
    chip = w.current_chip
    ina.set_alert_ma(100000)  # 100 A x 0.5 mOhm = 50 mV = 20000 LSB
    assert chip.mask == 0x4001  # SUL, latched, active low
    assert chip.limit == (-20000) & 0xFFFF == 0xB1E0
    ina.set_alert_ma(300000)  # beyond the 163.84 A range: trips at saturation
    assert chip.limit == (-32767) & 0xFFFF
    ina.set_alert_ma(0)
    assert chip.mask == 0 and chip.limit == 0


def test_alert_latches_on_a_short_and_clear_alert():
    w, b = _world()
    ina = _driver(w, b)
    ina.set_alert_ma(100000)
    w.set_current(-20000)
    assert _fresh(w, ina) and not ina.alert
    assert w.read_pin(ALERT) == 1
    w.set_fault("load_short", True)
    w.advance(10)  # one physics step: conversions see the short
    assert w.read_pin(ALERT) == 0  # the chip pulls its ALERT line low
    ina.read()
    assert ina.alert  # the flag is latched in the driver
    # The short is still there: clearing does not release it.
    w.advance(40)
    assert ina.clear_alert() is False and ina.alert
    # The FETs open (as the firmware's alert IRQ does): no current.
    machine.Pin(b["fets"]["dsg"], machine.Pin.OUT, value=0)
    machine.Pin(b["fets"]["chg"], machine.Pin.OUT, value=0)
    w.advance(40)
    ina.read()
    assert ina.alert  # stays latched until cleared
    assert ina.current_ma == 0
    assert ina.clear_alert() is True and not ina.alert
    assert w.read_pin(ALERT) == 1
    w.set_fault("load_short", False)
    w.advance(40)
    assert ina.read() and not ina.alert


def test_chip_reset_mid_run_then_init_again():
    w, b = _world()
    ina = _driver(w, b)
    ina.set_alert_ma(100000)
    w.set_current(8000)
    assert _fresh(w, ina) and ina.current_ma == 8000
    w.current_chip.power_on_reset()  # a brown-out of the chip alone
    w.advance(40)
    try:
        ina.read()
        raise AssertionError("ChipReset expected")
    except ChipReset:
        pass
    ina.init()
    chip = w.current_chip
    assert chip.cal == 2048 and chip.mask == 0x4001  # the alert is set again
    assert _fresh(w, ina) and ina.current_ma == 8000
    # The RST bit (what init() itself uses) looks the same to read().
    ina._wr(0x00, 0x8000)
    try:
        ina.read()
        raise AssertionError("ChipReset expected")
    except ChipReset:
        pass


def test_nack_burst_is_retried_then_reported():
    w, b = _world()
    ina = _driver(w, b)
    w.set_current(3000)
    w.advance(40)
    chip = w.current_chip
    chip.nack_next = 2  # two failed transfers, the third attempt works
    assert ina.read() and ina.current_ma == 3000
    assert ina.bus_errors == 2
    chip.nack_next = 3  # one transfer fails three times: given up
    try:
        ina.read()
        raise AssertionError("OSError expected")
    except OSError as e:
        assert not isinstance(e, ChipReset)
    assert ina.bus_errors == 5
    chip.nack = True  # a burst
    for _ in range(3):
        try:
            ina.read()
            raise AssertionError("OSError expected")
        except OSError:
            pass
    assert ina.bus_errors == 5 + 9
    chip.nack = False
    w.advance(40)
    assert ina.read() and ina.current_ma == 3000  # back, nothing lost
    # Taken off the bus entirely.
    del w.i2c_devices[BUS][ADDR]
    try:
        ina.read()
        raise AssertionError("OSError expected")
    except OSError:
        pass


class _OtherChip:
    """Something else at 0x40 that answers every register with 0."""

    afe = False

    def i2c_write(self, data, stop=True):
        return len(data)

    def i2c_read(self, n, stop=True):
        return bytes(n)


def test_wrong_chip_id_is_refused():
    w, b = _world()
    w.add_i2c_device(BUS, ADDR, _OtherChip())
    ina = drv.from_board_current(b, machine)
    try:
        ina.init()
        raise AssertionError("OSError expected")
    except OSError as e:
        assert "INA226 not found at 0x40" in str(e)
    # Nothing at the address at all: an OSError too.
    del w.i2c_devices[BUS][ADDR]
    try:
        ina.init()
        raise AssertionError("OSError expected")
    except OSError:
        pass


class _RegI2C:
    """A register file behind the I2C calls the driver uses; no allocation."""

    def __init__(self, regs):
        self.regs = [0] * 256
        for r in regs:
            self.regs[r] = regs[r]

    def readfrom_mem_into(self, addr, reg, buf):
        v = self.regs[reg]
        buf[0] = v >> 8
        buf[1] = v & 0xFF

    def writeto_mem(self, addr, reg, buf):
        self.regs[reg] = (buf[0] << 8) | buf[1]


def test_read_and_set_paths_do_not_allocate():
    import micropython

    w, b = _world()
    ina = _driver(w, b)
    ina.set_alert_ma(100000)
    w.set_current(-40000)
    w.advance(40)
    chip = w.current_chip
    # The model's registers as they are now, behind an allocation-free bus.
    regs = {}
    for r in (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xFE, 0xFF):
        chip.i2c_write(bytes([r]), False)
        d = chip.i2c_read(2, True)
        regs[r] = (d[0] << 8) | d[1]
    fake = drv.Ina226(_RegI2C(regs), ADDR, 500)
    fake.init()
    fake.set_alert_ma(100000)
    regs = fake.i2c.regs
    for r in (0x01, 0x02, 0x04):
        chip.i2c_write(bytes([r]), False)
        d = chip.i2c_read(2, True)
        regs[r] = (d[0] << 8) | d[1]
    regs[0x06] = 0x4001 | 0x0008  # conversion ready
    micropython.heap_lock()
    try:
        ok = fake.read()
        gone = fake.clear_alert()
        fake.set_alert_ma(100000)
        regs[0x06] = 0x4001 | 0x0008
        ok2 = fake.read()
    finally:
        micropython.heap_unlock()
    assert ok and ok2 and gone
    assert fake.current_ma == -40000
    assert 13000 < fake.bus_mv < 13300
