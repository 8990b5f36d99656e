"""Symbolic checks (sympy) of the closed forms that kacnum.processes.kac implements.

* the density p(t,x) = (a e^{-at}/(2c)) [I0(z) + (ct/r) I1(z)], r = sqrt(c²t² - x²), z = a r/c, solves
  p_tt + 2a p_t = c² p_xx exactly (a wrong damping coefficient does not);
* the flux j = p v with v from docs/mathematics.md §3 closes the two-velocity system p_t + j_x = 0,
  j_t + 2a j + c² p_x = 0, and simplifies to j = (a e^{-at}/2) x I1(z)/r;
* the series of I1(z)/z and z I0(z)/I1(z) used near the cone by ``_i1e_over_z`` and
  ``bessel_ratio_term``, the cone limits p(ct-), v(ct-) = y/(t + 2/a) and the mass balance there.

Bessel functions are eliminated by the recurrence I_{n+1} = I_{n-1} - (2n/w) I_n (and I_{-n} = I_n), so
each identity becomes "coefficient of I0(z) and of I1(z) are 0", two algebraic identities that sympy
simplifies exactly. An mpmath evaluation (30 digits) at random rational points backs each one up.
"""
import random

import mpmath
import pytest
import sympy as sp
import torch

import kacnum.processes.kac as kac
from kacnum.processes.kac import KacProcess

t, x, a, c, R = sp.symbols("t x a c R", positive=True)
I0s, I1s = sp.symbols("I0 I1")  # stand-ins for I0(z), I1(z)
r = sp.sqrt(c**2 * t**2 - x**2)
z = a * r / c
w = sp.symbols("w", positive=True)  # a generic Bessel argument

P = a * sp.exp(-a * t) / (2 * c) * (sp.besseli(0, z) + c * t / r * sp.besseli(1, z))
V = c * x * sp.besseli(1, z) / (r * sp.besseli(0, z) + c * t * sp.besseli(1, z))  # docs/mathematics.md §3, first form
V2 = x / (t + (r / c) * sp.besseli(0, z) / sp.besseli(1, z))  # docs/mathematics.md §3, second form (used by kac.py)


def _to_i0_i1(n, arg):
    """I_n(arg) for integer n as a combination of I0(arg), I1(arg)."""
    n = abs(int(n))
    prev, cur = sp.besseli(0, arg), sp.besseli(1, arg)
    if n == 0:
        return prev
    for k in range(1, n):
        prev, cur = cur, prev - 2 * k / arg * cur
    return cur


def bessel_coefficients(expr):
    """Write ``expr`` (after multiplying by e^{at}) as α I0(z) + β I1(z) + γ and return the simplified
    {monomial: coefficient}; x is replaced by sqrt(c²t² - R²) so that r = R (inside the cone)."""
    e = expr.replace(lambda f: isinstance(f, sp.besseli), lambda f: _to_i0_i1(f.args[0], f.args[1]))
    e = e.subs({sp.besseli(0, z): I0s, sp.besseli(1, z): I1s})
    assert not e.has(sp.besseli), e.atoms(sp.besseli)
    e = sp.expand(e.subs(x, sp.sqrt(c**2 * t**2 - R**2)) * sp.exp(a * t))
    terms = sp.Poly(e, I0s, I1s).terms()
    return {m: sp.simplify(sp.together(coef)) for m, coef in terms}


def is_identically_zero(expr):
    return all(coef == 0 for coef in bessel_coefficients(expr).values())


def random_points(n=4, seed=0):
    """Rational (a, c, t, x) with |x| < ct, including large z and points near the cone."""
    rng = random.Random(seed)
    pts = []
    for _ in range(n):
        av = sp.Rational(rng.randint(1, 4000), 100)
        cv = sp.Rational(rng.randint(1, 500), 100)
        tv = sp.Rational(rng.randint(1, 300), 100)
        frac = sp.Rational(rng.choice([0, 1, 37, 500, 900, 999]), 1000)
        pts.append({a: av, c: cv, t: tv, x: frac * cv * tv})
    return pts


def evaluate(expr, point, dps=30):
    """Numerical value at a rational point with ``dps`` digits (mpmath through sympy's evalf)."""
    return sp.N(expr.subs(point), dps)


