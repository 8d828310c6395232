# pytest set-up for the simulator's own tests: tools/sim on the path (the
# MicroPython runner puts it there itself via MICROPYPATH).
import os
import sys

_SIM = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "sim")
if _SIM not in sys.path:
    sys.path.insert(0, _SIM)
