# Tests of the `sim ...` console commands (tools/sim/simcmd.py) against a
# simulated board (boards/esp32_mux_16s.json). Plain functions with bare
# asserts: they run under pytest and inside MicroPython (mp_run.py).
#
# Hand values (see test_simworld.py for the board): default pack 16S LFP
# 100 Ah at 50 % (OCV 3297 mV per cell); NTCs (GPIO39, GPIO34, board GPIO35)
# Beta 3950, r0 = pull-up = 10 k from 2500 mV: 1250 mV at 25 C; CHG GPIO23,
# DSG GPIO26 active high; alert GPIO27 active low above 400 A discharge;
# bleeders on two 74HC595 (SPI 1, latch GPIO17, /OE GPIO16).
import json
import math

import machine
import simcmd
import simworld
import sources

MUX16 = "boards/esp32_mux_16s.json"


def close(a, b, tol):
    return abs(a - b) <= tol


def make(board=None):
    w = simworld.SimWorld(board or simworld.load_board(MUX16))
    w.wait_input = lambda ms: None  # a paused idle() must not sleep in wall time
    out = []
    return w, simcmd.SimCommands(w, out.append), out


def one(c, line):
    # The single reply line of a command.
    r = c.run(line)
    assert len(r) == 1, (line, r)
    return r[0]


def beta_mv(t_c):
    # NTC-to-ground with a 10 k pull-up from 2500 mV, Beta 3950, 10 k at 25 C.
    r = 10000.0 * math.exp(3950.0 * (1.0 / (t_c + 273.15) - 1.0 / 298.15))
    return 2500.0 * r / (r + 10000.0)


def snapshot(w, c):
    # Everything a command could change, for before/after comparisons.
    return (
        c.state(),
        w.now_ms, w.pace, w.speed, w.paused, w.step_to_ms, w.on_step_done,
        w.manual_ma, list(w.temp_pin), w.board_temp_pinned, w.alert_forced,
        dict(w.faults), list(w.ntc_open), list(w.ntc_short), dict(w._frozen),
        len(w._fault_sources), w.pack.ambient_c,
        [w.pack.pinned(k) for k in range(w.pack.n)],
        [w.pin_mv(p) for p in (32, 33, 34, 35, 36, 39)],
    )


# ---- help -------------------------------------------------------------------------


def test_help_lists_the_commands():
    w, c, _ = make()
    assert c.run("sim help") == list(simcmd.HELP)
    assert c.run("sim") == list(simcmd.HELP)
    assert c.run("help") == list(simcmd.HELP)  # the `sim` word is optional
    text = "\n".join(simcmd.HELP)
    for word in ("show", "cell", "current", "temp", "ambient", "fault", "alert", "pause", "step", "speed"):
        assert "sim " + word in text, word


# ---- cell --------------------------------------------------------------------------


def test_cell_pin_and_free():
    w, c, _ = make()
    assert one(c, "sim cell 3 3456") == "sim: cell 3 open-circuit voltage pinned at 3456 mV"
    assert w.pack.pinned(2) == 3456.0
    assert w.cell_true_mv(2) == 3456.0  # no current: terminal = OCV
    assert w.cell_true_mv(1) == 3297.0  # neighbours untouched
    # the mux input of cell 3 (address 2) carries 3456 / 2
    w.configure_pin(19, simworld.PIN_OUT, -1, 1)  # select bit 1
    assert w.pin_mv(32) == 1728.0
    assert one(c, "sim cell 3 3300") == "sim: cell 3 open-circuit voltage pinned at 3300 mV"
    assert one(c, "sim cell 3 free") == "sim: cell 3 follows its charge again"
    assert w.pack.pinned(2) is None
    # it continues from the SOC of 3300 mV on the LFP table: 55 %
    assert close(w.pack.cell_soc_pct(2), 55.0, 1e-9)
    assert w.cell_true_mv(2) == 3300.0
    assert one(c, "sim cell 16 0") == "sim: cell 16 open-circuit voltage pinned at 0 mV"
    assert one(c, "sim cell 1 6000") == "sim: cell 1 open-circuit voltage pinned at 6000 mV"
    assert w.pack.pinned(15) == 0.0 and w.pack.pinned(0) == 6000.0


