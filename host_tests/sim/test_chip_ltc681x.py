# The LTC6811-1 / LTC6813-1 daisy-chain model, driven frame by frame as the
# datasheet describes the link (no driver involved). Runs under CPython and
# MicroPython.
import machine
import simworld
from chips.checks import pec15
from chips import ltc681x as chip

BOARD = "boards/esp32_ltc6811x2_24s.json"


def _board(**edits):
    b = simworld.load_board(BOARD)
    b["ltc681x"] = dict(b["ltc681x"])
    b["ltc681x"].update(edits)
    return b


def _world(board=None, cells=None):
    b = board if board is not None else _board()
    pack = simworld.default_pack(b, cells) if cells else None
    w = simworld.SimWorld(b, pack)
    machine.attach(w)
    return w


def _cmd(code):
    b = bytearray((code >> 8, code & 0xFF))
    p = pec15(b)
    return b + bytearray((p >> 8, p & 0xFF))


def _grp(data):
    b = bytearray(data)
    p = pec15(b)
    return b + bytearray((p >> 8, p & 0xFF))


class Link:
    """The MCU side: SPI mode 3 on the board's pins and its chip select."""

    def __init__(self, w, mode=(1, 1)):
        self.w = w
        c = w.board["ltc681x"]
        self.n = c["devices"]
        self.spi = machine.SPI(c["spi"], 1000000, polarity=mode[0], phase=mode[1], sck=c["sck"], mosi=c["mosi"],
                               miso=c["miso"])
        self.cs = machine.Pin(c["cs"], machine.Pin.OUT, value=1)
        self.chain = w.afe_chip

    def frame(self, data):
        rx = bytearray(len(data))
        self.cs(0)
        self.spi.write_readinto(data, rx)
        self.cs(1)
        return rx

    def wake(self, us=400):
        # One CS pulse per device, t_WAKE apart (from sleep).
        for _ in range(self.n):
            self.cs(0)
            self.cs(1)
            self.w.sleep_us(us)

    def command(self, code):
        return self.frame(_cmd(code))

    def read(self, code):
        """Reply groups, nearest device first: [(6 data bytes, pec ok)]."""
        rx = self.frame(_cmd(code) + bytearray(b"\xff" * (8 * self.n)))
        out = []
        for d in range(self.n):
            g = rx[4 + 8 * d:12 + 8 * d]
            out.append((bytes(g[0:6]), pec15(g[0:6]) == (g[6] << 8 | g[7])))
        return out

    def write(self, code, groups):
        """groups: 6-byte configurations, nearest device first (sent reversed)."""
        data = _cmd(code)
        for g in reversed(groups):
            data += _grp(g)
        return self.frame(data)

    def codes(self, code):
        """16-bit codes of a group read, per device (PEC must be good)."""
        out = []
        for data, ok in self.read(code):
            assert ok, code
            out.append([data[2 * j] | data[2 * j + 1] << 8 for j in range(3)])
        return out


def _isolated(fn):
    # Detach the world afterwards: under MicroPython time.* follows it.
    def run():
        try:
            fn()
        finally:
            machine.attach(None)

    return run


def _cfg(refon=True, vuv=0, vov=0, dcc=0, dcto=0, gpio=0x1F):
    return bytes((gpio << 3 | (4 if refon else 0), vuv & 0xFF, (vov & 0xF) << 4 | vuv >> 8, vov >> 4,
                  dcc & 0xFF, dcto << 4 | (dcc >> 8) & 0xF))


@_isolated
def test_pec15_datasheet_vectors_and_hand_built_command():
    assert pec15(b"\x00\x01") == 0x3D6E  # the datasheet's example
    assert pec15(b"\x00\x04") == 0x07C2  # RDCVA
    assert pec15(b"\x03\x60") == 0xF46C  # ADCV, 7 kHz, all cells
    w = _world()
    link = Link(w)
    link.wake()
    # The command written out by hand from the vector: the chain converts.
    link.frame(bytearray(b"\x03\x60\xF4\x6C"))
    assert link.chain.hw_state()["converting"] == [True, True]
    w.sleep_us(10000)
    link.wake(15)  # the isoSPI ports idle after 5.5 ms without a frame
    assert link.codes(chip.RDCVA)[0][0] != 0xFFFF
    # One bit off in its PEC: ignored by the whole chain.
    link.command(chip.CLRCELL)
    link.frame(bytearray(b"\x03\x60\xF4\x6D"))
    assert link.chain.hw_state()["converting"] == [False, False]
    w.sleep_us(10000)
    link.wake(15)
    assert link.codes(chip.RDCVA) == [[0xFFFF] * 3, [0xFFFF] * 3]


