"""Progressive distillation of the VP/DDIM baseline (kacnum.students.progressive).

Expected values come from closed forms written here: the exact ε-predictor of a single point and
of a Gaussian data law, and the DDIM update written out by hand; the solver cross-check uses
kacnum.flows.solvers.ddim_sample (an independent implementation of DDIM).
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kacnum.images.models import MLP
from kacnum.flows.paths import VPPath
from kacnum.students.progressive import (
    ProgressiveConfig,
    ProgressiveDistiller,
    ddim_step,
    output_target,
    pd_sample,
    pd_target,
    split_output,
    validate_schedule,
)
from kacnum.flows.solvers import ddim_sample


class PointEps(nn.Module):
    """Exact ε(z, t) = (z - α_t c) / σ_t for the single data point c (``out="eps"``), or the exact
    x-prediction c (``out="x"``), or v = α ε - σ c (``out="v"``); one dummy parameter to train."""

    def __init__(self, c, path, out="eps"):
        super().__init__()
        self.c = torch.as_tensor(c, dtype=torch.float64)
        self.path, self.out = path, out
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.null_label = None

    def forward(self, z, t, y=None):
        a = self.path.alpha(t)[:, None]
        s = self.path.sigma(t)[:, None]
        eps = (z - a * self.c) / s + 0 * self.dummy
        if self.out == "eps":
            return eps
        if self.out == "x":
            return self.c.expand_as(z) + 0 * self.dummy
        return a * eps - s * self.c


class GaussEps(nn.Module):
    """Exact ε-predictor for data N(m, s² I) plus a zero-initialised MLP correction (trainable)."""

    def __init__(self, m, s, path, hidden=64):
        super().__init__()
        self.m = torch.as_tensor(m, dtype=torch.float64)
        self.s2 = float(s) ** 2
        self.path = path
        self.corr = nn.Sequential(nn.Linear(3, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, 2)).double()
        nn.init.zeros_(self.corr[-1].weight)
        nn.init.zeros_(self.corr[-1].bias)
        self.null_label = None

    def forward(self, z, t, y=None):
        a = self.path.alpha(t)[:, None]
        s = self.path.sigma(t)[:, None]
        mean = self.m + a * self.s2 / (a * a * self.s2 + s * s) * (z - a * self.m)
        eps = (z - a * mean) / s
        return eps + self.corr(torch.cat([z, t[:, None]], dim=1))


# ------------------------------------------------------------------------------------------------
# formulas


@given(t=st.floats(0.05, 1.0), frac=st.floats(0.02, 0.95), seed=st.integers(0, 2 ** 16))
def test_target_step_reproduces_teacher_endpoint(t, frac, seed):
    """One DDIM step with (x̃, ε̃) from pd_target lands exactly on the teacher's z_{t''}."""
    path = VPPath()
    tt = max(1e-3, t * frac)
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    z_tt = torch.randn(5, 3, generator=g, dtype=torch.float64)
    tv, ttv = torch.full((5,), t, dtype=torch.float64), torch.full((5,), tt, dtype=torch.float64)
    a, s, a2, s2 = path.alpha(tv), path.sigma(tv), path.alpha(ttv), path.sigma(ttv)
    x_t, e_t = pd_target(z_t, z_tt, a, s, a2, s2)
    # hand-written DDIM step z_s = α_s x̂ + σ_s (z_t - α_t x̂)/σ_t
    z_hat = a2[:, None] * x_t + s2[:, None] * (z_t - a[:, None] * x_t) / s[:, None]
    torch.testing.assert_close(z_hat, z_tt, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ddim_step(x_t, e_t, a2, s2), z_tt, rtol=1e-9, atol=1e-9)
    # each parameterisation's target is read back as the same (x̃, ε̃)
    for p in ("eps", "x", "v"):
        out = output_target(x_t, e_t, a, s, p)
        xb, eb = split_output(out, z_t, a, s, p)
        torch.testing.assert_close(xb, x_t, rtol=1e-7, atol=1e-7)
        torch.testing.assert_close(eb, e_t, rtol=1e-7, atol=1e-7)


