"""Scenarios: a pack, a board, a current profile, timed faults and actions,
and expectations about what the firmware does to the hardware.

The format is documented in scenarios/README.md. This module runs inside
the virtual board (MicroPython; CPython for tests): load() checks a scenario
file and says what is wrong with it in one line, build() makes the world it
describes, and Runner is the idle hook that plays the actions, samples the
firmware's `status --json` next to the simulated truth into a CSV log, and
judges the expectations.
"""

import json

import pack as packmod
import simcmd
import simworld
import sources as srcmod


class ScenarioError(ValueError):
    pass


_TOP_KEYS = ("name", "description", "board", "chemistry", "cells", "start_h", "duration_h", "duration_s",
             "sample_s", "speed", "pack", "sensors", "config", "profile", "ambient", "actions", "expect")
_PACK_KEYS = ("capacity_ah", "soc_pct", "capacity_spread_pct", "soc_spread_pct", "resistance_spread_pct",
              "seed", "ambient_c", "temp_c", "cells")
_SENSOR_KEYS = ("adc_noise_mv", "adc_offset_mv", "adc_gain_pct", "shunt_offset_ma", "shunt_gain_pct", "seed")
_SOURCES = {
    "solar": ("peak_a", ("sunrise_h", "sunset_h", "cv_mv_per_cell", "cloud_pct", "seed")),
    "load": ("schedule", ("noise_pct", "seed")),
    "charger": ("max_a", ("cv_mv_per_cell", "windows")),
    "constant": ("amps", ()),
}
_FETS = ("chg", "dsg", "both", "any")
_EXPECT = {
    # kind: (required keys, optional keys)
    "fet_off": (("fet", "after", "within_s"), ("not_before_s",)),
    "fet_on": (("fet", "after", "within_s"), ("not_before_s",)),
    "fet_off_while": (("fet", "while"), ("grace_s",)),
    "no_fault": ((), ("except",)),
    "fault_seen": (("fault",), ()),
    "soc_within": (("pct",), ("from_s", "rms_pct")),
    "cell_max_below": (("mv",), ()),
    "cell_min_above": (("mv",), ()),
    "spread_below": (("mv",), ()),
    "soc_spread_below": (("pct",), ()),
    "resets": ((), ("min", "max", "cause")),
    "fet_state": (("at_s",), ("chg", "dsg", "until_s")),
    "balanced": ((), ("min_cells",)),
    "bled": (("cells",), ("min_s", "others_max_s")),
}
# A calibrated ESP32 board: 1 mV of noise per reading, and per input about
# 1 mV of offset and 0.05 % of gain left after calibration (x2 at a cell
# amplifier, x30 on the pack divider); the shunt's own offset and gain error.
DEFAULT_SENSORS = {"adc_noise_mv": 1.0, "adc_offset_mv": 1.0, "adc_gain_pct": 0.05, "shunt_offset_ma": 30,
                   "shunt_gain_pct": 0.2, "seed": 1}


def _need(d, key, where, kinds=(int, float)):
    if key not in d:
        raise ScenarioError("%s: %s is missing" % (where, key))
    v = d[key]
    if kinds is not None and (type(v) not in kinds or type(v) is bool):
        raise ScenarioError("%s: %s has the wrong type" % (where, key))
    return v


def _only(d, allowed, where):
    if not isinstance(d, dict):
        raise ScenarioError("%s must be an object" % where)
    for k in d:
        if k not in allowed and k != "note":
            raise ScenarioError("%s: unknown key %s (allowed: %s)" % (where, k, ", ".join(allowed)))


def _num(d, key, where, lo, hi, required=False):
    # A number within [lo, hi] (ints welcome), or absent when not required.
    if key not in d:
        if required:
            raise ScenarioError("%s: %s is missing" % (where, key))
        return None
    v = d[key]
    if type(v) not in (int, float) or v != v or not lo <= v <= hi:
        raise ScenarioError("%s: %s must be a number from %g to %g" % (where, key, lo, hi))
    return v


def _pairs(d, key, where, lo, hi):
    # [[hour, value], ...] with hours 0..24.
    v = d.get(key)
    if not isinstance(v, list) or not v:
        raise ScenarioError("%s: %s must be a list of [hour, value] pairs" % (where, key))
    for i, pair in enumerate(v):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ScenarioError("%s: %s[%d] must be [hour, value]" % (where, key, i))
        _num({"hour": pair[0], "value": pair[1]}, "hour", "%s: %s[%d]" % (where, key, i), 0, 24, True)
        _num({"hour": pair[0], "value": pair[1]}, "value", "%s: %s[%d]" % (where, key, i), lo, hi, True)


