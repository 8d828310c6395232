# TI BQ76952 (bq769x2 family) front-end on I2C with CRC: 16 cell voltages,
# the stack voltage, the CC2 current through the shunt, TS1..TS3
# thermistors, its own hardware protection (COV, CUV, OCC, OCD1, SCD) as a
# backup of the firmware's, the CHG/DSG (and PDSG predischarge) FET drivers
# and the internal bleeders.
#
# Every transfer carries the chip's CRC-8 (polynomial 0x07): a write is
# [reg, d0, crc(addr<<1, reg, d0), d1, crc(d1), ...], a read returns
# [d0, crc(addr<<1, reg, addr<<1|1, d0), d1, crc(d1), ...]. A transfer that
# fails (OSError, wrong CRC) is tried at most twice more. read(),
# set_fets() and set_balancing() allocate nothing in steady state: the wire
# buffers and their memoryviews are made once, the CRC is small-int
# arithmetic.
#
# FETs: the host-control subcommands (ALL_FETS_OFF/ON, DSG_PDSG_OFF,
# CHG_PCHG_OFF) and, where the board wires them, the CFETOFF/DFETOFF inputs
# (active high): a FET is opened through its pin first, so opening works with
# the bus dead, and closed by the command first, the pin released last.
#
# Predischarge (board fets precharge "afe"): the chip's PDSG driver, FET
# Options PDSG_EN. The chip runs it by itself before every DSG turn-on and
# then closes DSG, whichever comes first: Predischarge Timeout elapsed or LD
# within Predischarge Stop Delta of the stack (checked every 250 ms). With
# the chip in control of its FETs (FET_EN) the host can only block FETs:
# PDSG runs only as the first step of a DSG turn-on (PDSGTEST needs FET test
# mode), and the chip closes DSG after it on its own. So there is no
# precharge step for the firmware to time or judge by current (has_precharge
# stays False): set_fets(dsg=True) is the whole request, the pchg argument
# switches nothing. The timeout is never 0: with a load that draws current through the
# PDSG resistor, LD never comes within the delta and the chip would sit in
# predischarge for ever, DSG open, the resistor dissipating.
from micropython import const
import time

from bms.afe import Afe, ChipReset, NTC_OK, NTC_OPEN, NTC_SHORT
from bms.afe import HW_SCD, HW_OCD, HW_OV, HW_UV, HW_OT, HW_OTHER
from bms.drivers.crc import crc8_byte
from bms.ntc import OPEN_DC, SHORT_DC

# Direct commands
_CONTROL_STATUS = const(0x00)
_CELL1 = const(0x14)
_STACK = const(0x34)
_SUB = const(0x3E)
_CHECKSUM = const(0x60)
_ALARM_STATUS = const(0x62)
_TS1_TEMP = const(0x70)

# Battery Status / Control Status bits
_BS_CFGUPDATE = const(0x0001)
_BS_POR = const(0x0008)
_BS_SLEEP = const(0x8000)
_CS_DEEPSLEEP = const(0x0004)

# Subcommands
_DEVICE_NUMBER = const(0x0001)
_SHUTDOWN = const(0x0010)
_FET_ENABLE = const(0x0022)
_MANUFACTURINGSTATUS = const(0x0057)
_CB_ACTIVE_CELLS = const(0x0083)
_SET_CFGUPDATE = const(0x0090)
_EXIT_CFGUPDATE = const(0x0092)
_DSG_PDSG_OFF = const(0x0093)
_CHG_PCHG_OFF = const(0x0094)
_ALL_FETS_OFF = const(0x0095)
_ALL_FETS_ON = const(0x0096)
_OCDL_RECOVER = const(0x009B)
_SCDL_RECOVER = const(0x009C)
_PTO_RECOVER = const(0x008A)

_BQ76952 = const(0x7695)

