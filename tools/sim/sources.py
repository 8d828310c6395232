"""Current sources around the pack, and the solver of the pack current.

Time t_s is seconds since midnight of day 0; daily profiles repeat every
86400 s. Currents are in A, + = into the pack (charging).

Every source has an `active` flag and three methods the solver uses:
  current_a(t_s)  the current it would deliver into the bus now (A, + =
                  charging; a load returns a negative value). For a
                  voltage-limited source this is the most it can give.
  cv_v(cells)     None for an ideal current source, else the bus voltage (V)
                  it will not push the pack above (CV / absorb stage).
  conductance_s() 1 / ohms for a resistive short, else 0.

This file runs under CPython 3.11 and under MicroPython (unix port).
"""

import math

from prng import mix32, unit

DAY_S = 86400.0


def hour_of_day(t_s):
    """Hour of the day (0 <= h < 24, float) at t_s."""
    return (t_s % DAY_S) / 3600.0


def _in_windows(h, windows):
    # windows: [[start_h, end_h], ...]; start > end wraps past midnight.
    for w in windows:
        s = w[0]
        e = w[1]
        if s <= e:
            if s <= h < e:
                return True
        elif h >= s or h < e:
            return True
    return False


class Source:
    """Base: an inactive-by-nothing source that delivers nothing."""

    active = True

    def current_a(self, t_s):
        return 0.0

    def cv_v(self, cells):
        return None

    def conductance_s(self):
        return 0.0


class Constant(Source):
    """Ideal current source: amps + = charging, - = discharging."""

    def __init__(self, amps, active=True):
        self.amps = float(amps)
        self.active = active

    def current_a(self, t_s):
        return self.amps


class Load(Source):
    """Household DC / inverter load drawn from the pack.

    schedule: [[hour, amps], ...], piecewise constant: from each hour until
    the next entry the load draws amps (positive = drawn from the pack),
    repeating daily; before the first entry of the day the last entry of the
    previous day still holds. noise_pct: each whole second the current is
    scaled by a deterministic uniform factor within +-noise_pct % (seeded;
    the same t_s always gives the same value).
    """

    def __init__(self, schedule, noise_pct=0, seed=1, active=True):
        if not schedule:
            raise ValueError("empty load schedule")
        rows = []
        for row in schedule:
            h = float(row[0])
            if not 0.0 <= h < 24.0:
                raise ValueError("load schedule hour %r not in 0..24" % (row[0],))
            rows.append((h, float(row[1])))
        rows.sort()
        self.hours = [r[0] for r in rows]
        self.amps = [r[1] for r in rows]
        self.noise_pct = float(noise_pct)
        self._salt = mix32(int(seed) ^ 0x4C4F4144)
        self.active = active

    def scheduled_a(self, t_s):
        """Scheduled draw (A, positive = from the pack) at t_s, no noise."""
        h = hour_of_day(t_s)
        hours = self.hours
        k = len(hours) - 1  # before the first entry: yesterday's last one
        for j in range(len(hours)):
            if hours[j] <= h:
                k = j
            else:
                break
        return self.amps[k]

    def current_a(self, t_s):
        a = self.scheduled_a(t_s)
        if self.noise_pct:
            u = unit(self._salt ^ (int(math.floor(t_s)) & 0xFFFFFFFF))
            a *= 1.0 + self.noise_pct / 100.0 * (2.0 * u - 1.0)
        return -a


class Solar(Source):
    """PV array behind an MPPT charge controller.

    Output current: peak_a * sin(pi * (h - sunrise) / (sunset - sunrise))
    between sunrise_h and sunset_h (a half-sine of irradiance, peak at solar
    noon), 0 at night. Voltage-limited: the controller does not push the bus
    above cv_mv_per_cell * cells (its absorb / CV stage); the solver reduces
    its output to hold that.

    cloud_pct (0..100): share of the daylight time under cloud. The day is
    cut into 10-minute slots; a slot is cloudy with probability cloud_pct/100
    and then passes 20-60 % of the sun (drawn per slot from the seed, not
    repeating daily); the factor is interpolated linearly between slot
    boundaries, so a passing cloud is a dip of 10-20 minutes.
    """

    SLOT_S = 600.0

    def __init__(self, peak_a, sunrise_h=6.0, sunset_h=18.0, cv_mv_per_cell=3450,
                 cloud_pct=0, seed=1, active=True):
        if not sunrise_h < sunset_h:
            raise ValueError("sunrise must be before sunset")
        self.peak_a = float(peak_a)
        self.sunrise_h = float(sunrise_h)
        self.sunset_h = float(sunset_h)
        self.cv_mv_per_cell = float(cv_mv_per_cell)
        self.cloud_pct = float(cloud_pct)
        self._salt = mix32(int(seed) ^ 0x534F4C52)
        self.active = active

    def _slot_factor(self, slot):
        u = unit(self._salt ^ (slot & 0xFFFFFFFF))
        if u * 100.0 >= self.cloud_pct:
            return 1.0
        v = unit(self._salt ^ ((slot + 0x5BD1E995) & 0xFFFFFFFF))
        return 0.2 + 0.4 * v

    def cloud_factor(self, t_s):
        """Transmission of the clouds at t_s (1.0 = clear sky)."""
        if self.cloud_pct <= 0.0:
            return 1.0
        p = t_s / self.SLOT_S
        s = int(math.floor(p))
        g0 = self._slot_factor(s)
        g1 = self._slot_factor(s + 1)
        return g0 + (g1 - g0) * (p - s)

    def current_a(self, t_s):
        h = hour_of_day(t_s)
        if h <= self.sunrise_h or h >= self.sunset_h:
            return 0.0
        x = (h - self.sunrise_h) / (self.sunset_h - self.sunrise_h)
        return self.peak_a * math.sin(math.pi * x) * self.cloud_factor(t_s)

    def cv_v(self, cells):
        return self.cv_mv_per_cell * cells / 1000.0


