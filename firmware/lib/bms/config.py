# Configuration: chemistry presets, validation against absolute limits, and
# crash-safe persistence.
#
# A Config is immutable once built: changing a value makes a new validated
# Config that the caller swaps in with one assignment, so the protection tick
# never sees a half-applied configuration.
import json
import os

try:
    from binascii import crc32
except ImportError:  # ports built without binascii.crc32

    def _crc32(data, crc=0):
        crc ^= 0xFFFFFFFF
        for b in data:
            crc ^= b
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 & -(crc & 1))
        return crc ^ 0xFFFFFFFF

    crc32 = _crc32


FORMAT_VERSION = 1

# Absolute limits per chemistry: (lowest cell mV, highest cell mV). No setting
# may put a voltage threshold outside them.
CHEMISTRY_LIMITS = {
    "lfp": (2000, 3800),
    "nmc": (2500, 4300),
    "lto": (1500, 2900),
}

# Defaults shared by every chemistry; presets below override the voltages.
_COMMON = {
    "cells": 4,
    "capacity_mah": 100000,
    "tick_ms": 100,
    "cell_ov_delay_ms": 1000,
    "cell_ov_recover_ms": 2000,
    "cell_uv_delay_ms": 2000,
    "cell_uv_recover_ms": 2000,
    "occ_ma": 50000,
    "occ_delay_ms": 2000,
    "ocd1_ma": 100000,
    "ocd1_delay_ms": 2000,
    "ocd2_ma": 150000,
    "ocd2_delay_ms": 200,
    "oc_recover_ms": 30000,
    "current_warn_pct": 90,
    "chg_max_c": 45,
    "chg_min_c": 0,
    "dsg_max_c": 60,
    "dsg_min_c": -20,
    "board_max_c": 80,
    "temp_hyst_c": 5,
    "temp_warn_c": 3,
    "temp_delay_ms": 2000,
    "temp_recover_ms": 5000,
    "sensor_delay_ms": 500,
    "sensor_recover_ms": 2000,
    "bal_delta_mv": 15,
    "bal_max_cells": 4,
    "bal_idle": 1,
    "bal_board_max_c": 55,
    "precharge_ms": 1000,
    "precharge_ma": 500,
    "precharge_retries": 3,
    "soc_tail_pct": 5,
}

# Field values (LibreSolar and diyBMS defaults) per chemistry.
PRESETS = {
    "lfp": {
        "cell_ov_mv": 3650,
        "cell_ov_warn_mv": 3600,
        "cell_ov_clear_mv": 3450,
        "cell_uv_mv": 2800,
        "cell_uv_warn_mv": 2950,
        "cell_uv_clear_mv": 3100,
        "bal_start_mv": 3400,
        "soc_full_mv": 3440,
    },
    "nmc": {
        "cell_ov_mv": 4250,
        "cell_ov_warn_mv": 4200,
        "cell_ov_clear_mv": 4050,
        "cell_uv_mv": 3000,
        "cell_uv_warn_mv": 3200,
        "cell_uv_clear_mv": 3500,
        "bal_start_mv": 3900,
        "soc_full_mv": 4150,
    },
    "lto": {
        "cell_ov_mv": 2800,
        "cell_ov_warn_mv": 2750,
        "cell_ov_clear_mv": 2650,
        "cell_uv_mv": 1800,
        "cell_uv_warn_mv": 1900,
        "cell_uv_clear_mv": 2000,
        "bal_start_mv": 2500,
        "soc_full_mv": 2700,
    },
}

_V = None  # marker: range is the chemistry's absolute voltage limits

