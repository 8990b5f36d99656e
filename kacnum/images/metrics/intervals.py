"""Error bars for FID: bootstrap intervals, ratios of FIDs (independent or coupled sets), interval against n.

A FID on ``n`` samples has a sampling error that matters when ratios of FIDs are compared
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
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from kacnum.core.checks import check_positive
from kacnum.images.metrics.frechet import ArrayLike, FeatureStats, _psd_sqrt, _to_float64, frechet_distance

__all__ = [
    "BootstrapResult",
    "bootstrap_counts",
    "fid_bootstrap",
    "ratio_interval",
    "paired_ratio_interval",
    "double_ratio_interval",
    "fid_interval_curve",
    "ratio_interval_curve",
    "n_for_precision",
]


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

