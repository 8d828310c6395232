"""The scenario library, run headless on the virtual board (the unmodified
firmware under MicroPython) exactly as `python -m tools.scenario run` does."""
import json
import os

import pytest

from tools import scenario

LIBRARY = scenario.library()

# The library the virtual-board issue asks for, by file name.
REQUIRED = ("solar_day", "charger_fault_overcharge", "deep_discharge_night", "cold_morning_charge", "shorted_load",
            "weak_cell", "afe_comm_loss", "thermistor_open", "watchdog_starvation")


def _name(path):
    return os.path.splitext(os.path.basename(path))[0]


def test_the_library_has_every_required_scenario():
    names = {_name(p) for p in LIBRARY}
    assert set(REQUIRED) <= names, sorted(set(REQUIRED) - names)


@pytest.mark.parametrize("path", LIBRARY, ids=_name)
def test_library_scenario_meets_its_expectations(path, tmp_path):
    code, res = scenario.run_one(path, str(tmp_path), png=True, quiet=True)
    assert res is not None, "the run produced no result (exit code %d)" % code
    failed = [r for r in res["expectations"] if not r["passed"]]
    assert code == 0 and res["passed"] and not failed, failed
    with open(path) as f:
        sc = json.load(f)
    assert len(res["expectations"]) == len(sc["expect"]) > 0
    assert res["sim_s"] >= scenario_duration(sc)
    with open(tmp_path / "log.csv") as f:
        header = f.readline().strip().split(",")
        rows = f.readlines()
    assert "true_soc_pct" in header and "cell1_mv" in header and len(rows) >= 5
    with open(tmp_path / "plot.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def scenario_duration(sc):
    return sc["duration_s"] if "duration_s" in sc else sc["duration_h"] * 3600


def _write(tmp_path, sc):
    path = tmp_path / "sc.json"
    path.write_text(json.dumps(sc))
    return str(path)


def _charging(expect):
    return {"name": "t", "board": "esp32_adc_4s", "duration_s": 120, "sample_s": 10,
            "pack": {"soc_pct": 90}, "profile": [{"type": "constant", "amps": 20}], "expect": expect}


def test_an_unmet_expectation_fails_the_run_and_says_what_was_seen(tmp_path):
    path = _write(tmp_path, _charging([{"expect": "cell_max_below", "mv": 3300}, {"expect": "no_fault"}]))
    code, res = scenario.run_one(path, str(tmp_path / "out"), png=False, quiet=True)
    assert code == 1 and not res["passed"]
    first, second = res["expectations"]
    assert not first["passed"] and first["detail"].startswith("highest cell 3")
    assert second["passed"]


def test_runs_are_deterministic(tmp_path):
    path = os.path.join(scenario.LIBRARY, "shorted_load.json")
    logs = []
    for k in range(2):
        scenario.run_one(path, str(tmp_path / str(k)), png=False, quiet=True)
        with open(tmp_path / str(k) / "log.csv") as f:
            logs.append(f.read())
    assert logs[0] == logs[1]


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "scenario: unknown key colour"),
    ({"duration_s": -5}, "scenario: the duration must be positive"),
    ({"profile": [{"type": "wind"}]}, "profile[0]: type must be one of"),
    ({"expect": [{"expect": "fet_off", "fet": "chg"}]}, "expect[0]: after is missing"),
    ({"expect": [{"expect": "fet_off", "fet": "xyz", "after": {"at_s": 1}, "within_s": 1}]}, "expect[0]: fet must be one of"),
    ({"actions": [{"at_s": 1}]}, "actions[0]: give one of sim, console"),
    ({"actions": [{"at_s": 1, "sim": "explode now"}]}, "actions[0]: unknown sim command explode"),
    ({"sample_s": 0}, "scenario: sample_s must be a number from 0.1"),
    ({"pack": {"soc_pct": 500}}, "pack: soc_pct must be a number from 0 to 100"),
    ({"profile": [{"type": "constant", "amps": "x"}]}, "profile[0]: amps must be a number"),
    ({"expect": [{"expect": "fet_off", "fet": "chg", "after": {"cell": 9, "above_mv": 3650}, "within_s": 1}]},
     "expect[0]: cell 9, but the pack has 4 cells"),
    ({"expect": [{"expect": "fet_state", "at_s": 5}]}, "expect[0]: fet_state needs chg and/or dsg"),
    ({"expect": [{"expect": "resets"}]}, "expect[0]: resets needs min and/or max"),
    ({"expect": [{"expect": "bled", "cells": []}]}, "expect[0]: cells must be a list of cell numbers"),
    ({"expect": [{"expect": "bled", "cells": [2, 5]}]}, "expect[0]: cell 5, but the pack has 4 cells"),
    ({"expect": [{"expect": "soc_spread_below"}]}, "expect[0]: pct is missing"),
    ({"expect": [{"expect": "soc_within", "pct": 5, "rms_pct": -1}]}, "expect[0]: rms_pct must be a number"),
], ids=["unknown-key", "negative-duration", "bad-source", "missing-condition", "bad-fet", "empty-action",
        "unknown-sim-command", "zero-sample", "soc-out-of-range", "amps-not-a-number", "cell-beyond-pack",
        "fet-state-without-fet", "resets-without-bounds", "bled-without-cells", "bled-cell-beyond-pack",
        "soc-spread-without-pct", "soc-rms-negative"])
