"""VP v-prediction (Salimans & Ho 2022): the target ``v = α ε - σ x0``, the ``VToEps`` adapter
(``ε = σ x_t + α v``), ``TrainConfig.vp_prediction``, checkpoints and samplers, the pipeline's VP
baseline, ``--vp-prediction`` and the teacher study's ``vp``/``vp_v`` rows."""
import argparse
import copy
import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kacnum.core import cli
from kacnum.flows.losses import EpsilonLoss, VToEps, binned_loss, vp_v_target
from kacnum.images.models import make_model
from kacnum.flows.paths import GaussianPath, VPPath
from kacnum.images.pipeline import baselines_stage, sample_ddim_set
from kacnum.students.progressive import ProgressiveConfig, pd_sample
from kacnum.images.train import TrainConfig, Trainer, load_teacher, make_loss, sample_images, with_path, wrap_prediction

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import teacher_study  # noqa: E402

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _scales64(path: VPPath, t: torch.Tensor):
    """α, σ from the schedule written out in float64 (independent of VPPath.alpha/sigma)."""
    u = t.double() / path.T
    b = path.beta_min * u + 0.5 * (path.beta_max - path.beta_min) * u * u
    return torch.exp(-0.5 * b), torch.sqrt(1.0 - torch.exp(-b))


class _Fixed(nn.Module):
    """An oracle: returns a fixed tensor (the exact v of known x0 and ε), whatever it is asked."""

    null_label = 2
    num_classes = 2

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, t, y=None):
        return self.out


# ------------------------------------------------------------------------------------------------
# the target and the adapter


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_v_target_and_adapter_identities(dtype, tol):
    path = VPPath()
    b = 64
    x0 = (torch.rand(b, 1, 4, 4, generator=_gen(0), dtype=F64) * 2 - 1).to(dtype)
    # both ends: t -> 0 (α -> 1, σ -> 0) and t = T (α ≈ 0.0066), and random times between
    t = torch.cat([torch.tensor([path.t_eps, 1e-3, 0.999, path.T], dtype=F64),
                   path.t_eps + (path.T - path.t_eps) * torch.rand(b - 4, generator=_gen(1), dtype=F64)]).to(dtype)
    s = path.sample(x0, t, _gen(2))
    eps = s.noise
    a64, s64 = _scales64(path, t)
    a64, s64 = a64.reshape(b, 1, 1, 1), s64.reshape(b, 1, 1, 1)
    v_true = (a64 * eps.double() - s64 * x0.double())
    # the loss's target is α ε - σ x0 (a wrong sign or a swapped α/σ breaks this)
    target = EpsilonLoss(path, p_uncond=0.0, prediction="v")._target(s)
    assert target.dtype == dtype
    assert torch.allclose(target.double(), v_true, atol=tol, rtol=0)
    assert torch.allclose(vp_v_target(path, x0, eps, t).double(), v_true, atol=tol, rtol=0)
    # the ε loss still regresses ε
    assert torch.equal(EpsilonLoss(path, p_uncond=0.0)._target(s), eps)
    # the adapter on an oracle v-network returns ε, and its data prediction x0
    model = VToEps(_Fixed(v_true.to(dtype)), path)
    out = model(s.x_t, t, None)
    assert out.dtype == dtype and out.shape == x0.shape
    assert torch.allclose(out.double(), eps.double(), atol=tol, rtol=0)
    assert torch.allclose(model.x0(s.x_t, t).double(), x0.double(), atol=tol, rtol=0)
    # one time for the whole batch (a float or a 0-dim tensor), as the samplers may call it
    one = VToEps(_Fixed(v_true[:3].to(dtype)), path)
    ref = one(s.x_t[:3], t[3].expand(3), None)
    assert torch.allclose(one(s.x_t[:3], float(t[3]), None), ref) and torch.allclose(one(s.x_t[:3], t[3], None), ref)


