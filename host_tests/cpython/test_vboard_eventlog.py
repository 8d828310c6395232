"""The event log on the virtual board, through its pty: trips, recoveries,
state and config changes are on flash with the pack's state; the power is
cut in the middle of writing a record, the board comes back with
PWRON_RESET, and `log --json` still has every earlier event, the new boot,
and nothing garbled (the torn record is gone, its slot written again)."""
import json
import os

from test_vboard import Console, bmsctl, start_board  # noqa: F401  (start_board is a fixture)

KNOWN = {"boot", "trip", "clear", "state", "config_set", "config_save", "config_preset", "config_reload",
         "clear_cmd", "fet_cmd", "ship", "reset_cmd", "chip_reset", "full", "empty", "capacity", "lost"}


def _log(c):
    return json.loads(c.ask("log 256 --json", '{"events"'))


def _what(events):
    return [(e["event"], e["detail"]) for e in events]


def _sound(doc):
    assert doc["torn"] == 0 and doc["dropped"] == 0, doc
    seqs = [e["seq"] for e in doc["events"]]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    for e in doc["events"]:
        assert e["event"] in KNOWN, e
        assert e["detail"] is None or not e["detail"].startswith("?"), e
        assert e["cell_max_mv"] is None or 2500 <= e["cell_min_mv"] <= e["cell_max_mv"] <= 3800, e


def test_event_log_survives_a_power_cut_mid_write(start_board, tmp_path):
    link, proc = start_board("--speed", "max")
    with Console(link) as c:
        c.step(1)
        orig = c.sim()["cells_mv"][0]
        c.sim_ok("sim cell 1 3700")
        c.step(1.5)  # cell_ov trips after its 1 s
        assert c.status()["faults"] == ["cell_ov"]
        c.sim_ok("sim cell 1 %d" % orig)
        c.sim_ok("sim cell 1 free")  # follows its charge again from there
        c.step(3)  # recovers after 2 s
        assert c.status()["faults"] == []
        assert c.ask("config set bal_delta_mv 12", "ok ").startswith("ok bal_delta_mv = 12")
        before = _log(c)
        _sound(before)
        assert _what(before["events"]) == [
            ("boot", "PWRON_RESET"), ("state", "normal"), ("trip", "cell_ov"), ("state", "discharge"),
            ("clear", "cell_ov"), ("state", "normal"), ("config_set", "bal_delta_mv")]
        trip = before["events"][2]
        assert trip["value"] >= 3650 and trip["cell_max_mv"] >= 3650 and trip["boot"] == 1
        assert 1 <= trip["uptime_s"] <= 3 and trip["temp_c"] is not None and trip["pack_mv"] > 16 * 3000

        # The power fails 13 bytes into writing the next record (the FET command's).
        c.sim_ok("sim power cut write 13")
        c.send("fet dsg off")
        c.lines_until("*** power cut during a 32-byte flash write, after 13 bytes", skip_banner=False)
        n = len(before["events"])
        with open(str(tmp_path / "fs0" / "events.bin"), "rb") as f:  # paused: nothing written since
            slot = f.read()[(n + 1) * 32:(n + 2) * 32]
        assert slot[:4] == (n + 1).to_bytes(4, "little") and slot[4] == 10  # seq, fet_cmd ...
        assert slot[13:] == bytes(19)  # ... and no more: a torn record
        c.step(1)
        s = c.status()
        assert s["reset_cause"] == "PWRON_RESET" and s["state"] == "normal"
        sim = c.sim()
        assert sim["resets"] == 1 and sim["reset_cause"] == 1 and sim["dsg"]  # the command died with the power
        after = _log(c)
        _sound(after)
        assert after["events"][:n] == before["events"]  # every earlier record, unchanged
        new = after["events"][n:]
        assert _what(new) == [("boot", "PWRON_RESET"), ("state", "normal")]
        assert new[0]["seq"] == n + 1 and new[0]["boot"] == 2  # the torn slot, written again

        # A cut with no write going on: the next boot is number 3.
        c.sim_ok("sim power cut")
        c.lines_until("*** power cut at", skip_banner=False)
        c.step(1)
        doc = _log(c)
        _sound(doc)
        assert [(e["boot"], e["detail"]) for e in doc["events"] if e["event"] == "boot"] == [
            (1, "PWRON_RESET"), (2, "PWRON_RESET"), (3, "PWRON_RESET")]

        r = bmsctl("--port", link, "log", "3")  # the host client reads the same log
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        last = doc["events"][-1]
        assert len(lines) == 3 and lines[-1].startswith("#%d boot 3 +%ds state normal from boot pack=" % (
            last["seq"], last["uptime_s"])), lines
    assert os.path.getsize(str(tmp_path / "fs0" / "events.bin")) == 256 * 32
