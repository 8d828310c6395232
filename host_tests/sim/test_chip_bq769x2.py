# The BQ76952 chip model (tools/sim/chips/bq769x2.py) on its own, driven
# byte by byte over the simulated I2C bus the way the datasheet, the TRM
# (SLUUBY2B) and TI's software development guide (SLUAA11B) describe it:
# CRC framing and the guide's test vectors, the subcommand buffer and its
# checksum/length commit, data memory locked outside CONFIG_UPDATE, the
# chip's own protections with their delays, the FET controls, balancing,
# the measurements in their units, a power-on reset.
import math

import simworld
from chips import checks
from chips import bq769x2 as chip

BOARD = "boards/esp32_bq76952_16s.json"
BUS = 0
A = 0x08
CFETOFF = 25
DFETOFF = 26
ALERT = 27


def _world(cells=None, pack=None):
    b = simworld.load_board(BOARD)
    w = simworld.SimWorld(b, pack)
    for k in range(w.pack.n):
        w.set_cell(k + 1, 3300 if cells is None else cells[k])
    return w


def _frame(reg, data):
    out = bytearray([reg])
    for j in range(len(data)):
        d = data[j]
        out.append(d)
        out.append(checks.crc8(bytes([A << 1, reg, d])) if j == 0 else checks.crc8(bytes([d])))
    return bytes(out)


def _wr(w, reg, data):
    return w.i2c_write(BUS, A, _frame(reg, data))


def _rd(w, reg, n):
    w.i2c_write(BUS, A, bytes([reg]), False)
    raw = w.i2c_read(BUS, A, 2 * n)
    out = bytearray()
    for j in range(n):
        d = raw[2 * j]
        want = checks.crc8(bytes([A << 1, reg, (A << 1) | 1, d])) if j == 0 else checks.crc8(bytes([d]))
        assert raw[2 * j + 1] == want, "bad CRC from the chip"
        out.append(d)
    return bytes(out)


def _u16(b, j=0):
    return b[j] | (b[j + 1] << 8)


def _s16(b, j=0):
    v = _u16(b, j)
    return v - 0x10000 if v & 0x8000 else v


def _sub(w, sid):
    assert _wr(w, 0x3E, [sid & 0xFF, sid >> 8]) == 5
    w.advance(3)


def _sub_read(w, sid):
    _sub(w, sid)
    blk = _rd(w, 0x3E, 36)
    assert _u16(blk) == sid
    n = blk[35] - 4
    return blk[2:2 + n]


def _dm_write(w, addr, data, checksum=None, length=None):
    assert _wr(w, 0x3E, [addr & 0xFF, addr >> 8] + list(data)) == 1 + 2 * (2 + len(data))
    s = (addr & 0xFF) + (addr >> 8) + sum(data)
    chk = (~s) & 0xFF if checksum is None else checksum
    assert _wr(w, 0x60, [chk, len(data) + 4 if length is None else length]) == 5


def _cfg(w):
    _sub(w, chip.SC_SET_CFGUPDATE)
    assert _u16(_rd(w, 0x12, 2)) & 1


def _exit(w):
    _sub(w, chip.SC_EXIT_CFGUPDATE)
    assert not _u16(_rd(w, 0x12, 2)) & 1


def _fets_on(w):
    # Out of FET test mode, host blocks cleared.
    _sub(w, chip.SC_FET_ENABLE)
    _sub(w, chip.SC_ALL_FETS_ON)
    w.advance(1)


# ---------------------------------------------------------------- link


def test_crc_vectors_of_the_development_guide():
    assert checks.crc8(bytes([0x10, 0x3E, 0x22])) == 0x63
    assert checks.crc8(bytes([0x00])) == 0x00
    assert checks.crc8(bytes([0x10, 0x14, 0x11, 0x68])) == 0x33
    assert checks.crc8(bytes([0x0B])) == 0x31


