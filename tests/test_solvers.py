"""Solvers: empirical orders on closed-form flows, exactness on polynomials, NFE accounting, grids,
DDIM, bad input."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from kacnum.flows.solvers import (
    METHODS,
    NFE_PER_STEP,
    SolveResult,
    ddim_sample,
    integrate,
    power_grid,
    step,
    subdivide_grid,
    uniform_grid,
)

ORDER = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4, "ab2": 2}
STEPS = {  # step counts in the asymptotic regime, errors far above float64 round-off
    "euler": [32, 64, 128, 256],
    "heun": [16, 32, 64, 128],
    "midpoint": [16, 32, 64, 128],
    "rk4": [8, 16, 32, 64],
    "ab2": [16, 32, 64, 128],
}

# ---------------------------------------------------------------------------------------------
# closed-form problems: (field, x0, t0, exact(x0, t0, t1))

A = torch.tensor([[-0.5, 2.0], [-2.0, -0.3]], dtype=torch.float64)


def linear_problem():
    x0 = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=torch.float64)

    def field(x, t):
        return x @ A.T.to(x)

    def exact(x0, t0, t1):
        return x0 @ torch.linalg.matrix_exp(A * (t1 - t0)).T.to(x0)

    return field, x0, exact


def forced_problem():
    """dx/dt = -x + sin(3t):  x(t) = C e^{-t} + (sin 3t - 3 cos 3t) / 10."""
    x0 = torch.tensor([[0.7], [-1.2]], dtype=torch.float64)

    def field(x, t):
        return -x + torch.sin(3 * t)[:, None]

    def part(t):
        return (math.sin(3 * t) - 3 * math.cos(3 * t)) / 10

    def exact(x0, t0, t1):
        return (x0 - part(t0)) * math.exp(-(t1 - t0)) + part(t1)

    return field, x0, exact


def riccati_problem():
    """dx/dt = x^2:  x(t) = 1 / (1/x0 - (t - t0))."""
    x0 = torch.tensor([[0.5], [-0.3]], dtype=torch.float64)

    def field(x, t):
        return x * x

    def exact(x0, t0, t1):
        return 1.0 / (1.0 / x0 - (t1 - t0))

    return field, x0, exact


PROBLEMS = {"linear": linear_problem, "forced": forced_problem, "riccati": riccati_problem}


def fitted_order(method, problem, grid_fn, steps, solver=integrate):
    field, x0, exact = PROBLEMS[problem]()
    errs = []
    for n in steps:
        grid = grid_fn(n)
        res = solver(field, x0, grid, method)
        ref = exact(x0, float(grid[0]), float(grid[-1]))
        errs.append(float((res.x - ref).abs().max()))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    return slope, errs


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("direction", ["decreasing", "increasing"])
def test_empirical_order_uniform(method, problem, direction):
    ends = (1.0, 0.0) if direction == "decreasing" else (0.0, 1.0)
    slope, errs = fitted_order(method, problem, lambda n: uniform_grid(*ends, n), STEPS[method])
    assert abs(slope - ORDER[method]) < 0.25, (slope, errs)


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
def test_empirical_order_power_grid(method, problem):
    """Non-uniform grid (rho = 3, denser near t_end): same orders, AB-2 with variable steps."""
    slope, errs = fitted_order(method, problem, lambda n: power_grid(1.0, 0.0, n, rho=3.0),
                               STEPS[method])
    assert abs(slope - ORDER[method]) < 0.25, (slope, errs)


def jittered_grid(n):
    """Steps alternating h, 2h (ratio 2 and 1/2): a grid where h_n - h_{n-1} = O(h)."""
    w = torch.tensor([1.0 if i % 2 == 0 else 2.0 for i in range(n)], dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0) / w.sum()]).flip(0)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_ab2_variable_step_on_jittered_grid(problem):
    slope, errs = fitted_order("ab2", problem, jittered_grid, STEPS["ab2"])
    assert abs(slope - 2) < 0.25, (slope, errs)


# -- the order checks catch wrong implementations ----------------------------------------------


def _mutant(update):
    """A solver with integrate's signature built from a one-step update ``update(f, x, t, h)``."""

    def solve(field, x, grid, method):
        ts = grid.tolist()
        f = lambda x, t: field(x, torch.full((x.shape[0],), t, dtype=x.dtype))  # noqa: E731
        for i in range(len(ts) - 1):
            x = update(f, x, ts[i], ts[i + 1] - ts[i])
        return SolveResult(x, 0, 0, None, grid)

    return solve


