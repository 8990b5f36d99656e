"""Process paths ``X_t = f(t) X0 + N_{g(t)}`` for a finite-speed noise process ``N`` of independent blocks
(:mod:`kacnum.processes`): the Kac flow (:class:`KacPath`, docs/mathematics.md §4) and the isotropic Kac flow
on the planar random flight (:class:`FlightPath`, docs/mathematics.md §14).

One implementation of sampling, targets and exact fields, parameterised by the process and its per-block
kernel (:mod:`kacnum.flows.paths.kernels`). The target ``u_t = f'(t) x0 + g'(t) u_N(g(t), N | atom_mask)`` is
computed from the noise draw and its atom mask, never from ``x_t - f x0`` rebuilt in floating point, which
pushes atoms inside the support (docs/mathematics.md §3). The exact fields for finite data (§4) and
Gaussian-mixture data (§13) are in :mod:`kacnum.flows.paths.fields`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from kacnum.core.checks import check_positive
from kacnum.processes.flight import PlanarFlight
from kacnum.processes.kac import KacProcess
from kacnum.flows.paths.base import (PathSample, ProbabilityPath, TimeLike, _check_data, _check_data_sigma,
                                     _check_noise, _per_row)
from kacnum.flows.paths.fields import _fallback, _gm_pass, _mixture_pass, _velocity_with_atoms
from kacnum.flows.paths.kernels import _FlightKernel, _KacKernel

__all__ = ["ProcessPath", "KacPath", "FlightPath", "KAC_F_SCHEDULES", "KAC_G_SCHEDULES"]

KAC_F_SCHEDULES = ("linear", "exp")
KAC_G_SCHEDULES = ("t", "t2")

#: the exact-field kernel per block size of the noise process
_KERNELS = {1: _KacKernel, 2: _FlightKernel}


class ProcessPath(ProbabilityPath):
    """``X_t = f(t) X0 + N_{g(t)}`` for a noise process ``N`` of independent blocks (:mod:`kacnum.processes`).

    The one implementation behind :class:`KacPath` (``N`` = coordinate-wise Kac, blocks of 1) and
    :class:`FlightPath` (``N`` = planar random flights on pairs of coordinates, blocks of 2); data at
    ``t = 0``, latent at ``t = T``.

    Args:
        process: a :class:`~kacnum.processes.NoiseProcess` (``KacProcess`` or ``PlanarFlight``).
        T: horizon ``T > 0``.
        f: ``"linear"``: ``f(t) = 1 - t/T`` (default) or ``"exp"``: ``f(t) = e^{-t}``.
        g: ``"t"``: ``g(t) = t`` (default) or ``"t2"``: ``g(t) = T (t/T)²``.
        t_eps: training times are ``U[t_eps, T)`` (default 0: the target is bounded at ``t = 0``).

    Conditional target ``u(t, x | x0) = f'(t) x0 + g'(t) u_N(g(t), x - f(t) x0)``, computed from the noise
    draw and its atom mask (:meth:`sample`), so ``|u - f' x0| ≤ c |g'|`` per block in the block norm.
    Blocks of 2 are consecutive coordinates of the flattened sample (for ``(B, C, H, W)`` images with
    even ``W``: horizontally adjacent pixels); the number of coordinates must then be even.
    """

    t_min_default = 0.0

    def __init__(self, process, T: float = 1.0, f: str = "linear", g: str = "t", t_eps: float = 0.0):
        block = getattr(process, "block_size", None)
        if block not in (1, 2) or not all(hasattr(process, m) for m in ("sample", "velocity", "a", "c")):
            raise ValueError(f"process must be a kacnum.processes.NoiseProcess with block_size 1 or 2, got {process!r}")
        self.process = process
        self._kernel = _KERNELS[block](process.a, process.c)
        self.T = check_positive("T", T)
        if f not in KAC_F_SCHEDULES:
            raise ValueError(f"f must be one of {KAC_F_SCHEDULES} (the data schedule), got {f!r}")
        if g not in KAC_G_SCHEDULES:
            raise ValueError(f"g must be one of {KAC_G_SCHEDULES} (the noise schedule), got {g!r}")
        self.f_name, self.g_name = f, g
        self.t_eps = self._check_t_eps(t_eps)

    @property
    def a(self) -> float:
        return self.process.a

    @property
    def c(self) -> float:
        return self.process.c

    @property
    def block_size(self) -> int:
        """Coordinates per independent block of the noise: 1 (Kac) or 2 (flight)."""
        return self._kernel.block

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(a={self.a:g}, c={self.c:g}, T={self.T:g}, f={self.f_name!r}, "
                f"g={self.g_name!r}, t_eps={self.t_eps:g})")

    # -------------------------------------------------------------------------------- schedules
    def f(self, t: TimeLike):
        """Data scale: ``1 - t/T`` (linear) or ``e^{-t}`` (exp). Float in, float out; tensors elementwise."""
        if self.f_name == "linear":
            return 1.0 - t / self.T
        return torch.exp(-t) if torch.is_tensor(t) else math.exp(-t)

    def df(self, t: TimeLike):
        """``f'(t)``: ``-1/T`` (linear) or ``-e^{-t}`` (exp)."""
        if self.f_name == "linear":
            return torch.full_like(t, -1.0 / self.T) if torch.is_tensor(t) else -1.0 / self.T
        return -torch.exp(-t) if torch.is_tensor(t) else -math.exp(-t)

    def g(self, t: TimeLike):
        """Noise time: ``t`` or ``T (t/T)²``."""
        if self.g_name == "t":
            return t.clone() if torch.is_tensor(t) else float(t)
        return t * t / self.T

    def dg(self, t: TimeLike):
        """``g'(t)``: ``1`` or ``2t/T``."""
        if self.g_name == "t":
            return torch.ones_like(t) if torch.is_tensor(t) else 1.0
        return 2.0 * t / self.T

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """Bound ``|f'(t)| · data_bound + c |g'(t)|`` on ``|u_t|`` per coordinate when ``|x0_j| ≤ data_bound``,
        and per block in the block norm (Euclidean per pair for the flight) when the blocks of ``x0`` have
        norm ``≤ data_bound``.

        It bounds the conditional target and hence the exact marginal velocity (a convex combination
        of conditional ones). Float in, float out.
        """
        b = float(data_bound)
        if not (math.isfinite(b) and b >= 0):
            raise ValueError(f"data_bound must be a finite number >= 0, got {data_bound!r}")
        df, dg = self.df(t), self.dg(t)
        if torch.is_tensor(t):
            return df.abs() * b + self.c * dg.abs()
        return abs(df) * b + self.c * abs(dg)

    # -------------------------------------------------------------------------------- the noise
    def _block_view(self, shape: Tuple[int, ...], name: str = "x") -> Tuple[int, ...]:
        """Shape the process works on: ``shape`` itself for blocks of 1, ``(B, d)`` (``d`` even) for pairs."""
        if self.block_size == 1:
            return tuple(shape)
        if len(shape) < 1:
            raise ValueError(f"{name} must have shape (B, ...), got {tuple(shape)}")
        d = int(math.prod(shape[1:]))
        if d % 2:
            raise ValueError(f"{type(self).__name__} pairs the coordinates of each sample: {name} needs an even "
                             f"number of coordinates per sample, got shape {tuple(shape)} (d = {d})")
        return (int(shape[0]), d)

    def _block_time(self, g, view: Tuple[int, ...]):
        """A time broadcasting to ``shape`` (float, 0-dim, ``(B, 1, ..., 1)`` or full) for the process's view."""
        if self.block_size == 1 or not torch.is_tensor(g) or g.dim() == 0:
            return g
        if g.numel() == 1:
            return g.reshape(())
        return g.reshape(g.shape[0], -1)

    def sample_noise(self, g, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                     return_atoms: bool = False, dtype: Optional[torch.dtype] = None, device=None):
        """``N_g`` of shape ``shape`` (``g``: a float, or a tensor broadcasting to ``shape`` such as
        ``(B, 1, ..., 1)``), and its atom mask if asked. Blocks of 2 pair consecutive coordinates of each
        flattened sample (``shape[0]`` samples)."""
        shape = tuple(int(s) for s in shape)
        view = self._block_view(shape, "shape")
        out = self.process.sample(self._block_time(g, view), view, generator, return_atoms=return_atoms,
                                  dtype=dtype, device=device)
        if view == shape:
            return out
        if return_atoms:
            return out[0].reshape(shape), out[1].reshape(shape)
        return out.reshape(shape)

    def noise_velocity(self, g, y: torch.Tensor, atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The process's conditional velocity ``u_N(g, y)`` (the atom velocity where ``atom_mask``), ``y`` of
        any shape ``(B, ...)`` (pairs as in :meth:`sample_noise`)."""
        view = self._block_view(tuple(y.shape), "y")
        if view == tuple(y.shape):
            return self.process.velocity(g, y, atom_mask)
        am = None if atom_mask is None else atom_mask.reshape(view)
        return self.process.velocity(self._block_time(g, view), y.reshape(view), am).reshape(y.shape)

    # -------------------------------------------------------------------------------- sampling
    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``u = f'(t) x0 + g'(t) · u_N(g(t), noise)`` (the atom velocity where ``atom_mask``).

        Args:
            x0: ``(B, ...)`` data. t: float or ``(B,)``. noise: ``N_{g(t)}``, ``x0``'s shape.
            atom_mask: the sampler's atom mask (recommended). Without it a block is an atom when its
                norm is ``≥ c g(t)`` exactly.
        """
        x0 = _check_data("x0", x0)
        _check_noise(x0, noise)
        t = self._times(t, x0.shape[0], x0)
        tb = _per_row(t, x0.dim())
        v = self.noise_velocity(self.g(tb), noise, atom_mask)
        return self.df(tb) * x0 + self.dg(tb) * v

    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """Draw ``x_t = f(t) x0 + N_{g(t)}`` and its target ``u_t``.

        Args:
            x0: ``(B, ...)`` data (floating, finite).
            t: ``(B,)`` times in ``[0, T]`` (or a float for all rows); cast to ``x0``'s dtype.
            generator: a ``torch.Generator`` on ``x0``'s device. The noise is
                ``sample_noise(g(t) as (B, 1, ..., 1), x0.shape, generator, return_atoms=True)``
                (one time per row), so a given generator state gives the same ``N``, ``x_t`` and ``u_t``.

        Returns:
            :class:`PathSample` with ``noise = N`` and ``atom_mask``.
        """
        x0 = _check_data("x0", x0)
        t = self._times(t, x0.shape[0], x0)
        tb = _per_row(t, x0.dim())
        gt = self.g(tb)
        noise, atoms = self.sample_noise(gt, x0.shape, generator, return_atoms=True, dtype=x0.dtype,
                                         device=x0.device)
        u = self.df(tb) * x0 + self.dg(tb) * self.noise_velocity(gt, noise, atoms)
        return PathSample(x_t=self.f(tb) * x0 + noise, u_t=u, t=t, x0=x0, noise=noise, atom_mask=atoms)

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None, return_atoms: bool = False):
        """The law at ``t = T``: the process's law at ``g(T)`` (bounded, atoms included).

        Requires ``f(T) = 0`` (``f="linear"``); with ``f="exp"`` the law at ``T`` still holds
        ``e^{-T} X0`` and is not data-free: raises ``ValueError`` (use ``sample(x0, T)`` instead).
        ``return_atoms=True`` also returns the atom mask.
        """
        if self.f(self.T) != 0.0:
            raise ValueError(f"sample_latent needs f(T) = 0 (f='linear'); with f={self.f_name!r} the law at "
                             f"T depends on the data (f(T) = {self.f(self.T):.4g}): use sample(x0, T)")
        return self.sample_noise(self.g(self.T), shape, generator, return_atoms=return_atoms, dtype=dtype,
                                 device=device)

    # -------------------------------------------------------------------------------- exact field
    def _row_schedules(self, t: torch.Tensor):
        return self.f(t), self.df(t), self.g(t), self.dg(t)

    def _check_even(self, xs: torch.Tensor) -> None:
        if self.block_size == 2 and xs.shape[1] % 2:
            raise ValueError(f"{type(self).__name__} pairs coordinates: x needs an even number of coordinates "
                             f"per sample, got d = {xs.shape[1]}")

    def _field_inputs(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor, weights: Optional[torch.Tensor],
                      bessel: Optional[str] = None):
        """Checked, flattened inputs of the exact fields: ``(x (B, d), support (n', d), log w (n',), t (B,))``,
        float64; ``bessel`` (when given) must name a Bessel evaluation."""
        if bessel is not None and bessel not in ("table", "reference"):
            raise ValueError(f"bessel must be 'table' or 'reference', got {bessel!r}")
        xs, s, logw = self._support_inputs(x, support, weights)
        self._check_even(xs)
        return xs, s, logw, self._times(t, x.shape[0], xs)

    @torch.no_grad()
    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                       chunk_size: Optional[int] = None, bessel: str = "table",
                       atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Exact marginal velocity for the data law ``Σ_i w_i δ_{x^(i)}`` (docs/mathematics.md §4), or, with
        ``data_sigma = σ > 0``, for the Gaussian mixture ``Σ_i w_i N(x^(i), σ² I)`` (docs/mathematics.md §13, :func:`_gm_pass`:
        no atoms, a Lipschitz field; ``σ → 0`` recovers the finite-data field away from the atoms).

            u(t, x) = Σ_i w_i p_i(x) u(t, x | x^(i)) / Σ_i w_i p_i(x),
            p_i(x) = Π_b p(g(t), y_ib),      y_i = x - f(t) x^(i),

        with ``p`` the continuous density of one block of the noise (``0`` outside the open ball
        ``norm(y_b) < c g``: the interval for Kac, the disc for the flight) and the conditional velocity
        ``u(t, x | x^(i)) = f'(t) x^(i) + g'(t) u_N(g(t), y_i)`` per block. Evaluated in float64 in log space,
        an online log-sum-exp over support chunks, so ``d = 32`` with tiny densities neither underflows nor
        gives NaN.

        Points in no open support (on an atom, outside every support, or any point at ``g(t) = 0``):
        the point is attributed to the support points whose support it is nearest to, in total excess
        ``D_i = Σ_b max(norm(y_ib) - c g, 0)`` (ties within round-off, e.g. every point at ``t = T`` when
        ``f(T) = 0``, are kept; among them those with most face blocks), weighted by ``w_i`` times the density
        of their interior blocks. Blocks on or beyond that support's boundary move with the atom velocity
        ``f' x^(i)_b + g' c y_b/norm(y_b)`` (they ride the face, as atoms do), the others with the
        conditional velocity. The result is finite and obeys :meth:`speed_bound` with
        ``data_bound = max |x^(i)|``. A point inside some open support gets the formula above: the atoms of
        other components (measure zero for the continuous part) are not counted there.

        Args:
            x: ``(B, *D)`` query points (any floating dtype). t: float or ``(B,)`` in ``[0, T]``.
            support: ``(n, *D)`` data points. weights: ``(n,)`` non-negative (default uniform).
            chunk_size: elements ``rows x support x d`` per chunk (default 2^16 on CPU, 2^24 on CUDA).
            bessel: Kac only: ``"table"`` (default, piecewise-quintic tables, error < 1e-12) or
                ``"reference"`` (``torch.special.i0e/i1e`` directly; 4-5x slower on CPU).
            atom_mask: ``(B, *D)`` bool, the sampler's mask of the same draw (``PathSample.atom_mask``).
                When given, the law's atoms are counted exactly (stratified by face sets, see
                :func:`_velocity_with_atoms`): use it for points drawn from the path, whose atoms
                ``f x0 + N - f x0`` rounding would otherwise move inside the open support (docs/mathematics.md §3). ``t``
                must then be one float.

        Returns:
            ``(B, *D)`` in ``x``'s dtype (computed without autograd, like every exact field here).
        """
        data_sigma = _check_data_sigma(data_sigma)
        if data_sigma > 0:
            if atom_mask is not None:
                raise ValueError("atom_mask is for finite data (data_sigma = 0): a Gaussian mixture has no atoms")
            xs, s, logw, t = self._field_inputs(x, t, support, weights)
            _, u = _gm_pass(self, xs, t, s, logw, data_sigma, velocity=True)
            return u.to(x.dtype).reshape(x.shape)
        if atom_mask is not None:
            if torch.is_tensor(t):
                if t.numel() != 1:
                    raise ValueError("t must be a single time when atom_mask is given")
                t = t.item()
            return _velocity_with_atoms(self, x, float(t), support, atom_mask, weights).to(x.dtype)
        xs, s, logw, t = self._field_inputs(x, t, support, weights, bessel)
        chunk = self._chunk(chunk_size, x.device)
        lse, u = _mixture_pass(self, xs, t, s, logw, chunk, bessel, velocity=True)
        bad = ~torch.isfinite(lse)
        if bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            u[idx] = _fallback(self, xs[idx], t[idx], s, logw, chunk, bessel)
        return u.to(x.dtype).reshape(x.shape)

    @torch.no_grad()
    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                            chunk_size: Optional[int] = None, bessel: str = "table") -> torch.Tensor:
        """``log Σ_i w_i Π_b p(g(t), y_ib)``: the log density of the fully continuous part of ``X_t`` (every
        block off its atom; its mass is ``(1 - atom mass)^{d/block}``). ``-inf`` in no open support. With
        ``data_sigma > 0``: the log density of ``X_t`` for Gaussian-mixture data (a probability density, no
        atoms, for ``t < T``). ``x: (B, *D)`` -> ``(B,)`` float64."""
        data_sigma = _check_data_sigma(data_sigma)
        if data_sigma > 0:
            xs, s, logw, t = self._field_inputs(x, t, support, weights)
            lse, _ = _gm_pass(self, xs, t, s, logw, data_sigma, velocity=False)
            return lse
        xs, s, logw, t = self._field_inputs(x, t, support, weights, bessel)
        lse, _ = _mixture_pass(self, xs, t, s, logw, self._chunk(chunk_size, x.device), bessel, velocity=False)
        return lse + (xs.shape[1] // self.block_size) * self._kernel.log_const


class KacPath(ProcessPath):
    """Kac flow path ``X_t = f(t) X0 + K_{g(t)}`` (docs/mathematics.md §4); data at ``t = 0``, latent at ``t = T``.

    Args:
        a: switching rate ``a > 0`` (default 9; the Kac-flow code's value, ``c²/a = 1``).
        c: speed ``c > 0`` (default 3). ``(a, c) = (25, 2)`` (reported best for CIFAR-10) works too.
        T: horizon ``T > 0``.
        f: ``"linear"``: ``f(t) = 1 - t/T`` (default) or ``"exp"``: ``f(t) = e^{-t}``.
        g: ``"t"``: ``g(t) = t`` (default) or ``"t2"``: ``g(t) = T (t/T)²``.
        t_eps: training times are ``U[t_eps, T)`` (default 0: the Kac target is bounded at ``t = 0``).

    ``K`` has independent 1D Kac coordinates with the same ``(a, c)``: ``.process`` is the
    :class:`~kacnum.processes.kac.KacProcess`. The conditional target is
    ``u(t, x | x0) = f'(t) x0 + g'(t) v(g(t), x - f(t) x0)``, so ``|u - f' x0| ≤ c |g'|`` per coordinate.
    The coordinate-wise case of :class:`ProcessPath` (blocks of one coordinate; Bessel tables).
    """

    def __init__(self, a: float = 9.0, c: float = 3.0, T: float = 1.0, f: str = "linear", g: str = "t",
                 t_eps: float = 0.0):
        super().__init__(KacProcess(a, c), T=T, f=f, g=g, t_eps=t_eps)


class FlightPath(ProcessPath):
    """Isotropic Kac flow ``X_t = f(t) X0 + F_{g(t)}`` on the planar random flight (docs/mathematics.md §14).

    Args:
        a: event rate ``λ > 0`` of :class:`~kacnum.processes.flight.PlanarFlight` (direction redrawn uniformly on the
            circle at each event; default 9: with ``c = 3`` the diffusion limit has ``c²/λ = 1`` per
            coordinate, as the default Kac path).
        c: speed ``c > 0`` (default 3). T, f, g, t_eps: as :class:`KacPath`.

    In ``d = 2`` the noise is one planar flight: isotropic, supported on the disc ``|y| ≤ c g`` with a circle
    atom of mass ``e^{-λ g}``. In even ``d`` the coordinates of each flattened sample pair up
    ``(x_{2j}, x_{2j+1})`` into independent flights (block-isotropic). The conditional target is
    ``f' x0 + g' c y/(c g + q)`` per pair (``q = sqrt(c²g² - |y|²)``; ``c y/|y|`` on the atom), so
    ``|u_b - f' x0_b| ≤ c |g'|`` in the Euclidean norm of each pair.
    """

    def __init__(self, a: float = 9.0, c: float = 3.0, T: float = 1.0, f: str = "linear", g: str = "t",
                 t_eps: float = 0.0):
        super().__init__(PlanarFlight(a, c), T=T, f=f, g=g, t_eps=t_eps)

