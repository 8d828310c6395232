# Tests of the current sources and the pack-current solver
# (tools/sim/sources.py). Plain functions with bare asserts: they run under
# pytest and inside MicroPython (a runner calls every test_* function).
#
# Reference pack for the hand calculations: 16S LFP 100 Ah at 25 C,
# R = 16 * 0.45 mOhm = 7.2 mOhm; OCV at 50 % = 3297 mV -> emf 52.752 V.
# A CV limit of 3450 mV/cell is 55.2 V for 16 cells.
import math

from pack import Pack
from sources import Charger, Constant, Load, Short, Solar, hour_of_day, solve

H = 3600.0
DAY = 86400.0
R16 = 0.0072


def close(a, b, tol):
    return abs(a - b) <= tol


def raises(fn, exc=ValueError):
    try:
        fn()
    except exc:
        return True
    return False


def test_hour_of_day():
    assert hour_of_day(0) == 0.0
    assert hour_of_day(12 * H) == 12.0
    assert hour_of_day(3 * DAY + 6.5 * H) == 6.5


# ---- solar -------------------------------------------------------------------


def test_solar_day_curve():
    s = Solar(40.0)  # 6:00 to 18:00
    for h in (0.0, 3.0, 5.99, 6.0, 18.0, 20.0, 23.9):
        assert s.current_a(h * H) == 0.0, h
    assert close(s.current_a(12 * H), 40.0, 1e-9)  # peak at noon
    # 9:00 is a quarter of the day: 40 * sin(pi/4) = 28.28 A
    assert close(s.current_a(9 * H), 40.0 * math.sqrt(0.5), 1e-9)
    assert close(s.current_a(15 * H), s.current_a(9 * H), 1e-9)
    # repeats daily
    assert close(s.current_a(5 * DAY + 9 * H), s.current_a(9 * H), 1e-9)
    # another window: 5:00 to 21:00, noon at 13:00
    w = Solar(10.0, sunrise_h=5.0, sunset_h=21.0)
    assert close(w.current_a(13 * H), 10.0, 1e-9)
    assert w.current_a(4.9 * H) == 0.0
    assert close(Solar(1.0).cv_v(16), 55.2, 1e-9)
    assert raises(lambda: Solar(1.0, sunrise_h=18, sunset_h=6))


def test_solar_clouds_deterministic():
    clear = Solar(40.0)
    a = Solar(40.0, cloud_pct=50, seed=3)
    b = Solar(40.0, cloud_pct=50, seed=3)
    c = Solar(40.0, cloud_pct=50, seed=4)
    lo = 1.0
    total = 0.0
    count = 0
    differs = False
    for m in range(6 * 60 + 1, 18 * 60):
        t = m * 60.0
        f = a.cloud_factor(t)
        assert 0.2 <= f <= 1.0
        assert a.current_a(t) == b.current_a(t)
        assert a.current_a(t) <= clear.current_a(t) + 1e-9
        if a.current_a(t) != c.current_a(t):
            differs = True
        lo = f if f < lo else lo
        total += f
        count += 1
    assert differs
    assert lo < 0.6  # real dips
    mean = total / count
    # half of the slots cloudy at 20-60 %: expected mean ~0.7
    assert 0.5 < mean < 0.9, mean
    assert clear.cloud_factor(12 * H) == 1.0
    overcast = Solar(40.0, cloud_pct=100, seed=5)
    for m in range(0, 1440, 7):
        assert overcast.cloud_factor(m * 60.0) <= 0.6
    # clouds do not repeat daily, the sun curve does
    d1 = [a.cloud_factor(12 * H + k * 600.0) for k in range(12)]
    d2 = [a.cloud_factor(DAY + 12 * H + k * 600.0) for k in range(12)]
    assert d1 != d2


def test_solar_charges_until_its_cv_limit():
    p = Pack(soc_pct=50.0)
    s = Solar(40.0, cv_mv_per_cell=3450)
    # noon, far from CV: 52.752 + 40 * 0.0072 = 53.04 V < 55.2 V -> 40 A
    assert close(solve([s], 12 * H, p, True, True), 40.0, 1e-9)
    assert solve([s], 2 * H, p, True, True) == 0.0  # night
    # 96.5 %: OCV 3380 + 0.3 * 220 = 3446 mV, emf 55.136 V: only
    # (55.2 - 55.136) / 0.0072 = 8.89 A fit under the limit
    full = Pack(soc_pct=96.5)
    assert close(solve([s], 12 * H, full, True, True), 0.064 / R16, 1e-6)


# ---- load --------------------------------------------------------------------


def test_load_schedule_and_daily_repeat():
    ld = Load([[7, 20], [0, 5], [18, 40], [23, 10]])  # order does not matter
    assert ld.current_a(3 * H) == -5.0  # drawn from the pack: negative
    assert ld.current_a(7 * H) == -20.0  # from the hour on
    assert ld.current_a(6.99 * H) == -5.0
    assert ld.current_a(12 * H) == -20.0
    assert ld.current_a(19 * H) == -40.0
    assert ld.current_a(23.5 * H) == -10.0
    assert ld.current_a(DAY + 12 * H) == -20.0  # next day, same
    assert ld.current_a(9 * DAY + 19 * H) == -40.0
    # before the first entry of the day, last night's entry still holds
    night = Load([[6, 10], [22, 2]])
    assert night.current_a(3 * H) == -2.0
    assert night.current_a(8 * H) == -10.0
    assert night.scheduled_a(23 * H) == 2.0
    assert raises(lambda: Load([]))
    assert raises(lambda: Load([[25, 1]]))


