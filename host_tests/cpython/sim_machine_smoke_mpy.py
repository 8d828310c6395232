# Smoke test of tools/sim/machine.py + simworld.py under real MicroPython.
# Run from the repository root (test_sim_machine.py does this):
#   MICROPYPATH=tools/sim:firmware/lib:.frozen micropython host_tests/cpython/sim_machine_smoke_mpy.py
# Prints "SMOKE OK" on success; any failure is an uncaught exception.

import machine
import simworld

BOARD = "boards/esp32_adc_4s.json"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


board = simworld.load_board(BOARD)
w = simworld.SimWorld(board)
machine.attach(w)

# Cell taps and the ADC clamp.
for n, mv in enumerate((3300, 3500, 3100, 3700)):  # pinned open-circuit voltages
    w.set_cell(n + 1, mv)
expect = (1650000, 1700000, 1650000, 1700000)
for k, tap in enumerate(board["cell_taps"]):
    adc = machine.ADC(machine.Pin(tap["pin"]), atten=machine.ADC.ATTN_11DB)
    check(adc.read_uv() == expect[k], "tap %d" % (k + 1))
check(machine.ADC(36).read_uv() == 950000, "ADC starts at 0 dB")

# FETs gate the current.
cur = machine.ADC(board["current"]["pin"], atten=machine.ADC.ATTN_11DB)
w.set_current(20000)
check(cur.read_uv() == 1250000, "charge blocked")
machine.Pin(board["fets"]["chg"], machine.Pin.OUT, value=1)
check(cur.read_uv() == 1450000, "charge flows")

# NTC at 25 C is vref/2.
check(machine.ADC(39, atten=machine.ADC.ATTN_11DB).read_uv() == 1250000, "ntc 25 C")

# Timers in deadline order, periodic re-arm.
log = []
machine.Timer(-1, mode=machine.Timer.PERIODIC, period=10, callback=lambda t: log.append(("a", w.now_ms)))
machine.Timer(-1, mode=machine.Timer.ONE_SHOT, period=15, callback=lambda t: log.append(("b", w.now_ms)))
w.advance(30)
check(log == [("a", 10), ("b", 15), ("a", 20), ("a", 30)], "timers %r" % (log,))

# Watchdog.
wdt = machine.WDT(timeout=100)
for _ in range(150):
    wdt.feed()
    machine.idle()
try:
    w.advance(100)
    check(False, "watchdog did not fire")
except machine.WatchdogReset:
    check(w.wdt_expired, "wdt_expired")
w.board_reset(machine.WDT_RESET)
check(machine.reset_cause() == machine.WDT_RESET, "reset cause")

# UART queues.
u = machine.UART(1, 115200, tx=4, rx=5)
check(u.read() is None, "empty read")
w.uart_feed(b"ping\n")
buf = bytearray(16)
check(u.readinto(buf) == 5 and buf[:5] == b"ping\n", "readinto")
check(u.write(b"pong") == 4 and w.uart_take() == b"pong", "write")

# Alert IRQ (ESP32: soft, handler gets the Pin).
alert = machine.Pin(27, machine.Pin.IN, machine.Pin.PULL_UP)
got = []
alert.irq(lambda p: got.append(p), machine.Pin.IRQ_FALLING)
w.raise_alert()
check(len(got) == 1 and got[0] is alert, "alert irq")
w.release_alert()

# Hard IRQ on a non-ESP32 board runs with the heap locked.
b2 = simworld.load_board(BOARD)
b2["mcu"] = "rp2"
machine.attach(simworld.SimWorld(b2))
flags = bytearray(1)


def no_alloc(pin):
    flags[0] = 1 + pin.value()


def allocates(pin):
    flags[0] = len([pin])


p = machine.Pin(27, machine.Pin.IN, machine.Pin.PULL_UP)
p.irq(no_alloc, machine.Pin.IRQ_FALLING, hard=True)
machine.world.raise_alert()
check(flags[0] == 1, "hard irq ran")
p.irq(allocates, machine.Pin.IRQ_RISING, hard=True)
try:
    machine.world.release_alert()
    check(False, "allocation in hard IRQ was not caught")
except MemoryError:
    pass

print("SMOKE OK")
