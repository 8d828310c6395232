# One snapshot of the BMS that every protocol encodes (console text and JSON
# now; Daly and Pylontech frames later). Built outside the tick.
from bms.afe import NTC_OK, HW_NAMES
from bms.protection import N_ROWS
from bms import balancing as _bal


def _temp(dc, status):
    return dc / 10 if status == NTC_OK else None


def hw_names(bits):
    return [name for bit, name in HW_NAMES if bits & bit]


_BAL_OFF = {
    _bal.OFF_NO_BLEEDERS: "off: no bleeders",
    _bal.OFF_DISABLED: "off: bal_max_cells 0",
    _bal.OFF_NO_DATA: "off: no valid reading",
    _bal.OFF_FAULT: "off: fault",
    _bal.OFF_DISCHARGING: "off: discharging",
    _bal.OFF_NOT_CHARGING: "off: not charging (bal_idle 0)",
}


def balance_state(b, where):
    """The balancer's last decision in a few words; where: "board" or
    "cells", the sensor its temperature came from."""
    r = b.reason
    if r == _bal.BLEEDING:
        return "bleeding %d/%d" % (b.count, b.allowed)
    t = "%s %.0f C" % (where, b.temp_dc / 10)
    if r == _bal.DERATED:
        return "derated %d/%d (%s)" % (b.count, b.allowed, t)
    if r == _bal.OFF_HOT:
        return "off: %s hot (%s, resumes below %d C)" % (where, t, (b.board_max_dc - b.hyst_dc) // 10)
    if r == _bal.OFF_BELOW_START:
        return "off: below start (%d < %d mV)" % (b.hi_mv, b.start_mv)
    if r == _bal.OFF_SPREAD:
        return "off: spread %d mV <= %d" % (b.spread_mv, b.delta_mv)
    return _BAL_OFF.get(r, "off")


def snapshot(bms):
    # The tick may run between any two bytecodes: retry until one tick's
    # values were copied without a tick in between.
    for _ in range(3):
        seq = bms.ticks
        snap = _take(bms)
        if bms.ticks == seq:
            break
    return snap


def _take(bms):
    m = bms.m
    n = bms.n_cells
    p = bms.prot
    f = bms.fets
    data = bms.have_data
    s = {
        "state": f.state_name(),
        "cells_mv": [m.cells_mv[i] for i in range(n)] if data else [],
        "pack_mv": m.pack_mv if data else None,
        "current_ma": m.current_ma if data else None,
        "temps_c": [_temp(m.temps_dc[i], m.temp_status[i]) for i in range(m.n_temps)] if data else [],
        "board_c": _temp(m.board_dc, m.board_status) if data and m.has_board_temp else None,
        "soc_pct": bms.est.pct() if bms.est.started else None,
        "soh_pct": round(bms.est.soh_pct(), 1),
        "capacity_mah": bms.est.capacity_mah(),
        "cycles": round(bms.est.cycles(), 2),
        "ah_in": round(bms.est.ah_in(), 1),
        "ah_out": round(bms.est.ah_out(), 1),
        "chg": f.chg,
        "dsg": f.dsg,
        "faults": p.names(p.active),
        "warnings": p.names(p.warning),
        "balancing": bms.bal.cells(),
        "bal": balance_state(bms.bal, "board" if m.has_board_temp else "cells"),
        "uptime_s": bms.uptime_s,
        "errors": {"comm": bms.comm_errors, "crc": bms.afe.crc_errors, "bus": bms.afe.bus_errors,
                   "chip_resets": bms.chip_resets, "tick": bms.tick_errors, "missed": bms.missed_ticks},
        "hw_faults": hw_names(bms.hw_seen),
        "reset_cause": bms.reset_cause,
    }
    if f.has_precharge:
        s["pchg"] = f.pchg
        s["precharge_failed"] = f.precharge_failed
    if bms.frozen_cell:
        s["frozen_cell"] = bms.frozen_cell
    if bms.config_problem:
        s["config_problem"] = bms.config_problem
    return s


def trips(bms):
    p = bms.prot
    from bms.protection import NAMES

    return {NAMES[r]: p.trips[r] for r in range(N_ROWS) if p.trips[r]}
