# Tests of the simulated board (tools/sim/simworld.py) through the simulated
# `machine` module, mostly on boards/esp32_mux_16s.json. Plain functions with
# bare asserts: they run under pytest and inside MicroPython (mp_run.py).
#
# Hand values from boards/esp32_mux_16s.json and the circuit in simworld.py:
# - cells: one difference amplifier per cell, gain 1/2 ("scale": 2.0), into a
#   16:1 mux on GPIO32, select lines GPIO18/19/21/22 (bit 0 first);
# - pack divider 1:30 on GPIO33; shunt amplifier on GPIO36: 1250 mV at 0 A,
#   200 mA per mV;
# - NTCs on GPIO39/34 (board NTC GPIO35): Beta 3950, r0 = pull-up = 10 k, fed
#   from 2500 mV, so 1250 mV at 25 C;
# - FET gates CHG GPIO23, DSG GPIO26, active high, undriven = off;
# - bleeders (33 Ohm) on two 74HC595 on SPI(1), latch GPIO17, /OE GPIO16 with
#   a pull-up; alert GPIO27 active low above 400 A discharge;
# - default pack: 16S LFP 100 Ah at 50 % (OCV 3297 mV), R0 0.45 mOhm per cell,
#   so 7.2 mOhm for the pack at 25 C.
# The ADC reads at 11 dB: 0..2450 mV, 1 mV steps, rounded half up.
import sys

import machine
import pack
import simworld
import sources

MUX16 = "boards/esp32_mux_16s.json"
ADC4 = "boards/esp32_adc_4s.json"
MICROPYTHON = sys.implementation.name == "micropython"


def close(a, b, tol):
    return abs(a - b) <= tol


def raises(fn, exc):
    # The exception fn() raised (an instance of exc), or None.
    try:
        fn()
    except exc as e:
        return e
    return None


def world16(pk=None, sensors=None, board=None):
    w = simworld.SimWorld(board or simworld.load_board(MUX16), pk, sensors)
    machine.attach(w)
    return w


def adc(pin):
    return machine.ADC(machine.Pin(pin), atten=machine.ADC.ATTN_11DB)


def select(w, addr):
    # Drive the mux select lines (bit i on select[i]).
    sel = w.board["mux"]["select"]
    for i in range(len(sel)):
        machine.Pin(sel[i], machine.Pin.OUT, value=(addr >> i) & 1)


def bleeders(w):
    return [k + 1 for k in range(w.pack.n) if w.bleeding(k)]


def write595(w, hi, lo):
    # Shift two bytes into the chain and pulse the latch (RCLK rising edge).
    sr = w.board["balance"]["shift595"]
    spi = machine.SPI(sr["spi"], sck=machine.Pin(sr["sck"]), mosi=machine.Pin(sr["mosi"]))
    latch = machine.Pin(sr["latch"], machine.Pin.OUT, value=0)
    spi.write(bytes([hi, lo]))
    latch.value(1)
    latch.value(0)


class RegFile:
    """A small chip model (devices.py interface): 16 8-bit registers, an
    auto-incrementing pointer set by the first byte of every write; also an
    SPI chip that answers each byte with its complement."""

    def __init__(self, afe=False, cs=None):
        self.regs = bytearray(16)
        self.ptr = 0
        self.afe = afe
        self.cs = cs
        self.seen = []  # SPI transfers it was selected for

    def i2c_write(self, data, stop):
        if data:
            self.ptr = data[0] & 15
            for b in data[1:]:
                self.regs[self.ptr] = b
                self.ptr = (self.ptr + 1) & 15
        return len(data)

    def i2c_read(self, n, stop):
        out = bytearray(n)
        for k in range(n):
            out[k] = self.regs[self.ptr]
            self.ptr = (self.ptr + 1) & 15
        return bytes(out)

    def spi_transfer(self, tx):
        self.seen.append(bytes(tx))
        return bytes([(~b) & 0xFF for b in tx])


# ---- 1. cell inputs behind the mux, pack divider -------------------------------


