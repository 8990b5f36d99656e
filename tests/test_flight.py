"""Tests of kacnum.processes.flight: the planar random flight (docs/mathematics.md §14).

References are independent of flight.py: sympy for the mass, the continuity equation and the second
moment; the closed forms of docs/mathematics.md §14 written out verbatim in numpy/mpmath; event-driven simulation for the law and
the conditional velocity; a Gaussian for the diffusion limit. Each statistical check has a negative twin
(a wrong sampler or a wrong velocity) that must fail the same criterion.
"""
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import kacnum
from kacnum.processes.flight import FlightPaths, PlanarFlight

F32, F64 = torch.float32, torch.float64
EPS = {F32: float(torch.finfo(F32).eps), F64: float(torch.finfo(F64).eps)}
KS_CRIT = 1.63  # sqrt(n)·D at the 1% level (Kolmogorov distribution)
KS_SETS = [(9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (900.0, 10.0, 1.0)]


# ------------------------------------------------------------------------------------------------
# references written here
# ------------------------------------------------------------------------------------------------
def spec_cont_cdf(lam, c, t, r):
    """P(|X_t| ≤ r, not on the circle) = 1 - exp(-λt + (λ/c) sqrt(c²t² - r²)), verbatim (float64 numpy)."""
    r = np.minimum(np.asarray(r, float), c * t)
    return 1.0 - np.exp(-lam * t + (lam / c) * np.sqrt(c * c * t * t - r * r))


def spec_log_density_mp(lam, c, t, r, dps=60):
    """log p = log(λ/(2πc)) - λt + (λ/c) q - log q at high precision (mpmath), and its condition number
    1 + |log p| + |r ∂r log p| + |t ∂t log p| (the error a correctly rounded evaluation may have, in ulps)."""
    with mpmath.workdps(dps):
        lam, c, t, r = (mpmath.mpf(v) for v in (lam, c, t, r))
        q = mpmath.sqrt(c * c * t * t - r * r)
        lp = mpmath.log(lam / (2 * mpmath.pi * c)) - lam * t + (lam / c) * q - mpmath.log(q)
        dr = -(lam / c) * r / q + r / q**2
        dt = -lam + lam * c * t / q - c * c * t / q**2
        return float(lp), float(1 + abs(lp) + abs(r * dr) + abs(t * dt))


def ks_sqrt_n_d(values, cdf):
    """sqrt(n)·D of the one-sample KS statistic of ``values`` against the continuous CDF ``cdf`` (numpy)."""
    v = np.sort(np.asarray(values, float))
    n = v.size
    F = cdf(v)
    i = np.arange(1, n + 1)
    d = max(np.max(i / n - F), np.max(F - (i - 1) / n))
    return math.sqrt(n) * d


def radii(x):
    """|pair| in float64 for a (..., 2k) tensor: (..., k)."""
    xp = x.double().reshape(x.shape[:-1] + (x.shape[-1] // 2, 2))
    return torch.hypot(xp[..., 0], xp[..., 1])


def pair_mask(mask):
    return mask.reshape(mask.shape[:-1] + (mask.shape[-1] // 2, 2))[..., 0]


def sampled_radii(lam, c, t, n, seed, dtype=F64):
    """n pairs drawn as a (n/200, 400) tensor; returns (non-atom radii, number of atoms)."""
    g = torch.Generator().manual_seed(seed)
    x, m = PlanarFlight(lam, c).sample(t, (n // 200, 400), generator=g, dtype=dtype, return_atoms=True)
    rho, am = radii(x).reshape(-1), pair_mask(m).reshape(-1)
    return rho[~am].numpy(), int(am.sum())


def ks_and_atoms(lam, c, t, n, seed, dtype=F64, sampler_lam=None):
    """KS sqrt(n)·D of the continuous radii against the closed-form conditional CDF and the atom share's z-score."""
    rho, n_atoms = sampled_radii(sampler_lam or lam, c, t, n, seed, dtype)
    cont_mass = -math.expm1(-lam * t)
    ks = ks_sqrt_n_d(rho, lambda r: spec_cont_cdf(lam, c, t, r) / cont_mass)
    p = math.exp(-lam * t)
    z = (n_atoms - n * p) / math.sqrt(n * p * (1 - p)) if p * n > 1e-6 else (0.0 if n_atoms == 0 else math.inf)
    return ks, z, n_atoms / n


@pytest.fixture(scope="module")
def flights():
    """Event-driven flights at (λ, c, t) = (9, 3, 0.4) and (9, 3, 1): {t: (λ, c, FlightPaths)}."""
    out = {}
    for t, n, seed in ((0.4, 200_000, 11), (1.0, 100_000, 12)):
        out[t] = PlanarFlight(9.0, 3.0).simulate_paths([t], n, generator=torch.Generator().manual_seed(seed))
    return out


# ------------------------------------------------------------------------------------------------
# the closed forms, symbolically
# ------------------------------------------------------------------------------------------------
def test_symbolic_mass_continuity_and_second_moment():
    sp = pytest.importorskip("sympy")
    lam, c, t, r = sp.symbols("lambda c t r", positive=True)
    q = sp.sqrt(c**2 * t**2 - r**2)
    p = lam / (2 * sp.pi * c) * sp.exp(-lam * t + lam * q / c) / q
    u_r = c * (c * t - q) / r
    # continuity equation in polar coordinates for a radial field: ∂t p + (1/r) ∂r (r p u_r) = 0
    assert sp.simplify(sp.diff(p, t) + sp.diff(r * p * u_r, r) / r) == 0
    # a wrong field (the diffusive x/(2t)) leaves a residual
    assert sp.simplify(sp.diff(p, t) + sp.diff(r * p * r / (2 * t), r) / r) != 0
    # mass of the continuous part
    mass = sp.integrate(2 * sp.pi * r * p, (r, 0, c * t))
    assert sp.simplify(mass - (1 - sp.exp(-lam * t))) == 0
    # radial CDF of the continuous part (docs/mathematics.md §14) is the integral of 2πr p
    rr = sp.symbols("rr", positive=True)
    cdf = 1 - sp.exp(-lam * t + lam / c * sp.sqrt(c**2 * t**2 - rr**2))
    assert sp.simplify(sp.diff(cdf, rr) - (2 * sp.pi * r * p).subs(r, rr)) == 0
    assert sp.simplify(cdf.subs(rr, 0)) == 0
    # E|X|² (atom at radius ct included) = 2c²/λ² (λt - 1 + e^{-λt})
    m2 = sp.integrate(r**2 * 2 * sp.pi * r * p, (r, 0, c * t)) + sp.exp(-lam * t) * c**2 * t**2
    assert sp.simplify(m2 - 2 * c**2 / lam**2 * (lam * t - 1 + sp.exp(-lam * t))) == 0
    # the conditional velocity is speed c at the circle and x/(2t) at the origin
    assert sp.simplify(sp.limit(u_r, r, c * t, "-") - c) == 0
    assert sp.simplify(sp.limit(u_r / r, r, 0, "+") - 1 / (2 * t)) == 0


# ------------------------------------------------------------------------------------------------
# the implementation against the formulas
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam,c,t", [(9.0, 3.0, 0.3), (0.5, 2.0, 1.0), (50.0, 1.0, 0.2)])
def test_density_matches_spec_formula(lam, c, t):
    rng = np.random.default_rng(0)
    r = c * t * np.sqrt(rng.uniform(0, 1, 500)) * 0.999
    th = rng.uniform(0, 2 * np.pi, 500)
    x = torch.tensor(np.stack([r * np.cos(th), r * np.sin(th)], -1))
    q = np.sqrt(c * c * t * t - r * r)
    ref = lam / (2 * np.pi * c) * np.exp(-lam * t + lam / c * q) / q
    got = PlanarFlight(lam, c).density(t, x).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-11)
    np.testing.assert_allclose(PlanarFlight(lam, c).log_density(t, x).numpy(), np.log(ref), rtol=1e-11, atol=1e-11)
    # float32 agrees with float64 to single precision
    got32 = PlanarFlight(lam, c).density(t, x.float()).double().numpy()
    np.testing.assert_allclose(got32, ref, rtol=2e-5)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("lam,c,t", [(1000.0, 1.0, 10.0), (1000.0, 3.0, 1e-6), (0.1, 0.5, 1e-7), (0.1, 100.0, 10.0)])
def test_log_density_extreme_parameters_high_precision(lam, c, t, dtype):
    """Where exp(-λt) and exp((λ/c) q) overflow or cancel, the log-space form stays accurate to a few ulps
    times the condition number (the naive -λt + (λ/c) q loses ~λt ulps at small |x|)."""
    ct = c * t
    sd = min(ct, math.sqrt(2 * c * c / lam * t))
    rs = [0.0, 1e-3 * sd, 0.1 * sd, 0.3 * sd, sd, 0.5 * ct, 0.9 * ct, 0.999 * ct, ct, 1.5 * ct]
    f = PlanarFlight(lam, c)
    x = torch.tensor([[r, 0.0] for r in rs], dtype=F64).to(dtype)
    t_d = torch.tensor(t, dtype=dtype)
    ct_d = float(c * t_d)  # the implementation's ct (in dtype)
    got = f.log_density(t_d, x).double()
    dens = f.density(t_d, x).double()
    assert bool(torch.isfinite(dens).all()) and bool((dens >= 0).all())
    checked = 0
    for i, r in enumerate(x[:, 0].double().tolist()):  # the points actually evaluated (rounded to dtype)
        if r >= ct_d:
            assert float(got[i]) == -math.inf and float(dens[i]) == 0.0
            continue
        ref, cond = spec_log_density_mp(lam, c, float(t_d), r)
        assert abs(float(got[i]) - ref) <= 8 * EPS[dtype] * cond, (r, float(got[i]), ref, cond)
        assert float(dens[i]) == pytest.approx(math.exp(ref), rel=8 * EPS[dtype] * cond + 1e-300)
        checked += 1
    assert checked >= 6


def _disc_quadrature(f, lam, c, t, g=None, panels=64, nodes=16):
    """∫ g(r) p(r) 2πr dr over the disc with r = ct sin φ (removes the 1/q edge singularity)."""
    ct = c * t
    # beyond 1 - cos φ = 80/(λt) the integrand is below e^{-80}
    phimax = math.pi / 2 if lam * t <= 40 else math.acos(1 - 80 / (lam * t))
    xg, wg = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(0, phimax, panels + 1)
    phi = ((edges[:-1, None] + edges[1:, None]) / 2 + (edges[1:, None] - edges[:-1, None]) / 2 * xg).ravel()
    w = ((edges[1:, None] - edges[:-1, None]) / 2 * wg).ravel()
    r = ct * np.sin(phi)
    p = f.density(t, torch.tensor(np.stack([r, np.zeros_like(r)], -1))).numpy()
    integrand = 2 * np.pi * r * p * ct * np.cos(phi) * (1.0 if g is None else g(r))
    return float(np.sum(w * integrand))


@pytest.mark.parametrize("lam,c,t", [(9.0, 3.0, 0.3), (9.0, 3.0, 1.0), (900.0, 10.0, 1.0), (0.1, 1.0, 0.01), (1000.0, 2.0, 10.0)])
def test_density_mass_and_variance_by_quadrature(lam, c, t):
    f = PlanarFlight(lam, c)
    mass = _disc_quadrature(f, lam, c, t)
    cont = -math.expm1(-lam * t)
    assert mass == pytest.approx(cont, rel=1e-11)
    assert float(f.atom_mass(t)) + mass == pytest.approx(1.0, abs=1e-12)
    m2 = _disc_quadrature(f, lam, c, t, g=lambda r: r * r) + math.exp(-lam * t) * (c * t) ** 2
    assert float(f.variance(t)) == pytest.approx(m2 / 2, rel=1e-10)


def test_variance_limits_and_series():
    f = PlanarFlight(9.0, 3.0)
    # ballistic (no event): c²t²/2 per coordinate; diffusive: (c²/λ) t - c²/λ²
    for t in (1e-9, 1e-6, 1e-4, 1e-3, 2e-3):
        x = 9.0 * t
        ref = float(mpmath.mpf(9.0) / 81 * (x - 1 + mpmath.exp(-mpmath.mpf(x))))  # c²/λ² = 1/9
        assert float(f.variance(t)) == pytest.approx(ref, rel=1e-12)
    assert float(f.variance(50.0)) == pytest.approx(50.0 - 1 / 9, rel=1e-14)
    assert f.variance(torch.tensor([0.1, 1.0], dtype=F32)).dtype == F32
    assert float(f.variance(0.0)) == 0.0


def test_variance_and_isotropy_of_moments_by_sampling():
    f, t, n = PlanarFlight(9.0, 3.0), 0.4, 400_000
    x = f.sample(t, (n // 100, 200), generator=torch.Generator().manual_seed(3), dtype=F64).reshape(-1, 2)
    var = float(f.variance(t))
    z = [(float((x[:, j] ** 2).mean()) - var) / (float((x[:, j] ** 2).std()) / math.sqrt(n)) for j in (0, 1)]
    z.append(float((x[:, 0] * x[:, 1]).mean()) / (float((x[:, 0] * x[:, 1]).std()) / math.sqrt(n)))
    assert max(abs(v) for v in z) < 4.0, z
    # a factor 2 in the variance (e.g. E|X|² reported per coordinate) is far outside the noise
    assert abs(float((x ** 2).mean()) - 2 * var) / (float((x ** 2).std()) / math.sqrt(2 * n)) > 20


def test_radial_cdf_is_the_integral_of_the_density():
    f, t = PlanarFlight(9.0, 3.0), 0.5
    ct = 1.5
    r = torch.linspace(0.05, 0.98, 40, dtype=F64) * ct
    h = 1e-6
    dF = (f.radial_cdf(t, r + h) - f.radial_cdf(t, r - h)) / (2 * h)
    pr = 2 * math.pi * r * f.density(t, torch.stack([r, torch.zeros_like(r)], -1))
    torch.testing.assert_close(dF, pr, rtol=1e-7, atol=0)
    np.testing.assert_allclose(f.radial_cdf(t, r).numpy(), spec_cont_cdf(9.0, 3.0, t, r.numpy()), rtol=1e-13)
    # the jump at the circle is the atom; right-continuous; 0 below 0
    r_b = ct * (1 - 1e-15)
    below = float(f.radial_cdf(t, torch.tensor(r_b, dtype=F64)))
    q = math.sqrt((ct - r_b) * (ct + r_b))  # 1 - F(r) = e^{-λt} e^{(λ/c) q} just below ct (ct - r_b is exact)
    assert below == pytest.approx(-math.expm1(-4.5 + 3.0 * q), rel=1e-12) and below < -math.expm1(-4.5)
    assert float(f.radial_cdf(t, torch.tensor(ct, dtype=F64))) == 1.0
    assert float(f.radial_cdf(t, torch.tensor(-0.1, dtype=F64))) == 0.0
    assert float(f.radial_cdf(0.0, torch.tensor(0.0, dtype=F64))) == 1.0
    # broadcasting, dtype
    out = f.radial_cdf(torch.tensor([[0.1], [1.0]], dtype=F32), torch.tensor([0.1, 0.2, 0.3], dtype=F32))
    assert out.shape == (2, 3) and out.dtype == F32


def test_continuity_equation_holds_for_the_implementation():
    """∂t p + (1/r) ∂r (r p u_r) = 0 by finite differences of density() and velocity() (float64)."""
    f = PlanarFlight(9.0, 3.0)

    def p(t, r):
        return float(f.density(t, torch.tensor([[r, 0.0]], dtype=F64)))

    def flux(t, r, scale=1.0):  # r p u_r
        u = float(f.velocity(t, torch.tensor([[r, 0.0]], dtype=F64))[0, 0]) * scale
        return r * p(t, r) * u

    rng = np.random.default_rng(1)
    for _ in range(20):
        t = rng.uniform(0.05, 1.5)
        r = rng.uniform(0.02, 0.95) * 3.0 * t
        h = 1e-5 * t
        dpt = (p(t + h, r) - p(t - h, r)) / (2 * h)
        div = (flux(t, r + h) - flux(t, r - h)) / (2 * h) / r
        assert abs(dpt + div) < 1e-6 * (abs(dpt) + abs(div)), (t, r, dpt, div)
    # a 1% error in the velocity breaks it at these points
    t, r = 0.4, 0.6
    h = 1e-5
    dpt = (p(t + h, r) - p(t - h, r)) / (2 * h)
    div = (flux(t, r + h, 1.01) - flux(t, r - h, 1.01)) / (2 * h) / r
    assert abs(dpt + div) > 1e-4 * (abs(dpt) + abs(div))


# ------------------------------------------------------------------------------------------------
# the sampler: exact radial law, atoms, isotropy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("lam,c,t", KS_SETS)
def test_sampler_radial_law_ks_and_atoms(lam, c, t, dtype):
    ks, z, share = ks_and_atoms(lam, c, t, 200_000, seed=int(lam * 7 + t * 100), dtype=dtype)
    assert ks < KS_CRIT, ks
    assert abs(z) < 4.0, (z, share, math.exp(-lam * t))
    # the same criterion rejects a sampler with λ doubled
    ks_bad, _, _ = ks_and_atoms(lam, c, t, 200_000, seed=5, dtype=dtype, sampler_lam=2 * lam)
    assert ks_bad > KS_CRIT, ks_bad


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("lam,c,t", KS_SETS)
def test_sampler_radial_law_ks_1e6(lam, c, t, dtype):
    ks, z, share = ks_and_atoms(lam, c, t, 1_000_000, seed=int(lam * 13 + t * 10), dtype=dtype)
    print(f"lam={lam} c={c} t={t} {dtype}: sqrt(n)D={ks:.3f} atom share={share:.5f} (exact {math.exp(-lam * t):.5f}) z={z:.2f}")
    assert ks < KS_CRIT and abs(z) < 4.0


def test_event_driven_paths_follow_the_closed_form(flights):
    """The simulation (no closed form used) agrees with the closed-form radial law: KS and atom share."""
    for t, paths in flights.items():
        assert isinstance(paths, FlightPaths)
        pos, am = paths.positions[:, 0], paths.atom_mask[:, 0]
        rho = torch.hypot(pos[:, 0], pos[:, 1])
        assert float(rho.max()) <= 3.0 * t * (1 + 1e-12)
        torch.testing.assert_close(rho[am], torch.full_like(rho[am], 3.0 * t), rtol=1e-12, atol=0)
        n, p = am.numel(), math.exp(-9.0 * t)
        assert abs(int(am.sum()) - n * p) < 4 * math.sqrt(n * p * (1 - p))
        ks = ks_sqrt_n_d(rho[~am].numpy(), lambda r: spec_cont_cdf(9.0, 3.0, t, r) / -math.expm1(-9.0 * t))
        assert ks < KS_CRIT, (t, ks)
        # speed c along the paths
        torch.testing.assert_close(paths.velocities.norm(dim=-1), torch.full((n, 1), 3.0, dtype=F64))


def radius_at_level_mp(lam, c, t, v, dps=60):
    """Quantile of |X_t| at level v from the closed-form CDF, solved in closed form at high precision:
    exp(-λt + (λ/c) q) = 1 - v  =>  q = ct + (c/λ) log(1 - v), r = sqrt(c²t² - q²); ct on the atom."""
    with mpmath.workdps(dps):
        lam, c, t, v = (mpmath.mpf(x) for x in (lam, c, t, v))
        q = c * t + (c / lam) * mpmath.log(1 - v) if v < 1 else -1
        return float(c * t) if q <= 0 else float(mpmath.sqrt(c * c * t * t - q * q))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("lam,c,t", [(1000.0, 1.0, 10.0), (900.0, 10.0, 1.0), (9.0, 3.0, 0.3), (0.1, 2.0, 1e-7), (1000.0, 0.1, 1e-7)])
def test_radial_quantile_to_a_few_ulps(lam, c, t, dtype):
    """The sampler's map uniform -> radius, against mpmath: relative error of a few ulps at every level
    (the form sqrt(c²t² - q²) loses ~λt ulps where q ≈ ct, i.e. in the bulk when λt is large)."""
    f = PlanarFlight(lam, c)
    levels = [0.0, 2.0**-24, 1e-6, 1e-3, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999, 1 - 2.0**-24, 1.0]
    v = torch.tensor(levels, dtype=dtype)
    t_d = torch.tensor(t, dtype=dtype)
    got = f.radial_quantile(t_d, v).double().tolist()
    ref = [radius_at_level_mp(lam, c, float(t_d), x) for x in v.double().tolist()]
    tol = 8 * EPS[dtype]
    for lv, g, r in zip(v.double().tolist(), got, ref):
        assert abs(g - r) <= tol * r + 1e-300, (lv, g, r)
    # the quantile inverts the CDF: F(Q(v)) = v off the atom, and Q(v) = ct on it
    vv = torch.rand(1000, generator=torch.Generator().manual_seed(2), dtype=F64)
    q = f.radial_quantile(t, vv)
    cont = -math.expm1(-lam * t)
    off = vv < cont
    torch.testing.assert_close(f.radial_cdf(t, q)[off], vv[off], rtol=1e-9, atol=1e-12)
    assert bool((q[~off] == c * t).all())


def _angle_tests(x, mask, bins_a=8, bins_r=4):
    """(KS sqrt(n)D of the angle vs uniform, chi² statistic and its 1% critical value for angle ⟂ radius)."""
    xp = x.double().reshape(-1, 2)
    ang = (torch.atan2(xp[:, 1], xp[:, 0]) / (2 * math.pi)) % 1.0
    ks = ks_sqrt_n_d(ang.numpy(), lambda u: np.clip(u, 0, 1))
    keep = ~pair_mask(mask).reshape(-1)
    a, r = ang[keep].numpy(), torch.hypot(xp[keep, 0], xp[keep, 1]).numpy()
    ai = np.minimum((a * bins_a).astype(int), bins_a - 1)
    ri = np.searchsorted(np.quantile(r, np.linspace(0, 1, bins_r + 1)[1:-1]), r)
    table = np.zeros((bins_a, bins_r))
    np.add.at(table, (ai, ri), 1)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return ks, chi2, stats.chi2.ppf(0.99, (bins_a - 1) * (bins_r - 1))


def test_isotropy_angle_uniform_and_independent_of_radius():
    f = PlanarFlight(9.0, 3.0)
    x, m = f.sample(0.3, (1000, 400), generator=torch.Generator().manual_seed(4), return_atoms=True, dtype=F32)
    ks, chi2, crit = _angle_tests(x, m)
    assert ks < KS_CRIT and chi2 < crit, (ks, chi2, crit)
    # negative twin: angles squeezed by 5% in the outer half of the radii (the marginal stays nearly uniform)
    xp = x.double().reshape(-1, 2)
    rho = torch.hypot(xp[:, 0], xp[:, 1])
    ang = torch.atan2(xp[:, 1], xp[:, 0]) % (2 * math.pi)
    ang = torch.where(rho > rho.median(), 0.95 * ang, ang)
    bad = torch.stack([rho * torch.cos(ang), rho * torch.sin(ang)], -1).reshape(x.shape)
    _, chi2_bad, _ = _angle_tests(bad, m)
    assert chi2_bad > crit, chi2_bad


def test_sampler_conventions_per_row_time_dtype_generator():
    f = PlanarFlight(9.0, 3.0)
    t = torch.tensor([[0.0], [0.1], [1.0]], dtype=F32)
    g = torch.Generator().manual_seed(7)
    x, m = f.sample(t, (3, 4000), generator=g, return_atoms=True)
    assert x.dtype == F32 and x.shape == (3, 4000) and m.shape == (3, 4000) and m.dtype == torch.bool
    assert torch.equal(x[0], torch.zeros(4000)) and bool(m[0].all())
    rho = radii(x)
    ct = (3.0 * t).double()
    assert bool((rho <= ct * (1 + 4 * EPS[F32])).all())
    # atoms sit on the circle (non-atoms may round onto it too: r = sqrt(w(2ct - w)) is flat at w = ct)
    am = pair_mask(m)
    assert bool((rho[1:][am[1:]] >= (ct[1:] * (1 - 4 * EPS[F32])).expand_as(rho[1:])[am[1:]]).all())
    n1, p1 = 2000, math.exp(-0.9)  # row 1: λt = 0.9; row 2: λt = 9 (expected 0.25 atoms)
    assert abs(int(am[1].sum()) - n1 * p1) < 4 * math.sqrt(n1 * p1 * (1 - p1)) and int(am[2].sum()) <= 4
    # same generator state, same draws
    x2 = f.sample(t, (3, 4000), generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, x2)
    # rows get their own time: mean |X|² per row against 2·variance(t_row)
    tt = torch.tensor([[0.1], [1.0]], dtype=F64)
    y = f.sample(tt, (2, 400_000), generator=torch.Generator().manual_seed(8))
    assert y.dtype == F64
    r2 = radii(y) ** 2
    for i in range(2):
        z = (float(r2[i].mean()) - 2 * float(f.variance(tt[i, 0]))) / (float(r2[i].std()) / math.sqrt(r2.shape[1]))
        assert abs(z) < 4.0, (i, z)
    # a time per coordinate is allowed when equal within pairs; shapes with more dims
    tp = torch.tensor([0.1, 0.1, 1.0, 1.0], dtype=F64).expand(5, 4)
    assert f.sample(tp, (5, 4)).shape == (5, 4)
    assert f.sample(0.5, (2, 3, 6), dtype=F64).shape == (2, 3, 6)
    assert f.sample(0.5, (0, 6)).shape == (0, 6)
    assert f.sample(0.5, (2,)).shape == (2,)


# ------------------------------------------------------------------------------------------------
# conditional velocity
# ------------------------------------------------------------------------------------------------
def _velocity_z_scores(paths, t, ur_fn, bins=10):
    """Per radius bin, z-score of mean(V·x̂ - u_r(x)) (expectation exactly 0 for the true u) and of V·x̂⊥."""
    pos, vel, am = paths.positions[:, 0], paths.velocities[:, 0], paths.atom_mask[:, 0]
    pos, vel = pos[~am], vel[~am]
    rho = torch.hypot(pos[:, 0], pos[:, 1])
    xhat = pos / rho[:, None]
    vr = (vel * xhat).sum(-1)
    vt = vel[:, 1] * xhat[:, 0] - vel[:, 0] * xhat[:, 1]
    d = vr - ur_fn(pos, rho)
    order = torch.argsort(rho)
    zr, zt = [], []
    for idx in torch.tensor_split(order, bins):
        for series, out in ((d[idx], zr), (vt[idx], zt)):
            out.append(float(series.mean()) / (float(series.std()) / math.sqrt(idx.numel())))
    return np.array(zr), np.array(zt)


@pytest.mark.parametrize("t", [0.4, 1.0])
def test_velocity_is_the_conditional_mean_of_simulated_paths(flights, t):
    f = PlanarFlight(9.0, 3.0)
    paths = flights[t]

    def ur_true(pos, rho):
        return (f.velocity(t, pos) * pos).sum(-1) / rho

    # per bin |z| < 4, and sum of z² over the 10 bins below the 0.1% point of chi²(10)
    crit = stats.chi2.ppf(0.999, 10)
    zr, zt = _velocity_z_scores(paths, t, ur_true)
    assert np.max(np.abs(zr)) < 4.0 and np.max(np.abs(zt)) < 4.0, (zr, zt)
    assert np.sum(zr**2) < crit and np.sum(zt**2) < crit, (zr, zt)
    # negative twins fail the same criteria: the diffusive field x/(2t), and the true one 10% too small
    for wrong in (lambda pos, rho: rho / (2 * t), lambda pos, rho: 0.9 * ur_true(pos, rho)):
        zw, _ = _velocity_z_scores(paths, t, wrong)
        assert np.sum(zw**2) > crit, zw
    # atoms move radially at speed c, which is what velocity() gives them
    am = paths.atom_mask[:, 0]
    pos = paths.positions[am, 0]
    mask = torch.ones_like(pos, dtype=torch.bool)
    torch.testing.assert_close(f.velocity(t, pos, atom_mask=mask), paths.velocities[am, 0], rtol=1e-12, atol=1e-12)


def test_velocity_limits_and_bounds():
    f, c = PlanarFlight(9.0, 3.0), 3.0
    t = 0.7
    ct = c * t
    th = torch.linspace(0, 2 * math.pi, 13, dtype=F64)[:, None]
    unit = torch.cat([torch.cos(th), torch.sin(th)], -1)
    # near the origin: x/(2t) with relative error ≈ |x|²/(4c²t²) (from ct + q = 2ct - |x|²/(2ct) + …)
    for s in (1e-6, 1e-3, 1e-2):
        x = s * ct * unit
        u = f.velocity(t, x)
        rel = (u - x / (2 * t)).norm(dim=-1) / (x / (2 * t)).norm(dim=-1)
        assert float(rel.max()) <= s * s / 4 * 1.01 + 1e-15
        assert float(rel.max()) >= s * s / 4 * 0.99
    # at the circle: speed c, continuous (the interior limit equals the atom's velocity)
    for s in (1 - 1e-4, 1 - 1e-8, 1.0):
        u = f.velocity(t, s * ct * unit)
        torch.testing.assert_close(u.norm(dim=-1), torch.full((13,), c * s / (1 + math.sqrt(1 - s * s)), dtype=F64))
    torch.testing.assert_close(f.velocity(t, ct * unit, atom_mask=torch.ones(13, 2, dtype=torch.bool)), c * unit)
    # radial, monotone in |x|, below c; off the support capped at speed c; 0 at x = 0, t = 0
    s = torch.linspace(0, 1.5, 301, dtype=F64)[:, None]
    u = f.velocity(t, s * ct * unit[3:4])
    speed = u.norm(dim=-1)
    assert bool((speed <= c * (1 + 1e-15)).all()) and bool((torch.diff(speed[:201]) > 0).all())
    torch.testing.assert_close(speed[200:], torch.full((101,), c, dtype=F64))
    torch.testing.assert_close((u * unit[3:4].flip(-1) * torch.tensor([1.0, -1.0], dtype=F64)).sum(-1), torch.zeros(301, dtype=F64), atol=1e-15, rtol=0)
    assert torch.equal(f.velocity(0.0, torch.zeros(4, 2)), torch.zeros(4, 2))
    # pairs: a (B, 2k) tensor is k independent points; per-row times
    x = torch.tensor([[0.1, 0.2, 0.3, -0.4], [1.0, 0.0, 0.0, 0.5]], dtype=F64)
    tt = torch.tensor([[0.5], [1.0]], dtype=F64)
    u = f.velocity(tt, x)
    for i in range(2):
        for j in range(2):
            ref = f.velocity(float(tt[i, 0]), x[i, 2 * j : 2 * j + 2][None])[0]
            torch.testing.assert_close(u[i, 2 * j : 2 * j + 2], ref)


# ------------------------------------------------------------------------------------------------
# diffusion limit
# ------------------------------------------------------------------------------------------------
def _l1_to_gaussian(lam, sigma2=1.0, t=1.0, n=200_001):
    """L1 distance between the law of X_t (atom included) and N(0, σ² t I₂), σ² = c²/λ: radial trapezoid."""
    c = math.sqrt(sigma2 * lam)
    f = PlanarFlight(lam, c)
    R = min(c * t, 16 * math.sqrt(sigma2 * t))
    r = torch.linspace(0, R, n, dtype=F64)
    p = f.density(t, torch.stack([r, torch.zeros_like(r)], -1))
    g = torch.exp(-r * r / (2 * sigma2 * t)) / (2 * math.pi * sigma2 * t)
    y = (p - g).abs() * 2 * math.pi * r
    h = R / (n - 1)
    return float(h * (y.sum() - 0.5 * (y[0] + y[-1]))) + math.exp(-R * R / (2 * sigma2 * t)) + math.exp(-lam * t)


def test_diffusion_limit_rate():
    lams = np.array([25.0, 50.0, 100.0, 200.0, 400.0])
    l1 = np.array([_l1_to_gaussian(lam) for lam in lams])
    slope = np.polyfit(np.log(lams), np.log(l1), 1)[0]
    assert -1.2 < slope < -0.8, (slope, l1)
    assert np.all(np.diff(l1) < 0) and l1[-1] < 5e-3
    # the per-coordinate variance tends to (c²/λ) t with relative defect (1 - e^{-λt})/(λt)
    for lam in lams:
        f = PlanarFlight(lam, math.sqrt(lam))
        assert float(f.variance(1.0)) == pytest.approx(1.0 - (-math.expm1(-lam)) / lam, rel=1e-13)
    # and the velocity tends to the Gaussian x/(2t)
    x = torch.tensor([[0.5, -0.3]], dtype=F64)
    errs = [float((PlanarFlight(lam, math.sqrt(lam)).velocity(1.0, x) - x / 2).norm()) for lam in lams]
    assert np.all(np.diff(np.log(errs)) / np.log(2) < -0.9)


# ------------------------------------------------------------------------------------------------
# properties over the whole parameter range
# ------------------------------------------------------------------------------------------------
def log_uniform(lo, hi):
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lam=log_uniform(0.1, 1000.0),
    c=log_uniform(0.1, 100.0),
    t=log_uniform(1e-7, 10.0),
    dtype=st.sampled_from([F32, F64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties_no_nan_support_atoms_speed(lam, c, t, dtype, seed):
    f = PlanarFlight(lam, c)
    x, m = f.sample(t, (8, 256), generator=torch.Generator().manual_seed(seed), dtype=dtype, return_atoms=True)
    eps = EPS[dtype]
    assert bool(torch.isfinite(x).all())
    ct = float(torch.tensor(c, dtype=dtype) * torch.tensor(t, dtype=dtype))
    rho, am = radii(x), pair_mask(m)
    assert float(rho.max()) <= ct * (1 + 4 * eps)
    assert bool(((rho[am] - ct).abs() <= 4 * eps * ct).all())
    u = f.velocity(t, x, atom_mask=m)
    assert bool(torch.isfinite(u).all()) and float(radii(u).max()) <= c * (1 + 4 * eps)
    if bool(am.any()):
        assert bool(((radii(u)[am] - c).abs() <= 4 * eps * c).all())
    u0 = f.velocity(t, x)
    assert bool(torch.isfinite(u0).all()) and float(radii(u0).max()) <= c * (1 + 4 * eps)
    pts = x.reshape(8, 128, 2)
    p = f.density(t, pts)
    assert bool(torch.isfinite(p).all()) and bool((p >= 0).all())
    lp = f.log_density(t, pts)
    assert not bool(torch.isnan(lp).any()) and not bool((lp == math.inf).any())
    F = f.radial_cdf(t, rho.to(dtype))
    assert bool(torch.isfinite(F).all()) and bool(((F >= 0) & (F <= 1)).all())
    assert math.isfinite(float(f.variance(t))) and float(f.variance(t)) <= (c * t) ** 2 / 2 * (1 + 1e-12)
    # the radius map puts the atom exactly on the circle (ct in dtype) and stays inside below it
    t_d = torch.tensor(t, dtype=dtype)
    lv = torch.tensor([0.0, 0.5, 1 - math.exp(-lam * t) * 0.5, 1.0], dtype=dtype)
    rq = f.radial_quantile(t_d, lv)
    assert float(rq[-1]) == float(c * t_d) and bool((rq <= c * t_d).all()) and bool(torch.isfinite(rq).all())


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(a=0.0), r"a \(event rate"), (dict(a=-1.0), r"a \(event rate"), (dict(a=math.nan), r"a \(event rate"),
    (dict(a=math.inf), r"a \(event rate"), (dict(c=0.0), r"c \(speed\)"), (dict(c="fast"), r"c \(speed\)"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlanarFlight(**kwargs)


def test_bad_inputs_name_the_parameter():
    f = PlanarFlight()
    x = torch.zeros(4, 2)
    cases = [
        (lambda: f.sample(-0.1, (4, 2)), r"t must lie in \[0"),
        (lambda: f.sample(math.nan, (4, 2)), r"t must be finite"),
        (lambda: f.sample(math.inf, (4, 2)), r"t must be finite"),
        (lambda: f.sample(0.5, (4, 3)), r"shape must have an even last dimension"),
        (lambda: f.sample(0.5, ()), r"shape must have an even last dimension"),
        (lambda: f.sample(0.5, (4, 2), dtype=torch.float16), r"dtype must be"),
        (lambda: f.sample(torch.ones(3, 1), (4, 2)), r"t with shape \(3, 1\) does not broadcast"),
        (lambda: f.sample(torch.tensor([[0.1, 0.2]]), (4, 2)), r"t must be equal within each pair"),
        (lambda: f.density(0.5, torch.tensor([[math.nan, 0.0]])), r"x must be finite"),
        (lambda: f.density(0.5, torch.zeros(4, 3)), r"x must have shape \(\.\.\., 2\)"),
        (lambda: f.density(torch.ones(4, 1), x), r"t with shape \(4, 1\) does not broadcast to x.shape"),
        (lambda: f.log_density(-1.0, x), r"t must lie in \[0"),
        (lambda: f.velocity(0.5, torch.zeros(4, 3)), r"x must have an even last dimension"),
        (lambda: f.velocity(0.5, torch.tensor([[0.0, math.nan]])), r"x must be finite"),
        (lambda: f.velocity(0.5, x, atom_mask=torch.zeros(4, 1, dtype=torch.bool)), r"atom_mask must be"),
        (lambda: f.velocity(0.5, x, atom_mask=torch.tensor([[True, False]] * 4)), r"atom_mask must be equal"),
        (lambda: f.radial_cdf(0.5, torch.tensor([math.nan])), r"r must be finite"),
        (lambda: f.radial_quantile(0.5, torch.tensor([1.5])), r"v must lie in \[0, 1\]"),
        (lambda: f.radial_quantile(0.5, torch.tensor([math.nan])), r"v must be finite"),
        (lambda: f.radial_cdf(-0.5, torch.tensor([1.0])), r"t must lie in \[0"),
        (lambda: f.atom_mass(-1.0), r"t must lie in \[0"),
        (lambda: f.variance(math.nan), r"t must be finite"),
        (lambda: f.simulate_paths([0.5], 0), r"n \(number of paths\)"),
        (lambda: f.simulate_paths([-0.5], 10), r"time_grid must lie in"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


def test_sample_shape_accepts_an_int_and_names_bad_shapes():
    """An int shape ``n`` means ``(n,)`` (``n/2`` pairs, the same draws as ``(n,)``); the last dimension must
    still be even; anything but a sequence of ints >= 0 is a ValueError that names ``shape``."""
    f = PlanarFlight()
    x, atoms = f.sample(0.5, 6, generator=torch.Generator().manual_seed(5), return_atoms=True)
    assert x.shape == atoms.shape == (6,)
    assert torch.equal(x, f.sample(0.5, (6,), generator=torch.Generator().manual_seed(5)))
    assert f.sample(0.5, np.int64(4)).shape == (4,)
    assert f.sample(0.5, torch.Size([3, 2])).shape == (3, 2)
    with pytest.raises(ValueError, match=r"^shape must have an even last dimension"):
        f.sample(0.5, 3)
    for bad in (2.5, "12", None, True, (2, 2.0), [[2]], (True, 2)):
        with pytest.raises(ValueError, match=r"^shape must be an int or a sequence of ints"):
            f.sample(0.5, bad)
    for bad in (-2, (-1, 2)):
        with pytest.raises(ValueError, match=r"^shape must hold non-negative sizes"):
            f.sample(0.5, bad)


def test_package_access_and_repr():
    assert kacnum.processes.flight.PlanarFlight is PlanarFlight
    assert repr(PlanarFlight(9, 3)) == "PlanarFlight(a=9, c=3)"
    assert float(PlanarFlight(9.0, 3.0).atom_mass(0.4)) == pytest.approx(math.exp(-3.6), rel=1e-15)
