"""Wasserstein distances and the transport bounds of docs/mathematics.md §8.

``W_p(μ, ν) = (inf_π ∫ |x - y|^p dπ)^{1/p}`` over couplings ``π`` of ``μ`` and ``ν``.

* 1D: exact for any sample sizes and weights, from the quantile functions
  ``W_p^p = ∫_0^1 |F_μ^{-1}(u) - F_ν^{-1}(u)|^p du`` (:func:`wasserstein_1d`); between two laws given
  by quantile functions or CDFs (:func:`wasserstein_1d_quantile`, :func:`wasserstein_1d_cdf`).
* d dims: exact network simplex (``ot.emd2``, cost ``|x - y|^p``) up to ``exact_max`` points per side;
  beyond that the sliced distance ``SW_p = (E_θ W_p^p(θ·μ, θ·ν))^{1/p}`` (a LOWER bound:
  ``SW_p ≤ W_p``, and e.g. ``SW_2 = W_2/√d`` for a dilation), or exact OT between random subsamples.
  The method used is reported by :func:`wasserstein_empirical_info`.
* The Lipschitz claim (docs/mathematics.md §8): 1D ``W_p(μ_s, μ_t) ≤ c|t - s|`` for the Kac law, since coupled paths
  satisfy ``|K_t - K_s| ≤ c|t - s|``; :func:`lipschitz_ratio` returns ``W_p / (c|t - s|)``.

POT is imported lazily (only the d-dimensional functions need it), so the 1D functions also run where
POT is not installed (the GPU machines).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch

from kacnum.core.checks import check_finite, check_in_range, check_positive

__all__ = [
    "wasserstein_1d",
    "wasserstein_1d_quantile",
    "wasserstein_1d_cdf",
    "wasserstein_empirical",
    "wasserstein_empirical_info",
    "lipschitz_ratio",
    "w_bound_ratio",
]

ArrayLike = Union[torch.Tensor, np.ndarray]


def _check_p(p) -> float:
    """The order ``p`` of ``W_p``: a finite number >= 1."""
    return check_in_range("p", p, 1, math.inf)


def _midpoints(n) -> torch.Tensor:
    """The ``n`` cell midpoints ``u_k = (k + 1/2)/n`` of ``(0, 1)``, float64 ``(n,)``: never 0 or 1, so an
    unbounded quantile function (the Gaussian one) is finite at every level."""
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return (torch.arange(int(n), dtype=torch.float64) + 0.5) / int(n)


def _lp_mean(qa: torch.Tensor, qb: torch.Tensor, p: float) -> float:
    """``(mean_k |qa_k - qb_k|^p)^{1/p}``: the midpoint rule for ``(∫_0^1 |q_a - q_b|^p du)^{1/p}``."""
    return float(((qa - qb).abs() ** p).mean()) ** (1.0 / p)


def _as_float64(name: str, x: ArrayLike, device=None) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not torch.is_tensor(x):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} must be a tensor or array of numbers, got {type(x).__name__}") from None
    x = x.detach().to(dtype=torch.float64, device=device if device is not None else x.device)
    return check_finite(name, x)


def _weights(name: str, w: Optional[ArrayLike], n: int, device) -> torch.Tensor:
    """Normalised non-negative weights ``(n,)`` (uniform if ``w`` is None)."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
    w = _as_float64(name, w, device=device).reshape(-1)
    if w.numel() != n:
        raise ValueError(f"{name} must have {n} entries (one per sample), got {w.numel()}")
    if bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"{name} must be non-negative with a positive sum")
    return w / w.sum()