def test_mux_select_lines_pick_the_cell_amplifier():
    w = world16()
    try:
        for n in range(1, 17):
            w.set_cell(n, 3000 + 20 * n)  # amplifier n: (3000 + 20 n) / 2 = 1500 + 10 n mV
        mux = adc(w.board["mux"]["pin"])
        # select lines undriven (pulled down): address 0 = cell 1
        assert mux.read_uv() == 1510000
        for addr in (5, 15, 0, 10, 1, 8):
            select(w, addr)
            assert mux.read_uv() == (1500 + 10 * (addr + 1)) * 1000, addr
        # changing one select line moves by that bit: 8 -> 9 (GPIO18 high)
        machine.Pin(18).value(1)
        assert mux.read_uv() == 1600000  # cell 10: 3200 / 2
        # pack divider: sum(3000 + 20 n, n = 1..16) = 48000 + 2720 = 50720 mV, / 30
        assert adc(33).read_uv() == 1691000  # 1690.67 mV rounds to 1691
        assert close(w.pin_mv(33), 1690.667, 1e-3)
        # an ADC pin wired to nothing reads 0 V
        assert adc(25).read_uv() == 0
    finally:
        machine.attach(None)


def test_mux_falls_back_to_input_0_after_a_board_reset():
    w = world16()
    try:
        w.set_cell(1, 3000)
        w.set_cell(6, 3400)
        select(w, 5)
        assert adc(32).read_uv() == 1700000  # cell 6
        w.board_reset(simworld.SOFT_RESET)  # select lines float back to their pull-downs
        assert adc(32).read_uv() == 1500000  # cell 1
    finally:
        machine.attach(None)


def test_unwired_mux_input_reads_0v():
    b = simworld.load_board(MUX16)
    del b["cell_taps"][15]  # mux input 15 not connected
    b["cells"] = 15
    w = world16(pack.Pack(cells=15), board=b)
    try:
        for n in range(1, 16):
            w.set_cell(n, 3300)
        select(w, 14)
        assert adc(32).read_uv() == 1650000
        select(w, 15)
        assert adc(32).read_uv() == 0
    finally:
        machine.attach(None)


def test_smaller_pack_leaves_upper_amplifiers_at_0v():
    w = world16(pack.Pack(cells=8))
    try:
        for n in range(1, 9):
            w.set_cell(n, 3200 + 10 * n)  # 1600 + 5 n mV at amplifier n
        mux = adc(32)
        for addr in range(16):
            select(w, addr)
            want = (1600 + 5 * (addr + 1)) * 1000 if addr < 8 else 0  # 9..16 shorted
            assert mux.read_uv() == want, addr
        # pack divider: (8 * 3200 + 10 * 36) / 30 = 25960 / 30 = 865.33 mV
        assert adc(33).read_uv() == 865000
    finally:
        machine.attach(None)


def test_pack_larger_than_the_board_is_refused():
    b = simworld.load_board(ADC4)
    e = raises(lambda: simworld.SimWorld(b, pack.Pack(cells=5)), ValueError)
    assert e is not None and "at most 4" in str(e)


# ---- 2. 74HC595 bleeders ---------------------------------------------------------


def test_595_power_up_contents_are_disabled_by_oe_pull_up():
    w = world16()
    try:
        # sim default power_up_595 0xA5A5A5A5, 16 bits kept: 0xA5A5
        assert w.shift595.latched == 0xA5A5
        assert bleeders(w) == []  # /OE pulled up: outputs off
        assert w.read_pin(16) == 1
        # driving /OE low with nothing written would bleed that garbage:
        # bits 0,2,5,7,8,10,13,15 -> cells 1,3,6,8,9,11,14,16
        machine.Pin(16, machine.Pin.OUT, value=0)
        assert bleeders(w) == [1, 3, 6, 8, 9, 11, 14, 16]
    finally:
        machine.attach(None)


def test_595_power_up_contents_come_from_the_board_sim_object():
    b = simworld.load_board(MUX16)
    b["sim"] = {"power_up_595": 0x12340081}
    w = world16(board=b)
    try:
        assert w.shift595.latched == 0x0081
        machine.Pin(16, machine.Pin.OUT, value=0)
        assert bleeders(w) == [1, 8]
    finally:
        machine.attach(None)


