# Link checksums of the front-end chips, computed without allocating, from
# 256-entry tables built once at import (bitwise loops cost ~8x more per
# byte, and a 24S chain checks about 200 bytes per tick).
#
# crc8: TI bq769x0 and bq769x2 I2C CRC, polynomial 0x07 (x^8+x^2+x+1),
# initial value given, no reflection, no final XOR.
# pec15: ADI LTC681x packet error code, polynomial 0x4599, seed 0x0010; the
# 15-bit remainder shifted left by one (the 16-bit value sent MSB first).
from array import array
from micropython import const

_PEC_SEED = const(0x0010)


def _tables():
    c8 = bytearray(256)
    p15 = array("H", [0] * 256)
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        c8[i] = c
        rem = i << 7
        for _ in range(8):
            rem <<= 1
            if rem & 0x8000:
                rem ^= 0x4599
            rem &= 0x7FFF
        p15[i] = rem
    return c8, p15


_CRC8, _PEC15 = _tables()


def crc8(buf, start, end, crc=0):
    """CRC-8 of buf[start:end], continuing from crc."""
    t = _CRC8
    for i in range(start, end):
        crc = t[crc ^ buf[i]]
    return crc


def crc8_byte(crc, b):
    """CRC-8 of crc followed by one more byte b."""
    return _CRC8[crc ^ b]


def pec15(buf, start, end):
    """PEC of buf[start:end] as the 16-bit word the LTC681x sends."""
    t = _PEC15
    rem = _PEC_SEED
    for i in range(start, end):
        rem = ((rem << 8) ^ t[((rem >> 7) ^ buf[i]) & 0xFF]) & 0x7FFF
    return (rem << 1) & 0xFFFF
