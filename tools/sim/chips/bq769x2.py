"""TI BQ76952 (bq769x2 family) battery monitor and protector, modelled at the
register level from the datasheet (SLUSE13B), the technical reference manual
(SLUUBY2B; the BQ76942 one, SLUUBY1B, where it says the same) and the
software development guide (SLUAA11B). Not written from a driver.

I2C (7-bit address 0x08), CRC mode as the board file says (variant OTP):
- A write is [reg, d0, crc0, d1, crc1, ...]; crc0 = CRC-8 over
  [addr<<1, reg, d0], every later CRC over its data byte alone (polynomial
  0x07, init 0). A wrong CRC: the chip NACKs that CRC byte and applies none
  of the transfer. A write of just [reg] sets the pointer.
- A read returns [d0, crc0, d1, crc1, ...] from the pointer on; crc0 covers
  [addr<<1, reg, addr<<1|1, d0], later CRCs their byte alone.
- Direct commands are little-endian words (0x00 Control Status, 0x02..0x07
  Safety Alert/Status A/B/C, 0x0A..0x11 PF, 0x12 Battery Status, 0x14 + 2n
  cell n+1 in mV, 0x34 stack, 0x36 PACK, 0x38 LD in userV, 0x3A CC2 in userA,
  0x62 Alarm Status (write 1 to clear), 0x64 Alarm Raw Status, 0x66 Alarm
  Enable, 0x68..0x7A temperatures in 0.1 K, 0x7F FET Status). Writes to
  read-only registers are acknowledged and ignored.
- Subcommands: the id goes to 0x3E/0x3F. Written alone, the chip executes it
  (command-only) or fills the 32-byte buffer 0x40..0x5F, checksum 0x60 and
  length 0x61 (data + 4) about 2 ms later (world.time_us()); until then the
  area reads 0xFF and writes to it are dropped. Written together with data
  bytes it is a write transfer, committed only when 0x60 and 0x61 are written
  in one transfer with checksum = ~(0x3E + 0x3F + data) and 4 <= length <= 36;
  otherwise nothing happens. Data memory (0x9180..0x93FF) answers a read with
  32 bytes (length 0x24) and accepts writes only in CONFIG_UPDATE
  (SET_CFGUPDATE 0x0090 / EXIT_CFGUPDATE 0x0092, Battery Status bit 0). While
  in CONFIG_UPDATE the chip turns its FETs off and stops measuring and
  protecting (SLUUBY1B 3.2). EXIT clears Battery Status POR (bit 3) and WD,
  reloads Alarm Enable from Default Alarm Mask and the host FET state from
  FET Options[FET_INIT_OFF].

Measurements: one loop per 3 ms x (16 cells + 2 + up to 3 thermistor slots),
x (1, 2, 4, 8) for Power Config LOOP_SLOW, halved by FASTADC; every register
is refreshed each loop (the real chip spreads stack/PACK/LD and thermistors
over three loops), Alarm Raw Status ADSCAN each loop, FULLSCAN every third.
Cells: pack cells 1..n-1 on VC1..VC(n-1), the top cell on VC16 and the unused
inputs shorted to the one below (reading 0 mV), as TI recommends for fewer
than 16 cells (E2E 1251362, 1474660). Stack = the sum of the cell terminal
voltages; PACK = the stack while a FET conducts, else 0; LD = PACK, except
while only PDSG conducts: the stack less the discharge current that really
flows (world.flowing_ma(), not the sensed one: a shunt offset is no voltage
across the PDSG resistor) times board sim "pdsg_ohm" (100 Ohm). The world
carries no current while only PDSG conducts, so LD then reads the stack.
CC2 = shunt voltage (world.sensed_current_ma() x board "shunt_uohm") x CC
Gain / 7.5684 (the default gain is a 1 mOhm shunt, E2E 1346253/1559460), in
the DA Configuration unit, saturating at int16.
TS1..TS3 configured as thermistors (PIN_FXN 3, 18 k pull-up): the 18K
Temperature Model is TI's fit of the Semitec 103AT, modelled by its Beta
equation (10 kOhm, B 3435) on the resistance the ADC can resolve (pin ratio
clamped to 0.001..0.999): an open thermistor reads about -92 degC, a short
about +387 degC. Internal temperature: the board's temperature.

Protections (from world.step_hooks, every physics step): COV, CUV, OCC, OCD1,
OCD2, SCD with the programmed thresholds (50.6 mV, 2 mV, SCD table), delays
((setting + 2) x 3.3 ms; SCD (setting - 1) x 15 us, treated as instant) and
Enabled Protections A; only the cells enabled in Vcell Mode count. A trip
sets Safety Status A and opens the FETs of CHG/DSG FET Protections A/B/C.
Recovery, the TRM's simplest rules: COV when the highest cell is below the
threshold minus Recovery Hysteresis for Protections:Recovery:Time, CUV when
the lowest is above threshold plus hysteresis for that time, OCC when the
current is at or below OCC Recovery Threshold (-200 mA) for that time, OCD1/2
when it is at or above OCD Recovery Threshold (+200 mA) for that time, SCD
after SCD Recovery Time (never if 0). Not modelled: load detect, PACK-TOS
recovery, latches (COVL/OCDL/SCDL), temperature protections, permanent fail.

FETs: Manufacturing Status FET_EN = 0 (the default Mfg Status Init 0x0040)
is FET test mode: only CHGTEST/DSGTEST/PCHGTEST/PDSGTEST drive them;
FET_ENABLE toggles it. With FET_EN and FET Options FET_CTRL_EN a FET is on
unless a protection, the CFETOFF/DFETOFF input (PIN_FXN 2, active high unless
OPT5; DFETOFF OPT4 = BOTHOFF), CONFIG_UPDATE, SLEEP without SLEEPCHG, or the
host (with HOST_FET_EN: ALL_FETS_OFF/ON, DSG_PDSG_OFF, CHG_PCHG_OFF,
FET_CONTROL 0x0097) holds it off. PCHG replaces CHG in precharge mode (lowest
cell below Precharge Start Voltage until Precharge Stop Voltage; 0 = off).
With FET Options PDSG_EN every DSG turn-on starts with PDSG, then DSG on
and PDSG off at whichever comes first: Predischarge Timeout (10 ms units,
default 5 = 50 ms; 0 = no timeout) elapsed, or, checked every 250 ms from
the start, the last measured LD at or above the last measured stack less
Predischarge Stop Delta (10 mV units, default 50 = 500 mV; 0 = no voltage
check) (SLUUBY1B predischarge section and its Settings:FET entries). With
both 0 the model ends it at once (the TRM leaves that case open).
fet_on("precharge") is that PDSG path. Every CHG/DSG switching time goes to
world.gate_changed_ms when the world keeps one (a scenario does).

SLEEP (Power Config bit 8 and no SLEEP_DISABLE): after Sleep Hysteresis Time
below Sleep Current the chip measures every Voltage Time s and opens CHG
unless SLEEPCHG; a current above Wake Comparator Current wakes it. DEEPSLEEP
and SHUTDOWN take the command twice within 4 s (a single SHUTDOWN opens the
FETs and shuts down 1 s later); shut down, the chip answers nothing until
power_on_reset(). Balancing: CB_ACTIVE_CELLS (bit 0 = VC1); bits of inputs
outside Vcell Mode are dropped; adjacent cells are accepted (host-controlled,
E2E 1505209); paused in CONFIG_UPDATE. ALERT (PIN_FXN 2 of ALERT Pin Config;
OPT5 active low, OPT1 drive high) asserts while Alarm Status (latched
Alarm Raw Status & Alarm Enable) is non-zero.

Runs under CPython and MicroPython.
"""
import math
import struct

