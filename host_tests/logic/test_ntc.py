# Thermistor conversion: the integer table lookup against the Beta equation.
from bms.ntc import Ntc, OPEN_DC, SHORT_DC, beta_resistance, sh_resistance


def _pin_mv(t_c, r0=10000, beta=3950, pullup=10000, vref=3300):
    r = beta_resistance(t_c, r0, beta)
    return int(vref * r / (r + pullup) + 0.5)


def test_conversion_within_half_a_degree_from_minus_40_to_120():
    n = Ntc()
    for t in range(-40, 121, 3):
        got = n.convert(_pin_mv(t))
        assert abs(got - t * 10) <= 5, (t, got)


def test_25c_with_equal_pullup_is_half_vref():
    assert abs(Ntc().convert(1650) - 250) <= 1


def test_other_beta_and_pullup():
    n = Ntc(r0=100000, beta=4250, pullup=47000, vref_mv=3000)
    for t in (-10, 0, 25, 60):
        assert abs(n.convert(_pin_mv(t, 100000, 4250, 47000, 3000)) - t * 10) <= 5, t


def test_open_and_short():
    n = Ntc()
    assert n.convert(3300) == OPEN_DC  # no thermistor: pin pulled to vref
    assert n.convert(3290) == OPEN_DC
    assert n.convert(0) == SHORT_DC
    assert n.convert(20) == SHORT_DC


# A common 10 k NTC's Steinhart-Hart coefficients.
SH = (1.009249522e-03, 2.378405444e-04, 2.019202697e-07)


def test_steinhart_hart_resistance_solves_the_equation():
    import math

    for t in (-20, 0, 25, 60, 100):
        r = sh_resistance(t, *SH)
        lr = math.log(r)
        back = 1.0 / (SH[0] + SH[1] * lr + SH[2] * lr ** 3) - 273.15
        assert abs(back - t) < 0.01, (t, back)
    assert abs(sh_resistance(25, *SH) - 10000) < 200  # these coefficients: about 9.88 k at 25 degC


def test_steinhart_hart_conversion():
    n = Ntc(pullup=10000, vref_mv=2500, sh=SH)
    for t in range(-30, 101, 10):
        r = sh_resistance(t, *SH)
        pin = int(2500 * r / (r + 10000) + 0.5)
        assert abs(n.convert(pin) - t * 10) <= 5, (t, n.convert(pin))
