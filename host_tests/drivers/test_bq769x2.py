# The BQ76952 driver (firmware/lib/bms/drivers/bq769x2.py) against the chip
# model (tools/sim/chips/bq769x2.py) on the simulated esp32_bq76952_16s
# board, through the simulated machine.I2C and machine.Pin: readings against
# values worked out by hand from the units, the programming read back from
# the model's data memory, CRC errors and NACKs, a chip reset, the chip's own
# protection, the FET pins with the bus dead, and allocation-free ticks.
import math

import machine
import simworld
from chips import checks
from chips import bq769x2 as model

from bms.afe import ChipReset, Measurements, HW_OV, HW_SCD, NTC_OK, NTC_OPEN
from bms.drivers import bq769x2 as drv

BOARD = "boards/esp32_bq76952_16s.json"
A = 0x08
ALERT = 27

CFG = {
    "cell_ov_mv": 3650, "cell_uv_mv": 2800, "cell_ov_delay_ms": 1000, "cell_uv_delay_ms": 2000,
    "occ_ma": 100000, "occ_delay_ms": 2000, "ocd2_ma": 180000, "ocd2_delay_ms": 200,
}


def _setup(cells=None, n=16, init=True, sensors=None):
    b = simworld.load_board(BOARD)
    p = None
    if n != 16:
        import pack as packmod

        p = packmod.Pack(chemistry="lfp", cells=n, capacity_ah=100, soc_pct=50.0)
    w = simworld.SimWorld(b, p, sensors)
    for k in range(n):
        w.set_cell(k + 1, 3300 if cells is None else cells[k])
    machine.attach(w)
    afe = drv.from_board(b, machine)
    afe._sleep = w.sleep_us  # virtual time for the chip's 2 ms subcommand latency
    if init:
        afe.init(n)
    return w, afe, Measurements(n, afe.n_temps, afe.has_board_temp)


def _tick(w, afe, m, chg=True, dsg=True, ms=100):
    w.advance(ms)
    ok = afe.read(m)
    afe.set_fets(chg, dsg)
    return ok


def _raw_sub(w, sid):
    # A subcommand sent behind the driver's back (another master, a glitch).
    frame = bytes([0x3E, sid & 0xFF, checks.crc8(bytes([A << 1, 0x3E, sid & 0xFF])), sid >> 8,
                   checks.crc8(bytes([sid >> 8]))])
    assert w.i2c_write(0, A, frame) == 5
    w.advance(3)


def test_from_board_builds_the_driver_with_the_fet_pins_high():
    w, afe, m = _setup(init=False)
    assert afe.max_cells == 16 and afe.n_temps == 2 and afe.has_board_temp
    assert afe.pack_measured and afe.can_balance and afe.no_adjacent_balancing
    # Board fets precharge "afe": the chip's own PDSG, which the firmware
    # neither times nor switches (no precharge step in bms.fets).
    assert afe.pdsg and not afe.has_precharge
    assert afe.current_max_ma == 327670  # int16 x 10 mA (the 0.5 mOhm shunt spans +-400 A)
    assert w.read_pin(25) == 1 and w.read_pin(26) == 1  # CFETOFF / DFETOFF at "off"
    assert afe.cell_ts == (0, 2) and afe.board_ts == 1


def test_init_programs_and_verifies_the_chip():
    w, afe, m = _setup()
    c = w.afe_chip
    assert c.dm_read(model.VCELL_MODE, 2) == 0xFFFF
    assert [c.dm_read(model.TS1_CONFIG + k) for k in range(3)] == [0x07, 0x0F, 0x07]
    assert c.dm_read(model.DA_CONFIG) == 0x06  # 10 mA, cV
    assert abs(c.dm_float(model.CC_GAIN) - 7.5684 / 0.5) < 1e-4
    assert abs(c.dm_float(model.CAPACITY_GAIN) - 7.5684 / 0.5 * 298261.6178) < 2
    assert c.dm_read(model.FET_OPTIONS) == 0x3D  # FET_INIT_OFF, PDSG_EN, FET_CTRL_EN, HOST_FET_EN, SFET
    # the board's 500 ms / 500 mV in 10 ms / 10 mV units; never a timeout of 0
    assert c.dm_read(model.PDSG_TIMEOUT) == 50 and c.dm_read(model.PDSG_DELTA) == 50
    assert c.dm_read(model.CFETOFF_CONFIG) == 0x02 and c.dm_read(model.DFETOFF_CONFIG) == 0x02
    assert c.dm_read(model.ALERT_CONFIG) == 0x82
    assert c.dm_read(model.POWER_CONFIG, 2) == 0x3882  # no SLEEP, SHUT_TS2
    assert c.dm_read(model.ENABLED_PROT_A) == 0xBC
    assert c.mfg & model.MS_FET_EN
    assert not c.cfgupdate and not c.por
    assert not w.fet_on("chg") and not w.fet_on("dsg") and not w.fet_on("precharge")
    assert c.bleed_mask() == 0
    assert afe.crc_errors == 0 and afe.bus_errors == 0


