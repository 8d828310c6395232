"""ADI LTC6811-1 / LTC6813-1 daisy chain, register-level model.

Written from the datasheets (facts in afe-facts.md B3, LTC6804-1 pp. 27-30,
50, 53 for the shared parts), not from a driver:

- Frames, while CS is low: CMD0 CMD1 PEC_hi PEC_lo (PEC15, seed 0x0010).
  A command whose PEC is wrong is ignored by the whole chain. Writes
  (WRCFGA; WRCFGB on the LTC6813) carry 6 data bytes + PEC per device, the
  farthest device's group first; a device whose data PEC is wrong ignores
  its group (the others take theirs). A write takes effect at the CS rising
  edge and only when the frame carries exactly one group per device. Reads
  return 6 bytes + PEC per device, the nearest device first; where no
  device drives the data (beyond the chain, a device not awake), MISO reads
  0xFF.
- Register groups: CFGA (CFGB on the LTC6813), CVA..CVD (CVE/CVF on the
  LTC6813), AUXA (G1V..G3V), AUXB (G4V, G5V, REF), STATA (SOC, ITMP, VA),
  STATB (VD, the cell UV/OV flags of cells 1-12, REV/MUXFAIL/THSD). Codes
  little-endian, 100 uV per LSB; 0xFFFF after power-up and after CLRCELL /
  CLRAUX / CLRSTAT.
- Conversions: ADCV (MD, DCP, CH), ADAX (MD, CHG), ADSTAT (MD, CHST); the
  inputs are sampled when the command arrives and the codes appear in the
  registers only when the conversion time of that mode has passed (plus
  t_REFUP when REFON = 0: the reference powers up first). A conversion
  command while one is running restarts the ADC with the new one (model
  choice; the older results are lost). PLADC: every byte clocked after it
  reads 0x00 while a device that heard it is converting, 0xFF when done.
  ADCV with DCP = 0 turns the discharge switches of the cells it converts
  off until the conversion ends.
- Cell inputs: a pack of n cells on D devices of C inputs (C = 12 on the
  LTC6811, 18 on the LTC6813): device d takes n // D cells (the lower
  devices one more each while n % D lasts), consecutive pack cells, on its
  lowest inputs; its upper inputs are shorted and read 0. With n = D * C
  pack cell k is input k % C of device k // C. Codes from
  world.cell_input_mv(k) (the input with its error); SOC (sum of cells,
  SOC x 20 x 100 uV) from the device's cell terminal voltages.
- GPIO1..5: board "ntc"/"board_ntc" entries name (device, gpio) and a
  pull-up to VREF2 (3.0 V): the pin reads 3.0 V x R / (R + pull-up), R from
  world.ntc_ohm(i) / world.board_ntc_ohm(). A pin whose pull-down is on
  (CFGR0 GPIO bit written 0) reads 0 V; a pin with nothing on it reads 0 V.
  Reading CFGR0 returns the GPIO pins' logic levels (above 1.5 V: 1, model
  threshold), not what was written, and the DTEN pin in bit 1.
- CFGA: DCC1-12 drive the discharge switches (bleed_mask()), DCTO the
  discharge timer. DCTO reads back as the time left (0 = disabled or timed
  out). The timer runs only when the DTEN pin is high (board
  "ltc681x"."dten", default true); it (re)starts at every accepted write of
  the configuration; when it runs out, DCC bits are cleared.
- Watchdog and sleep: no wake-up signal (a CS falling edge reaching the
  device) for t_SLEEP = 2 s: the watchdog resets CFGR0-CFGR3 (REFON, GPIO,
  ADCOPT, VUV, VOV) to their power-on values; CFGR4/CFGR5 (DCC, DCTO) too
  unless the discharge timer is in use (DTEN high, DCTO not 0, not run out;
  LTC6804 DS p30), and the core goes to SLEEP. The measurement registers
  keep their codes. The first CS falling edge that reaches a sleeping
  device only wakes it (t_WAKE = 400 us, then it answers); the frame it
  starts is lost, for that device and every one beyond it. Each further
  edge passes through the awake devices and wakes the next one. The isoSPI
  port of an awake device goes idle after t_IDLE = 5.5 ms without activity;
  the edge that wakes it (t_READY = 10 us) is lost the same way.
- The chip has no current sensor and drives no FETs.
- The SPI mode must be the board's (mode 3 unless "spi_mode" says
  otherwise): with another clock phase/polarity the chip misreads every
  byte, so it ignores every frame.

Not modelled: open-wire (ADOW), self tests (CVST, AXST, STATST), DIAGN,
the combined conversions ADCVAX and ADCVSC (ignored: no conversion), PWM,
the LTC6813 GPIO6-9 and AUXC/AUXD (so no UV/OV flags for cells 13-18),
S-pin PWM, thermal shutdown, the MUTE/UNMUTE commands.

Runs under CPython and MicroPython.

Speed (the model runs inside the MicroPython scenarios, on every bus
transfer): what only time changes (conversions ending, watchdog, discharge
timer, idle ports) is brought up to date once per virtual microsecond, not
again on every CS edge and transfer at that instant (nothing started at an
instant falls due at that same instant); the PEC of each distinct command
word, and the chain's reply (groups + PECs) to each read command, are
computed once and kept until a register group changes (the configuration
group A, which reads pin levels and the time left, is built every time);
the world is told of a circuit change only when a discharge switch really
opens or closes. The checks are unchanged: every frame's command PEC and
every written group's PEC is compared with what was received.
"""

