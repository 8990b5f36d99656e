"""Probability paths: samples recomputed by hand under a fixed seed, targets (atoms, bounds, finite
differences), the exact marginal fields (single point, continuity equation, Monte Carlo, log-space
stability, fallback), VP probability flow (ODE and DDIM land on the closed form), bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from scipy import special

from kacnum.processes.kac import KacProcess
from kacnum.flows.paths import GaussianPath, KacPath, PathSample, VPPath, _BesselTable
from kacnum.flows.solvers import ddim_sample, integrate

F64 = torch.float64
SCHEDULES = [("linear", "t"), ("linear", "t2"), ("exp", "t"), ("exp", "t2")]


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Kac path: the sample by hand


@pytest.mark.parametrize("fs,gs", SCHEDULES)
def test_kac_sample_recomputed_by_hand(fs, gs, dtype, device):
    a, c, T = 9.0, 3.0, 2.0
    path = KacPath(a, c, T, f=fs, g=gs)
    x0 = torch.randn(64, 3, 4, generator=_gen(0), dtype=dtype).to(device)
    t = (T * torch.rand(64, generator=_gen(1), dtype=dtype)).to(device)
    ps = path.sample(x0, t, _gen(123, device))
    assert isinstance(ps, PathSample)

    tb = t[:, None, None]
    f = (1 - tb / T) if fs == "linear" else torch.exp(-tb)
    df = torch.full_like(tb, -1 / T) if fs == "linear" else -torch.exp(-tb)
    g = tb if gs == "t" else T * (tb / T) ** 2
    dg = torch.ones_like(tb) if gs == "t" else 2 * tb / T
    K, atoms = KacProcess(a, c).sample(g, x0.shape, _gen(123, device), return_atoms=True)
    v = KacProcess(a, c).velocity(g, K, atoms)
    assert torch.equal(ps.noise, K) and torch.equal(ps.atom_mask, atoms)
    assert torch.equal(ps.t, t) and torch.equal(ps.x0, x0)
    assert torch.equal(ps.x_t, f * x0 + K)
    assert torch.equal(ps.u_t, df * x0 + dg * v)
    assert ps.x_t.dtype == dtype and ps.x_t.device.type == device.type
    # the public formula gives the same target from the noise and its mask
    assert torch.equal(path.conditional_velocity(x0, t, K, atoms), ps.u_t)


def test_kac_target_atoms_and_speed_bound(dtype):
    a, c = 2.0, 3.0  # atoms are common: e^{-a t}
    path = KacPath(a, c)
    x0 = torch.randn(4000, 2, generator=_gen(2), dtype=dtype)
    t = torch.rand(4000, generator=_gen(3), dtype=dtype)
    ps = path.sample(x0, t, _gen(4))
    rest = ps.u_t - path.df(t)[:, None] * x0  # g' v
    cg = c * path.dg(t)[:, None].expand_as(rest)
    atoms = ps.atom_mask
    assert 0.2 < atoms.float().mean() < 0.8
    # on atoms: exactly ±c g' with the noise's sign; elsewhere strictly inside the interior sup
    tol = 1e-5 if dtype == torch.float32 else 1e-13  # u - f' x0 rounds in the data's dtype
    assert torch.allclose(rest[atoms], (cg * torch.sign(ps.noise))[atoms], atol=tol, rtol=0)
    at = (a * t)[:, None].expand_as(rest)
    interior_sup = c * at / (2 + at)
    assert bool((rest[~atoms].abs() <= interior_sup[~atoms] + tol).all())
    assert bool((rest.abs() <= cg + tol).all())
    assert bool((ps.u_t.abs() <= path.speed_bound(t, float(x0.abs().max()))[:, None] + 1e-6).all())
    # the point is in the closed cone of its data point
    # (rebuilding the noise as x_t - f x0 rounds: the reason the target uses the noise itself)
    y = ps.x_t - path.f(t)[:, None] * x0
    assert bool((y.abs() <= c * path.g(t)[:, None] + tol * (1 + x0.abs())).all())


@pytest.mark.parametrize("fs,gs", SCHEDULES)
def test_schedules_by_finite_differences(fs, gs):
    T = 1.7
    path = KacPath(T=T, f=fs, g=gs)
    t = torch.linspace(0.05, T - 0.05, 41, dtype=F64)
    h = 1e-6
    assert torch.allclose((path.f(t + h) - path.f(t - h)) / (2 * h), path.df(t), atol=1e-8, rtol=0)
    assert torch.allclose((path.g(t + h) - path.g(t - h)) / (2 * h), path.dg(t), atol=1e-8, rtol=0)
    assert path.f(0.0) == 1.0 and path.g(0.0) == 0.0
    assert path.g(T) == pytest.approx(T)
    assert path.f(T) == (0.0 if fs == "linear" else pytest.approx(math.exp(-T)))
    # float and tensor inputs agree
    assert path.df(0.3) == pytest.approx(float(path.df(torch.tensor(0.3, dtype=F64))))
    sb = path.speed_bound(0.3, 2.0)
    assert sb == pytest.approx(abs(path.df(0.3)) * 2.0 + 3.0 * abs(path.dg(0.3)))


def test_kac_params_reachable():
    p = KacPath(a=25.0, c=2.0)
    assert (p.a, p.c) == (25.0, 2.0) and p.process.a == 25.0
    assert "a=25" in repr(p)


def test_latent_bounded_with_atom_fraction():
    path = KacPath(a=0.5, c=2.0, T=2.0, g="t2")  # g(T) = T = 2, atom mass e^{-1} per coordinate
    x, atoms = path.sample_latent((20000, 3), _gen(5), dtype=F64, return_atoms=True)
    cg = 2.0 * 2.0
    assert bool((x.abs() <= cg).all())
    assert torch.equal(x[atoms].abs(), torch.full_like(x[atoms], cg))
    frac = atoms.double().mean().item()
    p = math.exp(-1.0)
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    # deterministic under a seed, and same law as process.sample at g(T)
    x2 = path.sample_latent((20000, 3), _gen(5), dtype=F64)
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="f\\(T\\) = 0"):
        KacPath(f="exp").sample_latent((3, 2))


def test_sample_time_and_grids():
    for path, lo in ((KacPath(T=2.0), 0.0), (GaussianPath(), 0.0), (VPPath(), 1e-5), (KacPath(t_eps=0.1), 0.1)):
        t = path.sample_time(20000, _gen(6), dtype=F64)
        assert t.shape == (20000,) and bool((t >= lo).all()) and bool((t < path.T).all())
        assert abs(t.mean().item() - (lo + path.T) / 2) < 0.02 * path.T
        grid = path.default_time_grid(10)
        assert grid[0] == path.T and grid.shape == (11,) and bool((grid[1:] < grid[:-1]).all())
    assert VPPath().default_time_grid(5)[-1].item() == pytest.approx(1e-3)
    assert KacPath().default_time_grid(5, t_min=0.01)[-1].item() == pytest.approx(0.01)
    a = KacPath().sample_time(7, _gen(8))
    b = KacPath().sample_time(7, _gen(8))
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Kac exact field


def test_bessel_tables_match_reference():
    z = torch.cat([torch.rand(20000, dtype=F64, generator=_gen(9)) * 10,
                   10 ** (torch.rand(20000, dtype=F64, generator=_gen(10)) * 10 - 5),
                   torch.tensor([0.0, 1e-300, 1e-3, 2.0, 4095.0], dtype=F64)])
    at, q = _BesselTable.evaluate(z)
    at_ref, q_ref = _BesselTable.reference(z)
    assert (at - at_ref).abs().max().item() < 1e-12
    assert ((q - q_ref) / q_ref).abs().max().item() < 1e-11
    # an independent implementation (scipy's Cephes) away from the small-z series
    zn = z[z > 1e-3].numpy()
    at_sp = torch.from_numpy(np.log(special.i0e(zn)) + 0.5 * np.log1p(2 * math.pi * zn))
    q_sp = torch.from_numpy(special.i1e(zn) / (zn * special.i0e(zn)))
    assert (at[z > 1e-3] - at_sp).abs().max().item() < 1e-12
    assert ((q[z > 1e-3] - q_sp) / q_sp).abs().max().item() < 1e-11
    # Q = I1/(z I0): 1/2 at 0, and I1/I0 -> 1 - 1/(2z) for large z
    assert q[z == 0].item() == pytest.approx(0.5, abs=1e-15)
    big = z > 1e4
    assert torch.allclose((z * q)[big], 1 - 1 / (2 * z[big]), rtol=1e-8, atol=0)


def test_log_density_single_point_matches_kac_density():
    path = KacPath(a=4.0, c=1.5, f="exp", g="t2")
    s = torch.tensor([[0.3, -1.0, 2.0]], dtype=F64)
    t = 0.8
    g = path.g(t)
    y = (2 * torch.rand(50, 3, generator=_gen(11), dtype=F64) - 1) * 1.5 * g * 0.999
    x = path.f(t) * s + y
    want = torch.log(path.process.density(g, y)).sum(dim=1)
    got = path.mixture_log_density(x, t, s)
    assert torch.allclose(got, want, rtol=0, atol=1e-11)
    got_ref = path.mixture_log_density(x, t, s, bessel="reference")
    assert torch.allclose(got_ref, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fs,gs", SCHEDULES)
def test_exact_velocity_single_point_is_conditional(fs, gs):
    path = KacPath(a=9.0, c=3.0, f=fs, g=gs)
    s = torch.randn(1, 5, generator=_gen(12), dtype=F64)
    t = torch.rand(300, generator=_gen(13), dtype=F64) * 0.95 + 0.05
    cg = 3.0 * path.g(t)[:, None]
    y = (2 * torch.rand(300, 5, generator=_gen(14), dtype=F64) - 1) * cg
    y[:100] *= 1.3  # some points outside the cone: fallback, the atom velocity of that cone
    x = path.f(t)[:, None] * s + y
    u = path.exact_velocity(x, t, s)
    # conditional velocity without a mask treats |y| >= c g as an atom: the documented fallback
    want = path.conditional_velocity(s.expand(300, 5), t, y)
    assert torch.allclose(u, want, rtol=1e-11, atol=1e-12)


def test_exact_velocity_table_reference_and_chunking_agree():
    path = KacPath(a=9.0, c=3.0)
    s = torch.randn(37, 6, generator=_gen(15), dtype=F64)
    w = torch.rand(37, generator=_gen(16), dtype=F64)
    w[3] = 0.0
    for t in (0.05, 0.4, 0.9, 1.0):
        idx = torch.randint(0, 37, (120,), generator=_gen(17))
        x = path.f(t) * s[idx] + path.process.sample(path.g(t), (120, 6), _gen(18), dtype=F64)
        u = path.exact_velocity(x, t, s, w)
        u_ref = path.exact_velocity(x, t, s, w, bessel="reference", chunk_size=500)
        u_small = path.exact_velocity(x[:20], t, s, w, chunk_size=7)
        assert torch.allclose(u, u_ref, rtol=1e-10, atol=1e-11)
        assert torch.allclose(u[:20], u_small, rtol=1e-12, atol=1e-13)
        assert bool((u.abs() <= path.speed_bound(t, float(s.abs().max())) * (1 + 1e-12)).all())
    # float32 in, float32 out, same values
    u32 = path.exact_velocity(x.float(), 1.0, s.float())
    assert u32.dtype == torch.float32
    assert torch.allclose(u32.double(), path.exact_velocity(x.float().double(), 1.0, s.float().double()), atol=1e-6)


@pytest.mark.parametrize("fs,gs", [("linear", "t"), ("exp", "t2")])
def test_exact_velocity_continuity_equation_1d(fs, gs):
    """∂t ρ + ∂x(ρ u) = 0 for the continuous part, away from the cone edges (finite differences)."""
    path = KacPath(a=3.0, c=1.0, f=fs, g=gs)
    s = torch.tensor([[-0.4], [0.1], [0.9]], dtype=F64)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
    h = 1e-5
    for t in (0.35, 0.7):
        x = torch.linspace(-1.5, 1.5, 601, dtype=F64)[:, None]
        edges = torch.cat([path.f(t) * s[:, 0] - path.g(t), path.f(t) * s[:, 0] + path.g(t)])
        far = ((x - edges[None]).abs() > 50 * h).all(dim=1)
        inside = torch.isfinite(path.mixture_log_density(x, t, s, w))
        x = x[far & inside]
        assert x.shape[0] > 120

        def rho(xx, tt):
            return torch.exp(path.mixture_log_density(xx, tt, s, w))

        def flux(xx, tt):
            return rho(xx, tt) * path.exact_velocity(xx, tt, s, w)[:, 0]

        dt_rho = (rho(x, t + h) - rho(x, t - h)) / (2 * h)
        dx_flux = (flux(x + h, t) - flux(x - h, t)) / (2 * h)
        scale = dt_rho.abs().max()
        assert ((dt_rho + dx_flux).abs().max() / scale).item() < 1e-5
        # and the residual is not trivially small: each term is O(1)
        assert (dx_flux.abs().max() / scale).item() > 0.1


def test_exact_velocity_matches_monte_carlo_1d():
    """E[u_t | x_t ∈ bin, not an atom] from samples against the exact field averaged over the bin."""
    path = KacPath(a=4.0, c=1.0)
    s = torch.tensor([[-0.5], [1.0]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    t, N = 0.45, 400_000
    comp = (torch.rand(N, generator=_gen(20), dtype=F64) < w[1]).long()
    x0 = s[comp, 0][None, :]  # one row of N independent coordinates: one time, one sampler table
    ps = path.sample(x0, torch.tensor([t], dtype=F64), _gen(21))
    keep = ~ps.atom_mask[0]
    xs, us = ps.x_t[0][keep], ps.u_t[0][keep]
    edges = torch.linspace(-1.0, 1.25, 31, dtype=F64)
    errs = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (xs >= lo) & (xs < hi)
        if int(sel.sum()) < 2000:
            continue
        mc, se = us[sel].mean(), us[sel].std() / math.sqrt(int(sel.sum()))
        q = (lo + (hi - lo) * (torch.arange(40, dtype=F64) + 0.5) / 40)[:, None]
        r = torch.exp(path.mixture_log_density(q, t, s, w))
        exact = (r * path.exact_velocity(q, t, s, w)[:, 0]).sum() / r.sum()
        errs.append(((mc - exact) / (se + 1e-4)).abs().item())
    assert len(errs) > 15
    assert max(errs) < 5.0


def test_exact_velocity_log_space_stability_d32():
    """d = 32 near the cone edges with a g = 180: every density underflows as a product."""
    path = KacPath(a=200.0, c=3.0)
    t, d = 0.9, 32
    s = torch.randn(2, d, generator=_gen(22), dtype=F64) * 0.05
    cg = 3.0 * t
    y = cg * (0.97 + 0.02 * torch.rand(16, d, generator=_gen(23), dtype=F64))
    y = y * torch.sign(torch.randn(16, d, generator=_gen(24), dtype=F64))
    x = path.f(t) * s[0] + y
    logrho = path.mixture_log_density(x, t, s)
    assert bool(torch.isfinite(logrho).all()) and logrho.max().item() < -745  # exp would underflow
    u = path.exact_velocity(x, t, s)
    assert bool(torch.isfinite(u).all())
    # by hand: per-coordinate densities are representable, their product is not: sum logs, softmax
    L = torch.stack([torch.log(path.process.density(path.g(t), x - path.f(t) * s[i])).sum(1) for i in range(2)], 1)
    wts = torch.softmax(L, dim=1)
    cond = torch.stack([path.conditional_velocity(s[i].expand(16, d), t, x - path.f(t) * s[i]) for i in range(2)], 1)
    want = (wts[:, :, None] * cond).sum(1)
    assert torch.allclose(u, want, rtol=1e-9, atol=1e-10)
    assert bool((u.abs() <= path.speed_bound(t, float(s.abs().max())) * (1 + 1e-12)).all())


def test_exact_velocity_fallback_on_faces_and_outside():
    path = KacPath(a=9.0, c=3.0)
    s = torch.tensor([[0.5, -1.0], [-0.2, 0.4], [1.0, 1.0]], dtype=F64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    T = path.T
    cgT = 3.0 * path.g(T)
    # at t = T (f = 0) a latent on an atom face is on the face of every component: prior weights,
    # the face coordinate rides the face at c g', the other moves with the conditional velocity
    x = torch.tensor([[cgT, 0.7], [-cgT, -cgT]], dtype=F64)
    u = path.exact_velocity(x, T, s, w)
    mean = (w[:, None] * s).sum(0)
    v1 = path.process.velocity(path.g(T), torch.tensor([0.7], dtype=F64))
    want0 = path.df(T) * mean + path.dg(T) * torch.cat([torch.tensor([3.0], dtype=F64), v1])
    want1 = path.df(T) * mean + path.dg(T) * torch.tensor([-3.0, -3.0], dtype=F64)
    assert torch.allclose(u[0], want0, atol=1e-12) and torch.allclose(u[1], want1, atol=1e-12)
    # outside every cone: the nearest cone's atom velocity
    t = 0.1
    x = torch.tensor([[path.f(t) * 1.0 + 0.4, path.f(t) * 1.0 + 0.35]], dtype=F64)  # near s[2]
    u = path.exact_velocity(x, t, s, w)
    assert torch.allclose(u[0], path.df(t) * s[2] + path.dg(t) * 3.0, atol=1e-12)
    # two nearby cones, x outside both: only the nearer one counts
    s2 = torch.tensor([[0.0, 0.0], [0.3, 0.0]], dtype=F64)
    t = 0.05
    x = torch.tensor([[path.f(t) * 0.3 + 0.2, 0.01]], dtype=F64)
    u = path.exact_velocity(x, t, s2)
    v_in = path.process.velocity(path.g(t), torch.tensor([0.01], dtype=F64))
    want = path.df(t) * s2[1] + path.dg(t) * torch.cat([torch.tensor([3.0], dtype=F64), v_in])
    assert torch.allclose(u[0], want, atol=1e-12)
    # t = 0: no cone has an interior; nearest support point, finite
    x = torch.tensor([[0.45, -0.9], [0.5, -1.0]], dtype=F64)
    u = path.exact_velocity(x, 0.0, s, w)
    assert bool(torch.isfinite(u).all())
    assert torch.allclose(u[1], path.df(0.0) * s[0], atol=1e-12)  # on the point: sign(0) = 0
    assert torch.allclose(u[0], path.df(0.0) * s[0] + 3.0 * torch.tensor([-1.0, 1.0], dtype=F64), atol=1e-12)


def test_exact_kac_flow_transports_latent_to_weighted_data():
    """Euler on the exact field from the Kac latent lands on the support with the weights' proportions."""
    from kacnum.theory.toy_data import grid9_support

    pts, _ = grid9_support(dtype=F64)
    w = torch.arange(1, 10, dtype=F64)
    w = w / w.sum()
    path = KacPath(a=9.0, c=3.0)
    xT = path.sample_latent((3000, 2), _gen(60), dtype=F64)
    res = integrate(lambda x, t: path.exact_velocity(x, t, pts, w), xT, path.default_time_grid(60), "euler")
    dist = torch.cdist(res.x, pts)
    assert dist.min(1).values.max().item() < 0.1
    frac = torch.bincount(dist.argmin(1), minlength=9).double() / 3000
    assert ((frac - w).abs() / (w * (1 - w) / 3000).sqrt()).max().item() < 5.0


