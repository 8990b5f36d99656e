"""Probability paths behind one interface: Kac flow, Gaussian flow matching, VP diffusion (docs/mathematics.md §4, §9).

Time runs from the data at ``t = 0`` to the latent at ``t = T``; samplers integrate ``dx/dt`` from
``T`` down to ``t_min``. A path has one job: :meth:`ProbabilityPath.sample` turns data ``x0`` and times
``t`` into a :class:`PathSample` holding the point ``x_t`` and its conditional target velocity
``u_t``. Losses (``kacnum.flows.losses``) see only that sample and the model output; solvers
(``kacnum.flows.solvers``) see only a velocity field.

Paths
-----
* :class:`ProcessPath`: ``X_t = f(t) X0 + N_{g(t)}`` for a finite-speed noise process ``N`` of independent
  blocks (:mod:`kacnum.processes`): one implementation of sampling, targets and the exact finite-data and
  Gaussian-mixture fields, parameterised by the process (a per-block kernel: log density, velocity, atoms).
  Target ``u_t = f'(t) x0 + g'(t) u_N(g(t), N | atom_mask)``, computed from the noise draw and its atom mask
  (never from ``x_t - f x0`` rebuilt in floating point, which pushes atoms inside the support: docs/mathematics.md §3).
* :class:`KacPath` (``ProcessPath`` on :class:`~kacnum.processes.kac.KacProcess`): ``N = K`` a product of independent
  1D Kac processes (switching rate ``a``, speed ``c``), the coordinate-wise Kac flow (docs/mathematics.md §4).
* :class:`FlightPath` (``ProcessPath`` on :class:`~kacnum.processes.flight.PlanarFlight`): ``N`` the isotropic planar
  random flight on pairs of coordinates (docs/mathematics.md §14): isotropic in 2D, block-isotropic in even ``d``.
* :class:`GaussianPath`: rectified flow ``x_t = (1 - t/T) x0 + (t/T) ε``, target ``(ε - x0)/T``.
* :class:`VPPath`: VP diffusion ``x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε`` trained by ε-prediction; the
  probability-flow velocity of an ε-prediction is :meth:`VPPath.eps_to_velocity`.

Every path also gives the exact marginal velocity of a finite weighted data set
(:meth:`ProbabilityPath.exact_velocity`): a network-free teacher and the ground truth of the theory
experiments, computed in float64 in log space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from kacnum.core.checks import check_finite, check_in_range, check_positive
from kacnum.processes.flight import PlanarFlight
from kacnum.processes.kac import KacProcess, bessel_ratio_term
from kacnum.flows.grids import uniform_grid

__all__ = [
    "PathSample",
    "ProbabilityPath",
    "ProcessPath",
    "KacPath",
    "FlightPath",
    "GaussianPath",
    "VPPath",
    "KAC_F_SCHEDULES",
    "KAC_G_SCHEDULES",
]

TimeLike = Union[float, int, torch.Tensor]

KAC_F_SCHEDULES = ("linear", "exp")
KAC_G_SCHEDULES = ("t", "t2")

#: elements (rows x support points x dims) handled per chunk by the exact fields
_CPU_CHUNK = 2 ** 16
_CUDA_CHUNK = 2 ** 24


@dataclass(frozen=True)
class PathSample:
    """One draw from a probability path.

    Attributes:
        x_t: ``(B, ...)`` point on the path at time ``t``.
        u_t: ``(B, ...)`` conditional target velocity ``dx/dt`` at ``(x_t, t | x0)``.
        t: ``(B,)`` times, in ``x0``'s dtype and device.
        x0: ``(B, ...)`` the data.
        noise: ``(B, ...)`` the noise draw: ``K_{g(t)}`` for Kac, ``ε`` for Gaussian/VP (the ε-loss target).
        atom_mask: ``(B, ...)`` bool, Kac only: True where the Kac coordinate has not switched
            (``noise = ±c g(t)``); ``None`` for the Gaussian paths.
    """

    x_t: torch.Tensor
    u_t: torch.Tensor
    t: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    atom_mask: Optional[torch.Tensor] = None


# ------------------------------------------------------------------------------------------------
# input handling shared by the paths


def _per_row(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` with ``ndim`` dims in all."""
    return v.reshape((v.shape[0],) + (1,) * (ndim - 1))