def test_595_bytes_latch_into_the_right_bleeders():
    w = world16()
    try:
        # last byte sent sits in the first chip (cells 1..8, LSB = cell 1):
        # 0x02 0x81 -> bits 0, 7, 9 -> cells 1, 8, 10
        sr = w.board["balance"]["shift595"]
        spi = machine.SPI(sr["spi"], sck=machine.Pin(sr["sck"]), mosi=machine.Pin(sr["mosi"]))
        latch = machine.Pin(sr["latch"], machine.Pin.OUT, value=0)
        spi.write(bytes([0x02, 0x81]))
        assert w.shift595.latched == 0xA5A5  # shifted, not yet latched
        latch.value(1)
        assert w.shift595.latched == 0x0281
        assert bleeders(w) == []  # /OE still undriven: pulled up, outputs off
        oe = machine.Pin(sr["oe"], machine.Pin.OUT, value=0)
        assert bleeders(w) == [1, 8, 10]
        # a new pattern needs a new latch edge
        latch.value(0)
        spi.write(bytes([0x80, 0x10]))
        assert bleeders(w) == [1, 8, 10]
        latch.value(1)
        assert bleeders(w) == [5, 16]
        oe.value(1)
        assert bleeders(w) == []
    finally:
        machine.attach(None)


def test_board_reset_floats_oe_high_but_the_595_keeps_its_bits():
    w = world16()
    try:
        write595(w, 0x00, 0x0C)  # cells 3 and 4
        machine.Pin(16, machine.Pin.OUT, value=0)
        assert bleeders(w) == [3, 4]
        w.board_reset(simworld.WDT_RESET)
        assert w.read_pin(16) == 1
        assert bleeders(w) == []
        assert w.shift595.latched == 0x000C
        machine.Pin(16, machine.Pin.OUT, value=0)  # the firmware enables it again
        assert bleeders(w) == [3, 4]
    finally:
        machine.attach(None)


# ---- 3. bleeding drains its cell and heats the board ---------------------------------


def test_bleeding_cell_drains_faster_and_heats_the_board():
    w = world16()
    try:
        write595(w, 0x00, 0x10)  # cell 5
        machine.Pin(16, machine.Pin.OUT, value=0)
        assert bleeders(w) == [5]
        assert w.flowing_ma() == 0 and w.board_temp() == 25.0
        w.advance(3600 * 1000)
        # bleed current 3.297 V / 33 Ohm = 99.9 mA for 1 h = 0.0999 Ah of
        # 100 Ah: 0.0999 %-points below its neighbours (self-discharge is the
        # same for every cell)
        d = w.pack.cell_soc_pct(3) - w.pack.cell_soc_pct(4)
        assert close(d, 0.0999, 0.002), d
        assert close(w.pack.cell_soc_pct(3), w.pack.cell_soc_pct(5), 1e-9)
        assert w.pack.cell_soc_pct(4) < 50.0 - 0.09
        # board: 0.0999 A^2 * 33 Ohm = 0.329 W at 4 K/W: 1.32 K above the
        # 25 C ambient (time constant 60 J/K * 4 K/W = 240 s << 1 h)
        assert close(w.board_temp(), 25.0 + 1.3176, 0.02), w.board_temp()
    finally:
        machine.attach(None)


# ---- 4. short-circuit comparator ----------------------------------------------------


def test_short_circuit_comparator_asserts_and_releases():
    w = world16()
    try:
        got = []
        alert = machine.Pin(27, machine.Pin.IN)
        alert.irq(handler=lambda p: got.append(p.value()), trigger=machine.Pin.IRQ_FALLING)
        assert alert.value() == 1  # idles high (inactive)
        w.set_current(-500000)  # 500 A discharge, DSG open: nothing flows
        assert w.flowing_ma() == 0 and alert.value() == 1 and got == []
        machine.Pin(26, machine.Pin.OUT, value=1)  # DSG closed
        assert w.flowing_ma() == -500000  # (the read lets the world settle)
        assert alert.value() == 0 and got == [0]
        w.set_current(-400000)  # exactly the trip level: still asserted
        assert w.flowing_ma() == -400000 and alert.value() == 0
        w.set_current(-399999)  # below it: released
        assert w.flowing_ma() == -399999 and alert.value() == 1
        assert got == [0]  # only falling edges were asked for
        w.set_current(-450000)
        w.advance(1)  # time passing settles it too
        assert alert.value() == 0 and got == [0, 0]
    finally:
        machine.attach(None)


