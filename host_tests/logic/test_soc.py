# State of charge: OCV curves, the tick's charge counter, the estimator
# (convergence, slope gate, full-charge reset, offset learning, start-up,
# capacity re-estimation) and its saved state. Profiles are generated here
# by a small equivalent-circuit cell that differs from the estimator's own
# model (other resistances, two RC pairs), so a pass is not an echo.
import math

from bms import soc
from bms.soc import Coulombs, Ocv, SocEstimator, EV_FULL, EV_CAPACITY, parse_ocv_csv, default_ocv


class Cell:
    """Truth for the tests: OCV + R0*I + two RC pairs, I + = charging (A)."""

    def __init__(self, chemistry, cap_ah, soc0, r0=None, r_scale=1.3):
        self.ocv = default_ocv(chemistry)
        self.cap_as = cap_ah * 3600
        self.soc = soc0
        c = soc._CELL[chemistry]
        self.r0 = (r0 if r0 is not None else c[0] / cap_ah) * r_scale
        self.r1 = self.r0 * 0.8
        self.r2 = self.r0 * 0.5
        self.tau1 = 25.0
        self.tau2 = 400.0
        self.v1 = 0.0
        self.v2 = 0.0

    def step(self, i, dt=1.0):
        self.soc += i * dt / self.cap_as
        a1 = math.exp(-dt / self.tau1)
        a2 = math.exp(-dt / self.tau2)
        self.v1 = a1 * self.v1 + self.r1 * (1 - a1) * i
        self.v2 = a2 * self.v2 + self.r2 * (1 - a2) * i
        return self.volts(i)

    def volts(self, i):
        return self.ocv.volts(self.soc) + self.r0 * i + self.v1 + self.v2


class Run:
    """Drives an estimator with a Cell as the board does: the tick counts
    charge, the main loop steps once a second."""

    def __init__(self, chemistry="nmc", cap_ah=5.0, soc0=0.8, est_soc=None, offset_a=0.0, cell=None):
        self.cell = cell or Cell(chemistry, cap_ah, soc0)
        self.est = SocEstimator(chemistry, int(cap_ah * 1000))
        from bms import config

        cfg = config.defaults(chemistry)
        self.est.configure(cfg["soc_full_mv"], cfg["soc_tail_pct"])
        self.counter = Coulombs()
        self.offset = offset_a
        self.events = []
        self.noise = 0
        i0 = self._ma(0.0)
        if est_soc is None:
            self.est.start(self._mv(0.0), i0)
        else:
            self.est.reset(est_soc, soc.START_SIGMA)
        self.t = 0

    def _mv(self, i):
        # 2 mV of deterministic "noise" that changes sign every second
        self.noise = -self.noise if self.noise else 2
        return int(round(self.cell.volts(i) * 1000)) + self.noise

    def _ma(self, i):
        return int(round((i + self.offset) * 1000))

    def seconds(self, n, i):
        """n seconds at current i (A, + = charging)."""
        worst = 0.0
        for _ in range(n):
            for _ in range(10):  # ten ticks of 100 ms
                self.counter.add(self._ma(i), 100)
            self.cell.step(i)
            mv = self._mv(i)
            ev = soc.step(self.est, self.counter, mv, self._ma(i), mv)
            if ev:
                self.events.append((self.t, ev))
            self.t += 1
            e = abs(self.est.soc - self.cell.soc)
            if e > worst:
                worst = e
        return worst

    def err(self):
        return self.est.soc - self.cell.soc


# ---- OCV curves ---------------------------------------------------------------------


def test_ocv_interpolates_inverts_and_gives_the_local_slope():
    o = Ocv([0.0, 0.5, 1.0], [3.0, 3.5, 4.5])
    assert abs(o.volts(0.25) - 3.25) < 1e-6
    assert abs(o.volts(0.75) - 4.0) < 1e-6
    assert abs(o.soc(4.0) - 0.75) < 1e-6
    assert o.soc(2.0) == 0.0 and o.soc(5.0) == 1.0
    assert abs(o.slope(0.2) - 1.0) < 1e-6
    assert abs(o.slope(0.9) - 2.0) < 1e-6
    assert abs(o.slope(0.5) - 1.0) < 1e-6  # at a point: the flatter side


