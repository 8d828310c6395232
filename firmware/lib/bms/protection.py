# The protection table: one row per protection, evaluated every tick.
#
# Each row: measured quantity, direction, trip threshold, trip delay, warning
# threshold, recovery threshold, recovery delay, latch, and the FETs it opens.
# Thresholds are integers in mV, mA, 0.1 degC or flag units so the tick never
# allocates. Delays are in ticks: a condition first seen at tick k trips at
# tick k + delay, i.e. exactly the delay after it was first seen and at most
# one tick after it began.
from micropython import const
from array import array

# FET bits
CHG = const(1)
DSG = const(2)
BOTH = const(3)

# Quantities, filled by the tick into an array('i') with a validity byte each.
Q_CELL_MAX = const(0)  # mV
Q_CELL_MIN = const(1)  # mV
Q_I_CHG = const(2)  # mA flowing into the pack (0 while discharging)
Q_I_DSG = const(3)  # mA flowing out of the pack (0 while charging)
Q_T_MAX = const(4)  # 0.1 degC, hottest cell sensor
Q_T_MIN = const(5)  # 0.1 degC, coldest cell sensor
Q_T_BOARD = const(6)  # 0.1 degC, board / FET sensor
Q_SCD = const(7)  # flag: short circuit reported by hardware
Q_SENSOR = const(8)  # flag: stale, implausible or missing reading
Q_COMM = const(9)  # flag: front-end did not answer correctly
Q_CONFIG = const(10)  # flag: no valid configuration
N_QUANTITIES = const(11)
UNITS = ("mV", "mV", "mA", "mA", "0.1C", "0.1C", "0.1C", "flag", "flag", "flag", "flag")

# Rows, in the order of NAMES (the fault names used by status and console).
CELL_OV = const(0)
CELL_UV = const(1)
OCC = const(2)
OCD1 = const(3)
OCD2 = const(4)
SCD = const(5)
OTC = const(6)
UTC = const(7)
OTD = const(8)
UTD = const(9)
OT_BOARD = const(10)
SENSOR = const(11)
AFE_COMM = const(12)
CONFIG = const(13)
N_ROWS = const(14)

NAMES = (
    "cell_ov",
    "cell_uv",
    "occ",
    "ocd1",
    "ocd2",
    "scd",
    "otc",
    "utc",
    "otd",
    "utd",
    "ot_board",
    "sensor",
    "afe_comm",
    "config",
)


class Table:
    """The thresholds of every row, built from a Config. Immutable once built."""

    def __init__(self):
        self.quantity = bytearray(N_ROWS)
        self.high = bytearray(N_ROWS)  # 1: trips at or above; 0: at or below
        self.trip = array("i", [0] * N_ROWS)
        self.trip_ticks = array("i", [0] * N_ROWS)
        self.warn = array("i", [0] * N_ROWS)
        self.clear = array("i", [0] * N_ROWS)  # recovered strictly past this
        self.clear_ticks = array("i", [0] * N_ROWS)
        self.latch = bytearray(N_ROWS)
        self.fets = bytearray(N_ROWS)

    def row(self, r, quantity, high, trip, trip_ticks, warn, clear, clear_ticks, latch, fets):
        self.quantity[r] = quantity
        self.high[r] = high
        self.trip[r] = trip
        self.trip_ticks[r] = trip_ticks
        self.warn[r] = warn
        self.clear[r] = clear
        self.clear_ticks[r] = clear_ticks
        self.latch[r] = latch
        self.fets[r] = fets

    def describe(self, r):
        """One row as a dict, for the console's protection listing."""
        return {
            "name": NAMES[r],
            "unit": UNITS[self.quantity[r]],
            "above": bool(self.high[r]),
            "trip": self.trip[r],
            "delay_ticks": self.trip_ticks[r],
            "warn": self.warn[r],
            "recover": self.clear[r],
            "recover_ticks": self.clear_ticks[r],
            "latch": bool(self.latch[r]),
            "opens": ("", "chg", "dsg", "chg+dsg")[self.fets[r]],
        }