@_isolated
def test_command_with_a_bad_pec_is_ignored_by_every_device():
    w = _world()
    link = Link(w)
    link.wake()
    frame = bytearray(_cmd(chip.WRCFGA))
    frame[3] ^= 0x01
    for g in (_cfg(vuv=100), _cfg(vuv=200)):
        frame += _grp(g)
    link.frame(frame)
    for data, ok in link.read(chip.RDCFGA):
        assert ok and data[0] & 0x04 == 0 and data[1] == 0  # still the power-on configuration
    assert link.chain.rejected == 1
    # A read command with a bad PEC gets no answer at all.
    bad = bytearray(_cmd(chip.RDCFGA))
    bad[2] ^= 0x80
    rx = link.frame(bad + bytearray(b"\xff" * 16))
    assert rx == bytearray(b"\xff" * 20)


@_isolated
def test_write_with_a_bad_data_pec_is_ignored_by_that_device_only():
    w = _world()
    link = Link(w)
    link.wake()
    frame = _cmd(chip.WRCFGA) + _grp(_cfg(vuv=222)) + _grp(_cfg(vuv=111))  # device 1 first, then device 0
    frame[4 + 7] ^= 0x04  # the far device's group PEC
    link.frame(frame)
    (d0, ok0), (d1, ok1) = link.read(chip.RDCFGA)
    assert ok0 and ok1
    assert d0[1] == 111 and d0[0] & 0x04  # the near device took its group
    assert d1[1] == 0 and not d1[0] & 0x04  # the far one kept its power-on values
    assert link.chain.data_rejected == 1
    # A frame with the wrong number of groups is taken by nobody.
    link.frame(_cmd(chip.WRCFGA) + _grp(_cfg(vuv=5)))
    assert link.read(chip.RDCFGA)[0][0][1] == 111


@_isolated
def test_daisy_chain_order_farthest_written_first_nearest_read_first():
    w = _world()
    for k in range(24):
        w.set_cell(k + 1, 3000 + 10 * k)
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(vuv=0x123, vov=0x456), _cfg(vuv=0x789, vov=0xABC)])
    (d0, _), (d1, _) = link.read(chip.RDCFGA)
    assert (d0[1], d0[2], d0[3]) == (0x23, 0x61, 0x45)
    assert (d1[1], d1[2], d1[3]) == (0x89, 0xC7, 0xAB)
    link.command(0x360)  # ADCV 7 kHz all cells
    w.sleep_us(2400)
    # Cells 1-3 (device 0) then cells 13-15 (device 1): 100 uV per LSB.
    assert link.codes(chip.RDCVA) == [[30000, 30100, 30200], [31200, 31300, 31400]]
    assert link.codes(chip.RDCVD) == [[30900, 31000, 31100], [32100, 32200, 32300]]


@_isolated
def test_a_read_before_the_conversion_time_gives_the_old_codes():
    w = _world()
    w.set_cell(1, 3300)
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg()])  # REFON: no reference power-up time
    link.command(0x360)
    assert link.codes(chip.RDCVA)[0][0] == 0xFFFF  # nothing converted yet
    w.sleep_us(2400)
    assert link.codes(chip.RDCVA)[0][0] == 33000
    w.set_cell(1, 3456.7)
    link.command(0x360)
    w.sleep_us(2000)  # 7 kHz, all cells: 2.3 ms
    assert link.codes(chip.RDCVA)[0][0] == 33000
    w.sleep_us(400)
    assert link.codes(chip.RDCVA)[0][0] == 34567
    # 27 kHz (MD = 01) is faster; 26 Hz (MD = 11) takes 201 ms.
    w.set_cell(1, 3100)
    link.command(0x2E0)
    w.sleep_us(1200)
    assert link.codes(chip.RDCVA)[0][0] == 31000
    w.set_cell(1, 3200)
    link.command(0x3E0)
    w.sleep_us(150000)
    link.wake(15)
    assert link.codes(chip.RDCVA)[0][0] == 31000
    w.sleep_us(60000)
    link.wake(15)
    assert link.codes(chip.RDCVA)[0][0] == 32000


