"""Reference profiles for the SOC accuracy benchmark, made with PyBaMM.

Host-side only, in its own venv (PyBaMM is no dependency of the firmware nor
of the main .venv):

    python3 -m venv .venv/pybamm && .venv/pybamm/bin/pip install -r requirements-pybamm.txt
    .venv/pybamm/bin/python -m tools.soc_profiles --out build/soc_profiles
    .venv/pybamm/bin/python -m tools.soc_profiles --out build/soc_profiles --short host_tests/data/soc

Per chemistry (lfp: Prada2013, A123 LFP/graphite 2.3 Ah; nmc: Chen2020, LG M50
NMC811/graphite-SiOx 5 Ah) it writes into OUT/<chem>/:
  ocv.csv     soc_pct,ocv_v: equilibrium OCV at 0..100 % true SOC
  meta.json   capacity_ah (defines true SOC), limits, model, timings, profiles
  <profile>.csv  t_s,current_A,voltage_V,temp_C,soc_true_pct (current > 0 = discharge)

True SOC is pybamm's own: 0 % and 100 % are the electrode stoichiometries at
which the cell's OCV equals the parameter set's lower and upper voltage
cut-off (ElectrodeSOHSolver), SOC in between is linear in both
stoichiometries (what pybamm's set_initial_state(soc) does), so capacity_ah
is the charge between them, and ocv.csv is U_p(y(soc)) - U_n(x(soc)).
soc_true_pct = start SOC - 100 * Q / capacity_ah with Q pybamm's
"Discharge capacity [A.h]" state (the exact integral of the model's current);
the tool checks that the trapezoid integral of the written current samples
agrees with it.

Model: DFN (--model SPMe for comparison). Measured here on 2 cores, per
chemistry: pulse_2h 4-5 s DFN / 1.1-1.7 s SPMe, solar_2h 4-5 s / 1.6-1.9 s,
solar_days (3 days) 22-33 s / 8-9 s; all of it for both chemistries about
1-1.5 min with the DFN. That is well inside the budget, so the DFN it is: it
keeps the electrolyte dynamics that shape the relaxation after a pulse, which
is what an OCV-after-rest correction sees. Isothermal at 25 C (temp_C is
constant): a lumped thermal model would mostly move the resistance, which the
firmware's estimator does not model anyway.

The battery is driven like a household pack with a solar charger: each
profile is a demand current (load minus solar, piecewise linear between
knots on the sample grid) and a charger/BMS controller decides the cell
current, switching between pybamm models at events:
  load   cell current = demand; ends when the voltage reaches the charge
         voltage (-> cv) or the lower cut-off (-> off, low-voltage disconnect)
  cv     constant voltage at the charge voltage; ends when the charge current
         falls below the tail current (-> float, a full charge) or when the
         sun can no longer supply what the CV hold takes (-> load)
  float  cell current 0 after a full charge while the sun covers the load;
         ends when the load exceeds the solar (-> load)
  off    cell current 0 after a low-voltage disconnect until the sun returns
The tail is judged on the sample grid, as a charger sampling its current
would: after the tail event the CV hold goes on to the next sample, so the
data shows a sample at the charge voltage with the current below the tail.
"""
import argparse
import json
import math
import os
import sys
import time

# pybamm reads this at import time; without it a first import asks on stdin
# whether to send telemetry (and would try the network).
os.environ["PYBAMM_DISABLE_TELEMETRY"] = "true"

import numpy as np  # noqa: E402
import pybamm  # noqa: E402

CHEMISTRIES = {
    # charge voltage = the parameter set's upper cut-off (3.6 V / 4.2 V), so a
    # CV hold ends at the 100 % OCV and the tail leaves the cell just short of it.
    "lfp": {"parameter_set": "Prada2013", "cell": "A123 ANR26650 LFP/graphite (Prada 2013)"},
    "nmc": {"parameter_set": "Chen2020", "cell": "LG M50 NMC811/graphite-SiOx (Chen 2020)"},
}
PROFILES = ("pulse_2h", "solar_2h", "solar_days")
SHORT_PROFILES = ("pulse_short", "fullcharge_short")
PROFILES_ALL = PROFILES + SHORT_PROFILES
HEADER = "t_s,current_A,voltage_V,temp_C,soc_true_pct"
TEMP_K = 298.15
TAIL_C = 1.0 / 20  # tail current that ends the CV hold, as a fraction of 1C
SEED = 20260505
MODELS = ("DFN", "SPMe")
# Longest solver call: bounds the memory of one stored segment (~1000 states).
CHUNK_S = 7200.0
# A CV hold hands back to the demand when the sun falls this far (in C) below
# what the hold takes; also the dead band of the float/off exits.
MARGIN_C = 0.005


