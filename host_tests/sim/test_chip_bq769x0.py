# The bq769x0 chip model against datasheet vectors and behaviour (SLUSBK2I,
# afe-facts B1), on a SimWorld. The CRCs here come from the firmware's
# crc.py, an implementation independent of the model's checks.py.
import simworld
from chips import bq769x0 as chip
from bms.drivers.crc import crc8

BOARD = "boards/pico_bq76940_15s.json"
ADDR_W = 0x10  # 7-bit 0x08 << 1
ADDR_R = 0x11


def _board(**bq):
    b = simworld.load_board(BOARD)
    b["bq769x0"].update(bq)
    return b


def _world(cells=None, board=None):
    b = board or _board()
    pack = simworld.default_pack(b, cells) if cells else None
    w = simworld.SimWorld(b, pack)
    return w, w.afe_chip


def _wr(m, reg, val, bad_crc=False):
    c = crc8(bytes([ADDR_W, reg, val]), 0, 3)
    if bad_crc:
        c ^= 0x01
    return m.i2c_write(bytes([reg, val, c]), True)


def _rd(m, reg, n):
    assert m.i2c_write(bytes([reg]), False) == 1
    raw = m.i2c_read(2 * n, True)
    out = []
    for i in range(n):
        d = raw[2 * i]
        want = crc8(bytes([ADDR_R, d]), 0, 2) if i == 0 else crc8(bytes([d]), 0, 1)
        assert raw[2 * i + 1] == want, (reg, i, raw)
        out.append(d)
    return out


def _word(m, reg):
    hi, lo = _rd(m, reg, 2)
    return hi << 8 | lo


def _fets_on(m):
    assert _wr(m, chip.SYS_CTRL2, chip.CC_EN | chip.DSG_ON | chip.CHG_ON) == 3


# --- link ---------------------------------------------------------------

def test_datasheet_crc_vectors_on_the_wire():
    # E2E-752518: writing 0x40 to SYS_CTRL2 at 0x08 carries CRC 0x24; reading
    # it back answers 0x40 with CRC(0x11, 0x40) = 0x85.
    w, m = _world()
    assert crc8(bytes([0x10, 0x05, 0x40]), 0, 3) == 0x24
    assert m.i2c_write(bytes([0x05, 0x40, 0x24]), True) == 3
    assert m.i2c_write(bytes([0x05]), False) == 1
    assert m.i2c_read(2, True) == bytes([0x40, 0x85])


def test_write_with_a_bad_crc_is_nacked_and_not_applied():
    w, m = _world()
    assert _rd(m, chip.OV_TRIP, 1) == [0xAC]
    assert _wr(m, chip.OV_TRIP, 0x55, bad_crc=True) == 2  # reg and data acked, CRC byte NACKed
    assert _rd(m, chip.OV_TRIP, 1) == [0xAC]
    assert m.writes_nacked == 1
    # without any CRC byte the chip waits for one: nothing is written either
    assert m.i2c_write(bytes([chip.OV_TRIP, 0x55]), True) == 2
    assert _rd(m, chip.OV_TRIP, 1) == [0xAC]
    assert _wr(m, chip.OV_TRIP, 0x55) == 3
    assert _rd(m, chip.OV_TRIP, 1) == [0x55]


def test_block_write_has_a_crc_per_byte_and_stops_at_a_bad_one():
    w, m = _world()
    c1 = crc8(bytes([ADDR_W, chip.CELLBAL1, 0x01]), 0, 3)
    c2 = crc8(bytes([0x04]), 0, 1)
    c3 = crc8(bytes([0x10]), 0, 1)
    assert m.i2c_write(bytes([chip.CELLBAL1, 0x01, c1, 0x04, c2, 0x10, c3]), True) == 7
    assert _rd(m, chip.CELLBAL1, 3) == [0x01, 0x04, 0x10]
    # a bad CRC on the second byte: the first is written, the rest not
    c1 = crc8(bytes([ADDR_W, chip.CELLBAL1, 0x02]), 0, 3)
    assert m.i2c_write(bytes([chip.CELLBAL1, 0x02, c1, 0x08, c2, 0x01, c3]), True) == 4
    assert _rd(m, chip.CELLBAL1, 3) == [0x02, 0x04, 0x10]


def test_block_read_crcs_and_the_plain_variant():
    w, m = _world()
    assert _rd(m, chip.PROTECT3, 3) == [0x00, 0xAC, 0x97]  # POR: OV_TRIP 0xAC, UV_TRIP 0x97
    w2, p = _world(board=_board(crc=False))
    assert not p.crc
    assert p.i2c_write(bytes([chip.OV_TRIP, 0x60]), True) == 2
    assert p.i2c_write(bytes([chip.PROTECT3]), False) == 1
    assert p.i2c_read(3, True) == bytes([0x00, 0x60, 0x97])