def test_init_refuses_another_chip():
    w, afe, m = _setup(init=False)
    old = model.DEVICE_NUMBER
    model.DEVICE_NUMBER = 0x7694  # a BQ76942
    try:
        afe.init(16)
        assert False, "a BQ76942 must be refused"
    except OSError:
        pass
    finally:
        model.DEVICE_NUMBER = old


def test_readings_against_the_units():
    cells = [3000 + 13 * k for k in range(16)]
    w, afe, m = _setup(cells)
    afe.configure_protection(CFG)  # SCD to 400 A: the default 10 mV is 20 A on this shunt
    w.set_temp(0, 10.0)
    w.set_temp(1, 40.0)
    w.set_board_temp(60.0)
    assert _tick(w, afe, m)
    assert list(m.cells_mv) == cells  # mV
    stack = sum(w.cell_true_mv(k) for k in range(16))
    assert m.pack_mv == int(round(stack / 10.0)) * 10  # userV = 10 mV
    assert m.current_ma == 0
    assert list(m.temps_dc) == [100, 400]  # 0.1 K - 273.2 K, same 103AT curve
    assert list(m.temp_status) == [NTC_OK, NTC_OK]
    assert m.board_dc == 600
    assert m.hw_faults == 0
    w.set_current(-50000)
    afe.set_fets(True, True)
    for _ in range(5):
        assert _tick(w, afe, m)
    assert w.fet_on("dsg")
    # CC2: 25 mV across 0.5 mOhm x CC Gain (7.5684 / 0.5) / 7.5684 = -50 A, in 10 mA
    assert m.current_ma == -50000
    for k in range(16):
        assert m.cells_mv[k] == int(round(w.cell_input_mv(k)))


def test_open_thermistor_reads_open():
    w, afe, m = _setup()
    w.set_fault("ntc_open", True, 2)  # TS3
    assert _tick(w, afe, m)
    assert m.temp_status[1] == NTC_OPEN and m.temp_status[0] == NTC_OK


def test_fewer_cells_use_vc16_for_the_top_cell():
    w, afe, m = _setup([3100, 3200, 3300, 3400], n=4)
    c = w.afe_chip
    assert c.dm_read(model.VCELL_MODE, 2) == 0x8007
    assert _tick(w, afe, m)
    assert list(m.cells_mv) == [3100, 3200, 3300, 3400]
    afe.set_balancing(0b1001)
    assert c.cb == 0x8001 and c.bleed_mask() == 0b1001


def test_protection_programming_read_back():
    w, afe, m = _setup()
    c = w.afe_chip
    got = afe.configure_protection(CFG)
    assert c.dm_read(model.COV_THRESHOLD) == 73  # 73 x 50.6 = 3693.8 mV >= 3650
    assert c.dm_read(model.COV_DELAY, 2) == 302  # (302 + 2) x 3.3 = 1003.2 ms >= 1000
    assert c.dm_read(model.CUV_THRESHOLD) == 55  # 2783 mV <= 2800
    assert c.dm_read(model.CUV_DELAY, 2) == 605  # 2003.1 ms >= 2000
    # OCC: the firmware waits 2 s, the chip at most 425.7 ms: it only acts at
    # twice the firmware's 100 A, 100 mV on 0.5 mOhm
    assert c.dm_read(model.OCC_THRESHOLD) == 50
    assert c.dm_read(model.OCC_DELAY) == 127
    assert c.dm_read(model.OCD1_THRESHOLD) == 45  # 90 mV = 180 A
    assert c.dm_read(model.OCD1_DELAY) == 59  # 201.3 ms >= 200
    assert c.dm_read(model.SCD_THRESHOLD) == 9  # 200 mV = 400 A >= 2 x 180 A
    assert c.dm_read(model.ENABLED_PROT_A) == 0xBC
    assert got["cell_ov_mv"] == 3693 and got["cell_ov_delay_ms"] == 1003
    assert got["cell_uv_mv"] == 2783 and got["cell_uv_delay_ms"] == 2003
    assert got["occ_ma"] == 200000 and got["occ_delay_ms"] == 425
    assert got["ocd2_ma"] == 180000 and got["ocd2_delay_ms"] == 201
    assert got["scd_ma"] == 400000
    # clamped to the chip's ranges
    got = afe.configure_protection(dict(CFG, cell_ov_mv=6000, ocd2_ma=1000000, ocd2_delay_ms=5000))
    assert c.dm_read(model.COV_THRESHOLD) == 110 and c.dm_read(model.OCD1_THRESHOLD) == 100
    assert c.dm_read(model.OCD1_DELAY) == 127 and c.dm_read(model.SCD_THRESHOLD) == 15
    assert got["ocd2_ma"] == 400000
    # a short firmware OCC delay: the chip backs the firmware's own limit
    got = afe.configure_protection(dict(CFG, occ_delay_ms=300))
    assert c.dm_read(model.OCC_THRESHOLD) == 25 and c.dm_read(model.OCC_DELAY) == 89  # 300.3 ms
    assert got["occ_ma"] == 100000 and got["occ_delay_ms"] == 300


