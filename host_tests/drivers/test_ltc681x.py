# The LTC681x driver against the chip model on the simulated
# esp32_ltc6811x2_24s board (two LTC6811-1, 24 cells). The current monitor
# is a small fake with the Ina226 API, except in the end-to-end test.
# Runs under CPython and MicroPython.
import machine
import micropython
import simworld

from bms.afe import Measurements, ChipReset, NTC_OK, NTC_OPEN, NTC_SHORT, HW_SCD
from bms.drivers import ltc681x as drv

BOARD = "boards/esp32_ltc6811x2_24s.json"
PROT = {"ocd2_ma": 250000, "cell_ov_mv": 3650, "cell_uv_mv": 2800}


class FakeCurrent:
    """The Ina226 API, with values the test sets."""

    def __init__(self, ma=-1500):
        self.current_max_ma = 327680
        self.bus_errors = 0
        self.crc_errors = 0
        self.current_ma = ma
        self.bus_mv = 0
        self.alert = False
        self.alert_ma = None
        self.inits = 0
        self.fresh = True
        self.still = False  # clear_alert: the over-current is still there

    def init(self):
        self.inits += 1

    def set_alert_ma(self, ma):
        self.alert_ma = ma

    def read(self):
        return self.fresh

    def clear_alert(self):
        self.alert = self.still
        return not self.still


def _isolated(fn):
    def run():
        try:
            fn()
        finally:
            machine.attach(None)

    return run


def _setup(cells=None, board=None, current=None, n=None):
    """World, driver (from_board, with the fake current monitor) and the fake."""
    b = board if board is not None else simworld.load_board(BOARD)
    w = simworld.SimWorld(b, simworld.default_pack(b, cells) if cells else None)
    machine.attach(w)
    cur = current if current is not None else FakeCurrent()
    import bms.drivers.ina226 as ina

    saved = ina.from_board_current
    ina.from_board_current = lambda _b, _m: cur
    try:
        afe = drv.from_board(b, machine, sleep_us=w.sleep_us, ticks_ms=w.ticks_ms)
    finally:
        ina.from_board_current = saved
    afe.init(n or w.pack.n)
    return w, afe, cur


def _m(afe, n=24):
    return Measurements(n, afe.n_temps, afe.has_board_temp)


def _tick(w, afe, m, ms=100):
    w.advance(ms)
    return afe.read(m)


@_isolated
def test_attributes_of_a_two_device_chain():
    w, afe, cur = _setup()
    assert afe.max_cells == 24 and afe.n_temps == 4 and afe.has_board_temp
    assert afe.pack_measured and afe.can_balance and not afe.no_adjacent_balancing and not afe.has_precharge
    assert afe.current_max_ma == 327680 and cur.inits == 1
    assert w.read_pin(5) == 1  # chip select idles high
    assert w.spi_buses[2]["mode"] == 3


@_isolated
def test_cell_codes_in_mv_as_computed_by_hand():
    w, afe, _cur = _setup()
    volts = {1: 3300.46, 2: 3300.44, 3: 3299.95, 12: 3412.0, 13: 2875.06, 24: 3650.04}
    for k in range(1, 25):
        w.set_cell(k, volts.get(k, 3200.0 + k))
    m = _m(afe)
    assert _tick(w, afe, m)
    # code = V / 100 uV (rounded by the ADC), mV = (code + 5) // 10
    assert list(m.cells_mv[0:3]) == [3301, 3300, 3300]  # 33005, 33004, 33000
    assert m.cells_mv[11] == 3412 and m.cells_mv[12] == 2875 and m.cells_mv[23] == 3650
    assert m.cells_mv[3] == 3204 and m.cells_mv[22] == 3223
    # Sum of cells per device: SOC = sum / 20 / 100 uV, 2 mV per LSB.
    s0 = sum(volts.get(k, 3200.0 + k) for k in range(1, 13))
    s1 = sum(volts.get(k, 3200.0 + k) for k in range(13, 25))
    assert m.pack_mv == 2 * int(s0 / 2 + 0.5) + 2 * int(s1 / 2 + 0.5)
    assert m.current_ma == -1500 and m.hw_faults == 0