def test_a_read_carries_the_guide_crcs():
    # Cell 1 at 0x0B68 = 2920 mV reads back as 68 33 0B 31 (SLUAA11B 4).
    w = _world([2920] + [3300] * 15)
    w.advance(100)
    w.i2c_write(BUS, A, bytes([0x14]), False)
    assert w.i2c_read(BUS, A, 4) == bytes([0x68, 0x33, 0x0B, 0x31])


def test_the_guide_write_is_accepted_and_runs_fet_enable():
    w = _world()
    c = w.afe_chip
    assert not c.mfg & chip.MS_FET_EN
    assert w.i2c_write(BUS, A, bytes([0x3E, 0x22, 0x63, 0x00, 0x00])) == 5
    w.advance(3)
    assert c.mfg & chip.MS_FET_EN


def test_a_write_with_a_bad_crc_is_nacked_and_not_applied():
    import machine

    w = _world()
    c = w.afe_chip
    before = c.alarm_enable
    frame = bytearray(_frame(0x66, [0x34, 0x12]))
    frame[2] ^= 0x01  # the first CRC
    assert w.i2c_write(BUS, A, bytes(frame)) == 2  # reg and d0 acked, the CRC byte not
    assert c.alarm_enable == before
    frame = bytearray(_frame(0x66, [0x34, 0x12]))
    frame[4] ^= 0x80  # the second byte's CRC
    assert w.i2c_write(BUS, A, bytes(frame)) == 4
    assert c.alarm_enable == before  # the first byte was not applied either
    assert _wr(w, 0x66, [0x34, 0x12]) == 5
    assert c.alarm_enable == 0x1234
    # Through machine.I2C the refused CRC byte is an OSError.
    machine.attach(w)
    i2c = machine.I2C(0, sda=machine.Pin(21), scl=machine.Pin(22))
    frame = bytearray(_frame(0x66, [0x00, 0x80]))
    frame[2] ^= 0xFF
    try:
        i2c.writeto_mem(A, 0x66, frame[1:])
        assert False, "a bad CRC must be refused"
    except OSError:
        pass
    assert c.alarm_enable == 0x1234


def test_a_write_missing_its_last_crc_is_dropped():
    w = _world()
    c = w.afe_chip
    before = c.alarm_enable
    assert w.i2c_write(BUS, A, _frame(0x66, [0x34, 0x12])[:-1]) == 4
    assert c.alarm_enable == before


# ---------------------------------------------------------------- subcommands


def test_the_buffer_fills_about_2_ms_after_the_id():
    w = _world()
    assert _wr(w, 0x3E, [0x01, 0x00]) == 5
    w.sleep_us(500)
    early = _rd(w, 0x3E, 4)
    assert early == b"\xff\xff\xff\xff"  # the id is not echoed yet
    w.sleep_us(1600)
    blk = _rd(w, 0x3E, 36)
    assert _u16(blk) == 0x0001 and _u16(blk, 2) == 0x7695
    assert blk[35] == 6 and blk[34] == (~(0x01 + 0x00 + 0x95 + 0x76)) & 0xFF


def test_the_guide_example_0x307A_to_cell_1_gain():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    s = 0x80 + 0x91 + 0x7A + 0x30
    assert (~s) & 0xFF == 0x44  # the guide's checksum; length 6
    _dm_write(w, 0x9180, [0x7A, 0x30])
    assert c.dm_read(0x9180, 2) == 0x307A
    # read back through the subcommand buffer: a 32-byte block, length 0x24
    _sub(w, 0x9180)
    blk = _rd(w, 0x3E, 36)
    assert _u16(blk, 2) == 0x307A and blk[35] == 0x24