# ---- current -----------------------------------------------------------------------


def test_current_manual_and_profile():
    w, c, _ = make()
    machine.attach(w)
    try:
        w.sources.append(sources.Constant(-5.0))  # the scenario's profile: a 5 A load
        assert one(c, "sim current -20000") == "sim: current -20000 mA requested, 0 mA flowing"  # DSG open
        assert w.manual_ma == -20000
        machine.Pin(26, machine.Pin.OUT, value=1)
        assert w.flowing_ma() == -20000
        assert one(c, "sim current -30000") == "sim: current -30000 mA requested, -30000 mA flowing"
        assert one(c, "sim current 2000000") == "sim: current 2000000 mA requested, 0 mA flowing"  # CHG open
        assert one(c, "sim current profile") == "sim: current from the profile, -5000 mA flowing"
        assert w.manual_ma is None and w.flowing_ma() == -5000
    finally:
        machine.attach(None)


# ---- temp ---------------------------------------------------------------------------


def test_temp_sensor_pin_and_free():
    w, c, _ = make()
    assert one(c, "sim temp 2 50") == "sim: sensor 2 pinned at 50.0 C"
    assert w.temp_pin == [None, 50.0]
    assert close(w.pin_mv(34), beta_mv(50.0), 0.001)
    assert 655.0 < w.pin_mv(34) < 665.0  # R(50 C) = 3.59 k: 2500 * 3.59 / 13.59
    assert w.pin_mv(39) == 1250.0  # sensor 1 still follows the pack (25 C)
    assert one(c, "sim temp 1 -20.5") == "sim: sensor 1 pinned at -20.5 C"
    assert close(w.pin_mv(39), beta_mv(-20.5), 0.001)
    assert one(c, "sim temp 2 free") == "sim: sensor 2 released"
    assert w.temp_pin == [-20.5, None] and w.pin_mv(34) == 1250.0


def test_temp_board_sensor():
    w, c, _ = make()
    assert one(c, "sim temp board 80") == "sim: board sensor pinned at 80.0 C"
    assert w.board_temp_pinned == 80.0 and w.board_temp() == 80.0
    assert close(w.pin_mv(35), beta_mv(80.0), 0.001)
    assert w.temp_pin == [None, None]  # the cell sensors are not touched
    assert one(c, "sim temp board free") == "sim: board sensor released"
    assert w.board_temp_pinned is None and w.pin_mv(35) == 1250.0


# ---- ambient ------------------------------------------------------------------------


def test_ambient_moves_pack_and_board():
    w, c, _ = make()
    assert one(c, "sim ambient 35") == "sim: ambient 35.0 C"
    assert w.pack.ambient_c == 35.0
    w.advance(1200 * 1000)
    # board: time constant 60 J/K * 4 K/W = 240 s: 35 - 10 * exp(-5) = 34.93
    assert close(w.board_temp(), 35.0 - 10.0 * math.exp(-5.0), 0.01), w.board_temp()
    # pack: a much slower time constant (about 80 min): part of the way
    assert 25.5 < w.pack.temp_c < 34.0, w.pack.temp_c


# ---- fault --------------------------------------------------------------------------


def test_fault_on_off_with_n():
    w, c, _ = make()
    assert one(c, "sim fault ntc_open on 2") == "sim: fault ntc_open on (2)"
    assert w.faults == {"ntc_open": 2} and w.ntc_open == [False, True]
    assert w.pin_mv(34) == 2500.0 and w.pin_mv(39) == 1250.0
    assert one(c, "sim fault ntc_open off") == "sim: fault ntc_open off"
    assert w.faults == {} and w.pin_mv(34) == 1250.0
    assert one(c, "sim fault ntc_short on") == "sim: fault ntc_short on (1)"  # N defaults to 1
    assert w.pin_mv(39) == 0.0
    assert one(c, "sim fault ntc_short off 1") == "sim: fault ntc_short off"
    assert w.pin_mv(39) == 1250.0
    assert one(c, "sim fault stuck_cell on 4") == "sim: fault stuck_cell on (4)"
    assert w.faults == {"stuck_cell": 4}
    assert one(c, "sim fault afe_nack on") == "sim: fault afe_nack on (100 %)"
    assert w.faults == {"stuck_cell": 4, "afe_nack": 100}
    assert one(c, "sim fault afe_nack off") == "sim: fault afe_nack off"
    assert one(c, "sim fault stuck_cell off") == "sim: fault stuck_cell off"
    assert w.faults == {}


