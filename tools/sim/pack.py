"""A physically plausible battery pack for the virtual board.

Each cell is an equivalent circuit: open-circuit voltage (a function of its
state of charge), a series resistance R0 and one R1||C pair (time constant
tau), plus a self-discharge leak. The cells are in series and share one
lumped temperature with a first-order thermal model to ambient.

Sign convention: current + = charging (into the pack), in A. Voltages of
single cells are in mV, pack voltages in V, resistances in ohm.

Terminal voltage of a cell at pack current i:
    v = ocv(soc) + v_rc + i * R0(T)
with dv_rc/dt = (i * R1(T) - v_rc) / tau, integrated exactly for a current
that is constant over the step: v_rc' = v_rc * a + i * R1 * (1 - a),
a = exp(-dt / tau).

Beyond full and empty: SOC itself is clamped to 0..1, but charge pushed into
a full cell (or taken out of an empty one) is kept as an "excess" (Cell.over,
a fraction of capacity) and the open-circuit voltage is extrapolated steeply
from the table's end point: 1 mV per 0.01 % of capacity (100 mV per %), down
to 0 mV at the bottom and up to the last table point + 1500 mV at the top. So
an overcharged cell really shows an overvoltage, still rising while the
current keeps flowing. The excess is given back first when the current
reverses, and it decays at rest with OVER_TAU_S (the overcharge is lost in
side reactions / the overpotential relaxes): an overcharged cell at rest
settles back to its 100 % OCV within tens of minutes, as a real one does.

This file runs under CPython 3.11 and under MicroPython (unix port), so it
sticks to the common subset: no dataclasses/typing/enum/f-strings, `math`
only.
"""

import math

from prng import Prng

