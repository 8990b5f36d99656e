"""Paired (coupled-set) FID ratio intervals: kacnum.images.metrics.paired_ratio_interval, double_ratio_interval,
ratio_interval(paired=True), and kacnum.images.pipeline.coupled_sets / the eval stage's use of them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kacnum.images.metrics import (
    double_ratio_interval,
    feature_statistics,
    fid_bootstrap,
    frechet_distance,
    paired_ratio_interval,
    ratio_interval,
    ratio_interval_curve,
)
from kacnum.images.pipeline import SampleSet, coupled_sets, eval_stage, reference_for

from helpers import IdentityExtractor

D = 6


def _reference():
    g = np.random.default_rng(123)
    return feature_statistics(g.normal(size=(20000, D)))


def _coupled(rng, n, shift_x=0.35, shift_y=0.25, jitter=0.1):
    """Two sets from the same latents z: a 'teacher' y = z + shift_y and a 'student' x = z + shift_x + noise."""
    z = rng.normal(size=(n, D))
    y = z + shift_y
    x = z + shift_x + jitter * rng.normal(size=(n, D))
    return x, y


def _fid(x, ref):
    return frechet_distance(x.mean(0), np.cov(x, rowvar=False), ref.mu, ref.sigma)


def test_identical_sets_give_ratio_one_with_zero_width():
    ref = _reference()
    x, _ = _coupled(np.random.default_rng(0), 300)
    q = paired_ratio_interval(x, x, ref, n_boot=50, seed=3)
    assert q["value"] == 1.0 and q["interval"] == [1.0, 1.0] and q["paired"] and q["n"] == 300
    assert np.all(q["replicates"] == 1.0)


def test_paired_interval_is_calibrated_and_narrower_than_independent():
    """Over 60 independent draws of coupled sets, the spread of the FID ratio equals the paired bootstrap's std
    (within sampling error), and is far below what the independent bootstrap claims."""
    ref = _reference()
    rng = np.random.default_rng(1)
    n = 300
    ratios, paired_std, indep_std = [], [], []
    for i in range(60):
        x, y = _coupled(rng, n)
        ratios.append(_fid(x, ref) / _fid(y, ref))
        if i < 12:
            q = paired_ratio_interval(x, y, ref, n_boot=200, seed=i)
            paired_std.append(q["std"])
            a = fid_bootstrap(x, ref, n_boot=200, seed=1000 + i)
            b = fid_bootstrap(y, ref, n_boot=200, seed=2000 + i)
            indep_std.append(ratio_interval(a, b)["std"])
    true_std = float(np.std(ratios, ddof=1))
    boot = float(np.mean(paired_std))
    assert 0.65 < boot / true_std < 1.5, (boot, true_std)
    assert float(np.mean(indep_std)) > 2.5 * true_std  # the independent interval ignores the coupling


def test_paired_interval_covers_the_ratio_of_the_population():
    """The population ratio FID(law of x)/FID(law of y) (computed in closed form) lies inside most paired
    intervals at n = 400 (the centred interval is for the ratio at this n: allow its small bias)."""
    ref = _reference()
    # population: y ~ N(0.25, I), x ~ N(0.35, (1 + 0.1^2) I); FID against N(0, I)-ish reference statistics
    def pop(shift, var):
        return frechet_distance(np.full(D, shift), var * np.eye(D), ref.mu, ref.sigma)
    truth = pop(0.35, 1.01) / pop(0.25, 1.0)
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(25):
        x, y = _coupled(rng, 400)
        lo, hi = paired_ratio_interval(x, y, ref, n_boot=200, seed=i)["interval"]
        hits += lo <= truth <= hi
    assert hits >= 19, hits


def test_ratio_interval_paired_flag_checks_the_resamples():
    ref = _reference()
    x, y = _coupled(np.random.default_rng(2), 200)
    a, b = fid_bootstrap(x, ref, n_boot=40, seed=5), fid_bootstrap(y, ref, n_boot=40, seed=6)
    with pytest.raises(ValueError, match="same seed"):
        ratio_interval(a, b, paired=True)
    b5 = fid_bootstrap(y, ref, n_boot=40, seed=5)
    q = ratio_interval(a, b5, paired=True)
    assert q["paired"] and q["value"] == pytest.approx(a.value / b5.value)
    with pytest.warns(UserWarning, match="paired by index"):
        ratio_interval(a, b5)
    with pytest.raises(ValueError, match="same shape"):
        paired_ratio_interval(x, y[:100], ref)


def test_double_ratio_and_paired_curve():
    ref = _reference()
    rng = np.random.default_rng(4)
    x1, y1 = _coupled(rng, 300, shift_x=0.45)
    x2, y2 = _coupled(rng, 300, shift_x=0.30)
    q1 = paired_ratio_interval(x1, y1, ref, n_boot=100, seed=0)
    q2 = paired_ratio_interval(x2, y2, ref, n_boot=100, seed=1)
    d = double_ratio_interval(q1, q2)
    assert d["value"] == pytest.approx(q1["value"] / q2["value"])
    assert d["interval"][0] > 1.0  # the first student degrades clearly more
    with pytest.raises(ValueError, match="replicates"):
        double_ratio_interval(q1, {**q2, "replicates": q2["replicates"][:50]})
    curve = ratio_interval_curve(x1, y1, ref, [75, 150, 300], n_boot=100, paired=True)
    assert [c["n"] for c in curve] == [75, 150, 300]
    assert curve[-1]["ratio"] == pytest.approx(q1["value"])  # the full set: same rows, same ratio
    assert curve[0]["relative_half_width"] > curve[-1]["relative_half_width"]
    indep = ratio_interval_curve(x1, y1, ref, [300], n_boot=100)
    assert indep[0]["relative_half_width"] > 2 * curve[-1]["relative_half_width"]


def _set(method, imgs, labels=None, **meta):
    base = {"seed": 1234, "batch_size": 500, "path": "KacPath(a=9)"}
    base.update(meta)
    return SampleSet(method, 4, 4, imgs, labels, None, base)


def test_coupled_sets():
    x = torch.zeros(300, 1, 2, 2)
    lab = torch.arange(300) % 10
    a = _set("kac_teacher", x, lab)
    assert coupled_sets(a, _set("distillkac", x, lab))
    assert coupled_sets(a, _set("distillkac", x, lab, batch_size=300))  # one batch either way
    assert not coupled_sets(a, _set("distillkac", x, lab, batch_size=100))
    assert not coupled_sets(a, _set("distillkac", x, lab, seed=1))
    assert not coupled_sets(a, _set("distillkac", x, lab, path="GaussianPath(T=1)"))
    assert not coupled_sets(a, _set("distillkac", x, torch.roll(lab, 1)))
    assert not coupled_sets(a, _set("distillkac", x[:200], lab[:200]))
    assert not coupled_sets(_set("a", x, lab, seed=None), _set("b", x, lab, seed=None))


def test_eval_stage_pairs_coupled_sets(tmp_path):
    """The student/teacher ratio of coupled sets takes the paired interval (narrower), the Kac/FM comparison of
    uncoupled sets the independent one; the degradation table compares the two teachers' losses."""
    g = torch.Generator().manual_seed(0)
    ref_imgs = (0.3 * torch.randn(4000, 1, 2, 2, generator=g)).clamp(-1, 1)

    ext = IdentityExtractor()
    ref = reference_for("toy", ext, None, data=ref_imgs)
    zk = 0.3 * torch.randn(400, 1, 2, 2, generator=g)
    zf = 0.3 * torch.randn(400, 1, 2, 2, generator=g)
    kac = {"path": "KacPath", "seed": 1, "batch_size": 500}
    fm = {"path": "GaussianPath", "seed": 1, "batch_size": 500}

    def mk(method, nfe, nfe_model, z, shift, meta, jitter=0.02):
        imgs = (z + shift + jitter * torch.randn(z.shape, generator=g)).clamp(-1, 1)
        return SampleSet(method, nfe, nfe_model, imgs, None, None, {"solver": "x", "steps": nfe, **meta})

    sets = [mk("kac_teacher", 100, 200, zk, 0.10, kac, 0.0), mk("distillkac", 4, 4, zk, 0.16, kac),
            mk("fm_teacher", 100, 200, zf, 0.10, fm, 0.0), mk("distillfm", 4, 4, zf, 0.22, fm)]
    res = eval_stage(sets, ref, ext, tmp_path, dataset="toy", n_boot=100, interval_curve=False)
    r = res["ratios"]["distillkac_4/teacher"]
    assert r["paired"]
    feats = {x.method: x.images.reshape(400, 4).numpy() for x in sets}
    ind = ratio_interval(fid_bootstrap(feats["distillkac"], ref, n_boot=100, seed=1),
                         fid_bootstrap(feats["kac_teacher"], ref, n_boot=100, seed=2))
    assert r["ours"] == pytest.approx(ind["value"])
    assert r["interval"][1] - r["interval"][0] < 0.5 * (ind["interval"][1] - ind["interval"][0])
    ctrl = [c for c in res["comparisons"] if c["kind"] == "control"]
    assert ctrl and not ctrl[0]["paired"]  # Kac and FM students come from different latent laws
    d = res["degradation"]["4"]
    assert d["kac_over_fm"] == pytest.approx(d["kac_ratio"] / d["fm_ratio"])
    assert d["kac_degrades_less"] and d["interval"][1] < 1.0  # 0.16 vs 0.22 shift: Kac loses less, decided
