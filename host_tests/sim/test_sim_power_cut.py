# `sim power cut` and the simulated flash (tools/sim/flash.py): a cut now
# stops the board where it next lets time pass; an armed cut tears the
# firmware's next write after the given bytes; files outside the firmware's
# folder and reads are never touched. Both interpreters.
import builtins

import flash
import machine
import simcmd
import simworld
from helpers import tmpdir

MUX16 = "boards/esp32_mux_16s.json"


def _world():
    w = simworld.SimWorld(simworld.load_board(MUX16))
    w.wait_input = lambda ms: None
    return w, simcmd.SimCommands(w)


def _raises_power_cut(fn):
    try:
        fn()
    except simworld.PowerCut:
        return True
    return False


def test_power_cut_now_stops_the_board_until_it_restarts():
    w, c = _world()
    assert c.run("sim power cut") == ["sim: power cut"]
    assert _raises_power_cut(lambda: w.advance(10))
    assert _raises_power_cut(w.idle)  # stays off: a swallowed exception does not revive it
    w.board_reset(simworld.PWRON_RESET)
    w.advance(10)
    assert w.reset_cause == simworld.PWRON_RESET and w.resets == 1


def test_armed_cut_tears_the_next_write_in_the_firmware_folder_only():
    d = tmpdir()
    w, c = _world()
    fl = flash.Flash(w, d + "/config.json").install()
    try:
        with open(d + "/../outside.txt", "w") as f:  # another folder: never wrapped
            f.write("x")
        with open(d + "/events.bin", "wb") as f:
            f.write(b"A" * 32)
        assert c.run("sim power cut write 13") == ["sim: power cut armed: during the next flash write, after 13 bytes of it"]
        assert c.state()["power_cut_write"] == 13
        f = open(d + "/events.bin", "r+b")
        assert f.read(4) == b"AAAA"  # reads pass
        f.seek(0)
        assert _raises_power_cut(lambda: f.write(b"B" * 32))
        assert fl.torn == [(32, 13)]
        assert _raises_power_cut(lambda: f.write(b"C"))  # the board is off
        fl.reset()  # the restart closes what was open
        w.board_reset(simworld.PWRON_RESET)
        assert fl.files == [] and w.power_cut_write is None and not w.power_off
        with open(d + "/events.bin", "rb") as f:
            assert f.read() == b"B" * 13 + b"A" * 19
        with open(d + "/events.bin", "r+b") as f:  # powered again: writes land whole
            f.write(b"D" * 32)
        with open(d + "/events.bin", "rb") as f:
            assert f.read() == b"D" * 32
    finally:
        fl.uninstall()
    assert builtins.open is flash._open


def test_armed_cut_default_is_half_and_cancel_disarms():
    d = tmpdir()
    w, c = _world()
    fl = flash.Flash(w, d + "/config.json").install()
    try:
        c.run("sim power cut write")
        c.run("sim power cut cancel")
        with open(d + "/config.json.tmp", "w") as f:
            f.write("0123456789")
        assert fl.torn == []
        c.run("sim power cut write")
        f = open(d + "/config.json.tmp", "w")
        assert _raises_power_cut(lambda: f.write("0123456789"))
        fl.reset()
        with open(d + "/config.json.tmp") as f:
            assert f.read() == "01234"
    finally:
        fl.uninstall()


def test_bad_power_commands_one_error_line_nothing_changes():
    w, c = _world()
    for line in ("sim power", "sim power on", "sim power cut now", "sim power cut write x", "sim power cut write -1",
                 "sim power cut write 70000", "sim power cut write 1 2", "sim power cut cancel 1"):
        r = c.run(line)
        assert len(r) == 1 and r[0].startswith("error: "), (line, r)
        assert not w.power_off and w.power_cut_write is None, line
    assert "power" in simcmd.COMMANDS and any("sim power cut" in h for h in simcmd.HELP)
    machine.attach(None)