# --------------------------------------------------------------------------
# Chemistry data
# --------------------------------------------------------------------------
# ocv: open-circuit voltage in mV at SOC 0, 5, 10, ..., 100 % (21 points,
#   uniformly spaced, strictly increasing; ocv_mv() relies on the spacing).
# r0_ohm_ah / r1_ohm_ah: series resistance and RC-pair resistance at 25 C
#   times capacity in Ah (a cell of twice the capacity, built from the same
#   electrode, has half the resistance): R0 = r0_ohm_ah / capacity_ah.
# tau_s: time constant of the RC pair (diffusion / charge transfer).
# sd_pct_month: self-discharge in % of capacity per 30 days at 25 C (taken
#   as constant, independent of temperature and SOC).
# ea_k: Arrhenius constant Ea / R (K) of the resistances,
#   R(T) = R(25 C) * exp(ea_k * (1/T - 1/298.15)).
# ah_per_kg: cell capacity per kg of cell mass (thermal mass of the pack).
# cp: specific heat of the cells, J/(kg K).
CHEMISTRY = {
    # LFP/graphite prismatic (EVE LF105/LF280K, CATL 280 Ah class). OCV: the
    # usual 25 C pseudo-OCV curve (mean of C/20 charge and discharge), steep
    # knee from 2.5 V to ~3.2 V in the first 10 %, plateau 3.26-3.34 V from
    # 20 to 90 % (the two graphite staging steps at ~3.29 and ~3.33 V), steep
    # rise at the top. 100 % is 3.60 V here (the end of a CV charge); a fully
    # charged LFP cell that has rested for hours reads nearer 3.40-3.45 V.
    # R0: datasheets give AC IR 0.18-0.25 mOhm for 280 Ah and ~0.4 mOhm for
    # 105 Ah; DC (10 s pulse) resistance is about twice AC, so 0.45 mOhm at
    # 100 Ah. R1 ~ R0 and tau ~60 s is the usual 1-RC fit of LFP pulse
    # relaxation. Self-discharge ~2.5 %/month (datasheets: <=3 %/month).
    # ea_k = ln 2 / (1/273.15 - 1/298.15) = 2258 K: R doubles from 25 to
    # 0 C, Ea ~ 19 kJ/mol, within the 15-30 kJ/mol reported for LFP. Prismatic
    # LFP weighs ~2 kg per 100 Ah (280 Ah: 5.4 kg), cp ~1000-1100 J/(kg K).
    "lfp": {
        "ocv": (2500, 3000, 3200, 3230, 3260, 3268, 3276, 3284, 3290, 3294,
                3297, 3300, 3304, 3312, 3322, 3329, 3333, 3337, 3340, 3380,
                3600),
        "r0_ohm_ah": 0.045,
        "r1_ohm_ah": 0.040,
        "tau_s": 60.0,
        "sd_pct_month": 2.5,
        "ea_k": 2258.0,
        "ah_per_kg": 50.0,
        "cp": 1000.0,
    },
    # NMC/graphite (NMC532/622 pouch or prismatic). OCV from 3.0 V empty
    # rising steadily (steeper below 10 %) to 4.2 V full, the shape of
    # published C/25 OCV curves (e.g. Samsung/LG NMC datasheets, Birkl et
    # al. 2015). R0 ~0.6 mOhm at 100 Ah (a 50 Ah pouch is ~1.2 mOhm DC, a
    # 3 Ah 18650 ~20 mOhm). tau ~40 s. Self-discharge ~3 %/month. Same
    # doubling of R from 25 to 0 C. ~65 Ah/kg (~240 Wh/kg at 3.65 V).
    "nmc": {
        "ocv": (3000, 3300, 3450, 3530, 3580, 3615, 3640, 3660, 3680, 3700,
                3725, 3755, 3790, 3830, 3870, 3910, 3950, 3995, 4045, 4110,
                4200),
        "r0_ohm_ah": 0.060,
        "r1_ohm_ah": 0.050,
        "tau_s": 40.0,
        "sd_pct_month": 3.0,
        "ea_k": 2258.0,
        "ah_per_kg": 65.0,
        "cp": 1000.0,
    },
    # LTO/NMC (Toshiba SCiB 20 Ah class): 1.8 V empty, ~2.3-2.45 V over most
    # of the range, 2.75 V full (absolute limits 1.5 and 2.9 V). Very low
    # resistance (SCiB 20 Ah ~0.6 mOhm AC, ~1 mOhm DC: 0.02 Ohm*Ah), fast
    # RC (tau ~30 s), self-discharge ~1.5 %/month, a weaker temperature
    # dependence (R x1.5 from 25 to 0 C: ea_k = ln 1.5 / 3.07e-4 = 1321 K).
    # Heavy for its capacity: ~20 Ah in 0.5 kg, 40 Ah/kg.
    "lto": {
        "ocv": (1800, 2050, 2150, 2200, 2230, 2250, 2268, 2284, 2299, 2313,
                2327, 2341, 2355, 2370, 2386, 2404, 2425, 2450, 2485, 2550,
                2750),
        "r0_ohm_ah": 0.020,
        "r1_ohm_ah": 0.015,
        "tau_s": 30.0,
        "sd_pct_month": 1.5,
        "ea_k": 1321.0,
        "ah_per_kg": 40.0,
        "cp": 1000.0,
    },
}

# Extrapolation of the OCV beyond the table's ends: 1 mV per 0.01 % SOC.
BEYOND_MV = 10000.0  # mV per unit of SOC (1.0 = 100 %)
BEYOND_MAX_MV = 1500.0  # highest extrapolated OCV: last point + this
# Relaxation time constant of charge beyond full / below empty (see top).
OVER_TAU_S = 600.0

T_REF_K = 298.15
SECONDS_PER_MONTH = 30.0 * 86400.0
_SD_K = 1.0 / (100.0 * SECONDS_PER_MONTH)  # % per month -> fraction per s