class Demand:
    """Piecewise-linear demand current (A, > 0 = discharge) on integer-second knots."""

    def __init__(self, t, i):
        self.t = np.asarray(t, dtype=float)
        self.i = np.asarray(i, dtype=float)
        if np.any(np.diff(self.t) <= 0):
            raise ValueError("demand knots must be strictly increasing")

    def __call__(self, t):
        return float(np.interp(t, self.t, self.i))


class StepBuilder:
    """Demand made of constant steps; each change ramps linearly over one
    sample period, so the current between two samples is linear and their
    trapezoid is the exact charge."""

    def __init__(self, ramp_s):
        self.ramp = ramp_s
        self.t = [0.0]
        self.i = [0.0]
        self.now = 0.0

    def hold(self, duration_s, current_a):
        d = max(2 * self.ramp, self.ramp * round(duration_s / self.ramp))
        if current_a != self.i[-1]:
            self.t.append(self.now + self.ramp)
            self.i.append(current_a)
        self.now += d
        self.t.append(self.now)
        self.i.append(current_a)
        return d

    def demand(self, pad_s=0.0):
        t, i = list(self.t), list(self.i)
        if pad_s > 0:
            t.append(t[-1] + pad_s)
            i.append(i[-1])
        return Demand(t, i)


class Cell:
    """A parameter set with its SOC definition, OCV and the controller's models."""

    def __init__(self, chem, model="DFN"):
        spec = CHEMISTRIES[chem]
        self.chem = chem
        self.model_name = model
        self.parameter_set = spec["parameter_set"]
        pv = pybamm.ParameterValues(self.parameter_set)
        pv.update({"Ambient temperature [K]": TEMP_K, "Initial temperature [K]": TEMP_K})
        self.v_min = float(pv["Lower voltage cut-off [V]"])
        self.v_max = float(pv["Upper voltage cut-off [V]"])
        self.v_charge = self.v_max
        self.nominal_ah = float(pv["Nominal cell capacity [A.h]"])
        param = pybamm.LithiumIonParameters()
        x0, x100, y100, y0 = (float(v) for v in pybamm.lithium_ion.get_min_max_stoichiometries(pv))
        self.sto = {"x_0": x0, "x_100": x100, "y_100": y100, "y_0": y0}
        q_n = float(pv.evaluate(param.n.Q_init))
        q_p = float(pv.evaluate(param.p.Q_init))
        self.capacity_ah = q_n * (x100 - x0)
        if abs(q_p * (y0 - y100) - self.capacity_ah) > 1e-6 * self.capacity_ah:
            raise RuntimeError("electrode capacities between 0 and 100 % SOC disagree")
        self.c_n_max = float(pv["Maximum concentration in negative electrode [mol.m-3]"])
        self.c_p_max = float(pv["Maximum concentration in positive electrode [mol.m-3]"])
        t_k = pybamm.Scalar(TEMP_K)

        def ocv(soc):
            x, y = self.stoichiometries(soc)
            v = param.p.prim.U(pybamm.Scalar(y), t_k) - param.n.prim.U(pybamm.Scalar(x), t_k)
            return float(pv.evaluate(v))

        self.ocv_table = [(s, ocv(s / 100.0)) for s in range(101)]
        # The start state of every profile comes in as inputs, so the models
        # are built once per profile whatever its start SOC.
        pv["Initial concentration in negative electrode [mol.m-3]"] = pybamm.InputParameter("c_n0")
        pv["Initial concentration in positive electrode [mol.m-3]"] = pybamm.InputParameter("c_p0")
        self.pv = pv
        self.tail_a = TAIL_C * self.capacity_ah

    def stoichiometries(self, soc):
        s = self.sto
        return (s["x_0"] + soc * (s["x_100"] - s["x_0"]), s["y_0"] - soc * (s["y_0"] - s["y_100"]))

    def ocv(self, soc_pct):
        return float(np.interp(soc_pct, [s for s, _ in self.ocv_table], [v for _, v in self.ocv_table]))

    def c(self, rate):
        return rate * self.capacity_ah

    def _model(self, mode, demand_sym):
        cls = getattr(pybamm.lithium_ion, self.model_name)
        model = cls({"operating mode": "voltage"}) if mode == "cv" else cls()
        v = model.variables["Voltage [V]"]
        i = model.variables["Current [A]"]
        # The built-in cut-off events sit on the limits the controller acts
        # on; moved out of the way (as pybamm's Experiment does) they only
        # catch a runaway. The controller's own events carry "[experiment]"
        # in their names: pybamm's solver.step continues a solution that
        # ended on such an event (and returns any other unchanged).
        for k, ev in enumerate(model.events):
            if ev.name == "Minimum voltage [V]" or ev.name == "Maximum voltage [V]":
                model.events[k] = pybamm.Event(ev.name, ev.expression + 0.2, ev.event_type)
        margin = self.c(MARGIN_C)
        if mode == "load":
            events = [("charge voltage", self.v_charge - v), ("low voltage", v - self.v_min)]
        elif mode == "cv":
            events = [
                # tail_A is an input: 0 lets the hold run on to the next sample
                ("tail current", -i - pybamm.InputParameter("tail_A")),
                ("sun below hold", -demand_sym + margin + i),
            ]
        elif mode == "float":
            events = [("load above sun", margin - demand_sym)]
        else:
            events = [("sun back", demand_sym + margin)]
        for name, expr in events:
            model.events.append(pybamm.Event(name + " [experiment]", expr))
        pv = self.pv.copy()
        if mode == "cv":
            pv["Voltage function [V]"] = self.v_charge
        elif mode == "load":
            pv["Current function [A]"] = demand_sym
        else:
            pv["Current function [A]"] = 0.0
        solver = pybamm.IDAKLUSolver(rtol=1e-6, atol=1e-8)
        sim = pybamm.Simulation(model, parameter_values=pv, solver=solver)
        sim.build()
        return sim.built_model, solver

    def run(self, demand, soc0_pct, duration_s, sample_s, stop_after_full_s=None):
        """Simulate from a relaxed start at soc0_pct; return sample arrays and events."""
        demand_sym = pybamm.Interpolant(demand.t, demand.i, pybamm.t, name="demand", interpolator="linear")
        models = {m: self._model(m, demand_sym) for m in ("load", "cv", "float", "off")}
        x, y = self.stoichiometries(soc0_pct / 100.0)
        base_inputs = {"c_n0": x * self.c_n_max, "c_p0": y * self.c_p_max}
        margin = self.c(MARGIN_C)
        n = int(round(duration_s / sample_s)) + 1
        t_end = (n - 1) * sample_s
        out_i = np.full(n, np.nan)
        out_v = np.full(n, np.nan)
        out_q = np.full(n, np.nan)
        fulls = []
        switches = {}
        mode = "load"
        tail_on = True
        t = 0.0
        sol = None
        while t < t_end - 1e-9:
            model, solver = models[mode]
            if mode == "cv" and not tail_on:
                t_stop = min(t_end, sample_s * math.ceil(t / sample_s - 1e-9))
            else:
                t_stop = min(t_end, t + CHUNK_S)
            if t_stop - t < 1e-6:
                # the tail fired right on a sample
                mode, tail_on = "float", True
                continue
            dt = t_stop - t
            # A stop inside every knot interval, so no short pulse is stepped
            # over; stops on the knots themselves (the kinks) make IDA fail.
            mids = 0.5 * (demand.t[1:] + demand.t[:-1])
            stops = mids[(mids > t + 1e-6) & (mids < t_stop - 1e-6)] - t
            t_eval = np.concatenate([[0.0], stops, [dt]])
            k0 = int(math.ceil(t / sample_s - 1e-9))
            k1 = int(math.floor(t_stop / sample_s + 1e-9))
            t_interp = np.unique(np.clip(np.arange(k0, k1 + 1) * sample_s - t, 0.0, dt))
            inputs = dict(base_inputs, tail_A=self.tail_a if tail_on else 0.0)
            sol = solver.step(sol, model, dt, t_eval=t_eval, t_interp=t_interp, inputs=inputs, save=False)
            ts = sol.t
            vi = sol["Current [A]"].entries
            vv = sol["Voltage [V]"].entries
            vq = sol["Discharge capacity [A.h]"].entries
            k = np.rint(ts / sample_s).astype(int)
            on_grid = (np.abs(ts - k * sample_s) < 1e-6) & (k >= 0) & (k < n)
            for idx in np.nonzero(on_grid)[0]:
                j = k[idx]
                if np.isnan(out_i[j]):  # the first value at a switch time is kept
                    out_i[j], out_v[j], out_q[j] = vi[idx], vv[idx], vq[idx]
            t = float(ts[-1])
            term = sol.termination
            if term == "final time":
                if mode == "cv" and not tail_on:
                    mode, tail_on = "float", True
                    fulls.append(t)
                    if stop_after_full_s is not None and len(fulls) == 1:
                        t_end = min(t_end, sample_s * math.ceil((t + stop_after_full_s) / sample_s))
                continue
            if "[experiment]" not in term:
                raise RuntimeError("%s: solver stopped on %r at t=%.1f s" % (self.chem, term, t))
            ev = term.split("event: ", 1)[-1].replace(" [experiment]", "")
            switches[ev] = switches.get(ev, 0) + 1
            d = demand(t)
            if "charge voltage" in term:
                mode = "cv" if -d > self.tail_a + margin else "float"
                if mode == "float":
                    fulls.append(t)
            elif "low voltage" in term:
                mode = "off"
            elif "tail current" in term:
                tail_on = False  # hold on to the next sample, then float
            elif "sun below hold" in term:
                mode = "load"
            elif "load above sun" in term or "sun back" in term:
                mode = "load"
            else:
                raise RuntimeError("unknown event " + term)
            if mode == "float" and d > margin:
                mode = "load"
        n_out = int(round(t_end / sample_s)) + 1
        out_t = np.arange(n_out) * sample_s
        out_i, out_v, out_q = out_i[:n_out], out_v[:n_out], out_q[:n_out]
        if np.isnan(out_v).any():
            raise RuntimeError("%s: %d samples missing" % (self.chem, int(np.isnan(out_v).sum())))
        soc = soc0_pct - 100.0 * out_q / self.capacity_ah
        return {"t": out_t, "i": out_i, "v": out_v, "soc": soc, "fulls": fulls, "switches": switches}