def test_hardware_cov_opens_chg_and_shows_as_hw_ov():
    w, afe, m = _setup()
    afe.configure_protection(CFG)
    for _ in range(5):
        assert _tick(w, afe, m)
    assert w.fet_on("chg") and w.fet_on("dsg")
    w.set_cell(5, 3750)  # above the chip's 3693.8 mV
    for _ in range(9):
        _tick(w, afe, m)  # 900 ms < 1003 ms
    assert w.fet_on("chg") and not m.hw_faults
    for _ in range(3):
        _tick(w, afe, m)
    assert not w.fet_on("chg") and w.fet_on("dsg")
    assert m.hw_faults & HW_OV
    assert w.read_pin(ALERT) == 0  # the chip's ALERT line, active low
    assert not afe.clear_faults()  # still over-voltage
    w.set_cell(5, 3300)
    for _ in range(40):
        _tick(w, afe, m)
    assert w.fet_on("chg") and m.hw_faults == 0
    assert w.read_pin(ALERT) == 0  # latched until cleared
    assert afe.clear_faults()
    w.advance(1)
    assert w.read_pin(ALERT) == 1


def test_short_circuit_opens_dsg_and_shows_as_hw_scd():
    w, afe, m = _setup()
    afe.configure_protection(CFG)
    for _ in range(5):
        assert _tick(w, afe, m)
    w.set_fault("load_short", True)
    w.advance(1)
    assert not w.fet_on("dsg")
    assert afe.read(m) and m.hw_faults & HW_SCD


def test_set_fets_sends_only_on_change_and_repairs():
    w, afe, m = _setup()
    c = w.afe_chip
    sent = []
    inner = afe.i2c

    class Spy:
        def readfrom_mem_into(self, addr, reg, buf):
            inner.readfrom_mem_into(addr, reg, buf)

        def writeto_mem(self, addr, reg, buf):
            if reg == 0x3E:
                sent.append(buf[0] | (buf[2] << 8))
            inner.writeto_mem(addr, reg, buf)

    afe.i2c = Spy()
    afe.set_fets(True, False)
    assert sent == [0x0096, 0x0093]  # ALL_FETS_ON, DSG_PDSG_OFF
    for _ in range(5):
        _tick(w, afe, m, True, False)
    assert sent == [0x0096, 0x0093]
    assert w.fet_on("chg") and not w.fet_on("dsg")
    afe.set_fets(False, False)
    assert sent[-1] == 0x0095 and not w.fet_on("chg")
    afe.set_fets(True, True)
    assert sent[-1] == 0x0096
    for _ in range(5):
        _tick(w, afe, m)
    assert w.fet_on("chg") and w.fet_on("dsg")
    n = len(sent)
    _raw_sub(w, 0x0095)  # ALL_FETS_OFF from somewhere else
    assert not w.fet_on("chg")
    for _ in range(12):
        _tick(w, afe, m)
    assert len(sent) > n and w.fet_on("chg") and w.fet_on("dsg")