def _points(name: str, x: ArrayLike, device=None) -> torch.Tensor:
    """Samples as ``(n, d)`` float64 (a 1D input is ``(n,)`` -> ``(n, 1)``)."""
    x = _as_float64(name, x, device=device)
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (n,) or (n, d) with n >= 1, got {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------ 1D
def wasserstein_1d(
    x: ArrayLike,
    y: ArrayLike,
    p: float = 2,
    weights_x: Optional[ArrayLike] = None,
    weights_y: Optional[ArrayLike] = None,
) -> float:
    """Exact ``W_p`` between two 1D empirical measures, from their quantile functions.

    ``W_p^p = Σ_k (u_k - u_{k-1}) |F_x^{-1}(u_k) - F_y^{-1}(u_k)|^p`` over the merged breakpoints
    ``u_k`` of the two cumulative weight sequences (both quantile functions are constant between
    consecutive ``u_k``), so unequal sizes and weights are handled exactly.

    Args:
        x: ``(n,)`` (or ``(n, 1)``) samples; y: ``(m,)``; torch tensors (any device) or numpy arrays.
        p: order ``>= 1``. weights_x, weights_y: non-negative weights (normalised here), default uniform.
    Returns:
        ``W_p`` as a float.
    """
    p = _check_p(p)
    xs = _points("x", x)
    ys = _points("y", y, device=xs.device)
    if xs.shape[1] != 1 or ys.shape[1] != 1:
        raise ValueError(f"x and y must be 1D samples, got shapes {tuple(xs.shape)} and {tuple(ys.shape)}")
    xs, ys = xs[:, 0], ys[:, 0]
    wx = _weights("weights_x", weights_x, xs.numel(), xs.device)
    wy = _weights("weights_y", weights_y, ys.numel(), xs.device)
    xs, ix = torch.sort(xs)
    ys, iy = torch.sort(ys)
    cx = torch.cumsum(wx[ix], 0)
    cy = torch.cumsum(wy[iy], 0)
    u, _ = torch.sort(torch.cat([cx, cy]))
    du = torch.diff(u, prepend=torch.zeros(1, dtype=u.dtype, device=u.device))
    # F^{-1}(v) = first sorted point whose cumulative weight reaches v, constant on (u_{k-1}, u_k].
    qx = xs[torch.searchsorted(cx, u).clamp_(max=xs.numel() - 1)]
    qy = ys[torch.searchsorted(cy, u).clamp_(max=ys.numel() - 1)]
    return float((du * (qx - qy).abs() ** p).sum()) ** (1.0 / p)


def wasserstein_1d_quantile(
    qf_a: Callable[[torch.Tensor], torch.Tensor],
    qf_b: Callable[[torch.Tensor], torch.Tensor],
    p: float = 2,
    n: int = 4096,
) -> float:
    """``W_p = (∫_0^1 |q_a(u) - q_b(u)|^p du)^{1/p}`` for two laws given by quantile functions.

    Midpoint rule on ``n`` cells (``u = (k + 1/2)/n``, never 0 or 1, so unbounded quantile functions
    such as the Gaussian one are fine). ``qf_a``, ``qf_b``: vectorised float64 callables on ``(n,)``.
    """
    p = _check_p(p)
    u = _midpoints(n)
    qa = _as_float64("qf_a(u)", qf_a(u)).reshape(-1)
    qb = _as_float64("qf_b(u)", qf_b(u), device=qa.device).reshape(-1)
    return _lp_mean(qa, qb, p)


def _quantile_from_cdf(cdf: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor, lo: float, hi: float, iters: int):
    """Generalised inverse ``inf{x : F(x) ≥ u}`` on ``[lo, hi]`` by vectorised bisection."""
    left = torch.full_like(u, lo)
    right = torch.full_like(u, hi)
    for _ in range(iters):
        mid = 0.5 * (left + right)
        below = _as_float64("cdf(x)", cdf(mid), device=u.device).reshape(u.shape) < u
        left = torch.where(below, mid, left)
        right = torch.where(below, right, mid)
    return right


def wasserstein_1d_cdf(
    cdf_a: Callable[[torch.Tensor], torch.Tensor],
    cdf_b: Callable[[torch.Tensor], torch.Tensor],
    lo: float,
    hi: float,
    p: float = 2,
    n: int = 4096,
    iters: int = 60,
) -> float:
    """``W_p`` between two laws on ``[lo, hi]`` given by CDFs (atoms allowed), e.g. ``KacProcess.cdf``.

    The quantiles ``inf{x : F(x) ≥ u}`` at the midpoints ``u = (k + 1/2)/n`` are found by bisection
    (``iters`` halvings of ``[lo, hi]``), then :func:`wasserstein_1d_quantile`'s rule is applied.
    Both laws must put all their mass in ``[lo, hi]``.
    """
    p = _check_p(p)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"[lo, hi] must be a finite interval with lo < hi, got [{lo}, {hi}]")
    u = _midpoints(n)
    return _lp_mean(_quantile_from_cdf(cdf_a, u, lo, hi, iters), _quantile_from_cdf(cdf_b, u, lo, hi, iters), p)


