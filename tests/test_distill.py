"""Endpoint distillation (docs/mathematics.md §7) and the atomic checkpoint helpers.

Stand-ins defined here (closed-form, so every expected value is computed independently of
kacnum.students.distill): a linear interpolation path, an affine time- and label-dependent velocity field
(whose Euler map can represent any linear endpoint map exactly), and a tiny MLP.
"""
import json
import math
import os
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kacnum.core.checkpoint import load_checkpoint, load_json, save_checkpoint, save_json
from kacnum.students.distill import (
    EMA,
    DistillConfig,
    Distiller,
    FlowTeacher,
    StudentTeacher,
    endpoint_loss,
    interval_flow,
    stage_substeps,
    student_step,
    validate_stages,
)
from kacnum.flows.guidance import GuidedField
from kacnum.flows.solvers import METHODS, integrate, uniform_grid

NUM_CLASSES = 3
NULL = NUM_CLASSES
CALLS = {"rows": 0}  # network rows evaluated by AffineField (module global: survives deepcopy)


class LinearPath:
    """x_t = (1 - t) x0 + t eps, eps ~ N(0, I), T = 1; records its last call."""

    T = 1.0

    def __init__(self):
        self.last = None

    def sample(self, x0, t, generator=None):
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
        x_t = (1 - tt) * x0 + tt * eps
        self.last = (x0, t, x_t)
        return SimpleNamespace(x_t=x_t, t=t, x0=x0, noise=eps)

    def sample_latent(self, shape, generator=None, dtype=None, device=None):
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)


class AffineField(nn.Module):
    """u(x, t, y) = x (W0 + t W1)^T + b0 + t b1 + e[y], e[NULL] = 0 initially; d = 2."""

    def __init__(self, w0, w1=None, b0=None, b1=None, label_bias=None, dtype=torch.float64):
        super().__init__()
        z = torch.zeros(2, 2, dtype=dtype)
        self.w0 = nn.Parameter(torch.as_tensor(w0, dtype=dtype).clone())
        self.w1 = nn.Parameter(z.clone() if w1 is None else torch.as_tensor(w1, dtype=dtype).clone())
        self.b0 = nn.Parameter(torch.zeros(2, dtype=dtype) if b0 is None else torch.as_tensor(b0, dtype=dtype).clone())
        self.b1 = nn.Parameter(torch.zeros(2, dtype=dtype) if b1 is None else torch.as_tensor(b1, dtype=dtype).clone())
        lb = torch.zeros(NUM_CLASSES + 1, 2, dtype=dtype) if label_bias is None else torch.as_tensor(label_bias, dtype=dtype)
        self.label_bias = nn.Parameter(lb.clone())
        self.null_label = NULL

    def forward(self, x, t, y=None):
        CALLS["rows"] += x.shape[0]
        t = t.reshape(-1, 1)
        w = self.w0 + t[:, :, None] * self.w1  # (B, 2, 2)
        out = torch.einsum("bij,bj->bi", w, x) + self.b0 + t * self.b1
        if y is not None:
            out = out + self.label_bias[y]
        return out


