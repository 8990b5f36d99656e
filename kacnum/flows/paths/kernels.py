"""Per-block kernels of the exact fields of a process path ``X_t = f(t) X0 + N_{g(t)}``.

A kernel knows one block of the noise ``N`` at noise time ``g``: its continuous log density and interior
velocity (:meth:`_BlockKernel.logp_velocity`), its atom (the block norm reaching ``c g``) and the atom
velocity, and the block's law convolved with a Gaussian (:meth:`_BlockKernel.gm_block`, the Gaussian-mixture
field of docs/mathematics.md §13). Two kernels:

* :class:`_KacKernel`, blocks of one coordinate (the 1D Kac law, docs/mathematics.md §2–3): densities from
  the Bessel tables of :class:`_BesselTable`, atoms at ``±c g``;
* :class:`_FlightKernel`, blocks of two coordinates (the planar random flight, docs/mathematics.md §14):
  closed-form density on the open disc, a circle atom at ``|y| = c g``.

The Gaussian-mixture blocks share one quadrature scheme: Gauss–Legendre nodes on a window where the
Gaussian factor is not negligible, the atoms as extra terms, and, where the window is below the
floating-point resolution, its ``s → 0`` limit (one node at ``y = z``).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from kacnum.processes.kac import bessel_ratio_term

#: Gauss–Legendre nodes of the Gaussian-mixture Kac field and its window half-width in units of f σ
GM_NODES = 20
GM_WIDTH = 6.5
#: Gauss–Legendre nodes of the flight's Gaussian-mixture field (radial variable w, see _FlightKernel.gm_block)
GM_NODES_FLIGHT = 32
#: a Gaussian-mixture window ``GM_WIDTH · f σ`` below this many ulps of ``|z| + c g`` is replaced by its limit
GM_DEGENERATE = 1e6
_GL_CACHE: dict = {}
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _gauss_legendre_nodes(n: int, dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights on ``[-1, 1]`` (cached per ``(n, device, dtype)``; not to be
    written to)."""
    key = (n, str(device), dtype)
    if key not in _GL_CACHE:
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n)
        _GL_CACHE[key] = (torch.as_tensor(x, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device))
    return _GL_CACHE[key]


