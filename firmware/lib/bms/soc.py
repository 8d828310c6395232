# State of charge, capacity and lifetime counters.
#
# Two halves. The tick (no allocation) only counts charge in integers:
# Coulombs. Once a second the main loop hands that charge and the latest
# reading to SocEstimator (floats, so it allocates, outside the tick):
#
# - a Kalman filter on SOC, with the current sensor's offset as a
#   "consider" state (its uncertainty widens SOC's; voltage never moves it).
#   Coulomb counting predicts. The mean cell voltage, less the modelled
#   drops (R0 and two RC pairs), is read as an OCV and inverted through the
#   curve: that SOC corrects, but only where the curve is steep enough to
#   say something (the slope gate: on LFP's plateau a few mV of model error
#   would drag SOC by tens of percent) and the load is light and settled.
# - R0 learned from current steps (dV/dI), the RC pairs by recursive least
#   squares (not on LFP, see _CELL).
# - a real full charge (highest cell at the charge voltage, current down to
#   the tail) is a measurement of 100 %. The offset is measured from the
#   charge counted between two full charges, and from the current read
#   while a charger floats the full pack.
# - the low knee corrects SOC near empty, logged once per discharge.
# - capacity re-estimated from the charge counted between two well-known
#   SOC points (a full charge and a rested OCV in a steep part of the
#   curve, or the other way round).
import math
import struct
from array import array

from micropython import const

_CLAMP_MA = const(500000)  # |current| counted at most: keeps mA*ms a small int

# ---- OCV curves -----------------------------------------------------------------
# Open-circuit voltage (mV) at 0, 5, ..., 100 % for a rested cell at 25 C:
# typical curves for the chemistry (the simulator's cells use the same
# shapes). A board with its own cell data loads /ocv.csv instead.
_TABLES = {
    "lfp": (2500, 3000, 3200, 3230, 3260, 3268, 3276, 3284, 3290, 3294, 3297,
            3300, 3304, 3312, 3322, 3329, 3333, 3337, 3340, 3380, 3600),
    "nmc": (3000, 3300, 3450, 3530, 3580, 3615, 3640, 3660, 3680, 3700, 3725,
            3755, 3790, 3830, 3870, 3910, 3950, 3995, 4045, 4110, 4200),
    "lto": (1800, 2050, 2150, 2200, 2230, 2250, 2268, 2284, 2299, 2313, 2327,
            2341, 2355, 2370, 2386, 2404, 2425, 2450, 2485, 2550, 2750),
}

# Per chemistry: series resistance x capacity (Ohm*Ah) to start from (then
# learned), RC resistance as a fraction of it to start from, RC time constant
# (s), the slope (mV per %) below which the voltage is not used, the C-rate
# above which it is not used either, and whether the RC pairs are learned.
# LFP's relaxation after a load follows its two-phase plateaus, not RC
# pairs: fitted RC pairs there would fit the plateau and mislead the knees,
# so it keeps small fixed ones and trusts its voltage only at the knees.
_CELL = {
    "lfp": (0.05, 0.5, 60.0, 6.0, 0.2, False),
    "nmc": (0.06, 0.8, 40.0, 2.0, 1.0, True),
    "lto": (0.02, 0.75, 30.0, 2.0, 1.0, True),
}


