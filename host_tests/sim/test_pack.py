# Tests of the simulated pack (tools/sim/pack.py) and its PRNG
# (tools/sim/prng.py). Plain functions with bare asserts: they run under
# pytest and inside MicroPython (a runner calls every test_* function).
import math

import pack
from pack import Pack, Cell, ocv_mv, soc_from_ocv
from prng import Prng, mix32


def close(a, b, tol):
    return abs(a - b) <= tol


def quiet_pack(**kw):
    # A pack without self-discharge, its temperature held by the caller
    # where it matters.
    p = Pack(**kw)
    for c in p.cells:
        c.self_discharge_pct_month = 0.0
    return p


# ---- PRNG ----------------------------------------------------------------


def test_prng_first_values_fixed():
    # Hard-coded from a first run; the same values under CPython and
    # MicroPython prove that both give the identical sequence.
    p = Prng(1)
    assert [p.u32() for _ in range(5)] == [3090573325, 3553206358, 530670935, 1383597714, 132618023]
    p = Prng(12345)
    assert [p.u32() for _ in range(3)] == [3762511623, 4292648982, 269806297]
    assert mix32(1) == 1364076727
    assert Prng(0).u32() == 844830715  # seed 0 is a valid seed too


def test_prng_floats_fixed():
    p = Prng(1)
    # gauss: Box-Muller from two draws (uses libm log/cos/sqrt: compared to
    # 1e-12, not bit for bit, in case another libm rounds differently)
    assert close(p.gauss(0.0, 1.0), 0.3786995634426228, 1e-12)
    assert close(p.uniform(2.0, 3.0), 2.123556455364451, 1e-12)
    t = Prng(7).table(4, 2.0)
    assert len(t) == 4
    ref = [4.002013514229802, -0.12682923784025518, 0.05761211412756788, -0.17159067450427962]
    for a, b in zip(t, ref):
        assert close(a, b, 1e-12)


def test_prng_ranges_and_statistics():
    p = Prng(3)
    lo = hi = None
    for _ in range(2000):
        u = p.uniform(-2.0, 5.0)
        assert -2.0 <= u < 5.0
        lo = u if lo is None or u < lo else lo
        hi = u if hi is None or u > hi else hi
    assert lo < -1.9 and hi > 4.9
    g = Prng(4).table(4000, 3.0)
    mean = sum(g) / len(g)
    var = sum((x - mean) * (x - mean) for x in g) / len(g)
    # standard error of the mean 3/sqrt(4000) = 0.047; of sigma ~0.034
    assert abs(mean) < 0.2
    assert close(math.sqrt(var), 3.0, 0.15)
    assert Prng(5).u32() != Prng(6).u32()


# ---- chemistry data --------------------------------------------------------


def test_ocv_tables_shape():
    for chem in ("lfp", "nmc", "lto"):
        t = pack.CHEMISTRY[chem]["ocv"]
        assert len(t) >= 21
        for k in range(1, len(t)):
            assert t[k] > t[k - 1], (chem, k)
        # table points are SOC 0, 5, ..., 100 %
        assert ocv_mv(chem, 0.0) == t[0]
        assert ocv_mv(chem, 1.0) == t[-1]
        assert close(ocv_mv(chem, 0.05), t[1], 1e-9)


def test_ocv_lfp_realistic():
    assert 2400 <= ocv_mv("lfp", 0.0) <= 2600
    assert 3150 <= ocv_mv("lfp", 0.10) <= 3250  # the knee
    s = 0.20
    while s <= 0.9001:  # the plateau
        assert 3255 <= ocv_mv("lfp", s) <= 3345, s
        s += 0.01
    assert 3550 <= ocv_mv("lfp", 1.0) <= 3650
    # the plateau is flat: 20 -> 90 % spans under 100 mV
    assert ocv_mv("lfp", 0.9) - ocv_mv("lfp", 0.2) < 100


