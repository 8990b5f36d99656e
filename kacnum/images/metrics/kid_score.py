"""KID: the unbiased MMD^2 with kernel ``k(x, y) = (x.y/d + 1)^3`` between generated and reference features.

Averaged over reference subsets (its standard deviation over them beside it) with a bootstrap interval
over the generated features. Unlike FID it needs reference *features*
(:func:`~kacnum.images.metrics.fid_score.reference_features`, cached), not only their statistics; a
:class:`KIDReference` holds the reference half once for every generated set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np

from kacnum.images.metrics.frechet import ArrayLike
from kacnum.images.metrics.intervals import _as_features, _check_count, _check_level, bootstrap_counts

__all__ = ["KID_KERNEL", "polynomial_kernel", "mmd2_unbiased", "KIDReference", "KIDResult", "kid"]


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

