"""Tests of the simulated `machine` module and the simulated board/pack.

Expected values are worked out by hand from boards/esp32_adc_4s.json:
taps scale 2/4/6/8, current zero 1250 mV at 100 mA/mV, NTC beta 3950,
r0 = pullup = 10 kOhm, NTC divider supply 2500 mV, FETs on CHG/DSG pins active high,
alert on 27 active low.
"""

import json
import math
import os
import select
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SIM = os.path.join(ROOT, "tools", "sim")
if SIM not in sys.path:
    sys.path.insert(0, SIM)

import machine  # noqa: E402  (tools/sim/machine.py)
import simworld  # noqa: E402

BOARD_PATH = os.path.join(ROOT, "boards", "esp32_adc_4s.json")
MPY_ENV = "tools/sim:firmware/lib:.frozen"


def _board():
    with open(BOARD_PATH) as f:
        return json.load(f)


CHG = _board()["fets"]["chg"]
DSG = _board()["fets"]["dsg"]


@pytest.fixture
def world():
    w = simworld.SimWorld(_board())
    for n in range(1, 5):
        w.set_cell(n, 3300)  # pinned open-circuit voltages: readings by hand
    machine.attach(w)
    yield w
    machine.attach(None)


def _micropython():
    for path in (os.path.join(ROOT, ".venv", "bin", "micropython"), "/tmp/v/bin/micropython"):
        if os.path.exists(path):
            return path
    return None


def test_this_is_the_simulated_machine():
    assert os.path.dirname(os.path.abspath(machine.__file__)) == SIM


def test_peripherals_need_an_attached_world():
    machine.attach(None)
    for make in (lambda: machine.Pin(CHG), lambda: machine.ADC(32), lambda: machine.WDT(), machine.idle):
        with pytest.raises(RuntimeError, match="attach"):
            make()


# --- cell taps -----------------------------------------------------------


def test_tap_voltages_follow_the_dividers(world):
    for n, mv in enumerate((3300, 3500, 3100, 3700), start=1):
        world.set_cell(n, mv)
    adcs = [machine.ADC(machine.Pin(p), atten=machine.ADC.ATTN_11DB) for p in (32, 33, 34, 35)]
    # 3300/2, (3300+3500)/4, (3300+3500+3100)/6, 13600/8
    assert [a.read_uv() for a in adcs] == [1650000, 1700000, 1650000, 1700000]


def test_tap_reading_has_1mv_resolution_and_offset_is_not_physics(world):
    world.board["cell_taps"][1]["offset_mv"] = 50  # calibration data only
    world.set_cell(2, 3310)
    adc = machine.ADC(33, atten=machine.ADC.ATTN_11DB)
    assert adc.read_uv() == 1653000  # 6610 / 4 = 1652.5 -> 1653 mV


def test_tap_gain_error(world):
    world.tap_gain_error[3] = 1.02  # tap 3 reads 2 % high
    world.changed()
    adc = machine.ADC(34, atten=machine.ADC.ATTN_11DB)
    assert adc.read_uv() == 1683000  # 9900 / 6 * 1.02


def test_adc_attenuation_clamps_and_defaults_to_0db(world):
    adc = machine.ADC(32)  # 1650 mV at the pin
    assert adc.read_uv() == 950000  # 0 dB tops out at 950 mV
    adc.atten(machine.ADC.ATTN_6DB)
    assert adc.read_uv() == 1650000
    world.set_cell(1, 5000)  # 2500 mV at the pin
    adc.atten(machine.ADC.ATTN_11DB)
    assert adc.read_uv() == 2450000
    # the attenuation belongs to the channel, not to the object
    assert machine.ADC(machine.Pin(32)).read_uv() == 2450000
    with pytest.raises(ValueError):
        adc.atten(7)


def test_read_u16_is_3300mv_full_scale(world):
    adc = machine.ADC(32, atten=machine.ADC.ATTN_11DB)
    assert adc.read_u16() == 32768  # 1650 / 3300 * 65535 = 32767.5
    world.set_cell(1, 6000)  # 3000 mV at the pin, clamped to 2450
    assert adc.read_u16() == 48655  # 2450 / 3300 * 65535 = 48655.3


# --- current sensor and FETs ----------------------------------------------


