# The console as a user types into it: commands, JSON lines, and bad input
# that gets one error line and changes nothing.
import json

from bms.console import Console, MAX_LINE
from bms.reader import UartReader
from helpers import make_bms, run


class Term:
    def __init__(self, bms):
        self.out = []
        self.console = Console(bms, self.out.append)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.out.clear() if hasattr(self.out, "clear") else self.out.__init__()
        self.console.feed(data)
        return "".join(self.out).split("\r\n")[:-1]

    def cmd(self, line):
        return self.send(line + "\r\n")

    def json(self, line):
        lines = self.cmd(line)
        assert len(lines) == 1, lines
        return json.loads(lines[0])


def _setup():
    bms, afe = make_bms()
    run(bms, 3)
    return bms, afe, Term(bms)


STATUS_KEYS = ("state", "cells_mv", "pack_mv", "current_ma", "temps_c", "soc_pct", "chg", "dsg",
               "faults", "warnings", "balancing", "uptime_s")


def test_status_json_is_one_line_with_all_fields():
    bms, afe, t = _setup()
    afe.current_ma = -2500
    afe.cells_mv = [3300, 3310, 3320, 3330]
    run(bms, 1)
    s = t.json("status --json")
    for k in STATUS_KEYS:
        assert k in s, k
    assert s["state"] == "normal"
    assert s["cells_mv"] == [3300, 3310, 3320, 3330]
    assert s["pack_mv"] == 13260
    assert s["current_ma"] == -2500
    assert s["temps_c"] == [25.0, 25.0]
    assert s["chg"] is True and s["dsg"] is True
    assert s["faults"] == [] and s["warnings"] == []
    assert s["balancing"] == []
    assert 0 <= s["soc_pct"] <= 100


def test_status_json_reports_faults_by_name():
    bms, afe, t = _setup()
    afe.cells_mv[1] = 3700
    run(bms, 11)
    s = t.json("status --json")
    assert s["faults"] == ["cell_ov"]
    assert s["chg"] is False and s["dsg"] is True
    assert s["state"] == "discharge"


def test_other_read_commands_take_json_flag():
    bms, afe, t = _setup()
    assert t.json("cells --json")["cells_mv"] == [3300] * 4
    assert t.json("temps --json")["temps_c"] == [25.0, 25.0]
    assert t.json("faults --json")["faults"] == []
    assert t.json("config get --json")["cell_ov_mv"] == 3650
    assert t.json("config get cell_ov_mv --json") == {"cell_ov_mv": 3650}
    assert len(t.json("table --json")["rows"]) == 14
    assert t.json("version --json")["firmware"]


def test_human_status_and_help():
    bms, afe, t = _setup()
    out = t.cmd("status")
    assert out[0].startswith("state normal  CHG on  DSG on")
    assert "pack 13.20 V" in out[1]
    assert any(l.strip().startswith("config set KEY VALUE") for l in t.cmd("help"))
    assert t.cmd("cells")[-1] == "delta 0 mV"


def test_config_set_applies_and_save_persists():
    bms, afe, t = _setup()
    assert t.cmd("config set cell_ov_mv 3600")[0].startswith("ok cell_ov_mv = 3600")
    assert bms.cfg["cell_ov_mv"] == 3600
    assert bms.prot.table.trip[0] == 3600
    assert t.cmd("config save") == ["ok saved"]
    assert t.cmd("config set cell_ov_mv 3620")[0].startswith("ok")
    assert t.cmd("config reload") == ["ok reloaded"]
    assert bms.cfg["cell_ov_mv"] == 3600


def test_config_preset_switches_chemistry():
    bms, afe, t = _setup()
    assert t.cmd("config preset nmc")[0].startswith("ok nmc")
    assert bms.cfg["chemistry"] == "nmc" and bms.cfg["cell_ov_mv"] == 4250


def test_fet_commands():
    bms, afe, t = _setup()
    assert t.cmd("fet dsg off") == ["ok dsg off"]
    run(bms, 1)
    assert not afe.dsg and afe.chg
    assert t.json("fet --json")["state"] == "charge"
    afe.cells_mv[0] = 3700
    run(bms, 11)
    assert t.cmd("fet chg on") == ["error: refused: CHG held off by cell_ov"]
    assert t.cmd("fet ship")[0].startswith("ok ship")
    run(bms, 1)
    assert bms.fets.state_name() == "shutdown"


def test_clear_releases_latched_short():
    from bms.afe import HW_SCD

    bms, afe, t = _setup()
    afe.hw_faults = HW_SCD
    run(bms, 1)
    afe.hw_faults = 0
    assert t.cmd("clear") == ["ok released 1 latched fault"]
    run(bms, 1)
    assert afe.dsg


def _state(bms):
    return (bms.cfg.values(), bytes(bms.prot.active), bms.fets.want, bms.fets.ship)