def test_fault_load_short_through_the_console():
    w, c, _ = make()
    machine.attach(w)
    try:
        machine.Pin(26, machine.Pin.OUT, value=1)
        assert one(c, "sim fault load_short on") == "sim: fault load_short on"
        # 52.752 V / (7.2 + 5) mOhm = 4324 A
        assert close(w.flowing_ma(), -52.752 / 0.0122 * 1000, 5000)
        one(c, "sim fault load_short off")
        assert w.flowing_ma() == 0
    finally:
        machine.attach(None)


def test_fault_list():
    w, c, _ = make()
    lines = c.run("sim fault list")
    names = sorted(simworld.FAULTS)
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        assert line.startswith("sim: " + name + " "), line
        assert line.endswith(simworld.FAULTS[name]), line
    assert w.faults == {}


def test_fault_with_another_n_is_refused_not_ignored():
    # One sensor per fault: asking for a second while the first is on says
    # so in one line and changes nothing.
    w, c, _ = make()
    one(c, "sim fault ntc_open on 1")
    r = one(c, "sim fault ntc_open on 2")
    assert r == "error: ntc_open is already on for 1; turn it off first", r
    assert w.ntc_open == [True, False]


# ---- alert --------------------------------------------------------------------------


def test_alert_on_off():
    w, c, _ = make()
    machine.attach(w)
    try:
        got = []
        machine.Pin(27, machine.Pin.IN).irq(handler=lambda p: got.append(p.value()))
        assert one(c, "sim alert on") == "sim: alert line forced active"
        assert w.read_pin(27) == 0 and got == [0]  # active low, the IRQ ran
        assert json.loads(one(c, "sim show --json")[5:])["alert"] is True
        assert one(c, "sim alert off") == "sim: alert line back to the comparator"
        assert w.read_pin(27) == 1 and got == [0, 1]
        # back to the comparator: a real 500 A short keeps it asserted
        machine.Pin(26, machine.Pin.OUT, value=1)
        one(c, "sim current -500000")
        assert w.read_pin(27) == 0
        one(c, "sim alert on")
        one(c, "sim alert off")
        assert w.read_pin(27) == 0
    finally:
        machine.attach(None)


def test_alert_on_a_board_without_one():
    b = simworld.load_board(MUX16)
    del b["alert"]
    w, c, _ = make(b)
    before = snapshot(w, c)
    r = one(c, "sim alert on")
    assert r.startswith("error: ") and "alert" in r
    assert snapshot(w, c) == before


# ---- pause / run / step ----------------------------------------------------------------


def test_pause_and_run():
    w, c, _ = make()
    w.advance(1500)
    assert one(c, "sim pause") == "sim: paused at t=1.500 s"
    assert w.paused
    for _ in range(5):
        w.idle()
    assert w.now_ms == 1500  # no time passes while paused
    assert one(c, "sim run") == "sim: running (1 ms per idle)"
    assert not w.paused
    for _ in range(5):
        w.idle()
    assert w.now_ms == 1505  # "step" pace: 1 ms per idle


def test_step_runs_then_reports_through_out():
    w, c, out = make()
    assert c.run("sim step 2.5") == []  # the reply comes later
    assert w.paused and w.step_to_ms == 2500 and out == []
    n = 0
    while w.step_to_ms is not None and n < 100:
        w.idle()
        n += 1
    assert w.now_ms == 2500
    assert out == ["sim: t=2.500 s (paused)"]
    for _ in range(3):
        w.idle()
    assert w.now_ms == 2500 and w.paused  # paused again afterwards
    assert c.run("sim step 0.0001") == []  # at least 1 ms
    assert w.step_to_ms == 2501
    while w.step_to_ms is not None:
        w.idle()
    assert w.now_ms == 2501 and out[-1] == "sim: t=2.501 s (paused)"