def test_ocv_csv_is_parsed_and_bad_files_are_refused_with_a_reason():
    o = parse_ocv_csv("soc_pct,ocv_v\n0,3.0\n50,3.6\n100,4.2\n")
    assert abs(o.volts(0.5) - 3.6) < 1e-6
    o = parse_ocv_csv("x,ocv_v,soc_pct\n1,3.0,0\n2,3.7,50\n3,4.1,100\n")  # any column order
    assert abs(o.volts(1.0) - 4.1) < 1e-6
    for text, word in (("", "empty"), ("a,b\n1,2\n", "header"), ("soc_pct,ocv_v\n0,3\n50,x\n100,4\n", "row 3"),
                       ("soc_pct,ocv_v\n0,3\n50,3.9\n100,3.8\n", "rise"), ("soc_pct,ocv_v\n10,3\n50,3.5\n100,4\n", "span")):
        try:
            parse_ocv_csv(text)
            assert False, text
        except ValueError as e:
            assert word in str(e), (word, str(e))
            assert "\n" not in str(e)


# ---- the tick's counter -----------------------------------------------------------------


def test_coulombs_count_exactly_in_integers_both_ways():
    c = Coulombs()
    for _ in range(7):
        c.add(1234, 100)  # 123.4 mAs each
    assert c.take() == (863, 700)  # 863.8 mAs: the 0.8 waits
    c.add(-2, 100)  # -0.2 mAs: 0.8 - 0.2 = 0.6 left
    c.add(4, 100)  # +0.4: 1.0 -> one whole mAs
    assert c.take() == (1, 200)
    c.add(-1500, 1000)
    assert c.take() == (-1500, 1000)
    assert c.take() == (0, 0)


def test_coulombs_clamp_so_the_tick_never_makes_a_big_int():
    c = Coulombs()
    c.add(10 ** 7, 2000)  # a wild reading: 10 kA for 2 s
    q, _ = c.take()
    assert q == 500000 * 2  # counted at the 500 A clamp
    assert q < 1 << 30


# ---- the estimator ---------------------------------------------------------------------


def test_nmc_wrong_start_converges_within_minutes_under_load():
    r = Run("nmc", 5.0, 0.8, est_soc=0.6)
    r.seconds(60, 0.0)
    for _ in range(6):
        r.seconds(60, -2.5)  # C/2 discharge
        r.seconds(60, 0.0)
    assert abs(r.err()) < 0.02, r.err()
    worst = 0.0
    for _ in range(6):
        worst = max(worst, r.seconds(60, -5.0), r.seconds(120, 0.0))
    assert worst < 0.03, worst
    assert abs(r.err()) < 0.015, r.err()


def test_plain_counting_would_have_kept_the_wrong_start():
    # The same run without voltage: the error stays (the test above is not
    # passing because counting alone gets there).
    r = Run("nmc", 5.0, 0.8, est_soc=0.6)
    r.est.gate = 1e9  # voltage never used
    r.seconds(60, 0.0)
    for _ in range(6):
        r.seconds(60, -2.5)
        r.seconds(60, 0.0)
    assert abs(r.err() + 0.2) < 0.01


def test_lfp_plateau_voltage_does_not_drag_soc():
    # LFP at 50 %: a reading 8 mV off the curve would mean 20 points on
    # the plateau; the slope gate keeps the counted SOC.
    cell = Cell("lfp", 100.0, 0.5)
    r = Run("lfp", 100.0, 0.5, est_soc=0.5, cell=cell)
    cell.ocv = Ocv(cell.ocv.s, [v - 0.008 for v in cell.ocv.v])
    r.seconds(1800, 0.0)
    assert abs(r.err()) < 0.002, r.err()


