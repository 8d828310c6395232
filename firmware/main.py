# Entry point on the board: build the board, start the protection tick, then
# serve the console. The FET pins are created at their off level first, and
# stay off until the first complete valid measurement.
import gc

import machine
import micropython

from bms import board
from bms.app import Bms
from bms.console import Console
from bms.reader import UartReader

_CAUSES = {getattr(machine, n, -1): n for n in ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET")}


def setup(board_path="/board.json", config_path="/config.json"):
    """Build everything and start the tick; returns (bms, reader, console)."""
    if hasattr(micropython, "alloc_emergency_exception_buf"):
        micropython.alloc_emergency_exception_buf(100)
    b = board.load(board_path)
    afe = board.build_afe(b)  # FETs off from here on
    uart = board.console_uart(b)
    bms = Bms(afe, config_path, b.get("name", ""), board.watchdog(b), machine.reset,
              board_defaults=b.get("config"))
    bms.reset_cause = _CAUSES.get(machine.reset_cause(), "unknown")
    console = Console(bms, uart.write)
    reader = UartReader(uart, console)
    gc.collect()
    bms.start(board.timer())
    console.out("openbms ready after %s ('help' for commands)" % bms.reset_cause)
    return bms, reader, console


def main(board_path="/board.json", config_path="/config.json"):
    bms, reader, console = setup(board_path, config_path)
    while True:
        try:
            reader.poll()
        except Exception as e:  # a console bug must not stop the console; the tick runs on regardless
            console.error("internal: %s: %s" % (type(e).__name__, e))
        try:
            bms.service()
        except Exception as e:  # SOC or flash trouble must not stop the console or the tick
            bms.service_error(e)
        machine.idle()


if __name__ == "__main__":
    main()