def test_a_wrong_checksum_or_length_is_ignored():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, 0x9180, [0x7A, 0x30], checksum=0x45)
    assert c.dm_read(0x9180, 2) == 0
    _dm_write(w, 0x9180, [0x7A, 0x30], length=0x05)
    assert c.dm_read(0x9180, 2) == 0
    _dm_write(w, 0x9180, [0x7A, 0x30], length=0x30)
    assert c.dm_read(0x9180, 2) == 0
    # 0x60 and 0x61 in two transfers: no commit
    assert _wr(w, 0x3E, [0x80, 0x91, 0x7A, 0x30]) == 9
    assert _wr(w, 0x60, [0x44]) == 3
    assert _wr(w, 0x61, [0x06]) == 3
    assert c.dm_read(0x9180, 2) == 0
    _dm_write(w, 0x9180, [0x7A, 0x30])
    assert c.dm_read(0x9180, 2) == 0x307A


def test_data_memory_is_refused_outside_config_update():
    w = _world()
    c = w.afe_chip
    _dm_write(w, chip.COV_THRESHOLD, [70])
    assert c.dm_read(chip.COV_THRESHOLD) == 86  # the OTP default stays
    assert c.writes_refused == 1
    _cfg(w)
    _dm_write(w, chip.COV_THRESHOLD, [70])
    _exit(w)
    assert c.dm_read(chip.COV_THRESHOLD) == 70
    assert _sub_read(w, chip.COV_THRESHOLD)[0] == 70


def test_config_update_opens_the_fets_and_stops_measuring():
    w = _world()
    c = w.afe_chip
    _fets_on(w)
    assert w.fet_on("chg") and w.fet_on("dsg")
    w.advance(100)
    _cfg(w)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    w.set_cell(1, 3500)
    w.advance(500)
    assert _s16(_rd(w, 0x14, 2)) == 3300  # frozen at the last loop
    st = _u16(_rd(w, 0x12, 2))
    assert st & chip.BS_CFGUPDATE and st & chip.BS_POR
    _exit(w)
    st = _u16(_rd(w, 0x12, 2))
    assert not st & (chip.BS_CFGUPDATE | chip.BS_POR)
    w.advance(100)
    assert _s16(_rd(w, 0x14, 2)) == 3500
    # FET_INIT_OFF clear (the default): the host state allows the FETs again
    assert w.fet_on("chg") and w.fet_on("dsg")


# ---------------------------------------------------------------- measurements


def test_cells_stack_and_current_in_their_units():
    cells = [3000 + 10 * k for k in range(16)]
    w = _world(cells)
    _fets_on(w)
    w.advance(100)
    got = _rd(w, 0x14, 32)
    for k in range(16):
        assert _s16(got, 2 * k) == cells[k]  # mV, at rest
    w.set_current(-15000)  # 7.5 mV: below the default SCD threshold (10 mV)
    w.advance(100)
    got = _rd(w, 0x14, 32)
    for k in range(16):
        assert _s16(got, 2 * k) == int(round(w.cell_input_mv(k)))  # with the IR drop
        assert _s16(got, 2 * k) < cells[k]
    # stack in userV = 10 mV (DA Configuration 0x05), rounded
    total = w.pack_terminal_mv()
    assert _s16(_rd(w, 0x34, 2)) == int(round(total / 10.0))
    # CC2 in 1 mA (default USER_AMPS = 1) with the default 1 mOhm CC Gain on
    # the board's 0.5 mOhm shunt: half the true current
    assert _s16(_rd(w, 0x3A, 2)) == -7500
    # a CC Gain for 0.5 mOhm and 10 mA units
    _cfg(w)
    gain = 7.5684 / 0.5
    import struct

    _dm_write(w, chip.CC_GAIN, list(struct.pack("<f", gain)))
    _dm_write(w, chip.DA_CONFIG, [0x06])
    _exit(w)
    assert w.fet_on("dsg")
    w.advance(100)
    assert _s16(_rd(w, 0x3A, 2)) == -1500  # -15 A in 10 mA
    assert _s16(_rd(w, 0x34, 2)) == int(round(w.pack_terminal_mv() / 10.0))