def test_a_dsg_request_runs_the_chips_predischarge_then_dsg():
    # With a 30 mA shunt offset (the scenarios' default): the chip judges LD,
    # a voltage, and ends PDSG by itself; DSG follows within the timeout.
    w, afe, m = _setup(sensors={"shunt_offset_ma": 30})
    _tick(w, afe, m, False, False)
    afe.set_fets(False, False, True)  # pchg alone: nothing the host can switch
    w.advance(1)
    assert not w.fet_on("precharge") and not w.fet_on("dsg")
    assert w.read_pin(26) == 1
    afe.set_fets(False, True)
    w.advance(1)
    assert w.fet_on("precharge") and not w.fet_on("dsg")
    assert w.read_pin(26) == 0
    for _ in range(5):
        _tick(w, afe, m, False, True)  # the driver does not "repair" the predischarge
    assert w.fet_on("dsg") and not w.fet_on("precharge")


def test_predischarge_ends_at_the_boards_timeout():
    # On the real board a load drawing through the PDSG resistor keeps LD
    # far below the stack, and only the timeout ends predischarge. The
    # simulated world carries no current through PDSG, so the voltage check
    # is switched off here to see the board's timeout alone.
    b = simworld.load_board(BOARD)
    b["bq769x2"]["pdsg_delta_mv"] = 0
    b["bq769x2"]["pdsg_timeout_ms"] = 1234  # rounded up to 1.24 s
    w = simworld.SimWorld(b)
    for k in range(16):
        w.set_cell(k + 1, 3300)
    machine.attach(w)
    afe = drv.from_board(b, machine)
    afe._sleep = w.sleep_us
    afe.init(16)
    c = w.afe_chip
    assert c.dm_read(model.PDSG_TIMEOUT) == 124 and c.dm_read(model.PDSG_DELTA) == 0
    afe.set_fets(True, True)
    w.advance(1200)
    assert w.fet_on("precharge") and not w.fet_on("dsg")
    w.advance(60)
    assert w.fet_on("dsg") and not w.fet_on("precharge")


def test_a_zero_timeout_is_refused():
    # 0 would be "no timeout": under a load, predischarge for ever.
    i2c = None
    a = drv.Bq769x2(i2c, pdsg=True, pdsg_timeout_ms=0)
    assert a._pdsg_timeout == 1
    a = drv.Bq769x2(i2c, pdsg=True, pdsg_timeout_ms=99999, pdsg_delta_mv=99999)
    assert a._pdsg_timeout == 255 and a._pdsg_delta == 255


def test_balancing_on_change():
    w, afe, m = _setup()
    c = w.afe_chip
    afe.set_balancing(0b1010_0000_0000_0101)
    assert c.bleed_mask() == 0b1010_0000_0000_0101
    afe.set_balancing(0)
    assert c.bleed_mask() == 0


def test_a_bad_crc_is_rejected_and_counted():
    w, afe, m = _setup()
    assert _tick(w, afe, m)
    good = list(m.cells_mv)
    w.set_fault("afe_crc", True, 50)  # every other transfer
    for _ in range(10):
        assert _tick(w, afe, m)
        assert list(m.cells_mv) == good
    assert afe.crc_errors >= 10
    w.set_fault("afe_crc", False)
    before = afe.crc_errors
    w.set_fault("afe_crc", True)  # all of them: three tries, then OSError
    try:
        afe.read(m)
        assert False, "a reply whose CRC never checks must not be used"
    except OSError:
        pass
    assert afe.crc_errors == before + 3


def test_crc_storm_at_1_percent_keeps_the_readings_coming():
    w, afe, m = _setup()
    w.set_fault("afe_crc", True, 1)
    for _ in range(300):
        assert _tick(w, afe, m)
    assert afe.crc_errors >= 10
    assert w.fet_on("chg") and w.fet_on("dsg")


def test_crc_storm_at_100_percent_fails_but_the_pins_open_the_fets():
    w, afe, m = _setup()
    for _ in range(5):
        assert _tick(w, afe, m)
    assert w.fet_on("chg") and w.fet_on("dsg")
    w.set_fault("afe_crc", True, 100)
    try:
        afe.read(m)
        assert False
    except OSError:
        pass
    try:
        afe.set_fets(False, False)
    except OSError:
        pass  # the commands were refused: the FET state is not confirmed
    assert not w.fet_on("chg") and not w.fet_on("dsg")  # through CFETOFF / DFETOFF
    w.set_fault("afe_crc", False)
    afe.set_fets(False, False)
    assert w.afe_chip.host_off == 0x0F  # the command made it too, now