class TinyNet(nn.Module):
    """Small conditional MLP (float64) for the resume test."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(NUM_CLASSES + 1, 8).double()
        self.inp = nn.Linear(3, 8).double()
        self.out = nn.Linear(8, 2).double()
        self.null_label = NULL

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((x.shape[0],), NULL, dtype=torch.long, device=x.device)
        h = torch.tanh(self.inp(torch.cat([x, t[:, None]], 1)) + self.emb(y))
        return self.out(h)


def _rotation(omega):
    return [[0.0, -omega], [omega, 0.0]]


def _data(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    return x, y


# ------------------------------------------------------------------------------------ schedules


def test_stage_substeps_of_distillkac_schedule():
    assert stage_substeps((100, 20, 4, 2, 1)) == (5, 5, 2, 2)
    assert stage_substeps([100, 1]) == (100,)
    assert validate_stages([8, 4]) == (8, 4)


@pytest.mark.parametrize("stages, words", [
    ((100, 30), "divide"),
    ((100, 20, 3), "divide"),
    ((10, 20), "decreasing"),
    ((10, 10), "decreasing"),
    ((10,), "at least 2"),
    ((4, 0), "integers >= 1"),
    ((4.0, 2), "integers >= 1"),
    (5, "sequence"),
])
def test_bad_stages_raise(stages, words):
    with pytest.raises(ValueError, match="stages") as err:
        validate_stages(stages)
    assert words in str(err.value)
    with pytest.raises(ValueError):
        DistillConfig(stages=stages)


@pytest.mark.parametrize("kwargs, name", [
    ({"source": "data"}, "source"),
    ({"teacher_method": "rk45"}, "teacher_method"),
    ({"parameterization": "x0"}, "parameterization"),
    ({"steps_per_stage": (10, 10, 10)}, "steps_per_stage"),
    ({"steps_per_stage": 0}, "steps_per_stage"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"p_uncond": 1.5}, "p_uncond"),
    ({"lr": 0.0}, "lr"),
    ({"checkpoint_every": -1}, "checkpoint_every"),
    ({"batch_size": 0}, "batch_size"),
    ({"target": "endpoint"}, "target"),
    ({"rollout_fraction": 1.5}, "rollout_fraction"),
    ({"source": "mixed"}, "source"),
])
def test_bad_config_raises(kwargs, name):
    with pytest.raises(ValueError, match=name):
        DistillConfig(stages=(8, 4, 2), **kwargs)


# ------------------------------------------------------------------------------------ interval flow


@pytest.mark.parametrize("method", METHODS)
def test_interval_flow_equals_per_row_integrate(method):
    """Per-row intervals through the time change = each row integrated on its own grid."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t_from = torch.tensor([1.0, 0.8, 0.3, 0.6, 0.05], dtype=torch.float64)
    t_to = torch.tensor([0.8, 0.6, 0.1, 0.9, 0.0], dtype=torch.float64)  # one row runs forward

    def field(x, t):
        return torch.sin(3 * x) * (1 + t[:, None]) - x * t[:, None] ** 2

    field.nfe_per_call = 2
    res = interval_flow(field, x, t_from, t_to, 4, method)
    for b in range(5):
        grid = uniform_grid(float(t_from[b]), float(t_to[b]), 4)
        ref = integrate(field, x[b:b + 1], grid, method).x
        torch.testing.assert_close(res.x[b:b + 1], ref, rtol=1e-12, atol=1e-12)
    per_step = {"euler": 1, "ab2": 1, "heun": 2, "midpoint": 2, "rk4": 4}[method]
    assert res.nfe == 4 * per_step and res.nfe_model == 2 * res.nfe


# ------------------------------------------------------------------------------------ the loss


def _distiller(teacher, stages=(8, 2), source="forward", labels=True, **kw):
    x, y = _data()
    cfg = DistillConfig(stages=stages, source=source, batch_size=kw.pop("batch_size", 64), **kw)
    return Distiller(teacher, LinearPath(), x, y if labels else None, cfg, null_label=NULL)


def test_loss_is_exactly_zero_for_the_students_own_map():
    """Teacher = the student's own one-step Euler map (N = 1): the loss is 0.0 exactly."""
    student = AffineField(_rotation(2.0), w1=[[0.3, 0.1], [0.0, -0.2]], b0=[0.5, -1.0])
    grid = uniform_grid(1.0, 0.0, 4, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, generator=g, dtype=torch.float64)
    k = torch.randint(4, (32,), generator=g)
    y = torch.randint(NUM_CLASSES + 1, (32,), generator=g)
    target, nfe = StudentTeacher(student, grid, 1)(x, k, y)
    out = endpoint_loss(student, x, grid[k], grid[k + 1], target, y)
    assert nfe == 1 and out["loss"].item() == 0.0 and out["per_sample"].abs().max().item() == 0.0