# ------------------------------------------------------------------------------------------ d dims
def wasserstein_empirical_info(
    x: ArrayLike,
    y: ArrayLike,
    p: float = 2,
    weights_x: Optional[ArrayLike] = None,
    weights_y: Optional[ArrayLike] = None,
    exact_max: int = 5000,
    n_projections: int = 256,
    seed: int = 0,
    large: str = "sliced",
) -> Tuple[float, str]:
    """``W_p`` between empirical measures in ``d`` dims, with the method used.

    Methods: ``"exact-1d"`` (``d = 1``: :func:`wasserstein_1d`, any size); ``"emd"`` (both sides have
    ``<= exact_max`` points: ``ot.emd2`` with cost ``|x - y|^p``, result ``cost^{1/p}``); otherwise
    ``large = "sliced"``: ``ot.sliced_wasserstein_distance`` with ``n_projections`` directions (a lower
    bound of ``W_p``, smaller by up to ``√d``), or ``large = "subsample"``: ``ot.emd2`` between
    ``exact_max`` points drawn without replacement per side (uniform weights only; biased upwards by
    the sampling error).

    Args:
        x: ``(n, d)`` or ``(n,)``; y: ``(m, d)``; tensors or arrays. weights: ``(n,)``, ``(m,)`` or None.
        p: order ``>= 1``; seed: for projections / subsamples.
    Returns:
        ``(value, method)``.
    """
    p = _check_p(p)
    xs = _points("x", x, device="cpu")
    ys = _points("y", y, device="cpu")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {xs.shape[1]} and {ys.shape[1]}")
    if large not in ("sliced", "subsample"):
        raise ValueError(f"large must be 'sliced' or 'subsample', got {large!r}")
    if int(exact_max) < 1 or int(n_projections) < 1:
        raise ValueError("exact_max and n_projections must be positive integers")
    if xs.shape[1] == 1:
        return wasserstein_1d(xs, ys, p, weights_x, weights_y), "exact-1d"
    wx = _weights("weights_x", weights_x, xs.shape[0], xs.device).numpy()
    wy = _weights("weights_y", weights_y, ys.shape[0], ys.device).numpy()
    import ot  # lazy: POT is absent on the GPU machines

    xn, yn = xs.numpy(), ys.numpy()
    if max(xn.shape[0], yn.shape[0]) <= int(exact_max):
        return _emd(ot, xn, yn, wx, wy, p), "emd"
    if large == "sliced":
        val = ot.sliced_wasserstein_distance(xn, yn, wx, wy, n_projections=int(n_projections), p=p, seed=int(seed))
        return float(val), "sliced"
    if weights_x is not None or weights_y is not None:
        raise ValueError("large='subsample' needs uniform weights (weights_x = weights_y = None)")
    rng = np.random.default_rng(int(seed))
    xi = rng.choice(xn.shape[0], size=min(xn.shape[0], int(exact_max)), replace=False)
    yi = rng.choice(yn.shape[0], size=min(yn.shape[0], int(exact_max)), replace=False)
    xsub, ysub = xn[xi], yn[yi]
    return (
        _emd(ot, xsub, ysub, np.full(len(xi), 1.0 / len(xi)), np.full(len(yi), 1.0 / len(yi)), p),
        "subsample",
    )


def _emd(ot, xn: np.ndarray, yn: np.ndarray, wx: np.ndarray, wy: np.ndarray, p: float) -> float:
    cost = ot.dist(xn, yn, metric="euclidean") ** p
    val = float(ot.emd2(wx, wy, cost, numItermax=10_000_000))
    return max(val, 0.0) ** (1.0 / p)


def wasserstein_empirical(x: ArrayLike, y: ArrayLike, p: float = 2, weights_x: Optional[ArrayLike] = None,
                          weights_y: Optional[ArrayLike] = None, exact_max: int = 5000, n_projections: int = 256,
                          seed: int = 0) -> float:
    """``W_p`` between empirical measures; see :func:`wasserstein_empirical_info` (which also says how)."""
    return wasserstein_empirical_info(x, y, p, weights_x, weights_y, exact_max, n_projections, seed)[0]


# ------------------------------------------------------------------------------------------ bounds
def w_bound_ratio(w: float, bound: float) -> float:
    """``w / bound`` for a measured distance ``w >= 0`` and a claimed bound ``> 0`` (``<= 1`` holds it)."""
    w = float(w)
    if not math.isfinite(w) or w < 0:
        raise ValueError(f"w must be a finite number >= 0, got {w!r}")
    return w / check_positive("bound", bound)


def lipschitz_ratio(
    samples_s: ArrayLike,
    samples_t: ArrayLike,
    s: float,
    t: float,
    speed: float,
    p: float = 2,
    **kwargs,
) -> float:
    """``W_p(μ_s, μ_t) / (speed · |t - s|)`` from samples of ``μ_s`` and ``μ_t`` (docs/mathematics.md §8).

    1D samples (``(n,)`` or ``(n, 1)``): exact :func:`wasserstein_1d`; the Kac claim is ratio ``<= 1``
    with ``speed = c``. d-dim samples: :func:`wasserstein_empirical` (``kwargs`` go there); for the
    d-dim claim ``W_2 ≤ c√d |t - s|`` pass ``speed = c√d``. With coupled samples (the same paths at
    ``s`` and ``t``) the ratio is at most ``(mean_i |K_t^i - K_s^i|^p)^{1/p} / (c|t - s|) ≤ 1`` exactly,
    since the pairing is one admissible coupling of the two empirical measures.
    """
    speed = check_positive("speed", speed)
    s, t = float(s), float(t)
    if not (math.isfinite(s) and math.isfinite(t)) or s == t:
        raise ValueError(f"s and t must be finite and distinct, got s={s!r}, t={t!r}")
    xs = _points("samples_s", samples_s)
    if xs.shape[1] == 1:
        w = wasserstein_1d(xs, _points("samples_t", samples_t, device=xs.device), p)
    else:
        w = wasserstein_empirical(xs, samples_t, p, **kwargs)
    return w_bound_ratio(w, speed * abs(t - s))