def test_split_output_v_definition():
    """v = α ε - σ x (Salimans & Ho): split_output inverts it."""
    path = VPPath()
    t = torch.tensor([0.3, 0.9], dtype=torch.float64)
    a, s = path.alpha(t), path.sigma(t)
    x = torch.tensor([[0.5, -1.0], [0.2, 0.7]], dtype=torch.float64)
    e = torch.tensor([[1.5, 0.3], [-0.4, 2.0]], dtype=torch.float64)
    z = a[:, None] * x + s[:, None] * e
    v = a[:, None] * e - s[:, None] * x
    xb, eb = split_output(v, z, a, s, "v")
    torch.testing.assert_close(xb, x)
    torch.testing.assert_close(eb, e)


@pytest.mark.parametrize("param", ["eps", "x", "v"])
def test_exact_model_single_point_has_zero_loss(param):
    """Single data point c and the exact model: the target is the teacher's own output, loss 0."""
    path = VPPath()
    c = torch.tensor([0.7, -0.3], dtype=torch.float64)
    data = c.expand(64, 2).clone()
    teacher = PointEps(c, path, out=param)
    cfg = ProgressiveConfig(schedule=(8, 4), steps_per_round=1, batch_size=64, parameterization=param,
                            base_parameterization=param, p_uncond=0.0)
    pd = ProgressiveDistiller(teacher, path, data, config=cfg)
    batch = pd.make_batch(1, torch.Generator().manual_seed(3))
    torch.testing.assert_close(batch["x_tilde"], data, rtol=1e-9, atol=1e-9)
    out = teacher(batch["z"], batch["t"])
    torch.testing.assert_close(batch["target"], out, rtol=1e-8, atol=1e-8)
    assert float(pd.loss(teacher, batch).detach()) < 1e-16
    # a wrong point gives a clearly positive loss (the test can fail)
    wrong = PointEps(c + 0.1, path, out=param)
    assert float(pd.loss(wrong, batch).detach()) > 1e-4


def test_target_clipped_to_data_range():
    """A point outside [-1, 1]: x̃ is clamped to clip_x and ε̃ stays consistent with z_t."""
    path = VPPath()
    c = torch.tensor([3.0, -0.5], dtype=torch.float64)
    data = c.expand(32, 2).clone()
    cfg = ProgressiveConfig(schedule=(4, 2), steps_per_round=1, batch_size=32, p_uncond=0.0, clip_x=1.0)
    b = ProgressiveDistiller(PointEps(c, path), path, data, config=cfg).make_batch(1, torch.Generator().manual_seed(0))
    torch.testing.assert_close(b["x_tilde"], torch.tensor([1.0, -0.5], dtype=torch.float64).expand(32, 2))
    a, s = path.alpha(b["t"])[:, None], path.sigma(b["t"])[:, None]
    eps = (b["target"] + s * b["x_tilde"]) / a  # v = α ε - σ x  =>  ε = (v + σ x) / α
    torch.testing.assert_close(a * b["x_tilde"] + s * eps, b["z"], rtol=1e-9, atol=1e-9)