# ---------------------------------------------------------------- profiles


def _plan_soc(cell, soc, current_a, dt_s):
    return soc - 100.0 * current_a * dt_s / 3600.0 / cell.capacity_ah


def pulse_2h(cell, rng, sample_s=1.0):
    """HPPC-like but irregular: 90 % -> ~25 % in 2 h."""
    b = StepBuilder(sample_s)
    soc = 90.0
    b.hold(300, 0.0)
    t_last = 7200 - 600
    while b.now < t_last - 30:
        target = 90.0 - 65.0 * (b.now - 300) / (t_last - 300)
        left = t_last - b.now
        if soc > target + 1.5:
            rate = float(rng.uniform(0.2, 2.0))
            dur = float(rng.choice([10, 20, 30, 60, 120, 300, 600]))
            dur = min(dur, 0.12 * 3600 / rate, left)  # at most 12 % in one pulse
            current = cell.c(rate)
        elif rng.random() < 0.3:
            rate = float(rng.uniform(0.2, 1.0))
            dur = min(float(rng.choice([10, 20, 30, 60])), left)
            current = -cell.c(rate)  # regen-like charge pulse
        else:
            dur = min(float(rng.choice([30, 60, 120, 300, 600])), left)
            current = 0.0
        if dur < 2 * sample_s:
            break
        d = b.hold(dur, current)
        soc = _plan_soc(cell, soc, current, d)
        if current > 0 and rng.random() < 0.7 and b.now < t_last - 30:
            b.hold(min(float(rng.choice([10, 30, 60, 180])), t_last - b.now), 0.0)
    b.hold(7200 - b.now, 0.0)
    return {"demand": b.demand(3600), "soc0": 90.0, "duration": 7200.0, "sample": sample_s}


