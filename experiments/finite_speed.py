"""Finite speed (docs/mathematics.md §8): Kac samples and telegrapher solutions stay in the light cone; diffusion's do not.

Three measurements (all computed in ``kacnum.theory.claims``):

1. Samples. Kac path ``X_t = f(t) X0 + K_{g(t)}`` on the 3×3 grid data; for each sample the normalised
   distance ``min_i max_j |x_j - f(t) x^(i)_j| / (c g(t))`` to the cone set ``f(t) supp + [-c g, c g]^d``
   (``<= 1`` inside). The same number for the diffusion limit ``f X0 + σ W_g`` (``σ² = c²/a``), Gaussian
   flow matching and VP diffusion on the same data, measured against the same Kac cone: they leave it.
   The isotropic flow (``FlightPath``, planar random flight, docs/mathematics.md §14) in the Euclidean norm: every path
   measured against ``f(t) supp + disc(c g(t))`` (``cone_ratio(..., block=2)``): the flight stays in it, the
   coordinate-wise Kac path's corners (``|K| = √2 c g`` at a corner atom) and the Gaussian paths leave it.
2. 1D PDE. ``solve_telegrapher_1d`` (exact transport) from a compact bump: mass outside
   ``[lo - ct, hi + ct]`` is 0 to round-off; the heat equation with ``D = c²/(2a)`` has erfc tails there.
3. 2D PDE. ``solve_telegrapher_2d`` (central finite differences) leaks a little mass outside the disc
   ``r0 + ct`` through numerical dispersion: reported per resolution, not hidden.

    python experiments/finite_speed.py                       # default budget (~10 s)
    python experiments/finite_speed.py --quick --out runs/fs # < 30 s
    python experiments/finite_speed.py --paper-figures       # also paper_figures/finite_speed.png
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.theory import claims  # noqa: E402
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, VPPath  # noqa: E402
from kacnum.processes.telegrapher import bump, heat_solution, solve_telegrapher_1d, solve_telegrapher_2d  # noqa: E402

NAME = "finite_speed"


@dataclass(frozen=True)
class FiniteSpeedConfig(_common.GridSetting):
    """Budget and parameters beyond the shared Kac path and grid data (``--quick`` changes only the budget)."""

    times: tuple = (0.01, 0.1, 0.3, 0.6, 1.0)
    n_samples: int = 20007  # a multiple of the 9 support points
    pde_times: tuple = (0.05, 0.1, 0.3, 0.6, 1.0)
    pde_steps: int = 600
    leak_t: float = 0.3
    leak_radius: float = 0.5
    leak_cells: tuple = (64, 128, 256)


QUICK = dict(n_samples=2007, pde_steps=150, leak_cells=(64, 128))


def run(cfg: FiniteSpeedConfig, generator: torch.Generator) -> dict:
    """All measurements of the module docstring; returns the results dict (``worst_ratios`` on top)."""
    kac = KacPath(cfg.a, cfg.c)
    flight = FlightPath(cfg.a, cfg.c)
    paths = {"kac": kac, "flight": flight, "diffusion": claims.DiffusionLimitPath(kac), "gaussian_fm": GaussianPath(),
             "vp": VPPath()}
    support, _ = claims.labelled_grid_support(cfg.spacing)
    samples = claims.finite_speed_samples(paths, kac, support, cfg.times, cfg.n_samples, generator)
    # the isotropic flow's claim, in the Euclidean norm of each pair: f(t) supp + disc(c g(t))
    disc = claims.finite_speed_samples(paths, flight, support, cfg.times, cfg.n_samples, generator)
    pde1 = claims.pde_finite_speed_1d(cfg.a, cfg.c, cfg.pde_times, cfg.pde_steps)
    leak = claims.pde_leak_2d(cfg.a, cfg.c, cfg.leak_t, cfg.leak_cells, radius=cfg.leak_radius)
    worst = {f"{name}_cone": claims.worst_ratio(r["max_ratio"] for r in samples if r["path"] == name)
             for name in paths}
    worst.update({f"{name}_disc": claims.worst_ratio(r["max_ratio"] for r in disc if r["path"] == name)
                  for name in paths})
    return dict(
        worst_ratios=worst,
        claim_holds=dict(kac_samples_in_cone=worst["kac_cone"] <= 1.0 + 1e-12,
                         flight_samples_in_disc_cone=worst["flight_disc"] <= 1.0 + 1e-12,
                         telegrapher_1d_zero_outside=all(r["telegrapher_outside"] == 0.0 for r in pde1),
                         heat_positive_outside=all(r["heat_outside"] > 0.0 for r in pde1)),
        max_telegrapher_1d_outside=max(r["telegrapher_outside"] for r in pde1),
        min_heat_outside=min(r["heat_outside"] for r in pde1),
        max_leak_fraction_2d=max(r["leak_fraction"] for r in leak),
        samples=samples, samples_disc=disc, pde_1d=pde1, leak_2d=leak,
    )


def figure(cfg: FiniteSpeedConfig, generator: torch.Generator):
    """Density snapshots with the cone marked: 1D telegrapher vs heat (linear, log), 2D samples, 2D solver."""
    fig, ax = plt.subplots(2, 2, figsize=(10, 7.6))
    lo, hi = -1.0, 1.0
    D = cfg.c ** 2 / (2 * cfg.a)
    colors = plt.cm.viridis(np.linspace(0.1, 0.85, 3))
    for t, col in zip((0.1, 0.3, 0.6), colors):
        sol = solve_telegrapher_1d(bump, cfg.a, cfg.c, t, cfg.pde_steps, lo, hi)
        xh = torch.linspace(lo - cfg.c * 0.7, hi + cfg.c * 0.7, 801, dtype=torch.float64)
        heat = heat_solution(bump, D, t, xh, support=(lo, hi))
        for k, axis in enumerate(ax[0]):
            u = sol.u.clamp_min(1e-300) if k else sol.u
            axis.plot(sol.x, u, color=col, lw=1.6, label=f"telegrapher t={t:g}")
            axis.plot(xh, heat, color=col, lw=1.0, ls="--", label=f"heat t={t:g}")
            for e in (lo - cfg.c * t, hi + cfg.c * t):
                axis.axvline(e, color=col, ls=":", lw=0.9)
    ax[0, 0].set_title("1D: telegrapher (solid) vs heat (dashed); cone dotted")
    ax[0, 0].legend(fontsize=7, ncol=2)
    ax[0, 1].set_yscale("log")
    ax[0, 1].set_ylim(1e-16, 3)
    ax[0, 1].set_title("same, log scale: zero outside the cone vs erfc tails")
    for axis in ax[0]:
        axis.set_xlabel("x")
        axis.set_xlim(lo - cfg.c * 0.7, hi + cfg.c * 0.7)
    # 2D samples against the Kac cone boxes
    kac = KacPath(cfg.a, cfg.c)
    diff = claims.DiffusionLimitPath(kac)
    support, _ = claims.labelled_grid_support(cfg.spacing)
    t = 0.1
    x0 = claims.stratified_data(support, None, 1503)
    xk = claims.sample_path(kac, x0, t, generator).x_t
    xd = claims.sample_path(diff, x0, t, generator).x_t
    a2 = ax[1, 0]
    a2.scatter(xd[:, 0], xd[:, 1], s=2, color="tab:orange", alpha=0.5, label="diffusion limit f X0 + σW_g")
    a2.scatter(xk[:, 0], xk[:, 1], s=2, color="tab:blue", alpha=0.6, label="Kac f X0 + K_g")
    cg, f = cfg.c * kac.g(t), kac.f(t)
    for p in support.tolist():
        a2.add_patch(plt.Rectangle((f * p[0] - cg, f * p[1] - cg), 2 * cg, 2 * cg, fill=False, color="k", lw=0.8))
    a2.set_aspect("equal")
    a2.set_title(f"2D samples at t={t:g}; boxes: f(t) supp + [-cg, cg]²")
    a2.legend(fontsize=7, loc="upper right", markerscale=4)
    # 2D solver with its leak
    n = cfg.leak_cells[-1]
    u0 = lambda X, Y: bump(torch.sqrt(X * X + Y * Y), radius=cfg.leak_radius)  # noqa: E731
    sol2 = solve_telegrapher_2d(u0, cfg.a, cfg.c, cfg.leak_t, n, box=(-2.0, 2.0))
    a3 = ax[1, 1]
    im = a3.imshow(torch.log10(sol2.u.abs().T.clamp_min(1e-16)), origin="lower", extent=(-2, 2, -2, 2),
                   vmin=-12, vmax=0, cmap="magma")
    r = cfg.leak_radius + cfg.c * cfg.leak_t
    th = np.linspace(0, 2 * math.pi, 200)
    a3.plot(r * np.cos(th), r * np.sin(th), color="c", lw=1.0)
    a3.set_title(f"2D FD solver, log10|u| at t={cfg.leak_t:g} ({n}² cells); cone circle")
    fig.colorbar(im, ax=a3, shrink=0.8)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    args, cfg, gen = _common.start(NAME, __doc__, FiniteSpeedConfig(), QUICK, argv)
    with _common.Stopwatch() as sw:
        res = run(cfg, gen)
    _common.print_table(res["samples"], ["path", "t", "cone_half_width", "max_ratio", "frac_outside", "max_excess"],
                        "samples: max normalised distance to the Kac cone (<= 1 inside)")
    _common.print_table(res["samples_disc"], ["path", "t", "cone_half_width", "max_ratio", "frac_outside", "max_excess"],
                        "samples: max normalised distance to the flight's cone f supp + disc(c g), Euclidean per "
                        "pair (<= 1 inside)")
    _common.print_table(res["pde_1d"], ["t", "telegrapher_outside", "telegrapher_max_outside", "telegrapher_mass",
                                        "heat_outside"], "1D PDE from a compact bump: mass outside the cone")
    _common.print_table(res["leak_2d"], ["n_cells", "dx", "t", "leak", "leak_fraction"],
                        "2D central scheme: mass leaked outside the disc r0 + ct")
    _common.print_worst_ratios(res["worst_ratios"], "worst ratios (claims: kac_cone <= 1, flight_disc <= 1)")
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(cfg, gen))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