def test_step_fires_timers_on_the_way():
    w, c, out = make()
    machine.attach(w)
    try:
        hits = []
        machine.Timer(0, period=400, callback=lambda t: hits.append(w.now_ms))
        c.run("sim step 1")
        while w.step_to_ms is not None:
            w.idle()
        assert hits == [400, 800] and w.now_ms == 1000
        assert out == ["sim: t=1.000 s (paused)"]
    finally:
        machine.attach(None)


# ---- speed --------------------------------------------------------------------------------


def test_speed():
    w, c, _ = make()
    assert one(c, "sim speed 10") == "sim: 10x the wall clock"
    assert w.pace == "wall" and w.speed == 10.0
    assert one(c, "sim speed 0.5") == "sim: 0.5x the wall clock"
    assert w.speed == 0.5
    assert one(c, "sim speed max") == "sim: as fast as the host runs"
    assert w.pace == "fast"
    assert one(c, "sim run") == "sim: running (as fast as the host runs)"


# ---- show ---------------------------------------------------------------------------------


def _busy_world():
    w, c, out = make()
    machine.attach(w)
    machine.Pin(23, machine.Pin.OUT, value=1)
    machine.Pin(26, machine.Pin.OUT, value=1)
    c.run("sim cell 2 3310")
    c.run("sim current -10000")
    c.run("sim temp 1 40")
    c.run("sim fault ntc_open on 2")
    # bleed cell 5: 0x00 0x10 into the 595s, latch, /OE low
    spi = machine.SPI(1)
    spi.write(bytes([0x00, 0x10]))
    machine.Pin(17, machine.Pin.OUT, value=0).value(1)
    machine.Pin(16, machine.Pin.OUT, value=0)
    w.advance(90 * 1000)
    return w, c


def test_show_text():
    w, c = _busy_world()
    try:
        lines = c.run("sim show")
        assert len(lines) == 5 and all(x.startswith("sim: ") for x in lines)
        assert lines[0] == "sim: t=90.000 s (day 0 00:01)  1 ms per idle"
        cells = lines[1].split()
        # "sim:", "cells", "mV", then 16 cells
        assert cells[2 + 2].endswith("*")  # cell 2 pinned
        assert cells[2 + 5].endswith("~")  # cell 5 bleeding
        assert "current -10000 mA (manual -10000 mA)" in lines[2]
        assert "CHG on  DSG on" in lines[2]
        assert "sensors 40.0, " in lines[3]
        assert "faults ntc_open(2)" in lines[4] and "alert off" in lines[4]
    finally:
        machine.attach(None)


def test_show_json_matches_the_world():
    w, c = _busy_world()
    try:
        line = one(c, "sim show --json")
        assert line.startswith("sim: {")
        s = json.loads(line[len("sim: "):])
        assert s["t_s"] == 90.0 and s["paused"] is False and s["pace"] == "step"
        assert s["cells_mv"] == [int(round(w.cell_true_mv(k))) for k in range(16)]
        assert s["pack_mv"] == sum(s["cells_mv"])
        assert s["pinned"] == [2]
        assert s["current_ma"] == -10000 and s["manual_ma"] == -10000
        assert s["chg"] is True and s["dsg"] is True
        assert s["bleeding"] == [5]
        assert s["sensor_c"][0] == 40.0
        assert close(s["board_c"], w.board_temp(), 0.01) and s["board_c"] > 25.0  # bleeder heat
        assert s["faults"] == {"ntc_open": 2}
        assert s["alert"] is False and s["resets"] == 0 and s["reset_cause"] == simworld.PWRON_RESET
        assert s["soc_pct"] < 50.0  # 10 A out for 90 s
        assert s["cell_soc_pct"] == [round(w.pack.cell_soc_pct(k), 2) for k in range(16)]
        assert close(s["cell_soc_pct"][0], 50.0 - 0.25, 0.006)  # 10 A * 90 s = 0.25 Ah of 100 Ah
        assert w.pack.cell_soc_pct(4) < w.pack.cell_soc_pct(3)  # the bleeding cell lost more
        assert s["ambient_c"] == 25.0
    finally:
        machine.attach(None)


