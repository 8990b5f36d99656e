"""Event-driven simulation of the finite-speed processes, seen on a time grid.

A path starts at 0 and moves in straight lines; its velocity changes at the events ``s_1 < s_2 < …`` of
a Poisson clock of rate ``rate`` (i.i.d. ``Exp(rate)`` holding times). With ``s_0 = 0`` and the velocity
``V_k`` on ``[s_k, s_{k+1})``,

    X_t = P_k + V_k (t - s_k)   for s_k ≤ t < s_{k+1},        P_k = Σ_{j<k} V_j (s_{j+1} - s_j).

The processes differ only in how the velocities are chosen, which a *steering rule* supplies:

* :class:`AlternatingSigns` (the 1D Kac process, docs/mathematics.md §1): ``V_k = S c (-1)^k`` with a
  random initial sign ``S = ±1``;
* :class:`UniformDirections` (the planar random flight, docs/mathematics.md §14):
  ``V_k = c (cos θ_k, sin θ_k)`` with i.i.d. angles ``θ_k`` uniform on ``[0, 2π)``.

The simulation is exact (no time step); it is the Monte Carlo reference of the tests and figures, not a
training sampler. The draws are taken from the generator in a fixed order: the rule's
:meth:`~Steering.before_clock` uniforms, the holding times in blocks of ``(n, m)`` until every path has
passed ``max(time_grid)``, then the rule's per-segment uniforms. A seeded generator therefore gives the
same paths every time.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence, Tuple, Union

import torch

from kacnum.core.checks import check_positive, check_times

__all__ = ["EventPaths", "Steering", "AlternatingSigns", "UniformDirections", "simulate_event_paths"]

#: ``uniform(*size)``: a tensor of U[0, 1) draws from the simulation's generator, dtype and device
Uniform = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class EventPaths:
    """``n`` event-driven paths on a grid of ``G`` times (block shape ``()`` in 1D, ``(2,)`` in the plane).

    Attributes:
        times: ``(G,)`` the grid.
        positions: ``(n, G, *block)`` the position at each grid time.
        velocities: ``(n, G, *block)`` the velocity at each grid time (right-continuous).
        event_counts: ``(n, G)`` the number of events up to each grid time (``N_t``, int64).
    """

    times: torch.Tensor
    positions: torch.Tensor
    velocities: torch.Tensor
    event_counts: torch.Tensor

    @property
    def atom_mask(self) -> torch.Tensor:
        """``(n, G)`` True where a path has had no event yet (it is still on the boundary of its ball, ``|x| = ct``)."""
        return self.event_counts == 0


class Steering(Protocol):
    """How a process chooses its velocities (see the module docstring).

    The velocity on segment ``k`` is ``scale * V[:, k]``; positions are accumulated in units of ``V`` and
    multiplied by ``scale`` once, at the end (``scale = None`` means 1).
    """

    def before_clock(self, n: int, uniform: Uniform) -> Optional[torch.Tensor]:
        """Draws taken before the holding times; the result is handed to :meth:`segments`."""
        ...

    def segments(
        self, state: Optional[torch.Tensor], n: int, count: int, uniform: Uniform
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(V (n, count, *block), scale)`` for ``count`` segments; ``scale`` broadcasts to ``(n, 1, *block)``."""
        ...


@dataclass(frozen=True)
class AlternatingSigns:
    """The 1D Kac rule: ``V_k = (-1)^k`` in units of ``scale = S c``, ``S = ±1`` with probability 1/2 each.

    One uniform per path before the clock (``U < 1/2`` gives ``S = -1``), none afterwards. Positions are
    accumulated as alternating sums of holding times and multiplied by ``S c`` at the end.
    """

    speed: float

    def before_clock(self, n: int, uniform: Uniform) -> torch.Tensor:
        u = uniform(n)
        return torch.where(u < 0.5, -1.0, 1.0).to(u.dtype)

    def segments(self, state: torch.Tensor, n: int, count: int, uniform: Uniform):
        k = torch.arange(count, device=state.device)
        alternating = 1.0 - 2.0 * (k % 2).to(state.dtype)
        return alternating[None, :].expand(n, -1), state[:, None] * self.speed


@dataclass(frozen=True)
class UniformDirections:
    """The planar-flight rule: ``V_k = c (cos θ_k, sin θ_k)``, ``θ_k = 2π U_k`` i.i.d., drawn after the clock."""

    speed: float

    def before_clock(self, n: int, uniform: Uniform) -> None:
        return None

    def segments(self, state: None, n: int, count: int, uniform: Uniform):
        theta = 2.0 * math.pi * uniform(n, count)
        return self.speed * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1), None