from chips import checks

DEVICE_NUMBER = 0x7695

# Direct commands
CONTROL_STATUS = 0x00
SAFETY_ALERT_A = 0x02
BATTERY_STATUS = 0x12
CELL1 = 0x14
STACK = 0x34
PACK = 0x36
LD = 0x38
CC2 = 0x3A
SUB_LO = 0x3E
SUB_HI = 0x3F
XFER = 0x40
CHECKSUM = 0x60
LENGTH = 0x61
ALARM_STATUS = 0x62
ALARM_RAW = 0x64
ALARM_ENABLE = 0x66
INT_TEMP = 0x68
TS1_TEMP = 0x70
FET_STATUS = 0x7F

# Safety A bits
SCD = 0x80
OCD2 = 0x40
OCD1 = 0x20
OCC = 0x10
COV = 0x08
CUV = 0x04

# Battery Status bits
BS_CFGUPDATE = 0x0001
BS_PCHG_MODE = 0x0002
BS_SLEEP_EN = 0x0004
BS_POR = 0x0008
BS_WD = 0x0010
BS_SEC_FULL = 0x0100
BS_SS = 0x0800
BS_SD_CMD = 0x2000
BS_SLEEP = 0x8000

# Alarm bits
AL_SSBC = 0x8000
AL_SSA = 0x4000
AL_MSK_SFALERT = 0x1000
AL_INITCOMP = 0x0200
AL_FULLSCAN = 0x0080
AL_XCHG = 0x0040
AL_XDSG = 0x0020
AL_CB = 0x0004
AL_ADSCAN = 0x0002

# Manufacturing Status bits
MS_PCHG_TEST = 0x01
MS_CHG_TEST = 0x02
MS_DSG_TEST = 0x04
MS_FET_EN = 0x10
MS_PDSG_TEST = 0x20

# Host FET-off bits (FET_CONTROL layout)
HOST_DSG_OFF = 0x01
HOST_PDSG_OFF = 0x02
HOST_CHG_OFF = 0x04
HOST_PCHG_OFF = 0x08

# FET Options bits
FO_SFET = 0x01
FO_SLEEPCHG = 0x02
FO_HOST_FET_EN = 0x04
FO_FET_CTRL_EN = 0x08
FO_PDSG_EN = 0x10
FO_FET_INIT_OFF = 0x20

# Subcommands
SC_DEVICE_NUMBER = 0x0001
SC_FW_VERSION = 0x0002
SC_HW_VERSION = 0x0003
SC_EXIT_DEEPSLEEP = 0x000E
SC_DEEPSLEEP = 0x000F
SC_SHUTDOWN = 0x0010
SC_RESET = 0x0012
SC_PDSGTEST = 0x001C
SC_PCHGTEST = 0x001E
SC_CHGTEST = 0x001F
SC_DSGTEST = 0x0020
SC_FET_ENABLE = 0x0022
SC_MANUFACTURINGSTATUS = 0x0057
SC_CB_ACTIVE_CELLS = 0x0083
SC_SET_CFGUPDATE = 0x0090
SC_EXIT_CFGUPDATE = 0x0092
SC_DSG_PDSG_OFF = 0x0093
SC_CHG_PCHG_OFF = 0x0094
SC_ALL_FETS_OFF = 0x0095
SC_ALL_FETS_ON = 0x0096
SC_FET_CONTROL = 0x0097
SC_SLEEP_ENABLE = 0x0099
SC_SLEEP_DISABLE = 0x009A

SUB_DELAY_US = 2000  # the buffer is filled / the command done this long after the id

# Data memory
DM_BASE = 0x9180
DM_END = 0x9400
CC_GAIN = 0x91A8
CAPACITY_GAIN = 0x91AC
POWER_CONFIG = 0x9234
SLEEP_CURRENT = 0x9248
VOLTAGE_TIME = 0x924A
WAKE_CURRENT = 0x924B
SLEEP_HYST_TIME = 0x924D
ENABLED_PROT_A = 0x9261
ENABLED_PROT_B = 0x9262
ENABLED_PROT_C = 0x9263
CHG_FET_PROT_A = 0x9265
DSG_FET_PROT_A = 0x9269
DEFAULT_ALARM_MASK = 0x926D
SF_ALERT_MASK_A = 0x926F
CUV_THRESHOLD = 0x9275
CUV_DELAY = 0x9276
COV_THRESHOLD = 0x9278
COV_DELAY = 0x9279
CUV_HYST = 0x927B
COV_HYST = 0x927C
OCC_THRESHOLD = 0x9280
OCC_DELAY = 0x9281
OCD1_THRESHOLD = 0x9282
OCD1_DELAY = 0x9283
OCD2_THRESHOLD = 0x9284
OCD2_DELAY = 0x9285
SCD_THRESHOLD = 0x9286
SCD_DELAY = 0x9287
OCC_RECOVERY = 0x9288
OCD_RECOVERY = 0x928D
SCD_RECOVERY_TIME = 0x9294
RECOVERY_TIME = 0x92AF
CFETOFF_CONFIG = 0x92FA
DFETOFF_CONFIG = 0x92FB
ALERT_CONFIG = 0x92FC
TS1_CONFIG = 0x92FD
DA_CONFIG = 0x9303
VCELL_MODE = 0x9304
FET_OPTIONS = 0x9308
PCHG_START = 0x930A
PCHG_STOP = 0x930C
PDSG_TIMEOUT = 0x930E
PDSG_DELTA = 0x930F
BALANCING_CONFIG = 0x9335
MFG_STATUS_INIT = 0x9343