def _kutta3(f, x, t, h):  # Kutta's third-order method: 3 stages, order 3
    k1 = f(x, t)
    k2 = f(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = f(x - h * k1 + 2 * h * k2, t + h)
    return x + h / 6 * (k1 + 4 * k2 + k3)


def _ab2_constant_coeffs(field, x, grid, method):  # uniform-step AB-2 used on a variable grid
    ts = grid.tolist()
    f_prev = None
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        f_n = field(x, torch.full((x.shape[0],), ts[i], dtype=x.dtype))
        x = x + h * f_n if f_prev is None else x + h * (1.5 * f_n - 0.5 * f_prev)
        f_prev = f_n
    return SolveResult(x, 0, 0, None, grid)


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_order_check_rejects_third_order_method(problem):
    slope, _ = fitted_order("rk4", problem, lambda n: uniform_grid(1.0, 0.0, n), STEPS["rk4"],
                            solver=_mutant(_kutta3))
    assert abs(slope - 3) < 0.25 and abs(slope - 4) >= 0.25, slope


@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_order_check_rejects_constant_coefficient_ab2(problem):
    slope, _ = fitted_order("ab2", problem, jittered_grid, STEPS["ab2"], solver=_ab2_constant_coeffs)
    assert abs(slope - 2) >= 0.25, slope


# -- exactness on polynomial-in-t fields over arbitrary grids -----------------------------------

grids = st.lists(st.floats(0.05, 1.0), min_size=1, max_size=12).flatmap(
    lambda w: st.tuples(st.just(w), st.floats(-2.0, 2.0), st.booleans()))


def _grid_from(w, t0, decreasing):
    steps = torch.tensor(w, dtype=torch.float64) * (-1.0 if decreasing else 1.0)
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(steps, 0)]) + t0


@given(grids)
def test_polynomial_fields_are_integrated_exactly(spec):
    """Quadrature exactness: Heun/midpoint exact for f linear in t, RK4 for cubic; AB-2's error is
    exactly its Euler first step's, -a h_0^2 / 2, for f = a t on ANY variable grid."""
    w, t0, decreasing = spec
    grid = _grid_from(w, t0, decreasing)
    t_a, t_b = float(grid[0]), float(grid[-1])
    x0 = torch.tensor([[0.3]], dtype=torch.float64)
    lin = lambda x, t: (1.5 - 2.0 * t)[:, None].expand_as(x)  # noqa: E731
    lin_exact = 0.3 + 1.5 * (t_b - t_a) - (t_b**2 - t_a**2)
    for m in ("heun", "midpoint", "rk4"):
        assert float(integrate(lin, x0, grid, m).x) == pytest.approx(lin_exact, abs=1e-11)
    cub = lambda x, t: (t**3 - t)[:, None].expand_as(x)  # noqa: E731
    cub_exact = 0.3 + (t_b**4 - t_a**4) / 4 - (t_b**2 - t_a**2) / 2
    assert float(integrate(cub, x0, grid, "rk4").x) == pytest.approx(cub_exact, abs=1e-10)
    h0 = float(grid[1] - grid[0])
    ab2 = float(integrate(lin, x0, grid, "ab2").x)
    assert ab2 == pytest.approx(lin_exact - (-2.0) * h0**2 / 2, abs=1e-11)


# ---------------------------------------------------------------------------------------------
# NFE accounting, trajectory, dtype/device


class CountingField:
    def __init__(self, nfe_per_call=None):
        self.calls = 0
        self.times = []
        if nfe_per_call is not None:
            self.nfe_per_call = nfe_per_call

    def __call__(self, x, t):
        self.calls += 1
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype and t.device == x.device
        assert bool((t == t[0]).all())
        self.times.append(float(t[0]))
        return -x + t.reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_nfe_counts(method, n, dtype, device):
    field = CountingField()
    x = torch.randn(3, 2, 4, dtype=dtype, device=device)
    res = integrate(field, x, uniform_grid(1.0, 0.0, n, dtype=dtype, device=device), method)
    want = {"euler": n, "heun": 2 * n, "midpoint": 2 * n, "rk4": 4 * n, "ab2": n}[method]
    assert res.nfe == field.calls == want == NFE_PER_STEP[method] * n
    assert res.nfe_model == want
    assert res.x.dtype == dtype and res.x.device.type == device.type and res.x.shape == x.shape


