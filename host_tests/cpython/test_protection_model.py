# Property test: the cell_ov row against a reference model written from the
# rule itself, on random voltage sequences around its thresholds.
from hypothesis import given, settings, strategies as st

from helpers import make_bms, run

TRIP, CLEAR = 3650, 3450
VALUES = st.sampled_from([3300, 3449, 3450, 3500, 3649, 3650, 3700])


def reference(seq, delay, recover):
    """Active flag after each tick: trips once the condition held on delay+1
    consecutive ticks, recovers once v < CLEAR held on recover+1 ticks."""
    active = False
    run_len = 0
    out = []
    for v in seq:
        cond = (v < CLEAR) if active else (v >= TRIP)
        run_len = run_len + 1 if cond else 0
        if run_len > (recover if active else delay):
            active = not active
            run_len = 0
        out.append(active)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(VALUES, min_size=1, max_size=120), st.integers(0, 6), st.integers(0, 6))
def test_cell_ov_row_matches_reference(seq, d_ticks, r_ticks):
    bms, afe = make_bms(cell_ov_delay_ms=d_ticks * 100, cell_ov_recover_ms=r_ticks * 100)
    run(bms, 2)
    got = []
    for v in seq:
        afe.cells_mv[2] = v
        run(bms, 1)
        got.append(bool(bms.prot.active[0]))
        # the FET follows the row
        assert afe.chg == (not got[-1])
    assert got == reference(seq, d_ticks, r_ticks)