def _check_cond(c, where):
    if not isinstance(c, dict) or len([k for k in c if k != "note"]) == 0:
        raise ScenarioError("%s: a condition object is needed" % where)
    if "cell" in c:
        if c["cell"] not in ("max", "min") and (type(c["cell"]) is not int or c["cell"] < 1):
            raise ScenarioError("%s: cell is a cell number, max or min" % where)
        if ("above_mv" in c) == ("below_mv" in c):
            raise ScenarioError("%s: give one of above_mv, below_mv" % where)
        _num(c, "above_mv" if "above_mv" in c else "below_mv", where, 0, 6000, True)
    elif "temp" in c:
        if c["temp"] != "pack" and (type(c["temp"]) is not int or c["temp"] < 1):
            raise ScenarioError("%s: temp is pack or a sensor number" % where)
        if ("above_c" in c) == ("below_c" in c):
            raise ScenarioError("%s: give one of above_c, below_c" % where)
        _num(c, "above_c" if "above_c" in c else "below_c", where, -60, 200, True)
    elif "injected" in c or "removed" in c:
        name = c.get("injected", c.get("removed"))
        if name not in simworld.FAULTS:
            raise ScenarioError("%s: unknown fault %s" % (where, name))
    elif "at_s" in c:
        _num(c, "at_s", where, 0, 1e9, True)
    else:
        raise ScenarioError("%s: condition needs cell, temp, injected, removed or at_s" % where)


def _check_source(s, where):
    kind = s.get("type") if isinstance(s, dict) else None
    if kind not in _SOURCES:
        raise ScenarioError("%s: type must be one of %s" % (where, ", ".join(sorted(_SOURCES))))
    req, opt = _SOURCES[kind]
    _only(s, ("type", req) + opt, where)
    if kind == "solar":
        _num(s, "peak_a", where, 0, 5000, True)
        _num(s, "sunrise_h", where, 0, 24)
        _num(s, "sunset_h", where, 0, 24)
        _num(s, "cloud_pct", where, 0, 100)
    elif kind == "load":
        _pairs(s, "schedule", where, -5000, 5000)
        _num(s, "noise_pct", where, 0, 100)
    elif kind == "charger":
        _num(s, "max_a", where, 0, 5000, True)
        if s.get("windows") is not None:  # [[start_h, end_h], ...]
            _pairs(s, "windows", where, 0, 24)
    else:
        _num(s, "amps", where, -5000, 5000, True)
    _num(s, "cv_mv_per_cell", where, 1000, 5000)
    if "seed" in s and type(s["seed"]) is not int:
        raise ScenarioError("%s: seed must be an integer" % where)


def _check_expect(e, where):
    kind = e.get("expect") if isinstance(e, dict) else None
    if kind not in _EXPECT:
        raise ScenarioError("%s: expect must be one of %s" % (where, ", ".join(sorted(_EXPECT))))
    req, opt = _EXPECT[kind]
    _only(e, ("expect",) + req + opt, where)
    for k in req:
        _need(e, k, where, None)
    if "fet" in e and e["fet"] not in _FETS:
        raise ScenarioError("%s: fet must be one of %s" % (where, ", ".join(_FETS)))
    for k in ("after", "while"):
        if k in e:
            _check_cond(e[k], where)
    for k in ("within_s", "not_before_s", "grace_s", "from_s"):
        _num(e, k, where, 0, 1e9)
    for k in ("pct", "mv", "rms_pct"):
        _num(e, k, where, 0, 1e6)
    if kind == "fet_state":
        if e["at_s"] != "end":
            _num(e, "at_s", where, 0, 1e9, True)
        if "until_s" in e:
            if e["at_s"] == "end":
                raise ScenarioError("%s: until_s needs a numeric at_s" % where)
            _num(e, "until_s", where, e["at_s"], 1e9, True)
        if "chg" not in e and "dsg" not in e:
            raise ScenarioError("%s: fet_state needs chg and/or dsg" % where)
        for k in ("chg", "dsg"):
            if k in e and type(e[k]) is not bool:
                raise ScenarioError("%s: %s must be true or false" % (where, k))
    if kind == "resets":
        if "min" not in e and "max" not in e:
            raise ScenarioError("%s: resets needs min and/or max" % where)
        for k in ("min", "max"):
            if k in e and (type(e[k]) is not int or e[k] < 0):
                raise ScenarioError("%s: %s must be a whole number" % (where, k))
        if e.get("cause", "watchdog") != "watchdog":
            raise ScenarioError("%s: cause can only be watchdog" % where)
    if kind == "balanced" and "min_cells" in e and (type(e["min_cells"]) is not int or e["min_cells"] < 1):
        raise ScenarioError("%s: min_cells must be a whole number from 1" % where)
    if kind == "bled":
        cells = e["cells"]
        if not isinstance(cells, list) or not cells or any(type(c) is not int or c < 1 for c in cells):
            raise ScenarioError("%s: cells must be a list of cell numbers" % where)
        for k in ("min_s", "others_max_s"):
            _num(e, k, where, 0, 1e9)
    if kind in ("no_fault",) and not isinstance(e.get("except", []), list):
        raise ScenarioError("%s: except must be a list of fault names" % where)


