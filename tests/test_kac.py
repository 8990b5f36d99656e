"""Property tests of kacnum.processes.kac: exact law (density, atoms, CDF, variance), conditional velocity,
event-driven paths, scaling and diffusion limits, bad input (docs/mathematics.md §1–3).

References are written here, independently of kac.py: float64 scipy Bessel formulas, Gauss–Legendre
quadrature, the Poisson–Beta mixture for the CDF, mpmath for the variance, and Monte Carlo over
event-driven paths for the velocity (as a conditional mean).
"""
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import special, stats

import kacnum.processes.kac as kac
from kacnum.processes.kac import KacProcess

F32, F64 = torch.float32, torch.float64
EPS = {F32: float(torch.finfo(F32).eps), F64: float(torch.finfo(F64).eps)}

# hypothesis + the function-scoped `device`/`dtype` fixtures (they do not depend on the example)
with_fixtures = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def log_uniform(lo, hi):
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


RATE = log_uniform(0.1, 1000.0)  # a
SPEED = log_uniform(0.1, 100.0)  # c
TIME = log_uniform(1e-6, 10.0)  # t
UNIT = st.floats(-0.999, 0.999)  # a position as a fraction of the bulk half-width


# ------------------------------------------------------------------------------------------------
# independent float64 references (numpy / scipy)
# ------------------------------------------------------------------------------------------------
def ref_density(a, c, t, x):
    """p = (a e^{-at}/(2c)) [I0(z) + (ct/r) I1(z)] on |x| < ct, written with ive and the exponent
    z - at = -(a/c)(ct - r) = -(a/c) x²/(ct + r) (no cancellation), ct/r I1(z) = at I1(z)/z."""
    t, x = np.broadcast_arrays(np.asarray(t, float), np.asarray(x, float))
    ct, ax = c * t, np.abs(x)
    r = np.sqrt(np.clip((ct - ax) * (ct + ax), 0.0, None))
    z = a * r / c
    expo = -(a / c) * ax * ax / np.where(ct + r > 0, ct + r, 1.0)
    i1z = np.where(z > 0, special.ive(1, z) / np.where(z > 0, z, 1.0), 0.5)
    val = (a / (2 * c)) * np.exp(expo) * (special.ive(0, z) + a * t * i1z)
    return np.where(ax < ct, val, 0.0)


def ref_density_unscaled(a, c, t, x):
    """The closed form of docs/mathematics.md §2 verbatim with the unscaled iv (valid for moderate at: no overflow)."""
    ct, ax = c * t, np.abs(x)
    r = np.sqrt(np.clip(ct * ct - ax * ax, 0.0, None))
    z = a * r / c
    val = a * math.exp(-a * t) / (2 * c) * (special.iv(0, z) + ct / r * special.iv(1, z))
    return np.where(ax < ct, val, 0.0)