from chips.checks import pec15

T_SLEEP_US = 2000000  # watchdog: t_SLEEP (1.8 .. 2.2 s)
T_WAKE_US = 400  # SLEEP -> STANDBY
T_IDLE_US = 5500  # isoSPI port idle after this much silence
T_READY_US = 10  # isoSPI port ready after a wake-up pulse
T_REFUP_US = 4400  # reference power-up before a conversion when REFON = 0
VREF2_MV = 3000.0
GPIO_HIGH_MV = 1500.0  # model threshold for the GPIO logic level read in CFGR0

# Command codes (11 bits)
WRCFGA = 0x001
RDCFGA = 0x002
WRCFGB = 0x024
RDCFGB = 0x026
RDCVA = 0x004
RDCVB = 0x006
RDCVC = 0x008
RDCVD = 0x00A
RDCVE = 0x009
RDCVF = 0x00B
RDAUXA = 0x00C
RDAUXB = 0x00E
RDSTATA = 0x010
RDSTATB = 0x012
CLRCELL = 0x711
CLRAUX = 0x712
CLRSTAT = 0x713
PLADC = 0x714

_CV_GROUPS = {RDCVA: 0, RDCVB: 1, RDCVC: 2, RDCVD: 3, RDCVE: 4, RDCVF: 5}

# Conversion times in us per (MD, ADCOPT): (all cells or GPIO1-5+REF,
# one channel/pair, ADSTAT all four). 27k..26 Hz from the LTC6804 DS
# p50/p27 (Table 9: 748/865/1563/2028/2959/134218 us); the MD = 00 modes
# (422 Hz, 1 kHz) are the LTC6811's own.
_TIMES = {
    (1, 0): (1113, 201, 748),  # 27 kHz
    (1, 1): (1288, 230, 865),  # 14 kHz
    (2, 0): (2335, 405, 1563),  # 7 kHz
    (2, 1): (3033, 501, 2028),  # 3 kHz
    (3, 0): (201317, 34000, 134218),  # 26 Hz
    (3, 1): (4430, 754, 2959),  # 2 kHz
    (0, 0): (12807, 2100, 8537),  # 422 Hz
    (0, 1): (6079, 1000, 4104),  # 1 kHz
}

# DCTO code -> minutes (0: disabled)
DCTO_MIN = (0, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 60, 75, 90, 120)

CFGA_POR = (0xF8, 0, 0, 0, 0, 0)  # GPIO pull-downs off, REFON 0, ADCOPT 0
CFGB_POR = (0x0F, 0, 0, 0, 0, 0)  # LTC6813: GPIO6-9 pull-downs off
REV = 1  # revision code in STATB byte 5 (any value; it enters the PEC)

_FFFF = 0xFFFF
_FF8 = b"\xff" * 8  # a reply group nobody drives
_CMD_PEC = {}  # command word -> its PEC (computed once per distinct word)
_NO_CACHE = (RDCFGA,)  # read as pin levels and time left: never the same twice


def _group(codes, first):
    # Three 16-bit codes, little-endian, as a 6-byte register group.
    out = bytearray(6)
    for j in range(3):
        v = codes[first + j]
        out[2 * j] = v & 0xFF
        out[2 * j + 1] = (v >> 8) & 0xFF
    return out


