"""Reflow (rectified flow) of a guided teacher on its own couplings, kacnum.students.reflow.

Stand-ins from test_distill (closed form): the linear path, the affine velocity field, the tiny MLP.
Expected values are written out by hand here, not taken from kacnum.students.reflow.
"""
import pytest
import torch

from kacnum.core.checkpoint import load_checkpoint
from kacnum.students.distill import DistillConfig, Distiller
from kacnum.students.reflow import Reflow, ReflowSampler, reflow_config, reflow_loss
from test_distill import NULL, AffineField, LinearPath, TinyNet, _data, _hand_ab2, _rotation, _time_linear_teacher


class _Stop(Exception):
    pass


def _reflow(teacher, k0=8, labels=True, steps=100, **kw):
    x, y = _data()
    cfg = reflow_config(DistillConfig(stages=(k0, 4, 1), batch_size=kw.pop("batch_size", 64), **kw), steps)
    return Reflow(teacher, LinearPath(), x, y if labels else None, cfg, null_label=NULL)


def test_reflow_config_keeps_the_staged_settings_and_fixes_the_rest():
    base = DistillConfig(stages=(100, 20, 4, 2, 1), steps_per_stage=1000, batch_size=64, lr=5e-4,
                         lr_schedule="cosine", source="forward", target="restart", rollout_pool=512,
                         rollout_refresh=800, guidance_scale=1.2, ema_decay=0.99)
    c = reflow_config(base, 4000)
    assert c.stages == (100, 1) and c.steps_per_stage == (4000,)
    assert (c.source, c.target, c.parameterization) == ("rollout", "trajectory", "velocity")
    assert (c.batch_size, c.lr, c.lr_schedule, c.rollout_pool, c.rollout_refresh, c.guidance_scale, c.ema_decay) == \
        (64, 5e-4, "cosine", 512, 800, 1.2, 0.99)
    with pytest.raises(ValueError, match="steps"):
        reflow_config(base, 0)


@pytest.mark.parametrize("bad, words", [(dict(stages=(8, 2)), "stages"), (dict(source="forward"), "source"),
                                        (dict(target="restart"), "target"),
                                        (dict(parameterization="endpoint"), "parameterization")])
