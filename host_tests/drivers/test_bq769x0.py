# The bq769x0 driver against the chip model on a SimWorld. Expected values
# are computed here from the datasheet formulas (afe-facts B1) and the trim
# the model was given, not taken from the driver.
import machine
import simworld
from bms.afe import Measurements, ChipReset, HW_OV, HW_SCD, NTC_OK, NTC_OPEN
from bms.drivers import bq769x0 as drv
from chips import bq769x0 as chip

BOARD = "boards/pico_bq76940_15s.json"
CFG = {"cell_ov_mv": 3650, "cell_uv_mv": 2800, "cell_ov_delay_ms": 1000, "cell_uv_delay_ms": 2000,
       "ocd2_ma": 150000, "ocd2_delay_ms": 200}
TRIM_377_48 = (0x05, 0x30, 0x82)  # E2E-838739: 377 uV/LSB, +48 mV
TRIM_396_M20 = (0x0D, 0xEC, 0xE3)  # 396 uV/LSB, -20 mV, reserved bits set


def _board(changes=None, **bq):
    b = simworld.load_board(BOARD)
    b["bq769x0"].update(bq)
    if changes:
        changes(b)
    return b


def _setup(cells=15, trim=TRIM_377_48, board=None, model_crc=None, settle=True):
    b = board or _board()
    w = simworld.SimWorld(b, simworld.default_pack(b, cells))
    c = w.afe_chip
    if model_crc is not None:
        c.crc = model_crc
    if trim:
        c.set_trim(*trim)
    machine.attach(w)
    d = drv.from_board(b, machine, clock=w.ticks_ms)
    d.init(cells)
    d.configure_protection(CFG)
    m = Measurements(cells, d.n_temps, d.has_board_temp)
    if settle:
        _run(w, d, m, 3000)
    return w, c, d, m


def _tick(w, d, m, ms=100, chg=True, dsg=True, bal=0):
    w.advance(ms)
    ok = d.read(m)
    d.set_balancing(bal)
    d.set_fets(chg, dsg)
    return ok