def ref_velocity(a, c, t, y):
    """v = c y I1(z) / (r I0(z) + ct I1(z)) (docs/mathematics.md §3, first form), limit y/(t + 2/a) at r = 0."""
    t, y = np.broadcast_arrays(np.asarray(t, float), np.asarray(y, float))
    ct, ay = c * t, np.abs(y)
    r = np.sqrt(np.clip((ct - ay) * (ct + ay), 0.0, None))
    z = a * r / c
    i0, i1 = special.ive(0, z), special.ive(1, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = c * y * i1 / (r * i0 + ct * i1)
    return np.where(r > 0, v, y / (t + 2.0 / a))


def kac_std(a, c, t):
    return math.sqrt((c * c / a) * (t + math.expm1(-2 * a * t) / (2 * a))) if a * t > 1e-4 else c * t


def bulk_halfwidth(a, c, t, k=8.0):
    """Where the continuous mass lives: min(ct, kσ)."""
    return min(c * t, k * kac_std(a, c, t))


def gl_nodes(lo, hi, panels=64, order=20):
    """Composite Gauss–Legendre nodes/weights on [lo, hi] (numpy float64)."""
    g, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    h = np.diff(edges)[:, None]
    xs = edges[:-1, None] + (g[None, :] + 1) * h / 2
    return xs.ravel(), (w[None, :] * h / 2).ravel()


def exact_variance(a, c, t):
    with mpmath.workdps(50):
        a_, c_, t_ = mpmath.mpf(a), mpmath.mpf(c), mpmath.mpf(t)
        return float((c_**2 / a_) * (t_ - (1 - mpmath.exp(-2 * a_ * t_)) / (2 * a_)))


def to_np(x):
    return x.detach().to("cpu", F64).numpy()


def test_reference_density_agrees_with_the_unscaled_formula():
    """The scaled reference used below is the closed form of docs/mathematics.md §2 (checked with unscaled iv at moderate at)."""
    for a, c, t in [(9.0, 3.0, 0.4), (0.3, 2.0, 1.7), (50.0, 0.5, 2.0)]:
        x = np.linspace(-0.999, 0.999, 101) * c * t
        np.testing.assert_allclose(ref_density(a, c, t, x), ref_density_unscaled(a, c, t, x), rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# density
# ------------------------------------------------------------------------------------------------
@with_fixtures
@given(a=RATE, c=SPEED, t=TIME)
def test_density_matches_scipy_reference(a, c, t, dtype, device):
    """Interior points of the bulk; error relative to the value, allowed to grow with the exponent
    E = (a/c)x²/(ct + r) (the density is e^{-E}·O(1): its condition number is ~E). A form that
    computes e^{z - at} as the difference of two numbers of size at loses at·eps instead."""
    kp = KacProcess(a, c)
    tt = torch.tensor(t, dtype=dtype, device=device)
    half = bulk_halfwidth(a, c, float(tt))
    x = torch.linspace(-0.999, 0.999, 41, dtype=F64) * half
    x = x.to(dtype).to(device)
    x = x[x.abs() < c * float(tt)]
    got = to_np(kp.density(tt, x))
    xs, ts = to_np(x), float(tt)
    ref = ref_density(a, c, ts, xs)
    assert np.isfinite(got).all()
    ct = c * ts
    r = np.sqrt((ct - np.abs(xs)) * (ct + np.abs(xs)))
    expo = (a / c) * xs * xs / (ct + r)
    tol = 64 * EPS[dtype] * (1.0 + expo)
    tiny = np.finfo(np.float32 if dtype == F32 else np.float64).tiny
    ok = ref > 1e3 * tiny  # float32 legitimately underflows deep in the tail
    rel = np.abs(got - ref)[ok] / ref[ok]
    assert (rel <= tol[ok]).all(), f"max rel err {rel.max():.3g} (tol {tol[ok][rel.argmax()]:.3g}) at at={a * ts:.4g}"


@with_fixtures
@given(a=RATE, c=SPEED, t=TIME)
def test_density_mass_plus_atoms_is_one(a, c, t, dtype):
    """∫p dx (Gauss–Legendre on [-min(ct, 14σ), min(ct, 14σ)]) + e^{-at} = 1."""
    kp = KacProcess(a, c)
    half = bulk_halfwidth(a, c, t, k=14.0)
    xs, w = gl_nodes(-half, half)
    p = to_np(kp.density(torch.tensor(t, dtype=dtype), torch.tensor(xs, dtype=dtype)))
    total = float(np.sum(w * p)) + math.exp(-a * t)
    assert abs(total - 1.0) <= (1e-12 if dtype == F64 else 2e-5)


def test_density_no_nan_inf_at_extremes(dtype, device):
    """a up to 1000, t from 1e-7 to 10 (at up to 1e4): exactly at ±ct, 1 ulp inside/outside, far out."""
    for a in (0.1, 1.0, 9.0, 1000.0):
        for c in (0.1, 3.0, 100.0):
            kp = KacProcess(a, c)
            for t in (1e-7, 1e-4, 0.1, 1.0, 10.0):
                tt = torch.tensor(t, dtype=dtype, device=device)
                ct = c * tt  # the same rounding as inside kac.py
                inner = torch.nextafter(ct, torch.zeros_like(ct))
                outer = torch.nextafter(ct, torch.full_like(ct, math.inf))
                pts = torch.stack([torch.zeros_like(ct), 0.5 * ct, inner, ct, outer, 2 * ct, 1e6 * ct + 1.0])
                x = torch.cat([pts, -pts])
                p = kp.density(tt, x)
                assert torch.isfinite(p).all() and (p >= 0).all(), (a, c, t)
                on_or_out = x.abs() >= ct
                assert (p[on_or_out] == 0).all(), (a, c, t)
                assert (p[x.abs() < ct] > 0).any() or a * t > 80, (a, c, t)  # f32 underflow past at≈88
                F = kp.cdf(tt, x)
                assert torch.isfinite(F).all() and (F >= 0).all() and (F <= 1).all(), (a, c, t)
                v = kp.velocity(tt, x)
                assert torch.isfinite(v).all() and (v.abs() <= c).all(), (a, c, t)
                vm = kp.velocity(tt, x, atom_mask=torch.zeros_like(x, dtype=torch.bool))
                assert torch.isfinite(vm).all() and (vm.abs() <= c).all(), (a, c, t)
                assert torch.isfinite(kp.variance(tt)).all() and float(kp.variance(tt)) >= 0.0


def test_density_at_time_zero_and_negative_x_outside():
    kp = KacProcess(2.0, 1.0)
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=F64)
    assert (kp.density(0.0, x) == 0).all()
    assert float(kp.atom_mass(0.0)) == 1.0


# ------------------------------------------------------------------------------------------------
# PDEs by finite differences (4th-order stencils, float64)
# ------------------------------------------------------------------------------------------------
def _fd_terms(kp, t, x):
    """(p_t, p_tt, p_x, p_xx, j_t, j_x) at (t, x) (scalars), j = p v, by 4th-order central differences."""
    a, c = kp.a, kp.c
    sigma = kac_std(a, c, t)
    gap = c * t - abs(x)
    hx = 2e-3 * min(sigma, gap)
    ht = 2e-3 * min(t, gap / c)
    k = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0], dtype=F64)
    d1 = torch.tensor([1.0, -8.0, 0.0, 8.0, -1.0], dtype=F64) / 12.0
    d2 = torch.tensor([-1.0, 16.0, -30.0, 16.0, -1.0], dtype=F64) / 12.0
    tt, xt = t + ht * k, torch.full((5,), x, dtype=F64)
    pt = kp.density(tt, xt)
    jt = pt * kp.velocity(tt, xt)
    xx, tx = x + hx * k, torch.full((5,), t, dtype=F64)
    px = kp.density(tx, xx)
    jx = px * kp.velocity(tx, xx)
    return (
        float((d1 * pt).sum()) / ht,
        float((d2 * pt).sum()) / ht**2,
        float((d1 * px).sum()) / hx,
        float((d2 * px).sum()) / hx**2,
        float((d1 * jt).sum()) / ht,
        float((d1 * jx).sum()) / hx,
    )