def build_table(cfg):
    t = Table()
    tk = cfg.ticks
    pct = cfg["current_warn_pct"]
    hyst = cfg["temp_hyst_c"] * 10
    warn_c = cfg["temp_warn_c"] * 10
    oc_rec = tk("oc_recover_ms")
    t_del = tk("temp_delay_ms")
    t_rec = tk("temp_recover_ms")
    s_del = tk("sensor_delay_ms")
    s_rec = tk("sensor_recover_ms")

    t.row(CELL_OV, Q_CELL_MAX, 1, cfg["cell_ov_mv"], tk("cell_ov_delay_ms"), cfg["cell_ov_warn_mv"],
          cfg["cell_ov_clear_mv"], tk("cell_ov_recover_ms"), 0, CHG)
    t.row(CELL_UV, Q_CELL_MIN, 0, cfg["cell_uv_mv"], tk("cell_uv_delay_ms"), cfg["cell_uv_warn_mv"],
          cfg["cell_uv_clear_mv"], tk("cell_uv_recover_ms"), 0, DSG)
    occ = cfg["occ_ma"]
    t.row(OCC, Q_I_CHG, 1, occ, tk("occ_delay_ms"), occ * pct // 100, occ * pct // 100, oc_rec, 0, CHG)
    ocd1 = cfg["ocd1_ma"]
    t.row(OCD1, Q_I_DSG, 1, ocd1, tk("ocd1_delay_ms"), ocd1 * pct // 100, ocd1 * pct // 100, oc_rec, 0, DSG)
    # Level 2 warns when level 1 is exceeded; it recovers like level 1.
    t.row(OCD2, Q_I_DSG, 1, cfg["ocd2_ma"], tk("ocd2_delay_ms"), ocd1, ocd1 * pct // 100, oc_rec, 0, DSG)
    # A hardware short circuit latches: a shorted load must be inspected.
    t.row(SCD, Q_SCD, 1, 1, 0, 1, 1, 0, 1, BOTH)
    for r, limit, high, fets in (
        (OTC, cfg["chg_max_c"], 1, CHG),
        (UTC, cfg["chg_min_c"], 0, CHG),
        (OTD, cfg["dsg_max_c"], 1, DSG),
        (UTD, cfg["dsg_min_c"], 0, DSG),
    ):
        lim = limit * 10
        sign = 1 if high else -1
        t.row(r, Q_T_MAX if high else Q_T_MIN, high, lim, t_del, lim - sign * warn_c, lim - sign * hyst, t_rec, 0, fets)
    b = cfg["board_max_c"] * 10
    t.row(OT_BOARD, Q_T_BOARD, 1, b, t_del, b - warn_c, b - hyst, t_rec, 0, BOTH)
    # Flags: value 1 trips, a single bad tick already warns, 0 recovers.
    t.row(SENSOR, Q_SENSOR, 1, 1, s_del, 1, 1, s_rec, 0, BOTH)
    t.row(AFE_COMM, Q_COMM, 1, 1, s_del, 1, 1, s_rec, 0, BOTH)
    t.row(CONFIG, Q_CONFIG, 1, 1, 0, 1, 1, 0, 0, BOTH)
    return t


class Protection:
    """Per-row state: counters, active and warning flags, trip counts."""

    def __init__(self, table):
        self.table = table
        self.q = array("i", [0] * N_QUANTITIES)
        self.qvalid = bytearray(N_QUANTITIES)
        self.active = bytearray(N_ROWS)
        self.warning = bytearray(N_ROWS)
        self.count = array("i", [0] * N_ROWS)
        self.trips = array("i", [0] * N_ROWS)
        self.forbid = 0  # FET bits held open by active rows

    def set_table(self, table):
        # One assignment: the tick sees either the old or the new table.
        self.table = table

    def evaluate(self, booting=False):
        """Run every row on self.q; return the FET bits that must be open.

        booting: no FET has been closed yet, so a row already past its trip
        threshold trips at once; delays exist to ride out transients on a
        running pack, not to close a FET into a fault for one delay.
        """
        t = self.table
        q = self.q
        qvalid = self.qvalid
        active = self.active
        count = self.count
        forbid = 0
        for r in range(N_ROWS):
            k = t.quantity[r]
            if qvalid[k]:
                v = q[k]
                if t.high[r]:
                    beyond = v >= t.trip[r]
                    past_clear = v < t.clear[r]
                    warn = v >= t.warn[r]
                else:
                    beyond = v <= t.trip[r]
                    past_clear = v > t.clear[r]
                    warn = v <= t.warn[r]
                if active[r]:
                    if t.latch[r] or not past_clear:
                        count[r] = 0
                    else:
                        count[r] += 1
                        if count[r] > t.clear_ticks[r]:
                            active[r] = 0
                            count[r] = 0
                elif beyond:
                    count[r] += 1
                    if booting or count[r] > t.trip_ticks[r]:
                        active[r] = 1
                        count[r] = 0
                        self.trips[r] += 1
                else:
                    count[r] = 0
                self.warning[r] = 1 if (warn and not active[r]) else 0
            # With no valid reading a row holds its state and its counter.
            if active[r]:
                forbid |= t.fets[r]
        self.forbid = forbid
        return forbid

    def clear_latched(self, keep=0):
        """Release latched rows (console 'clear') except those in the keep
        bitmask (still present); returns how many were released."""
        n = 0
        for r in range(N_ROWS):
            if self.table.latch[r] and self.active[r] and not keep >> r & 1:
                self.active[r] = 0
                self.count[r] = 0
                n += 1
        return n

    def rescale(self, old_tick_ms, new_tick_ms):
        # Running counts after a tick-period change, in new ticks, rounded
        # down: a pending trip or recovery completes at most one tick late.
        for r in range(N_ROWS):
            self.count[r] = self.count[r] * old_tick_ms // new_tick_ms

    def trip_now(self, r):
        # For events that must act at once (a failed tick); an active row
        # starts its recovery delay again.
        if not self.active[r]:
            self.active[r] = 1
            self.trips[r] += 1
        self.count[r] = 0
        self.forbid |= self.table.fets[r]

    def names(self, flags):
        return [NAMES[r] for r in range(N_ROWS) if flags[r]]

    @staticmethod
    def names_in(mask):
        return [NAMES[r] for r in range(N_ROWS) if mask >> r & 1]

    def holders(self, fet_bit):
        """Names of active rows that keep the given FET open."""
        t = self.table
        return [NAMES[r] for r in range(N_ROWS) if self.active[r] and t.fets[r] & fet_bit]