def pulse_short(cell, rng, sample_s=5.0):
    """30 min from 70 %: discharge pulses 0.3-2C of 10 s-3 min, rests, a charge pulse."""
    b = StepBuilder(sample_s)
    b.hold(120, 0.0)
    seq = [(60, 1.0), (60, 0.0), (10, 2.0), (120, 0.0), (180, 0.5), (30, 0.0), (30, -0.5),
           (90, 0.0), (120, 1.5), (180, 0.0), (20, -1.0), (60, 0.0), (180, 0.3), (60, 0.0),
           (45, 2.0), (120, 0.0)]
    for dur, rate in seq:
        b.hold(dur, cell.c(rate))
    b.hold(1800 - b.now, 0.0)
    return {"demand": b.demand(3600), "soc0": 70.0, "duration": 1800.0, "sample": sample_s}


def fullcharge_short(cell, rng, sample_s=5.0):
    """From 80 %: 2 min rest, CC 0.5C into the CV hold, tail below C/20, 10 min rest."""
    b = StepBuilder(sample_s)
    b.hold(120, 0.0)
    b.hold(4 * 3600, -cell.c(0.5))
    return {"demand": b.demand(0), "soc0": 80.0, "duration": 4 * 3600.0, "sample": sample_s,
            "stop_after_full": 600.0}