class Ocv:
    """A rested cell's voltage against SOC: points (fraction, volts), both
    rising. Linear between points; beyond the ends the end slopes go on."""

    def __init__(self, socs, volts):
        if len(socs) != len(volts) or len(socs) < 3:
            raise ValueError("OCV table needs at least 3 points")
        for k in range(1, len(socs)):
            if not (socs[k] > socs[k - 1] and volts[k] > volts[k - 1]):
                raise ValueError("OCV table must rise in both SOC and voltage (point %d)" % k)
        if socs[0] > 0.001 or socs[-1] < 0.999 or socs[0] < -0.001 or socs[-1] > 1.001:
            raise ValueError("OCV table must span 0..100 %")
        # Single-precision arrays: 8 bytes a point, not a boxed float each.
        self.s = array("f", socs)
        self.v = array("f", volts)
        for k in range(1, len(socs)):
            if not (self.s[k] > self.s[k - 1] and self.v[k] > self.v[k - 1]):
                raise ValueError("OCV points %d and %d are too close to tell apart" % (k - 1, k))
        if not (1.0 <= self.v[0] and self.v[-1] <= 5.0):
            raise ValueError("OCV must be in volts (1.0..5.0), got %.3g..%.3g" % (self.v[0], self.v[-1]))
        self.n = len(socs)

    def _seg(self, s):
        t = self.s
        lo = 0
        hi = self.n - 2
        while lo < hi:  # bisect: the segment k with t[k] <= s < t[k+1]
            mid = (lo + hi + 1) >> 1
            if t[mid] <= s:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def volts(self, s):
        k = self._seg(s)
        t = self.s
        v = self.v
        return v[k] + (v[k + 1] - v[k]) * (s - t[k]) / (t[k + 1] - t[k])

    def slope(self, s):
        """dV/dSOC (V per unit SOC) where s lies; at a point, the flatter side."""
        k = self._seg(s)
        t = self.s
        v = self.v
        g = (v[k + 1] - v[k]) / (t[k + 1] - t[k])
        if k and s - t[k] < 1e-9:
            g2 = (v[k] - v[k - 1]) / (t[k] - t[k - 1])
            if g2 < g:
                g = g2
        return g

    def soc(self, volts):
        """SOC (fraction, clamped 0..1) of a rested cell at volts."""
        v = self.v
        if volts <= v[0]:
            return 0.0
        if volts >= v[-1]:
            return 1.0
        for k in range(1, self.n):
            if volts <= v[k]:
                t = self.s
                return t[k - 1] + (t[k] - t[k - 1]) * (volts - v[k - 1]) / (v[k] - v[k - 1])
        return 1.0


def default_ocv(chemistry):
    t = _TABLES[chemistry]
    n = len(t) - 1
    return Ocv([k / n for k in range(n + 1)], [mv / 1000 for mv in t])


def parse_ocv_csv(text):
    """Ocv from CSV text with a header naming soc_pct and ocv_v (any order,
    other columns ignored). Raises ValueError with one line saying why."""
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError("OCV file is empty")
    head = [h.strip() for h in lines[0].split(",")]
    if "soc_pct" not in head or "ocv_v" not in head:
        raise ValueError("OCV header must name soc_pct and ocv_v, got: %s" % lines[0])
    a = head.index("soc_pct")
    b = head.index("ocv_v")
    socs = []
    volts = []
    for n, ln in enumerate(lines[1:]):
        f = ln.split(",")
        try:
            socs.append(float(f[a]) / 100)
            volts.append(float(f[b]))
        except (ValueError, IndexError):
            raise ValueError("OCV row %d is not two numbers: %s" % (n + 2, ln))
    return Ocv(socs, volts)


# ---- the tick's half -----------------------------------------------------------


class Coulombs:
    """Charge counted by the tick in integers (never allocates): whole
    mA*s in mas, the remainder in mA*ms; time in ms. The main loop takes
    both once a second."""

    def __init__(self):
        self.mas = 0
        self.ms = 0
        self._rem = 0

    def add(self, current_ma, dt_ms):
        if current_ma > _CLAMP_MA:
            current_ma = _CLAMP_MA
        elif current_ma < -_CLAMP_MA:
            current_ma = -_CLAMP_MA
        r = self._rem + current_ma * dt_ms
        k = r // 1000  # floor: the remainder stays 0..999
        self._rem = r - k * 1000
        self.mas += k
        self.ms += dt_ms

    def take(self):
        """(mA*s, ms) since the last take; the tick may run in between any
        two bytecodes, so each counter is read and reduced by what was read."""
        q = self.mas
        self.mas -= q
        t = self.ms
        self.ms -= t
        return q, t


# ---- the estimator -----------------------------------------------------------------

# Events update() returns, as bits (two can come in one step).
EV_FULL = const(1)
EV_CAPACITY = const(2)
EV_EMPTY = const(4)
_KNEE = 0.15  # below this SOC the voltage is on the low knee
_KNEE_MOVE = 0.02  # knee corrections this large are an "empty" event