# key: (min, max). Every key is an int except "chemistry".
SCHEMA = {
    "cells": (1, 30),  # cell bit masks stay small ints; the board may allow fewer (Bms.board_problem)
    "capacity_mah": (100, 2000000),
    "tick_ms": (20, 1000),
    "cell_ov_mv": _V,
    "cell_ov_warn_mv": _V,
    "cell_ov_clear_mv": _V,
    "cell_ov_delay_ms": (0, 60000),
    "cell_ov_recover_ms": (0, 600000),
    "cell_uv_mv": _V,
    "cell_uv_warn_mv": _V,
    "cell_uv_clear_mv": _V,
    "cell_uv_delay_ms": (0, 60000),
    "cell_uv_recover_ms": (0, 600000),
    "occ_ma": (100, 1000000),
    "occ_delay_ms": (0, 60000),
    "ocd1_ma": (100, 1000000),
    "ocd1_delay_ms": (0, 60000),
    "ocd2_ma": (100, 1000000),
    "ocd2_delay_ms": (0, 10000),
    "oc_recover_ms": (1000, 600000),
    "current_warn_pct": (50, 99),
    "chg_max_c": (20, 65),
    "chg_min_c": (-30, 15),
    "dsg_max_c": (30, 75),
    "dsg_min_c": (-40, 10),
    "board_max_c": (40, 110),
    "temp_hyst_c": (1, 20),
    "temp_warn_c": (0, 20),
    "temp_delay_ms": (0, 60000),
    "temp_recover_ms": (0, 600000),
    "sensor_delay_ms": (0, 2000),
    "sensor_recover_ms": (0, 60000),
    "bal_start_mv": _V,
    "bal_delta_mv": (3, 500),
    "bal_max_cells": (0, 16),
    "bal_idle": (0, 1),  # 0: bleed only while charging; 1: while charging or resting
    # No bleeder at or above this (board sensor, else the hottest cell); fewer
    # over the 10 C below it; again once temp_hyst_c below it.
    "bal_board_max_c": (30, 100),
    "precharge_ms": (100, 10000),
    "precharge_ma": (10, 100000),
    "precharge_retries": (0, 10),
    # Full charge: the highest cell at or above soc_full_mv while the current
    # is below soc_tail_pct % of the capacity per hour, for 30 s.
    "soc_full_mv": _V,
    "soc_tail_pct": (1, 50),
}

KEYS = tuple(sorted(["chemistry"] + list(SCHEMA)))


class ConfigError(ValueError):
    pass


def _rules(v):
    # (ok, message) pairs for settings that depend on each other.
    return (
        (v["cell_uv_mv"] < v["cell_uv_clear_mv"], "cell_uv_clear_mv must be above cell_uv_mv (%d)" % v["cell_uv_mv"]),
        (v["cell_uv_mv"] <= v["cell_uv_warn_mv"], "cell_uv_warn_mv must be at or above cell_uv_mv (%d)" % v["cell_uv_mv"]),
        (v["cell_ov_clear_mv"] < v["cell_ov_mv"], "cell_ov_clear_mv must be below cell_ov_mv (%d)" % v["cell_ov_mv"]),
        (v["cell_ov_warn_mv"] <= v["cell_ov_mv"], "cell_ov_warn_mv must be at or below cell_ov_mv (%d)" % v["cell_ov_mv"]),
        (v["cell_uv_clear_mv"] < v["cell_ov_clear_mv"], "cell_uv_clear_mv must be below cell_ov_clear_mv (%d)" % v["cell_ov_clear_mv"]),
        (v["soc_full_mv"] < v["cell_ov_mv"], "soc_full_mv must be below cell_ov_mv (%d)" % v["cell_ov_mv"]),
        (v["ocd1_ma"] < v["ocd2_ma"], "ocd2_ma must be above ocd1_ma (%d)" % v["ocd1_ma"]),
        (v["ocd2_delay_ms"] <= v["ocd1_delay_ms"], "ocd2_delay_ms must not exceed ocd1_delay_ms (%d)" % v["ocd1_delay_ms"]),
        (v["chg_max_c"] - v["chg_min_c"] > v["temp_hyst_c"], "chg_max_c - chg_min_c must exceed temp_hyst_c (%d)" % v["temp_hyst_c"]),
        (v["dsg_max_c"] - v["dsg_min_c"] > v["temp_hyst_c"], "dsg_max_c - dsg_min_c must exceed temp_hyst_c (%d)" % v["temp_hyst_c"]),
        (v["chg_max_c"] <= v["dsg_max_c"], "chg_max_c must not exceed dsg_max_c (%d)" % v["dsg_max_c"]),
        (v["dsg_min_c"] <= v["chg_min_c"], "dsg_min_c must not exceed chg_min_c (%d)" % v["chg_min_c"]),
    )


def _range(key, chemistry):
    r = SCHEMA[key]
    if r is _V:
        return CHEMISTRY_LIMITS[chemistry]
    return r


def validate(values):
    """Raise ConfigError naming the first bad key; return None if all good."""
    chem = values.get("chemistry")
    if chem not in CHEMISTRY_LIMITS:
        raise ConfigError("chemistry=%s not one of lfp, nmc, lto" % (chem,))
    for key in SCHEMA:
        if key not in values:
            raise ConfigError("%s is missing" % key)
        v = values[key]
        if type(v) is not int:
            raise ConfigError("%s must be an integer" % key)
        lo, hi = _range(key, chem)
        if not lo <= v <= hi:
            raise ConfigError("%s=%d out of range %d..%d (%s)" % (key, v, lo, hi, chem))
    for key in values:
        if key not in SCHEMA and key != "chemistry":
            raise ConfigError("%s is not a setting" % key)
    for ok, msg in _rules(values):
        if not ok:
            raise ConfigError(msg)