@_isolated
def test_without_refon_a_conversion_waits_for_the_reference():
    w = _world()
    link = Link(w)
    link.wake()
    link.command(0x360)  # power-on: REFON = 0
    w.sleep_us(2400)
    assert link.codes(chip.RDCVA)[0][0] == 0xFFFF
    w.sleep_us(4400)
    assert link.codes(chip.RDCVA)[0][0] != 0xFFFF


@_isolated
def test_the_watchdog_puts_the_chain_to_sleep_after_2_s_and_the_configuration_is_lost():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(vuv=300, vov=2000), _cfg(vuv=300, vov=2000)])
    # A frame a second keeps it awake.
    for _ in range(5):
        w.advance(1000)
        link.wake(15)  # the isoSPI ports idle after 5.5 ms: wake them first
        for data, ok in link.read(chip.RDCFGA):
            assert ok and data[0] & 0x04 and data[1] == 300 & 0xFF
    w.advance(2100)
    assert link.chain.hw_state()["asleep"] == [True, True]
    # The first edge only wakes device 0; that frame is lost.
    assert link.read(chip.RDCFGA) == [(b"\xff" * 6, False), (b"\xff" * 6, False)]
    w.sleep_us(400)
    # The next edge passes device 0 and wakes device 1: only device 0 answers.
    (d0, ok0), (d1, ok1) = link.read(chip.RDCFGA)
    assert ok0 and not ok1 and d1 == b"\xff" * 6
    w.sleep_us(400)
    for data, ok in link.read(chip.RDCFGA):
        assert ok and not data[0] & 0x04 and data[1:4] == b"\x00\x00\x00"  # REFON, VUV, VOV reset


@_isolated
def test_an_idle_isospi_port_loses_the_frame_that_wakes_it():
    w = _world()
    link = Link(w)
    link.wake()
    assert link.read(chip.RDCFGA)[1][1]
    w.advance(10)  # > t_IDLE
    r = link.read(chip.RDCFGA)
    assert not r[0][1] and not r[1][1]
    w.sleep_us(10)
    r = link.read(chip.RDCFGA)
    assert r[0][1] and not r[1][1]
    w.sleep_us(10)
    assert link.read(chip.RDCFGA)[1][1]


@_isolated
def test_dcc_bits_bleed_their_cells_and_the_discharge_timer_stops_them():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(dcc=0x001, dcto=1), _cfg(dcc=0x801, dcto=1)])
    assert link.chain.bleed_mask() == 1 | 1 << 12 | 1 << 23
    assert w.bleeding(0) and w.bleeding(12) and w.bleeding(23) and not w.bleeding(1)
    (d0, _), _d1 = link.read(chip.RDCFGA)
    assert d0[5] >> 4 == 1  # DCTO reads the time left: 0 to 0.5 min
    # DTEN high (the board's default): the watchdog keeps DCC and DCTO...
    w.advance(3000)
    assert link.chain.hw_state()["asleep"] == [True, True]
    assert link.chain.bleed_mask() == 1 | 1 << 12 | 1 << 23
    # ...until the 0.5 min timeout.
    w.advance(27500)
    assert link.chain.bleed_mask() == 0 and not w.bleeding(0)


@_isolated
def test_without_the_discharge_timer_the_watchdog_stops_the_bleeders():
    w = _world(_board(dten=False))
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(dcc=0x003, dcto=5), _cfg(dcc=0x003, dcto=5)])
    assert link.chain.bleed_mask() == 0x3 | 0x3 << 12
    w.advance(1500)
    assert link.chain.bleed_mask() == 0x3 | 0x3 << 12
    w.advance(600)
    assert link.chain.bleed_mask() == 0


@_isolated
def test_adcv_with_dcp_0_opens_the_switches_while_it_converts():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(dcc=0x001), _cfg()])
    assert link.chain.bleed_mask() == 1
    link.command(0x360)  # DCP = 0
    assert link.chain.bleed_mask() == 0
    w.sleep_us(2400)
    assert link.chain.bleed_mask() == 1
    link.command(0x370)  # DCP = 1: discharge permitted
    assert link.chain.bleed_mask() == 1
    w.sleep_us(2400)
    link.command(0x361)  # DCP = 0, CH = 1: cells 1 and 7 only
    assert link.chain.bleed_mask() == 0
    w.sleep_us(450)
    assert link.chain.bleed_mask() == 1