def test_fewer_cells_wire_the_top_cell_to_vc16():
    import pack as packmod

    b = simworld.load_board(BOARD)
    p = packmod.Pack(chemistry="lfp", cells=4, capacity_ah=100, soc_pct=50.0)
    w = simworld.SimWorld(b, p)
    for k in range(4):
        w.set_cell(k + 1, 3100 + 100 * k)
    w.advance(100)
    got = _rd(w, 0x14, 32)
    v = [_s16(got, 2 * k) for k in range(16)]
    assert v[:3] == [3100, 3200, 3300]
    assert v[15] == 3400
    assert v[3:15] == [0] * 12


def test_thermistors_in_tenths_of_kelvin():
    w = _world()
    c = w.afe_chip
    w.set_temp(0, 10.0)
    w.advance(100)
    # TS1 is a thermistor at power-on (TS1 Config 0x07); TS2/TS3 unused (0x00)
    r = simworld.ntc_ohm(w.board["ntc"][0], 10.0)
    t = 1.0 / (1.0 / 298.15 + math.log(r / 10000.0) / 3435.0)
    assert abs(_s16(_rd(w, 0x70, 2)) - t * 10) <= 1
    assert abs(_s16(_rd(w, 0x70, 2)) - 2832) <= 1  # 10 degC
    assert _s16(_rd(w, 0x74, 2)) == 0
    _cfg(w)
    _dm_write(w, chip.TS1_CONFIG + 2, [0x07])  # TS3
    _dm_write(w, chip.TS1_CONFIG + 1, [0x0F])  # TS2: the board thermistor
    _exit(w)
    w.set_temp(1, 40.0)
    w.set_board_temp(60.0)
    w.advance(100)
    assert abs(_s16(_rd(w, 0x74, 2)) - 3132) <= 1
    assert abs(_s16(_rd(w, 0x72, 2)) - 3332) <= 1
    w.set_fault("ntc_open", True, 2)
    w.advance(100)
    assert _s16(_rd(w, 0x74, 2)) < 2232  # below -50 degC: open
    assert c.hw_state()["mode"] == "normal"


