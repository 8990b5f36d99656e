"""Kinetic energy E_{ρ_t}|u_t|² of the exact fields: Kac stays bounded, diffusion blows up at the data end.

Two measurements (all computed in ``kacnum.theory.claims``):

1. 1D Dirac (docs/mathematics.md §3, a = 9, c = 3): ``E v(t, K_t)² = ∫ v² p dx + c² e^{-at}`` by quadrature (atoms
   included), checked by Monte Carlo on the exact law, against the heat flow's ``σ²/(4t)`` (``σ² = c²/a``).
   docs/mathematics.md §3 quotes Kac 8.92, 8.23, 3.81, 0.27 and diffusion 250, 25, 2.5, 0.25 at t = 1e-3, 1e-2, 0.1, 1.
2. Finite data (the 3×3 grid, d = 2): Monte Carlo of ``E|u_t|²`` for the exact marginal fields of the
   Kac path (atom-aware: ``claims.kac_velocity_with_atoms``; ``KacPath.exact_velocity`` reported next to
   it), its diffusion limit ``f X0 + σ W_g``, Gaussian flow matching and VP diffusion (probability flow),
   on a log grid of t from 1e-4 to 1, with the docs/mathematics.md §8 bound ``d (|f'| sup|x0| + c g')²`` of the Kac
   path and the worst ratio to it.
3. The isotropic flow (``FlightPath``, planar random flight, docs/mathematics.md §14). 2D Dirac: ``E|u|²`` per pair
   (``claims.flight_dirac_kinetic_energy``, checked by Monte Carlo) against the coordinate-wise Kac flow in
   2D (twice the 1D value) and the 2D heat flow ``2σ²/(4t)``; its bound is ``c²`` (speed ``c`` per pair),
   half the 2D Kac bound ``2c²``. On the grid data it runs beside the others, with its own bound
   ``(d/2)(|f'| max|x0_pair| + c g')²`` (``own_bound``, ``own_ratio``).

    python experiments/kinetic_energy.py                 # default budget (~1 min on one core)
    python experiments/kinetic_energy.py --quick         # < 30 s
    python experiments/kinetic_energy.py --paper-figures # also paper_figures/kinetic_energy.png
"""
from __future__ import annotations

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

NAME = "kinetic_energy"


@dataclass(frozen=True)
class KineticEnergyConfig(_common.GridSetting):
    """Budget and parameters beyond the shared Kac path and grid data (``--quick`` changes only the budget)."""

    t_min: float = 1e-4
    per_decade: int = 3
    n_samples: int = 20007  # a multiple of the 9 support points
    dirac_times: tuple = (1e-3, 1e-2, 0.1, 1.0)
    dirac_mc_samples: int = 40000
    dense_points: int = 61


QUICK = dict(per_decade=1, n_samples=2007, dirac_mc_samples=4000, dense_points=21)


