# Link checksums of the front-end chips, computed without allocating.
#
# crc8: TI bq769x0 and bq769x2 I2C CRC, polynomial 0x07 (x^8+x^2+x+1),
# initial value given, no reflection, no final XOR.
# pec15: ADI LTC681x packet error code, polynomial 0x4599, seed 0x0010; the
# 15-bit remainder shifted left by one (the 16-bit value sent MSB first).
from micropython import const

_PEC_SEED = const(0x0010)


def crc8(buf, start, end, crc=0):
    """CRC-8 of buf[start:end], continuing from crc."""
    for i in range(start, end):
        crc ^= buf[i]
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def crc8_byte(crc, b):
    """CRC-8 of crc followed by one more byte b."""
    crc ^= b
    for _ in range(8):
        crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def pec15(buf, start, end):
    """PEC of buf[start:end] as the 16-bit word the LTC681x sends."""
    rem = _PEC_SEED
    for i in range(start, end):
        rem ^= buf[i] << 7
        for _ in range(8):
            rem <<= 1
            if rem & 0x8000:
                rem ^= 0x4599
            rem &= 0x7FFF
    return (rem << 1) & 0xFFFF