def test_measurements_refresh_every_loop():
    w = _world()
    c = w.afe_chip
    period = c.loop_us()
    assert period == 3000 * (18 + 1)  # TS1 is the only thermistor slot
    w.advance(100)
    w.set_cell(2, 3200)
    w.advance(period // 1000 + 1)
    assert _s16(_rd(w, 0x16, 2)) == 3200


# ---------------------------------------------------------------- protections


def _program_cov(w, code=70, delay=28):
    _cfg(w)
    _dm_write(w, chip.COV_THRESHOLD, [code])  # 70 x 50.6 = 3542 mV
    _dm_write(w, chip.COV_DELAY, [delay & 0xFF, delay >> 8])  # (28 + 2) x 3.3 = 99 ms
    _dm_write(w, chip.ALERT_CONFIG, [0x82])
    _dm_write(w, chip.DEFAULT_ALARM_MASK, [0x00, 0xE0])
    _exit(w)
    _fets_on(w)


def test_cov_trips_after_its_delay_and_not_before():
    w = _world()
    c = w.afe_chip
    _program_cov(w)
    assert w.fet_on("chg") and w.read_pin(ALERT) == 1
    w.set_cell(5, 3560)
    for _ in range(9):
        w.advance(10)  # 90 ms < 99 ms
    assert w.fet_on("chg")
    assert _rd(w, 0x02, 2) == bytes([chip.COV, 0])  # alert, not yet status
    w.advance(20)
    assert _rd(w, 0x03, 1)[0] & chip.COV
    assert not w.fet_on("chg") and w.fet_on("dsg")  # CHG FET Protections A = 0x98
    assert _u16(_rd(w, 0x12, 2)) & chip.BS_SS
    assert w.read_pin(ALERT) == 0  # active low
    assert not _rd(w, 0x7F, 1)[0] & 1
    # recovery: below 3542 - 2 x 50.6 mV for Recovery Time (3 s)
    w.set_cell(5, 3450)  # above 3542 - 101.2: no recovery
    w.advance(4000)
    assert not w.fet_on("chg")
    w.set_cell(5, 3430)
    w.advance(2900)
    assert not w.fet_on("chg")
    w.advance(200)
    assert w.fet_on("chg") and not _rd(w, 0x03, 1)[0]
    # the ALERT stays latched until the host clears Alarm Status
    assert w.read_pin(ALERT) == 0
    _wr(w, 0x62, [0xFF, 0xFF])
    w.advance(1)
    assert w.read_pin(ALERT) == 1


def test_cov_ignores_cells_outside_vcell_mode():
    w = _world()
    _cfg(w)
    _dm_write(w, chip.COV_THRESHOLD, [70])
    _dm_write(w, chip.VCELL_MODE, [0xFF, 0x7F])  # cell 16 not a cell
    _exit(w)
    _fets_on(w)
    w.set_cell(16, 3700)
    w.advance(1000)
    assert w.fet_on("chg")
    w.set_cell(15, 3700)
    w.advance(1000)
    assert not w.fet_on("chg")


def test_cuv_opens_dsg_and_disabled_protections_do_not():
    w = _world()
    c = w.afe_chip
    _fets_on(w)
    w.set_cell(3, 2400)  # below 50 x 50.6 = 2530 mV, but CUV is off by default (0x88)
    w.advance(1000)
    assert w.fet_on("dsg")
    _cfg(w)
    _dm_write(w, chip.ENABLED_PROT_A, [0x8C])
    _exit(w)
    _sub(w, chip.SC_ALL_FETS_ON)
    w.advance(240)  # (74 + 2) x 3.3 = 250.8 ms
    assert w.fet_on("dsg")
    w.advance(20)
    assert not w.fet_on("dsg") and w.fet_on("chg")
    assert c.hw_state()["tripped"] == "CUV"


def test_occ_and_ocd1_trip_on_the_shunt_voltage():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, chip.ENABLED_PROT_A, [0xBC])
    _dm_write(w, chip.OCC_THRESHOLD, [25])  # 50 mV = 100 A on 0.5 mOhm
    _dm_write(w, chip.OCC_DELAY, [10])  # 39.6 ms
    _dm_write(w, chip.OCD1_THRESHOLD, [45])  # 90 mV = 180 A
    _dm_write(w, chip.OCD1_DELAY, [20])  # 72.6 ms
    _dm_write(w, chip.SCD_THRESHOLD, [15])  # 500 mV: out of the way
    _exit(w)
    _fets_on(w)
    w.set_current(95000)
    w.advance(500)
    assert w.fet_on("chg")
    w.set_current(105000)
    w.advance(30)
    assert w.fet_on("chg")
    w.advance(20)
    assert not w.fet_on("chg")
    assert _rd(w, 0x03, 1)[0] == chip.OCC
    # OCC recovers with a discharge of at least 200 mA for 3 s
    w.set_current(-1000)
    w.advance(3100)
    assert w.fet_on("chg")
    w.set_current(-185000)
    w.advance(60)
    assert w.fet_on("dsg")
    w.advance(30)
    assert not w.fet_on("dsg")
    assert _rd(w, 0x03, 1)[0] == chip.OCD1
    # OCD recovers only with a charge of 200 mA or more for 3 s
    w.set_current(0)
    w.advance(5000)
    assert not w.fet_on("dsg")
    w.set_current(1000)
    w.advance(3100)
    assert w.fet_on("dsg")


