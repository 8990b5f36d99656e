"""Numerical checks of the claims of docs/mathematics.md §8: every number the claim scripts print is computed here.

The scripts ``experiments/{finite_speed,kinetic_energy,wasserstein_lipschitz,diffusion_limit,
guidance_integrability}.py`` are thin loops over these functions; the notebooks and
``tests/test_claims.py`` call the same functions. A *ratio* is always ``measured / bound``: ``<= 1``
means the bound holds, and the worst (largest) ratio is what the scripts report.

Claims and where they are measured
----------------------------------
* Finite speed (:func:`cone_ratio`, :func:`finite_speed_samples`, :func:`pde_finite_speed_1d`,
  :func:`pde_leak_2d`): ``supp ρ_t ⊂ f(t) supp ρ_data + [-c g(t), c g(t)]^d``. For a sample ``x`` the
  normalised distance to that set is ``min_i max_j |x_j - f(t) x^(i)_j| / (c g(t))`` (``<= 1`` inside).
  For the flight (:class:`~kacnum.flows.paths.FlightPath`) the set is ``f(t) supp + disc(c g(t))`` per pair: the
  same distance with the Euclidean norm of each pair (``cone_ratio(..., block=2)``).
  PDE solutions from compact data vanish outside the cone; the heat equation's do not (erfc tails).
* Kinetic energy (:func:`kinetic_energy_curve`, :func:`kac_dirac_kinetic_energy`,
  :func:`flight_dirac_kinetic_energy`): ``E_{ρ_t} |u_t|² <= d (|f'| sup|x0| + c g')²`` for the exact Kac
  field of finite data (``(d/2)(|f'| sup|x0_pair| + c g')²`` for the flight, whose speed is ``c`` per pair),
  against the Gaussian FM, VP probability-flow and diffusion-limit fields on the same data.
* Wasserstein-Lipschitz (:func:`kac_wasserstein_1d`, :func:`kac_path_wasserstein`):
  ``W_p(μ_s, μ_t) <= c|t - s|`` in 1D (exact quantile functions), and with schedules
  ``W_p <= |f(t) - f(s)| ‖X0‖_p + c√d |g(t) - g(s)|`` (coupled samples, exact OT; ``c√(d/2)`` for the
  flight); the Brownian contrast ``σ|√t - √s| ‖Z‖_p``. The planar flight from 0
  (:func:`flight_wasserstein_2d`): ``W_p(μ_s, μ_t) <= c|t - s|`` through the radial quantile coupling
  (exact for ``p = 2``).
* Diffusion limit (:func:`diffusion_limit_errors`, :func:`diffusion_limit_table`): ``c²/a = σ²`` fixed,
  ``a → ∞``: density and velocity errors against the heat kernel and ``x/(2t)``, with the fitted rate.
* Guidance integrability (:func:`guidance_integrability`): ``E|u_s|²`` and ``max |u_s|`` along guided
  trajectories of the exact labelled Kac fields against ``(1 + 2|s - 1|) B``, ``B`` the Kac speed bound.

Atoms. The Kac law of finite data puts mass ``e^{-a g}`` per coordinate on the faces of the cones. The
exact marginal velocity on a face is the atom velocity ``f' x0 + g' c sign(y)`` of the components that
put mass there, which :func:`kac_velocity_with_atoms` computes from the sampler's atom mask (docs/mathematics.md §3:
never from ``|x - f x0| ≈ c g`` after rounding). ``KacPath.exact_velocity`` takes no mask; its value on
sampled atoms is reported next to it.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from kacnum.core.checks import check_int, check_nonnegative, check_positive
from kacnum.flows.guidance import GuidedField, guidance_bound, guided_kinetic_energy
from kacnum.processes.kac import KacProcess
from kacnum.processes.flight import PlanarFlight
from kacnum.flows.paths import KacPath, PathSample, ProbabilityPath, ProcessPath
from kacnum.flows.paths import gaussian_posterior_mean  # the Gaussian-mixture posterior (shared)
from kacnum.processes.telegrapher import (
    bump,
    fit_order,
    heat_limit_l1,
    mass_outside_cone,
    mass_outside_cone_2d,
    solve_telegrapher_1d,
    solve_telegrapher_2d,
)
from kacnum.theory.transport import wasserstein_1d, wasserstein_empirical

__all__ = [
    "DiffusionLimitPath",
    "ExactLabelledField",
    "worst_ratio",
    "stratified_data",
    "labelled_grid_support",
    "data_bound",
    "sample_path",
    "cone_ratio",
    "finite_speed_samples",
    "heat_mass_outside_cone",
    "pde_finite_speed_1d",
    "pde_leak_2d",
    "kac_dirac_kinetic_energy",
    "flight_dirac_kinetic_energy",
    "block_data_bound",
    "path_kinetic_energy_bound",
    "diffusion_dirac_kinetic_energy",
    "kac_velocity_with_atoms",
    "kinetic_energy_bound",
    "kinetic_energy_mc",
    "kinetic_energy_curve",
    "kac_quantiles",
    "gaussian_quantiles",
    "kac_wasserstein_1d",
    "wasserstein_path_bound",
    "coupled_kac_samples",
    "kac_path_wasserstein",
    "flight_radial_quantiles",
    "flight_wasserstein_2d",
    "diffusion_limit_errors",
    "diffusion_limit_table",
    "guidance_integrability",
    "log_time_grid",
]

_F64 = torch.float64


# ================================================================================================ helpers
def worst_ratio(values: Sequence[float]) -> float:
    """``max`` of the finite ratios in ``values`` (``nan`` if there are none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(vals) if vals else float("nan")


def log_time_grid(t_min: float, t_max: float, per_decade: int, snap: Sequence[float] = ()) -> List[float]:
    """Geometric grid from ``t_min`` to ``t_max`` with ``per_decade`` points per decade (end points kept);
    values within 1e-9 relative of an entry of ``snap`` are replaced by it (e.g. exactly ``1e-3``)."""
    t_min, t_max = check_positive("t_min", t_min), check_positive("t_max", t_max)
    if t_max <= t_min:
        raise ValueError(f"t_max must be > t_min = {t_min:g}, got {t_max!r}")
    if isinstance(per_decade, bool) or not isinstance(per_decade, int) or per_decade < 1:
        raise ValueError(f"per_decade must be an integer >= 1, got {per_decade!r}")
    n = max(2, int(round(per_decade * math.log10(t_max / t_min))) + 1)
    grid = np.geomspace(t_min, t_max, n).tolist()
    for i, v in enumerate(grid):
        for s in snap:
            if abs(v - s) <= 1e-9 * s:
                grid[i] = float(s)
    return grid


def stratified_data(support: torch.Tensor, weights: Optional[torch.Tensor], n: int) -> torch.Tensor:
    """``n`` data points with each support point repeated ``≈ n w_i`` times (largest remainders).

    With ``n`` a multiple of the number of support points and uniform weights the empirical law is the
    data law exactly, so sample averages carry no data-sampling noise. ``support: (m, *D)`` -> ``(n, *D)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    m = support.shape[0]
    w = torch.full((m,), 1.0 / m, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64).cpu()
    if w.shape != (m,) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ValueError(f"weights must be ({m},) non-negative with a positive sum")
    w = w / w.sum()
    exact = w * n
    counts = torch.floor(exact).long()
    rest = n - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(exact - counts, descending=True)[:rest]] += 1
    return support.repeat_interleave(counts.to(support.device), dim=0)


def labelled_grid_support(spacing: float = 1.5, dtype=_F64, device=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The 3×3 grid ``{-spacing, 0, spacing}²`` with label = row (``y``-coordinate index), 3 classes.

    Returns ``(support (9, 2), labels (9,) long)``; each class holds 3 points, so uniform weights within
    a class and over all points make the unconditional law the label-averaged one.
    """
    spacing = check_positive("spacing", spacing)
    v = torch.tensor([-spacing, 0.0, spacing], dtype=_F64)
    pts = torch.stack([v.repeat(3), v.repeat_interleave(3)], dim=1)
    labels = torch.arange(3).repeat_interleave(3)
    return pts.to(dtype=dtype, device=device), labels.to(device)


def data_bound(support: torch.Tensor) -> float:
    """``sup |x0|`` per coordinate: ``max_{i,j} |x^(i)_j|`` (the ``sup|x0|`` of docs/mathematics.md §8)."""
    return float(support.abs().max())


def sample_path(path: ProbabilityPath, x0: torch.Tensor, t: float,
                generator: Optional[torch.Generator] = None) -> PathSample:
    """``path.sample(x0, t, generator)`` for one time ``t`` shared by all rows.

    For a :class:`~kacnum.flows.paths.ProcessPath` (Kac, flight) the noise is drawn with ONE scalar time
    (``path.sample_noise(g(t), x0.shape, ..., return_atoms=True)``: for Kac one quantile table) and the
    target is ``path.conditional_velocity(x0, t, N, atom_mask)``: the same law and the same composition as
    ``path.sample``, which for Kac builds one quantile table per row (about 100x slower when every row has
    the same time). Other paths: ``path.sample``.
    """
    if not isinstance(path, ProcessPath):
        return path.sample(x0, float(t), generator)
    t = float(t)
    k, atoms = path.sample_noise(path.g(t), x0.shape, generator, return_atoms=True, dtype=x0.dtype,
                                 device=x0.device)
    u = path.conditional_velocity(x0, t, k, atoms)
    tt = torch.full((x0.shape[0],), t, dtype=x0.dtype, device=x0.device)
    return PathSample(x_t=path.f(t) * x0 + k, u_t=u, t=tt, x0=x0, noise=k, atom_mask=atoms)


# ================================================================================================ diffusion path
class DiffusionLimitPath(ProbabilityPath):
    """The diffusion limit of a Kac path: ``X_t = f(t) X0 + σ W_{g(t)}``, ``σ² = c²/a`` (same ``f``, ``g``).

    Also of a :class:`~kacnum.flows.paths.FlightPath`: the planar flight with event rate ``λ = a`` has per-coordinate
    variance ``(c²/λ²)(λt - 1 + e^{-λt}) ~ (c²/a) t``, the same ``σ²``.

    This is the "diffusion on the same data" of docs/mathematics.md §3/§8: the Kac process replaced by the Brownian motion
    it converges to (``K_t ⇒ σ W_t``). With ``s(t) = σ sqrt(g(t))`` the conditional law is
    ``N(f x0, s² I)``; the marginal (probability-flow) velocity for the data ``Σ_i w_i δ_{x^(i)}`` is

        u(t, x) = f'(t) m(x) + (g'(t) / (2 g(t))) (x - f(t) m(x)),      m(x) = E[x0 | X_t = x],

    (``s'/s = g'/(2g)``). For a Dirac at 0 and ``f = 1``, ``g = t``: ``E|u|² = d σ²/(4t)``, the diffusion
    numbers of docs/mathematics.md §3. Times in ``(0, T]`` (``g(0) = 0`` divides).
    """

    t_open_at_zero = True

    def __init__(self, kac_path: ProcessPath):
        if not isinstance(kac_path, ProcessPath):
            raise ValueError(f"kac_path must be a KacPath or FlightPath, got {type(kac_path).__name__}")
        self.kac = kac_path
        self.T = kac_path.T
        self.sigma2 = kac_path.c ** 2 / kac_path.a

    def __repr__(self) -> str:
        return f"DiffusionLimitPath(sigma2={self.sigma2:g}, kac={self.kac!r})"

    def noise_scale(self, t):
        """``s(t) = σ sqrt(g(t))``."""
        g = self.kac.g(t)
        return math.sqrt(self.sigma2 * g) if not torch.is_tensor(g) else torch.sqrt(self.sigma2 * g)

    def sample(self, x0: torch.Tensor, t, generator: Optional[torch.Generator] = None) -> PathSample:
        """``x_t = f x0 + s ε``, ``u_t = f' x0 + s' ε`` with ``s' = σ g'/(2 sqrt(g))``; ``t`` in ``(0, T]``."""
        if not torch.is_tensor(x0) or x0.dim() < 1 or not x0.is_floating_point():
            raise ValueError("x0 must be a floating tensor of shape (B, ...)")
        tt = self._times(t, x0.shape[0], x0)
        tb = tt.reshape((-1,) + (1,) * (x0.dim() - 1))
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        s = self.noise_scale(tb)
        ds = math.sqrt(self.sigma2) * self.kac.dg(tb) / (2.0 * torch.sqrt(self.kac.g(tb)))
        return PathSample(x_t=self.kac.f(tb) * x0 + s * eps, u_t=self.kac.df(tb) * x0 + ds * eps, t=tt, x0=x0,
                          noise=eps, atom_mask=None)

    def speed_bound(self, t, data_bound: float = 1.0):
        """``inf``: Brownian noise has unbounded speed."""
        return torch.full_like(t, math.inf) if torch.is_tensor(t) else math.inf

    def exact_velocity(self, x: torch.Tensor, t, support: torch.Tensor, weights: Optional[torch.Tensor] = None,
                       *, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Exact marginal velocity (class docstring). ``x: (B, *D)``, ``support: (n, *D)``; float64 inside."""
        xs, s, logw = self._support_inputs(x, support, weights)
        tt = self._times(t, x.shape[0], xs)
        f, df, g, dg = self.kac.f(tt), self.kac.df(tt), self.kac.g(tt), self.kac.dg(tt)
        mean, _ = gaussian_posterior_mean(xs, f, torch.sqrt(self.sigma2 * g), s, logw,
                                           self._chunk(chunk_size, x.device))
        u = df[:, None] * mean + (dg / (2.0 * g))[:, None] * (xs - f[:, None] * mean)
        return u.to(x.dtype).reshape(x.shape)


# ================================================================================================ finite speed
def cone_ratio(x: torch.Tensor, support: torch.Tensor, f_t: float, half_width: float,
               chunk: int = 2 ** 18, block: int = 1) -> torch.Tensor:
    """Normalised distance to the cone set ``f(t) supp + B_w^{d/block}``: ``min_i max_b |x_b - f s_ib| / w``.

    ``block = 1``: ``B_w = [-w, w]`` per coordinate (the Kac cone); ``block = 2``: the disc of radius ``w``
    per pair of coordinates, ``|·|`` Euclidean (the flight's cone). ``x: (B, d)``, ``support: (n, d)``,
    ``half_width = w = c g(t) > 0``. ``<= 1`` exactly when ``x`` lies in the set (samples: ``= 1`` on atoms
    up to rounding of ``f x0 + N - f x0``). Returns ``(B,)`` float64.
    """
    w = check_positive("half_width (c g(t))", half_width)
    if block not in (1, 2):
        raise ValueError(f"block must be 1 (coordinates) or 2 (pairs), got {block!r}")
    xs = x.reshape(x.shape[0], -1).to(_F64)
    ss = support.reshape(support.shape[0], -1).to(dtype=_F64, device=x.device)
    if xs.shape[1] != ss.shape[1]:
        raise ValueError(f"x and support must have the same dimension, got {xs.shape[1]} and {ss.shape[1]}")
    if xs.shape[1] % block:
        raise ValueError(f"block = 2 needs an even dimension, got {xs.shape[1]}")
    rows = max(1, chunk // max(1, ss.numel()))
    out = torch.empty(xs.shape[0], dtype=_F64, device=x.device)
    for b in range(0, xs.shape[0], rows):
        diff = xs[b:b + rows, None, :] - float(f_t) * ss[None]
        if block == 2:
            d = diff.reshape(diff.shape[:-1] + (-1, 2)).norm(dim=-1).amax(dim=-1)
        else:
            d = diff.abs().amax(dim=-1)
        out[b:b + rows] = d.amin(dim=1) / w
    return out


def finite_speed_samples(paths: Dict[str, ProbabilityPath], kac: ProcessPath, support: torch.Tensor,
                         times: Sequence[float], n: int, generator: torch.Generator,
                         weights: Optional[torch.Tensor] = None) -> List[dict]:
    """Samples of every path at every ``t``, measured against the cone of ``kac``: ``f(t) supp + [-c g, c g]^d``
    for a :class:`KacPath`, ``f(t) supp + disc(c g)`` per pair for a :class:`~kacnum.flows.paths.FlightPath`.

    ``paths``: name -> path with ``sample(x0, t, generator)`` (Kac, flight, diffusion limit, Gaussian FM, VP).
    The data are ``stratified_data(support, weights, n)``; the cone is always ``kac``'s, so the other
    paths are measured against the support its claim allows at that time.

    Returns one row per (path, t): ``max_ratio`` (max of :func:`cone_ratio`, ``<= 1`` for Kac),
    ``frac_outside`` (ratio > 1 + 1e-12), ``max_excess`` = ``(max_ratio - 1) c g`` in data units.
    """
    x0 = stratified_data(support, weights, n)
    rows = []
    for name, path in paths.items():
        for t in times:
            t = float(t)
            cg = kac.c * kac.g(t)
            xt = sample_path(path, x0, t, generator).x_t
            r = cone_ratio(xt, support, kac.f(t), cg, block=kac.block_size)
            mr = float(r.max())
            rows.append(dict(path=name, t=t, cone_half_width=cg, max_ratio=mr,
                             frac_outside=float((r > 1.0 + 1e-12).double().mean()),
                             max_excess=(mr - 1.0) * cg, n=int(x0.shape[0])))
    return rows


def heat_mass_outside_cone(u0: Callable[[torch.Tensor], torch.Tensor], support: Tuple[float, float], D: float,
                           c: float, t: float, panels: int = 16, nodes: int = 32) -> float:
    """Mass of the heat solution ``∂t u = D ∂xx u`` outside the Kac cone ``[lo - ct, hi + ct]``.

        M = ∫ u0(y) [Φ((lo - ct - y)/sd) + Φ((y - hi - ct)/sd)] dy,     sd = sqrt(2 D t),

    (``Φ`` the normal CDF, ``Φ(z) = erfc(-z/√2)/2``), by composite Gauss–Legendre over the support of
    ``u0``. Positive for every ``t > 0``: diffusion has infinite speed.
    """
    lo, hi = (float(v) for v in support)
    D, c, t = check_positive("D", D), check_positive("c", c), check_positive("t", t)
    sd = math.sqrt(2.0 * D * t)
    xi, w = np.polynomial.legendre.leggauss(int(nodes))
    h = (hi - lo) / panels
    mids = lo + h * (np.arange(panels) + 0.5)
    y = torch.as_tensor((mids[:, None] + 0.5 * h * xi[None]).reshape(-1), dtype=_F64)
    wy = torch.as_tensor(np.tile(0.5 * h * w, panels), dtype=_F64)
    left = 0.5 * torch.special.erfc(-((lo - c * t - y) / sd) / math.sqrt(2.0))
    right = 0.5 * torch.special.erfc(-((y - hi - c * t) / sd) / math.sqrt(2.0))
    return float((u0(y) * (left + right) * wy).sum())


def pde_finite_speed_1d(a: float, c: float, times: Sequence[float], n_steps: int,
                        support: Tuple[float, float] = (-1.0, 1.0), power: int = 4) -> List[dict]:
    """The 1D telegrapher solver from the compact bump vs the heat equation with ``D = c²/(2a)``.

    For each ``t``: ``telegrapher_outside`` = ``mass_outside_cone`` of ``solve_telegrapher_1d`` (the exact
    transport scheme: 0 up to round-off), ``telegrapher_max_outside`` (max ``|u|`` there), the mass of
    the solution, and ``heat_outside`` (:func:`heat_mass_outside_cone`, > 0).
    """
    lo, hi = support
    u0 = lambda x: bump(x, center=0.5 * (lo + hi), radius=0.5 * (hi - lo), power=power)  # noqa: E731
    D = c * c / (2.0 * a)
    rows = []
    for t in times:
        sol = solve_telegrapher_1d(u0, a, c, float(t), n_steps, lo, hi)
        outside = (sol.x < lo - c * t - 1e-6 * sol.dx) | (sol.x > hi + c * t + 1e-6 * sol.dx)
        rows.append(dict(
            t=float(t),
            telegrapher_outside=float(mass_outside_cone(sol.x, sol.u, support, c, float(t))),
            telegrapher_max_outside=float((sol.u.abs() * outside).max()),
            telegrapher_mass=float(sol.mass()),
            heat_outside=heat_mass_outside_cone(u0, support, D, c, float(t)),
        ))
    return rows


def pde_leak_2d(a: float, c: float, t: float, n_cells: Sequence[int], radius: float = 0.5,
                box: Tuple[float, float] = (-2.0, 2.0), laplacian: str = "fd") -> List[dict]:
    """Mass that the 2D central scheme (``solve_telegrapher_2d``) leaks outside the disc ``radius + ct``.

    Data: the radial bump of ``radius`` at the origin. The scheme is not exactly finite-speed (numerical
    dispersion), so ``leak`` (``mass_outside_cone_2d``) and ``leak_fraction`` (divided by the total
    ``Σ |u| dx²``) are positive and shrink with the resolution. One row per ``n_cells``.
    """
    u0 = lambda X, Y: bump(torch.sqrt(X * X + Y * Y), radius=radius)  # noqa: E731
    rows = []
    for n in n_cells:
        sol = solve_telegrapher_2d(u0, a, c, float(t), int(n), box=box, laplacian=laplacian)
        leak = float(mass_outside_cone_2d(sol.x, sol.y, sol.u, (0.0, 0.0), radius, c, float(t)))
        total = float(sol.u.abs().sum()) * sol.dx ** 2
        rows.append(dict(n_cells=int(n), dx=sol.dx, t=float(t), leak=leak, leak_fraction=leak / total,
                         laplacian=laplacian))
    return rows


# ================================================================================================ kinetic energy
def kac_dirac_kinetic_energy(a: float, c: float, t: float, panels: int = 64, nodes: int = 16) -> float:
    """``E v(t, K_t)² = ∫_{|y|<ct} v(t, y)² p(t, y) dy + c² e^{-at}`` for the 1D Kac law from a Dirac.

    The integrand is analytic in ``y`` on the closed cone (``p`` and ``v`` are functions of ``y²`` and
    ``z²``), so composite Gauss–Legendre on ``[0, min(ct, 12 sd)]`` (doubled by symmetry) converges
    fast; the atoms ``±ct`` carry ``e^{-at}`` with ``v = ±c``. docs/mathematics.md §3: a = 9, c = 3 gives 8.92, 8.23,
    3.81, 0.27 at t = 1e-3, 1e-2, 0.1, 1.
    """
    kp = KacProcess(a, c)
    t = check_positive("t", t)
    upper = min(kp.c * t, 12.0 * float(kp.std(t)))
    xi, w = np.polynomial.legendre.leggauss(int(nodes))
    h = upper / panels
    mids = h * (np.arange(panels) + 0.5)
    y = torch.as_tensor((mids[:, None] + 0.5 * h * xi[None]).reshape(-1), dtype=_F64)
    wy = torch.as_tensor(np.tile(0.5 * h * w, panels), dtype=_F64)
    v = kp.velocity(t, y, atom_mask=torch.zeros_like(y, dtype=torch.bool))
    interior = 2.0 * float((v * v * kp.density(t, y) * wy).sum())
    return interior + kp.c ** 2 * float(kp.atom_mass(t))


def flight_dirac_kinetic_energy(lam: float, c: float, t: float, panels: int = 32, nodes: int = 16) -> float:
    """``E|u(t, F_t)|²`` of the planar flight from 0 (one pair), ``u = c y/(ct + q)`` (docs/mathematics.md §14).

    In the radial variable ``w = ct - q`` the continuous part has law ``(λ/c) e^{-λw/c} dw`` on ``[0, ct)``
    and ``|u|² = c² w/(2ct - w)``; the circle atom ``e^{-λt}`` has ``|u| = c``:

        E|u|² = ∫_0^{ct} (λ/c) e^{-λw/c} c² w/(2ct - w) dw + c² e^{-λt}      (<= c²),

    composite Gauss–Legendre on ``[0, min(ct, 50 c/λ)]`` (beyond, the weight is below e^{-50}). For
    ``λt → ∞`` it tends to ``c²/(2λt)``, the 2D heat flow's ``2σ²/(4t)`` with ``σ² = c²/λ``.
    """
    lam, c, t = check_positive("lam", lam), check_positive("c", c), check_positive("t", t)
    ct = c * t
    upper = min(ct, 50.0 * c / lam)
    xi, wq = np.polynomial.legendre.leggauss(int(nodes))
    h = upper / panels
    mids = h * (np.arange(panels) + 0.5)
    w = (mids[:, None] + 0.5 * h * xi[None]).reshape(-1)
    ww = np.tile(0.5 * h * wq, panels)
    cont = float(np.sum(ww * (lam / c) * np.exp(-lam * w / c) * c * c * w / (2.0 * ct - w)))
    return cont + c * c * math.exp(-lam * t)


def diffusion_dirac_kinetic_energy(sigma2: float, t: float, d: int = 1) -> float:
    """``E|u_t|² = d σ²/(4t)`` for the heat flow from a Dirac (``u = x/(2t)``, ``Var = σ² t``)."""
    return d * check_positive("sigma2", sigma2) / (4.0 * check_positive("t", t))


def kac_velocity_with_atoms(path: ProcessPath, x: torch.Tensor, t: float, support: torch.Tensor,
                            atom_mask: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Atom-aware exact marginal velocity of a Kac or flight path: ``path.exact_velocity(..., atom_mask=...)``."""
    return path.exact_velocity(x, t, support, weights, atom_mask=atom_mask).to(_F64)


def kinetic_energy_bound(path: KacPath, t: float, data_bound_: float, d: int) -> float:
    """docs/mathematics.md §8: ``d (|f'(t)| sup|x0| + c |g'(t)|)²`` (``path.speed_bound`` squared, times ``d``)."""
    return d * float(path.speed_bound(float(t), data_bound_)) ** 2


def block_data_bound(support: torch.Tensor, block: int) -> float:
    """``max_{i,b} |x^(i)_b|``: the largest block norm of the data (``block = 1``: :func:`data_bound`; ``2``:
    the largest Euclidean norm of a pair of coordinates)."""
    s = support.reshape(support.shape[0], -1).to(_F64)
    if block == 1:
        return float(s.abs().max())
    return float(s.reshape(s.shape[0], -1, block).norm(dim=-1).max())


def path_kinetic_energy_bound(path: ProcessPath, t: float, support: torch.Tensor) -> float:
    """The energy bound of ``path``'s own speed limit: ``(d/block) (|f'| max_b |x0_b| + c |g'|)²``.

    Kac (block 1): docs/mathematics.md §8's ``d (|f'| sup|x0| + c g')²``. Flight (block 2): the speed is ``c`` per pair in
    the Euclidean norm, so ``(d/2)(|f'| max|x0_pair| + c g')²`` (half the Kac bound at ``x0 = 0``)."""
    k = path.block_size
    d = support[0].numel()
    return (d // k) * float(path.speed_bound(float(t), block_data_bound(support, k))) ** 2


def kinetic_energy_mc(path: ProbabilityPath, support: torch.Tensor, t: float, n: int,
                      generator: torch.Generator, weights: Optional[torch.Tensor] = None) -> dict:
    """Monte Carlo ``E_{ρ_t}|u_t|²`` of the exact marginal field of a path on finite data.

    Draws ``x_t`` from ``path.sample`` on ``stratified_data(support, weights, n)`` and evaluates the exact
    field there: :func:`kac_velocity_with_atoms` for a :class:`KacPath` or ``FlightPath`` (also
    ``energy_exact_velocity``: ``path.exact_velocity`` at the same points without the atom mask),
    ``path.exact_velocity`` otherwise. Returns ``energy``, its standard error ``stderr``, ``max_speed`` (max ``|u_j|``) and
    ``energy_conditional`` (``E|u_t(x|x0)|²`` of the conditional target, an upper bound by Jensen).
    """
    x0 = stratified_data(support, weights, n)
    smp = sample_path(path, x0, float(t), generator)
    out = {}
    if isinstance(path, ProcessPath):
        u = kac_velocity_with_atoms(path, smp.x_t, float(t), support, smp.atom_mask, weights)
        ue = path.exact_velocity(smp.x_t, float(t), support, weights).to(_F64)
        out["energy_exact_velocity"] = float((ue * ue).sum(dim=1).mean())
    else:
        u = path.exact_velocity(smp.x_t, float(t), support, weights).to(_F64)
    e = (u * u).reshape(u.shape[0], -1).sum(dim=1)
    ut = smp.u_t.to(_F64)
    out.update(energy=float(e.mean()), stderr=float(e.std() / math.sqrt(e.numel())),
               max_speed=float(u.abs().max()), energy_conditional=float((ut * ut).sum(dim=1).mean()))
    return out


def kinetic_energy_curve(paths: Dict[str, ProbabilityPath], kac: KacPath, support: torch.Tensor,
                         times: Sequence[float], n: int, generator: torch.Generator,
                         weights: Optional[torch.Tensor] = None, progress: bool = True) -> List[dict]:
    """:func:`kinetic_energy_mc` for every path and time, with the docs/mathematics.md §8 bound of the Kac path.

    One row per (path, t): the fields of :func:`kinetic_energy_mc`, ``bound`` =
    :func:`kinetic_energy_bound` (``kac``, ``sup|x0|`` of the support) and ``ratio = energy / bound``
    (the claim is ``ratio <= 1`` for the Kac path only; the others are shown against the same number).
    Kac and flight paths also get ``own_bound`` (:func:`path_kinetic_energy_bound`) and ``own_ratio``.
    """
    d = support[0].numel()
    b = data_bound(support)
    rows = []
    jobs = [(name, p, float(t)) for name, p in paths.items() for t in times]
    for name, p, t in tqdm(jobs, disable=None if progress else True, desc="kinetic energy", leave=False):
        r = kinetic_energy_mc(p, support, t, n, generator, weights)
        bound = kinetic_energy_bound(kac, t, b, d)
        row = dict(path=name, t=t, bound=bound, ratio=r["energy"] / bound, **r)
        if isinstance(p, ProcessPath):
            row["own_bound"] = path_kinetic_energy_bound(p, t, support)
            row["own_ratio"] = r["energy"] / row["own_bound"]
        rows.append(row)
    return rows


# ================================================================================================ Wasserstein
def _levels(n: int) -> torch.Tensor:
    """The ``n`` quantile levels ``u_k = (k + 1/2)/n``, the cell midpoints of ``(0, 1)``: float64 ``(n,)``."""
    return (torch.arange(check_int("n", n, 1), dtype=_F64) + 0.5) / n


def kac_quantiles(process: KacProcess, t: float, n: int, table: int = 4097, newton: int = 3) -> torch.Tensor:
    """Quantiles ``q(u_k)`` of the law of ``K_t`` at the midpoints ``u_k = (k + 1/2)/n`` (float64, ``(n,)``).

    Atoms: ``u < e^{-at}/2`` gives ``-ct`` and ``u >= 1 - e^{-at}/2`` gives ``ct`` exactly. Inside, the cell
    of a ``table``-point grid of ``process.cdf`` on ``[-ct, ct]`` gives a linear start, refined by Newton
    steps ``x -= (F(x) - u)/p(x)`` kept in the cell (``F`` = ``process.cdf``, ``p`` = ``process.density``).
    """
    t, u = check_nonnegative("t", t), _levels(n)
    if t == 0.0:
        return torch.zeros_like(u)
    ct = process.c * t
    half = 0.5 * math.exp(-process.a * t)
    xg = torch.linspace(-ct, ct, table, dtype=_F64)
    F = process.cdf(t, xg)
    F[-1] = 1.0 - half  # left limit at ct (the right atom is handled below)
    q = torch.where(u < 0.5, torch.full_like(u, -ct), torch.full_like(u, ct))
    mid = (u >= half) & (u < 1.0 - half)
    um = u[mid]
    k = (torch.searchsorted(F, um, right=True) - 1).clamp(0, table - 2)
    lo, hi = xg[k], xg[k + 1]
    dF = F[k + 1] - F[k]
    x = torch.where(dF > 0, lo + (um - F[k]) / dF.clamp_min(1e-300) * (hi - lo), lo)
    for _ in range(newton):
        px = process.density(t, x)
        step = torch.where(px > 0, (process.cdf(t, x) - um) / px.clamp_min(1e-300), torch.zeros_like(x))
        x = torch.minimum(torch.maximum(x - step, lo), hi)
    q[mid] = x
    return q


def gaussian_quantiles(std: float, n: int) -> torch.Tensor:
    """``std Φ^{-1}(u_k)`` at the midpoints ``u_k = (k + 1/2)/n``; zeros for ``std = 0`` (a Dirac)."""
    u = (torch.arange(n, dtype=_F64) + 0.5) / n
    return check_nonnegative("std", std) * torch.special.ndtri(u)


def kac_wasserstein_1d(process: KacProcess, times: Sequence[float], ps: Sequence[float] = (1, 2, 4),
                       n: int = 8192, brownian_sigma: Optional[float] = None) -> List[dict]:
    """``W_p(μ_s, μ_t)`` of the 1D Kac law from 0 for all pairs ``s < t`` of ``times``, against ``c|t - s|``.

    ``W_p`` is the midpoint rule of ``∫_0^1 |q_s - q_t|^p du`` on ``n`` cells (``wasserstein_1d`` of the
    two quantile vectors of :func:`kac_quantiles`). The Brownian contrast (``σ W``, ``σ`` defaults to
    ``c/sqrt(a)``) is computed the same way from Gaussian quantiles: ``σ |√t - √s| ‖Z‖_p``, whose ratio
    to ``c|t - s|`` is unbounded as ``s, t → 0``. One row per (s, t, p).
    """
    sigma = process.c / math.sqrt(process.a) if brownian_sigma is None else float(brownian_sigma)
    q = {float(t): kac_quantiles(process, float(t), n) for t in times}
    g = {float(t): gaussian_quantiles(sigma * math.sqrt(float(t)), n) for t in times}
    ts = sorted(q)
    rows = []
    for s, t in itertools.combinations(ts, 2):  # every pair s < t of the sorted times
        bound = process.c * (t - s)
        for p in ps:
            w = wasserstein_1d(q[s], q[t], p)
            wb = wasserstein_1d(g[s], g[t], p)
            rows.append(dict(s=s, t=t, p=float(p), w=w, bound=bound, ratio=w / bound,
                             brownian_w=wb, brownian_ratio=wb / bound))
    return rows


def wasserstein_path_bound(path: ProcessPath, s: float, t: float, x0_norm_p: float, d: int) -> float:
    """docs/mathematics.md §8: ``|f(t) - f(s)| ‖X0‖_p + c √d |g(t) - g(s)|`` (Kac); ``c √(d/2)`` for the flight (speed ``c``
    per pair: ``|N_t - N_s| <= c √(d/2) |t - s|``)."""
    k = getattr(path, "block_size", 1)
    return abs(path.f(t) - path.f(s)) * x0_norm_p + path.c * math.sqrt(d / k) * abs(path.g(t) - path.g(s))


def coupled_kac_samples(path: ProcessPath, x0: torch.Tensor, times: Sequence[float],
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``X_{t_k} = f(t_k) x0 + N_{g(t_k)}`` along the SAME noise paths (``simulate_paths``): ``(G, n, d)``.

    ``x0: (n, d)``. Kac: each of the ``n d`` coordinates has its own event-driven path; flight: each of the
    ``n d/2`` pairs has its own planar flight; seen at ``g(t_k)``.
    """
    n, d = x0.shape
    g = torch.tensor([path.g(float(t)) for t in times], dtype=_F64)
    if getattr(path, "block_size", 1) == 2:
        sim = path.process.simulate_paths(g, n * d // 2, generator=generator, dtype=_F64)
        k = sim.positions.reshape(n, d // 2, len(times), 2).permute(2, 0, 1, 3).reshape(len(times), n, d)
        f = torch.tensor([path.f(float(t)) for t in times], dtype=_F64)
        return f[:, None, None] * x0.to(_F64)[None] + k
    sim = path.process.simulate_paths(g, n * d, generator=generator, dtype=_F64)
    k = sim.positions.reshape(n, d, len(times)).permute(2, 0, 1)
    f = torch.tensor([path.f(float(t)) for t in times], dtype=_F64)
    return f[:, None, None] * x0.to(_F64)[None] + k


def kac_path_wasserstein(path: ProcessPath, support: torch.Tensor, times: Sequence[float], ps: Sequence[float],
                         n: int, generator: torch.Generator, weights: Optional[torch.Tensor] = None) -> List[dict]:
    """``W_p(ρ_s, ρ_t)`` of a Kac path on finite data against ``|Δf| ‖X0‖_p + c√d |Δg|`` (docs/mathematics.md §8); a flight
    path against ``|Δf| ‖X0‖_p + c√(d/2) |Δg|`` (:func:`wasserstein_path_bound`).

    Samples: ``n`` stratified data points and coupled Kac paths (:func:`coupled_kac_samples`), so the two
    empirical measures converge to ``ρ_s``, ``ρ_t`` and their exact OT distance (``wasserstein_empirical``:
    POT network simplex up to 5000 points) is a consistent estimate without the upward bias of
    independent samples. It can only under-estimate the ratio through sampling noise; the pathwise
    ratio ``max_i |X_t^i - X_s^i| / (|Δf| |x0^i| + c√d |Δg|)`` is reported as ``pathwise_ratio``.
    ``‖X0‖_p = (Σ_i w_i |x^(i)|^p)^{1/p}`` (Euclidean norm) is exact. One row per (s, t, p).
    """
    x0 = stratified_data(support, weights, n).reshape(n, -1).to(_F64)
    d = x0.shape[1]
    X = coupled_kac_samples(path, x0, times, generator)
    norms = x0.norm(dim=1)
    ts = [float(t) for t in times]
    rows = []
    for i, j in itertools.combinations(range(len(ts)), 2):  # every pair i < j of the time grid
        s, t = ts[i], ts[j]
        disp = (X[j] - X[i]).norm(dim=1)
        path_bound = abs(path.f(t) - path.f(s)) * norms + \
            path.c * math.sqrt(d / path.block_size) * abs(path.g(t) - path.g(s))
        pw = float((disp / path_bound).max())
        for p in ps:
            x0n = float((norms ** p).mean() ** (1.0 / p))
            bound = wasserstein_path_bound(path, s, t, x0n, d)
            w = wasserstein_empirical(X[i], X[j], p, exact_max=max(5000, n))
            rows.append(dict(s=s, t=t, p=float(p), w=w, bound=bound, ratio=w / bound, pathwise_ratio=pw,
                             x0_norm_p=x0n))
    return rows


def flight_radial_quantiles(process: PlanarFlight, t: float, n: int) -> torch.Tensor:
    """Quantiles of ``|F_t|`` (planar flight from 0) at the midpoints ``u_k = (k + 1/2)/n``: ``(n,)`` float64
    (``PlanarFlight.radial_quantile``, closed form; ``ct`` on the circle atom)."""
    t, u = check_nonnegative("t", t), _levels(n)
    if t == 0.0:
        return torch.zeros_like(u)
    return process.radial_quantile(t, u)


def flight_wasserstein_2d(process: PlanarFlight, times: Sequence[float], ps: Sequence[float] = (1, 2, 4),
                          n: int = 8192, brownian_sigma: Optional[float] = None) -> List[dict]:
    """``W_p(μ_s, μ_t)`` of the planar flight from 0 for all pairs ``s < t`` of ``times``, against ``c|t - s|``.

    Both laws are rotation invariant; the radial quantile coupling (same angle, radii matched by quantile)
    moves a point by ``|Q_s(u) - Q_t(u)|``, so ``w = (∫_0^1 |Q_s - Q_t|^p du)^{1/p}`` (midpoint rule on ``n``
    cells) is an upper bound of ``W_p`` and equals ``W_2`` (the map ``r ↦ Q_t(F_s(r))`` along rays is the
    gradient of a convex radial potential: Brenier). ``w <= c|t - s|`` is then the claim. Brownian contrast
    (2D, ``σ² = c²/λ`` per coordinate by default): ``σ |√t - √s| ‖|Z|‖_p`` with ``|Z|`` Rayleigh, by the same
    coupling (exact for every ``p`` there: a dilation). One row per (s, t, p).
    """
    sigma = process.c / math.sqrt(process.a) if brownian_sigma is None else float(brownian_sigma)
    q = {float(t): flight_radial_quantiles(process, float(t), n) for t in times}
    rayleigh = torch.sqrt(-2.0 * torch.log1p(-_levels(n)))
    ts = sorted(q)
    rows = []
    for s, t in itertools.combinations(ts, 2):  # every pair s < t of the sorted times
        bound = process.c * (t - s)
        for p in ps:
            w = float(((q[s] - q[t]).abs() ** p).mean() ** (1.0 / p))
            wb = sigma * abs(math.sqrt(t) - math.sqrt(s)) * float((rayleigh ** p).mean() ** (1.0 / p))
            rows.append(dict(s=s, t=t, p=float(p), w=w, bound=bound, ratio=w / bound, brownian_w=wb,
                             brownian_ratio=wb / bound))
    return rows


# ================================================================================================ diffusion limit
def diffusion_limit_errors(a: float, sigma2: float, t: float, n_grid: int = 20001, window: float = 3.0) -> dict:
    """Distance of the Kac law with ``c = sqrt(σ² a)`` to its diffusion limit ``N(0, σ² t)`` at time ``t``.

    * ``density_sup = sup_x |p(t, x) - φ(x)|`` (continuous part; ``φ`` the heat kernel of variance ``σ²t``);
    * ``density_l1 = ∫ |p - φ| dx + e^{-at}`` (the atoms count as mass: total variation times 2);
    * ``velocity_sup = sup_{|x| <= window sd, |x| < ct} |v(t, x) - x/(2t)|`` (``sd = σ√t``; ``x/(2t)`` is the
      heat velocity; near the cone ``v`` stays below ``c`` while ``x/(2t)`` does not, so the sup is taken on a
      fixed number of standard deviations);
    * ``velocity_l2 = (E|v(t, K_t) - K_t/(2t)|²)^{1/2}`` under the Kac law, atoms included.

    Trapezoid rule on ``n_grid`` points over ``|x| <= L = min(ct, 12 sd)``, plus the Gaussian mass beyond
    ``L`` (``erfc``) in the L1 distance.
    """
    a, sigma2, t = check_positive("a", a), check_positive("sigma2", sigma2), check_positive("t", t)
    c = math.sqrt(sigma2 * a)
    kp = KacProcess(a, c)
    sd = math.sqrt(sigma2 * t)
    ct = c * t
    L = min(ct, 12.0 * sd)
    x = torch.linspace(-L, L, int(n_grid), dtype=_F64)
    p = kp.density(t, x)
    phi = torch.exp(-0.5 * (x / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
    atoms = float(kp.atom_mass(t))
    tail = float(torch.special.erfc(torch.tensor(L / (sd * math.sqrt(2.0)), dtype=_F64)))
    dens_sup = float((p - phi).abs().max())
    if L >= ct:  # beyond the cone p = 0 and φ is largest at the cone
        dens_sup = max(dens_sup, math.exp(-0.5 * (ct / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi)))
    dens_l1 = float(torch.trapezoid((p - phi).abs(), x)) + atoms + tail
    inside = x.abs() < ct
    v = kp.velocity(t, x, atom_mask=torch.zeros_like(x, dtype=torch.bool))
    err = torch.where(inside, v - x / (2.0 * t), torch.zeros_like(x))
    win = inside & (x.abs() <= window * sd)
    vel_sup = float(err[win].abs().max())
    vel_l2 = math.sqrt(float(torch.trapezoid(err * err * p, x)) + atoms * (c - 0.5 * c) ** 2)
    return dict(a=a, c=c, sigma2=sigma2, t=t, atom_mass=atoms, density_sup=dens_sup, density_l1=dens_l1,
                velocity_sup=vel_sup, velocity_l2=vel_l2)


def diffusion_limit_table(a_values: Sequence[float], sigma2: float, t: float, fit_from: float = 10.0,
                          pde_support: Optional[Tuple[float, float]] = (-1.0, 1.0), pde_t: Optional[float] = None,
                          n_grid: int = 20001, progress: bool = True) -> Tuple[List[dict], Dict[str, float]]:
    """:func:`diffusion_limit_errors` for each ``a`` (``c²/a = σ²`` fixed), plus the PDE version.

    ``pde_l1`` = ``telegrapher.heat_limit_l1`` (bump data on ``pde_support``, exact telegrapher solution vs
    heat solution at ``pde_t``, default ``t``). Rates: least-squares slope of ``log error`` against
    ``log a`` over ``a >= fit_from`` (``telegrapher.fit_order``); ``-1`` means error ``∝ 1/a``.
    Returns ``(rows, rates)``.
    """
    rows = []
    pde_t = t if pde_t is None else pde_t
    for a in tqdm(list(a_values), disable=None if progress else True, desc="diffusion limit", leave=False):
        r = diffusion_limit_errors(float(a), sigma2, t, n_grid=n_grid)
        if pde_support is not None:
            r["pde_l1"] = heat_limit_l1(bump, sigma2, float(a), pde_t, pde_support)
        rows.append(r)
    keys = ["density_sup", "density_l1", "velocity_sup", "velocity_l2"] + (["pde_l1"] if pde_support else [])
    fit = [r for r in rows if r["a"] >= fit_from]
    rates = {}
    for k in keys:
        rates[k] = fit_order([r["a"] for r in fit], [r[k] for r in fit]) if len(fit) >= 2 else float("nan")
    return rows, rates


# ================================================================================================ guidance
class ExactLabelledField:
    """Network-free conditional field ``model(x, t, y)`` of a labelled finite data set (for ``GuidedField``).

    ``u(x, t, y) = path.exact_velocity(x, t, support[labels == y])`` and, for ``y = null_label``, the
    unconditional ``path.exact_velocity(x, t, support)`` (uniform weights: with equal class sizes the
    unconditional law is the class average). ``x: (B, d)``, ``t: (B,)``, ``y: (B,)`` long.
    """

    def __init__(self, path: ProbabilityPath, support: torch.Tensor, labels: torch.Tensor,
                 null_label: Optional[int] = None):
        if labels.shape != (support.shape[0],):
            raise ValueError(f"labels must have shape ({support.shape[0]},), got {tuple(labels.shape)}")
        self.path, self.support, self.labels = path, support, labels.long()
        self.classes = sorted(int(v) for v in torch.unique(labels))
        self.num_classes = len(self.classes)
        self.null_label = self.num_classes if null_label is None else int(null_label)
        if self.null_label in self.classes:
            raise ValueError(f"null_label must differ from the class labels {self.classes}, got {null_label}")

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for lab in torch.unique(y).tolist():
            rows = y == lab
            sup = self.support if lab == self.null_label else self.support[self.labels.to(y.device) == lab]
            if sup.shape[0] == 0:
                raise ValueError(f"label {lab} has no support points")
            out[rows] = self.path.exact_velocity(x[rows], t[rows], sup)
        return out


def guidance_integrability(path: KacPath, support: torch.Tensor, labels: torch.Tensor, scales: Sequence[float],
                           n: int, n_steps: int, generator: torch.Generator, method: str = "ab2",
                           progress: bool = True) -> Tuple[List[dict], Dict[float, dict]]:
    """Guided trajectories of the exact labelled Kac fields, their energy and speed against docs/mathematics.md §5.

    For each scale ``s``: ``n`` latent draws ``path.sample_latent`` (balanced labels), integrated from
    ``T`` to 0 with ``n_steps`` steps of ``method`` through ``GuidedField(ExactLabelledField, s)``; at every
    grid state ``guidance.guided_kinetic_energy`` records ``E|u_s|²`` and ``max |u_s|`` (and the parts).
    Bounds at time ``t``: ``B(t) = path.speed_bound(t, sup|x0|)`` per coordinate, the guided bound
    ``guidance_bound(s, B)`` = ``(1 + 2|s - 1|) B`` and the energy bound ``d guidance_bound(s, B)²``.

    Returns ``(rows, curves)``: one row per ``s`` with the worst ``max_ratio`` (``max|u_s| / (1+2|s-1|)B``),
    ``energy_ratio`` (``E|u_s|² / (d ((1+2|s-1|)B)²)``), ``observed_ratio`` (``max|u_s|`` over the bound
    built from the observed ``max(|u_c|, |u_u|)``), the peak energy and ``∫ E|u_s|² dt`` over the grid
    (finite: square-integrable along the flow); ``curves[s]`` holds the per-time arrays for figures.
    """
    null = int(labels.max()) + 1
    model = ExactLabelledField(path, support, labels, null_label=null)
    K = model.num_classes
    d = support[0].numel()
    b = data_bound(support)
    grid = path.default_time_grid(n_steps)
    x_T = path.sample_latent((n, d), generator=generator, dtype=_F64)
    y = torch.tensor(model.classes, dtype=torch.long)[torch.arange(n) % K]
    B = torch.tensor([float(path.speed_bound(float(t), b)) for t in grid], dtype=_F64)
    rows, curves = [], {}
    for s in tqdm(list(scales), disable=None if progress else True, desc="guidance scales", leave=False):
        guided = GuidedField(model, float(s), null_label=null, num_classes=K)
        res = guided_kinetic_energy(guided, x_T, y, grid, method)
        gb = torch.tensor([guidance_bound(float(s), float(v)) for v in B], dtype=_F64)
        max_ratio = res["guided_max_abs"] / gb
        energy_ratio = res["guided_energy"] / (d * gb ** 2)
        observed_ratio = res["guided_max_abs"] / res["bound"].clamp_min(1e-300)
        tg = res["time_grid"]
        integral = float(torch.trapezoid(res["guided_energy"], tg).abs())
        rows.append(dict(scale=float(s), max_speed=float(res["guided_max_abs"].max()),
                         max_energy=float(res["guided_energy"].max()), energy_integral=integral,
                         max_ratio=float(max_ratio.max()), energy_ratio=float(energy_ratio.max()),
                         observed_ratio=float(observed_ratio.max()), bound_at_t0=float(gb[-1]),
                         nfe=int(res["nfe"]), nfe_model=int(res["nfe_model"])))
        curves[float(s)] = dict(t=tg, energy=res["guided_energy"], max_abs=res["guided_max_abs"], bound=gb,
                                cond_energy=res["cond_energy"], uncond_energy=res["uncond_energy"], x=res["x"],
                                y=y)
    return rows, curves
