"""The committed short PyBaMM profiles (host_tests/data/soc/, written by
`python -m tools.soc_profiles --short`) are what the SOC tests take them for.

CPython only, no pybamm needed: headers, time base, true SOC against the
current, voltage limits, the OCV table, a full charge that really ends in the
CV hold below the tail current. Where .venv/pybamm exists, the generator is
run again and must give the committed files (about 15 s)."""
import csv
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "host_tests", "data", "soc")
PYBAMM_PY = os.path.join(ROOT, ".venv", "pybamm", "bin", "python")
CHEMS = ("lfp", "nmc")
HEADER = ["t_s", "current_A", "voltage_V", "temp_C", "soc_true_pct"]
KINDS = ("pulse_short", "fullcharge_short")


def _meta(chem):
    with open(os.path.join(DATA, chem, "meta.json")) as f:
        return json.load(f)


def _read(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], [[float(x) for x in r] for r in rows[1:]]


def _profile(chem, kind):
    header, rows = _read(os.path.join(DATA, chem, "%s_%s.csv" % (chem, kind)))
    cols = list(zip(*rows))
    return header, {name: list(c) for name, c in zip(HEADER, cols)}


def _ocv(chem):
    header, rows = _read(os.path.join(DATA, chem, "ocv.csv"))
    return header, [r[0] for r in rows], [r[1] for r in rows]


def _interp(x, xs, ys):
    for k in range(1, len(xs)):
        if x <= xs[k]:
            f = (x - xs[k - 1]) / (xs[k] - xs[k - 1])
            return ys[k - 1] + f * (ys[k] - ys[k - 1])
    return ys[-1]


def _trapezoid_soc(p, soc0, capacity_ah):
    soc = [soc0]
    q = 0.0
    t, i = p["t_s"], p["current_A"]
    for k in range(1, len(t)):
        q += 0.5 * (i[k] + i[k - 1]) * (t[k] - t[k - 1])
        soc.append(soc0 - 100.0 * q / 3600.0 / capacity_ah)
    return soc


def test_committed_files_are_there_and_small():
    for chem in CHEMS:
        names = ["ocv.csv", "meta.json"] + ["%s_%s.csv" % (chem, k) for k in KINDS]
        for name in names:
            size = os.path.getsize(os.path.join(DATA, chem, name))
            assert 0 < size < 40 * 1024, (chem, name, size)
        meta = _meta(chem)
        assert meta["chemistry"] == chem
        assert meta["parameter_set"] == {"lfp": "Prada2013", "nmc": "Chen2020"}[chem]
        assert sorted(meta["profiles"]) == sorted("%s_%s" % (chem, k) for k in KINDS)


def test_profiles_have_the_exact_header_and_a_steady_time_base():
    for chem in CHEMS:
        meta = _meta(chem)
        for kind in KINDS:
            header, p = _profile(chem, kind)
            assert header == HEADER
            info = meta["profiles"]["%s_%s" % (chem, kind)]
            t = p["t_s"]
            assert t[0] == 0
            steps = set(b - a for a, b in zip(t, t[1:]))
            assert steps == {info["sample_s"]}, (chem, kind, steps)
            assert len(t) == info["rows"]
            assert set(p["temp_C"]) == {meta["temp_c"]}


def test_true_soc_is_the_integral_of_the_current():
    for chem in CHEMS:
        meta = _meta(chem)
        cap = meta["capacity_ah"]
        for kind in KINDS:
            _, p = _profile(chem, kind)
            info = meta["profiles"]["%s_%s" % (chem, kind)]
            assert p["soc_true_pct"][0] == info["start_soc_pct"]
            soc = _trapezoid_soc(p, info["start_soc_pct"], cap)
            worst = max(abs(a - b) for a, b in zip(soc, p["soc_true_pct"]))
            assert worst < 0.1, (chem, kind, worst)
            # the charge moved is real: at least 10 % of the capacity
            assert abs(p["soc_true_pct"][-1] - p["soc_true_pct"][0]) > 10


def test_voltages_stay_inside_the_cell_limits():
    for chem in CHEMS:
        meta = _meta(chem)
        for kind in KINDS:
            _, p = _profile(chem, kind)
            v = p["voltage_V"]
            assert min(v) >= meta["v_min"] - 1e-4, (chem, kind, min(v))
            assert max(v) <= meta["v_charge"] + 1e-4, (chem, kind, max(v))


def test_ocv_table_covers_0_to_100_and_rises():
    for chem in CHEMS:
        meta = _meta(chem)
        header, soc, ocv = _ocv(chem)
        assert header == ["soc_pct", "ocv_v"]
        assert soc == [float(s) for s in range(101)]
        assert all(b > a for a, b in zip(ocv, ocv[1:])), chem
        # 0 % and 100 % are where the OCV meets the cut-offs (the SOC definition)
        assert abs(ocv[0] - meta["v_min"]) < 1e-3 and abs(ocv[-1] - meta["v_max"]) < 1e-3