def test_lfp_low_knee_corrects_soc_near_empty():
    r = Run("lfp", 10.0, 0.2, est_soc=0.3)  # 10 points too high, plateau: unseen
    r.seconds(60, 0.0)
    assert abs(r.err() - 0.1) < 0.01
    r.seconds(1200, -5.0)  # C/2 for 20 min: into the knee (true 3 %)
    assert abs(r.err() - 0.1) < 0.02  # under load the voltage is not trusted
    assert not r.events
    r.seconds(1800, 0.0)  # once the load has settled it is, at the knee
    assert abs(r.err()) < 0.03, r.err()
    assert [e for _, e in r.events] == [soc.EV_EMPTY]  # logged once
    assert abs(r.est.empty_before - 0.13) < 0.02


def _cc_cv(r, cc_a, cv_v, tail_a, limit_s=20000):
    """Charge at cc_a until the cell reaches cv_v, then hold cv_v (the
    current falls) until it is below tail_a: a charger's CC/CV stage."""
    i = cc_a
    for _ in range(limit_s):
        if r.cell.volts(i) >= cv_v:
            # the current that holds the terminal at cv_v (one Newton step)
            dv = r.cell.volts(i) - cv_v
            i = max(0.0, i - dv / (r.cell.r0 + r.cell.r1 * 0.05))
        r.seconds(1, i)
        if i < tail_a:
            return


def test_full_charge_resets_to_100_at_the_tail_not_before():
    r = Run("lfp", 10.0, 0.6, est_soc=0.5)  # 10 points low
    _cc_cv(r, 5.0, 3.55, 1.0)
    # At the CV voltage with 2 A still flowing: not yet full.
    assert not r.events
    assert r.est.soc < 0.99
    r.seconds(40, 0.3)  # the tail: below 5 % of C for 30 s
    assert [e for _, e in r.events] == [EV_FULL]
    assert r.est.pct() == 100
    assert abs(r.est.full_before - 0.9) < 0.1  # where it stood before the reset
    r.seconds(120, 0.3)
    assert len(r.events) == 1  # once per charge, not every second at the top


def test_full_charge_learns_the_current_sensor_offset():
    # A +0.5 % of 1C offset (50 mA on 10 Ah) reads as charge that never came.
    # Day cycles between full charges: the charge counted from one full
    # charge to the next measures it, and the drift of the nights shrinks.
    r = Run("lfp", 10.0, 0.9, est_soc=0.9, offset_a=0.05)
    drifts = []
    for day in range(4):
        _cc_cv(r, 3.0, 3.55, 0.3)
        r.seconds(60, 0.2)
        r.seconds(3 * 3600, -1.5)  # evening and night: to ~45 %
        drifts.append(r.err())
        r.seconds(600, 0.0)
    assert drifts[0] > 0.008, drifts  # 3 h x 50 mA on the first night: up to +1.5 %
    assert abs(drifts[-1]) < drifts[0] / 2, drifts
    assert abs(r.est.bias - 0.05) < 0.005, r.est.bias


def test_a_float_after_full_charge_measures_the_offset():
    # After the tail the charger floats the pack and the sun covers the
    # load: nothing flows, but the sensor reads its +50 mA offset.
    r = Run("lfp", 10.0, 0.9, est_soc=0.9, offset_a=0.05)
    _cc_cv(r, 3.0, 3.55, 0.3)
    r.seconds(60, 0.2)
    assert r.events
    r.seconds(2 * 3600, 0.0)
    assert abs(r.err()) < 0.01, r.err()  # the offset did not count the pack up
    assert abs(r.est.bias - 0.05) < 0.01, r.est.bias
    # A float the voltage does not confirm (a load pulling it down) is no
    # offset measurement.
    r2 = Run("lfp", 10.0, 0.9, est_soc=0.9, offset_a=0.05)
    _cc_cv(r2, 3.0, 3.55, 0.3)
    r2.seconds(60, 0.2)
    r2.seconds(2 * 3600, -0.4)
    assert abs(r2.est.bias) < 0.01, r2.est.bias