def _blocks(rng, windows, rate_lo, rate_hi, dur_lo, dur_hi, count, ramp):
    """Random rectangular loads (t knots, A knots) inside the given windows."""
    t, i = [], []
    starts = []
    for _ in range(count):
        w0, w1 = windows[int(rng.integers(len(windows)))]
        dur = float(rng.uniform(dur_lo, dur_hi))
        s = float(rng.uniform(w0, max(w0, w1 - dur)))
        starts.append((round(s), round(dur), float(rng.uniform(rate_lo, rate_hi))))
    for s, dur, a in sorted(starts):
        t += [s, s + ramp, s + dur, s + dur + ramp]
        i += [0.0, a, a, 0.0]
    return t, i


def _sum_blocks(grid, blocks):
    total = np.zeros_like(grid)
    for t, i in blocks:
        for k in range(0, len(t), 4):
            total += np.interp(grid, t[k:k + 4], i[k:k + 4], left=0.0, right=0.0)
    return total


def solar_2h(cell, rng, sample_s=1.0):
    """A household solar day in 2 h from 40 %: morning load, a cloudy solar
    bell that charges into the CV hold and tail, evening load."""
    C = cell.capacity_ah
    dur = 7200.0
    # the DFN's CV hold from ~65 % takes the best part of an hour (Chen2020):
    # the sun is up from minute 10 to minute 110
    sun0, sun1 = 600.0, 6600.0
    ramp = sample_s
    # knots: every 30 s for the smooth parts, plus every edge of a block
    grid = set(np.arange(0.0, dur + 3601.0, 30.0).tolist())
    base = [(0.0, 0.15 * C), (sun0, 0.15 * C), (sun0 + 600, 0.08 * C), (sun1 - 300, 0.08 * C),
            (sun1, 0.3 * C), (dur + 3600, 0.3 * C)]
    spikes = []
    spikes.append(_blocks(rng, [(60, sun0 - 30)], 0.3 * C, 0.8 * C, 20, 120, 3, ramp))
    spikes.append(_blocks(rng, [(sun0, sun1)], 0.2 * C, 0.5 * C, 30, 240, 4, ramp))
    spikes.append(_blocks(rng, [(sun1, dur - 60)], 0.2 * C, 0.7 * C, 20, 150, 3, ramp))
    clouds = _blocks(rng, [(sun0 + 300, sun1 - 300)], 0.3, 0.7, 60, 300, 5, 20.0)
    for t, _ in spikes + [clouds]:
        grid.update(t)
    grid = np.array(sorted(g for g in grid if 0 <= g <= dur + 3600))
    x = np.clip((grid - sun0) / (sun1 - sun0), 0.0, 1.0)
    cloud = np.ones_like(grid)
    for k in range(0, len(clouds[0]), 4):
        cloud *= 1.0 - np.interp(grid, clouds[0][k:k + 4], clouds[1][k:k + 4], left=0.0, right=0.0)
    solar = 1.8 * C * np.sin(math.pi * x) * cloud
    load = np.interp(grid, [p[0] for p in base], [p[1] for p in base]) + _sum_blocks(grid, spikes)
    # the charger delivers at most 1C into the cell
    net = np.maximum(load - solar, -1.0 * C)
    return {"demand": Demand(grid, net), "soc0": 40.0, "duration": dur, "sample": sample_s}