@given(a=st.floats(0.1, 1000.0), tfrac=st.floats(1e-6, 1.0), f64=st.booleans(),
       sched=st.sampled_from(SCHEDULES), seed=st.integers(0, 2 ** 16))
def test_kac_property_targets_and_field(a, tfrac, f64, sched, seed):
    dtype = F64 if f64 else torch.float32
    c, T = 2.0, 1.5
    path = KacPath(a=a, c=c, T=T, f=sched[0], g=sched[1])
    t = tfrac * T
    x0 = torch.randn(8, 4, generator=_gen(seed), dtype=dtype)
    ps = path.sample(x0, torch.full((8,), t, dtype=dtype), _gen(seed + 1))
    assert bool(torch.isfinite(ps.u_t).all()) and bool(torch.isfinite(ps.x_t).all())
    dfx = path.df(ps.t)[:, None] * x0
    rest = (ps.u_t - dfx).abs()
    bound = c * abs(path.dg(t))
    eps = torch.finfo(dtype).eps
    assert bool((rest <= bound + 4 * eps * (dfx.abs() + bound)).all())
    # the exact field on these points: finite and inside the speed bound
    u = path.exact_velocity(ps.x_t, t, x0)
    assert u.dtype == dtype and bool(torch.isfinite(u).all())
    assert bool((u.abs() <= path.speed_bound(t, float(x0.abs().max())) * (1 + 1e-5) + 1e-12).all())


