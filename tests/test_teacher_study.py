"""Teacher-training options: data smoothing, time densities, loss weighting, preconditioning,
the per-bin held-out loss, and experiments/teacher_study.py --quick end to end."""
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kacnum.core import cli
from kacnum.flows.losses import (DEFAULT_T_BINS, EpsilonLoss, FlowMatchingLoss, Preconditioned, TimeSampler,
                           binned_loss, kac_velocity_second_moment, loss_weight, marginal_std, path_from_spec,
                           path_spec, target_std)
from kacnum.images.models import make_model
from kacnum.flows.paths import GaussianPath, KacPath, VPPath
from kacnum.images.train import TrainConfig, Trainer, load_teacher, with_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import teacher_study  # noqa: E402

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Probe:
    """Records what the loss gives the model; predicts zeros."""

    null_label = 3

    def __call__(self, x, t, y):
        self.x, self.t, self.y = x, t, y
        return torch.zeros_like(x)


# ------------------------------------------------------------------------------------------------
# data smoothing


def test_data_sigma_noise_statistics_and_draw_order():
    sigma = 0.2
    x0 = torch.rand(4096, 16, generator=_gen(0), dtype=F64) * 2 - 1
    probe = Probe()
    zero_t = torch.zeros(4096, dtype=F64)
    FlowMatchingLoss(KacPath(), p_uncond=0.0, data_sigma=sigma)(probe, x0, generator=_gen(1), t=zero_t)
    noise = probe.x - x0  # at t = 0: K_0 = 0 and f = 1, so x_t = x0 + sigma eps
    n = noise.numel()
    assert abs(noise.mean().item()) < 4 * sigma / math.sqrt(n)
    assert noise.std().item() == pytest.approx(sigma, rel=0.015)
    kurt = ((noise / noise.std()) ** 4).mean().item()
    assert kurt == pytest.approx(3.0, abs=0.15)  # Gaussian
    # the draws: (t given) the smoothing noise first, then the path noise; the target follows x0 + sigma eps
    path = KacPath(a=25.0, c=2.0)
    t = torch.rand(4096, generator=_gen(2), dtype=F64)
    out = FlowMatchingLoss(path, p_uncond=0.0, data_sigma=sigma)(probe, x0, generator=_gen(3), t=t)
    g = _gen(3)
    xs = x0 + sigma * torch.randn(x0.shape, generator=g, dtype=F64)
    ps = path.sample(xs, t, g)
    assert torch.equal(out["sample"].x_t, ps.x_t) and torch.equal(out["sample"].u_t, ps.u_t)
    # Gaussian path: Var x_t = (1-t)^2 (Var x0 + sigma^2) + t^2 for x0 = 0
    FlowMatchingLoss(GaussianPath(), p_uncond=0.0, data_sigma=0.5)(probe, torch.zeros(4096, 16, dtype=F64),
                                                                   generator=_gen(4), t=torch.full((4096,), 0.3, dtype=F64))
    assert probe.x.std().item() == pytest.approx(math.sqrt(0.49 * 0.25 + 0.09), rel=0.015)


def test_defaults_are_the_plain_loss_bit_for_bit():
    path = KacPath()
    x0 = torch.randn(64, 2, 4, 4, generator=_gen(5))
    y = torch.randint(0, 3, (64,), generator=_gen(6))
    model = lambda x, t, yy: 0.3 * x + t[:, None, None, None]  # noqa: E731
    plain = FlowMatchingLoss(path, p_uncond=0.2, null_label=3)(model, x0, y, generator=_gen(7))
    g = _gen(7)  # the draws of the plain loss (no smoothing, uniform t): t, path noise, dropout
    t = path.sample_time(64, g, dtype=x0.dtype)
    s = path.sample(x0, t, g)
    drop = torch.rand(64, generator=g) < 0.2
    per = ((0.3 * s.x_t + t[:, None, None, None] - s.u_t) ** 2).reshape(64, -1).mean(1)
    assert torch.equal(plain["per_sample"], per) and plain["loss"].item() == per.mean().item()
    assert torch.equal(plain["dropped"], drop) and plain["weight"] is None
    same = FlowMatchingLoss(path, p_uncond=0.2, null_label=3, data_sigma=0.0, time_sampling="uniform",
                            weighting="none")(model, x0, y, generator=_gen(7))
    assert torch.equal(same["loss"], plain["loss"])
    # any option changes the loss
    for kw in ({"data_sigma": 0.05}, {"time_sampling": "power:2"}, {"weighting": "atom"}):
        other = FlowMatchingLoss(path, p_uncond=0.2, null_label=3, **kw)(model, x0, y, generator=_gen(7))
        assert other["loss"].item() != plain["loss"].item(), kw