def test_ship_mode_stops_answering_until_power_on_reset():
    w, m = _world()
    _fets_on(m)
    assert w.fet_on("chg") and w.fet_on("dsg")
    assert _wr(m, chip.OV_TRIP, 0x50) == 3
    for v in (0x00, 0x01):
        assert _wr(m, chip.SYS_CTRL1, v) == 3
    assert not m.ship
    assert _wr(m, chip.SYS_CTRL1, 0x02) == 3
    assert m.ship and not w.fet_on("chg") and not w.fet_on("dsg")
    assert m.i2c_write(bytes([0x00]), False) == -1
    assert m.i2c_read(2, True) is None
    m.power_on_reset()
    assert _rd(m, chip.OV_TRIP, 2) == [0xAC, 0x97]
    assert _rd(m, chip.SYS_CTRL2, 1) == [0]


def test_shut_bits_out_of_sequence_do_not_ship():
    w, m = _world()
    for v in (0x00, 0x02, 0x01, 0x02):
        assert _wr(m, chip.SYS_CTRL1, v) == 3
    assert not m.ship


# --- trim and conversions -------------------------------------------------

def test_gain_and_offset_example_and_cell_codes():
    # E2E-838739: ADCGAIN1 0x05 / ADCGAIN2 0x82 -> 377 uV/LSB; ADCOFFSET 0x30 -> 48 mV.
    assert chip.gain_uv(0x05, 0x82) == 377
    assert chip.offset_mv(0x30) == 48 and chip.offset_mv(0xF6) == -10
    w, m = _world()
    m.set_trim(0x05, 0x30, 0x82)
    assert _rd(m, chip.ADCGAIN1, 2) == [0x05, 0x30] and _rd(m, chip.ADCGAIN2, 1) == [0x82]
    w.set_cell(1, 3300)
    assert _wr(m, chip.SYS_CTRL1, chip.ADC_EN) == 3
    w.advance(300)
    v1 = w.cell_input_mv(0)
    assert abs(v1 - 3300) < 1
    code = _word(m, chip.VC1_HI)
    assert code == int(round((v1 * 1000 - 48000) / 377.0))  # about 8626
    assert abs(code * 377 + 48000 - 3300000) <= 377
    # BAT is the sum of the cell codes / 4
    total = 0
    for c in range(15):
        total += _word(m, chip.VC1_HI + 2 * c)
    assert _word(m, chip.BAT_HI) == total // 4


def test_trim_differs_per_seed_and_reserved_bits_are_not_zero():
    b = _board()
    w = simworld.SimWorld(b)
    seen = set()
    reserved = 0
    for seed in range(12):
        m = chip.Bq769x0Model(w, b, seed=seed)
        assert 365 <= m.gain <= 396 and -30 <= m.offset <= 50
        seen.add((m.gain, m.offset))
        reserved |= (m.trim_gain1 & 0xF3) | (m.trim_gain2 & 0x1F)
    assert len(seen) > 6 and reserved
    assert chip.Bq769x0Model(w, b, seed=3).gain == chip.Bq769x0Model(w, b, seed=3).gain


def test_adc_runs_only_with_adc_en_every_250_ms():
    w, m = _world()
    w.advance(1000)
    assert _word(m, chip.VC1_HI) == 0  # ADC_EN is 0 after power-on
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    w.advance(240)
    assert _word(m, chip.VC1_HI) == 0
    w.advance(20)
    assert _word(m, chip.VC1_HI) > 8000


def test_unpopulated_inputs_of_a_10_cell_stack_read_about_zero():
    w, m = _world(cells=10)
    m.set_trim(0x05, 0xF6, 0x82)  # offset -10 mV: a shorted input reads a small code
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    w.advance(300)
    used = (0, 1, 2, 4, 5, 6, 9, 10, 11, 14)
    for c in range(15):
        code = _word(m, chip.VC1_HI + 2 * c)
        if c in used:
            k = used.index(c)
            assert abs(code * 377 - 10000 - w.cell_input_mv(k) * 1000) <= 377, c
        else:
            assert code * 377 - 10000 < 1000, c  # about 0 V