def test_loss_is_zero_for_a_constant_field_and_not_for_a_rotation():
    """A constant field's N-step AB-2 map is one Euler step: zero loss up to rounding; a rotation's
    is not (the same code must see the difference)."""
    const = AffineField([[0.0, 0.0], [0.0, 0.0]], b0=[0.7, -1.3])
    d = _distiller(const, stages=(8, 2))
    batch = d.make_batch(1)
    out = endpoint_loss(d.teacher, batch.x, batch.t, batch.t_next, batch.target, batch.y)
    assert out["loss"].item() < 1e-28
    assert batch.teacher_nfe == 4  # N = 4 sub-steps, unguided (scale 1)
    rot = AffineField(_rotation(2.0))
    d = _distiller(rot, stages=(8, 2))
    batch = d.make_batch(1)
    out = endpoint_loss(d.teacher, batch.x, batch.t, batch.t_next, batch.target, batch.y)
    # Euler vs the flow over Δ = 1/2 for ω = 2: error ≈ (ωΔ)²/2 |x| = |x|/2
    assert out["loss"].item() > 0.05


def test_student_learns_rotation_endpoints():
    """Teacher: rotation ω = 2 (exact flow exp(AΔ)); 2-step student from a (8 → 2) teacher.
    The student's endpoint error against the teacher map drops by > 100x (from 0.4) and its error
    against the exact flow falls close to the teacher's own."""
    omega = 2.0
    d = _distiller(AffineField(_rotation(omega)), stages=(8, 2), steps_per_stage=300, lr=2e-2,
                   ema_decay=0.0, p_uncond=0.0, batch_size=128)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(256, 2, generator=g, dtype=torch.float64)
    grid = d.grid(1)
    teacher = d.stage_teacher(1)

    def errors(model):
        err_t, err_exact, err_teacher_exact = 0.0, 0.0, 0.0
        for k in range(2):
            kk = torch.full((256,), k)
            t, tn = grid[kk], grid[kk + 1]
            pred = student_step(model, x, t, tn)
            with torch.no_grad():
                target, _ = teacher(x, kk, None)
            dt = float(grid[k + 1] - grid[k])
            c, s = math.cos(omega * dt), math.sin(omega * dt)
            exact = x @ torch.tensor([[c, -s], [s, c]], dtype=torch.float64).T
            err_t += (pred - target).pow(2).mean().item()
            err_exact += (pred - exact).pow(2).mean().item()
            err_teacher_exact += (target - exact).pow(2).mean().item()
        return err_t, err_exact, err_teacher_exact

    before, _, _ = errors(d.teacher)
    d.run(progress=False)
    after, after_exact, teacher_exact = errors(d.student(1))
    assert before > 0.1
    assert after < before / 100
    assert after_exact < 2 * teacher_exact + 2 * after and after_exact < before / 50
    hist = d.history[0]
    assert hist["substeps"] == 4 and hist["student_steps"] == 2 and hist["final_loss"] < before / 100


def test_endpoint_parameterization_learns_a_linear_map():
    d = _distiller(AffineField(_rotation(1.0)), stages=(4, 1), steps_per_stage=300, lr=2e-2,
                   ema_decay=0.0, p_uncond=0.0, parameterization="endpoint", batch_size=128)
    d.run(progress=False)
    assert d.history[0]["final_loss"] < 1e-4
    # its sampler applies the endpoint network once
    assert d.sampler(1).nfe == 1


# ------------------------------------------------------------------------------------ sources


def test_forward_source_uses_path_samples_and_teacher_targets():
    d = _distiller(AffineField(_rotation(1.5), b0=[0.2, 0.1]), stages=(8, 4), p_uncond=0.5)
    batch = d.make_batch(1)
    x0, t, x_t = d.path.last
    assert torch.equal(batch.x, x_t) and torch.equal(batch.t, t)
    grid = d.grid(1)
    assert torch.equal(batch.t, grid[batch.k]) and torch.equal(batch.t_next, grid[batch.k + 1])
    # every x0 is a data row
    assert bool((x0[:, None, :] == d.data[None]).all(-1).any(1).all())
    # both labelled and null rows occur with p_uncond = 0.5
    assert (batch.y == NULL).any() and (batch.y != NULL).any()
    with torch.no_grad():
        ref, _ = d.stage_teacher(1)(batch.x, batch.k, batch.y)
    assert torch.equal(batch.target, ref)


