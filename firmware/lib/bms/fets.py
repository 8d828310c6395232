# FET state machine: decides CHG, DSG and precharge outputs from what the
# protection table forbids, what the user asked for, and the boot and ship
# states. It only decides; the front-end driver switches.
from micropython import const

from bms.protection import CHG, DSG

BOOT = const(0)  # FETs off until the first complete valid measurement
STANDBY = const(1)  # both off, nothing forbids them: the user switched them off
CHARGE = const(2)  # CHG only
DISCHARGE = const(3)  # DSG only
NORMAL = const(4)  # both on
FAULT = const(5)  # both off because protections forbid them
SHUTDOWN = const(6)  # ship mode: off until the user switches a FET on again
PRECHARGE = const(7)  # precharge path on, DSG waiting for the load to charge

STATE_NAMES = ("boot", "standby", "charge", "discharge", "normal", "fault", "shutdown", "precharge")

# Precharge phases
_PC_IDLE = const(0)
_PC_RUN = const(1)
_PC_WAIT = const(2)  # pause between failed attempts


class Fets:
    def __init__(self, has_precharge=False):
        self.state = BOOT
        self.chg = False
        self.dsg = False
        self.pchg = False
        self.want = CHG | DSG  # the user's wishes; protections override them
        self.ship = False
        self.has_precharge = has_precharge
        self.pc_ticks = 10
        self.pc_ma = 500
        self.pc_retries = 3
        self._pc_phase = _PC_IDLE
        self._pc_count = 0
        self._pc_tries = 0
        self.precharge_failed = False

    def configure(self, cfg):
        self.pc_ticks = cfg.ticks("precharge_ms")
        self.pc_ma = cfg["precharge_ma"]
        self.pc_retries = cfg["precharge_retries"]

    def request(self, bits, on, forbid):
        """A console command. Returns "" or the reason it was refused."""
        if on:
            held = bits & forbid
            if held:
                return "held off by protection"
            self.want |= bits
            self.ship = False
            if bits & DSG:
                self.precharge_failed = False
                self._pc_tries = 0
        else:
            self.want &= ~bits
        return ""

    def enter_ship(self):
        self.ship = True
        self.want = 0

    def off(self):
        # The safe state, for paths that cannot evaluate the pack.
        self.chg = self.dsg = self.pchg = False
        self._pc_phase = _PC_IDLE
        if self.state != BOOT:
            self.state = FAULT

    def update(self, forbid, valid, current_ma):
        """One tick. valid: this tick's measurement was complete and plausible."""
        if self.state == BOOT and not valid:
            self.off()
            return
        allow = self.want & ~forbid
        if self.ship:
            allow = 0
        chg = bool(allow & CHG)
        dsg = bool(allow & DSG)
        if not valid:
            # Without a fresh, plausible reading nothing switches on (nor
            # does precharge end on a stale current); what is on stays on
            # until its row or the sensor row opens it.
            chg = chg and self.chg
            dsg = dsg and self.dsg
        self.chg = chg
        if dsg and not self.dsg and self.has_precharge:
            dsg = self._precharge(current_ma)
        elif not dsg:
            self.pchg = False
            self._pc_phase = _PC_IDLE
        self.dsg = dsg
        if self.ship:
            self.state = SHUTDOWN
        elif self.pchg:
            self.state = PRECHARGE
        elif self.chg and self.dsg:
            self.state = NORMAL
        elif self.chg:
            self.state = CHARGE
        elif self.dsg:
            self.state = DISCHARGE
        else:
            self.state = FAULT if forbid else STANDBY

    def _precharge(self, current_ma):
        # Close DSG only once the load's capacitors are charged through the
        # precharge resistor: current has fallen below the threshold.
        if self.precharge_failed:
            return False
        if self._pc_phase == _PC_IDLE:
            self._pc_phase = _PC_RUN
            self._pc_count = 0
        self._pc_count += 1
        if self._pc_phase == _PC_WAIT:
            self.pchg = False
            if self._pc_count > self.pc_ticks:
                self._pc_phase = _PC_RUN
                self._pc_count = 0
            return False
        self.pchg = True
        i = -current_ma if current_ma < 0 else current_ma
        if self._pc_count > 1 and i < self.pc_ma:
            self.pchg = False
            self._pc_phase = _PC_IDLE
            self._pc_tries = 0
            return True
        if self._pc_count > self.pc_ticks:
            self.pchg = False
            self._pc_tries += 1
            self._pc_count = 0
            if self._pc_tries > self.pc_retries:
                self.precharge_failed = True
                self._pc_phase = _PC_IDLE
            else:
                self._pc_phase = _PC_WAIT
        return False

    def state_name(self):
        return STATE_NAMES[self.state]