def test_scd_opens_dsg_at_once_and_recovers_after_its_time():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, chip.SCD_THRESHOLD, [9])  # 200 mV = 400 A
    _exit(w)
    _fets_on(w)
    w.set_current(-380000)
    w.advance(100)
    assert w.fet_on("dsg")
    w.set_fault("load_short", True)
    w.advance(1)
    assert not w.fet_on("dsg") and not w.fet_on("chg")  # SCD is in both FET masks
    assert _rd(w, 0x03, 1)[0] & chip.SCD
    assert abs(w.flowing_ma()) < 1000
    w.set_fault("load_short", False)
    w.set_current(0)
    w.advance(4900)
    assert not w.fet_on("dsg")
    w.advance(200)  # SCD Recovery Time 5 s
    assert w.fet_on("dsg")


# ---------------------------------------------------------------- FETs


def test_fet_test_mode_until_fet_enable():
    w = _world()
    _sub(w, chip.SC_ALL_FETS_ON)
    assert not w.fet_on("chg") and not w.fet_on("dsg")  # FET_EN = 0 after reset
    _sub(w, chip.SC_CHGTEST)
    assert w.fet_on("chg") and not w.fet_on("dsg")
    _sub(w, chip.SC_FET_ENABLE)
    assert _u16(_sub_read(w, chip.SC_MANUFACTURINGSTATUS)) & chip.MS_FET_EN
    assert w.fet_on("chg") and w.fet_on("dsg")  # FET_INIT_OFF = 0: allowed


def test_host_fet_commands():
    w = _world()
    _fets_on(w)
    _sub(w, chip.SC_DSG_PDSG_OFF)
    assert w.fet_on("chg") and not w.fet_on("dsg")
    _sub(w, chip.SC_CHG_PCHG_OFF)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    _sub(w, chip.SC_ALL_FETS_ON)
    assert w.fet_on("chg") and w.fet_on("dsg")
    _sub(w, chip.SC_ALL_FETS_OFF)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    # FET_CONTROL: CHG_OFF only
    assert _wr(w, 0x3E, [0x97, 0x00, 0x04]) == 7
    s = 0x97 + 0x00 + 0x04
    assert _wr(w, 0x60, [(~s) & 0xFF, 5]) == 5
    w.advance(1)
    assert not w.fet_on("chg") and w.fet_on("dsg")
    assert _rd(w, 0x7F, 1)[0] & 0x0F == 0x04


def test_cfetoff_and_dfetoff_pins():
    import machine

    w = _world()
    machine.attach(w)
    cf = machine.Pin(CFETOFF, machine.Pin.OUT, value=0)
    df = machine.Pin(DFETOFF, machine.Pin.OUT, value=0)
    _fets_on(w)
    cf.value(1)  # not configured yet (CFETOFF Pin Config 0x00): ignored
    assert w.fet_on("chg")
    _cfg(w)
    _dm_write(w, chip.CFETOFF_CONFIG, [0x02])
    _dm_write(w, chip.DFETOFF_CONFIG, [0x02])
    _exit(w)
    assert not w.fet_on("chg") and w.fet_on("dsg")
    df.value(1)
    assert not w.fet_on("dsg")  # at once, no step needed
    cf.value(0)
    df.value(0)
    assert w.fet_on("chg") and w.fet_on("dsg")
    # BOTHOFF on DFETOFF, active low
    _cfg(w)
    _dm_write(w, chip.DFETOFF_CONFIG, [0xC2])
    _exit(w)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    df.value(1)
    assert w.fet_on("chg") and w.fet_on("dsg")


def test_predischarge_runs_before_dsg():
    w = _world()
    _cfg(w)
    _dm_write(w, chip.FET_OPTIONS, [0x1D])  # PDSG_EN
    _dm_write(w, chip.PDSG_TIMEOUT, [0])
    _exit(w)
    _fets_on(w)
    assert w.fet_on("precharge") and not w.fet_on("dsg")
    assert _rd(w, 0x7F, 1)[0] & 0x0C == 0x08
    w.advance(300)  # LD within the delta at the 250 ms check
    assert w.fet_on("dsg") and not w.fet_on("precharge")


