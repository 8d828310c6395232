# The one interface every measurement front-end implements, and the storage
# it reads into. Drivers fill a Measurements object in place (no allocation)
# and raise OSError when the chip cannot be talked to.
from micropython import const
from array import array

# NTC status codes (Measurements.temp_status / board_status)
NTC_OK = const(0)
NTC_OPEN = const(1)
NTC_SHORT = const(2)

# Hardware fault bits (Measurements.hw_faults)
HW_SCD = const(1)  # short circuit seen by the front-end or its alert pin
HW_OCD = const(2)
HW_OV = const(4)
HW_UV = const(8)
HW_OT = const(16)  # the chip's own over-temperature protection
HW_OTHER = const(32)  # any other protection the chip acted on by itself
HW_NAMES = ((HW_SCD, "scd"), (HW_OCD, "ocd"), (HW_OV, "ov"), (HW_UV, "uv"), (HW_OT, "ot"), (HW_OTHER, "other"))


class ChipReset(OSError):
    """read() saw the chip come out of a reset (power-on defaults, a lost
    configuration): the core calls init() and configure_protection() again.
    Nothing it read in that call is used."""


class Measurements:
    def __init__(self, n_cells, n_temps, has_board_temp=False):
        self.n_cells = n_cells
        self.cells_mv = array("i", [0] * n_cells)
        self.pack_mv = 0
        self.current_ma = 0  # positive = charging
        self.n_temps = n_temps
        self.temps_dc = array("i", [0] * n_temps)  # 0.1 degC per cell sensor
        self.temp_status = bytearray(n_temps)
        self.has_board_temp = has_board_temp
        self.board_dc = 0
        self.board_status = NTC_OK
        self.hw_faults = 0


class Afe:
    """Base class: the measurement front-end of a board.

    Attributes a driver sets: max_cells, n_temps, has_board_temp,
    pack_measured (pack_mv is measured independently of the cells),
    pack_max_mv (highest pack voltage that measurement reads; 0 if none),
    no_adjacent_balancing, has_precharge, current_max_ma (largest current it
    can measure either way; 0 if unknown).
    """

    max_cells = 0
    n_temps = 0
    has_board_temp = False
    pack_measured = False
    pack_max_mv = 0
    no_adjacent_balancing = False
    has_precharge = False
    current_max_ma = 0
    can_balance = False
    # Link health, counted by the driver and shown in status (errors).
    # Small ints: a driver caps them below 2**30.
    crc_errors = 0  # replies whose CRC/PEC was wrong, and writes the chip NACKed for a bad CRC
    bus_errors = 0  # transfers that raised OSError (NACK, timeout)

    def init(self, n_cells):
        """Configure the chip for n_cells populated cells; FETs off."""
        raise NotImplementedError

    def read(self, m):
        """Fill m. True: new complete reading; False: none ready yet (a chip
        whose conversions stopped returns False, it never repeats old values
        as new). OSError: comm failure after the driver's own bounded
        retries of the transfer that failed; ChipReset: the chip lost its
        configuration. Allocates nothing."""
        raise NotImplementedError

    def set_fets(self, chg, dsg, pchg=False):
        """Drive the FETs. Called every tick. An OSError means the FET state
        is unknown; a chip whose own protection holds a FET off keeps it off."""
        raise NotImplementedError

    def set_balancing(self, mask):
        """Bit 0 = cell 1."""
        raise NotImplementedError

    def configure_protection(self, cfg):
        """Program the chip's own hardware protection from the config; return what was applied."""
        return {}

    def clear_faults(self):
        """Release latched hardware fault flags (console 'clear').
        Returns False if the fault is still present and stays latched."""
        return True

    def shutdown(self):
        """Ship mode: FETs off and the front-end in its lowest-power state."""
        self.set_fets(False, False)