def validate(sc):
    """Raise ScenarioError (one line) if sc is not a usable scenario."""
    _only(sc, _TOP_KEYS, "scenario")
    for k in ("name", "board"):
        if not isinstance(sc.get(k), str) or not sc[k]:
            raise ScenarioError("scenario: %s is missing" % k)
    if sc.get("chemistry", "lfp") not in packmod.CHEMISTRY:
        raise ScenarioError("scenario: chemistry must be one of %s" % ", ".join(sorted(packmod.CHEMISTRY)))
    if "duration_h" not in sc and "duration_s" not in sc:
        raise ScenarioError("scenario: duration_h or duration_s is missing")
    for k in ("duration_h", "duration_s"):
        if k in sc and (type(sc[k]) not in (int, float) or sc[k] != sc[k] or sc[k] <= 0):
            raise ScenarioError("scenario: the duration must be positive")
    _num(sc, "start_h", "scenario", 0, 24)
    _num(sc, "sample_s", "scenario", 0.1, 86400)
    _num(sc, "speed", "scenario", 0.01, 100000)
    if "cells" in sc and (type(sc["cells"]) is not int or sc["cells"] < 1):
        raise ScenarioError("scenario: cells must be a whole number from 1")
    p = sc.get("pack", {})
    _only(p, _PACK_KEYS, "pack")
    _num(p, "capacity_ah", "pack", 0.1, 5000)
    _num(p, "soc_pct", "pack", 0, 100)
    for k in ("capacity_spread_pct", "soc_spread_pct", "resistance_spread_pct"):
        _num(p, k, "pack", 0, 50)
    _num(p, "ambient_c", "pack", -60, 80)
    _num(p, "temp_c", "pack", -60, 100)
    if "seed" in p and type(p["seed"]) is not int:
        raise ScenarioError("pack: seed must be an integer")
    for n, o in (p.get("cells") or {}).items():
        where = "pack: cells[%s]" % n
        if not str(n).isdigit():
            raise ScenarioError("%s: cell numbers are whole numbers" % where)
        _only(o, ("capacity_pct", "r0_pct", "soc_pct", "self_discharge_pct_month"), where)
        for k in o:
            _num(o, k, where, 0, 1000)
    sen = sc.get("sensors", {})
    _only(sen, _SENSOR_KEYS, "sensors")
    for k in _SENSOR_KEYS[:-1]:
        _num(sen, k, "sensors", -1e6 if k == "shunt_offset_ma" else 0, 1e6)
    if not isinstance(sc.get("config", {}), dict):
        raise ScenarioError("config must be an object of firmware settings")
    if "ambient" in sc:
        _pairs(sc, "ambient", "scenario", -60, 80)
    for i, s in enumerate(sc.get("profile", [])):
        _check_source(s, "profile[%d]" % i)
    for i, a in enumerate(sc.get("actions", [])):
        where = "actions[%d]" % i
        _only(a, ("at_s", "sim", "console"), where)
        _num(a, "at_s", where, 0, 1e9, True)
        if ("sim" in a) == ("console" in a):
            raise ScenarioError("%s: give one of sim, console" % where)
        text = a.get("sim", a.get("console"))
        if not isinstance(text, str) or not text.strip():
            raise ScenarioError("%s: the command must be a non-empty string" % where)
        if "sim" in a and text.split()[0] not in simcmd.COMMANDS:
            raise ScenarioError("%s: unknown sim command %s" % (where, text.split()[0]))
    for i, e in enumerate(sc.get("expect", [])):
        _check_expect(e, "expect[%d]" % i)


def check_against(sc, cells, n_sensors):
    """What only the board decides: cell and sensor numbers in conditions."""
    for i, e in enumerate(sc.get("expect", [])):
        c = e.get("after", e.get("while")) or {}
        if type(c.get("cell")) is int and c["cell"] > cells:
            raise ScenarioError("expect[%d]: cell %d, but the pack has %d cells" % (i, c["cell"], cells))
        if type(c.get("temp")) is int and c["temp"] > n_sensors:
            raise ScenarioError("expect[%d]: sensor %d, but the board has %d" % (i, c["temp"], n_sensors))
        for n in e.get("cells", []) if e.get("expect") == "bled" else []:
            if n > cells:
                raise ScenarioError("expect[%d]: cell %d, but the pack has %d cells" % (i, n, cells))
    for n in (sc.get("pack", {}).get("cells") or {}):
        if not 1 <= int(n) <= cells:
            raise ScenarioError("pack: cells[%s], but the pack has %d cells" % (n, cells))


def duration_s(sc):
    return float(sc["duration_s"]) if "duration_s" in sc else float(sc["duration_h"]) * 3600.0


def load(path):
    try:
        with open(path) as f:
            sc = json.load(f)
    except OSError:
        raise ScenarioError("cannot open scenario %s" % path)
    except ValueError as e:
        raise ScenarioError("scenario %s is not valid JSON: %s" % (path, e))
    validate(sc)
    return sc