@given(a=RATE, c=SPEED, at=log_uniform(0.05, 200.0), u=st.floats(-0.9, 0.9))
def test_density_solves_telegrapher_equation(a, c, at, u):
    """∂tt p + 2a ∂t p - c² ∂xx p ≈ 0 inside the cone, relative to the size of the terms."""
    t = at / a
    x = u * bulk_halfwidth(a, c, t, k=6.0)
    kp = KacProcess(a, c)
    p_t, p_tt, _, p_xx, _, _ = _fd_terms(kp, t, x)
    size = abs(p_tt) + abs(2 * a * p_t) + abs(c * c * p_xx)
    assert abs(p_tt + 2 * a * p_t - c * c * p_xx) <= 2e-6 * size


def test_telegrapher_residual_detects_a_wrong_damping_coefficient():
    """The same check with a in place of 2a (the λ = 2a convention) fails by orders of magnitude."""
    kp = KacProcess(9.0, 3.0)
    for t, u in [(0.5, 0.0), (0.5, 0.4), (0.2, -0.7), (1.0, 0.2)]:
        x = u * 3.0 * t
        p_t, p_tt, _, p_xx, _, _ = _fd_terms(kp, t, x)
        size = abs(p_tt) + abs(2 * 9.0 * p_t) + abs(9.0 * p_xx)
        assert abs(p_tt + 2 * 9.0 * p_t - 9.0 * p_xx) <= 2e-6 * size
        assert abs(p_tt + 9.0 * p_t - 9.0 * p_xx) >= 1e-2 * size


@given(a=RATE, c=SPEED, at=log_uniform(0.05, 200.0), u=st.floats(0.01, 0.9), sign=st.sampled_from([-1.0, 1.0]))
def test_continuity_and_flux_equations(a, c, at, u, sign):
    """∂t p + ∂x (p v) = 0 and ∂t j + 2a j + c² ∂x p = 0 with j = p v (two-velocity form); |x| is kept
    away from 0, where p_x and j are O(x) and a difference step cannot resolve them."""
    u = sign * u
    t = at / a
    x = u * bulk_halfwidth(a, c, t, k=6.0)
    kp = KacProcess(a, c)
    p_t, _, p_x, _, j_t, j_x = _fd_terms(kp, t, x)
    assert abs(p_t + j_x) <= 2e-7 * (abs(p_t) + abs(j_x)) + 1e-300
    j = float(kp.density(t, torch.tensor(x, dtype=F64)) * kp.velocity(t, torch.tensor(x, dtype=F64)))
    size = abs(j_t) + abs(2 * a * j) + abs(c * c * p_x)
    assert abs(j_t + 2 * a * j + c * c * p_x) <= 2e-7 * size + 1e-300


# ------------------------------------------------------------------------------------------------
# the cone
# ------------------------------------------------------------------------------------------------
@given(a=RATE, c=SPEED, at=log_uniform(1e-6, 700.0))
def test_cone_value_and_mass_balance(a, c, at):
    """p(t, ct-) = (a e^{-at}/(2c))(1 + at/2), v(t, ct-) = c·at/(2+at), 2 p (c - v) = a e^{-at}."""
    t = at / a
    kp = KacProcess(a, c)
    ct = torch.tensor(c * t, dtype=F64)
    y = torch.nextafter(ct, torch.zeros_like(ct)).reshape(1)
    p = float(kp.density(t, y))
    v = float(kp.velocity(t, y))
    cone = a * math.exp(-a * t) / (2 * c) * (1 + a * t / 2)
    assert p == pytest.approx(cone, rel=1e-9)
    assert float(kac.kac_density_scaled(a, c, torch.tensor(t, dtype=F64), ct, closed=True)) == pytest.approx(cone, rel=1e-12)
    assert v == pytest.approx(c * a * t / (2 + a * t), rel=1e-9)
    assert 2 * p * (c - v) == pytest.approx(a * math.exp(-a * t), rel=1e-9)