_STATE_VER = const(1)
_STATE_FMT = "<BfffffQQIII"  # the lifetime counters as integer mA*s
STATE_SIZE = const(49)  # struct.calcsize(_STATE_FMT)

_FULL_HOLD_S = 30.0  # full-charge condition held this long
_FULL_REARM = 0.95  # a new full charge counts once SOC fell below this
_REST_S = 1200.0  # a rest this long makes the OCV an anchor for capacity
_ANCHOR_MIN = 0.4  # SOC span between anchors for a capacity estimate
_CAP_GAIN = 0.3  # weight of one capacity estimate
_CAP_STEP = 0.1  # and at most this fraction of the capacity per estimate
_SIG_V = 0.002  # voltage noise (V, per sample)
_SIG_MODEL = 0.003  # model error at rest (V)
_K_IR = 1.0  # model error: this fraction of the instantaneous IR drop
_K_SLOW = 1.0  # and of the IR drop of the recent mean current (diffusion)
_SLOW_TAU = 600.0  # s, the "recent" in the line above
_CORR_S = 20.0  # model errors persist: one sample counts as 1/this of its weight
_Q_BIAS = 1e-10  # offset random walk, (fraction of 1C)^2 per s
_START_SIG = 0.3  # SOC uncertainty of a start that knows nothing
START_SIGMA = _START_SIG
_SAVED_SIG = 0.05  # added to a saved SOC's: self-discharge and use while off
_REST_START_SIG_V = 0.005  # relaxed OCV at boot: polarisation left (V)
_BIAS_SIG = 0.005  # prior current offset, fraction of 1C
_TAU2_S = 600.0  # the slow RC pair (diffusion)
_RLS_LAMBDA = 0.9997  # forgetting per update: about an hour
_RLS_MAX_SIG = 0.03  # learn resistances only while SOC is known this well
_RC_MAX = 3.0  # an RC resistance is at most this many times R0
_OFFSET_MIN_S = 3600.0  # full charges this far apart measure the offset
_OFFSET_GAIN = 0.7  # weight of one such measurement
_OFFSET_MAX = 0.02  # offset learned at most, fraction of 1C
_FLOAT_SETTLE_S = 1800.0  # held full this long before the current counts as offset
_FLOAT_WINDOW_S = 600.0  # and then averaged over this
_FLOAT_STILL_V = 0.005  # while the highest cell stays within this