def test_predischarge_defaults_are_50_ms_and_500_mv():
    w = _world()
    assert _sub_read(w, chip.PDSG_TIMEOUT)[:2] == bytes([5, 50])  # 10 ms, 10 mV units


def test_predischarge_ends_at_its_timeout():
    w = _world()
    _cfg(w)
    _dm_write(w, chip.FET_OPTIONS, [0x1D])  # PDSG_EN
    _dm_write(w, chip.PDSG_TIMEOUT, [30])  # 300 ms
    _dm_write(w, chip.PDSG_DELTA, [0])  # no voltage check: the timeout alone
    _exit(w)
    _fets_on(w)
    w.advance(280)
    assert w.fet_on("precharge") and not w.fet_on("dsg")
    w.advance(30)
    assert w.fet_on("dsg") and not w.fet_on("precharge")


def test_a_shunt_offset_does_not_hold_predischarge():
    # LD is a voltage at the load: the current sensor's offset is no
    # current through the PDSG resistor. Nothing flows through it in the
    # simulated world, so LD reads the stack and the first check ends it.
    b = simworld.load_board(BOARD)
    w = simworld.SimWorld(b, None, {"shunt_offset_ma": 30})
    for k in range(16):
        w.set_cell(k + 1, 3300)
    _cfg(w)
    _dm_write(w, chip.FET_OPTIONS, [0x1D])
    _dm_write(w, chip.PDSG_TIMEOUT, [0])  # the voltage check alone
    _exit(w)
    _fets_on(w)
    w.advance(100)
    assert w.fet_on("precharge") and not w.fet_on("dsg")
    stack = _u16(_rd(w, 0x34, 2))
    assert abs(_u16(_rd(w, 0x38, 2)) - stack) <= 1  # LD = stack (userV)
    w.advance(200)
    assert w.fet_on("dsg")


def test_fet_switching_times_reach_the_world():
    w = _world()
    w.gate_changed_ms = {"chg": 0, "dsg": 0}  # what a scenario keeps
    w.advance(500)
    _fets_on(w)
    t = w.now_ms
    assert w.fet_on("chg") and w.fet_on("dsg")
    assert t - 10 <= w.gate_changed_ms["chg"] <= t and t - 10 <= w.gate_changed_ms["dsg"] <= t
    w.advance(300)
    _sub(w, chip.SC_DSG_PDSG_OFF)
    assert not w.fet_on("dsg")
    assert w.gate_changed_ms["dsg"] >= t + 300 and w.gate_changed_ms["chg"] <= t


def test_sleep_slows_measurements_and_opens_chg():
    w = _world()
    c = w.afe_chip
    _fets_on(w)
    w.advance(9000)
    assert c.hw_state()["mode"] == "normal"
    w.advance(1100)  # Sleep Hysteresis Time 10 s below Sleep Current 20 mA
    assert _u16(_rd(w, 0x12, 2)) & chip.BS_SLEEP
    assert not w.fet_on("chg") and w.fet_on("dsg")  # SLEEPCHG = 0
    w.set_cell(1, 3400)
    w.advance(1000)
    assert _s16(_rd(w, 0x14, 2)) == 3300  # next measurement only after Voltage Time
    w.advance(4500)
    assert _s16(_rd(w, 0x14, 2)) == 3400
    _sub(w, chip.SC_SLEEP_DISABLE)
    w.advance(1)
    assert not _u16(_rd(w, 0x12, 2)) & chip.BS_SLEEP
    assert w.fet_on("chg")


# ---------------------------------------------------------------- balancing, reset


def test_cb_active_cells_drives_the_bleeders():
    w = _world()
    c = w.afe_chip
    d = [0x05, 0x80]  # cells 1, 3, 16
    assert _wr(w, 0x3E, [0x83, 0x00] + d) == 9
    s = 0x83 + 0x05 + 0x80
    assert _wr(w, 0x60, [(~s) & 0xFF, 6]) == 5
    assert c.bleed_mask() == 0x8005
    assert _u16(_sub_read(w, chip.SC_CB_ACTIVE_CELLS)) == 0x8005
    w.advance(100)
    assert w.bleeding(0) and w.bleeding(2) and not w.bleeding(1)
    _cfg(w)
    assert c.bleed_mask() == 0  # paused in CONFIG_UPDATE
    _exit(w)
    assert c.bleed_mask() == 0x8005


