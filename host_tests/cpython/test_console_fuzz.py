# Console fuzzing (CPython + hypothesis): no input crashes the console, and
# every line answered with an error leaves the BMS exactly as it was.
from hypothesis import given, settings, strategies as st, HealthCheck

from bms.console import Console
from helpers import make_bms, run

WORDS = ["status", "cells", "temps", "faults", "table", "config", "get", "set", "save", "reload",
         "preset", "fet", "chg", "dsg", "all", "on", "off", "ship", "clear", "version", "help",
         "--json", "cell_ov_mv", "cells", "chemistry", "lfp", "nmc", "lto", "3650", "-1", "99999999",
         "1e3", "0x10", "", " ", "\t", "reset"]


def _state(bms):
    return (bms.cfg.values(), bytes(bms.prot.active), bms.fets.want, bms.fets.ship)


def _fresh():
    bms, afe = make_bms()
    run(bms, 3)
    out = []
    bms.reset_fn = None
    return bms, afe, Console(bms, out.append), out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(data):
    bms, afe, c, out = _fresh()
    c.feed(data)
    c.feed(b"\n")
    run(bms, 1)
    for line in "".join(out).split("\r\n"):
        assert "Traceback" not in line


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=12), min_size=1, max_size=6))
def test_error_lines_change_nothing(words):
    bms, afe, c, out = _fresh()
    line = " ".join(words).replace("\r", " ").replace("\n", " ")
    before = _state(bms)
    c.feed(line.encode("utf-8", "surrogatepass") + b"\n")
    text = "".join(out)
    lines = text.split("\r\n")[:-1]
    if any(l.startswith("error:") for l in lines):
        assert len(lines) == 1, lines
        assert _state(bms) == before, (line, lines)