def test_coulomb_counter_every_250_ms_sets_cc_ready_and_alert():
    w, m = _world()
    _fets_on(m)
    w.set_current(-30000)  # 30 A discharge through 0.5 mOhm: -15 mV
    w.advance(260)
    # at power-on values OCD is 8 mV / 8 ms: 30 A trips it
    assert _rd(m, chip.SYS_STAT, 1)[0] == chip.CC_READY | chip.OCD and not w.fet_on("dsg")
    _wr(m, chip.PROTECT2, 0x7F)  # RSNS 0: 50 mV (100 A), 1280 ms
    _wr(m, chip.SYS_STAT, 0xFF)
    _fets_on(m)
    w.advance(250)
    st = _rd(m, chip.SYS_STAT, 1)[0]
    assert st == chip.CC_READY and m.alert_out() == 1 and w.fet_on("dsg")
    cc = _word(m, chip.CC_HI)
    cc = cc - 0x10000 if cc & 0x8000 else cc
    want = -30000 * 500 / 1000.0 / 8.44  # uV / (uV/LSB)
    assert abs(cc - want) <= 1, (cc, want)
    assert _wr(m, chip.SYS_STAT, chip.CC_READY) == 3  # write 1 to clear
    assert _rd(m, chip.SYS_STAT, 1)[0] == 0 and m.alert_out() == 0
    w.advance(250)
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.CC_READY


def test_thermistor_through_the_10k_pullup_after_temp_sel():
    w, m = _world()
    w.set_temp(0, 40.0)
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    w.advance(300)
    die = _word(m, chip.TS1_HI) * 382  # TEMP_SEL 0: the die sensor, about 1.2 V
    assert abs(die - (1200000 - 4200 * (w.board_temp() - 25))) < 400
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN | chip.TEMP_SEL)
    w.advance(2100)  # temperatures are sampled every 2 s
    r = w.ntc_ohm(0)
    want_uv = 3300000 * r / (r + 10000)
    assert abs(_word(m, chip.TS1_HI) * 382 - want_uv) <= 382
    w.set_fault("ntc_open", True, 2)
    w.advance(2000)
    assert abs(_word(m, chip.TS1_HI + 2) * 382 - 3300000) <= 382


# --- protection -----------------------------------------------------------

def test_ov_trip_formula_and_delay_open_chg():
    # OV_TRIP full form 0x2008 | OV_TRIP << 4; default 0xAC with 377/48 is 4176.9 mV.
    assert chip.ov_full(0xAC) == 0x2AC8 and chip.uv_full(0x97) == 0x1970
    w, m = _world()
    m.set_trim(0x05, 0x30, 0x82)
    trip_mv = (chip.ov_full(0xAC) * 377 + 48000) / 1000.0
    assert abs(trip_mv - 4176.9) < 0.1
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    _fets_on(m)
    w.set_cell(3, trip_mv - 3)
    w.advance(3000)
    assert w.fet_on("chg") and not _rd(m, chip.SYS_STAT, 1)[0] & chip.OV
    w.set_cell(3, trip_mv + 2)
    w.advance(250)  # first conversion above the threshold
    w.advance(900)
    assert w.fet_on("chg")  # PROTECT3 OV_DELAY 0: 1 s, not yet
    w.advance(250)
    assert not w.fet_on("chg") and w.fet_on("dsg")  # OV opens CHG only
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.OV
    assert m.alert_out() == 1


def test_fet_cannot_be_switched_on_while_its_fault_bit_is_set():
    w, m = _world()
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    _fets_on(m)
    w.set_cell(1, 4300)
    w.advance(1600)
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.OV and not w.fet_on("chg")
    _fets_on(m)
    assert not w.fet_on("chg")  # held off while OV is set
    assert _rd(m, chip.SYS_CTRL2, 1)[0] & chip.CHG_ON == 0
    # cleared while the cell is still high: the bit comes back at once
    _wr(m, chip.SYS_STAT, chip.OV)
    w.advance(250)
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.OV
    w.set_cell(1, 3300)
    w.advance(250)
    _wr(m, chip.SYS_STAT, chip.OV | chip.CC_READY)
    w.advance(250)
    assert not _rd(m, chip.SYS_STAT, 1)[0] & chip.OV
    _fets_on(m)
    assert w.fet_on("chg")


def test_uv_opens_dsg_and_ignores_shorted_inputs():
    w, m = _world(cells=12)
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    _fets_on(m)
    w.advance(3000)  # three shorted channels read 0 V: no UV from them
    assert w.fet_on("dsg") and not _rd(m, chip.SYS_STAT, 1)[0] & chip.UV
    w.set_cell(5, 2300)  # UV_TRIP 0x97 is about 2.5 V
    w.advance(1250)
    assert not w.fet_on("dsg") and w.fet_on("chg")
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.UV


