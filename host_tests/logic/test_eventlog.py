# The event log as the owner reads it: what the tick and the console record,
# with the pack's state at the moment, on flash across reboots and power cuts
# mid-write; `log` on the console.
import json

import micropython

from bms import config, eventlog
from bms.afe import ChipReset
from bms.eventlog import EventLog
from helpers import FakeAfe, boot_bms, make_bms, saved_config, tmpdir
from test_console import Term
from test_store import FakeFlash


def run(bms, ticks):
    # The main loop: a tick, then the main-loop work (where the log is written).
    period = bms.cfg["tick_ms"]
    for _ in range(ticks):
        bms.clock.now += period
        bms.tick()
        bms.service()


def _events(bms, n=50):
    bms.service()
    return list(bms.events.latest(n))


def _what(recs):
    return [(r["event"], r["detail"]) for r in recs]


# ---- from the tick -------------------------------------------------------------------


def test_trip_clear_and_state_changes_reach_flash_with_the_pack_state():
    bms, afe = make_bms()
    afe.current_ma = 2500
    run(bms, 3)
    afe.cells_mv[1] = 3700
    run(bms, 12)  # cell_ov trips after its 1 s
    afe.cells_mv[1] = 3400
    run(bms, 25)  # recovers after 2 s
    recs = _events(bms)
    assert _what(recs) == [("boot", "unknown"), ("state", "normal"), ("trip", "cell_ov"), ("state", "discharge"),
                           ("clear", "cell_ov"), ("state", "normal")]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6]
    trip = recs[2]
    assert trip["value"] == 3700 and trip["cell_max_mv"] == 3700 and trip["cell_min_mv"] == 3300
    assert trip["pack_mv"] == 13600 and trip["current_ma"] == 2500 and trip["temp_c"] == 25
    assert trip["boot"] == 1 and 1 <= trip["uptime_s"] <= 2
    assert recs[3]["value"] == 4  # from normal (index in STATE_NAMES)
    assert recs[4]["value"] == 3400
    assert all(r["soc_pct"] is None or 0 <= r["soc_pct"] <= 100 for r in recs)
    assert list(recs[0]) == list(eventlog.FIELDS) or sorted(recs[0]) == sorted(eventlog.FIELDS)


def test_boot_records_the_reset_cause_and_counts_boots():
    path = saved_config(tmpdir())
    bms, afe = boot_bms(path)
    bms.reset_cause = "PWRON_RESET"
    run(bms, 2)
    bms, afe = boot_bms(path)  # the board restarts
    bms.reset_cause = "WDT_RESET"
    run(bms, 2)
    recs = _events(bms)
    boots = [(r["boot"], r["detail"]) for r in recs if r["event"] == "boot"]
    assert boots == [(1, "PWRON_RESET"), (2, "WDT_RESET")]
    assert [r["boot"] for r in recs] == [1, 1, 2, 2]  # boot + state normal each time


def test_boot_without_a_reading_says_so():
    afe = FakeAfe()
    afe.fail = OSError(5)  # the front-end does not answer
    bms, afe = make_bms(afe)
    run(bms, 8)  # afe_comm trips after its 0.5 s
    recs = _events(bms)
    assert _what(recs) == [("boot", "unknown"), ("trip", "afe_comm")]
    assert recs[0]["cell_max_mv"] is None and recs[0]["pack_mv"] is None and recs[0]["current_ma"] is None
    assert recs[0]["temp_c"] is None


class _Resets(FakeAfe):
    def __init__(self):
        FakeAfe.__init__(self)
        self.reset_now = False

    def read(self, m):
        if self.reset_now:
            self.reset_now = False
            raise ChipReset()
        return FakeAfe.read(self, m)


def test_chip_reset_is_logged():
    bms, afe = make_bms(_Resets())
    run(bms, 3)
    afe.reset_now = True
    run(bms, 30)
    recs = _events(bms)
    what = _what(recs)
    assert ("chip_reset", None) in what and ("trip", "sensor") in what
    assert [r["value"] for r in recs if r["event"] == "chip_reset"] == [1]


def test_tick_queues_events_with_the_heap_locked():
    afe = FakeAfe(cells=16, temps=4)
    bms, afe = make_bms(afe, cells=16)
    afe.cells_mv = [3300 + 7 * i for i in range(16)]
    afe.current_ma = 12000
    run(bms, 50)  # steady state, log file open
    before = bms.events.ring.next_seq
    # MicroPython: any allocation raises MemoryError, which fails the tick.
    micropython.heap_lock()
    try:
        for i in range(40):
            bms.clock.now += 100
            afe.cells_mv[3] = 3700 if i < 15 else 3330
            bms.tick()
    finally:
        micropython.heap_unlock()
    assert bms.tick_errors == 0, bms.last_error
    assert bms.events.pending() == 4 and bms.events.dropped == 0
    recs = [r for r in _events(bms) if r["seq"] >= before]
    assert _what(recs) == [("trip", "cell_ov"), ("state", "discharge"), ("clear", "cell_ov"), ("state", "normal")]
    assert recs[0]["value"] == 3700 and recs[0]["current_ma"] == 12000


