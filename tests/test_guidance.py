"""Guidance in velocity space: the combination, one batched pass, NFE accounting, the speed bound
(and that it is attained), clip, diagnostics."""

import pytest
import torch
from hypothesis import given, strategies as st

from kacnum.flows.guidance import GuidedField, guidance_bound, guided_kinetic_energy
from kacnum.flows.solvers import METHODS, integrate, uniform_grid

NULL = 3  # num_classes = 3, null label 3


class AnalyticModel:
    """u(x, t, y) = y_weight(y) * sin(x + t) per row; the null label gives -cos(2x) * t.

    Hand-made, so the guided field can be written down independently of GuidedField.
    Counts calls and rows.
    """

    def __init__(self):
        self.calls = 0
        self.rows = []

    def __call__(self, x, t, y):
        self.calls += 1
        self.rows.append(x.shape[0])
        assert t.shape == y.shape == (x.shape[0],) and y.dtype == torch.long
        tt = t.reshape(-1, *([1] * (x.dim() - 1)))
        cond = (1.0 + y.to(x.dtype)).reshape(tt.shape) * torch.sin(x + tt)
        uncond = -torch.cos(2 * x) * tt
        return torch.where((y == NULL).reshape(tt.shape), uncond, cond)


def _hand(x, t, y, s):
    tt = t[:, None]
    u_c = (1.0 + y.to(x.dtype))[:, None] * torch.sin(x + tt)
    u_u = -torch.cos(2 * x) * tt
    return u_u + s * (u_c - u_u), u_c, u_u


@pytest.mark.parametrize("s", [0.0, 0.5, 1.0, 1.2, 3.0, -0.7])
def test_combination_is_exact(s, dtype, device):
    model = AnalyticModel()
    g = GuidedField(model, scale=s, num_classes=3)
    x = torch.randn(6, 5, dtype=dtype, device=device)
    t = torch.rand(6, dtype=dtype, device=device)
    y = torch.tensor([0, 1, 2, 0, 2, 1], device=device)
    want, u_c, u_u = _hand(x, t, y, s)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    assert torch.allclose(g(x, t, y), want, atol=tol, rtol=0)
    assert torch.allclose(g.field(y)(x, t), want, atol=tol, rtol=0)
    comps = g.components(x, t, y)
    for got, ref in zip(comps, (want, u_c, u_u)):
        assert torch.allclose(got, ref, atol=tol, rtol=0)
    # the summary's form (1 + w) u_c - w u_u with s = 1 + w
    w = s - 1
    assert torch.allclose(g(x, t, y), (1 + w) * u_c - w * u_u, atol=10 * tol, rtol=0)


@pytest.mark.parametrize("s,calls,rows,nfe", [(1.0, 1, 4, 1), (0.0, 1, 4, 1), (1.2, 1, 8, 2),
                                              (2.0, 1, 8, 2)])
def test_one_batched_forward_pass(s, calls, rows, nfe):
    model = AnalyticModel()
    g = GuidedField(model, scale=s, num_classes=3)
    x, t, y = torch.randn(4, 2), torch.rand(4), torch.tensor([0, 1, 2, 1])
    out = g(x, t, y)
    assert model.calls == calls and model.rows == [rows] and g.nfe_per_call == nfe
    assert g.field(y).nfe_per_call == nfe
    assert out.shape == x.shape


def test_scale_one_is_conditional_model():
    model = AnalyticModel()
    x, t, y = torch.randn(4, 2, dtype=torch.float64), torch.rand(4, dtype=torch.float64), \
        torch.tensor([0, 1, 2, 1])
    g = GuidedField(model, scale=1.0, num_classes=3)
    assert torch.equal(g(x, t, y), model(x, t, y))
    assert g.nfe_per_call == 1
    g2 = g.with_scale(2.5)
    assert g2.scale == 2.5 and g2.model is model and g2.nfe_per_call == 2 and g.scale == 1.0


@pytest.mark.parametrize("method", METHODS)
def test_solver_nfe_accounting(method):
    model = AnalyticModel()
    g = GuidedField(model, scale=1.2, num_classes=3)
    y = torch.tensor([0, 2, 1])
    res = integrate(g.field(y), torch.randn(3, 4), uniform_grid(1.0, 0.0, 6), method)
    assert res.nfe == model.calls and res.nfe_model == 2 * res.nfe == sum(model.rows) // 3
    model1 = AnalyticModel()
    res1 = integrate(GuidedField(model1, scale=1.0, num_classes=3).field(y), torch.randn(3, 4),
                     uniform_grid(1.0, 0.0, 6), method)
    assert res1.nfe_model == res1.nfe == model1.calls


