# Config: presets, validation with one-line errors, crash-safe persistence,
# and boot with no valid copy (FETs off, config fault saying why).
from bms import config
from helpers import FakeAfe, boot_bms, tmpdir, run


def _error(fn):
    try:
        fn()
    except config.ConfigError as e:
        return str(e)
    raise AssertionError("no ConfigError")


def test_presets_carry_field_defaults():
    lfp = config.defaults("lfp")
    assert (lfp["cell_ov_mv"], lfp["cell_ov_clear_mv"]) == (3650, 3450)
    assert 2500 <= lfp["cell_uv_mv"] <= 2900 and 3050 <= lfp["cell_uv_clear_mv"] <= 3100
    nmc = config.defaults("nmc")
    assert (nmc["cell_ov_mv"], nmc["cell_ov_clear_mv"], nmc["cell_uv_mv"], nmc["cell_uv_clear_mv"]) == (4250, 4050, 3000, 3500)
    assert (lfp["chg_min_c"], lfp["chg_max_c"], lfp["dsg_min_c"], lfp["dsg_max_c"], lfp["temp_hyst_c"]) == (0, 45, -20, 60, 5)
    assert config.defaults("lto")["cell_ov_mv"] <= 2900
    assert lfp["tick_ms"] == 100


def test_out_of_range_value_names_key_and_range():
    cfg = config.defaults("lfp")
    msg = _error(lambda: cfg.with_value("cell_ov_mv", "4200"))
    assert msg == "cell_ov_mv=4200 out of range 2000..3800 (lfp)"
    assert "\n" not in msg
    assert cfg["cell_ov_mv"] == 3650  # the original is untouched


def test_nmc_allows_what_lfp_forbids():
    nmc = config.defaults("nmc")
    assert nmc.with_value("cell_ov_mv", "4200")["cell_ov_mv"] == 4200
    assert "4400" in _error(lambda: nmc.with_value("cell_ov_mv", "4400"))


def test_bad_values_and_keys():
    cfg = config.defaults("lfp")
    assert _error(lambda: cfg.with_value("cells", "four")) == "cells needs an integer, got four"
    assert _error(lambda: cfg.with_value("cells", "31")) == "cells=31 out of range 1..30 (lfp)"
    assert _error(lambda: cfg.with_value("nosuch", "1")).startswith("unknown key nosuch")
    assert _error(lambda: cfg.with_value("chemistry", "lead")) == "chemistry=lead not one of lfp, nmc, lto"


def test_hysteresis_must_stay_on_the_safe_side():
    cfg = config.defaults("lfp")
    assert "cell_ov_clear_mv must be below cell_ov_mv" in _error(lambda: cfg.with_value("cell_ov_clear_mv", "3650"))
    assert "cell_uv_clear_mv must be above cell_uv_mv" in _error(lambda: cfg.with_value("cell_uv_clear_mv", "2800"))
    assert "ocd2_ma must be above ocd1_ma" in _error(lambda: cfg.with_value("ocd2_ma", "90000"))


def test_switching_chemistry_without_preset_is_refused_when_voltages_do_not_fit():
    cfg = config.defaults("nmc")
    assert "out of range" in _error(lambda: cfg.with_value("chemistry", "lfp"))
    assert cfg.with_preset("lfp")["cell_ov_mv"] == 3650


def test_save_and_load_round_trip():
    d = tmpdir()
    cfg = config.defaults("nmc", 3).with_value("capacity_mah", "5000")
    config.save(cfg, d + "/c.json")
    got, src, problem = config.load(d + "/c.json")
    assert got.values() == cfg.values()
    assert src == d + "/c.json" and problem == ""


def test_second_save_keeps_previous_copy_as_backup():
    d = tmpdir()
    p = d + "/c.json"
    config.save(config.defaults("lfp"), p)
    config.save(config.defaults("nmc"), p)
    assert config.load(p)[0]["chemistry"] == "nmc"
    assert config.load(p + ".bak")[0]["chemistry"] == "lfp"


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def test_corrupt_main_file_falls_back_to_backup():
    d = tmpdir()
    p = d + "/c.json"
    config.save(config.defaults("lfp"), p)
    config.save(config.defaults("nmc"), p)
    text = config.encode(config.defaults("nmc"))
    _write(p, text.replace("4250", "4299"))  # one flipped value: checksum catches it
    cfg, src, problem = config.load(p)
    assert cfg["chemistry"] == "lfp" and src == p + ".bak"
    assert "checksum mismatch" in problem