def test_balancing_maps_the_top_cell_of_a_short_pack():
    import pack as packmod

    b = simworld.load_board(BOARD)
    w = simworld.SimWorld(b, packmod.Pack(chemistry="lfp", cells=5, capacity_ah=100, soc_pct=50.0))
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, chip.VCELL_MODE, [0x0F, 0x80])
    _exit(w)
    # VC16 (the 5th cell) and VC2, plus VC6 which is not a cell: dropped
    assert _wr(w, 0x3E, [0x83, 0x00, 0x22, 0x80]) == 9
    s = 0x83 + 0x22 + 0x80
    assert _wr(w, 0x60, [(~s) & 0xFF, 6]) == 5
    assert c.cb == 0x8002
    assert c.bleed_mask() == (1 << 4) | (1 << 1)


def test_a_bleeder_command_reaches_the_pack_at_once():
    w = _world()
    assert not w.bleeding(2)  # the world has computed what flows
    before = w.cell_true_mv(2)
    assert _wr(w, 0x3E, [0x83, 0x00, 0x04, 0x00]) == 9  # VC3
    s = 0x83 + 0x04
    assert _wr(w, 0x60, [(~s) & 0xFF, 6]) == 5
    assert w.bleeding(2) and not w.bleeding(1) and not w.bleeding(3)
    # 3.3 V over 33 Ohm out of that cell: its terminal voltage sags.
    assert w.cell_true_mv(2) < before
    w.set_fault("afe_reset", True)
    assert not w.bleeding(2)  # a reset stops the bleeders


def test_power_on_reset_restores_defaults():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, chip.COV_THRESHOLD, [70])
    _exit(w)
    _fets_on(w)
    assert w.fet_on("dsg") and not _u16(_rd(w, 0x12, 2)) & chip.BS_POR
    w.set_fault("afe_reset", True)
    assert c.dm_read(chip.COV_THRESHOLD) == 86
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    assert _u16(_rd(w, 0x12, 2)) & chip.BS_POR
    assert not c.mfg & chip.MS_FET_EN


def test_reset_and_shutdown_subcommands():
    w = _world()
    c = w.afe_chip
    _cfg(w)
    _dm_write(w, chip.COV_THRESHOLD, [70])
    _exit(w)
    _sub(w, chip.SC_RESET)
    assert c.dm_read(chip.COV_THRESHOLD) == 86 and _u16(_rd(w, 0x12, 2)) & chip.BS_POR
    _fets_on(w)
    _sub(w, chip.SC_SHUTDOWN)
    assert not w.fet_on("dsg")
    _sub(w, chip.SC_SHUTDOWN)
    try:
        _rd(w, 0x12, 2)
        assert False, "a shut-down chip does not answer"
    except OSError:
        pass
    assert c.hw_state()["mode"] == "shutdown"
    c.wake()
    assert _u16(_rd(w, 0x12, 2)) & chip.BS_POR


def test_bus_faults_hit_the_model():
    w = _world()
    w.set_fault("afe_crc", True)
    w.i2c_write(BUS, A, bytes([0x12]), False)
    raw = w.i2c_read(BUS, A, 4)
    ok = raw[1] == checks.crc8(bytes([A << 1, 0x12, (A << 1) | 1, raw[0]])) and raw[3] == checks.crc8(raw[2:3])
    assert not ok  # the bit error shows in the CRC
    w.set_fault("afe_crc", False)
    w.set_fault("afe_nack", True)
    try:
        _rd(w, 0x12, 2)
        assert False
    except OSError:
        pass
