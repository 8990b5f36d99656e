"""Fixed-grid ODE solvers over an explicit time grid, counting function evaluations (docs/mathematics.md §6).

The solvers integrate ``dx/dt = field(x, t)`` along a strictly monotone grid
``t_0, t_1, ..., t_N`` (decreasing ``T > ... > t_min`` for sampling, increasing also works) and
return a :class:`SolveResult` with the final state and the number of evaluations (NFE).

Conventions shared by every function here:

- ``field(x, t) -> dx/dt`` with ``x: (B, ...)`` and ``t: (B,)`` (one time per row, all rows equal,
  same dtype/device as ``x``); the output has ``x``'s shape.
- ``h_n = t_{n+1} - t_n`` (negative on a decreasing grid); ``f_n = field(x_n, t_n)``.
- NFE is counted by the solver (``SolveResult.nfe``): the number of calls of ``field``. A field
  that runs several network evaluations per call (classifier-free guidance runs two) declares
  ``field.nfe_per_call`` and ``SolveResult.nfe_model = nfe * nfe_per_call``.
- Nothing here switches autograd off: wrap the call in ``torch.no_grad()`` when sampling, leave it
  on when a loss backpropagates through a (one-step) solve.

Methods (order of the global error in the largest step, evaluations per step):

========  =====  ====  ==========================================================================
method    order  NFE   update
========  =====  ====  ==========================================================================
euler     1      1     ``x + h f(x, t)``
heun      2      2     ``k1 = f(x, t)``, ``k2 = f(x + h k1, t + h)``, ``x + h (k1 + k2) / 2``
midpoint  2      2     ``k1 = f(x, t)``, ``x + h f(x + h k1 / 2, t + h / 2)``
rk4       4      4     classical Runge-Kutta, weights ``(1, 2, 2, 1) / 6``
ab2       2      1     variable-step Adams-Bashforth 2 (Euler first step), see :func:`integrate`
========  =====  ====  ==========================================================================

Time grids live in :mod:`kacnum.flows.grids` (re-exported here).

Heun's second stage evaluates the field at ``t_{n+1}`` on *every* step, the last one included,
so that it is the trapezoidal predictor-corrector of order 2 with exactly 2 NFE per step. (EDM
replaces the last step by Euler because its denoiser is undefined at sigma = 0; here the field
must therefore be defined at the final grid time: end the grid at ``t_min > 0`` if it is not.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from kacnum.core.progress import Progress

from kacnum.core.checks import check_finite
from kacnum.flows.grids import (TIME_GRIDS, GridLike, _check_ends, check_time_grid, make_time_grid, parse_time_grid,  # noqa: F401
                                power_grid, subdivide_grid, uniform_grid)

__all__ = [
    "METHODS",
    "NFE_PER_STEP",
    "SolveResult",
    "integrate",
    "step",
    "ddim_sample",
    "uniform_grid",
    "power_grid",
    "subdivide_grid",
    "check_time_grid",
    "TIME_GRIDS",
    "parse_time_grid",
    "make_time_grid",
]

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Evaluations of ``field`` per step (AB-2: one per step, the Euler first step included).
NFE_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, "rk4": 4, "ab2": 1}
METHODS = tuple(NFE_PER_STEP)


@dataclass(frozen=True)
class SolveResult:
    """Outcome of one solve.

    Attributes:
        x: final state, ``x``'s shape, at ``time_grid[-1]``.
        nfe: number of calls of ``field`` made by the solver.
        nfe_model: ``nfe * getattr(field, "nfe_per_call", 1)``: network evaluations.
        trajectory: ``(N+1, *x.shape)`` states at the grid times (``trajectory[0]`` is the
            initial state, ``trajectory[-1]`` equals ``x``), or ``None`` unless requested.
        time_grid: the grid, ``(N+1,)``, on ``x``'s device.
    """

    x: torch.Tensor
    nfe: int
    nfe_model: int
    trajectory: Optional[torch.Tensor]
    time_grid: torch.Tensor


# --------------------------------------------------------------------------------------------
# solvers


def _check_method(method: str) -> str:
    if method not in NFE_PER_STEP:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    return method


class _CountingField:
    """Calls ``field(x, t_vec)`` with ``t_vec = full((B,), t)`` and counts the calls."""

    def __init__(self, field: Field, like: torch.Tensor):
        self.field = field
        self.batch, self.dtype, self.device = like.shape[0], like.dtype, like.device
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        tv = torch.full((self.batch,), t, dtype=self.dtype, device=self.device)
        out = self.field(x, tv)
        if not torch.is_tensor(out) or out.shape != x.shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"field must return a tensor of x's shape {tuple(x.shape)}, got {got}")
        return out


def _euler(f: _CountingField, x, t: float, h: float):
    return x + h * f(x, t)


def _heun(f: _CountingField, x, t: float, h: float):
    k1 = f(x, t)
    k2 = f(x + h * k1, t + h)
    return x + (0.5 * h) * (k1 + k2)


def _midpoint(f: _CountingField, x, t: float, h: float):
    k1 = f(x, t)
    return x + h * f(x + (0.5 * h) * k1, t + 0.5 * h)


def _rk4(f: _CountingField, x, t: float, h: float):
    k1 = f(x, t)
    k2 = f(x + (0.5 * h) * k1, t + 0.5 * h)
    k3 = f(x + (0.5 * h) * k2, t + 0.5 * h)
    k4 = f(x + h * k3, t + h)
    return x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


_ONE_STEP = {"euler": _euler, "heun": _heun, "midpoint": _midpoint, "rk4": _rk4}


def _check_state(x) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() < 1 or not x.is_floating_point():
        raise ValueError("x must be a floating tensor of shape (B, ...) with a batch dimension")
    return check_finite("x", x)


def _result(x: torch.Tensor, counter: "_CountingField", field, traj: Optional[list], grid: torch.Tensor) -> SolveResult:
    """The :class:`SolveResult` of a finished solve: calls counted by ``counter``, network evaluations by the
    field's ``nfe_per_call`` (2 for a guided field)."""
    return SolveResult(x=x, nfe=counter.calls, nfe_model=counter.calls * int(getattr(field, "nfe_per_call", 1)),
                       trajectory=torch.stack(traj) if traj is not None else None, time_grid=grid)