@_isolated
def test_24_cells_map_across_the_daisy_chain():
    w, afe, _cur = _setup()
    for k in range(1, 25):
        w.set_cell(k, 2900 + 17 * k)
    m = _m(afe)
    assert _tick(w, afe, m)
    assert list(m.cells_mv) == [2900 + 17 * k for k in range(1, 25)]
    # The model's view: device 1 (the far one) measures cells 13-24.
    assert w.afe_chip.devs[1].cv[0] == (2900 + 17 * 13) * 10


@_isolated
def test_20_cells_take_the_lowest_ten_inputs_of_each_device():
    w, afe, _cur = _setup(cells=20)
    for k in range(1, 21):
        w.set_cell(k, 3000 + k)
    m = _m(afe, 20)
    assert _tick(w, afe, m)
    assert list(m.cells_mv) == [3000 + k for k in range(1, 21)]
    for bad in (1, 25):
        try:
            afe.init(bad)
            assert False, bad
        except ValueError:
            pass


@_isolated
def test_thermistor_temperatures_against_the_beta_formula():
    w, afe, _cur = _setup()
    w.set_temp(0, 25.0)
    w.set_temp(1, 40.0)
    w.set_temp(2, -10.0)
    w.set_temp(3, 5.0)
    w.set_board_temp(60.0)
    m = _m(afe)
    assert _tick(w, afe, m)
    # The 5-degree table points: only the 1 mV (0.1 degC class) rounding.
    for i, t in enumerate((25.0, 40.0, -10.0, 5.0)):
        assert abs(m.temps_dc[i] - t * 10) <= 2, (i, m.temps_dc[i])
        assert m.temp_status[i] == NTC_OK
    assert abs(m.board_dc - 600) <= 2 and m.board_status == NTC_OK
    # Between table points, against the Beta formula: R = 10k exp(3435 (1/T - 1/298.15)),
    # pin = 3.0 V x R / (R + 10k) on the far device's GPIO2. The GPIOs are
    # converted every 2 s (between two reads): a change shows within 2 s
    # and one tick, every reading complete meanwhile.
    w.set_temp(3, 31.3)
    assert _ticks_until(w, afe, m, lambda: abs(m.temps_dc[3] - 313) <= 3) <= 21
    w.set_fault("ntc_open", True, 2)
    w.set_fault("ntc_short", True, 3)
    assert _ticks_until(w, afe, m, lambda: m.temp_status[1] == NTC_OPEN) <= 21
    assert m.temp_status[1] == NTC_OPEN and m.temp_status[2] == NTC_SHORT and m.temp_status[0] == NTC_OK


def _ticks_until(w, afe, m, cond, limit=40):
    # 100 ms ticks until cond() holds; every read a complete reading.
    for n in range(1, limit + 1):
        assert _tick(w, afe, m)
        if cond():
            return n
    return limit + 1


