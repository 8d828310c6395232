# ADI LTC6811-1 (and LTC6813-1) daisy chain on SPI (through an LTC6820
# isoSPI bridge), the pack current from a separate monitor (INA226), FETs on
# GPIO, an optional alert pin (the current monitor's over-current output).
#
# Frames: CMD0 CMD1 PEC, then 6 data bytes + PEC per device: writes carry the
# farthest device's group first, reads return the nearest device's first.
# Every group read is checked against its PEC; a group that fails is read
# again at most twice (groups that came through intact are kept), then
# read() raises OSError.
#
# Cells: n cells on D devices: device d carries n // D of them (the lower
# devices one more each while n % D lasts), consecutive, on its lowest
# inputs (C1 up); its upper inputs are shorted on the board. With the
# chain full, cell k (0-based) is input k % C of device k // C.
#
# Each read: CLRCELL and CLRSTAT, then ADCV (7 kHz, DCP = 0: the bleeders
# of a cell are off while it is measured) and, once it has had its
# conversion time, ADSTAT (7 kHz, sum of cells: an independent pack voltage
# taken within a few ms of the cells); each conversion is confirmed by a
# PLADC poll (resent if the chain refused it); codes still at 0xFFFF mean a
# conversion did not happen: no new reading.
# Thermistors: ADAX (GPIO1-5 and the second reference, after CLRAUX) is
# started at the end of a read every _AUX_MS (2 s) and its codes are read
# at the next read, so it converts between ticks and costs no waiting; the
# temperatures are therefore up to _AUX_MS plus one tick old. That is safe:
# a thermistor on a cell or a FET follows with a time constant of many
# seconds to minutes, and the temperature rows have delays of seconds
# (temp_delay_ms); fast faults (shorts, over-current) come from the current
# monitor's alert and the current, which are read every tick. The first
# read after init() converts the GPIOs at once (and waits for them), so a
# reading is never complete without temperatures.
# The configuration register is read back every few reads (and after any
# sign of a reset): REFON, ADCOPT, VUV or VOV back at power-on values means
# the chip slept (its 2 s watchdog) or lost power: ChipReset.
#
# The chips' watchdog: without a wake-up signal for 2 s a device resets its
# configuration and sleeps; balancing therefore also carries a discharge
# timeout (DCTO), so with the board's DTEN pin high the bleeders stop within
# 30 s if the MCU stops talking (within 2 s if DTEN is low).
import time
from array import array
from micropython import const

from bms.afe import Afe, ChipReset, NTC_OK, NTC_OPEN, NTC_SHORT, HW_SCD
from bms.drivers.crc import pec15
from bms.drivers.gpio_fets import GpioFets
from bms.ntc import OPEN_DC, SHORT_DC

_WRCFGA = const(0x001)
_RDCFGA = const(0x002)
_WRCFGB = const(0x024)
_RDCFGB = const(0x026)
_RDCVA = const(0x004)
_RDCVB = const(0x006)
_RDCVC = const(0x008)
_RDCVD = const(0x00A)
_RDCVE = const(0x009)
_RDCVF = const(0x00B)
_RDAUXA = const(0x00C)
_RDAUXB = const(0x00E)
_RDSTATA = const(0x010)
_CLRCELL = const(0x711)
_CLRAUX = const(0x712)
_CLRSTAT = const(0x713)
_PLADC = const(0x714)

_MD = const(2)  # 7 kHz (normal) mode with ADCOPT = 0
_ADCV = const(0x260 | (_MD << 7))  # DCP = 0, CH = 0: all cells
_ADAX = const(0x460 | (_MD << 7))  # CHG = 0: GPIO1-5 and the 2nd reference
_ADSTAT_SC = const(0x468 | (_MD << 7) | 1)  # CHST = 1: sum of cells only
# Conversion times at 7 kHz (2.3 ms all cells / all GPIOs, 405 us one
# status item) with some margin.
_T_CV_US = const(2600)
_T_AUX_US = const(2600)
_T_SC_US = const(500)
_AUX_MS = const(2000)  # the GPIOs (thermistors) are converted this often
_AUX_WAIT_MS = const(4)  # a GPIO conversion started this many ms ago is done (2.3 ms with REFON)
_AUX_NONE = const(0)  # no temperatures since init(): convert and wait in this read
_AUX_IDLE = const(1)  # temperatures in hand, no GPIO conversion running
_AUX_RUNNING = const(2)  # a GPIO conversion started at an earlier read