def test_current_pin_and_fet_blocking(world):
    cur = machine.ADC(36, atten=machine.ADC.ATTN_11DB)
    assert cur.read_uv() == 1250000  # zero current

    world.set_current(20000)  # charger wants 20 A
    assert world.flowing_ma() == 0 and cur.read_uv() == 1250000  # FETs off at boot
    dsg = machine.Pin(DSG, machine.Pin.OUT, value=1)
    assert world.flowing_ma() == 0  # DSG on does not let charge through
    chg = machine.Pin(CHG, machine.Pin.OUT, value=1)
    assert world.pin_out[CHG] == 1
    assert world.flowing_ma() == 20000 and cur.read_uv() == 1450000  # 1250 + 200

    world.set_current(-50000)  # load wants 50 A
    assert cur.read_uv() == 750000  # 1250 - 500
    dsg.off()
    assert world.pin_out[DSG] == 0 and world.flowing_ma() == 0 and cur.read_uv() == 1250000
    chg.off()
    dsg.on()
    assert world.flowing_ma() == -50000


def test_output_level_reaches_the_wire_only_in_out_mode(world):
    world.set_current(1000)
    pin = machine.Pin(CHG)
    pin.value(1)  # latched, but the pin is still an input
    assert CHG not in world.pin_out and world.flowing_ma() == 0
    pin.init(machine.Pin.OUT)
    assert world.pin_out[CHG] == 1 and pin.value() == 1 and world.flowing_ma() == 1000
    pin.init(machine.Pin.IN)
    assert world.flowing_ma() == 0


def test_active_low_fets(world):
    world.board["fets"]["active_high"] = False
    world.set_current(1000)
    assert world.flowing_ma() == 1000  # undriven gates are low = on
    machine.Pin(CHG, machine.Pin.OUT, value=1)
    assert world.flowing_ma() == 0


# --- NTCs -------------------------------------------------------------------


def test_ntc_at_25c_is_half_vref(world):
    for pin in (39, 25):  # pack NTC and board NTC; r0 == pullup
        assert machine.ADC(pin, atten=machine.ADC.ATTN_11DB).read_uv() == 1250000


def test_ntc_beta_equation(world):
    world.set_temp(0, 0.0)
    world.set_board_temp(60.0)
    for t, pin in ((0.0, 39), (60.0, 25)):
        r = 10000 * math.exp(3950 * (1 / (t + 273.15) - 1 / 298.15))
        assert world.pin_mv(pin) == pytest.approx(2500 * r / (r + 10000), abs=0.001)  # uV resolution
    assert 1924 < world.pin_mv(39) < 1930  # cold: R about 33.6 k
    assert 490 < world.pin_mv(25) < 505  # hot: R about 2.5 k


def test_ntc_open_and_short(world):
    adc = machine.ADC(39, atten=machine.ADC.ATTN_11DB)
    world.set_fault("ntc_open", True, 1)
    assert world.pin_mv(39) == 2500 and adc.read_uv() == 2450000  # pin at its supply, ADC saturates
    world.set_fault("ntc_open", False)
    world.set_fault("ntc_short", True, 1)
    assert adc.read_uv() == 0
    world.board_ntc_short = True
    world.changed()
    assert machine.ADC(25, atten=machine.ADC.ATTN_11DB).read_uv() == 0


# --- timers ------------------------------------------------------------------


def test_timers_fire_in_deadline_order_and_rearm(world):
    log = []
    a = machine.Timer(-1, mode=machine.Timer.PERIODIC, period=10, callback=lambda t: log.append(("a", world.now_ms, t)))
    b = machine.Timer(-1, mode=machine.Timer.ONE_SHOT, period=25, callback=lambda t: log.append(("b", world.now_ms, t)))
    c = machine.Timer(-1)
    c.init(mode=machine.Timer.PERIODIC, period=7, callback=lambda t: log.append(("c", world.now_ms, t)))
    world.advance(30)
    assert [(n, ms) for n, ms, _ in log] == [
        ("c", 7),
        ("a", 10),
        ("c", 14),
        ("a", 20),
        ("c", 21),
        ("b", 25),
        ("c", 28),
        ("a", 30),
    ]
    assert all(t is {"a": a, "b": b, "c": c}[n] for n, _, t in log)  # gets its timer
    assert world.now_ms == 30
    del log[:]
    a.deinit()
    world.advance(20)
    assert [(n, ms) for n, ms, _ in log] == [("c", 35), ("c", 42), ("c", 49)]  # b was one-shot


