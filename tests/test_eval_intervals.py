"""The pipeline's eval stage with error bars (kacnum.images.pipeline.eval_stage + kacnum.images.metrics) and the time-grid
option of its samplers, on toy data with an identity feature extractor (fast)."""
import json

import numpy as np
import pytest
import torch

from kacnum.images.metrics import fid_bootstrap, feature_statistics, load_sample_set, frechet_distance
from kacnum.images.models import make_model
from kacnum.flows.paths import GaussianPath, KacPath
from kacnum.images.pipeline import SampleSet, _grid_path, eval_stage, reference_for, sample_flow_set, baselines_stage
from kacnum.flows.solvers import make_time_grid
from kacnum.images.train import TrainConfig

from helpers import IdentityExtractor


def _toy(tmp_path, floor_images=True):
    g = torch.Generator().manual_seed(0)
    ref_imgs = (0.3 * torch.randn(4000, 1, 2, 2, generator=g)).clamp(-1, 1)
    ext = IdentityExtractor()
    ref = reference_for("toy", ext, None, data=ref_imgs)

    def set_(method, nfe, nfe_model, shift):
        imgs = (0.3 * torch.randn(400, 1, 2, 2, generator=g) + shift).clamp(-1, 1)
        return SampleSet(method, nfe, nfe_model, imgs, None, None, {"solver": "x", "steps": nfe})

    sets = [set_("kac_teacher", 100, 200, 0.10), set_("distillkac", 4, 4, 0.12), set_("distillkac", 2, 2, 0.3),
            set_("fm_ab2", 2, 4, 0.2), set_("fm_ab2", 1, 2, 0.25), set_("vp_ddim", 4, 8, 0.5)]
    held = (0.3 * torch.randn(1000, 1, 2, 2, generator=g)).clamp(-1, 1)  # same law as the reference
    floor = {"images": held if floor_images else None, "split": "test", "note": None if floor_images else "none here"}
    res = eval_stage(sets, ref, ext, tmp_path, dataset="toy", n_boot=100, kid_reference=ref_imgs.reshape(4000, 4).numpy(),
                     floor=floor)
    return res, sets, ref, held


def test_rows_carry_intervals_and_kid(tmp_path):
    res, sets, ref, _ = _toy(tmp_path)
    for i, row in enumerate(res["rows"]):
        lo, hi = row["fid_interval"]
        assert lo < row["fid"] < hi and row["fid_std"] > 0
        assert row["kid"]["interval"][0] <= row["kid"]["interval"][1] and row["kid"]["n_subsets"] == 100
        assert row["time_grid"] == "uniform" and row["steps"] == row["nfe"]
    # the row's interval is fid_bootstrap of the set's features with the row's seed (boot_seed + index)
    t = res["rows"][0]
    s = [x for x in sets if x.method == "kac_teacher"][0]
    b = fid_bootstrap(s.images.reshape(400, 4).numpy(), ref, n_boot=100, seed=0)
    assert t["fid_interval"] == pytest.approx([b.lo, b.hi], rel=1e-9)
    # bigger shift, bigger FID and KID
    by = {(r["method"], r["nfe"]): r for r in res["rows"]}
    assert by[("vp_ddim", 4)]["kid"]["value"] > by[("kac_teacher", 100)]["kid"]["value"]


def test_floor_row(tmp_path):
    res, _, ref, held = _toy(tmp_path)
    fl = res["floor"]
    assert fl["method"] == "real_heldout" and fl["n"] == 400 and fl["split"] == "test"  # the generated count
    want = frechet_distance(*(lambda f: (f.mean(0), np.cov(f, rowvar=False)))(held[:400].reshape(400, 4).double().numpy()),
                            ref.mu, ref.sigma)
    assert fl["fid"] == pytest.approx(want, rel=1e-6)
    assert fl["fid_interval"][0] < fl["fid"] < fl["fid_interval"][1]
    assert fl["fid"] < min(r["fid"] for r in res["rows"])  # real images of the same law: the floor
    md = (tmp_path / "results.md").read_text()
    assert "real held-out images (test split): the FID floor" in md and "FID floor (real test-split images, 400" in md
    res2, _, _, _ = _toy(tmp_path / "none", floor_images=False)
    assert res2["floor"]["fid"] is None and res2["floor"]["note"] == "none here"


