# The firmware alone on a small heap (micropython -X heapsize=N): the
# direct-ADC board on constant ADC inputs, ticks plus console traffic.
# Prints one JSON line; tools/bench.py runs it at several heap sizes.
import gc

gc.collect()
from bms.app import Bms

gc.collect()
from bms.console import Console
from bms.reader import UartReader

gc.collect()
from bms.drivers.adc_direct import AdcDirect, Channel, Linear, Mux, PinBleeders, ShiftBleeders
from bms.ntc import Ntc
from bms import config

gc.collect()


class ConstAdc:
    def __init__(self, uv):
        self.uv = uv

    def read_uv(self):
        return self.uv


class OutPin:
    v = 0

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class Uart:
    """Console traffic as the UART reader would take it."""

    def __init__(self):
        self.rx = b""

    def any(self):
        return len(self.rx)

    def readinto(self, buf):
        n = min(len(buf), len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n


class Clock:
    now = 0

    def __call__(self):
        return self.now


def adc_board():
    """A 4S direct-ADC board on constant inputs: only the driver is measured."""
    taps = [(Channel(ConstAdc(1650000), 16, True), Linear(2.0 * (i + 1))) for i in range(4)]
    return AdcDirect(taps, (Channel(ConstAdc(1300000), 16, True), Linear(100, -125000)),
                     [(Channel(ConstAdc(1650000), 16, True), Ntc())],
                     (Channel(ConstAdc(1500000), 16, True), Ntc()), OutPin(), OutPin(), None,
                     PinBleeders([OutPin() for _ in range(4)]))


class NullSpi:
    def write(self, buf):
        pass


def mux_board():
    """The 16S layout of esp32_mux_16s (differential inputs behind a mux,
    pack divider, 74HC595 bleeders) on constant inputs."""
    mux = Mux([OutPin() for _ in range(4)], 0)
    adc = ConstAdc(1650000)
    taps = [(Channel(adc, 8, True, mux=mux, addr=k), Linear(2.0)) for k in range(16)]
    return AdcDirect(taps, (Channel(ConstAdc(1300000), 8, True), Linear(200, -250000)),
                     [(Channel(ConstAdc(1650000), 8, True), Ntc()), (Channel(ConstAdc(1650000), 8, True), Ntc())],
                     (Channel(ConstAdc(1500000), 8, True), Ntc()), OutPin(), OutPin(), None,
                     ShiftBleeders(NullSpi(), OutPin(), OutPin(), 2), differential=True,
                     pack=(Channel(ConstAdc(2112000), 8, True), Linear(25.0)))


def main():
    afe = adc_board()
    path = "/tmp/openbms-bench-heap.json"
    config.save(config.defaults("lfp", 4), path)
    clock = Clock()
    bms = Bms(afe, path, "bench", clock=clock)
    sink = []
    uart = Uart()
    reader = UartReader(uart, Console(bms, sink.append))
    low = gc.mem_free()
    for _ in range(50):
        for _ in range(200):
            clock.now += 100
            bms.tick()
        for line in (b"status --json\n", b"faults\n", b"config get --json\n", b"table\n"):
            uart.rx = line
            while reader.poll():
                pass
            del sink[:]
        low = min(low, gc.mem_free())
    ok = bms.tick_errors == 0 and bms.valid and afe.gates.chg_pin.v == 1
    print('{"ok": %s, "ticks": %d, "min_free_bytes": %d}' % ("true" if ok else "false", bms.ticks, low))


if __name__ == "__main__":
    main()
