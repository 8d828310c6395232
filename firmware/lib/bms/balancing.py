# Passive balancing decision, made every tick without allocation: bleed the
# highest cells that stand more than bal_delta_mv above the lowest, above the
# start voltage, while charging or resting, with no fault and a cool board.
from micropython import const

_REST_MA = const(1000)  # |current| below this counts as resting


class Balancer:
    def __init__(self, n_cells, can_balance=True, no_adjacent=False):
        self.n = n_cells
        self.can_balance = can_balance
        self.no_adjacent = no_adjacent
        self.mask = 0
        self.start_mv = 3400
        self.delta_mv = 15
        self.max_cells = 4
        self.idle = 1
        self.board_max_dc = 550

    def configure(self, cfg, n_cells):
        self.n = n_cells
        self.start_mv = cfg["bal_start_mv"]
        self.delta_mv = cfg["bal_delta_mv"]
        self.max_cells = cfg["bal_max_cells"]
        self.idle = cfg["bal_idle"]
        self.board_max_dc = cfg["bal_board_max_c"] * 10

    def decide(self, cells, current_ma, faulted, board_dc):
        """New bleeder mask (bit 0 = cell 1); board_dc None-free: pass -9999 if unknown."""
        mask = 0
        if (self.can_balance and not faulted and self.max_cells
                and board_dc < self.board_max_dc
                and (current_ma > _REST_MA or (self.idle and -_REST_MA <= current_ma <= _REST_MA))):
            n = self.n
            lo = cells[0]
            for i in range(1, n):
                if cells[i] < lo:
                    lo = cells[i]
            old = self.mask
            # A cell keeps bleeding until it is within half the spread limit.
            start = lo + self.delta_mv
            keep = lo + self.delta_mv // 2
            floor = self.start_mv
            for _ in range(self.max_cells):
                best = -1
                best_mv = 0
                for i in range(n):
                    if mask >> i & 1:
                        continue
                    if self.no_adjacent and (mask >> (i + 1) & 1 or (i and mask >> (i - 1) & 1)):
                        continue
                    v = cells[i]
                    need = keep if old >> i & 1 else start
                    if v > need and v >= floor and v > best_mv:
                        best = i
                        best_mv = v
                if best < 0:
                    break
                mask |= 1 << best
        self.mask = mask
        return mask

    def cells(self):
        """1-based numbers of the cells being bled."""
        return [i + 1 for i in range(self.n) if self.mask >> i & 1]