# Data memory (TRM SLUUBY2B, section 13)
_CC_GAIN = const(0x91A8)
_CAPACITY_GAIN = const(0x91AC)
_POWER_CONFIG = const(0x9234)
_ENABLED_PROT_A = const(0x9261)
_DEFAULT_ALARM_MASK = const(0x926D)
_CUV_THRESHOLD = const(0x9275)
_CUV_DELAY = const(0x9276)
_COV_THRESHOLD = const(0x9278)
_COV_DELAY = const(0x9279)
_OCC_THRESHOLD = const(0x9280)
_OCC_DELAY = const(0x9281)
_OCD1_THRESHOLD = const(0x9282)
_OCD1_DELAY = const(0x9283)
_SCD_THRESHOLD = const(0x9286)
_SCD_DELAY = const(0x9287)
_CFETOFF_CONFIG = const(0x92FA)
_DFETOFF_CONFIG = const(0x92FB)
_ALERT_CONFIG = const(0x92FC)
_TS1_CONFIG = const(0x92FD)
_DA_CONFIG = const(0x9303)
_VCELL_MODE = const(0x9304)
_FET_OPTIONS = const(0x9308)
_PDSG_TIMEOUT = const(0x930E)
_PDSG_DELTA = const(0x930F)
_PDSG_TIMEOUT_MS = const(500)  # defaults of the board's pdsg_timeout_ms / pdsg_delta_mv
_PDSG_DELTA_MV = const(500)
_BALANCING_CONFIG = const(0x9335)
_MFG_STATUS_INIT = const(0x9343)

# Values written
_PROT_A = const(0xBC)  # SCD, OCD1, OCC, COV, CUV
_ALARM_MASK = const(0xE000)  # ALERT only when a protection tripped (SSBC, SSA) or PF
_FET_OPTIONS_VAL = const(0x2D)  # SFET, HOST_FET_EN, FET_CTRL_EN, FET_INIT_OFF
_PDSG_EN = const(0x10)
_PIN_FETOFF = const(0x02)  # PIN_FXN 2: CFETOFF / DFETOFF input, active high
_PIN_ALERT = const(0x82)  # PIN_FXN 2: ALERT, active low, Hi-Z when inactive (open drain)
_TS_CELL = const(0x07)  # 18 k pull-up, 18K model, thermistor for cell temperature
_TS_FET = const(0x0F)  # the same, for FET temperature
_MS_FET_EN = const(0x10)
_PC_SLEEP = const(0x0100)
_PC_SHUT_TS2 = const(0x1000)

# Safety Status bits
_SA_SCD = const(0x80)
_SA_OCD = const(0x60)  # OCD2, OCD1
_SA_OCC = const(0x10)
_SA_COV = const(0x08)
_SA_CUV = const(0x04)
_SB_OT = const(0xF0)  # OTF, OTINT, OTD, OTC
_SC_OCD = const(0xA0)  # OCD3, OCDL
_SC_SCD = const(0x40)  # SCDL
_SC_OV = const(0x10)  # COVL

_TRIES = const(3)
_ERR_CAP = const(0x3FFFFFFF)
_EIO = const(5)
_RECHECK = const(10)  # set_fets calls between FET Status checks
_REFRESH = const(50)  # set_balancing calls between re-sends of a non-zero mask
_SUB_US = const(2200)  # a subcommand is done about 2 ms after its id
_SCD_MV = (10, 20, 40, 60, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500)


def _delay_code(ms, top):
    # (code + 2) x 3.3 ms >= ms: never shorter than asked.
    c = (ms * 10 - 66 + 32) // 33
    return 1 if c < 1 else (top if c > top else c)


def _delay_ms(code):
    return (code + 2) * 33 // 10


