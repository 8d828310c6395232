"""Replay a cell profile through the firmware's own SOC estimator.

    python -m tools.soc_replay --chemistry lfp|nmc --capacity-ah X --ocv OCV.csv --in PROFILE.csv
        --out EST.csv [--current-offset-a A] [--current-gain-pct P] [--voltage-noise-mv MV]
        [--current-noise-a A] [--start-error-pct P] [--seed N] [--plain] [--report]

OCV.csv has columns soc_pct,ocv_v; PROFILE.csv t_s,current_A,voltage_V,temp_C (current positive
= discharge; other columns such as soc_true_pct are ignored, except by --report); EST.csv gets
t_s,soc_pct. Each row is turned into what the board's sensors would give (integer mV and mA,
positive = charging, with the injected errors) and handed on exactly as the firmware does it: the
tick counts charge (bms.soc.Coulombs) and the main loop's once-a-second step (bms.soc.step) feeds
the estimator. --plain replaces the estimator by plain coulomb counting from the same start, for
comparison. --report prints RMS and max error against soc_true_pct.

Exit codes: 0 ok, 2 bad arguments or input file (one line on stderr).
"""

import argparse
import math
import os
import random
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _p in ("firmware/lib", "host_tests/shims"):
    _full = os.path.join(_ROOT, _p)
    if _full not in sys.path:
        sys.path.insert(0, _full)

from bms import config, soc  # noqa: E402  (the firmware's own modules)

PROFILE_COLUMNS = ("t_s", "current_A", "voltage_V", "temp_C")


class InputError(Exception):
    pass


def read_profile(path):
    """Rows of (t_s, current_A, voltage_V, temp_C, soc_true_pct or None)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InputError("%s: %s" % (path, e.strerror or e))
    lines = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise InputError("%s: empty" % path)
    head = [h.strip() for h in lines[0].split(",")]
    missing = [c for c in PROFILE_COLUMNS if c not in head]
    if missing:
        raise InputError("%s: header lacks %s (need %s)" % (path, ", ".join(missing), ",".join(PROFILE_COLUMNS)))
    idx = [head.index(c) for c in PROFILE_COLUMNS]
    k_true = head.index("soc_true_pct") if "soc_true_pct" in head else None
    rows = []
    last = None
    for n, ln in enumerate(lines[1:], start=2):
        f = ln.split(",")
        try:
            t, i, v, temp = (float(f[k]) for k in idx)
            true = float(f[k_true]) if k_true is not None else None
        except (ValueError, IndexError):
            raise InputError("%s line %d: not numbers: %s" % (path, n, ln[:60]))
        if last is not None and t <= last:
            if t == last:
                continue  # a repeated time (solver output): keep the first
            raise InputError("%s line %d: time goes back (%g after %g)" % (path, n, t, last))
        if not (0 < v < 10) or not math.isfinite(i):
            raise InputError("%s line %d: voltage %g V or current %g A not plausible for a cell" % (path, n, v, i))
        last = t
        rows.append((t, i, v, temp, true))
    if len(rows) < 2:
        raise InputError("%s: fewer than two rows" % path)
    return rows


def read_ocv(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise InputError("%s: %s" % (path, e.strerror or e))
    try:
        return soc.parse_ocv_csv(text)
    except ValueError as e:
        raise InputError("%s: %s" % (path, e))


class Errors:
    """Sensor errors injected into the replay."""

    def __init__(self, offset_a=0.0, gain_pct=0.0, v_noise_mv=0.0, i_noise_a=0.0, start_error_pct=0.0, seed=1):
        self.offset_a = offset_a
        self.gain_pct = gain_pct
        self.v_noise_mv = v_noise_mv
        self.i_noise_a = i_noise_a
        self.start_error_pct = start_error_pct
        self.rng = random.Random(seed)

    def sensed(self, current_a, voltage_v):
        """(cell mV, current mA with + = charging) as the board reads them."""
        i = -current_a * (1 + self.gain_pct / 100) + self.offset_a
        if self.i_noise_a:
            i += self.rng.gauss(0, self.i_noise_a)
        v = voltage_v * 1000
        if self.v_noise_mv:
            v += self.rng.gauss(0, self.v_noise_mv)
        return int(round(v)), int(round(i * 1000))


def _start_soc(rows, errors):
    true0 = rows[0][4]
    if true0 is None:
        return None
    return min(100.0, max(0.0, true0 + errors.start_error_pct)) / 100


def replay(rows, chemistry, capacity_ah, ocv, errors, plain=False):
    """[(t_s, soc_pct float)] for every row: the estimator's view after that row."""
    cap_mah = int(round(capacity_ah * 1000))
    cfg = config.defaults(chemistry)
    est = soc.SocEstimator(chemistry, cap_mah, ocv)
    est.configure(cfg["soc_full_mv"], cfg["soc_tail_pct"])
    counter = soc.Coulombs()
    out = []
    t_prev = rows[0][0]
    mv, ma = errors.sensed(rows[0][1], rows[0][2])
    wrong = errors.start_error_pct != 0
    s0 = _start_soc(rows, errors)
    if wrong and s0 is None:
        raise InputError("--start-error-pct needs a soc_true_pct column to start from")
    if wrong:
        est.reset(s0, soc.START_SIGMA)  # a start that knows nothing, at the wrong SOC
    else:
        est.start(mv, ma)
    q_plain = est.soc * cap_mah * 3.6 if s0 is None or wrong else s0 * cap_mah * 3.6
    if plain and not wrong and s0 is not None:
        q_plain = est.soc * cap_mah * 3.6  # plain counting starts where the firmware would: the OCV
    out.append((rows[0][0], (q_plain / (cap_mah * 3.6) if plain else est.soc) * 100))
    for t, i_a, v, _temp, _true in rows[1:]:
        dt_ms = int(round((t - t_prev) * 1000))
        t_prev = t
        # The current of the interval is the one read at its start (the
        # tick holds a reading for its period): zero-order hold.
        counter.add(ma, dt_ms)
        mv, ma = errors.sensed(i_a, v)
        if plain:
            q, _ms = counter.take()
            q_plain = min(cap_mah * 3.6, max(0.0, q_plain + q / 1000))
            out.append((t, q_plain / (cap_mah * 3.6) * 100))
            continue
        soc.step(est, counter, mv, ma, mv)
        out.append((t, est.soc * 100))
    return out