# ------------------------------------------------------------------------------------------------
# time densities


def _closed_cdf(spec, x):
    kind, params = TimeSampler.parse(spec)
    if kind == "power":
        return x ** params[0]
    m, s = params
    return statistics.NormalDist(m, s).cdf(math.log(x / (1 - x)))


def _closed_quantile(spec, q):
    kind, params = TimeSampler.parse(spec)
    if kind == "power":
        return q ** (1.0 / params[0])
    m, s = params
    return 1.0 / (1.0 + math.exp(-statistics.NormalDist(m, s).inv_cdf(q)))


@pytest.mark.parametrize("spec", ["power:2", "power:0.5", "logit_normal:0,1", "logit_normal:-0.5,0.7"])
def test_time_densities_against_closed_forms(spec):
    sampler = TimeSampler(spec)
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    for q in qs:  # the quantile function itself
        assert sampler.quantile(torch.tensor(q, dtype=F64)).item() == pytest.approx(_closed_quantile(spec, q), rel=1e-9)
    n = 200_000
    T = 2.0
    t = sampler.sample(KacPath(T=T), n, _gen(8), dtype=F64)
    assert t.shape == (n,) and t.min() >= 0 and t.max() <= T
    tau = torch.sort(t / T).values
    # empirical quantiles within 4 standard errors (se = sqrt(q(1-q)/n) / density)
    for q in qs:
        xq = _closed_quantile(spec, q)
        h = 1e-4
        dens = (_closed_cdf(spec, min(xq + h, 1 - 1e-12)) - _closed_cdf(spec, max(xq - h, 1e-12))) / (2 * h)
        se = math.sqrt(q * (1 - q) / n) / dens
        assert abs(tau[int(q * n)].item() - xq) < 4 * se + 1e-6, (q, tau[int(q * n)].item(), xq)
    # Kolmogorov-Smirnov distance against the closed-form CDF (99.9 %: 1.95 / sqrt(n))
    grid = torch.linspace(0.001, 0.999, 400, dtype=F64)
    emp = torch.searchsorted(tau, grid).double() / n
    ks = max(abs(emp[i].item() - _closed_cdf(spec, grid[i].item())) for i in range(len(grid)))
    assert ks < 1.95 / math.sqrt(n)
    assert torch.allclose(sampler.cdf(grid), torch.tensor([_closed_cdf(spec, g.item()) for g in grid], dtype=F64),
                          atol=1e-12)


def test_time_density_parameterisation_and_errors():
    n = 100_000
    path = KacPath()
    small = {s: (TimeSampler(s).sample(path, n, _gen(9), dtype=F64) < 0.1).double().mean().item()
             for s in ("uniform", "power:2", "power:0.5")}
    assert small["uniform"] == pytest.approx(0.1, abs=0.005)
    assert small["power:2"] == pytest.approx(0.01, abs=0.002)  # k > 1: fewer small t
    assert small["power:0.5"] == pytest.approx(math.sqrt(0.1), abs=0.006)  # k < 1: more
    # uniform is path.sample_time itself (bit for bit); t_eps is respected
    assert torch.equal(TimeSampler("uniform").sample(path, 50, _gen(10)), path.sample_time(50, _gen(10)))
    vp = VPPath()
    assert TimeSampler("logit_normal:-3,2").sample(vp, 10_000, _gen(11)).min().item() >= vp.t_eps
    assert TimeSampler(" Logit_Normal:0,1 ").spec == "logit_normal:0,1" and TimeSampler("power:2.0").spec == "power:2"
    for bad in ("power:0", "power:-1", "power", "logit_normal:0,0", "logit_normal:1", "beta:1", "", "uniform:2"):
        with pytest.raises(ValueError, match="time_sampling must be"):
            TimeSampler(bad)
    with pytest.raises(ValueError, match="time_sampling must be"):
        TrainConfig(time_sampling="power:x")


# ------------------------------------------------------------------------------------------------
# weighting