# ---- bad input -----------------------------------------------------------------------------

BAD = (
    # wrong argument counts
    "sim cell", "sim cell 1", "sim cell 1 3300 3400", "sim cell 1 free extra",
    "sim current", "sim current 1 2", "sim temp", "sim temp 1", "sim temp 1 25 3",
    "sim ambient", "sim ambient 20 30", "sim fault", "sim fault ntc_open", "sim fault ntc_open on 1 2",
    "sim fault list extra", "sim alert", "sim alert on off", "sim pause now", "sim run fast",
    "sim step", "sim step 1 2", "sim speed", "sim speed max now", "sim show extra", "sim show --json extra",
    "sim help me",
    # not numbers
    "sim cell x 3300", "sim cell 1 x", "sim cell 1.5 3300", "sim current 1.5", "sim current 1e3",
    "sim current x", "sim temp x 25", "sim temp 1 x", "sim ambient x", "sim fault stuck_cell on x",
    "sim fault stuck_cell on 1.5", "sim step x", "sim speed x", "sim fault ntc_open maybe",
    "sim alert maybe",
    # out of range cell / sensor numbers
    "sim cell 0 3300", "sim cell 17 3300", "sim cell -1 free", "sim cell 17 free",
    "sim temp 0 25", "sim temp 3 25", "sim temp 3 free", "sim fault ntc_open on 3", "sim fault ntc_short on 0",
    "sim fault stuck_cell on 17", "sim fault stuck_cell on 0", "sim fault stuck_cell off 17",
    # NaN / inf
    "sim cell 1 nan", "sim cell 1 inf", "sim cell 1 -inf", "sim cell 1 NaN", "sim current nan",
    "sim current inf", "sim temp 1 nan", "sim temp board inf", "sim ambient nan", "sim ambient -inf",
    "sim step nan", "sim step inf", "sim speed nan", "sim speed inf",
    # huge / out of range values
    "sim cell 1 6001", "sim cell 1 -1", "sim cell 1 1e400", "sim cell 99999999999999999999 3300",
    "sim current 2000001", "sim current -99999999999999999999", "sim temp 1 201", "sim temp board -61",
    "sim temp 1 1e300", "sim temp 99999999999999999999 25", "sim ambient 81", "sim ambient -1e300",
    "sim step 0", "sim step -1", "sim step 604801", "sim step 1e300", "sim speed 0", "sim speed 0.001",
    "sim speed 100001", "sim speed -1", "sim fault stuck_cell on 99999999999999999999",
    # unknown commands / names
    "sim bogus", "sim fault bogus on", "sim fault afe_crc on", "sim cells 1 3300", "sim show json",
)


def _check_bad_lines(w, c, out):
    for line in BAD:
        before = snapshot(w, c)
        r = c.run(line)
        assert len(r) == 1 and r[0].startswith("error: "), (line, r)
        assert snapshot(w, c) == before, line
    assert out == []


def test_bad_input_is_one_error_line_and_changes_nothing():
    w, c, out = make()
    _check_bad_lines(w, c, out)


def test_bad_input_changes_nothing_in_a_busy_world():
    w, c, out = make()
    machine.attach(w)
    try:
        machine.Pin(26, machine.Pin.OUT, value=1)
        for line in ("sim cell 2 3400", "sim current -1000", "sim temp 2 40", "sim temp board 50",
                     "sim fault ntc_open on 1", "sim fault stuck_cell on 3", "sim speed 5", "sim ambient 30"):
            assert not one(c, line).startswith("error"), line
        w.advance(2000)
        _check_bad_lines(w, c, out)
        # and while a step is pending
        assert c.run("sim step 10") == []
        _check_bad_lines(w, c, out)
    finally:
        machine.attach(None)


def test_board_sensor_on_a_board_without_one():
    b = simworld.load_board(MUX16)
    del b["board_ntc"]
    w, c, _ = make(b)
    for line in ("sim temp board 30", "sim temp board free"):
        before = snapshot(w, c)
        r = one(c, line)
        assert r.startswith("error: ") and "board sensor" in r, r
        assert snapshot(w, c) == before