def make_sources(specs):
    out = []
    for s in specs:
        kind = s["type"]
        if kind == "solar":
            out.append(srcmod.Solar(s["peak_a"], s.get("sunrise_h", 6.0), s.get("sunset_h", 18.0),
                                    s.get("cv_mv_per_cell", 3450), s.get("cloud_pct", 0), s.get("seed", 1)))
        elif kind == "load":
            out.append(srcmod.Load(s["schedule"], s.get("noise_pct", 0), s.get("seed", 1)))
        elif kind == "charger":
            out.append(srcmod.Charger(s["max_a"], s.get("cv_mv_per_cell", 3450), s.get("windows")))
        else:
            out.append(srcmod.Constant(s["amps"]))
    return out


def make_pack(sc, cells):
    p = sc.get("pack", {})
    return packmod.Pack(
        chemistry=sc.get("chemistry", "lfp"), cells=cells, capacity_ah=p.get("capacity_ah", 100.0),
        soc_pct=p.get("soc_pct", 50.0), capacity_spread_pct=p.get("capacity_spread_pct", 0.0),
        soc_spread_pct=p.get("soc_spread_pct", 0.0), resistance_spread_pct=p.get("resistance_spread_pct", 0.0),
        seed=p.get("seed", 1), ambient_c=p.get("ambient_c", 25.0), temp_c=p.get("temp_c"), overrides=p.get("cells"))


def build(sc, board):
    """The world a scenario describes, on the parsed board file."""
    cells = sc.get("cells", board["cells"])
    if type(cells) is not int or not 1 <= cells <= simworld.board_cells(board):
        raise ScenarioError("cells must be 1..%d on board %s" % (simworld.board_cells(board), board.get("name")))
    check_against(sc, cells, len(board.get("ntc") or []))
    sensors = dict(DEFAULT_SENSORS)
    sensors.update(sc.get("sensors", {}))
    w = simworld.SimWorld(board, make_pack(sc, cells), sensors)
    w.sources = make_sources(sc.get("profile", []))
    w.day_start_s = float(sc.get("start_h", 0.0)) * 3600.0
    if sc.get("ambient"):
        w.ambient_profile = sc["ambient"]
    w.changed()
    return w


def _interp_cross(t0, v0, t1, v1, thr):
    # When a linearly moving value passed thr between two steps.
    if v1 == v0:
        return t1
    f = (thr - v0) / (v1 - v0)
    if f < 0:
        f = 0.0
    elif f > 1:
        f = 1.0
    return t0 + (t1 - t0) * f


class _Cond:
    """A condition of an expectation, tracked on every physics step; `since`
    is when it last became true (interpolated for thresholds)."""

    def __init__(self, c):
        self.c = c
        self.since = None
        self.first = None
        self.prev = None  # (t, value) of the last step
        self.now = False

    def value(self, w):
        c = self.c
        if "cell" in c:
            n = w.pack.n
            vals = [w.cell_true_mv(k) for k in range(n)]
            if c["cell"] == "max":
                return max(vals)
            if c["cell"] == "min":
                return min(vals)
            return vals[c["cell"] - 1]
        if "temp" in c:
            return w.pack.temp_c if c["temp"] == "pack" else w.sensor_temp_c(c["temp"] - 1)
        return None

    def update(self, w, t, events):
        c = self.c
        v = self.value(w)
        if v is not None:
            if "above_mv" in c or "above_c" in c:
                thr = c.get("above_mv", c.get("above_c"))
                now = v >= thr
            else:
                thr = c.get("below_mv", c.get("below_c"))
                now = v <= thr
            if now and not self.now:
                self.since = t if self.prev is None else _interp_cross(self.prev[0], self.prev[1], t, v, thr)
            self.prev = (t, v)
        elif "at_s" in c:
            now = t >= c["at_s"]
            if now and not self.now:
                self.since = c["at_s"]
        else:
            name = c.get("injected", c.get("removed"))
            want = "on" if "injected" in c else "off"
            hit = None
            for et, en, es in events:
                if en == name and es == want:
                    hit = et
            now = self.now
            if hit is not None:
                now = True
                self.since = hit
        if now and self.first is None:
            self.first = self.since
        self.now = now


def _fet_is(w, fet, want_on):
    chg = w.fet_on("chg")
    dsg = w.fet_on("dsg")
    if fet == "chg":
        return chg == want_on
    if fet == "dsg":
        return dsg == want_on
    if fet == "both":
        return (chg and dsg) if want_on else (not chg and not dsg)
    return (chg or dsg) if want_on else (not chg or not dsg)  # "any"