# Thermal model (lumped): a 16S 100 Ah LFP pack (32 kg of cells, about
# 0.8 m2 of enclosure surface) loses heat by natural convection and radiation
# with h ~ 8-10 W/(m2 K): ~7 W/K, i.e. 0.15 K/W, a thermal time constant of
# 32000 J/K * 0.15 K/W = 80 min. Smaller or larger packs scale with their
# surface, i.e. with mass ** (2/3).
R_TH_REF_K_PER_W = 0.15
R_TH_REF_KG = 32.0


def chem_data(chem):
    """The data dict of a chemistry name ("lfp", "nmc", "lto")."""
    try:
        return CHEMISTRY[chem]
    except KeyError:
        raise ValueError("unknown chemistry %r (one of lfp, nmc, lto)" % (chem,))


def _ocv_of(t, x):
    # OCV (float mV) from a uniformly spaced table t at x (fraction, may lie
    # beyond 0..1: steep linear extrapolation, clamped).
    if x <= 0.0:
        v = t[0] + x * BEYOND_MV
        return v if v > 0.0 else 0.0
    last = len(t) - 1
    if x >= 1.0:
        v = t[last] + (x - 1.0) * BEYOND_MV
        top = t[last] + BEYOND_MAX_MV
        return v if v < top else top
    p = x * last
    k = int(p)
    y0 = t[k]
    return y0 + (t[k + 1] - y0) * (p - k)


def ocv_mv(chem, soc):
    """Open-circuit voltage (float mV) of chemistry `chem` at soc (0..1),
    piecewise linear in the table; outside 0..1 extrapolated steeply."""
    return _ocv_of(chem_data(chem)["ocv"], soc)


def soc_from_ocv(chem, mv):
    """Inverse of ocv_mv() over the table: soc 0..1 (clamped)."""
    t = chem_data(chem)["ocv"]
    last = len(t) - 1
    if mv <= t[0]:
        return 0.0
    if mv >= t[last]:
        return 1.0
    k = 1
    while t[k] < mv:
        k += 1
    y0 = t[k - 1]
    return (k - 1 + (mv - y0) / (t[k] - y0)) / last


def r_factor(chem, temp_c):
    """Arrhenius factor of the resistances at temp_c (1.0 at 25 C)."""
    if temp_c < -60.0:  # keep the factor finite for absurd inputs
        temp_c = -60.0
    elif temp_c > 120.0:
        temp_c = 120.0
    return math.exp(chem_data(chem)["ea_k"] * (1.0 / (temp_c + 273.15) - 1.0 / T_REF_K))


# --------------------------------------------------------------------------
# Cell
# --------------------------------------------------------------------------