def test_atom_weighting_values():
    path = KacPath(a=9.0)
    t = torch.tensor([0.0, 0.02, 0.1, 0.5, 1.0], dtype=F64)
    z = 1 - (1 - math.exp(-9.0)) / 9.0  # E_t[1 - e^{-9t}], t ~ U[0, 1)
    want = (1 - torch.exp(-9.0 * t)) / z
    assert torch.allclose(loss_weight(path, t, "atom"), want, rtol=1e-7)
    assert loss_weight(path, t, "atom")[1].item() / loss_weight(path, t, "atom")[3].item() == \
        pytest.approx((1 - math.exp(-0.18)) / (1 - math.exp(-4.5)), rel=1e-9)
    # g = t^2: Z = 1 - sqrt(pi) erf(3) / 6
    p2 = KacPath(a=9.0, g="t2")
    z2 = 1 - math.sqrt(math.pi) * math.erf(3.0) / 6.0
    assert torch.allclose(loss_weight(p2, t, "atom"), (1 - torch.exp(-9.0 * t * t)) / z2, rtol=1e-7)
    # mean 1 under the sampler's own density
    sampler = TimeSampler("logit_normal:0,1")
    ts = sampler.sample(path, 200_000, _gen(12), dtype=F64)
    assert loss_weight(path, ts, "atom", sampler).mean().item() == pytest.approx(1.0, abs=0.005)
    assert torch.equal(loss_weight(GaussianPath(), t, "none"), torch.ones_like(t))
    # the loss is the weighted mean of the unweighted per-sample errors
    x0 = torch.randn(256, 8, generator=_gen(13), dtype=F64)
    model = lambda x, tt, y: 0.5 * x  # noqa: E731
    out = FlowMatchingLoss(path, p_uncond=0.0, weighting="atom")(model, x0, generator=_gen(14))
    s = out["sample"]
    per = ((0.5 * s.x_t - s.u_t) ** 2).mean(1)
    assert torch.allclose(out["per_sample"], per, rtol=1e-13)
    assert torch.allclose(out["weight"], loss_weight(path, s.t, "atom"), rtol=1e-12)
    assert out["loss"].item() == pytest.approx((per * out["weight"]).mean().item(), rel=1e-12)


def test_atom_weighting_needs_a_kac_path():
    with pytest.raises(ValueError, match="needs a KacPath"):
        FlowMatchingLoss(GaussianPath(), weighting="atom")
    with pytest.raises(ValueError, match="weighting must be one of"):
        FlowMatchingLoss(KacPath(), weighting="snr")
    with pytest.raises(ValueError, match="needs path 'kac'"):
        TrainConfig(path="gaussian", loss_weighting="atom")
    cfg = TrainConfig(loss_weighting="atom", data_sigma=0.1, time_sampling="power:2", precond="in")
    fm = with_path(cfg, "gaussian")  # the baselines keep the recipe but not the atom weighting
    assert (fm.path, fm.loss_weighting, fm.data_sigma, fm.time_sampling, fm.precond) == \
        ("gaussian", "none", 0.1, "power:2", "in")
    with pytest.raises(ValueError, match="data_sigma"):
        FlowMatchingLoss(KacPath(), data_sigma=-0.1)
    with pytest.raises(ValueError, match="precond must be one of"):
        TrainConfig(precond="edm")
    with pytest.raises(ValueError, match="precond 'in' needs path"):
        TrainConfig(path="flight", precond="in")


# ------------------------------------------------------------------------------------------------
# preconditioning


@pytest.mark.parametrize("name", ["kac", "kac25_t2", "gaussian", "vp"])
def test_preconditioning_scales_match_monte_carlo(name):
    path = {"kac": KacPath(), "kac25_t2": KacPath(a=25.0, c=2.0, g="t2"), "gaussian": GaussianPath(),
            "vp": VPPath()}[name]
    x0 = 0.3 + 0.5 * torch.randn(2000, 64, generator=_gen(15), dtype=F64)  # non-zero mean
    sd = x0.std().item()
    wrapper = Preconditioned(nn.Identity(), path, sd, "inout")
    for i, tv in enumerate((0.02, 0.3, 0.9)):
        s = path.sample(x0, torch.full((2000,), tv, dtype=F64), _gen(16 + i))
        c_in = wrapper.c_in(torch.tensor([tv], dtype=F64)).item()
        assert c_in * s.x_t.std().item() == pytest.approx(1.0, rel=0.02), (name, tv)
        assert c_in == pytest.approx(1.0 / marginal_std(path, tv, sd).item(), rel=1e-12)
        if not isinstance(path, VPPath):  # the velocity target's spread (VP: the eps target, std 1)
            assert target_std(path, torch.tensor([tv], dtype=F64), sd).item() == \
                pytest.approx(s.u_t.std().item(), rel=0.03), (name, tv)