def test_saving_over_a_corrupt_file_keeps_the_good_backup():
    d = tmpdir()
    p = d + "/c.json"
    config.save(config.defaults("lfp"), p)
    config.save(config.defaults("nmc"), p)  # .bak = lfp, main = nmc
    _write(p, "torn")
    config.save(config.defaults("lto"), p)
    assert config.load(p)[0]["chemistry"] == "lto"
    assert config.load(p + ".bak")[0]["chemistry"] == "lfp"


def test_file_with_valid_checksum_but_wrong_types_is_rejected():
    import json

    d = tmpdir()
    p = d + "/c.json"
    for bad in ({"chemistry": [1]}, {"chemistry": "lfp", "cells": "4"}, [], {"x": 1}):
        body = json.dumps({"version": 1, "config": bad})
        _write(p, "%s\n%08x\n" % (body, config.crc32(body.encode()) & 0xFFFFFFFF))
        assert config.load(p)[0] is None, bad


def test_every_truncation_of_a_file_is_rejected():
    d = tmpdir()
    p = d + "/c.json"
    text = config.encode(config.defaults("lfp"))
    for cut in range(0, len(text) - 1, 7):
        _write(p, text[:cut])
        assert config.load(p)[0] is None, cut


def test_power_cut_at_each_step_of_save_leaves_a_valid_copy():
    # The steps of save(): tmp written, main moved to .bak, tmp renamed.
    import os

    d = tmpdir()
    p = d + "/c.json"
    old = config.defaults("lfp")
    new = config.defaults("nmc")
    config.save(old, p)
    text = config.encode(new)
    # cut while writing tmp: main still the old one
    _write(p + ".tmp", text[: len(text) // 2])
    assert config.load(p)[0]["chemistry"] == "lfp"
    # cut after main was moved to .bak, before tmp was renamed
    _write(p + ".tmp", text)
    os.rename(p, p + ".bak")
    assert config.load(p)[0]["chemistry"] == "lfp"
    os.rename(p + ".tmp", p)
    assert config.load(p)[0]["chemistry"] == "nmc"


def test_boot_without_valid_config_keeps_fets_off_with_config_fault():
    d = tmpdir()
    _write(d + "/config.json", "garbage\n")
    bms, afe = boot_bms(d + "/config.json")
    run(bms, 50)
    assert bms.prot.names(bms.prot.active) == ["config"]
    assert not afe.chg and not afe.dsg
    assert bms.fets.state_name() == "fault"
    assert "config.json: file is truncated" in bms.config_problem
    # Saving a valid config from the console clears it.
    bms.save_config()
    run(bms, 1)
    assert bms.prot.names(bms.prot.active) == []
    assert afe.chg and afe.dsg


def test_config_for_more_cells_than_the_board_has_is_a_config_fault():
    d = tmpdir()
    config.save(config.defaults("lfp", 8), d + "/config.json")
    bms, afe = boot_bms(d + "/config.json", FakeAfe(cells=4))
    run(bms, 5)
    assert "config" in bms.prot.names(bms.prot.active)
    assert bms.config_problem == "cells=8 out of range 1..4 (this board)"
    assert not afe.chg and not afe.dsg


def test_a_config_saved_by_an_older_firmware_loads_with_the_new_settings_defaulted():
    # An NMC pack set to trip at 4.10 V, saved before soc_full_mv and
    # soc_tail_pct existed: still a good config, full charge below its trip.
    import json

    from bms.config import crc32, decode, encode

    cfg = config.defaults("nmc").with_values({"cell_ov_mv": 4100, "cell_ov_warn_mv": 4080, "soc_full_mv": 4000,
                                              "cell_ov_clear_mv": 4000, "board_max_c": 50})
    text = encode(cfg)
    body = json.loads(text.split("\n")[0])
    for key in ("soc_full_mv", "soc_tail_pct"):
        del body["config"][key]
    body = json.dumps(body)
    old = "%s\n%08x\n" % (body, crc32(body.encode()) & 0xFFFFFFFF)
    got = decode(old)
    assert got["soc_full_mv"] == 4050 and got["soc_tail_pct"] == 5
    assert got["cell_ov_mv"] == 4100 and got["board_max_c"] == 50  # bal_board_max_c 55 is no conflict