def test_rollout_source_chains_teacher_maps():
    b = torch.tensor([0.7, -1.3], dtype=torch.float64)
    d = _distiller(AffineField([[0.0, 0.0], [0.0, 0.0]], b0=b), stages=(8, 4), source="rollout",
                   rollout_pool=100)
    pool = d.build_pool(1, refresh_index=3)
    grid = d.grid(1)
    assert pool.states.shape == (5, 100, 2) and pool.teacher_nfe == 2
    # constant field: the roll-out is z + (t_k - T) b
    for k in range(5):
        torch.testing.assert_close(pool.states[k], pool.states[0] + (grid[k] - 1.0) * b, rtol=0, atol=1e-13)
    # deterministic per (seed, stage, refresh index)
    assert torch.equal(d.build_pool(1, 3).states, pool.states)
    assert not torch.equal(d.build_pool(1, 4).states[0], pool.states[0])
    batch = d.make_batch(1, pool)
    torch.testing.assert_close(batch.target - batch.x, (batch.t_next - batch.t)[:, None] * b,
                               rtol=0, atol=1e-13)
    assert torch.equal(batch.t, grid[batch.k])


def test_rollout_source_matches_teacher_on_nonlinear_field():
    teacher = TinyNet()
    d = Distiller(teacher, LinearPath(), *_data(),
                  DistillConfig(stages=(6, 3), source="rollout", rollout_pool=40, batch_size=16))
    pool = d.build_pool(1)
    tm = d.stage_teacher(1)
    for k in range(3):
        ref, _ = tm(pool.states[k], torch.full((40,), k), pool.labels)
        torch.testing.assert_close(pool.states[k + 1], ref, rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------------ trajectory targets


def _hand_guided(teacher, x, t, y, s):
    """u_s = u_null + s (u_y - u_null), written out (no GuidedField)."""
    tt = torch.full((x.shape[0],), float(t), dtype=x.dtype)
    u_null = teacher(x, tt, torch.full_like(y, NULL))
    return u_null + s * (teacher(x, tt, y) - u_null)


def _hand_ab2(teacher, z, y, s, n_steps):
    """The K0-step teacher's uniform AB-2 on [1, 0] by hand (Euler first step): all states."""
    h = -1.0 / n_steps
    xs, f_prev = [z], None
    for i in range(n_steps):
        f = _hand_guided(teacher, xs[-1], 1.0 - i / n_steps, y, s)
        xs.append(xs[-1] + h * (f if f_prev is None else 1.5 * f - 0.5 * f_prev))
        f_prev = f
    return xs


def _time_linear_teacher():
    lb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [0.4, -0.4]], dtype=torch.float64)
    return AffineField(_rotation(2.5), w1=[[0.0, 1.0], [-0.5, 0.3]], b0=[0.2, -0.1], b1=[0.5, 0.0],
                       label_bias=lb)


def test_trajectory_pool_holds_the_teachers_own_ab2_states():
    """target="trajectory", roll-out source: the (source, target) pairs are the states of the
    12-step guided AB-2 teacher (history carried across student intervals) at the student times;
    the restart targets (Euler first sub-step in every interval) are not."""
    teacher = _time_linear_teacher()
    d = _distiller(teacher, stages=(12, 4), source="rollout", target="trajectory", rollout_pool=30,
                   guidance_scale=1.5, batch_size=32)
    pool = d.build_pool(1)
    hand = _hand_ab2(teacher, pool.states[0], pool.labels, 1.5, 12)
    assert pool.states.shape == (5, 30, 2) and pool.teacher_nfe == 3 * 2  # N = 3 steps, guided
    for k in range(5):
        torch.testing.assert_close(pool.states[k], hand[3 * k], rtol=0, atol=1e-13)
    batch = d.make_batch(1, pool)
    for i in range(32):
        j = int(((pool.states[batch.k[i]] - batch.x[i]).abs().sum(1) == 0).nonzero()[0])
        torch.testing.assert_close(batch.target[i], hand[3 * int(batch.k[i]) + 3][j], rtol=0, atol=1e-13)
    assert bool(batch.from_pool.all())
    # the restart map from the same states lands elsewhere for k >= 1 (and equally for k = 0)
    restart = FlowTeacher(teacher, d.grid(1), 3, "ab2", 1.5, NULL)
    for k in range(4):
        kk = torch.full((30,), k)
        out, _ = restart(pool.states[k], kk, pool.labels)
        gap = (out - pool.states[k + 1]).abs().max().item()
        assert (gap < 1e-13) if k == 0 else (gap > 1e-3), (k, gap)
    # the teacher's own sampler (12 AB-2 steps on grid(0)) ends where the pool ends
    torch.testing.assert_close(d.sampler(0)(30, y=pool.labels, latent=pool.states[0]), pool.states[-1],
                               rtol=0, atol=1e-13)


