# tools.soc_replay: the command line, its output, and bad input refused
# with one line (exit 2). The estimator itself is tested in
# host_tests/logic/test_soc.py under both interpreters.
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "host_tests", "data", "soc")
NMC = os.path.join(DATA, "nmc")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "tools.soc_replay", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _args(tmp, profile=os.path.join(NMC, "nmc_pulse_short.csv"), ocv=os.path.join(NMC, "ocv.csv")):
    return ["--chemistry", "nmc", "--capacity-ah", "5.153198", "--ocv", ocv, "--in", profile,
            "--out", str(tmp / "est.csv")]


def _est(tmp):
    with open(tmp / "est.csv") as f:
        lines = f.read().splitlines()
    assert lines[0] == "t_s,soc_pct"
    return [tuple(float(x) for x in ln.split(",")) for ln in lines[1:]]


def _truth():
    with open(os.path.join(NMC, "nmc_pulse_short.csv")) as f:
        rows = [ln.split(",") for ln in f.read().splitlines()[1:]]
    return [(float(r[0]), float(r[4])) for r in rows]


def test_replay_writes_one_estimate_per_row_and_corrects_a_wrong_start(tmp_path):
    r = _run(*_args(tmp_path), "--current-offset-a", "0.026", "--current-gain-pct", "0.5",
             "--voltage-noise-mv", "2", "--start-error-pct", "-20", "--report")
    assert r.returncode == 0, r.stderr
    est = _est(tmp_path)
    truth = _truth()
    assert [t for t, _ in est] == [t for t, _ in truth]
    assert abs(est[0][1] - (truth[0][1] - 20)) < 1e-6  # the injected start
    late = [abs(s - s_true) for (t, s), (_, s_true) in zip(est, truth) if t >= 900]
    assert max(late) < 3.0
    assert "RMS" in r.stdout and "max" in r.stdout


def test_plain_counting_keeps_the_wrong_start(tmp_path):
    r = _run(*_args(tmp_path), "--start-error-pct", "-20", "--plain")
    assert r.returncode == 0, r.stderr
    est = _est(tmp_path)
    truth = _truth()
    assert all(abs(s - s_true + 20) < 1.0 for (_, s), (_, s_true) in zip(est, truth))


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad_profile = tmp_path / "p.csv"
    bad_profile.write_text("t_s,current_A,voltage_V\n0,1,3.7\n1,1,3.7\n")
    back = tmp_path / "back.csv"
    back.write_text("t_s,current_A,voltage_V,temp_C\n0,1,3.7,25\n5,1,3.7,25\n3,1,3.7,25\n")
    bad_ocv = tmp_path / "o.csv"
    bad_ocv.write_text("soc_pct,ocv_v\n0,3.0\n50,3.9\n100,3.8\n")
    cases = [
        (_args(tmp_path, profile=str(bad_profile)), "temp_C"),
        (_args(tmp_path, profile=str(back)), "time goes back"),
        (_args(tmp_path, profile=str(tmp_path / "none.csv")), "none.csv"),
        (_args(tmp_path, ocv=str(bad_ocv)), "rise"),
        (_args(tmp_path)[:3] + ["-1"] + _args(tmp_path)[4:], "capacity"),
    ]
    for args, word in cases:
        r = _run(*args)
        assert r.returncode == 2, (args, r.returncode, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], (word, r.stderr)
        assert not os.path.exists(tmp_path / "est.csv")


def test_the_bench_table_puts_the_estimator_beside_plain_counting(tmp_path):
    # The committed short profiles standing in for make profiles' output.
    import shutil

    from tools import soc_bench

    for chem in ("nmc", "lfp"):
        d = tmp_path / chem
        d.mkdir()
        src = os.path.join(DATA, chem)
        shutil.copy(os.path.join(src, "ocv.csv"), d / "ocv.csv")
        shutil.copy(os.path.join(src, "meta.json"), d / "meta.json")
        shutil.copy(os.path.join(src, chem + "_pulse_short.csv"), d / "pulse_2h.csv")
        shutil.copy(os.path.join(src, chem + "_fullcharge_short.csv"), d / "solar_2h.csv")
    res = {(r["chemistry"], r["profile"]): r for r in soc_bench.run(str(tmp_path))}
    assert "missing" in res[("nmc", "solar_days")]["error"]
    nmc = res[("nmc", "pulse_2h")]
    assert nmc["est_max"] < 3 and nmc["cc_max"] > 15 and nmc["pass"] is True
    lfp = res[("lfp", "solar_2h")]  # the full-charge profile: judged from its full charge
    assert lfp["pass"] is True and lfp["from_s"] > 0
    assert res[("lfp", "pulse_2h")]["pass"] is None  # no full charge: no target
    text = soc_bench.table(list(res.values()))
    assert "estimator RMS/max" in text and "coulomb cnt RMS/max" in text and "missing (make profiles)" in text