# ------------------------------------------------------------------------------------------------
# CDF
# ------------------------------------------------------------------------------------------------
def poisson_beta_cdf(a, c, t, x):
    """P(K_t ≤ x) = Σ_n P(N=n) P(S ct (2B_n - 1) ≤ x), B_n ~ Beta(ceil((n+1)/2), floor((n+1)/2)),
    S = ±1 uniform: the S-average gives (F_n(u) + 1 - F_n(1 - u))/2 with u = (x/ct + 1)/2; n = 0 is the
    pair of atoms. Series cut where the Poisson tail is < 1e-16."""
    x = np.asarray(x, float)
    at, ct = a * t, c * t
    nmax = int(at + 12 * math.sqrt(at) + 40)
    n = np.arange(1, nmax + 1)
    wn = stats.poisson.pmf(n, at)
    al, be = np.ceil((n + 1) / 2), np.floor((n + 1) / 2)
    u = np.clip((x / ct + 1) / 2, 0.0, 1.0)
    Fn = stats.beta.cdf(u[:, None], al[None, :], be[None, :])
    Gn = stats.beta.cdf(1 - u[:, None], al[None, :], be[None, :])
    cont = (wn[None, :] * (Fn + 1 - Gn) / 2).sum(axis=1)
    atoms = math.exp(-at) * (0.5 * (x >= -ct) + 0.5 * (x >= ct))
    return np.where(x < -ct, 0.0, np.where(x >= ct, 1.0, cont + atoms))


@given(a=RATE, c=SPEED, at=log_uniform(1e-3, 40.0))
def test_cdf_matches_poisson_beta_series(a, c, at):
    t = at / a
    kp = KacProcess(a, c)
    x = np.linspace(-0.9999, 0.9999, 61) * c * t
    got = to_np(kp.cdf(t, torch.tensor(x, dtype=F64)))
    np.testing.assert_allclose(got, poisson_beta_cdf(a, c, t, x), atol=1e-9, rtol=0)


@with_fixtures
@given(a=RATE, c=SPEED, t=TIME)
def test_cdf_shape_atoms_symmetry(a, c, t, dtype, device):
    """Monotone; 0 below -ct; jump e^{-at}/2 at ±ct; 1 at and above ct; F(0) = 1/2; F(-x) = 1 - F(x).
    ±ct is taken in the input's dtype (c * t there), where density/sample/velocity put the atoms."""
    kp = KacProcess(a, c)
    tt = torch.tensor(t, dtype=dtype, device=device)
    ct = c * tt
    x = torch.linspace(-1.0, 1.0, 101, dtype=dtype, device=device) * ct
    lo = torch.nextafter(-ct, torch.full_like(ct, -math.inf))
    hi = torch.nextafter(ct, torch.zeros_like(ct))
    special_pts = torch.stack([lo, -ct, torch.zeros_like(ct), hi, ct, 2 * ct])
    inner = x[1:-1]
    F_all = kp.cdf(tt, torch.cat([x, special_pts, -inner]))
    F, vals, F_neg = F_all[:101].double(), to_np(F_all[101:107]), F_all[107:].double()
    assert (F_all >= 0).all() and (F_all <= 1).all()
    assert (torch.diff(F) >= -64 * EPS[dtype]).all()  # per-point quadrature: rounding noise only
    atom = math.exp(-a * float(tt)) / 2
    tol = 1e-12 if dtype == F64 else 4e-7
    assert vals[0] == 0.0
    assert vals[1] == pytest.approx(atom, abs=tol)
    assert vals[2] == 0.5
    assert vals[3] == pytest.approx(1 - atom, abs=tol)
    assert vals[4] == 1.0 and vals[5] == 1.0
    assert torch.allclose(F_neg, 1 - F[1:-1], atol=tol, rtol=0)


@given(a=RATE, c=SPEED, at=log_uniform(1e-3, 300.0), u=st.floats(-0.95, 0.95))
def test_cdf_derivative_is_density(a, c, at, u):
    t = at / a
    kp = KacProcess(a, c)
    half = bulk_halfwidth(a, c, t, k=6.0)
    x, h = u * half, 1e-4 * half
    F = kp.cdf(t, torch.tensor([x - h, x + h], dtype=F64))
    dF = float(F[1] - F[0]) / (2 * h)
    pmax = float(kp.density(t, torch.zeros(1, dtype=F64)))
    assert dF == pytest.approx(float(kp.density(t, torch.tensor([x], dtype=F64))), abs=1e-6 * pmax)


# ------------------------------------------------------------------------------------------------
# variance
# ------------------------------------------------------------------------------------------------
@given(a=RATE, c=SPEED, t=TIME)
def test_variance_against_quadrature(a, c, t):
    """Var K_t = ∫ x² p dx + e^{-at} (ct)² (both branches: at < 1e-3 uses the series)."""
    kp = KacProcess(a, c)
    half = bulk_halfwidth(a, c, t, k=14.0)
    xs, w = gl_nodes(-half, half)
    p = to_np(kp.density(t, torch.tensor(xs, dtype=F64)))
    quad = float(np.sum(w * xs * xs * p)) + math.exp(-a * t) * (c * t) ** 2
    assert float(kp.variance(t)) == pytest.approx(quad, rel=1e-10)


@pytest.mark.parametrize("at", [1e-8, 1e-5, 3e-4, 9.99e-4, 1e-3, 1.01e-3, 2e-3, 1e-2, 0.1, 1.0, 30.0, 1e3])
def test_variance_against_mpmath(at, dtype):
    """Relative error ~ eps: in float32 the exact branch t + expm1(-2at)/(2a) cancels for small at."""
    a, c = 2.0, 0.7
    tt = torch.tensor(at / a, dtype=dtype)
    var = KacProcess(a, c).variance(tt)
    assert var.dtype == dtype
    got = float(var)
    ref = exact_variance(a, c, float(tt))
    assert got == pytest.approx(ref, rel=(1e-13 if dtype == F64 else 1e-6))