@_isolated
def test_a_read_waits_only_for_the_cell_and_sum_of_cells_conversions():
    # The GPIO conversion runs between reads; each read waits for ADCV and
    # ADSTAT only (2.6 + 0.5 ms), sends a bounded number of frames and
    # leaves the chain idle (no conversion running) unless it started the
    # GPIO conversion for the next read.
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    chain = w.afe_chip
    assert _tick(w, afe, m)
    started = 0
    for _ in range(40):
        w.advance(100)
        t0 = w.time_us()
        f0 = chain.frames
        assert afe.read(m) and _cells_ok(m)
        assert w.time_us() - t0 <= 3200, w.time_us() - t0
        assert chain.frames - f0 <= 16, chain.frames - f0  # 13 + the configuration check every 4th read
        if chain.hw_state()["converting"] == [True, True]:
            started += 1  # the GPIO conversion for the next read
    assert 1 <= started <= 3  # every 2 s: twice in 4 s
    # A read right after the one that started the GPIO conversion (no time
    # between them) waits for it rather than cutting it short.
    w.set_temp(0, 45.0)
    for _ in range(30):
        w.advance(100)
        assert afe.read(m)
        if chain.hw_state()["converting"] == [True, True]:
            break
    t0 = w.time_us()
    assert afe.read(m) and abs(m.temps_dc[0] - 450) <= 2
    assert w.time_us() - t0 >= 2600 + 2600 + 500
    assert afe.crc_errors == 0 and afe.bus_errors == 0
    # The first read after init() converts the GPIOs itself (and waits).
    afe.init(24)
    w.advance(100)
    t0 = w.time_us()
    assert afe.read(m)
    assert w.time_us() - t0 >= 5700


@_isolated
def test_balancing_sets_the_dcc_bits_of_the_right_device_with_a_timeout():
    w, afe, _cur = _setup()
    chip = w.afe_chip
    mask = 1 | 1 << 12 | 1 << 23  # cells 1, 13, 24
    afe.set_balancing(mask)
    assert chip.devs[0].dcc() == 0x001 and chip.devs[1].dcc() == 0x801
    assert chip.devs[0].dcto_code() == 1 and chip.devs[1].dcto_code() == 1  # 0.5 min
    assert w.bleeding(0) and w.bleeding(12) and w.bleeding(23) and not w.bleeding(1)
    m = _m(afe)
    assert _tick(w, afe, m)
    assert w.bleeding(0) and w.bleeding(23)  # back on after the DCP = 0 conversion
    frames = chip.frames
    afe.set_balancing(mask)  # unchanged: nothing written
    assert chip.frames == frames
    for _ in range(110):  # 11 s of ticks: rewritten once, restarting the timeout
        afe.read(m)
        afe.set_balancing(mask)
        w.advance(100)
    assert chip.devs[0].dcc() == 1 and chip.devs[0]._dcto_left_code(chip.now()) == 1
    # The MCU stops: the chips sleep after 2 s, the bleeders stop within 0.5 min.
    w.advance(25000)
    assert w.bleeding(0)
    w.advance(6000)
    assert not w.bleeding(0) and not w.bleeding(23)
    afe.init(24)
    afe.set_balancing(1 << 5)
    assert chip.devs[0].dcc() == 1 << 5 and chip.devs[1].dcc() == 0
    afe.set_balancing(0)
    assert chip.bleed_mask() == 0 and chip.devs[0].dcto_code() == 0


class _FlipNextWrite:
    # One bit error on MOSI in the next long frame (the chips' PEC refuses it).
    def __init__(self, spi):
        self.spi = spi
        self.armed = True

    def write_readinto(self, tx, rx):
        if self.armed and len(tx) > 4:
            self.armed = False
            bad = bytearray(tx)
            bad[9] ^= 0x10
            return self.spi.write_readinto(bad, rx)
        return self.spi.write_readinto(tx, rx)


@_isolated
def test_a_lost_balancing_write_is_found_and_written_again():
    w, afe, _cur = _setup()
    chip = w.afe_chip
    m = _m(afe)
    spi = afe.spi
    afe.spi = _FlipNextWrite(spi)
    afe.set_balancing(1 << 3 | 1 << 15)
    assert chip.bleed_mask() == 1 << 3  # the far device's group was hit: the near one took its own
    assert _tick(w, afe, m)  # the configuration check sees the difference
    afe.set_balancing(1 << 3 | 1 << 15)
    assert chip.bleed_mask() == 1 << 3 | 1 << 15