class Charger(Source):
    """Mains charger: constant current max_a, then constant voltage
    cv_mv_per_cell * cells (the solver tapers its current as the pack's emf
    approaches that voltage). Active during windows [[start_h, end_h], ...]
    (hours of the day; start > end wraps past midnight; None = always).

    cv_failed: when True its voltage regulation is broken and it pushes max_a
    whatever the voltage (the "charger overvoltage" fault).
    """

    def __init__(self, max_a, cv_mv_per_cell, windows=None, active=True):
        self.max_a = float(max_a)
        self.cv_mv_per_cell = float(cv_mv_per_cell)
        self.windows = windows
        self.cv_failed = False
        self.active = active

    def on_at(self, t_s):
        """True if a window is open at t_s."""
        return self.windows is None or _in_windows(hour_of_day(t_s), self.windows)

    def current_a(self, t_s):
        return self.max_a if self.on_at(t_s) else 0.0

    def cv_v(self, cells):
        if self.cv_failed:
            return None
        return self.cv_mv_per_cell * cells / 1000.0


class Short(Source):
    """A resistive short of `ohms` across the pack terminals (active flag)."""

    def __init__(self, ohms, active=True):
        if not ohms > 0:
            raise ValueError("short resistance must be > 0")
        self.ohms = float(ohms)
        self.active = active

    def conductance_s(self):
        return 1.0 / self.ohms


def _by_limit(entry):
    return entry[0]


def solve(sources, t_s, pack, chg_on=True, dsg_on=True):
    """Pack current (A, + = charging) that flows at t_s.

    The pack is an emf E in series with R (pack.emf_v(), pack.r_ohm()); on
    the bus side the ideal current sources add up to S_fix, the shorts to a
    conductance G, and the voltage-limited sources each offer up to A_j
    without pushing the terminal voltage V = E + I * R above their limit V_j.
    KCL at the terminal: I = S - G * V, so V = (E + R * S) / (1 + G * R) and
    I = (S - G * E) / (1 + G * R), where S = S_fix + the CV sources' output.
    CV sources are taken in order of rising limit: while V would exceed a
    source's limit it gives less (down to zero; a higher-limit source can
    then still push V up to its own limit), loads are always served.

    FETs then: with chg_on False the pack cannot be charged (I <= 0: a
    charger or solar only feeds the load), with dsg_on False it cannot be
    discharged (I >= 0: loads and shorts are cut off). As the circuit is
    monotonic, clamping the unconstrained solution gives the current that
    flows.
    """
    e = pack.emf_v()
    r = pack.r_ohm()
    if r < 1e-9:
        r = 1e-9
    n = pack.n
    s = 0.0
    g = 0.0
    cv = None
    for src in sources:
        if not src.active:
            continue
        g += src.conductance_s()
        a = src.current_a(t_s)
        lim = src.cv_v(n)
        if lim is None:
            s += a
        elif a > 0.0:
            if cv is None:
                cv = []
            cv.append((lim, a))
    k = 1.0 + g * r
    if cv is not None:
        if len(cv) > 1:
            cv.sort(key=_by_limit)
        for entry in cv:
            s += entry[1]
        for entry in cv:
            lim = entry[0]
            if (e + r * s) / k <= lim:
                break  # this and every higher-limit source at full output
            s_without = s - entry[1]
            if (e + r * s_without) / k <= lim:
                s = (lim * k - e) / r  # this source partial: V = lim
                break
            s = s_without  # this source gives nothing
    i = (s - g * e) / k
    if i > 0.0 and not chg_on:
        return 0.0
    if i < 0.0 and not dsg_on:
        return 0.0
    return i
