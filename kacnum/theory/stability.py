"""Endpoint-to-path stability of few-step students (DistillKac's Theorem 8, derived form of docs/mathematics.md §8).

Setting. A teacher trajectory ``X`` on an interval of length ``Δ`` with speed ``≤ V`` and
acceleration ``≤ A``; a student ``Y`` that moves in a straight line between its end points (one Euler
step). With ``s ∈ [0, 1]`` the fraction of the interval and ``X, Y`` started at the same point,

    |Y_τ - X_τ| ≤ s |Y_end - X_end| + |X_τ - chord_τ|,   chord_τ = (1 - s) X_start + s X_end,
    |X_τ - chord_τ| ≤ A Δ² s (1 - s) / 2 ≤ A Δ² / 8,

so, taking the root mean square over a batch and using the identity pairing as a coupling,

    sup_τ W2(ρ^S_τ, ρ^T_τ) ≤ sqrt(E |Y_end - X_end|²) + A Δ² / 8                          (bound "A")
    sup_τ W2(ρ^S_τ, ρ^T_τ) ≤ sqrt(E |Y_end - X_end|²) + sqrt(E max_τ |X_τ - chord_τ|²)    (bound "chord")

(the second is sharper and needs no acceleration bound). A student of ``M`` Euler steps of a field
``ε``-close to a teacher field with Lipschitz constant ``L`` has path error
``≤ (ε + A h/2)(e^{LΔ} - 1)/L`` with ``h = Δ/M`` (:func:`euler_path_bound`): the ``O(1/M)`` rate.

What this module measures (all tensors float64 unless said otherwise; ``B`` samples in ``d`` dims):

* :func:`teacher_trajectory`: the teacher, a fine fixed-grid solve (RK4 by default) of an exact field,
  kept at every grid time, with the acceleration by second differences
  ``|X_{j+1} - 2 X_j + X_{j-1}| / h²`` (:class:`TeacherTrajectory`).
* :func:`piecewise_linear`: a student path between its steps, evaluated at any times.
* :func:`coupled_sq_errors`, :func:`path_error_summary`: coupled errors (same starting latents, so no
  sampling noise in the pairing): ``sup_τ sqrt(mean_b |Y_τ^b - X_τ^b|²)`` and friends.
* :func:`w2_along_path`: ``W2`` (POT, exact network simplex) between student and teacher marginals.
* :func:`fit_loglog_slope`, :func:`bootstrap_slope`, :func:`rate_constant`: the rate in ``M`` with a
  paired bootstrap interval (resampling the starting latents), of the RMS or of the median sample's error;
  :func:`slope_shift_bound`: how far the teacher's own error can move that rate.
* :func:`mode_mismatch`: the fraction of samples a student sends to another data point than the
  teacher does. On finite data this fraction is ``∝ 1/M`` and each such sample errs by the data
  spacing, so the RMS error near the data decays like ``M^{-1/2}`` while the typical sample's decays
  like ``1/M``: the exact fields are not Lipschitz there, and the theorem's constant
  ``(e^{LΔ} - 1)/L`` is unbounded.
* :func:`interval_bound`, :func:`interval_bound_check`: the per-interval bounds above.
* :func:`loglog_correlation`: endpoint versus whole-path error across students.
* :class:`ExactField`, :func:`fit_velocity_mlp`, :class:`ExactTeacherDistiller`: a network-free
  teacher for :class:`kacnum.students.distill.Distiller` (thin adapter: only the stage-1 teacher map changes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from kacnum.core.progress import Progress

from kacnum.core.checks import check_finite, check_in_range, check_positive
from kacnum.students.distill import Distiller, FlowTeacher, student_step
from kacnum.flows.solvers import check_time_grid, ddim_sample, integrate

__all__ = [
    "ExactField",
    "ModelField",
    "TeacherTrajectory",
    "teacher_trajectory",
    "student_states",
    "piecewise_linear",
    "coupled_sq_errors",
    "PathErrors",
    "path_error_summary",
    "w2_along_path",
    "fit_loglog_slope",
    "slope_shift_bound",
    "bootstrap_slope",
    "rate_constant",
    "mode_mismatch",
    "loglog_correlation",
    "IntervalBound",
    "interval_bound",
    "interval_bound_check",
    "euler_path_bound",
    "gronwall_constant",
    "local_slopes",
    "lipschitz_profile",
    "fit_velocity_mlp",
    "ExactTeacherDistiller",
]


# ------------------------------------------------------------------------------------------------
# fields


class ExactField:
    """Network-free field of a finite data set: ``field(x, t[, y])`` for solvers and distillation.

    ``quantity="velocity"``: ``path.exact_velocity(x, t, support, weights, data_sigma=...)`` (the exact
    marginal velocity of the Dirac mixture, docs/mathematics.md §4, or with ``data_sigma > 0`` of the Gaussian mixture
    ``Σ w_i N(support_i, data_sigma² I)``, docs/mathematics.md §13); ``"epsilon"``: ``path.exact_epsilon(...)`` (VP only: the ε-prediction that
    :func:`kacnum.flows.solvers.ddim_sample` needs). ``x: (B, d)``, ``t: (B,)`` -> ``(B, d)`` in ``x``'s
    dtype. The optional third argument ``y`` (labels) must be None: callable as a model
    ``model(x, t, y)`` by :class:`kacnum.students.distill.FlowTeacher`.
    """

    nfe_per_call = 1

    def __init__(self, path: Any, support: torch.Tensor, weights: Optional[torch.Tensor] = None,
                 quantity: str = "velocity", data_sigma: float = 0.0):
        if quantity not in ("velocity", "epsilon"):
            raise ValueError(f"quantity must be 'velocity' or 'epsilon', got {quantity!r}")
        if quantity == "epsilon" and not hasattr(path, "exact_epsilon"):
            raise ValueError(f"quantity='epsilon' needs a path with exact_epsilon (VPPath), got {path!r}")
        if not torch.is_tensor(support) or support.dim() != 2 or support.shape[0] < 1:
            raise ValueError("support must be a tensor of shape (n, d) with n >= 1")
        check_finite("support", support)
        self.path, self.support, self.weights, self.quantity = path, support, weights, quantity
        self.data_sigma = check_in_range("data_sigma", data_sigma, 0.0, math.inf)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if y is not None:
            raise ValueError("y must be None: the exact field of unlabelled data has no labels")
        fn = self.path.exact_velocity if self.quantity == "velocity" else self.path.exact_epsilon
        return fn(x, t, self.support.to(x.device), self.weights, data_sigma=self.data_sigma)


class ModelField:
    """``field(x, t) = model(x.to(dtype), t.to(dtype)).to(x.dtype)`` under ``torch.no_grad()``.

    Runs a float32 network on float64 states (the measurement is done in float64).
    """

    nfe_per_call = 1

    def __init__(self, model: Callable, dtype: torch.dtype = torch.float32):
        self.model, self.dtype = model, dtype

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x.to(self.dtype), t.to(self.dtype)).to(x.dtype)


# ------------------------------------------------------------------------------------------------
# trajectories


def _uniform(grid: torch.Tensor, rtol: float = 1e-9) -> bool:
    h = grid[1:] - grid[:-1]
    return bool(((h - h[0]).abs() <= rtol * h[0].abs()).all())


def _interval_index(times: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a strictly monotone ``times (K+1,)`` and ``query (Q,)`` inside its range: the interval
    ``k (Q,)`` with ``query`` in ``[times[k], times[k+1]]`` and the fraction ``s (Q,)`` in ``[0, 1]``."""
    sign = 1.0 if float(times[-1]) > float(times[0]) else -1.0
    tt, qq = sign * times, sign * query
    lo, hi = float(tt[0]), float(tt[-1])
    tol = 1e-9 * max(abs(lo), abs(hi), hi - lo)
    if bool((qq < lo - tol).any()) or bool((qq > hi + tol).any()):
        raise ValueError(f"query times must lie in [{float(times.min()):.6g}, {float(times.max()):.6g}]; "
                         f"got [{float(query.min()):.6g}, {float(query.max()):.6g}]")
    k = (torch.searchsorted(tt.contiguous(), qq.contiguous(), right=True) - 1).clamp_(0, times.numel() - 2)
    s = ((qq - tt[k]) / (tt[k + 1] - tt[k])).clamp_(0.0, 1.0)
    return k, s