def describe(e):
    """A short sentence for an expectation, for reports."""
    k = e["expect"]
    if k in ("fet_off", "fet_on"):
        lo = e.get("not_before_s")
        return "%s %s %swithin %g s after %s" % (
            e["fet"].upper(), "off" if k == "fet_off" else "on", "" if lo is None else "not before %g s and " % lo,
            e["within_s"], _describe_cond(e["after"]))
    if k == "fet_off_while":
        return "%s off while %s (grace %g s)" % (e["fet"].upper(), _describe_cond(e["while"]), e.get("grace_s", 0))
    if k == "no_fault":
        return "no fault" + (" except %s" % ", ".join(e["except"]) if e.get("except") else "")
    if k == "fault_seen":
        return "fault %s trips" % e["fault"]
    if k == "soc_within":
        return "reported SOC within +-%g %%%s of the truth from t=%g s" % (
            e["pct"], " (RMS %g %%)" % e["rms_pct"] if "rms_pct" in e else "", e.get("from_s", 0))
    if k == "cell_max_below":
        return "no cell above %d mV" % e["mv"]
    if k == "cell_min_above":
        return "no cell below %d mV" % e["mv"]
    if k == "spread_below":
        return "cell spread below %d mV at the end" % e["mv"]
    if k == "soc_spread_below":
        return "cell SOC spread below %g %% at the end" % e["pct"]
    if k == "bled":
        return "bleeders on cell(s) %s%s%s" % (", ".join(str(c) for c in e["cells"]),
                                               " for %g s or more" % e["min_s"] if "min_s" in e else "",
                                               "; any other for %g s at most" % e["others_max_s"]
                                               if "others_max_s" in e else "")
    if k == "resets":
        return "board resets %s..%s%s" % (e.get("min", 0), e.get("max", "any"),
                                          " (%s)" % e["cause"] if e.get("cause") else "")
    if k == "fet_state":
        return "%s %s: %s" % ("from" if "until_s" in e else "at", e["at_s"] if "until_s" not in e else "%g to %g s" % (
            e["at_s"], e["until_s"]), ", ".join("%s %s" % (f.upper(), "on" if e[f] else "off")
                                                   for f in ("chg", "dsg") if f in e))
    return "balancing on at least %d cell(s)" % e.get("min_cells", 1)


def _describe_cond(c):
    if "cell" in c:
        which = "cell %s" % c["cell"] if type(c["cell"]) is int else "the %s cell" % ("highest" if c["cell"] == "max" else "lowest")
        return "%s %s %d mV" % (which, "passes" if "above_mv" in c else "falls below", c.get("above_mv", c.get("below_mv")))
    if "temp" in c:
        what = "the pack" if c["temp"] == "pack" else "sensor %d" % c["temp"]
        return "%s %s %g C" % (what, "above" if "above_c" in c else "below", c.get("above_c", c.get("below_c")))
    if "injected" in c:
        return "%s is injected" % c["injected"]
    if "removed" in c:
        return "%s is removed" % c["removed"]
    return "t=%g s" % c["at_s"]