def test_pd_sample_eps_matches_solvers_ddim():
    path = VPPath()
    c = torch.tensor([0.7, -0.3], dtype=torch.float64)
    model = GaussEps(c, 0.4, path)
    z = torch.randn(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = pd_sample(model, path, z, 6, parameterization="eps")
    ref = ddim_sample(lambda x, t: model(x, t), z, path.alpha_bar, path.default_time_grid(6)).x
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_schedule_and_config_validation():
    assert validate_schedule([16, 8, 4, 2, 1]) == (16, 8, 4, 2, 1)
    with pytest.raises(ValueError, match="halve"):
        validate_schedule((16, 4, 1))
    with pytest.raises(ValueError, match="at least 2"):
        validate_schedule((4,))
    with pytest.raises(ValueError, match="parameterization"):
        ProgressiveConfig(parameterization="score")
    with pytest.raises(ValueError, match="steps_per_round"):
        ProgressiveConfig(schedule=(4, 2, 1), steps_per_round=(5,))
    with pytest.raises(ValueError, match="path must be a VPPath"):
        ProgressiveDistiller(MLP(dim=2, hidden=8, depth=1), object(), torch.zeros(4, 2))


# ------------------------------------------------------------------------------------------------
# training


def test_student_on_gaussian_data_approaches_two_step_teacher():
    """After a few hundred steps the 1-step student is closer to the 2-step teacher than at init."""
    torch.manual_seed(0)
    path = VPPath(beta_max=8.0)  # alpha(T) = 0.13: a well-conditioned ε-parameterised single step
    m, s = torch.tensor([1.0, -0.5], dtype=torch.float64), 0.5
    data = m + s * torch.randn(1024, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    teacher = GaussEps(m, s, path)
    cfg = ProgressiveConfig(schedule=(2, 1), steps_per_round=300, batch_size=256, lr=3e-3, ema_decay=0.9,
                            parameterization="eps", base_parameterization="eps", p_uncond=0.0, seed=0,
                            clip_x=None)
    pd = ProgressiveDistiller(teacher, path, data, config=cfg)
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    two_step = pd.sample(0, z)
    init_err = (pd_sample(teacher, path, z, 1, "eps") - two_step).pow(2).mean()
    hist = pd.run(progress=False)
    trained_err = (pd.sample(1, z) - two_step).pow(2).mean()
    assert hist[0]["final_loss"] < hist[0]["losses"][0]
    assert init_err > 1e-3  # one teacher step differs from two
    assert trained_err < 0.05 * init_err, (float(init_err), float(trained_err))


def _tiny_vp_model():
    torch.manual_seed(5)
    return MLP(dim=2, hidden=16, depth=2, num_classes=3).double()


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    path = VPPath()
    g = torch.Generator().manual_seed(0)
    data = torch.randn(64, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (64,), generator=g)
    cfg = ProgressiveConfig(schedule=(4, 2, 1), steps_per_round=6, batch_size=16, lr=1e-3, guidance_scale=1.5,
                            checkpoint_every=2, ema_decay=0.5, seed=3)
    ref = ProgressiveDistiller(_tiny_vp_model(), path, data, labels, cfg, out_dir=tmp_path / "ref")
    ref.run(progress=False)

    class Stop(Exception):
        pass

    def stop(info):
        if info["round"] == 2 and info["step"] == 5:
            raise Stop

    out = tmp_path / "cut"
    first = ProgressiveDistiller(_tiny_vp_model(), path, data, labels, cfg, out_dir=out)
    with pytest.raises(Stop):
        first.run(progress=False, callback=stop)
    second = ProgressiveDistiller(_tiny_vp_model(), path, data, labels, cfg, out_dir=out)
    second.run(resume=True, progress=False)
    assert len(second.students) == 2
    for a, b in zip(ref.students, second.students):
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb
            torch.testing.assert_close(va, vb, rtol=0, atol=0)
    assert [h["final_loss"] for h in ref.history] == [h["final_loss"] for h in second.history]
    # a changed config refuses to resume
    bad = ProgressiveDistiller(_tiny_vp_model(), path, data, labels,
                               ProgressiveConfig(**{**cfg.to_dict(), "lr": 2e-3}), out_dir=out)
    with pytest.raises(ValueError, match="lr"):
        bad.run(resume=True, progress=False)
    assert ref.nfe(0) == (4, 8) and ref.nfe(2) == (1, 1)
    assert math.isfinite(float(second.sample(2, torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 2])).sum()))


def test_p_uncond_defaults_to_zero_and_0_1_stays_reachable():
    """The students are sampled with labels: by default no training row gets the null label."""
    path = VPPath()
    g = torch.Generator().manual_seed(0)
    data = torch.randn(512, 2, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (512,), generator=g)
    assert ProgressiveConfig().p_uncond == 0.0
    cfg = ProgressiveConfig(schedule=(4, 2), batch_size=512)
    b = ProgressiveDistiller(_tiny_vp_model(), path, data, labels, cfg).make_batch(1, torch.Generator().manual_seed(1))
    assert b["y"].shape == (512,) and not (b["y"] == 3).any()
    old = ProgressiveDistiller(_tiny_vp_model(), path, data, labels, ProgressiveConfig(schedule=(4, 2), batch_size=512,
                                                                                      p_uncond=0.1))
    frac = (old.make_batch(1, torch.Generator().manual_seed(1))["y"] == 3).double().mean().item()
    assert 0.05 < frac < 0.15
