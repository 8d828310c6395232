# The real firmware (main.setup, board.py, the direct-ADC driver, Timer, WDT,
# UART) on the simulated esp32_adc_4s board: the hardware is modelled by
# tools/sim from the board's circuit, not from the driver.
import json

import machine
import simworld

from helpers import tmpdir

BOARD = "boards/esp32_adc_4s.json"


def _boot(cells=(3300, 3310, 3290, 3305), world=None, save=True, **cfg_changes):
    from bms import config
    import main

    if world is None:
        world = simworld.SimWorld.from_file(BOARD)
        for i, mv in enumerate(cells):
            world.set_cell(i + 1, mv)
    machine.attach(world)
    b = simworld.load_board(BOARD)
    cfg = config.defaults("lfp", 4).with_values(b["config"])
    if cfg_changes:
        cfg = cfg.with_values(cfg_changes)
    path = tmpdir() + "/config.json"
    if save:
        config.save(cfg, path)
    bms, reader, _console = main.setup(BOARD, path)
    # Count uptime on the virtual clock (the firmware's own is the host's).
    bms._clock = world.ticks_ms
    bms._last_ms = world.ticks_ms()
    world.uart_take()
    return world, bms, reader


def _step(world, reader, ms):
    for _ in range(ms // 10):
        world.advance(10)
        reader.poll()


def _console(world, reader, line):
    world.uart_feed(line + "\n")
    reader.poll()
    return world.uart_take().decode().split("\r\n")[:-1]


def test_boot_with_fets_off_then_on_after_first_valid_tick():
    world, bms, reader = _boot()
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    _step(world, reader, 50)
    assert not world.fet_on("chg")  # no tick yet
    _step(world, reader, 100)
    assert world.fet_on("chg") and world.fet_on("dsg")


def test_status_json_over_the_uart_reads_the_simulated_pack():
    world, bms, reader = _boot()
    world.set_current(-20000)
    world.set_temp(0, 31.0)
    _step(world, reader, 500)
    lines = _console(world, reader, "status --json")
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert s["state"] == "normal"
    # pinned open-circuit voltages minus the drop across each cell's resistance
    for k, (got, ocv) in enumerate(zip(s["cells_mv"], (3300, 3310, 3290, 3305))):
        want = world.cell_true_mv(k)
        assert ocv - 30 < want < ocv - 5  # 20 A through about 0.5 mOhm plus the RC pair
        assert abs(got - want) <= 3, s["cells_mv"]
    assert abs(s["current_ma"] + 20000) <= 150
    assert abs(s["temps_c"][0] - 31.0) <= 0.5
    assert s["chg"] and s["dsg"]


def test_overvoltage_opens_chg_within_one_tick_of_its_delay():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    world.set_cell(3, 3700)
    t0 = world.now_ms
    while world.fet_on("chg"):
        _step(world, reader, 10)
        assert world.now_ms - t0 < 3000
    took = world.now_ms - t0
    assert 1000 <= took <= 1100 + 100, took  # 1 s delay, one tick late at most (+ tick phase)
    assert world.fet_on("dsg")


def test_short_circuit_alert_opens_fets_before_the_next_tick():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    assert world.fet_on("dsg")
    world.raise_alert()
    # The pin interrupt itself opened them: no time has passed.
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    _step(world, reader, 200)
    assert "scd" in bms.prot.names(bms.prot.active)
    world.release_alert()
    _step(world, reader, 2000)
    assert not world.fet_on("dsg")  # latched
    assert _console(world, reader, "clear") == ["ok released 1 latched fault"]
    _step(world, reader, 200)
    assert world.fet_on("dsg") and world.fet_on("chg")


def test_clear_while_the_short_is_still_there_keeps_fets_off():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    world.raise_alert()
    _step(world, reader, 200)
    _console(world, reader, "clear")
    _step(world, reader, 500)
    assert not world.fet_on("dsg") and not world.fet_on("chg")


def test_open_thermistor_opens_both_fets():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    world.set_fault("ntc_open", True, 1)
    _step(world, reader, 800)
    assert "sensor" in bms.prot.names(bms.prot.active)
    assert not world.fet_on("chg") and not world.fet_on("dsg")


def test_overcurrent_level2_at_the_sensor_limit():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    world.set_current(-105000)  # above ocd2 (100 A), inside the sensor's range
    _step(world, reader, 400)
    assert "ocd2" in bms.prot.names(bms.prot.active)
    assert not world.fet_on("dsg") and world.fet_on("chg")
    assert world.flowing_ma() == 0


def test_stopped_tick_lets_the_watchdog_reset_the_board():
    world, bms, reader = _boot()
    _step(world, reader, 10000)  # fed while ticking: no reset
    bms.timer.deinit()  # a hung protection loop
    try:
        _step(world, reader, 5000)
        reset = False
    except simworld.WatchdogReset:
        reset = True
    assert reset
    world.board_reset(machine.WDT_RESET)
    # After the reset every pin is back to its power-on state: FETs off.
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    world, bms, reader = _boot(world=world)
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    _step(world, reader, 300)
    s = json.loads(_console(world, reader, "status --json")[0])
    assert s["reset_cause"] == "WDT_RESET" and s["state"] == "normal"


def test_config_limit_beyond_the_current_sensor_is_refused():
    world, bms, reader = _boot()
    _step(world, reader, 200)
    out = _console(world, reader, "config set ocd2_ma 150000")
    assert out == ["error: ocd2_ma=150000 beyond what this board measures (below 110000)"]
    assert bms.cfg["ocd2_ma"] == 100000


def test_hot_board_opens_both_fets_and_recovers_below_hysteresis():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    s = json.loads(_console(world, reader, "status --json")[0])
    assert abs(s["board_c"] - 25.0) <= 0.5
    world.set_board_temp(82.0)
    _step(world, reader, 2500)
    assert "ot_board" in bms.prot.names(bms.prot.active)
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    world.set_board_temp(76.0)  # below the trip, not below trip - 5 degC
    _step(world, reader, 8000)
    assert not world.fet_on("dsg")
    world.set_board_temp(70.0)
    _step(world, reader, 5500)
    assert world.fet_on("chg") and world.fet_on("dsg")


def test_changing_the_tick_period_restarts_the_timer():
    world, bms, reader = _boot()
    _step(world, reader, 1000)
    n = bms.ticks
    assert _console(world, reader, "config set tick_ms 200")[0].startswith("ok")
    _step(world, reader, 2000)
    assert 9 <= bms.ticks - n <= 11


def test_short_present_at_power_up_keeps_fets_off():
    world = simworld.SimWorld.from_file(BOARD)
    world.raise_alert()  # comparator asserting before the firmware starts: no edge
    world, bms, reader = _boot(world=world)
    _step(world, reader, 1000)
    assert "scd" in bms.prot.names(bms.prot.active)
    assert not world.fet_on("chg") and not world.fet_on("dsg")


def test_reset_with_the_short_still_there_keeps_fets_off():
    world, bms, reader = _boot()
    _step(world, reader, 300)
    world.raise_alert()
    _step(world, reader, 200)
    world.board_reset(machine.SOFT_RESET)
    world, bms, reader = _boot(world=world)
    for _ in range(20):
        _step(world, reader, 50)
        assert not world.fet_on("chg") and not world.fet_on("dsg")


def test_first_boot_without_config_is_a_config_fault_with_a_working_console():
    world, bms, reader = _boot(save=False)
    _step(world, reader, 500)
    s = json.loads(_console(world, reader, "status --json")[0])
    assert s["faults"] == ["config"] and not s["chg"] and not s["dsg"]
    assert "missing" in s["config_problem"]
    assert bms.cfg["ocd2_ma"] < 110000  # the fallback respects the board's sensor
    assert _console(world, reader, "config save") == ["ok saved"]
    _step(world, reader, 300)
    assert world.fet_on("chg") and world.fet_on("dsg")


MUX16 = "boards/esp32_mux_16s.json"


def _board_file(changes):
    b = simworld.load_board(MUX16)
    changes(b)
    path = tmpdir() + "/board.json"
    with open(path, "w") as f:
        json.dump(b, f)
    return path, b


def test_board_file_reading_a_cell_twice_is_refused_before_any_fet_pin():
    # Tap 16 wired to mux input 3 as well: cell 16 would report cell 4's
    # voltage. The board is refused at boot and the gates stay undriven (off).
    from bms import board

    def twice(b):
        b["cell_taps"][15]["mux"] = 3

    path, b = _board_file(twice)
    world = machine.attach(simworld.SimWorld(b))
    try:
        board.build_afe(board.load(path))
        refused = ""
    except ValueError as e:
        refused = str(e)
    assert refused == "cell_taps[15]: mux input 3 out of range or used twice"
    assert b["fets"]["chg"] not in world.pin_out and b["fets"]["dsg"] not in world.pin_out
    assert not world.fet_on("chg") and not world.fet_on("dsg")


def test_a_pack_beyond_the_pack_divider_is_a_config_fault():
    # With a 1:25 divider the pin saturates at 60.6 V: 16 NMC cells tripping
    # at 4250 mV (68 V) could never be cross-checked, so that config is refused.
    from bms import config
    import main

    def divider25(b):
        b["pack_tap"]["scale"] = 25.0

    path, b = _board_file(divider25)
    world = machine.attach(simworld.SimWorld(b, simworld.default_pack(b, 16, "nmc")))
    cfg_path = tmpdir() + "/config.json"
    config.save(config.defaults("nmc", 16).with_values(b["config"]), cfg_path)
    bms, reader, _console = main.setup(path, cfg_path)
    assert bms.config_problem == "cells x cell_ov_mv = 68000 mV beyond the pack divider (below 60637 mV)"
    bms._clock = world.ticks_ms
    bms._last_ms = world.ticks_ms()
    _step(world, reader, 500)
    assert "config" in bms.prot.names(bms.prot.active)
    assert not world.fet_on("chg") and not world.fet_on("dsg")
    # the board as built (1:30) takes the same pack
    world = machine.attach(simworld.SimWorld.from_file(MUX16, simworld.default_pack(b, 16, "nmc")))
    bms, reader, _console = main.setup(MUX16, cfg_path)
    assert bms.config_problem == ""