def test_timers_due_together_run_in_arming_order(world):
    log = []
    machine.Timer(-1, period=5, callback=lambda t: log.append(1))
    machine.Timer(-1, period=5, callback=lambda t: log.append(2))
    world.advance(10)
    assert log == [1, 2, 1, 2]


def test_timer_freq_and_reinit(world):
    hits = []
    t = machine.Timer(0, mode=machine.Timer.PERIODIC, freq=100, callback=lambda t: hits.append(world.now_ms))
    world.advance(25)
    assert hits == [10, 20]
    t.init(mode=machine.Timer.ONE_SHOT, period=3, callback=lambda t: hits.append(-world.now_ms))
    world.advance(10)
    assert hits == [10, 20, -28]


def test_timer_port_rules(world):
    with pytest.raises(ValueError, match="hard"):
        machine.Timer(0, period=10, callback=None, hard=True)
    with pytest.raises(ValueError):
        machine.Timer(4)
    # one hardware timer per id: a new Timer(1) takes it over
    hits = []
    machine.Timer(1, period=10, callback=lambda t: hits.append("old"))
    machine.Timer(1, period=10, callback=lambda t: hits.append("new"))
    world.advance(10)
    assert hits == ["new"]


def test_idle_advances_one_ms_and_runs_hooks(world):
    calls = []
    world.idle_hooks.append(lambda: calls.append(world.now_ms))
    for _ in range(3):
        machine.idle()
    assert world.now_ms == 3 and calls == [0, 1, 2]


def test_wall_pacing_sleeps_until_the_next_timer(world):
    world.pace = "wall"
    world.set_speed(10)  # 10 virtual ms per wall ms
    hits = []
    machine.Timer(-1, period=100, callback=lambda t: hits.append(world.now_ms))
    start = time.monotonic()
    for _ in range(5):
        machine.idle()
    wall = time.monotonic() - start
    assert hits == [100, 200, 300, 400, 500] and world.now_ms == 500
    assert 0.045 <= wall < 0.5  # 500 virtual ms at 10x: 50 ms of wall time


def test_fast_pace_jumps_to_the_next_deadline_and_wakes_for_console_bytes(world):
    world.pace = "fast"
    machine.Timer(-1, period=250, callback=lambda t: None)
    machine.idle()
    assert world.now_ms == 250
    world.uart_feed(b"x")
    machine.idle()  # a byte is waiting: the UART interrupt wakes the MCU now
    assert world.now_ms == 250


def test_pause_stops_time_and_step_runs_exactly(world):
    world.pace = "fast"
    world.wait_input = lambda ms: None
    machine.Timer(-1, period=100, callback=lambda t: None)
    world.paused = True
    for _ in range(10):
        machine.idle()
    assert world.now_ms == 0
    done = []
    world.on_step_done = lambda: done.append(world.now_ms)
    world.step_to_ms = 1250
    while not done:
        machine.idle()
    assert done == [1250] and world.now_ms == 1250 and world.paused


# --- watchdog ----------------------------------------------------------------


def test_wdt_expires_when_not_fed(world):
    wdt = machine.WDT(timeout=100)
    world.advance(99)
    wdt.feed()
    world.advance(99)
    with pytest.raises(machine.WatchdogReset):
        world.advance(50)
    assert world.wdt_expired and world.now_ms == 199
    with pytest.raises(machine.WatchdogReset):  # stays reset until board_reset
        machine.idle()
    world.board_reset(machine.WDT_RESET)
    assert machine.reset_cause() == machine.WDT_RESET
    world.advance(1000)  # the watchdog stops with the reset


def test_wdt_fed_from_idle_loop_and_timer(world):
    wdt = machine.WDT(timeout=50)
    machine.Timer(-1, period=50, callback=lambda t: wdt.feed())  # due with the deadline
    world.advance(1000)
    assert not world.wdt_expired


def test_wdt_is_not_an_exception_the_firmware_can_swallow(world):
    machine.WDT(timeout=10)
    with pytest.raises(machine.WatchdogReset):
        try:
            world.advance(20)
        except Exception:  # a firmware catch-all
            pass