def _code(mv):
    c = int(mv * 10.0 + 0.5)
    if c < 0:
        return 0
    return _FFFF - 1 if c >= _FFFF else c  # a real reading never equals the cleared value


class Device:
    """One LTC681x of the chain; index 0 is the one nearest the MCU."""

    def __init__(self, chain, index):
        self.chain = chain
        self.index = index
        self.power_on()

    def power_on(self):
        c = self.chain
        self.cfga = bytearray(CFGA_POR)  # as written (CFGR0 bit 1 and the GPIO bits read differently)
        self.cfgb = bytearray(CFGB_POR)
        self.cv = [_FFFF] * c.inputs
        self.aux = [_FFFF] * 6  # G1V..G5V, REF
        self.stat = [_FFFF] * 4  # SOC, ITMP, VA, VD
        self.flags = bytearray(3)  # UV/OV flags of cells 1-12
        self.pending = None  # (done_us, kind, data)
        self.dcp_block = 0  # inputs whose switch is off while ADCV(DCP=0) runs
        self.sleeping = True  # a chip comes up in SLEEP
        self.ready_at = None  # when its port answers (None: idle or asleep)
        self.last_signal = 0
        self.last_act = 0
        self.dcto_end = None  # us when the discharge timer runs out
        self.touched()

    def touched(self):
        # A register group changed: replies (and their PECs) are built again.
        self.chain.replies.clear()

    def reply(self, cmd, now):
        """The 8 bytes this device clocks out for read command cmd (None: not a read)."""
        g = self.read_group(cmd, now)
        if g is None:
            return None
        p = pec15(g)
        g.append(p >> 8)
        g.append(p & 0xFF)
        return g

    # -- registers as read --

    def dcc(self):
        """Discharge bits, bit i = input i+1."""
        a = self.cfga
        v = a[4] | (a[5] & 0x0F) << 8
        if self.chain.inputs > 12:
            b = self.cfgb
            v |= (b[0] >> 4) << 12 | (b[1] & 0x03) << 16
        return v

    def dcto_code(self):
        return self.cfga[5] >> 4

    def refon(self):
        return bool(self.cfga[0] & 0x04)

    def adcopt(self):
        return self.cfga[0] & 0x01

    def vuv(self):
        a = self.cfga
        return a[1] | (a[2] & 0x0F) << 8

    def vov(self):
        a = self.cfga
        return a[2] >> 4 | a[3] << 4

    def read_cfga(self, now):
        out = bytearray(self.cfga)
        levels = 0
        for g in range(5):
            if self.chain.gpio_mv(self, g + 1) > GPIO_HIGH_MV:
                levels |= 1 << g
        out[0] = levels << 3 | (self.cfga[0] & 0x05) | (0x02 if self.chain.dten else 0)
        left = self._dcto_left_code(now)
        out[5] = left << 4 | (self.cfga[5] & 0x0F)
        return out

    def _dcto_left_code(self, now):
        if self.dcto_end is None or not self.chain.dten:
            return 0
        left_min = (self.dcto_end - now) / 60000000.0
        if left_min <= 0:
            return 0
        for code in range(1, 16):
            if left_min <= DCTO_MIN[code]:
                return code
        return 15

    def read_group(self, cmd, now):
        c = self.chain
        if cmd == RDCFGA:
            return self.read_cfga(now)
        if cmd == RDCFGB:
            return bytearray(self.cfgb)
        if cmd in _CV_GROUPS:
            return _group(self.cv, 3 * _CV_GROUPS[cmd])
        if cmd == RDAUXA:
            return _group(self.aux, 0)
        if cmd == RDAUXB:
            return _group(self.aux, 3)
        if cmd == RDSTATA:
            return _group(self.stat, 0)
        if cmd == RDSTATB:
            vd = self.stat[3]
            return bytearray((vd & 0xFF, vd >> 8, self.flags[0], self.flags[1], self.flags[2], REV << 4))
        return None

    def write_cfga(self, data, now):
        old = self.dcc()
        self.cfga[0:6] = data
        self._restart_timer(now)
        if self.dcc() != old:
            self.chain.world.changed()

    def write_cfgb(self, data, now):
        old = self.dcc()
        self.cfgb[0:6] = data
        self.touched()
        self._restart_timer(now)
        if self.dcc() != old:
            self.chain.world.changed()

    def _restart_timer(self, now):
        code = self.dcto_code()
        if code and self.chain.dten:
            self.dcto_end = now + int(DCTO_MIN[code] * 60000000)
        else:
            self.dcto_end = None

    def clear_dcc(self):
        old = self.dcc()
        self.cfga[4] = 0
        self.cfga[5] &= 0xF0
        self.cfgb[0] &= 0x0F
        self.cfgb[1] &= 0xFC
        self.touched()
        if old:
            self.chain.world.changed()

    # -- time --

    def advance(self, now):
        # The discharge timer before the watchdog: if it ran out first the
        # watchdog finds nothing to keep; if the watchdog came first it kept
        # the switches on and the timer clears them now: the same state.
        if self.dcto_end is not None and self.dcto_end <= now:
            self.dcto_end = None
            self.clear_dcc()
        if not self.sleeping and now - self.last_signal >= T_SLEEP_US:
            self._watchdog()
        p = self.pending
        if p is not None and p[0] <= now:
            self.pending = None
            self._commit(p)
        if self.ready_at is not None and self.ready_at <= now:
            if now - max(self.last_act, self.ready_at) >= T_IDLE_US:
                self.ready_at = None  # the isoSPI port idles

    def _watchdog(self):
        # CFGR0-3 always; CFGR4/5 (DCC, DCTO) only when the discharge timer
        # is not in use. LTC6813 group B: its DCC bits follow CFGR4/5.
        keep = self.dcto_end is not None and self.chain.dten
        for i in range(4):
            self.cfga[i] = CFGA_POR[i]
        b = self.cfgb
        if keep:
            b[0] = (b[0] & 0xF0) | (CFGB_POR[0] & 0x0F)
            b[1] &= 0x03
            for i in range(2, 6):
                b[i] = CFGB_POR[i]
        else:
            self.dcto_end = None
            self.cfga[5] = 0
            self.cfga[4] = 0
            self.cfgb[0:6] = bytearray(CFGB_POR)
            self.chain.world.changed()
        self.touched()
        self.sleeping = True
        self.ready_at = None

    def busy(self, now):
        return self.pending is not None and self.pending[0] > now

    def start(self, done, kind, data):
        self.pending = (done, kind, data)  # a conversion running is replaced

    def set_block(self, block):
        if block != self.dcp_block:
            dcc = self.dcc()
            was = dcc & ~self.dcp_block
            self.dcp_block = block
            if dcc & ~block != was:  # a switch that was on opens (or closes again)
                self.chain.world.changed()

    def _commit(self, p):
        _done, kind, data = p
        self.touched()
        if kind == "cv":
            if type(data) is list:  # all inputs
                self.cv = data
                self._flags(range(len(data)))
            else:
                for i in data:
                    self.cv[i] = data[i]
                self._flags(data)
            self.set_block(0)
        elif kind == "aux":
            for i in data:
                self.aux[i] = data[i]
        elif kind == "stat":
            for i in data:
                self.stat[i] = data[i]

    def _flags(self, inputs):
        # Cells 1-12: C(i)UV in bit 2*(i%4), C(i)OV in bit 2*(i%4)+1 of byte i//4.
        uv = (self.vuv() + 1) * 16
        ov = self.vov() * 16
        cv = self.cv
        flags = self.flags
        for i in inputs:
            if i >= 12:
                continue
            byte, bit = i // 4, 2 * (i % 4)
            f = flags[byte] & ~(3 << bit)
            c = cv[i]
            if c < uv:
                f |= 1 << bit
            if c > ov:
                f |= 2 << bit
            flags[byte] = f


