"""Small deterministic pseudo-random numbers for the simulator.

The same seed gives the SAME sequence under CPython and MicroPython (the
`random` module differs between them and is missing on some ports), so a
simulated pack with a given seed is the same pack everywhere.

Generator: Marsaglia's xorshift32 (shifts 13, 17, 5; period 2**32 - 1), its
state seeded through the murmur3 finaliser so that neighbouring seeds (1, 2,
3, ...) give unrelated sequences. Only integer operations masked to 32 bits
and IEEE double arithmetic are used; gauss() also uses math.log/cos/sqrt.

This file runs under CPython 3.11 and under MicroPython (unix port).
"""

import math

_M32 = 0xFFFFFFFF
_INV_2_32 = 1.0 / 4294967296.0
_TWO_PI = 2.0 * math.pi


def mix32(x):
    """murmur3 fmix32: a 32-bit integer hash (bijective on 0..2**32-1).

    Also used as a stateless generator: mix32(seed ^ index) gives a
    reproducible value for any index without stepping a generator (e.g. the
    cloud of a given ten minutes of a given day).
    """
    x &= _M32
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    x ^= x >> 16
    return x


def unit(x):
    """mix32(x) mapped to a float in [0, 1)."""
    return mix32(x) * _INV_2_32


class Prng:
    """xorshift32 generator: Prng(seed).u32(), .random(), .uniform(a, b),
    .gauss(mu, sigma), .table(n, sigma)."""

    def __init__(self, seed=1):
        s = mix32((int(seed) + 0x9E3779B9) & _M32)
        if s == 0:  # the one state xorshift cannot leave
            s = 0x6D2B79F5
        self.state = s

    def u32(self):
        """Next value, an int in 0 .. 2**32 - 1."""
        x = self.state
        x ^= (x << 13) & _M32
        x ^= x >> 17
        x ^= (x << 5) & _M32
        self.state = x
        return x

    def random(self):
        """Float in [0, 1)."""
        return self.u32() * _INV_2_32

    def uniform(self, a, b):
        """Float in [a, b) (uniform)."""
        return a + (b - a) * (self.u32() * _INV_2_32)

    def gauss(self, mu=0.0, sigma=1.0):
        """Normal deviate (Box-Muller). Uses exactly two u32() draws per call
        and keeps no spare value, so the sequence does not depend on how
        gauss() and the other methods are interleaved."""
        u1 = (self.u32() + 1) * _INV_2_32  # (0, 1]: log() never sees 0
        u2 = self.u32() * _INV_2_32
        return mu + sigma * math.sqrt(-2.0 * math.log(u1)) * math.cos(_TWO_PI * u2)

    def table(self, n, sigma=1.0):
        """List of n normal deviates with mean 0 and standard deviation sigma."""
        out = []
        for _ in range(n):
            out.append(self.gauss(0.0, sigma))
        return out