class Config:
    def __init__(self, values):
        validate(values)
        self._v = values

    def __getitem__(self, key):
        return self._v[key]

    def values(self):
        return dict(self._v)

    def ticks(self, key):
        # A delay in ticks, rounded up so a protection never trips early.
        t = self._v["tick_ms"]
        return (self._v[key] + t - 1) // t

    def with_value(self, key, text):
        """A new Config with key set from its text form; raises ConfigError."""
        return self.with_values({key: text})

    def with_values(self, changes):
        """A new Config with several keys changed at once, validated together
        (coupled limits such as ocd1 < ocd2 would fail one at a time)."""
        v = dict(self._v)
        for key in changes:
            text = changes[key]
            if key == "chemistry":
                v[key] = text
                continue
            if key not in SCHEMA:
                raise ConfigError("unknown key %s (see 'config get')" % key)
            try:
                v[key] = int(text)
            except ValueError:
                raise ConfigError("%s needs an integer, got %s" % (key, text))
        return Config(v)

    def with_preset(self, chemistry):
        """Chemistry preset voltages, keeping every other setting."""
        if chemistry not in PRESETS:
            raise ConfigError("chemistry=%s not one of lfp, nmc, lto" % (chemistry,))
        v = dict(self._v)
        v["chemistry"] = chemistry
        v.update(PRESETS[chemistry])
        return Config(v)


def defaults(chemistry="lfp", cells=None):
    v = dict(_COMMON)
    v["chemistry"] = chemistry
    v.update(PRESETS[chemistry])
    if cells is not None:
        v["cells"] = cells
    return Config(v)


# ---- persistence -------------------------------------------------------------
# File layout: one JSON line, then a line with the CRC-32 of the JSON bytes in
# hex. Saving writes NAME.tmp, moves the current file to NAME.bak and renames
# the tmp file into place: on littlefs each rename is atomic, so a power cut at
# any point leaves a complete valid file under NAME or NAME.bak.


def encode(cfg):
    body = json.dumps({"version": FORMAT_VERSION, "config": cfg._v})
    return "%s\n%08x\n" % (body, crc32(body.encode()) & 0xFFFFFFFF)


def decode(text):
    """Config from file text; raises ConfigError saying why it is unusable."""
    lines = text.split("\n")
    if len(lines) < 2 or not lines[1]:
        raise ConfigError("file is truncated (no checksum line)")
    body = lines[0]
    try:
        want = int(lines[1], 16)
    except ValueError:
        raise ConfigError("checksum line is not hex")
    if crc32(body.encode()) & 0xFFFFFFFF != want:
        raise ConfigError("checksum mismatch")
    try:
        doc = json.loads(body)
    except ValueError:
        raise ConfigError("not valid JSON")
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise ConfigError("unknown format version")
    values = doc.get("config")
    if not isinstance(values, dict):
        raise ConfigError("no config object")
    chem = values.get("chemistry")
    if chem in PRESETS:
        # A setting added by a newer firmware takes its default: an upgrade
        # must not turn a good saved config into a config fault.
        base = defaults(chem)._v
        new_full = "soc_full_mv" not in values
        for key in SCHEMA:
            if key not in values:
                values[key] = base[key]
        # The full-charge voltage sits below the config's own OV trip (an
        # NMC pack set to 4.10 V would refuse the 4.15 V default).
        ov = values.get("cell_ov_mv")
        if new_full and type(ov) is int and values["soc_full_mv"] >= ov:
            values["soc_full_mv"] = ov - 50
    return Config(values)


def _valid(path):
    try:
        _read(path)
        return True
    except Exception:
        return False


def save(cfg, path):
    tmp = path + ".tmp"
    bak = path + ".bak"
    with open(tmp, "w") as f:
        f.write(encode(cfg))
    # Only a valid current file becomes the backup: a corrupt one must not
    # replace the last good copy.
    if _valid(path):
        os.rename(path, bak)
    os.rename(tmp, path)


def _read(path):
    with open(path) as f:
        return decode(f.read())


def load(path):
    """(config, source, problem): config is None when no valid copy exists.

    source is the file used; problem explains what was wrong with the files
    that were skipped ("" when the main file was fine).
    """
    problems = []
    for p in (path, path + ".bak"):
        try:
            return _read(p), p, "; ".join(problems)
        except OSError:
            problems.append("%s missing" % p)
        except Exception as e:  # whatever is wrong with the file, it is not used
            problems.append("%s: %s" % (p, e))
    return None, None, "; ".join(problems)