def test_guided_flow_matches_hand_field():
    g = GuidedField(AnalyticModel(), scale=1.7, num_classes=3)
    y = torch.tensor([0, 2])
    x = torch.randn(2, 3, dtype=torch.float64)
    grid = uniform_grid(1.0, 0.0, 20)
    got = integrate(g.field(y), x, grid, "rk4").x
    ref = integrate(lambda x, t: _hand(x, t, y, 1.7)[0], x, grid, "rk4").x
    assert torch.allclose(got, ref, atol=1e-14)


# -- the speed bound ---------------------------------------------------------------------------


class BoundedModel:
    """Random fields with |u| <= B: B tanh(W_y x + b_y t) per label."""

    def __init__(self, bound, seed, d=4):
        gen = torch.Generator().manual_seed(seed)
        self.B = bound
        self.W = 3 * torch.randn(NULL + 1, d, d, generator=gen, dtype=torch.float64)
        self.b = 3 * torch.randn(NULL + 1, d, generator=gen, dtype=torch.float64)

    def __call__(self, x, t, y):
        return self.B * torch.tanh(torch.einsum("bij,bj->bi", self.W[y], x) + self.b[y] * t[:, None])


@given(s=st.floats(0.0, 5.0), bound=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_bound_holds_on_bounded_fields(s, bound, seed):
    model = BoundedModel(bound, seed)
    g = GuidedField(model, scale=s, num_classes=3)
    gen = torch.Generator().manual_seed(seed + 1)
    x = 5 * torch.randn(64, 4, generator=gen, dtype=torch.float64)
    t = torch.rand(64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    u_s, u_c, u_u = g.components(x, t, y)
    assert float(u_c.abs().max()) <= bound and float(u_u.abs().max()) <= bound
    m = float(u_s.abs().max())
    assert m <= guidance_bound(s, bound, sharp=True) * (1 + 1e-12)
    assert guidance_bound(s, bound, sharp=True) <= guidance_bound(s, bound) * (1 + 1e-12)


@given(s=st.floats(0.0, 5.0), bound=st.floats(0.1, 10.0))
def test_bound_is_attained(s, bound):
    """u_c = B sign(s), u_u = B sign(1 - s) gives |u_s| = (|s| + |1 - s|) B exactly; for s >= 1
    (u_c = B, u_u = -B) that is the bound (1 + 2|s - 1|) B of docs/mathematics.md §5, so no smaller constant is valid."""
    c = bound * (1.0 if s >= 0 else -1.0)
    u = bound * (1.0 if s <= 1 else -1.0)

    def model(x, t, y):
        return torch.where((y == NULL)[:, None], torch.full_like(x, u), torch.full_like(x, c))

    g = GuidedField(model, scale=s, num_classes=3)
    x = torch.zeros(2, 3, dtype=torch.float64)
    m = float(g(x, torch.zeros(2, dtype=torch.float64), torch.tensor([0, 1])).abs().max())
    assert m == pytest.approx(guidance_bound(s, bound, sharp=True), rel=1e-12)
    if s >= 1:
        assert m == pytest.approx(guidance_bound(s, bound), rel=1e-12)
        assert m > (1 + 2 * abs(s - 1)) * bound * (1 - 1e-3)  # a smaller constant would fail
        assert m > (1 + abs(s - 1)) * bound or s == 1.0


def test_guidance_bound_values():
    assert guidance_bound(1.0, 3.0) == 3.0
    assert guidance_bound(1.2, 3.0) == pytest.approx(1.4 * 3.0)
    assert guidance_bound(0.0, 2.0) == 6.0 and guidance_bound(0.0, 2.0, sharp=True) == 2.0
    assert guidance_bound(0.5, 1.0, sharp=True) == 1.0
    assert guidance_bound(3.0, 1.0, sharp=True) == guidance_bound(3.0, 1.0) == 5.0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            guidance_bound(bad, 1.0)
    with pytest.raises(ValueError, match="bound"):
        guidance_bound(1.0, -1.0)


# -- clip --------------------------------------------------------------------------------------


def test_clip_constant_and_callable(device):
    model = BoundedModel(2.0, seed=3)
    model.W, model.b = model.W.to(device), model.b.to(device)
    x = 5 * torch.randn(32, 4, dtype=torch.float64, device=device)
    t = torch.rand(32, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (32,), device=device)
    raw = GuidedField(model, scale=3.0, num_classes=3)(x, t, y)
    assert float(raw.abs().max()) > 2.0  # guidance leaves the box, so the clip has work to do
    clipped = GuidedField(model, scale=3.0, num_classes=3, clip=2.0)(x, t, y)
    assert torch.equal(clipped, raw.clamp(-2.0, 2.0))
    per_t = GuidedField(model, scale=3.0, num_classes=3, clip=lambda t: 1.0 + t)(x, t, y)
    b = (1.0 + t)[:, None]
    assert torch.equal(per_t, torch.maximum(torch.minimum(raw, b), -b))
    assert float((per_t.abs() - b).max()) <= 0
    scalar = GuidedField(model, scale=3.0, num_classes=3, clip=lambda t: 1.5)(x, t, y)
    assert torch.equal(scalar, raw.clamp(-1.5, 1.5))
    # off by default: unclipped values survive
    assert torch.equal(GuidedField(model, scale=3.0, num_classes=3)(x, t, y), raw)


# -- diagnostics -------------------------------------------------------------------------------


def test_guided_kinetic_energy():
    model = BoundedModel(1.5, seed=7, d=3)
    g = GuidedField(model, scale=2.0, num_classes=3)
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    grid = uniform_grid(1.0, 0.0, 10)
    out = guided_kinetic_energy(g, x_T, y, grid, method="ab2")
    assert out["nfe"] == 10 and out["nfe_model"] == 20
    assert torch.equal(out["time_grid"], grid)
    traj = integrate(g.field(y), x_T, grid, "ab2", return_trajectory=True).trajectory
    assert torch.allclose(out["x"], traj[-1])
    for k in (0, 4, 10):
        u_s, u_c, u_u = _bounded_parts(model, traj[k], float(grid[k]), y, 2.0)
        for part, u in (("guided", u_s), ("cond", u_c), ("uncond", u_u)):
            sq = (u**2).sum(1).mean()
            assert float(out[f"{part}_energy"][k]) == pytest.approx(float(sq), rel=1e-12)
            assert float(out[f"{part}_energy_per_dim"][k]) == pytest.approx(float(sq) / 3, rel=1e-12)
            assert float(out[f"{part}_max_abs"][k]) == pytest.approx(float(u.abs().max()), rel=1e-12)
    assert bool((out["guided_max_abs"] <= out["bound"] * (1 + 1e-12)).all())
    assert bool((out["cond_max_abs"] <= 1.5).all()) and out["bound"].shape == (11,)


def _bounded_parts(model, x, t, y, s):
    tv = torch.full((x.shape[0],), t, dtype=x.dtype)
    u_c = model(x, tv, y)
    u_u = model(x, tv, torch.full_like(y, NULL))
    return u_u + s * (u_c - u_u), u_c, u_u


# -- bad input ---------------------------------------------------------------------------------


def test_bad_inputs():
    model = AnalyticModel()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            GuidedField(model, scale=bad, num_classes=3)
    with pytest.raises(ValueError, match="null_label"):
        GuidedField(model, scale=1.2)
    with pytest.raises(ValueError, match="null_label"):
        GuidedField(model, scale=1.2, num_classes=3, null_label=1)
    with pytest.raises(ValueError, match="clip"):
        GuidedField(model, scale=1.2, num_classes=3, clip=-1.0)
    g = GuidedField(model, scale=1.2, num_classes=3)
    x, t = torch.randn(2, 2), torch.rand(2)
    with pytest.raises(ValueError, match="y"):
        g(x, t, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="y"):
        g(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="y"):
        g(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="y"):
        g(x, t, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="guided_field"):
        guided_kinetic_energy(model, x, torch.tensor([0, 1]), [1.0, 0.0])
    # the null label itself is accepted (rows left unguided) and an int broadcasts
    assert torch.allclose(g(x, t, torch.tensor([NULL, NULL])), g.with_scale(0.0)(x, t, 0))
    assert torch.equal(g(x, t, 2), g(x, t, torch.tensor([2, 2])))