# ---- the queue and flash --------------------------------------------------------------


def _ctx(q, i):
    q[i] = 100
    q[i + 1] = 13200
    q[i + 2] = -1500
    q[i + 3] = 3290
    q[i + 4] = 3310
    q[i + 5] = 254  # 25.4 C


def test_full_queue_counts_lost_events_and_logs_how_many():
    fl = FakeFlash()
    log = EventLog("/events.bin", _ctx, lambda: 55, fl.open)
    for k in range(40):
        log.push_tick(eventlog.EV_TRIP, 0, k)
    assert log.dropped == 8 and log.pending() == 32
    log.flush()
    recs = list(log.latest(256))
    assert [r["value"] for r in recs[:32]] == list(range(32))
    assert (recs[-1]["event"], recs[-1]["value"]) == ("lost", 8)
    assert len(recs) == 33 and log.pending() == 0
    r = recs[0]
    assert (r["uptime_s"], r["pack_mv"], r["current_ma"], r["cell_min_mv"], r["cell_max_mv"], r["soc_pct"],
            r["temp_c"]) == (100, 13200, -1500, 3290, 3310, 55, 25)
    log.push_tick(eventlog.EV_TRIP, 1, 1)  # room again
    log.flush()
    assert log.dropped == 8 and list(log.latest(1))[0]["detail"] == "cell_uv"


def test_power_cut_at_every_byte_of_an_event_write_keeps_the_older_events():
    base = FakeFlash()
    log = EventLog("/events.bin", _ctx, None, base.open)
    for k in range(5):
        log.push_tick(eventlog.EV_TRIP, k, k)
    log.flush()
    for cut in range(eventlog.REC_SIZE):
        fl = base.copy()
        log = EventLog("/events.bin", _ctx, None, fl.open)
        log.open()
        log.push_tick(eventlog.EV_STATE, 1, 4)
        fl.cut_after(cut)
        try:
            log.flush()
            assert False, "no power cut"
        except OSError:
            pass
        fl.power_on()  # the board boots again
        log = EventLog("/events.bin", _ctx, None, fl.open)
        log.open()
        recs = list(log.latest(256))
        assert [(r["event"], r["value"]) for r in recs] == [("trip", k) for k in range(5)], cut
        assert log.boot == 2 and log.ring.skipped == 0
        log.push_tick(eventlog.EV_BOOT, 0, 0)
        log.flush()
        recs = list(log.latest(256))
        assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5, 6], cut  # the torn slot is written again
        assert (recs[-1]["event"], recs[-1]["detail"], recs[-1]["boot"]) == ("boot", "PWRON_RESET", 2)


def test_flash_failure_keeps_events_queued_and_is_counted():
    afe = FakeAfe()
    bms, afe = boot_bms(saved_config(tmpdir()), afe)
    bms.events.path = "/nonexistent-openbms-dir/events.bin"
    run(bms, 3)  # service() after each tick: the first write fails, retried after 1 s
    assert bms.service_errors == 1 and bms.events.pending() == 2
    assert "service" in bms.last_error
    assert afe.chg and afe.dsg  # protection goes on regardless


class _Clock:
    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now

    def ticks_diff(self, a, b):
        return a - b


def test_a_failing_flash_is_left_alone_longer_each_time_and_retried_soon_once_it_works():
    def broken(path, mode):
        raise OSError(5)

    clock = _Clock()
    real = eventlog.time
    eventlog.time = clock
    try:
        log = EventLog("/events.bin", _ctx, None, broken)
        log.push(eventlog.EV_SHIP)
        tries = []
        for ms in range(0, 40000, 100):
            clock.now = ms
            try:
                log.flush()
            except OSError:
                tries.append(ms)
        # push() tried at 0 already; then 1 s, 2 s, 4 s ... apart.
        assert tries[0] == 1000, tries
        gaps = [b - a for a, b in zip(tries, tries[1:])]
        assert gaps[:4] == [2000, 4000, 8000, 16000], gaps
        fl = FakeFlash()
        log._opener = fl.open  # the flash works again
        clock.now += 60000
        log.flush()
        assert log.pending() == 0 and log._retry_ms == 1000
    finally:
        eventlog.time = real


def test_wrap_around_keeps_the_newest_256():
    fl = FakeFlash()
    log = EventLog("/events.bin", _ctx, None, fl.open)
    for k in range(300):
        log.push_tick(eventlog.EV_CAPACITY, 0, k)
        log.flush()
    log = EventLog("/events.bin", _ctx, None, fl.open)
    recs = list(log.latest(256))
    assert [r["value"] for r in recs] == list(range(44, 300))
    assert recs[0]["seq"] == 45 and recs[-1]["seq"] == 300
    assert len(fl.files["/events.bin"]) == 256 * 32


def test_every_config_key_has_a_stable_number():
    assert len(set(eventlog.CONFIG_KEYS)) == len(eventlog.CONFIG_KEYS)
    for key in config.KEYS:
        assert key in eventlog.CONFIG_KEYS, "append %s to eventlog.CONFIG_KEYS" % key


