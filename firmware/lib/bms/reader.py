# The UART reader: drains the UART into one preallocated buffer and hands the
# bytes to a consumer chosen by the first byte of each frame. The console is
# the default consumer; binary/ASCII protocols (Daly 0xA5, Pylontech '~')
# register for their start byte and say when their frame has ended.


class UartReader:
    def __init__(self, uart, console, size=64):
        self.uart = uart
        self.console = console
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.protocols = {}  # start byte -> consumer with feed(bytes) -> bytes left over
        self.current = None  # protocol consumer inside a frame, else None

    def register(self, start_byte, consumer):
        self.protocols[start_byte] = consumer

    def poll(self):
        """Move whatever the UART holds to its consumers; returns bytes read."""
        if not self.uart.any():
            return 0
        n = self.uart.readinto(self.buf)
        if not n:
            return 0
        self.dispatch(self.mv[:n])
        return n

    def dispatch(self, data):
        while data:
            if self.current is None:
                proto = self.protocols.get(data[0]) if self.console.n == 0 else None
                if proto is None:
                    self.console.feed(data)
                    return
                self.current = proto
            rest = self.current.feed(data)
            if rest is None:  # the frame goes on in the next read
                return
            self.current = None
            data = rest