class Ltc681xChain:
    """The daisy chain as one device on the SPI bus (one chip select)."""

    afe = True

    def __init__(self, world, board):
        cfg = board["ltc681x"]
        self.world = world
        self.variant = cfg.get("variant", "ltc6811")
        if self.variant not in ("ltc6811", "ltc6813"):
            raise ValueError("ltc681x variant must be ltc6811 or ltc6813")
        self.inputs = 18 if self.variant == "ltc6813" else 12
        self.n = cfg.get("devices", 1)
        self.bus = cfg["spi"]
        self.cs = cfg["cs"]
        self.wiring = (cfg["sck"], cfg["mosi"])
        self.spi_mode = cfg.get("spi_mode", 3)
        self.dten = cfg.get("dten", True)
        self._map_cells(world.pack.n)
        self._map_gpios(board)
        self.replies = {}  # read command -> the whole chain's reply, while no group changed
        reads = [RDCFGA, RDAUXA, RDAUXB, RDSTATA, RDSTATB, RDCVA, RDCVB, RDCVC, RDCVD]
        if self.inputs > 12:
            reads += [RDCFGB, RDCVE, RDCVF]
        self._read_cmds = set(reads)
        self.devs = [Device(self, d) for d in range(self.n)]
        self.frames = 0  # frames the chain accepted (command PEC good)
        self.rejected = 0  # frames ignored for a bad command PEC
        self.data_rejected = 0  # write groups ignored for a bad data PEC
        self._rx = bytearray()
        self._in_frame = False
        self._reach = 0
        self._cmd = None
        self._reply = None
        self._adv_us = -1  # the instant the devices were last brought up to date

    # -- wiring --

    def _map_cells(self, n):
        if n > self.n * self.inputs:
            raise ValueError("%d cells: the chain measures at most %d" % (n, self.n * self.inputs))
        self.cell_of = []  # per device: pack cell index of each input, or -1
        self._cells_at = []  # per device: (its inputs with a cell as a bit mask, its first pack cell)
        k = 0
        for d in range(self.n):
            share = n // self.n + (1 if d < n % self.n else 0)
            row = [-1] * self.inputs
            self._cells_at.append(((1 << share) - 1, k))
            for i in range(share):
                row[i] = k
                k += 1
            self.cell_of.append(row)

    def _map_gpios(self, board):
        self.gpio = {}  # (device, gpio) -> ("ntc", i, pullup) | ("board", 0, pullup)
        for i, s in enumerate(board.get("ntc") or []):
            self._gpio_entry(s, ("ntc", i, s["pullup"]))
        if board.get("board_ntc"):
            s = board["board_ntc"]
            self._gpio_entry(s, ("board", 0, s["pullup"]))

    def _gpio_entry(self, s, what):
        key = (s["device"], s["gpio"])
        if not 0 <= key[0] < self.n or not 1 <= key[1] <= 5 or key in self.gpio:
            raise ValueError("ltc681x thermistor on device %d GPIO%d: no such pin or used twice" % key)
        self.gpio[key] = what

    def gpio_mv(self, dev, g):
        """Voltage on GPIO g (1..5) of dev now."""
        if not dev.cfga[0] >> (g + 2) & 1:
            return 0.0  # pull-down on
        what = self.gpio.get((dev.index, g))
        if what is None:
            return 0.0
        r = self.world.ntc_ohm(what[1]) if what[0] == "ntc" else self.world.board_ntc_ohm()
        if r == float("inf"):
            return VREF2_MV
        return VREF2_MV * r / (r + what[2])

    # -- what the world asks --

    def now(self):
        return self.world.time_us()

    def advance(self):
        now = self.world.time_us()
        if now != self._adv_us:  # at the same instant nothing new can fall due
            self._adv_us = now
            for dev in self.devs:
                dev.advance(now)
        return now

    def _on_step(self, _dt_ms):
        self.advance()

    def bleed_mask(self):
        self.advance()
        mask = 0
        for dev in self.devs:
            used, first = self._cells_at[dev.index]  # consecutive cells on the lowest inputs
            mask |= (dev.dcc() & ~dev.dcp_block & used) << first
        return mask

    def power_on_reset(self):
        for dev in self.devs:
            dev.power_on()
        self._in_frame = False
        self._rx = bytearray()
        self._cmd = None
        self.world.changed()

    def hw_state(self):
        now = self.advance()
        out = {
            "variant": self.variant,
            "awake": [not d.sleeping and d.ready_at is not None and d.ready_at <= now for d in self.devs],
            "asleep": [d.sleeping for d in self.devs],
            "refon": [d.refon() for d in self.devs],
            "dcc": [d.dcc() for d in self.devs],
            "dcto_left": [d._dcto_left_code(now) for d in self.devs],
            "vuv_mv": [(d.vuv() + 1) * 1.6 for d in self.devs],
            "vov_mv": [d.vov() * 1.6 for d in self.devs],
            "cells_cleared": [d.cv[0] == _FFFF for d in self.devs],
            "converting": [d.busy(now) for d in self.devs],
            "uv_ov_flags": [d.flags[0] | d.flags[1] << 8 | d.flags[2] << 16 for d in self.devs],
            "frames": self.frames,
            "rejected": self.rejected,
        }
        return out

    # -- chip select and bytes --

    def _on_cs(self, level):
        now = self.advance()
        if level == 0:
            self._start_frame(now)
        elif self._in_frame:
            self._end_frame(now)

    def _start_frame(self, now):
        self._in_frame = True
        self._rx = bytearray()
        self._cmd = None
        reach = 0
        for dev in self.devs:
            if dev.sleeping:
                dev.sleeping = False  # waking: the core needs t_WAKE
                dev.ready_at = now + T_WAKE_US
                dev.last_signal = dev.last_act = now
                break
            dev.last_signal = now  # a wake-up signal: the watchdog restarts
            if dev.ready_at is None:
                dev.ready_at = now + T_READY_US  # idle port wakes; this frame is lost
                dev.last_act = now
                break
            if dev.ready_at > now:
                break  # still waking
            dev.last_act = now
            reach += 1
        self._reach = reach

    def _end_frame(self, now):
        self._in_frame = False
        for d in range(self._reach):
            self.devs[d].last_act = now
        cmd = self._cmd
        if cmd in (WRCFGA, WRCFGB):
            self._write(cmd, now)
        self._cmd = None

    def _mode_ok(self):
        buses = getattr(self.world, "spi_buses", None)
        if not buses or self.bus not in buses:
            return True
        return buses[self.bus].get("mode", self.spi_mode) == self.spi_mode

    def spi_transfer(self, tx):
        # Byte k of the frame (counted from the CS falling edge) is the
        # command, its PEC, then data; the command is decoded when its PEC's
        # second byte arrives, and what the chain clocks out from frame byte
        # 4 on is the reply (or the PLADC status) at that byte's position.
        now = self.advance()
        if not self._in_frame:  # CS was already low when the chip came up
            self._start_frame(now)
        n = len(tx)
        if not self._mode_ok():
            return b"\xff" * n  # every bit misread: nothing is a valid command
        rx = self._rx
        pos = len(rx)
        rx.extend(tx)
        end = pos + n
        if pos < 4 <= end:
            self._command(now)
        cmd = self._cmd
        if end <= 4 or cmd is None:
            return b"\xff" * n
        first = pos if pos > 4 else 4  # first frame position past the command
        if cmd == PLADC:
            for d in range(self._reach):
                if self.devs[d].busy(now):
                    out = bytearray(n)  # 0x00 while converting
                    for j in range(first - pos):
                        out[j] = 0xFF
                    return out
            return b"\xff" * n
        rep = self._reply
        if rep is None or first - 4 >= len(rep):
            return b"\xff" * n
        out = bytearray(b"\xff" * n)
        seg = rep[first - 4:end - 4]
        out[first - pos:first - pos + len(seg)] = seg
        return out

    def _command(self, now):
        rx = self._rx
        if self._reach == 0:
            return
        word = rx[0] << 8 | rx[1]
        p = _CMD_PEC.get(word)
        if p is None:
            p = _CMD_PEC[word] = pec15(rx[0:2])
        if p != (rx[2] << 8 | rx[3]):
            self.rejected += 1
            return
        cmd = word  # CMD0 bits 7:3 are 0 in every command: others are unknown
        self.frames += 1
        self._cmd = cmd
        self._reply = None
        if self._is_read(cmd):
            reach = self._reach
            rep = self.replies.get(cmd) if reach == self.n else None
            if rep is None:
                rep = bytearray()
                devs = self.devs
                for d in range(self.n):
                    g = devs[d].reply(cmd, now) if d < reach else None
                    rep += _FF8 if g is None else g
                if reach == self.n and cmd not in _NO_CACHE:
                    self.replies[cmd] = rep
            self._reply = rep
        else:
            self._action(cmd, now)

    def _is_read(self, cmd):
        return cmd in self._read_cmds

    def _write(self, cmd, now):
        if cmd == WRCFGB and self.inputs == 12:
            return  # the LTC6811 has no group B
        data = self._rx[4:]
        if len(data) != 8 * self.n:
            return
        for g in range(self.n):
            d = self.n - 1 - g  # farthest first
            if d >= self._reach:
                continue
            grp = data[8 * g:8 * g + 6]
            if pec15(grp) != (data[8 * g + 6] << 8 | data[8 * g + 7]):
                self.data_rejected += 1
                continue
            if cmd == WRCFGA:
                self.devs[d].write_cfga(grp, now)
            else:
                self.devs[d].write_cfgb(grp, now)

    # -- conversions --

    def _action(self, cmd, now):
        devs = self.devs[:self._reach]
        if cmd == CLRCELL:
            for dev in devs:
                dev.cv = [_FFFF] * self.inputs
                dev.touched()
        elif cmd == CLRAUX:
            for dev in devs:
                dev.aux = [_FFFF] * 6
                dev.touched()
        elif cmd == CLRSTAT:
            for dev in devs:
                dev.stat = [_FFFF] * 4
                dev.flags = bytearray(b"\xff\xff\xff")
                dev.touched()
        elif cmd & 0x668 == 0x260:  # ADCV
            md = (cmd >> 7) & 3
            dcp = (cmd >> 4) & 1
            ch = cmd & 7
            if ch == 7:
                return
            for dev in devs:
                self._adcv(dev, md, dcp, ch, now)
        elif cmd & 0x678 == 0x460:  # ADAX
            chg = cmd & 7
            if chg == 7:
                return  # not ADAX (ADCVSC)
            for dev in devs:
                self._adax(dev, (cmd >> 7) & 3, chg, now)
        elif cmd & 0x678 == 0x468:  # ADSTAT
            chst = cmd & 7
            if chst in (5, 6):  # the chip treats these as ADAX CHG = 5/6
                for dev in devs:
                    self._adax(dev, (cmd >> 7) & 3, chst, now)
            elif chst < 5:
                for dev in devs:
                    self._adstat(dev, (cmd >> 7) & 3, chst, now)
        # PLADC needs nothing here; anything else: not modelled, no effect.

    def _done(self, dev, md, which, now):
        t = _TIMES[(md, dev.adcopt())][which]
        if not dev.refon():
            t += T_REFUP_US
        return now + t

    def _adcv(self, dev, md, dcp, ch, now):
        n = self.inputs
        row = self.cell_of[dev.index]
        mv = self.world.cell_input_mv
        if ch == 0:
            # Switches of the converted cells open first (DCP = 0), then sample.
            dev.set_block(0 if dcp else (1 << n) - 1)
            codes = [0] * n  # shorted inputs read 0
            for i in range(n):
                k = row[i]
                if k >= 0:
                    c = int(mv(k) * 10.0 + 0.5)  # _code(), inline: 24 cells per conversion
                    codes[i] = 0 if c < 0 else (_FFFF - 1 if c >= _FFFF else c)
            dev.start(self._done(dev, md, 0, now), "cv", codes)
            return
        inputs = [i for i in range(ch - 1, n, 6)]
        block = 0
        if not dcp:
            for i in inputs:
                block |= 1 << i
        dev.set_block(block)
        codes = {}
        for i in inputs:
            k = row[i]
            codes[i] = _code(mv(k)) if k >= 0 else 0
        dev.start(self._done(dev, md, 1, now), "cv", codes)

    def _adax(self, dev, md, chg, now):
        dev.set_block(0)
        chans = list(range(6)) if chg == 0 else [chg - 1]
        codes = {}
        for c in chans:
            codes[c] = _code(VREF2_MV) if c == 5 else _code(self.gpio_mv(dev, c + 1))
        dev.start(self._done(dev, md, 0 if chg == 0 else 1, now), "aux", codes)

    def _adstat(self, dev, md, chst, now):
        dev.set_block(0)
        codes = {}
        if chst in (0, 1):
            total = 0.0
            mv = getattr(self.world, "cell_true_mv", None) or self.world.cell_input_mv
            for k in self.cell_of[dev.index]:
                if k >= 0:
                    total += mv(k)
            codes[0] = _code(total / 20.0)
        if chst in (0, 2):
            bt = getattr(self.world, "board_temp", None)
            t = bt() if bt is not None else 25.0
            codes[1] = _code((t + 273.0) * 7.5)  # 7.5 mV/K
        if chst in (0, 3):
            codes[2] = _code(5000.0)  # VREG
        if chst in (0, 4):
            codes[3] = _code(3300.0)  # VREGD
        dev.start(self._done(dev, md, 2 if chst == 0 else 1, now), "stat", codes)


def attach(world, board):
    """Build the board's LTC681x chain, put it on its SPI bus and chip select."""
    chain = Ltc681xChain(world, board)
    world.add_spi_device(chain.bus, chain)
    world.watch_pin(chain.cs, chain._on_cs)
    world.step_hooks.append(chain._on_step)
    return chain
