"""Exact marginal fields for Gaussian-mixture data (``data_sigma > 0``) on the Kac, Gaussian and VP paths.

The Kac field is a quadrature (docs/mathematics.md §13), so it is checked against independent references: scipy's
adaptive quadrature of the same integrals, the finite-data field as σ → 0 away from the atoms, the
continuity equation by finite differences, the normalisation of the density, and the flow's marginals
against exact samples of the path.
"""
import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import integrate as si
from scipy import special as sp

from kacnum.flows.paths import GaussianPath, KacPath, VPPath
from kacnum.flows.solvers import integrate, uniform_grid
from kacnum.theory.stability import ExactField
from kacnum.theory.transport import wasserstein_1d

MU1 = torch.tensor([[-0.5], [0.5]], dtype=torch.float64)
W1 = torch.tensor([0.3, 0.7], dtype=torch.float64)


def _scipy_kac_gm(a, c, t, x, mu, sigma):
    """log density and velocity of one 1D component (f = 1 - t, g = t) by adaptive quadrature."""
    f, g = 1.0 - t, t
    s, cg, ag = f * sigma, c * g, a * g

    def rho(y):
        r = math.sqrt(max(cg * cg - y * y, 0.0))
        z = a / c * r
        bes = sp.i0e(z) + (cg / r * sp.i1e(z) if r > 0 else ag / 2 * math.exp(-z))
        return a / (2 * c) * math.exp(z - ag) * bes

    def vel(y):
        r = math.sqrt(max(cg * cg - y * y, 0.0))
        z = a / c * r
        return y / (g + r / c * sp.i0e(z) / sp.i1e(z)) if z > 0 else y / (g + 2.0 / a)

    phi = lambda z: math.exp(-z * z / (2 * s * s)) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    z = x - f * mu
    pts = [z] if -cg < z < cg else None
    q = si.quad(lambda y: rho(y) * phi(z - y), -cg, cg, points=pts, epsabs=0, epsrel=1e-12, limit=200)[0]
    ny = si.quad(lambda y: y * rho(y) * phi(z - y), -cg, cg, points=pts, epsabs=0, epsrel=1e-12, limit=200)[0]
    nv = si.quad(lambda y: vel(y) * rho(y) * phi(z - y), -cg, cg, points=pts, epsabs=0, epsrel=1e-12, limit=200)[0]
    at = math.exp(-ag) / 2
    q += at * (phi(z - cg) + phi(z + cg))
    ny += at * (cg * phi(z - cg) - cg * phi(z + cg))
    nv += at * (c * phi(z - cg) - c * phi(z + cg))
    ex0 = mu + (z - ny / q) / f  # E[X0 | x] = mu + sigma E[xi], xi = (z - y)/s
    return math.log(q), -ex0 + nv / q  # f' = -1, g' = 1


@pytest.mark.parametrize("t", [0.02, 0.3, 0.8])
@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_kac_mixture_matches_scipy_quadrature(t, sigma):
    path = KacPath(9.0, 3.0)
    mu = torch.tensor([[0.2]], dtype=torch.float64)
    f, reach = 1.0 - t, 3.0 * t + 2.0 * (1.0 - t) * sigma  # the cone plus two mixture widths
    xs = f * 0.2 + torch.tensor([-0.9, -0.1, 0.15, 0.5, 1.0], dtype=torch.float64)[:, None] * reach
    lp = path.mixture_log_density(xs, t, mu, data_sigma=sigma)
    u = path.exact_velocity(xs, t, mu, data_sigma=sigma)[:, 0]
    for i, x in enumerate(xs[:, 0].tolist()):
        ref_lp, ref_u = _scipy_kac_gm(9.0, 3.0, t, x, 0.2, sigma)
        assert float(lp[i]) == pytest.approx(ref_lp, abs=1e-6)  # 20-node Gauss–Legendre
        assert float(u[i]) == pytest.approx(ref_u, abs=1e-6 * (1 + abs(ref_u)))