def test_load_noise():
    a = Load([[0, 10]], noise_pct=20, seed=2)
    b = Load([[0, 10]], noise_pct=20, seed=2)
    c = Load([[0, 10]], noise_pct=20, seed=9)
    values = []
    for s in range(1000):
        v = a.current_a(s + 0.25)
        assert -12.0 <= v <= -8.0
        assert v == b.current_a(s + 0.25)  # deterministic by seed
        assert v == a.current_a(s + 0.75)  # one value per second
        values.append(v)
    assert min(values) < -11.5 and max(values) > -8.5
    assert abs(sum(values) / len(values) + 10.0) < 0.3
    assert [c.current_a(s) for s in range(20)] != values[:20]
    assert Load([[0, 10]]).current_a(123.4) == -10.0  # no noise by default


# ---- charger -------------------------------------------------------------------


def test_charger_cc_far_from_cv():
    p = Pack(soc_pct=50.0)
    ch = Charger(50.0, 3450)
    # 52.752 + 50 * 0.0072 = 53.112 V < 55.2 V: full current
    assert close(solve([ch], 0.0, p, True, True), 50.0, 1e-9)
    assert close(ch.cv_v(16), 55.2, 1e-9)


def test_charger_tapers_near_cv():
    ch = Charger(50.0, 3450)
    # emf 55.136 V (96.5 %): (55.2 - 55.136) / 0.0072 = 8.89 A
    assert close(solve([ch], 0.0, Pack(soc_pct=96.5), True, True), 8.8889, 1e-3)
    # emf above CV (99 %: 16 * 3556 mV = 56.9 V): nothing
    assert solve([ch], 0.0, Pack(soc_pct=99.0), True, True) == 0.0
    # charged from 95 %: CC, then CV with the current falling toward zero;
    # the terminal voltage never exceeds 55.2 V
    p = Pack(soc_pct=95.0)
    first = solve([ch], 0.0, p, True, True)
    assert close(first, 50.0, 1e-9)
    i = first
    at_100 = None
    for s in range(1500):
        i = solve([ch], float(s), p, True, True)
        assert p.terminal_v(i) <= 55.2 + 1e-9
        assert 0.0 <= i <= 50.0 + 1e-9
        if s == 100:
            at_100 = i
        p.step(1.0, i)
    assert 1.0 < at_100 < 49.0  # tapering
    assert i < 0.05  # -> small as the emf approaches 55.2 V
    assert close(p.emf_v(), 55.2, 0.001)
    assert max(p.cells_mv(0.0)) < 3451.0


def test_charger_serves_the_load_under_cv():
    ch = Charger(50.0, 3450)
    ld = Load([[0, 20]])
    # at 96.5 % the charger gives 20 A to the load and 8.89 A to the pack
    assert close(solve([ch, ld], 0.0, Pack(soc_pct=96.5), True, True), 8.8889, 1e-3)
    # above CV the charger backs off completely; the pack feeds the load
    assert close(solve([ch, ld], 0.0, Pack(soc_pct=99.0), True, True), -20.0, 1e-9)


def test_charger_windows():
    night = Charger(30.0, 3450, windows=[[22, 6]])  # wraps midnight
    assert night.current_a(23 * H) == 30.0
    assert night.current_a(2 * H) == 30.0
    assert night.current_a(12 * H) == 0.0
    assert night.current_a(6 * H) == 0.0
    two = Charger(30.0, 3450, windows=[[1, 3], [13, 15]])
    assert two.current_a(2 * H) == 30.0 and two.current_a(14 * H) == 30.0
    assert two.current_a(4 * H) == 0.0 and two.current_a(DAY + 14 * H) == 30.0
    p = Pack()
    assert solve([two], 4 * H, p, True, True) == 0.0
    assert Charger(30.0, 3450).current_a(12345.0) == 30.0  # None = always


def test_charger_cv_failed_overcharges():
    ch = Charger(50.0, 3450)
    ch.cv_failed = True
    # keeps max_a even with the emf above the CV voltage (99 %: 56.9 V)
    assert solve([ch], 0.0, Pack(soc_pct=99.0), True, True) == 50.0
    # from 95 %: 5 Ah to full = 360 s at 50 A, then the overvoltage rises
    p = Pack(soc_pct=95.0)
    over_at = None
    for s in range(1200):
        i = solve([ch], float(s), p, True, True)
        assert i == 50.0
        if max(p.cells_mv(i)) > 3650.0:
            over_at = s
            break
        p.step(1.0, i)
    assert over_at is not None and 300 < over_at < 600, over_at
    assert p.soc_pct() == 100.0
    # the FET saves it: CHG off, nothing flows
    assert solve([ch], 0.0, p, False, True) == 0.0