@_isolated
def test_a_conversion_with_no_bleeder_on_leaves_the_circuit_alone():
    # DCP = 0 opens only switches that are on: with none on, the world is
    # not told of a change (it would recompute the whole pack for nothing);
    # with one on, it is told when the switch opens and when it closes.
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg()])
    calls = [0]
    orig = w.changed

    def counting():
        calls[0] += 1
        orig()

    w.changed = counting
    link.command(0x360)
    w.sleep_us(2400)
    link.command(0x568)  # ADSTAT
    w.sleep_us(1600)
    assert calls[0] == 0 and link.codes(chip.RDCVA)[0][0] != 0xFFFF
    link.write(chip.WRCFGA, [_cfg(dcc=0x004), _cfg()])
    assert calls[0] == 1 and w.bleeding(2)
    link.command(0x360)
    assert calls[0] == 2 and not w.bleeding(2)
    w.sleep_us(2400)
    assert link.chain.bleed_mask() == 1 << 2
    assert calls[0] == 3 and w.bleeding(2)


@_isolated
def test_gpio_voltages_from_the_thermistor_dividers_and_the_second_reference():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg(gpio=0x1E)])  # device 1: GPIO1 pull-down on
    w.set_temp(1, 0.0)
    w.set_board_temp(60.0)
    w.set_fault("ntc_open", True, 3)
    link.command(0x560)  # ADAX 7 kHz, GPIO1-5 and REF
    w.sleep_us(2400)
    (a0, a1) = link.codes(chip.RDAUXA)
    (b0, b1) = link.codes(chip.RDAUXB)
    # 10 kOhm pull-up to VREF2 = 3.0 V; R(T) = 10k exp(3435 (1/T - 1/298.15)).
    r0c = 10000 * 2.718281828459045 ** (3435 * (1 / 273.15 - 1 / 298.15))
    r60 = 10000 * 2.718281828459045 ** (3435 * (1 / 333.15 - 1 / 298.15))
    assert a0[0] == 15000  # 25 degC: R = 10k, 1.5 V
    assert abs(a0[1] - 30000 * r0c / (r0c + 10000)) <= 1
    assert abs(a0[2] - 30000 * r60 / (r60 + 10000)) <= 1  # the FET sensor on GPIO3
    assert a1[0] == 0  # device 1 GPIO1: the pull-down shorts the divider
    assert a1[1] == 15000
    assert b0 == [0, 0, 30000] and b1[2] == 30000  # nothing on GPIO4/5; REF = 3.0 V
    link.write(chip.WRCFGA, [_cfg(), _cfg()])
    link.command(0x560)
    w.sleep_us(2400)
    assert link.codes(chip.RDAUXA)[1][0] == 30000  # thermistor 3 open: the pin sits at VREF2


@_isolated
def test_sum_of_cells_and_status_registers():
    w = _world()
    for k in range(24):
        w.set_cell(k + 1, 3200 + k)
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg()])
    link.command(0x568)  # ADSTAT all
    w.sleep_us(1600)
    (s0, s1) = link.codes(chip.RDSTATA)
    # SOC = sum / 20 in 100 uV steps
    assert s0[0] == round(sum(3200 + k for k in range(12)) * 10 / 20)
    assert s1[0] == round(sum(3200 + k for k in range(12, 24)) * 10 / 20)
    assert abs(s0[1] * 0.1 / 7.5 - 273 - w.board_temp()) < 0.1  # ITMP
    assert 45000 <= s0[2] <= 55000  # VA around 5 V


@_isolated
def test_uv_ov_flags_follow_vuv_and_vov():
    w = _world()
    w.set_cell(1, 3700)
    w.set_cell(2, 2500)
    link = Link(w)
    link.wake()
    vov = 3650 * 10 // 16
    vuv = 2800 * 10 // 16 - 1
    link.write(chip.WRCFGA, [_cfg(vuv=vuv, vov=vov), _cfg(vuv=vuv, vov=vov)])
    link.command(0x360)
    w.sleep_us(2400)
    (b0, _), (b1, _) = link.read(chip.RDSTATB)
    assert b0[2] & 0x0F == 0x2 | 0x4  # C1OV, C2UV
    assert b1[2] == 0


@_isolated
def test_pladc_reads_zero_while_converting():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg()])
    link.command(0x360)
    link.cs(0)
    link.spi.write(_cmd(chip.PLADC))
    assert link.spi.read(1) == b"\x00"
    w.sleep_us(1000)
    assert link.spi.read(1) == b"\x00"
    w.sleep_us(1400)
    assert link.spi.read(1) == b"\xff"
    link.cs(1)


