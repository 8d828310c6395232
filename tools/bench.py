#!/usr/bin/env python3
"""Benchmarks under the real MicroPython interpreter (make bench).

Prints a table, or with --json one JSON object with every figure:
- the firmware: heap bytes allocated per tick in steady state (4S, 16S,
  direct-ADC driver), microseconds per tick on this host, heap in use after
  start-up, and the firmware alone inside `micropython -X heapsize=64k`;
- the virtual board: simulated seconds per wall second for the 16S and 4S
  boards and for each front-end chip board (an hour of the solar-day
  scenario at the default 100 ms tick, charging and balancing), and the whole 24 h solar-day scenario (firmware
  and simulator compiled to .mpy) on a 64 KiB heap and on the smallest heap
  that completes it;
- the SOC estimator: its state in bytes and microseconds per once-a-second
  update (MicroPython), and its accuracy on the PyBaMM reference profiles
  beside plain coulomb counting (tools/soc_bench.py, CPython: the same
  firmware module).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # tools.scenario, when run as a script
MICROPYPATH = ":".join(os.path.join(ROOT, p) for p in ("firmware/lib", "host_tests/logic", "tools")) + ":.frozen"


def micropython():
    exe = os.path.join(ROOT, ".venv", "bin", "micropython")
    if os.path.exists(exe):
        return exe
    found = shutil.which("micropython")
    if not found:
        sys.exit("bench: no micropython binary; run `make venv` first")
    return found


def compile_mpy(out):
    """Compile the firmware to .mpy like a deploy does: a small heap cannot
    hold the compiler's work on the sources."""
    mpyc = os.path.join(os.path.dirname(micropython()), "mpy-cross")
    for d, _dirs, files in os.walk(os.path.join(ROOT, "firmware", "lib")):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), os.path.join(ROOT, "firmware", "lib"))
                dst = os.path.join(out, rel[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([mpyc, "-O3", "-o", dst, os.path.join(d, f)], check=True)
    subprocess.run([mpyc, "-O3", "-o", os.path.join(out, "bench_heap_mp.mpy"),
                    os.path.join(ROOT, "tools", "bench_heap_mp.py")], check=True)
    return out


def run(mode):
    env = dict(os.environ, MICROPYPATH=MICROPYPATH)
    r = subprocess.run([micropython(), os.path.join(ROOT, "tools", "bench_mp.py"), mode],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode:
        sys.exit("bench: %s run failed:\n%s%s" % (mode, r.stdout, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def run_heap(path, kib):
    """The firmware from .mpy on a kib KiB heap: its result, or None if it ran out."""
    env = dict(os.environ, MICROPYPATH=path + ":.frozen")
    r = subprocess.run([micropython(), "-X", "heapsize=%dk" % kib, "-m", "bench_heap_mp"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode:
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def heap_figures():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        compile_mpy(tmp)
        r = run_heap(tmp, 64)
        out["heap64k_ok"] = bool(r and r["ok"])
        # The smallest heap (8 KiB steps) the firmware runs in on this host.
        for kib in range(64, 257, 8):
            r = r if kib == 64 else run_heap(tmp, kib)
            if r and r["ok"]:
                out["min_heap_kib_unix64"] = kib
                out["min_free_at_that_heap_bytes"] = r["min_free_bytes"]
                break
    return out


SIM = os.path.join(ROOT, "tools", "sim")
SOLAR_DAY = os.path.join(ROOT, "scenarios", "solar_day.json")


def _scenario_run(scenario, out, heap_kib=None, compiled=None):
    """One headless scenario run: its result, or None if it did not complete."""
    from tools.scenario import run_one

    return run_one(scenario, out, png=False, heap_kib=heap_kib, quiet=True, compiled=compiled, show_failure=False)[1]


CHIP_BOARDS = ("pico_bq76940_15s", "esp32_bq76952_16s", "esp32_ltc6811x2_24s", "pico_adc_ina226_4s")


def vboard_speed(board, tmp):
    """Simulated/wall time for an hour of the solar day from 10:00 at the
    default tick (charging, balancing), as the virtual board runs it."""
    with open(SOLAR_DAY) as f:
        sc = json.load(f)
    sc.update({"board": board, "cells": None, "duration_s": 3600, "start_h": 10, "config": {}, "expect": []})
    with open(os.path.join(ROOT, "boards", board + ".json")) as f:
        sc["cells"] = json.load(f)["cells"]
    path = os.path.join(tmp, board + ".json")
    with open(path, "w") as f:
        json.dump(sc, f)
    res = _scenario_run(path, os.path.join(tmp, board))
    return None if res is None else round(res["speed"])


def compile_all(out):
    """Firmware, main.py and the simulator as .mpy, like a frozen build keeps
    the compiler's work off the heap."""
    compile_mpy(out)
    mpyc = os.path.join(os.path.dirname(micropython()), "mpy-cross")
    for f in os.listdir(SIM):
        if f.endswith(".py"):
            subprocess.run([mpyc, "-O3", "-o", os.path.join(out, f[:-3] + ".mpy"), os.path.join(SIM, f)], check=True)
    subprocess.run([mpyc, "-O3", "-o", os.path.join(out, "main.mpy"), os.path.join(ROOT, "firmware", "main.py")],
                   check=True)


def vboard_figures():
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["vboard_speed_16s_x"] = vboard_speed("esp32_mux_16s", tmp)
        out["vboard_speed_4s_x"] = vboard_speed("esp32_adc_4s", tmp)
        # The chip boards: firmware, driver and the register-level chip
        # models all in one MicroPython process (a tick's wall time on this
        # host is 100 ms / speed).
        for b in CHIP_BOARDS:
            out["vboard_speed_%s_x" % b] = vboard_speed(b, tmp)
        mpy = os.path.join(tmp, "mpy")
        os.makedirs(mpy)
        compile_all(mpy)
        # A run that completes (no MemoryError) fits; its expectations are
        # reported beside it.
        res = _scenario_run(SOLAR_DAY, os.path.join(tmp, "day64"), 64, mpy)
        out["solar_day_64k_ok"] = res is not None
        for kib in (64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024):
            r = res if kib == 64 else _scenario_run(SOLAR_DAY, os.path.join(tmp, "day%d" % kib), kib, mpy)
            if r is not None:
                out["solar_day_min_heap_kib"] = kib
                out["solar_day_passed_at_min_heap"] = r["passed"]
                out["solar_day_speed_x"] = round(r["speed"])
                break
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--profiles", default=os.path.join(ROOT, "build", "soc_profiles"),
                    help="PyBaMM reference profiles (make profiles)")
    args = ap.parse_args(argv)
    from tools import soc_bench

    soc = soc_bench.run(args.profiles)
    figures = run("full")
    figures.update(heap_figures())
    figures.update(vboard_figures())
    if args.json:
        figures["soc_accuracy"] = soc
        print(json.dumps(figures))
        return 0
    for k, v in figures.items():
        print("%-28s %s" % (k, v))
    print()
    print(soc_bench.table(soc))
    bad = [k for k, v in figures.items() if k.startswith("bytes_per_tick") and v != 0]
    if bad:
        print("FAIL: the tick allocates: " + ", ".join(bad))
        return 1
    if not figures["heap64k_ok"]:
        print("note: the firmware does not fit a 64 KiB heap on this 64-bit host build (see min_heap_kib_unix64)")
    if not figures["solar_day_64k_ok"]:
        print("note: the 24 h solar day (firmware + simulator) does not fit a 64 KiB heap here"
              " (see solar_day_min_heap_kib)")
    if (figures["vboard_speed_16s_x"] or 0) < 200:
        print("note: the 16S virtual board ran below its 200x goal on this host")
    return 0


if __name__ == "__main__":
    sys.exit(main())