def solar_days(cell, rng, days=3, sample_s=1.0):
    """N real days from 06:00 at 50 %: base load all day, morning and evening
    peaks with kettle spikes, a cloudy solar bell 07:30-18:00 that fully
    charges the cell each day, a night that drains it to ~10-20 %."""
    C = cell.capacity_ah
    H = 3600.0
    dur = days * 24 * H
    ramp = sample_s
    grid = set(np.arange(0.0, dur + 2 * H, 60.0).tolist())
    blocks, cloud_blocks = [], []
    day_solar = []
    targets = []
    seed = int(rng.integers(1 << 32))
    for d in range(days):
        # each day its own draws: the first days of a longer run are the same days
        rng = np.random.default_rng([seed, d])
        t0 = d * 24 * H - 6 * H  # midnight of day d (t = 0 is 06:00)
        # drain target of the night: minima around 10-20 % (SOC by charge from full)
        targets.append(float(rng.uniform(80.0, 88.0)))
        # morning 06:30-08:30 and evening 17:30-22:30: cooking and the like at
        # 0.3-0.6C for minutes, kettles at 1C
        blocks.append(_blocks(rng, [(t0 + 6.5 * H, t0 + 8.5 * H)], 0.3 * C, 0.5 * C, 240, 480, 1, ramp))
        blocks.append(_blocks(rng, [(t0 + 6.5 * H, t0 + 8.5 * H)], 1.0 * C, 1.0 * C, 120, 180, 1, ramp))
        blocks.append(_blocks(rng, [(t0 + 17.5 * H, t0 + 22.5 * H)], 0.3 * C, 0.6 * C, 240, 600, 2, ramp))
        blocks.append(_blocks(rng, [(t0 + 17.5 * H, t0 + 22.5 * H)], 1.0 * C, 1.0 * C, 120, 180, 2, ramp))
        # midday appliances (washing machine...), mostly covered by the sun
        blocks.append(_blocks(rng, [(t0 + 10 * H, t0 + 15 * H)], 0.2 * C, 0.5 * C, 1200, 3600, 2, ramp))
        cloudiness = float(rng.uniform(0.1, 0.7))
        n_clouds = int(3 + 15 * cloudiness)
        cloud_blocks.append(_blocks(rng, [(t0 + 7.5 * H, t0 + 18 * H)], 0.2, 0.3 + 0.6 * cloudiness,
                                    120, 1800, n_clouds, 60.0))
        day_solar.append((t0 + 7.5 * H, t0 + 18 * H, float(rng.uniform(0.5, 0.65)) * C))
    for t, _ in blocks + cloud_blocks:
        grid.update(t)
    grid = np.array(sorted(g for g in grid if 0 <= g <= dur + 2 * H))
    solar = np.zeros_like(grid)
    for s0, s1, peak in day_solar:
        x = np.clip((grid - s0) / (s1 - s0), 0.0, 1.0)
        solar += peak * np.sin(math.pi * x)
    cloud = np.ones_like(grid)
    for t, a in cloud_blocks:
        for k in range(0, len(t), 4):
            cloud *= 1.0 - np.interp(grid, t[k:k + 4], a[k:k + 4], left=0.0, right=0.0)
    solar *= cloud
    activities = _sum_blocks(grid, blocks)

    def net_for(base_rates):
        # one base load per night, changing at noon (t = 6 h is noon of day 0)
        knots_t, knots_i = [0.0], [base_rates[0] * C]
        for d in range(1, days):
            knots_t += [d * 24 * H + 6 * H, d * 24 * H + 6 * H + 60]
            knots_i += [base_rates[d - 1] * C, base_rates[d] * C]
        knots_t.append(dur + 2 * H)
        knots_i.append(base_rates[-1] * C)
        base = np.interp(grid, knots_t, knots_i)
        # the charger delivers at most 0.5C into the cell
        return np.maximum(base + activities - solar, -0.5 * C)

    def plan(net):
        # coulomb-counted SOC, pinned at 100 % where a full cell floats
        soc = np.empty_like(grid)
        s = 50.0
        soc[0] = s
        for k in range(1, len(grid)):
            s -= 100.0 * 0.5 * (net[k] + net[k - 1]) * (grid[k] - grid[k - 1]) / 3600.0 / C
            s = min(s, 100.0)
            soc[k] = s
        return soc

    # Scale each night's base load so the plan reaches its target drain.
    base_rates = [0.04] * days
    for _ in range(3):
        soc = plan(net_for(base_rates))
        for d in range(days):
            # the night of day d: from noon of day d to noon of day d+1 (t from 6 h)
            w = (grid >= d * 24 * H + 6 * H) & (grid < d * 24 * H + 30 * H) & (grid <= dur)
            drain = 100.0 - float(soc[w].min())
            hours = 15.0
            base_rates[d] = float(np.clip(base_rates[d] + (targets[d] - drain) / 100.0 / hours, 0.02, 0.07))
    net = net_for(base_rates)
    return {"demand": Demand(grid, net), "soc0": 50.0, "duration": dur, "sample": sample_s,
            "base_rates": base_rates}