def test_v_loss_is_zero_for_the_oracle_and_not_for_eps():
    path = VPPath()
    x0 = torch.rand(32, 1, 4, 4, generator=_gen(3), dtype=F64) * 2 - 1
    t = path.t_eps + (path.T - path.t_eps) * torch.rand(32, generator=_gen(4), dtype=F64)
    s = path.sample(x0, t, _gen(5))  # the loss with t given draws the path noise first: the same ε
    a, sg = _scales64(path, t)
    v = a.reshape(-1, 1, 1, 1) * s.noise - sg.reshape(-1, 1, 1, 1) * x0
    oracle = _Fixed(v)
    out = EpsilonLoss(path, p_uncond=0.0, prediction="v")(oracle, x0, generator=_gen(5), t=t)
    assert torch.equal(out["sample"].noise, s.noise)
    assert out["per_sample"].max().item() < 1e-20
    eps_out = EpsilonLoss(path, p_uncond=0.0)(oracle, x0, generator=_gen(5), t=t)
    assert eps_out["loss"].item() > 0.1
    # the ε-oracle wrapped as if it were a v-net is wrong: the conversion is not the identity
    assert not torch.allclose(VToEps(_Fixed(s.noise), path)(s.x_t, t), s.noise, atol=1e-3)
    assert "prediction='v'" in repr(EpsilonLoss(path, prediction="v")) and "prediction" not in repr(EpsilonLoss(path))


def test_adapter_forwards_the_network_attributes():
    net = make_model("tiny")
    model = VToEps(net, VPPath())
    assert model.config is net.config and model.num_classes == net.num_classes == 3
    assert model.null_label == net.null_label
    model.check_inputs = False
    assert net.check_inputs is False and model.check_inputs is False
    assert list(model.parameters()) == list(net.parameters())  # no parameters of its own
    assert set(model.state_dict()) == {f"net.{k}" for k in net.state_dict()}
    assert not hasattr(model, "no_such_attribute")
    clone = copy.deepcopy(model)  # progressive distillation copies its teacher
    assert isinstance(clone, VToEps) and clone.net is not net and clone.num_classes == 3
    with pytest.raises(ValueError, match="VPPath"):
        VToEps(net, GaussianPath())
    with pytest.raises(ValueError, match="already"):
        VToEps(model, VPPath())