def test_comparator_irq_that_opens_dsg_stops_the_current():
    w = world16()
    try:
        dsg = machine.Pin(26, machine.Pin.OUT, value=1)
        seen = []

        def handler(p):
            seen.append(p.value())
            dsg.value(0)  # what the firmware's alert handler does

        machine.Pin(27, machine.Pin.IN).irq(handler=handler, trigger=machine.Pin.IRQ_FALLING)
        w.set_current(-500000)
        assert w.flowing_ma() == 0  # the IRQ opened DSG: nothing flows any more
        assert seen == [0]
        assert w.read_pin(27) == 1  # and the comparator released
    finally:
        machine.attach(None)


def test_comparator_line_follows_the_current_without_a_read():
    # The comparator reacts as soon as the current is set, not only at the
    # next ADC read: the firmware's clear_faults() reads the pin directly.
    w = world16()
    try:
        got = []
        alert = machine.Pin(27, machine.Pin.IN)
        alert.irq(handler=lambda p: got.append(1), trigger=machine.Pin.IRQ_FALLING)
        machine.Pin(26, machine.Pin.OUT, value=1)
        w.set_current(-500000)
        assert alert.value() == 0 and got == [1]
    finally:
        machine.attach(None)


# ---- 5. faults --------------------------------------------------------------------


def test_fault_afe_nack_makes_adc_reads_fail():
    w = world16()
    try:
        w.set_cell(1, 3300)
        mux = adc(32)
        assert mux.read_uv() == 1650000
        w.set_fault("afe_nack", True)
        assert "afe_nack" in w.faults
        e = raises(mux.read_uv, OSError)
        assert e is not None
        assert raises(adc(39).read_uv, OSError) is not None  # every ADC read
        w.set_fault("afe_nack", False)
        assert mux.read_uv() == 1650000 and w.faults == {}
    finally:
        machine.attach(None)


def test_fault_stuck_cell_freezes_its_input():
    w = world16()
    try:
        for n in (2, 3, 4):
            w.set_cell(n, 3300)
        w.set_fault("stuck_cell", True, 3)
        assert w.faults == {"stuck_cell": 3}
        w.set_cell(3, 3500)  # the cell changes ...
        w.set_cell(4, 3400)
        w.set_cell(2, 3000)
        assert w.cell_true_mv(2) == 3500.0
        mux = adc(32)
        select(w, 2)
        assert mux.read_uv() == 1650000  # ... its input still shows 3300 / 2
        select(w, 3)
        assert mux.read_uv() == 1700000  # neighbours follow: 3400 / 2
        select(w, 1)
        assert mux.read_uv() == 1500000
        w.set_fault("stuck_cell", False)
        select(w, 2)
        assert mux.read_uv() == 1750000  # 3500 / 2
    finally:
        machine.attach(None)


def test_fault_ntc_open_and_short_hit_only_sensor_n():
    w = world16()
    try:
        n1 = adc(39)
        n2 = adc(34)
        assert n1.read_uv() == 1250000 and n2.read_uv() == 1250000  # 25 C: half of 2500 mV
        w.set_fault("ntc_open", True, 2)
        assert w.pin_mv(34) == 2500.0  # only the pull-up: the supply
        assert n2.read_uv() == 2450000  # saturates at the 11 dB top
        assert n1.read_uv() == 1250000
        w.set_fault("ntc_short", True, 1)
        assert n1.read_uv() == 0
        assert n2.read_uv() == 2450000
        assert adc(35).read_uv() == 1250000  # the board sensor is not touched
        w.set_fault("ntc_open", False)
        w.set_fault("ntc_short", False)
        assert n1.read_uv() == 1250000 and n2.read_uv() == 1250000
    finally:
        machine.attach(None)


def test_fault_load_short_needs_dsg():
    w = world16()
    try:
        for n in range(1, 17):
            w.set_cell(n, 3300)
        w.set_fault("load_short", True)
        assert w.flowing_ma() == 0  # DSG open
        machine.Pin(26, machine.Pin.OUT, value=1)
        # 16 * 3.3 V = 52.8 V across 7.2 mOhm (pack) + 5 mOhm (short): 4328 A
        i = w.flowing_ma()
        assert close(i, -52.8 / 0.0122 * 1000, 5000), i
        assert w.read_pin(27) == 0  # far above the comparator's 400 A
        w.set_fault("load_short", False)
        assert w.flowing_ma() == 0 and w.read_pin(27) == 1
    finally:
        machine.attach(None)


