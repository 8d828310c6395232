# Passive balancing, decided every tick without allocation.
#
# Rules, in the order they are checked (the first that holds is the reason
# status reports):
# - a board without bleeders, or bal_max_cells 0: never;
# - no valid reading (the tick calls stop()): off;
# - any protection row active: off;
# - board hot: at or above bal_board_max_c nothing bleeds, until the
#   temperature is back below bal_board_max_c - temp_hyst_c; over the
#   _DERATE_DC below bal_board_max_c the number of bleeders allowed falls
#   linearly from bal_max_cells to 1;
# - discharging (below -_REST_MA): off; resting (|I| <= _REST_MA) only with
#   bal_idle 1;
# - then the highest cells bleed, at most the allowed number, each at or
#   above bal_start_mv and more than bal_delta_mv above the lowest cell; a
#   cell already bleeding goes on while it is more than half of that above
#   the lowest (no chatter at the threshold); where the front-end forbids
#   two neighbours (no_adjacent_mask), the lower of the two waits.
from micropython import const

_REST_MA = const(1000)  # |current| at or below this counts as resting
_DERATE_DC = const(100)  # the bleeders allowed fall over the last 10 C below the limit
UNKNOWN_DC = const(-9999)  # no temperature: no derating (the sensor row guards the board)

# Balancer.reason: why the bleeders are as they are (status.py words it).
BLEEDING = const(0)
DERATED = const(1)  # bleeding, fewer allowed than bal_max_cells (hot)
OFF_NO_BLEEDERS = const(2)
OFF_DISABLED = const(3)  # bal_max_cells 0
OFF_NO_DATA = const(4)
OFF_FAULT = const(5)
OFF_HOT = const(6)
OFF_DISCHARGING = const(7)
OFF_NOT_CHARGING = const(8)  # resting with bal_idle 0
OFF_BELOW_START = const(9)
OFF_SPREAD = const(10)


class Balancer:
    def __init__(self, n_cells, can_balance=True, no_adjacent=False):
        self.n = n_cells
        self.can_balance = can_balance
        self.no_adjacent = no_adjacent
        self.pairs = 0  # bit i: cells i+1 and i+2 must not bleed together
        self.mask = 0
        self.start_mv = 3400
        self.delta_mv = 15
        self.max_cells = 4
        self.idle = 1
        self.board_max_dc = 550
        self.hyst_dc = 50
        self.hot = False  # reached bal_board_max_c, not yet cooled by the hysteresis
        # What the last decision saw, for status (small ints, set in the tick).
        self.reason = OFF_NO_DATA
        self.count = 0
        self.allowed = 0
        self.spread_mv = 0
        self.hi_mv = 0
        self.temp_dc = UNKNOWN_DC

    def configure(self, cfg, n_cells, pairs=None):
        """pairs: the front-end's no_adjacent_mask for n_cells, or None: every
        pair of neighbours if it forbids adjacent bleeders at all."""
        self.n = n_cells
        self.start_mv = cfg["bal_start_mv"]
        self.delta_mv = cfg["bal_delta_mv"]
        self.max_cells = cfg["bal_max_cells"]
        self.idle = cfg["bal_idle"]
        # Never at or above the board's own trip (ot_board stops it anyway).
        self.board_max_dc = min(cfg["bal_board_max_c"], cfg["board_max_c"] - 1) * 10
        self.hyst_dc = cfg["temp_hyst_c"] * 10
        if pairs is None:
            pairs = (1 << (n_cells - 1)) - 1 if self.no_adjacent and n_cells > 1 else 0
        self.pairs = pairs

    def allowance(self, t_dc):
        """Bleeders allowed at t_dc (0.1 C), updating the hot latch."""
        top = self.board_max_dc
        if t_dc != UNKNOWN_DC:
            if self.hot:
                if t_dc < top - self.hyst_dc:
                    self.hot = False
            elif t_dc >= top:
                self.hot = True
        if self.hot:
            return 0
        mc = self.max_cells
        start = top - _DERATE_DC
        if mc <= 1 or t_dc <= start:
            return mc
        # mc at the start of the band, 1 just below the limit; rounded.
        return mc - ((mc - 1) * (t_dc - start) * 2 + _DERATE_DC) // (2 * _DERATE_DC)

    def stop(self, reason=OFF_NO_DATA):
        self.mask = 0
        self.count = 0
        self.reason = reason

    def decide(self, cells, current_ma, active, temp_dc):
        """New bleeder mask (bit 0 = cell 1). active: the protection rows'
        active flags; temp_dc: the board's temperature in 0.1 C (or the
        hottest cell's when the board has no sensor), UNKNOWN_DC if none."""
        self.temp_dc = temp_dc
        allowed = self.allowed = self.allowance(temp_dc)
        n = self.n
        lo = hi = cells[0]
        for i in range(1, n):
            v = cells[i]
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        self.hi_mv = hi
        self.spread_mv = hi - lo
        faulted = False
        for r in range(len(active)):
            if active[r]:
                faulted = True
                break
        if not self.can_balance:
            reason = OFF_NO_BLEEDERS
        elif not self.max_cells:
            reason = OFF_DISABLED
        elif faulted:
            reason = OFF_FAULT
        elif not allowed:
            reason = OFF_HOT
        elif current_ma < -_REST_MA:
            reason = OFF_DISCHARGING
        elif current_ma <= _REST_MA and not self.idle:
            reason = OFF_NOT_CHARGING
        else:
            reason = -1
        if reason >= 0:
            self.stop(reason)
            return 0
        old = self.mask
        start = lo + self.delta_mv
        keep = lo + self.delta_mv // 2
        floor = self.start_mv
        pairs = self.pairs
        mask = 0
        count = 0
        while count < allowed:
            best = -1
            best_mv = 0
            for i in range(n):
                if mask >> i & 1:
                    continue
                if pairs and ((pairs >> i & 1 and mask >> (i + 1) & 1)
                              or (i and pairs >> (i - 1) & 1 and mask >> (i - 1) & 1)):
                    continue
                v = cells[i]
                need = keep if old >> i & 1 else start
                if v > need and v >= floor and v > best_mv:
                    best = i
                    best_mv = v
            if best < 0:
                break
            mask |= 1 << best
            count += 1
        self.mask = mask
        self.count = count
        if count:
            self.reason = DERATED if allowed < self.max_cells else BLEEDING
        elif hi < floor:
            self.reason = OFF_BELOW_START
        else:
            self.reason = OFF_SPREAD
        return mask

    def cells(self):
        """1-based numbers of the cells being bled."""
        return [i + 1 for i in range(self.n) if self.mask >> i & 1]
