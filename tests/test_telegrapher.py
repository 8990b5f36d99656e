"""Tests of kacnum.processes.telegrapher: 1D kinetic solver, exact solution, 2D solver, cones, diffusion limit."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

from kacnum.processes.kac import KacProcess
from kacnum.processes.telegrapher import (
    bump,
    damped_mode_amplitude,
    exact_solution_1d,
    fit_order,
    fourier_mode_solution_2d,
    heat_limit_l1,
    heat_solution,
    kinetic_grid_1d,
    l1_distance,
    mass_outside_cone,
    mass_outside_cone_2d,
    solve_telegrapher_1d,
    solve_telegrapher_2d,
)

F64 = torch.float64


def u0_bump(x):
    return bump(x)  # (315/256)(1 - x²)⁴ on |x| < 1, C³ with bounded 4th derivative


def bump_variance(power=4):
    const = math.exp(math.lgamma(power + 1.5) - math.lgamma(power + 1.0)) / math.sqrt(math.pi)
    return integrate.quad(lambda x: x * x * const * (1 - x * x) ** power, -1, 1, epsabs=1e-14)[0]


# ------------------------------------------------------------------------------ exact solution
def test_exact_solution_mass_and_variance():
    """∫u = 1 and ∫x²u = Var(u0) + Var K_t (K_t independent of X0, mean 0), Var K_t from kac.py's formula."""
    a, c = 1.7, 0.9
    x = torch.linspace(-4.0, 4.0, 1601, dtype=F64)
    kp = KacProcess(a, c)
    for t in (0.3, 1.0, 2.0):
        u = exact_solution_1d(u0_bump, a, c, t, x, support=(-1, 1))
        assert abs(float(torch.trapezoid(u, x)) - 1.0) < 1e-10
        var = float(torch.trapezoid(x * x * u, x))
        # float64 time: kp.variance(float) evaluates in the default dtype (float32)
        var_k = float(kp.variance(torch.tensor(t, dtype=F64)))
        assert var == pytest.approx(bump_variance() + var_k, rel=1e-9)


def test_exact_solution_at_time_zero_and_outside_cone():
    x = torch.linspace(-3.0, 3.0, 301, dtype=F64)
    assert torch.allclose(exact_solution_1d(u0_bump, 1.0, 1.0, 0.0, x, support=(-1, 1)), u0_bump(x), atol=1e-14)
    u = exact_solution_1d(u0_bump, 2.0, 1.0, 0.8, x, support=(-1, 1))
    assert float(u[x.abs() > 1.8 + 1e-9].abs().max()) == 0.0
    assert float(u[x.abs() < 1.7].min()) > 0.0


def _pde_residual(a, c, t, x, h, **kw):
    u = lambda tt, xx: exact_solution_1d(u0_bump, a, c, tt, xx, support=(-1, 1), **kw)  # noqa: E731
    utt = (u(t + h, x) - 2 * u(t, x) + u(t - h, x)) / h**2
    ut = (u(t + h, x) - u(t - h, x)) / (2 * h)
    uxx = (u(t, x + h) - 2 * u(t, x) + u(t, x - h)) / h**2
    return utt + 2 * a * ut - c * c * uxx, uxx


@pytest.mark.parametrize("with_u1", [False, True])
def test_exact_solution_satisfies_pde(with_u1):
    """Centred differences of the quadrature solution: residual O(h²) while each term is O(1)."""
    a, c, t = 1.3, 1.1, 0.7
    x = torch.linspace(-2.3, 2.3, 47, dtype=F64)
    kw = {"u1": lambda y: y * bump(y), "support_u1": (-1, 1)} if with_u1 else {}
    res1, uxx = _pde_residual(a, c, t, x, 2e-3, **kw)
    res2, _ = _pde_residual(a, c, t, x, 1e-3, **kw)
    assert float(uxx.abs().max()) > 1.0
    assert float(res2.abs().max()) < 1e-4
    assert float(res2.abs().max()) < 0.4 * float(res1.abs().max())  # shrinks like h²