def _neg_inf_unless(keep: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``L`` where ``keep``, ``-inf`` (no mass) elsewhere."""
    return torch.where(keep, L, torch.full_like(L, -math.inf))


# ================================================================================================
# the 1D Kac law


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


# ================================================================================================
# the planar flight


def _pairs(y: torch.Tensor) -> torch.Tensor:
    """``(..., 2k)`` -> ``(..., k, 2)`` (a view)."""
    return y.reshape(y.shape[:-1] + (y.shape[-1] // 2, 2))


def _pair_norms(y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``y: (..., 2k)`` -> its pairs ``(..., k, 2)`` (a view) and their Euclidean norms ``(..., k)``."""
    yp = _pairs(y)
    return yp, torch.hypot(yp[..., 0], yp[..., 1])


def _ones_where_zero(v: torch.Tensor) -> torch.Tensor:
    """``v`` with its non-positive entries replaced by 1 (a safe divisor)."""
    return torch.where(v > 0, v, torch.ones_like(v))


def _flight_logp_velocity(y: torch.Tensor, cg: torch.Tensor, lam: float, c: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per pair ``log p(g, y) - log(λ/(2πc)) = -(λ/c) w - log q`` (``-inf`` outside the open disc
    ``|y| < cg``; ``q = sqrt(c²g² - |y|²)``, ``w = cg - q = |y|²/(cg + q)``) and the velocity
    ``c y/(cg + q)`` per coordinate (``c y/|y|`` off the disc: speed ``c``). ``y: (..., 2k)`` ->
    ``((..., k), (..., 2k))``; ``cg`` broadcasts against ``(..., k)``.
    """
    yp, rho = _pair_norms(y)
    inside = rho < cg
    q = ((cg - rho) * (cg + rho)).clamp_(min=0.0).sqrt_()
    den = cg + q
    w = rho * rho / _ones_where_zero(den)
    lp = w.mul_(-lam / c).sub_(torch.log(torch.where(inside, q, torch.ones_like(q))))
    lp.masked_fill_(~inside, -math.inf)
    dv = torch.maximum(den, rho)  # |y| off the disc; 0 only at y = 0, g = 0
    scale = c / _ones_where_zero(dv)
    return lp, (yp * scale[..., None]).reshape(y.shape)


# ================================================================================================
# the kernels


class _BlockKernel:
    """The per-block pieces of the exact fields of a process path (blocks of ``block`` coordinates).

    Subclasses give ``block``, ``gm_nodes``, :meth:`_log_const`, the block norm (:meth:`norm`), the density
    (:meth:`logp_velocity`), the atom velocity (:meth:`face_velocity`) and the Gaussian-mixture block
    (:meth:`gm_block`).

    Attributes:
        a: the process's rate (switching rate of Kac, event rate λ of the flight). c: its speed.
        log_const: per-block constant left out of :meth:`logp_velocity`'s log density.
    """

    block: int = 1
    gm_nodes: int = GM_NODES

    def __init__(self, a: float, c: float):
        self.a, self.c = a, c
        self.log_const = self._log_const(a, c)

    @staticmethod
    def _log_const(a: float, c: float) -> float:
        raise NotImplementedError

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        """Block norms ``(..., d) -> (..., d/block)`` (the support of a block is ``norm < c g``)."""
        raise NotImplementedError

    def expand(self, m: torch.Tensor) -> torch.Tensor:
        """A per-block tensor ``(..., d/block)`` repeated onto the coordinates ``(..., d)``."""
        return m if self.block == 1 else m.repeat_interleave(self.block, dim=-1)

    def blocks(self, m: torch.Tensor) -> torch.Tensor:
        """A per-coordinate tensor equal within blocks ``(..., d)`` -> its blocks ``(..., d/block)``."""
        return m if self.block == 1 else m[..., 0::self.block]

    def logp_velocity(self, y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                      bessel: str = "table") -> Tuple[torch.Tensor, torch.Tensor]:
        """Per block ``log p(g, y_b) - log_const`` (``-inf`` off the open support) ``(..., d/block)`` and
        the interior velocity ``(..., d)``; ``cg = c g``, ``ag = a g`` broadcast against the blocks."""
        raise NotImplementedError

    def face_velocity(self, y: torch.Tensor) -> torch.Tensor:
        """The atom velocity of every block of ``y: (..., d)``."""
        raise NotImplementedError

    def gm_block(self, z: torch.Tensor, s: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                 nodes: int, width: float, velocity: bool):
        """The block's law at ``g`` convolved with ``N(0, s² I)`` at ``z = x - f μ`` (docs/mathematics.md §13)."""
        raise NotImplementedError

    # -------------------------------------------------------------------------------- shared pieces
    def logp_velocity_faces(self, y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                            bessel: str = "table") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`logp_velocity` with the atoms: ``(log p (..., d/block), velocity (..., d), face (..., d/block))``
        where ``face`` marks the blocks on or beyond their support's boundary (``norm(y_b) ≥ c g``), which
        move with the atom velocity."""
        lp, v = self.logp_velocity(y, cg, ag, bessel)
        face = self.norm(y) >= cg
        return lp, torch.where(self.expand(face), self.face_velocity(y), v), face

    @staticmethod
    def _window(lo: torch.Tensor, hi: torch.Tensor, nodes: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gauss–Legendre on ``[lo, hi]`` (elementwise; empty where ``hi ≤ lo``): the nodes ``(..., Q)``,
        ``log`` of their weights ``(..., Q)`` and the mask of non-empty windows ``(..., 1)``."""
        gl_x, gl_w = _gauss_legendre_nodes(nodes, lo.dtype, lo.device)
        half = ((hi - lo) * 0.5).clamp_min(0.0)
        mid = (hi + lo) * 0.5
        return mid[..., None] + half[..., None] * gl_x, torch.log(half[..., None] * gl_w), half[..., None] > 0

    @staticmethod
    def _degenerate(width: float, s: torch.Tensor, z_norm: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
        """Where the window ``width · s`` is below the floating-point resolution at ``z``
        (:data:`GM_DEGENERATE` ulps of ``norm(z) + c g``): there the quadrature is replaced by its limit."""
        return width * s <= GM_DEGENERATE * torch.finfo(z_norm.dtype).eps * (z_norm + cg)

    def _limit_term(self, degen: torch.Tensor, lpz: torch.Tensor) -> torch.Tensor:
        """The ``s → 0`` limit of the disc/cone part as one extra term ``(..., 1)``: ``log p(g, z)`` where
        ``degen``, no mass elsewhere."""
        return _neg_inf_unless(degen, lpz + self.log_const)[..., None]

    @staticmethod
    def _offset(degen: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        """``E[z - y | z]`` with its ``s → 0`` limit 0 where the window is degenerate: there ``z - y = s ξ`` is
        below the floating-point resolution of ``z``, so what the terms give is rounding (divided by ``f`` in
        ``X0 = μ + (z - y)/f`` it would grow without bound), and the data's offset keeps its prior mean 0."""
        if not bool(degen.any()):
            return offset
        return torch.where(degen, torch.zeros_like(offset), offset)

    @staticmethod
    def _normalise(L: torch.Tensor, velocity: bool):
        """Log-sum-exp of the terms ``L (..., Q')`` and, if ``velocity``, their normalised weights (0 on
        rows without mass)."""
        logH = torch.logsumexp(L, dim=-1)
        if not velocity:
            return logH, None
        return logH, torch.nan_to_num(torch.exp(L - logH[..., None]), nan=0.0)


class _KacKernel(_BlockKernel):
    """The per-block pieces of the exact fields of a path on :class:`~kacnum.processes.kac.KacProcess` (blocks of one
    coordinate): Bessel terms by table (:class:`_BesselTable`), atoms at ``±c g``."""

    block = 1
    gm_nodes = GM_NODES

    @staticmethod
    def _log_const(a: float, c: float) -> float:
        return math.log(a / (2.0 * c))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        return y.abs()

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
        c = self.c
        zc = torch.minimum(torch.maximum(z, -cg), cg)  # the window starts at the cone edge nearest to z
        lo = torch.maximum(-cg, zc - width * s)
        hi = torch.minimum(cg, zc + width * s)
        y, log_hw, has = self._window(lo, hi, nodes)  # (R,K,d,Q)
        lp, v = self.logp_velocity(y, cg[..., None], ag[..., None])
        lq = lp + self.log_const + log_hw \
            - 0.5 * ((z[..., None] - y) / s[..., None]) ** 2 - torch.log(s[..., None]) - _HALF_LOG_2PI
        lq = _neg_inf_unless(has, lq)
        log_atom = (-ag - math.log(2.0)).expand_as(z)
        la_p = log_atom - 0.5 * ((z - cg) / s) ** 2 - torch.log(s) - _HALF_LOG_2PI
        la_m = log_atom - 0.5 * ((z + cg) / s) ** 2 - torch.log(s) - _HALF_LOG_2PI
        cgq = cg.expand_as(z)[..., None]
        Ls, Ys, Vs = [lq, la_p[..., None], la_m[..., None]], [y, cgq, -cgq], [v, torch.full_like(cgq, c),
                                                                             torch.full_like(cgq, -c)]
        degen = self._degenerate(width, s, z.abs(), cg)  # (R,K,d)
        if bool(degen.any()):  # the s -> 0 limit: one node at y = z carrying p(g, z)
            lpz, vz = self.logp_velocity(z, cg, ag)
            Ls[0] = _neg_inf_unless(~degen[..., None], lq)
            Ls.append(self._limit_term(degen, lpz))
            Ys.append(z[..., None])
            Vs.append(vz[..., None])
        logH, wts = self._normalise(torch.cat(Ls, dim=-1), velocity)  # over (R,K,d,Q+2[+1])
        if not velocity:
            return logH, None, None
        Y = torch.cat(Ys, dim=-1)
        V = torch.cat(Vs, dim=-1)
        return logH, self._offset(degen, z - (wts * Y).sum(dim=-1)), (wts * V).sum(dim=-1)


class _FlightKernel(_BlockKernel):
    """The per-block pieces of the exact fields of a path on :class:`~kacnum.processes.flight.PlanarFlight` (blocks of
    two coordinates): closed-form density on the open disc, a circle atom at ``|y| = c g``. ``a`` is the
    event rate ``λ``."""

    block = 2
    gm_nodes = GM_NODES_FLIGHT

    @staticmethod
    def _log_const(a: float, c: float) -> float:
        return math.log(a / (2.0 * math.pi * c))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        return _pair_norms(y)[1]

    def logp_velocity(self, y: torch.Tensor, cg: torch.Tensor, ag: torch.Tensor,
                      bessel: str = "table") -> Tuple[torch.Tensor, torch.Tensor]:
        return _flight_logp_velocity(y, cg, self.a, self.c)

    def face_velocity(self, y: torch.Tensor) -> torch.Tensor:
        """The atom velocity ``c y/|y|`` per pair (0 at ``y = 0``)."""
        yp, rho = _pair_norms(y)
        return (yp * (self.c / _ones_where_zero(rho))[..., None]).reshape(y.shape)

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
        zp, rz = _pair_norms(z)  # (R,K,k,2), (R,K,k)
        ws = width * s
        D = (rz - cg).clamp_min(0.0)
        r_lo = (rz - torch.sqrt(D * D + ws * ws)).clamp_min(0.0)
        r_hi = torch.minimum(rz + ws, cg.expand_as(rz))

        def w_of(r):
            return r * r / _ones_where_zero(cg + ((cg - r) * (cg + r)).clamp_min(0.0).sqrt())

        wn, log_hw, has = self._window(w_of(r_lo), w_of(torch.maximum(r_hi, r_lo)), nodes)  # (R,K,k,Q)
        cgq = cg[..., None]
        s2 = (s * s)[..., None]
        rn = (wn * (2.0 * cgq - wn)).clamp_min(0.0).sqrt()
        rzq = rz[..., None]
        # the Q nodes and the atom (r = cg) side by side: (R,K,k,Q+1)
        R = torch.cat([rn, cg.expand_as(rz)[..., None]], dim=-1)
        kall = R * rzq / s2
        i0 = torch.special.i0e(kall)
        lq = _neg_inf_unless(has, math.log(lam / c) - (lam / c) * wn + log_hw)
        degen = self._degenerate(width, s, rz, cg)  # (R,K,k)
        if bool(degen.any()):
            lq = _neg_inf_unless(~degen[..., None], lq)
        lead = torch.cat([lq, -ag.expand_as(rz)[..., None]], dim=-1)  # log of the radial weights
        L = lead - 0.5 * (rzq - R) ** 2 / s2 + torch.log(i0) - torch.log(2.0 * math.pi * s2)
        Vr = torch.cat([c * rn / (2.0 * cgq - wn).clamp_min(1e-300), torch.full_like(rz[..., None], c)], dim=-1)
        ratio = None
        if bool(degen.any()):  # the s -> 0 limit: one node at y = z carrying p(g, z) (radial: r = |z|, I1/I0 -> 1)
            lpz, _ = self.logp_velocity(z, cg, ag)
            L = torch.cat([L, self._limit_term(degen, lpz)], -1)
            qz = ((cg - rz) * (cg + rz)).clamp_min(0.0).sqrt()
            R = torch.cat([R, rz[..., None]], dim=-1)
            Vr = torch.cat([Vr, (c * rz / torch.maximum(cg + qz, rz).clamp_min(1e-300))[..., None]], dim=-1)
            ratio = torch.cat([torch.special.i1e(kall) / i0, torch.ones_like(rz[..., None])], dim=-1)
        logH, wts = self._normalise(L, velocity)
        if not velocity:
            return logH, None, None
        if ratio is None:
            ratio = torch.special.i1e(kall) / i0  # I1/I0, 0 at κ = 0
        Ed_r = self._offset(degen, (wts * (rzq - R * ratio)).sum(dim=-1))  # (R,K,k): radial components along ẑ
        Ev_r = (wts * Vr * ratio).sum(dim=-1)
        zhat = zp / _ones_where_zero(rz)[..., None]
        return logH, (zhat * Ed_r[..., None]).reshape(z.shape), (zhat * Ev_r[..., None]).reshape(z.shape)
