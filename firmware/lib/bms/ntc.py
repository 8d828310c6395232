# NTC thermistor conversion. The Beta equation needs log(), which allocates
# floats, so a table of divider voltages is built once and the tick converts
# by integer interpolation.
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


def beta_temperature(r, r0, beta, t0_c=25):
    return 1.0 / (1.0 / (t0_c + 273.15) + math.log(r / r0) / beta) - 273.15


class Ntc:
    """NTC from pin to ground, pull-up to vref: pin mV -> 0.1 degC."""

    def __init__(self, r0=10000, beta=3950, pullup=10000, vref_mv=3300, t0_c=25):
        self.vref_mv = vref_mv
        # mv[i] is the pin voltage at _T_LO + i*_STEP; it falls as T rises.
        self.mv = array("i", [0] * _N)
        for i in range(_N):
            r = beta_resistance(_T_LO + i * _STEP, r0, beta, t0_c)
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