def test_exact_solution_initial_velocity():
    """∂t u(0) = u1 (one-sided second-order difference), for a u1 with non-zero mass."""
    a, c, h = 1.0, 1.0, 1e-4
    x = torch.linspace(-0.9, 0.9, 37, dtype=F64)
    u1 = lambda y: bump(y, 0.1, 0.8)  # noqa: E731
    u = [exact_solution_1d(u0_bump, a, c, k * h, x, u1=u1, support=(-1, 1), support_u1=(-0.7, 0.9)) for k in range(3)]
    ut0 = (-3 * u[0] + 4 * u[1] - u[2]) / (2 * h)
    assert torch.allclose(ut0, u1(x), atol=1e-5)


def test_exact_solution_quadrature_converged():
    """With the supports given the default rule is at round-off against a much finer rule."""
    a, c, t = 2.5, 0.7, 1.4
    x = torch.linspace(-2.5, 2.5, 41, dtype=F64)
    kw = dict(u1=lambda y: bump(y, 0.3, 0.5), support=(-1, 1), support_u1=(-0.2, 0.8))
    coarse = exact_solution_1d(u0_bump, a, c, t, x, **kw)
    fine = exact_solution_1d(u0_bump, a, c, t, x, n_quad=80, n_time_quad=48, **kw)
    assert float((coarse - fine).abs().max()) < 1e-12
    no_support = exact_solution_1d(u0_bump, a, c, t, x, n_panels=48, n_quad=48)
    assert float((no_support - exact_solution_1d(u0_bump, a, c, t, x, support=(-1, 1))).abs().max()) < 1e-8


# ------------------------------------------------------------------------------ 1D solver
def _errors_1d(a, c, t, steps, **kw):
    errs, dts = [], []
    u1, sup1 = kw.get("u1"), kw.get("support_u1", (-1, 1))
    for n in steps:
        sol = solve_telegrapher_1d(u0_bump, a, c, t, n, -1.0, 1.0, u1=u1)
        ex = exact_solution_1d(u0_bump, a, c, t, sol.x, u1=u1, support=(-1, 1), support_u1=sup1)
        errs.append(float(l1_distance(sol.x, sol.u, ex)))
        dts.append(sol.dt)
    return dts, errs


@pytest.mark.parametrize("a,c,t", [(1.0, 1.0, 1.0), (4.0, 0.5, 0.8), (0.3, 2.0, 1.5)])
def test_solver_1d_second_order(a, c, t):
    dts, errs = _errors_1d(a, c, t, [20, 40, 80, 160])
    assert fit_order(dts, errs) >= 1.9
    assert errs[-1] < 2e-4


@pytest.mark.parametrize(
    "u1,support_u1",
    [(lambda y: y * bump(y), (-1, 1)), (lambda y: bump(y, 0.3, 0.5), (-0.2, 0.8))],
    ids=["zero-mass-u1", "positive-mass-u1"],
)
def test_solver_1d_second_order_with_initial_velocity(u1, support_u1):
    dts, errs = _errors_1d(1.5, 0.8, 1.2, [20, 40, 80], u1=u1, support_u1=support_u1)
    assert fit_order(dts, errs) >= 1.9
    assert errs[-1] < 1e-3