# ---- FETs ----------------------------------------------------------------------


def test_chg_off_blocks_charging_only():
    p = Pack(soc_pct=50.0)
    ch = Charger(50.0, 3450)
    # charger 50 A, load 10 A: +40 A into the pack with both FETs on
    assert close(solve([ch, Load([[0, 10]])], 0.0, p, True, True), 40.0, 1e-9)
    # CHG off: nothing into the pack, the charger only feeds the load
    assert solve([ch, Load([[0, 10]])], 0.0, p, False, True) == 0.0
    # load alone: still drawn with CHG off
    assert close(solve([Load([[0, 10]])], 0.0, p, False, True), -10.0, 1e-9)
    # load 30 A, charger 20 A: the pack gives the other 10 A
    ch20 = Charger(20.0, 3450)
    assert close(solve([ch20, Load([[0, 30]])], 0.0, p, False, True), -10.0, 1e-9)
    # solar at noon with CHG off: 0 into the pack
    assert solve([Solar(40.0)], 12 * H, p, False, True) == 0.0


def test_dsg_off_blocks_discharging_only():
    p = Pack(soc_pct=50.0)
    assert solve([Load([[0, 30]])], 0.0, p, True, False) == 0.0
    assert solve([Constant(-5.0)], 0.0, p, True, False) == 0.0
    # charging still works with DSG off (through its body diode)
    assert close(solve([Charger(50.0, 3450), Load([[0, 10]])], 0.0, p, True, False), 40.0, 1e-9)
    assert solve([Charger(50.0, 3450)], 0.0, p, False, False) == 0.0
    assert solve([Load([[0, 30]])], 0.0, p, False, False) == 0.0


def test_short_circuit():
    p = Pack(soc_pct=50.0)
    sh = Short(0.010)
    # I = -emf / (R + 0.01) = -52.752 / 0.0172 = -3066.98 A
    i = solve([sh], 0.0, p, True, True)
    assert close(i, -52.752 / (R16 + 0.010), 1e-6)
    assert close(i, -3066.98, 0.01)
    # the terminal voltage collapses to I * 0.01 = 30.7 V
    assert close(p.terminal_v(i), -i * 0.010, 1e-6)
    # together with a 10 A load: (-10 - 100 * 52.752) / (1 + 100 * 0.0072)
    i2 = solve([sh, Load([[0, 10]])], 0.0, p, True, True)
    assert close(i2, (-10.0 - 5275.2) / 1.72, 1e-6)
    # DSG off cuts it off; an inactive short draws nothing
    assert solve([sh], 0.0, p, True, False) == 0.0
    sh.active = False
    assert solve([sh], 0.0, p, True, True) == 0.0
    assert Short(0.01, active=False).active is False
    assert raises(lambda: Short(0.0))


def test_constant_and_mixed_sources():
    p = Pack()
    assert solve([Constant(20.0)], 0.0, p, True, True) == 20.0
    assert solve([Constant(-20.0)], 0.0, p, True, True) == -20.0
    assert close(solve([Constant(5.0), Load([[0, 10]])], 0.0, p, True, True), -5.0, 1e-12)
    assert solve([], 0.0, p, True, True) == 0.0
    off = Constant(20.0, active=False)
    assert solve([off], 0.0, p, True, True) == 0.0
    ld = Load([[0, 10]])
    ld.active = False
    assert solve([ld, Constant(3.0)], 0.0, p, True, True) == 3.0
    # an ideal current source is not voltage-limited
    assert solve([Constant(50.0)], 0.0, Pack(soc_pct=100.0), True, True) == 50.0


def test_two_voltage_limited_sources():
    p = Pack(soc_pct=96.5)  # emf 55.136 V
    # charger CV 55.2 V, solar CV 56.8 V (3550 mV/cell), 30 A each: solar
    # alone lifts the bus to 55.136 + 30 * 0.0072 = 55.352 V > 55.2 V, so
    # the charger backs off to 0 and solar gives its 30 A
    ch = Charger(30.0, 3450)
    sol = Solar(30.0, cv_mv_per_cell=3550)
    assert close(solve([ch, sol], 12 * H, p, True, True), 30.0, 1e-9)
    assert close(solve([sol, ch], 12 * H, p, True, True), 30.0, 1e-9)  # order-free
    # solar only 5 A: 55.172 V, the charger tops up to 55.2 V: 8.89 A in all
    weak = Solar(5.0, cv_mv_per_cell=3550)
    assert close(solve([ch, weak], 12 * H, p, True, True), 0.064 / R16, 1e-6)
    # at night the solar's limit does not count, the charger's does
    assert close(solve([ch, sol], 0.0, p, True, True), 0.064 / R16, 1e-6)


def test_solve_follows_temperature():
    # cold pack: R doubles at 0 C, so a short draws less and CV tapers sooner
    p = Pack(soc_pct=50.0)
    p.temp_c = 0.0
    r = p.r_ohm()
    assert close(r, 2 * R16, 2 * R16 * 0.01)
    assert close(solve([Short(0.01)], 0.0, p, True, True), -52.752 / (r + 0.01), 1e-6)