def test_a_relaxed_cell_sits_on_the_ocv_table():
    # both profiles start from rest: the voltage there is the table's OCV at
    # the stated SOC, so ocv.csv and soc_true_pct use one SOC definition
    for chem in CHEMS:
        _, soc, ocv = _ocv(chem)
        for kind in KINDS:
            _, p = _profile(chem, kind)
            assert p["current_A"][0] == 0.0
            expect = _interp(p["soc_true_pct"][0], soc, ocv)
            assert abs(p["voltage_V"][0] - expect) < 0.002, (chem, kind, p["voltage_V"][0], expect)


def test_full_charge_ends_in_the_cv_hold_below_the_tail_current():
    for chem in CHEMS:
        meta = _meta(chem)
        _, p = _profile(chem, "fullcharge_short")
        t, i, v = p["t_s"], p["current_A"], p["voltage_V"]
        tail = meta["capacity_ah"] / 20.0
        assert abs(meta["tail_current_a"] - tail) < 1e-5
        last = max(k for k in range(len(i)) if i[k] < 0)
        # the last charging sample: at the charge voltage, under C/20
        assert abs(v[last] - meta["v_charge"]) < 5e-4, (chem, v[last])
        assert -i[last] < tail, (chem, i[last], tail)
        # before it a real CV hold: at the charge voltage for a minute or more
        # (LFP's steep top makes it short) with the current falling from well
        # above the tail, and a CC phase at more than 0.3C before that
        cv = [k for k in range(last + 1) if abs(v[k] - meta["v_charge"]) < 5e-4]
        assert cv == list(range(cv[0], last + 1)), chem
        assert t[last] - t[cv[0]] >= 60, chem
        assert -i[cv[0]] > 3 * tail, chem
        assert all(i[k] >= i[k - 1] - 1e-5 for k in range(cv[0] + 1, last + 1)), chem
        assert -min(i) > 0.3 * meta["capacity_ah"], chem
        # then rest (the charger is off), about 10 minutes
        assert all(x == 0.0 for x in i[last + 1:])
        assert 540 <= t[-1] - t[last] <= 660, (chem, t[-1] - t[last])
        # a full charge by the charger's own test, close to 100 % true SOC
        assert p["soc_true_pct"][-1] > 97.0


def test_pulse_profile_has_pulses_of_several_rates_and_rests():
    for chem in CHEMS:
        meta = _meta(chem)
        _, p = _profile(chem, "pulse_short")
        c = meta["capacity_ah"]
        i = p["current_A"]
        rates = set(round(x / c, 2) for x in i if x != 0.0 and abs(x - round(x / c, 2) * c) < 1e-4)
        assert len([r for r in rates if r > 0]) >= 4, (chem, rates)
        assert any(r < 0 for r in rates), (chem, rates)
        # rests of a minute or more between them
        run = best = 0
        for x in i:
            run = run + 1 if x == 0.0 else 0
            best = max(best, run)
        assert best * meta["profiles"][chem + "_pulse_short"]["sample_s"] >= 60


def _close(a, b, tol):
    return abs(float(a) - float(b)) <= tol


@pytest.mark.skipif(not os.path.exists(PYBAMM_PY), reason="no .venv/pybamm (make profiles creates it)")
def test_generator_reproduces_the_committed_files(tmp_path):
    # ~15 s on 2 cores. Numbers may differ in the last printed digit from
    # one CPU to another; anything more is a change of the generator.
    r = subprocess.run([PYBAMM_PY, "-m", "tools.soc_profiles", "--short", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    tol = {"t_s": 0, "current_A": 2e-5, "voltage_V": 2e-5, "temp_C": 0, "soc_true_pct": 2e-4,
           "soc_pct": 0, "ocv_v": 2e-5}
    for chem in CHEMS:
        for name in ["ocv.csv"] + ["%s_%s.csv" % (chem, k) for k in KINDS]:
            h1, new = _read(os.path.join(str(tmp_path), chem, name))
            h0, old = _read(os.path.join(DATA, chem, name))
            assert h1 == h0 and len(new) == len(old), (chem, name)
            for a, b in zip(new, old):
                assert all(_close(x, y, tol[h]) for h, x, y in zip(h0, a, b)), (chem, name, a, b)
        with open(os.path.join(str(tmp_path), chem, "meta.json")) as f:
            new_meta = json.load(f)
        old_meta = _meta(chem)
        for m in (new_meta, old_meta):
            m.pop("generation_s")
            for info in m["profiles"].values():
                info.pop("generation_s")
        _same(new_meta, old_meta, chem)


def _same(a, b, where):
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for k in a:
            _same(a[k], b[k], where + "." + k)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            _same(x, y, "%s[%d]" % (where, k))
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= max(2e-3, 1e-5 * abs(b)), (where, a, b)
    else:
        assert a == b, (where, a, b)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