def first_full(rows, chemistry, capacity_ah):
    """Time of the first real full charge in the profile's truth (charge
    voltage reached and current down to the tail, as the firmware judges
    it, but on the true values), or None."""
    cfg = config.defaults(chemistry)
    full_v = cfg["soc_full_mv"] / 1000
    tail = capacity_ah * cfg["soc_tail_pct"] / 100
    held = 0.0
    t_prev = rows[0][0]
    for t, i, v, _temp, _true in rows:
        if v >= full_v and abs(i) <= tail:
            held += t - t_prev
            if held >= 30:
                return t
        else:
            held = 0.0
        t_prev = t
    return None


def score(rows, est, from_s):
    """(RMS, max) of |estimate - truth| in percentage points for t >= from_s."""
    n = 0
    sq = 0.0
    worst = 0.0
    for (t, _i, _v, _temp, true), (_t, s) in zip(rows, est):
        if t < from_s or true is None:
            continue
        e = abs(s - true)
        sq += e * e
        n += 1
        if e > worst:
            worst = e
    if not n:
        return None, None
    return math.sqrt(sq / n), worst


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.soc_replay", description=__doc__.split("\n\n")[0])
    ap.add_argument("--chemistry", required=True, choices=("lfp", "nmc", "lto"))
    ap.add_argument("--capacity-ah", required=True, type=float)
    ap.add_argument("--ocv", required=True)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--current-offset-a", type=float, default=0.0, help="added to every current reading (A)")
    ap.add_argument("--current-gain-pct", type=float, default=0.0, help="current reads this much high (%%)")
    ap.add_argument("--voltage-noise-mv", type=float, default=0.0, help="Gaussian noise per reading (mV)")
    ap.add_argument("--current-noise-a", type=float, default=0.0, help="Gaussian noise per reading (A)")
    ap.add_argument("--start-error-pct", type=float, default=0.0,
                    help="start this many points off the true SOC, knowing nothing (needs soc_true_pct)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plain", action="store_true", help="plain coulomb counting instead of the estimator")
    ap.add_argument("--report", action="store_true", help="print RMS and max error against soc_true_pct")
    args = ap.parse_args(argv)
    try:
        if not 0.001 <= args.capacity_ah <= 10000:
            raise InputError("--capacity-ah %g out of range 0.001..10000" % args.capacity_ah)
        ocv = read_ocv(args.ocv)
        rows = read_profile(args.inp)
        errors = Errors(args.current_offset_a, args.current_gain_pct, args.voltage_noise_mv,
                        args.current_noise_a, args.start_error_pct, args.seed)
        est = replay(rows, args.chemistry, args.capacity_ah, ocv, errors, args.plain)
    except InputError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    try:
        with open(args.out, "w") as f:
            f.write("t_s,soc_pct\n")
            for t, s in est:
                f.write("%g,%.3f\n" % (t, s))
    except OSError as e:
        print("error: %s: %s" % (args.out, e.strerror or e), file=sys.stderr)
        return 2
    if args.report:
        if rows[0][4] is None:
            print("error: --report needs a soc_true_pct column", file=sys.stderr)
            return 2
        full = first_full(rows, args.chemistry, args.capacity_ah)
        frm = 900.0 if args.chemistry != "lfp" else full
        if frm is None:
            print("no full charge in the profile: LFP error is judged from the first full charge")
            frm = rows[0][0]
        rms, worst = score(rows, est, rows[0][0] + frm if args.chemistry != "lfp" else frm)
        print("from t=%gs: RMS %.2f %%, max %.2f %%" % (frm, rms or 0, worst or 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