CC_GAIN_1MOHM = 7.5684
CAPACITY_PER_CC_GAIN = 298261.6178
SCD_MV = (10, 20, 40, 60, 80, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500)
USER_AMPS_MA = (0.1, 1.0, 10.0, 100.0)

# (address, bytes or "f", OTP default)
_DM_DEFAULTS = (
    (CC_GAIN, "f", CC_GAIN_1MOHM),
    (CAPACITY_GAIN, "f", CC_GAIN_1MOHM * CAPACITY_PER_CC_GAIN),
    (POWER_CONFIG, 2, 0x2982),
    (SLEEP_CURRENT, 2, 20),
    (VOLTAGE_TIME, 1, 5),
    (WAKE_CURRENT, 2, 500),
    (SLEEP_HYST_TIME, 1, 10),
    (ENABLED_PROT_A, 1, 0x88),
    (ENABLED_PROT_B, 1, 0x00),
    (ENABLED_PROT_C, 1, 0x00),
    (CHG_FET_PROT_A, 1, 0x98),
    (CHG_FET_PROT_A + 1, 1, 0xD5),
    (CHG_FET_PROT_A + 2, 1, 0x56),
    (DSG_FET_PROT_A, 1, 0xE4),
    (DSG_FET_PROT_A + 1, 1, 0xE6),
    (DSG_FET_PROT_A + 2, 1, 0xE2),
    (DEFAULT_ALARM_MASK, 2, 0xF800),
    (SF_ALERT_MASK_A, 1, 0xFC),
    (SF_ALERT_MASK_A + 1, 1, 0xF7),
    (SF_ALERT_MASK_A + 2, 1, 0xF4),
    (CUV_THRESHOLD, 1, 50),
    (CUV_DELAY, 2, 74),
    (COV_THRESHOLD, 1, 86),
    (COV_DELAY, 2, 74),
    (CUV_HYST, 1, 2),
    (COV_HYST, 1, 2),
    (OCC_THRESHOLD, 1, 2),
    (OCC_DELAY, 1, 4),
    (OCD1_THRESHOLD, 1, 4),
    (OCD1_DELAY, 1, 1),
    (OCD2_THRESHOLD, 1, 3),
    (OCD2_DELAY, 1, 7),
    (SCD_THRESHOLD, 1, 0),
    (SCD_DELAY, 1, 2),
    (OCC_RECOVERY, 2, -200),
    (OCD_RECOVERY, 2, 200),
    (SCD_RECOVERY_TIME, 1, 5),
    (RECOVERY_TIME, 1, 3),
    (TS1_CONFIG, 1, 0x07),
    (DA_CONFIG, 1, 0x05),
    (VCELL_MODE, 2, 0x0000),
    (FET_OPTIONS, 1, 0x0D),
    (0x9309, 1, 0x01),  # Chg Pump Control
    (PDSG_TIMEOUT, 1, 5),
    (PDSG_DELTA, 1, 50),
    (BALANCING_CONFIG, 1, 0x00),
    (MFG_STATUS_INIT, 2, 0x0040),
)

_NAMES_A = ((SCD, "SCD"), (OCD2, "OCD2"), (OCD1, "OCD1"), (OCC, "OCC"), (COV, "COV"), (CUV, "CUV"))


def attach(world, board):
    """Create the model of board["bq769x2"] and put it on its I2C bus."""
    cfg = board["bq769x2"]
    chip = Bq769x2(world, board)
    world.add_i2c_device(cfg["i2c"], cfg.get("addr", 8), chip)
    return chip


def _crc(data):
    return checks.crc8(data)


def _s16(v):
    v = int(v)
    if v > 32767:
        v = 32767
    elif v < -32768:
        v = -32768
    return v & 0xFFFF