class _Expect:
    """One expectation and what was seen of it."""

    def __init__(self, e):
        self.e = e
        self.kind = e["expect"]
        self.cond = _Cond(e.get("after", e.get("while"))) if ("after" in e or "while" in e) else None
        self.t_hit = None  # fet_off / fet_on: when the FET did it
        self.violation_s = 0.0
        self.worst = None
        self.done = False
        self.already = False
        self.extreme = None
        self.soc_stats = (0, 0.0, 0.0)  # samples, sum of squared errors, worst error
        self.bleed_s = None  # bled: seconds each cell's bleeder conducted

    def sample(self, t, fw_soc, true_soc):
        """A status sample (soc_within keeps running statistics, not samples)."""
        if self.kind == "soc_within" and fw_soc is not None and t >= self.e.get("from_s", 0):
            err = abs(fw_soc - true_soc)
            n, sq, worst = self.soc_stats
            self.soc_stats = (n + 1, sq + err * err, err if err > worst else worst)

    def step(self, w, t, dt, events):
        k = self.kind
        if self.cond is not None:
            self.cond.update(w, t, events)
        if k in ("fet_off", "fet_on"):
            if self.done or self.cond.first is None:
                return
            if _fet_is(w, self.e["fet"], k == "fet_on"):
                # The watched gate change that put the FET(s) in this state;
                # before the condition means they were there already.
                changed = _last_change(w, self.e["fet"], t)
                self.already = changed < self.cond.first - 1e-6
                self.t_hit = max(self.cond.first, changed)
                self.done = True
        elif k == "fet_off_while":
            c = self.cond
            if c.now and t - c.since > self.e.get("grace_s", 0.0) and not _fet_is(w, self.e["fet"], False):
                self.violation_s += dt
                if self.worst is None:
                    self.worst = t
        elif k == "cell_max_below":
            v = max(w.cell_true_mv(i) for i in range(w.pack.n))
            if self.extreme is None or v > self.extreme:
                self.extreme = v
        elif k == "cell_min_above":
            v = min(w.cell_true_mv(i) for i in range(w.pack.n))
            if self.extreme is None or v < self.extreme:
                self.extreme = v
        elif k in ("spread_below", "soc_spread_below"):
            if self.extreme is None:  # the spread at the start, for the report
                self.extreme = _spread(w, k)
        elif k == "bled":
            if self.bleed_s is None:
                self.bleed_s = [0.0] * w.pack.n
            for i in range(w.pack.n):
                if w.bleeding(i):
                    self.bleed_s[i] += dt
        elif k == "fet_state" and self.e["at_s"] != "end" and t >= self.e["at_s"]:
            if not self.done:
                self.extreme = (w.fet_on("chg"), w.fet_on("dsg"))
                self.done = True
            elif self.worst is None and t <= self.e.get("until_s", -1):
                st = (w.fet_on("chg"), w.fet_on("dsg"))
                if not _state_is(self.e, st):
                    self.worst = t  # the first moment it was not so
                    self.extreme = st

    def judge(self, r):
        """(passed, detail) at the end; r is the Runner."""
        e = self.e
        k = self.kind
        if k in ("fet_off", "fet_on"):
            if self.cond.first is None:
                return False, "the condition never happened (%s)" % _describe_cond(e["after"])
            if self.t_hit is None:
                return False, "%s still %s at the end, %.1f s after the condition" % (
                    e["fet"].upper(), "on" if k == "fet_off" else "off", r.t_end - self.cond.first)
            if self.already:
                return False, "%s was %s already when the condition came (t=%.3f s): nothing to time" % (
                    e["fet"].upper(), "off" if k == "fet_off" else "on", self.cond.first)
            d = self.t_hit - self.cond.first
            lo = e.get("not_before_s", 0.0)
            ok = lo - 1e-6 <= d <= e["within_s"] + 1e-6
            return ok, "took %.3f s (condition at t=%.3f s)" % (d, self.cond.first)
        if k == "fet_off_while":
            # A "whenever" statement: also true when the condition never held
            # (the protection acted first). Pair it with fault_seen or a cell
            # limit to show the scenario got there.
            if self.cond.first is None:
                return True, "the condition never held (%s)" % _describe_cond(e["while"])
            if self.violation_s:
                return False, "%s on for %.1f s while it should be off (first at t=%.1f s)" % (
                    e["fet"].upper(), self.violation_s, self.worst)
            return True, "held off (condition first at t=%.1f s)" % self.cond.first
        if k == "no_fault":
            if not r.answered or r.final is None:
                return False, "the firmware did not answer (%d samples answered)" % r.answered
            allowed = e.get("except", [])
            bad = [n for n in r.trips if n not in allowed]
            seen = [n for n in r.faults_seen if n not in allowed]
            if bad or seen:
                return False, "tripped: %s" % ", ".join(sorted(set(bad + seen)))
            if r.world.resets:
                return False, "%d board reset(s)" % r.world.resets
            return True, "none"
        if k == "fault_seen":
            n = r.trips.get(e["fault"], 0)
            ok = n > 0 or e["fault"] in r.faults_seen
            return ok, "%d trip(s)" % n
        if k == "soc_within":
            n, sq, worst = self.soc_stats
            if not n:
                return False, "no SOC samples"
            rms = (sq / n) ** 0.5
            ok = worst <= e["pct"] and rms <= e.get("rms_pct", 100)
            return ok, "max error %.1f %%, RMS %.1f %% over %d samples" % (worst, rms, n)
        if k == "cell_max_below":
            return self.extreme < e["mv"], "highest cell %.0f mV" % self.extreme
        if k == "cell_min_above":
            return self.extreme > e["mv"], "lowest cell %.0f mV" % self.extreme
        if k == "spread_below":
            d = _spread(r.world, k)
            return d < e["mv"], "spread %.0f mV (%s mV at the start)" % (
                d, "?" if self.extreme is None else "%.0f" % self.extreme)
        if k == "soc_spread_below":
            d = _spread(r.world, k)
            return d < e["pct"], "SOC spread %.2f %% (%s %% at the start)" % (
                d, "?" if self.extreme is None else "%.2f" % self.extreme)
        if k == "bled":
            secs = self.bleed_s or [0.0] * r.world.pack.n
            want = e["cells"]
            short = [c for c in want if secs[c - 1] <= 0 or secs[c - 1] < e.get("min_s", 0)]
            others = [i + 1 for i in range(len(secs)) if i + 1 not in want and secs[i] > e.get("others_max_s", 1e18)]
            detail = "bled " + (", ".join("%d: %.0f s" % (i + 1, secs[i]) for i in range(len(secs)) if secs[i]) or "nothing")
            return not short and not others, detail
        if k == "resets":
            n = r.world.resets
            ok = e.get("min", 0) <= n <= e.get("max", n)
            if e.get("cause") == "watchdog" and r.reset_causes:
                ok = ok and all(c == simworld.WDT_RESET for c in r.reset_causes)
            return ok, "%d reset(s)" % n
        if k == "fet_state":
            if e["at_s"] == "end":
                self.extreme = (r.world.fet_on("chg"), r.world.fet_on("dsg"))
            if self.extreme is None:
                return False, "never reached t=%s" % e["at_s"]
            chg, dsg = self.extreme
            return _state_is(e, self.extreme), "CHG %s, DSG %s%s" % (
                "on" if chg else "off", "on" if dsg else "off", "" if self.worst is None else " at t=%.3f s" % self.worst)
        n = r.most_bleeding
        if r.bleed_mismatch:
            return False, "%d sample(s) where the cells reported bleeding were not the ones bleeding, first %s" % (
                r.bleed_mismatch, r.bleed_mismatch_at)
        return n >= e.get("min_cells", 1) and r.bled, "up to %d cell(s) at once reported; bleeders %s" % (
            n, "conducted" if r.bled else "never conducted")