BAD = (
    ("frobnicate", "error: unknown command 'frobnicate' (try 'help')"),
    ("status now", "error: unexpected argument 'now'"),
    ("config", "error: config needs get, set, preset, save or reload"),
    ("config set cell_ov_mv", "error: usage: config set KEY VALUE"),
    ("config set cell_ov_mv 9000", "error: cell_ov_mv=9000 out of range 2000..3800 (lfp)"),
    ("config set cell_ov_mv 3.6", "error: cell_ov_mv needs an integer, got 3.6"),
    ("config set cells 8", "error: cells=8 out of range 1..4 (this board)"),
    ("config set bogus 1", "error: unknown key bogus (see 'config get')"),
    ("config preset lead", "error: chemistry=lead not one of lfp, nmc, lto"),
    ("fet chg maybe", "error: usage: fet [chg|dsg|all on|off | ship]"),
    ("fet", None),
    ("--json", "error: --json needs a command"),
    ("__init__", "error: unknown command '__init__' (try 'help')"),
)


def test_bad_commands_get_one_error_line_and_change_nothing():
    bms, afe, t = _setup()
    for line, want in BAD:
        before = _state(bms)
        out = t.cmd(line)
        assert _state(bms) == before, line
        if want is not None:
            assert out == [want], (line, out)


def test_over_long_line_is_rejected_whole():
    bms, afe, t = _setup()
    before = _state(bms)
    out = t.send(b"config set cell_ov_mv 3600" + b" " * MAX_LINE + b"\n")
    assert out == ["error: line too long (max %d bytes)" % MAX_LINE]
    assert _state(bms) == before
    # the console is usable again right after
    assert t.cmd("config get cell_ov_mv") == ["cell_ov_mv = 3650"]


def test_non_utf8_and_control_bytes_are_rejected():
    bms, afe, t = _setup()
    before = _state(bms)
    for junk in (b"fet \xff\xfe off\n", b"fet dsg \x00off\n", "fet dsg \u00e9\n".encode()):
        out = t.send(junk)
        assert len(out) == 1 and out[0].startswith("error: line has non-printable"), out
    assert _state(bms) == before


def test_bytes_arriving_in_pieces_and_crlf_variants():
    bms, afe, t = _setup()
    t.out.clear() if hasattr(t.out, "clear") else None
    c = t.console
    for piece in (b"fe", b"t ds", b"g off", b"\r", b"\n"):
        c.feed(piece)
    assert bms.fets.want == 1
    assert t.send(b"fet dsg on\n") == ["ok dsg on"]
    assert t.send(b"\r\n\r\n") == []
    assert t.send(b"fet dsg off\rfet dsg on\n") == ["ok dsg off", "ok dsg on"]


def test_backspace_edits_the_line():
    bms, afe, t = _setup()
    assert t.send(b"statx\x7fus --json\n")[0].startswith("{")


class FakeUart:
    def __init__(self):
        self.rx = bytearray()

    def any(self):
        return len(self.rx)

    def readinto(self, buf):
        n = min(len(buf), len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n


def test_reader_routes_lines_to_console_and_frames_by_start_byte():
    bms, afe, t = _setup()
    uart = FakeUart()
    r = UartReader(uart, t.console, size=8)
    got = []

    class Frame:  # a protocol whose frames are 4 bytes from 0xA5
        def __init__(self):
            self.n = 0

        def feed(self, data):
            take = min(4 - self.n, len(data))
            got.append(bytes(data[:take]))
            self.n += take
            if self.n < 4:
                return None
            self.n = 0
            return data[take:]

    r.register(0xA5, Frame())
    uart.rx = bytearray(b"\xa5\x01\x02\x03fet dsg off\n")
    while r.poll():
        pass
    assert b"".join(got) == b"\xa5\x01\x02\x03"
    assert bms.fets.want == 1


def test_clear_with_the_short_still_there_is_an_error():
    from bms.afe import HW_SCD

    bms, afe, t = _setup()
    afe.hw_faults = HW_SCD
    afe.short_present = True
    run(bms, 1)
    assert t.cmd("clear") == ["error: scd still present: remove the cause, then 'clear'"]


def test_status_json_keys_come_in_documented_order():
    bms, afe, t = _setup()
    line = t.cmd("status --json")[0]
    pos = [line.index('"%s":' % k) for k in STATUS_KEYS]
    assert pos == sorted(pos), line


def test_soc_shows_health_and_counters_and_set_overrides_it():
    bms, afe, t = _setup()
    d = t.json("soc --json")
    for key in ("soc_pct", "sigma_pct", "soh_pct", "capacity_mah", "rated_mah", "cycles", "ah_in", "ah_out",
                "full_charges", "offset_ma", "r0_mohm"):
        assert key in d, key
    assert d["soh_pct"] == 100.0 and d["capacity_mah"] == d["rated_mah"]
    lines = t.cmd("soc")
    assert lines[0].startswith("SOC %d %%" % d["soc_pct"]) and "SOH 100.0 %" in lines[0]
    assert t.cmd("soc set 37") == ["ok soc 37%"]
    assert t.json("status --json")["soc_pct"] == 37
    assert [d["event"] for d in bms.events.latest(1)] == ["soc_set"]
    for bad in ("soc set 101", "soc set x", "soc set", "soc reset 5", "soc set 5 6"):
        out = t.cmd(bad)
        assert len(out) == 1 and out[0].startswith("error: "), (bad, out)
    assert t.json("status --json")["soc_pct"] == 37  # changed nothing