def test_events_file_sits_beside_the_config():
    assert eventlog.path_beside("/config.json") == "/events.bin"
    assert eventlog.path_beside("sim-fs/b/config.json") == "sim-fs/b/events.bin"
    assert eventlog.path_beside("config.json") == "events.bin"


# ---- the console -------------------------------------------------------------------------


def _console():
    bms, afe = make_bms()
    run(bms, 3)
    return bms, afe, Term(bms)


def test_console_commands_that_change_things_are_logged():
    bms, afe, t = _console()
    assert t.cmd("config set bal_delta_mv 10")[0].startswith("ok")
    assert t.cmd("config set chemistry nmc")[0].startswith("ok")
    assert t.cmd("config preset lfp")[0].startswith("ok")
    assert t.cmd("config save") == ["ok saved"]
    assert t.cmd("config reload") == ["ok reloaded"]
    assert t.cmd("fet chg off") == ["ok chg off"]
    run(bms, 1)
    assert t.cmd("fet all on") == ["ok all on"]
    assert t.cmd("clear")[0].startswith("ok")
    assert t.cmd("fet ship")[0].startswith("ok")
    assert t.cmd("config set bal_delta_mv 9000")[0].startswith("error")  # refused: not logged
    recs = _events(bms)[2:]  # after boot and state normal
    assert [(r["event"], r["detail"], r["value"]) for r in recs] == [
        ("config_set", "bal_delta_mv", 10), ("config_set", "chemistry", 1), ("config_preset", "lfp", 0),
        ("config_save", None, 0), ("config_reload", None, 0), ("fet_cmd", "chg", 0),
        ("state", "discharge", 4), ("fet_cmd", "all", 1), ("clear_cmd", None, 0), ("ship", None, 0)]


def test_reset_command_is_on_flash_before_the_reset():
    bms, afe, t = _console()
    seen = []

    def reset():
        log = EventLog(bms.events.path, _ctx)  # what a fresh boot would read
        seen.extend(r["event"] for r in log.latest(5))
        log.ring.close()

    bms.reset_fn = reset
    assert t.cmd("reset") == ["ok resetting"]
    assert seen[-1] == "reset_cmd"


def test_log_text_lines():
    bms, afe, t = _console()
    afe.cells_mv[1] = 3700
    afe.current_ma = 12000
    run(bms, 12)
    lines = t.cmd("log")
    assert len(lines) == 4, lines
    assert lines[0].startswith("#1 boot 1 +0s boot unknown pack=13200mV I=+0.0A cells 3300..3300mV soc ")
    assert lines[2].startswith("#3 boot 1 +1s trip cell_ov value=3700 pack=13600mV I=+12.0A cells 3300..3700mV soc ")
    assert lines[2].endswith(" 25C"), lines[2]
    assert "state discharge from normal" in lines[3]
    assert t.cmd("log 2") == lines[2:]
    assert t.cmd("log 256") == lines


def test_log_json_is_one_line():
    bms, afe, t = _console()
    doc = t.json("log --json")
    assert doc["torn"] == 0 and doc["dropped"] == 0
    assert [(e["event"], e["detail"]) for e in doc["events"]] == [("boot", "unknown"), ("state", "normal")]
    e = doc["events"][0]
    assert sorted(e) == sorted(eventlog.FIELDS)
    assert (e["seq"], e["boot"], e["pack_mv"], e["cell_max_mv"], e["temp_c"]) == (1, 1, 13200, 3300, 25)
    assert t.json("log 1 --json")["events"] == doc["events"][1:]


def test_log_shows_torn_records_and_lost_events():
    bms, afe, t = _console()
    t.cmd("fet chg off")
    run(bms, 1)
    bms.events.ring.close()
    with open(bms.events.path, "r+b") as f:  # damage record #2 (slot 2) on flash
        f.seek(2 * 32 + 10)
        f.write(b"\x55")
    bms.events.ring = None  # as after a reboot
    for _ in range(40):
        bms.events.push_tick(eventlog.EV_TRIP, 0, 1)
    lines = t.cmd("log 256")
    assert lines[-2:] == ["(1 torn record skipped)", "(8 events lost since boot: queue full or flash failing)"]
    doc = t.json("log 256 --json")
    assert doc["torn"] == 1 and doc["dropped"] == 8
    assert 2 not in [e["seq"] for e in doc["events"]]


def test_log_bad_arguments_one_error_line():
    bms, afe, t = _console()
    before = bms.events.ring.next_seq
    for line in ("log 0", "log 257", "log x", "log -3", "log 1 2", "log 2.5"):
        out = t.cmd(line)
        assert len(out) == 1 and out[0].startswith("error: "), (line, out)
    assert t.cmd("log x") == ["error: log N must be 1..256, got 'x'"]
    assert bms.events.ring.next_seq == before


def test_log_on_an_empty_log():
    bms, afe = make_bms()
    t = Term(bms)
    assert t.cmd("log") == ["log empty"]
    assert t.json("log --json") == {"events": [], "torn": 0, "dropped": 0}


def test_help_lists_log():
    bms, afe, t = _console()
    assert any(line.strip().startswith("log [N]") for line in t.cmd("help"))
    json.loads(t.cmd("help --json")[0])