def piecewise_linear(times: torch.Tensor, states: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The path through ``(times[k], states[k])`` that is linear in ``t`` on every interval.

    ``Y(τ) = (1 - s) states[k] + s states[k+1]`` with ``τ = (1 - s) times[k] + s times[k+1]``.

    Args:
        times: ``(K+1,)`` strictly monotone (either direction), ``K >= 1``.
        states: ``(K+1, B, ...)``.
        query: ``(Q,)`` times inside ``[min(times), max(times)]`` (ValueError otherwise).
    Returns:
        ``(Q, B, ...)``; exact at the nodes.
    """
    times = check_time_grid(times, name="times")
    if not torch.is_tensor(states) or states.shape[0] != times.numel():
        raise ValueError(f"states must be a tensor of shape ({times.numel()}, B, ...) (one state per time)")
    query = torch.as_tensor(query, dtype=times.dtype, device=times.device).reshape(-1)
    k, s = _interval_index(times.to(states.device), query.to(states.device))
    s = s.to(states.dtype).reshape((-1,) + (1,) * (states.dim() - 1))
    return (1.0 - s) * states[k] + s * states[k + 1]


@dataclass(frozen=True)
class TeacherTrajectory:
    """A teacher solved on a fine grid, kept at every grid time.

    Attributes:
        grid: ``(N+1,)`` the fine time grid (decreasing from ``T`` to ``t_min``).
        states: ``(N+1, B, d)`` the teacher at every grid time.
        accel: ``(N+1,)`` ``max_b |X_{j+1} - 2X_j + X_{j-1}|_2 / h²`` at interior nodes (0 at the
            two ends): the acceleration by second differences (uniform grids).
        speed: ``(N,)`` ``max_b |X_{j+1} - X_j|_2 / |h|``: the speed by first differences.
        method: solver name; nfe: field evaluations.
    """

    grid: torch.Tensor
    states: torch.Tensor
    accel: torch.Tensor
    speed: torch.Tensor
    method: str
    nfe: int

    def at(self, times) -> torch.Tensor:
        """Teacher states at ``times (Q,)``: ``(Q, B, d)`` (exact on grid times, linear in between)."""
        return piecewise_linear(self.grid, self.states, torch.as_tensor(times, dtype=self.grid.dtype).reshape(-1))

    def max_acceleration(self, t_a: float, t_b: float) -> float:
        """``max`` of :attr:`accel` over the nodes in the closed interval between ``t_a`` and ``t_b``
        (widened to the nearest grid nodes), the ``A`` of the bound on that interval."""
        lo, hi = min(t_a, t_b), max(t_a, t_b)
        g = self.grid
        h = float((g[1:] - g[:-1]).abs().max())
        sel = (g >= lo - 1e-9 * h) & (g <= hi + 1e-9 * h)
        if not bool(sel.any()):
            return 0.0
        idx = sel.nonzero().squeeze(1)
        i0, i1 = int(idx.min()), int(idx.max())
        return float(self.accel[max(i0, 0):i1 + 1].max())

    def max_speed(self) -> float:
        """``V``: the largest speed by first differences."""
        return float(self.speed.max())


def teacher_trajectory(field: Callable, x_T: torch.Tensor, grid: torch.Tensor, method: str = "rk4",
                       progress: bool = False) -> TeacherTrajectory:
    """Solve ``dx/dt = field(x, t)`` from ``x_T: (B, d)`` along ``grid (N+1,)`` and keep every state.

    The acceleration estimate assumes a uniform grid (raises ValueError otherwise). Runs under
    ``torch.no_grad()``.
    """
    grid = check_time_grid(grid, device=x_T.device)
    if not _uniform(grid):
        raise ValueError("grid must be uniform (the acceleration is estimated by second differences)")
    with torch.no_grad():
        res = integrate(field, x_T, grid, method, return_trajectory=True, progress=progress)
    X = res.trajectory
    h = float(grid[1] - grid[0])
    flat = X.reshape(X.shape[0], X.shape[1], -1)
    speed = (flat[1:] - flat[:-1]).norm(dim=-1).amax(dim=1) / abs(h)
    accel = torch.zeros(X.shape[0], dtype=X.dtype, device=X.device)
    if X.shape[0] >= 3:
        accel[1:-1] = (flat[2:] - 2.0 * flat[1:-1] + flat[:-2]).norm(dim=-1).amax(dim=1) / (h * h)
    return TeacherTrajectory(grid=grid, states=X, accel=accel, speed=speed, method=method, nfe=res.nfe)


def student_states(field: Callable, x_T: torch.Tensor, grid: torch.Tensor, solver: str = "euler",
                   alpha_bar: Optional[Callable] = None) -> torch.Tensor:
    """States ``(M+1, B, d)`` of an ``M``-step student at its grid times (``states[0] = x_T``).

    ``solver``: any method of :mod:`kacnum.flows.solvers` (``field(x, t)`` a velocity), or ``"ddim"``
    (``field`` is an ε-prediction, ``alpha_bar`` the VP schedule ``ᾱ(t)``). No gradients.
    """
    with torch.no_grad():
        if solver == "ddim":
            if alpha_bar is None:
                raise ValueError("solver='ddim' needs alpha_bar (the VP schedule)")
            res = ddim_sample(field, x_T, alpha_bar, grid, return_trajectory=True)
        else:
            res = integrate(field, x_T, grid, solver, return_trajectory=True)
    return res.trajectory


# ------------------------------------------------------------------------------------------------
# errors


def coupled_sq_errors(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample squared distances ``|Y_τ^b - X_τ^b|²`` (Euclidean over the trailing dims).

    ``student, teacher: (Q, B, ...)`` (the same latents in the same order) -> ``(Q, B)``.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student and teacher must have the same shape, got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}")
    diff = (student - teacher).reshape(student.shape[0], student.shape[1], -1)
    return diff.pow(2).sum(dim=-1)


@dataclass(frozen=True)
class PathErrors:
    """Coupled (same-latent) errors of one student along a τ grid.

    Attributes:
        rms: ``(Q,)`` ``sqrt(mean_b |Y_τ - X_τ|²)`` at each τ.
        sup: ``max_τ rms`` over the whole grid; argmax_tau: where.
        endpoint: ``rms`` at the last τ (the data end).
        sup_restricted: ``max rms`` over τ with ``τ >= t_cut`` (None if no ``t_cut``).
    """

    rms: torch.Tensor
    sup: float
    argmax_tau: float
    endpoint: float
    sup_restricted: Optional[float]


def path_error_summary(sq_err: torch.Tensor, taus: torch.Tensor, t_cut: Optional[float] = None) -> PathErrors:
    """Summaries of ``sq_err: (Q, B)`` (from :func:`coupled_sq_errors`) at ``taus: (Q,)``."""
    if sq_err.dim() != 2 or sq_err.shape[0] != taus.numel():
        raise ValueError(f"sq_err must have shape ({taus.numel()}, B), got {tuple(sq_err.shape)}")
    rms = sq_err.mean(dim=1).sqrt()
    j = int(rms.argmax())
    restricted = None
    if t_cut is not None:
        keep = taus >= t_cut
        restricted = float(rms[keep].max()) if bool(keep.any()) else float("nan")
    return PathErrors(rms=rms, sup=float(rms[j]), argmax_tau=float(taus[j]), endpoint=float(rms[-1]),
                      sup_restricted=restricted)


def w2_along_path(student: torch.Tensor, teacher: torch.Tensor, index: Optional[Sequence[int]] = None,
                  n_samples: Optional[int] = None, exact_max: int = 5000) -> np.ndarray:
    """``W2`` between the empirical marginals ``student[q]`` and ``teacher[q]`` for ``q`` in ``index``.

    ``student, teacher: (Q, B, d)``; the first ``n_samples`` rows of each are used (default all).
    :func:`kacnum.theory.transport.wasserstein_empirical` with ``exact_max`` (exact network simplex below it).
    Since both sides come from the same latents, ``W2 ≤`` the coupled RMS error at every τ.
    Returns ``(len(index),)``.
    """
    from kacnum.theory.transport import wasserstein_empirical  # lazy: POT is absent on the GPU machines

    if student.shape != teacher.shape:
        raise ValueError("student and teacher must have the same shape (Q, B, d)")
    idx = range(student.shape[0]) if index is None else list(index)
    n = student.shape[1] if n_samples is None else min(int(n_samples), student.shape[1])
    out = []
    for q in idx:
        a = student[q, :n].reshape(n, -1).cpu()
        b = teacher[q, :n].reshape(n, -1).cpu()
        if torch.equal(a, b):
            out.append(0.0)
        else:
            out.append(wasserstein_empirical(a, b, p=2, exact_max=exact_max))
    return np.asarray(out, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# rates and correlations


def fit_loglog_slope(m: Sequence[float], err: Sequence[float]) -> tuple[float, float]:
    """Least-squares line ``log err = slope · log m + intercept``: returns ``(slope, intercept)``.

    ``m, err``: at least 2 positive finite values each, same length (ValueError otherwise).
    """
    m = np.asarray(m, dtype=np.float64).reshape(-1)
    e = np.asarray(err, dtype=np.float64).reshape(-1)
    if m.shape != e.shape or m.size < 2:
        raise ValueError(f"m and err must have the same length >= 2, got {m.size} and {e.size}")
    if not (np.all(np.isfinite(m)) and np.all(m > 0) and np.all(np.isfinite(e)) and np.all(e > 0)):
        raise ValueError("m and err must be finite and > 0 (a log-log fit)")
    x, y = np.log(m), np.log(e)
    if np.ptp(x) == 0:
        raise ValueError("m must hold at least two distinct values")
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc * xc).sum())
    return slope, float(y.mean() - slope * x.mean())


def slope_shift_bound(m: Sequence[float], err: Sequence[float], reference_err: float) -> float:
    """How far an inexact reference can move the slope of :func:`fit_loglog_slope`.

    ``err_k`` are measured against a reference (the teacher) that is itself off the exact solution by at
    most ``reference_err`` in the same norm; by the triangle inequality the errors against the exact solution
    lie in ``err_k ± reference_err``, so ``log err_k`` moves by at most ``η_k = -log(1 - reference_err/err_k)``.
    The slope is linear in the log errors, ``Σ_k w_k log err_k`` with ``w_k = (x_k - x̄)/Σ_j (x_j - x̄)²`` and
    ``x = log m``, so it moves by at most ``Σ_k |w_k| η_k``. Returns that bound (``inf`` when
    ``reference_err >= min err``: the reference error could then be all of an error).
    """
    x = np.log(np.asarray(m, dtype=np.float64).reshape(-1))
    e = np.asarray(err, dtype=np.float64).reshape(-1)
    if x.shape != e.shape or x.size < 2 or np.ptp(x) == 0:
        raise ValueError("m and err must have the same length >= 2, with two distinct m")
    delta = check_in_range("reference_err", reference_err, 0.0, math.inf)
    if not np.all(e > delta):
        return math.inf
    xc = x - x.mean()
    return float((np.abs(xc) / (xc * xc).sum() * -np.log1p(-delta / e)).sum())


def _sup_rms_batched(sq_err: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``max_τ sqrt(Σ_b c_rb sq_err[τ, b] / Σ_b c_rb)`` for resampling counts ``c: (R, B)`` -> ``(R,)``."""
    means = counts @ sq_err.T / counts.sum(dim=1, keepdim=True)
    return means.clamp_min(0).sqrt().amax(dim=1)


def bootstrap_slope(m: Sequence[float], sq_errors: Sequence[torch.Tensor], n_boot: int = 1000,
                    level: float = 0.95, seed: int = 0, rows: Optional[torch.Tensor] = None,
                    stat: str = "rms") -> dict:
    """Rate of a path error ``err(M)`` in ``M`` with a paired bootstrap interval.

    ``stat="rms"``: ``err(M) = max_τ sqrt(mean_b sq_err_M[τ, b])`` (the coupled RMS path error, an upper
    bound of ``sup_τ W2``); ``stat="median"``: ``err(M) = median_b max_τ sqrt(sq_err_M[τ, b])`` (the
    typical sample's path error, insensitive to the few samples a coarse solver sends to another mode).

    Args:
        m: ``(K,)`` step counts. sq_errors: ``K`` tensors ``(Q, B)`` (:func:`coupled_sq_errors`), the
            same ``B`` latents for every ``M``.
        n_boot: resamples; each draws ``B`` latents with replacement (the SAME draw for every ``M``)
            and refits the slope. level: two-sided percentile interval, e.g. 0.95.
        rows: optional bool mask ``(Q,)`` of the τ rows the sup runs over (e.g. ``τ >= t_cut``).
    Returns:
        ``{"slope", "intercept", "ci": [lo, hi], "level", "n_boot", "err": [K values], "boot_sd", "stat"}``.
    """
    if stat not in ("rms", "median"):
        raise ValueError(f"stat must be 'rms' or 'median', got {stat!r}")
    if len(m) != len(sq_errors) or len(m) < 2:
        raise ValueError("m and sq_errors must have the same length >= 2")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    level = check_in_range("level", level, 0.0, 1.0)
    sq = [s.detach().to(torch.float64).cpu() for s in sq_errors]
    B = sq[0].shape[1]
    if any(s.dim() != 2 or s.shape[1] != B for s in sq):
        raise ValueError("every sq_errors entry must have shape (Q, B) with the same B")
    if rows is not None:
        sq = [s[rows.cpu()] for s in sq]
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(B, (n_boot, B), generator=gen)
    if stat == "rms":
        ones = torch.ones(1, B, dtype=torch.float64)
        err = [float(_sup_rms_batched(s, ones)[0]) for s in sq]
        counts = torch.zeros(n_boot, B, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones(n_boot, B, dtype=torch.float64))
        boot = torch.stack([_sup_rms_batched(s, counts) for s in sq], dim=1)  # (R, K)
    else:
        per = [s.clamp_min(0).amax(dim=0).sqrt() for s in sq]  # (B,) per-sample sup over τ
        err = [float(torch.quantile(p, 0.5)) for p in per]  # the midpoint median for even B
        boot = torch.stack([torch.quantile(p[idx], 0.5, dim=1) for p in per], dim=1)
    boot = boot.clamp_min(1e-300)
    slope, intercept = fit_loglog_slope(m, err)
    x = torch.log(torch.as_tensor(m, dtype=torch.float64))
    xc = x - x.mean()
    y = torch.log(boot)
    slopes = ((y - y.mean(dim=1, keepdim=True)) * xc).sum(dim=1) / (xc * xc).sum()
    a = (1.0 - level) / 2.0
    lo, hi = torch.quantile(slopes, torch.tensor([a, 1.0 - a], dtype=torch.float64)).tolist()
    return {"slope": slope, "intercept": intercept, "ci": [lo, hi], "level": level, "n_boot": n_boot,
            "err": err, "boot_sd": float(slopes.std()), "stat": stat}


def mode_mismatch(student_end: torch.Tensor, teacher_end: torch.Tensor, support: torch.Tensor) -> float:
    """Fraction of samples whose nearest support point differs between student and teacher end points.

    ``student_end, teacher_end: (B, d)`` (the same latents), ``support: (n, d)``. On finite data a
    coarse solver sends a fraction of the samples to another data point; each such sample carries an
    error of the order of the data spacing, so this fraction ``p`` adds about ``spacing · sqrt(p)`` to
    the RMS error: if ``p ∝ 1/M`` the RMS error decays like ``M^{-1/2}`` even when typical samples
    converge like ``1/M``.
    """
    if student_end.shape != teacher_end.shape or student_end.dim() != 2:
        raise ValueError("student_end and teacher_end must have the same shape (B, d)")
    sup = support.to(device=student_end.device, dtype=student_end.dtype)
    a = torch.cdist(student_end, sup).argmin(dim=1)
    b = torch.cdist(teacher_end.to(student_end.dtype), sup).argmin(dim=1)
    return float((a != b).double().mean())


def rate_constant(m: Sequence[float], err: Sequence[float], order: float = 1.0) -> float:
    """``C`` in ``err ≈ C / M^order``, the geometric mean of ``err_M · M^order`` (log-space fit with
    the slope fixed at ``-order``)."""
    m = np.asarray(m, dtype=np.float64)
    e = np.asarray(err, dtype=np.float64)
    if m.shape != e.shape or m.size < 1 or np.any(m <= 0) or np.any(e <= 0):
        raise ValueError("m and err must be positive, same length >= 1")
    return float(np.exp(np.mean(np.log(e) + order * np.log(m))))


def loglog_correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    """Correlation between two positive error measures across students.

    Returns ``{"pearson_log": corr(log x, log y), "pearson": corr(x, y), "spearman": rank corr, "n"}``
    (NaN where fewer than 3 points or a constant input).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError("x and y must have the same length")
    n = int(x.size)
    nan = float("nan")
    if n < 3 or np.any(x <= 0) or np.any(y <= 0):
        return {"pearson_log": nan, "pearson": nan, "spearman": nan, "n": n}

    def corr(a, b):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            return nan
        return float(np.corrcoef(a, b)[0, 1])

    def ranks(a):
        order = np.argsort(a, kind="mergesort")
        r = np.empty(n)
        r[order] = np.arange(n, dtype=np.float64)
        for v in np.unique(a):  # average ranks for ties
            sel = a == v
            r[sel] = r[sel].mean()
        return r

    return {"pearson_log": corr(np.log(x), np.log(y)), "pearson": corr(x, y),
            "spearman": corr(ranks(x), ranks(y)), "n": n}


# ------------------------------------------------------------------------------------------------
# the per-interval bound


@dataclass(frozen=True)
class IntervalBound:
    """The endpoint-to-path bound on one interval (module docstring).

    Attributes:
        delta: ``|Δ|``; accel: the ``A`` used; endpoint_rmse: ``sqrt(E|Y_end - X_end|²)``.
        sup_rms: ``max_τ sqrt(E|Y_τ - X_τ|²)`` over the sub-points (``≥`` the ``W2``).
        sup_w2: ``max_τ W2`` over the sub-points (None unless requested).
        chord_rms: ``sqrt(E max_τ |X_τ - chord_τ|²)``.
        bound_accel: ``endpoint_rmse + A Δ²/8``; bound_chord: ``endpoint_rmse + chord_rms``.
        ratio_accel, ratio_chord: ``sup_w2`` (or ``sup_rms`` without W2) over each bound.
        ratio_rms_accel: ``sup_rms / bound_accel``.
    """

    delta: float
    accel: float
    endpoint_rmse: float
    sup_rms: float
    sup_w2: Optional[float]
    chord_rms: float
    bound_accel: float
    bound_chord: float
    ratio_accel: float
    ratio_chord: float
    ratio_rms_accel: float


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return 0.0 if a == 0 else math.inf


def interval_bound(teacher_seg: torch.Tensor, y_end: torch.Tensor, delta: float, accel: float,
                   w2_samples: Optional[int] = None) -> IntervalBound:
    """Check ``sup_τ W2(ρ^S_τ, ρ^T_τ) ≤ sqrt(E|Y_end - X_end|²) + A Δ²/8`` on one interval.

    Args:
        teacher_seg: ``(S+1, B, d)`` the teacher at ``s_j = j/S``, ``j = 0..S`` (``teacher_seg[0]`` the
            common start ``X_start = Y_start``, ``teacher_seg[-1] = X_end``), ``S >= 1``.
        y_end: ``(B, d)`` the student's end point (one straight step from ``X_start``).
        delta: interval length ``Δ > 0``. accel: acceleration bound ``A >= 0``.
        w2_samples: also compute ``W2``; then EVERY quantity (bounds included) uses only the first
            ``w2_samples`` samples, so that the ``W2`` is compared with the bound of the same samples
            (None: all samples, coupled RMS only).
    The student path is ``Y_s = X_start + s (y_end - X_start)``; every quantity is evaluated at the
    ``s_j`` (where the chord inequality holds exactly, see the module docstring).
    """
    delta = check_positive("delta", delta)
    accel = float(accel)
    if not (math.isfinite(accel) and accel >= 0):
        raise ValueError(f"accel must be a finite number >= 0, got {accel!r}")
    if teacher_seg.dim() < 3 or teacher_seg.shape[0] < 2 or teacher_seg.shape[1:] != y_end.shape:
        raise ValueError(f"teacher_seg must have shape (S+1, B, d) with S >= 1 and y_end shape (B, d); "
                         f"got {tuple(teacher_seg.shape)} and {tuple(y_end.shape)}")
    if w2_samples is not None:
        n = int(w2_samples)
        if n < 1:
            raise ValueError(f"w2_samples must be an integer >= 1, got {w2_samples!r}")
        teacher_seg, y_end = teacher_seg[:, :n], y_end[:n]
    S = teacher_seg.shape[0] - 1
    s = torch.arange(S + 1, dtype=teacher_seg.dtype, device=teacher_seg.device) / S
    s = s.reshape((-1,) + (1,) * (teacher_seg.dim() - 1))
    x0, x1 = teacher_seg[0], teacher_seg[-1]
    student = x0 + s * (y_end - x0)
    chord = x0 + s * (x1 - x0)
    sq = coupled_sq_errors(student, teacher_seg)  # (S+1, B)
    sup_rms = float(sq.mean(dim=1).sqrt().max())
    endpoint_rmse = float(sq[-1].mean().sqrt())
    chord_rms = float(coupled_sq_errors(teacher_seg, chord).amax(dim=0).mean().sqrt())
    sup_w2 = None
    if w2_samples is not None:
        sup_w2 = float(w2_along_path(student, teacher_seg).max())
    bound_a = endpoint_rmse + accel * delta * delta / 8.0
    bound_c = endpoint_rmse + chord_rms
    lhs = sup_w2 if sup_w2 is not None else sup_rms
    return IntervalBound(delta=delta, accel=accel, endpoint_rmse=endpoint_rmse, sup_rms=sup_rms, sup_w2=sup_w2,
                         chord_rms=chord_rms, bound_accel=bound_a, bound_chord=bound_c,
                         ratio_accel=_ratio(lhs, bound_a), ratio_chord=_ratio(lhs, bound_c),
                         ratio_rms_accel=_ratio(sup_rms, bound_a))


def interval_bound_check(step: Callable[[torch.Tensor, float, float], torch.Tensor], teacher: TeacherTrajectory,
                         grid: torch.Tensor, sub_points: int = 8, w2_samples: Optional[int] = None) -> list[IntervalBound]:
    """:func:`interval_bound` on every interval of a student grid, the student started on the teacher.

    Args:
        step: ``step(x, t, t_next) -> y`` one student step (``x: (B, d)`` float64 teacher states).
        teacher: the fine teacher (:func:`teacher_trajectory`); its states at the student grid times
            are the starting points, its fine trajectory gives ``X_τ`` and ``A`` per interval
            (:meth:`TeacherTrajectory.max_acceleration`).
        grid: ``(M+1,)`` the student grid (inside the teacher's time range).
        sub_points: ``S``: points ``s = j/S`` per interval where the path is compared.
        w2_samples: see :func:`interval_bound`.
    """
    grid = check_time_grid(grid)
    if isinstance(sub_points, bool) or not isinstance(sub_points, int) or sub_points < 1:
        raise ValueError(f"sub_points must be an integer >= 1, got {sub_points!r}")
    out = []
    s = torch.arange(sub_points + 1, dtype=torch.float64) / sub_points
    for k in range(grid.numel() - 1):
        t0, t1 = float(grid[k]), float(grid[k + 1])
        seg = teacher.at(t0 + s * (t1 - t0))
        with torch.no_grad():
            y_end = step(seg[0], t0, t1).to(seg.dtype)
        out.append(interval_bound(seg, y_end, abs(t1 - t0), teacher.max_acceleration(t0, t1), w2_samples))
    return out


def euler_path_bound(eps: float, accel: float, lipschitz: float, delta: float, m: int) -> float:
    """``(ε + A h/2)(e^{LΔ} - 1)/L`` with ``h = Δ/M`` (``(ε + A h/2) Δ`` at ``L = 0``): the path-error
    bound of ``M`` Euler steps of a field ``ε``-close to a teacher field with Lipschitz constant ``L``
    and trajectory acceleration ``≤ A`` (docs/mathematics.md §8)."""
    eps, accel, lipschitz = float(eps), float(accel), float(lipschitz)
    if min(eps, accel, lipschitz) < 0:
        raise ValueError("eps, accel and lipschitz must be >= 0")
    delta = check_positive("delta", delta)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an integer >= 1, got {m!r}")
    growth = delta if lipschitz == 0 else math.expm1(lipschitz * delta) / lipschitz
    return (eps + accel * delta / (2.0 * m)) * growth


def gronwall_constant(t: Sequence[float], lipschitz: Sequence[float], accel: Sequence[float], delta: float) -> float:
    """Constant ``C`` of the Euler path-error bound ``err ≤ C / M`` with time-varying ``L(t)`` and ``A(t)``.

    ``M`` uniform Euler steps of ``h = Δ/M`` from ``T`` down to ``t_min``: the local error of a step at
    time ``s`` is ``≤ A(s) h²/2`` and is carried to any later (smaller) time ``τ`` with the factor
    ``exp(∫_τ^s L) ≤ exp(∫_{t_min}^s L)``, so ``sup_τ err ≤ (h/2) ∫ A(s) exp(∫_{t_min}^s L) ds``:

        C = (Δ/2) ∫_{t_min}^{T} A(s) exp(∫_{t_min}^{s} L(r) dr) ds    (trapezoid rule on the given nodes).

    ``t``: nodes (any order, ``≥ 2``), ``lipschitz``, ``accel``: ``L`` and ``A`` there (``≥ 0``).
    With a constant ``L`` and ``A`` this is ``(A Δ/2)(e^{LΔ} - 1)/L``, :func:`euler_path_bound` at ``ε = 0``
    times ``M``.
    """
    tt = np.asarray(t, dtype=np.float64)
    L = np.asarray(lipschitz, dtype=np.float64)
    A = np.asarray(accel, dtype=np.float64)
    if tt.ndim != 1 or tt.size < 2 or L.shape != tt.shape or A.shape != tt.shape:
        raise ValueError("t, lipschitz and accel must be 1D of the same length >= 2")
    if not (np.all(np.isfinite(L)) and np.all(L >= 0) and np.all(np.isfinite(A)) and np.all(A >= 0)):
        raise ValueError("lipschitz and accel must be finite and >= 0")
    delta = check_positive("delta", delta)
    order = np.argsort(tt)
    tt, L, A = tt[order], L[order], A[order]
    dt = np.diff(tt)
    cumL = np.concatenate([[0.0], np.cumsum(0.5 * (L[1:] + L[:-1]) * dt)])
    g = A * np.exp(cumL)
    return float(0.5 * delta * np.sum(0.5 * (g[1:] + g[:-1]) * dt))


def local_slopes(m: Sequence[float], err: Sequence[float]) -> list:
    """Slopes ``log(err_{i+1}/err_i) / log(m_{i+1}/m_i)`` between consecutive step counts:
    ``[{"m": [m_i, m_{i+1}], "slope": s}, ...]`` (NaN where an error is not positive)."""
    m = [float(v) for v in m]
    e = [float(v) for v in err]
    if len(m) != len(e) or len(m) < 2:
        raise ValueError("m and err must have the same length >= 2")
    out = []
    for i in range(len(m) - 1):
        ok = e[i] > 0 and e[i + 1] > 0 and m[i] > 0 and m[i + 1] > 0 and m[i] != m[i + 1]
        s = math.log(e[i + 1] / e[i]) / math.log(m[i + 1] / m[i]) if ok else float("nan")
        out.append({"m": [m[i], m[i + 1]], "slope": s})
    return out


def lipschitz_profile(field: Callable, states: torch.Tensor, times: torch.Tensor, eps: Sequence[float] = (1e-3, 1e-5),
                      n_samples: int = 100) -> dict:
    """The Lipschitz constant of ``x ↦ field(x, t)`` along a trajectory, by central finite differences.

    At every time ``times[q]`` and for the first ``n_samples`` states ``states[q, :n]`` (``(Q, B, d)``),
    the Jacobian is estimated column by column, ``J e_i ≈ (F(x + ε e_i) - F(x - ε e_i)) / (2ε)``, and its
    spectral norm taken (the local Lipschitz constant). Two ``ε``: where the field is smooth both agree;
    a value that grows as ``ε`` shrinks marks a jump (a finite difference across a discontinuity is
    ``jump/(2ε)``). Returns ``{"t": [...], "eps": {str(ε): {"max", "p99", "median": [...]}}}``.
    """
    if states.dim() != 3 or states.shape[0] != torch.as_tensor(times).numel():
        raise ValueError("states must have shape (Q, B, d) with one time per row of times")
    times = torch.as_tensor(times, dtype=states.dtype, device=states.device).reshape(-1)
    n = min(int(n_samples), states.shape[1])
    if n < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples!r}")
    d = states.shape[2]
    eye = torch.eye(d, dtype=states.dtype, device=states.device)
    out = {"t": [float(v) for v in times], "n_samples": n, "eps": {}}
    for e in eps:
        e = check_positive("eps", e)
        rec = {"max": [], "p99": [], "median": []}
        for q in range(times.numel()):
            x = states[q, :n]
            pts = torch.cat([x[:, None, :] + e * eye[None], x[:, None, :] - e * eye[None]], dim=1).reshape(-1, d)
            tq = times[q].expand(pts.shape[0])
            with torch.no_grad():
                F = field(pts, tq).reshape(n, 2, d, d)  # (n, ±, column i, output)
            J = ((F[:, 0] - F[:, 1]) / (2.0 * e)).transpose(1, 2)  # (n, out, in)
            norms = torch.linalg.matrix_norm(J, ord=2)
            rec["max"].append(float(norms.max()))
            rec["p99"].append(float(torch.quantile(norms, 0.99)))
            rec["median"].append(float(norms.median()))
        out["eps"][repr(float(e))] = rec
    return out


# ------------------------------------------------------------------------------------------------
# a network-free teacher for the distiller


def fit_velocity_mlp(model: nn.Module, path: Any, support: torch.Tensor, field: Callable, *,
                     n_points: int = 16384, steps: int = 1000, batch_size: int = 512, lr: float = 2e-3,
                     t_min: float = 0.0, seed: int = 0, progress: bool = False, data_sigma: float = 0.0) -> dict:
    """Regress ``model(x, t)`` on an exact field: ``min E |model(x_t, t) - field(x_t, t)|² / d``.

    Training pairs: ``n_points`` draws ``x0`` from ``support`` (uniform; plus ``N(0, data_sigma² I)``
    noise for Gaussian-mixture data), ``t ~ U[t_min, T]``,
    ``x_t = path.sample(x0, t).x_t`` (the path's own marginals), target ``field(x_t, t)`` computed
    once in float64 (the exact field is the expensive part). Then ``steps`` AdamW steps (cosine
    learning rate) on minibatches of that set. ``model`` is trained in place in its own dtype and
    device. Returns ``{"final_mse", "losses"}`` (``losses`` every 10 steps).
    """
    for name, v in (("n_points", n_points), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    check_positive("lr", lr)
    p = next(model.parameters())
    dtype, device = p.dtype, p.device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    sup = support.to(device=device, dtype=torch.float64)
    idx = torch.randint(sup.shape[0], (n_points,), generator=gen)
    t_lo = max(float(t_min), float(getattr(path, "t_eps", 0.0)))
    t = (t_lo + (path.T - t_lo) * torch.rand(n_points, generator=gen, dtype=torch.float64)).to(device)
    x0 = sup[idx.to(device)]
    data_sigma = check_in_range("data_sigma", data_sigma, 0.0, math.inf)
    if data_sigma > 0:
        x0 = x0 + data_sigma * torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(device)
    x = path.sample(x0, t, generator=None if device.type != "cpu" else gen).x_t
    with torch.no_grad():
        u = torch.cat([field(x[i:i + 4096], t[i:i + 4096]) for i in range(0, n_points, 4096)])
    x, t, u = x.to(dtype), t.to(dtype), u.to(dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5 * (1.0 + math.cos(math.pi * min(n, steps) / steps)))
    model.train()
    losses = []
    tail = []
    for n in Progress(steps, "fit exact field", enabled=progress).iterate(range(steps)):
        b = torch.randint(n_points, (batch_size,), generator=gen).to(device)
        loss = (model(x[b], t[b]) - u[b]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        lv = float(loss.detach())
        if n % 10 == 0:
            losses.append(lv)
        if n >= steps - max(1, steps // 10):
            tail.append(lv)
    model.eval()
    return {"final_mse": sum(tail) / len(tail), "losses": losses}


class ExactTeacherDistiller(Distiller):
    """:class:`kacnum.students.distill.Distiller` whose stage-1 teacher is a network-free field.

    Everything is the distiller's (schedules, sources, roll-out pools, EMA, checkpoints); only the
    stage-1 teacher map changes: ``exact_field`` (e.g. :class:`ExactField`) integrated over each
    student interval with ``N_1`` sub-steps of ``config.teacher_method`` (RK4 is a good choice),
    instead of the network ``teacher``. The network ``teacher`` (e.g. an MLP fitted to the exact
    field by :func:`fit_velocity_mlp`) still initialises the first student. Unlabelled data only.
    """

    def __init__(self, teacher: nn.Module, exact_field: Callable, *args, **kwargs):
        super().__init__(teacher, *args, **kwargs)
        if self.labels is not None:
            raise ValueError("ExactTeacherDistiller is for unlabelled data (labels must be None)")
        self.exact_field = exact_field

    def stage_teacher(self, stage: int):
        st = self._stage_index(stage, allow_teacher=False)
        if st == 1:
            return FlowTeacher(self.exact_field, self.grid(1), self.config.substeps[0], self.config.teacher_method)
        return super().stage_teacher(stage)

    def student_field(self, stage: int) -> ModelField:
        """The stage's student as a velocity field ``field(x, t)`` on float64 states (velocity
        parameterisation only: an ``M``-step Euler sampler on the stage's grid)."""
        if self.config.parameterization != "velocity":
            raise ValueError("student_field needs parameterization='velocity'")
        return ModelField(self.student(stage), self.dtype)

    def student_step_fn(self, stage: int) -> Callable[[torch.Tensor, float, float], torch.Tensor]:
        """``step(x, t, t_next)``: one step of the stage's student on float64 states."""
        model, dtype, param = self.student(stage), self.dtype, self.config.parameterization

        def step(x: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
            b = x.shape[0]
            tt = torch.full((b,), t, dtype=dtype, device=x.device)
            tn = torch.full((b,), t_next, dtype=dtype, device=x.device)
            with torch.no_grad():
                return student_step(model, x.to(dtype), tt, tn, None, param).to(x.dtype)

        return step