def test_nack_burst_then_recovery():
    w, afe, m = _setup()
    for _ in range(3):
        assert _tick(w, afe, m)
    w.set_fault("afe_nack", True)
    before = afe.bus_errors
    try:
        afe.read(m)
        assert False
    except OSError:
        pass
    assert afe.bus_errors == before + 3
    try:
        afe.set_fets(True, False)
    except OSError:
        pass
    assert not w.fet_on("dsg")  # opened through DFETOFF with the chip deaf
    w.set_fault("afe_nack", False)
    assert _tick(w, afe, m, True, False)
    w.set_fault("afe_nack", True, 30)
    oks = 0
    for _ in range(50):
        try:
            if _tick(w, afe, m):
                oks += 1
        except OSError:
            pass
    assert oks >= 45  # one NACK in three transfers is retried through


def test_chip_reset_mid_run_then_init_again():
    w, afe, m = _setup()
    afe.configure_protection(CFG)
    for _ in range(5):  # DSG after the chip's predischarge (250 ms)
        assert _tick(w, afe, m)
    assert w.fet_on("dsg")
    w.set_fault("afe_reset", True)
    assert not w.fet_on("dsg")  # the chip restarts with its FETs off
    try:
        afe.read(m)
        assert False, "a reset chip must be reported"
    except ChipReset:
        pass
    afe.init(16)
    afe.configure_protection(CFG)
    assert w.afe_chip.dm_read(model.COV_THRESHOLD) == 73
    for _ in range(5):
        assert _tick(w, afe, m)
    assert w.fet_on("chg") and w.fet_on("dsg")


def test_config_update_behind_our_back_is_a_reset():
    w, afe, m = _setup()
    assert _tick(w, afe, m)
    _raw_sub(w, 0x0090)
    try:
        afe.read(m)
        assert False
    except ChipReset:
        pass
    afe.init(16)
    assert _tick(w, afe, m)


def test_stopped_measurements_return_false():
    w, afe, m = _setup()
    assert _tick(w, afe, m)
    _raw_sub(w, 0x000F)
    _raw_sub(w, 0x000F)  # DEEPSLEEP, twice within 4 s
    assert w.afe_chip.deepsleep
    assert not afe.read(m)
    _raw_sub(w, 0x000E)
    w.advance(100)
    assert afe.read(m)


def test_no_sleep_at_zero_current():
    # The chip's default SLEEP would measure every 5 s and open CHG: init
    # turns it off, so readings keep coming with no current.
    w, afe, m = _setup()
    for _ in range(150):
        assert _tick(w, afe, m)
    assert w.afe_chip.hw_state()["mode"] == "normal" and w.fet_on("chg")


def test_shutdown_opens_the_fets_and_the_chip_goes_quiet():
    w, afe, m = _setup()
    for _ in range(3):
        _tick(w, afe, m)
    afe.shutdown()
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    assert w.afe_chip.hw_state()["mode"] == "shutdown"
    try:
        afe.read(m)
        assert False
    except OSError:
        pass


class _Record:
    def __init__(self, inner):
        self.inner = inner
        self.rec = {}

    def readfrom_mem_into(self, addr, reg, buf):
        self.inner.readfrom_mem_into(addr, reg, buf)
        self.rec[reg * 256 + len(buf)] = bytes(buf)

    def writeto_mem(self, addr, reg, buf):
        self.inner.writeto_mem(addr, reg, buf)


class _Replay:
    # Serves what the chip answered last, without allocating: the sim's own
    # bus allocates, the driver must not.
    def __init__(self, rec):
        self.rec = rec

    def readfrom_mem_into(self, addr, reg, buf):
        src = self.rec[reg * 256 + len(buf)]
        for i in range(len(buf)):
            buf[i] = src[i]

    def writeto_mem(self, addr, reg, buf):
        pass


class _Pin:
    def __init__(self):
        self.v = 1

    def value(self, v=None):
        if v is not None:
            self.v = v
        return self.v


def _nothing(_us):
    pass


def test_steady_state_ticks_allocate_nothing():
    import micropython

    w, afe, m = _setup()
    afe.configure_protection(CFG)
    rec = _Record(afe.i2c)
    afe.i2c = rec
    mask = 0b0101
    for _ in range(12):
        _tick(w, afe, m)
        afe.set_balancing(mask)
    afe.i2c = _Replay(rec.rec)
    afe.cfetoff = _Pin()
    afe.dfetoff = _Pin()
    afe._sleep = _nothing
    oks = 0
    micropython.heap_lock()
    try:
        for _ in range(120):
            if afe.read(m):
                oks += 1
            afe.set_fets(True, True)
            afe.set_balancing(mask)
    finally:
        micropython.heap_unlock()
    assert oks == 120
    assert m.cells_mv[0] == 3300
