# The board abstraction: turns a board definition (boards/*.json, deployed
# as /board.json) into machine objects and a front-end driver. The only
# module of the logic package that imports machine.
import json

import machine
from machine import Pin, ADC


def load(path):
    with open(path) as f:
        return json.load(f)


def _off_pin(num, active_high):
    # Created at its inactive level so a FET never glitches on at boot.
    return Pin(num, Pin.OUT, value=0 if active_high else 1)


# ESP32 ADC: attenuation (dB) -> (constant name, top of the usable range in uV)
_ATTEN = {0: ("ATTN_0DB", 950000), 2: ("ATTN_2_5DB", 1250000), 6: ("ATTN_6DB", 1750000), 11: ("ATTN_11DB", 2450000)}


def _adc(num, spec):
    adc = ADC(Pin(num))
    db = spec.get("atten_db")
    if db is not None:
        adc.atten(getattr(ADC, _ATTEN[db][0]))
    return adc


def _adc_max_uv(spec):
    db = spec.get("atten_db")
    return _ATTEN[db][1] if db is not None else spec.get("vref_uv", 3300000)


# Front-end chips: board "afe" -> driver module, each with from_board(b, machine).
_CHIPS = ("bq769x0", "bq769x2", "ltc681x")


def build_afe(b):
    kind = b["afe"]
    if kind == "adc_direct":
        return _adc_direct(b)
    if kind in _CHIPS:
        mod = __import__("bms.drivers." + kind, None, None, [kind])
        return mod.from_board(b, machine)
    raise ValueError("unknown afe '%s' in board %s" % (kind, b.get("name")))


def _adc_direct(b):
    from bms.drivers.adc_direct import AdcDirect, Channel, Linear, Mux
    from bms.ntc import Ntc

    a = b.get("adc", {})
    n = a.get("oversample", 16)
    uv = a.get("read", "uv") == "uv"
    vref = a.get("vref_uv", 3300000)

    top = _adc_max_uv(a)

    def ch(num):
        return Channel(_adc(num, a), n, uv, vref, top)

    inputs = b.get("cell_inputs", "cumulative")
    if inputs not in ("cumulative", "differential"):
        raise ValueError("cell_inputs must be cumulative or differential, not %s" % inputs)
    mx = b.get("mux")
    _check_mux(mx, b["cell_taps"])
    if mx:
        mux = Mux(tuple(Pin(p, Pin.OUT, value=0) for p in mx["select"]), mx.get("settle_us", 20))
        mux_adc = _adc(mx["pin"], a)

    def tap_ch(t):
        if "mux" in t:
            return Channel(mux_adc, n, uv, vref, top, mux, t["mux"])
        return ch(t["pin"])

    taps = [(tap_ch(t), Linear(t["scale"], t.get("offset_mv", 0))) for t in b["cell_taps"]]
    c = b["current"]
    if "ina226" in c:  # a current monitor chip on I2C (it may measure the pack too)
        from bms.drivers.ina226 import from_board_current

        current = from_board_current(b, machine)
    else:
        # mA = (pin mV - zero mV) * ma_per_mv: fold the zero into the offset.
        current = (ch(c["pin"]), Linear(c["ma_per_mv"], -int(c["zero_mv"] * c["ma_per_mv"])))
    pt = b.get("pack_tap")
    if pt and "ina226" in pt:
        if not isinstance(current, tuple) and pt["ina226"] == "bus":
            pack, pack_max_mv = current, 36000 * 99 // 100  # INA226 VBUS: 0-36 V
        else:
            raise ValueError("pack_tap: the INA226 bus input needs the INA226 as current sensor")
    else:
        pack = (ch(pt["pin"]), Linear(pt["scale"], pt.get("offset_mv", 0))) if pt else None
        pack_max_mv = int(top * pt["scale"]) // 1000 * 99 // 100 if pt else 0  # below its saturation

    def ntc(s):
        return ch(s["pin"]), Ntc(s.get("r0", 10000), s.get("beta", 3950), s["pullup"], s.get("vref_mv", 3300),
                                 s.get("t0_c", 25), s.get("steinhart_hart"))

    ntcs = [ntc(s) for s in b.get("ntc", [])]
    board_ntc = ntc(b["board_ntc"]) if b.get("board_ntc") else None
    f = b["fets"]
    hi = f.get("active_high", True)
    pchg = _off_pin(f["precharge"], hi) if f.get("precharge") is not None else None
    bleeders = _bleeders(b.get("balance"))
    pause = b.get("balance_pause_us", 0)
    if type(pause) is not int or not 0 <= pause <= 20000:  # it lengthens every tick
        raise ValueError("balance_pause_us must be an integer 0..20000, not %s" % (pause,))
    al = b.get("alert")
    alert_pin = Pin(al["pin"], Pin.IN) if al else None
    afe = AdcDirect(taps, current, ntcs, board_ntc, _off_pin(f["chg"], hi), _off_pin(f["dsg"], hi),
                    pchg, bleeders, hi, alert_pin, al.get("active_low", True) if al else True, c.get("max_ma", 0),
                    inputs == "differential", pack, pack_max_mv, al.get("trip_ma", 0) if al else 0, pause)
    afe.gates.attach(Pin.IRQ_FALLING, Pin.IRQ_RISING)
    return afe


def _check_mux(mx, taps):
    # A wrong index would read another cell's input in its place: refuse
    # the board file at boot (the FET gates are still undriven, so off).
    used = []
    for k, t in enumerate(taps):
        if "mux" not in t:
            continue
        if not mx:
            raise ValueError("cell_taps[%d] names a mux input but the board has no mux" % k)
        i = t["mux"]
        if not 0 <= i < 1 << len(mx["select"]) or i in used:
            raise ValueError("cell_taps[%d]: mux input %s out of range or used twice" % (k, i))
        used.append(i)


def _bleeders(spec):
    # A list of GPIOs, one per cell, or {"shift595": {...}} for a chain of
    # shift registers on SPI.
    from bms.drivers.adc_direct import PinBleeders, ShiftBleeders

    if not spec:
        return None
    if isinstance(spec, list):
        return PinBleeders([Pin(p, Pin.OUT, value=0) for p in spec])
    sr = spec["shift595"]
    oe = Pin(sr["oe"], Pin.OUT, value=1) if sr.get("oe") is not None else None  # outputs off until cleared
    spi = machine.SPI(sr["spi"], baudrate=sr.get("baudrate", 1000000), sck=Pin(sr["sck"]), mosi=Pin(sr["mosi"]))
    return ShiftBleeders(spi, Pin(sr["latch"], Pin.OUT, value=0), oe, sr["count"])


def console_uart(b):
    c = b["console"]
    # A transmit buffer that holds the longest reply, so uart.write returns
    # at once and a reply never holds up the next tick.
    kw = {"baudrate": c.get("baudrate", 115200), "txbuf": c.get("txbuf", 2048)}
    if "tx" in c:
        kw["tx"] = c["tx"]
        kw["rx"] = c["rx"]
    return machine.UART(c.get("uart", 0), **kw)


def timer():
    # ESP32 needs a hardware timer id; RP2 only has virtual ones (-1).
    import sys

    return machine.Timer(0 if sys.platform == "esp32" else -1)


def watchdog(b):
    # RP2040 refuses more than 8388 ms.
    return machine.WDT(timeout=min(b.get("wdt_ms", 4000), 8000))