def test_start_takes_the_relaxed_ocv_where_it_is_steep_and_the_saved_value_on_the_plateau():
    # NMC at rest, saved value 20 points off: the OCV wins.
    e = SocEstimator("nmc", 5000)
    e.start(int(default_ocv("nmc").volts(0.7) * 1000), 0, saved=(0.5, 0.01))
    assert abs(e.soc - 0.7) < 0.03, e.soc
    # LFP on the plateau: the saved value wins.
    e = SocEstimator("lfp", 100000)
    e.start(int(default_ocv("lfp").volts(0.5) * 1000), 0, saved=(0.35, 0.01))
    assert abs(e.soc - 0.35) < 0.05, e.soc
    # No saved value: the OCV, however vague.
    e = SocEstimator("lfp", 100000)
    e.start(int(default_ocv("lfp").volts(0.5) * 1000), 0)
    assert abs(e.soc - 0.5) < 0.02
    assert e.sigma_pct() > 5  # and it knows it is vague


def test_capacity_is_re_estimated_between_a_full_charge_and_a_rested_ocv():
    # A worn cell: 85 % of its rated 5 Ah.
    cell = Cell("nmc", 4.25, 0.9)
    r = Run("nmc", 5.0, 0.9, cell=cell)
    soh = []
    for _ in range(3):
        _cc_cv(r, 2.0, 4.18, 0.2)
        r.seconds(60, 0.1)
        r.seconds(4800, -2.5)  # 3.3 Ah: to ~20 % of the worn cell
        r.seconds(1300, 0.0)  # a rest long enough for an OCV anchor
        soh.append(r.est.soh_pct())
    assert EV_CAPACITY in [e for _, e in r.events]
    assert abs(soh[-1] - 85) < 4, soh
    assert abs(soh[-1] - 85) < abs(soh[0] - 85) or abs(soh[0] - 85) < 2, soh


def test_lifetime_counters_and_equivalent_cycles():
    r = Run("nmc", 5.0, 0.5, est_soc=0.5)
    r.seconds(3600, -2.0)  # 2 Ah out
    r.seconds(3600, 1.0)  # 1 Ah in
    assert abs(r.est.ah_out() - 2.0) < 0.01
    assert abs(r.est.ah_in() - 1.0) < 0.01
    assert type(r.est.q_out_mas) is int  # counted exactly, whatever the float precision
    assert abs(r.est.cycles() - 0.4) < 0.005


def test_saved_state_round_trips_and_another_pack_keeps_only_the_counters():
    e = SocEstimator("nmc", 5000)
    e.reset(0.42, 0.02)
    e.bias = 0.01
    e.q_in_mas = 36000000
    e.q_out_mas = 72000000 + (1 << 40)  # beyond 32 bits: a lifetime of a big pack
    e.full_count = 3
    blob = e.saved()
    assert len(blob) == soc.STATE_SIZE
    f = SocEstimator("nmc", 5000)
    s, sig = f.restore(blob)
    assert abs(s - 0.42) < 1e-6 and abs(sig - 0.02) < 1e-6
    assert abs(f.bias - 0.01) < 1e-6 and f.q_out_mas == e.q_out_mas and f.full_count == 3
    g = SocEstimator("nmc", 8000)  # a different rated capacity: a new pack
    assert g.restore(blob) is None
    assert g.q_out_mas == e.q_out_mas and g.bias == 0.0
    assert SocEstimator("nmc", 5000).restore(b"\x00" * soc.STATE_SIZE) is None  # wrong version
    assert SocEstimator("nmc", 5000).restore(blob[:-1]) is None
    # A CRC-good file holding a NaN (a bug, a bit flip before the CRC) is not taken.
    bad = SocEstimator("nmc", 5000)
    bad.reset(0.5, 0.02)
    bad.bias = float("nan")
    h = SocEstimator("nmc", 5000)
    assert h.restore(bad.saved()) is not None and h.bias == 0.0
    bad.soc = float("nan")
    assert SocEstimator("nmc", 5000).restore(bad.saved()) is None


def test_a_nan_never_lives_on_in_the_estimator():
    r = Run("nmc", 5.0, 0.5, est_soc=0.5)
    r.est.bias = float("nan")
    r.seconds(2, 0.0)
    assert r.est.soc == r.est.soc and r.est.bias == 0.0  # restarted, not NaN
    r.seconds(300, 0.0)
    assert abs(r.err()) < 0.03  # and found the SOC again from the voltage