def test_ocv_nmc_realistic():
    assert 2950 <= ocv_mv("nmc", 0.0) <= 3050
    assert 4150 <= ocv_mv("nmc", 1.0) <= 4250
    # rises fairly steadily: every 10 % between 10 and 100 % adds 30..160 mV
    for k in range(1, 10):
        d = ocv_mv("nmc", (k + 1) / 10.0) - ocv_mv("nmc", k / 10.0)
        assert 30 <= d <= 160, k


def test_ocv_interpolates_linearly():
    # LFP 50 % = 3297 mV, 55 % = 3300 mV: 52.5 % -> 3298.5 mV
    assert close(ocv_mv("lfp", 0.525), 3298.5, 1e-9)
    # NMC 95 % = 4110, 100 % = 4200: 99 % -> 4110 + 0.8 * 90 = 4182
    assert close(ocv_mv("nmc", 0.99), 4182.0, 1e-9)


def test_soc_from_ocv_inverts():
    for chem in ("lfp", "nmc", "lto"):
        for k in range(101):
            s = k / 100.0
            assert close(soc_from_ocv(chem, ocv_mv(chem, s)), s, 1e-9), (chem, s)
    assert soc_from_ocv("lfp", 3300) == 0.55  # a table point exactly
    assert soc_from_ocv("lfp", 2000) == 0.0  # clamped
    assert soc_from_ocv("lfp", 4000) == 1.0


def test_ocv_beyond_the_ends():
    # 1 mV per 0.01 % beyond full and empty, clamped
    assert close(ocv_mv("lfp", 1.0001), 3601.0, 1e-6)
    assert close(ocv_mv("lfp", 1.01), 3700.0, 1e-6)
    assert ocv_mv("lfp", 2.0) == 3600 + pack.BEYOND_MAX_MV
    assert close(ocv_mv("lfp", -0.0001), 2499.0, 1e-6)
    assert ocv_mv("lfp", -1.0) == 0.0


def test_unknown_chemistry():
    for fn in (lambda: ocv_mv("lead", 0.5), lambda: Pack("lead")):
        try:
            fn()
            raised = False
        except ValueError:
            raised = True
        assert raised


def test_r0_temperature_factor():
    # Arrhenius: resistance doubles from 25 to 0 C for LFP
    assert close(pack.r_factor("lfp", 25.0), 1.0, 1e-12)
    assert close(pack.r_factor("lfp", 0.0), 2.0, 0.01)
    assert pack.r_factor("lfp", 45.0) < 1.0
    p = Pack("lfp", cells=16, capacity_ah=100.0)
    # 16 x 0.045 / 100 = 7.2 mOhm at 25 C
    assert close(p.r_ohm(), 0.0072, 1e-12)
    p.temp_c = 0.0  # setting the temperature directly takes effect
    assert close(p.r_ohm(), 0.0144, 0.0144 * 0.01)
    p.temp_c = 25.0
    assert close(p.r_ohm(), 0.0072, 1e-12)


# ---- cells and pack --------------------------------------------------------


def test_defaults_and_emf():
    p = Pack()
    assert p.n == 16 and len(p.cells) == 16 and p.chemistry == "lfp"
    assert p.temp_c == 25.0 and p.ambient_c == 25.0
    # LFP 50 % = 3297 mV; 16 cells = 52.752 V at rest
    assert close(p.emf_v(), 52.752, 1e-9)
    assert close(p.soc_pct(), 50.0, 1e-9)
    assert close(p.terminal_v(100.0), 52.752 + 100 * 0.0072, 1e-9)
    p2 = Pack("nmc", cells=4, capacity_ah=50.0, soc_pct=100.0, temp_c=10.0, ambient_c=5.0)
    assert close(p2.emf_v(), 4 * 4.2, 1e-9)
    assert p2.temp_c == 10.0 and p2.ambient_c == 5.0
    # NMC R0 = 0.060 / 50 Ah = 1.2 mOhm per cell
    assert close(p2.cells[0].r0_ohm, 0.0012, 1e-12)


