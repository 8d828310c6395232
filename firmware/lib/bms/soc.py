# State of charge by coulomb counting, started from the open-circuit voltage.
# The tick adds current x time in integer mA*ms so it never allocates.
from micropython import const

_MAS_PER_MAH = const(3600000)  # mA*ms in one mAh

# Open-circuit voltage (mV) at 0, 10, ... 100 % for a rested cell.
OCV = {
    "lfp": (2500, 3200, 3250, 3280, 3295, 3300, 3310, 3325, 3335, 3340, 3450),
    "nmc": (3000, 3450, 3550, 3620, 3680, 3750, 3830, 3920, 4010, 4100, 4200),
    "lto": (1700, 2150, 2200, 2240, 2270, 2300, 2330, 2370, 2420, 2480, 2700),
}


def soc_from_ocv(chemistry, cell_mv):
    """Percent (int) from a rested cell voltage by linear interpolation."""
    t = OCV[chemistry]
    if cell_mv <= t[0]:
        return 0
    for i in range(1, 11):
        if cell_mv <= t[i]:
            return (i - 1) * 10 + (cell_mv - t[i - 1]) * 10 // (t[i] - t[i - 1])
    return 100


class Soc:
    def __init__(self, capacity_mah):
        self.capacity_mah = capacity_mah
        self.mah = capacity_mah // 2
        self._acc = 0  # mA*ms not yet moved into mah

    def set_pct(self, pct):
        self.mah = self.capacity_mah * pct // 100
        self._acc = 0

    def set_capacity(self, capacity_mah):
        pct = self.pct()
        self.capacity_mah = capacity_mah
        self.set_pct(pct)

    def update(self, current_ma, dt_ms):
        acc = self._acc + current_ma * dt_ms
        while acc >= _MAS_PER_MAH:
            acc -= _MAS_PER_MAH
            self.mah += 1
        while acc <= -_MAS_PER_MAH:
            acc += _MAS_PER_MAH
            self.mah -= 1
        self._acc = acc
        if self.mah > self.capacity_mah:
            self.mah = self.capacity_mah
        elif self.mah < 0:
            self.mah = 0

    def pct(self):
        return self.mah * 100 // self.capacity_mah