def _check_data(name: str, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (B, ...) with B >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return check_finite(name, x)


def _check_data_sigma(data_sigma) -> float:
    """``data_sigma``: the standard deviation of the Gaussian around each data point, finite and ``>= 0``."""
    return check_in_range("data_sigma", data_sigma, 0.0, math.inf)


def _logsumexp_rows(L: torch.Tensor) -> torch.Tensor:
    """``log Σ_i exp(L_bi)`` for ``L: (B, n)``, ``-inf`` for an all ``-inf`` row (no NaN)."""
    m = L.max(dim=1).values
    safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(L - safe[:, None]).sum(dim=1)
    return torch.where(torch.isfinite(m), safe + torch.log(s), m)


class ProbabilityPath:
    """Base class: data at ``t = 0``, latent at ``t = T``; samplers integrate from ``T`` to ``t_min``.

    Subclasses implement :meth:`sample`, :meth:`conditional_velocity`, :meth:`sample_latent`,
    :meth:`speed_bound`, :meth:`exact_velocity` and :meth:`mixture_log_density`.

    Attributes:
        T: time horizon (latent time).
        t_eps: training times are drawn from ``U[t_eps, T)`` by :meth:`sample_time`.
        t_min_default: end of :meth:`default_time_grid` when ``t_min`` is not given.
        t_open_at_zero: True when ``t = 0`` is not allowed (VP: ``1 - ᾱ(0) = 0`` divides).
    """

    T: float = 1.0
    t_eps: float = 0.0
    t_min_default: float = 0.0
    t_open_at_zero: bool = False

    # -------------------------------------------------------------------------------- time
    def _times(self, t: TimeLike, batch: int, like: torch.Tensor, name: str = "t",
               open_at_zero: Optional[bool] = None) -> torch.Tensor:
        """``t`` (float, 0-dim or ``(B,)``) -> ``(B,)`` in ``like``'s dtype/device, checked in ``[0, T]``."""
        tt = torch.as_tensor(t, dtype=like.dtype, device=like.device) if not torch.is_tensor(t) \
            else t.to(dtype=like.dtype, device=like.device)
        if tt.dim() == 0:
            tt = tt.expand(batch)
        if tt.shape != (batch,):
            raise ValueError(f"{name} must be a float or a tensor of shape ({batch},), got {tuple(tt.shape)}")
        check_finite(name, tt)
        open0 = self.t_open_at_zero if open_at_zero is None else open_at_zero
        if tt.numel() and (bool((tt > self.T).any()) or bool((tt < 0).any()) or (open0 and bool((tt <= 0).any()))):
            lo = "(0" if open0 else "[0"
            raise ValueError(f"{name} must lie in {lo}, {self.T:g}] (T); got values in "
                             f"[{float(tt.min()):.6g}, {float(tt.max()):.6g}]")
        return tt

    def sample_time(self, batch_size: int, generator: Optional[torch.Generator] = None,
                    dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """Training times ``t ~ U[t_eps, T)``: ``t = t_eps + (T - t_eps) U``, ``U ~ U[0, 1)``, shape ``(B,)``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        u = torch.rand(batch_size, generator=generator, dtype=dtype or torch.get_default_dtype(),
                       device=device)
        return self.t_eps + (self.T - self.t_eps) * u

    def default_time_grid(self, n_steps: int, t_min: Optional[float] = None, dtype=torch.float64,
                          device=None) -> torch.Tensor:
        """Uniform decreasing grid ``T = t_0 > ... > t_N = t_min``, shape ``(n_steps + 1,)``.

        ``t_min`` defaults to ``t_min_default`` (0 for Kac and Gaussian, 1e-3 for VP).
        """
        t_min = self.t_min_default if t_min is None else t_min
        t_min = check_in_range("t_min", t_min, 0.0, self.T)
        if t_min >= self.T:
            raise ValueError(f"t_min must be < T = {self.T:g}, got {t_min!r}")
        if self.t_open_at_zero and t_min <= 0:
            raise ValueError(f"t_min must be > 0 for {type(self).__name__} (alpha_bar(0) = 1), got {t_min!r}")
        return uniform_grid(self.T, t_min, n_steps, dtype=dtype, device=device)

    # -------------------------------------------------------------------------------- finite data
    @staticmethod
    def _support_inputs(x: torch.Tensor, support: torch.Tensor, weights: Optional[torch.Tensor],
                        dtype=torch.float64) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check and flatten: ``x (B, *D)``, ``support (n, *D)``, ``weights (n,)`` ->
        ``x (B, d)``, ``support (n', d)``, ``log w (n',)`` (normalised, zero weights dropped)."""
        _check_data("x", x)
        _check_data("support", support)
        if tuple(support.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"support must have shape (n, {', '.join(map(str, x.shape[1:]))}) to match "
                             f"x {tuple(x.shape)}, got {tuple(support.shape)}")
        xs = x.reshape(x.shape[0], -1).to(dtype)
        ss = support.reshape(support.shape[0], -1).to(dtype=dtype, device=x.device)
        if weights is None:
            logw = torch.full((ss.shape[0],), -math.log(ss.shape[0]), dtype=dtype, device=x.device)
            return xs, ss, logw
        if not torch.is_tensor(weights):
            weights = torch.as_tensor(weights)
        w = weights.to(dtype=dtype, device=x.device)
        if w.shape != (ss.shape[0],):
            raise ValueError(f"weights must have shape ({ss.shape[0]},) (one per support point), got {tuple(w.shape)}")
        check_finite("weights", w)
        if bool((w < 0).any()) or not float(w.sum()) > 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        keep = w > 0
        w = w[keep] / w[keep].sum()
        return xs, ss[keep], torch.log(w)

    @staticmethod
    def _chunk(chunk_size: Optional[int], device) -> int:
        if chunk_size is None:
            return _CUDA_CHUNK if torch.device(device).type == "cuda" else _CPU_CHUNK
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        return chunk_size

    # -------------------------------------------------------------------------------- interface
    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """``x0: (B, ...)``, ``t: (B,)`` (or a float) -> :class:`PathSample` (``x_t``, ``u_t``, ``noise``, ...)."""
        raise NotImplementedError

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The target ``u_t`` from the data and the noise draw (what :meth:`sample` returns as ``u_t``)."""
        raise NotImplementedError

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """A draw from the law at ``t = T`` (where it does not depend on the data)."""
        raise NotImplementedError

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """Per-coordinate bound on ``|u_t|`` when ``|x0| <= data_bound`` (``inf`` if none)."""
        raise NotImplementedError

    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0) -> torch.Tensor:
        """Exact marginal velocity ``E[u_t | x_t = x]`` for the data law ``Σ_i w_i δ_{support_i}``
        (``data_sigma = 0``) or the Gaussian mixture ``Σ_i w_i N(support_i, data_sigma² I)``:
        ``x: (B, *D)``, ``t``: float or ``(B,)``, ``support: (n, *D)``, ``weights: (n,)`` -> ``(B, *D)``."""
        raise NotImplementedError

    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0) -> torch.Tensor:
        """``log`` of the (continuous part of the) density of ``x_t`` for finite data: ``(B,)`` float64."""
        raise NotImplementedError


# ================================================================================================
# Kac path
# ================================================================================================


class _BesselTable:
    """Piecewise-polynomial tables of two functions of ``z ≥ 0`` that give the Kac law:

        Ã(z) = log i0e(z) + ½ log1p(2πz)       (→ 0 at z = 0 and as z → ∞)
        Q(z) = I1(z) / (z I0(z))                (1/2 at z = 0, ~ 1/z as z → ∞)

    so that ``log p(t, y) = log(a/(2c)) + (z - at) + Ã(z) + log[(1 + at Q(z)) / sqrt(1 + 2πz)]`` and
    ``v(t, y) = a y Q(z) / (1 + at Q(z))`` (docs/mathematics.md §2–3 with ``ct/r · I1(z) = at · I1(z)/z``).

    Both are smooth bounded functions of ``s = z/(z + z0) ∈ [0, 1)``; on ``cells`` uniform cells in
    ``s`` each is a polynomial of degree ``degree`` through the ``degree + 1`` nearest nodes (values
    from :meth:`reference`, i.e. ``torch.special.i0e/i1e``, in float64). Measured error over ``z ∈ [0, 1e5]``: < 1e-13 absolute
    for ``Ã``, < 1e-12 relative for ``Q`` (``tests/test_paths.py`` checks 1e-11). A lookup costs a
    few gathers and Horner steps, 4-5x cheaper than ``i0e`` plus ``i1e`` on a CPU.
    """

    cells = 2048
    degree = 5
    z0 = 2.0
    _cache: dict = {}

    @classmethod
    def reference(cls, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Ã(z), Q(z))`` straight from ``i0e`` and ``kac.bessel_ratio_term`` (``= 1/Q``; ``i0e/i1e``
        with a series below ``z = 1e-2``)."""
        at = torch.log(torch.special.i0e(z)) + 0.5 * torch.log1p(2.0 * math.pi * z)
        return at, 1.0 / bessel_ratio_term(z)

    @classmethod
    def _build(cls) -> Tuple[torch.Tensor, ...]:
        N, p, z0 = cls.cells, cls.degree, cls.z0
        dt = torch.float64
        s = torch.arange(N + 1, dtype=dt) / N
        z = z0 * s[:-1] / (1.0 - s[:-1])
        at, q = cls.reference(z)
        zero = torch.zeros(1, dtype=dt)
        at, q = torch.cat([at, zero]), torch.cat([q, zero])  # the limits at s = 1 (z = ∞)
        j = torch.arange(N)
        start = (j - (p - 1) // 2).clamp(0, N - p)
        nodes = (torch.arange(p + 1)[None, :] + start[:, None] - j[:, None]).to(dt)  # in cell units
        V = nodes[:, :, None] ** torch.arange(p + 1, dtype=dt)  # (N, p+1, p+1) Vandermonde
        coefs = []
        for vals in (at, q):
            P = vals[start[:, None] + torch.arange(p + 1)[None, :]]
            c = torch.linalg.solve(V, P.unsqueeze(-1)).squeeze(-1)  # (N, p+1), monomials in u ∈ [0,1)
            coefs.extend(c[:, m].contiguous() for m in range(p + 1))
        return tuple(coefs)

    @classmethod
    def tables(cls, device, dtype) -> Tuple[torch.Tensor, ...]:
        key = (str(device), dtype)
        if key not in cls._cache:
            if "cpu" not in cls._cache:
                cls._cache["cpu"] = cls._build()
            cls._cache[key] = tuple(c.to(device=device, dtype=dtype) for c in cls._cache["cpu"])
        return cls._cache[key]

    @classmethod
    def evaluate(cls, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(Ã(z), Q(z))`` by table lookup, ``z ≥ 0`` any shape."""
        N, p = cls.cells, cls.degree
        coefs = cls.tables(z.device, z.dtype)
        zf = z.reshape(-1)
        pos = (zf / (zf + cls.z0)).mul_(N)
        k = pos.floor().clamp_(0, N - 1)
        u = pos.sub_(k)
        k = k.long()
        out = []
        for f in range(2):
            c = coefs[f * (p + 1):(f + 1) * (p + 1)]
            r = c[p].index_select(0, k)
            for m in range(p - 1, -1, -1):
                r.mul_(u).add_(c[m].index_select(0, k))
            out.append(r.view(z.shape))
        return out[0], out[1]


def _kac_logp_velocity(y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor, a: float, c: float,
                       bessel: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate ``log p(g, y) - log(a/(2c))`` (``-inf`` outside the open cone ``|y| < cg``) and
    the interior velocity ``v(g, y)`` (finite everywhere; meaningful inside the cone).

    ``y``: any shape, e.g. ``(R, C, d)`` (rows x support points x dims) or ``(P, d)`` (selected pairs);
    ``cg = c g`` and ``ag = a g`` broadcast against it (``(R, 1, 1)`` or ``(P, 1)``). Overwrites nothing
    of ``y``.
    """
    ay = y.abs()
    inside = ay < cg
    r2 = (cg - ay).mul_(ay.add_(cg)).clamp_(min=0.0)  # (cg - |y|)(cg + |y|): no cancellation
    z = r2.sqrt_().mul_(a / c)
    if bessel == "table":
        At, Q = _BesselTable.evaluate(z)
    else:
        At, Q = _BesselTable.reference(z)
    den = (Q * ag).add_(1.0)  # 1 + ag Q
    corr = torch.rsqrt(z * (2.0 * math.pi) + 1.0).mul_(den).log_()
    lp = z.sub_(ag).add_(At).add_(corr)
    lp.masked_fill_(~inside, -math.inf)
    v = (y * Q).div_(den).mul_(a)
    return lp, v


def _pairs(y: torch.Tensor) -> torch.Tensor:
    """``(..., 2k)`` -> ``(..., k, 2)`` (a view)."""
    return y.reshape(y.shape[:-1] + (y.shape[-1] // 2, 2))


def _flight_logp_velocity(y: torch.Tensor, cg: torch.Tensor, lam: float, c: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pair ``log p(g, y) - log(λ/(2πc)) = -(λ/c) w - log q`` (``-inf`` outside the open disc
    ``|y| < cg``; ``q = sqrt(c²g² - |y|²)``, ``w = cg - q = |y|²/(cg + q)``) and the velocity
    ``c y/(cg + q)`` per coordinate (``c y/|y|`` off the disc: speed ``c``). ``y: (..., 2k)`` ->
    ``((..., k), (..., 2k))``; ``cg`` broadcasts against ``(..., k)``.
    """
    yp = _pairs(y)
    rho = torch.hypot(yp[..., 0], yp[..., 1])
    inside = rho < cg
    q = ((cg - rho) * (cg + rho)).clamp_(min=0.0).sqrt_()
    den = cg + q
    w = rho * rho / torch.where(den > 0, den, torch.ones_like(den))
    lp = w.mul_(-lam / c).sub_(torch.log(torch.where(inside, q, torch.ones_like(q))))
    lp.masked_fill_(~inside, -math.inf)
    dv = torch.maximum(den, rho)  # |y| off the disc; 0 only at y = 0, g = 0
    scale = c / torch.where(dv > 0, dv, torch.ones_like(dv))
    return lp, (yp * scale[..., None]).reshape(y.shape)


#: Gauss–Legendre nodes of the Gaussian-mixture Kac field and its window half-width in units of f σ
GM_NODES = 20
GM_WIDTH = 6.5
#: Gauss–Legendre nodes of the flight's Gaussian-mixture field (radial variable w, see _FlightKernel.gm_block)
GM_NODES_FLIGHT = 32
#: a Gaussian-mixture window ``GM_WIDTH · f σ`` below this many ulps of ``|z| + c g`` is replaced by its limit
GM_DEGENERATE = 1e6
_GL_CACHE: dict = {}


def _gauss_legendre_nodes(n: int, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    key = (n, str(device), dtype)
    if key not in _GL_CACHE:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n)
        _GL_CACHE[key] = (torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device))
    return _GL_CACHE[key]


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class _KacKernel:
    """The per-block pieces of the exact fields of a path on :class:`~kacnum.processes.kac.KacProcess` (blocks of one
    coordinate): Bessel terms by table (:class:`_BesselTable`), atoms at ``±c g``."""

    block = 1
    gm_nodes = GM_NODES

    def __init__(self, a: float, c: float):
        self.a, self.c = a, c
        #: per-block constant left out of ``logp_velocity``'s log density
        self.log_const = math.log(a / (2.0 * c))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        """Block norms ``(..., d) -> (..., d/block)`` (the support of a block is ``norm < c g``)."""
        return y.abs()

    def expand(self, m: torch.Tensor) -> torch.Tensor:
        """A per-block tensor ``(..., d/block)`` repeated onto the coordinates ``(..., d)``."""
        return m

    def blocks(self, m: torch.Tensor) -> torch.Tensor:
        """A per-coordinate tensor equal within blocks ``(..., d)`` -> its blocks ``(..., d/block)``."""
        return m

    def logp_velocity(self, y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                      bessel: str = "table") -> Tuple[torch.Tensor, torch.Tensor]:
        return _kac_logp_velocity(y, cg, ag, self.a, self.c, bessel)

    def face_velocity(self, y: torch.Tensor) -> torch.Tensor:
        """The atom velocity ``c sign(y)``."""
        return self.c * torch.sign(y)

    def gm_block(self, z: torch.Tensor, s: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                 nodes: int, width: float, velocity: bool):
        """One coordinate of a Gaussian-mixture component: the Kac law at ``g`` convolved with ``N(0, s²)`` at
        ``z = x - f μ`` (docs/mathematics.md §13). ``z: (R, K, d)``, ``s, cg, ag: (R, 1, 1)``. Returns ``(log H (R, K, d),
        E[z - y | z] (R, K, d), E[v | z] (R, K, d))`` (the last two ``None`` unless ``velocity``; ``z - y`` is
        ``s ξ``, the data's share of the offset).

            H(z) = e^{-ag}/2 [φ_s(z - cg) + φ_s(z + cg)] + ∫_{|y|<cg} p(g, y) φ_s(z - y) dy,

        the integral by ``nodes``-point Gauss–Legendre on the window ``|y - z| ≤ width · s`` clipped to the
        open cone (the integrand is smooth there; outside it the Gaussian weight is below e^{-21}). Where the
        window is below the floating-point resolution at ``z`` (``width · s ≤`` :data:`GM_DEGENERATE` ``· eps
        (|z| + cg)``, i.e. ``f(t)`` within ~1e-10 of 0) the integral is its ``s → 0`` limit ``p(g, z)``, with
        ``y = z`` and ``v(g, z)``: the quadrature would round its window to a point.
        """
        a, c = self.a, self.c
        gl_x, gl_w = _gauss_legendre_nodes(nodes, z.dtype, z.device)
        zc = torch.minimum(torch.maximum(z, -cg), cg)  # the window starts at the cone edge nearest to z
        lo = torch.maximum(-cg, zc - width * s)
        hi = torch.minimum(cg, zc + width * s)
        half = ((hi - lo) * 0.5).clamp_min(0.0)
        mid = (hi + lo) * 0.5
        y = mid[..., None] + half[..., None] * gl_x  # (R,K,d,Q)
        lp, v = _kac_logp_velocity(y, cg[..., None], ag[..., None], a, c, "table")
        has = half[..., None] > 0
        lq = lp + self.log_const + torch.log(half[..., None] * gl_w) \
            - 0.5 * ((z[..., None] - y) / s[..., None]) ** 2 - torch.log(s[..., None]) - _HALF_LOG_2PI
        lq = torch.where(has, lq, torch.full_like(lq, -math.inf))
        log_atom = (-ag - math.log(2.0)).expand_as(z)
        la_p = log_atom - 0.5 * ((z - cg) / s) ** 2 - torch.log(s) - _HALF_LOG_2PI
        la_m = log_atom - 0.5 * ((z + cg) / s) ** 2 - torch.log(s) - _HALF_LOG_2PI
        cgq = cg.expand_as(z)[..., None]
        Ls, Ys, Vs = [lq, la_p[..., None], la_m[..., None]], [y, cgq, -cgq], [v, torch.full_like(cgq, c),
                                                                             torch.full_like(cgq, -c)]
        degen = width * s <= GM_DEGENERATE * torch.finfo(z.dtype).eps * (z.abs() + cg)  # (R,K,d)
        if bool(degen.any()):  # the s -> 0 limit: one node at y = z carrying p(g, z)
            lpz, vz = _kac_logp_velocity(z, cg, ag, a, c, "table")
            Ls[0] = torch.where(degen[..., None], torch.full_like(lq, -math.inf), lq)
            Ls.append(torch.where(degen, lpz + self.log_const, torch.full_like(lpz, -math.inf))[..., None])
            Ys.append(z[..., None])
            Vs.append(vz[..., None])
        L = torch.cat(Ls, dim=-1)  # (R,K,d,Q+2[+1])
        logH = torch.logsumexp(L, dim=-1)  # (R,K,d)
        if not velocity:
            return logH, None, None
        wts = torch.exp(L - logH[..., None])
        wts = torch.nan_to_num(wts, nan=0.0)
        Y = torch.cat(Ys, dim=-1)
        V = torch.cat(Vs, dim=-1)
        return logH, z - (wts * Y).sum(dim=-1), (wts * V).sum(dim=-1)


class _FlightKernel:
    """The per-block pieces of the exact fields of a path on :class:`~kacnum.processes.flight.PlanarFlight` (blocks of
    two coordinates): closed-form density on the open disc, a circle atom at ``|y| = c g``."""

    block = 2
    gm_nodes = GM_NODES_FLIGHT

    def __init__(self, lam: float, c: float):
        self.a, self.c = lam, c
        self.log_const = math.log(lam / (2.0 * math.pi * c))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        yp = _pairs(y)
        return torch.hypot(yp[..., 0], yp[..., 1])

    def expand(self, m: torch.Tensor) -> torch.Tensor:
        return m.repeat_interleave(2, dim=-1)

    def blocks(self, m: torch.Tensor) -> torch.Tensor:
        return m[..., 0::2]

    def logp_velocity(self, y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                      bessel: str = "table") -> Tuple[torch.Tensor, torch.Tensor]:
        return _flight_logp_velocity(y, cg, self.a, self.c)

    def face_velocity(self, y: torch.Tensor) -> torch.Tensor:
        """The atom velocity ``c y/|y|`` per pair (0 at ``y = 0``)."""
        yp = _pairs(y)
        rho = torch.hypot(yp[..., 0], yp[..., 1])
        return (yp * (self.c / torch.where(rho > 0, rho, torch.ones_like(rho)))[..., None]).reshape(y.shape)

    def gm_block(self, z: torch.Tensor, s: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                 nodes: int, width: float, velocity: bool):
        """One pair of a Gaussian-mixture component: the flight law at ``g`` convolved with ``N(0, s² I₂)``.

        ``z: (R, K, d)`` (``z = x - f μ``), ``s, cg, ag: (R, 1, 1)``. Returns ``(log H (R, K, d/2),
        E[z - y | z] (R, K, d), E[u_flight(y) | z] (R, K, d))`` (``z - y = s ξ``: radial along ``ẑ``, summed as
        ``|z| - r (I1/I0)(κ)`` per term so that the ``s → 0`` limit gives exactly 0).

        The Gaussian is isotropic, so the angle integrates in closed form: for ``|y| = r`` uniform on its
        circle, ``E_θ φ_s(z - y) = exp(-(ρ - r)²/(2s²)) i0e(κ) / (2π s²)`` and
        ``E_θ[y φ_s(z - y)] = ẑ r (I1/I0)(κ) E_θ φ_s(z - y)``, with ``ρ = |z|``, ``κ = r ρ / s²``. Both the
        flight velocity ``c y/(cg + q)`` and ``y`` are radial, so everything is a radial integral. In the
        variable ``w = cg - q ∈ [0, cg)`` the continuous radial law is ``(λ/c) e^{-λw/c} dw`` (smooth: no
        ``1/q`` at the circle), ``r = sqrt(w (2cg - w))`` and ``c r/(cg + q) = c r/(2cg - w)``; the integrand
        is analytic in ``w`` (the angular averages are even in ``r``). Gauss–Legendre with ``nodes`` nodes on
        the ``w``-image of the radial window where the Gaussian factor is within ``e^{-width²/2}`` of its
        largest value on the disc (``r ∈ [ρ - sqrt(D² + (width s)²), ρ + width s]``, ``D = max(ρ - cg, 0)``),
        plus the circle atom ``e^{-λg}`` at ``r = cg`` (velocity ``c ẑ (I1/I0)(κ)``). Where the window is below
        the floating-point resolution (``width · s ≤`` :data:`GM_DEGENERATE` ``· eps (|z| + cg)``) the disc's
        part is its ``s → 0`` limit: density ``p(g, z)``, ``y = z``, velocity ``u_flight(g, z)``.
        """
        lam, c = self.a, self.c
        gl_x, gl_w = _gauss_legendre_nodes(nodes, z.dtype, z.device)
        zp = _pairs(z)  # (R,K,k,2)
        rz = torch.hypot(zp[..., 0], zp[..., 1])  # (R,K,k)
        ws = width * s
        D = (rz - cg).clamp_min(0.0)
        r_lo = (rz - torch.sqrt(D * D + ws * ws)).clamp_min(0.0)
        r_hi = torch.minimum(rz + ws, cg.expand_as(rz))

        def w_of(r):
            den = cg + ((cg - r) * (cg + r)).clamp_min(0.0).sqrt()
            return r * r / torch.where(den > 0, den, torch.ones_like(den))

        w_lo, w_hi = w_of(r_lo), w_of(torch.maximum(r_hi, r_lo))
        half = ((w_hi - w_lo) * 0.5).clamp_min(0.0)
        mid = (w_hi + w_lo) * 0.5
        wn = mid[..., None] + half[..., None] * gl_x  # (R,K,k,Q)
        cgq = cg[..., None]
        s2 = (s * s)[..., None]
        rn = (wn * (2.0 * cgq - wn)).clamp_min(0.0).sqrt()
        rzq = rz[..., None]
        # the Q nodes and the atom (r = cg) side by side: (R,K,k,Q+1)
        R = torch.cat([rn, cg.expand_as(rz)[..., None]], dim=-1)
        kall = R * rzq / s2
        i0 = torch.special.i0e(kall)
        lq = math.log(lam / c) - (lam / c) * wn + torch.log(half[..., None] * gl_w)
        lq = torch.where(half[..., None] > 0, lq, torch.full_like(lq, -math.inf))
        degen = ws <= GM_DEGENERATE * torch.finfo(z.dtype).eps * (rz + cg)  # (R,K,k)
        if bool(degen.any()):
            lq = torch.where(degen[..., None], torch.full_like(lq, -math.inf), lq)
        lead = torch.cat([lq, -ag.expand_as(rz)[..., None]], dim=-1)  # log of the radial weights
        L = lead - 0.5 * (rzq - R) ** 2 / s2 + torch.log(i0) - torch.log(2.0 * math.pi * s2)
        Vr = torch.cat([c * rn / (2.0 * cgq - wn).clamp_min(1e-300), torch.full_like(rz[..., None], c)], dim=-1)
        ratio = None
        if bool(degen.any()):  # the s -> 0 limit: one node at y = z carrying p(g, z) (radial: r = |z|, I1/I0 -> 1)
            lpz, _ = _flight_logp_velocity(z, cg, lam, c)
            L = torch.cat([L, torch.where(degen, lpz + self.log_const, torch.full_like(lpz, -math.inf))[..., None]], -1)
            qz = ((cg - rz) * (cg + rz)).clamp_min(0.0).sqrt()
            R = torch.cat([R, rz[..., None]], dim=-1)
            Vr = torch.cat([Vr, (c * rz / torch.maximum(cg + qz, rz).clamp_min(1e-300))[..., None]], dim=-1)
            ratio = torch.cat([torch.special.i1e(kall) / i0, torch.ones_like(rz[..., None])], dim=-1)
        logH = torch.logsumexp(L, dim=-1)
        if not velocity:
            return logH, None, None
        wts = torch.nan_to_num(torch.exp(L - logH[..., None]), nan=0.0)
        if ratio is None:
            ratio = torch.special.i1e(kall) / i0  # I1/I0, 0 at κ = 0
        Ed_r = (wts * (rzq - R * ratio)).sum(dim=-1)  # (R,K,k): radial components along ẑ
        Ev_r = (wts * Vr * ratio).sum(dim=-1)
        zhat = zp / torch.where(rz > 0, rz, torch.ones_like(rz))[..., None]
        return logH, (zhat * Ed_r[..., None]).reshape(z.shape), (zhat * Ev_r[..., None]).reshape(z.shape)


def _gm_pass(path: "ProcessPath", x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, logw: torch.Tensor,
             sigma: float, velocity: bool, nodes: Optional[int] = None, width: float = GM_WIDTH,
             chunk: int = 2 ** 21) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log density ``(B,)`` and exact marginal velocity ``(B, d)`` of ``X_t = f X0 + N_g`` for Gaussian-mixture
    data ``X0 ~ Σ_k w_k N(μ_k, σ² I)`` (docs/mathematics.md §13), ``x: (B, d)`` float64, ``t: (B,)``, ``mu: (K, d)``.

    Per component the law factorises over the process's blocks: block ``b`` is the process's law at ``g``
    convolved with ``N(f μ_kb, s² I)``, ``s = f σ`` (``path._kernel.gm_block``: a 1D quadrature per
    coordinate for Kac, a radial one per pair for the flight). Given the component and ``x``, the
    displacement ``y`` has the normalised weights of the quadrature terms, the velocity is
    ``f' X0 + g' u_N(g, y)`` with ``X0 = μ + (z - y)/f`` (``u_N`` the atom velocity on the atoms).
    Component posteriors from the product of block densities, all in log space. Rows with ``f(t) = 0``
    (the latent end) have a data-free law: the process's law at ``g`` and ``E[X0 | x] = Σ w_k μ_k``.
    """
    kern = path._kernel
    nodes = kern.gm_nodes if nodes is None else nodes
    a, c = path.a, path.c
    B, d = x.shape
    K = mu.shape[0]
    f, df, g, dg = path._row_schedules(t)
    lse = torch.empty(B, dtype=x.dtype, device=x.device)
    u = torch.empty_like(x) if velocity else None
    zero_f = f <= 0
    rows = max(1, chunk // max(K * d * (nodes + 2), 1))
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        fb = f[b0:b1]
        s = (fb.abs() * sigma).clamp_min(1e-300)[:, None, None]  # (R,1,1)
        cg = (c * g[b0:b1])[:, None, None]
        ag = (a * g[b0:b1])[:, None, None]
        z = x[b0:b1, None, :] - fb[:, None, None] * mu[None]  # (R,K,d)
        logH, Ed, Ev = kern.gm_block(z, s, cg, ag, nodes, width, velocity)
        logq = logH.sum(dim=-1) + logw[None]  # (R,K)
        lse[b0:b1] = torch.logsumexp(logq, dim=1)
        if velocity:
            X0 = mu[None] + sigma * Ed / s  # (R,K,d): E[X0 | x, k] = μ + σ E[ξ], s ξ = z - y
            post = torch.softmax(logq, dim=1)[..., None]  # (R,K,1)
            u[b0:b1] = df[b0:b1, None] * (post * X0).sum(dim=1) + dg[b0:b1, None] * (post * Ev).sum(dim=1)
    if bool(zero_f.any()):  # the latent end: the law does not depend on the data
        idx = zero_f.nonzero().squeeze(1)
        gz = g[idx][:, None]
        lp, v = kern.logp_velocity(x[idx], c * gz, a * gz, "table")
        lse[idx] = lp.sum(dim=1) + (d // kern.block) * kern.log_const
        if velocity:
            on_face = kern.expand(kern.norm(x[idx]) >= c * gz)
            v = torch.where(on_face, kern.face_velocity(x[idx]), v)
            mean = (torch.exp(logw)[:, None] * mu).sum(dim=0)
            u[idx] = df[idx, None] * mean[None] + dg[idx, None] * v
    return lse, u


def _kac_gm_pass(path: "KacPath", x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, logw: torch.Tensor,
                 sigma: float, velocity: bool, nodes: int = GM_NODES, width: float = GM_WIDTH,
                 chunk: int = 2 ** 21) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`_gm_pass` of a :class:`KacPath` (per coordinate: the Kac law at ``g`` convolved with
    ``N(f μ, (fσ)²)``, 20-node Gauss–Legendre on a window of ``6.5 f σ`` plus the two atoms)."""
    return _gm_pass(path, x, t, mu, logw, sigma, velocity, nodes=nodes, width=width, chunk=chunk)


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
    #: the kernel class of the exact fields, per process class (set by the subclasses)
    _kernel_cls: type = _KacKernel

    def __init__(self, process, T: float = 1.0, f: str = "linear", g: str = "t", t_eps: float = 0.0):
        block = getattr(process, "block_size", None)
        if block not in (1, 2) or not all(hasattr(process, m) for m in ("sample", "velocity", "a", "c")):
            raise ValueError(f"process must be a kacnum.processes.NoiseProcess with block_size 1 or 2, got {process!r}")
        self.process = process
        self._kernel = (_KacKernel if block == 1 else _FlightKernel)(process.a, process.c)
        self.T = check_positive("T", T)
        if f not in KAC_F_SCHEDULES:
            raise ValueError(f"f must be one of {KAC_F_SCHEDULES} (the data schedule), got {f!r}")
        if g not in KAC_G_SCHEDULES:
            raise ValueError(f"g must be one of {KAC_G_SCHEDULES} (the noise schedule), got {g!r}")
        self.f_name, self.g_name = f, g
        self.t_eps = check_in_range("t_eps", t_eps, 0.0, self.T)
        if self.t_eps >= self.T:
            raise ValueError(f"t_eps must be < T = {self.T:g}, got {t_eps!r}")

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
        if not torch.is_tensor(noise) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}")
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

    def _mixture_pass(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, logw: torch.Tensor,
                      chunk: int, bessel: str, velocity: bool):
        """Online log-sum-exp over support chunks. Returns ``(lse (B,), u (B, d) or None)`` where
        ``lse = log Σ_i w_i Π_b p(g, y_ib) - (d/block) log_const`` (``y_ib`` block ``b`` of ``x - f s_i``)
        and ``u`` the interior field (undefined where ``lse = -inf``)."""
        kern = self._kernel
        a, c = self.a, self.c
        B, d = x.shape
        n = s.shape[0]
        f, df, g, dg = self._row_schedules(t)
        cols = max(1, min(n, chunk // max(d, 1)))
        rows = max(1, chunk // (cols * d))
        lse = torch.empty(B, dtype=x.dtype, device=x.device)
        u = torch.empty_like(x) if velocity else None
        for b0 in range(0, B, rows):
            b1 = min(B, b0 + rows)
            xb = x[b0:b1, None, :]
            fb = f[b0:b1, None, None]
            cg = (c * g[b0:b1])[:, None, None]
            ag = (a * g[b0:b1])[:, None, None]
            m = torch.full((b1 - b0,), -math.inf, dtype=x.dtype, device=x.device)
            tot = torch.zeros_like(m)
            acc_s = torch.zeros(b1 - b0, d, dtype=x.dtype, device=x.device)
            acc_v = torch.zeros_like(acc_s)
            for n0 in range(0, n, cols):
                sc = s[n0:n0 + cols]
                lw = logw[n0:n0 + cols]
                y = xb - fb * sc[None]  # (R, C, d)
                # a pair (row, support point) counts only if x is inside that support in every block:
                # screen cheaply, then evaluate the densities densely or on the surviving pairs only
                pin = (kern.norm(y) < cg).all(dim=-1)  # (R, C)
                n_in = int(pin.sum())
                if n_in == 0:
                    continue
                if n_in > 0.5 * pin.numel():
                    lp, v = kern.logp_velocity(y, cg, ag, bessel)
                    L = lp.sum(dim=-1) + lw[None]
                    ri = ci = None
                else:
                    ri, ci = pin.nonzero(as_tuple=True)
                    lp, v = kern.logp_velocity(y[ri, ci], cg[ri, 0], ag[ri, 0], bessel)  # (P, d)
                    L = torch.full(pin.shape, -math.inf, dtype=x.dtype, device=x.device)
                    L[ri, ci] = lp.sum(dim=-1) + lw[ci]
                m_new = torch.maximum(m, L.max(dim=1).values)
                safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                old = torch.exp(m - safe)  # 0 while m = -inf
                e = torch.exp(L - safe[:, None])
                tot = tot * old + e.sum(dim=1)
                if velocity:
                    if ri is None:
                        vsum = torch.bmm(e[:, None, :], v).squeeze(1)
                    else:
                        vsum = torch.zeros_like(acc_v).index_add_(0, ri, e[ri, ci, None] * v)
                    acc_s = acc_s * old[:, None] + e @ sc
                    acc_v = acc_v * old[:, None] + vsum
                m = m_new
            ok = tot > 0
            lse[b0:b1] = torch.where(ok, m + torch.log(torch.where(ok, tot, torch.ones_like(tot))),
                                     torch.full_like(m, -math.inf))
            if velocity:
                den = torch.where(ok, tot, torch.ones_like(tot))[:, None]
                u[b0:b1] = df[b0:b1, None] * (acc_s / den) + dg[b0:b1, None] * (acc_v / den)
        return lse, u

    def _fallback(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor, logw: torch.Tensor,
                  chunk: int, bessel: str) -> torch.Tensor:
        """Velocity at points that lie in no open support (see :meth:`exact_velocity`), ``x: (R, d)``.

        Pass 1 (cheap, all pairs): total excess ``D_i`` and number of face blocks ``k_i``.
        Pass 2 (selected pairs only, usually one per row): interior log densities and velocities.
        """
        kern = self._kernel
        a, c = self.a, self.c
        R, d = x.shape
        n = s.shape[0]
        f, df, g, dg = self._row_schedules(t)
        rows = max(1, min(R, 2 ** 20 // n))
        u = torch.empty_like(x)
        smax = s.abs().max()
        for r0 in range(0, R, rows):
            r1 = min(R, r0 + rows)
            xr, fr, gr = x[r0:r1], f[r0:r1], g[r0:r1]
            cg = (c * gr)[:, None, None]
            D = torch.empty(r1 - r0, n, dtype=x.dtype, device=x.device)
            K = torch.empty(r1 - r0, n, dtype=torch.long, device=x.device)
            cols = max(1, min(n, chunk // ((r1 - r0) * d)))
            for n0 in range(0, n, cols):
                excess = kern.norm(xr[:, None, :] - fr[:, None, None] * s[None, n0:n0 + cols]).sub_(cg)
                K[:, n0:n0 + cols] = (excess >= 0).sum(dim=-1)
                D[:, n0:n0 + cols] = excess.clamp_(min=0.0).sum(dim=-1)
            tol = 1e-12 * d * (c * gr + fr.abs() * smax + xr.abs().amax(dim=1) + 1.0)
            cand = D <= (D.min(dim=1).values + tol)[:, None]
            kmax = torch.where(cand, K, torch.full_like(K, -1)).max(dim=1).values
            ri, ci = (cand & (K == kmax[:, None])).nonzero(as_tuple=True)
            L = torch.full((r1 - r0, n), -math.inf, dtype=x.dtype, device=x.device)
            V = torch.empty(ri.shape[0], d, dtype=x.dtype, device=x.device)
            step = max(1, chunk // d)
            for p0 in range(0, ri.shape[0], step):
                rp, cp = ri[p0:p0 + step], ci[p0:p0 + step]
                y = xr[rp] - fr[rp, None] * s[cp]  # (P, d)
                cgp, agp = (c * gr[rp])[:, None], (a * gr[rp])[:, None]
                lp, v = kern.logp_velocity(y, cgp, agp, bessel)
                face = kern.norm(y) >= cgp
                L[rp, cp] = lp.masked_fill_(face, 0.0).sum(dim=-1) + logw[cp]
                V[p0:p0 + step] = torch.where(kern.expand(face), kern.face_velocity(y), v)
            w = torch.softmax(L, dim=1)  # (R', n): every row has >= 1 selected pair
            vsum = torch.zeros(r1 - r0, d, dtype=x.dtype, device=x.device).index_add_(0, ri, w[ri, ci, None] * V)
            u[r0:r1] = df[r0:r1, None] * (w @ s) + dg[r0:r1, None] * vsum
        return u

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
            xs, s, logw = self._support_inputs(x, support, weights)
            self._check_even(xs)
            t = self._times(t, x.shape[0], xs)
            _, u = _gm_pass(self, xs, t, s, logw, data_sigma, velocity=True)
            return u.to(x.dtype).reshape(x.shape)
        if atom_mask is not None:
            if torch.is_tensor(t):
                if t.numel() != 1:
                    raise ValueError("t must be a single time when atom_mask is given")
                t = t.item()
            return _velocity_with_atoms(self, x, float(t), support, atom_mask, weights).to(x.dtype)
        if bessel not in ("table", "reference"):
            raise ValueError(f"bessel must be 'table' or 'reference', got {bessel!r}")
        xs, s, logw = self._support_inputs(x, support, weights)
        self._check_even(xs)
        t = self._times(t, x.shape[0], xs)
        chunk = self._chunk(chunk_size, x.device)
        lse, u = self._mixture_pass(xs, t, s, logw, chunk, bessel, velocity=True)
        bad = ~torch.isfinite(lse)
        if bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            u[idx] = self._fallback(xs[idx], t[idx], s, logw, chunk, bessel)
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
            xs, s, logw = self._support_inputs(x, support, weights)
            self._check_even(xs)
            t = self._times(t, x.shape[0], xs)
            lse, _ = _gm_pass(self, xs, t, s, logw, data_sigma, velocity=False)
            return lse
        if bessel not in ("table", "reference"):
            raise ValueError(f"bessel must be 'table' or 'reference', got {bessel!r}")
        xs, s, logw = self._support_inputs(x, support, weights)
        self._check_even(xs)
        t = self._times(t, x.shape[0], xs)
        lse, _ = self._mixture_pass(xs, t, s, logw, self._chunk(chunk_size, x.device), bessel, velocity=False)
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


@torch.no_grad()
def _velocity_with_atoms(path: ProcessPath, x: torch.Tensor, t: float, support: torch.Tensor,
                         atom_mask: torch.Tensor, weights: Optional[torch.Tensor] = None,
                         rel_tol: float = 1e-12, chunk: int = 2 ** 18) -> torch.Tensor:
    """Exact marginal velocity of a process path at sampled points, atoms included (docs/mathematics.md §3–4, §14).

    The law of ``X_t`` splits into strata: for a set ``m`` of blocks on their atoms (a face ``|y| = c g``
    for Kac, the circle for the flight), component ``i`` puts mass ``w_i A^{|m|} Π_{b∉m} p(g, y_ib)`` on the
    points with ``norm(y_ib) = c g`` (``b ∈ m``) and ``norm(y_ib) < c g`` (``b ∉ m``), ``y_i = x - f x^(i)``,
    ``A`` the atom density (``e^{-ag}/2`` per face point for Kac, ``e^{-λg}/(2π c g)`` per unit length of
    the circle), the same for every component, so it cancels. On a stratum the velocity is the average of
    the conditional velocities ``f' x^(i)_b + g' (atom velocity if b ∈ m else u_N(g, y_ib))`` with weights
    ``w_i Π_{b∉m} p(g, y_ib)`` over the components that reach ``x`` with the same face set.

    Args:
        path: the path; x: ``(B, d)`` samples at one time ``t`` (float); support: ``(n, d)``.
        atom_mask: ``(B, d)`` the sampler's mask (``PathSample.atom_mask``, equal within blocks): which
            blocks of each sample sit on their atom. A component counts on an atom block when
            ``| norm(y) - cg | <= tol`` (``tol = rel_tol (norm(x) + cg + norm(f x^(i)) + 1)``: other
            components' atoms through the same point, e.g. support points sharing a coordinate) and on the
            others when ``norm(y) < cg - tol``.
        weights: ``(n,)`` data weights (default uniform).

    Returns:
        ``(B, d)`` float64. Raises ``ValueError`` if a sample is reachable by no component (a wrong mask).
    """
    kern = path._kernel
    xs = x.reshape(x.shape[0], -1).to(torch.float64)
    s = support.reshape(support.shape[0], -1).to(dtype=torch.float64, device=x.device)
    if atom_mask is None or atom_mask.shape != x.shape:
        raise ValueError(f"atom_mask must be a bool tensor of x's shape {tuple(x.shape)}")
    path._check_even(xs)
    m_coord = atom_mask.reshape(xs.shape).to(torch.bool)
    m_all = kern.blocks(m_coord)
    if kern.block == 2 and not bool((m_coord[:, 0::2] == m_coord[:, 1::2]).all()):
        raise ValueError("atom_mask must be equal within each pair of coordinates (one flight per pair)")
    n = s.shape[0]
    logw = torch.full((n,), -math.log(n), dtype=torch.float64, device=x.device) if weights is None else \
        torch.log(torch.as_tensor(weights, dtype=torch.float64, device=x.device) / float(torch.as_tensor(weights).sum()))
    t = float(t)
    c = path.c
    f, df, g, dg = path.f(t), path.df(t), path.g(t), path.dg(t)
    cg = c * g
    u = torch.empty_like(xs)
    rows = max(1, chunk // max(1, s.numel()))
    gt = torch.tensor(g, dtype=torch.float64, device=x.device)
    bk = kern.block
    for b in range(0, xs.shape[0], rows):
        xb, m = xs[b:b + rows, None, :], m_all[b:b + rows, None, :]
        y = xb - f * s[None]  # (R, n, d)
        ay = kern.norm(y)
        tol = rel_tol * (kern.norm(xb) + cg + abs(f) * kern.norm(s)[None] + 1.0)
        on_face = (ay - cg).abs() <= tol
        interior = ay < cg - tol
        ok = torch.where(m, on_face, interior).all(dim=-1)  # (R, n)
        yb = y.reshape(y.shape[:-1] + (y.shape[-1] // bk, bk))
        logp = path.process.block_log_density(gt, yb)
        logp = torch.where(m, torch.zeros_like(logp), logp)
        L = torch.where(ok, logp.sum(dim=-1) + logw[None], torch.full_like(ok, -math.inf, dtype=torch.float64))
        if not bool(torch.isfinite(L.max(dim=1).values).all()):
            raise ValueError("a sample lies on no stratum of the law: atom_mask does not match x "
                             "(pass PathSample.atom_mask of the same draw)")
        w = torch.softmax(L, dim=1)
        v = path.process.velocity(gt, y, atom_mask=kern.expand(m).expand_as(y))
        uk = df * s[None] + dg * v
        u[b:b + rows] = (w[..., None] * uk).sum(dim=1)
    return u.reshape(x.shape)


#: the earlier name (Kac paths); the same function
_kac_velocity_with_atoms = _velocity_with_atoms


# ================================================================================================
# Gaussian paths
# ================================================================================================


def gaussian_posterior_mean(x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, s: torch.Tensor,
                             logw: torch.Tensor, chunk: int, want_mean: bool = True, data_sigma: float = 0.0):
    """For ``x = alpha x0 + sigma ε``, ``x0 ~ Σ w_i N(s_i, data_sigma² I)`` (``data_sigma = 0``: the
    Dirac mixture ``Σ w_i δ_{s_i}``): ``(E[x0 | x] (B, d), log ρ(x) (B,))``.

    Given component ``i``, ``x ~ N(alpha s_i, v I)`` with ``v = alpha² data_sigma² + sigma²`` and
    ``E[x0 | x, i] = s_i + alpha data_sigma² / v · (x - alpha s_i)``. Posterior logits
    ``log w_i - |x - alpha s_i|² / (2 v)`` from direct differences (no ``|x|² - 2x·s + |s|²``
    cancellation), softmax per row. ``alpha, sigma: (B,)``.
    """
    B, d = x.shape
    n = s.shape[0]
    rows = max(1, chunk // max(n * d, 1))
    mean = torch.empty_like(x)
    logrho = torch.empty(B, dtype=x.dtype, device=x.device)
    for b0 in range(0, B, rows):
        b1 = min(B, b0 + rows)
        al = alpha[b0:b1]
        var = sigma[b0:b1] ** 2 + (al * data_sigma) ** 2
        diff = x[b0:b1, None, :] - al[:, None, None] * s[None]
        L = logw[None] - diff.pow(2).sum(dim=-1) / (2.0 * var[:, None])
        lse = torch.logsumexp(L, dim=1)
        logrho[b0:b1] = lse - 0.5 * d * (torch.log(var) + math.log(2.0 * math.pi))
        if want_mean:
            post = torch.softmax(L, dim=1)
            m = post @ s
            if data_sigma > 0:
                m = m + (al * data_sigma ** 2 / var)[:, None] * (post[..., None] * diff).sum(dim=1)
            mean[b0:b1] = m
    return mean, logrho


class GaussianPath(ProbabilityPath):
    """Rectified flow / Gaussian flow matching ``x_t = (1 - t/T) x0 + (t/T) ε``, target ``(ε - x0)/T`` (docs/mathematics.md §9).

    Args:
        T: horizon. t_eps: training times ``U[t_eps, T)`` (default 0).

    Latent ``N(0, I)`` exactly at ``T``; :meth:`speed_bound` is ``inf``. The exact field for finite
    data is ``u(t, x) = (x - E[x0 | x_t = x]) / t`` (the posterior over the support is a softmax of
    Gaussian log-likelihoods), defined for ``t > 0``.
    """

    t_min_default = 0.0

    def __init__(self, T: float = 1.0, t_eps: float = 0.0):
        self.T = check_positive("T", T)
        self.t_eps = check_in_range("t_eps", t_eps, 0.0, self.T)
        if self.t_eps >= self.T:
            raise ValueError(f"t_eps must be < T = {self.T:g}, got {t_eps!r}")

    def __repr__(self) -> str:
        return f"GaussianPath(T={self.T:g}, t_eps={self.t_eps:g})"

    def alpha(self, t: TimeLike):
        """Data scale ``1 - t/T``."""
        return 1.0 - t / self.T

    def sigma(self, t: TimeLike):
        """Noise scale ``t/T``."""
        return t / self.T

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``u = (ε - x0) / T`` (independent of ``t``)."""
        x0 = _check_data("x0", x0)
        if not torch.is_tensor(noise) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}")
        return (noise - x0) / self.T

    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """``ε ~ N(0, I)`` (one ``randn`` of ``x0``'s shape from ``generator``), ``x_t``, ``u_t = (ε - x0)/T``.
        ``t``: ``(B,)`` or a float in ``[0, T]``."""
        x0 = _check_data("x0", x0)
        t = self._times(t, x0.shape[0], x0)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tb = _per_row(t, x0.dim())
        return PathSample(x_t=self.alpha(tb) * x0 + self.sigma(tb) * eps, u_t=(eps - x0) / self.T, t=t,
                          x0=x0, noise=eps, atom_mask=None)

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """``N(0, I)`` of the given shape (the law at ``T``)."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """``inf``: Gaussian noise has unbounded speed."""
        return torch.full_like(t, math.inf) if torch.is_tensor(t) else math.inf

    @torch.no_grad()
    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
        """``u(t, x) = (x - E[x0 | x_t = x]) / t`` for the data law ``Σ_i w_i δ_{x^(i)}`` (or, with
        ``data_sigma = σ > 0``, ``Σ_i w_i N(x^(i), σ² I)``: closed form, see :func:`gaussian_posterior_mean`);
        ``t ∈ (0, T]``.

        ``x: (B, *D)``, ``support: (n, *D)``, ``weights: (n,)``; float64 inside, ``x``'s dtype out.
        """
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs, open_at_zero=True)
        mean, _ = gaussian_posterior_mean(xs, self.alpha(t), self.sigma(t), s, logw,
                                           self._chunk(chunk_size, x.device),
                                           data_sigma=_check_data_sigma(data_sigma))
        return ((xs - mean) / t[:, None]).to(x.dtype).reshape(x.shape)

    @torch.no_grad()
    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                            chunk_size: Optional[int] = None) -> torch.Tensor:
        """``log Σ_i w_i N(x; α x^(i), σ² I)``, ``t ∈ (0, T]``: ``(B,)`` float64."""
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs, open_at_zero=True)
        _, lr = gaussian_posterior_mean(xs, self.alpha(t), self.sigma(t), s, logw,
                                         self._chunk(chunk_size, x.device), want_mean=False,
                                         data_sigma=_check_data_sigma(data_sigma))
        return lr


class VPPath(ProbabilityPath):
    """VP diffusion ``x_t = sqrt(ᾱ(t)) x0 + sqrt(1 - ᾱ(t)) ε`` trained with ε-prediction (docs/mathematics.md §9).

    Noise rate (linear in ``t/T``, so ``ᾱ`` depends on ``t/T`` only; ``T = 1`` is Song et al.'s VP-SDE):

        β(t) = (β_min + (β_max - β_min) t/T) / T,
        ∫_0^t β = β_min (t/T) + (β_max - β_min) (t/T)² / 2,      ᾱ(t) = exp(-∫_0^t β).

    With the defaults ``ᾱ(T) = e^{-10.05} ≈ 4.3e-5``: the latent is taken as ``N(0, I)``.

    Conditional path and targets (``m = sqrt(ᾱ)``, ``σ = sqrt(1 - ᾱ)``, ``m' = -β m/2``,
    ``σ' = β ᾱ/(2σ)``):

    * ``PathSample.noise`` is ``ε``: the target of the ε-loss (:class:`kacnum.flows.losses.EpsilonLoss`);
    * ``PathSample.u_t = m' x0 + σ' ε``, the velocity of the conditional path. Its conditional
      expectation is the probability-flow velocity ``dx/dt = -½ β(t) [x - ε̂(x, t)/σ(t)]``, with
      ``ε̂ = E[ε | x_t = x]`` (:meth:`eps_to_velocity`): since ``m E[x0|x] = x - σ ε̂`` and
      ``σ² + ᾱ = 1``, ``E[u_t | x] = -½β (x - σ ε̂) + βᾱ ε̂/(2σ) = -½β x + ½β ε̂/σ``.
      So an ε-model drives the same ODE solvers (through :meth:`eps_to_velocity`) and
      ``solvers.ddim_sample(eps_model, x, path.alpha_bar, time_grid)``.

    ``σ(0) = 0`` divides: times must lie in ``(0, T]``; training uses ``U[t_eps, T)`` with
    ``t_eps = 1e-5`` and sampling grids end at ``t_min = 1e-3`` by default (Song et al.'s choices).
    """

    t_min_default = 1e-3
    t_open_at_zero = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_eps: float = 1e-5):
        self.beta_min = check_positive("beta_min", beta_min)
        self.beta_max = check_positive("beta_max", beta_max)
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max must be >= beta_min = {self.beta_min:g}, got {beta_max!r}")
        self.T = check_positive("T", T)
        self.t_eps = check_in_range("t_eps", t_eps, 0.0, self.T)
        if not 0.0 < self.t_eps < self.T:
            raise ValueError(f"t_eps must lie in (0, T = {self.T:g}) (sigma(0) = 0), got {t_eps!r}")

    def __repr__(self) -> str:
        return f"VPPath(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, T={self.T:g}, t_eps={self.t_eps:g})"

    # -------------------------------------------------------------------------------- schedule
    def beta(self, t: TimeLike):
        """``β(t) = (β_min + (β_max - β_min) t/T) / T``."""
        return (self.beta_min + (self.beta_max - self.beta_min) * (t / self.T)) / self.T

    def integrated_beta(self, t: TimeLike):
        """``∫_0^t β = β_min (t/T) + (β_max - β_min)(t/T)²/2``."""
        u = t / self.T
        return self.beta_min * u + 0.5 * (self.beta_max - self.beta_min) * u * u

    def alpha_bar(self, t: TimeLike):
        """``ᾱ(t) = exp(-∫_0^t β)``; float in, float out (``solvers.ddim_sample``'s ``alpha_bar_fn``)."""
        b = self.integrated_beta(t)
        return torch.exp(-b) if torch.is_tensor(b) else math.exp(-b)

    def sigma(self, t: TimeLike):
        """``σ(t) = sqrt(1 - ᾱ(t))`` via ``expm1`` (accurate for small ``t``)."""
        b = self.integrated_beta(t)
        return torch.sqrt(-torch.expm1(-b)) if torch.is_tensor(b) else math.sqrt(-math.expm1(-b))

    def alpha(self, t: TimeLike):
        """``m(t) = sqrt(ᾱ(t)) = exp(-½ ∫β)``."""
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b) if torch.is_tensor(b) else math.exp(-0.5 * b)

    # -------------------------------------------------------------------------------- fields
    def eps_to_velocity(self, x: torch.Tensor, t: TimeLike, eps: torch.Tensor) -> torch.Tensor:
        """Probability-flow velocity of an ε-prediction: ``dx/dt = -½ β(t) [x - eps / σ(t)]``.

        ``x, eps: (B, ...)``, ``t``: float or ``(B,)`` in ``(0, T]``.
        """
        x = _check_data("x", x)
        if not torch.is_tensor(eps) or eps.shape != x.shape:
            raise ValueError(f"eps must be a tensor of x's shape {tuple(x.shape)}")
        t = _per_row(self._times(t, x.shape[0], x), x.dim())
        return -0.5 * self.beta(t) * (x - eps / self.sigma(t))

    def velocity_field(self, eps_model):
        """``field(x, t) = eps_to_velocity(x, t, eps_model(x, t))`` for ``kacnum.flows.solvers.integrate``."""

        def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.eps_to_velocity(x, t, eps_model(x, t))

        field.nfe_per_call = int(getattr(eps_model, "nfe_per_call", 1))
        return field

    def conditional_velocity(self, x0: torch.Tensor, t: TimeLike, noise: torch.Tensor,
                             atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``u = m'(t) x0 + σ'(t) ε = -½β m x0 + β ᾱ ε / (2σ)``, ``t ∈ (0, T]``."""
        x0 = _check_data("x0", x0)
        if not torch.is_tensor(noise) or noise.shape != x0.shape:
            raise ValueError(f"noise must be a tensor of x0's shape {tuple(x0.shape)}")
        t = _per_row(self._times(t, x0.shape[0], x0), x0.dim())
        beta, m, sig = self.beta(t), self.alpha(t), self.sigma(t)
        return -0.5 * beta * m * x0 + 0.5 * beta * m * m / sig * noise

    def sample(self, x0: torch.Tensor, t: TimeLike, generator: Optional[torch.Generator] = None) -> PathSample:
        """``ε ~ N(0, I)``, ``x_t = m x0 + σ ε``; ``noise = ε`` (ε-loss target), ``u_t`` the conditional
        path velocity. ``t``: ``(B,)`` or a float in ``(0, T]``."""
        x0 = _check_data("x0", x0)
        t = self._times(t, x0.shape[0], x0)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        tb = _per_row(t, x0.dim())
        x_t = self.alpha(tb) * x0 + self.sigma(tb) * eps
        return PathSample(x_t=x_t, u_t=self.conditional_velocity(x0, t, eps), t=t, x0=x0, noise=eps,
                          atom_mask=None)

    def sample_latent(self, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                      dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
        """``N(0, I)`` (the law at ``T`` up to ``sqrt(ᾱ(T)) x0``, 6.6e-3 x0 with the defaults)."""
        return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def speed_bound(self, t: TimeLike, data_bound: float = 1.0):
        """``inf``."""
        return torch.full_like(t, math.inf) if torch.is_tensor(t) else math.inf

    @torch.no_grad()
    def exact_epsilon(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                      weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
        """``ε̂(x, t) = E[ε | x_t = x] = (x - m E[x0 | x]) / σ`` for the data law ``Σ_i w_i δ_{x^(i)}``."""
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs)
        m, sig = self.alpha(t), self.sigma(t)
        mean, _ = gaussian_posterior_mean(xs, m, sig, s, logw, self._chunk(chunk_size, x.device),
                                           data_sigma=_check_data_sigma(data_sigma))
        return ((xs - m[:, None] * mean) / sig[:, None]).to(x.dtype).reshape(x.shape)

    @torch.no_grad()
    def exact_velocity(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                       weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                       chunk_size: Optional[int] = None) -> torch.Tensor:
        """Exact probability-flow velocity ``eps_to_velocity(x, t, exact_epsilon(x, t, ...))`` (float64 inside)."""
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs)
        m, sig = self.alpha(t), self.sigma(t)
        mean, _ = gaussian_posterior_mean(xs, m, sig, s, logw, self._chunk(chunk_size, x.device),
                                           data_sigma=_check_data_sigma(data_sigma))
        eps = (xs - m[:, None] * mean) / sig[:, None]
        u = -0.5 * self.beta(t)[:, None] * (xs - eps / sig[:, None])
        return u.to(x.dtype).reshape(x.shape)

    @torch.no_grad()
    def mixture_log_density(self, x: torch.Tensor, t: TimeLike, support: torch.Tensor,
                            weights: Optional[torch.Tensor] = None, *, data_sigma: float = 0.0,
                            chunk_size: Optional[int] = None) -> torch.Tensor:
        """``log Σ_i w_i N(x; m x^(i), σ² I)``: ``(B,)`` float64."""
        xs, s, logw = self._support_inputs(x, support, weights)
        t = self._times(t, x.shape[0], xs)
        _, lr = gaussian_posterior_mean(xs, self.alpha(t), self.sigma(t), s, logw,
                                         self._chunk(chunk_size, x.device), want_mean=False,
                                         data_sigma=_check_data_sigma(data_sigma))
        return lr