class Bq769x2(Afe):
    max_cells = 16
    pack_measured = True
    pack_max_mv = 80000  # top-of-stack divider input range
    no_adjacent_balancing = True
    can_balance = True

    def __init__(self, i2c, addr=0x08, crc=True, shunt_uohm=1000, cell_ts=(0,), board_ts=None,
                 cfetoff=None, dfetoff=None, alert=None, pdsg=False, sleep_us=None,
                 pdsg_timeout_ms=_PDSG_TIMEOUT_MS, pdsg_delta_mv=_PDSG_DELTA_MV):
        """cell_ts: TS pin index (0 = TS1 .. 2 = TS3) of each cell thermistor;
        board_ts: that of the board/FET thermistor or None. cfetoff/dfetoff:
        output Pins to those inputs (high = FET off), alert: input Pin.
        pdsg: the board has the PDSG predischarge path; the chip runs it for
        at most pdsg_timeout_ms (10..2550, 10 ms steps, rounded up) or until
        LD is within pdsg_delta_mv (0 = no voltage check, else 10..2550 mV)."""
        self.i2c = i2c
        self.addr = addr
        self.crc = crc
        self.shunt_uohm = shunt_uohm
        self.cell_ts = tuple(cell_ts)
        self.board_ts = board_ts
        self.n_temps = len(self.cell_ts)
        self.has_board_temp = board_ts is not None
        self.cfetoff = cfetoff
        self.dfetoff = dfetoff
        self.alert = alert
        self.pdsg = bool(pdsg)
        t = (pdsg_timeout_ms + 9) // 10
        self._pdsg_timeout = 1 if t < 1 else (255 if t > 255 else t)  # never 0: see above
        dl = (pdsg_delta_mv + 9) // 10
        self._pdsg_delta = 0 if pdsg_delta_mv <= 0 else (255 if dl > 255 else dl)
        self._sleep = sleep_us if sleep_us is not None else time.sleep_us
        # Current unit (DA Configuration USER_AMPS): the finest that covers
        # the coulomb counter's +-200 mV on this shunt within int16.
        full_ma = 200000000 // shunt_uohm
        if full_ma * 4 <= 32767 * 5:
            self._amps, self._unit = 1, 1
        elif full_ma * 4 <= 327670 * 5:
            self._amps, self._unit = 2, 10
        else:
            self._amps, self._unit = 3, 100
        self.current_max_ma = min(full_ma, 32767 * self._unit)
        self.crc_errors = 0
        self.bus_errors = 0
        self.n_cells = 16
        self._input = bytearray(range(16))  # pack cell -> chip input
        # Wire buffers: n data bytes travel as 2n bytes with CRC.
        self._rb = bytearray(72)
        self._wb = bytearray(72)
        mr = memoryview(self._rb)
        mw = memoryview(self._wb)
        k = 2 if crc else 1
        self._rv = [mr[:k * n] for n in range(37)]
        self._wv = [mw[:k * n] for n in range(37)]
        self._d = bytearray(36)  # decoded data of the last read / data of the next write
        self._a_w = addr << 1
        self._a_r = (addr << 1) | 1
        self._host = -1  # host FET block state at the chip (bit 1 CHG, bit 0 DSG); -1 unknown
        self._checks = 0
        self._fet_status = 0
        self._fs_fresh = False
        self._safety = 0
        self._bal = -1
        self._bal_calls = 0

    # ------------------------------------------------------------------
    # Transfers
    # ------------------------------------------------------------------

    def _count(self, e):
        # A data byte refused after an acknowledged address is how the chip
        # answers a wrong CRC (the port raises EIO for it); anything else is
        # the bus.
        if e.args and e.args[0] == _EIO:
            if self.crc_errors < _ERR_CAP:
                self.crc_errors += 1
        elif self.bus_errors < _ERR_CAP:
            self.bus_errors += 1

    def _read(self, reg, n):
        """n data bytes from reg into self._d; OSError after _TRIES."""
        v = self._rv[n]
        b = self._rb
        d = self._d
        for _ in range(_TRIES):
            try:
                self.i2c.readfrom_mem_into(self.addr, reg, v)
            except OSError as e:
                self._count(e)
                continue
            if not self.crc:
                for j in range(n):
                    d[j] = b[j]
                return
            ok = True
            for j in range(n):
                x = b[2 * j]
                if j == 0:
                    c = crc8_byte(crc8_byte(crc8_byte(crc8_byte(0, self._a_w), reg), self._a_r), x)
                else:
                    c = crc8_byte(0, x)
                if b[2 * j + 1] != c:
                    ok = False
                    break
                d[j] = x
            if ok:
                return
            if self.crc_errors < _ERR_CAP:
                self.crc_errors += 1
        raise OSError(_EIO)

    def _write(self, reg, n):
        """Write self._d[0:n] to reg; OSError after _TRIES."""
        d = self._d
        b = self._wb
        if self.crc:
            for j in range(n):
                x = d[j]
                b[2 * j] = x
                if j == 0:
                    b[1] = crc8_byte(crc8_byte(crc8_byte(0, self._a_w), reg), x)
                else:
                    b[2 * j + 1] = crc8_byte(0, x)
        else:
            for j in range(n):
                b[j] = d[j]
        v = self._wv[n]
        for _ in range(_TRIES):
            try:
                self.i2c.writeto_mem(self.addr, reg, v)
                return
            except OSError as e:
                self._count(e)
        raise OSError(_EIO)

    def _u16(self, j):
        d = self._d
        return d[j] | (d[j + 1] << 8)

    def _s16(self, j):
        d = self._d
        v = d[j] | (d[j + 1] << 8)
        return v - 0x10000 if v & 0x8000 else v

    # ------------------------------------------------------------------
    # Subcommands and data memory
    # ------------------------------------------------------------------

    def _cmd(self, sub):
        """A command-only subcommand; returns once the chip has run it."""
        d = self._d
        d[0] = sub & 0xFF
        d[1] = sub >> 8
        self._write(_SUB, 2)
        self._sleep(_SUB_US)

    def _sub_write(self, sub, n):
        """Write subcommand `sub` with data self._d[2:2+n], committed by the
        checksum and length word."""
        d = self._d
        d[0] = sub & 0xFF
        d[1] = sub >> 8
        s = 0
        for j in range(n + 2):
            s += d[j]
        chk = ~s & 0xFF
        self._write(_SUB, n + 2)
        d[0] = chk
        d[1] = n + 4
        self._write(_CHECKSUM, 2)

    def _sub_read(self, sub, n):
        """Subcommand `sub` read back: its n data bytes in self._d[2:2+n]."""
        d = self._d
        for attempt in range(_TRIES):
            self._cmd(sub)
            for _ in range(5):
                self._read(_SUB, 36)
                if self._u16(0) == sub:
                    break
                self._sleep(1000)
            else:
                continue
            length = d[_CHECKSUM - _SUB + 1]
            if length < 4 or length > 36 or length - 4 < n:
                continue
            s = 0
            for j in range(length - 2):
                s += d[j]
            if d[_CHECKSUM - _SUB] == ~s & 0xFF:
                return
            if self.crc_errors < _ERR_CAP:
                self.crc_errors += 1
        raise OSError(_EIO)

    def _sub_u16(self, sub):
        self._sub_read(sub, 2)
        return self._u16(2)

    def _dm_write(self, addr, size, value):
        d = self._d
        for j in range(size):
            d[2 + j] = (value >> (8 * j)) & 0xFF
        self._sub_write(addr, size)
        self._sleep(1000)

    def _dm_read(self, addr, size):
        self._sub_read(addr, size)
        v = 0
        for j in range(size):
            v |= self._d[2 + j] << (8 * j)
        return v

    def _battery_status(self):
        self._read(0x12, 2)
        return self._u16(0)

    def _enter_cfg(self):
        self._host = -1  # the chip opens its FETs in CONFIG_UPDATE
        self._cmd(_SET_CFGUPDATE)
        for _ in range(10):
            if self._battery_status() & _BS_CFGUPDATE:
                return
            self._sleep(1000)
        raise OSError("bq769x2: CONFIG_UPDATE not entered")

    def _exit_cfg(self):
        self._cmd(_EXIT_CFGUPDATE)
        for _ in range(10):
            if not self._battery_status() & (_BS_CFGUPDATE | _BS_POR):
                return
            self._sleep(1000)
        raise OSError("bq769x2: CONFIG_UPDATE not left")

    def _program(self, items):
        # items: [(addr, size, value)]; written in CONFIG_UPDATE, read back after.
        self._enter_cfg()
        try:
            for addr, size, value in items:
                self._dm_write(addr, size, value)
        finally:
            self._exit_cfg()
        for addr, size, value in items:
            got = self._dm_read(addr, size)
            if got != value:
                raise OSError("bq769x2: data memory 0x%04x reads 0x%x, wrote 0x%x" % (addr, got, value))

    # ------------------------------------------------------------------
    # Afe interface
    # ------------------------------------------------------------------

    def init(self, n_cells):
        if not 3 <= n_cells <= 16:
            raise ValueError("the BQ76952 measures 3..16 cells")
        dev = self._sub_u16(_DEVICE_NUMBER)
        if dev != _BQ76952:
            raise OSError("not a BQ76952 (device number 0x%04x)" % dev)
        self.n_cells = n_cells
        # Pack cells 1..n-1 on VC1..VC(n-1), the top cell on VC16.
        for k in range(16):
            self._input[k] = k
        if n_cells < 16:
            self._input[n_cells - 1] = 15
        vmode = 0xFFFF if n_cells == 16 else ((1 << (n_cells - 1)) - 1) | 0x8000
        pc = self._dm_read(_POWER_CONFIG, 2) & ~_PC_SLEEP  # no SLEEP: it would slow measurements and open CHG
        mfg = self._dm_read(_MFG_STATUS_INIT, 2) | _MS_FET_EN
        ts = [0, 0, 0]
        for k in self.cell_ts:
            ts[k] = _TS_CELL
        if self.board_ts is not None:
            ts[self.board_ts] = _TS_FET
        if ts[1]:
            pc |= _PC_SHUT_TS2  # TS2 carries a thermistor (TRM: Power Config SHUT_TS2)
        # CC Gain = 7.5684 / R(mOhm); Capacity Gain = CC Gain x 298261.6178.
        gain = 7568.4 / self.shunt_uohm
        items = [
            (_POWER_CONFIG, 2, pc),
            (_VCELL_MODE, 2, vmode),
            (_TS1_CONFIG, 1, ts[0]),
            (_TS1_CONFIG + 1, 1, ts[1]),
            (_TS1_CONFIG + 2, 1, ts[2]),
            (_DA_CONFIG, 1, 0x04 | self._amps),  # stack/PACK/LD in cV
            (_CC_GAIN, 4, _f32(gain)),
            (_CAPACITY_GAIN, 4, _f32(gain * 298261.6178)),
            (_DEFAULT_ALARM_MASK, 2, _ALARM_MASK),
            (_FET_OPTIONS, 1, _FET_OPTIONS_VAL | (_PDSG_EN if self.pdsg else 0)),
            (_MFG_STATUS_INIT, 2, mfg),
            (_ENABLED_PROT_A, 1, _PROT_A),
            (_BALANCING_CONFIG, 1, 0x00),  # no autonomous balancing; host commands accepted
        ]
        if self.cfetoff is not None:
            items.append((_CFETOFF_CONFIG, 1, _PIN_FETOFF))
        if self.dfetoff is not None:
            items.append((_DFETOFF_CONFIG, 1, _PIN_FETOFF))
        if self.alert is not None:
            items.append((_ALERT_CONFIG, 1, _PIN_ALERT))
        if self.pdsg:
            items.append((_PDSG_TIMEOUT, 1, self._pdsg_timeout))
            items.append((_PDSG_DELTA, 1, self._pdsg_delta))
        self._drive_pins(True, True)
        self._program(items)
        if not self._sub_u16(_MANUFACTURINGSTATUS) & _MS_FET_EN:
            self._cmd(_FET_ENABLE)  # FET test mode -> the chip's FET control
            if not self._sub_u16(_MANUFACTURINGSTATUS) & _MS_FET_EN:
                raise OSError("bq769x2: FET_EN not set")
        self._cmd(_ALL_FETS_OFF)
        self._host = 3
        self._bal = -1
        self.set_balancing(0)
        # A full measurement loop with the new settings before the first read.
        self._sleep(70000)

    def read(self, m):
        d = self._d
        self._read(_CONTROL_STATUS, 20)  # Control Status .. Battery Status
        bat = self._u16(18)
        if bat & (_BS_POR | _BS_CFGUPDATE):
            # Power-on defaults, or stuck in CONFIG_UPDATE (FETs off, nothing
            # measured, settings possibly changed): set it up again.
            self._host = -1
            raise ChipReset("bq769x2 reset or in CONFIG_UPDATE")
        hw = 0
        a = d[3]
        if a & _SA_SCD:
            hw |= HW_SCD
        if a & _SA_OCD:
            hw |= HW_OCD
        if a & _SA_COV:
            hw |= HW_OV
        if a & _SA_CUV:
            hw |= HW_UV
        if a & _SA_OCC:
            hw |= HW_OTHER
        b = d[5]
        if b & _SB_OT:
            hw |= HW_OT
        if b & 0x07:  # UTINT, UTD, UTC
            hw |= HW_OTHER
        c = d[7]
        if c & _SC_OCD:
            hw |= HW_OCD
        if c & _SC_SCD:
            hw |= HW_SCD
        if c & _SC_OV:
            hw |= HW_OV
        if c & 0x06:  # PTO, HWDF
            hw |= HW_OTHER
        for j in range(11, 18, 2):  # PF Status A..D
            if d[j]:
                hw |= HW_OTHER
        self._safety = a | b | c
        m.hw_faults = hw
        if self._u16(0) & _CS_DEEPSLEEP or bat & _BS_SLEEP:
            return False  # measurements stopped or slowed: nothing new to report
        self._read(_CELL1, 32)
        cells = m.cells_mv
        inp = self._input
        for i in range(self.n_cells):
            cells[i] = self._s16(2 * inp[i])
        self._read(_STACK, 8)  # stack, PACK, LD, CC2
        m.pack_mv = self._s16(0) * 10
        m.current_ma = self._s16(6) * self._unit
        self._read(_TS1_TEMP, 16)  # TS1..TS3, HDQ, DCHG, DDSG temperatures, FET Status
        for i in range(self.n_temps):
            t = self._temp(self.cell_ts[i])
            m.temps_dc[i] = t
            m.temp_status[i] = NTC_OPEN if t == OPEN_DC else (NTC_SHORT if t == SHORT_DC else NTC_OK)
        if self.board_ts is not None:
            t = self._temp(self.board_ts)
            m.board_dc = t
            m.board_status = NTC_OPEN if t == OPEN_DC else (NTC_SHORT if t == SHORT_DC else NTC_OK)
        self._fet_status = d[15]
        self._fs_fresh = True
        return True

    def _temp(self, k):
        # 0.1 K -> 0.1 degC; beyond the 18K model's -50..125 degC: open/short.
        t = self._s16(2 * k) - 2732
        if t < -500:
            return OPEN_DC
        if t > 1250:
            return SHORT_DC
        return t

    def _drive_pins(self, cb, db):
        if self.cfetoff is not None:
            self.cfetoff.value(1 if cb else 0)
        if self.dfetoff is not None:
            self.dfetoff.value(1 if db else 0)

    def set_fets(self, chg, dsg, pchg=False):
        # pchg: nothing to switch (the chip runs PDSG itself before DSG).
        cb = 0 if chg else 1
        db = 0 if dsg else 1
        cf = self.cfetoff
        df = self.dfetoff
        # Open through the pins first: that works whatever the bus does.
        if cb and cf is not None:
            cf.value(1)
        if db and df is not None:
            df.value(1)
        want = (cb << 1) | db
        send = want != self._host
        self._checks += 1
        if not send and self._checks >= _RECHECK and self._fs_fresh:
            self._checks = 0
            self._fs_fresh = False
            fs = self._fet_status
            c_on = fs & 0x03  # CHG or PCHG
            d_on = fs & 0x0C  # DSG or PDSG
            if (c_on and cb) or (d_on and db):
                send = True  # on against our wish: repair
            elif not self._safety and ((not c_on and not cb) or (not d_on and not db)):
                send = True  # off with no protection holding it: repair
        if send:
            self._host = -1
            if want == 3:
                self._cmd(_ALL_FETS_OFF)
            else:
                self._cmd(_ALL_FETS_ON)  # the pins hold what must stay off meanwhile
                try:
                    if want == 2:
                        self._cmd(_CHG_PCHG_OFF)
                    elif want == 1:
                        self._cmd(_DSG_PDSG_OFF)
                except OSError:
                    # ALL_FETS_ON went through but the FET that must stay off
                    # was not blocked again: both off rather than that one on.
                    self._cmd(_ALL_FETS_OFF)
                    raise
            self._host = want
            self._fs_fresh = False
        # Close: the pins last.
        if not cb and cf is not None:
            cf.value(0)
        if not db and df is not None:
            df.value(0)

    def set_balancing(self, mask):
        self._bal_calls += 1
        if mask == self._bal and not (mask and self._bal_calls >= _REFRESH):
            return
        self._bal_calls = 0
        inp = self._input
        m = 0
        for i in range(self.n_cells):
            if mask >> i & 1:
                m |= 1 << inp[i]
        d = self._d
        d[2] = m & 0xFF
        d[3] = m >> 8
        self._bal = -1
        self._sub_write(_CB_ACTIVE_CELLS, 2)
        self._bal = mask

    def configure_protection(self, cfg):
        r = self.shunt_uohm

        def key(k, default):
            try:
                return cfg[k]
            except KeyError:
                return default

        ov = key("cell_ov_mv", 3650)
        uv = key("cell_uv_mv", 2800)
        cov = min(110, max(20, (ov * 10 + 505) // 506))  # 50.6 mV steps, at or above
        cuv = min(90, max(20, (uv * 10) // 506))  # at or below
        cov_d = _delay_code(key("cell_ov_delay_ms", 1000), 2047)
        cuv_d = _delay_code(key("cell_uv_delay_ms", 2000), 2047)
        # mA -> 2 mV steps of the shunt voltage: mV = mA x uOhm / 1e6, at or
        # above the firmware's limit. The chip waits at most 425.7 ms: where
        # the firmware waits longer, the chip only acts at twice its limit.
        occ_ms = key("occ_delay_ms", 2000)
        occ_ma = key("occ_ma", 50000) * (2 if occ_ms > 425 else 1)
        occ = min(62, max(2, (occ_ma * r + 1999999) // 2000000))
        occ_d = _delay_code(occ_ms, 127)
        ocd2 = key("ocd2_ma", 150000)
        ocd_ms = key("ocd2_delay_ms", 200)
        ocd = min(100, max(2, ((ocd2 * (2 if ocd_ms > 425 else 1)) * r + 1999999) // 2000000))
        ocd_d = _delay_code(ocd_ms, 127)
        scd_mv = (2 * ocd2 * r + 999999) // 1000000
        scd = 15
        for j in range(16):
            if _SCD_MV[j] >= scd_mv:
                scd = j
                break
        items = [
            (_COV_THRESHOLD, 1, cov), (_COV_DELAY, 2, cov_d),
            (_CUV_THRESHOLD, 1, cuv), (_CUV_DELAY, 2, cuv_d),
            (_OCC_THRESHOLD, 1, occ), (_OCC_DELAY, 1, occ_d),
            (_OCD1_THRESHOLD, 1, ocd), (_OCD1_DELAY, 1, ocd_d),
            (_SCD_THRESHOLD, 1, scd), (_SCD_DELAY, 1, 2),
            (_ENABLED_PROT_A, 1, _PROT_A),
        ]
        self._program(items)
        return {
            "cell_ov_mv": cov * 506 // 10, "cell_ov_delay_ms": _delay_ms(cov_d),
            "cell_uv_mv": cuv * 506 // 10, "cell_uv_delay_ms": _delay_ms(cuv_d),
            "occ_ma": occ * 2000000 // r, "occ_delay_ms": _delay_ms(occ_d),
            "ocd2_ma": ocd * 2000000 // r, "ocd2_delay_ms": _delay_ms(ocd_d),
            "scd_ma": _SCD_MV[scd] * 1000000 // r, "scd_delay_us": 15,
        }

    def clear_faults(self):
        # Latched alarm bits (the ALERT line) and the latching protections.
        for sub in (_SCDL_RECOVER, _OCDL_RECOVER, _PTO_RECOVER):
            self._cmd(sub)
        d = self._d
        d[0] = 0xFF
        d[1] = 0xFF
        self._write(_ALARM_STATUS, 2)
        self._read(0x02, 6)
        return not (d[1] or d[3] or d[5])

    def shutdown(self):
        self._drive_pins(True, True)
        self._host = -1
        self._cmd(_ALL_FETS_OFF)
        self._host = 3
        # Twice in a row: unsealed, the shutdown delays are skipped (SLUUBY1B).
        self._cmd(_SHUTDOWN)
        self._cmd(_SHUTDOWN)


def _f32(x):
    # IEEE-754 single as an int (data memory F4 is little-endian).
    import struct

    return struct.unpack("<I", struct.pack("<f", x))[0]


def _ts(name):
    if name in ("TS1", "TS2", "TS3"):
        return int(name[2]) - 1
    raise ValueError("bq769x2 thermistor input must be TS1, TS2 or TS3, not %s" % (name,))


def from_board(b, machine):
    """Build the driver from the board dict (board.py calls this)."""
    c = b["bq769x2"]
    f = b.get("fets") or {}
    Pin = machine.Pin
    # FET-off inputs first, at their "off" level, before anything can talk.
    cf = Pin(f["cfetoff"], Pin.OUT, value=1) if f.get("cfetoff") is not None else None
    df = Pin(f["dfetoff"], Pin.OUT, value=1) if f.get("dfetoff") is not None else None
    i2c = machine.I2C(c["i2c"], sda=Pin(c["sda"]), scl=Pin(c["scl"]), freq=c.get("freq", 400000))
    al = b.get("alert")
    alert = Pin(al["pin"], Pin.IN) if al else None
    cell_ts = tuple(_ts(n["input"]) for n in b.get("ntc") or [])
    bn = b.get("board_ntc")
    board_ts = _ts(bn["input"]) if bn else None
    return Bq769x2(i2c, c.get("addr", 0x08), c.get("crc", True), b["shunt_uohm"], cell_ts, board_ts,
                   cf, df, alert, f.get("precharge") == "afe", None,
                   c.get("pdsg_timeout_ms", _PDSG_TIMEOUT_MS), c.get("pdsg_delta_mv", _PDSG_DELTA_MV))
