"""Run scenarios headless on the virtual board and plot them.

    python -m tools.scenario run scenarios/solar_day.json [--out DIR] [--no-png]
    python -m tools.scenario run-all [--out DIR]
    python -m tools.scenario list

Each run starts the unmodified firmware under the real MicroPython
interpreter (tools/sim/run.py --headless), as fast as the host allows, and
leaves in DIR: log.csv (the firmware's status beside the simulated truth,
one row per sample), result.json (every expectation with what was seen),
console.txt (what was typed and answered) and plot.png. Exit code 0 when
every expectation is met, 1 when one is not, 2 for a bad scenario or
arguments. The scenario format is described in scenarios/README.md.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

from tools.vboard import ResetNoise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = os.path.join(ROOT, "scenarios")
from tools.vboard import MICROPYPATH  # noqa: E402  (firmware/lib, tools/sim, .frozen)


def micropython():
    exe = os.path.join(ROOT, ".venv", "bin", "micropython")
    if not os.path.exists(exe):
        sys.exit("scenario: no micropython binary in .venv; run `make venv` first")
    return exe


def run_one(path, out, png=True, heap_kib=None, quiet=False, compiled=None, timeout=1800, show_failure=True):
    """Run one scenario; returns (exit code, result dict or None).

    quiet: print nothing for a completed run (a run that did not complete
    still says why, unless show_failure is False: the heap search expects
    runs that do not fit). heap_kib: MicroPython's heap; compiled: a folder
    with the firmware and the simulator as .mpy (run.mpy, main.mpy, bms/...)
    to run instead of the sources. A run that outlives timeout seconds is
    killed (exit 3)."""
    os.makedirs(out, exist_ok=True)
    cmd = [micropython()]
    if heap_kib:
        cmd += ["-X", "heapsize=%dk" % heap_kib]
    if compiled:
        cmd += ["-m", "run"]
        env = dict(os.environ, MICROPYPATH=compiled + ":" + os.path.join(ROOT, ".frozen"))
        main = os.path.join(compiled, "main.mpy")
    else:
        cmd += [os.path.join(ROOT, "tools", "sim", "run.py")]
        env = dict(os.environ, MICROPYPATH=MICROPYPATH)
        main = os.path.join(ROOT, "firmware", "main.py")
    cmd += ["--scenario", os.path.abspath(path), "--headless", "--out", os.path.abspath(out),
            "--fs", os.path.abspath(os.path.join(out, "fs")), "--main", main]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print("error: scenario %s still running after %d s: stopped" % (path, timeout), file=sys.stderr)
        return 3, None
    wall = time.monotonic() - t0
    kept = []
    noise = ResetNoise(kept.append)
    noise.feed(p.stdout)
    noise.flush()
    stdout = "".join(kept)
    if not quiet:
        sys.stdout.write(stdout)
        sys.stderr.write(p.stderr)
    result = None
    rpath = os.path.join(out, "result.json")
    if p.returncode in (0, 1) and os.path.exists(rpath):
        with open(rpath) as f:
            result = json.load(f)
        result["process_wall_s"] = wall
        if png and os.path.exists(os.path.join(out, "log.csv")):
            from tools.plotting import plot_csv

            try:
                plot_csv(os.path.join(out, "log.csv"), os.path.join(out, "plot.png"),
                         title="%s (%s)" % (result["scenario"], "passed" if result["passed"] else "FAILED"))
            except ValueError as e:
                print("scenario: no plot: %s" % e, file=sys.stderr)
    elif quiet and show_failure:
        sys.stderr.write(stdout + p.stderr)
    return p.returncode, result


def library():
    return sorted(glob.glob(os.path.join(LIBRARY, "*.json")))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.scenario", description="run virtual-board scenarios")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one scenario")
    r.add_argument("file")
    r.add_argument("--out", help="output folder (default build/scenarios/NAME)")
    r.add_argument("--no-png", action="store_true")
    r.add_argument("--heap", type=int, metavar="KIB", help="MicroPython heap size in KiB")
    a = sub.add_parser("run-all", help="run every scenario of the library")
    a.add_argument("--out", default=os.path.join(ROOT, "build", "scenarios"))
    a.add_argument("--no-png", action="store_true")
    sub.add_parser("list", help="list the library")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for path in library():
            with open(path) as f:
                sc = json.load(f)
            print("%-28s %s" % (os.path.relpath(path, ROOT), sc.get("name", "")))
        return 0
    if args.cmd == "run":
        if not os.path.exists(args.file):
            ap.error("no scenario file %s" % args.file)
        name = os.path.splitext(os.path.basename(args.file))[0]
        out = args.out or os.path.join(ROOT, "build", "scenarios", name)
        code, res = run_one(args.file, out, not args.no_png, args.heap)
        if res is not None:
            print("scenario: %s in %s (log.csv, result.json%s)" % ("passed" if res["passed"] else "FAILED", out,
                                                                  "" if args.no_png else ", plot.png"))
        return code
    failed = []
    for path in library():
        name = os.path.splitext(os.path.basename(path))[0]
        code, res = run_one(path, os.path.join(args.out, name), not args.no_png)
        if code != 0:
            failed.append(name)
    print("scenario: %d of %d passed%s" % (len(library()) - len(failed), len(library()),
                                          "; failed: " + ", ".join(failed) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