def test_fault_charger_overvoltage_without_a_charger_adds_one():
    w = world16()
    try:
        for n in range(1, 17):
            w.set_cell(n, 3700)  # 59.2 V: above any sane CV limit
        w.set_fault("charger_overvoltage", True)
        assert w.flowing_ma() == 0  # CHG open
        machine.Pin(23, machine.Pin.OUT, value=1)
        assert w.flowing_ma() == 30000  # 0.3 C of 100 Ah, regardless of the voltage
        w.set_fault("charger_overvoltage", False)
        assert w.flowing_ma() == 0
    finally:
        machine.attach(None)


def test_fault_charger_overvoltage_breaks_the_existing_charger():
    w = world16()
    try:
        for n in range(1, 17):
            w.set_cell(n, 3500)  # 56.0 V, above the charger's 16 * 3450 = 55.2 V
        w.sources.append(sources.Charger(10.0, 3450))
        machine.Pin(23, machine.Pin.OUT, value=1)
        w.changed()  # the sources list was changed directly
        assert w.flowing_ma() == 0  # CV holds it off
        w.set_fault("charger_overvoltage", True)
        assert w.flowing_ma() == 10000  # its own limit, no second charger
        w.set_fault("charger_overvoltage", False)
        assert w.flowing_ma() == 0
    finally:
        machine.attach(None)


def test_fault_names_and_arguments_are_checked():
    w = world16()
    try:
        e = raises(lambda: w.set_fault("afe_crc", True), ValueError)
        assert e is not None
        assert "afe_crc" in str(e) and "esp32_mux_16s" in str(e) and "checksummed" in str(e)
        e = raises(lambda: w.set_fault("bogus", True), ValueError)
        assert e is not None and "bogus" in str(e)
        for name in simworld.FAULTS:
            assert name in str(e), name
        assert raises(lambda: w.set_fault("stuck_cell", True, 17), ValueError) is not None
        assert raises(lambda: w.set_fault("ntc_open", True, 3), ValueError) is not None
        assert raises(lambda: w.set_fault("ntc_short", True, 0), ValueError) is not None
        assert w.faults == {}
    finally:
        machine.attach(None)


# ---- 6. firmware_hang ---------------------------------------------------------------


def test_firmware_hang_starves_the_watchdog():
    w = world16()
    try:
        w.pace = "fast"
        machine.WDT(timeout=1000)
        mux = adc(32)
        w.set_fault("firmware_hang", True)
        e = raises(mux.read_uv, simworld.WatchdogReset)
        assert e is not None
        assert w.now_ms == 1000  # 1 s of virtual time, in no wall time
        # the board stays reset until board_reset()
        assert raises(lambda: w.advance(1), simworld.WatchdogReset) is not None
        w.board_reset(simworld.WDT_RESET)
        assert machine.reset_cause() == simworld.WDT_RESET and w.resets == 1 and w.ticks_ms() == 0
        assert not w.wdt_running
    finally:
        machine.attach(None)


def test_firmware_hang_ends_when_a_hook_clears_it():
    w = world16()
    try:
        w.pace = "fast"
        w.set_cell(1, 3300)
        ticks = []
        machine.Timer(0, period=50, callback=lambda t: ticks.append(w.now_ms))

        def hook():
            if w.now_ms >= 300:
                w.set_fault("firmware_hang", False)

        w.idle_hooks.append(hook)
        mux = adc(32)
        w.set_fault("firmware_hang", True)
        assert mux.read_uv() == 1650000  # returned
        assert "firmware_hang" not in w.faults
        assert w.now_ms == 300, w.now_ms  # returns as soon as the hook lifted the hang
        assert ticks[:6] == [50, 100, 150, 200, 250, 300]  # timers kept running meanwhile
    finally:
        machine.attach(None)