def step(field: Field, x: torch.Tensor, t: float, t_next: float,
         method: str = "euler") -> tuple[torch.Tensor, int]:
    """One step of a one-step method from ``t`` to ``t_next``: returns ``(x_next, nfe)``.

    ``method`` in euler, heun, midpoint, rk4 (AB-2 needs the previous slope: use
    :func:`integrate`). ``step(field, x, t, s, "euler")`` is ``x + (s - t) field(x, t)``, the
    student update of endpoint distillation. Autograd stays on.
    """
    _check_method(method)
    if method not in _ONE_STEP:
        raise ValueError(f"method must be one of {', '.join(_ONE_STEP)} for a single step; "
                         f"got {method!r} (a multistep method: use integrate)")
    _check_state(x)
    a, b = _check_ends(t, t_next)
    f = _CountingField(field, x)
    return _ONE_STEP[method](f, x, a, b - a), f.calls


def integrate(field: Field, x: torch.Tensor, time_grid: GridLike, method: str = "ab2",
              return_trajectory: bool = False,
              callback: Optional[Callable[[int, float, torch.Tensor], None]] = None,
              progress: bool = False) -> SolveResult:
    """Integrate ``dx/dt = field(x, t)`` from ``time_grid[0]`` to ``time_grid[-1]``.

    Args:
        field: ``field(x, t)`` with ``x: (B, ...)``, ``t: (B,)`` -> ``dx/dt: (B, ...)``. An
            attribute ``nfe_per_call`` (default 1) scales ``nfe_model``.
        x: initial state ``(B, ...)`` at ``time_grid[0]``, floating, finite.
        time_grid: ``(N+1,)`` strictly monotone (either direction), ``N >= 1``. One grid for the
            whole batch.
        method: ``"euler"`` (N NFE), ``"heun"`` (2N), ``"midpoint"`` (2N), ``"rk4"`` (4N) or
            ``"ab2"`` (N). AB-2 with variable steps ``h_n = t_{n+1} - t_n``: Euler first step,
            then ``x_{n+1} = x_n + h_n [(1 + r_n) f_n - r_n f_{n-1}]``, ``r_n = h_n / (2 h_{n-1})``
            (the integral over ``[t_n, t_{n+1}]`` of the line through ``f_{n-1}``, ``f_n``).
        return_trajectory: also return the states at all grid times, ``(N+1, *x.shape)``.
        callback: ``callback(i, t, x)`` after step ``i`` (0-based) with ``t = time_grid[i+1]``
            (a float) and the new state ``x``.
        progress: a progress bar on a terminal, log lines otherwise (:class:`kacnum.core.progress.Progress`).

    Autograd is not switched off: wrap in ``torch.no_grad()`` to sample.
    """
    _check_method(method)
    _check_state(x)
    grid = check_time_grid(time_grid, device=x.device)
    ts = grid.tolist()
    n_steps = len(ts) - 1
    f = _CountingField(field, x)
    traj = [x] if return_trajectory else None
    f_prev, h_prev = None, None
    for i in Progress(n_steps, f"integrate[{method}]", enabled=progress).iterate(range(n_steps)):
        t, h = ts[i], ts[i + 1] - ts[i]
        if method == "ab2":
            f_n = f(x, t)
            if f_prev is None:
                x = x + h * f_n
            else:
                r = h / (2.0 * h_prev)
                x = x + h * ((1.0 + r) * f_n - r * f_prev)
            f_prev, h_prev = f_n, h
        else:
            x = _ONE_STEP[method](f, x, t, h)
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(i, ts[i + 1], x)
    return _result(x, f, field, traj, grid)