# ------------------------------------------------------------------------------------------------
# the telegrapher equation
# ------------------------------------------------------------------------------------------------
def test_density_solves_telegrapher_equation_symbolically():
    residual = sp.diff(P, t, 2) + 2 * a * sp.diff(P, t) - c**2 * sp.diff(P, x, 2)
    assert is_identically_zero(residual)


def test_wrong_damping_coefficient_is_rejected_symbolically():
    """With λ = a instead of 2a the I0 and I1 coefficients are a p_t's, not 0."""
    wrong = sp.diff(P, t, 2) + a * sp.diff(P, t) - c**2 * sp.diff(P, x, 2)
    coefs = bessel_coefficients(wrong)
    assert any(coef != 0 for coef in coefs.values())
    assert sp.simplify(coefs[(1, 0)] + a**3 * t**2 * c / (2 * R**2) - a**3 / (2 * c)) == 0


def test_telegrapher_residual_numerically_at_random_points():
    """30-digit evaluation: the residual is ~0 relative to the terms, the wrong coefficient's is not."""
    p_t, p_tt, p_xx = sp.diff(P, t), sp.diff(P, t, 2), sp.diff(P, x, 2)
    for pt in random_points(seed=1):
        if pt[x] == 0:
            pt[x] = pt[c] * pt[t] / 7
        vt, vtt, vxx = (evaluate(e, pt) for e in (p_t, p_tt, p_xx))
        av, cv = pt[a], pt[c]
        size = abs(vtt) + abs(2 * av * vt) + abs(cv**2 * vxx)
        assert abs(vtt + 2 * av * vt - cv**2 * vxx) < sp.Float("1e-25") * size
        assert abs(vtt + av * vt - cv**2 * vxx) > sp.Float("1e-3") * size


def test_closed_form_matches_kacnum_density():
    """kac.py's stable float64 form equals the closed form at random points (40 digits → 1e-13)."""
    for pt in random_points(n=6, seed=2):
        av, cv, tv, xv = (float(pt[s]) for s in (a, c, t, x))
        xv = float(pt[x])
        exact = float(evaluate(P, pt, 40))
        got = float(KacProcess(av, cv).density(tv, torch.tensor([xv], dtype=torch.float64)))
        assert got == pytest.approx(exact, rel=1e-13)


# ------------------------------------------------------------------------------------------------
# flux and continuity
# ------------------------------------------------------------------------------------------------
def test_velocity_forms_agree():
    """c y I1/(r I0 + ct I1) = y/(t + (r/c) I0/I1)."""
    assert sp.simplify(V - V2) == 0


def test_flux_closed_form_and_two_velocity_system():
    j = sp.simplify(P * V)
    j_closed = a * sp.exp(-a * t) / 2 * x * sp.besseli(1, z) / r
    assert sp.simplify(j - j_closed) == 0
    assert is_identically_zero(sp.diff(P, t) + sp.diff(j_closed, x))  # p_t + j_x = 0
    assert is_identically_zero(sp.diff(j_closed, t) + 2 * a * j_closed + c**2 * sp.diff(P, x))
    # a flux that is p times a wrong field (the diffusion limit x/(2t)) breaks continuity
    assert not is_identically_zero(sp.diff(P, t) + sp.diff(P * x / (2 * t), x))


def test_flux_from_two_velocity_densities():
    """p± = (p ± j/c)/2 are the densities of {V = ±c}; both are ≥ 0 and j = c(p+ - p-) (numerically)."""
    j_closed = a * sp.exp(-a * t) / 2 * x * sp.besseli(1, z) / r
    p_plus, p_minus = (P + j_closed / c) / 2, (P - j_closed / c) / 2
    for pt in random_points(n=6, seed=3):
        assert evaluate(p_plus, pt) >= 0 and evaluate(p_minus, pt) >= 0
        assert abs(evaluate(c * (p_plus - p_minus) - P * V, pt)) < sp.Float("1e-25") * evaluate(P, pt)