def test_evaluation_times():
    grid = [1.0, 0.75, 0.25]
    seen = {}
    for m in METHODS:
        f = CountingField()
        integrate(f, torch.zeros(2, 1, dtype=torch.float64), grid, m)
        seen[m] = f.times
    assert seen["euler"] == seen["ab2"] == [1.0, 0.75]
    assert seen["heun"] == [1.0, 0.75, 0.75, 0.25]  # the final time is evaluated (documented)
    assert seen["midpoint"] == [1.0, 0.875, 0.75, 0.5]
    assert seen["rk4"] == [1.0, 0.875, 0.875, 0.75, 0.75, 0.5, 0.5, 0.25]


@pytest.mark.parametrize("method", METHODS)
def test_nfe_model_uses_nfe_per_call(method):
    field = CountingField(nfe_per_call=2)
    res = integrate(field, torch.ones(2, 3), uniform_grid(1.0, 0.0, 5), method)
    assert res.nfe == field.calls and res.nfe_model == 2 * res.nfe


@pytest.mark.parametrize("method", METHODS)
def test_trajectory_and_callback(method, dtype, device):
    field = CountingField()
    x = torch.randn(4, 3, dtype=dtype, device=device)
    grid = power_grid(1.0, 0.01, 6, rho=2.0, dtype=dtype, device=device)
    calls = []
    res = integrate(field, x, grid, method, return_trajectory=True,
                    callback=lambda i, t, xi: calls.append((i, t, xi.clone())))
    assert res.trajectory.shape == (7, 4, 3)
    assert torch.equal(res.trajectory[0], x) and torch.equal(res.trajectory[-1], res.x)
    assert [c[0] for c in calls] == list(range(6))
    assert [c[1] for c in calls] == grid[1:].tolist()
    for i, (_, _, xi) in enumerate(calls):
        assert torch.equal(xi, res.trajectory[i + 1])
    assert integrate(field, x, grid, method).trajectory is None
    assert torch.equal(res.time_grid, grid)


@pytest.mark.parametrize("method", METHODS)
def test_dtype_device_accuracy(method, dtype, device):
    """Same answer on every dtype/device, to the dtype's precision, in both directions."""
    field, x0, exact = linear_problem()
    x0 = x0.to(dtype=dtype, device=device)
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    for ends in [(1.0, 0.2), (0.2, 1.0)]:
        grid = uniform_grid(*ends, 200, dtype=dtype, device=device)
        ref = exact(x0.double(), float(grid[0]), float(grid[-1]))  # the grid as rounded
        x64 = integrate(field, x0.double(), grid.double(), method).x
        res = integrate(field, x0, grid, method).x
        assert res.dtype == dtype and res.device.type == device.type
        assert torch.allclose(res.double(), x64, atol=tol, rtol=0)
        assert float((x64 - ref).abs().max()) < {1: 2e-2, 2: 1e-3, 4: 1e-8}[ORDER[method]]


def test_backward_then_forward_returns():
    field, x0, _ = riccati_problem()
    there = integrate(field, x0, uniform_grid(1.0, 0.0, 64), "rk4").x
    back = integrate(field, there, uniform_grid(0.0, 1.0, 64), "rk4").x
    assert torch.allclose(back, x0, atol=1e-8)


def test_autograd_flows_through():
    """integrate keeps the graph: d x_N / d w matches a central difference of the same solve."""
    x0 = torch.ones(1, 1, dtype=torch.float64)

    def solve(w, m):
        return integrate(lambda x, t: -w * x * (1 + t[:, None]), x0, uniform_grid(0.0, 1.0, 16), m).x

    for m in METHODS:
        w = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(solve(w, m).sum(), w)
        fd = (solve(torch.tensor(0.7 + 1e-6, dtype=torch.float64), m)
              - solve(torch.tensor(0.7 - 1e-6, dtype=torch.float64), m)) / 2e-6
        assert float(g) == pytest.approx(float(fd), rel=1e-7)
        assert float(g) == pytest.approx(-1.5 * math.exp(-1.05), rel=0.1)  # d/dw e^{-1.5 w}


def test_step_matches_integrate():
    field, x0, _ = forced_problem()
    for m in ("euler", "heun", "midpoint", "rk4"):
        x1, nfe = step(field, x0, 0.8, 0.3, m)
        assert nfe == NFE_PER_STEP[m]
        assert torch.equal(x1, integrate(field, x0, [0.8, 0.3], m).x)
    x1, _ = step(field, x0, 0.8, 0.3, "euler")
    assert torch.allclose(x1, x0 - 0.5 * field(x0, torch.full((2,), 0.8, dtype=torch.float64)))
    with pytest.raises(ValueError, match="integrate"):
        step(field, x0, 0.8, 0.3, "ab2")