# --------------------------------------------------------------------------------------------
# VP diffusion baseline


def _per_row(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def ddim_sample(eps_model: Field, x: torch.Tensor, alpha_bar_fn: Callable[[torch.Tensor], torch.Tensor],
                time_grid: GridLike, eta: float = 0.0, generator: Optional[torch.Generator] = None,
                return_trajectory: bool = False,
                callback: Optional[Callable[[int, float, torch.Tensor], None]] = None,
                clip_x0: Optional[float] = None) -> SolveResult:
    """DDIM sampler for a VP diffusion ``x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps`` (baseline).

    Per step ``t -> s`` (one evaluation of ``eps_model``, at ``t``; never at the final time):

        eps_hat = eps_model(x_t, t),  x0_hat = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)
        x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z,
        sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s),  z ~ N(0, I).

    ``eta = 0`` is deterministic DDIM, ``eta = 1`` the DDPM posterior variance.

    Args:
        eps_model: ``eps_model(x, t)``, ``x: (B, ...)``, ``t: (B,)`` -> noise prediction, x's shape.
        x: ``(B, ...)`` state at ``time_grid[0]``.
        alpha_bar_fn: times ``(B,)`` -> alpha-bar ``(B,)`` in ``(0, 1]``; must be < 1 at every grid
            time but the last (``1 - ab_t`` divides when ``eta > 0``).
        time_grid: ``(N+1,)`` strictly monotone, usually decreasing to 0 (``ab = 1``).
        eta: stochasticity in ``[0, 1]``; ``generator`` seeds ``z``.
        clip_x0: clamp ``x0_hat`` to ``[-clip_x0, clip_x0]`` (the data range, 1 for images in [-1, 1])
            and recompute ``eps_hat = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)`` from it, as the DDPM
            and DDIM image samplers do; ``None`` (default): no clipping. An ε-model's data prediction
            ``x0_hat`` amplifies its error by ``sqrt((1 - ab_t) / ab_t)`` at high noise.
    """
    _check_state(x)
    eta = float(eta)
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"eta must be a number in [0, 1], got {eta!r}")
    if clip_x0 is not None:
        clip_x0 = float(clip_x0)
        if not (clip_x0 > 0 and math.isfinite(clip_x0)):
            raise ValueError(f"clip_x0 must be None or a finite number > 0, got {clip_x0!r}")
    grid = check_time_grid(time_grid, device=x.device)
    ts = grid.tolist()
    f = _CountingField(eps_model, x)
    b = x.shape[0]

    def alpha_bar(t: float) -> torch.Tensor:
        ab = alpha_bar_fn(torch.full((b,), t, dtype=x.dtype, device=x.device))
        ab = torch.as_tensor(ab, dtype=x.dtype, device=x.device).expand(b)
        if not bool(((ab > 0) & (ab <= 1)).all()):
            raise ValueError(f"alpha_bar_fn must return values in (0, 1]; got "
                             f"[{float(ab.min()):.6g}, {float(ab.max()):.6g}] at t={t:.6g}")
        return _per_row(ab, x)

    traj = [x] if return_trajectory else None
    ab_t = alpha_bar(ts[0])
    for i in range(len(ts) - 1):
        ab_s = alpha_bar(ts[i + 1])
        eps = f(x, ts[i])
        x0 = (x - (1.0 - ab_t).sqrt() * eps) / ab_t.sqrt()
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - ab_t.sqrt() * x0) / (1.0 - ab_t).sqrt()
        if eta > 0:
            sigma = eta * ((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s)).clamp_min(0).sqrt()
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = ab_s.sqrt() * x0 + (1.0 - ab_s - sigma**2).clamp_min(0).sqrt() * eps + sigma * z
        else:
            x = ab_s.sqrt() * x0 + (1.0 - ab_s).sqrt() * eps
        ab_t = ab_s
        if traj is not None:
            traj.append(x)
        if callback is not None:
            callback(i, ts[i + 1], x)
    return _result(x, f, eps_model, traj, grid)
