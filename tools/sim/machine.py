"""Simulated `machine` module (ESP32 port flavour) for host tests and run.py.

On MicroPython, this file on MICROPYPATH replaces the built-in `machine`;
on CPython, tests put tools/sim on sys.path. Either way the firmware's
`import machine` gets this module.

Every peripheral talks to the SimWorld attached with `machine.attach(world)`
(see simworld.py); constructing a peripheral with no world attached raises
RuntimeError. Only the API the firmware uses is provided, with the ESP32
port's signatures, constants and quirks:

- Pin.PULL_UP is 2 and PULL_DOWN 1; `mode`/`pull` of -1 (or mode None) leave
  the pin's configuration alone; `value=` is keyword-only.
- Pin.irq() on the ESP32 has no `hard` argument (handlers are always
  scheduled); passing it raises TypeError like the board does.
- ADC channels start at ATTN_0DB (0..950 mV) until atten() is called.
- Timer(id) with hard=True raises ValueError; one object per hardware id.
- I2C errors raise OSError(ENODEV) on the ESP32 (EIO on other ports) when
  the address is not acknowledged; SPI reads 0xFF where no chip drives MISO.
"""

import simworld
from simworld import (  # noqa: F401  (re-exported for the firmware)
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
    BoardReset,
    WatchdogReset,
)

# The SimWorld the peripherals act on; set it with attach().
world = None


def attach(w):
    """Make w (a SimWorld, or None) the hardware behind this module."""
    global world
    world = w
    return w


def _world():
    if world is None:
        raise RuntimeError("simulated machine: no SimWorld attached (call machine.attach(world) first)")
    return world


def _pin_id(pin):
    # Peripherals accept a Pin or a GPIO number, like the ESP32 port.
    if isinstance(pin, Pin):
        return pin.id
    return int(pin)


_NO_VALUE = object()  # Pin.value() called without an argument