class _FlipReplies:
    # One bit error on MISO in every long frame, at the next of the given
    # byte positions (the MCU's PEC check sees it).
    def __init__(self, spi, positions):
        self.spi = spi
        self.positions = positions
        self.k = 0
        self.both = False  # also device 1's group (byte 14) in every frame

    def write_readinto(self, tx, rx):
        self.spi.write_readinto(tx, rx)
        if len(rx) > 5:
            rx[self.positions[self.k % len(self.positions)]] ^= 0x04
            if self.both:
                rx[14] ^= 0x04
            self.k += 1


@_isolated
def test_a_read_keeps_the_groups_that_came_through_intact():
    # Every group read is hit: device 0's group in one frame, device 1's in
    # the next. No single frame is intact, but each device's group arrives
    # intact in one of two: the reading completes, with the right values.
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    assert _tick(w, afe, m)
    crc = afe.crc_errors
    afe.spi = _FlipReplies(afe.spi, (6, 14))  # byte 6: device 0's group, byte 14: device 1's
    for _ in range(5):
        for k in range(24):
            m.cells_mv[k] = 0
        assert _tick(w, afe, m) and _cells_ok(m)
    assert afe.crc_errors - crc >= 25  # one per group read (5 a read at least)
    # Both groups of every frame hit: no reading.
    afe.spi = _FlipReplies(afe.spi.spi, (6,))
    afe.spi.both = True
    try:
        _tick(w, afe, m)
        assert False, "read through a link that spoils every group"
    except ChipReset:
        assert False, "bit errors are not a reset"
    except OSError:
        pass


@_isolated
def test_protection_thresholds_read_back_from_the_chips():
    w, afe, cur = _setup()
    got = afe.configure_protection(PROT)
    assert cur.alert_ma == 300000  # the board's alert trip_ma
    for dev in w.afe_chip.devs:
        assert dev.vov() == 2281 and dev.vuv() == 1749  # 3650 / 1.6 mV; 2800 / 1.6 mV - 1
        assert dev.refon()
    assert got == {"alert_ma": 300000, "cell_ov_mv": 3650, "cell_uv_mv": 2800}
    b = simworld.load_board(BOARD)
    del b["alert"]["trip_ma"]
    machine.attach(None)
    w, afe, cur = _setup(board=b)
    assert afe.configure_protection(PROT)["alert_ma"] == 500000 and cur.alert_ma == 500000  # 2 x ocd2


def _cells_ok(m, n=24):
    for k in range(n):
        if m.cells_mv[k] != 3200 + k:
            return False
    return True


@_isolated
def test_pec_storm_at_1_percent_is_retried_and_never_gives_wrong_values():
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    w.set_fault("afe_crc", True, 1)
    good = 0
    for _ in range(200):
        for k in range(24):
            m.cells_mv[k] = 0
        if _tick(w, afe, m):
            good += 1
            assert _cells_ok(m)
    assert good >= 198, good  # bad replies are read again, refused commands sent again
    assert afe.crc_errors >= 1
    assert afe.crc_errors < 100


@_isolated
def test_pec_storm_at_50_percent_still_reads():
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    w.set_fault("afe_crc", True, 50)
    good = 0
    for _ in range(50):
        try:
            if _tick(w, afe, m):
                good += 1
                assert _cells_ok(m)
        except ChipReset:
            assert False, "a storm is not a reset"
        except OSError:
            pass
    assert good >= 45, good


@_isolated
def test_pec_storm_at_100_percent_never_gives_a_wrong_value_and_recovers():
    # One bit error in every transfer, on MISO or on MOSI: each is caught
    # (reply PEC, or the chain refusing the command) and the transfer is
    # repeated; a reading either comes out right or the read fails.
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    w.set_fault("afe_crc", True)
    errors = afe.crc_errors
    for _ in range(30):
        for k in range(24):
            m.cells_mv[k] = 0
        try:
            if _tick(w, afe, m):
                assert _cells_ok(m)
        except ChipReset:
            assert False, "a storm is not a reset"
        except OSError:
            pass
        assert afe.crc_errors > errors  # every read met (and counted) bit errors
        errors = afe.crc_errors
    assert w.afe_chip.rejected >= 30  # commands the chips refused for their PEC
    w.set_fault("afe_crc", False)
    assert _tick(w, afe, m) and _cells_ok(m)


