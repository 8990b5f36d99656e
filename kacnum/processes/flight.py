"""The planar random flight: an isotropic Kac process in 2D (docs/mathematics.md §14).

What it holds: :class:`PlanarFlight` (the law, the radial CDF and quantile, the exact sampler, the
conditional velocity and the event-driven reference paths :class:`FlightPaths`).

A particle starts at 0 and moves at speed ``c``; its direction is redrawn uniformly on the circle at the
events of a Poisson process of rate ``λ`` (the argument ``a`` of ``PlanarFlight(a, c)`` is ``λ`` itself).
With ``q = sqrt(c²t² - |x|²)`` and the cancellation-free ``w = ct - q = |x|²/(ct + q) ∈ [0, ct]`` the law
of ``X_t`` is

* a singular part of mass ``e^{-λt}`` uniform on the circle ``|x| = ct``;
* on the open disc the density ``p(x, t) = λ/(2πc) · exp(-(λ/c) w) / q``, of mass ``1 - e^{-λt}``;
* radially ``P(|X_t| > r) = exp(-(λ/c) w(r))`` for ``r < ct``, so the sampler draws ``E = -log(1 - U)``:
  ``E ≥ λt`` is the circle, otherwise ``w = (c/λ) E`` and ``|X_t| = sqrt(w (2ct - w))``, at a uniform angle.

The conditional velocity is radial, ``u(x, t) = c x / (ct + q)`` (``c x/|x|`` on the circle), and the
variance per coordinate is ``c²/λ² (λt - 1 + e^{-λt})``.

A ``(..., 2k)`` tensor holds ``k`` independent flights with the same ``(a, c)`` and time, in the pairs
``(x[..., 2j], x[..., 2j+1])``: a block-isotropic process.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from kacnum.processes.events import EventPaths, UniformDirections, simulate_event_paths
from kacnum.processes.arguments import RateAndSpeed, TimeLike, float_tensor, sample_arguments, sample_shape


__all__ = ["PlanarFlight", "FlightPaths"]


class FlightPaths(EventPaths):
    """Event-driven planar random flights seen on a time grid (:func:`~kacnum.processes.events.simulate_event_paths`).

    Attributes:
        times: ``(G,)`` the grid.
        positions: ``(n, G, 2)`` ``X`` at each grid time.
        velocities: ``(n, G, 2)`` the velocity ``V`` (speed ``c``) at each grid time (right-continuous).
        event_counts: ``(n, G)`` number of direction changes up to each grid time.
        atom_mask: ``(n, G)`` True where a path has had no event yet (it sits on the circle ``|x| = ct``).
    """


def _per_coordinate_variance(lam: float, c: float, t64: torch.Tensor) -> torch.Tensor:
    """``c²/λ² (x - 1 + e^{-x})``, ``x = λt``, float64; the series ``x²/2 - x³/6 + …`` below ``x = 1e-2``."""
    x = lam * t64
    exact = x + torch.expm1(-x)
    series = x * x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0 - x * (1.0 / 120.0 - x / 720.0))))
    return (c * c / (lam * lam)) * torch.where(x < 1e-2, series, exact)


class PlanarFlight(RateAndSpeed):
    """The planar random flight with event rate ``a = λ`` and speed ``c``, started at 0 (docs/mathematics.md §14).

    Args:
        a: rate ``λ > 0`` of the Poisson events at which the direction is redrawn uniformly on the circle.
            (Note: for ``KacProcess`` the switching rate ``a`` enters the PDE as ``2a``; here ``a`` is the
            event rate itself.)
        c: speed ``c > 0``; paths are piecewise linear with ``|dX/dt| = c``, so ``|X_t| ≤ ct``.

    Conventions (those of :class:`~kacnum.processes.kac.KacProcess`):

    * points of the plane are pairs along the last dimension. ``density``/``log_density`` take ``x`` of
      shape ``(..., 2)`` and return ``(...)``; ``t`` broadcasts to ``x.shape[:-1]`` (it may not enlarge it).
    * ``sample`` and ``velocity`` work on ``(..., 2k)`` tensors (``k`` independent pairs
      ``(x[..., 2j], x[..., 2j+1])``); ``t`` broadcasts to that shape (e.g. ``(B, 1)``: one time per row)
      and must be equal within each pair.
    * ``radial_cdf(t, r)``: ``t`` and ``r`` broadcast freely.
    * a Python-number ``t`` is evaluated in float64 by the scalar summaries (``atom_mass``, ``variance``).
    """

    #: the noise-process interface of :mod:`kacnum.processes`: independent blocks of two coordinates
    block_size: int = 2

    rate_name = "a (event rate λ)"

    # ------------------------------------------------------------------ helpers
    _float_tensor = staticmethod(float_tensor)

    @staticmethod
    def _fits(tt: torch.Tensor, shape: Tuple[int, ...], what: str) -> None:
        """Raise unless ``tt`` broadcasts to ``shape`` without enlarging it."""
        try:
            ok = tt.dim() <= len(shape) and torch.broadcast_shapes(tt.shape, shape) == tuple(shape)
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"t with shape {tuple(tt.shape)} does not broadcast to {what} {tuple(shape)}")

    @staticmethod
    def _pair_time(tt: torch.Tensor, shape: Tuple[int, ...]) -> torch.Tensor:
        """``t`` (broadcasting to ``shape = (..., 2k)``) as a tensor broadcasting to the pair shape ``(..., k)``."""
        tpad = tt.reshape((1,) * (len(shape) - tt.dim()) + tuple(tt.shape))
        if tpad.dim() == 0 or tpad.shape[-1] == 1:
            return tpad
        # a time per coordinate: it must be one time per pair
        even, odd = tpad[..., 0::2], tpad[..., 1::2]
        if not bool((even == odd).all()):
            raise ValueError("t must be equal within each pair (x[..., 2j], x[..., 2j+1]) of coordinates")
        return even

    @staticmethod
    def _check_pairs(name: str, shape: Tuple[int, ...]) -> int:
        if len(shape) == 0 or shape[-1] % 2 != 0:
            raise ValueError(
                f"{name} must have an even last dimension (k pairs of plane coordinates), got shape {tuple(shape)}"
            )
        return shape[-1] // 2

    def _disc_terms(self, t: TimeLike, x) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inside, w, q)`` at the points ``x: (..., 2)`` for ``t`` broadcasting to ``x.shape[:-1]``.

        ``inside``: ``|x| < ct``; ``w = |x|²/(ct + q)``; ``q = sqrt(c²t² - |x|²)`` inside and 1 elsewhere,
        so that ``log q`` and ``1/q`` stay finite off the open disc (where the density is masked anyway).
        """
        x = self._float_tensor("x", x)
        if x.dim() == 0 or x.shape[-1] != 2:
            raise ValueError(f"x must have shape (..., 2) (points of the plane), got {tuple(x.shape)}")
        tt = self._time(t, like=x)
        self._fits(tt, x.shape[:-1], "x.shape[:-1] =")
        inside, w, q = self._wq(self.c * tt, torch.hypot(x[..., 0], x[..., 1]))
        return inside, w, torch.where(inside, q, torch.ones_like(q))

    def _wq(self, ct: torch.Tensor, rho: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inside, w, q)`` for radius ``rho``: ``q = sqrt((ct - ρ)(ct + ρ))``, ``w = ct - q = ρ²/(ct + q)``."""
        inside = rho < ct
        q = torch.sqrt(((ct - rho) * (ct + rho)).clamp_min(0.0))
        den = ct + q
        w = rho * rho / torch.where(den > 0, den, torch.ones_like(den))
        return inside, w, q

    # ------------------------------------------------------------------ the law
    def atom_mass(self, t: TimeLike) -> torch.Tensor:
        """Mass ``e^{-λt}`` of the singular part (uniform on the circle ``|x| = ct``)."""
        return torch.exp(-self.a * self._time(t))

    def log_density(self, t: TimeLike, x) -> torch.Tensor:
        """``log p(x, t) = log(λ/(2πc)) - (λ/c) w - log q`` on the open disc, ``-inf`` elsewhere.

        Args:
            t: time(s) broadcasting to ``x.shape[:-1]``.
            x: ``(..., 2)`` points of the plane.

        Returns:
            ``(...)``, in ``x``'s dtype.
        """
        inside, w, q = self._disc_terms(t, x)
        lam, c = self.a, self.c
        val = math.log(lam / (2.0 * math.pi * c)) - (lam / c) * w - torch.log(q)
        return torch.where(inside, val, torch.full_like(val, -math.inf))

    def block_log_density(self, t: TimeLike, y) -> torch.Tensor:
        """:meth:`log_density` under the :mod:`kacnum.processes` name (one block = one pair, ``(..., 2)``)."""
        return self.log_density(t, y)

    @staticmethod
    def block_norm(y: torch.Tensor) -> torch.Tensor:
        """``|y|`` (Euclidean) per pair (``(..., 2)`` -> ``(...)``): the support at ``t`` is the disc ``|y| ≤ ct``."""
        return torch.hypot(y[..., 0], y[..., 1])

    def density(self, t: TimeLike, x) -> torch.Tensor:
        """Continuous part ``p(x, t) = λ/(2πc) · exp(-(λ/c)(ct - q)) / q`` (``q = sqrt(c²t² - |x|²)``).

        0 outside the open disc ``|x| < ct`` (and on the circle, which carries the singular part). Mass
        ``1 - e^{-λt}``; integrable ``1/q`` singularity at the circle. Arguments and result as for
        :meth:`log_density`: ``x: (..., 2)``, ``t`` broadcasting to ``x.shape[:-1]``, ``(...)`` in ``x``'s dtype.
        """
        inside, w, q = self._disc_terms(t, x)
        lam, c = self.a, self.c
        val = (lam / (2.0 * math.pi * c)) * torch.exp(-(lam / c) * w) / q
        return torch.where(inside, val, torch.zeros_like(val))

    def radial_cdf(self, t: TimeLike, r) -> torch.Tensor:
        """``P(|X_t| ≤ r)`` of the whole law: ``1 - exp(-(λ/c)(ct - q(r)))`` for ``0 ≤ r < ct``, 1 for ``r ≥ ct``.

        The jump ``e^{-λt}`` at ``r = ct`` is the singular part; 0 for ``r < 0``. Computed in float64
        (``-expm1`` of the cancellation-free ``w = r²/(ct + q)``), returned in ``r``'s dtype.
        """
        r = self._float_tensor("r", r)
        tt = self._time(t, like=r)
        try:
            torch.broadcast_shapes(tt.shape, r.shape)
        except RuntimeError:
            raise ValueError(f"t with shape {tuple(tt.shape)} does not broadcast against r with shape {tuple(r.shape)}") from None
        t64, r64 = torch.broadcast_tensors(tt.double(), r.double())
        ct = self.c * t64
        inside, w, _ = self._wq(ct, r64.clamp_min(0.0))
        cont = -torch.expm1(-(self.a / self.c) * w)
        out = torch.where(inside, cont, torch.ones_like(cont))
        return torch.where(r64 < 0, torch.zeros_like(out), out).to(r.dtype)

    def variance(self, t: TimeLike) -> torch.Tensor:
        """Variance per coordinate ``E|X_t|²/2 = c²/λ² (λt - 1 + e^{-λt})`` (mean 0).

        ``c²t²/2`` for ``λt → 0`` (ballistic), ``(c²/λ) t - c²/λ²`` for ``λt → ∞`` (diffusive). Computed in
        float64 (series below ``λt = 1e-2``), returned in ``t``'s dtype.
        """
        tt = self._time(t)
        return _per_coordinate_variance(self.a, self.c, tt.double()).to(tt.dtype)

    def std(self, t: TimeLike) -> torch.Tensor:
        """Standard deviation per coordinate."""
        return torch.sqrt(self.variance(t))

    # ------------------------------------------------------------------ velocity
    def velocity(self, t: TimeLike, x, atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Conditional velocity ``u(x, t) = E[V_t | X_t = x] = c x / (ct + q)``, per pair of coordinates.

        ``q = sqrt(c²t² - |x|²)``; the form ``c|x|/(ct + q)`` of ``c(ct - q)/|x|`` has no 0/0 at the origin
        (``u ≈ x/(2t)`` there) and reaches speed ``c`` at the circle. On atoms ``u = c x/|x|``. Points off
        the support (``|x| > ct``, no mass there) get ``c x/|x|`` so that ``|u| ≤ c`` everywhere.

        Args:
            t: time(s), broadcasting to ``x.shape``, equal within each pair.
            x: ``(..., 2k)`` displacements from the start, ``k`` pairs ``(x[..., 2j], x[..., 2j+1])``.
            atom_mask: optional bool tensor of ``x``'s shape (from ``sample(..., return_atoms=True)``; equal
                within pairs). The velocity is continuous at the circle, so the mask matters less than in
                1D; marked points get exactly ``c x/|x|``.

        Returns:
            ``u`` with ``x``'s shape and dtype.
        """
        x = self._float_tensor("x", x)
        k = self._check_pairs("x", tuple(x.shape))
        tt = self._time(t, like=x)
        self._fits(tt, tuple(x.shape), "x of shape")
        tp = self._pair_time(tt, tuple(x.shape))
        xp = x.reshape(x.shape[:-1] + (k, 2))
        rho = torch.hypot(xp[..., 0], xp[..., 1])
        ct = self.c * tp
        _, _, q = self._wq(ct, rho)
        den = torch.maximum(ct + q, rho)  # = |x| (speed c) off the support; 0 only at x = 0, t = 0
        scale = self.c / torch.where(den > 0, den, torch.ones_like(den))
        if atom_mask is not None:
            if not torch.is_tensor(atom_mask) or atom_mask.shape != x.shape:
                shp = tuple(atom_mask.shape) if torch.is_tensor(atom_mask) else type(atom_mask).__name__
                raise ValueError(f"atom_mask must be a bool tensor of the shape of x {tuple(x.shape)}, got {shp}")
            am = atom_mask.to(torch.bool).reshape(xp.shape)
            if not bool((am[..., 0] == am[..., 1]).all()):
                raise ValueError("atom_mask must be equal within each pair (x[..., 2j], x[..., 2j+1])")
            on_circle = self.c / torch.where(rho > 0, rho, torch.ones_like(rho))
            scale = torch.where(am[..., 0], on_circle, scale)
        return (xp * scale[..., None]).reshape(x.shape)

    # ------------------------------------------------------------------ sampling
    def _radius_from_uniform(self, t: torch.Tensor, v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(|X|, atom)`` at levels ``v ∈ [0, 1]`` of the radial law; ``v`` (a fresh tensor) is overwritten.

        ``w = -(c/λ) log(1 - v)``, capped at ``ct``; ``w ≥ ct`` (``E = -log(1 - v) ≥ λt``) is the atom. Then
        ``|X| = sqrt(w (2ct - w))``: ``2ct - w ≥ ct``, no cancellation (unlike ``sqrt(c²t² - q²)``), and on the
        atom ``sqrt(ct·ct) = ct`` exactly (IEEE square root of a square). ``t`` broadcasts against ``v``.
        """
        lam, c = self.a, self.c
        ct = c * t
        w = v.neg_().log1p_().mul_(-c / lam)
        torch.minimum(w, ct, out=w)
        atoms = w >= ct
        rho = torch.sub(2.0 * ct, w).mul_(w).sqrt_()
        tiny = math.sqrt(torch.finfo(v.dtype).tiny) * 1e3
        if ct.numel() and bool(((ct < tiny) & (ct > 0)).any()):  # ct² would lose bits as a subnormal
            rho = torch.where(atoms, ct.expand(rho.shape), rho)
        return rho, atoms

    def radial_quantile(self, t: TimeLike, v) -> torch.Tensor:
        """Quantile of ``|X_t|`` (whole law): the smallest ``r`` with ``radial_cdf(t, r) ≥ v``.

        ``ct`` (the circle) for ``v ≥ 1 - e^{-λt}``; this is the map :meth:`sample` applies to its radial
        uniform. ``t`` and ``v`` broadcast; computed in ``v``'s dtype.
        """
        v = self._float_tensor("v", v)
        if v.numel() and (bool((v < 0).any()) or bool((v > 1).any())):
            raise ValueError(f"v must lie in [0, 1]; got values in [{float(v.min()):.6g}, {float(v.max()):.6g}]")
        tt = self._time(t, like=v)
        try:
            shape = torch.broadcast_shapes(tt.shape, v.shape)
        except RuntimeError:
            raise ValueError(f"t with shape {tuple(tt.shape)} does not broadcast against v with shape {tuple(v.shape)}") from None
        return self._radius_from_uniform(tt, v.expand(shape).clone())[0]

    def sample(
        self,
        t: TimeLike,
        shape: Sequence[int],
        generator: Optional[torch.Generator] = None,
        return_atoms: bool = False,
        dtype: Optional[torch.dtype] = None,
        device: Optional[Union[str, torch.device]] = None,
    ):
        """Draw ``X_t`` exactly: ``k`` independent planar flights per ``(..., 2k)`` tensor.

        Per pair, two uniforms: ``E = -log(1 - U₁)``; if ``E ≥ λt`` the pair is an atom (``|X| = ct``,
        ``ct`` in the output dtype), else ``w = (c/λ) E`` and ``|X| = sqrt(w (2ct - w))`` (see
        :meth:`radial_quantile`); the angle is ``2π U₂``. The law is exact up to the resolution of the
        uniforms (``2^-24`` in float32).

        Args:
            t: float or tensor broadcasting to ``shape`` (``(B, 1)`` for one time per row), equal within pairs.
            shape: output shape ``(..., 2k)``; the last dimension must be even.
            generator: a ``torch.Generator`` on ``device``; the same state gives the same draws.
            return_atoms: also return the bool atom mask (shape ``shape``, equal within pairs).
            dtype, device: of the output; default: ``t``'s if it is a tensor, else the default dtype/CPU.

        Returns:
            ``X`` of shape ``shape`` (pairs ``(X[..., 2j], X[..., 2j+1])``), and the atom mask if asked.
        """
        shape = sample_shape(shape)
        k = self._check_pairs("shape", shape)
        tt, shape, dtype, device = sample_arguments(t, shape, dtype, device)
        self._fits(tt, shape, "shape")
        tp = self._pair_time(tt, shape)
        pshape = shape[:-1] + (k,)
        # the radial uniforms, then the angular ones (same generator state, same draws)
        v = torch.rand(pshape, generator=generator, dtype=dtype, device=device)
        ang = torch.rand(pshape, generator=generator, dtype=dtype, device=device).mul_(2.0 * math.pi)
        rho, atoms = self._radius_from_uniform(tp, v)
        out = torch.empty(pshape + (2,), dtype=dtype, device=device)
        torch.mul(torch.cos(ang), rho, out=out[..., 0])
        torch.mul(ang.sin_(), rho, out=out[..., 1])
        out = out.reshape(shape)
        if return_atoms:
            # each pair's flag twice: a 0/1 byte times 257 as int16 is the byte pair (1, 1) (either endianness)
            twice = atoms.contiguous().view(torch.uint8).to(torch.int16).mul_(257).view(torch.bool)
            return out, twice.reshape(shape)
        return out

    # ------------------------------------------------------------------ reference paths
    def simulate_paths(
        self,
        time_grid: Union[Sequence[float], torch.Tensor],
        n: int,
        generator: Optional[torch.Generator] = None,
        dtype: torch.dtype = torch.float64,
        device: Optional[Union[str, torch.device]] = None,
    ) -> FlightPaths:
        """Event-driven simulation of ``n`` planar flights seen on ``time_grid`` (for tests and figures).

        Each path draws ``Exp(λ)`` holding times until it passes ``max(time_grid)`` and a uniform direction
        for every segment; between events it moves in a straight line at speed ``c``
        (:func:`kacnum.processes.events.simulate_event_paths` with
        :class:`~kacnum.processes.events.UniformDirections`).

        Args:
            time_grid: ``(G,)`` times ``≥ 0``; n: number of paths; generator: seeds the draws;
            dtype: float32 or float64; device: of the output.
        """
        sim = simulate_event_paths(time_grid, n, self.a, UniformDirections(self.c), generator, dtype, device)
        return FlightPaths(sim.times, sim.positions, sim.velocities, sim.event_counts)
