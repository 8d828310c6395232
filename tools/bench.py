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
MICROPYPATH = ":".join(os.path.join(ROOT, p) for p in ("firmware/lib", "host_tests/logic")) + ":.frozen"


def micropython():
    exe = os.path.join(ROOT, ".venv", "bin", "micropython")
    if os.path.exists(exe):
        return exe
    found = shutil.which("micropython")
    if not found:
        sys.exit("bench: no micropython binary; run `make venv` first")
    return found


def compile_mpy(out):
    """Compile the firmware (and the bench's helpers) to .mpy like a deploy:
    a 64 KiB heap cannot hold the compiler's work on the sources."""
    mpyc = os.path.join(os.path.dirname(micropython()), "mpy-cross")
    for src_root in ("firmware/lib", "host_tests/logic", "tools"):
        base = os.path.join(ROOT, src_root)
        for d, _dirs, files in os.walk(base):
            for f in files:
                if not f.endswith(".py") or (src_root == "tools" and f != "bench_mp.py"):
                    continue
                rel = os.path.relpath(os.path.join(d, f), base)
                dst = os.path.join(out, rel[:-3] + ".mpy")
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                subprocess.run([mpyc, "-o", dst, os.path.join(d, f)], check=True)
    return out


def run(mode, *flags, path=None):
    env = dict(os.environ, MICROPYPATH=(path + ":.frozen") if path else MICROPYPATH)
    script = ["-m", "bench_mp"] if path else [os.path.join(ROOT, "tools", "bench_mp.py")]
    r = subprocess.run([micropython(), *flags, *script, mode],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if r.returncode:
        if mode == "heap64k":  # a figure to report, not a crash of the tool
            return {"heap64k_ok": False, "heap64k_error": (r.stdout + r.stderr).strip().splitlines()[-1]}
        sys.exit("bench: %s run failed:\n%s%s" % (mode, r.stdout, r.stderr))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    figures = run("full")
    with tempfile.TemporaryDirectory() as tmp:
        figures.update(run("heap64k", "-X", "heapsize=64k", path=compile_mpy(tmp)))
    if args.json:
        print(json.dumps(figures))
        return 0
    for k, v in figures.items():
        print("%-28s %s" % (k, v))
    bad = [k for k, v in figures.items() if k.startswith("bytes_per_tick") and v != 0]
    if bad or not figures["heap64k_ok"]:
        print("FAIL: " + ", ".join(bad or ["heap64k"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