@_isolated
def test_no_answer_burst_raises_then_reads_again():
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    assert _tick(w, afe, m)
    crc = afe.crc_errors
    w.set_fault("afe_nack", True)  # MISO stays high: every PEC fails
    for _ in range(5):
        try:
            _tick(w, afe, m)
            assert False, "read through a silent bus"
        except ChipReset:
            assert False, "silence is not a reset"
        except OSError:
            pass
    assert afe.bus_errors >= 15 and afe.crc_errors == crc  # counted as no answer, not as bit errors
    w.set_fault("afe_nack", False)
    assert _tick(w, afe, m) and _cells_ok(m)


@_isolated
def test_chips_that_slept_raise_chip_reset_then_init_works():
    w, afe, _cur = _setup()
    afe.configure_protection(PROT)
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    assert _tick(w, afe, m)
    w.advance(2500)  # the MCU was busy: the watchdog reset the chips
    try:
        afe.read(m)
        assert False, "a slept chain read as if configured"
    except ChipReset:
        pass
    afe.init(24)
    afe.configure_protection(PROT)
    assert _tick(w, afe, m) and _cells_ok(m)
    assert w.afe_chip.devs[1].vov() == 2281


@_isolated
def test_a_power_on_reset_mid_run_raises_chip_reset():
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    assert _tick(w, afe, m) and _tick(w, afe, m)
    afe.set_balancing(1)
    w.set_fault("afe_reset", True)
    assert not w.afe_chip.bleed_mask()
    seen = False
    for _ in range(3):
        try:
            assert not _tick(w, afe, m)
        except ChipReset:
            seen = True
            break
    assert seen
    afe.init(24)
    assert _tick(w, afe, m) and _cells_ok(m)


@_isolated
def test_current_monitor_alert_latches_scd_and_opens_the_fets():
    w, afe, cur = _setup()
    m = _m(afe)
    afe.set_fets(True, True)
    assert w.fet_on("chg") and w.fet_on("dsg")
    cur.alert = True
    assert _tick(w, afe, m)
    assert m.hw_faults == HW_SCD and not w.fet_on("chg") and not w.fet_on("dsg")
    afe.set_fets(True, True)
    assert not w.fet_on("dsg")  # only clear re-arms
    cur.still = True
    assert not afe.clear_faults()
    cur.still = False
    assert afe.clear_faults()
    assert _tick(w, afe, m) and m.hw_faults == 0
    afe.set_fets(True, True)
    assert w.fet_on("dsg")


@_isolated
def test_alert_pin_interrupt_opens_the_fets_at_once():
    # A board whose ALERT line comes from a comparator on the shunt (no
    # source chip): the world drives it from the current that flows.
    b = simworld.load_board(BOARD)
    del b["alert"]["source"]
    w, afe, cur = _setup(board=b)
    m = _m(afe)
    afe.set_fets(True, True)
    w.set_current(-450000)  # above the 400 A trip: the line falls, the IRQ runs
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    assert _tick(w, afe, m) and m.hw_faults == HW_SCD
    w.raise_alert()
    assert not afe.clear_faults()  # still asserted
    w.release_alert()
    assert afe.clear_faults()
    w.set_current(-1000)
    afe.set_fets(False, True)
    assert w.fet_on("dsg") and not w.fet_on("chg")
    afe.shutdown()
    assert not w.fet_on("dsg") and w.afe_chip.bleed_mask() == 0


@_isolated
def test_a_stopped_current_monitor_makes_the_reading_incomplete():
    w, afe, cur = _setup()
    m = _m(afe)
    cur.fresh = False
    assert _tick(w, afe, m, 500)
    assert not _tick(w, afe, m, 600)