@_isolated
def test_a_command_split_over_transfers_in_one_chip_select():
    w = _world()
    w.set_cell(2, 3333.3)
    link = Link(w)
    link.wake()
    link.cs(0)
    link.spi.write(b"\x03")
    link.spi.write(b"\x60\xF4\x6C")
    link.cs(1)
    w.sleep_us(7000)
    link.wake(15)
    link.cs(0)
    link.spi.write(_cmd(chip.RDCVA))
    rx = link.spi.read(3)
    rx += link.spi.read(13)
    link.cs(1)
    assert rx[2] | rx[3] << 8 == 33333


@_isolated
def test_power_on_reset_returns_every_register_to_its_power_on_value():
    w = _world()
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(vuv=7, dcc=1, dcto=2), _cfg(vuv=7, dcc=1, dcto=2)])
    link.command(0x360)
    w.sleep_us(2400)
    link.chain.power_on_reset()
    assert link.chain.bleed_mask() == 0
    assert link.chain.hw_state()["asleep"] == [True, True]
    link.wake()
    assert link.codes(chip.RDCVA) == [[0xFFFF] * 3, [0xFFFF] * 3]
    for data, ok in link.read(chip.RDCFGA):
        assert ok and data[0] & 0x07 == 0x02 and data[1:6] == b"\x00" * 5  # REFON 0, DTEN pin high


@_isolated
def test_fewer_cells_sit_on_the_lowest_inputs_of_each_device():
    w = _world(cells=20)
    for k in range(20):
        w.set_cell(k + 1, 3000 + k)
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(), _cfg()])
    link.command(0x360)
    w.sleep_us(2400)
    d = link.codes(chip.RDCVD)  # inputs 10-12
    assert d[0] == [30090, 0, 0] and d[1] == [30190, 0, 0]
    assert link.codes(chip.RDCVA)[1] == [30100, 30110, 30120]  # device 1 starts at cell 11
    # Its switches the same way: input 1 is cell 11, input 10 cell 20; input 12 bridges no cell.
    link.write(chip.WRCFGA, [_cfg(dcc=0x002), _cfg(dcc=0x201 | 0x800)])
    assert link.chain.bleed_mask() == 1 << 1 | 1 << 10 | 1 << 19
    assert w.bleeding(10) and w.bleeding(19) and not w.bleeding(9)


@_isolated
def test_a_controller_in_the_wrong_spi_mode_is_not_understood():
    w = _world()
    link = Link(w, mode=(0, 1))
    link.wake()
    link.write(chip.WRCFGA, [_cfg(vuv=9), _cfg(vuv=9)])
    assert link.read(chip.RDCFGA) == [(b"\xff" * 6, False), (b"\xff" * 6, False)]
    assert link.chain.devs[0].vuv() == 0


@_isolated
def test_ltc6813_has_18_cells_and_group_b():
    b = _board(variant="ltc6813", devices=1)
    b["cells"] = 18
    b["ntc"] = [s for s in b["ntc"] if s["device"] == 0]
    w = _world(b)
    for k in range(18):
        w.set_cell(k + 1, 3100 + k)
    link = Link(w)
    link.wake()
    link.write(chip.WRCFGA, [_cfg(dcc=0x001)])
    link.write(chip.WRCFGB, [bytes((0x1F, 0x02, 0, 0, 0, 0))])  # DCC13, DCC18
    assert link.chain.bleed_mask() == 1 | 1 << 12 | 1 << 17
    link.command(0x360)
    w.sleep_us(2400)
    assert link.codes(chip.RDCVE) == [[31120, 31130, 31140]]
    assert link.codes(chip.RDCVF) == [[31150, 31160, 31170]]
    data, ok = link.read(chip.RDCFGB)[0]
    assert ok and data[0] == 0x1F and data[1] == 0x02
    # No discharge timer: the watchdog resets group B too (read again, not
    # the reply from before it slept).
    w.advance(2100)
    link.wake()
    data, ok = link.read(chip.RDCFGB)[0]
    assert ok and data == bytes(chip.CFGB_POR) and link.chain.bleed_mask() == 0


@_isolated
def test_attach_refuses_a_thermistor_on_a_missing_pin():
    b = _board()
    b["ntc"] = [dict(b["ntc"][0], gpio=6)]
    try:
        _world(b)
    except ValueError:
        return
    finally:
        machine.attach(None)
    assert False, "GPIO6 accepted on an LTC6811"
