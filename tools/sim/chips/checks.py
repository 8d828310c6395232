"""Link checks as the chips compute them (independent of the firmware's
copy, table-driven here so a shared mistake is unlikely).

crc8: TI bq769x0/bq769x2, polynomial 0x07, no reflection, no final XOR.
pec15: ADI LTC681x, polynomial 0x4599, seed 0x0010, sent as remainder << 1.
"""


def _crc8_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) if c & 0x80 else (c << 1)
            c &= 0xFF
        t.append(c)
    return t


def _pec_table():
    t = []
    for i in range(256):
        rem = i << 7
        for _ in range(8):
            rem <<= 1
            if rem & 0x8000:
                rem ^= 0x4599
            rem &= 0x7FFF
        t.append(rem)
    return t


_CRC8 = _crc8_table()
_PEC = _pec_table()


def crc8(data, crc=0):
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def pec15(data):
    rem = 16
    for b in data:
        addr = ((rem >> 7) ^ b) & 0xFF
        rem = ((rem << 8) ^ _PEC[addr]) & 0x7FFF
    return (rem << 1) & 0xFFFF