def run(cfg: KineticEnergyConfig, generator: torch.Generator) -> dict:
    """Both measurements of the module docstring; returns the results dict (``worst_ratios`` on top)."""
    kac = KacPath(cfg.a, cfg.c)
    sigma2 = cfg.c ** 2 / cfg.a
    # 1. the 1D Dirac: quadrature, Monte Carlo, diffusion, bound c² (f = 1 - t: f' x0 = 0 for x0 = 0)
    dirac = torch.zeros(1, 1, dtype=torch.float64)
    dirac_rows = []
    for t in cfg.dirac_times:
        mc = claims.kinetic_energy_mc(kac, dirac, t, cfg.dirac_mc_samples, generator)
        quad = claims.kac_dirac_kinetic_energy(cfg.a, cfg.c, t)
        diff = claims.diffusion_dirac_kinetic_energy(sigma2, t)
        bound = claims.kinetic_energy_bound(kac, t, 0.0, 1)
        dirac_rows.append(dict(t=float(t), kac_quadrature=quad, kac_mc=mc["energy"], kac_mc_stderr=mc["stderr"],
                               diffusion=diff, bound=bound, kac_ratio=quad / bound, diffusion_ratio=diff / bound,
                               diffusion_over_kac=diff / quad))
    dense_t = np.geomspace(cfg.t_min, 1.0, cfg.dense_points).tolist()
    dense = [dict(t=t, kac=claims.kac_dirac_kinetic_energy(cfg.a, cfg.c, t),
                  diffusion=claims.diffusion_dirac_kinetic_energy(sigma2, t),
                  flight_2d=claims.flight_dirac_kinetic_energy(cfg.a, cfg.c, t)) for t in dense_t]
    # the isotropic flow from a 2D Dirac: one planar flight (c²/λ = σ² per coordinate, as Kac)
    flight = FlightPath(cfg.a, cfg.c)
    dirac2 = torch.zeros(1, 2, dtype=torch.float64)
    flight_rows = []
    for t in cfg.dirac_times:
        mc = claims.kinetic_energy_mc(flight, dirac2, t, cfg.dirac_mc_samples, generator)
        quad = claims.flight_dirac_kinetic_energy(cfg.a, cfg.c, t)
        kac2 = 2.0 * claims.kac_dirac_kinetic_energy(cfg.a, cfg.c, t)
        diff2 = claims.diffusion_dirac_kinetic_energy(sigma2, t, 2)
        flight_rows.append(dict(t=float(t), flight_quadrature=quad, flight_mc=mc["energy"],
                                flight_mc_stderr=mc["stderr"], kac_2d=kac2, diffusion_2d=diff2,
                                flight_bound=cfg.c ** 2, kac_2d_bound=2 * cfg.c ** 2,
                                flight_over_kac=quad / kac2, diffusion_over_flight=diff2 / quad))
    # 2. finite data
    support, _ = claims.labelled_grid_support(cfg.spacing)
    times = claims.log_time_grid(cfg.t_min, 1.0, cfg.per_decade, snap=(1e-3, 1e-2, 0.1, 1.0))
    paths = {"kac": kac, "flight": flight, "diffusion": claims.DiffusionLimitPath(kac), "gaussian_fm": GaussianPath(),
             "vp": VPPath()}
    rows = claims.kinetic_energy_curve(paths, kac, support, times, cfg.n_samples, generator)
    kac_rows = [r for r in rows if r["path"] == "kac"]
    at = {r["path"]: r for r in rows if r["t"] == 1e-3}
    worst = dict(
        kac_dirac_energy_bound=claims.worst_ratio([r["kac"] / cfg.c ** 2 for r in dense]),
        kac_grid_energy_bound=claims.worst_ratio(r["ratio"] for r in kac_rows),
        kac_grid_energy_bound_exact_velocity=claims.worst_ratio(r["energy_exact_velocity"] / r["bound"]
                                                                for r in kac_rows),
        diffusion_grid_vs_kac_bound=claims.worst_ratio(r["ratio"] for r in rows if r["path"] == "diffusion"),
        vp_grid_vs_kac_bound=claims.worst_ratio(r["ratio"] for r in rows if r["path"] == "vp"),
        gaussian_fm_grid_vs_kac_bound=claims.worst_ratio(r["ratio"] for r in rows if r["path"] == "gaussian_fm"),
        flight_dirac_energy_bound=claims.worst_ratio([r["flight_2d"] / cfg.c ** 2 for r in dense]),
        flight_grid_energy_own_bound=claims.worst_ratio(r["own_ratio"] for r in rows if r["path"] == "flight"),
        flight_grid_vs_kac_bound=claims.worst_ratio(r["ratio"] for r in rows if r["path"] == "flight"),
    )
    at_1e3 = dict(dirac_kac=claims.kac_dirac_kinetic_energy(cfg.a, cfg.c, 1e-3),
                  dirac_diffusion=claims.diffusion_dirac_kinetic_energy(sigma2, 1e-3),
                  **{f"grid_{k}": v["energy"] for k, v in at.items()})
    at_1e3["dirac_flight_2d"] = claims.flight_dirac_kinetic_energy(cfg.a, cfg.c, 1e-3)
    at_1e3["dirac_kac_2d"] = 2.0 * at_1e3["dirac_kac"]
    return dict(worst_ratios=worst, energy_at_t_1e_3=at_1e3, dirac=dirac_rows, dirac_dense=dense, grid=rows,
                flight_dirac=flight_rows,
                times=times, sigma2=sigma2, data_bound=claims.data_bound(support))


