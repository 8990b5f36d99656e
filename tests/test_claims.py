"""kacnum.theory.claims: the docs/mathematics.md §3 energy numbers, every §8 bound holding on small instances (and a wrong bound
failing), independent references (scipy quadrature, the §2 variance, erfc tails), and one script run."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from kacnum.theory import claims
from kacnum.processes.kac import KacProcess
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath
from kacnum.processes.telegrapher import bump, heat_solution

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ kinetic energy
@pytest.mark.parametrize("t,kac,diffusion", [(1e-3, 8.92, 250.0), (1e-2, 8.23, 25.0), (0.1, 3.81, 2.5),
                                             (1.0, 0.27, 0.25)])
def test_section3_kinetic_energy_numbers(t, kac, diffusion):
    """docs/mathematics.md §3 (a = 9, c = 3): independent reference values to 2 decimals."""
    assert round(claims.kac_dirac_kinetic_energy(9.0, 3.0, t), 2) == kac
    assert round(claims.diffusion_dirac_kinetic_energy(1.0, t), 2) == diffusion


def _scipy_kac_energy(a, c, t):
    """∫ v² p dy + c² e^{-at} from the docs/mathematics.md §2–3 formulas with scipy's scaled Bessel functions."""
    ct = c * t

    def integrand(y):
        r = math.sqrt((ct - y) * (ct + y))
        z = a * r / c
        if z < 1e-8:  # at the cone: p -> (a e^{-at}/(2c))(1 + at/2), v -> y/(t + 2/a)
            p = a * math.exp(-a * t) / (2 * c) * (1 + a * t / 2)
            v = y / (t + 2 / a)
        else:
            e = math.exp(z - a * t)
            i0, i1 = special.i0e(z) * e, special.i1e(z) * e
            p = a / (2 * c) * (special.i0e(z) + ct / r * special.i1e(z)) * e
            v = c * y * i1 / (r * i0 + ct * i1)
        return v * v * p

    val, _ = integrate.quad(integrand, 0.0, ct, limit=400, epsabs=1e-13, epsrel=1e-11)
    return 2 * val + c * c * math.exp(-a * t)


@settings(max_examples=15, deadline=None)
@given(a=st.floats(0.5, 40.0), c=st.floats(0.5, 5.0), t=st.floats(1e-3, 2.0))
def test_dirac_energy_matches_scipy_and_is_bounded(a, c, t):
    e = claims.kac_dirac_kinetic_energy(a, c, t)
    ref = _scipy_kac_energy(a, c, t)
    assert e == pytest.approx(ref, rel=1e-7, abs=1e-12)
    # docs/mathematics.md §8 with f = 1, g = t, x0 = 0: E|u|² <= c²; the atoms alone give c² e^{-at}
    assert c * c * math.exp(-a * t) <= e <= c * c
    assert claims.kinetic_energy_bound(KacPath(a, c), t, 0.0, 1) == pytest.approx(c * c)


def test_dirac_energy_violates_a_halved_speed_bound():
    e = claims.kac_dirac_kinetic_energy(9.0, 3.0, 1e-4)
    assert e / 9.0 <= 1.0 and e / (1.5 ** 2) > 1.0  # c/2 in place of c: the wrong bound fails


def test_atom_aware_velocity_is_the_conditional_expectation():
    """Single Dirac at 1.5 (so x - f x0 is rounded): the marginal field IS the conditional target; on the
    3×3 grid the projection identity E[(u_t(x|x0) - u(x)) · u(x)] = 0 holds within Monte Carlo noise."""
    kac = KacPath()
    sup = torch.tensor([[1.5]], dtype=F64)
    for t in (1e-3, 0.3):
        s = claims.sample_path(kac, claims.stratified_data(sup, None, 2000), t, _gen(1))
        u = claims.kac_velocity_with_atoms(kac, s.x_t, t, sup, s.atom_mask)
        assert torch.allclose(u, s.u_t, atol=1e-12, rtol=0)
    grid, _ = claims.labelled_grid_support()
    s = claims.sample_path(kac, claims.stratified_data(grid, None, 18000), 0.3, _gen(2))
    u = claims.kac_velocity_with_atoms(kac, s.x_t, 0.3, grid, s.atom_mask)
    prod = ((s.u_t - u) * u).sum(dim=1)
    assert abs(float(prod.mean())) < 5 * float(prod.std()) / math.sqrt(prod.numel()) + 1e-9
    assert float(u.abs().max()) <= kac.speed_bound(0.3, 1.5) + 1e-12
    # Jensen: the marginal energy is below the conditional one (strictly: the posterior is not a point mass)
    assert float((u * u).sum(1).mean()) < float((s.u_t * s.u_t).sum(1).mean())
    with pytest.raises(ValueError, match="atom_mask"):
        claims.kac_velocity_with_atoms(kac, s.x_t, 0.3, grid, ~s.atom_mask)