def test_trajectory_forward_rows_use_a_primed_ab2_step():
    """Forward rows with target="trajectory": for k >= 1 the AB-2 sub-steps continue with the slope at
    t_k - h taken one explicit step back (by hand here); k = 0 starts with Euler as the teacher does.
    From the teacher's own state at t_k the primed target is far closer to the teacher's state at
    t_{k+1} than the restarted one."""
    teacher = _time_linear_teacher()
    d = _distiller(teacher, stages=(12, 4), target="trajectory", guidance_scale=1.5, batch_size=24)
    batch = d.make_batch(1)
    assert batch.teacher_nfe == (3 + 1) * 2 and batch.from_pool is None
    h = -1.0 / 12
    for i in range(24):
        k, x, y = int(batch.k[i]), batch.x[i:i + 1], batch.y[i:i + 1]
        t0 = 1.0 - 3 * k / 12
        f = _hand_guided(teacher, x, t0, y, 1.5)
        f_prev = None if k == 0 else _hand_guided(teacher, x - h * f, t0 - h, y, 1.5)
        for j in range(3):
            if j:
                f = _hand_guided(teacher, x, t0 + j * h, y, 1.5)
            x = x + h * (f if f_prev is None else 1.5 * f - 0.5 * f_prev)
            f_prev = f
        torch.testing.assert_close(batch.target[i:i + 1], x, rtol=0, atol=1e-12)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.randint(NUM_CLASSES, (50,), generator=torch.Generator().manual_seed(4))
    hand = _hand_ab2(teacher, z, y, 1.5, 12)
    primed = FlowTeacher(teacher, d.grid(1), 3, "ab2", 1.5, NULL, target="trajectory")
    restart = FlowTeacher(teacher, d.grid(1), 3, "ab2", 1.5, NULL)
    for k in (1, 2, 3):
        kk = torch.full((50,), k)
        e_primed = (primed(hand[3 * k], kk, y)[0] - hand[3 * k + 3]).abs().max().item()
        e_restart = (restart(hand[3 * k], kk, y)[0] - hand[3 * k + 3]).abs().max().item()
        assert e_primed < e_restart / 5, (k, e_primed, e_restart)
    # one-step methods have no history: trajectory = restart
    rk = FlowTeacher(teacher, d.grid(1), 3, "rk4", 1.5, NULL, target="trajectory")
    kk = torch.full((50,), 2)
    assert torch.equal(rk(z, kk, y)[0], FlowTeacher(teacher, d.grid(1), 3, "rk4", 1.5, NULL)(z, kk, y)[0])