def _run(w, d, m, ms, **kw):
    ok = False
    for _ in range(ms // 100):
        ok = _tick(w, d, m, **kw)
    return ok


def _code(c, reg):
    return (c.regs[reg] << 8) | c.regs[reg + 1]


def _cell_code(c, ch):
    return _code(c, chip.VC1_HI + 2 * ch) & 0x3FFF


def _rnd(uv):
    # mV rounded half away from zero, from uV
    return (uv + 500) // 1000 if uv >= 0 else -((-uv + 500) // 1000)


# --- conversions ------------------------------------------------------------

def test_cells_pack_current_and_temperature_through_the_trim():
    w, c, d, m = _setup(trim=TRIM_396_M20)
    assert d.crc and d.gain == 396 and d.offset_uv == -20000
    for k in range(15):
        w.set_cell(k + 1, 3200 + 7 * k)
    w.set_current(-25000)
    w.set_temp(0, 45.0)
    assert _run(w, d, m, 2500)
    naive_off = 0
    for k in range(15):
        code = _cell_code(c, k)
        want = _rnd(code * 396 - 20000)  # datasheet: code * gain + offset
        assert m.cells_mv[k] == want, (k, m.cells_mv[k], want)
        assert abs(want - w.cell_input_mv(k)) <= 1
        if abs(code * 382 // 1000 - w.cell_input_mv(k)) > 20:
            naive_off += 1  # a driver ignoring the trim would read these wrong
    assert naive_off == 15
    bat = _code(c, chip.BAT_HI)
    assert m.pack_mv == _rnd(4 * 396 * bat + 15 * -20000)
    assert abs(m.pack_mv - w.pack_terminal_mv()) < 5
    cc = _code(c, chip.CC_HI)
    cc = cc - 0x10000 if cc & 0x8000 else cc
    assert cc < 0 and m.current_ma == -((-cc * 8440 + 250) // 500)  # 8.44 uV/LSB over 500 uOhm
    assert abs(m.current_ma + 25000) <= 17
    ts = _code(c, chip.TS1_HI) & 0x3FFF
    mv = (ts * 382 + 500) // 1000  # V_TS = code * 382 uV
    r = 10000.0 * mv / (3300 - mv)  # the chip's 10 kOhm pull-up to 3.3 V
    assert abs(r - w.ntc_ohm(0)) / w.ntc_ohm(0) < 0.01
    assert abs(m.temps_dc[0] - 450) <= 3 and m.temp_status[0] == NTC_OK
    assert m.has_board_temp and abs(m.board_dc - 10 * w.board_temp()) <= 5


def test_positive_offset_and_an_open_thermistor():
    w, c, d, m = _setup(trim=TRIM_377_48)
    assert d.gain == 377 and d.offset_uv == 48000
    assert _run(w, d, m, 500)
    assert m.cells_mv[0] == _rnd(_cell_code(c, 0) * 377 + 48000)
    w.set_fault("ntc_open", True, 2)
    assert _run(w, d, m, 2500)
    assert m.temp_status[1] == NTC_OPEN and m.temp_status[0] == NTC_OK


def test_readings_wait_for_the_first_conversion_and_the_thermistor_switch():
    b = _board()
    w = simworld.SimWorld(b)
    machine.attach(w)
    d = drv.from_board(b, machine, clock=w.ticks_ms)
    d.init(15)
    m = Measurements(15, 2, True)
    w.advance(100)
    assert not d.read(m)  # nothing converted yet
    for _ in range(20):
        w.advance(100)
        assert not d.read(m)  # TS registers still hold the die sensor (TEMP_SEL was 0)
    assert _run(w, d, m, 1000)
    assert abs(m.temps_dc[0] - 10 * w.sensor_temp_c(0)) <= 5


def test_partly_populated_10_cells_on_a_bq76940():
    for trim in (TRIM_377_48, TRIM_396_M20):
        w, c, d, m = _setup(cells=10, trim=trim)
        g = c.gain
        off = c.offset * 1000
        for k in range(10):
            w.set_cell(k + 1, 3250 + 11 * k)
        assert _run(w, d, m, 500)
        used = (0, 1, 2, 4, 5, 6, 9, 10, 11, 14)  # the datasheet's 10-cell wiring
        for k in range(10):
            assert m.cells_mv[k] == _rnd(_cell_code(c, used[k]) * g + off)
            assert abs(m.cells_mv[k] - (3250 + 11 * k)) <= 1
        # BAT sums every channel; the shorted ones must not shift the pack
        assert abs(m.pack_mv - w.pack_terminal_mv()) < 5, (trim, m.pack_mv, w.pack_terminal_mv())
        d.set_balancing(1 << 3)  # pack cell 4 sits on channel 4 (CB5)
        assert c.regs[chip.CELLBAL1] == 0x10 and c.regs[chip.CELLBAL1 + 1] == 0
        assert w.bleeding(3) and not w.bleeding(2)
        d.set_balancing(1 << 6)  # pack cell 7 on channel 9 (CB10)
        assert c.regs[chip.CELLBAL1] == 0 and c.regs[chip.CELLBAL1 + 1] == 0x10
        assert w.bleeding(6)


def test_a_bq76920_with_3_cells_and_no_crc():
    def small(b):
        b["ntc"] = b["ntc"][:1]
        b["board_ntc"] = None

    b = _board(small, variant="bq76920", crc=False)
    w, c, d, m = _setup(cells=3, board=b, trim=TRIM_396_M20)
    assert not c.crc and not d.crc and d.max_cells == 5
    assert _run(w, d, m, 300)
    for k, ch in enumerate((0, 1, 4)):
        assert m.cells_mv[k] == _rnd(_cell_code(c, ch) * 396 - 20000)
    d.set_balancing(0b110)  # cells 2 and 3: channels 1 and 4, not adjacent
    assert c.regs[chip.CELLBAL1] == 0x12
    for n in (2, 6):
        try:
            d.init(n)
            assert False, n
        except ValueError:
            pass


def test_crc_detection_finds_a_plain_chip():
    w, c, d, m = _setup(model_crc=False, trim=TRIM_377_48)
    assert not d.crc
    assert _run(w, d, m, 300)
    assert m.cells_mv[0] == _rnd(_cell_code(c, 0) * 377 + 48000)
    assert d.crc_errors == 0


def test_cell_counts_the_variant_cannot_do():
    w, c, d, m = _setup(settle=False)
    for n in (0, 8, 16):
        try:
            d.init(n)
            assert False, n
        except ValueError:
            pass
    d.init(9)
    assert d.n_cells == 9


# --- protection ---------------------------------------------------------------

def test_protection_programming_read_back_from_the_chip():
    w, c, d, m = _setup(trim=TRIM_377_48, settle=False)
    got = d.configure_protection(CFG)
    r = c.regs
    # OV: smallest OV_TRIP with (0x2008 | OV_TRIP << 4) * 377 uV + 48 mV >= 3650 mV
    assert r[chip.OV_TRIP] == 0x55
    assert (chip.ov_full(0x55) * 377 + 48000) >= 3650000 > (chip.ov_full(0x54) * 377 + 48000)
    # UV: largest UV_TRIP with (0x1000 | UV_TRIP << 4) * 377 uV + 48 mV <= 2800 mV
    assert r[chip.UV_TRIP] == 0xC8
    assert (chip.uv_full(0xC8) * 377 + 48000) <= 2800000 < (chip.uv_full(0xC9) * 377 + 48000)
    # 150 A on 0.5 mOhm = 75 mV: RSNS=1, OCD 78 mV (156 A) at 320 ms (>= 200);
    # SCD about 300 A = 150 mV: 155 mV (310 A) at 70 us.
    assert r[chip.PROTECT1] == 0x80 | 0x05
    assert r[chip.PROTECT2] == (5 << 4) | 11
    # UV delay >= 2 s: 4 s (code 1); OV delay >= 1 s: 1 s (code 0)
    assert r[chip.PROTECT3] == 0x40
    assert got == {"cell_ov_mv": 3652, "cell_ov_delay_ms": 1000, "cell_uv_mv": 2798, "cell_uv_delay_ms": 4000,
                   "ocd_ma": 156000, "ocd_delay_ms": 320, "scd_ma": 310000, "scd_delay_us": 70}


def test_protection_choices_at_the_ends_of_the_tables():
    w, c, d, m = _setup(trim=TRIM_377_48, settle=False)
    small = dict(CFG, ocd2_ma=20000, ocd2_delay_ms=5, cell_ov_delay_ms=3000, cell_uv_delay_ms=60000)
    got = d.configure_protection(small)  # 10 mV: RSNS=0, OCD 11 mV (22 A), SCD 22 mV (44 A)
    assert c.regs[chip.PROTECT1] == 0x00 and c.regs[chip.PROTECT2] == 0x01
    assert got["ocd_ma"] == 22000 and got["scd_ma"] == 44000 and got["ocd_delay_ms"] == 8
    assert c.regs[chip.PROTECT3] == (3 << 6) | (2 << 4)  # UV clamped to 16 s, OV 4 s >= 3 s
    big = dict(CFG, ocd2_ma=300000, ocd2_delay_ms=5000)  # 150 mV: beyond OCD's 100 mV
    got = d.configure_protection(big)
    assert c.regs[chip.PROTECT1] == 0x87 and c.regs[chip.PROTECT2] == 0x7F
    assert got["ocd_ma"] == 200000 and got["scd_ma"] == 400000 and got["ocd_delay_ms"] == 1280


def test_hardware_ov_opens_chg_and_shows_as_hw_ov():
    w, c, d, m = _setup()
    assert _run(w, d, m, 500) and w.fet_on("chg") and w.fet_on("dsg")
    w.set_cell(4, 3700)  # above the programmed 3652 mV
    seen = None
    again = 0
    for t in range(30):
        w.advance(100)
        assert d.read(m)
        if m.hw_faults & HW_OV and seen is not None:
            again += 1
        if m.hw_faults & HW_OV and seen is None:
            seen = t
            assert not w.fet_on("chg") and w.fet_on("dsg")  # the chip opened CHG by itself
            assert not c.regs[chip.SYS_STAT] & chip.OV  # reported, then released
        d.set_balancing(0)
        d.set_fets(seen is None, True)  # as the core's row does on HW_OV
    assert seen is not None and 10 <= seen <= 16  # 1 s OV delay after the first conversion above
    assert again >= 4  # still over: the chip sets it again every conversion
    assert not w.fet_on("chg") and w.fet_on("dsg")


def test_short_circuit_latches_until_clear_faults():
    w, c, d, m = _setup()
    assert _run(w, d, m, 300) and w.fet_on("dsg")
    w.set_fault("load_short", True)
    assert _tick(w, d, m)
    assert _tick(w, d, m)
    assert m.hw_faults & HW_SCD and not w.fet_on("dsg")
    for _ in range(5):
        assert _tick(w, d, m)  # the core still wants DSG: it stays off
        assert m.hw_faults & HW_SCD and not w.fet_on("dsg")
    w.set_fault("load_short", False)
    assert d.clear_faults()
    assert _tick(w, d, m)
    assert not m.hw_faults and w.fet_on("dsg")


# --- link faults ----------------------------------------------------------------

class _FlipWrites:
    """Passes transfers on; the next `flips` writes get their last byte
    (the CRC) corrupted on the wire."""

    def __init__(self, i2c):
        self.i2c = i2c
        self.flips = 0

    def readfrom_mem_into(self, addr, reg, buf):
        return self.i2c.readfrom_mem_into(addr, reg, buf)

    def writeto(self, addr, buf, stop=True):
        if self.flips:
            self.flips -= 1
            b = bytearray(buf)
            b[len(b) - 1] ^= 0x01
            return self.i2c.writeto(addr, b)
        return self.i2c.writeto(addr, buf)


def test_a_write_with_a_bad_crc_is_refused_by_the_chip_and_counted():
    w, c, d, m = _setup()
    link = _FlipWrites(d.i2c)
    d.i2c = link
    nacked = c.writes_nacked
    link.flips = 1
    d.set_fets(True, False)
    assert c.writes_nacked == nacked + 1 and d.crc_errors == 1
    assert c.regs[chip.SYS_CTRL2] == chip.CC_EN | chip.CHG_ON  # the retry went through
    link.flips = 3
    try:
        d.set_fets(False, False)
        assert False
    except OSError:
        pass
    assert d.crc_errors == 4 and c.regs[chip.SYS_CTRL2] == chip.CC_EN | chip.CHG_ON


def test_crc_storm_of_1_percent_keeps_valid_readings():
    w, c, d, m = _setup()
    w.set_fault("afe_crc", True, 1)
    for _ in range(400):
        assert _tick(w, d, m)
        for k in range(15):
            assert abs(m.cells_mv[k] - w.cell_input_mv(k)) <= 1
        assert w.fet_on("chg") and w.fet_on("dsg")
    assert d.crc_errors >= 5 and d.bus_errors == 0


def test_crc_storm_of_100_percent_fails_read_after_bounded_retries():
    w, c, d, m = _setup()
    w.set_fault("afe_crc", True, 100)
    for n in range(5):
        w.advance(100)
        try:
            d.read(m)
            assert False
        except OSError:
            pass
        assert d.crc_errors == 3 * (n + 1)
    w.set_fault("afe_crc", False)
    assert _tick(w, d, m)


def test_nack_burst_then_recovery():
    w, c, d, m = _setup()
    w.set_fault("afe_nack", True)
    for _ in range(15):
        w.advance(100)
        for call in (lambda: d.read(m), lambda: d.set_fets(False, False)):
            try:
                call()
                assert False
            except OSError:
                pass
    assert d.bus_errors >= 45
    w.set_fault("afe_nack", False)
    assert _tick(w, d, m)  # CC_READY stayed latched in the chip: a fresh reading
    assert w.fet_on("dsg")


def test_chip_reset_mid_run_raises_chip_reset_then_init_works():
    w, c, d, m = _setup()
    assert w.fet_on("chg")
    w.set_fault("afe_reset", True)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    w.advance(100)
    try:
        d.read(m)
        assert False
    except ChipReset:
        pass
    d.init(15)
    d.configure_protection(CFG)
    assert c.regs[chip.OV_TRIP] == 0x55
    assert _run(w, d, m, 3000)
    assert w.fet_on("chg") and w.fet_on("dsg")


def test_changed_protection_registers_count_as_a_reset():
    w, c, d, m = _setup()
    c.regs[chip.UV_TRIP] = 0x97
    w.advance(100)
    try:
        d.read(m)
        assert False
    except ChipReset:
        pass


def test_device_xready_is_a_chip_reset():
    w, c, d, m = _setup()
    c.internal_fault()
    w.advance(100)
    try:
        d.read(m)
        assert False
    except ChipReset:
        pass
    d.init(15)
    d.configure_protection(CFG)
    assert not c.regs[chip.SYS_STAT] & chip.DEVICE_XREADY


def test_a_chip_that_stopped_converting_gives_no_reading():
    w, c, d, m = _setup()
    c._cycle = lambda t: None  # the chip's conversions stop
    oks = [_tick(w, d, m) for _ in range(15)]
    assert oks[0] and oks[8] and not oks[11] and not oks[14]


def test_shutdown_enters_ship_mode():
    w, c, d, m = _setup()
    d.set_balancing(1)
    d.shutdown()
    assert c.ship and not w.fet_on("chg") and not w.fet_on("dsg") and not w.bleeding(0)
    try:
        d.read(m)
        assert False
    except OSError:
        pass


# --- balancing ------------------------------------------------------------------

class _Recorder:
    def __init__(self):
        self.last = None

    def readfrom_mem_into(self, addr, reg, buf):
        raise OSError(5)

    def writeto(self, addr, buf, stop=True):
        self.last = bytes(buf)
        return len(buf)


def _check_all_masks(cells):
    w, c, d, m = _setup(cells=cells, settle=False)
    rec = _Recorder()
    d.i2c = rec
    ch = d._ch
    for mask in range(1 << cells):
        d._bal = -1
        d.set_balancing(mask)
        b = rec.last
        bits = b[1] | (b[3] << 5) | (b[5] << 10)
        for c5 in range(15):
            if bits >> c5 & 1:
                assert c5 % 5 == 0 or not bits >> (c5 - 1) & 1, (mask, bits)
        for k in range(cells):
            cb = ch[k]
            if mask >> k & 1 and not bits >> cb & 1:
                assert cb % 5 and bits >> (cb - 1) & 1  # dropped only next to a set one
            if not mask >> k & 1:
                assert not bits >> cb & 1


def test_set_balancing_never_sets_adjacent_bits():
    _check_all_masks(15)
    _check_all_masks(10)
    w, c, d, m = _setup()
    for mask in (0x7FFF, 0x5555, 0x2AAA, 0x0003, 0x0030):
        d.set_balancing(mask)
    assert c.adjacent_writes == 0
    d.set_balancing(0x7FFF)
    assert c.regs[chip.CELLBAL1] == 0x15 and c.regs[chip.CELLBAL1 + 2] == 0x15


# --- allocation -------------------------------------------------------------

class _Replay:
    """The chip's answer to the block read, captured once and replayed
    without allocating; writes are acknowledged."""

    def __init__(self, i2c, addr, n):
        self.blk = bytearray(n)
        i2c.readfrom_mem_into(addr, 0, self.blk)

    def readfrom_mem_into(self, addr, reg, buf):
        src = self.blk
        for i in range(len(buf)):
            buf[i] = src[i]

    def writeto(self, addr, buf, stop=True):
        return len(buf)


def test_steady_state_tick_allocates_nothing():
    import micropython

    w, c, d, m = _setup()
    w.advance(250)
    assert c.regs[chip.SYS_STAT] & chip.CC_READY
    d.i2c = _Replay(d.i2c, d.addr, 2 * 0x34)
    assert d.read(m)
    micropython.heap_lock()  # MicroPython: any allocation raises MemoryError
    try:
        for i in range(20):
            ok = d.read(m)
            d.set_fets(i & 1 == 1, True)
            d.set_balancing(0x1111 if i & 2 else 0x0842)
    finally:
        micropython.heap_unlock()
    assert ok and d.crc_errors == 0


def test_crc_detection_under_bit_errors_never_settles_on_no_crc():
    # A re-init during a CRC storm: every CRC probe may fail, yet a CRC chip
    # must never be taken for a plain one (its CRC bytes would be read as data).
    w, c, d, m = _setup(settle=False)
    found = 0
    for pct in (55, 60, 65, 85):
        w.set_fault("afe_crc", True, pct)
        for _ in range(10):
            try:
                d.init(15)
            except OSError:
                continue
            found += 1
            assert d.crc, pct
        w.set_fault("afe_crc", False)
    assert found
    d.init(15)
    assert d.crc and c.crc


def test_a_reinit_on_a_configured_chip_reads_at_once():
    # An MCU reset (watchdog) leaves the chip configured: no thermistor wait.
    w, c, d, m = _setup()
    d2 = drv.from_board(w.board, machine, clock=w.ticks_ms)
    d2.init(15)
    d2.configure_protection(CFG)
    assert _run(w, d2, m, 300)
    assert m.cells_mv[0] == _rnd(_cell_code(c, 0) * 377 + 48000)
