#!/usr/bin/env python3
"""Write a default config file for a chemistry and cell count, in the
firmware's own format (the firmware's config module writes it).

    python tools/make_config.py --board boards/esp32_adc_4s.json --chemistry lfp --out sim-fs/config.json [--keep]

The board file's "cells" and its "config" overrides (current limits the
board is rated for) apply unless --cells is given.

--keep leaves an existing valid config alone (a user's saved settings win).
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "firmware", "lib"))

from bms import config  # noqa: E402  (the firmware's own module)


def main(argv=None):
    ap = argparse.ArgumentParser(description="write a default openbms config file")
    ap.add_argument("--chemistry", choices=sorted(config.PRESETS), default="lfp")
    ap.add_argument("--board", help="board definition (boards/NAME.json)")
    ap.add_argument("--cells", type=int)
    ap.add_argument("--out", required=True)
    ap.add_argument("--keep", action="store_true", help="keep an existing valid config")
    a = ap.parse_args(argv)
    if a.keep and config.load(a.out)[0] is not None:
        print("kept existing config %s" % a.out)
        return 0
    board = {}
    if a.board:
        try:
            with open(a.board) as f:
                board = json.load(f)
        except (OSError, ValueError) as e:
            ap.error("cannot read board %s: %s" % (a.board, e))
    cells = a.cells if a.cells is not None else board.get("cells", 4)
    try:
        cfg = config.defaults(a.chemistry, cells)
        cfg = cfg.with_values(board.get("config", {}))
    except config.ConfigError as e:
        ap.error(str(e))
    d = os.path.dirname(a.out)
    if d:
        os.makedirs(d, exist_ok=True)
    config.save(cfg, a.out)
    print("wrote %s (%s, %d cells)" % (a.out, a.chemistry, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
