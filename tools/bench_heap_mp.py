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
from bms.drivers.adc_direct import AdcDirect, Channel, Linear
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
                     [OutPin() for _ in range(4)])


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
    ok = bms.tick_errors == 0 and bms.valid and afe.chg_pin.v == 1
    print('{"ok": %s, "ticks": %d, "min_free_bytes": %d}' % ("true" if ok else "false", bms.ticks, low))


if __name__ == "__main__":
    main()