def test_firmware_hang_cleared_before_the_watchdog_deadline_does_not_reset():
    # The hook lifts the hang at 900 ms, 100 ms before the watchdog is due:
    # the read returns then, without moving on to the next event first.
    w = world16()
    try:
        w.pace = "fast"
        machine.Timer(0, period=100, callback=lambda t: None)
        machine.WDT(timeout=1000)

        def hook():
            if w.now_ms >= 900:
                w.set_fault("firmware_hang", False)

        w.idle_hooks.append(hook)
        w.set_fault("firmware_hang", True)
        e = raises(adc(32).read_uv, simworld.WatchdogReset)
        assert e is None, "watchdog bit at %d ms although the hang ended at 900 ms" % w.now_ms
        assert w.now_ms == 900
    finally:
        machine.attach(None)


# ---- 7. I2C ----------------------------------------------------------------------------


def test_i2c_register_file_round_trip_and_scan():
    w = world16()
    try:
        dev = RegFile()
        w.add_i2c_device(0, 0x48, dev)
        w.add_i2c_device(0, 0x10, RegFile())
        i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
        i2c.writeto_mem(0x48, 3, b"\x12\x34\x56")
        assert dev.regs[3:6] == bytearray(b"\x12\x34\x56")
        buf = bytearray(3)
        i2c.readfrom_mem_into(0x48, 3, buf)
        assert buf == bytearray(b"\x12\x34\x56")
        assert i2c.readfrom_mem(0x48, 4, 1) == b"\x34"
        assert i2c.scan() == [0x10, 0x48]
        assert machine.I2C(1).scan() == []  # another bus
        e = raises(lambda: i2c.readfrom_mem(0x49, 0, 1), OSError)
        assert e is not None and e.args[0] == 19  # ENODEV on the ESP32
        e = raises(lambda: i2c.writeto(0x49, b"\x00"), OSError)
        assert e is not None and e.args[0] == 19
    finally:
        machine.attach(None)


def test_i2c_missing_address_is_eio_on_rp2():
    b = simworld.load_board(MUX16)
    b["mcu"] = "rp2"
    w = world16(board=b)
    try:
        e = raises(lambda: machine.I2C(0).readfrom(0x50, 2), OSError)
        assert e is not None and e.args[0] == 5  # EIO
    finally:
        machine.attach(None)


def test_i2c_afe_faults():
    w = world16()
    try:
        dev = RegFile(afe=True)
        other = RegFile()  # not the front-end: faults do not touch it
        w.add_i2c_device(0, 0x08, dev)
        w.add_i2c_device(0, 0x20, other)
        i2c = machine.I2C(0)
        i2c.writeto_mem(0x08, 0, b"\x12\x34\x56\x78")
        other.regs[0] = 0x99
        w.set_fault("afe_nack", True)
        assert i2c.scan() == [0x20]
        e = raises(lambda: i2c.readfrom_mem(0x08, 0, 4), OSError)
        assert e is not None and e.args[0] == 19
        assert i2c.readfrom_mem(0x20, 0, 1) == b"\x99"
        w.set_fault("afe_nack", False)
        assert i2c.scan() == [0x08, 0x20]
        w.set_fault("afe_crc", True)  # allowed now: an afe chip is on a bus
        for _ in range(4):
            got = i2c.readfrom_mem(0x08, 0, 4)
            diff = 0
            for a, b in zip(got, b"\x12\x34\x56\x78"):
                x = a ^ b
                while x:
                    diff += x & 1
                    x >>= 1
            assert diff == 1, got  # exactly one bit flipped
        assert i2c.readfrom_mem(0x20, 0, 1) == b"\x99"
        w.set_fault("afe_crc", False)
        assert i2c.readfrom_mem(0x08, 0, 4) == b"\x12\x34\x56\x78"
    finally:
        machine.attach(None)


# ---- 8. SPI ------------------------------------------------------------------------------


def test_spi_chip_select_gates_the_transfer():
    w = world16()
    try:
        dev = RegFile(cs=15)
        w.add_spi_device(2, dev)
        cs = machine.Pin(15, machine.Pin.OUT, value=1)
        spi = machine.SPI(2, sck=machine.Pin(18), mosi=machine.Pin(23), miso=machine.Pin(19))
        rx = bytearray(2)
        spi.write_readinto(b"\x0f\xa0", rx)
        assert rx == bytearray(b"\xff\xff") and dev.seen == []  # nobody drives MISO
        cs.value(0)
        spi.write_readinto(b"\x0f\xa0", rx)
        assert rx == bytearray(b"\xf0\x5f") and dev.seen == [b"\x0f\xa0"]
        assert spi.read(1, 0x01) == b"\xfe"
        cs.value(1)
        assert spi.read(2) == b"\xff\xff" and len(dev.seen) == 2
    finally:
        machine.attach(None)