def test_ocd_trips_after_its_delay_and_not_before():
    w, m = _world()
    # RSNS=1, OCD 78 mV (156 A at 0.5 mOhm), OCD_DELAY 320 ms; SCD 155 mV.
    _wr(m, chip.PROTECT1, 0x85)
    _wr(m, chip.PROTECT2, 0x5B)
    _fets_on(m)
    w.set_current(-150000)  # below OCD
    for _ in range(50):
        w.advance(20)
    assert w.fet_on("dsg")
    w.set_current(-170000)  # 85 mV: above OCD, below SCD
    for _ in range(15):
        w.advance(20)  # 300 ms
    assert w.fet_on("dsg")
    for _ in range(3):
        w.advance(20)
    assert not w.fet_on("dsg") and w.fet_on("chg")
    st = _rd(m, chip.SYS_STAT, 1)[0]
    assert st & chip.OCD and not st & chip.SCD
    _fets_on(m)
    assert not w.fet_on("dsg")  # held off until the host clears OCD
    _wr(m, chip.SYS_STAT, chip.OCD)
    _fets_on(m)
    assert w.fet_on("dsg")


def test_scd_trips_before_the_short_can_flow_and_latches():
    w, m = _world()
    _wr(m, chip.PROTECT1, 0x85 | 0x18)  # RSNS 1, SCD 155 mV = 310 A, 400 us (below the world's 1 ms)
    _wr(m, chip.PROTECT2, 0x7F)  # OCD out of the way: 100 mV (RSNS 1), 1280 ms
    _fets_on(m)
    w.set_current(-300000)  # 150 mV: below SCD
    w.advance(50)
    assert w.fet_on("dsg")
    soc = w.pack.soc_pct()
    w.set_fault("load_short", True)  # thousands of amps
    w.advance(100)
    assert not w.fet_on("dsg") and w.fet_on("chg")
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.SCD
    # it opened before the step: the short's current never flowed
    assert soc - w.pack.soc_pct() < 0.01
    w.advance(2000)
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.SCD  # latched until the host clears it
    _fets_on(m)
    assert not w.fet_on("dsg")


def test_device_xready_holds_both_fets_off():
    w, m = _world()
    _fets_on(m)
    m.internal_fault()
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    _fets_on(m)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    assert _rd(m, chip.SYS_STAT, 1)[0] & chip.DEVICE_XREADY
    _wr(m, chip.SYS_STAT, chip.DEVICE_XREADY)
    _fets_on(m)
    assert w.fet_on("chg") and w.fet_on("dsg")


def test_power_on_reset_restores_defaults_and_opens_fets():
    w, m = _world()
    _fets_on(m)
    _wr(m, chip.CC_CFG, 0x19)
    _wr(m, chip.PROTECT2, 0x33)
    w.set_fault("afe_reset", True)
    assert not w.fet_on("chg") and not w.fet_on("dsg")
    assert _rd(m, chip.PROTECT2, 1) == [0] and _rd(m, chip.CC_CFG, 1) == [0]
    assert _rd(m, chip.OV_TRIP, 1) == [0xAC]


# --- balancing --------------------------------------------------------------

def test_balancing_bits_map_to_pack_cells_and_adjacent_bits_are_counted():
    w, m = _world(cells=10)
    c1 = crc8(bytes([ADDR_W, chip.CELLBAL1, 0x10]), 0, 3)  # CB5: channel 4 = pack cell 4
    assert m.i2c_write(bytes([chip.CELLBAL1, 0x10, c1]), True) == 3
    assert m.bleed_mask() == 1 << 3 and w.bleeding(3)
    _wr(m, chip.CELLBAL1, 0x08)  # CB4: a shorted input, no cell
    assert m.bleed_mask() == 0
    assert m.adjacent_writes == 0
    _wr(m, chip.CELLBAL1, 0x03)  # two adjacent: applied, but the datasheet forbids it
    assert m.adjacent_writes == 1 and m.bleed_mask() == 0x3


def test_balancing_does_not_disturb_the_cell_reading():
    # The chip suspends balancing for the measurement slot.
    w, m = _world()
    _wr(m, chip.SYS_CTRL1, chip.ADC_EN)
    w.advance(300)
    before = _word(m, chip.VC1_HI + 2)
    _wr(m, chip.CELLBAL1, 0x02)
    w.advance(250)
    assert w.bleeding(1) and w.cell_true_mv(1) < w.cell_input_mv(0) + 50
    assert abs(_word(m, chip.VC1_HI + 2) - before) <= 2


def test_fet_changes_are_timed_for_the_scenario_judge():
    # Boards whose chip drives the gates have no gate pins to watch: the
    # model notes each change in the world's record.
    w, m = _world()
    w.gate_changed_ms = {"chg": 0, "dsg": 0}
    w.advance(500)
    _fets_on(m)
    assert w.gate_changed_ms == {"chg": 500, "dsg": 500}
    w.advance(300)
    m.internal_fault()
    assert w.gate_changed_ms == {"chg": 800, "dsg": 800}
