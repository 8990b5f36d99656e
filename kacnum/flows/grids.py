"""Time grids for the fixed-grid solvers of :mod:`kacnum.flows.solvers`.

Time grids (:func:`make_time_grid`, the user's choice in the pipeline: ``--time-grid``), all
decreasing from ``t_0 = T`` (latent end) to ``t_N = t_min`` (data end, usually 0), end points exact:

==========  ==========================================================================================
kind        grid
==========  ==========================================================================================
uniform     ``t_i = T - (i/N)(T - t_min)`` (``path.default_time_grid``; the pipeline's default)
power:RHO   ``t_i = t_min + (T - t_min)(1 - i/N)^RHO``: steps shrink towards the data end ``t_min`` for
            ``RHO > 1`` (``power:2``, ``power:3``; EDM's rho-schedule when ``t_min = 0``)
kac         uniform in the Kac atom mass ``m(t) = e^{-a g(t)}`` (probability that a coordinate of the
            path's Kac noise has not switched yet): ``m(t_i) = m(T) + (i/N)(m(t_min) - m(T))``; needs a
            :class:`~kacnum.flows.paths.KacPath` (its ``a`` and ``g``), refused for other paths
==========  ==========================================================================================
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from kacnum.core.checks import check_positive

__all__ = ["GridLike", "check_time_grid", "uniform_grid", "power_grid", "subdivide_grid", "TIME_GRIDS", "parse_time_grid",
           "make_time_grid"]

GridLike = Union[torch.Tensor, Sequence[float]]


def check_time_grid(time_grid: GridLike, device=None, name: str = "time_grid") -> torch.Tensor:
    """Return ``time_grid`` as a 1D floating tensor after checking it.

    A valid grid has length ``N+1 >= 2``, finite entries and is strictly monotone (either
    direction). A sequence becomes a float64 tensor; a floating tensor keeps its dtype.
    """
    if torch.is_tensor(time_grid):
        grid = time_grid if time_grid.is_floating_point() else time_grid.to(torch.float64)
    else:
        try:
            grid = torch.as_tensor(list(time_grid), dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a 1D tensor or sequence of numbers") from None
    if grid.dim() != 1 or grid.numel() < 2:
        raise ValueError(
            f"{name} must be 1D with at least 2 points (N+1 >= 2), got shape {tuple(grid.shape)}"
        )
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    d = grid[1:] - grid[:-1]
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise ValueError(f"{name} must be strictly monotone (all steps > 0 or all steps < 0)")
    return grid if device is None else grid.to(device)


def _check_steps(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    return n


def _check_ends(t_start, t_end) -> tuple[float, float]:
    a, b = float(t_start), float(t_end)
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"t_start and t_end must be finite, got {t_start!r}, {t_end!r}")
    if a == b:
        raise ValueError(f"t_start and t_end must differ, got {t_start!r} twice")
    return a, b


def uniform_grid(t_start: float, t_end: float, n_steps: int, dtype=torch.float64,
                 device=None) -> torch.Tensor:
    """``t_i = t_start + (i / N) (t_end - t_start)``, ``i = 0..N``: shape ``(n_steps + 1,)``.

    Either direction; the end points are exact.
    """
    a, b = _check_ends(t_start, t_end)
    n = _check_steps("n_steps", n_steps)
    i = torch.arange(n + 1, dtype=torch.float64)
    grid = a + (b - a) * (i / n)
    grid[0], grid[-1] = a, b
    return grid.to(dtype=dtype, device=device)


def power_grid(t_start: float, t_end: float, n_steps: int, rho: float = 7.0,
               dtype=torch.float64, device=None) -> torch.Tensor:
    """Polynomial spacing ``t_i = t_end + (t_start - t_end) (1 - i/N)^rho``, shape ``(N + 1,)``.

    Denser near ``t_end`` for ``rho > 1`` (uniform for ``rho = 1``), either direction. With
    ``t_end = 0`` this is EDM's rho-schedule ``(t_start^{1/rho} (1 - i/N))^rho``; for ``t_end > 0``
    it differs from EDM's (which interpolates ``t^{1/rho}`` and needs positive ends) in that the
    clustering is always towards ``t_end``, whatever the sign or direction.
    """
    a, b = _check_ends(t_start, t_end)
    n = _check_steps("n_steps", n_steps)
    r = check_positive("rho", rho)
    u = 1.0 - torch.arange(n + 1, dtype=torch.float64) / n
    grid = b + (a - b) * u.pow(r)
    grid[0], grid[-1] = a, b
    return grid.to(dtype=dtype, device=device)


def subdivide_grid(time_grid: GridLike, n: int) -> torch.Tensor:
    """Insert ``n - 1`` equally spaced points in every interval: ``(N+1,) -> (N n + 1,)``.

    The original points are kept exactly (entry ``k n`` of the result is ``time_grid[k]``), so a
    teacher taking ``n`` sub-steps per student interval runs on ``subdivide_grid(student, n)``.
    """
    grid = check_time_grid(time_grid)
    n = _check_steps("n", n)
    frac = torch.arange(n, dtype=grid.dtype, device=grid.device) / n  # (n,)
    left, h = grid[:-1, None], (grid[1:] - grid[:-1])[:, None]
    inner = (left + h * frac).reshape(-1)
    inner[::n] = grid[:-1]
    return torch.cat([inner, grid[-1:]])


#: the kinds :func:`make_time_grid` accepts (``power:RHO`` with any finite ``RHO > 0``)
TIME_GRIDS = ("uniform", "power:RHO", "kac")


def parse_time_grid(kind: str) -> tuple[str, Optional[float]]:
    """``"uniform"`` -> ``("uniform", None)``, ``"power:2"`` -> ``("power", 2.0)``, ``"kac"`` -> ``("kac", None)``.

    Raises ``ValueError`` naming ``time_grid`` and the accepted forms for anything else.
    """
    forms = "'uniform', 'power:RHO' (RHO > 0, e.g. 'power:2') or 'kac'"
    if not isinstance(kind, str):
        raise ValueError(f"time_grid must be a string, one of {forms}; got {kind!r}")
    k = kind.strip().lower()
    if k in ("uniform", "kac"):
        return k, None
    if k.startswith("power:"):
        try:
            rho = float(k[len("power:"):])
        except ValueError:
            rho = float("nan")
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"time_grid {kind!r}: the power RHO must be a finite number > 0 ({forms})")
        return "power", rho
    raise ValueError(f"time_grid must be one of {forms}; got {kind!r}")


def _time_grid_label(kind: str) -> str:
    name, rho = parse_time_grid(kind)
    return name if rho is None else f"power:{rho:g}"


def _g_inverse(path, g_values: torch.Tensor, T: float) -> torch.Tensor:
    """``t`` in ``[0, T]`` with ``path.g(t) = g_values`` (``g`` increasing): bisection in float64."""
    lo = torch.zeros_like(g_values)
    hi = torch.full_like(g_values, T)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        below = torch.as_tensor(path.g(mid), dtype=torch.float64) < g_values
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
        if bool(((hi - lo) <= 4 * torch.finfo(torch.float64).eps * T).all()):
            break
    return 0.5 * (lo + hi)


def make_time_grid(kind: str, n_steps: int, T: float, t_min: float = 0.0, path=None,
                   dtype=torch.float64, device=None) -> torch.Tensor:
    """Decreasing sampling grid ``T = t_0 > t_1 > ... > t_N = t_min``, shape ``(n_steps + 1,)``.

    Args:
        kind: ``"uniform"``, ``"power:RHO"`` (``t_i = t_min + (T - t_min)(1 - i/N)^RHO``, small steps
            near the data end ``t_min`` for ``RHO > 1``) or ``"kac"`` (uniform in the atom mass
            ``e^{-a g(t)}`` of ``path``). See the table in the module docstring.
        n_steps: ``N >= 1``.
        T, t_min: latent and data ends, ``0 <= t_min < T``, both finite.
        path: the probability path; required for ``"kac"``, where it must be a
            :class:`~kacnum.flows.paths.KacPath` or :class:`~kacnum.flows.paths.FlightPath` (any ``ProcessPath``: the atom
            mass of a block is ``e^{-a g(t)}`` for both) with this ``T`` (others raise ``ValueError``).

    The end points are exact (``t_0 == T``, ``t_N == t_min``) and every step is negative.
    """
    name, rho = parse_time_grid(kind)
    n = _check_steps("n_steps", n_steps)
    a, b = _check_ends(T, t_min)
    if not (0.0 <= b < a):
        raise ValueError(f"time_grid needs 0 <= t_min < T (a decreasing grid from the latent end T to the "
                         f"data end t_min); got T={T!r}, t_min={t_min!r}")
    if name == "uniform":
        grid = uniform_grid(a, b, n)
    elif name == "power":
        grid = power_grid(a, b, n, rho=rho)
    else:
        if getattr(path, "process", None) is None:  # a ProcessPath (Kac or flight) has a noise process
            got = "no path" if path is None else type(path).__name__
            raise ValueError(f"time_grid 'kac' (uniform in the atom mass e^(-a g(t))) needs a KacPath (or FlightPath) with its "
                             f"switching rate a and Kac time g(t); got {got}. Use 'uniform' or 'power:RHO' "
                             f"for other paths")
        if abs(float(path.T) - a) > 1e-12 * max(1.0, abs(a)):
            raise ValueError(f"time_grid 'kac': T={a!r} differs from the path's T={path.T!r}")
        g_end = torch.tensor([float(path.g(b)), float(path.g(a))], dtype=torch.float64)
        m_lo, m_hi = torch.exp(-path.a * g_end).tolist()  # m(t_min) (large), m(T) (small)
        i = torch.arange(n + 1, dtype=torch.float64)
        m = m_hi + (i / n) * (m_lo - m_hi)  # from m(T) up to m(t_min)
        g_vals = -torch.log(m) / path.a
        grid = _g_inverse(path, g_vals, a)
        grid[0], grid[-1] = a, b
        if not bool((grid.diff() < 0).all()):
            raise ValueError(f"time_grid 'kac' with {n} steps is not strictly decreasing in float64 for "
                             f"a={path.a:g} (the atom mass e^(-a g(T)) = {m_hi:.3g} underflows the steps); "
                             f"use fewer steps or 'power:RHO'")
    return grid.to(dtype=dtype, device=device)