# ---------------------------------------------------------------- output


def trapezoid_soc(t, i, soc0, capacity_ah):
    q = np.concatenate([[0.0], np.cumsum(0.5 * (i[1:] + i[:-1]) * np.diff(t))]) / 3600.0
    return soc0 - 100.0 * q / capacity_ah


def write_profile(path, res):
    lines = [HEADER]
    for t, i, v, s in zip(res["t"], res["i"], res["v"], res["soc"]):
        lines.append("%d,%.5f,%.5f,%.1f,%.4f" % (round(t), i, v, TEMP_K - 273.15, s))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_ocv(path, cell):
    with open(path, "w") as f:
        f.write("soc_pct,ocv_v\n")
        for s, v in cell.ocv_table:
            f.write("%d,%.5f\n" % (s, v))


def check(cell, name, res, soc0):
    """The tool's own checks; a failure stops the run."""
    soc_trap = trapezoid_soc(res["t"], res["i"], soc0, cell.capacity_ah)
    err = float(np.abs(soc_trap - res["soc"]).max())
    if err > 0.02:
        raise RuntimeError("%s %s: trapezoid SOC off pybamm's discharge capacity by %.4f %%" % (cell.chem, name, err))
    v0 = float(res["v"][0])
    ocv0 = cell.ocv(soc0)
    # at rest the start voltage is the OCV table's: the same SOC definition
    if res["i"][0] == 0.0 and abs(v0 - ocv0) > 0.002:
        raise RuntimeError("%s %s: start voltage %.4f V is not the OCV %.4f V" % (cell.chem, name, v0, ocv0))
    vlo, vhi = float(res["v"].min()), float(res["v"].max())
    if vlo < cell.v_min - 1e-4 or vhi > cell.v_charge + 1e-4:
        raise RuntimeError("%s %s: voltage %.4f..%.4f V outside the limits" % (cell.chem, name, vlo, vhi))
    return err


def summary(cell, name, res, soc0, gen_s, spec):
    s = res["soc"]
    i = res["i"]
    full_soc = [float(np.interp(t, res["t"], s)) for t in res["fulls"]]
    info = {
        "file": name + ".csv",
        "sample_s": spec["sample"],
        "duration_s": float(res["t"][-1]),
        "rows": len(res["t"]),
        "start_soc_pct": soc0,
        "end_soc_pct": round(float(s[-1]), 4),
        "min_soc_pct": round(float(s.min()), 4),
        "max_soc_pct": round(float(s.max()), 4),
        "voltage_min_v": round(float(res["v"].min()), 5),
        "voltage_max_v": round(float(res["v"].max()), 5),
        "current_max_discharge_a": round(float(i.max()), 5),
        "current_max_charge_a": round(float(-i.min()), 5),
        "full_charges": [{"t_s": round(t, 1), "soc_true_pct": round(f, 4)} for t, f in zip(res["fulls"], full_soc)],
        "end_voltage_minus_ocv_mv": round(1000.0 * (float(res["v"][-1]) - cell.ocv(float(s[-1]))), 3),
        "controller_switches": res["switches"],
        "max_soc_trapezoid_diff_pct": round(res["trap_err"], 6),
        "generation_s": round(gen_s, 2),
    }
    if "base_rates" in spec:
        info["night_base_load_c"] = [round(r, 4) for r in spec["base_rates"]]
        # lowest SOC between noon and noon (t = 6 h is noon of day 1)
        t = res["t"]
        info["night_min_soc_pct"] = [round(float(s[(t >= 6 * 3600 + d * 86400) & (t < 30 * 3600 + d * 86400)].min()), 2)
                                     for d in range(len(spec["base_rates"]))]
    return info