def test_spi_afe_nack_leaves_miso_high():
    w = world16()
    try:
        dev = RegFile(afe=True, cs=15)
        w.add_spi_device(2, dev)
        machine.Pin(15, machine.Pin.OUT, value=0)
        spi = machine.SPI(2)
        w.set_fault("afe_nack", True)
        assert spi.read(2, 0x00) == b"\xff\xff" and dev.seen == []
        w.set_fault("afe_nack", False)
        assert spi.read(2, 0x00) == b"\xff\xff" and dev.seen == [b"\x00\x00"]  # ~0x00
    finally:
        machine.attach(None)


def test_spi_afe_crc_corrupts_the_front_end_link():
    # Bit errors on an SPI front-end's link: exactly one bit of the answer flips.
    w = world16()
    try:
        dev = RegFile(afe=True, cs=15)
        w.add_spi_device(2, dev)
        machine.Pin(15, machine.Pin.OUT, value=0)
        spi = machine.SPI(2)
        clean = spi.read(4, 0x00)
        w.set_fault("afe_crc", True)
        bad = spi.read(4, 0x00)
        flipped = sum(bin(x ^ y).count("1") for x, y in zip(clean, bad))
        assert flipped == 1, (clean, bad)
    finally:
        machine.attach(None)


# ---- 9. virtual time --------------------------------------------------------------------


def test_world_ticks_start_at_boot_and_wrap():
    w = world16()
    try:
        assert w.ticks_ms() == 0
        w.advance(1234)
        assert w.ticks_ms() == 1234
        w.board_reset(simworld.SOFT_RESET)
        assert w.ticks_ms() == 0 and w.now_ms == 1234  # the world's clock carries on
        w.advance(5)
        assert w.ticks_ms() == 5
        w.boot_ms = w.now_ms - (2 ** 30 - 3)  # up for 2**30 - 3 ms
        assert w.ticks_ms() == 2 ** 30 - 3
        w.advance(5)
        assert w.ticks_ms() == 2
    finally:
        machine.attach(None)


def test_micropython_time_module_follows_the_world():
    if not MICROPYTHON:
        return  # CPython's time is built in: tools/sim/time.py never shadows it
    import time
    import utime

    assert time.__file__.endswith("tools/sim/time.py")
    w = world16()
    try:
        assert time.ticks_ms() == 0
        w.advance(777)
        assert time.ticks_ms() == 777
        w.boot_ms = w.now_ms - (2 ** 30 - 100)
        a = time.ticks_ms()
        assert a == 2 ** 30 - 100
        w.advance(250)
        b = time.ticks_ms()
        assert b == 150  # wrapped
        assert time.ticks_diff(b, a) == 250 and time.ticks_diff(a, b) == -250
        assert time.ticks_add(a, 250) == b
        fired = []
        machine.Timer(0, mode=machine.Timer.ONE_SHOT, period=100, callback=lambda t: fired.append(w.now_ms))
        t0 = w.now_ms
        time.sleep_ms(250)
        assert w.now_ms == t0 + 250
        assert fired == [t0 + 100]
    finally:
        machine.attach(None)
    # no world: the host clock again
    assert abs(utime.ticks_diff(time.ticks_ms(), utime.ticks_ms())) <= 5


# ---- 10. charging through the FETs ------------------------------------------------------


