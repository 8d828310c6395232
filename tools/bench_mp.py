# Benchmarks that run inside the MicroPython interpreter; tools/bench.py
# starts this and collects the one JSON line it prints.
#   MICROPYPATH=firmware/lib:host_tests/logic:.frozen micropython tools/bench_mp.py
import gc

gc.collect()
_BASE = gc.mem_alloc()  # before any firmware module is loaded

import json
import sys
import time

# Collect between imports, as main.py does, so loading leaves no garbage.
from bms.app import Bms
gc.collect()
from bms.console import Console
gc.collect()
from bms.reader import UartReader
from bench_heap_mp import adc_board, mux_board
gc.collect()
from helpers import FakeAfe, FakeClock, saved_config, tmpdir
gc.collect()

N = 2000


class NullUart:
    def any(self):
        return 0

    def write(self, s):
        return len(s)


def make(afe, cells):
    clock = FakeClock()
    cfg_path = saved_config(tmpdir(), cells=cells)
    bms = Bms(afe, cfg_path, "bench", clock=clock)
    bms.clock = clock
    return bms


def fake(cells):
    afe = FakeAfe(cells=cells, temps=4)
    afe.cells_mv = [3300 + 3 * i for i in range(cells)]
    afe.current_ma = 8000
    return afe


def ticks(bms, n):
    c = bms.clock
    for _ in range(n):
        c.now += 100
        bms.tick()


def measure(bms):
    ticks(bms, 100)  # past start-up (first SOC estimate allocates once)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    t0 = time.ticks_us()
    ticks(bms, N)
    dt = time.ticks_diff(time.ticks_us(), t0)
    b = gc.mem_alloc()
    gc.enable()
    assert bms.tick_errors == 0, bms.last_error
    assert bms.valid
    return (b - a) / N, dt / N


def startup():
    # Heap in use after start-up: loaded modules plus what main.py creates.
    # Measured before anything else was built, so no earlier object is freed
    # in between (the GC scans the stack conservatively).
    gc.collect()
    base = gc.mem_alloc()
    bms = make(adc_board(), 4)
    con = Console(bms, NullUart().write)
    UartReader(NullUart(), con)
    ticks(bms, 10)
    gc.collect()
    return {"heap_objects_after_startup_bytes": gc.mem_alloc() - base,
            "heap_modules_and_objects_bytes": gc.mem_alloc() - _BASE}


def soc_figures():
    """The SOC estimator's once-a-second step, on the board's side of the
    line: its state in bytes (the estimator and its OCV curve) and the time
    per update with the voltage correction running (NMC) and gated (LFP
    plateau)."""
    from bms.soc import Coulombs, SocEstimator, step

    r = {}
    for chem, mv in (("nmc", 3700), ("lfp", 3300)):
        # Several, so what the collector frees meanwhile averages out.
        keep = []
        gc.collect()
        a = gc.mem_alloc()
        for _ in range(8):
            keep.append(SocEstimator(chem, 100000))
        gc.collect()
        r["soc_state_bytes_" + chem] = (gc.mem_alloc() - a) // 8
        est = keep[0]
        keep = None
        counter = Coulombs()
        est.start(mv, 0)
        t0 = time.ticks_us()
        n = 2000
        for k in range(n):
            i = -20000 if k % 60 < 30 else 0
            for _ in range(10):
                counter.add(i, 100)
            step(est, counter, mv + (i // 1000), i, mv + 5)
        r["us_per_soc_update_" + chem] = round(time.ticks_diff(time.ticks_us(), t0) / n, 1)
    return r


def full():
    r = startup()
    r.update(soc_figures())
    for name, afe, cells in (("4s", fake(4), 4), ("16s", fake(16), 16), ("adc_direct_4s", adc_board(), 4),
                             ("adc_mux_16s", mux_board(), 16)):
        bms = make(afe, cells)
        alloc, us = measure(bms)
        r["bytes_per_tick_" + name] = alloc
        r["us_per_tick_" + name] = round(us, 1)
    return r


print(json.dumps(full()))