def test_mixture_density_is_normalised():
    path = KacPath(9.0, 3.0)
    for t in (0.05, 0.4, 0.9):
        x = torch.linspace(-4, 4, 16001, dtype=torch.float64)[:, None]
        p = path.mixture_log_density(x, t, MU1, W1, data_sigma=0.15).exp()
        mass = float(torch.trapezoid(p, x[:, 0]))
        assert mass == pytest.approx(1.0, abs=2e-6)


@pytest.mark.parametrize("path", [KacPath(9.0, 3.0), KacPath(25.0, 2.0, g="t2"), GaussianPath(), VPPath()],
                         ids=["kac", "kac_25_2_t2", "gaussian", "vp"])
def test_continuity_equation_by_finite_differences(path):
    """∂t ρ + ∂x(ρ u) = 0 for the mixture's density and field; a field off by 5 % fails the same check."""
    x = torch.linspace(-3.5, 3.5, 7001, dtype=torch.float64)[:, None]
    dx = float(x[1, 0] - x[0, 0])
    for t in (0.1, 0.5):
        h = 1e-5
        rho = lambda tt: path.mixture_log_density(x, tt, MU1, W1, data_sigma=0.2).exp()  # noqa: E731
        drho = (rho(t + h) - rho(t - h)) / (2 * h)
        J = rho(t) * path.exact_velocity(x, t, MU1, W1, data_sigma=0.2)[:, 0]
        dJ = (J[2:] - J[:-2]) / (2 * dx)
        scale = float(drho.abs().max())
        res = float((drho[1:-1] + dJ).abs().max())
        assert res < 2e-4 * scale, (t, res, scale)
        bad = float((drho[1:-1] + 1.05 * dJ).abs().max())
        assert bad > 20 * res


def test_sigma_to_zero_recovers_the_finite_data_field_away_from_atoms():
    path = KacPath(9.0, 3.0)
    g = torch.Generator().manual_seed(0)
    support = torch.rand(6, 2, generator=g, dtype=torch.float64) * 2 - 1
    t = 0.4
    k = torch.randint(6, (400,), generator=g)
    ps = path.sample(support[k], t, g)
    x = ps.x_t[~ps.atom_mask.any(dim=1)]
    f, cg = 1 - t, 3.0 * t
    face_gap = ((x[:, None, :] - f * support[None]).abs() - cg).abs().amin(dim=(1, 2))
    u0 = path.exact_velocity(x, t, support)
    for sigma, tol in ((1e-3, 2e-2), (1e-4, 2e-3)):
        far = face_gap > 12 * f * sigma
        u = path.exact_velocity(x, t, support, data_sigma=sigma)
        err = float((u - u0)[far].abs().max())
        assert far.sum() > 300
        assert err < tol, (sigma, err)
    # near the faces the two differ: the mixture smooths the jump over f sigma
    near = face_gap < 0.2 * f * 1e-3
    if bool(near.any()):
        u = path.exact_velocity(x[near], t, support, data_sigma=1e-3)
        assert float((u - u0[near]).abs().max()) > 1e-3


def test_gaussian_and_vp_mixture_fields_match_a_fine_dirac_discretisation():
    """A Gaussian mixture is the limit of many Dirac points: compare with 4001 weighted points."""
    grid = torch.linspace(-2.5, 2.5, 4001, dtype=torch.float64)
    dens = 0.3 * torch.exp(-(grid + 0.5) ** 2 / (2 * 0.04)) + 0.7 * torch.exp(-(grid - 0.5) ** 2 / (2 * 0.04))
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None]
    for path in (GaussianPath(), VPPath()):
        for t in (0.2, 0.7):
            u = path.exact_velocity(x, t, MU1, W1, data_sigma=0.2)
            ud = path.exact_velocity(x, t, grid[:, None], dens / dens.sum())
            assert torch.allclose(u, ud, atol=1e-6), (path, t, float((u - ud).abs().max()))