class Cell:
    """One cell: charge-based state of charge and an R0 + R1||C circuit.

    Attributes (all settable):
      chemistry        name, e.g. "lfp"
      capacity_as      capacity in A*s (Ah * 3600)
      soc              state of charge, 0..1 (charge / capacity)
      over             charge beyond full (> 0) or below empty (< 0) as a
                       fraction of capacity; 0 in normal use (see the top)
      r0_ohm, r1_ohm   series and RC-pair resistance at 25 C
      tau_s            RC time constant
      v_rc             voltage across the RC pair, V (+ while charging)
      self_discharge_pct_month   leak, % of capacity per 30 days
      pin_mv           None, or the pinned open-circuit voltage in mV
    """

    def __init__(self, chemistry="lfp", capacity_ah=100.0, soc=0.5, r0_ohm=None,
                 r1_ohm=None, tau_s=None, self_discharge_pct_month=None):
        d = chem_data(chemistry)
        if capacity_ah <= 0:
            raise ValueError("capacity must be positive")
        self.chemistry = chemistry
        self._table = d["ocv"]
        self.capacity_as = float(capacity_ah) * 3600.0
        self.soc = 0.0 if soc < 0 else (1.0 if soc > 1 else float(soc))
        self.over = 0.0
        self.r0_ohm = d["r0_ohm_ah"] / capacity_ah if r0_ohm is None else float(r0_ohm)
        self.r1_ohm = d["r1_ohm_ah"] / capacity_ah if r1_ohm is None else float(r1_ohm)
        self.tau_s = d["tau_s"] if tau_s is None else float(tau_s)
        self.v_rc = 0.0
        if self_discharge_pct_month is None:
            self_discharge_pct_month = d["sd_pct_month"]
        self.self_discharge_pct_month = float(self_discharge_pct_month)
        self.pin_mv = None
        # exp() cache: valid for (_dt, _tau)
        self._dt = -1.0
        self._tau = -1.0
        self._a = 1.0
        self._ao = 1.0

    def capacity_ah(self):
        return self.capacity_as / 3600.0

    def ocv_mv(self):
        """Open-circuit voltage, float mV (the pinned value while pinned)."""
        if self.pin_mv is not None:
            return self.pin_mv
        return _ocv_of(self._table, self.soc + self.over)

    def terminal_mv(self, i_a, f=1.0):
        """Terminal voltage (mV) at cell current i_a (A, + = charging);
        f = resistance temperature factor (r_factor())."""
        return self.ocv_mv() + 1000.0 * (self.v_rc + i_a * self.r0_ohm * f)

    def pin(self, mv):
        """Hold the open-circuit voltage at mv: SOC stops moving, the RC pair
        starts from rest (so at zero current the cell reads exactly mv) and
        keeps responding to current; the terminal voltage still shows
        i * R0 and v_rc."""
        self.pin_mv = float(mv)
        self.v_rc = 0.0
        self.over = 0.0

    def unpin(self):
        """Release the pin: SOC continues from soc_from_ocv(pinned mV)."""
        if self.pin_mv is not None:
            self.soc = soc_from_ocv(self.chemistry, self.pin_mv)
            self.over = 0.0
            self.pin_mv = None

    def step(self, dt_s, i_a, f=1.0):
        """Integrate over dt_s at a constant cell current i_a (A, + =
        charging) with resistance factor f. Returns the heat in J (I^2 R0
        plus the RC branch)."""
        if dt_s != self._dt or self.tau_s != self._tau:
            self._dt = dt_s
            self._tau = self.tau_s
            self._a = math.exp(-dt_s / self.tau_s) if self.tau_s > 0 else 0.0
            self._ao = math.exp(-dt_s / OVER_TAU_S)
        a = self._a
        r1 = self.r1_ohm * f
        v0 = self.v_rc
        v1 = v0 * a + i_a * r1 * (1.0 - a)
        self.v_rc = v1
        heat = i_a * i_a * self.r0_ohm * f * dt_s
        if r1 > 0.0:
            # power in R1 is v_rc^2 / R1; mean of the step's two ends
            heat += (v0 * v0 + v1 * v1) * 0.5 * dt_s / r1
        if self.pin_mv is None:
            soc = self.soc
            x = soc + self.over + i_a * dt_s / self.capacity_as
            if soc > 0.0:
                x -= self.self_discharge_pct_month * dt_s * _SD_K
            if x > 1.0:
                self.soc = 1.0
                self.over = (x - 1.0) * self._ao
            elif x < 0.0:
                self.soc = 0.0
                self.over = x * self._ao
            else:
                self.soc = x
                self.over = 0.0
        return heat


# --------------------------------------------------------------------------
# Pack
# --------------------------------------------------------------------------

_OVERRIDE_KEYS = ("capacity_pct", "r0_pct", "soc_pct", "self_discharge_pct_month")


