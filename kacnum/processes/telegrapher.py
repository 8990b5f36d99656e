"""Solvers and exact solutions of the damped wave (telegrapher) equation (docs/mathematics.md §1–2).

    ∂tt u + 2a ∂t u = c² Δu,        a > 0 (switching rate), c > 0 (speed)

What it holds:

* :func:`solve_telegrapher_1d`: the kinetic (two-velocity) form ``∂t p± ± c ∂x p± = a (p∓ - p±)``, with
  ``u = p+ + p-`` and initial data ``p± = (u0 ± j0/c)/2``, ``j0(x) = -∫_{-∞}^x u1``. Strang splitting:
  half a step of the relaxation ODE (exact: ``p+ - p-`` decays like ``e^{-2a t}``), one exact transport
  step (``dx = c dt``: each of ``p±`` moves one cell), half a relaxation step. Second order in time,
  exactly finite-speed, positive and conservative.
* :func:`exact_solution_1d`: ``u(t) = law(K_t) * u0 + ∫_0^t e^{-2a(t-s)} (law(K_s) * u1) ds`` with the
  exact law of :class:`kacnum.processes.kac.KacProcess`, by Gauss–Legendre quadrature: the reference.
* :func:`solve_telegrapher_2d`: a three-level central scheme on a periodic square (leapfrog for ``∂tt``,
  centred damping, 5-point or spectral Laplacian), second order; not exactly finite-speed (numerical
  speed ``c/cfl``), so :func:`mass_outside_cone_2d` measures the mass it leaks outside the light cone.
* the diffusion limit ``a, c → ∞`` with ``c²/a`` fixed: the heat equation ``∂t u = (c²/(2a)) ∂xx u``
  (:func:`heat_limit_l1`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from kacnum.core.checks import check_finite, check_nonnegative, check_positive
from kacnum.processes.kac import KacProcess

__all__ = [
    "Telegrapher1DSolution",
    "Telegrapher2DSolution",
    "bump",
    "kinetic_grid_1d",
    "solve_telegrapher_1d",
    "exact_solution_1d",
    "solve_telegrapher_2d",
    "damped_mode_amplitude",
    "fourier_mode_solution_2d",
    "mass_outside_cone",
    "mass_outside_cone_2d",
    "heat_solution",
    "heat_limit_l1",
    "l1_distance",
    "fit_order",
]

Data1D = Union[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]
Data2D = Union[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor]

# Nodes per Gauss–Legendre panel are capped so that one chunk of quadrature work stays ~16 MB.
_CHUNK_NODES = 2 ** 21


# ---------------------------------------------------------------------------------------- helpers
def _gauss_legendre(n: int, dtype: torch.dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Legendre nodes and weights on ``[-1, 1]``."""
    xi, w = np.polynomial.legendre.leggauss(int(n))
    return (torch.as_tensor(xi, dtype=dtype, device=device), torch.as_tensor(w, dtype=dtype, device=device))


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_support(support) -> Tuple[float, float]:
    try:
        lo, hi = (float(v) for v in support)
    except (TypeError, ValueError):
        raise ValueError(f"support must be a pair (lo, hi) of finite numbers with lo < hi, got {support!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"support must be a pair (lo, hi) of finite numbers with lo < hi, got {support!r}")
    return lo, hi


def _eval(name: str, f, *args) -> torch.Tensor:
    """Evaluate a user callable on tensors and check that it returned finite values of the right shape."""
    out = f(*args)
    if not torch.is_tensor(out):
        out = torch.as_tensor(out, dtype=args[0].dtype, device=args[0].device)
    out = out.to(dtype=args[0].dtype, device=args[0].device)
    if out.shape != args[0].shape:
        out = torch.broadcast_to(out, args[0].shape)
    return check_finite(name, out)


def bump(x: torch.Tensor, center: float = 0.0, radius: float = 1.0, power: int = 4) -> torch.Tensor:
    """Unit-mass polynomial bump ``C (1 - ((x - center)/radius)²)^power`` on ``|x - center| < radius``.

    ``C = Γ(power + 3/2) / (√π Γ(power + 1) radius)``; 0 outside. The bump is ``C^{power-1}`` with a
    bounded ``power``-th derivative (piecewise polynomial), e.g. ``power = 4``: ``(315/256)(1 - x²)⁴``.
    Works for any tensor shape; also a radial bump in 2D if ``x`` is the radius (then it is not unit mass).
    """
    power = _check_int("power", power, 1)
    radius = check_positive("radius", radius)
    const = math.exp(math.lgamma(power + 1.5) - math.lgamma(power + 1.0)) / (math.sqrt(math.pi) * radius)
    s = (x - center) / radius
    inside = s.abs() < 1
    return torch.where(inside, const * (1.0 - s * s).clamp_min(0.0) ** power, torch.zeros_like(s))


def fit_order(h: Sequence[float], errors: Sequence[float]) -> float:
    """Least-squares slope of ``log(error)`` against ``log(h)``: the observed order of convergence."""
    lh = np.log(np.asarray(h, dtype=np.float64))
    le = np.log(np.asarray(errors, dtype=np.float64))
    if lh.size < 2 or lh.size != le.size or not (np.all(np.isfinite(lh)) and np.all(np.isfinite(le))):
        raise ValueError("h and errors must be two equally long lists (>= 2 entries) of positive numbers")
    return float(np.polyfit(lh, le, 1)[0])


def l1_distance(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Trapezoid approximation of ``∫ |u - v| dx`` on the 1D grid ``x: (N,)``; ``u, v: (..., N)``."""
    return torch.trapezoid((u - v).abs(), x, dim=-1)


# ---------------------------------------------------------------------------------------- 1D solver
@dataclass(frozen=True)
class Telegrapher1DSolution:
    """Output of :func:`solve_telegrapher_1d`.

    Attributes:
        x: ``(N,)`` grid nodes, spacing ``dx = c dt``.
        u: ``(..., N)`` the solution ``u(t_final) = p+ + p-`` at the nodes.
        p_plus, p_minus: ``(..., N)`` densities of right- and left-moving particles.
        t: final time; dt: time step; n_steps: number of steps; a, c: the parameters.
    """

    x: torch.Tensor
    u: torch.Tensor
    p_plus: torch.Tensor
    p_minus: torch.Tensor
    t: float
    dt: float
    n_steps: int
    a: float
    c: float

    @property
    def dx(self) -> float:
        return self.c * self.dt

    @property
    def flux(self) -> torch.Tensor:
        """``j = c (p+ - p-)``, ``(..., N)``; ``∂t u(t_final) = -∂x j``."""
        return self.c * (self.p_plus - self.p_minus)

    def mass(self) -> torch.Tensor:
        """``Σ u dx``, ``(...)``."""
        return self.u.sum(dim=-1) * self.dx


def kinetic_grid_1d(
    x_min: float,
    x_max: float,
    c: float,
    t_final: float,
    n_steps: int,
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
    pad: int = 2,
) -> torch.Tensor:
    """Nodes ``x_min + k dx`` with ``dx = c t_final / n_steps`` covering ``[x_min - c t, x_max + c t]``.

    ``k`` runs from ``-(n_steps + pad)`` to ``ceil((x_max - x_min)/dx) + n_steps + pad``, so data
    supported in ``[x_min, x_max]`` never reaches the ends of the grid. Returns ``(N,)``.
    """
    c = check_positive("c", c)
    t_final = check_positive("t_final", t_final)
    n_steps = _check_int("n_steps", n_steps, 1)
    x_min, x_max = _check_support((x_min, x_max))
    dx = c * t_final / n_steps
    k_hi = math.ceil((x_max - x_min) / dx - 1e-9)
    k = torch.arange(-(n_steps + pad), k_hi + n_steps + pad + 1, dtype=torch.float64, device=device)
    return (x_min + dx * k).to(dtype)


def _relax(pp: torch.Tensor, pm: torch.Tensor, decay: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact relaxation over a time h with ``decay = e^{-2ah}``: mean kept, difference times decay."""
    m = 0.5 * (pp + pm)
    d = (0.5 * decay) * (pp - pm)
    return m + d, m - d


def solve_telegrapher_1d(
    u0: Data1D,
    a: float,
    c: float,
    t_final: float,
    n_steps: int,
    x_min: float,
    x_max: float,
    u1: Optional[Data1D] = None,
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
) -> Telegrapher1DSolution:
    """Solve ``∂tt u + 2a ∂t u = c² ∂xx u``, ``u(0) = u0``, ``∂t u(0) = u1`` (default 0) on the line.

    Strang splitting of the kinetic form (module docstring) with ``dt = t_final/n_steps`` and
    ``dx = c dt``: second order in ``dt``, exact transport (finite speed, positivity and mass
    conservation hold to round-off when ``u1 = 0``).

    Args:
        u0: callable ``x -> u0(x)`` (vectorised over a tensor), or a ``(..., N)`` tensor of values on
            ``kinetic_grid_1d(x_min, x_max, c, t_final, n_steps)`` (leading dims are a batch).
        a: switching rate ``a > 0``; c: speed ``c > 0``.
        t_final: final time ``> 0``; n_steps: number of time steps ``>= 1`` (sets ``dx = c t/n``).
        x_min, x_max: the data are taken as 0 outside ``[x_min, x_max]`` (the support of ``u0``, ``u1``);
            the grid extends this interval by the light cone ``c t_final`` on both sides.
        u1: initial ``∂t u`` (callable or tensor like ``u0``). ``j0 = -∫_{-∞}^x u1`` by the trapezoid
            rule; if ``∫ u1 ≠ 0`` the flux tends to ``J = -∫ u1`` at ``+∞`` and the right boundary
            feeds in that far field (``p- = -J e^{-2at}/(2c)``), which keeps ``u = 0`` there.
        dtype, device: of the computation (float64 recommended).

    Returns:
        :class:`Telegrapher1DSolution` with ``x: (N,)`` and ``u: (..., N)``.
    """
    a = check_positive("a", a)
    c = check_positive("c", c)
    t_final = check_positive("t_final", t_final)
    n_steps = _check_int("n_steps", n_steps, 1)
    x = kinetic_grid_1d(x_min, x_max, c, t_final, n_steps, dtype=dtype, device=device)
    dt = t_final / n_steps
    dx = c * dt
    inside = (x >= x_min) & (x <= x_max)

    def data(name: str, f: Data1D) -> torch.Tensor:
        if callable(f):
            vals = _eval(name, f, x)
        else:
            if not torch.is_tensor(f):
                raise ValueError(f"{name} must be a callable or a torch.Tensor, got {type(f).__name__}")
            if f.dim() < 1 or f.shape[-1] != x.numel():
                raise ValueError(
                    f"{name} must have shape (..., {x.numel()}) to match kinetic_grid_1d, got {tuple(f.shape)}"
                )
            vals = check_finite(name, f.to(dtype=dtype, device=x.device))
        return torch.where(inside, vals, torch.zeros_like(vals))

    u0v = data("u0", u0)
    pp = 0.5 * u0v
    pm = 0.5 * u0v
    far = None
    if u1 is not None:
        u1v = data("u1", u1)
        # j0(x_k) = -∫_{-∞}^{x_k} u1 (trapezoid), far field J = j0 at the right end.
        cum = torch.cumsum(0.5 * (u1v[..., 1:] + u1v[..., :-1]) * dx, dim=-1)
        j0 = -torch.cat([torch.zeros_like(cum[..., :1]), cum], dim=-1)
        u0v, u1v = torch.broadcast_tensors(u0v, u1v)
        j0 = torch.broadcast_to(j0, u0v.shape)
        pp = 0.5 * (u0v + j0 / c)
        pm = 0.5 * (u0v - j0 / c)
        far = j0[..., -1:].clone()

    pp, pm = _relax(pp, pm, math.exp(-a * dt))
    full = math.exp(-2.0 * a * dt)
    half = math.exp(-a * dt)
    for k in range(n_steps):
        pp = torch.roll(pp, 1, dims=-1)
        pp[..., 0] = 0.0
        pm = torch.roll(pm, -1, dims=-1)
        if far is None:
            pm[..., -1] = 0.0
        else:
            pm[..., -1:] = -far / (2.0 * c) * math.exp(-2.0 * a * (k + 0.5) * dt)
        pp, pm = _relax(pp, pm, full if k < n_steps - 1 else half)
    return Telegrapher1DSolution(
        x=x, u=pp + pm, p_plus=pp, p_minus=pm, t=t_final, dt=dt, n_steps=n_steps, a=a, c=c
    )


# ---------------------------------------------------------------------------------------- exact 1D
def _law_convolution(
    kp: KacProcess,
    f: Callable[[torch.Tensor], torch.Tensor],
    t: torch.Tensor,
    x: torch.Tensor,
    support: Optional[Tuple[float, float]],
    n_quad: int,
    n_panels: int,
) -> torch.Tensor:
    """``(law(K_t) * f)(x) = e^{-at}/2 (f(x - ct) + f(x + ct)) + ∫ p(t, y) f(x - y) dy``.

    ``t`` and ``x`` have the same shape ``Q`` (float64); returns shape ``Q``. With ``support = (lo, hi)``
    of ``f`` the integral runs over ``[max(-ct, x - hi), min(ct, x - lo)]``, where the integrand is
    smooth, with one ``n_quad``-point Gauss–Legendre panel; otherwise over ``[-ct, ct]`` in ``n_panels``
    panels.
    """
    c = kp.c
    ct = c * t
    atoms = 0.5 * kp.atom_mass(t).to(x.dtype) * (_eval("u0", f, x - ct) + _eval("u0", f, x + ct))
    xi, w = _gauss_legendre(n_quad, x.dtype, x.device)
    if support is not None:
        lo, hi = support
        left = torch.maximum(-ct, x - hi)
        right = torch.minimum(ct, x - lo)
        length = (right - left).clamp_min(0.0)
        mid = 0.5 * (left + right)
        y = mid[..., None] + 0.5 * length[..., None] * xi  # Q + (n,)
        vals = kp.density(t[..., None], y) * _eval("u0", f, x[..., None] - y)
        cont = 0.5 * length * (vals * w).sum(dim=-1)
    else:
        h = 2.0 * ct / n_panels
        j = torch.arange(n_panels, dtype=x.dtype, device=x.device)
        mids = -ct[..., None] + (j + 0.5) * h[..., None]  # Q + (P,)
        y = mids[..., None] + 0.5 * h[..., None, None] * xi  # Q + (P, n)
        vals = kp.density(t[..., None, None], y) * _eval("u0", f, x[..., None, None] - y)
        cont = 0.5 * h * (vals * w).sum(dim=(-1, -2))
    return atoms + cont


def exact_solution_1d(
    u0: Callable[[torch.Tensor], torch.Tensor],
    a: float,
    c: float,
    t: float,
    x: torch.Tensor,
    u1: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    support: Optional[Tuple[float, float]] = None,
    n_quad: int = 32,
    n_time_quad: int = 16,
    n_panels: int = 16,
    support_u1: Optional[Tuple[float, float]] = None,
) -> torch.Tensor:
    """Exact solution of ``∂tt u + 2a ∂t u = c² ∂xx u``, ``u(0) = u0``, ``∂t u(0) = u1`` (default 0).

        u(t, x) = (S(t) u0)(x) + ∫_0^t e^{-2a(t-s)} (S(s) u1)(x) ds,
        (S(t) f)(x) = E f(x - K_t) = e^{-at}/2 [f(x - ct) + f(x + ct)] + ∫_{|y|<ct} p(t, y) f(x - y) dy.

    ``S(t) f`` solves the equation with data ``(f, 0)`` (the law of ``K_t`` is its fundamental
    solution). The Duhamel term ``G(t) f = ∫_0^t e^{-2a(t-s)} S(s) f ds`` is the solution with data
    ``(0, f)``: it satisfies ``G' + 2aG = S``, ``G(0) = 0``, ``G'(0) = S(0) = I``, and, as
    ``S = G' + 2aG`` for the solution operator ``G`` of data ``(0, f)``, this ODE identifies it.

    Quadrature: Gauss–Legendre in ``y`` (``n_quad`` nodes) and in ``s`` (``n_time_quad`` nodes per
    panel). With ``support = (lo, hi)`` (``u0`` vanishes outside and is smooth inside) the ``y`` range
    is cut to where the integrand is smooth, and for ``u1`` (support ``support_u1``, default
    ``support``) the ``s`` range is also split at the kinks ``s = |x - lo|/c, |x - hi|/c``: for
    piecewise-polynomial bumps this is accurate to ~1e-12. Without a support the cone is split into
    ``n_panels`` panels (accuracy then depends on the smoothness of the data).

    Args:
        u0, u1: vectorised callables ``x -> values``.
        a, c: switching rate and speed (> 0); t: time ``>= 0``.
        x: ``(...)`` evaluation points. Computation is float64; returns ``x``'s dtype and device.
    Returns:
        ``u(t, x)`` shaped like ``x``.
    """
    a = check_positive("a", a)
    c = check_positive("c", c)
    t = check_nonnegative("t", t)
    n_quad = _check_int("n_quad", n_quad, 1)
    n_time_quad = _check_int("n_time_quad", n_time_quad, 1)
    n_panels = _check_int("n_panels", n_panels, 1)
    if not torch.is_tensor(x):
        x = torch.as_tensor(x, dtype=torch.float64)
    check_finite("x", x)
    if not callable(u0) or (u1 is not None and not callable(u1)):
        raise ValueError("u0 and u1 must be vectorised callables x -> values")
    sup = _check_support(support) if support is not None else None
    sup1 = _check_support(support_u1) if support_u1 is not None else sup
    kp = KacProcess(a, c)
    shape, out_dtype = x.shape, x.dtype
    xf = x.reshape(-1).to(torch.float64)
    out = torch.empty_like(xf)
    per_point = n_quad * n_panels * (1 + (3 * n_time_quad if u1 is not None else 0))
    chunk = max(1, _CHUNK_NODES // per_point)
    for s0 in range(0, xf.numel(), chunk):
        xc = xf[s0 : s0 + chunk]
        tc = torch.full_like(xc, t)
        val = _law_convolution(kp, u0, tc, xc, sup, n_quad, n_panels)
        if u1 is not None and t > 0:
            val = val + _duhamel(kp, u1, t, xc, sup1, n_quad, n_time_quad, n_panels)
        out[s0 : s0 + chunk] = val
    return out.reshape(shape).to(out_dtype)


def _duhamel(kp, f, t: float, x: torch.Tensor, sup, n_quad: int, n_time_quad: int, n_panels: int):
    """``∫_0^t e^{-2a(t-s)} (S(s) f)(x) ds`` for ``x: (M,)``, split at the kinks of the integrand."""
    c, a = kp.c, kp.a
    if sup is not None:
        lo, hi = sup
        b = torch.stack([(x - lo).abs() / c, (x - hi).abs() / c], dim=-1).clamp(0.0, t)
        b, _ = torch.sort(b, dim=-1)
        edges = torch.cat([torch.zeros_like(x)[:, None], b, torch.full_like(x, t)[:, None]], dim=-1)  # (M, 4)
    else:
        edges = torch.stack([torch.zeros_like(x), torch.full_like(x, t)], dim=-1)
    left, right = edges[:, :-1], edges[:, 1:]  # (M, P)
    length = right - left
    xi, w = _gauss_legendre(n_time_quad, x.dtype, x.device)
    s = 0.5 * (left + right)[..., None] + 0.5 * length[..., None] * xi  # (M, P, n)
    xs = x[:, None, None].expand_as(s)
    vals = _law_convolution(kp, f, s, xs, sup, n_quad, n_panels) * torch.exp(-2.0 * a * (t - s))
    return (0.5 * length * (vals * w).sum(dim=-1)).sum(dim=-1)


# ---------------------------------------------------------------------------------------- 2D solver
@dataclass(frozen=True)
class Telegrapher2DSolution:
    """Output of :func:`solve_telegrapher_2d`.

    Attributes:
        x, y: ``(N,)`` node coordinates of the periodic box (``u[..., i, j]`` lives at ``(x_i, y_j)``).
        u: ``(..., N, N)`` the solution at ``t``; u_prev: at ``t - dt``.
        t, dt, n_steps, a, c: final time, step, number of steps and parameters.
    """

    x: torch.Tensor
    y: torch.Tensor
    u: torch.Tensor
    u_prev: torch.Tensor
    t: float
    dt: float
    n_steps: int
    a: float
    c: float

    @property
    def dx(self) -> float:
        return float(self.x[1] - self.x[0])

    def mass(self) -> torch.Tensor:
        """``Σ u dx²``, ``(...)``."""
        return self.u.sum(dim=(-1, -2)) * self.dx ** 2


def _laplacian_fd(u: torch.Tensor, h: float) -> torch.Tensor:
    """Periodic 5-point Laplacian over the last two dims."""
    return (
        torch.roll(u, 1, -1) + torch.roll(u, -1, -1) + torch.roll(u, 1, -2) + torch.roll(u, -1, -2) - 4.0 * u
    ) / (h * h)


def solve_telegrapher_2d(
    u0: Data2D,
    a: float,
    c: float,
    t_final: float,
    n_cells: int,
    box: Tuple[float, float] = (-1.0, 1.0),
    u1: Optional[Data2D] = None,
    cfl: Optional[float] = None,
    laplacian: str = "fd",
    dtype: torch.dtype = torch.float64,
    device: Optional[Union[str, torch.device]] = None,
) -> Telegrapher2DSolution:
    """Solve ``∂tt u + 2a ∂t u = c² Δu`` on the periodic square ``box × box`` with ``n_cells²`` nodes.

    Scheme (second order in space and time), ``h = (hi - lo)/n_cells``, ``dt = t/ceil(c t/(cfl h))``:

        (u^{n+1} - 2u^n + u^{n-1})/dt² + 2a (u^{n+1} - u^{n-1})/(2dt) = c² Δ_h u^n,
        u^1 = u^0 + dt u1 + (dt²/2)(c² Δ_h u^0 - 2a u1)            (Taylor start).

    ``Δ_h`` is the 5-point Laplacian (``laplacian="fd"``, stable for ``cfl = c dt/h ≤ 1/√2``) or the
    FFT Laplacian (``"spectral"``, stable for ``cfl ≤ √2/π``); damping only helps stability. The
    scheme conserves ``Σ u`` when ``Σ u1 = 0``.

    Args:
        u0: callable ``(X, Y) -> values`` on the ``'ij'`` meshgrid, or a ``(..., N, N)`` tensor.
        u1: initial ``∂t u`` (same forms), default 0.
        a, c: switching rate and speed (> 0); t_final: ``>= 0``; n_cells: nodes per side (>= 4).
        box: ``(lo, hi)`` of both coordinates; cfl: ``c dt/h`` (default 0.5 fd, 0.4 spectral).
    Returns:
        :class:`Telegrapher2DSolution`.
    """
    a = check_positive("a", a)
    c = check_positive("c", c)
    t_final = check_nonnegative("t_final", t_final)
    n = _check_int("n_cells", n_cells, 4)
    lo, hi = _check_support(box)
    if laplacian not in ("fd", "spectral"):
        raise ValueError(f"laplacian must be 'fd' or 'spectral', got {laplacian!r}")
    cfl_max = 1.0 / math.sqrt(2.0) if laplacian == "fd" else math.sqrt(2.0) / math.pi
    if cfl is None:
        cfl = 0.5 if laplacian == "fd" else 0.4
    try:
        cfl = float(cfl)
    except (TypeError, ValueError):
        raise ValueError(f"cfl must be a number in (0, {cfl_max:.4f}], got {cfl!r}") from None
    if not (0.0 < cfl <= cfl_max):
        raise ValueError(f"cfl must be a number in (0, {cfl_max:.4f}] for laplacian={laplacian!r}, got {cfl!r}")
    h = (hi - lo) / n
    x = lo + h * torch.arange(n, dtype=torch.float64, device=device)
    x = x.to(dtype)
    X, Y = torch.meshgrid(x, x, indexing="ij")

    def data(name: str, f: Data2D) -> torch.Tensor:
        if callable(f):
            return _eval(name, f, X, Y)
        if not torch.is_tensor(f):
            raise ValueError(f"{name} must be a callable or a torch.Tensor, got {type(f).__name__}")
        if f.dim() < 2 or tuple(f.shape[-2:]) != (n, n):
            raise ValueError(f"{name} must have shape (..., {n}, {n}), got {tuple(f.shape)}")
        return check_finite(name, f.to(dtype=dtype, device=x.device))

    if laplacian == "fd":
        lap = lambda v: _laplacian_fd(v, h)  # noqa: E731
    else:
        k = 2.0 * math.pi * torch.fft.fftfreq(n, d=h, dtype=torch.float64, device=x.device)
        k2 = (k[:, None] ** 2 + k[None, :] ** 2).to(dtype)
        lap = lambda v: torch.fft.ifft2(-k2 * torch.fft.fft2(v)).real  # noqa: E731

    u_cur = data("u0", u0)
    if t_final == 0.0:
        return Telegrapher2DSolution(x=x, y=x, u=u_cur, u_prev=u_cur, t=0.0, dt=0.0, n_steps=0, a=a, c=c)
    n_steps = max(1, math.ceil(c * t_final / (cfl * h) - 1e-9))
    dt = t_final / n_steps
    v0 = data("u1", u1) if u1 is not None else torch.zeros_like(u_cur)
    u_next = u_cur + dt * v0 + 0.5 * dt * dt * (c * c * lap(u_cur) - 2.0 * a * v0)
    u_prev, u_cur = u_cur, u_next
    cdt2 = (c * dt) ** 2
    ad = a * dt
    for _ in range(n_steps - 1):
        u_next = (2.0 * u_cur - (1.0 - ad) * u_prev + cdt2 * lap(u_cur)) / (1.0 + ad)
        u_prev, u_cur = u_cur, u_next
    return Telegrapher2DSolution(x=x, y=x, u=u_cur, u_prev=u_prev, t=t_final, dt=dt, n_steps=n_steps, a=a, c=c)


def damped_mode_amplitude(omega0: float, a: float, t, v0: float = 0.0):
    """Solution ``y(t)`` of ``y'' + 2a y' + ω0² y = 0``, ``y(0) = 1``, ``y'(0) = v0``.

    Underdamped (``ω0 > a``, ``Ω = √(ω0² - a²)``): ``e^{-at}[cos Ωt + ((a + v0)/Ω) sin Ωt]``;
    critical: ``e^{-at}(1 + (a + v0) t)``; overdamped (``κ = √(a² - ω0²)``):
    ``e^{-at}[cosh κt + ((a + v0)/κ) sinh κt]`` written with decaying exponentials only.
    A Fourier mode ``e^{ik·x}`` of ``∂tt u + 2a ∂t u = c² Δu`` has ``ω0 = c|k|``. ``t``: float or tensor.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    a = float(a)
    b = a + float(v0)
    om2 = float(omega0) ** 2 - a * a
    if om2 > 0:
        om = math.sqrt(om2)
        return torch.exp(-a * t) * (torch.cos(om * t) + (b / om) * torch.sin(om * t))
    if om2 == 0:
        return torch.exp(-a * t) * (1.0 + b * t)
    ka = math.sqrt(-om2)
    return 0.5 * ((1.0 + b / ka) * torch.exp((ka - a) * t) + (1.0 - b / ka) * torch.exp(-(ka + a) * t))


def fourier_mode_solution_2d(
    m: Tuple[int, int], a: float, c: float, t: float, x: torch.Tensor, box: Tuple[float, float] = (-1.0, 1.0)
) -> torch.Tensor:
    """Exact ``u(t)`` for ``u0 = cos(k·(X - lo))``, ``k = 2π m/(hi - lo)``, ``u1 = 0``; ``(N, N)`` on ``x``."""
    lo, hi = _check_support(box)
    kx, ky = (2.0 * math.pi * int(mi) / (hi - lo) for mi in m)
    X, Y = torch.meshgrid(x, x, indexing="ij")
    amp = float(damped_mode_amplitude(c * math.hypot(kx, ky), a, t))
    return amp * torch.cos(kx * (X - lo) + ky * (Y - lo))


# ---------------------------------------------------------------------------------------- cones, heat
def mass_outside_cone(
    x: torch.Tensor, u: torch.Tensor, support: Tuple[float, float], c: float, t: float
) -> torch.Tensor:
    """``Σ_{x_k ∉ [lo - ct, hi + ct]} |u_k| dx`` on a uniform grid ``x: (N,)``, ``u: (..., N)``.

    ``support = (lo, hi)`` holds the initial data; a finite-speed solution gives exactly 0. A node
    within ``1e-6 dx`` of the cone's edge counts as inside (grid nodes there differ from
    ``lo - ct`` by rounding only). Returns ``(...)``.
    """
    lo, hi = _check_support(support)
    c = check_positive("c", c)
    t = check_nonnegative("t", t)
    dx = float(x[1] - x[0])
    slack = 1e-6 * abs(dx)
    outside = (x < lo - c * t - slack) | (x > hi + c * t + slack)
    return (u.abs() * outside).sum(dim=-1) * dx


def mass_outside_cone_2d(
    x: torch.Tensor, y: torch.Tensor, u: torch.Tensor, center: Tuple[float, float], radius: float, c: float, t: float
) -> torch.Tensor:
    """``Σ |u| dx dy`` over nodes farther than ``radius + ct`` from ``center``; ``u: (..., Nx, Ny)``.

    For initial data supported in the disc ``|X - center| ≤ radius`` the exact solution vanishes there
    (nodes within ``1e-6 dx`` of the circle count as inside).
    """
    radius = check_nonnegative("radius", radius)
    c = check_positive("c", c)
    t = check_nonnegative("t", t)
    X, Y = torch.meshgrid(x, y, indexing="ij")
    r = torch.sqrt((X - center[0]) ** 2 + (Y - center[1]) ** 2)
    outside = r > radius + c * t + 1e-6 * abs(float(x[1] - x[0]))
    return (u.abs() * outside).sum(dim=(-1, -2)) * float(x[1] - x[0]) * float(y[1] - y[0])


def heat_solution(
    u0: Callable[[torch.Tensor], torch.Tensor],
    D: float,
    t: float,
    x: torch.Tensor,
    support: Optional[Tuple[float, float]] = None,
    n_quad: int = 32,
) -> torch.Tensor:
    """``u(t, x) = ∫ u0(y) φ(x - y) dy``, ``φ`` the centred Gaussian of variance ``2Dt`` (``∂t u = D ∂xx u``).

    With ``support = (lo, hi)`` the integral runs over ``[lo, hi]`` in panels no wider than the
    Gaussian's standard deviation (``n_quad`` Gauss–Legendre nodes each); otherwise over
    ``x ± 12 sd`` in 24 panels. ``x: (...)``; returns ``x``'s shape, dtype and device.
    """
    D = check_positive("D", D)
    t = check_nonnegative("t", t)
    n_quad = _check_int("n_quad", n_quad, 1)
    if not torch.is_tensor(x):
        x = torch.as_tensor(x, dtype=torch.float64)
    check_finite("x", x)
    if t == 0.0:
        return _eval("u0", u0, x.to(torch.float64)).to(x.dtype)
    sd = math.sqrt(2.0 * D * t)
    xf = x.reshape(-1).to(torch.float64)
    xi, w = _gauss_legendre(n_quad, torch.float64, x.device)
    if support is not None:
        lo, hi = _check_support(support)
        panels = max(1, math.ceil((hi - lo) / sd))
        h = (hi - lo) / panels
        mids = lo + h * (torch.arange(panels, dtype=torch.float64, device=x.device) + 0.5)
        y = (mids[:, None] + 0.5 * h * xi).reshape(-1)  # (P n,)
        wy = (0.5 * h * w).repeat(panels)
        fy = _eval("u0", u0, y) * wy
        out = torch.empty_like(xf)
        chunk = max(1, _CHUNK_NODES // y.numel())
        for s in range(0, xf.numel(), chunk):
            z = (xf[s : s + chunk, None] - y) / sd
            out[s : s + chunk] = (torch.exp(-0.5 * z * z) * fy).sum(-1) / (sd * math.sqrt(2 * math.pi))
    else:
        panels = 24
        h = 24.0 * sd / panels
        mids = -12.0 * sd + h * (torch.arange(panels, dtype=torch.float64, device=x.device) + 0.5)
        z = (mids[:, None] + 0.5 * h * xi).reshape(-1)  # offsets y - x
        wz = (0.5 * h * w).repeat(panels) * torch.exp(-0.5 * (z / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
        out = torch.empty_like(xf)
        chunk = max(1, _CHUNK_NODES // z.numel())
        for s in range(0, xf.numel(), chunk):
            out[s : s + chunk] = (_eval("u0", u0, xf[s : s + chunk, None] + z) * wz).sum(-1)
    return out.reshape(x.shape).to(x.dtype)


def heat_limit_l1(
    u0: Callable[[torch.Tensor], torch.Tensor],
    sigma2: float,
    a: float,
    t: float,
    support: Tuple[float, float],
    n_x: int = 2001,
    n_quad: int = 48,
) -> float:
    """L1 distance between the telegrapher solution and its diffusion limit.

    Telegrapher: ``∂tt u + 2a ∂t u = c² ∂xx u`` with ``c = √(σ² a)`` (so ``c²/a = σ²``), data
    ``(u0, 0)``, solved exactly (:func:`exact_solution_1d`). Heat: ``∂t u = D ∂xx u``, ``D = σ²/2``,
    data ``u0``. Both at time ``t``; ``∫ |u_tel - u_heat| dx`` by the trapezoid rule on ``n_x`` points
    over ``[lo - L, hi + L]``, ``L = 12 σ √t`` (the Kac tails are lighter than the Gaussian ones).
    As ``a → ∞`` the distance tends to 0 (the variances differ by ``σ²(1 - e^{-2at})/(2a)``).
    """
    sigma2 = check_positive("sigma2", sigma2)
    a = check_positive("a", a)
    t = check_positive("t", t)
    lo, hi = _check_support(support)
    n_x = _check_int("n_x", n_x, 3)
    c = math.sqrt(sigma2 * a)
    half = 12.0 * math.sqrt(sigma2 * t)
    x = torch.linspace(lo - half, hi + half, n_x, dtype=torch.float64)
    ut = exact_solution_1d(u0, a, c, t, x, support=(lo, hi), n_quad=n_quad)
    uh = heat_solution(u0, 0.5 * sigma2, t, x, support=(lo, hi))
    return float(l1_distance(x, ut, uh))