class _Recorder:
    # Forwards to the simulated bus and keeps the last reply to each command.
    def __init__(self, spi):
        self.spi = spi
        self.replies = {}

    def write_readinto(self, tx, rx):
        self.spi.write_readinto(tx, rx)
        if len(tx) >= 4:
            self.replies[tx[0] << 8 | tx[1]] = bytes(rx)


class _Replay:
    # Answers from the recording without allocating. hits: while on, a bit
    # error in device 0's group of one long reply, device 1's of the next.
    def __init__(self, replies):
        self.replies = replies
        self.hits = False
        self.k = 0

    def write_readinto(self, tx, rx):
        if len(tx) < 4:
            return
        r = self.replies.get(tx[0] << 8 | tx[1])
        for i in range(len(rx)):
            rx[i] = 0xFF if r is None else r[i]
        if self.hits and len(rx) > 5 and r is not None:
            rx[14 if self.k & 1 else 6] ^= 0x04
            self.k += 1


class _Pin:
    def __init__(self, v=1):
        self.v = v

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class _Clock:
    def __init__(self):
        self.now = 0

    def ticks(self):
        return self.now


def _nothing(_us):
    pass


@_isolated
def test_read_set_fets_and_set_balancing_do_not_allocate():
    w, afe, _cur = _setup()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    m = _m(afe)
    afe.configure_protection(PROT)
    rec = _Recorder(afe.spi)
    afe.spi = rec
    assert _tick(w, afe, m)
    afe.set_balancing(0x5)
    assert _tick(w, afe, m)
    # The same exchanges, replayed with the heap locked (MicroPython raises
    # MemoryError on any allocation).
    afe.spi = _Replay(rec.replies)
    afe.cs = _Pin()
    afe.gates.chg_pin = _Pin(0)
    afe.gates.dsg_pin = _Pin(0)
    afe.gates.alert_pin = _Pin(1)
    clock = _Clock()
    afe._ticks = clock.ticks
    afe._sleep_us = _nothing
    afe.current.fresh = True
    clock.now = w.ticks_ms()
    ok = 0
    micropython.heap_lock()
    try:
        for i in range(40):  # 4 s: the GPIO conversion started between reads and read back
            clock.now += 100
            afe.spi.hits = i >= 30  # the last ones: groups kept from one frame to the next
            if afe.read(m):
                ok += 1
            afe.set_fets(True, True)
            afe.set_balancing(0x5 if i & 1 else 0x3)
            afe.set_fets(True, i & 1 == 0)
    finally:
        micropython.heap_unlock()
    assert ok == 40 and _cells_ok(m) and afe.crc_errors >= 50
    assert afe.gates.chg_pin.v == 1


@_isolated
def test_end_to_end_with_the_ina226_driver_and_model():
    b = simworld.load_board(BOARD)
    w = simworld.SimWorld(b)
    machine.attach(w)
    afe = drv.from_board(b, machine, sleep_us=w.sleep_us, ticks_ms=w.ticks_ms)
    afe.init(24)
    afe.configure_protection(PROT)
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    w.set_current(-20000)
    afe.set_fets(True, True)
    m = _m(afe)
    for _ in range(3):
        _tick(w, afe, m)
    assert _tick(w, afe, m)
    for k in range(24):  # 20 A through the cells' resistance: below the open-circuit voltages
        assert abs(m.cells_mv[k] - w.cell_input_mv(k)) <= 1 and m.cells_mv[k] < 3200 + k
    assert abs(m.current_ma + 20000) <= 100, m.current_ma
    assert m.hw_faults == 0 and w.fet_on("dsg")
    # A short beyond the shunt's range: the INA226 alert opens the FETs.
    w.set_current(-600000)
    w.advance(20)
    assert not w.fet_on("dsg")
    assert _tick(w, afe, m) and m.hw_faults == HW_SCD