STYLE = {"kac": ("tab:blue", "-", "Kac (exact, atoms incl.)"), "flight": ("tab:orange", "-", "flight (isotropic, exact)"),
         "diffusion": ("tab:red", "-", "diffusion limit f X0 + σW_g"),
         "gaussian_fm": ("tab:green", "-", "Gaussian FM"), "vp": ("tab:purple", "-", "VP probability flow")}


def figure(res: dict, cfg: KineticEnergyConfig):
    """Log-log energy vs t: the 1D Dirac (left) and the 3×3 grid data (right), with the Kac bounds."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    d = res["dirac_dense"]
    t = [r["t"] for r in d]
    ax[0].loglog(t, [r["kac"] for r in d], color="tab:blue", label="Kac: ∫v²p + c²e^{-at} (quadrature)")
    ax[0].loglog(t, [r["diffusion"] for r in d], color="tab:red", label="diffusion σ²/(4t)")
    dr = res["dirac"]
    ax[0].errorbar([r["t"] for r in dr], [r["kac_mc"] for r in dr], yerr=[2 * r["kac_mc_stderr"] for r in dr],
                   fmt="o", ms=4, color="k", label="Kac Monte Carlo (±2 s.e.)")
    ax[0].loglog(t, [r["flight_2d"] / 2 for r in d], color="tab:orange", label="flight, per coordinate (2D / 2)")
    ax[0].axhline(cfg.c ** 2, color="tab:blue", ls=":", label="bound c²")
    ax[0].set_title(f"1D Dirac, a={cfg.a:g}, c={cfg.c:g} (σ²={res['sigma2']:g})")
    for name, (col, ls, lab) in STYLE.items():
        rows = [r for r in res["grid"] if r["path"] == name]
        ax[1].loglog([r["t"] for r in rows], [r["energy"] for r in rows], color=col, ls=ls, marker=".", label=lab)
    kac_rows = [r for r in res["grid"] if r["path"] == "kac"]
    ax[1].loglog([r["t"] for r in kac_rows], [r["energy_exact_velocity"] for r in kac_rows], color="tab:blue",
                 ls=":", lw=1, label="Kac: KacPath.exact_velocity (no atom mask)")
    ax[1].loglog([r["t"] for r in kac_rows], [r["bound"] for r in kac_rows], color="k", ls="--",
                 label="bound d(|f'| sup|x0| + c g')²")
    ax[1].set_title("3×3 grid data (d = 2), exact marginal fields")
    ax[1].set_ylim(bottom=0.1)
    for a in ax:
        a.set_xlabel("t (data at t = 0)")
        a.set_ylabel("E |u_t|²")
        a.legend(fontsize=7)
        a.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    args, cfg, gen = _common.start(NAME, __doc__, KineticEnergyConfig(), QUICK, argv)
    with _common.Stopwatch() as sw:
        res = run(cfg, gen)
    _common.print_table(res["dirac"], ["t", "kac_quadrature", "kac_mc", "kac_mc_stderr", "diffusion", "bound",
                                       "kac_ratio", "diffusion_over_kac"],
                        "1D Dirac (docs/mathematics.md §3): E|u_t|², Kac vs diffusion", floatfmt=".4g")
    _common.print_table(res["flight_dirac"], ["t", "flight_quadrature", "flight_mc", "flight_mc_stderr", "kac_2d",
                                              "diffusion_2d", "flight_bound", "flight_over_kac", "diffusion_over_flight"],
                        "2D Dirac: E|u_t|² of the isotropic flow (planar flight) vs the 2D Kac product and the 2D heat "
                        "flow; bounds c² (flight) and 2c² (Kac)", floatfmt=".4g")
    _common.print_table(res["grid"], ["path", "t", "energy", "stderr", "energy_exact_velocity", "max_speed",
                                      "bound", "ratio", "own_bound", "own_ratio"],
                        "3x3 grid data: E|u_t|² against the Kac bound (claim: kac ratio <= 1)")
    _common.print_worst_ratios(res["worst_ratios"])
    _common.print_table([dict(quantity=k, value=v) for k, v in res["energy_at_t_1e_3"].items()],
                        ["quantity", "value"], "kinetic energy at t = 1e-3")
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(res, cfg))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