def test_variance_continuous_across_the_series_switch(dtype):
    """The two branches meet at at = 1e-3 without a jump (relative jump ~ eps)."""
    a, c = 1.0, 1.0
    kp = KacProcess(a, c)
    t0 = torch.tensor(1e-3, dtype=dtype)
    below = torch.nextafter(t0, torch.zeros_like(t0))
    vb, vt = float(kp.variance(below)), float(kp.variance(t0))
    slope = 2 * (float(t0) - float(below)) / float(t0)  # Var ~ t² near 0
    assert abs(vt - vb) / vt <= slope + (1e-13 if dtype == F64 else 1e-6)


# ------------------------------------------------------------------------------------------------
# scaling identity
# ------------------------------------------------------------------------------------------------
@given(a=RATE, c=SPEED, t=TIME, u=st.lists(UNIT, min_size=1, max_size=8))
def test_scaling_identity(a, c, t, u):
    """p_{a,c}(t,x) = (a/c) p_{1,1}(at, ax/c) and v_{a,c}(t,x) = c v_{1,1}(at, ax/c)."""
    assume(a * t <= 700)  # compare values, not underflowed zeros
    x = torch.tensor(u, dtype=F64) * bulk_halfwidth(a, c, t)
    k, k1 = KacProcess(a, c), KacProcess(1.0, 1.0)
    torch.testing.assert_close(k.density(t, x), (a / c) * k1.density(a * t, a * x / c), rtol=1e-10, atol=0)
    torch.testing.assert_close(k.velocity(t, x), c * k1.velocity(a * t, a * x / c), rtol=1e-10, atol=1e-300)


# ------------------------------------------------------------------------------------------------
# velocity
# ------------------------------------------------------------------------------------------------
@with_fixtures
@given(a=RATE, c=SPEED, t=TIME)
def test_velocity_matches_reference_formula(a, c, t, device):
    kp = KacProcess(a, c)
    y = torch.linspace(-0.999, 0.999, 41, dtype=F64) * c * t
    got = to_np(kp.velocity(torch.tensor(t, dtype=F64, device=device), y.to(device)))
    np.testing.assert_allclose(got, ref_velocity(a, c, t, to_np(y)), rtol=1e-12, atol=1e-300)


@with_fixtures
@given(a=RATE, c=SPEED, t=TIME)
def test_velocity_bounds_monotone_and_atoms(a, c, t, dtype, device):
    """|v| ≤ c; inside: |v| nondecreasing in |y| and ≤ c·at/(2+at); atoms (mask) get ±c exactly."""
    kp = KacProcess(a, c)
    tt = torch.tensor(t, dtype=dtype, device=device)
    ct = c * tt
    y = torch.linspace(0.0, 1.0, 401, dtype=dtype, device=device) * ct
    y = y[y < ct]
    v = kp.velocity(tt, y, atom_mask=torch.zeros_like(y, dtype=torch.bool))
    eps = EPS[dtype]
    assert (torch.diff(v) >= -4 * eps * c).all()
    vmax = float(kp.max_interior_speed(tt))
    assert vmax == pytest.approx(c * a * float(tt) / (2 + a * float(tt)), rel=4 * eps)
    assert float(v.abs().max()) <= vmax * (1 + 8 * eps)
    vneg = kp.velocity(tt, -y, atom_mask=torch.zeros_like(y, dtype=torch.bool))
    assert torch.equal(vneg, -v)
    # atoms from a mask: ±c whatever float rounding did to y
    yy = torch.cat([y, -y, torch.stack([ct, -ct])])
    mask = torch.zeros_like(yy, dtype=torch.bool)
    mask[::7] = True
    mask[-2:] = True
    mask &= yy != 0
    vm = kp.velocity(tt, yy, atom_mask=mask)
    assert torch.equal(vm[mask], c * torch.sign(yy[mask]))
    assert (vm.abs() <= c).all()
    # without a mask, exactly |y| = ct is an atom
    assert torch.equal(kp.velocity(tt, torch.stack([ct, -ct])), torch.tensor([c, -c], dtype=dtype, device=device))


@given(a=RATE, c=SPEED, t=TIME, s=st.floats(0.0, 1.0))
def test_velocity_near_cone_is_y_over_t_plus_2_over_a(a, c, t, s):
    """Within z ≤ 1e-3 of the cone v = y/(t + 2/a) up to a relative O(z²)."""
    ct = c * t
    zmax = 1e-3
    r = s * zmax * c / a
    y = math.sqrt(max(ct * ct - r * r, 0.0))
    assume(0 < y < ct)
    v = float(KacProcess(a, c).velocity(t, torch.tensor([y], dtype=F64)))
    z = a * math.sqrt((ct - y) * (ct + y)) / c
    assert v == pytest.approx(y / (t + 2 / a), rel=z * z / 8 + 1e-13)