def test_coulomb_counting():
    # 100 Ah cell, 50 A for 1 h = 50 Ah = +50 % SOC
    p = quiet_pack(cells=1, capacity_ah=100.0, soc_pct=0.0)
    for _ in range(360):
        p.step(10.0, 50.0)
    assert close(p.soc_pct(), 50.0, 1e-6)
    assert close(p.cell_soc_pct(0), 50.0, 1e-6)
    # and back: -25 A for 2 h = -50 Ah
    for _ in range(720):
        p.step(10.0, -25.0)
    assert close(p.soc_pct(), 0.0, 1e-6)


def test_terminal_jump_is_i_r0():
    p = quiet_pack(cells=1, capacity_ah=100.0, soc_pct=50.0)
    # R0 = 0.45 mOhm: 100 A -> 45 mV above the OCV, at once
    assert close(p.cell_mv(0, 0.0), 3297.0, 1e-9)
    assert close(p.cell_mv(0, 100.0) - p.cell_mv(0, 0.0), 45.0, 1e-9)
    assert close(p.cell_mv(0, -100.0) - p.cell_mv(0, 0.0), -45.0, 1e-9)
    for _ in range(100):
        p.step(1.0, 100.0)
        p.temp_c = 25.0  # hold R0 at its 25 C value
    # after charging the jump on a current step is still I * R0 ...
    before = p.cell_mv(0, 100.0)
    after = p.cell_mv(0, 0.0)
    assert close(before - after, 45.0, 1e-9)
    # ... and what stays is OCV + the RC overpotential
    c = p.cells[0]
    assert close(after, c.ocv_mv() + 1000.0 * c.v_rc, 1e-9)
    assert c.v_rc > 0.0


def test_rc_relaxes_with_tau():
    p = quiet_pack(cells=1, capacity_ah=100.0, soc_pct=50.0)
    c = p.cells[0]
    tau = c.tau_s
    assert 30.0 <= tau <= 120.0
    # 10 tau at 100 A: v_rc -> I * R1 = 100 A * 0.40 mOhm = 40 mV (1 - e^-10)
    for _ in range(int(10 * tau)):
        p.step(1.0, 100.0)
        p.temp_c = 25.0  # hold R1 at its 25 C value
    v0 = c.v_rc
    assert close(v0, 0.040 * (1 - math.exp(-10)), 1e-9)
    # current stops: after one tau the overpotential is 1/e of it (14.7 mV)
    for _ in range(int(tau)):
        p.step(1.0, 0.0)
    assert close(c.v_rc / v0, 1 / math.e, 1e-9)
    assert close(p.cell_mv(0, 0.0) - c.ocv_mv(), 1000 * v0 / math.e, 1e-6)


def test_self_discharge_over_a_month():
    # LFP 2.5 %/month: 50 % -> 47.5 % after 30 days at rest
    p = Pack(cells=2, capacity_ah=100.0, soc_pct=50.0, overrides={2: {"self_discharge_pct_month": 10}})
    for _ in range(720):
        p.step(3600.0, 0.0)
    assert close(p.cell_soc_pct(0), 47.5, 1e-6)
    assert close(p.cell_soc_pct(1), 40.0, 1e-6)  # the leaky cell: 10 %
    # an empty cell does not leak below empty
    p = Pack(cells=1, soc_pct=0.0)
    for _ in range(100):
        p.step(3600.0, 0.0)
    assert p.cell_soc_pct(0) == 0.0
    assert p.cells[0].ocv_mv() == ocv_mv("lfp", 0.0)