def test_kac_velocity_second_moment_against_sampling():
    proc = KacPath(a=9.0, c=3.0).process
    m = kac_velocity_second_moment(proc, torch.tensor([0.0, 0.02, 0.3, 1.0], dtype=F64))
    assert m[0].item() == pytest.approx(9.0, rel=1e-12)
    for j, g in enumerate((0.02, 0.3, 1.0)):
        k, atoms = proc.sample(g, (200_000,), _gen(20 + j), return_atoms=True, dtype=F64)
        v2 = proc.velocity(g, k, atoms).pow(2)
        assert m[j + 1].item() == pytest.approx(v2.mean().item(), abs=4 * v2.std().item() / math.sqrt(200_000))


class _Double(nn.Module):
    """Returns 2 x and records its input (a stand-in network with the UNet's attributes)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.num_classes, self.null_label, self.T, self.check_inputs = 5, 5, 1.0, True

    def forward(self, x, t, y=None):
        self.seen = x
        return 2.0 * self.w * x


def test_preconditioned_forward_and_attributes():
    path = KacPath(a=25.0, c=2.0)
    net = _Double()
    model = Preconditioned(net, path, 0.6, "inout")
    x = torch.randn(3, 1, 4, 4, generator=_gen(30), dtype=F64)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    out = model(x, t, None)
    c_in = 1.0 / marginal_std(path, t, 0.6)
    c_out = target_std(path, t, 0.6)
    assert torch.allclose(net.seen, x * c_in[:, None, None, None], rtol=1e-12)
    assert torch.allclose(out, 2.0 * x * (c_in * c_out)[:, None, None, None], rtol=1e-12)
    assert torch.allclose(model(x, 0.3, None), model(x, torch.full((3,), 0.3, dtype=F64), None))
    only_in = Preconditioned(net, path, 0.6, "in")
    assert torch.allclose(only_in(x, t), 2.0 * x * c_in[:, None, None, None], rtol=1e-12)
    assert (model.num_classes, model.null_label, model.T) == (5, 5, 1.0)
    model.check_inputs = False
    assert net.check_inputs is False and model.check_inputs is False
    assert [p for p in model.parameters()] == [net.w]  # no parameters of its own
    with pytest.raises(ValueError, match="mode must be"):
        Preconditioned(net, path, 0.6, "out")


def test_preconditioned_state_dict_round_trip():
    torch.manual_seed(0)
    model = Preconditioned(make_model("tiny"), KacPath(a=25.0, c=2.0, g="t2"), 0.37, "inout")
    for p in model.parameters():  # the output conv is zero-initialised: make the output non-trivial
        p.data.add_(0.01 * torch.randn_like(p))
    other = Preconditioned(make_model("tiny"), GaussianPath(), 1.0, "in")
    other.load_state_dict(model.state_dict())
    assert (other.mode, other.sigma_data, repr(other.path)) == ("inout", 0.37, repr(model.path))
    assert path_from_spec(path_spec(model.path)).__repr__() == repr(model.path)
    x = torch.randn(2, 1, 8, 8, generator=_gen(31))
    t, y = torch.tensor([0.1, 0.8]), torch.tensor([0, 2])
    assert torch.equal(model(x, t, y), other(x, t, y)) and model(x, t, y).abs().sum() > 0
    with pytest.raises(ValueError, match="extra state"):
        other.set_extra_state({"format": "nope"})


def _tiny_config(**kw):
    base = dict(model="tiny", dataset="synthetic", synthetic_size=64, batch_size=16, total_steps=3, lr=1e-3,
                checkpoint_every=0, sample_every=0, num_samples=3, sample_steps=2, log_every=1, ema_decay=0.5)
    return TrainConfig(**{**base, **kw})


def test_preconditioned_teacher_checkpoint_round_trip(tmp_path):
    cfg = _tiny_config(precond="inout", data_sigma=0.1)
    tr = Trainer(cfg, tmp_path / "run", device="cpu")
    try:
        tr.fit(progress=False)
    finally:
        tr.close()
    assert isinstance(tr.model, Preconditioned) and isinstance(tr.ema.model, Preconditioned)
    images = tr.batches.images
    assert tr.model.sigma_data == pytest.approx(math.sqrt(images.std().item() ** 2 + 0.01), rel=1e-6)
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())["resolved"]
    assert resolved["preconditioner"]["sigma_data"] == pytest.approx(tr.model.sigma_data) and \
        resolved["preconditioner"]["mode"] == "inout"
    model, path, loaded_cfg = load_teacher(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert isinstance(model, Preconditioned) and loaded_cfg.precond == "inout"
    assert (model.sigma_data, model.mode, repr(model.path)) == (tr.ema.model.sigma_data, "inout", repr(path))
    x = torch.randn(4, 1, 8, 8, generator=_gen(32))
    t, y = torch.tensor([0.05, 0.3, 0.6, 0.95]), torch.tensor([0, 1, 2, 3])
    assert torch.equal(model(x, t, y), tr.ema.model.eval()(x, t, y))
    # resuming the run with more steps is accepted (same config), and so is an old checkpoint without the fields
    tr2 = Trainer(dataclasses_replace(cfg, total_steps=4), tmp_path / "run", device="cpu")
    try:
        tr2.fit(resume=True, progress=False)
        assert tr2.step == 4
    finally:
        tr2.close()
    plain = Trainer(_tiny_config(), None, device="cpu")
    assert not isinstance(plain.model, Preconditioned)  # the default is today's network, unwrapped
    ck = plain.state_dict()
    for k in ("data_sigma", "time_sampling", "loss_weighting", "precond", "precond_sigma_data"):
        del ck["config"][k]
    Trainer(_tiny_config(), None, device="cpu").load_state_dict(ck)
    ck["config"]["data_sigma"] = 0.2
    with pytest.raises(ValueError, match="data_sigma"):
        Trainer(_tiny_config(), None, device="cpu").load_state_dict(ck)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


# ------------------------------------------------------------------------------------------------
# held-out loss per bin of t


def test_binned_loss_zero_model_and_atoms():
    path = KacPath(a=9.0)
    images = torch.rand(200, 1, 8, 8, generator=_gen(40)) * 2 - 1
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731
    res = binned_loss(zero, path, images, seed=3)
    assert len(res["bins"]) == len(DEFAULT_T_BINS) == 11 and res["n_images"] == 200
    for b, (lo, hi) in zip(res["bins"], DEFAULT_T_BINS):
        assert b["mse"] == pytest.approx(b["target_ms"], rel=1e-6) and b["relative"] == pytest.approx(1.0, rel=1e-6)
        want = (math.exp(-9 * lo) - math.exp(-9 * hi)) / (9 * (hi - lo))  # E[e^{-a t}], t ~ U[lo, hi)
        assert b["atom_fraction"] == pytest.approx(want, abs=0.05), (lo, hi)
    deciles = [b["mse"] for b in res["bins"][1:]]
    assert res["mean"] == pytest.approx(sum(deciles) / 10, rel=1e-12)
    # fixed seed: the same numbers; another seed: others
    assert binned_loss(zero, path, images, seed=3)["bins"] == res["bins"]
    assert binned_loss(zero, path, images, seed=4)["bins"][3]["mse"] != res["bins"][3]["mse"]
    g = binned_loss(zero, GaussianPath(), images, seed=3, bins=((0.0, 0.5), (0.5, 1.0)))
    assert g["bins"][0]["atom_fraction"] is None and len(g["bins"]) == 2
    # atom_fraction counts the Kac draw's atoms: the same with smoothing (which spreads them out in x_t)
    sm = binned_loss(zero, path, images, seed=3, bins=((0.0, 0.05),), data_sigma=0.1)
    assert sm["bins"][0]["atom_fraction"] == pytest.approx(res["bins"][0]["atom_fraction"], abs=0.05)
    with pytest.raises(ValueError, match="bins must be"):
        binned_loss(zero, path, images, bins=((0.5, 0.2),))


def test_binned_loss_on_a_tiny_unet():
    torch.manual_seed(1)
    model = make_model("tiny").train()
    for p in model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    images = torch.rand(24, 1, 8, 8, generator=_gen(41)) * 2 - 1
    labels = torch.arange(24) % 3
    res = binned_loss(model, KacPath(), images, labels, seed=0, batch_size=10)
    assert model.training  # restored
    assert all(math.isfinite(b["mse"]) and b["mse"] > 0 and b["se"] > 0 for b in res["bins"])
    assert res["bins"][0]["mse"] > res["bins"][-1]["mse"]  # the Kac target is largest near t = 0
    vp = binned_loss(model, VPPath(), images, labels, seed=0, bins=((0.0, 1.0),))
    assert vp["bins"][0]["target_ms"] == pytest.approx(1.0, abs=0.05)  # eps target


# ------------------------------------------------------------------------------------------------
# the study script


def test_teacher_study_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "ts"
    argv = ["--quick", "--out", str(out), "--steps", "6", "--num-samples", "20", "--eval-images", "16",
            "--n-boot", "20", "--threads", "1", "--quiet"]
    res = teacher_study.main(argv)
    assert [r["name"] for r in res["rows"]] == ["fm", "kac"]
    for f in ("results.json", "results.md", "teacher_study.png", "config.json", "rows/fm/row.json",
              "rows/kac/row.json", "rows/kac/checkpoint.pt", "rows/fm/nfe010.samples.pt", "rows/fm/nfe004.samples.pt"):
        assert (out / f).is_file(), f
    md = (out / "results.md").read_text()
    assert "| fm | gaussian | 10 |" in md and "| fm | gaussian | 4 |" in md and "| kac | a=9 c=3 g=t | 10 |" in md
    saved = json.loads((out / "results.json").read_text())
    fm, kac = saved["rows"]
    assert [s["nfe"] for s in fm["sets"]] == [10, 4] and [s["nfe"] for s in kac["sets"]] == [10]
    for r in saved["rows"]:
        assert len(r["binned"]["bins"]) == 11 and r["settings"]["train"]["total_steps"] == 6
        for s in r["sets"]:
            assert s["fid_interval"][0] <= s["fid"] <= s["fid_interval"][1] and s["n"] == 20
            assert 0.0 <= s["accuracy"] <= 1.0 and "value" in s["kid"]
    assert kac["binned"]["bins"][0]["atom_fraction"] > 0.5 and fm["binned"]["bins"][0]["atom_fraction"] is None
    assert saved["budget"]["steps"] == 6 and saved["evaluation"]["floor"]["n"] == 20
    # --resume skips the finished rows
    stamp = (out / "rows" / "kac" / "row.json").stat().st_mtime_ns
    again = teacher_study.main(argv + ["--resume"])
    assert (out / "rows" / "kac" / "row.json").stat().st_mtime_ns == stamp
    assert again["rows"][1]["sets"][0]["fid"] == kac["sets"][0]["fid"]
    # scripts/study_run.py lays two rows out as a pipeline run for experiments/distill_sweep.py
    import runpy

    mod = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "study_run.py"))
    run = tmp_path / "run"
    assert mod["main"](["--study", str(out), "--out", str(run), "--samples-nfe", "10"]) == 0
    for f in ("config.json", "teacher/checkpoint.pt", "sample/kac_teacher_nfe100.samples.pt",
              "baselines/fm/checkpoint.pt", "baselines/samples/fm_teacher_nfe100.samples.pt"):
        assert (run / f).is_file(), f
    conf = json.loads((run / "config.json").read_text())
    assert conf["teacher"]["total_steps"] == 6 and conf["pipeline"]["num_samples"] == 20
    assert (run / "teacher" / "checkpoint.pt").read_bytes() == (out / "rows" / "kac" / "checkpoint.pt").read_bytes()
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted(p.name for p in (out / "eval").iterdir())
    with pytest.raises(Exception):
        mod["main"](["--study", str(out), "--out", str(tmp_path / "run2"), "--kac-row", "nope"])


def test_teacher_study_flags(capsys):
    assert cli.run_main(teacher_study.main, ["--rows", "kac,nope"]) == 2
    assert "--rows" in capsys.readouterr().err
    assert cli.run_main(teacher_study.main, ["--rows", "kac,kac"]) == 2
    assert "must not repeat" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        teacher_study.parse_args(["--help"])
    assert "Estimated time of the default MNIST table" in capsys.readouterr().out
    args = teacher_study.parse_args(["--rows", "kac_a25c2,kac_gt2,kac_precond,kac_sigma05", "--steps", "10"])
    cfgs = [teacher_study.train_config(args, r) for r in args.rows]
    assert (cfgs[0].a, cfgs[0].c, cfgs[1].g_schedule, cfgs[2].precond, cfgs[3].data_sigma) == (25.0, 2.0, "t2", "inout", 0.05)
    assert len({(c.total_steps, c.batch_size, c.lr, c.ema_decay, c.seed) for c in cfgs}) == 1  # one budget