def test_a_config_that_is_not_a_reflow_config_is_refused_by_name(bad, words):
    cfg = DistillConfig(**{**dict(stages=(8, 1), source="rollout", target="trajectory"), **bad})
    x, y = _data()
    with pytest.raises(ValueError, match=words):
        Reflow(TinyNet(), LinearPath(), x, y, cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reflow_loss_is_flow_matching_on_the_straight_line(dtype):
    """Against the formula written out: u = 1 - U, t = u (T = 1, t_end = 0), x_t = (1 - t) x̂ + t z,
    target z - x̂ (the generator's draws replayed)."""
    model = AffineField(_rotation(1.5), w1=[[0.2, 0.0], [0.1, -0.3]], b0=[0.3, 0.1]).to(dtype)
    g = torch.Generator().manual_seed(3)
    z = torch.randn(40, 2, generator=g, dtype=dtype)
    xh = torch.randn(40, 2, generator=g, dtype=dtype)
    state = g.get_state()
    out = reflow_loss(model, z, xh, None, 1.0, 0.0, g)
    g.set_state(state)
    t = 1.0 - torch.rand(40, generator=g, dtype=dtype)
    x_t = (1 - t[:, None]) * xh + t[:, None] * z
    want = (model(x_t, t, None) - (z - xh)).pow(2).mean(1)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(out["per_sample"], want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(out["t"], t)
    assert bool((out["t"] > 0).all() and (out["t"] <= 1).all())
    # a horizon T = 2 with t_end = 0.5 rescales the time and the target
    g.set_state(state)
    out2 = reflow_loss(model, z, xh, None, 2.0, 0.5, g)
    g.set_state(state)
    u = 1.0 - torch.rand(40, generator=g, dtype=dtype)
    x_t = xh + u[:, None] * (z - xh)
    want2 = (model(x_t, 0.5 + 1.5 * u, None) - (z - xh) / 1.5).pow(2).mean(1)
    torch.testing.assert_close(out2["per_sample"], want2.detach(), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="x_end"):
        reflow_loss(model, z, xh[:3], None, 1.0, 0.0, g)
    with pytest.raises(ValueError, match="t_end"):
        reflow_loss(model, z, xh, None, 1.0, 1.0, g)


def test_pairs_are_the_teachers_own_guided_solves():
    """A pool row pairs a latent with the image the K0-step guided AB-2 teacher reaches from it."""
    teacher = _time_linear_teacher()
    r = _reflow(teacher, k0=12, guidance_scale=1.5, rollout_pool=30, batch_size=32)
    pool = r.build_pool(1)
    hand = _hand_ab2(teacher, pool.states[0], pool.labels, 1.5, 12)
    assert pool.states.shape == (2, 30, 2)
    torch.testing.assert_close(pool.states[1], hand[-1], rtol=0, atol=1e-13)
    batch = r.make_batch(1, pool)
    assert bool((batch.k == 0).all())
    for i in range(32):
        j = int(((pool.states[0] - batch.x[i]).abs().sum(1) == 0).nonzero()[0])
        torch.testing.assert_close(batch.target[i], hand[-1][j], rtol=0, atol=1e-13)


def test_a_straight_teacher_is_its_own_reflow_and_a_rotation_is_not():
    """A constant field's flow is already straight: the reflow loss of the teacher itself is 0 up to rounding.
    A rotation's is not (the same code must see the difference)."""
    const = AffineField([[0.0, 0.0], [0.0, 0.0]], b0=[0.7, -1.3])
    r = _reflow(const, labels=False, rollout_pool=64)
    batch = r.make_batch(1)
    assert r.training_loss(r.teacher, batch)["loss"].item() < 1e-28
    rot = _reflow(AffineField(_rotation(2.0)), labels=False, rollout_pool=64)
    batch = rot.make_batch(1)
    assert rot.training_loss(rot.teacher, batch)["loss"].item() > 0.05


def test_reflow_straightens_a_rotation_so_one_euler_step_lands_near_the_teacher():
    """Teacher: rotation ω = 1, 8 AB-2 steps. One Euler step of the teacher misses its own endpoint by a lot;
    one Euler step of the reflowed field lands close to it (the coupling is straightened; the affine-in-t
    stand-in cannot hold the exact straight field, a rational function of t, so the gain is finite: 8.7x)."""
    r = _reflow(AffineField(_rotation(1.0)), labels=False, steps=400, lr=2e-2, ema_decay=0.0,
                batch_size=128, rollout_pool=256)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(256, 2, generator=g, dtype=torch.float64)
    end = r.sampler(0)(256, latent=z)

    def miss(field):
        with torch.no_grad():
            one = z - field(z, torch.ones(256, dtype=torch.float64), None)  # one Euler step from t = 1 to 0
        return (one - end).pow(2).mean().item()

    before = miss(r.teacher)
    r.run(progress=False)
    after = miss(r.student(1))
    assert before > 0.2
    assert after < before / 5, (before, after)
    # the sampler is that Euler step (and K steps are K Euler steps)
    s1 = r.sampler(steps=1)
    assert isinstance(s1, ReflowSampler) and s1.nfe == 1
    with torch.no_grad():
        one = z - r.student(1)(z, torch.ones(256, dtype=torch.float64), None)
    torch.testing.assert_close(s1(256, latent=z), one, rtol=0, atol=1e-13)
    s4 = r.sampler(steps=4)
    x = z.clone()
    with torch.no_grad():
        for k in range(4):
            x = x - 0.25 * r.student(1)(x, torch.full((256,), 1 - k / 4, dtype=torch.float64), None)
    assert s4.nfe == 4
    torch.testing.assert_close(s4(256, latent=z), x, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        r.sampler(steps=0)


def test_sampler_before_training_raises():
    r = _reflow(TinyNet())
    with pytest.raises(ValueError, match="run"):
        r.sampler(steps=2)


def test_resume_reaches_the_same_weights_and_keeps_its_own_checkpoint(tmp_path):
    x, y = _data(64)
    base = DistillConfig(stages=(4, 2, 1), batch_size=8, lr=1e-2, rollout_pool=16, rollout_refresh=3,
                         checkpoint_every=2, ema_decay=0.5, guidance_scale=1.5, lr_schedule="cosine")
    cfg = reflow_config(base, 7)
    full = Reflow(TinyNet(), LinearPath(), x, y, cfg, out_dir=tmp_path / "a")
    full.run(progress=False)

    def stop(info):
        if info["step"] == 5:
            raise _Stop

    part = Reflow(TinyNet(), LinearPath(), x, y, cfg, out_dir=tmp_path / "b")
    with pytest.raises(_Stop):
        part.run(progress=False, callback=stop)
    ck = load_checkpoint(tmp_path / "b" / "reflow.ckpt")
    assert ck["format"] == "kacnum.reflow/1" and ck["step"] == 4
    again = Reflow(TinyNet(), LinearPath(), x, y, cfg, out_dir=tmp_path / "b")
    again.run(resume=True, progress=False)
    for (ka, va), (kb, vb) in zip(full.student(1).state_dict().items(), again.student(1).state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    # an endpoint-distillation checkpoint is not a reflow checkpoint
    (tmp_path / "c").mkdir()
    (tmp_path / "b" / "reflow.ckpt").rename(tmp_path / "c" / "distill.ckpt")
    d = Distiller(TinyNet(), LinearPath(), x, y, cfg, out_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="distillation checkpoint"):
        d.run(resume=True, progress=False)