def test_heating_at_200a():
    # 16S 100 Ah LFP: R = 16 * 0.45 mOhm = 7.2 mOhm; at 200 A
    # P = 200^2 * 0.0072 = 288 W. Thermal mass 16 cells * 2 kg * 1000 J/(kg K)
    # = 32000 J/K, so 10 s give 288 * 10 / 32000 = 0.09 K (loss to ambient:
    # tau 4800 s, negligible; the RC branch, still charging, adds < 1 %).
    # The last 1 s step: I^2 R0 = 288 W plus the RC branch, v_rc(10 s) =
    # 200 A * 0.4 mOhm * (1 - e^-(10/60)) = 12.3 mV per cell, 16 * v^2 / R1 =
    # 6 W.
    p = Pack(cells=16, capacity_ah=100.0)
    assert close(p.c_th_j_per_k, 32000.0, 1e-6)
    for _ in range(10):
        p.step(1.0, 200.0)
    assert close(p.temp_c - 25.0, 0.09, 0.004)
    assert 292.0 <= p.heat_w < 296.0
    # discharging heats just as well
    p = Pack(cells=16, capacity_ah=100.0)
    p.step(10.0, -200.0)
    assert close(p.temp_c - 25.0, 0.09, 0.004)
    # bleed resistor heat is not in the pack: bleeding alone barely warms it
    p = Pack(cells=16, capacity_ah=100.0)
    p.step(10.0, 0.0, [0.1] * 16)
    assert p.temp_c - 25.0 < 1e-6


def test_cools_to_ambient():
    p = Pack(cells=16, capacity_ah=100.0, temp_c=35.0, ambient_c=25.0)
    tau = p.thermal_tau_s()
    # 0.15 K/W * 32000 J/K = 4800 s for the reference pack
    assert close(tau, 4800.0, 1e-6)
    for _ in range(100):
        p.step(tau / 100.0, 0.0)
    # 10 K above ambient decays to 10/e = 3.68 K in one tau
    assert close(p.temp_c - 25.0, 10.0 / math.e, 1e-6)
    p.ambient_c = 0.0  # settable: relaxes toward the new ambient
    for _ in range(200):
        p.step(tau / 20.0, 0.0)
    assert abs(p.temp_c) < 0.01
    # a smaller pack has less surface: higher R_th, shorter tau
    small = Pack(cells=4, capacity_ah=100.0)
    assert small.r_th_k_per_w > p.r_th_k_per_w
    assert small.thermal_tau_s() < tau


def test_temperature_rise_settles():
    # steady state: T = ambient + P * R_th, P = I^2 (R0 + R1) f(T) (in steady
    # state the RC branch carries the whole current). 50 A, 16S, at 25 C:
    # 2500 * 16 * (0.45 + 0.40) mOhm = 34 W -> +5.1 K; R falls with T:
    # f(29.55 C) = exp(2258 * (1/302.70 - 1/298.15)) = 0.892, P = 30.3 W,
    # R_th = 0.15 K/W -> +4.55 K
    p = Pack(cells=16, capacity_ah=100.0, soc_pct=10.0)
    for _ in range(400):
        p.step(100.0, 50.0)
        for c in p.cells:  # hold SOC: only the thermal steady state matters
            c.soc = 0.5
    assert 4.45 < p.temp_c - 25.0 < 4.65


def test_spreads_deterministic_and_bounded():
    kw = {"cells": 16, "capacity_spread_pct": 5.0, "soc_spread_pct": 2.0, "resistance_spread_pct": 10.0}
    a = Pack(seed=42, **kw)
    b = Pack(seed=42, **kw)
    c = Pack(seed=43, **kw)
    same = True
    for k in range(16):
        ca, cb = a.cells[k], b.cells[k]
        assert ca.capacity_as == cb.capacity_as and ca.soc == cb.soc and ca.r0_ohm == cb.r0_ohm
        assert 95.0 * 3600 <= ca.capacity_as <= 105.0 * 3600
        assert 0.48 <= ca.soc <= 0.52
        assert 0.9 * 0.00045 <= ca.r0_ohm <= 1.1 * 0.00045
        # R1 carries the same resistance factor as R0
        assert close(ca.r1_ohm / ca.r0_ohm, 0.040 / 0.045, 1e-9)
        if ca.capacity_as != c.cells[k].capacity_as:
            same = False
    assert not same  # another seed, another pack
    caps = [x.capacity_as for x in a.cells]
    assert max(caps) - min(caps) > 3.0 * 3600  # the spread is really used
    # no spread: every cell nominal, whatever the seed
    d = Pack(seed=99)
    for x in d.cells:
        assert x.capacity_as == 100.0 * 3600 and x.soc == 0.5 and close(x.r0_ohm, 0.00045, 1e-15)
    # SOC spread is clamped to 0..100 %
    e = Pack(soc_pct=100.0, soc_spread_pct=5.0)
    assert max(x.soc for x in e.cells) == 1.0