def test_velocity_large_z_tends_to_diffusion():
    """v → y/(2t) for at → ∞ with y on the Gaussian scale: error O(1/(at))."""
    kp = KacProcess(1.0, 1.0)
    errs = []
    for at in (1e2, 1e3, 1e4):
        y = torch.tensor([0.3, 1.0, 2.0], dtype=F64) * math.sqrt(at)
        v = kp.velocity(at, y)
        err = float(((v - y / (2 * at)) / (y / (2 * at))).abs().max())
        assert err <= 2.0 / at
        errs.append(err)
    assert errs[0] > 5 * errs[1] > 25 * errs[2]


def _velocity_f32_vs_f64(kp, t32, y32):
    mask = torch.zeros_like(y32, dtype=torch.bool)
    v32 = kp.velocity(t32, y32, atom_mask=mask).double()
    v64 = kp.velocity(t32.double(), y32.double(), atom_mask=mask)
    return float((v32 - v64).abs().max())


def _cone_points(t32, c, n_uniform, ulps=4):
    """Float32 interior points for times ``t32: (R, 1)``: ``n_uniform`` uniform ones per row plus the
    last ``ulps`` floats below ±ct (ct = c * t32 in float32, as kac.py computes it).
    Returns flat ``(y, t)`` with ``|y| < ct``."""
    ct = c * t32
    near, cur = [], ct
    for _ in range(ulps):
        cur = torch.nextafter(cur, torch.zeros_like(cur))
        near.append(cur)
    near = torch.cat(near, dim=1)
    g = torch.Generator().manual_seed(1)
    u = (2 * torch.rand(t32.shape[0], n_uniform, generator=g) - 1) * ct
    y = torch.cat([u, near, -near], dim=1)
    t = t32.expand_as(y)
    inside = y.abs() < ct
    return y[inside], t[inside]


def test_velocity_float32_accuracy_training_regime():
    """a=9, c=3 (the default regime), t ~ U(0,1) plus t = 1e-7: max |v32 - v64| ≤ 1e-6 c inside the
    cone, including the last 4 floats below the cone (v64 evaluated at the same float32 inputs)."""
    kp = KacProcess(9.0, 3.0)
    g = torch.Generator().manual_seed(0)
    t32 = torch.cat([torch.rand(200, 1, generator=g, dtype=F32), torch.tensor([[1e-7], [1e-6], [1.0]], dtype=F32)])
    y, t = _cone_points(t32, 3.0, 200)
    assert _velocity_f32_vs_f64(kp, t, y) <= 1e-6 * 3.0


@given(a=RATE, c=SPEED, t=TIME)
def test_velocity_float32_accuracy_everywhere(a, c, t):
    """Max |v32 - v64| ≤ c·(1e-6 + at·eps32/2): the second term is the conditioning of v near the cone
    under one-ulp changes of y or ct (δv/v ≈ (at)² eps/(2(2+at))); it only matters for at ≳ 16."""
    kp = KacProcess(a, c)
    t32 = torch.tensor([[t]], dtype=F32)
    y, tt = _cone_points(t32, c, 400)
    assume(y.numel() > 0)
    at = a * float(t32)
    assert _velocity_f32_vs_f64(kp, tt, y) <= c * (1e-6 + at * EPS[F32] / 2)


def test_velocity_is_conditional_mean_of_simulated_paths():
    """v(t, y) = E[V_t | K_t = y]: per bin of K_t, mean(V_t) - mean(v(t, K_t)) is pure Monte Carlo
    noise (no binning bias, since E[V | bin] = E[v(K) | bin]); atoms (no switch yet) excluded.
    The same statistic rejects the diffusion field y/(2t) and the Kac field of rate a/2 (λ = a taken
    for the switching rate)."""
    a, c, n = 9.0, 3.0, 200_000
    kp = KacProcess(a, c)
    g = torch.Generator().manual_seed(123)
    paths = kp.simulate_paths([0.05, 0.3, 1.0], n, generator=g)

    def zscores(field):
        out = []
        for k, t in enumerate(paths.times.tolist()):
            keep = ~paths.atom_mask[:, k]
            K, V = paths.positions[keep, k], paths.velocities[keep, k]
            d = V - field(t, K)
            edges = torch.quantile(K, torch.linspace(0, 1, 21, dtype=F64))
            idx = torch.bucketize(K, edges[1:-1].contiguous())
            cnt = torch.bincount(idx, minlength=20).double()
            s1 = torch.bincount(idx, weights=d, minlength=20)
            s2 = torch.bincount(idx, weights=d * d, minlength=20)
            mean = s1 / cnt
            var = (s2 - cnt * mean**2) / (cnt - 1)
            out.append(to_np(mean / torch.sqrt(var / cnt)))
        return np.concatenate(out)

    def kac_field(proc):
        return lambda t, K: proc.velocity(t, K, atom_mask=torch.zeros_like(K, dtype=torch.bool))

    zs = zscores(kac_field(kp))
    limit = stats.chi2.ppf(1 - 1e-4, zs.size)
    assert np.abs(zs).max() < 5.0
    assert (zs**2).sum() < limit
    assert (zscores(lambda t, K: K / (2 * t)) ** 2).sum() > 5 * limit
    assert (zscores(kac_field(KacProcess(a / 2, c))) ** 2).sum() > 5 * limit