class Pack:
    """n cells in series with one lumped temperature.

    Pack(chemistry="lfp", cells=16, capacity_ah=100.0, soc_pct=50.0,
         capacity_spread_pct=0.0, soc_spread_pct=0.0,
         resistance_spread_pct=0.0, seed=1, ambient_c=25.0, temp_c=None,
         overrides=None)

    Spreads are uniform, drawn from Prng(seed) (three draws per cell in
    cell order, always, so one spread does not change another's values):
      capacity  x (1 +- capacity_spread_pct / 100)
      R0 and R1 x (1 +- resistance_spread_pct / 100) (one factor per cell)
      SOC       soc_pct +- soc_spread_pct percentage points, clamped 0..100
    overrides: {cell number (1-based, int or str): {"capacity_pct": 80,
    "r0_pct": 150, "soc_pct": 30, "self_discharge_pct_month": 10}} replaces
    the drawn value of that cell (capacity_pct and r0_pct relative to the
    nominal cell, soc_pct absolute).

    Cell indices of the methods are 0-based.
    """

    def __init__(self, chemistry="lfp", cells=16, capacity_ah=100.0, soc_pct=50.0,
                 capacity_spread_pct=0.0, soc_spread_pct=0.0, resistance_spread_pct=0.0,
                 seed=1, ambient_c=25.0, temp_c=None, overrides=None):
        d = chem_data(chemistry)
        n = int(cells)
        if n < 1:
            raise ValueError("cells must be >= 1")
        if capacity_ah <= 0:
            raise ValueError("capacity must be positive")
        self.n = n
        self.chemistry = chemistry
        self.capacity_ah = float(capacity_ah)
        ov = {}
        if overrides:
            for key in overrides:
                num = int(key)
                if not 1 <= num <= n:
                    raise ValueError("override for cell %r: no such cell (1..%d)" % (key, n))
                vals = overrides[key]
                for name in vals:
                    if name not in _OVERRIDE_KEYS:
                        raise ValueError("override %r for cell %d: not one of %s"
                                         % (name, num, ", ".join(_OVERRIDE_KEYS)))
                ov[num - 1] = vals
        rng = Prng(seed)
        r0 = d["r0_ohm_ah"] / capacity_ah
        r1 = d["r1_ohm_ah"] / capacity_ah
        self.cells = []
        for k in range(n):
            u_cap = rng.uniform(-1.0, 1.0)
            u_soc = rng.uniform(-1.0, 1.0)
            u_res = rng.uniform(-1.0, 1.0)
            cap = capacity_ah * (1.0 + u_cap * capacity_spread_pct / 100.0)
            soc = soc_pct + u_soc * soc_spread_pct
            rf = 1.0 + u_res * resistance_spread_pct / 100.0
            r0k = r0 * rf
            r1k = r1 * rf
            sd = d["sd_pct_month"]
            o = ov.get(k)
            if o:
                if "capacity_pct" in o:
                    cap = capacity_ah * o["capacity_pct"] / 100.0
                if "r0_pct" in o:
                    r0k = r0 * o["r0_pct"] / 100.0
                if "soc_pct" in o:
                    soc = o["soc_pct"]
                if "self_discharge_pct_month" in o:
                    sd = o["self_discharge_pct_month"]
            if cap <= 0:
                raise ValueError("cell %d: capacity must be positive" % (k + 1))
            self.cells.append(Cell(chemistry, cap, soc / 100.0, r0k, r1k, d["tau_s"], sd))
        self.ambient_c = float(ambient_c)
        self.temp_c = self.ambient_c if temp_c is None else float(temp_c)
        # Thermal mass and resistance to ambient (settable).
        mass = n * capacity_ah / d["ah_per_kg"]
        self.c_th_j_per_k = mass * d["cp"]
        self.r_th_k_per_w = R_TH_REF_K_PER_W * math.pow(R_TH_REF_KG / mass, 2.0 / 3.0)
        self.heat_w = 0.0  # mean heat power of the last step (cells only)
        self._ea_k = d["ea_k"]
        self._f_t = None  # r_factor() cache: valid for temperature _f_t
        self._f = 1.0
        self._th_key = None  # thermal exp() cache: valid for (dt, r_th, c_th)
        self._th_a = 1.0

    # ---- quantities --------------------------------------------------

    def r_factor(self):
        """Resistance temperature factor at the pack temperature."""
        t = self.temp_c
        if t != self._f_t:
            tc = -60.0 if t < -60.0 else (120.0 if t > 120.0 else t)
            self._f = math.exp(self._ea_k * (1.0 / (tc + 273.15) - 1.0 / T_REF_K))
            self._f_t = t
        return self._f

    def emf_v(self):
        """Sum of the cells' OCV and RC voltages, V (the pack voltage at zero
        current)."""
        mv = 0.0
        vrc = 0.0
        for c in self.cells:
            mv += c.ocv_mv()
            vrc += c.v_rc
        return mv / 1000.0 + vrc

    def r_ohm(self):
        """Sum of the cells' R0 at the pack temperature, ohm."""
        r = 0.0
        for c in self.cells:
            r += c.r0_ohm
        return r * self.r_factor()

    def terminal_v(self, i_a):
        """Pack terminal voltage (V) at pack current i_a (+ = charging)."""
        return self.emf_v() + i_a * self.r_ohm()

    def cell_mv(self, k, i_a, bleed_a=0.0):
        """Terminal voltage (float mV) of cell k (0-based) at pack current
        i_a (A, + = charging); bleed_a (A) is drawn by that cell's bleed
        resistor, so the cell itself carries i_a - bleed_a."""
        return self.cells[k].terminal_mv(i_a - bleed_a, self.r_factor())

    def cells_mv(self, i_a, bleed_a=None):
        """List of every cell's terminal voltage (float mV)."""
        f = self.r_factor()
        out = []
        for k in range(self.n):
            b = bleed_a[k] if bleed_a is not None else 0.0
            out.append(self.cells[k].terminal_mv(i_a - b, f))
        return out

    def soc_pct(self):
        """Charge-weighted pack SOC: total charge / total capacity * 100."""
        q = 0.0
        cap = 0.0
        for c in self.cells:
            q += c.soc * c.capacity_as
            cap += c.capacity_as
        return 100.0 * q / cap

    def cell_soc_pct(self, k):
        return 100.0 * self.cells[k].soc

    def thermal_tau_s(self):
        """Time constant of the pack temperature toward ambient."""
        return self.r_th_k_per_w * self.c_th_j_per_k

    # ---- pinning -----------------------------------------------------

    def pin(self, k, mv):
        """Pin the OCV of cell k (0-based) at mv (see Cell.pin)."""
        self.cells[k].pin(mv)

    def unpin(self, k):
        self.cells[k].unpin()

    def pinned(self, k):
        """The pinned OCV of cell k in mV, or None."""
        return self.cells[k].pin_mv

    # ---- time --------------------------------------------------------

    def step(self, dt_s, i_a, bleed_a=None):
        """Advance by dt_s seconds at pack current i_a (A, + = charging),
        constant over the step. bleed_a: None or a sequence of n bleed
        currents (A, >= 0) each drawn from its own cell only; their resistor
        heat is on the BMS board, not in the pack."""
        if dt_s <= 0:
            if dt_s < 0:
                raise ValueError("time only moves forward")
            return
        f = self.r_factor()
        heat = 0.0
        if bleed_a is None:
            for c in self.cells:
                heat += c.step(dt_s, i_a, f)
        else:
            cells = self.cells
            for k in range(self.n):
                heat += cells[k].step(dt_s, i_a - bleed_a[k], f)
        p = heat / dt_s
        self.heat_w = p
        # First-order thermal model, exact for constant power over the step:
        # T -> T_inf = ambient + P * R_th with time constant R_th * C_th.
        r_th = self.r_th_k_per_w
        c_th = self.c_th_j_per_k
        key = self._th_key
        if key is None or key[0] != dt_s or key[1] != r_th or key[2] != c_th:
            self._th_key = (dt_s, r_th, c_th)
            self._th_a = math.exp(-dt_s / (r_th * c_th))
        t_inf = self.ambient_c + p * r_th
        self.temp_c = t_inf + (self.temp_c - t_inf) * self._th_a