def test_a_bad_scenario_is_a_one_line_error(tmp_path, change, message, capsys):
    sc = _charging([{"expect": "no_fault"}])
    sc.update(change)
    code, res = scenario.run_one(_write(tmp_path, sc), str(tmp_path / "out"), png=False, quiet=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and res is None
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_soc_within_fails_on_rms_as_well_as_on_the_worst_sample(tmp_path):
    sc = _charging([{"expect": "soc_within", "pct": 100}, {"expect": "soc_within", "pct": 100, "rms_pct": 0}])
    code, res = scenario.run_one(_write(tmp_path, sc), str(tmp_path / "out"), png=False, quiet=True)
    loose, tight = res["expectations"]
    assert loose["passed"] and "RMS" in loose["detail"]
    assert not tight["passed"]  # no estimate is exact to 0.0 points


def test_bled_fails_when_another_cell_bleeds_or_a_named_one_does_not(tmp_path):
    # The 4S board charging at 90 %: no cell stands out, nothing bleeds.
    sc = _charging([{"expect": "bled", "cells": [1]}, {"expect": "soc_spread_below", "pct": 0.1}])
    code, res = scenario.run_one(_write(tmp_path, sc), str(tmp_path / "out"), png=False, quiet=True)
    first, second = res["expectations"]
    assert code == 1 and not first["passed"] and first["detail"] == "bled nothing"
    assert second["passed"] and second["detail"].startswith("SOC spread 0.00 % (0.00 % at the start)")
    sc["pack"]["cells"] = {"2": {"soc_pct": 99}}
    sc["expect"] = [{"expect": "bled", "cells": [2], "others_max_s": 0}, {"expect": "bled", "cells": [1]}]
    code, res = scenario.run_one(_write(tmp_path, sc), str(tmp_path / "out2"), png=False, quiet=True)
    first, second = res["expectations"]
    assert first["passed"] and first["detail"].startswith("bled 2: "), first
    assert not second["passed"]


def test_a_refused_action_fails_the_run(tmp_path):
    # The board has one thermistor: an action asking for the seventh is
    # refused by the simulator, and the run cannot pass, whatever else held.
    sc = _charging([{"expect": "cell_max_below", "mv": 4000}])
    sc["actions"] = [{"at_s": 5, "sim": "fault ntc_open on 7"}]
    code, res = scenario.run_one(_write(tmp_path, sc), str(tmp_path / "out"), png=False, quiet=True)
    assert code == 1 and not res["passed"]
    first = res["expectations"][0]
    assert first["expect"] == "every action runs" and not first["passed"]
    assert "thermistor number out of range" in first["detail"], first
    assert res["expectations"][1]["passed"]