# ------------------------------------------------------------------------------------------------
# diffusion limit
# ------------------------------------------------------------------------------------------------
def test_diffusion_limit_rate():
    """a → ∞ with c²/a = 1: sup|p - N(0, c²t/a)| and |v - x/(2t)| on fixed x decrease like 1/a."""
    t = 1.0
    x = torch.linspace(-6.0, 6.0, 2401, dtype=F64)
    xs = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    gauss = torch.exp(-x * x / (2 * t)) / math.sqrt(2 * math.pi * t)
    dens, vel = [], []
    for a in (10.0, 100.0, 1000.0):
        kp = KacProcess(a, math.sqrt(a))
        dens.append(float((kp.density(t, x) - gauss).abs().max()))
        vel.append(float((kp.velocity(t, xs) - xs / (2 * t)).abs().max()))
    for e in (dens, vel):
        assert e[0] < 0.2
        for big, small in zip(e[:-1], e[1:]):
            assert 6.0 < big / small < 15.0, e


# ------------------------------------------------------------------------------------------------
# event-driven paths
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim():
    kp = KacProcess(9.0, 3.0)
    grid = torch.linspace(0.0, 1.0, 41, dtype=F64)[1:]
    g = torch.Generator().manual_seed(7)
    return kp, kp.simulate_paths(grid, 20_000, generator=g)


def test_paths_finite_speed_and_velocity(sim):
    kp, P = sim
    dt = torch.diff(P.times)
    dk = torch.diff(P.positions, dim=1).abs()
    assert (dk <= kp.c * dt * (1 + 1e-12) + 1e-15).all()
    assert (P.velocities.abs() == kp.c).all()
    # atoms: K = ±ct exactly and V = sign(K) c (the path has not switched)
    m = P.atom_mask
    ct = (kp.c * P.times).expand_as(P.positions)
    assert torch.equal(P.positions[m].abs(), ct[m])
    assert torch.equal(P.velocities[m], kp.c * torch.sign(P.positions[m]))
    assert (P.positions[~m].abs() < ct[~m]).all()
    v = kp.velocity(P.times, P.positions, atom_mask=m)
    assert torch.equal(v[m], P.velocities[m])


def test_paths_no_switch_fraction_and_variance(sim):
    kp, P = sim
    n = P.positions.shape[0]
    for k in (0, 9, 39):
        t = float(P.times[k])
        q = math.exp(-kp.a * t)
        frac = float(P.atom_mask[:, k].double().mean())
        assert abs(frac - q) < 5 * math.sqrt(q * (1 - q) / n)
        K = P.positions[:, k]
        m2, m4 = float((K**2).mean()), float((K**4).mean())
        assert abs(m2 - float(kp.variance(t))) < 5 * math.sqrt((m4 - m2 * m2) / n)
        assert abs(float(K.mean())) < 5 * math.sqrt(m2 / n)


def ks_statistic(kp, t, samples, atom_mask=None):
    """sup |F_n - F| for a law with atoms: compare with F(x) and with F(x-) = F(x) - jump(x).
    Samples flagged by `atom_mask` are put at ±ct in float64 (a float32 atom sits at fl32(c t))."""
    samples = samples.double().reshape(-1)
    if atom_mask is not None:
        samples = torch.where(atom_mask.reshape(-1), torch.sign(samples) * kp.c * t, samples)
    xs = torch.sort(samples).values
    n = xs.numel()
    F = to_np(kp.cdf(t, xs))
    ct = kp.c * t
    jump = np.where(np.abs(np.abs(to_np(xs)) - ct) == 0, math.exp(-kp.a * t) / 2, 0.0)
    i = np.arange(1, n + 1)
    return max(np.max(i / n - F), np.max(F - jump - (i - 1) / n))


def test_paths_law_matches_cdf(sim):
    kp, P = sim
    n = P.positions.shape[0]
    for k in (2, 39):
        d = ks_statistic(kp, float(P.times[k]), P.positions[:, k])
        assert d < 1.95 / math.sqrt(n), (k, d)  # KS at level ~0.001 (conservative with atoms)


