"""Unit tests of kacnum.theory.stability: rates, interpolation, the endpoint-to-path bound (docs/mathematics.md §8, Theorem 8)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from kacnum.images.models.mlp import MLP
from kacnum.flows.paths import GaussianPath, KacPath, VPPath
from kacnum.students.distill import DistillConfig
from kacnum.flows.solvers import integrate, uniform_grid
from kacnum.theory.stability import (
    ExactField,
    ExactTeacherDistiller,
    ModelField,
    bootstrap_slope,
    coupled_sq_errors,
    euler_path_bound,
    fit_loglog_slope,
    fit_velocity_mlp,
    interval_bound,
    interval_bound_check,
    loglog_correlation,
    mode_mismatch,
    path_error_summary,
    piecewise_linear,
    rate_constant,
    slope_shift_bound,
    student_states,
    teacher_trajectory,
    w2_along_path,
)

F64 = torch.float64


# ------------------------------------------------------------------------------------------- rates
def test_slope_shift_bound_covers_every_reference_error():
    """Errors off by at most delta each (any signs) move the fitted slope by at most the bound; the
    one-sided worst case comes close to it, and no bound exists once delta reaches an error."""
    m = [16, 32, 64, 128, 256]
    err = [2.0 / k for k in m]
    delta = 0.13 * min(err)
    bound = slope_shift_bound(m, err, delta)
    slope = fit_loglog_slope(m, err)[0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        moved = [e + delta * u for e, u in zip(err, rng.uniform(-1.0, 1.0, len(m)))]
        assert abs(fit_loglog_slope(m, moved)[0] - slope) <= bound + 1e-12
    x = np.log(m) - np.log(m).mean()
    worst = [e - delta * math.copysign(1.0, xk) for e, xk in zip(err, x)]  # shrink where w > 0, grow elsewhere
    assert 0.8 * bound <= abs(fit_loglog_slope(m, worst)[0] - slope) <= bound
    assert slope_shift_bound(m, err, 0.0) == 0.0
    assert slope_shift_bound(m, err, min(err)) == math.inf
    with pytest.raises(ValueError, match="reference_err"):
        slope_shift_bound(m, err, -1.0)
    with pytest.raises(ValueError, match="distinct"):
        slope_shift_bound([4, 4], [1.0, 0.5], 0.1)




@given(c=st.floats(1e-4, 1e4), order=st.floats(0.25, 3.0),
       ms=st.lists(st.integers(1, 4096), min_size=2, max_size=8, unique=True))
def test_slope_of_power_law_is_exact(c, order, ms):
    slope, intercept = fit_loglog_slope(ms, [c / m ** order for m in ms])
    assert abs(slope + order) < 1e-9
    assert abs(intercept - math.log(c)) < 1e-7 * max(1.0, abs(math.log(c)))


def test_slope_of_c_over_m_is_minus_one_and_constant():
    ms = [1, 2, 4, 8, 16, 32, 64]
    err = [0.37 / m for m in ms]
    assert abs(fit_loglog_slope(ms, err)[0] + 1.0) < 1e-9
    assert rate_constant(ms, err) == pytest.approx(0.37, rel=1e-12)
    assert rate_constant(ms, [0.37 / m ** 0.5 for m in ms], order=0.5) == pytest.approx(0.37, rel=1e-12)


def test_slope_rejects_bad_input():
    with pytest.raises(ValueError, match="m and err"):
        fit_loglog_slope([1], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        fit_loglog_slope([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="distinct"):
        fit_loglog_slope([2, 2], [1.0, 0.5])


def _power_law_sq(ms, c, order, noise, B=400, Q=5, seed=0):
    """Per-sample squared errors whose RMS and median decay like c / M^order (times sample noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(B, generator=g, dtype=F64) + 0.5  # per-latent scale, shared by every M
    out = []
    for m in ms:
        z = 1.0 + noise * torch.randn(B, generator=g, dtype=F64)
        e = c / m ** order * base * z
        prof = torch.linspace(0.2, 1.0, Q, dtype=F64)[:, None]  # error grows along the path
        out.append((prof * e[None]) ** 2)
    return out


def test_bootstrap_interval_contains_minus_one_for_exact_rate():
    ms = [1, 2, 4, 8, 16, 32, 64]
    sq = _power_law_sq(ms, 0.3, 1.0, noise=0.0)
    for stat in ("rms", "median"):
        r = bootstrap_slope(ms, sq, n_boot=200, seed=1, stat=stat)
        assert abs(r["slope"] + 1.0) < 1e-9
        assert r["ci"][0] - 1e-9 <= -1.0 <= r["ci"][1] + 1e-9
        assert r["err"][0] == pytest.approx(r["err"][-1] * 64, rel=1e-9)


def test_bootstrap_interval_width_and_power():
    ms = [4, 8, 16, 32, 64]
    r = bootstrap_slope(ms, _power_law_sq(ms, 0.3, 1.0, noise=0.3), n_boot=400, seed=2)
    assert r["ci"][0] < -1.0 < r["ci"][1]
    assert 0.0 < r["ci"][1] - r["ci"][0] < 0.2
    half = bootstrap_slope(ms, _power_law_sq(ms, 0.3, 0.5, noise=0.3), n_boot=400, seed=2)
    assert half["ci"][1] < -0.4 and half["ci"][0] > -0.6
    assert not (half["ci"][0] <= -1.0 <= half["ci"][1])


def test_bootstrap_rows_mask_and_rms_definition():
    ms = [1, 2]
    sq = [torch.tensor([[4.0, 0.0], [1.0, 1.0]], dtype=F64), torch.tensor([[1.0, 1.0], [0.25, 0.25]], dtype=F64)]
    r = bootstrap_slope(ms, sq, n_boot=10)
    assert r["err"] == pytest.approx([math.sqrt(2.0), 1.0])  # max over tau of sqrt(mean over samples)
    r2 = bootstrap_slope(ms, sq, n_boot=10, rows=torch.tensor([False, True]))
    assert r2["err"] == pytest.approx([1.0, 0.5])
    assert r2["slope"] == pytest.approx(-1.0)
    rm = bootstrap_slope(ms, sq, n_boot=10, stat="median")  # per-sample sup: (2, 1) and (1, 1)
    assert rm["err"] == pytest.approx([1.5, 1.0])
    with pytest.raises(ValueError, match="stat"):
        bootstrap_slope(ms, sq, stat="mean")
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_slope(ms, sq, n_boot=0)


def test_loglog_correlation():
    x = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    c = loglog_correlation(x, 3.0 * x ** 2)
    assert c["pearson_log"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0) and c["n"] == 5
    c = loglog_correlation(x, 1.0 / x)
    assert c["pearson_log"] == pytest.approx(-1.0) and c["spearman"] == pytest.approx(-1.0)
    assert math.isnan(loglog_correlation([1.0, 2.0], [1.0, 2.0])["pearson_log"])
    c = loglog_correlation([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert c["spearman"] == pytest.approx(0.8)


# ------------------------------------------------------------------------------------------- paths


def test_piecewise_linear_by_hand():
    times = torch.tensor([1.0, 0.5, 0.0], dtype=F64)  # decreasing, as a sampler's grid
    states = torch.tensor([[[0.0, 0.0]], [[1.0, 2.0]], [[1.0, -2.0]]], dtype=F64)  # (3, B=1, 2)
    q = torch.tensor([1.0, 0.75, 0.5, 0.125, 0.0], dtype=F64)
    got = piecewise_linear(times, states, q)[:, 0]
    want = torch.tensor([[0.0, 0.0], [0.5, 1.0], [1.0, 2.0], [1.0, -1.0], [1.0, -2.0]], dtype=F64)
    assert torch.allclose(got, want, atol=1e-15)
    with pytest.raises(ValueError, match="query times"):
        piecewise_linear(times, states, torch.tensor([1.5], dtype=F64))
    with pytest.raises(ValueError, match="states"):
        piecewise_linear(times, states[:2], q)


@given(k=st.integers(1, 9), a=st.floats(-3, 3), b=st.floats(-3, 3), inc=st.booleans(),
       u=st.lists(st.floats(0, 1), min_size=1, max_size=6))
def test_piecewise_linear_exact_on_lines(k, a, b, inc, u):
    g = torch.Generator().manual_seed(k)
    times = torch.sort(torch.rand(k - 1, generator=g, dtype=F64) * 0.98 + 0.01).values
    times = torch.cat([torch.zeros(1, dtype=F64), times, torch.ones(1, dtype=F64)])
    if not inc:
        times = times.flip(0)
    states = (a + b * times)[:, None, None].expand(-1, 3, 2)
    q = torch.tensor(u, dtype=F64)
    got = piecewise_linear(times, states, q)
    assert torch.allclose(got, (a + b * q)[:, None, None].expand(-1, 3, 2), atol=1e-12)


def _quadratic_field(gvec):
    # dx/dt = g t: X(t) = X(T) + g (t² - T²)/2, acceleration exactly g (RK4 is exact here)
    return lambda x, t: gvec[None, :] * t[:, None]


def test_teacher_trajectory_acceleration_and_speed_exact():
    gvec = torch.tensor([3.0, -4.0], dtype=F64)  # |g| = 5
    x = torch.randn(7, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    grid = uniform_grid(1.0, 0.0, 40)
    tr = teacher_trajectory(_quadratic_field(gvec), x, grid)
    exact = x[None] + gvec * (grid[:, None, None] ** 2 - 1.0) / 2.0
    assert torch.allclose(tr.states, exact, atol=1e-13)
    assert torch.allclose(tr.accel[1:-1], torch.full((39,), 5.0, dtype=F64), rtol=1e-8)
    assert tr.max_speed() == pytest.approx(5.0 * (1.0 - 1.0 / 80), rel=1e-9)  # |X(1-h) - X(1)|/h = |g|(1 - h/2)
    assert tr.max_acceleration(1.0, 0.5) == pytest.approx(5.0, rel=1e-8)
    assert tr.nfe == 160
    with pytest.raises(ValueError, match="uniform"):
        teacher_trajectory(_quadratic_field(gvec), x, torch.tensor([1.0, 0.9, 0.5], dtype=F64))


def test_coupled_errors_and_summary():
    X = torch.zeros(3, 4, 2, dtype=F64)
    Y = X.clone()
    Y[1, :, 0] = 1.0
    Y[2, :2, 1] = 2.0
    sq = coupled_sq_errors(Y, X)
    assert torch.equal(sq, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [4, 4, 0, 0]], dtype=F64))
    taus = torch.tensor([1.0, 0.5, 0.0], dtype=F64)
    pe = path_error_summary(sq, taus, t_cut=0.4)
    assert pe.sup == pytest.approx(math.sqrt(2.0)) and pe.argmax_tau == 0.0
    assert pe.endpoint == pytest.approx(math.sqrt(2.0)) and pe.sup_restricted == pytest.approx(1.0)
    w2 = w2_along_path(Y, X)
    assert w2[0] == 0.0 and w2[1] == pytest.approx(1.0, rel=1e-9)  # a translation: W2 = its length
    assert w2[2] <= math.sqrt(2.0) + 1e-12  # W2 <= coupled RMS


def test_mode_mismatch():
    sup = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=F64)
    teach = torch.tensor([[0.1, 0.0], [0.9, 0.0], [0.2, 0.1], [1.1, 0.0]], dtype=F64)
    stud = torch.tensor([[0.1, 0.0], [0.4, 0.0], [0.7, 0.1], [1.0, 0.0]], dtype=F64)
    assert mode_mismatch(stud, teach, sup) == pytest.approx(0.5)
    assert mode_mismatch(teach, teach, sup) == 0.0


# ------------------------------------------------------------------------------------------- the bound


def _parabola_segment(A, delta, S, B=5, seed=0):
    """Teacher with constant acceleration A perpendicular to its chord: deviation A Δ² s(1-s)/2."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, 2, generator=g, dtype=F64)
    v = torch.randn(B, 2, generator=g, dtype=F64)
    n = torch.stack([-v[:, 1], v[:, 0]], dim=1)
    n = n / n.norm(dim=1, keepdim=True)
    s = (torch.arange(S + 1, dtype=F64) / S)[:, None, None]
    return x0 + s * delta * v + (A * delta ** 2 * s * (1 - s) / 2.0) * n, n


@pytest.mark.parametrize("S", [2, 8, 16])
def test_interval_bound_tight_and_violated(S):
    A, delta = 3.0, 0.4
    seg, n = _parabola_segment(A, delta, S)
    ib = interval_bound(seg, seg[-1].clone(), delta, A)  # exact endpoint: error = chord deviation
    assert ib.endpoint_rmse < 1e-15
    assert ib.sup_rms == pytest.approx(A * delta ** 2 / 8.0, rel=1e-12)  # attained at s = 1/2
    assert ib.ratio_accel == pytest.approx(1.0, rel=1e-12)  # tight
    assert ib.ratio_chord == pytest.approx(1.0, rel=1e-12)
    low = interval_bound(seg, seg[-1].clone(), delta, A / 2.0)  # an acceleration bound that is wrong
    assert low.ratio_accel == pytest.approx(2.0, rel=1e-12) and low.ratio_accel > 1.0
    # a wrong endpoint only adds s |e|: the bound still holds, now with slack
    e = 0.05 * n
    off = interval_bound(seg, seg[-1] + e, delta, A)
    assert off.endpoint_rmse == pytest.approx(0.05, rel=1e-12)
    assert off.ratio_accel <= 1.0 + 1e-12 and off.ratio_chord <= 1.0 + 1e-12
    # W2 of a common translation equals the shift, so the W2 form is tight too
    w = interval_bound(seg, seg[-1].clone(), delta, A, w2_samples=3)
    assert w.sup_w2 == pytest.approx(A * delta ** 2 / 8.0, rel=1e-6)


def test_interval_bound_check_euler_on_quadratic_flow():
    # teacher dX/dt = g t, one Euler step per interval: error g h²/2 at the end, chord deviation |g| h²/8,
    # and |Y_s - X_s| = |g| s² h²/2, so sup = endpoint error and the A-ratio is (1/2) / (1/2 + 1/8) = 0.8
    gvec = torch.tensor([0.0, 2.0], dtype=F64)
    field = _quadratic_field(gvec)
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    tr = teacher_trajectory(field, x, uniform_grid(1.0, 0.0, 64))
    grid = uniform_grid(1.0, 0.0, 4)

    def euler(xs, t, t_next):
        return xs + (t_next - t) * field(xs, torch.full((xs.shape[0],), t, dtype=F64))

    checks = interval_bound_check(euler, tr, grid, sub_points=8)
    assert len(checks) == 4
    for c in checks:
        assert c.endpoint_rmse == pytest.approx(2.0 * 0.25 ** 2 / 2.0, rel=1e-9)
        assert c.accel == pytest.approx(2.0, rel=1e-8)
        assert c.ratio_rms_accel == pytest.approx(0.8, rel=1e-8)
        assert c.chord_rms == pytest.approx(2.0 * 0.25 ** 2 / 8.0, rel=1e-9)


def test_interval_bound_rejects_bad_input():
    seg, _ = _parabola_segment(1.0, 0.5, 4)
    with pytest.raises(ValueError, match="delta"):
        interval_bound(seg, seg[-1], 0.0, 1.0)
    with pytest.raises(ValueError, match="accel"):
        interval_bound(seg, seg[-1], 0.5, -1.0)
    with pytest.raises(ValueError, match="teacher_seg"):
        interval_bound(seg[:1], seg[-1], 0.5, 1.0)


def test_euler_path_bound():
    assert euler_path_bound(0.0, 2.0, 0.0, 1.0, 4) == pytest.approx(0.25)  # (A h/2) Δ at L = 0
    L = 1.5
    assert euler_path_bound(0.1, 2.0, L, 1.0, 4) == pytest.approx((0.1 + 0.25) * math.expm1(L) / L)
    vals = [euler_path_bound(0.0, 1.0, 2.0, 1.0, m) for m in (1, 2, 4, 8)]
    assert all(abs(a / b - 2.0) < 1e-12 for a, b in zip(vals, vals[1:]))  # O(1/M) at eps = 0
    with pytest.raises(ValueError, match="m must"):
        euler_path_bound(0.0, 1.0, 1.0, 1.0, 0)


# ------------------------------------------------------------------------------------------- exact teacher


def _support(n=6, d=2, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64) * 2 - 1


def test_exact_field_matches_path_and_validates():
    S = _support()
    for path in (KacPath(), GaussianPath(), VPPath()):
        x = path.sample_latent((5, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
        t = torch.full((5,), 0.5, dtype=F64)
        assert torch.equal(ExactField(path, S)(x, t), path.exact_velocity(x, t, S))
    vp = VPPath()
    x = torch.randn(4, 2, dtype=F64)
    t = torch.full((4,), 0.3, dtype=F64)
    assert torch.equal(ExactField(vp, S, quantity="epsilon")(x, t), vp.exact_epsilon(x, t, S))
    with pytest.raises(ValueError, match="quantity"):
        ExactField(KacPath(), S, quantity="epsilon")
    with pytest.raises(ValueError, match="y must be None"):
        ExactField(KacPath(), S)(x, t, torch.zeros(4, dtype=torch.long))


def test_euler_students_on_smooth_stretch_converge_at_rate_one():
    # Gaussian path, t in [0.3, 1]: the exact field is smooth there, Euler's path error is O(1/M)
    S = _support(8)
    path = GaussianPath()
    f = ExactField(path, S)
    x = path.sample_latent((300, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    tr = teacher_trajectory(f, x, uniform_grid(1.0, 0.3, 256))
    taus = uniform_grid(1.0, 0.3, 64)
    ms = [8, 16, 32, 64]
    sq = []
    for m in ms:
        g = uniform_grid(1.0, 0.3, m)
        sq.append(coupled_sq_errors(piecewise_linear(g, student_states(f, x, g), taus), tr.at(taus)))
    r = bootstrap_slope(ms, sq, n_boot=200)
    assert -1.15 < r["slope"] < -0.85
    assert r["ci"][0] < r["slope"] < r["ci"][1]


def test_fit_velocity_mlp_reduces_error():
    S = _support(4)
    path = GaussianPath()
    torch.manual_seed(0)
    model = MLP(dim=2, hidden=32, depth=2)
    f = ExactField(path, S)
    g = torch.Generator().manual_seed(5)
    t = 0.05 + 0.95 * torch.rand(512, generator=g, dtype=F64)
    x = path.sample(S[torch.randint(4, (512,), generator=g)], t, generator=g).x_t
    u = f(x, t)
    with torch.no_grad():
        before = float((model(x.float(), t.float()).double() - u).pow(2).mean())  # zero-initialised output
    info = fit_velocity_mlp(model, path, S, f, n_points=1024, steps=150, batch_size=128, t_min=0.05)
    with torch.no_grad():
        after = float((model(x.float(), t.float()).double() - u).pow(2).mean())
    assert after < 0.5 * before
    assert info["final_mse"] < before


def test_exact_teacher_distiller_uses_the_exact_field():
    S = _support(5)
    path = KacPath()
    exact = ExactField(path, S)
    torch.manual_seed(0)
    mlp = MLP(dim=2, hidden=16, depth=1)
    cfg = DistillConfig(stages=(8, 2, 1), steps_per_stage=3, batch_size=16, teacher_method="rk4", p_uncond=0.0,
                        t_end=1e-3, source="rollout", rollout_pool=16, rollout_refresh=10, lr=1e-3)
    d = ExactTeacherDistiller(mlp, exact, path, S.float(), config=cfg)
    teacher = d.stage_teacher(1)
    x = path.sample_latent((4, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    k = torch.zeros(4, dtype=torch.long)
    got, nfe = teacher(x, k, None)
    want = integrate(lambda xx, tt: exact(xx, tt), x, uniform_grid(1.0, float(d.grid(1)[1]), 4, dtype=torch.float32),
                     "rk4").x
    assert nfe == 16 and torch.allclose(got, want, atol=1e-5)
    d.run(progress=False)
    assert len(d.students) == 2
    step = d.student_step_fn(2)
    xs = x.double()
    y = step(xs, 1.0, 1e-3)
    v = d.student(2)(x, torch.ones(4))
    assert torch.allclose(y, (x + (1e-3 - 1.0) * v).double(), atol=1e-6)
    field = d.student_field(1)
    assert isinstance(field, ModelField) and field(xs, torch.ones(4, dtype=F64)).dtype == F64
    with pytest.raises(ValueError, match="unlabelled"):
        ExactTeacherDistiller(mlp, exact, path, S.float(), labels=torch.zeros(5, dtype=torch.long), config=cfg,
                              null_label=0)