def test_overrides():
    p = Pack(cells=8, capacity_ah=100.0, soc_pct=50.0, capacity_spread_pct=5.0,
             overrides={3: {"capacity_pct": 80, "r0_pct": 150},
                        "5": {"soc_pct": 30, "self_discharge_pct_month": 10}})
    weak = p.cells[2]
    assert close(weak.capacity_as, 80.0 * 3600, 1e-6)
    assert close(weak.r0_ohm, 0.00045 * 1.5, 1e-15)  # 0.675 mOhm
    assert p.cells[4].soc == 0.3
    assert p.cells[4].self_discharge_pct_month == 10
    assert p.cells[0].self_discharge_pct_month == 2.5
    for bad in ({9: {"soc_pct": 1}}, {0: {"soc_pct": 1}}, {1: {"colour": 1}}):
        try:
            Pack(cells=8, overrides=bad)
            raised = False
        except ValueError:
            raised = True
        assert raised, bad


def test_soc_pct_is_charge_weighted():
    # 100 Ah full + 50 Ah empty: 100 Ah / 150 Ah = 66.67 %
    p = Pack(cells=2, capacity_ah=100.0, overrides={1: {"soc_pct": 100}, 2: {"soc_pct": 0, "capacity_pct": 50}})
    assert close(p.soc_pct(), 200.0 / 3.0, 1e-9)
    # the same current moves the small cell twice as fast: 10 Ah = +20 % of it
    for c in p.cells:
        c.self_discharge_pct_month = 0.0
    p.step(3600.0, 10.0)
    assert close(p.cell_soc_pct(1), 20.0, 1e-9)
    assert p.cell_soc_pct(0) == 100.0


def test_bleed_drains_only_its_own_cell():
    p = quiet_pack(cells=4, capacity_ah=100.0, soc_pct=50.0)
    bleed = [0.0, 0.1, 0.0, 0.0]
    for _ in range(10):
        p.step(3600.0, 0.0, bleed)
    # 0.1 A for 10 h = 1 Ah = 1 % of 100 Ah
    assert close(p.cell_soc_pct(1), 49.0, 1e-9)
    for k in (0, 2, 3):
        assert close(p.cell_soc_pct(k), 50.0, 1e-9)
    # the pack current still passes every cell; bleeding adds to it
    # 1 A for 1 h: +1 % for the others, +0.9 % for the bleeding cell
    for _ in range(10):
        p.step(360.0, 1.0, bleed)
    assert close(p.cell_soc_pct(0), 51.0, 1e-9)
    assert close(p.cell_soc_pct(1), 49.9, 1e-9)
    # while bleeding the cell's terminal voltage shows the extra drop
    p.temp_c = 25.0  # R0 at 25 C: 0.45 mOhm
    assert close(p.cell_mv(1, 0.0) - p.cell_mv(1, 0.0, 0.1), 0.1 * 0.45, 1e-9)
    mvs = p.cells_mv(0.0, bleed)
    assert close(mvs[1], p.cell_mv(1, 0.0, 0.1), 1e-9) and close(mvs[0], p.cell_mv(0, 0.0), 1e-9)