@pytest.mark.parametrize("fraction, n_pool", [(0.25, 16), (0.5, 32), (0.0, 0), (1.0, 64), (0.7, 45)])
def test_mix_source_takes_its_share_of_rows_from_the_pool(fraction, n_pool):
    d = _distiller(_time_linear_teacher(), stages=(8, 4), source="mix", rollout_fraction=fraction,
                   rollout_pool=40, batch_size=64, target="trajectory", guidance_scale=1.5)
    assert d.config.pool_rows == n_pool and d.config.uses_pool == (n_pool > 0)
    pool = d.build_pool(1) if n_pool else None
    d.path.last = None
    batch = d.make_batch(1, pool)
    assert batch.x.shape == (64, 2) and batch.target.shape == (64, 2) and batch.y.shape == (64,)
    mask = torch.zeros(64, dtype=torch.bool) if batch.from_pool is None else batch.from_pool
    assert int(mask.sum()) == n_pool
    if n_pool:  # pool rows are pool states, their targets the next pool states
        for i in torch.nonzero(mask).flatten().tolist():
            k = int(batch.k[i])
            j = ((pool.states[k] - batch.x[i]).abs().sum(1) == 0).nonzero()
            assert j.numel() >= 1 and torch.equal(batch.target[i], pool.states[k + 1, int(j[0])])
    if n_pool < 64:  # forward rows are the path's draws, targets the teacher map of them
        _, t, x_t = d.path.last
        assert torch.equal(batch.x[~mask], x_t) and torch.equal(batch.t[~mask], t)
        with torch.no_grad():
            ref, _ = d.stage_teacher(1)(batch.x[~mask], batch.k[~mask], batch.y[~mask])
        torch.testing.assert_close(batch.target[~mask], ref, rtol=0, atol=0)
    else:
        assert d.path.last is None  # no forward draw at all


@pytest.mark.parametrize("source", ["forward", "rollout", "mix"])
def test_p_uncond_defaults_to_zero_and_0_1_stays_reachable(source):
    d = _distiller(TinyNet(), stages=(4, 2), source=source, rollout_pool=400, batch_size=400)
    assert d.config.p_uncond == 0.0
    batch = d.make_batch(1)
    assert not (batch.y == NULL).any()
    assert not (d.build_pool(1).labels == NULL).any() or source == "forward"
    old = _distiller(TinyNet(), stages=(4, 2), source=source, rollout_pool=400, batch_size=400, p_uncond=0.1)
    frac = (old.make_batch(1).y == NULL).double().mean().item()
    assert 0.05 < frac < 0.15


# ------------------------------------------------------------------------------------ EMA


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_recursion(warmup):
    model = nn.Linear(1, 1, bias=False).double()
    model.weight.data.fill_(1.0)
    ema = EMA(model, decay=0.9, warmup=warmup)
    expected = 1.0
    for n, value in enumerate([2.0, -1.0, 4.0, 0.5], start=1):
        model.weight.data.fill_(value)
        ema.update(model)
        dn = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        expected = dn * expected + (1 - dn) * value
        assert ema.model.weight.item() == pytest.approx(expected, rel=1e-14)
    assert not ema.model.weight.requires_grad


# ------------------------------------------------------------------------------------ guidance


@pytest.mark.parametrize("scale, per_call", [(1.0, 1), (2.0, 2)])
def test_guided_teacher_targets_and_nfe(scale, per_call):
    lb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    teacher = AffineField(_rotation(1.0), w1=[[0.0, 0.5], [0.2, 0.0]], b0=[0.1, 0.3], label_bias=lb)
    # the null label gets its own bias so that guidance changes the field
    teacher.label_bias.data[NULL] = torch.tensor([0.4, -0.4], dtype=torch.float64)
    d = _distiller(teacher, stages=(12, 4), guidance_scale=scale, p_uncond=0.3, batch_size=16)
    CALLS["rows"] = 0
    batch = d.make_batch(1)
    assert batch.teacher_nfe == 3 * per_call
    assert CALLS["rows"] == 16 * 3 * per_call
    guided = GuidedField(teacher, scale, null_label=NULL)
    grid = d.grid(1)
    for i in range(16):
        sub = uniform_grid(float(grid[batch.k[i]]), float(grid[batch.k[i] + 1]), 3)
        yi = batch.y[i:i + 1]
        ref = integrate(guided.field(yi), batch.x[i:i + 1], sub, "ab2").x
        torch.testing.assert_close(batch.target[i:i + 1], ref, rtol=1e-12, atol=1e-12)
        if int(yi) == NULL:  # the guided field at the null label is the unconditional one
            plain = integrate(lambda x, t: teacher(x, t, yi), batch.x[i:i + 1], sub, "ab2").x
            torch.testing.assert_close(batch.target[i:i + 1], plain, rtol=1e-12, atol=1e-12)
    assert (batch.y == NULL).any()


