# Entry point on the board: build the board, start the protection tick, then
# serve the console. FETs are off from boot.py until the first valid tick.
import machine
import micropython

from bms import board
from bms.app import Bms
from bms.console import Console
from bms.reader import UartReader


def main(board_path="/board.json", config_path="/config.json"):
    if hasattr(micropython, "alloc_emergency_exception_buf"):
        micropython.alloc_emergency_exception_buf(100)
    b = board.load(board_path)
    afe = board.build_afe(b)  # pins created at their off level
    uart = board.console_uart(b)
    wdt = board.watchdog(b)
    bms = Bms(afe, config_path, b.get("name", ""), wdt, machine.reset)
    console = Console(bms, uart.write)
    reader = UartReader(uart, console)
    cause = machine.reset_cause()
    if cause == machine.WDT_RESET:
        console.out("openbms: started after a watchdog reset")
    bms.start(board.timer())
    console.out("openbms ready ('help' for commands)")
    while True:
        reader.poll()
        machine.idle()


if __name__ == "__main__":
    main()