class Bq769x2:
    afe = True

    def __init__(self, world, board):
        self.world = world
        self.board = board
        cfg = board["bq769x2"]
        self.addr = cfg.get("addr", 8)
        self.crc = bool(cfg.get("crc", True))
        self.shunt_uohm = board.get("shunt_uohm", 1000)
        f = board.get("fets") or {}
        self.cfetoff_pin = f.get("cfetoff")
        self.dfetoff_pin = f.get("dfetoff")
        al = board.get("alert")
        self.alert_pin = al["pin"] if al else None
        self.alert_idle = 1 if (al or {}).get("active_low", True) else 0
        # TS1..TS3: ("ntc", i) for board["ntc"][i], ("board", 0) for board_ntc
        self.ts = [None, None, None]
        for i, n in enumerate(board.get("ntc") or []):
            k = _ts_index(n.get("input"))
            if k is not None:
                self.ts[k] = ("ntc", i)
        k = _ts_index((board.get("board_ntc") or {}).get("input"))
        if k is not None:
            self.ts[k] = ("board", 0)
        self.pdsg_ohm = float((board.get("sim") or {}).get("pdsg_ohm", 100.0))
        self.off = False
        self.fets = [False, False, False, False]  # chg, pchg, dsg, pdsg
        self._alert_level = None
        self.power_on_reset()
        world.step_hooks.append(self._hook)
        for p in (self.cfetoff_pin, self.dfetoff_pin):
            if p is not None:
                world.watch_pin(p, self._on_pin)

    # ------------------------------------------------------------------
    # Power-on state
    # ------------------------------------------------------------------

    def power_on_reset(self):
        """The chip restarts: data memory back to its OTP defaults, FETs off
        (FET test mode), POR set, measurements start over."""
        self.dm = bytearray(DM_END - DM_BASE)
        for addr, size, value in _DM_DEFAULTS:
            self._dm_set(addr, size, value)
        self.off = False
        self.cfgupdate = False
        self.por = True
        self.wd = False
        self.mfg = self._dm_u(MFG_STATUS_INIT, 2)
        self.host_off = 0x0F if self.dm[FET_OPTIONS - DM_BASE] & FO_FET_INIT_OFF else 0
        self.alert_a = [0, 0, 0]  # Safety Alert A/B/C
        self.status = [0, 0, 0]  # Safety Status A/B/C
        self._trip_ms = {}
        self._rec_ms = {}
        self.cb = 0  # CB_ACTIVE_CELLS, bit 0 = VC1
        self.alarm_status = 0
        self.alarm_raw = 0
        self._pulses = AL_INITCOMP
        self.alarm_enable = self._dm_u(DEFAULT_ALARM_MASK, 2)
        self.cells = [0] * 16  # mV per input
        self.stack_mv = 0.0
        self.pack_mv = 0.0
        self.ld_mv = 0.0
        self.temps_dk = [0] * 10  # 0x68 .. 0x7A
        self.cc2_ma = 0.0
        self._loop_us = 0
        self._loops = 0
        self.xfer = bytearray(36)  # 0x3E .. 0x61
        self.busy_until = None
        self.pending = None
        self.ptr = 0
        self.sleep = False
        self.sleep_disabled = False
        self._quiet_ms = 0
        self.deepsleep = False
        self._dpsl_first = None
        self.sd_pending = False
        self._sd_first = None
        self._sd_at = None
        self.pchg_mode = False
        self.pd_state = 0  # 0 idle, 1 predischarging, 2 done
        self._pd_t0 = 0
        self._pd_check = 0
        self.writes_refused = 0  # data memory writes outside CONFIG_UPDATE (for tests)
        self.crc_nacks = 0
        self._update_fets()
        self._bleed_seen = 0
        self.world.changed()  # the bleeders are off
        self._update_alert()

    def wake(self):
        """A wake-up from SHUTDOWN (TS2 pulled low, a charger on LD): a POR."""
        self.power_on_reset()
        self.world.changed()

    # ------------------------------------------------------------------
    # Data memory helpers
    # ------------------------------------------------------------------

    def _dm_set(self, addr, size, value):
        o = addr - DM_BASE
        if size == "f":
            self.dm[o:o + 4] = struct.pack("<f", value)
            return
        for j in range(size):
            self.dm[o + j] = (value >> (8 * j)) & 0xFF

    def _dm_u(self, addr, size):
        o = addr - DM_BASE
        v = 0
        for j in range(size):
            v |= self.dm[o + j] << (8 * j)
        return v

    def _dm_i(self, addr, size):
        v = self._dm_u(addr, size)
        top = 1 << (8 * size - 1)
        return v - (top << 1) if v & top else v

    def _dm_f(self, addr):
        o = addr - DM_BASE
        return struct.unpack("<f", bytes(self.dm[o:o + 4]))[0]

    def dm_read(self, addr, size=1):
        """Test access: the unsigned value at a data-memory address."""
        return self._dm_u(addr, size)

    def dm_float(self, addr):
        return self._dm_f(addr)

    # ------------------------------------------------------------------
    # I2C
    # ------------------------------------------------------------------

    def i2c_write(self, data, stop):
        if self.off:
            return -1
        self._sync()
        n = len(data)
        if n == 0:
            return 0
        reg = data[0]
        if self.crc:
            payload = bytearray()
            i = 1
            while i < n:
                if i + 1 >= n:  # a data byte without its CRC: incomplete, dropped
                    return n
                d = data[i]
                if i == 1:
                    want = _crc(bytes((self.addr << 1, reg, d)))
                else:
                    want = _crc(bytes((d,)))
                if data[i + 1] != want:
                    self.crc_nacks += 1
                    return i + 1  # the CRC byte is not acknowledged; nothing applied
                payload.append(d)
                i += 2
        else:
            payload = bytearray(data[1:])
        self.ptr = reg
        if payload:
            self._write_regs(reg, payload)
            self._after_change()
        return n

    def i2c_read(self, n, stop):
        if self.off:
            return None
        self._sync()
        p = self.ptr
        k = (n + 1) // 2 if self.crc else n
        out = bytearray()
        for j in range(k):
            d = self._read_byte(p + j)
            out.append(d)
            if self.crc:
                if j == 0:
                    out.append(_crc(bytes((self.addr << 1, p, (self.addr << 1) | 1, d))))
                else:
                    out.append(_crc(bytes((d,))))
        return bytes(out[:n])

    # ------------------------------------------------------------------
    # Register map
    # ------------------------------------------------------------------

    def _word(self, reg):
        """Value of the direct-command word at an even address, or None."""
        if reg == CONTROL_STATUS:
            return 0x0004 if self.deepsleep else 0
        if reg == BATTERY_STATUS:
            return self.battery_status()
        if CELL1 <= reg < STACK:
            return _s16(self.cells[(reg - CELL1) // 2])
        if reg == STACK:
            return _s16(self._user_v(self.stack_mv))
        if reg == PACK:
            return _s16(self._user_v(self.pack_mv))
        if reg == LD:
            return _s16(self._user_v(self.ld_mv))
        if reg == CC2:
            unit = USER_AMPS_MA[self.dm[DA_CONFIG - DM_BASE] & 3]
            return _s16(round(self.cc2_ma / unit))
        if reg == ALARM_STATUS:
            return self.alarm_status
        if reg == ALARM_RAW:
            return self.alarm_raw
        if reg == ALARM_ENABLE:
            return self.alarm_enable
        if INT_TEMP <= reg <= 0x7A:
            return _s16(self.temps_dk[(reg - INT_TEMP) // 2])
        return None

    def _read_byte(self, a):
        if SUB_LO <= a <= LENGTH:
            if self._busy():
                return 0xFF
            return self.xfer[a - SUB_LO]
        if 0x02 <= a <= 0x07:  # one byte each: alert A, status A, alert B, ...
            k = (a - 2) // 2
            return self.alert_a[k] if a % 2 == 0 else self.status[k]
        if a == FET_STATUS:
            return self.fet_status()
        if a >= 0x80:
            return 0
        w = self._word(a & 0xFE)
        if w is None:
            return 0
        return (w >> 8) & 0xFF if a & 1 else w & 0xFF

    def _user_v(self, mv):
        return round(mv / 10.0) if self.dm[DA_CONFIG - DM_BASE] & 0x04 else round(mv)

    def battery_status(self):
        v = BS_SEC_FULL
        if self.cfgupdate:
            v |= BS_CFGUPDATE
        if self.pchg_mode:
            v |= BS_PCHG_MODE
        if self._sleep_allowed():
            v |= BS_SLEEP_EN
        if self.por:
            v |= BS_POR
        if self.wd:
            v |= BS_WD
        if self.status[0] or self.status[1] or self.status[2]:
            v |= BS_SS
        if self.sd_pending:
            v |= BS_SD_CMD
        if self.sleep:
            v |= BS_SLEEP
        return v

    def fet_status(self):
        chg, pchg, dsg, pdsg = self.fets
        v = (1 if chg else 0) | (2 if pchg else 0) | (4 if dsg else 0) | (8 if pdsg else 0)
        if self._alert_asserted():
            v |= 0x40
        return v

    def _write_regs(self, reg, payload):
        end = reg + len(payload) - 1
        lo = max(reg, SUB_LO)
        hi = min(end, LENGTH)
        if lo <= hi:
            self._sub_write(lo, payload[lo - reg:hi - reg + 1])
        for j in range(len(payload)):
            a = reg + j
            if a in (ALARM_STATUS, ALARM_STATUS + 1):
                self.alarm_status &= ~(payload[j] << (8 * (a - ALARM_STATUS)))
            elif a in (ALARM_ENABLE, ALARM_ENABLE + 1):
                sh = 8 * (a - ALARM_ENABLE)
                self.alarm_enable = (self.alarm_enable & ~(0xFF << sh)) | (payload[j] << sh)

    # ------------------------------------------------------------------
    # Subcommands
    # ------------------------------------------------------------------

    def _busy(self):
        return self.busy_until is not None

    def _sub_write(self, start, data):
        if self._busy():
            return  # the chip is working on the last id: dropped
        end = start + len(data) - 1
        for j in range(len(data)):
            self.xfer[start - SUB_LO + j] = data[j]
        if start == SUB_LO and end >= SUB_HI:
            if end == SUB_HI:
                self.pending = self.xfer[0] | (self.xfer[1] << 8)
                self.busy_until = self.world.time_us() + SUB_DELAY_US
                return
        if start <= CHECKSUM and end >= LENGTH:
            self._commit()

    def _commit(self):
        x = self.xfer
        length = x[LENGTH - SUB_LO]
        if not 4 <= length <= 36:
            return
        n = length - 4
        s = x[0] + x[1]
        for j in range(n):
            s += x[2 + j]
        if x[CHECKSUM - SUB_LO] != (~s) & 0xFF:
            return
        sid = x[0] | (x[1] << 8)
        data = bytes(x[2:2 + n])
        if DM_BASE <= sid < DM_END:
            if not self.cfgupdate:
                self.writes_refused += 1
                return
            for j in range(n):
                if sid + j < DM_END:
                    self.dm[sid - DM_BASE + j] = data[j]
        elif sid == SC_CB_ACTIVE_CELLS and n >= 2:
            if not self.dm[BALANCING_CONFIG - DM_BASE] & 0x10:  # CB_NO_CMD
                self.cb = (data[0] | (data[1] << 8)) & self._vcell_mask()
        elif sid == SC_FET_CONTROL and n >= 1:
            if self.dm[FET_OPTIONS - DM_BASE] & FO_HOST_FET_EN:
                self.host_off = data[0] & 0x0F

    def _complete(self):
        sid = self.pending
        self.pending = None
        self.busy_until = None
        data = self._execute(sid)
        x = self.xfer
        x[0] = sid & 0xFF
        x[1] = sid >> 8
        for j in range(32):
            x[2 + j] = data[j] if j < len(data) else 0
        s = x[0] + x[1]
        for j in range(len(data)):
            s += data[j]
        x[CHECKSUM - SUB_LO] = (~s) & 0xFF
        x[LENGTH - SUB_LO] = len(data) + 4

    def _execute(self, sid):
        """Run a subcommand written alone; returns its response bytes."""
        if DM_BASE <= sid < DM_END:
            o = sid - DM_BASE
            block = bytearray(32)
            for j in range(32):
                if o + j < len(self.dm):
                    block[j] = self.dm[o + j]
            return bytes(block)
        if sid == SC_DEVICE_NUMBER:
            return bytes((DEVICE_NUMBER & 0xFF, DEVICE_NUMBER >> 8))
        if sid == SC_FW_VERSION:
            return bytes((0x76, 0x95, 0x01, 0x00, 0x00, 0x00))
        if sid == SC_HW_VERSION:
            return bytes((0x00, 0x01))
        if sid == SC_MANUFACTURINGSTATUS:
            return bytes((self.mfg & 0xFF, self.mfg >> 8))
        if sid == SC_CB_ACTIVE_CELLS:
            return bytes((self.cb & 0xFF, self.cb >> 8))
        if sid == SC_FET_CONTROL:
            return bytes((self.host_off,))
        now = self.world.time_us()
        fo = self.dm[FET_OPTIONS - DM_BASE]
        host = fo & FO_HOST_FET_EN
        if sid == SC_SET_CFGUPDATE:
            self.cfgupdate = True
        elif sid == SC_EXIT_CFGUPDATE:
            if self.cfgupdate:
                self.cfgupdate = False
                self.por = False
                self.wd = False
                self.alarm_enable = self._dm_u(DEFAULT_ALARM_MASK, 2)
                self.host_off = 0x0F if fo & FO_FET_INIT_OFF else 0
                self.pd_state = 0
                self._loop_us = 0
        elif sid == SC_ALL_FETS_OFF:
            if host:
                self.host_off = 0x0F
        elif sid == SC_ALL_FETS_ON:
            if host:
                self.host_off = 0
        elif sid == SC_DSG_PDSG_OFF:
            if host:
                self.host_off |= HOST_DSG_OFF | HOST_PDSG_OFF
        elif sid == SC_CHG_PCHG_OFF:
            if host:
                self.host_off |= HOST_CHG_OFF | HOST_PCHG_OFF
        elif sid == SC_FET_ENABLE:
            self.mfg ^= MS_FET_EN
            self.mfg &= ~(MS_PCHG_TEST | MS_CHG_TEST | MS_DSG_TEST | MS_PDSG_TEST)
        elif sid in (SC_CHGTEST, SC_DSGTEST, SC_PCHGTEST, SC_PDSGTEST):
            if not self.mfg & MS_FET_EN:
                bit = {SC_CHGTEST: MS_CHG_TEST, SC_DSGTEST: MS_DSG_TEST,
                       SC_PCHGTEST: MS_PCHG_TEST, SC_PDSGTEST: MS_PDSG_TEST}[sid]
                self.mfg ^= bit
        elif sid == SC_SLEEP_DISABLE:
            self.sleep_disabled = True
        elif sid == SC_SLEEP_ENABLE:
            self.sleep_disabled = False
        elif sid == SC_RESET:
            self.power_on_reset()
            self.world.changed()
            return b""
        elif sid == SC_DEEPSLEEP:
            if self._dpsl_first is not None and now - self._dpsl_first <= 4000000:
                self.deepsleep = True
                self._dpsl_first = None
            else:
                self._dpsl_first = now
        elif sid == SC_EXIT_DEEPSLEEP:
            self.deepsleep = False
        elif sid == SC_SHUTDOWN:
            if self._sd_first is not None and now - self._sd_first <= 4000000:
                self._shut_down()
                return b""
            self._sd_first = now
            self.sd_pending = True
            self._sd_at = now + 1000000
        return b""

    def _shut_down(self):
        self.off = True
        self.sd_pending = False
        self._bleed_seen = 0
        self._fets_changed([False, False, False, False])
        self._update_alert()

    # ------------------------------------------------------------------
    # Time: pending subcommands, measurement loop, protections
    # ------------------------------------------------------------------

    def _sync(self):
        if self.off:
            return
        now = self.world.time_us()
        if self.busy_until is not None and now >= self.busy_until:
            self._complete()
            self._after_change()
        if self._sd_at is not None and now >= self._sd_at:
            self._sd_at = None
            self._shut_down()

    def _after_change(self):
        if self.off:
            return
        self._update_fets()
        b = self.bleed_mask()
        if b != self._bleed_seen:
            # A bleeder switched (CB_ACTIVE_CELLS, CONFIG_UPDATE pausing
            # it, a reset): what flows changes.
            self._bleed_seen = b
            self.world.changed()
        self._update_alarm()
        self._update_alert()

    def _on_pin(self, _level):
        if not self.off:
            self._after_change()

    def _running(self):
        return not (self.off or self.cfgupdate or self.deepsleep)

    def _hook(self, dt_ms):
        if self.off:
            return
        self._sync()
        if self.off:
            return
        if self._running():
            if dt_ms:
                self._run_loops(dt_ms)
            self._protect(dt_ms)
            self._sleep_logic(dt_ms)
            self._predischarge()
        else:
            self._loop_us = 0
        self._after_change()

    def loop_us(self):
        """Length of one measurement loop now (us)."""
        pc = self._dm_u(POWER_CONFIG, 2)
        if self.sleep:
            return self.dm[VOLTAGE_TIME - DM_BASE] * 1000000 or 1000000
        slot = 1500 if pc & 0x40 else 3000
        n_ts = 0
        for k in range(3):
            if self.dm[TS1_CONFIG - DM_BASE + k] & 3 == 3:
                n_ts += 1
        slots = 18 + min(3, n_ts)
        return slots * slot * (1 << ((pc >> 2) & 3))

    def _run_loops(self, dt_ms):
        self._loop_us += dt_ms * 1000
        period = self.loop_us()
        if self._loop_us < period:
            return
        loops = self._loop_us // period
        self._loop_us -= loops * period
        self._measure()
        before = self._loops
        self._loops += loops
        self._pulses |= AL_ADSCAN
        if self._loops // 3 != before // 3:
            self._pulses |= AL_FULLSCAN

    def _input_mv(self, c):
        """mV at chip cell input c (0 = VC1-VC0 ... 15 = VC16-VC15)."""
        w = self.world
        n = w.pack.n
        if n >= 16:
            k = c
        elif c < n - 1:
            k = c
        elif c == 15:
            k = n - 1
        else:
            return 0.0  # shorted to the input below
        return w.cell_input_mv(k)

    def input_of_cell(self, k):
        """Chip input (0-based) that pack cell k (0-based) is wired to."""
        n = self.world.pack.n
        return 15 if (k == n - 1 and n < 16) else k

    def _chip_ma(self, sensed_ma):
        # The chip's current: shunt voltage x CC Gain / 7.5684 (1 mOhm).
        return sensed_ma * self.shunt_uohm / 1000.0 * self._dm_f(CC_GAIN) / CC_GAIN_1MOHM

    def _stack(self):
        w = self.world
        f = getattr(w, "pack_terminal_mv", None)
        if f is not None:
            return f()
        total = 0.0
        for k in range(w.pack.n):
            total += w.cell_true_mv(k)
        return total

    def _measure(self):
        w = self.world
        for c in range(16):
            self.cells[c] = int(round(self._input_mv(c)))
        stack = self._stack()
        self.stack_mv = stack
        chg, pchg, dsg, pdsg = self.fets
        self.pack_mv = stack if (chg or pchg or dsg or pdsg) else 0.0
        if pdsg and not dsg:
            self.ld_mv = max(0.0, stack - self._pdsg_drop_mv())
        else:
            self.ld_mv = self.pack_mv
        self.cc2_ma = self._chip_ma(w.sensed_current_ma())
        bt = getattr(w, "board_temp", None)
        self.temps_dk[0] = int(round(((bt() if bt else 25.0) + 273.15) * 10))
        for k in range(3):
            cfg = self.dm[TS1_CONFIG - DM_BASE + k]
            self.temps_dk[4 + k] = self._ts_value(k, cfg)
        # precharge mode from the lowest enabled cell
        start = self._dm_i(PCHG_START, 2)
        stop = self._dm_i(PCHG_STOP, 2)
        if start <= 0:
            self.pchg_mode = False
        else:
            vmin = min(self._enabled_cells())
            if vmin < start:
                self.pchg_mode = True
            elif vmin >= stop:
                self.pchg_mode = False

    def _ts_value(self, k, cfg):
        if cfg & 3 != 3:
            return 0
        src = self.ts[k]
        r = float("inf")
        if src is not None:
            r = self.world.ntc_ohm(src[1]) if src[0] == "ntc" else self.world.board_ntc_ohm()
        pull = 18000.0 if (cfg >> 4) & 3 == 0 else 180000.0
        if (cfg >> 4) & 3 == 2:  # no pull-up: ADCIN, the pin voltage in mV (nothing drives it)
            return 0
        ratio = 1.0 if r == float("inf") else r / (r + pull)
        if ratio < 0.001:
            ratio = 0.001
        elif ratio > 0.999:
            ratio = 0.999
        r_eff = pull * ratio / (1.0 - ratio)
        t = 1.0 / (1.0 / 298.15 + math.log(r_eff / 10000.0) / 3435.0)
        return int(round(t * 10))

    def _vcell_mask(self):
        v = self._dm_u(VCELL_MODE, 2)
        return v if v else 0xFFFF

    def _enabled_cells(self):
        mask = self._vcell_mask()
        out = []
        for c in range(16):
            if mask >> c & 1:
                out.append(self._input_mv(c))
        return out or [0.0]

    def _prot(self, bit, enabled, cond, delay_ms, recover, rec_ms, dt):
        st = self.status[0]
        if not enabled:
            self.alert_a[0] &= ~bit
            self.status[0] &= ~bit
            self._trip_ms[bit] = 0
            self._rec_ms[bit] = 0
            return
        if cond:
            self.alert_a[0] |= bit
        else:
            self.alert_a[0] &= ~bit
        if st & bit:
            if recover:
                self._rec_ms[bit] = self._rec_ms.get(bit, 0) + dt
                if rec_ms is not None and self._rec_ms[bit] >= rec_ms:
                    self.status[0] &= ~bit
                    self._rec_ms[bit] = 0
                    self._trip_ms[bit] = 0
            else:
                self._rec_ms[bit] = 0
            return
        if not cond:
            self._trip_ms[bit] = 0
            return
        t = self._trip_ms.get(bit, 0) + dt
        self._trip_ms[bit] = t
        if t >= delay_ms or delay_ms < 1.0:
            self.status[0] |= bit
            self._rec_ms[bit] = 0

    def _protect(self, dt):
        d = self.dm
        en = d[ENABLED_PROT_A - DM_BASE]
        cells = self._enabled_cells()
        vmax = max(cells)
        vmin = min(cells)
        sensed = self.world.sensed_current_ma()
        v_mv = sensed * self.shunt_uohm / 1000000.0  # + = charging
        i_chip = self._chip_ma(sensed)
        rec_ms = d[RECOVERY_TIME - DM_BASE] * 1000
        cov = d[COV_THRESHOLD - DM_BASE] * 50.6
        cuv = d[CUV_THRESHOLD - DM_BASE] * 50.6
        self._prot(COV, en & COV, vmax >= cov, (self._dm_u(COV_DELAY, 2) + 2) * 3.3,
                   vmax < cov - d[COV_HYST - DM_BASE] * 50.6, rec_ms, dt)
        self._prot(CUV, en & CUV, vmin <= cuv, (self._dm_u(CUV_DELAY, 2) + 2) * 3.3,
                   vmin > cuv + d[CUV_HYST - DM_BASE] * 50.6, rec_ms, dt)
        self._prot(OCC, en & OCC, v_mv >= d[OCC_THRESHOLD - DM_BASE] * 2, (d[OCC_DELAY - DM_BASE] + 2) * 3.3,
                   i_chip <= self._dm_i(OCC_RECOVERY, 2), rec_ms, dt)
        ocd_rec = i_chip >= self._dm_i(OCD_RECOVERY, 2)
        self._prot(OCD1, en & OCD1, -v_mv >= d[OCD1_THRESHOLD - DM_BASE] * 2, (d[OCD1_DELAY - DM_BASE] + 2) * 3.3,
                   ocd_rec, rec_ms, dt)
        self._prot(OCD2, en & OCD2, -v_mv >= d[OCD2_THRESHOLD - DM_BASE] * 2, (d[OCD2_DELAY - DM_BASE] + 2) * 3.3,
                   ocd_rec, rec_ms, dt)
        scd = -v_mv >= SCD_MV[d[SCD_THRESHOLD - DM_BASE] & 15]
        sd = d[SCD_DELAY - DM_BASE]
        scd_rec = d[SCD_RECOVERY_TIME - DM_BASE]
        self._prot(SCD, en & SCD, scd, (sd - 1) * 0.015 if sd > 1 else 0.0, not scd,
                   scd_rec * 1000 if scd_rec else None, dt)

    def _sleep_allowed(self):
        return bool(self._dm_u(POWER_CONFIG, 2) & 0x100) and not self.sleep_disabled

    def _sleep_logic(self, dt):
        i = abs(self._chip_ma(self.world.sensed_current_ma()))
        if not self.sleep:
            if self._sleep_allowed() and i < self._dm_i(SLEEP_CURRENT, 2):
                self._quiet_ms += dt
                if self._quiet_ms >= self.dm[SLEEP_HYST_TIME - DM_BASE] * 1000:
                    self.sleep = True
                    self._loop_us = 0
            else:
                self._quiet_ms = 0
        elif not self._sleep_allowed() or i > self._dm_i(WAKE_CURRENT, 2):
            self.sleep = False
            self._quiet_ms = 0
            self._loop_us = 0

    def _predischarge(self):
        if self.pd_state != 1:
            return
        now = self.world.time_us()
        timeout = self.dm[PDSG_TIMEOUT - DM_BASE] * 10000
        delta = self.dm[PDSG_DELTA - DM_BASE] * 10
        if not timeout and not delta:
            self.pd_state = 2
            return
        if timeout and now - self._pd_t0 >= timeout:
            self.pd_state = 2
            return
        if delta and now - self._pd_check >= 250000:
            # The last measured LD and top-of-stack voltages (TRM).
            self._pd_check = now
            if self.ld_mv >= self.stack_mv - delta:
                self.pd_state = 2

    def _pdsg_drop_mv(self):
        # Across the PDSG resistor: the discharge current that really flows
        # through it (a charge current takes the DSG FET's body diode).
        ma = self.world.flowing_ma()
        return -ma * self.pdsg_ohm if ma < 0 else 0.0

    # ------------------------------------------------------------------
    # FETs, alarm, ALERT
    # ------------------------------------------------------------------

    def _pin_asserted(self, pin, cfg):
        if pin is None or cfg & 3 != 2:
            return False
        level = self.world.read_pin(pin)
        return level == 0 if cfg & 0x80 else level == 1

    def _update_fets(self):
        chg = pchg = dsg = pdsg = False
        d = self.dm
        fo = d[FET_OPTIONS - DM_BASE]
        if not (self.off or self.cfgupdate or self.deepsleep or self.sd_pending):
            if not self.mfg & MS_FET_EN:
                chg = bool(self.mfg & MS_CHG_TEST)
                dsg = bool(self.mfg & MS_DSG_TEST)
                pchg = bool(self.mfg & MS_PCHG_TEST)
                pdsg = bool(self.mfg & MS_PDSG_TEST)
                self.pd_state = 0
            elif fo & FO_FET_CTRL_EN:
                st = self.status
                o = CHG_FET_PROT_A - DM_BASE
                p_chg = (st[0] & d[o]) | (st[1] & d[o + 1]) | (st[2] & d[o + 2])
                o = DSG_FET_PROT_A - DM_BASE
                p_dsg = (st[0] & d[o]) | (st[1] & d[o + 1]) | (st[2] & d[o + 2])
                dcfg = d[DFETOFF_CONFIG - DM_BASE]
                dpin = self._pin_asserted(self.dfetoff_pin, dcfg)
                both = dpin and bool(dcfg & 0x40)
                cpin = self._pin_asserted(self.cfetoff_pin, d[CFETOFF_CONFIG - DM_BASE]) or both
                host = self.host_off if fo & FO_HOST_FET_EN else 0
                c_ok = not p_chg and not cpin and not (self.sleep and not fo & FO_SLEEPCHG)
                d_ok = not p_dsg and not dpin
                if self.pchg_mode:
                    pchg = c_ok and not host & HOST_PCHG_OFF
                else:
                    chg = c_ok and not host & HOST_CHG_OFF
                if not (d_ok and not host & HOST_DSG_OFF):
                    self.pd_state = 0
                elif fo & FO_PDSG_EN and self.pd_state != 2:
                    if self.pd_state == 0:
                        self.pd_state = 1
                        self._pd_t0 = self._pd_check = self.world.time_us()
                    pdsg = not host & HOST_PDSG_OFF
                else:
                    dsg = True
        new = [bool(chg), bool(pchg), bool(dsg), bool(pdsg)]
        if new != self.fets:
            self._fets_changed(new)

    def _fets_changed(self, new):
        # What flows changes; the world's record of gate changes (kept by
        # gate-pin watchers on boards with GPIO-driven FETs, by the chip
        # here) gets the time the CHG or DSG FET switched.
        w = self.world
        old = self.fets
        self.fets = new
        w.changed()
        g = getattr(w, "gate_changed_ms", None)
        if g is not None:
            if new[0] != old[0]:
                g["chg"] = w.now_ms
            if new[2] != old[2]:
                g["dsg"] = w.now_ms

    def _update_alarm(self):
        st = self.status
        raw = 0
        if st[1] or st[2]:
            raw |= AL_SSBC
        if st[0]:
            raw |= AL_SSA
        o = SF_ALERT_MASK_A - DM_BASE
        a = self.alert_a
        if (a[0] & self.dm[o]) | (a[1] & self.dm[o + 1]) | (a[2] & self.dm[o + 2]):
            raw |= AL_MSK_SFALERT
        chg, pchg, dsg, pdsg = self.fets
        if not chg:
            raw |= AL_XCHG
        if not dsg:
            raw |= AL_XDSG
        if self.bleed_mask():
            raw |= AL_CB
        self.alarm_raw = raw | self._pulses
        self.alarm_status |= (raw | self._pulses) & self.alarm_enable
        self._pulses = 0

    def _alert_asserted(self):
        return self.alarm_status != 0 and not self.off

    def _update_alert(self):
        if self.alert_pin is None:
            return
        cfg = self.dm[ALERT_CONFIG - DM_BASE]
        level = self.alert_idle
        if not self.off and cfg & 3 == 2:
            asserted = self._alert_asserted()
            hi = (not asserted) if cfg & 0x80 else asserted
            if hi:
                level = 1 if cfg & 0x02 else self.alert_idle
            else:
                level = 0
        if level != self._alert_level:
            self._alert_level = level
            self.world.set_input(self.alert_pin, level)

    # ------------------------------------------------------------------
    # What the world asks
    # ------------------------------------------------------------------

    def fet_on(self, name):
        """True if that FET conducts: "chg", "dsg", "precharge" (the PDSG
        predischarge path), "pchg", "pdsg"."""
        i = {"chg": 0, "pchg": 1, "dsg": 2, "pdsg": 3, "precharge": 3}[name]
        return self.fets[i]

    def bleed_mask(self):
        """Bit k: pack cell k (0-based) is being bled."""
        if not self._running():
            return 0
        n = self.world.pack.n
        mask = 0
        for k in range(n):
            if self.cb >> self.input_of_cell(k) & 1:
                mask |= 1 << k
        return mask

    def hw_state(self):
        tripped = [name for bit, name in _NAMES_A if self.status[0] & bit]
        if self.off:
            mode = "shutdown"
        elif self.cfgupdate:
            mode = "config_update"
        elif self.deepsleep:
            mode = "deepsleep"
        elif self.sleep:
            mode = "sleep"
        else:
            mode = "normal"
        on = [n for n, f in zip(("chg", "pchg", "dsg", "pdsg"), self.fets) if f]
        return {"mode": mode, "fets": " ".join(on) or "off", "tripped": ",".join(tripped) or "-",
                "fet_en": bool(self.mfg & MS_FET_EN), "balancing": "0x%04x" % self.cb,
                "alarm": "0x%04x" % self.alarm_status}


def _ts_index(name):
    if name in ("TS1", "TS2", "TS3"):
        return int(name[2]) - 1
    return None