def test_sampler_nfe_and_stage_errors():
    d = _distiller(TinyNet(), stages=(8, 4, 2), guidance_scale=1.5, steps_per_stage=2)
    assert d.sampler(0).nfe == 16  # 8 AB-2 steps, 2 evaluations per guided call
    with pytest.raises(ValueError, match="not been trained"):
        d.sampler(1)
    d.run(progress=False)
    assert [d.sampler(i).nfe for i in (1, 2, -1)] == [4, 2, 2]
    s = d.sampler(2)
    x = s(10, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10, 2) and torch.isfinite(x).all()
    x1 = s(10, y=1, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(x, x1)
    # the student's sampler is its Euler map on its grid
    z = torch.randn(7, 2, dtype=torch.float64)
    grid = d.grid(2)
    ref = z
    y = torch.full((7,), 2)
    for k in range(2):
        ref = student_step(d.student(2), ref, grid[k].expand(7), grid[k + 1].expand(7), y)
    torch.testing.assert_close(s(7, y=y, latent=z), ref, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="stage"):
        d.sampler(3)


# ------------------------------------------------------------------------------------ resume


class _Stop(Exception):
    pass


@pytest.mark.parametrize("source, stop_at, target", [("forward", (2, 3), "restart"), ("rollout", (1, 5), "restart"),
                                                     ("forward", (1, 5), "restart"), ("mix", (1, 3), "trajectory")])
def test_resume_reaches_the_same_weights(tmp_path, source, stop_at, target):
    cfg = dict(stages=(4, 2, 1), steps_per_stage=(5, 4), batch_size=8, lr=1e-2, source=source, target=target,
               rollout_pool=16, rollout_refresh=3, checkpoint_every=2, ema_decay=0.5,
               guidance_scale=1.5, lr_schedule="cosine")
    x, y = _data(64)
    full = Distiller(TinyNet(), LinearPath(), x, y, DistillConfig(**cfg), out_dir=tmp_path / "a")
    full.run(progress=False)

    def stop(info):
        if (info["stage"], info["step"]) == stop_at:
            raise _Stop

    part = Distiller(TinyNet(), LinearPath(), x, y, DistillConfig(**cfg), out_dir=tmp_path / "b")
    with pytest.raises(_Stop):
        part.run(progress=False, callback=stop)
    # a new process: new objects, only the checkpoint survives
    again = Distiller(TinyNet(), LinearPath(), x, y, DistillConfig(**cfg), out_dir=tmp_path / "b")
    again.run(resume=True, progress=False)
    for i in (1, 2):
        for (ka, va), (kb, vb) in zip(full.student(i).state_dict().items(),
                                      again.student(i).state_dict().items()):
            assert ka == kb and torch.equal(va, vb), (i, ka)
    assert [h["final_loss"] for h in full.history] == [h["final_loss"] for h in again.history]
    # the interruption really lost work (the last checkpoint was before the stop)
    ck = load_checkpoint(tmp_path / "b" / "distill.ckpt")
    assert ck["stage"] == 3 and ck["step"] == 0
    # a finished run resumes to a no-op; a changed config refuses to resume
    again.run(resume=True, progress=False)
    bad = Distiller(TinyNet(), LinearPath(), x, y, DistillConfig(**{**cfg, "lr": 2e-2}),
                    out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="lr"):
        bad.run(resume=True, progress=False)
    assert load_json(tmp_path / "a" / "distill_config.json")["stages"] == [4, 2, 1]


def test_resume_without_checkpoint_starts_fresh_and_needs_out_dir(tmp_path):
    d = _distiller(TinyNet(), stages=(4, 2), steps_per_stage=2)
    with pytest.raises(ValueError, match="out_dir"):
        d.run(resume=True, progress=False)
    x, y = _data(32)
    d = Distiller(TinyNet(), LinearPath(), x, y, DistillConfig(stages=(4, 2), steps_per_stage=2, batch_size=4),
                  out_dir=tmp_path)
    d.run(resume=True, progress=False)
    assert len(d.students) == 1 and (tmp_path / "distill.ckpt").is_file()


def test_progress_lines_show_the_latest_loss_on_short_stages(monkeypatch, capsys):
    """Stages shorter than ``log_every``: every progress line (log mode) shows the loss of the step it
    reports, not the first step's."""
    monkeypatch.setenv("KACNUM_PROGRESS", "log")
    monkeypatch.setenv("KACNUM_PROGRESS_SECONDS", "1000")
    d = _distiller(AffineField(_rotation(2.0)), stages=(8, 4, 2), steps_per_stage=(12, 7), lr=2e-2, batch_size=16,
                   log_every=50)
    seen = {}
    d.run(callback=lambda info: seen.setdefault(info["stage"], []).append(info["loss"]))
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[distill ")]
    for stage, label, n in ((1, "8->4", 12), (2, "4->2", 7)):
        shown = [(int(m.group(1)), m.group(2)) for ln in lines if ln.startswith(f"[distill {label}]")
                 for m in [re.search(r"step (\d+)/\d+.*  loss (\S+)", ln)]]
        assert len(shown) >= 3 and shown[-1][0] == n
        assert all(value == f"{seen[stage][step - 1]:.4g}" for step, value in shown), (shown, seen[stage])
        assert len({value for _, value in shown}) > 1  # the loss falls: the lines do not repeat one value


# ------------------------------------------------------------------------------------ devices


@pytest.mark.parametrize("source", ["forward", "rollout"])
def test_runs_on_every_device(device, source, tmp_path):
    """The whole loop (batches, pools, EMA, checkpoint, resume, sampler) stays on ``device``."""
    x, y = _data(64)
    x, y = x.to(device), y.to(device)
    cfg = DistillConfig(stages=(4, 2, 1), steps_per_stage=3, batch_size=8, source=source, rollout_pool=16,
                        checkpoint_every=2, guidance_scale=1.5)
    d = Distiller(TinyNet().to(device), LinearPath(), x, y, cfg, out_dir=tmp_path)
    d.run(progress=False)
    again = Distiller(TinyNet().to(device), LinearPath(), x, y, cfg, out_dir=tmp_path)
    again.run(resume=True, progress=False)
    for i in (1, 2):
        for va, vb in zip(d.student(i).state_dict().values(), again.student(i).state_dict().values()):
            assert va.device.type == device.type and torch.equal(va, vb)
    out = d.sampler(-1)(5, generator=torch.Generator(device=device).manual_seed(0))
    assert out.device.type == device.type and out.shape == (5, 2) and bool(torch.isfinite(out).all())
    teacher_out = d.sampler(0)(5, generator=torch.Generator(device=device).manual_seed(0))
    assert teacher_out.device.type == device.type


# ------------------------------------------------------------------------------------ checkpoint io


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    p = tmp_path / "sub" / "x.ckpt"
    obj = {"w": torch.arange(3.0), "n": 4, "cfg": {"stages": (4, 2)}, "l": [1.5, None]}
    save_checkpoint(p, obj)
    back = load_checkpoint(p)
    assert torch.equal(back["w"], obj["w"]) and back["n"] == 4 and tuple(back["cfg"]["stages"]) == (4, 2)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(p, {"bad": Boom()})
    assert torch.equal(load_checkpoint(p)["w"], obj["w"])  # the old file survives
    assert sorted(f.name for f in p.parent.iterdir()) == ["x.ckpt"]  # no temp file left
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_save_json_makes_plain_json(tmp_path):
    cfg = DistillConfig(stages=(4, 2))
    p = save_json(tmp_path / "r.json", {"cfg": cfg, "w2": float("nan"), "t": torch.tensor([1.0, 2.0]),
                                        "dtype": torch.float32, "inf": math.inf})
    text = p.read_text()
    back = json.loads(text)
    assert back["cfg"]["stages"] == [4, 2] and back["w2"] is None and back["inf"] is None
    assert back["t"] == [1.0, 2.0] and back["dtype"] == "torch.float32"
    with pytest.raises(ValueError, match="JSON"):
        save_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