def test_equal_network_evaluations_first(tmp_path):
    res, _, _, _ = _toy(tmp_path)
    keys = list(res["targets"])
    evals = [k for k in keys if k.endswith("network evaluations")]
    steps = [k for k in keys if " at NFE " in k]
    assert evals and steps and keys.index(evals[-1]) < keys.index(steps[0])
    # 4 evaluations: the 4-step student against FM-AB-2 at 2 steps (a guided step costs 2); 2 evaluations: FM 1 step
    assert "distillkac beats fm_ab2 at 4 network evaluations" in res["targets"]
    assert "distillkac beats fm_ab2 at 2 network evaluations" in res["targets"]
    assert "distillkac beats vp_ddim at 4 network evaluations" not in res["targets"]  # DDIM 4 steps = 8 evals
    assert "distillkac beats vp_ddim at NFE 4" in res["targets"]
    by = {(r["method"], r["nfe"]): r["fid"] for r in res["rows"]}
    assert res["targets"]["distillkac beats fm_ab2 at 4 network evaluations"] == (by[("distillkac", 4)] < by[("fm_ab2", 2)])
    c = [c for c in res["comparisons"] if c["kind"] == "network evaluations" and c["student_nfe"] == 4
         and c["other"] == "fm_ab2"][0]
    assert c["nfe_model"] == [4, 4] and c["fid_ratio"] == pytest.approx(by[("distillkac", 4)] / by[("fm_ab2", 2)])
    lo, hi = c["fid_ratio_interval"]
    assert lo < c["fid_ratio"] < hi and c["decided"] == (hi < 1 or lo > 1)
    md = (tmp_path / "results.md").read_text()
    assert md.index("## NFE (network evaluations)") < md.index("## Every set (equal solver steps)")
    assert "| network evals |" in md and "| 4 |" in md


def test_ratio_intervals_and_interval_vs_n(tmp_path):
    res, _, _, _ = _toy(tmp_path)
    r = res["ratios"]["distillkac_4/teacher"]
    lo, hi = r["interval"]
    assert lo < r["ours"] < hi and r["nfe_model"] == 4 and r["teacher_nfe_model"] == 200
    curve = res["interval_vs_n"]["distillkac_4/teacher"]["curve"]
    assert [p["n"] for p in curve] == [50, 100, 200, 400]
    assert curve[0]["relative_half_width"] > curve[-1]["relative_half_width"]
    need = res["interval_vs_n"]["distillkac_4/teacher"]["n_for_target"]
    assert need["predicted"] >= 2 and need["target"] == 0.05
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["bootstrap"]["n_boot"] == 100 and data["kid_protocol"]["kernel"] == "(x.y/d + 1)^3"


def test_eval_writes_npz_beside_sample_files(tmp_path):
    imgs = torch.rand(30, 1, 2, 2) * 2 - 1
    s = SampleSet("kac_teacher", 100, 200, imgs, torch.arange(30) % 3, 1.2, {"solver": "ab2", "steps": 100, "seed": 5})
    f = s.save(tmp_path / "kac_teacher_nfe100.samples.pt")
    ref = reference_for("toy", IdentityExtractor(), None, data=imgs)
    eval_stage([f], ref, IdentityExtractor(), tmp_path / "eval", n_boot=20, interval_curve=False)
    back = load_sample_set(tmp_path / "kac_teacher_nfe100.npz")
    assert back.meta["method"] == "kac_teacher" and back.meta["nfe_model"] == 200 and back.meta["seed"] == 5
    assert back.meta["time_grid"] == "uniform" and back.meta["guidance"] == 1.2
    assert (back.images() - imgs).abs().max() <= 0.5 / 127.5 + 1e-6
    assert np.array_equal(back.labels, (torch.arange(30) % 3).numpy())


def _tiny_teacher():
    torch.manual_seed(0)
    m = make_model("tiny")
    with torch.no_grad():
        for p in m.conv_out.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def test_time_grid_option_of_the_samplers():
    path = KacPath()
    model = _tiny_teacher()
    kw = dict(num_samples=4, steps=5, solver="euler", guidance=1.0, seed=3, batch_size=4)
    uni = sample_flow_set(model, path, "kac_teacher", **kw)
    pw = sample_flow_set(model, path, "kac_teacher", time_grid="power:2", **kw)
    kac = sample_flow_set(model, path, "kac_teacher", time_grid="kac", **kw)
    assert "time_grid" not in uni.meta  # the uniform default records nothing new: old files still reused
    assert pw.meta["time_grid"] == "power:2" and kac.meta["time_grid"] == "kac"
    assert pw.meta["time_grid_values"] == make_time_grid("power:2", 5, 1.0, 0.0).tolist()
    assert not torch.allclose(uni.images, pw.images) and not torch.allclose(pw.images, kac.images)
    # the wrapped path integrates on the made grid: power:1 is the uniform grid, same samples
    same = sample_flow_set(model, path, "kac_teacher", time_grid="power:1", **kw)
    torch.testing.assert_close(same.images, uni.images, rtol=0, atol=1e-6)
    assert isinstance(_grid_path(path, "kac"), KacPath) and _grid_path(path, "uniform") is path
    with pytest.raises(ValueError, match="time_grid 'kac'"):
        _grid_path(GaussianPath(), "kac")
    with pytest.raises(ValueError, match="time_grid"):
        sample_flow_set(model, path, "kac_teacher", time_grid="cosine", **kw)
    with pytest.raises(ValueError, match="time_grid 'kac'"):
        baselines_stage(TrainConfig(model="tiny"), "unused", time_grid="kac")