def test_kinetic_energy_curve_bound_and_blowup():
    kac = KacPath()
    grid, _ = claims.labelled_grid_support()
    paths = {"kac": kac, "diffusion": claims.DiffusionLimitPath(kac)}
    rows = claims.kinetic_energy_curve(paths, kac, grid, [1e-3, 0.1, 1.0], 900, _gen(3), progress=False)
    kac_rows = [r for r in rows if r["path"] == "kac"]
    assert all(r["ratio"] <= 1.0 for r in kac_rows)
    assert all(r["max_speed"] <= kac.speed_bound(r["t"], 1.5) + 1e-12 for r in kac_rows)
    diff = {r["t"]: r for r in rows if r["path"] == "diffusion"}
    # d σ²/(4t) = 500 at t = 1e-3 (plus |f' x0|² = 3): the diffusion energy exceeds the Kac bound 40.5
    assert diff[1e-3]["ratio"] > 5.0
    assert diff[1e-3]["energy"] == pytest.approx(2 / (4e-3) + 3.0, rel=0.15)


def test_diffusion_limit_path_single_dirac_field_is_the_target():
    """One Dirac: E[u_t | x] is u_t itself, and E|u|² = d σ²/(4t) + |f' x0|² (f = 1 - t)."""
    path = claims.DiffusionLimitPath(KacPath(9.0, 3.0))
    x0 = torch.tensor([[0.7, -0.2]], dtype=F64)
    s = path.sample(x0.expand(4000, 2).clone(), 0.01, _gen(4))
    u = path.exact_velocity(s.x_t, 0.01, x0)
    assert torch.allclose(u, s.u_t, atol=1e-9, rtol=1e-9)
    e = (u * u).sum(1)
    assert abs(float(e.mean()) - (2 * 1.0 / (4 * 0.01) + 0.53)) < 5 * float(e.std()) / math.sqrt(e.numel())