def test_pin_holds_under_current_and_unpin_continues():
    p = quiet_pack(cells=4, capacity_ah=100.0, soc_pct=20.0)
    assert p.pinned(0) is None
    p.pin(0, 3300)
    assert p.pinned(0) == 3300
    assert close(p.cell_mv(0, 0.0), 3300.0, 1e-9)
    for _ in range(600):
        p.step(1.0, 50.0)
        p.temp_c = 25.0
    # OCV held, SOC unmoved; the terminal voltage shows I*R0 and v_rc
    c = p.cells[0]
    assert c.ocv_mv() == 3300.0 and c.soc == 0.2
    assert close(p.cell_mv(0, 50.0), 3300.0 + 1000 * (c.v_rc + 50 * 0.00045), 1e-9)
    # the other cells charged: 50 A * 600 s = 8.33 Ah = +8.33 %
    assert close(p.cell_soc_pct(1), 20.0 + 100.0 * 50 * 600 / 360000.0, 1e-9)
    # unpinned: SOC from the pinned OCV (3300 mV = 55 % in the LFP table)
    p.unpin(0)
    assert p.pinned(0) is None
    assert close(c.soc, 0.55, 1e-12)
    p.step(3600.0, 10.0)  # and it counts on from there: +10 %
    assert close(c.soc, 0.65, 1e-9)
    # a pinned voltage outside the table unpins to a clamped SOC
    p.pin(2, 4000)
    p.unpin(2)
    assert p.cells[2].soc == 1.0 and close(p.cells[2].ocv_mv(), 3600.0, 1e-9)


def test_overcharge_shows_overvoltage():
    p = quiet_pack(cells=1, capacity_ah=100.0, soc_pct=100.0)
    c = p.cells[0]
    # 50 A for 60 s into a full cell: 3000 As = 0.83 % of capacity beyond
    # full -> ~+83 mV OCV (a little less: the excess relaxes with 600 s)
    for _ in range(60):
        p.step(1.0, 50.0)
    assert c.soc == 1.0 and p.soc_pct() == 100.0
    assert 3670.0 < c.ocv_mv() < 3684.0
    assert p.cell_mv(0, 50.0) > 3690.0
    # at rest it settles back to the 100 % OCV (600 s time constant)
    for _ in range(60):
        p.step(60.0, 0.0)
    assert c.ocv_mv() < 3600.3
    # the excess is given back first on discharge: SOC stays at 100 % for it
    p.step(10.0, 50.0)
    p.step(5.0, -50.0)
    assert c.soc == 1.0
    p.step(10.0, -50.0)
    assert c.soc < 1.0


def test_overdischarge_shows_undervoltage():
    p = quiet_pack(cells=2, capacity_ah=100.0, soc_pct=1.0)
    # 1 Ah left; 100 A for 60 s takes 1.67 Ah: 0.67 % beyond empty
    for _ in range(60):
        p.step(1.0, -100.0)
    assert p.soc_pct() == 0.0
    assert p.cells[0].ocv_mv() < 2480.0
    assert p.cell_mv(0, -100.0) < 2420.0
    for _ in range(100):
        p.step(60.0, 0.0)
    assert close(p.cells[0].ocv_mv(), 2500.0, 0.1)


def test_cell_alone():
    c = Cell("nmc", capacity_ah=3.0, soc=0.5)
    # NMC R0 = 0.060 / 3 Ah = 20 mOhm
    assert close(c.r0_ohm, 0.02, 1e-12)
    assert close(c.terminal_mv(1.0), c.ocv_mv() + 20.0, 1e-9)
    c.self_discharge_pct_month = 0.0
    c.step(3600.0, 1.5)  # 1.5 Ah into 3 Ah: +50 %
    assert close(c.soc, 1.0, 1e-12)


def test_step_rejects_negative_time():
    p = Pack(cells=1)
    p.step(0.0, 100.0)  # nothing happens
    assert p.cells[0].soc == 0.5 and p.temp_c == 25.0
    try:
        p.step(-1.0, 0.0)
        raised = False
    except ValueError:
        raised = True
    assert raised