def _check_arguments(time_grid, n, dtype, device) -> Tuple[torch.Tensor, int]:
    if isinstance(n, bool) or int(n) != n or int(n) <= 0:
        raise ValueError(f"n (number of paths) must be a positive integer, got {n!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    grid = torch.as_tensor(time_grid, dtype=dtype, device=device)
    if grid.dim() != 1 or grid.numel() == 0:
        raise ValueError("time_grid must be a non-empty 1D sequence of times")
    check_times("time_grid", grid, 0.0, math.inf)
    return grid, int(n)


def _event_times(n: int, rate: float, t_end: float, uniform: Uniform, like: torch.Tensor) -> torch.Tensor:
    """``(n, M)`` event times ``s_1 < … < s_M`` per path, with ``s_M > t_end`` on every path.

    Holding times ``-log(1 - U)/rate`` are drawn in blocks of ``m = rate·t_end + 6 sqrt(rate·t_end + 1) + 8``
    per path (the Poisson count plus six standard deviations, so one block nearly always suffices).
    ``like`` gives the dtype and device.
    """
    m = int(rate * t_end + 6.0 * math.sqrt(rate * t_end + 1.0) + 8)
    times = like.new_zeros(n, 0)
    last = like.new_zeros(n)
    while True:
        hold = -torch.log1p(-uniform(n, m)) / rate
        block = last[:, None] + torch.cumsum(hold, dim=1)
        times = torch.cat([times, block], dim=1)
        last = block[:, -1]
        if bool((last > t_end).all()):
            return times


def _read_on_grid(grid: torch.Tensor, event_times: torch.Tensor, V: torch.Tensor, scale) -> EventPaths:
    """Positions and velocities on ``grid`` of the paths with events ``event_times (n, M)`` and velocities
    ``V (n, M + 1, *block)`` (``V[:, k]`` on ``[s_k, s_{k+1})``), times ``scale`` if given."""
    n, M = event_times.shape
    block = tuple(V.shape[2:])
    ones = (1,) * len(block)
    s = torch.cat([torch.zeros_like(event_times[:, :1]), event_times], dim=1)  # (n, M + 1), s_0 = 0
    steps = V[:, :M] * torch.diff(s, dim=1).reshape((n, M) + ones)
    turns = torch.cat([torch.zeros((n, 1) + block, dtype=s.dtype, device=s.device), torch.cumsum(steps, dim=1)], dim=1)
    counts = torch.searchsorted(event_times.contiguous(), grid.expand(n, -1).contiguous(), right=True)
    G = grid.shape[0]
    idx = counts.reshape((n, G) + ones).expand((n, G) + block)
    v_now = torch.gather(V, 1, idx)
    since = (grid[None, :] - torch.gather(s, 1, counts)).reshape((n, G) + ones)
    pos = torch.gather(turns, 1, idx) + v_now * since
    if scale is not None:
        pos, v_now = scale * pos, scale * v_now
    return EventPaths(times=grid, positions=pos, velocities=v_now, event_counts=counts)


def simulate_event_paths(
    time_grid: Union[Sequence[float], torch.Tensor],
    n: int,
    rate: float,
    steering: Steering,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
) -> EventPaths:
    """Simulate ``n`` paths exactly and read them on ``time_grid``.

    Args:
        time_grid: ``(G,)`` times ``≥ 0`` (any order, repeats allowed).
        n: number of paths (a positive integer).
        rate: the event rate (``Exp(rate)`` holding times).
        steering: the velocity rule, e.g. :class:`AlternatingSigns` or :class:`UniformDirections`.
        generator: a ``torch.Generator`` on ``device``; the same state gives the same paths.
        dtype: float32 or float64; device: of the grid and the output.

    Returns:
        :class:`EventPaths`.
    """
    grid, n = _check_arguments(time_grid, n, dtype, device)
    rate = check_positive("rate (event rate)", rate)
    uniform = functools.partial(_uniform, generator=generator, dtype=dtype, device=grid.device)
    state = steering.before_clock(n, uniform)
    event_times = _event_times(n, rate, float(grid.max()), uniform, like=grid)
    V, scale = steering.segments(state, n, event_times.shape[1] + 1, uniform)
    return _read_on_grid(grid, event_times, V, scale)


def _uniform(*size: int, generator, dtype, device) -> torch.Tensor:
    return torch.rand(size, generator=generator, dtype=dtype, device=device)