# ------------------------------------------------------------------------------------------ finite speed
def test_cone_ratio_by_hand():
    sup = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=F64)
    x = torch.tensor([[0.5, 0.3], [1.0 + 0.5, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=F64)
    r = claims.cone_ratio(x, sup, f_t=0.5, half_width=0.5)  # cones: [-0.5,0.5]² and [0.5,1.5]x[-0.5,0.5]
    assert r.tolist() == pytest.approx([1.0, 1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="half_width"):
        claims.cone_ratio(x, sup, 0.5, 0.0)


def test_kac_samples_stay_in_cone_and_diffusion_leaves():
    kac = KacPath()
    grid, _ = claims.labelled_grid_support()
    paths = {"kac": kac, "diffusion": claims.DiffusionLimitPath(kac), "gaussian_fm": GaussianPath()}
    rows = claims.finite_speed_samples(paths, kac, grid, [0.01, 0.3, 1.0], 1800, _gen(5))
    for r in rows:
        if r["path"] == "kac":
            assert r["max_ratio"] <= 1.0 + 1e-12 and r["frac_outside"] == 0.0
            if r["t"] <= 0.3:  # atoms (mass e^{-at} per coordinate) sit on the faces: the bound is attained
                assert r["max_ratio"] >= 1.0 - 1e-12
        elif r["path"] == "diffusion":
            assert r["max_ratio"] > (3.0 if r["t"] == 0.01 else 1.0) and r["frac_outside"] > 0.0
    # a cone of half the width is wrong: Kac samples leave it
    x0 = claims.stratified_data(grid, None, 900)
    xt = claims.sample_path(kac, x0, 0.3, _gen(6)).x_t
    assert float(claims.cone_ratio(xt, grid, kac.f(0.3), 0.5 * kac.c * 0.3).max()) > 1.5


def test_pde_finite_speed_and_heat_tails():
    rows = claims.pde_finite_speed_1d(9.0, 3.0, [0.1, 0.5], n_steps=100)
    for r in rows:
        assert r["telegrapher_outside"] == 0.0 and r["telegrapher_max_outside"] == 0.0
        assert r["telegrapher_mass"] == pytest.approx(1.0, abs=1e-6)
        assert r["heat_outside"] > 1e-5


def test_heat_mass_outside_cone_matches_heat_solution():
    """The erfc formula against the heat solution integrated outside the cone on a fine grid."""
    D, c, t = 0.5, 3.0, 0.3
    m = claims.heat_mass_outside_cone(bump, (-1.0, 1.0), D, c, t)
    edge = 1.0 + c * t
    x = torch.linspace(edge, edge + 12 * math.sqrt(2 * D * t), 40001, dtype=F64)
    right = float(torch.trapezoid(heat_solution(bump, D, t, x, support=(-1.0, 1.0)), x))
    assert m == pytest.approx(2 * right, rel=1e-6)


def test_2d_leak_small_and_shrinking():
    rows = claims.pde_leak_2d(9.0, 3.0, 0.3, [32, 64])
    assert 0.0 < rows[1]["leak_fraction"] < rows[0]["leak_fraction"] < 1e-2


# ------------------------------------------------------------------------------------------ Wasserstein
def test_kac_quantiles_give_the_exact_variance_and_atoms():
    kp = KacProcess(9.0, 3.0)
    for t in (1e-3, 0.1, 0.5):
        q = claims.kac_quantiles(kp, t, 4096)
        assert float((q * q).mean().sqrt()) == pytest.approx(float(kp.std(t)), rel=2e-5)  # docs/mathematics.md §2 variance
        n_atom = int(math.floor(0.5 * math.exp(-9.0 * t) * 4096 - 0.5)) + 1  # midpoints below e^{-at}/2
        assert bool((q[:n_atom] == -3.0 * t).all()) and bool((q[-n_atom:] == 3.0 * t).all())
        assert bool((torch.diff(q) >= 0).all())


def test_wasserstein_1d_bound_holds_and_is_sharp():
    kp = KacProcess(9.0, 3.0)
    rows = claims.kac_wasserstein_1d(kp, [0.0, 1e-3, 0.05, 0.3], (1, 2, 4), n=2048)
    assert max(r["ratio"] for r in rows) <= 1.0
    # near (0, 1e-3) the atoms dominate: W_p ≈ ct, so speed c/2 would be violated (ratio 2x)
    assert max(2 * r["ratio"] for r in rows) > 1.9
    # the Brownian contrast is not Lipschitz near 0
    assert max(r["brownian_ratio"] for r in rows if r["s"] == 0.0 and r["t"] == 1e-3) > 5.0


def test_path_wasserstein_bound_with_schedules():
    grid, _ = claims.labelled_grid_support()
    for f, g in (("linear", "t"), ("exp", "t2")):
        path = KacPath(9.0, 3.0, f=f, g=g)
        rows = claims.kac_path_wasserstein(path, grid, [0.0, 0.1, 0.5], (1, 2), 180, _gen(7))
        assert all(r["ratio"] <= 1.0 for r in rows)
        assert all(r["pathwise_ratio"] <= 1.0 + 1e-12 for r in rows)
    # the product law (data {0}): W_2 = √2 W_2^{1D} ≈ 0.33 at (0, 0.1), above the bound with speed c/2
    path = KacPath(9.0, 3.0)
    rows = claims.kac_path_wasserstein(path, torch.zeros(1, 2, dtype=F64), [0.0, 0.1], (2,), 400, _gen(8))
    half = KacPath(9.0, 1.5)
    assert rows[0]["ratio"] <= 1.0
    assert rows[0]["w"] / claims.wasserstein_path_bound(half, 0.0, 0.1, 0.0, 2) > 1.2
    w1d = claims.kac_wasserstein_1d(KacProcess(9.0, 3.0), [0.0, 0.1], (2,), n=2048)[0]["w"]
    assert rows[0]["w"] == pytest.approx(math.sqrt(2) * w1d, rel=0.08)  # product law: W_2 adds in squares


# ------------------------------------------------------------------------------------------ diffusion limit
def test_diffusion_limit_errors_decrease_with_a():
    rows, rates = claims.diffusion_limit_table([10.0, 100.0, 1000.0], 1.0, 1.0, fit_from=10.0, n_grid=4001,
                                               progress=False)
    for key in ("density_sup", "density_l1", "velocity_sup", "velocity_l2", "pde_l1"):
        errs = [r[key] for r in rows]
        assert errs[0] > errs[1] > errs[2] > 0, key
        assert -1.4 < rates[key] < -0.7, (key, rates[key])


# ------------------------------------------------------------------------------------------ guidance
def test_guidance_bound_holds_and_unguided_bound_is_exceeded():
    path = KacPath()
    grid, labels = claims.labelled_grid_support()
    rows, curves = claims.guidance_integrability(path, grid, labels, (1.0, 4.0), 90, 20, _gen(8), progress=False)
    for r in rows:
        assert r["max_ratio"] <= 1.0 + 1e-9 and r["energy_ratio"] <= 1.0 + 1e-9
        assert r["observed_ratio"] <= 1.0 + 1e-9
        assert math.isfinite(r["energy_integral"]) and r["energy_integral"] > 0
    s4 = next(r for r in rows if r["scale"] == 4.0)
    assert s4["max_speed"] > path.speed_bound(0.0, 1.5)  # guidance leaves the Kac speed box (docs/mathematics.md §5)
    c = curves[4.0]
    assert c["t"].shape == c["energy"].shape == c["max_abs"].shape == (21,)


# ------------------------------------------------------------------------------------------ helpers
def test_helpers_validate_and_stratify():
    sup = torch.arange(6, dtype=F64).reshape(3, 2)
    x = claims.stratified_data(sup, torch.tensor([0.5, 0.25, 0.25]), 8)
    assert x.shape == (8, 2) and [int((x[:, 0] == v).sum()) for v in (0.0, 2.0, 4.0)] == [4, 2, 2]
    with pytest.raises(ValueError, match="n must"):
        claims.stratified_data(sup, None, 0)
    grid = claims.log_time_grid(1e-4, 1.0, 3, snap=(1e-3,))
    assert len(grid) == 13 and 1e-3 in grid and grid[0] == pytest.approx(1e-4) and grid[-1] == 1.0
    with pytest.raises(ValueError, match="t_max"):
        claims.log_time_grid(1.0, 0.1, 3)
    assert claims.worst_ratio([0.2, float("nan"), 0.9]) == 0.9


# ------------------------------------------------------------------------------------------ one script
def _load(name):
    spec = importlib.util.spec_from_file_location(f"claims_script_{name}", ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_kinetic_energy_script_quick_writes_files(tmp_path, capsys):
    mod = _load("kinetic_energy")
    out = tmp_path / "ke"
    res = mod.main(["--quick", "--out", str(out)])
    for name in ("config.json", "results.json", "kinetic_energy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "kinetic_energy.png").stat().st_size < 300_000
    results = json.loads((out / "results.json").read_text())
    assert set(results["worst_ratios"]) >= {"kac_dirac_energy_bound", "kac_grid_energy_bound"}
    assert results["worst_ratios"]["kac_grid_energy_bound"] <= 1.0
    assert results["energy_at_t_1e_3"]["dirac_kac"] == pytest.approx(8.92, abs=5e-3)
    assert results["energy_at_t_1e_3"]["dirac_diffusion"] == pytest.approx(250.0)
    assert json.loads((out / "config.json").read_text())["quick"] is True
    assert res["worst_ratios"] == results["worst_ratios"]
    assert "worst ratios" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the planar flight (docs/mathematics.md §14)
def _scipy_flight_energy(lam, c, t):
    """∫_disc |u|² p dx + c² e^{-λt} in polar coordinates from the docs/mathematics.md §14 formulas (p = λ/(2πc) e^{-λt +
    (λ/c) q}/q, u = (x/|x|) c (ct - q)/|x|), substituting r = ct sin(θ) to remove the 1/q singularity."""
    ct = c * t

    def integrand(th):
        r = ct * math.sin(th)
        q = ct * math.cos(th)
        if r == 0.0:
            return 0.0
        p_over = lam / (2 * math.pi * c) * math.exp(-lam * t + lam / c * q)  # p q
        u = c * (ct - q) / r
        return 2 * math.pi * r * u * u * p_over  # dr = q dθ, so 2π r p dr = 2π r (p q) dθ
    val, _ = integrate.quad(integrand, 0.0, math.pi / 2, limit=400, epsabs=1e-13, epsrel=1e-11)
    return val + c * c * math.exp(-lam * t)


@settings(max_examples=12, deadline=None)
@given(lam=st.floats(0.5, 40.0), c=st.floats(0.5, 5.0), t=st.floats(1e-3, 2.0))
def test_flight_dirac_energy_matches_scipy_and_is_bounded(lam, c, t):
    e = claims.flight_dirac_kinetic_energy(lam, c, t)
    assert e == pytest.approx(_scipy_flight_energy(lam, c, t), rel=1e-7, abs=1e-12)
    assert c * c * math.exp(-lam * t) <= e <= c * c
    path = FlightPath(lam, c)
    assert claims.path_kinetic_energy_bound(path, t, torch.zeros(1, 2, dtype=F64)) == pytest.approx(c * c)
    assert claims.path_kinetic_energy_bound(KacPath(lam, c), t, torch.zeros(1, 2, dtype=F64)) == pytest.approx(2 * c * c)


def test_flight_energy_limits_and_monte_carlo():
    """Ballistic start (c² at t -> 0, half the 2D Kac value 2c²), the 2D heat limit c²/(2λt) for large λt,
    and Monte Carlo from PlanarFlight's sampler and velocity; a wrong value (the 2D Kac energy) fails."""
    assert claims.flight_dirac_kinetic_energy(9.0, 3.0, 1e-6) == pytest.approx(9.0, rel=1e-4)
    assert claims.flight_dirac_kinetic_energy(4000.0, 3.0, 1.0) == pytest.approx(9.0 / 8000.0, rel=2e-3)
    pf = FlightPath(9.0, 3.0).process
    x, at = pf.sample(0.1, (100_000, 2), _gen(3), return_atoms=True, dtype=F64)
    u = pf.velocity(0.1, x, at)
    e = (u * u).sum(1)
    se = float(e.std()) / math.sqrt(e.numel())
    ref = claims.flight_dirac_kinetic_energy(9.0, 3.0, 0.1)
    assert abs(float(e.mean()) - ref) < 4 * se
    assert abs(float(e.mean()) - 2 * claims.kac_dirac_kinetic_energy(9.0, 3.0, 0.1)) > 40 * se


def test_flight_claims_on_grid_data():
    """Finite speed in the Euclidean norm (the flight stays in f supp + disc, the Kac path's corners and the
    diffusion leave it), the flight's own energy bound, the Wasserstein bound with c√(d/2)."""
    sup, _ = claims.labelled_grid_support(1.5)
    fl, kac = FlightPath(9.0, 3.0), KacPath(9.0, 3.0)
    paths = {"flight": fl, "kac": kac, "diffusion": claims.DiffusionLimitPath(fl)}
    rows = claims.finite_speed_samples(paths, fl, sup, (0.05, 0.5), 900, _gen(4))
    worst = {k: max(r["max_ratio"] for r in rows if r["path"] == k) for k in paths}
    assert worst["flight"] <= 1.0 + 1e-12 and worst["kac"] > 1.05 and worst["diffusion"] > 1.05
    x = torch.tensor([[3.0, 0.0], [2.2, 2.2]], dtype=F64)
    assert claims.cone_ratio(x, torch.zeros(1, 2, dtype=F64), 1.0, 3.0, block=2).tolist() == \
        pytest.approx([1.0, math.hypot(2.2, 2.2) / 3.0])
    assert claims.cone_ratio(x, torch.zeros(1, 2, dtype=F64), 1.0, 3.0).tolist() == pytest.approx([1.0, 2.2 / 3.0])
    ke = claims.kinetic_energy_curve({"flight": fl}, kac, sup, (1e-3, 0.3), 909, _gen(5), progress=False)
    assert all(r["own_ratio"] <= 1.0 for r in ke)
    assert all(r["own_bound"] < r["bound"] for r in ke)  # (d/2)(|f'| max|x0_pair| + c)² < d(|f'| max|x0_j| + c)²
    rw = claims.kac_path_wasserstein(fl, sup, (0.0, 0.1, 1.0), (1, 2), 198, _gen(6))
    assert max(r["ratio"] for r in rw) <= 1.0
    # pathwise the bound is attained (a flight from the data point at 0 with no event moves at speed c), so
    # no smaller speed in the bound holds
    assert max(r["pathwise_ratio"] for r in rw) == pytest.approx(1.0, abs=1e-12)


def test_flight_wasserstein_2d_radial_coupling():
    """W_p(μ_s, μ_t) <= c|t - s| for the planar flight; the radial coupling's W2 agrees with exact OT of
    samples; the Brownian contrast breaks the same bound at small times."""
    pf = FlightPath(9.0, 3.0).process
    rows = claims.flight_wasserstein_2d(pf, (0.0, 1e-3, 0.05, 0.3, 1.0), (1, 2, 4), n=4096)
    assert max(r["ratio"] for r in rows) <= 1.0
    assert max(r["brownian_ratio"] for r in rows) > 5.0
    w2 = next(r["w"] for r in rows if (r["s"], r["t"], r["p"]) == (0.05, 0.3, 2.0))
    from kacnum.theory.transport import wasserstein_empirical
    a = pf.sample(0.05, (1500, 2), _gen(7), dtype=F64)
    b = pf.sample(0.3, (1500, 2), _gen(8), dtype=F64)
    emp = wasserstein_empirical(a, b, p=2)
    assert abs(emp - w2) < 0.08 * w2, (emp, w2)