class SocEstimator:
    def __init__(self, chemistry, capacity_mah, ocv=None):
        c = _CELL[chemistry]
        self.ocv = ocv or default_ocv(chemistry)
        self.rated_mah = capacity_mah
        self.cap_as = capacity_mah * 3.6  # usable capacity, re-estimated
        ah = capacity_mah / 1000
        self.r0 = c[0] / ah
        self.tau1 = c[2]
        self.tau2 = _TAU2_S
        # Polarisation: two RC pairs, voltages R1*f1 and R2*f2 where f1, f2
        # are the current low-passed with their time constants. R1 and R2
        # are learned by recursive least squares (_learn_rc).
        self.f1 = 0.0
        self.f2 = 0.0
        self.th = [c[1] * self.r0, c[1] * self.r0, 0.0]  # R1, R2, offset of the voltage model
        self.Pr = [0.0] * 9
        self._rls_reset()
        self.gate = c[3] * 100 / 1000  # mV/% -> V per unit SOC
        self.i_gate = c[4] * ah  # current (A) above which voltage is not used
        self.learn_rc = c[5]
        self.full_v = 0.0  # no full-charge test until configure()
        self.tail_a = ah * 0.05
        self.soc = 0.5
        self.bias = 0.0
        self.P = [0.0] * 4  # covariance of (SOC, offset): p00, p01, p10, p11
        self.started = False
        self._full_t = 0.0
        self._armed = True
        self._pend = 0.0  # counted charge (As) not yet added to soc
        self._hold_t = 0.0  # held full since the last full charge (s)
        self._hold_q = 0.0  # charge counted (As) over _hold_n s of that hold
        self._hold_n = 0.0
        self._hold_v = 0.0  # the highest cell when the averaging began
        self._v_avg = 0.0
        self._ff_seen = False  # a full charge since start
        self._ff_q = 0.0  # counted charge (As) and time (s) since it
        self._ff_t = 0.0
        self._i_prev = None
        self._v_prev = 0.0
        self._i_slow = 0.0
        self._rest_t = 0.0
        self.rest_anchor_done = False
        # Capacity: charge counted since the last anchor (As, offset-corrected)
        self._anchor_soc = None
        self._anchor_q = 0.0
        # Lifetime counters (As) and events
        # Integers (mA*s): a single-precision float stops counting once the
        # total is 2**24 times the step, within a year on a household pack.
        self.q_in_mas = 0
        self.q_out_mas = 0
        self.full_count = 0
        self.cap_updates = 0
        self.full_before = 0.0  # SOC just before the last full-charge reset
        self.empty_before = 0.0  # and before the last low-knee correction
        self._knee_from = -1.0  # SOC when the knee corrections began (-1: not in it)
        self._empty_armed = True  # again after each full charge

    # ---- set-up ---------------------------------------------------------------

    def _rls_reset(self):
        P = self.Pr
        for k in range(9):
            P[k] = 0.0
        P[0] = P[4] = self.r0 * self.r0 * 4
        P[8] = 0.01 * 0.01

    def v_rc(self):
        """Polarisation voltage the model expects now (V)."""
        th = self.th
        return th[0] * self.f1 + th[1] * self.f2

    def set_capacity(self, capacity_mah):
        """A new rated capacity from the config: the capacity estimate
        starts over, and what scales with capacity scales with it."""
        k = capacity_mah / self.rated_mah
        self.rated_mah = capacity_mah
        self.cap_as = capacity_mah * 3.6
        self._anchor_soc = None
        self.r0 /= k  # the same cells in a bigger pack: less resistance
        th = self.th
        th[0] /= k
        th[1] /= k
        self.i_gate *= k
        self.tail_a *= k
        self._rls_reset()

    def keep_counters(self, other):
        """Lifetime counters from the estimator this one replaces."""
        self.q_in_mas = other.q_in_mas
        self.q_out_mas = other.q_out_mas
        self.full_count = other.full_count
        self.cap_updates = other.cap_updates

    def configure(self, full_mv, tail_pct):
        self.full_v = full_mv / 1000
        self.tail_a = self.rated_mah / 1000 * tail_pct / 100

    def reset(self, soc, sigma):
        """Start (or restart) at soc (fraction) believed to within sigma."""
        self.soc = min(1.0, max(0.0, soc))
        P = self.P
        for k in range(4):
            P[k] = 0.0
        P[0] = sigma * sigma
        b = _BIAS_SIG * self.rated_mah / 1000
        P[3] = b * b
        self.started = True
        self._anchor_soc = None

    def start(self, cell_mv, current_ma, saved=None):
        """First reading after boot. saved: (soc, sigma) from flash, or None.
        Uses the relaxed OCV, the saved value, or both weighted by trust."""
        v = cell_mv / 1000
        i = current_ma / 1000
        s_v = self.ocv.soc(v - self.r0 * i)
        g = self.ocv.slope(s_v)
        rest = abs(i) < self.rated_mah / 1000 / 50
        sig_v = _REST_START_SIG_V if rest else _REST_START_SIG_V + abs(i) * self.r0
        sig = sig_v / g if g > 1e-6 else 1.0
        if sig > _START_SIG or g < self.gate:
            # On a plateau the OCV is no more than a guess (LFP's hysteresis
            # alone is tens of mV there), as the running filter treats it.
            sig = _START_SIG
        if saved is not None:
            s2 = saved[0]
            sig2 = math.sqrt(saved[1] * saved[1] + _SAVED_SIG * _SAVED_SIG)
            w = sig2 * sig2 / (sig * sig + sig2 * sig2)
            s_v = s2 + w * (s_v - s2)
            sig = math.sqrt(sig * sig * sig2 * sig2 / (sig * sig + sig2 * sig2))
        self.reset(s_v, sig)
        self._i_prev = None

    # ---- every second ---------------------------------------------------------

    def update(self, dq_mas, dt_ms, cell_mv, current_ma, max_mv=None):
        """One step: dq_mas charge counted (mA*s, + = charging) over dt_ms,
        then the latest mean cell voltage and current (and the highest cell
        for the full-charge test). Returns an event: 0, EV_FULL or EV_CAPACITY."""
        if dt_ms <= 0:
            return 0
        dt = dt_ms / 1000
        dq = dq_mas / 1000  # As
        v = cell_mv / 1000
        i = current_ma / 1000
        vmax = v if max_mv is None else max_mv / 1000
        if dq_mas > 0:
            self.q_in_mas += dq_mas
        else:
            self.q_out_mas -= dq_mas
        self._learn_r0(v, i)
        self._predict(dq, dt)
        self._learn_rc(v, i)
        self._anchor_q += dq - self.bias * dt
        self._ff_q += dq - self.bias * dt
        self._ff_t += dt
        q_ = 1 - math.exp(-dt / _SLOW_TAU)
        self._i_slow += (abs(i) - self._i_slow) * q_
        ev = self._correct(v, i) | self._full(vmax, i, dq / dt - self.bias, dt) | self._rest(v, i, dt)
        if not (_finite(self.soc) and _finite(self.bias) and _finite(self.P[0])):
            # Whatever produced it, a NaN must not live on (and be saved):
            # start over, knowing nothing.
            self.bias = 0.0
            self.reset(0.5, _START_SIG)
            self.f1 = self.f2 = 0.0
            self._rls_reset()
        return ev

    def _learn_r0(self, v, i):
        ip = self._i_prev
        self._i_prev = i
        vp = self._v_prev
        self._v_prev = v
        if ip is None:
            return
        di = i - ip
        c1 = self.rated_mah / 1000
        if abs(di) < 0.1 * c1:
            return
        r = (v - vp) / di
        # A reading outside a tenth to ten times the present value is a
        # coincidence (the OCV moving, a second step), not the resistance.
        if 0.1 * self.r0 < r < 10 * self.r0:
            self.r0 += 0.05 * (r - self.r0)

    def _predict(self, dq, dt):
        Q = self.cap_as
        ibar = dq / dt - self.bias
        # Small steps wait until they are worth adding: on the board floats
        # are single precision, and 0.1 As on 1000 Ah is below SOC's ulp.
        p = self._pend + dq - self.bias * dt
        if -1e-5 * Q < p < 1e-5 * Q:
            self._pend = p
        else:
            self._pend = 0.0
            self.soc += p / Q
        a = math.exp(-dt / self.tau1)
        self.f1 = a * self.f1 + (1 - a) * ibar
        a = math.exp(-dt / self.tau2)
        self.f2 = a * self.f2 + (1 - a) * ibar
        # P = F P F' + Qn, states (SOC, offset), F = [[1, -dt/Q], [0, 1]]
        f = -dt / Q
        P = self.P
        p00, p02, p22 = P[0], P[1], P[3]
        c1 = self.rated_mah / 1000
        qs = 0.01 * dq / Q  # the counted charge: 1 % of the reading
        P[0] = p00 + 2 * f * p02 + f * f * p22 + qs * qs
        P[1] = P[2] = p02 + f * p22
        P[3] = p22 + _Q_BIAS * c1 * c1 * dt
        if self.soc > 1.0:
            self.soc = 1.0
        elif self.soc < 0.0:
            self.soc = 0.0

    def _learn_rc(self, v, i):
        # y = V - OCV(soc) - R0*I = R1*f1 + R2*f2 + c; the constant c takes
        # what a slowly varying SOC error (or hysteresis) adds, so it does
        # not read as resistance. Forgetting over about an hour.
        if not self.learn_rc:
            return
        f1 = self.f1
        f2 = self.f2
        c1 = self.rated_mah / 1000
        if abs(f1) < 0.02 * c1 and abs(f2) < 0.02 * c1:
            return  # no excitation: nothing to learn, and P must not wind up
        if self.P[0] > _RLS_MAX_SIG * _RLS_MAX_SIG:
            return  # SOC itself unsure: its OCV error would read as resistance
        y = v - self.ocv.volts(self.soc) - self.r0 * i
        th = self.th
        P = self.Pr
        lam = _RLS_LAMBDA
        # Pphi with phi = (f1, f2, 1)
        q0 = P[0] * f1 + P[1] * f2 + P[2]
        q1 = P[3] * f1 + P[4] * f2 + P[5]
        q2 = P[6] * f1 + P[7] * f2 + P[8]
        den = lam + f1 * q0 + f2 * q1 + q2
        k0 = q0 / den
        k1 = q1 / den
        k2 = q2 / den
        e = y - (th[0] * f1 + th[1] * f2 + th[2])
        th[0] += k0 * e
        th[1] += k1 * e
        th[2] += k2 * e
        # P = (P - k phi' P) / lam, kept symmetric
        for r, kr in ((0, k0), (1, k1), (2, k2)):
            P[3 * r] = (P[3 * r] - kr * q0) / lam
            P[3 * r + 1] = (P[3 * r + 1] - kr * q1) / lam
            P[3 * r + 2] = (P[3 * r + 2] - kr * q2) / lam
        P[1] = P[3] = (P[1] + P[3]) / 2
        P[2] = P[6] = (P[2] + P[6]) / 2
        P[5] = P[7] = (P[5] + P[7]) / 2
        lim = _RC_MAX * self.r0
        for k in (0, 1):
            if th[k] < 0.0:
                th[k] = 0.0
            elif th[k] > lim:
                th[k] = lim
        if P[0] > 4 * lim * lim or P[4] > 4 * lim * lim:
            self._rls_reset()

    def _correct(self, v, i):
        # The voltage, less the modelled IR and RC drops, is an OCV: the SOC
        # it stands for on the curve is the measurement. Inverting the curve
        # (instead of linearising it at the present estimate) keeps a wrong
        # start from leaving the filter overconfident where the curve bends.
        s = self.soc
        ocv = self.ocv
        s_v = ocv.soc(v - self.r0 * i - self.v_rc())
        # The slope where the voltage says we are: a voltage on the plateau
        # says little (wherever the estimate stands), one in a knee much.
        g = ocv.slope(s_v)
        if s_v > _KNEE + 0.1:
            self._knee_from = -1.0  # well out of the low knee
        if g < self.gate:
            return 0  # the plateau: voltage says too little
        ig = self.i_gate
        if abs(i) > ig or abs(self.f1) > ig or abs(self.f2) > ig:
            return 0  # under heavy load, or soon after it, the model is too rough
        ir = abs(i) * self.r0
        slow = self._i_slow * self.r0
        R = (_SIG_V * _SIG_V + _SIG_MODEL * _SIG_MODEL + (_K_IR * ir) ** 2 + (_K_SLOW * slow) ** 2) * _CORR_S
        P = self.P
        S = P[0] + R / (g * g)
        # The offset is a "consider" state (Schmidt-Kalman): its uncertainty
        # widens SOC's, but voltage errors of the model persist for minutes
        # and would read as an offset; only full charges move it (_full).
        self._apply(P[0] / S, 0.0, P[0], P[2], s_v - s)
        if s_v < _KNEE:
            # The low knee: once its corrections have moved SOC by a couple
            # of points, that is the "empty" correction (once per discharge).
            if self._knee_from < 0:
                self._knee_from = s
            if self._empty_armed and abs(self.soc - self._knee_from) >= _KNEE_MOVE:
                self._empty_armed = False
                self.empty_before = self._knee_from
                return EV_EMPTY
        return 0

    def _apply(self, k0, k2, a0, a2, e):
        # x += K e; P -= K (HP) with HP = (a0, a2) (P symmetric)
        self.soc += k0 * e
        self.bias += k2 * e
        P = self.P
        P[0] -= k0 * a0
        P[1] -= k0 * a2
        P[3] -= k2 * a2
        P[2] = P[1]
        if P[0] < 1e-8:
            P[0] = 1e-8
        if P[3] < 1e-12:
            P[3] = 1e-12
        if self.soc > 1.0:
            self.soc = 1.0
        elif self.soc < 0.0:
            self.soc = 0.0

    def _measure_soc(self, z, sigma):
        """A direct SOC measurement (a full charge)."""
        P = self.P
        S = P[0] + sigma * sigma
        self._apply(P[0] / S, 0.0, P[0], P[2], z - self.soc)

    def _learn_offset(self):
        # Between two full charges the pack's real net charge is about zero
        # (LFP and NMC lose well under 1 % to coulombic inefficiency): what
        # the counter summed meanwhile, over the time, is its offset.
        t = self._ff_t
        if self._ff_seen and t >= _OFFSET_MIN_S:
            b = self._ff_q / t
            self._set_offset(self.bias + _OFFSET_GAIN * b, 0.3 * abs(b))
        self._ff_seen = True
        self._ff_q = 0.0
        self._ff_t = 0.0

    def _full(self, vmax, i, ibar, dt):
        at_top = self.full_v > 0 and vmax >= self.full_v and -self.tail_a <= i <= self.tail_a
        if not self._armed:
            if self.soc < _FULL_REARM:
                self._armed = True
            elif at_top:
                self._float(vmax, ibar, dt)
            else:
                self._hold_t = 0.0
            return 0
        if not at_top:
            self._full_t = 0.0
            return 0
        self._full_t += dt
        if self._full_t < _FULL_HOLD_S:
            return 0
        self._full_t = 0.0
        self._armed = False
        self._hold_t = 0.0
        self._empty_armed = True
        self.full_count += 1
        before = self.soc
        self._learn_offset()
        self._measure_soc(1.0, 0.002)
        self.soc = 1.0
        self.full_before = before
        return EV_FULL | self._anchor(1.0)

    def _float(self, vmax, ibar, dt):
        # Still held full (a charger floating the pack, the sun covering the
        # load). Once the tail has died away, a full cell stores nothing
        # more, so what the sensor still reads is its offset (or side
        # reactions, which store nothing either). SOC itself is left to the
        # filter: where the charger stops short of the curve's 100 %, the
        # relaxed voltage on the steep top says where the pack really is.
        # The highest cell smoothed over a minute (readings are noisy).
        if self._hold_t == 0.0:
            self._v_avg = vmax
        self._v_avg += (vmax - self._v_avg) * (1 - math.exp(-dt / 60.0))
        self._hold_t += dt
        if self._hold_t < _FLOAT_SETTLE_S:
            self._hold_q = 0.0
            self._hold_n = 0.0
            self._hold_v = self._v_avg
            return
        self._hold_q += ibar * dt
        self._hold_n += dt
        if abs(self._v_avg - self._hold_v) > _FLOAT_STILL_V:
            # The voltage moved: a load or a charge, not a float. Start over.
            self._hold_t = 0.0
            return
        if self._hold_n < _FLOAT_WINDOW_S:
            return
        b = self._hold_q / self._hold_n + self.bias  # ibar is offset-corrected
        self._hold_q = 0.0
        self._hold_n = 0.0
        if abs(b) > _OFFSET_MAX * self.rated_mah / 1000:
            return  # more than any offset: a real current
        self._set_offset(self.bias + _OFFSET_GAIN * (b - self.bias), 0.3 * abs(b - self.bias))
        # A new start for the full-to-full measurement (_learn_offset).
        self._ff_q = 0.0
        self._ff_t = 0.0

    def _set_offset(self, b, sig):
        c1 = self.rated_mah / 1000
        lim = _OFFSET_MAX * c1
        if b > lim:
            b = lim
        elif b < -lim:
            b = -lim
        self.bias = b
        if sig < 0.0005 * c1:
            sig = 0.0005 * c1
        P = self.P
        P[3] = sig * sig
        P[1] = P[2] = 0.0

    def _rest(self, v, i, dt):
        # A long rest in a steep part of the curve: the OCV is an anchor.
        if abs(i) > self.rated_mah / 1000 / 100:
            self._rest_t = 0.0
            self.rest_anchor_done = False
            return 0
        self._rest_t += dt
        if self._rest_t < _REST_S or self.rest_anchor_done:
            return 0
        self.rest_anchor_done = True
        s = self.ocv.soc(v)
        if self.ocv.slope(s) < 2 * self.gate:
            return 0
        return self._anchor(s)

    def _anchor(self, s):
        """A well-known SOC s: with an earlier one far enough away, the charge
        counted between them re-estimates the capacity."""
        ev = 0
        if self._anchor_soc is not None:
            ds = s - self._anchor_soc
            if abs(ds) >= _ANCHOR_MIN:
                est = self._anchor_q / ds
                if est > 0:
                    old = self.cap_as
                    new = old + _CAP_GAIN * (est - old)
                    lim = _CAP_STEP * old
                    if new > old + lim:
                        new = old + lim
                    elif new < old - lim:
                        new = old - lim
                    self.cap_as = new
                    self.cap_updates += 1
                    ev = EV_CAPACITY
        self._anchor_soc = s
        self._anchor_q = 0.0
        return ev

    # ---- results ----------------------------------------------------------------

    def pct(self):
        return int(self.soc * 100 + 0.5)

    def sigma_pct(self):
        return math.sqrt(self.P[0]) * 100 if self.P[0] > 0 else 0.0

    def capacity_mah(self):
        return int(self.cap_as / 3.6 + 0.5)

    def soh_pct(self):
        return self.cap_as / 3.6 * 100 / self.rated_mah

    def cycles(self):
        """Equivalent full cycles: charge delivered over the rated capacity."""
        return self.q_out_mas / (self.rated_mah * 3600)

    def ah_in(self):
        return self.q_in_mas / 3600000

    def ah_out(self):
        return self.q_out_mas / 3600000


    # ---- persistence ------------------------------------------------------------
    # What survives a reset: SOC and how sure it is, the learned offset,
    # capacity and resistance, the lifetime counters. Fixed layout.

    def saved(self):
        return struct.pack(_STATE_FMT, _STATE_VER, self.soc, math.sqrt(max(self.P[0], 0.0)), self.bias,
                           self.cap_as, self.r0, self.q_in_mas, self.q_out_mas, self.full_count, self.cap_updates,
                           self.rated_mah)

    def restore(self, blob):
        """Counters and learned values from saved(); (soc, sigma) for start(),
        or None if blob is not a state of this layout and rated capacity."""
        if blob is None or len(blob) != struct.calcsize(_STATE_FMT):
            return None
        f = struct.unpack(_STATE_FMT, blob)
        if f[0] != _STATE_VER:
            return None
        # Each value is checked on its own: a CRC-valid file can still hold
        # a NaN written by a bug, and it must not come back at every boot.
        self.q_in_mas = f[6]
        self.q_out_mas = f[7]
        self.full_count = f[8]
        self.cap_updates = f[9]
        if f[10] != self.rated_mah:
            return None  # another pack: only the lifetime counters carry over
        c1 = self.rated_mah / 1000
        if _finite(f[3]) and abs(f[3]) <= _OFFSET_MAX * c1:
            self.bias = f[3]
        if _finite(f[4]) and 0.5 * self.rated_mah * 3.6 < f[4] < 1.2 * self.rated_mah * 3.6:
            self.cap_as = f[4]
        if _finite(f[5]) and 0 < f[5] < 1:
            self.r0 = f[5]
        if not (_finite(f[1]) and _finite(f[2]) and 0 <= f[1] <= 1 and 0 <= f[2] <= 1):
            return None
        return f[1], f[2]



def _finite(x):
    return x == x and -1e30 < x < 1e30  # not NaN, not infinite


def step(est, counter, cell_mv, current_ma, max_mv):
    """The main loop's once-a-second step: the charge the tick counted
    since the last step, and the latest reading, into the estimator."""
    q, t = counter.take()
    return est.update(q, t, cell_mv, current_ma, max_mv)