@given(
    a=st.floats(0.01, 50.0),
    c=st.floats(0.1, 10.0),
    t=st.floats(0.01, 5.0),
    n=st.integers(1, 120),
    width=st.floats(0.05, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_solver_1d_mass_finite_speed_positivity(a, c, t, n, width, seed):
    """Any non-negative data in [x_min, x_max]: Σu kept, u ≥ 0, nothing outside the cone."""
    g = torch.Generator().manual_seed(seed)
    x_min = -0.37
    x_max = x_min + width * c * t  # data width in light-cone units keeps the grid below ~5n cells
    x = kinetic_grid_1d(x_min, x_max, c, t, n)
    u0 = torch.rand(2, x.numel(), generator=g, dtype=F64) * ((x >= x_min) & (x <= x_max))
    sol = solve_telegrapher_1d(u0, a, c, t, n, x_min, x_max)
    mass0 = u0.sum(-1) * sol.dx
    assert torch.allclose(sol.mass(), mass0, rtol=1e-12, atol=0)
    assert float(sol.p_plus.min()) >= 0.0 and float(sol.p_minus.min()) >= 0.0
    assert float(mass_outside_cone(sol.x, sol.u, (x_min, x_max), c, t).max()) <= 1e-12 * float(mass0.max())


def test_solver_1d_flux_far_field_keeps_density_in_cone():
    """u1 with ∫u1 ≠ 0: the flux is non-zero far right, but u stays inside the cone."""
    sol = solve_telegrapher_1d(u0_bump, 1.0, 1.0, 1.0, 50, -1, 1, u1=lambda y: bump(y))
    assert float(mass_outside_cone(sol.x, sol.u, (-1, 1), 1.0, 1.0)) <= 1e-12
    assert float(sol.flux[-1]) == pytest.approx(-math.exp(-2.0), rel=1e-3)  # J(t) = -(∫u1) e^{-2at}


def test_mass_outside_cone_detects_leaks():
    x = torch.linspace(-5, 5, 1001, dtype=F64)
    u = bump(x, 0.0, 2.5)  # support wider than the cone [-1 - 1, 1 + 1] at c = t = 1
    assert float(mass_outside_cone(x, u, (-1, 1), 1.0, 1.0)) > 1e-3
    assert float(mass_outside_cone(x, u, (-1, 1), 1.0, 1.5)) < float(mass_outside_cone(x, u, (-1, 1), 1.0, 1.0))


def test_solver_1d_dtype_device(device, dtype):
    sol = solve_telegrapher_1d(u0_bump, 2.0, 1.0, 1.0, 40, -1, 1, dtype=dtype, device=device)
    assert sol.u.dtype == dtype and sol.u.device.type == device.type
    x64 = sol.x.double().cpu()
    ref = exact_solution_1d(u0_bump, 2.0, 1.0, 1.0, x64, support=(-1, 1))
    assert float(l1_distance(x64, sol.u.double().cpu(), ref)) < 2e-3
    assert float(mass_outside_cone(sol.x, sol.u, (-1, 1), 1.0, 1.0)) == 0.0


# ------------------------------------------------------------------------------ heat and diffusion limit
def test_heat_solution_moments():
    x = torch.linspace(-8.0, 8.0, 2001, dtype=F64)
    D, t = 0.35, 1.3
    u = heat_solution(u0_bump, D, t, x, support=(-1, 1))
    assert float(torch.trapezoid(u, x)) == pytest.approx(1.0, abs=1e-10)
    assert float(torch.trapezoid(x * x * u, x)) == pytest.approx(bump_variance() + 2 * D * t, rel=1e-9)
    assert torch.allclose(heat_solution(u0_bump, D, t, x), u, atol=1e-6)


def test_diffusion_limit_rate():
    """c²/a = σ² fixed, a ↑: L1(telegrapher, heat) decreases, measured rate ~ 1/a (fit ≥ 0.9)."""
    a_values = [4.0, 16.0, 64.0, 256.0]
    d = [heat_limit_l1(u0_bump, 1.0, a, 1.0, (-1, 1), n_x=1201) for a in a_values]
    assert all(d1 < d0 for d0, d1 in zip(d, d[1:]))
    rate = fit_order([1 / a for a in a_values], d)
    assert 0.9 <= rate <= 1.2
    assert d[-1] < 2e-3


# ------------------------------------------------------------------------------ 2D solver
def test_damped_mode_amplitude_matches_ode_solver():
    from scipy.integrate import solve_ivp

    t = np.linspace(0.0, 3.0, 31)
    for omega0, a, v0 in [(3.0, 0.5, 0.0), (2.0, 2.0, 0.3), (1.0, 4.0, -1.0), (0.0, 1.0, 0.0)]:
        sol = solve_ivp(
            lambda _, y: [y[1], -2 * a * y[1] - omega0**2 * y[0]], (0, 3), [1.0, v0], t_eval=t, rtol=1e-11, atol=1e-13
        )
        assert np.allclose(damped_mode_amplitude(omega0, a, torch.as_tensor(t), v0).numpy(), sol.y[0], atol=1e-8)


@pytest.mark.parametrize("laplacian", ["fd", "spectral"])
@pytest.mark.parametrize("a", [0.5, 1.0])
def test_solver_2d_second_order_on_fourier_mode(laplacian, a):
    box = (0.0, 2 * math.pi)
    errs, hs = [], []
    for n in (32, 64, 128):
        sol = solve_telegrapher_2d(lambda X, Y: torch.cos(X + 2 * Y), a, 1.0, 1.0, n, box=box, laplacian=laplacian)
        ex = fourier_mode_solution_2d((1, 2), a, 1.0, 1.0, sol.x, box=box)
        errs.append(float((sol.u - ex).abs().max()))
        hs.append(sol.dx)
    assert fit_order(hs, errs) >= 1.8
    assert errs[-1] < 5e-4


def test_solver_2d_initial_velocity_order():
    """u1 = v0 · mode: the exact amplitude solves y'' + 2ay' + ω0²y = 0 with y'(0) = v0."""
    box, a, v0 = (0.0, 2 * math.pi), 0.7, 1.5
    errs, hs = [], []
    for n in (32, 64, 128):
        mode = lambda X, Y: torch.cos(2 * X - Y)  # noqa: E731
        sol = solve_telegrapher_2d(mode, a, 1.0, 0.9, n, box=box, u1=lambda X, Y: v0 * mode(X, Y))
        X, Y = torch.meshgrid(sol.x, sol.x, indexing="ij")
        ex = damped_mode_amplitude(math.sqrt(5.0), a, 0.9, v0) * mode(X, Y)
        errs.append(float((sol.u - ex).abs().max()))
        hs.append(sol.dx)
    assert fit_order(hs, errs) >= 1.8


def test_solver_2d_mass_and_cone_leak():
    """Σu is conserved; mass outside the light cone is small and shrinks with h (dispersion, not exact)."""
    leaks = []
    for n in (64, 128):
        sol = solve_telegrapher_2d(lambda X, Y: bump(torch.sqrt(X**2 + Y**2)), 1.0, 1.0, 1.0, n, box=(-4.0, 4.0))
        X, Y = torch.meshgrid(sol.x, sol.x, indexing="ij")
        mass0 = float(bump(torch.sqrt(X**2 + Y**2)).sum()) * sol.dx**2
        assert float(sol.mass()) == pytest.approx(mass0, rel=1e-12)
        leaks.append(float(mass_outside_cone_2d(sol.x, sol.y, sol.u, (0.0, 0.0), 1.0, 1.0, 1.0)) / mass0)
    assert leaks[0] < 1e-3 and leaks[1] < leaks[0] / 4


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(a=0.0), "a"),
        (dict(a=-1.0), "a"),
        (dict(c=0.0), "c"),
        (dict(c=float("nan")), "c"),
        (dict(t_final=-0.5), "t_final"),
        (dict(n_steps=0), "n_steps"),
        (dict(u0=lambda x: x * float("inf")), "u0"),
        (dict(u0=torch.ones(3, dtype=F64)), "u0"),
    ],
)
def test_solver_1d_bad_input(kwargs, name):
    args = dict(u0=u0_bump, a=1.0, c=1.0, t_final=1.0, n_steps=10, x_min=-1.0, x_max=1.0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        solve_telegrapher_1d(**args)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(a=0.0), "a"),
        (dict(c=-2.0), "c"),
        (dict(t_final=-1.0), "t_final"),
        (dict(n_cells=2), "n_cells"),
        (dict(cfl=0.9), "cfl"),
        (dict(laplacian="weird"), "laplacian"),
        (dict(u0=lambda X, Y: X / 0.0), "u0"),
    ],
)
def test_solver_2d_bad_input(kwargs, name):
    args = dict(u0=lambda X, Y: torch.cos(X), a=1.0, c=1.0, t_final=1.0, n_cells=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        solve_telegrapher_2d(**args)


def test_exact_and_helpers_bad_input():
    x = torch.linspace(-1, 1, 5, dtype=F64)
    with pytest.raises(ValueError, match="a"):
        exact_solution_1d(u0_bump, 0.0, 1.0, 1.0, x)
    with pytest.raises(ValueError, match="c"):
        exact_solution_1d(u0_bump, 1.0, -1.0, 1.0, x)
    with pytest.raises(ValueError, match="t"):
        exact_solution_1d(u0_bump, 1.0, 1.0, -0.1, x)
    with pytest.raises(ValueError, match="x"):
        exact_solution_1d(u0_bump, 1.0, 1.0, 1.0, torch.tensor([0.0, float("nan")], dtype=F64))
    with pytest.raises(ValueError, match="support"):
        exact_solution_1d(u0_bump, 1.0, 1.0, 1.0, x, support=(1.0, -1.0))
    with pytest.raises(ValueError, match="D"):
        heat_solution(u0_bump, 0.0, 1.0, x)
    with pytest.raises(ValueError, match="c"):
        mass_outside_cone(x, x, (-1, 1), 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma2"):
        heat_limit_l1(u0_bump, -1.0, 1.0, 1.0, (-1, 1))