# ---------------------------------------------------------------------------------------------
# grids


@pytest.mark.parametrize("ends", [(1.0, 0.0), (0.0, 1.0), (2.0, -1.0)])
def test_uniform_grid(ends, dtype):
    g = uniform_grid(*ends, 8, dtype=dtype)
    assert g.shape == (9,) and g.dtype == dtype
    assert float(g[0]) == ends[0] and float(g[-1]) == ends[1]
    d = g.diff().double()
    assert torch.allclose(d, torch.full_like(d, (ends[1] - ends[0]) / 8), atol=1e-6)


@pytest.mark.parametrize("ends", [(1.0, 0.0), (0.0, 1.0), (1.0, 0.002)])
def test_power_grid(ends):
    g = power_grid(*ends, 10, rho=7.0)
    assert g.shape == (11,) and float(g[0]) == ends[0] and float(g[-1]) == ends[1]
    steps = g.diff().abs()
    assert bool((steps[1:] < steps[:-1]).all())  # denser towards t_end
    assert torch.allclose(power_grid(*ends, 10, rho=1.0), uniform_grid(*ends, 10))
    # EDM's rho-schedule when t_end = 0: (t_max^{1/rho} (1 - i/N))^rho
    edm = (80.0 ** (1 / 7) * (1 - torch.arange(11, dtype=torch.float64) / 10)) ** 7
    assert torch.allclose(power_grid(80.0, 0.0, 10, rho=7.0), edm)


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=8), st.integers(1, 6), st.booleans())
def test_subdivide_grid(w, n, decreasing):
    grid = _grid_from(w, 0.5, decreasing)
    fine = subdivide_grid(grid, n)
    assert fine.shape == ((grid.numel() - 1) * n + 1,)
    assert torch.equal(fine[::n], grid)
    for k in range(grid.numel() - 1):
        seg = fine[k * n:(k + 1) * n + 1]
        assert torch.allclose(seg, uniform_grid(float(grid[k]), float(grid[k + 1]), n), atol=1e-12)


