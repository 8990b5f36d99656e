"""FlightPath: the isotropic Kac flow on the planar random flight (docs/mathematics.md §14), and ProcessPath, the one
implementation behind it and KacPath.

References are independent of the fields under test: PlanarFlight's own sampler and velocity (tested in
test_flight.py) for the conditional targets; event-driven flights (``simulate_paths``: positions and true
velocities) for the marginal fields, through the defining identity of a conditional expectation
``E[h(X_t) (u(X_t) - u_cond)] = 0`` for test functions ``h``, and importance-weighted Monte Carlo for the
Gaussian-mixture field at a point; scipy's adaptive 2D quadrature for the Gaussian-mixture density and
velocity; the continuity equation by finite differences. Each statistical check has a negative twin that
fails the same criterion.
"""
import math

import pytest
import torch
from scipy import integrate as si

from kacnum.processes.flight import PlanarFlight
from kacnum.processes.kac import KacProcess
from kacnum.flows.paths import FlightPath, KacPath, ProcessPath, _velocity_with_atoms
from kacnum.processes import NoiseProcess, make_process
from kacnum.flows.solvers import integrate, uniform_grid
from kacnum.theory.stability import ExactField
from kacnum.theory.transport import wasserstein_empirical

F64 = torch.float64
SUP = torch.tensor([[-0.4, 0.1], [0.3, 0.2], [0.0, -0.5]], dtype=F64)
W = torch.tensor([0.2, 0.5, 0.3], dtype=F64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _pair_norms(x):
    return x.reshape(x.shape[0], -1, 2).norm(dim=-1)


# ------------------------------------------------------------------------------------------------ one implementation
def test_processes_share_one_interface():
    for kind, cls, block in (("kac", KacProcess, 1), ("flight", PlanarFlight, 2)):
        p = make_process(kind, 9.0, 3.0)
        assert isinstance(p, cls) and isinstance(p, NoiseProcess) and p.block_size == block
        y = torch.tensor([[0.1, -0.2], [3.5, 0.0]], dtype=F64)
        lp = p.block_log_density(0.5, y.reshape(2, -1, block))
        assert lp.shape == (2, 2 // block) and bool(torch.isfinite(lp[0]).all())
        assert bool(torch.isinf(lp[1, 0])) and float(lp[1, 0]) < 0  # |y| = 3.5 > ct = 1.5
    with pytest.raises(ValueError, match="kind"):
        make_process("brownian")
    with pytest.raises(ValueError, match="NoiseProcess"):
        ProcessPath(object())


def test_process_path_on_kac_is_kac_path():
    """ProcessPath(KacProcess) and KacPath give the same numbers (bitwise): one implementation."""
    gen = _gen(0)
    sup = torch.rand(6, 3, generator=gen, dtype=F64) * 2 - 1
    x0 = sup[torch.randint(6, (40,), generator=gen)]
    t = torch.rand(40, generator=gen, dtype=F64)
    a, b = KacPath(25.0, 2.0, g="t2"), ProcessPath(KacProcess(25.0, 2.0), g="t2")
    sa, sb = a.sample(x0, t, _gen(1)), b.sample(x0, t, _gen(1))
    for k in ("x_t", "u_t", "noise", "atom_mask"):
        assert torch.equal(getattr(sa, k), getattr(sb, k))
    assert torch.equal(a.exact_velocity(sa.x_t, t, sup), b.exact_velocity(sa.x_t, t, sup))
    assert torch.equal(a.exact_velocity(sa.x_t, t, sup, data_sigma=0.1), b.exact_velocity(sa.x_t, t, sup, data_sigma=0.1))
    assert isinstance(a, ProcessPath) and a.block_size == 1 and FlightPath().block_size == 2
    assert repr(FlightPath(4.0, 2.0)).startswith("FlightPath(a=4, c=2")


# ------------------------------------------------------------------------------------------------ sampling, targets
@pytest.mark.parametrize("shape", [(64, 2), (16, 3, 4, 4)])
@pytest.mark.parametrize("sched", [("linear", "t"), ("exp", "t2")])
def test_sample_and_target_by_hand(shape, sched):
    """x_t = f x0 + F, F the flight sampler's draw on the flattened pairs; u_t = f' x0 + g' PlanarFlight.velocity."""
    path = FlightPath(9.0, 3.0, f=sched[0], g=sched[1])
    x0 = torch.randn(shape, generator=_gen(2), dtype=F64)
    t = torch.rand(shape[0], generator=_gen(3), dtype=F64)
    s = path.sample(x0, t, _gen(4))
    B, d = shape[0], x0[0].numel()
    gt = path.g(t)[:, None]
    F, atoms = PlanarFlight(9.0, 3.0).sample(gt, (B, d), _gen(4), return_atoms=True, dtype=F64)
    assert torch.equal(s.noise.reshape(B, d), F) and torch.equal(s.atom_mask.reshape(B, d), atoms)
    tb = t.reshape((B,) + (1,) * (len(shape) - 1))
    assert torch.allclose(s.x_t, path.f(tb) * x0 + s.noise, rtol=0, atol=1e-15)
    v = PlanarFlight(9.0, 3.0).velocity(gt, F, atoms).reshape(shape)
    assert torch.allclose(s.u_t, path.df(tb) * x0 + path.dg(tb) * v, rtol=0, atol=1e-14)
    assert torch.equal(path.conditional_velocity(x0, t, s.noise, s.atom_mask), s.u_t)
    # finite speed of the conditional target, per pair in the Euclidean norm
    excess = _pair_norms(s.u_t - path.df(tb) * x0) - 3.0 * path.dg(tb).reshape(B, 1)
    assert float(excess.max()) <= 1e-12
    assert float(_pair_norms(s.noise).max() - 3.0 * float(gt.max())) <= 1e-12


def test_latent_is_the_flight_law_and_odd_d_is_refused():
    path = FlightPath(9.0, 3.0)
    z, atoms = path.sample_latent((4000, 4), _gen(5), dtype=F64, return_atoms=True)
    r = _pair_norms(z)
    assert float(r.max()) <= 3.0 + 1e-12
    assert bool((r[atoms[:, 0::2]] == 3.0).all()) and not bool((r[~atoms[:, 0::2]] >= 3.0).any())
    frac = float(atoms.double().mean())
    assert abs(frac - math.exp(-9.0)) < 5 * math.sqrt(math.exp(-9.0) / 8000) + 1e-4
    with pytest.raises(ValueError, match="even number of coordinates"):
        path.sample(torch.zeros(4, 3, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="even number of coordinates"):
        path.exact_velocity(torch.zeros(4, 3, dtype=F64), 0.5, torch.zeros(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="sample_latent needs f"):
        FlightPath(f="exp").sample_latent((2, 2))


# ------------------------------------------------------------------------------------------------ finite-data field
def test_exact_field_single_point_is_the_conditional_velocity():
    path = FlightPath(9.0, 3.0)
    x0 = torch.tensor([[0.3, -0.2, 0.1, 0.4]], dtype=F64)
    t = 0.35
    s = path.sample(x0.expand(500, 4), t, _gen(6))
    inside = ~s.atom_mask.any(dim=1)
    u = path.exact_velocity(s.x_t[inside], t, x0)
    assert torch.allclose(u, s.u_t[inside], rtol=0, atol=1e-12)
    ua = path.exact_velocity(s.x_t, t, x0, atom_mask=s.atom_mask)
    assert torch.allclose(ua, s.u_t, rtol=0, atol=1e-12)


def _event_driven(path, t, n, seed, support=SUP, weights=W):
    gen = _gen(seed)
    k = torch.multinomial(weights, n, replacement=True, generator=gen)
    x0 = support[k]
    d = support.shape[1]
    sim = path.process.simulate_paths([path.g(t)], n * d // 2, generator=gen)
    F = sim.positions[:, 0].reshape(n, d)
    V = sim.velocities[:, 0].reshape(n, d)
    atoms = sim.atom_mask[:, 0].reshape(n, d // 2).repeat_interleave(2, dim=1)
    return path.f(t) * x0 + F, path.df(t) * x0 + path.dg(t) * V, atoms


def _max_z(x, field, ucond, keep=None):
    """max over test functions h (Gaussian bumps) and coordinates of |mean h (u - u_cond)| / s.e."""
    centers = torch.tensor([[0.0, 0.0], [-0.4, 0.1], [0.3, 0.2], [0.5, -0.5], [-0.6, 0.6], [0.0, -0.5]], dtype=F64)
    n = x.shape[0]
    worst = 0.0
    for cc in centers:
        h = torch.exp(-((x - cc) ** 2).sum(1) / (2 * 0.3 ** 2))
        if keep is not None:
            h = h * keep
        dl = h[:, None] * (field - ucond)
        worst = max(worst, float((dl.mean(0) / (dl.std(0) / math.sqrt(n))).abs().max()))
    return worst


def test_exact_field_is_the_posterior_mean_of_event_driven_velocities():
    """E[h(X_t)(u(X_t) - u_cond)] = 0 within 4 s.e. for 6 bumps h, X_t and u_cond = f' x0 + g' V from
    event-driven flights (true velocities V); the atom-aware field on all samples, the plain field on the
    continuous part. A field 5 % off, or the plain field on the atoms, fails."""
    path = FlightPath(9.0, 3.0)
    t = 0.25  # atom mass e^{-2.25} = 0.105
    x, uc, atoms = _event_driven(path, t, 120_000, 7)
    ua = path.exact_velocity(x, t, SUP, W, atom_mask=atoms)
    assert _max_z(x, ua, uc) < 4.0
    cont = (~atoms[:, 0]).double()
    u = path.exact_velocity(x, t, SUP, W)
    assert _max_z(x, u, uc, keep=cont) < 4.0
    assert _max_z(x, 1.05 * ua, uc) > 4.0
    assert _max_z(x, u, uc) > 4.0  # the atoms need their mask


def test_exact_field_fallback_is_finite_and_bounded():
    """Points in no open disc (the circle, outside every disc, t = T, t = 0) get a finite field within the
    speed bound per pair; on a circle of one support point it is that point's atom velocity."""
    path = FlightPath(9.0, 3.0)
    t = 0.2
    f, cg = path.f(t), 3.0 * t
    ang = torch.linspace(0, 2 * math.pi, 9, dtype=F64)[:-1]
    ring = torch.stack([ang.cos(), ang.sin()], 1)
    far = SUP[1] * f + 3.0 * ring  # outside every disc
    on = SUP[1] * f + cg * ring  # on point 1's circle (maybe inside others' discs)
    for x in (far, on):
        u = path.exact_velocity(x, t, SUP, W)
        assert bool(torch.isfinite(u).all())
        bound = path.speed_bound(t, float(SUP.norm(dim=1).max()))
        assert float(u.norm(dim=1).max()) <= bound + 1e-12
    single = path.exact_velocity(on, t, SUP[1:2])
    assert torch.allclose(single, path.df(t) * SUP[1] + 3.0 * ring, atol=1e-12)
    for tt in (0.0, 1.0):
        z = torch.randn(50, 2, generator=_gen(8), dtype=F64) * 2
        assert bool(torch.isfinite(path.exact_velocity(z, tt, SUP, W)).all())
    with pytest.raises(ValueError, match="equal within each pair"):
        _velocity_with_atoms(path, on[:2], t, SUP, torch.tensor([[True, False], [True, True]]))


def test_log_density_single_point_matches_planar_flight():
    path = FlightPath(4.0, 2.0)
    x0 = torch.tensor([[0.3, -0.2]], dtype=F64)
    x = torch.randn(200, 2, generator=_gen(9), dtype=F64)
    t = 0.5
    lp = path.mixture_log_density(x, t, x0)
    ref = PlanarFlight(4.0, 2.0).log_density(path.g(t), x - path.f(t) * x0)
    fin = torch.isfinite(ref)
    assert fin.sum() > 50 and torch.allclose(lp[fin], ref[fin], rtol=0, atol=1e-12)
    assert bool(torch.isneginf(lp[~fin]).all())


# ------------------------------------------------------------------------------------------------ Gaussian mixture
def _scipy_gm(lam, c, t, x, mu, sigma):
    """log density and velocity of one 2D component (f = 1 - t, g = t) by adaptive quadrature: the disc in
    the radial variable w (the law (λ/c) e^{-λw/c} dw) times the angle, and the circle atom."""
    f, g = 1.0 - t, t
    s, cg = f * sigma, c * g
    z = (x[0] - f * mu[0], x[1] - f * mu[1])

    def phi(y0, y1):
        return math.exp(-((z[0] - y0) ** 2 + (z[1] - y1) ** 2) / (2 * s * s)) / (2 * math.pi * s * s)

    def terms(th, r, h):  # (weight, y0, y1, v0, v1)
        y0, y1 = r * math.cos(th), r * math.sin(th)
        return phi(y0, y1), y0, y1, h * y0, h * y1

    out = []
    for k in range(5):
        def cont(th, w, k=k):
            r = math.sqrt(max(w * (2 * cg - w), 0.0))
            tm = terms(th, r, c / (2 * cg - w))
            return lam / c * math.exp(-lam * w / c) / (2 * math.pi) * tm[0] * (1.0 if k == 0 else tm[k])

        def atom(th, k=k):
            tm = terms(th, cg, c / cg)
            return tm[0] * (1.0 if k == 0 else tm[k]) / (2 * math.pi)

        v = si.dblquad(cont, 0, cg, 0, 2 * math.pi, epsabs=1e-14, epsrel=1e-11)[0]
        v += math.exp(-lam * g) * si.quad(atom, 0, 2 * math.pi, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
        out.append(v)
    q = out[0]
    ey, ev = (out[1] / q, out[2] / q), (out[3] / q, out[4] / q)
    u = [-(mu[i] + (z[i] - ey[i]) / f) + ev[i] for i in range(2)]  # f' = -1, g' = 1
    return math.log(q), u


@pytest.mark.parametrize("t,sigma", [(0.3, 0.05), (0.7, 0.3)])
def test_mixture_field_matches_scipy_quadrature(t, sigma):
    path = FlightPath(9.0, 3.0)
    mu = torch.tensor([[0.2, -0.1]], dtype=F64)
    f, cg = 1 - t, 3.0 * t
    xs = torch.tensor([[0.2 * f + 0.1, -0.1 * f], [0.2 * f + 0.97 * cg, -0.1 * f + 0.05],
                       [0.2 * f + cg + 2 * f * sigma, -0.1 * f]], dtype=F64)
    lp = path.mixture_log_density(xs, t, mu, data_sigma=sigma)
    u = path.exact_velocity(xs, t, mu, data_sigma=sigma)
    for i in range(xs.shape[0]):
        ref_lp, ref_u = _scipy_gm(9.0, 3.0, t, xs[i].tolist(), mu[0].tolist(), sigma)
        assert float(lp[i]) == pytest.approx(ref_lp, abs=1e-7)
        for j in range(2):
            assert float(u[i, j]) == pytest.approx(ref_u[j], abs=1e-6 * (1 + abs(ref_u[j])))


def test_mixture_field_matches_importance_sampled_event_driven_flights():
    """E[u | x] = E[w(F) (f'(μ + (z - F)/f) + g' V)] / E[w(F)], w = φ_s(z - F), F and V event-driven."""
    path = FlightPath(9.0, 3.0)
    t, sigma = 0.3, 0.3
    f, g = path.f(t), path.g(t)
    mu = torch.tensor([0.2, -0.1], dtype=F64)
    sim = path.process.simulate_paths([g], 300_000, generator=_gen(10))
    F, V = sim.positions[:, 0], sim.velocities[:, 0]
    s = f * sigma
    z_right, z_wrong = [], []
    for x in ([0.3, 0.0], [0.9, -0.5], [-0.4, 0.6]):
        x = torch.tensor(x, dtype=F64)
        z = x - f * mu
        wgt = torch.exp(-((z - F) ** 2).sum(1) / (2 * s * s))
        val = path.df(t) * (mu + (z - F) / f) + path.dg(t) * V
        est = (wgt[:, None] * val).sum(0) / wgt.sum()
        se = ((wgt[:, None] * (val - est)) ** 2).sum(0).sqrt() / wgt.sum()  # delta method
        u = path.exact_velocity(x[None], t, mu[None], data_sigma=sigma)[0]
        z_right.append(float(((u - est).abs() / se).max()))
        wrong = path.exact_velocity(x[None], t, mu[None], data_sigma=0.9 * sigma)[0]  # sigma 10 % off
        z_wrong.append(float(((wrong - est).abs() / se).max()))
    assert max(z_right) < 4.0, z_right
    assert max(z_wrong) > 4.0, z_wrong


def test_mixture_continuity_equation_and_mass():
    """∂t ρ + ∇·(ρ u) = 0 by central differences on a 2D grid, and ∫ρ = 1; a field 5 % off fails."""
    path = FlightPath(9.0, 3.0)
    mu = torch.tensor([[0.3, -0.2], [-0.5, 0.4]], dtype=F64)
    w = torch.tensor([0.3, 0.7], dtype=F64)
    t, sigma, n, L = 0.5, 0.3, 161, 3.0
    xs = torch.linspace(-L, L, n, dtype=F64)
    h = float(xs[1] - xs[0])
    X, Y = torch.meshgrid(xs, xs, indexing="ij")
    pts = torch.stack([X.reshape(-1), Y.reshape(-1)], 1)

    def rho(tt):
        return path.mixture_log_density(pts, tt, mu, w, data_sigma=sigma).exp().reshape(n, n)

    r0 = rho(t)
    assert float(r0.sum()) * h * h == pytest.approx(1.0, abs=2e-4)  # mass beyond the box
    dt = 1e-5
    drho = (rho(t + dt) - rho(t - dt)) / (2 * dt)
    J = r0[..., None] * path.exact_velocity(pts, t, mu, w, data_sigma=sigma).reshape(n, n, 2)
    div = (J[2:, 1:-1, 0] - J[:-2, 1:-1, 0]) / (2 * h) + (J[1:-1, 2:, 1] - J[1:-1, :-2, 1]) / (2 * h)
    scale = float(drho.abs().max())
    res = float((drho[1:-1, 1:-1] + div).abs().max())
    bad = float((drho[1:-1, 1:-1] + 1.05 * div).abs().max())
    assert res < 1e-2 * scale, (res, scale)
    assert bad > 4 * res


def test_mixture_field_tends_to_the_finite_data_field_away_from_circles():
    path = FlightPath(9.0, 3.0)
    t = 0.4
    s = path.sample(SUP[torch.multinomial(W, 400, replacement=True, generator=_gen(11))], t, _gen(12))
    x = s.x_t[~s.atom_mask[:, 0]]
    f, cg = path.f(t), 3.0 * t
    gap = ((x[:, None, :] - f * SUP[None]).norm(dim=-1) - cg).abs().amin(dim=1)
    u0 = path.exact_velocity(x, t, SUP, W)
    for sigma, tol in ((1e-3, 3e-2), (1e-4, 3e-3)):
        far = gap > 12 * f * sigma
        assert far.sum() > 250
        err = float((path.exact_velocity(x, t, SUP, W, data_sigma=sigma) - u0)[far].abs().max())
        assert err < tol, (sigma, err)


def test_flow_of_the_mixture_field_carries_the_marginals():
    """RK4 on the exact Gaussian-mixture field from exact flight latents lands on the data law: W2 to exact
    samples at two times within 1.5x the noise floor; the finite-data (Dirac) field's flow is compared too."""
    path = FlightPath(9.0, 3.0)
    mu = torch.tensor([[-0.6, 0.0], [0.5, 0.4], [0.2, -0.6]], dtype=F64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    sigma, n = 0.15, 400
    z = path.sample_latent((n, 2), _gen(13), dtype=F64)
    grid = uniform_grid(1.0, 0.0, 40)
    res = integrate(ExactField(path, mu, w, data_sigma=sigma), z, grid, "rk4", return_trajectory=True)
    gen = _gen(14)

    def exact(tt, m):
        k = torch.multinomial(w, m, replacement=True, generator=gen)
        x0 = mu[k] + sigma * torch.randn(m, 2, generator=gen, dtype=F64)
        return path.sample(x0, tt, gen).x_t if tt > 0 else x0

    for idx, tt in ((20, 0.5), (40, 0.0)):
        flow = res.trajectory[idx]
        assert abs(float(grid[idx]) - tt) < 1e-12
        floor = sum(wasserstein_empirical(exact(tt, n), exact(tt, n), p=2) for _ in range(3)) / 3
        w2 = sum(wasserstein_empirical(flow, exact(tt, n), p=2) for _ in range(3)) / 3
        assert w2 < 1.5 * floor, (tt, w2, floor)
    # a wrong field (20 % too slow) moves the end law measurably
    slow = integrate(lambda x, t: 0.8 * ExactField(path, mu, w, data_sigma=sigma)(x, t), z, grid, "rk4").x
    floor = sum(wasserstein_empirical(exact(0.0, n), exact(0.0, n), p=2) for _ in range(3)) / 3
    assert wasserstein_empirical(slow, exact(0.0, n), p=2) > 1.5 * floor


def test_finite_speed_in_the_euclidean_norm():
    """supp X_t ⊂ f(t) supp + disc(c g(t)) per pair; the coordinate-wise Kac path's corners leave the disc."""
    x0 = SUP[torch.multinomial(W, 6000, replacement=True, generator=_gen(15))]
    for t in (0.05, 0.3, 1.0):
        for path, inside in ((FlightPath(9.0, 3.0), True), (KacPath(9.0, 3.0), False)):
            s = path.sample(x0, t, _gen(16))
            cg = 3.0 * path.g(t)
            dist = (s.x_t[:, None, :] - path.f(t) * SUP[None]).norm(dim=-1).amin(dim=1) / cg
            if inside:
                assert float(dist.max()) <= 1.0 + 1e-12
            else:
                assert float(dist.max()) > 1.05  # the box [-cg, cg]² is not the disc


# ------------------------------------------------------------------------------------------------ images
def test_cifar_distill_path_flight_trains_and_samples(tmp_path):
    """`experiments/cifar_distill.py --path flight`: a tiny digits teacher on the block-isotropic flow (pairs
    of horizontally adjacent pixels) trains, samples, and its samples are finite and in range."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from kacnum.images.pipeline import SampleSet
    from kacnum.images.train import load_teacher, sample_images

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cifar_distill_flight", root / "experiments" / "cifar_distill.py")
    cd = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = cd
    spec.loader.exec_module(cd)
    out = tmp_path / "run"
    common = ["--preset", "smoke", "--device", "cpu", "--quiet", "--threads", "1", "--out", str(out)]
    assert cd.main(common + ["--stage", "teacher", "--path", "flight", "--steps", "30", "--checkpoint-every", "0"]) == 0
    tconf = json.loads((out / "teacher" / "config.json").read_text())
    assert tconf["train"]["path"] == "flight"
    model, path, cfg = load_teacher(out / "teacher" / "checkpoint.pt", device="cpu")
    assert isinstance(path, FlightPath) and (path.a, path.c) == (9.0, 3.0)
    # the training target is the flight's: per pair, |u - f' x0| <= c g' (Euclidean)
    x0 = torch.rand(8, 1, 8, 8, generator=_gen(20)) * 2 - 1
    s = path.sample(x0, torch.full((8,), 0.3), _gen(21))
    assert float(_pair_norms((s.u_t - path.df(0.3) * x0).reshape(8, -1)).max()) <= 3.0 + 1e-5
    raw = sample_images(model, path, 16, guidance_scale=1.2, steps=8, seed=3, device="cpu")["images"]
    assert raw.shape == (16, 1, 8, 8) and bool(torch.isfinite(raw).all())
    assert float(raw.abs().max()) < 1.0 + 3.0  # data in [-1, 1] plus at most the latent radius c g(T)
    assert cd.main(common + ["--stage", "sample", "--num-samples", "12", "--sample-steps", "5"]) == 0
    sset = SampleSet.load(out / "sample" / "kac_teacher_nfe005.samples.pt")
    assert sset.images.shape == (12, 1, 8, 8) and bool(torch.isfinite(sset.images).all())
    assert float(sset.images.abs().max()) < 1.0 + 3.0


def test_latent_laws_script_quick(tmp_path):
    """experiments/latent_laws.py --quick: the figure and the atom shares (sampled vs exact)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "experiments"))
    spec = importlib.util.spec_from_file_location("latent_laws_script", root / "experiments" / "latent_laws.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    res = mod.main(["--quick", "--out", str(tmp_path / "ll"), "--threads", "1"])
    png = tmp_path / "ll" / "latent_laws.png"
    assert png.is_file() and 0 < png.stat().st_size < 300_000
    rows = json.loads((tmp_path / "ll" / "results.json").read_text())["rows"]
    assert rows == json.loads(json.dumps(res["rows"]))
    r1 = next(r for r in rows if r["a_g"] == 1.0)
    n = mod.QUICK["n_samples"]
    assert abs(r1["flight_circle"] - r1["flight_circle_exact"]) < 5 * math.sqrt(0.25 / n)
    assert abs(r1["kac_corner"] - r1["kac_corner_exact"]) < 5 * math.sqrt(0.25 / n)
    assert r1["flight_max_radius"] <= r1["cg"] + 1e-12 < r1["kac_max_radius"] <= math.sqrt(2) * r1["cg"] + 1e-12


@pytest.mark.parametrize("cls", [KacPath, FlightPath])
def test_mixture_field_is_continuous_into_the_latent_end(cls):
    """As f(t) -> 0 the Gaussian-mixture field tends to its t = T value (the data-free law): no 1/f blow-up
    where the quadrature window (width f σ) falls below the floating-point resolution."""
    path = cls(9.0, 3.0)
    smp = path.sample(torch.zeros(300, 2, dtype=F64), 1.0, _gen(22))
    x = smp.x_t[~smp.atom_mask.any(1)]
    x = x[(path._kernel.norm(x) < 2.9).all(1)]  # inside the support, away from its boundary
    u_T = path.exact_velocity(x, 1.0, SUP, W, data_sigma=0.1)
    for eps in (1e-6, 1e-9, 1e-12, 1e-15):
        u = path.exact_velocity(x, 1.0 - eps, SUP, W, data_sigma=0.1)
        assert float((u - u_T).abs().max()) < 1e-3 + 50 * eps, (eps, float((u - u_T).abs().max()))


def test_kac_time_grid_takes_the_flight_path():
    """``make_time_grid('kac')`` (uniform in the atom mass e^{-a g}) is the same grid for Kac and flight paths."""
    from kacnum.flows.solvers import make_time_grid

    for sched in ("t", "t2"):
        a = make_time_grid("kac", 7, 1.0, path=FlightPath(9.0, 3.0, g=sched))
        b = make_time_grid("kac", 7, 1.0, path=KacPath(9.0, 3.0, g=sched))
        assert torch.equal(a, b) and bool((a.diff() < 0).all())