# ------------------------------------------------------------------------------------------------
# series near z = 0 and what kac.py does with them
# ------------------------------------------------------------------------------------------------
def test_series_of_i1_over_z():
    s = sp.series(sp.besseli(1, w) / w, w, 0, 8).removeO()
    assert sp.expand(s - (sp.Rational(1, 2) + w**2 / 16 + w**4 / 384 + w**6 / 18432)) == 0
    # I1(z)/r = (a/c) I1(z)/z: the density near the cone is (a e^{-at}/(2c)) (I0 + at I1/z)
    s_r = sp.series((sp.besseli(1, z) / r).subs(x, sp.sqrt(c**2 * t**2 - R**2)), R, 0, 4).removeO()
    assert sp.simplify(s_r - (a / (2 * c) + a**3 * R**2 / (16 * c**3))) == 0


def test_series_of_bessel_ratio_term():
    s = sp.series(w * sp.besseli(0, w) / sp.besseli(1, w), w, 0, 8).removeO()
    assert sp.expand(s - (2 + w**2 / 4 - w**4 / 96 + w**6 / 1536)) == 0


@pytest.mark.parametrize("zv", [0.0, 1e-8, 1e-4, 3e-3, 0.0099999, 0.01, 0.0100001, 0.05, 0.5, 3.0, 40.0, 700.0, 5e3])
def test_kacnum_series_branches_against_mpmath(zv):
    """_i1e_over_z = e^{-z} I1(z)/z and bessel_ratio_term = z I0/I1 to ~1e-14 on both sides of the
    series switch at z = 1e-2 (the dropped z⁶ terms are < 1e-16 there)."""
    with mpmath.workdps(40):
        zm = mpmath.mpf(zv)
        if zv == 0.0:
            ref1, ref2 = mpmath.mpf(1) / 2, mpmath.mpf(2)
        else:
            ref1 = mpmath.besseli(1, zm) / zm * mpmath.exp(-zm)
            ref2 = zm * mpmath.besseli(0, zm) / mpmath.besseli(1, zm)
    zt = torch.tensor([zv], dtype=torch.float64)
    assert float(kac._i1e_over_z(zt)) == pytest.approx(float(ref1), rel=2e-14)
    assert float(kac.bessel_ratio_term(zt)) == pytest.approx(float(ref2), rel=2e-14)
    assert 1e-2**6 / 18432 < 1e-16 and 1e-2**6 / 1536 / 2 < 1e-15


# ------------------------------------------------------------------------------------------------
# the cone
# ------------------------------------------------------------------------------------------------
def _at_cone(expr):
    return sp.limit(expr.subs(x, sp.sqrt(c**2 * t**2 - R**2)), R, 0)


def test_cone_limits_and_mass_balance():
    p_cone = _at_cone(P)
    v_cone = _at_cone(V2)
    assert sp.simplify(p_cone - a * sp.exp(-a * t) / (2 * c) * (1 + a * t / 2)) == 0
    assert sp.simplify(v_cone - c * t / (t + 2 / a)) == 0  # v → y/(t + 2/a) with y = ct
    assert sp.simplify(v_cone - c * a * t / (2 + a * t)) == 0  # = max interior speed < c
    assert sp.simplify(2 * p_cone * (c - v_cone) - a * sp.exp(-a * t)) == 0


def test_near_cone_velocity_expansion():
    """v = y/(t + (r/c) I0(z)/I1(z)) and (r/c) I0(z)/I1(z) = 2/a + a r²/(4c²) + O(r⁴): near the cone
    v ≈ y/(t + 2/a + a r²/(4c²)), the first-order term of the series used by bessel_ratio_term."""
    ratio = (R / c) * sp.besseli(0, a * R / c) / sp.besseli(1, a * R / c)
    assert sp.simplify(V2.subs(x, sp.sqrt(c**2 * t**2 - R**2)) - sp.sqrt(c**2 * t**2 - R**2) / (t + ratio)) == 0
    s = sp.series(ratio, R, 0, 4).removeO()
    assert sp.simplify(s - (2 / a + a * R**2 / (4 * c**2))) == 0


def test_max_interior_speed_is_below_c():
    at = sp.symbols("at", positive=True)
    assert sp.simplify(c - c * at / (2 + at) - 2 * c / (2 + at)) == 0
    expr = sp.lambdify((a, c, t), c * a * t / (2 + a * t))
    kp = KacProcess(9.0, 3.0)
    for tv in (1e-7, 0.3, 1.0, 50.0):
        assert float(kp.max_interior_speed(tv)) == pytest.approx(expr(9.0, 3.0, tv), rel=1e-15)