# ------------------------------------------------------------------------------------------------
# Gaussian and VP paths


def test_gaussian_sample_by_hand_and_fd(dtype, device):
    path = GaussianPath(T=2.0)
    x0 = torch.randn(32, 5, generator=_gen(30), dtype=dtype).to(device)
    t = (2.0 * torch.rand(32, generator=_gen(31), dtype=dtype)).to(device)
    ps = path.sample(x0, t, _gen(32, device))
    eps = torch.randn(x0.shape, generator=_gen(32, device), dtype=dtype, device=device)
    assert torch.equal(ps.noise, eps)
    assert torch.equal(ps.x_t, (1 - t[:, None] / 2.0) * x0 + (t[:, None] / 2.0) * eps)
    assert torch.equal(ps.u_t, (eps - x0) / 2.0)
    assert ps.atom_mask is None
    # the target is d/dt of the conditional path with (x0, eps) fixed
    h = 0.1  # the conditional path is linear in t: only rounding limits the step
    xp = path.alpha(t[:, None] + h) * x0 + path.sigma(t[:, None] + h) * eps
    xm = path.alpha(t[:, None] - h) * x0 + path.sigma(t[:, None] - h) * eps
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    assert torch.allclose((xp - xm) / (2 * h), ps.u_t, atol=tol)
    assert path.speed_bound(0.5) == math.inf