def test_second_wdt_reconfigures_the_same_watchdog(world):
    machine.WDT(timeout=100)
    world.advance(90)
    machine.WDT(0, 1000)
    world.advance(900)
    with pytest.raises(machine.WatchdogReset):
        world.advance(200)
    assert world.now_ms == 1090
    with pytest.raises(ValueError):
        machine.WDT(1)


def test_reset_and_reset_cause(world):
    assert machine.reset_cause() == machine.PWRON_RESET == 1
    with pytest.raises(machine.BoardReset):
        machine.reset()
    with pytest.raises(machine.BoardReset):
        machine.idle()
    world.board_reset(machine.SOFT_RESET)
    assert machine.reset_cause() == 5
    assert machine.unique_id() == b"\x00SIMBMS"


def test_board_reset_puts_peripherals_back(world):
    world.set_current(1000)
    machine.Pin(CHG, machine.Pin.OUT, value=1)
    machine.Timer(-1, period=5, callback=lambda t: 1 / 0)
    world.board_reset(machine.SOFT_RESET)
    assert world.flowing_ma() == 0 and world.pin_out == {}
    world.advance(100)  # timer gone


# --- UART ----------------------------------------------------------------------


def test_uart_queues(world):
    u = machine.UART(1, baudrate=115200, tx=4, rx=5)
    assert u.any() == 0 and u.read() is None and u.readinto(bytearray(4)) is None
    world.uart_feed(b"hello\nworld")
    assert u.any() == 11
    assert u.read(3) == b"hel"
    buf = bytearray(4)
    assert u.readinto(buf) == 4 and buf == b"lo\nw"
    assert u.readline() == b"orld" and u.any() == 0
    assert u.write(b"status\r\n") == 8
    assert u.write(memoryview(b"abc")[1:]) == 2
    assert world.uart_take() == b"status\r\nbc"
    assert world.uart_take() == b""


# --- GPIO and the alert line -----------------------------------------------------


def test_pin_modes_and_pulls(world):
    assert machine.Pin.PULL_UP == 2 and machine.Pin.PULL_DOWN == 1  # ESP32 values
    p = machine.Pin(26, machine.Pin.IN, machine.Pin.PULL_UP)
    assert p.value() == 1 and p() == 1
    p.init(pull=machine.Pin.PULL_DOWN)
    assert p.value() == 0
    world.set_input(26, 1)
    assert p.value() == 1
    assert machine.Pin(27).value() == 1  # alert line idles inactive (high)
    with pytest.raises(ValueError):
        machine.Pin(20)  # no GPIO20 on the ESP32
    with pytest.raises(ValueError):
        machine.Pin(34, machine.Pin.OUT)  # input-only pin


def test_alert_irq_gets_the_pin(world):
    alert = machine.Pin(27, machine.Pin.IN, machine.Pin.PULL_UP)
    got = []
    alert.irq(handler=lambda pin: got.append((pin, pin.value())), trigger=machine.Pin.IRQ_FALLING)
    world.raise_alert()
    assert len(got) == 1 and got[0][0] is alert and got[0][1] == 0
    world.raise_alert()  # already low: no edge, no IRQ
    world.release_alert()  # rising edge, not asked for
    assert len(got) == 1 and alert.value() == 1
    alert.irq(handler=lambda pin: got.append((pin, pin.value())), trigger=machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)
    world.raise_alert()
    world.release_alert()
    assert [v for _, v in got] == [0, 0, 1]
    alert.irq(None)
    world.raise_alert()
    assert len(got) == 3


def test_esp32_pin_irq_has_no_hard_argument(world):
    with pytest.raises(TypeError, match="hard"):
        machine.Pin(27).irq(lambda p: None, machine.Pin.IRQ_FALLING, hard=True)


def test_hard_irq_on_other_ports(world):
    board = _board()
    board["mcu"] = "rp2"
    w = machine.attach(simworld.SimWorld(board))
    got = []
    pin = machine.Pin(27, machine.Pin.IN, machine.Pin.PULL_UP)
    pin.irq(got.append, machine.Pin.IRQ_FALLING, hard=True)
    w.raise_alert()
    assert got == [pin]