def test_sample_coordinates_independent_with_kac_marginals(dtype):
    kp = KacProcess(9.0, 3.0)
    g = torch.Generator().manual_seed(3)
    B, d = 6000, 3
    for t in (0.3, torch.full((B, 1), 0.3, dtype=dtype)):
        K, atoms = kp.sample(t, (B, d), generator=g, dtype=dtype, return_atoms=True)
        assert K.shape == (B, d) and K.dtype == dtype and atoms.shape == (B, d)
        corr = np.corrcoef(to_np(K).T)
        assert np.abs(corr - np.eye(d)).max() < 4.5 / math.sqrt(B)
        for j in range(d):
            assert ks_statistic(kp, 0.3, K[:, j], atoms[:, j]) < 1.95 / math.sqrt(B), j


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=0.0, c=1.0), r"^a \(switching rate\).*> 0"),
        (dict(a=-2.0, c=1.0), r"^a \(switching rate\)"),
        (dict(a=float("nan"), c=1.0), r"^a \(switching rate\)"),
        (dict(a=float("inf"), c=1.0), r"^a \(switching rate\)"),
        (dict(a=1.0, c=0.0), r"^c \(speed\).*> 0"),
        (dict(a=1.0, c=-1.0), r"^c \(speed\)"),
        (dict(a=1.0, c=float("nan")), r"^c \(speed\)"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KacProcess(**kwargs)


def test_bad_times_and_positions():
    kp = KacProcess(2.0, 1.0)
    x = torch.zeros(4, dtype=F64)
    nan_x = torch.tensor([0.0, float("nan")], dtype=F64)
    for f in (kp.density, kp.cdf, kp.velocity):
        with pytest.raises(ValueError, match=r"^t must lie in \[0"):
            f(-0.1, x)
        with pytest.raises(ValueError, match=r"^t must be finite"):
            f(float("nan"), x)
        with pytest.raises(ValueError, match=r"^t with shape \(3,\) does not broadcast"):
            f(torch.ones(3, dtype=F64), x)
    for f in (kp.density, kp.cdf):
        with pytest.raises(ValueError, match=r"^x must be finite"):
            f(0.5, nan_x)
    for f in (kp.variance, kp.atom_mass, kp.max_interior_speed, kp.std):
        with pytest.raises(ValueError, match=r"^t must lie in \[0"):
            f(-1.0)
        with pytest.raises(ValueError, match=r"^t must be finite"):
            f(float("inf"))
    with pytest.raises(ValueError, match=r"^t must lie in \[0"):
        kp.sample(torch.tensor([[-0.5]]), (1, 3))
    with pytest.raises(ValueError, match=r"^t with shape \(2, 1\) does not broadcast to shape"):
        kp.sample(torch.ones(2, 1), (3, 4))
    with pytest.raises(ValueError, match=r"^n \(number of paths\)"):
        kp.simulate_paths([0.5], 0)
    with pytest.raises(ValueError, match=r"^time_grid must lie in"):
        kp.simulate_paths([-0.5, 0.5], 10)


def test_bad_velocity_inputs_name_y_and_atom_mask():
    """velocity's arguments are (t, y, atom_mask): messages must name y (not x) and atom_mask."""
    kp = KacProcess(2.0, 1.0)
    y = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"^atom_mask must have the shape of y"):
        kp.velocity(0.5, y, atom_mask=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^y must be finite"):
        kp.velocity(0.5, torch.tensor([0.0, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match=r"^t with shape \(4,\) does not broadcast against y"):
        kp.velocity(torch.ones(4, dtype=F64), y)


def test_sample_shape_accepts_an_int_and_names_bad_shapes():
    """An int shape ``n`` means ``(n,)`` (as for torch.rand), with the same draws; anything but a sequence of
    ints >= 0 is a ValueError that names ``shape``."""
    kp = KacProcess(2.0, 1.0)
    for method in ("auto", "poisson_beta", "rowwise_icdf"):
        x = kp.sample(0.5, 1000, generator=torch.Generator().manual_seed(5), method=method)
        assert x.shape == (1000,)
        assert torch.equal(x, kp.sample(0.5, (1000,), generator=torch.Generator().manual_seed(5), method=method))
    assert kp.sample(0.5, np.int64(7)).shape == (7,)
    assert kp.sample(0.5, torch.Size([2, 3])).shape == (2, 3)
    assert kp.sample(0.5, [np.int64(2), 3]).shape == (2, 3)
    assert kp.sample(0.5, 0).shape == (0,)
    for bad in (2.5, "12", None, True, (2, 1.5), (2, None), [[2]], (True, 3), object()):
        with pytest.raises(ValueError, match=r"^shape must be an int or a sequence of ints"):
            kp.sample(0.5, bad)
    for bad in (-1, (2, -1)):
        with pytest.raises(ValueError, match=r"^shape must hold non-negative sizes"):
            kp.sample(0.5, bad)


def test_bessel_ratio_term_float32_matches_scipy():
    """z I0(z)/I1(z) in float32 (continued fraction / asymptotic branch) to 3e-7 relative on [0, 200]."""
    from scipy.special import ive

    from kacnum.processes.kac import bessel_ratio_term

    for zmax in (0.5, 3.0, 9.0, 16.0, 200.0):  # the CPU path picks its depth from max(z)
        z = np.linspace(0.0, zmax, 20001)
        ref = np.empty_like(z)
        ref[0] = 2.0
        ref[1:] = z[1:] * ive(0, z[1:]) / ive(1, z[1:])
        got = bessel_ratio_term(torch.tensor(z, dtype=torch.float32)).double().numpy()
        assert np.max(np.abs(got - ref) / ref) < 3e-7, zmax


def test_package_root_exports():
    import kacnum

    assert kacnum.KacProcess is KacProcess
    assert callable(kacnum.integrate) and kacnum.KacPath().process.a == 9.0
    assert kacnum.processes.telegrapher.__name__ == "kacnum.processes.telegrapher"
    with pytest.raises(AttributeError):
        kacnum.not_a_module