def test_a_capacity_change_scales_what_depends_on_it():
    e = SocEstimator("lfp", 100000)
    r0, ig, tail = e.r0, e.i_gate, e.tail_a
    e.set_capacity(10000)
    assert abs(e.r0 - 10 * r0) < 1e-9 and abs(e.i_gate - ig / 10) < 1e-9 and abs(e.tail_a - tail / 10) < 1e-9


# ---- short PyBaMM profiles (host_tests/data/soc, made by tools/soc_profiles.py) ----------

_DATA = __file__.rsplit("/", 2)[0] + "/data/soc/"
_CAP_AH = {"lfp": 2.303451, "nmc": 5.153198}  # their meta.json capacity_ah


def _profile(chem, name):
    """[(t_s, current_A (+ = discharge), voltage_V, soc_true_pct)]"""
    rows = []
    with open(_DATA + chem + "/" + chem + "_" + name + ".csv") as f:
        head = f.readline().strip().split(",")
        k = [head.index(c) for c in ("t_s", "current_A", "voltage_V", "soc_true_pct")]
        for line in f:
            x = line.strip().split(",")
            if len(x) > 1:
                rows.append(tuple(float(x[j]) for j in k))
    return rows


def _replay(chem, rows, start_error=0.0, offset_a=0.0):
    """Feed a profile through the estimator as the firmware does; the error
    (estimate - truth, points) after every row and the events."""
    from bms import config

    with open(_DATA + chem + "/ocv.csv") as f:
        ocv = parse_ocv_csv(f.read())
    cap = _CAP_AH[chem]
    est = SocEstimator(chem, int(cap * 1000 + 0.5), ocv)
    cfg = config.defaults(chem)
    est.configure(cfg["soc_full_mv"], cfg["soc_tail_pct"])
    counter = Coulombs()
    t0, i0, v0, s0 = rows[0]
    est.reset((s0 + start_error) / 100, soc.START_SIGMA)
    ma = int(round((-i0 + offset_a) * 1000))
    errs = []
    events = []
    t_prev = t0
    for t, i, v, true in rows[1:]:
        counter.add(ma, int(round((t - t_prev) * 1000)))
        t_prev = t
        ma = int(round((-i + offset_a) * 1000))
        mv = int(round(v * 1000))
        ev = soc.step(est, counter, mv, ma, mv)
        if ev:
            events.append((t, ev))
        errs.append((t, est.soc * 100 - true))
    return errs, events


def test_pybamm_nmc_pulses_a_wrong_start_converges():
    rows = _profile("nmc", "pulse_short")  # 30 min of pulses and rests from 70 %
    errs, _ = _replay("nmc", rows, start_error=-20, offset_a=0.025)
    late = [abs(e) for t, e in errs if t >= 600]
    assert max(late) < 3.0, max(late)
    assert sum(e * e for e in late) / len(late) < 1.0


def test_pybamm_lfp_full_charge_resets_at_the_tail_and_not_before():
    rows = _profile("lfp", "fullcharge_short")  # CC/CV from 80 % to the C/20 tail, then rest
    errs, events = _replay("lfp", rows, start_error=-10)
    assert [e for _, e in events] == [EV_FULL]
    t_full = events[0][0]
    # The true tail: the first row at the charge voltage with under C/20.
    tail = [t for t, i, v, _s in rows if v >= 3.599 and -i < _CAP_AH["lfp"] / 20][0]
    assert tail <= t_full <= tail + 60, (tail, t_full)
    before = [abs(e) for t, e in errs if t < tail - 60]
    assert min(before) > 5  # still the wrong start: LFP's plateau said nothing
    after = [abs(e) for t, e in errs if t > t_full]
    assert max(after) < 0.5, max(after)


def test_pybamm_nmc_full_charge_is_100_percent_of_the_chargers_full():
    rows = _profile("nmc", "fullcharge_short")
    errs, events = _replay("nmc", rows)
    assert [e for _, e in events] == [EV_FULL]
    # PyBaMM's 100 % is the OCV at 4.2 V; a CV charge to C/20 stops ~1.5
    # points short of it, and the firmware calls that full.
    after = [e for t, e in errs if t > events[0][0]]
    assert all(0 <= e < 2.5 for e in after), (min(after), max(after))
