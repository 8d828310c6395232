# NTC thermistor conversion. The Beta and Steinhart-Hart equations need
# exp()/log(), which allocate floats, so a table of divider voltages is built
# once and the tick converts by integer interpolation.
import math
from array import array
from micropython import const


# Returned instead of a temperature for a broken sensor (no tuple: no allocation).
OPEN_DC = const(-9999)
SHORT_DC = const(9999)
_T_LO = const(-50)  # degC, first table point
_STEP = const(5)
_N = const(36)  # -50 .. 125 degC


def beta_resistance(t_c, r0, beta, t0_c=25):
    return r0 * math.exp(beta * (1.0 / (t_c + 273.15) - 1.0 / (t0_c + 273.15)))


def sh_resistance(t_c, a, b, c):
    """R from Steinhart-Hart 1/T = a + b ln R + c (ln R)^3, solved for ln R."""
    y = (a - 1.0 / (t_c + 273.15)) / c
    x = math.sqrt((b / (3.0 * c)) ** 3 + y * y / 4.0)
    return math.exp((x - y / 2.0) ** (1.0 / 3.0) - (x + y / 2.0) ** (1.0 / 3.0))


class Ntc:
    """NTC from pin to ground, pull-up to vref: pin mV -> 0.1 degC.

    Beta model (r0, beta, t0_c), or Steinhart-Hart when sh=(a, b, c) is given.
    """

    def __init__(self, r0=10000, beta=3950, pullup=10000, vref_mv=3300, t0_c=25, sh=None):
        self.vref_mv = vref_mv
        # mv[i] is the pin voltage at _T_LO + i*_STEP; it falls as T rises.
        self.mv = array("i", [0] * _N)
        for i in range(_N):
            t = _T_LO + i * _STEP
            r = sh_resistance(t, sh[0], sh[1], sh[2]) if sh else beta_resistance(t, r0, beta, t0_c)
            self.mv[i] = int(vref_mv * r / (r + pullup) + 0.5)

    def convert(self, pin_mv):
        """0.1 degC; OPEN_DC below -50 degC, SHORT_DC above 125 degC."""
        mv = self.mv
        if pin_mv > mv[0]:
            return OPEN_DC
        if pin_mv < mv[_N - 1]:
            return SHORT_DC
        i = 1
        while mv[i] > pin_mv:
            i += 1
        # pin_mv lies in (mv[i], mv[i-1]]: interpolate between the two points.
        span = mv[i - 1] - mv[i]
        frac = (mv[i - 1] - pin_mv) * _STEP * 10
        return (_T_LO + (i - 1) * _STEP) * 10 + (frac + span // 2) // span
