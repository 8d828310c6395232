#!/usr/bin/env python3
"""Firmware benchmarks under the real MicroPython interpreter (make bench).

Prints a table, or with --json one JSON object with every figure:
heap bytes allocated per tick in steady state (4S, 16S, direct-ADC driver),
microseconds per tick on this host, heap in use after start-up, and a run of
the firmware inside `micropython -X heapsize=64k`.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    figures = run("full")
    figures.update(heap_figures())
    if args.json:
        print(json.dumps(figures))
        return 0
    for k, v in figures.items():
        print("%-28s %s" % (k, v))
    bad = [k for k, v in figures.items() if k.startswith("bytes_per_tick") and v != 0]
    if bad:
        print("FAIL: the tick allocates: " + ", ".join(bad))
        return 1
    if not figures["heap64k_ok"]:
        print("note: the firmware does not fit a 64 KiB heap on this 64-bit host build (see min_heap_kib_unix64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