def test_teacher_substeps_equal_fine_grid():
    """Teacher integrating each student interval with n sub-steps == solving on subdivide_grid
    (for one-step methods; AB-2 restarts with Euler in each interval)."""
    field, x0, _ = forced_problem()
    student = power_grid(1.0, 0.0, 4, rho=2.0)
    x = x0
    for k in range(4):
        x = integrate(field, x, uniform_grid(float(student[k]), float(student[k + 1]), 5), "heun").x
    assert torch.allclose(x, integrate(field, x0, subdivide_grid(student, 5), "heun").x, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# DDIM


def cosine_alpha_bar(t):
    return torch.cos(0.5 * math.pi * t / 1.008 + 0.008) ** 2 / math.cos(0.008) ** 2


@pytest.mark.parametrize("n", [1, 3, 10])
def test_ddim_exact_for_point_data(n, dtype, device):
    """Data = a single point x0: the exact eps is (x_t - sqrt(ab) x0) / sqrt(1 - ab); DDIM then
    keeps eps_hat equal to the initial noise and lands on x0."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x0 = torch.randn(5, 3, generator=gen).to(dtype=dtype, device=device)
    eps0 = torch.randn(5, 3, generator=gen).to(dtype=dtype, device=device)
    calls = []

    def eps_model(x, t):
        calls.append(float(t[0]))
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    grid = uniform_grid(1.0, 0.0, n, dtype=dtype, device=device)
    ab_T = cosine_alpha_bar(grid[:1])
    x_T = ab_T.sqrt() * x0 + (1 - ab_T).sqrt() * eps0
    res = ddim_sample(eps_model, x_T, cosine_alpha_bar, grid, return_trajectory=True)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert res.nfe == n and len(calls) == n and 0.0 not in calls
    assert torch.allclose(res.x, x0, atol=tol, rtol=0)
    ab = cosine_alpha_bar(grid)[:, None, None]
    assert torch.allclose(res.trajectory, ab.sqrt() * x0 + (1 - ab).sqrt() * eps0, atol=tol, rtol=0)


def test_ddim_eta_one_point_data_still_exact():
    x0 = torch.tensor([[1.5, -0.5]], dtype=torch.float64).expand(4, 2)

    def eps_model(x, t):
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    gen = torch.Generator().manual_seed(1)
    res = ddim_sample(eps_model, torch.randn(4, 2, dtype=torch.float64), cosine_alpha_bar,
                      uniform_grid(1.0, 0.0, 8), eta=1.0, generator=gen)
    assert torch.allclose(res.x, x0, atol=1e-12)


def test_ddim_clip_x0():
    """clip_x0 clamps the data prediction and recomputes eps from it: a no-op for data inside the range,
    the hand-computed two-step update for a model whose data prediction leaves it."""
    x0 = torch.tensor([[0.5, -0.9]], dtype=torch.float64).expand(3, 2)

    def exact(x, t):
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    x_T = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grid = uniform_grid(1.0, 0.0, 4, dtype=torch.float64)
    plain = ddim_sample(exact, x_T, cosine_alpha_bar, grid).x
    clipped = ddim_sample(exact, x_T, cosine_alpha_bar, grid, clip_x0=1.0).x
    assert torch.allclose(clipped, plain, atol=1e-12) and torch.allclose(clipped, x0, atol=1e-12)

    far = torch.tensor([[3.0, -0.2]], dtype=torch.float64)  # the model's x0 leaves [-1, 1] in coordinate 0

    def biased(x, t):
        ab = cosine_alpha_bar(t)[:, None]
        return (x - ab.sqrt() * far) / (1 - ab).sqrt()

    g = [1.0, 0.5, 0.0]
    res = ddim_sample(biased, x_T, cosine_alpha_bar, g, clip_x0=1.0)
    ab1, abh = cosine_alpha_bar(torch.tensor([1.0, 0.5], dtype=torch.float64))
    want0 = torch.tensor([[1.0, -0.2]], dtype=torch.float64)
    eps1 = (x_T - ab1.sqrt() * want0) / (1 - ab1).sqrt()
    x_half = abh.sqrt() * want0 + (1 - abh).sqrt() * eps1
    eps_h = (x_half - abh.sqrt() * want0) / (1 - abh).sqrt()  # second prediction, clipped again
    want = 1.0 * want0 + 0.0 * eps_h
    assert torch.allclose(res.x, want.expand(3, 2), atol=1e-12)
    assert not torch.allclose(ddim_sample(biased, x_T, cosine_alpha_bar, g).x, res.x, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_inputs():
    f = lambda x, t: -x  # noqa: E731
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="method.*euler.*heun.*midpoint.*rk4.*ab2"):
        integrate(f, x, [1.0, 0.0], method="rk45")
    for bad in ([1.0], [1.0, 0.5, 0.7], [1.0, 1.0], [1.0, float("nan")], [0.0, float("inf")],
                torch.ones(2, 2), []):
        with pytest.raises(ValueError, match="time_grid"):
            integrate(f, x, bad)
    with pytest.raises(ValueError, match="x"):
        integrate(f, torch.tensor([[1.0, float("nan")]]), [1.0, 0.0])
    with pytest.raises(ValueError, match="x"):
        integrate(f, torch.tensor(1.0), [1.0, 0.0])
    with pytest.raises(ValueError, match="field"):
        integrate(lambda x, t: x[:, :1], x, [1.0, 0.0])
    with pytest.raises(ValueError, match="n_steps"):
        uniform_grid(1.0, 0.0, 0)
    with pytest.raises(ValueError, match="t_start"):
        power_grid(1.0, 1.0, 4)
    with pytest.raises(ValueError, match="rho"):
        power_grid(1.0, 0.0, 4, rho=0.0)
    with pytest.raises(ValueError, match="n must"):
        subdivide_grid([1.0, 0.0], 0)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(f, x, cosine_alpha_bar, [1.0, 0.0], eta=2.0)
    with pytest.raises(ValueError, match="alpha_bar_fn"):
        ddim_sample(f, x, lambda t: 1.5 + 0 * t, [1.0, 0.0])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="clip_x0"):
            ddim_sample(f, x, cosine_alpha_bar, [1.0, 0.0], clip_x0=bad)


# ---------------------------------------------------------------------------------------------
# make_time_grid: the user's choice of sampling grid


from kacnum.flows.solvers import TIME_GRIDS, make_time_grid, parse_time_grid  # noqa: E402


def _kac_paths():
    from kacnum.flows.paths import KacPath

    return [KacPath(), KacPath(a=25.0, c=2.0), KacPath(g="t2"), KacPath(a=4.0, T=2.0, f="exp")]


@pytest.mark.parametrize("kind", ["uniform", "power:1", "power:2", "power:3", "power:0.5", "kac"])
@pytest.mark.parametrize("n", [1, 2, 7, 100])
@pytest.mark.parametrize("t_min", [0.0, 0.01])
def test_make_time_grid_endpoints_and_monotone(kind, n, t_min):
    for path in _kac_paths():
        T = path.T
        g = make_time_grid(kind, n, T, t_min, path=path)
        assert g.shape == (n + 1,) and g.dtype == torch.float64
        assert float(g[0]) == T and float(g[-1]) == t_min  # exact end points
        assert bool((g.diff() < 0).all())  # strictly decreasing


def test_make_time_grid_formulas():
    n, T, t_min = 8, 1.0, 0.0
    i = torch.arange(n + 1, dtype=torch.float64)
    assert torch.allclose(make_time_grid("uniform", n, T, t_min), 1 - i / n, atol=1e-15)
    for rho in (2.0, 3.0):
        want = t_min + (T - t_min) * (1 - i / n) ** rho
        assert torch.allclose(make_time_grid(f"power:{rho:g}", n, T, t_min), want, atol=1e-15)
        steps = make_time_grid(f"power:{rho:g}", n, T, t_min).diff().abs()
        assert bool((steps[1:] < steps[:-1]).all())  # small steps near the data end t_min
    assert torch.allclose(make_time_grid("power:1", n, T, t_min), make_time_grid("uniform", n, T, t_min))
    assert parse_time_grid(" Power:2 ") == ("power", 2.0) and parse_time_grid("kac") == ("kac", None)
    assert "kac" in TIME_GRIDS


@pytest.mark.parametrize("n", [4, 10, 64])
def test_kac_grid_atom_masses_equally_spaced(n):
    for path in _kac_paths():
        grid = make_time_grid("kac", n, path.T, 0.0, path=path)
        m = torch.exp(-path.a * path.g(grid))
        d = m.diff()
        assert bool((d > 0).all())
        assert torch.allclose(d, torch.full_like(d, (1.0 - math.exp(-path.a * path.g(path.T))) / n),
                              rtol=1e-9, atol=1e-12)
    # g(t) = t with a = 9 has the closed form t_i = -log(m_i) / a
    from kacnum.flows.paths import KacPath

    g = make_time_grid("kac", n, 1.0, 0.0, path=KacPath(a=9.0))
    m = math.exp(-9.0) + torch.arange(n + 1, dtype=torch.float64) / n * (1 - math.exp(-9.0))
    assert torch.allclose(g, -torch.log(m) / 9.0, atol=1e-13)


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", ["ab2", "heun"])
@pytest.mark.parametrize("kind", ["power:2", "power:3"])
def test_order_unchanged_on_made_grids(method, problem, kind):
    slope, errs = fitted_order(method, problem, lambda n: make_time_grid(kind, n, 1.0, 0.0), STEPS[method])
    assert abs(slope - ORDER[method]) < 0.25, (slope, errs)


@pytest.mark.parametrize("method", ["ab2", "heun", "euler"])
def test_order_on_kac_grid(method):
    """The Kac grid's steps vary smoothly in t on [0, T'] for a small a (a T = 1): same orders."""
    from kacnum.flows.paths import KacPath

    path = KacPath(a=1.0, c=1.0)
    slope, errs = fitted_order(method, "forced", lambda n: make_time_grid("kac", n, 1.0, 0.0, path=path),
                               STEPS[method])
    assert abs(slope - ORDER[method]) < 0.25, (slope, errs)


def test_make_time_grid_refuses_bad_input():
    from kacnum.flows.paths import GaussianPath, KacPath, VPPath

    for bad in ("linear", "power", "power:", "power:0", "power:-1", "power:nan", "power:inf", "", 3, None):
        with pytest.raises(ValueError, match="time_grid"):
            make_time_grid(bad, 10, 1.0, 0.0)
    for path in (None, GaussianPath(), VPPath()):
        with pytest.raises(ValueError, match="time_grid 'kac'.*KacPath"):
            make_time_grid("kac", 10, 1.0, 0.0, path=path)
    with pytest.raises(ValueError, match="time_grid.*T"):
        make_time_grid("kac", 10, 2.0, 0.0, path=KacPath())
    with pytest.raises(ValueError, match="t_min < T"):
        make_time_grid("uniform", 10, 1.0, 1.5)
    with pytest.raises(ValueError, match="t_min < T"):
        make_time_grid("uniform", 10, 1.0, -0.1)
    for n in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_steps"):
            make_time_grid("uniform", n, 1.0, 0.0)
