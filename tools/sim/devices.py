"""Chip models that sit on the simulated board's buses and GPIOs.

A device on an SPI bus implements spi_transfer(tx_bytes) -> rx_bytes and has
`cs` (the chip-select GPIO, active low, or None for chips that see every
clock, like a shift register) and `wiring` (the (sck, mosi) GPIOs it is
soldered to, or None): a controller set up on other pins never reaches it. A device on an I2C bus implements
i2c_write(data, stop) -> number of data bytes it acknowledged (-1: address
not acknowledged) and i2c_read(n, stop) -> bytes (None: address not
acknowledged); `afe` says whether it is the board's measurement front-end
(the one the afe_nack / afe_crc faults hit). Devices that react to GPIO
edges register with world.watch_pin(pin, callback(level)).

Runs under CPython and MicroPython.
"""


class Hc595Chain:
    """`count` daisy-chained 74HC595 8-bit shift registers (TI SCLS041).

    Every SCK rising edge shifts the MOSI bit into QA of the first chip; QH
    of each chip feeds the next (through QH'). A rising edge on RCLK copies
    the shift registers to the output latches. The outputs drive only while
    /OE is low; at power-up the registers hold arbitrary bits (modelled as
    `power_up` bits), which is why boards pull /OE up.
    """

    cs = None  # no chip select: it shifts whatever is clocked on the bus

    def __init__(self, world, count, latch_pin, oe_pin=None, power_up=0, wiring=None):
        self.world = world
        self.wiring = wiring
        self.count = count
        self.bits = 8 * count
        self._mask = (1 << self.bits) - 1
        self.shift = power_up & self._mask
        self.latched = power_up & self._mask
        self.latch_pin = latch_pin
        self.oe_pin = oe_pin
        world.watch_pin(latch_pin, self._on_latch)

    def spi_transfer(self, tx):
        # MSB first: each byte pushes 8 bits in at QA of the first chip.
        out = bytearray(len(tx))
        for n, byte in enumerate(tx):
            # QH' of the last chip is what a MISO would see; not wired here.
            out[n] = (self.shift >> (self.bits - 8)) & 0xFF
            self.shift = ((self.shift << 8) | byte) & self._mask
        return bytes(out)

    def _on_latch(self, level):
        if level and self.latched != self.shift:
            self.latched = self.shift
            self.world.changed()

    def enabled(self):
        return self.oe_pin is None or self.world.read_pin(self.oe_pin) == 0