def _spread(w, kind):
    # True cell voltages (mV) or cell SOC (%): highest minus lowest.
    n = w.pack.n
    vals = [w.cell_true_mv(i) if kind == "spread_below" else w.pack.cell_soc_pct(i) for i in range(n)]
    return max(vals) - min(vals)


def _state_is(e, st):
    return e.get("chg", st[0]) == st[0] and e.get("dsg", st[1]) == st[1]


def _last_change(w, fet, t):
    # When the watched gate(s) last changed (s; a gate that never changed:
    # 0, boot). Checked at least once per physics step, the state just
    # reached comes from the latest change of the gates involved.
    g = getattr(w, "gate_changed_ms", None)
    if g is None:
        return t
    if fet in ("chg", "dsg"):
        return g[fet] / 1000.0
    return max(g["chg"], g["dsg"]) / 1000.0


class ScenarioStop(BaseException):
    """The scenario's duration is over (raised through the firmware)."""


class Runner:
    """Idle hook and physics-step hook playing one scenario.

    headless: sample status and the truth into csv_path, judge expectations
    and stop the world after the duration. Interactive: only the actions.
    """

    def __init__(self, world, sc, out=None, csv_path=None, headless=True):
        self.world = world
        self.sc = sc
        self.out = out or (lambda line: None)
        self.headless = headless
        self.cmds = simcmd.SimCommands(world, self.out)
        self.actions = sorted(sc.get("actions", []), key=lambda a: a["at_s"])
        self.next_action = 0
        self.events = []  # (t, fault, "on"/"off") from actions
        self.expects = [_Expect(e) for e in sc.get("expect", [])] if headless else []
        self.t_end = duration_s(sc)
        self.sample_ms = int(sc.get("sample_s", 60) * 1000)
        self.next_sample_ms = 0
        self.pending = None  # virtual ms a status request went out, awaiting its reply
        self.rx = bytearray()
        self.csv = None
        self.columns = None
        self.trips = {}
        self.faults_seen = []
        self.answered = 0  # status samples the firmware answered
        self.most_bleeding = 0  # most cells the firmware reported bleeding at once
        self.bleed_mismatch = 0  # samples where reported and true bleeders differ
        self.bleed_mismatch_at = None
        self.action_errors = []  # sim actions the simulator refused
        self.bled = False
        self.reset_causes = []
        self.transcript = []
        self._resets = world.resets
        self.final = None  # the faults --json reply at the end
        self.finishing = None  # virtual ms the final query went out
        if headless and csv_path:
            self.csv = open(csv_path, "w")
        self._watch_gates()
        world.idle_hooks.append(self.idle)
        if self.expects:
            world.step_hooks.append(self.step)

    def _watch_gates(self):
        w = self.world
        w.gate_changed_ms = {"chg": 0, "dsg": 0}
        f = w.board.get("fets") or {}

        def watcher(name):
            def changed(level):
                # ints only: this can run inside a (simulated) hard IRQ
                w.gate_changed_ms[name] = w.now_ms

            return changed

        for name in ("chg", "dsg"):
            if f.get(name) is not None:
                w.watch_pin(f[name], watcher(name))

    # ---- per physics step -------------------------------------------------

    def step(self, dt_ms):
        w = self.world
        t = w.now_ms / 1000.0
        for e in self.expects:
            e.step(w, t, dt_ms / 1000.0, self.events)
        if not self.bled:
            for k in range(w.pack.n):
                if w.bleeding(k):
                    self.bled = True
                    break

    # ---- per idle -----------------------------------------------------------

    def idle(self):
        w = self.world
        if w.resets != self._resets:
            self._resets = w.resets
            self.reset_causes.append(w.reset_cause)
            if self.pending is not None:  # the reply in flight died with the board
                self.pending = None
                self._row(None)
        t = w.now_ms / 1000.0
        while self.next_action < len(self.actions) and self.actions[self.next_action]["at_s"] <= t:
            self._act(self.actions[self.next_action])
            self.next_action += 1
        if not self.headless:
            return
        self._collect()
        if self.finishing is not None:
            if self.final is not None or w.now_ms - self.finishing > 2000:
                raise ScenarioStop()
            return
        if t >= self.t_end:
            if self.pending is not None:
                self._row(None)
                self.pending = None
            self.finishing = w.now_ms
            w.uart_feed("faults --json\n")
            return
        if w.now_ms >= self.next_sample_ms:
            if self.pending is not None:
                self._row(None)  # no reply since the last request: the firmware is not answering
            self.next_sample_ms += self.sample_ms
            self.pending = w.now_ms
            w.uart_feed("status --json\n")

    def _note(self, line):
        # The console transcript; capped so a chatty run keeps a flat heap.
        if len(self.transcript) < 2000:
            self.transcript.append(line)

    def _act(self, a):
        w = self.world
        if "console" in a:
            w.uart_feed(a["console"] + "\n")
            self._note("%.3f > %s" % (w.now_ms / 1000.0, a["console"]))
            return
        replies = self.cmds.run(a["sim"])
        for line in replies:
            self.out(line)
            self._note("%.3f %s" % (w.now_ms / 1000.0, line))
        if replies and replies[0].startswith("error:"):
            self.action_errors.append("t=%g s sim %s: %s" % (a["at_s"], a["sim"], replies[0]))
            return
        words = a["sim"].split()
        if len(words) >= 3 and words[0] == "fault" and words[2] in ("on", "off"):
            self.events.append((w.now_ms / 1000.0, words[1], words[2]))
        self.step(0)  # conditions see the action at its own time

    def _collect(self):
        if not self.world.uart_tx:
            return
        data = self.world.uart_take()
        self.rx.extend(data)
        while True:
            i = self.rx.find(b"\n")
            if i < 0:
                break
            line = bytes(self.rx[:i]).strip()
            self.rx = self.rx[i + 1:]
            if line.startswith(b"{"):
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and "trips" in doc:
                    self.final = doc
                    self.trips = doc["trips"]
                    continue
                if isinstance(doc, dict) and "state" in doc and self.pending is not None:
                    self.pending = None
                    self._row(doc)
                    continue
            self._note("%.3f < %s" % (self.world.now_ms / 1000.0, line.decode()))

    def _row(self, s):
        w = self.world
        p = w.pack
        n = p.n
        t = w.now_ms / 1000.0
        if s is not None:
            for f in s.get("faults", []):
                if f not in self.faults_seen:
                    self.faults_seen.append(f)
            self.answered += 1
            true_soc = p.soc_pct()
            for e in self.expects:
                e.sample(t, s.get("soc_pct"), true_soc)
            reported = s.get("balancing") or []
            if len(reported) > self.most_bleeding:
                self.most_bleeding = len(reported)
            # Bleeders switch at the end of a tick, the status is from its
            # snapshot: compare once the firmware is past boot.
            bleeding = [k + 1 for k in range(n) if w.bleeding(k)]
            if s.get("state") not in ("boot", None) and reported != bleeding:
                self.bleed_mismatch += 1
                if self.bleed_mismatch_at is None:
                    self.bleed_mismatch_at = "t=%.0f s: reported %s, bleeding %s" % (t, reported, bleeding)
        if self.csv is None:
            return
        if self.columns is None:
            n_t = len(w.temp_pin)
            self.columns = (["sim_t_s", "tod_h", "uptime_s", "state", "chg", "dsg", "pack_mv", "current_ma", "soc_pct"]
                            + ["cell%d_mv" % (k + 1) for k in range(n)] + ["t%d_c" % (i + 1) for i in range(n_t)]
                            + ["board_c", "faults", "balancing", "true_chg", "true_dsg", "true_current_ma",
                               "true_soc_pct"] + ["true_cell%d_mv" % (k + 1) for k in range(n)]
                            + ["pack_temp_c", "true_board_c", "ambient_c", "resets"])
            self.csv.write(",".join(self.columns) + "\n")
        row = ["%.1f" % t, "%.4f" % (w.time_of_day_s() / 3600.0)]
        if s is None:
            row += [""] * (7 + n + len(w.temp_pin) + 3)
        else:
            cells = s.get("cells_mv") or []
            temps = s.get("temps_c") or []
            row += [_cell(s.get("uptime_s")), s.get("state", ""), _bit(s.get("chg")), _bit(s.get("dsg")),
                    _cell(s.get("pack_mv")), _cell(s.get("current_ma")), _cell(s.get("soc_pct"))]
            row += [_cell(cells[k]) if k < len(cells) else "" for k in range(n)]
            row += [_cell(temps[i]) if i < len(temps) else "" for i in range(len(w.temp_pin))]
            row += [_cell(s.get("board_c")), " ".join(s.get("faults", [])),
                    " ".join(str(c) for c in s.get("balancing", []))]
        row += [_bit(w.fet_on("chg")), _bit(w.fet_on("dsg")), str(w.flowing_ma()), "%.2f" % p.soc_pct()]
        row += ["%.1f" % w.cell_true_mv(k) for k in range(n)]
        row += ["%.2f" % p.temp_c, "%.2f" % w.board_temp(), "%.2f" % p.ambient_c, str(w.resets)]
        self.csv.write(",".join(row) + "\n")

    # ---- the end -------------------------------------------------------------

    def finish(self):
        """Judge every expectation; returns the result document."""
        if self.csv is not None:
            self.csv.close()
            self.csv = None
        results = []
        for err in self.action_errors:  # a scenario that did not run as written proves nothing
            results.append({"expect": "every action runs", "passed": False, "detail": err})
        for e in self.expects:
            ok, detail = e.judge(self)
            results.append({"expect": describe(e.e), "passed": bool(ok), "detail": detail})
        return {
            "scenario": self.sc["name"],
            "passed": all(r["passed"] for r in results),
            "sim_s": self.world.now_ms / 1000.0,
            "expectations": results,
            "trips": self.trips,
            "resets": self.world.resets,
        }


def _cell(v):
    return "" if v is None else str(v)


def _bit(v):
    return "" if v is None else ("1" if v else "0")