def meta_for(cell, profiles, total_s):
    return {
        "chemistry": cell.chem,
        "parameter_set": cell.parameter_set,
        "cell": CHEMISTRIES[cell.chem]["cell"],
        "model": "pybamm " + cell.model_name + " (isothermal)",
        "pybamm_version": pybamm.__version__,
        "capacity_ah": round(cell.capacity_ah, 6),
        "nominal_capacity_ah": cell.nominal_ah,
        "v_min": cell.v_min,
        "v_max": cell.v_max,
        "v_charge": cell.v_charge,
        "tail_current_a": round(cell.tail_a, 6),
        "tail_c_rate": TAIL_C,
        "temp_c": round(TEMP_K - 273.15, 2),
        "seed": SEED,
        "soc_definition": "true SOC by charge: start SOC - 100*Q/capacity_ah, Q = pybamm 'Discharge capacity [A.h]'; "
                          "0 %/100 % = stoichiometries where the OCV is v_min/v_max (pybamm ElectrodeSOHSolver)",
        "ocv_method": "U_p(y) - U_n(x) at 25 C with x, y linear in SOC between the ElectrodeSOHSolver "
                      "stoichiometries for v_min and v_max (as pybamm's set_initial_state does)",
        "stoichiometries": {k: round(v, 8) for k, v in cell.sto.items()},
        "current_sign": "positive = discharge",
        "profiles": profiles,
        "generation_s": round(total_s, 2),
    }


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")


def generate(chem, out_dir, names, days, file_prefix="", model="DFN"):
    t_start = time.time()
    cell = Cell(chem, model)
    os.makedirs(out_dir, exist_ok=True)
    write_ocv(os.path.join(out_dir, "ocv.csv"), cell)
    builders = {"pulse_2h": pulse_2h, "solar_2h": solar_2h, "pulse_short": pulse_short,
                "fullcharge_short": fullcharge_short,
                "solar_days": lambda c, r: solar_days(c, r, days=days)}
    profiles = {}
    for name in names:
        t0 = time.time()
        # one seed per (chemistry, profile): each output is reproducible alone
        rng = np.random.default_rng([SEED, PROFILES_ALL.index(name)])
        spec = builders[name](cell, rng)
        res = cell.run(spec["demand"], spec["soc0"], spec["duration"], spec["sample"],
                       spec.get("stop_after_full"))
        res["trap_err"] = check(cell, name, res, spec["soc0"])
        fname = file_prefix + name
        write_profile(os.path.join(out_dir, fname + ".csv"), res)
        gen_s = time.time() - t0
        profiles[fname] = summary(cell, fname, res, spec["soc0"], gen_s, spec)
        p = profiles[fname]
        print("%s %-18s %7.1f s  %6d rows  SOC %.1f -> %.1f (min %.1f)  V %.3f..%.3f  full charges %d" % (
            chem, fname, gen_s, p["rows"], p["start_soc_pct"], p["end_soc_pct"], p["min_soc_pct"],
            p["voltage_min_v"], p["voltage_max_v"], len(p["full_charges"])), flush=True)
    meta_path = os.path.join(out_dir, "meta.json")
    merged = {}
    try:
        with open(meta_path) as f:
            old = json.load(f)
        # a run of some profiles keeps the entries of the others already there
        if old.get("parameter_set") == cell.parameter_set and old.get("capacity_ah") == round(cell.capacity_ah, 6):
            merged = {k: v for k, v in old.get("profiles", {}).items()
                      if os.path.exists(os.path.join(out_dir, v.get("file", "")))}
    except (OSError, ValueError):
        pass
    merged.update(profiles)
    _write_json(meta_path, meta_for(cell, merged, time.time() - t_start))
    return profiles



def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.soc_profiles", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="folder for the full profiles (OUT/<chem>/)")
    ap.add_argument("--chemistry", default="all", choices=sorted(CHEMISTRIES) + ["all"])
    ap.add_argument("--profile", default="all", choices=list(PROFILES) + ["all"])
    ap.add_argument("--days", type=int, default=3, help="days of solar_days (default 3)")
    ap.add_argument("--short", metavar="DIR2", help="also write the short test profiles into DIR2")
    ap.add_argument("--model", default="DFN", choices=MODELS, help="pybamm model (default DFN)")
    args = ap.parse_args(argv)
    if not args.out and not args.short:
        ap.error("give --out DIR and/or --short DIR2")
    if args.days < 1 or args.days > 30:
        ap.error("--days must be 1..30")
    chems = sorted(CHEMISTRIES) if args.chemistry == "all" else [args.chemistry]
    names = list(PROFILES) if args.profile == "all" else [args.profile]
    t0 = time.time()
    for chem in chems:
        if args.out:
            generate(chem, os.path.join(args.out, chem), names, args.days, model=args.model)
        if args.short:
            generate(chem, os.path.join(args.short, chem), SHORT_PROFILES, args.days, file_prefix=chem + "_",
                     model=args.model)
    print("total %.1f s" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