def test_pd_reads_the_wrapped_model_as_the_raw_v_model():
    """DDIM through the ε adapter (base 'eps') = DDIM of the raw network read as 'v' (x̂ = α z - σ v)."""

    class Lin(nn.Module):
        def forward(self, x, t, y=None):
            return 0.3 * x - 0.2 * t.reshape(-1, 1, 1, 1) + 0.05

    path = VPPath()
    z = torch.randn(5, 1, 4, 4, generator=_gen(6), dtype=F64)
    raw = Lin()
    a = pd_sample(VToEps(raw, path), path, z, 4, parameterization="eps")
    b = pd_sample(raw, path, z, 4, parameterization="v")
    assert torch.allclose(a, b, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(pd_sample(raw, path, z, 4, parameterization="eps"), b, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# configuration


def test_train_config_vp_prediction_validation_and_round_trip():
    with pytest.raises(ValueError, match=r"vp_prediction must be one of \('eps', 'v'\), got 'x'"):
        TrainConfig(path="vp", vp_prediction="x")
    for p in ("kac", "gaussian", "flight"):
        with pytest.raises(ValueError, match=f"vp_prediction 'v' needs path 'vp'.*got path '{p}'"):
            TrainConfig(path=p, vp_prediction="v")
    cfg = TrainConfig(path="vp", vp_prediction="v")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["vp_prediction"] == "v"
    old = TrainConfig(path="vp").to_dict()
    del old["vp_prediction"]  # a config written before the field existed
    assert TrainConfig.from_dict(old).vp_prediction == "eps"
    # baselines of a Kac teacher: the VP one takes the prediction, the others are reset to eps
    kac = TrainConfig()
    assert with_path(kac, "vp", "v").vp_prediction == "v" and with_path(kac, "vp").vp_prediction == "eps"
    assert with_path(cfg, "gaussian").vp_prediction == "eps" and with_path(cfg, "vp").vp_prediction == "v"
    with pytest.raises(ValueError, match="needs path 'vp'"):
        with_path(kac, "gaussian", "v")
    # the loss
    loss = make_loss(cfg, VPPath(), None)
    assert isinstance(loss, EpsilonLoss) and loss.prediction == "v" and loss.target_name == "v"
    assert make_loss(TrainConfig(path="vp"), VPPath(), None).prediction == "eps"
    with pytest.raises(ValueError, match="prediction must be one of"):
        EpsilonLoss(VPPath(), prediction="x0")
    with pytest.raises(ValueError, match="needs a VPPath"):
        EpsilonLoss(GaussianPath(), prediction="v")
    with pytest.raises(ValueError, match="prediction must be one of"):
        binned_loss(lambda x, t, y: x, VPPath(), torch.zeros(2, 1, 2, 2), prediction="x")
    with pytest.raises(ValueError, match="needs a VPPath"):
        binned_loss(lambda x, t, y: x, GaussianPath(), torch.zeros(2, 1, 2, 2), prediction="v")


# ------------------------------------------------------------------------------------------------
# training, checkpoint, load_teacher, samplers


def _tiny(**kw):
    base = dict(model="tiny", dataset="synthetic", synthetic_size=64, batch_size=16, total_steps=3, lr=3e-3,
                checkpoint_every=0, sample_every=0, num_samples=3, sample_steps=2, log_every=1, ema_decay=0.5,
                path="vp", vp_prediction="v")
    return TrainConfig(**{**base, **kw})


def test_trainer_checkpoint_load_teacher_and_ddim(tmp_path):
    cfg = _tiny()
    tr = Trainer(cfg, tmp_path / "run", device="cpu")
    try:
        summary = tr.fit(progress=False)
    finally:
        tr.close()
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    assert "prediction='v'" in repr(tr.loss_fn)
    assert (tmp_path / "run" / "samples_000003.png").is_file()  # Trainer.sample through the adapter
    got = tr.sample(n=3, steps=2, seed=5)["images"]
    want = sample_images(VToEps(tr.ema.model, tr.path), tr.path, 3, guidance_scale=cfg.guidance_scale, steps=2,
                         method=cfg.sample_method, seed=5, device="cpu", eps_model=True)["images"]
    assert torch.equal(got, want)
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    raw_keys = set(make_model("tiny").state_dict())
    assert set(ck["model"]) == raw_keys and set(ck["ema"]["model"]) == raw_keys  # the raw network is saved
    assert ck["config"]["vp_prediction"] == "v"
    model, path, loaded = load_teacher(tmp_path / "run" / "checkpoint.pt", device="cpu")
    assert isinstance(model, VToEps) and isinstance(path, VPPath) and loaded.vp_prediction == "v"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(4, 1, 8, 8, generator=_gen(7))
    t, y = torch.tensor([1e-3, 0.3, 0.7, 1.0]), torch.tensor([0, 1, 2, 0])
    v_raw = tr.ema.model.eval()(x, t, y)
    assert v_raw.abs().max() > 0
    a, s = _scales64(path, t)
    want = (s.reshape(-1, 1, 1, 1) * x.double() + a.reshape(-1, 1, 1, 1) * v_raw.double()).float()
    assert torch.allclose(model(x, t, y), want, atol=1e-5, rtol=1e-5)
    assert torch.allclose(model.net(x, t, y), v_raw)
    # the samplers take it as an ε-model
    sset = sample_ddim_set(model, path, num_samples=6, steps=3, guidance=1.5, seed=0, batch_size=6, device="cpu")
    assert sset.images.shape == (6, 1, 8, 8) and torch.isfinite(sset.images).all() and sset.nfe == 3
    u = path.velocity_field(VToEps(_Fixed(torch.zeros(2, 1, 8, 8)), path))(torch.ones(2, 1, 8, 8),
                                                                          torch.full((2,), 0.5))
    assert torch.isfinite(u).all()
    assert wrap_prediction(model, loaded, path) is model  # not wrapped twice
    assert wrap_prediction(tr.ema.model, TrainConfig(path="vp"), path) is tr.ema.model
    # an eps run over this folder is refused on resumption: the configs differ
    with pytest.raises(ValueError, match="vp_prediction"):
        Trainer(_tiny(vp_prediction="eps"), tmp_path / "run", device="cpu").load_checkpoint()


def test_baselines_stage_vp_v(tmp_path):
    train = _tiny(path="kac", vp_prediction="eps", total_steps=2)  # a Kac teacher's config
    pd = ProgressiveConfig(schedule=(2, 1), steps_per_round=1, batch_size=8)
    res = baselines_stage(train, tmp_path, data=None, nfe_list=(2,), num_samples=4, sample_batch=4, kinds=("vp",),
                          pd_config=pd, device="cpu", progress=False, vp_prediction="v")
    ck = torch.load(tmp_path / "vp" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck["config"]["path"] == "vp" and ck["config"]["vp_prediction"] == "v"
    ddim = [r for r in res["samples"] if r["method"] == "vp_ddim"]
    assert len(ddim) == 1 and ddim[0]["meta"]["prediction"] == "v"
    pdr = [r for r in res["samples"] if r["method"] == "vp_pd"]
    assert pdr and pdr[0]["meta"]["pd_config"]["base_parameterization"] == "v"


# ------------------------------------------------------------------------------------------------
# command line and the teacher study


def test_cifar_distill_vp_prediction_flag(cd, capsys, tmp_path):
    args = cd.parse_args(["--preset", "smoke", "--vp-prediction", "v"])
    train = cd.build_train_config(args)
    assert train.vp_prediction == "eps"  # the Kac teacher's own
    assert cd.build_pipeline_config(args, train).vp_prediction == "v"
    args = cd.parse_args(["--preset", "smoke"])  # the default: v (it fixed the baseline, README)
    assert cd.build_pipeline_config(args, cd.build_train_config(args)).vp_prediction == "v"
    args = cd.parse_args(["--preset", "smoke", "--vp-prediction", "eps"])
    assert cd.build_pipeline_config(args, cd.build_train_config(args)).vp_prediction == "eps"
    with pytest.raises(SystemExit):
        cd.parse_args(["--vp-prediction", "x0"])
    assert "--vp-prediction: invalid choice: 'x0'" in capsys.readouterr().err
    for extra in (["--no-baselines"], ["--baseline-kinds", "fm"]):
        with pytest.raises(cli.UsageError, match="--vp-prediction sets"):
            cd.validate(cd.parse_args(["--vp-prediction", "v", "--out", str(tmp_path / "o")] + extra))


def test_teacher_study_vp_rows(tmp_path):
    assert "vp" not in teacher_study.DEFAULT_ROWS and "vp_v" not in teacher_study.DEFAULT_ROWS
    args = teacher_study.parse_args(["--rows", "vp,vp_v", "--dataset", "digits", "--steps", "5"])
    assert args.rows == ("vp", "vp_v") or list(args.rows) == ["vp", "vp_v"]
    eps_cfg, v_cfg = (teacher_study.train_config(args, r) for r in args.rows)
    assert (eps_cfg.path, eps_cfg.vp_prediction, v_cfg.path, v_cfg.vp_prediction) == ("vp", "eps", "vp", "v")
    assert all(teacher_study.ROWS[r].sampler == "ddim" and teacher_study.ROWS[r].fm for r in args.rows)
    assert "v-prediction (DDIM; loss vs v)" in teacher_study._options(v_cfg.to_dict())
    assert "eps-prediction" in teacher_study._options(eps_cfg.to_dict())
    est = teacher_study.estimate_seconds(teacher_study.TIMING_DIGITS, ["vp_v", "kac"], 10, 10, 100, 20, 10)
    assert est["per_row_s"]["vp_v"] > est["per_row_s"]["kac"]  # two sample sets (100 and 20 steps)
    # the DDIM branch of the per-row sampler, on an untrained wrapped network
    torch.manual_seed(0)
    model = VToEps(make_model("tiny").eval(), VPPath())
    ns = argparse.Namespace(num_samples=4, guidance=1.2, sample_seed=1, resume=False)
    rec, _ = teacher_study._sample_set(model, VPPath(), ns, 3, tmp_path / "nfe003.samples.pt", "cpu",
                                       sampler="ddim", prediction="v")
    assert rec["meta"]["solver"] == "ddim" and rec["meta"]["prediction"] == "v" and rec["nfe"] == 3
    assert rec["images"].shape == (4, 1, 8, 8) and torch.isfinite(rec["images"]).all()


def test_with_path_keeps_other_fields():
    cfg = _tiny(path="kac", vp_prediction="eps", data_sigma=0.1, precond="in")
    vp = with_path(cfg, "vp", "v")
    assert dataclasses.replace(vp, path="kac", vp_prediction="eps") == cfg


def test_results_label_names_the_vp_prediction():
    """results.md must not call a v-prediction VP model an ε-prediction one (the label reads the set's meta)."""
    from kacnum.images.pipeline import METHODS, method_label
    assert method_label("vp_ddim", {"prediction": "v"}) == "VP diffusion (v-prediction), DDIM"
    assert method_label("vp_ddim", {}) == "VP diffusion (ε-prediction), DDIM"  # sets of earlier runs
    assert "v-prediction teacher" in method_label("vp_pd", {"pd_config": {"base_parameterization": "v"}})
    assert "ε-prediction teacher" in method_label("vp_pd", {"pd_config": {"base_parameterization": "eps"}})
    assert method_label("distillkac", {"prediction": "v"}) == METHODS["distillkac"]
    assert method_label("my_method") == "my_method"