def test_vp_schedule_and_conditional_target_fd():
    path = VPPath(beta_min=0.1, beta_max=20.0, T=2.0)
    t = torch.linspace(0.01, 2.0 - 0.01, 50, dtype=F64)
    h = 1e-6
    # ∫β by quadrature, β as the derivative of ∫β
    grid = torch.linspace(0, 1, 20001, dtype=F64)
    for tt in (0.3, 1.1, 2.0):
        q = torch.trapezoid(path.beta(tt * grid), tt * grid).item()
        assert path.integrated_beta(tt) == pytest.approx(q, rel=1e-7)
    fd = (path.integrated_beta(t + h) - path.integrated_beta(t - h)) / (2 * h)
    assert torch.allclose(fd, path.beta(t), rtol=1e-8)
    assert path.alpha_bar(2.0) == pytest.approx(math.exp(-(0.1 + 20.0) / 2))
    assert torch.allclose(path.alpha(t) ** 2 + path.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)
    x0 = torch.randn(50, 3, generator=_gen(33), dtype=F64)
    eps = torch.randn(50, 3, generator=_gen(34), dtype=F64)
    xp = path.alpha(t + h)[:, None] * x0 + path.sigma(t + h)[:, None] * eps
    xm = path.alpha(t - h)[:, None] * x0 + path.sigma(t - h)[:, None] * eps
    assert torch.allclose((xp - xm) / (2 * h), path.conditional_velocity(x0, t, eps), rtol=1e-6, atol=1e-7)
    ps = path.sample(x0, t, _gen(35))
    e2 = torch.randn(x0.shape, generator=_gen(35), dtype=F64)
    assert torch.equal(ps.noise, e2)
    assert torch.equal(ps.x_t, path.alpha(t)[:, None] * x0 + path.sigma(t)[:, None] * e2)