_T_WAKE_US = const(450)  # per device, from SLEEP (t_WAKE 400 us)
_T_READY_US = const(15)  # per device, from an idle isoSPI port (t_READY 10 us)
_IDLE_MS = const(3)  # silence after which a port may be idle (t_IDLE >= 4.3 ms)
_SLEEP_MS = const(1500)  # silence after which a device may sleep (t_SLEEP >= 1.8 s)

_REFON = const(0x04)
_CFG0 = const(0xF8 | _REFON)  # GPIO1-5 pull-downs off, REFON, ADCOPT = 0
_DCTO = const(1)  # 0.5 min discharge timeout while balancing
_REFRESH_MS = const(10000)  # rewrite the DCC bits (restarting DCTO) this often
_CHECK_EVERY = const(4)  # reads between configuration checks
_CURRENT_STALE_MS = const(1000)
_TRIES = const(3)  # a group read and at most two retries
_ERR_CAP = const(0x3FFFFFFF)
_EIO = const(5)


def _ntc_status(t):
    if t == OPEN_DC:
        return NTC_OPEN
    return NTC_SHORT if t == SHORT_DC else NTC_OK


class Ltc681x(Afe):
    def __init__(self, spi, cs, devices, current, chg_pin, dsg_pin, pchg_pin=None, active_high=True,
                 alert_pin=None, alert_active_low=True, ntcs=(), board_ntc=None, variant="ltc6811",
                 alert_ma=0, sleep_us=None, ticks_ms=None):
        """spi: machine.SPI in mode 3; cs: chip-select Pin (output, high);
        devices: chips in the chain; current: the current monitor (the
        Ina226 API) or None; ntcs: [(device, gpio 1..5, Ntc)] with the
        Ntc built for vref_mv=3000 (VREF2); board_ntc: one such tuple or
        None; alert_ma: the board's over-current trip for the current
        monitor's alert (0: twice ocd2_ma). sleep_us/ticks_ms: the clock
        (time.sleep_us/time.ticks_ms unless a test gives its own)."""
        if variant not in ("ltc6811", "ltc6813"):
            raise ValueError("variant must be ltc6811 or ltc6813")
        if devices < 1:
            raise ValueError("a chain has at least one device")
        self.spi = spi
        self.cs = cs
        self.n_dev = devices
        self.inputs = 18 if variant == "ltc6813" else 12
        self.variant = variant
        self.current = current
        self.ntcs = ntcs
        self.board_ntc = board_ntc
        for dev, gpio, _ntc in tuple(ntcs) + ((board_ntc,) if board_ntc is not None else ()):
            if not 0 <= dev < devices or not 1 <= gpio <= 5:
                raise ValueError("thermistor on device %d GPIO%d: no such pin" % (dev, gpio))
        self.alert_ma = alert_ma
        self._sleep_us = sleep_us if sleep_us is not None else time.sleep_us
        self._ticks = ticks_ms if ticks_ms is not None else time.ticks_ms

        self.max_cells = devices * self.inputs
        self.n_cells = self.max_cells
        self.n_temps = len(ntcs)
        self.has_board_temp = board_ntc is not None
        self.has_precharge = pchg_pin is not None
        self.can_balance = True
        self.no_adjacent_balancing = False
        self.pack_measured = True  # sum of cells (ADSTAT), apart from the cell codes
        self.pack_max_mv = devices * self.inputs * 5000  # every input at its 5 V full scale
        self.current_max_ma = current.current_max_ma if current is not None else 0
        self.crc_errors = 0
        self.bus_errors = 0

        n = 4 + 8 * devices
        self._tx = bytearray(b"\xff" * n)  # command + PEC, then always 0xFF (clocks the reply out)
        self._rx = bytearray(n)
        self._wtx = bytearray(n)  # write frames
        self._tx4 = memoryview(self._tx)[0:4]
        self._rx4 = memoryview(self._rx)[0:4]
        self._tx5 = memoryview(self._tx)[0:5]  # PLADC and one poll byte
        self._rx5 = memoryview(self._rx)[0:5]
        self._hold = bytearray(n)  # groups that came through intact, while a read is retried
        self._have = bytearray(devices)
        # The PEC of every command this driver sends, computed once (the
        # data PECs are computed per frame).
        self._pecs = {}
        hdr = bytearray(2)
        for c in (_WRCFGA, _RDCFGA, _WRCFGB, _RDCFGB, _RDCVA, _RDCVB, _RDCVC, _RDCVD, _RDCVE, _RDCVF,
                  _RDAUXA, _RDAUXB, _RDSTATA, _CLRCELL, _CLRAUX, _CLRSTAT, _PLADC, _ADCV, _ADAX, _ADSTAT_SC):
            hdr[0] = c >> 8
            hdr[1] = c & 0xFF
            self._pecs[c] = pec15(hdr, 0, 2)
        self._cv_cmds = bytearray((_RDCVA, _RDCVB, _RDCVC, _RDCVD, _RDCVE, _RDCVF))
        self._all = (1 << self.max_cells) - 1
        self._cfg = bytearray(6 * devices)  # CFGA wanted per device (device 0 first)
        self._cfgb = bytearray(6 * devices)  # LTC6813 CFGB
        self._cell_of = array("h", [-1] * (devices * self.inputs))  # input -> cell index
        self._gv = array("i", [0] * (6 * devices))  # G1V..G5V, REF codes per device
        self._vuv = 0
        self._vov = 0
        self._mask = 0
        self._bal_dirty = False
        self._bal_ms = 0
        self._asleep = True  # unknown: wake it as from sleep
        self._last_ms = 0
        self._reads = 0
        self._check_due = True
        self._cur_ms = 0
        self._aux = _AUX_NONE
        self._aux_ms = 0
        self._map(self.max_cells)
        self._set_cfg()

        self.gates = GpioFets(chg_pin, dsg_pin, pchg_pin, active_high, alert_pin, alert_active_low)

    # ---- set-up ----------------------------------------------------------------

    def _write_cfg_checked(self):
        # Wake the chain, write every device's configuration, read it back.
        self._wake()
        for _ in range(_TRIES):
            self._write_cfg()
            if self._cfg_matches():
                break
        else:
            raise OSError(_EIO)
        self._last_ms = self._ticks()

    def _map(self, n):
        c = self._cell_of
        for i in range(len(c)):
            c[i] = -1
        k = 0
        for d in range(self.n_dev):
            share = n // self.n_dev + (1 if d < n % self.n_dev else 0)
            for i in range(share):
                c[d * self.inputs + i] = k
                k += 1

    def _set_cfg(self):
        # CFGA of every device from the wanted thresholds and bleeders.
        cfg = self._cfg
        vuv = self._vuv
        vov = self._vov
        mask = self._mask
        inp = self.inputs
        co = self._cell_of
        for d in range(self.n_dev):
            dcc = 0
            for i in range(inp):
                k = co[d * inp + i]
                if k >= 0 and (mask >> k) & 1:
                    dcc |= 1 << i
            o = 6 * d
            cfg[o] = _CFG0
            cfg[o + 1] = vuv & 0xFF
            cfg[o + 2] = (vov & 0x0F) << 4 | vuv >> 8
            cfg[o + 3] = vov >> 4
            cfg[o + 4] = dcc & 0xFF
            cfg[o + 5] = ((_DCTO << 4) if dcc else 0) | (dcc >> 8) & 0x0F
            if inp > 12:
                b = self._cfgb
                b[o] = (dcc >> 12 & 0x0F) << 4 | 0x0F  # DCC16-13, GPIO9-6 pull-downs off
                b[o + 1] = dcc >> 16 & 0x03  # DCC18, DCC17
                b[o + 2] = b[o + 3] = b[o + 4] = b[o + 5] = 0

    def init(self, n_cells):
        if not self.n_dev <= n_cells <= self.max_cells:
            raise ValueError("this chain measures %d..%d cells" % (self.n_dev, self.max_cells))
        self.set_fets(False, False)
        self.n_cells = n_cells
        self._mask = 0
        self._all = (1 << n_cells) - 1
        self._map(n_cells)
        self._set_cfg()
        self._asleep = True
        self._write_cfg_checked()
        self._bal_dirty = False
        self._bal_ms = self._last_ms
        self._reads = 0
        self._check_due = False
        self._aux = _AUX_NONE
        if self.current is not None:
            self.current.init()
            self.current_max_ma = self.current.current_max_ma
        self._cur_ms = self._ticks()
        self.set_fets(False, False)

    def _cfg_matches(self):
        # True if every device holds the wanted configuration (the GPIO
        # bits read pin levels, bit 1 the DTEN pin, DCTO the time left:
        # those are not compared).
        self._read(_RDCFGA)
        rx = self._rx
        cfg = self._cfg
        for d in range(self.n_dev):
            o = 4 + 8 * d
            w = 6 * d
            if (rx[o] ^ cfg[w]) & 0x05 or rx[o + 1] != cfg[w + 1] or rx[o + 2] != cfg[w + 2] \
                    or rx[o + 3] != cfg[w + 3] or rx[o + 4] != cfg[w + 4] or (rx[o + 5] ^ cfg[w + 5]) & 0x0F:
                return False
        if self.inputs > 12:
            self._read(_RDCFGB)
            b = self._cfgb
            for d in range(self.n_dev):
                o = 4 + 8 * d
                w = 6 * d
                if (rx[o] ^ b[w]) & 0xF0 or (rx[o + 1] ^ b[w + 1]) & 0x03:
                    return False
        return True

    def configure_protection(self, cfg):
        """The current monitor's alert (the board's trip, else twice
        ocd2_ma) and the chips' own UV/OV comparison levels (their flags
        are not acted on: the LTC681x drives no FET)."""
        trip = self.alert_ma if self.alert_ma else 2 * cfg["ocd2_ma"]
        if self.current is not None:
            self.current.set_alert_ma(trip)
        vov = (cfg["cell_ov_mv"] * 10 + 8) // 16  # V_OV = VOV x 1.6 mV
        vuv = (cfg["cell_uv_mv"] * 10 + 8) // 16 - 1  # V_UV = (VUV + 1) x 1.6 mV
        self._vov = min(max(vov, 0), 0xFFF)
        self._vuv = min(max(vuv, 0), 0xFFF)
        self._set_cfg()
        self._write_cfg_checked()
        return {
            "alert_ma": trip if self.current is not None else 0,
            "cell_ov_mv": (self._vov * 16 + 5) // 10,
            "cell_uv_mv": ((self._vuv + 1) * 16 + 5) // 10,
        }

    # ---- link ----------------------------------------------------------------

    def _xfer(self, tx, rx):
        # One frame. _last_ms (the last activity the chain saw) is set by
        # each public operation as it ends, not per frame: an operation
        # lasts milliseconds, the chain idles after 4.3 ms at the earliest
        # and sleeps after 1.8 s, and _wake() only needs it at the start of
        # the next operation.
        cs = self.cs
        cs.value(0)
        try:
            self.spi.write_readinto(tx, rx)
        finally:
            cs.value(1)

    def _wake(self):
        # A CS pulse per device (the LTC6820 turns each edge into a long
        # isoSPI pulse; no byte is needed): each passes the awake devices
        # and wakes the next. From sleep each needs t_WAKE, an idle port
        # t_READY.
        gap = time.ticks_diff(self._ticks(), self._last_ms)
        if self._asleep or gap >= _SLEEP_MS:
            wait = _T_WAKE_US
            self._check_due = True  # it may have slept: look at its configuration
        elif gap >= _IDLE_MS:
            wait = _T_READY_US
        else:
            return
        cs = self.cs
        for _ in range(self.n_dev):
            cs.value(0)
            cs.value(1)
            self._sleep_us(wait)
        self._asleep = False
        self._last_ms = self._ticks()

    def _put_cmd(self, buf, cmd):
        buf[0] = cmd >> 8
        buf[1] = cmd & 0xFF
        p = self._pecs[cmd]
        buf[2] = p >> 8
        buf[3] = p & 0xFF

    def _command(self, cmd):
        self._put_cmd(self._tx, cmd)
        self._xfer(self._tx4, self._rx4)

    def _convert(self, cmd):
        # Start a conversion and make sure it started: right after it,
        # PLADC reads 0x00 while a device converts. A command the chain
        # refused (its PEC hit on the line) shows no conversion: send it
        # again, counted as a CRC error; after the retries, OSError.
        # The conversion times are far longer than these two frames.
        tx = self._tx
        for _ in range(_TRIES):
            self._command(cmd)
            self._put_cmd(tx, _PLADC)
            self._xfer(self._tx5, self._rx5)
            if self._rx[4] != 0xFF:
                return
            # Refused, or a chain that does not answer at all? One group
            # read tells: a silent chain leaves MISO high.
            if self._silent():
                if self.bus_errors < _ERR_CAP:
                    self.bus_errors += 1
                self._asleep = True
                self._wake()
            elif self.crc_errors < _ERR_CAP:
                self.crc_errors += 1
        raise OSError(_EIO)

    def _silent(self):
        tx = self._tx
        self._put_cmd(tx, _RDCFGA)
        rx = self._rx
        self._xfer(tx, rx)
        for i in range(4, len(rx)):
            if rx[i] != 0xFF:
                return False
        return True

    def _write_cfg(self):
        self._write(_WRCFGA, self._cfg)
        if self.inputs > 12:
            self._write(_WRCFGB, self._cfgb)

    def _write(self, cmd, data):
        tx = self._wtx
        self._put_cmd(tx, cmd)
        n = self.n_dev
        for g in range(n):
            d = n - 1 - g  # the farthest device's group goes first
            o = 4 + 8 * g
            for j in range(6):
                tx[o + j] = data[6 * d + j]
            p = pec15(tx, o, o + 6)
            tx[o + 6] = p >> 8
            tx[o + 7] = p & 0xFF
        self._xfer(tx, self._rx)

    def _read(self, cmd):
        """Read one register group of every device into self._rx (device d
        at 4 + 8 d), each group checked against its PEC. A frame with a bad
        group is read again (the whole frame: an LTC681x-1 chain has no
        per-device reads) at most twice; groups that came through intact
        are kept, so the read is complete as soon as every device's group
        has arrived intact in one of the frames (the registers do not change
        between them). Otherwise OSError."""
        tx = self._tx
        self._put_cmd(tx, cmd)  # bytes 4.. of _tx are always 0xFF
        rx = self._rx
        hold = self._hold
        have = self._have  # per device: 2 intact in this frame, 1 intact in hold
        n = self.n_dev
        for d in range(n):
            have[d] = 0
        for _ in range(_TRIES):
            self._xfer(tx, rx)
            bad = 0
            for d in range(n):
                o = 4 + 8 * d
                if pec15(rx, o, o + 6) == (rx[o + 6] << 8 | rx[o + 7]):
                    have[d] |= 2
                    continue
                quiet = True
                for j in range(o, o + 8):
                    if rx[j] != 0xFF:
                        quiet = False
                bad = 2 if quiet and bad != 1 else 1
            if not bad:
                return
            if bad == 2:
                # Nobody drove MISO: asleep, or not there. Wake it before
                # the retry; its configuration is then suspect.
                if self.bus_errors < _ERR_CAP:
                    self.bus_errors += 1
                self._asleep = True
            elif self.crc_errors < _ERR_CAP:
                self.crc_errors += 1
            complete = True
            for d in range(n):
                h = have[d]
                if h & 2:
                    o = 4 + 8 * d
                    for j in range(o, o + 8):
                        hold[j] = rx[j]
                    have[d] = 1
                elif not h:
                    complete = False
            if complete:
                for j in range(4, len(rx)):
                    rx[j] = hold[j]
                return
            if self._asleep:
                self._wake()
        raise OSError(_EIO)

    def _check_config(self):
        # ChipReset if a device is back at power-on values; bleeders that
        # differ from what was written (a write lost on the line) are
        # written again by the next set_balancing.
        self._check_due = False
        self._reads = 0
        self._read(_RDCFGA)
        rx = self._rx
        cfg = self._cfg
        for d in range(self.n_dev):
            o = 4 + 8 * d
            w = 6 * d
            if (rx[o] ^ cfg[w]) & 0x05 or rx[o + 1] != cfg[w + 1] or rx[o + 2] != cfg[w + 2] \
                    or rx[o + 3] != cfg[w + 3]:
                self._asleep = True
                raise ChipReset("LTC681x configuration lost")
            if rx[o + 4] != cfg[w + 4] or (rx[o + 5] ^ cfg[w + 5]) & 0x0F:
                self._bal_dirty = True

    # ---- per tick ----------------------------------------------------------------

    def read(self, m):
        try:
            return self._read_all(m)
        finally:
            self._last_ms = self._ticks()

    def _read_all(self, m):
        self._wake()
        self._reads += 1
        if self._check_due or self._reads >= _CHECK_EVERY:
            self._check_config()
        sleep = self._sleep_us
        now = self._ticks()
        if self._aux == _AUX_RUNNING:
            # The GPIO conversion started at an earlier read: done unless
            # this read follows within its conversion time.
            if time.ticks_diff(now, self._aux_ms) < _AUX_WAIT_MS:
                sleep(_T_AUX_US)
            self._aux = _AUX_NONE  # until its codes are in
            if not self._temps(m):
                # No conversion happened: a chip that reset (no REFON:
                # slower, or it slept) shows in its configuration.
                self._check_config()
                return False
            self._aux = _AUX_IDLE
        self._command(_CLRCELL)
        self._command(_CLRSTAT)
        self._convert(_ADCV)
        sleep(_T_CV_US)
        self._convert(_ADSTAT_SC)  # converts while the cell codes are read
        if not self._cells(m):
            self._check_config()
            return False
        sleep(_T_SC_US)
        self._read(_RDSTATA)
        rx = self._rx
        pack = 0
        for d in range(self.n_dev):
            o = 4 + 8 * d
            soc = rx[o] | rx[o + 1] << 8
            if soc == 0xFFFF:
                self._check_config()
                return False
            pack += soc * 2  # SOC x 20 x 100 uV
        m.pack_mv = pack
        if self._aux == _AUX_NONE:
            # No temperatures since init() (or the last ones failed): now.
            self._command(_CLRAUX)
            self._convert(_ADAX)
            sleep(_T_AUX_US)
            if not self._temps(m):
                self._check_config()
                return False
            self._aux = _AUX_IDLE
            self._aux_ms = now
        elif self._aux == _AUX_IDLE and time.ticks_diff(now, self._aux_ms) >= _AUX_MS:
            # Converts until the next read, which takes its codes.
            self._command(_CLRAUX)
            self._convert(_ADAX)
            self._aux = _AUX_RUNNING
            self._aux_ms = now
        fresh = True
        cur = self.current
        if cur is not None:
            now = self._ticks()
            if cur.read():
                self._cur_ms = now
            elif time.ticks_diff(now, self._cur_ms) > _CURRENT_STALE_MS:
                fresh = False  # the current monitor stopped converting
            m.current_ma = cur.current_ma
            if cur.alert:
                self.gates.latch[0] = 1
        else:
            m.current_ma = 0
        g = self.gates
        if g.asserted():
            g.drive(False, False, False)
        m.hw_faults = HW_SCD if g.latch[0] else 0
        return fresh

    def _cells(self, m):
        cells = m.cells_mv
        co = self._cell_of
        inp = self.inputs
        groups = 6 if inp > 12 else 4
        rx = self._rx
        for g in range(groups):
            self._read(self._cv_cmds[g])
            for d in range(self.n_dev):
                o = 4 + 8 * d
                for j in range(3):
                    k = co[d * inp + 3 * g + j]
                    if k < 0:
                        continue
                    code = rx[o + 2 * j] | rx[o + 2 * j + 1] << 8
                    if code == 0xFFFF:
                        return False
                    cells[k] = (code + 5) // 10
        return True

    def _temps(self, m):
        aux = self._gv
        rx = self._rx
        for half in range(2):
            self._read(_RDAUXB if half else _RDAUXA)
            for d in range(self.n_dev):
                o = 4 + 8 * d
                for j in range(3):
                    aux[6 * d + 3 * half + j] = rx[o + 2 * j] | rx[o + 2 * j + 1] << 8
        for i in range(self.n_temps):
            d, g, ntc = self.ntcs[i]
            code = aux[6 * d + g - 1]
            if code == 0xFFFF:
                return False
            t = ntc.convert((code + 5) // 10)
            m.temps_dc[i] = t
            m.temp_status[i] = _ntc_status(t)
        if self.board_ntc is not None:
            d, g, ntc = self.board_ntc
            code = aux[6 * d + g - 1]
            if code == 0xFFFF:
                return False
            t = ntc.convert((code + 5) // 10)
            m.board_dc = t
            m.board_status = _ntc_status(t)
        return True

    def set_balancing(self, mask):
        mask &= self._all  # bits past the last cell bleed nothing
        now = self._ticks()
        if mask == self._mask and not self._bal_dirty:
            if not mask or time.ticks_diff(now, self._bal_ms) < _REFRESH_MS:
                return
        self._mask = mask
        self._set_cfg()
        self._wake()
        self._write_cfg()  # no reply to check: the next configuration check reads it back
        self._last_ms = now
        self._bal_ms = now
        self._bal_dirty = False
        self._check_due = True

    # ---- FETs and the alert (gpio_fets, shared with adc_direct) -------------------

    def alert_handler(self):
        """The callable to attach to the alert pin's IRQ."""
        return self.gates.handler()

    def set_fets(self, chg, dsg, pchg=False):
        self.gates.set(chg, dsg, pchg)

    def clear_faults(self):
        # The current monitor's latch first, then the pin: an alert still
        # asserting (or a monitor that cannot be asked) keeps the fault.
        gone = True
        if self.current is not None:
            try:
                gone = self.current.clear_alert()
            except OSError:
                gone = False
        return self.gates.release(not gone)

    def shutdown(self):
        # FETs off, bleeders off; the chips sleep by themselves 2 s after
        # the last frame (their watchdog).
        self.set_fets(False, False)
        self._bal_dirty = True
        self.set_balancing(0)


def from_board(b, machine, sleep_us=None, ticks_ms=None):
    """Build the chain from board["ltc681x"]: FET pins at their off level
    first, then chip select (high), SPI mode 3, the current monitor and the
    alert interrupt. sleep_us/ticks_ms: see Ltc681x."""
    from bms.ntc import Ntc

    Pin = machine.Pin
    f = b["fets"]
    hi = f.get("active_high", True)
    off = 0 if hi else 1
    chg = Pin(f["chg"], Pin.OUT, value=off)
    dsg = Pin(f["dsg"], Pin.OUT, value=off)
    pchg = Pin(f["precharge"], Pin.OUT, value=off) if f.get("precharge") is not None else None
    c = b["ltc681x"]
    cs = Pin(c["cs"], Pin.OUT, value=1)
    spi = machine.SPI(c["spi"], baudrate=c.get("baudrate", 1000000), polarity=1, phase=1,
                      sck=Pin(c["sck"]), mosi=Pin(c["mosi"]), miso=Pin(c["miso"]))

    def ntc(s):
        return (s["device"], s["gpio"], Ntc(s.get("r0", 10000), s.get("beta", 3950), s["pullup"], 3000,
                                            s.get("t0_c", 25), s.get("steinhart_hart")))

    ntcs = [ntc(s) for s in b.get("ntc", [])]
    board_ntc = ntc(b["board_ntc"]) if b.get("board_ntc") else None
    from bms.drivers.ina226 import from_board_current

    current = from_board_current(b, machine)
    al = b.get("alert")
    alert_pin = Pin(al["pin"], Pin.IN) if al else None
    trip = al.get("trip_ma", 0) if al and al.get("source") == "ina226" else 0
    afe = Ltc681x(spi, cs, c.get("devices", 1), current, chg, dsg, pchg, hi, alert_pin,
                  al.get("active_low", True) if al else True, ntcs, board_ntc, c.get("variant", "ltc6811"), trip,
                  sleep_us, ticks_ms)
    afe.gates.attach(Pin.IRQ_FALLING, Pin.IRQ_RISING)
    return afe