# --- pack physics ------------------------------------------------------------------


def test_pinned_cells_hold_their_voltage_and_show_the_ir_drop(world):
    machine.Pin(CHG, machine.Pin.OUT, value=1)
    world.set_current(50000)
    world.advance(3600 * 1000)
    r0 = world.pack.cells[0].r0_ohm * world.pack.r_factor()
    ir = 50.0 * r0 * 1000  # mV of I*R0; the RC pair adds its own
    for k in range(4):
        assert world.cell_true_mv(k) >= 3300 + ir
    world.set_current(0)
    world.advance(600 * 1000)  # ten RC time constants
    assert all(abs(world.cell_true_mv(k) - 3300) < 0.5 for k in range(4))


def test_the_pack_charges_through_chg_and_dsg_blocks_discharge():
    w = machine.attach(simworld.SimWorld(_board()))
    soc0 = w.pack.soc_pct()
    machine.Pin(CHG, machine.Pin.OUT, value=1)
    w.set_current(25000)  # 0.25 C for an hour: +25 %
    w.advance(3600 * 1000)
    assert abs(w.pack.soc_pct() - soc0 - 25.0) < 0.1
    w.set_current(-50000)  # DSG still off: nothing flows
    w.advance(3600 * 1000)
    assert abs(w.pack.soc_pct() - soc0 - 25.0) < 0.1 and w.flowing_ma() == 0
    machine.Pin(DSG, machine.Pin.OUT, value=1)
    w.advance(3600 * 1000)
    assert abs(w.pack.soc_pct() - soc0 + 25.0) < 0.1


# --- real MicroPython ----------------------------------------------------------------