@pytest.mark.parametrize("kind", ["gaussian", "vp"])
def test_gaussian_exact_velocity_matches_monte_carlo_and_continuity(kind):
    path = GaussianPath() if kind == "gaussian" else VPPath()
    s = torch.tensor([[-0.5], [1.0]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    t, N = 0.35, 400_000
    comp = (torch.rand(N, generator=_gen(40), dtype=F64) < w[1]).long()
    ps = path.sample(s[comp], torch.full((N,), t, dtype=F64), _gen(41))
    xs, us = ps.x_t[:, 0], ps.u_t[:, 0]
    lo_q, hi_q = torch.quantile(xs[:100000], torch.tensor([0.02, 0.98], dtype=F64))
    edges = torch.linspace(lo_q.item(), hi_q.item(), 21, dtype=F64)
    errs = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (xs >= lo) & (xs < hi)
        mc, se = us[sel].mean(), us[sel].std() / math.sqrt(int(sel.sum()))
        q = (lo + (hi - lo) * (torch.arange(40, dtype=F64) + 0.5) / 40)[:, None]
        r = torch.exp(path.mixture_log_density(q, t, s, w))
        exact = (r * path.exact_velocity(q, t, s, w)[:, 0]).sum() / r.sum()
        errs.append(((mc - exact) / (se + 1e-4)).abs().item())
    assert max(errs) < 5.0
    # continuity equation for the explicit Gaussian mixture density
    h = 1e-5
    x = torch.linspace(-2.0, 2.5, 91, dtype=F64)[:, None]
    rho = lambda xx, tt: torch.exp(path.mixture_log_density(xx, tt, s, w))  # noqa: E731
    flux = lambda xx, tt: rho(xx, tt) * path.exact_velocity(xx, tt, s, w)[:, 0]  # noqa: E731
    res = (rho(x, t + h) - rho(x, t - h)) / (2 * h) + (flux(x + h, t) - flux(x - h, t)) / (2 * h)
    assert (res.abs().max() / ((rho(x, t + h) - rho(x, t - h)) / (2 * h)).abs().max()).item() < 1e-5


def test_vp_probability_flow_lands_on_single_point():
    """One data point: ε̂ = (x - m s)/σ is constant along the flow, so x(t) = m(t) s + σ(t) ε̂(T)."""
    path = VPPath()
    s = torch.tensor([[0.7, -1.2, 0.3]], dtype=F64)
    xT = torch.randn(16, 3, generator=_gen(50), dtype=F64)
    t_min = 1e-3
    e_T = (xT - path.alpha(1.0) * s) / path.sigma(1.0)
    want = path.alpha(t_min) * s + path.sigma(t_min) * e_T

    field = lambda x, t: path.exact_velocity(x, t, s)  # noqa: E731
    grid = torch.logspace(0.0, math.log10(t_min), 301, dtype=F64)
    res = integrate(field, xT, grid, method="rk4")
    assert torch.allclose(res.x, want, atol=1e-7)
    assert ((res.x - s).norm(dim=1) < 0.06).all()  # lands on the point (σ(t_min) ≈ 0.0105)
    # the same field through eps_to_velocity of the exact ε
    ex = path.exact_epsilon(xT, 0.5, s)
    assert torch.allclose(path.eps_to_velocity(xT, 0.5, ex), path.exact_velocity(xT, 0.5, s), atol=1e-12)
    # DDIM with the exact ε is exact for one point on any grid
    eps_model = lambda x, t: path.exact_epsilon(x, t, s)  # noqa: E731
    d = ddim_sample(eps_model, xT, path.alpha_bar, path.default_time_grid(7))
    assert torch.allclose(d.x, want, atol=1e-10)
    # the solver-facing wrapper around an ε-model
    vf = path.velocity_field(eps_model)
    assert torch.allclose(vf(xT, torch.full((16,), 0.5, dtype=F64)), path.exact_velocity(xT, 0.5, s), atol=1e-12)


def test_gaussian_exact_velocity_single_point_and_posterior():
    path = GaussianPath()
    s = torch.tensor([[1.0, 2.0], [-1.0, 0.0]], dtype=F64)
    x = torch.randn(10, 2, generator=_gen(51), dtype=F64)
    t = 0.6
    u1 = path.exact_velocity(x, t, s[:1])
    assert torch.allclose(u1, (x - s[0]) / t, atol=1e-14)
    # by hand: posterior weights from the Gaussian likelihoods
    ll = torch.stack([-((x - 0.4 * s[i]) ** 2).sum(1) / (2 * 0.36) for i in range(2)], 1) + torch.log(
        torch.tensor([0.25, 0.75], dtype=F64))
    post = torch.softmax(ll, 1)
    want = (x - post @ s) / t
    assert torch.allclose(path.exact_velocity(x, t, s, torch.tensor([1.0, 3.0], dtype=F64)), want, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_errors():
    with pytest.raises(ValueError, match="f must be one of"):
        KacPath(f="cosine")
    with pytest.raises(ValueError, match="g must be one of"):
        KacPath(g="sqrt")
    with pytest.raises(ValueError, match="a \\(switching rate\\)"):
        KacPath(a=-1.0)
    with pytest.raises(ValueError, match="T must"):
        KacPath(T=0.0)
    path = KacPath()
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="t must lie in \\[0, 1\\]"):
        path.sample(x0, torch.tensor([0.1, 0.2, 1.5, 0.3]))
    with pytest.raises(ValueError, match="t must lie"):
        path.sample(x0, -0.1)
    with pytest.raises(ValueError, match="t must be a float or a tensor of shape \\(4,\\)"):
        path.sample(x0, torch.rand(3))
    with pytest.raises(ValueError, match="x0 must be finite"):
        path.sample(torch.tensor([[0.0, float("nan")]]), 0.5)
    with pytest.raises(ValueError, match="support must have shape \\(n, 2\\)"):
        path.exact_velocity(x0, 0.5, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weights must have shape \\(3,\\)"):
        path.exact_velocity(x0, 0.5, torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        path.exact_velocity(x0, 0.5, torch.zeros(3, 2), torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="x must be finite"):
        path.exact_velocity(torch.full((1, 2), float("inf")), 0.5, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="bessel"):
        path.exact_velocity(x0, 0.5, torch.zeros(3, 2), bessel="scipy")
    with pytest.raises(ValueError, match="batch_size"):
        path.sample_time(0)
    with pytest.raises(ValueError, match="t_min must be < T"):
        path.default_time_grid(10, t_min=1.0)
    with pytest.raises(ValueError, match="t must lie in \\(0, 1\\]"):
        VPPath().sample(x0, 0.0)
    with pytest.raises(ValueError, match="t must lie in \\(0, 1\\]"):
        GaussianPath().exact_velocity(x0, 0.0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="t_min must be > 0"):
        VPPath().default_time_grid(10, t_min=0.0)
    with pytest.raises(ValueError, match="beta_max must be >= beta_min"):
        VPPath(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="eps must be a tensor of x's shape"):
        VPPath().eps_to_velocity(x0, 0.5, torch.zeros(4, 3))