class Pin:
    IN = simworld.PIN_IN
    OUT = simworld.PIN_OUT
    OPEN_DRAIN = simworld.PIN_OPEN_DRAIN
    PULL_UP = simworld.PIN_PULL_UP
    PULL_DOWN = simworld.PIN_PULL_DOWN
    IRQ_RISING = simworld.PIN_IRQ_RISING
    IRQ_FALLING = simworld.PIN_IRQ_FALLING

    def __init__(self, id, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self._w = _world()
        self.id = _pin_id(id)
        self._w.check_pin(self.id)
        if mode not in (-1, None) or pull != -1 or value is not None:
            self._w.configure_pin(self.id, mode, pull, value)

    def init(self, mode=-1, pull=-1, *, value=None, drive=None, hold=None):
        self._w.configure_pin(self.id, mode, pull, value)

    # A default instead of *args: a star-args call allocates a tuple, which
    # a hard IRQ must not do (the real Pin.value is C and allocates nothing).
    def value(self, v=_NO_VALUE):
        if v is not _NO_VALUE:
            self._w.write_pin(self.id, v)
            return None
        return self._w.read_pin(self.id)

    def __call__(self, v=_NO_VALUE):
        if v is not _NO_VALUE:
            self._w.write_pin(self.id, v)
            return None
        return self._w.read_pin(self.id)

    def on(self):
        self._w.write_pin(self.id, 1)

    def off(self):
        self._w.write_pin(self.id, 0)

    def toggle(self):
        self._w.write_pin(self.id, 1 - self._w.pin_latch.get(self.id, 0))

    def irq(self, handler=None, trigger=IRQ_FALLING | IRQ_RISING, *, wake=None, hard=None):
        """Register handler(pin) for edges in `trigger`; None removes it.

        The world calls the handler with this very Pin object. On non-ESP32
        boards hard=True makes the world lock the heap around the call.
        """
        if hard is not None and self._w.esp32:
            raise TypeError("unexpected keyword argument 'hard' (ESP32 Pin.irq has no hard=; its handlers are always scheduled)")
        self._w.set_pin_irq(self, handler, trigger, bool(hard))
        return _PinIRQ(self)

    # GPIOs are singletons on the chip: two Pin(16) objects are "the same".
    def __eq__(self, other):
        return isinstance(other, Pin) and other.id == self.id

    def __hash__(self):
        return self.id

    def __repr__(self):
        return "Pin(%d)" % self.id


class _PinIRQ:
    # What Pin.irq() returns; kept minimal.
    def __init__(self, pin):
        self._pin = pin

    def trigger(self):
        entry = self._pin._w.pin_irq.get(self._pin.id)
        return entry[2] if entry else 0


class ADC:
    ATTN_0DB = simworld.ATTN_0DB
    ATTN_2_5DB = simworld.ATTN_2_5DB
    ATTN_6DB = simworld.ATTN_6DB
    ATTN_11DB = simworld.ATTN_11DB

    def __init__(self, pin, *, atten=-1):
        self._w = _world()
        self._pin = _pin_id(pin)
        self._w.adc_init(self._pin, atten)

    def atten(self, atten):
        self._w.adc_set_atten(self._pin, atten)

    def read_uv(self):
        """Calibrated voltage at the pin in µV (1 mV steps), clamped to the
        attenuation's range."""
        return self._w.adc_read_uv(self._pin)

    def read_u16(self):
        """0..65535 for 0..3300 mV (after the attenuation clamp)."""
        return self._w.adc_read_u16(self._pin)

    def __repr__(self):
        return "ADC(Pin(%d), atten=%d)" % (self._pin, self._w.adc_atten.get(self._pin, 0))


class Timer:
    """Timer on the world's virtual ms clock; callback(timer) runs from
    world.advance() (i.e. from machine.idle()), like a scheduled callback."""

    ONE_SHOT = simworld.TIMER_ONE_SHOT
    PERIODIC = simworld.TIMER_PERIODIC

    def __init__(self, id=-1, *args, **kw):
        self._w = _world()
        if self._w.esp32 and not -1 <= id < simworld._ESP32_HW_TIMERS:
            raise ValueError("invalid Timer number, max %d" % simworld._ESP32_HW_TIMERS)
        self.id = id
        self._period = 0
        self._periodic = True
        self._callback = None
        self._deadline = 0
        self._seq = 0
        if args or kw:  # like the port: arguments beyond id mean init()
            self.init(*args, **kw)

    def init(self, *, mode=PERIODIC, callback=None, period=0xFFFFFFFF, tick_hz=1000, freq=None, hard=False):
        if hard and self._w.esp32:
            raise ValueError("hard Timers are not implemented")
        if freq is not None:
            period_ms = int(1000 / freq + 0.5)
        else:
            period_ms = period * 1000 // tick_hz
        if period_ms < 1:
            raise ValueError("period too small for the simulated 1 ms clock")
        self._period = period_ms
        self._periodic = mode != simworld.TIMER_ONE_SHOT
        self._callback = callback
        self._w.arm_timer(self)

    def deinit(self):
        self._w.disarm_timer(self)

    def __repr__(self):
        mode = "PERIODIC" if self._periodic else "ONE_SHOT"
        return "Timer(%d, mode=%s, period=%d)" % (self.id, mode, self._period)


_ESP32_SPI_PINS = {1: (14, 13, 12), 2: (18, 23, 19)}  # (sck, mosi, miso)


class SPI:
    """SPI controller on the world's bus `id`; chip models (devices.py) sit
    on the bus and see the bytes while their chip select is low."""

    MSB = 0
    LSB = 1

    def __init__(self, id, baudrate=1000000, *, polarity=0, phase=0, bits=8, firstbit=0,
                 sck=None, mosi=None, miso=None):
        self._w = _world()
        self.id = id
        self.init(baudrate, polarity=polarity, phase=phase, bits=bits, firstbit=firstbit,
                  sck=sck, mosi=mosi, miso=miso)

    def init(self, baudrate=1000000, *, polarity=0, phase=0, bits=8, firstbit=0, sck=None, mosi=None, miso=None):
        if bits != 8 or firstbit != SPI.MSB:
            raise ValueError("only 8-bit MSB-first transfers are simulated")
        self.baudrate = baudrate
        self.polarity = polarity
        self.phase = phase
        # Pins not given: the port's defaults for this SPI host (ESP32:
        # SPI(1) is HSPI on 14/13/12, SPI(2) is VSPI on 18/23/19).
        dflt = _ESP32_SPI_PINS.get(self.id, (None, None, None)) if self._w.esp32 else (None, None, None)
        pins = [dflt[i] if p is None else _pin_id(p) for i, p in enumerate((sck, mosi, miso))]
        self._w.spi_buses[self.id] = {"sck": pins[0], "mosi": pins[1], "miso": pins[2], "mode": polarity * 2 + phase}

    def deinit(self):
        self._w.spi_buses.pop(self.id, None)

    def write(self, buf):
        self._w.spi_transfer(self.id, buf)

    def read(self, nbytes, write=0x00):
        return self._w.spi_transfer(self.id, bytes([write]) * nbytes)

    def readinto(self, buf, write=0x00):
        rx = self._w.spi_transfer(self.id, bytes([write]) * len(buf))
        buf[0:len(buf)] = rx

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError("buffers must be the same length")
        rx = self._w.spi_transfer(self.id, write_buf)
        read_buf[0:len(read_buf)] = rx


def _mem_header(memaddr, addrsize):
    if addrsize not in (8, 16):
        raise ValueError("addrsize must be 8 or 16")
    if addrsize == 16:
        return bytes(((memaddr >> 8) & 0xFF, memaddr & 0xFF))
    return bytes((memaddr & 0xFF,))


class I2C:
    """I2C controller on the world's bus `id`; chip models are found by
    their 7-bit address. A register read is a write of the register address
    with no stop, a repeated start and the read, as on the wire."""

    def __init__(self, id, *, scl=None, sda=None, freq=400000, timeout=50000):
        self._w = _world()
        self.id = id
        self.freq = freq
        self.timeout = timeout

    def scan(self):
        return self._w.i2c_scan(self.id)

    def writeto(self, addr, buf, stop=True):
        return self._w.i2c_write(self.id, addr, buf, stop)

    def writevto(self, addr, vector, stop=True):
        data = b"".join(bytes(v) for v in vector)
        return self._w.i2c_write(self.id, addr, data, stop)

    def readfrom(self, addr, nbytes, stop=True):
        return self._w.i2c_read(self.id, addr, nbytes, stop)

    def readfrom_into(self, addr, buf, stop=True):
        data = self._w.i2c_read(self.id, addr, len(buf), stop)
        buf[0:len(buf)] = data

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        self._mem_pointer(addr, memaddr, addrsize)
        return self._w.i2c_read(self.id, addr, nbytes, True)

    def readfrom_mem_into(self, addr, memaddr, buf, *, addrsize=8):
        self._mem_pointer(addr, memaddr, addrsize)
        buf[0:len(buf)] = self._w.i2c_read(self.id, addr, len(buf), True)

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        data = _mem_header(memaddr, addrsize) + bytes(buf)
        if self._w.i2c_write(self.id, addr, data, True) != len(data):
            raise OSError(simworld.EIO)  # a data byte was not acknowledged

    def _mem_pointer(self, addr, memaddr, addrsize):
        hdr = _mem_header(memaddr, addrsize)
        if self._w.i2c_write(self.id, addr, hdr, False) != len(hdr):
            raise OSError(simworld.EIO)


class WDT:
    """The one watchdog; a second WDT() reconfigures and feeds it."""

    def __init__(self, id=0, timeout=5000):
        self._w = _world()
        if id != 0:
            raise ValueError("WDT(%d) doesn't exist" % id)
        self._w.wdt_start(timeout)

    def feed(self):
        self._w.wdt_feed()


class UART:
    """Console UART backed by world.uart_rx (host -> firmware) and
    world.uart_tx (firmware -> host); every UART id shares them. Reads never
    wait: with nothing received they return None, like after the timeout."""

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, **kw):
        self._w = _world()
        self.id = id
        self.init(baudrate, bits, parity, stop, **kw)

    def init(self, baudrate=115200, bits=8, parity=None, stop=1, *, tx=None, rx=None, **kw):
        self.baudrate = baudrate
        self.tx = tx
        self.rx = rx

    def deinit(self):
        pass

    def any(self):
        return len(self._w.uart_rx)

    def read(self, nbytes=None):
        n = len(self._w.uart_rx)
        if nbytes is not None and nbytes < n:
            n = nbytes
        if n == 0:
            return None
        return self._w.uart_read(n)

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        n = min(n, len(self._w.uart_rx))
        if n == 0:
            return None
        buf[0:n] = self._w.uart_read(n)
        return n

    def readline(self):
        rx = self._w.uart_rx
        if not rx:
            return None
        i = rx.find(b"\n")
        return self._w.uart_read(len(rx) if i < 0 else i + 1)

    def write(self, buf):
        if isinstance(buf, str):
            buf = buf.encode()
        self._w.uart_tx.extend(buf)
        return len(buf)


def idle():
    """Let 1 ms of virtual time pass (see SimWorld.idle)."""
    _world().idle()


def reset():
    _world().request_reset()


def reset_cause():
    return _world().reset_cause


def unique_id():
    return b"\x00SIMBMS"
