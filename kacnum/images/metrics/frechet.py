"""Fréchet distance and the feature statistics it is computed from.

The Fréchet (2-Wasserstein) distance between two Gaussians N(mu1, S1) and N(mu2, S2) is

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr( (S1^{1/2} S2 S1^{1/2})^{1/2} ).

A :class:`FeatureStats` holds the mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``n`` feature
vectors with the protocol that produced them (a JSON-able dict, kept in canonical form by
``_jsonable``); :func:`feature_statistics` accumulates them in float64 over row chunks.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch

from kacnum.core.checkpoint import atomic_write

ArrayLike = Union[np.ndarray, torch.Tensor]

__all__ = ["frechet_distance", "FeatureStats", "feature_statistics"]


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



def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so that protocols compare and save identically (tuples -> lists, keys
    sorted, NaN kept): the canonical form of every protocol, cache key and sidecar here. Unlike
    :func:`kacnum.core.checkpoint.to_jsonable` it refuses numpy and torch values instead of converting
    them, so a protocol never changes type between writing and reading."""
    try:
        return json.loads(json.dumps(obj, sort_keys=True))
    except TypeError as e:
        raise ValueError(f"protocol must be JSON-serialisable: {e}") from None


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

        return atomic_write(path, write)

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