def test_flow_of_the_mixture_field_carries_the_path_marginals():
    """RK4 on the exact mixture field from exact latents: W2 to exact path samples at the noise floor."""
    path = KacPath(9.0, 3.0)
    g = torch.Generator().manual_seed(3)
    n = 3000
    lat = path.sample_latent((n, 1), generator=g, dtype=torch.float64)
    field = ExactField(path, MU1, W1, data_sigma=0.2)
    grid = uniform_grid(1.0, 0.0, 64)
    traj = integrate(field, lat, grid, "rk4", return_trajectory=True).trajectory
    for j in (16, 32, 48, 64):
        t = float(grid[j])
        draw = lambda: MU1[torch.multinomial(W1, n, True, generator=g)] + 0.2 * torch.randn(n, 1, generator=g,  # noqa: E731
                                                                                          dtype=torch.float64)
        ea = path.sample(draw(), t, g).x_t if t > 0 else draw()
        eb = path.sample(draw(), t, g).x_t if t > 0 else draw()
        wf = wasserstein_1d(traj[j, :, 0], ea[:, 0])
        w0 = wasserstein_1d(eb[:, 0], ea[:, 0])
        assert wf < 2.5 * w0 + 1e-3, (t, wf, w0)
    share = float((traj[-1, :, 0] < 0).double().mean())
    ref = 0.3 * 0.5 * (1 + math.erf(0.5 / (0.2 * math.sqrt(2)))) + 0.7 * 0.5 * (1 - math.erf(0.5 / (0.2 * math.sqrt(2))))
    assert abs(share - ref) < 4 * math.sqrt(ref * (1 - ref) / n)


def test_bad_data_sigma_is_refused():
    path = KacPath()
    x = torch.zeros(3, 1, dtype=torch.float64)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="data_sigma"):
            path.exact_velocity(x, 0.5, MU1, data_sigma=bad)
        with pytest.raises(ValueError, match="data_sigma"):
            GaussianPath().exact_velocity(x, 0.5, MU1, data_sigma=bad)
    with pytest.raises(ValueError, match="atom_mask"):
        path.exact_velocity(x, 0.5, MU1, data_sigma=0.1, atom_mask=torch.zeros(3, 1, dtype=torch.bool))


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.1, 1000.0), t=st.floats(1e-6, 1.0), sigma=st.floats(1e-3, 1.0),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2 ** 16))
# t one ulp below T: f(t) = 1e-16, the data's offset z - y is below the resolution of x near an atom, and the
# posterior mean of X0 = μ + (z - y)/f once took rounding for signal (|u| = 22 against a bound of 17.7)
@example(a=1.0, t=0.9999999999999999, sigma=1.0, dtype=torch.float64, seed=1)
def test_mixture_field_is_finite_over_the_parameter_ranges(a, t, sigma, dtype, seed):
    c = math.sqrt(a)
    path = KacPath(a, c)
    g = torch.Generator().manual_seed(seed)
    support = (torch.rand(4, 2, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)
    k = torch.randint(4, (32,), generator=g)
    x0 = support[k] + sigma * torch.randn(32, 2, generator=g, dtype=torch.float64).to(dtype)
    smp = path.sample(x0, t, g)
    x = smp.x_t
    u = path.exact_velocity(x, t, support, data_sigma=sigma)
    lp = path.mixture_log_density(x, t, support, data_sigma=sigma)
    assert u.dtype == dtype and torch.isfinite(u).all()
    # at t = T (f = 0) the law is the data-free Kac law: the density of its continuous part is -inf on the atoms
    off_atoms = torch.ones_like(lp, dtype=torch.bool) if t < 1.0 else ~smp.atom_mask.any(1)
    assert torch.isfinite(lp[off_atoms]).all()
    # the field is a posterior mean of f' X0 + g' v with |v| <= c: bounded by the reach of the data
    reach = float(x0.abs().max()) + 12 * sigma + 2.0
    assert float(u.abs().max()) <= reach + c + 1e-3