def test_charger_charges_only_through_a_closed_chg_fet_and_tapers():
    p = pack.Pack(cells=16, capacity_ah=10, soc_pct=95)
    for c in p.cells:
        c.self_discharge_pct_month = 0.0
    w = world16(p)
    try:
        w.sources.append(sources.Charger(5.0, 3450))  # 5 A, CV 16 * 3.45 = 55.2 V
        w.changed()
        assert w.flowing_ma() == 0  # CHG undriven: off
        w.advance(600 * 1000)
        assert p.soc_pct() == 95.0
        machine.Pin(26, machine.Pin.OUT, value=1)  # DSG alone does not let charge in
        assert w.flowing_ma() == 0
        chg = machine.Pin(23, machine.Pin.OUT, value=1)
        assert w.flowing_ma() == 5000  # emf 16 * 3.38 = 54.08 V: CC stage
        seen = []
        for _ in range(60):  # 10 minutes
            w.advance(10 * 1000)
            seen.append(w.flowing_ma())
            assert p.terminal_v(w.current_a) <= 55.2 + 1e-6  # never above CV
        assert p.soc_pct() > 96.0
        assert seen[-1] < 100  # the CV stage has tapered it almost to zero
        for k in range(1, len(seen)):
            assert seen[k] <= seen[k - 1], seen
        assert seen[0] == 5000  # still CC after 10 s
        tapering = [i for i in seen if 100 < i < 5000]
        assert len(tapering) >= 3, seen  # a gradual taper, not a cut-off
        soc = p.soc_pct()
        chg.value(0)
        assert w.flowing_ma() == 0
        w.advance(60 * 1000)
        assert p.soc_pct() == soc
    finally:
        machine.attach(None)


# ---- 11. sensor errors ---------------------------------------------------------------------


def test_shunt_offset_and_gain_error():
    w = world16(sensors={"shunt_offset_ma": 500, "shunt_gain_pct": 1})
    try:
        cur = adc(36)
        # 0 A: 1250 + 500 / 200 = 1252.5 mV (ADC rounds half up to 1253)
        assert close(w.pin_mv(36), 1252.5, 1e-9)
        assert cur.read_uv() == 1253000
        machine.Pin(23, machine.Pin.OUT, value=1)
        machine.Pin(26, machine.Pin.OUT, value=1)
        w.set_current(30000)  # 1250 + (30000 * 1.01 + 500) / 200 = 1250 + 154 = 1404 mV
        assert w.flowing_ma() == 30000  # the error is in the sensor, not the current
        assert close(w.pin_mv(36), 1404.0, 1e-9)
        assert cur.read_uv() == 1404000
        w.set_current(-60000)  # 1250 + (-60600 + 500) / 200 = 949.5 mV
        assert close(w.pin_mv(36), 949.5, 1e-9)
        assert cur.read_uv() == 950000
    finally:
        machine.attach(None)


def _noisy_reads(seed, n):
    w = world16(sensors={"adc_noise_mv": 3, "seed": seed})
    try:
        for k in range(1, 17):
            w.set_cell(k, 3300)  # 1650.0 mV on the mux, address 0
        a = adc(32)
        return [a.read_uv() for _ in range(n)]
    finally:
        machine.attach(None)


def test_adc_noise_is_seeded_and_unbiased():
    r1 = _noisy_reads(5, 2048)
    assert r1 == _noisy_reads(5, 2048)  # same seed: the same readings
    r3 = _noisy_reads(6, 2048)
    assert r3[:64] != r1[:64]  # another seed: others
    assert len(set(r1)) > 5  # it is noise
    for r in (r1, r3):
        mean_mv = sum(r) / len(r) / 1000.0
        assert close(mean_mv, 1650.0, 0.2), mean_mv
        assert min(r) > 1650000 - 20000 and max(r) < 1650000 + 20000  # sigma 3 mV


def test_595_only_hears_the_pins_it_is_wired_to():
    # The chain sits on HSPI's SCK 14 / MOSI 13 (SPI(1)'s default pins on the
    # ESP32): a controller clocking other pins never reaches it.
    w = world16()
    try:
        machine.Pin(16, machine.Pin.OUT, value=0)  # /OE low: outputs on
        latch = machine.Pin(17, machine.Pin.OUT, value=0)
        right = machine.SPI(1)  # the port's default pins for SPI(1)
        right.write(bytes([0x00, 0x00]))  # clear the power-up bits
        latch.value(1)
        latch.value(0)
        wrong = machine.SPI(1, sck=machine.Pin(18), mosi=machine.Pin(23))
        wrong.write(bytes([0x00, 0x01]))
        latch.value(1)
        latch.value(0)
        assert not w.bleeding(0)
        right = machine.SPI(1)
        right.write(bytes([0x00, 0x01]))
        latch.value(1)
        latch.value(0)
        assert w.bleeding(0) and not w.bleeding(1)
    finally:
        machine.attach(None)