def test_smoke_under_micropython():
    mpy = _micropython()
    if mpy is None:
        pytest.skip("no micropython binary")
    r = subprocess.run(
        [mpy, "host_tests/cpython/sim_machine_smoke_mpy.py"],
        cwd=ROOT,
        env=dict(os.environ, MICROPYPATH=MPY_ENV),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "SMOKE OK" in r.stdout, r.stdout + r.stderr


# A stand-in for firmware/main.py, written to a temporary folder at test time.
STAND_IN_MAIN = """
import json
import machine

def main(board_path="/board.json", config_path="/config.json"):
    with open(board_path) as f:
        b = json.load(f)
    u = machine.UART(b["console"]["uart"], b["console"]["baudrate"])
    u.write("boot %d\\r\\n" % machine.reset_cause())
    tap = machine.ADC(machine.Pin(b["cell_taps"][1]["pin"]), atten=machine.ADC.ATTN_11DB)
    wdt = machine.WDT(timeout=200)
    hang = False
    buf = b""
    while True:
        if not hang:
            wdt.feed()
        n = u.any()
        if n:
            buf += u.read(n)
            while b"\\n" in buf:
                line, buf = buf.split(b"\\n", 1)
                if line == b"hang":
                    hang = True
                elif line == b"reset":
                    machine.reset()
                elif line == b"tap2":
                    u.write("tap2 %d\\r\\n" % (tap.read_uv() // 1000))
                else:
                    u.write(b"echo " + line + b"\\r\\n")
        machine.idle()
"""


class _Proc:
    # A subprocess whose stdout we can wait on without blocking forever.
    def wait_for_number(self, prefix, want, tol, timeout=10):
        """Wait for the next `prefix NUMBER` line; assert NUMBER is want +- tol."""
        start = len(self.out)
        deadline = time.monotonic() + timeout
        while True:
            tail = self.out[start:].decode(errors="replace")
            i = tail.find(prefix)
            if i >= 0 and "\n" in tail[i:]:
                got = float(tail[i + len(prefix):].split()[0])
                assert abs(got - want) <= tol, (prefix, got, want)
                return got
            if time.monotonic() > deadline:
                raise AssertionError("no %r line in:\n%s" % (prefix, tail))
            if select.select([self.p.stdout], [], [], 0.1)[0]:
                self.out += os.read(self.p.stdout.fileno(), 4096)

    def __init__(self, args, **kw):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)
        self.out = b""

    def send(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def wait_for(self, text, timeout=10):
        deadline = time.monotonic() + timeout
        while text.encode() not in self.out:
            left = deadline - time.monotonic()
            if left <= 0 or self.p.poll() is not None and not select.select([self.p.stdout], [], [], 0)[0]:
                raise AssertionError("no %r in output:\n%s" % (text, self.out.decode(errors="replace")))
            if select.select([self.p.stdout], [], [], min(left, 0.1))[0]:
                self.out += os.read(self.p.stdout.fileno(), 4096)


def test_run_py_virtual_board(tmp_path):
    mpy = _micropython()
    if mpy is None:
        pytest.skip("no micropython binary")
    (tmp_path / "main.py").write_text(STAND_IN_MAIN)
    proc = _Proc(
        [mpy, "tools/sim/run.py", "--board", BOARD_PATH, "--main", str(tmp_path / "main.py"),
         "--cells-mv", "3300,3310,3290,3305", "--fs", str(tmp_path / "fs")],
        cwd=ROOT,
        env=dict(os.environ, MICROPYPATH=MPY_ENV),
    )
    try:
        proc.wait_for("boot 1")
        proc.send("hello")
        proc.wait_for("echo hello")
        proc.send("tap2")
        proc.wait_for_number("tap2 ", 1652.5, 4)  # (3300 + 3310) / 4, plus ADC noise
        proc.send("sim cell 2 3500")
        proc.wait_for("sim: cell 2 open-circuit voltage pinned at 3500 mV")
        proc.send("tap2")
        proc.wait_for_number("tap2 ", 1700, 4)
        proc.send("sim cell 9 1")
        proc.wait_for("error: cell number out of range")
        proc.send("sim frobnicate")
        proc.wait_for("error: bad sim command")
        proc.p.stdin.write(b"sim cell 1 \xff\n")  # one error line, the board runs on
        proc.p.stdin.flush()
        proc.wait_for("error: sim commands are plain ASCII")
        proc.send("sim help")
        proc.wait_for("sim alert on|off")
        proc.send("sim current 1000")
        proc.wait_for("sim: current 1000 mA requested, 0 mA flowing")
        proc.send("reset")
        proc.wait_for("*** board reset\r\n")
        proc.wait_for("boot 5")
        proc.send("hang")
        proc.wait_for("*** board reset (watchdog)")
        proc.wait_for("boot 3")
        proc.send("tap2")  # the pack kept its state across resets
        proc.wait_for_number("tap2 ", 1700, 4)
        proc.p.send_signal(signal.SIGINT)
        assert proc.p.wait(timeout=10) == 0
        proc.out += proc.p.stdout.read()
        assert proc.out.endswith(b"\n")
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()



def test_make_sim_runs_the_real_firmware(tmp_path):
    # What `make sim` does: the unmodified firmware under MicroPython on the
    # simulated board, its console on the terminal.
    mpy = _micropython()
    if mpy is None:
        pytest.skip("no micropython binary")
    cfg = tmp_path / "config.json"
    subprocess.run([sys.executable, "tools/make_config.py", "--board", BOARD_PATH, "--out", str(cfg)],
                   cwd=ROOT, check=True, capture_output=True)
    proc = _Proc([mpy, "tools/sim/run.py", "--board", BOARD_PATH, "--config", str(cfg)],
                 cwd=ROOT, env=dict(os.environ, MICROPYPATH="firmware/lib:tools/sim:.frozen"))
    try:
        proc.wait_for("openbms ready")
        time.sleep(0.5)
        proc.send("status --json")
        proc.wait_for('"uptime_s"')
        line = [l for l in proc.out.decode().splitlines() if l.startswith("{")][-1]
        s = json.loads(line)
        assert s["state"] == "normal" and s["chg"] and s["dsg"], s
        proc.send("sim cell 3 3700")
        for _ in range(40):  # the trip itself is timed by the logic tests, not here
            proc.send("faults --json")
            try:
                proc.wait_for('"faults": ["cell_ov"]', timeout=0.5)
                break
            except AssertionError:
                pass
        else:
            raise AssertionError("cell_ov never tripped:\n" + proc.out.decode(errors="replace"))
        proc.send("bogus")
        proc.wait_for("error: unknown command 'bogus'")
        proc.p.send_signal(signal.SIGINT)
        assert proc.p.wait(timeout=10) == 0
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
            proc.p.wait()
