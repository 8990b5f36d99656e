"""Diffusion limit (docs/mathematics.md §1, §8): with c²/a = σ² fixed, the Kac law and velocity tend to the heat ones as a → ∞.

For ``a`` in a geometric range and ``c = sqrt(σ² a)`` (all computed in ``kacnum.theory.claims``):

* the density ``p(t, ·)`` of ``K_t`` against the heat kernel ``N(0, σ² t)``: sup and L1 errors (the L1
  error counts the atoms ``e^{-at}``);
* the velocity ``v(t, ·) = E[V_t | K_t = x]`` against the heat velocity ``x/(2t)``: sup over
  ``|x| <= 3σ√t`` and the L2 error under the Kac law;
* the PDE version: L1 distance between the exact telegrapher solution from a compact bump and the heat
  solution (``telegrapher.heat_limit_l1``).

The rate is the least-squares slope of log error against log a over ``a >= fit_from`` (-1: error ∝ 1/a).

    python experiments/diffusion_limit.py                 # default budget (~10 s)
    python experiments/diffusion_limit.py --quick         # < 30 s
    python experiments/diffusion_limit.py --paper-figures # also paper_figures/diffusion_limit.png
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
from kacnum.processes.kac import KacProcess  # noqa: E402

NAME = "diffusion_limit"


@dataclass(frozen=True)
class DiffusionLimitConfig:
    """Budget and parameters (``--quick`` changes only the budget)."""

    sigma2: float = 1.0
    t: float = 1.0
    a_values: tuple = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
    fit_from: float = 20.0  # below, the cone ct = sqrt(a) t is within 3 sd: velocity_sup is pre-asymptotic
    n_grid: int = 20001
    pde_support: tuple = (-1.0, 1.0)
    pde_t: float = 0.5


QUICK = dict(a_values=(1.0, 10.0, 100.0, 1000.0), n_grid=4001)


def run(cfg: DiffusionLimitConfig) -> dict:
    """Errors and rates (module docstring); the results dict has the fitted rates under ``rates``.

    The claim is convergence; ``worst_ratios`` holds the ratio of each error at the largest ``a`` to its
    value at the smallest ``a >= fit_from`` (``< 1``: the error fell).
    """
    rows, rates = claims.diffusion_limit_table(cfg.a_values, cfg.sigma2, cfg.t, fit_from=cfg.fit_from,
                                               pde_support=cfg.pde_support, pde_t=cfg.pde_t, n_grid=cfg.n_grid)
    fit = [r for r in rows if r["a"] >= cfg.fit_from]
    worst = {f"{k}_last_over_first": fit[-1][k] / fit[0][k] for k in rates} if len(fit) >= 2 else {}
    monotone = {k: all(r2[k] < r1[k] for r1, r2 in zip(fit, fit[1:])) for k in rates}
    return dict(worst_ratios=worst, rates=rates, decreasing_over_fit_range=monotone, rows=rows)


def figure(res: dict, cfg: DiffusionLimitConfig):
    """Errors against a (log-log, fitted slopes in the legend) and p(t, ·) for a few a against the heat kernel."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    a = [r["a"] for r in res["rows"]]
    labels = {"density_sup": "sup |p - φ|", "density_l1": "‖p - φ‖₁ (+ atoms)", "velocity_sup": "sup_{|x|≤3sd} |v - x/2t|",
              "velocity_l2": "‖v - x/2t‖_{L²(p)}", "pde_l1": f"PDE: ‖u_tel - u_heat‖₁ (bump, t={cfg.pde_t:g})"}
    for k, lab in labels.items():
        if k in res["rates"]:
            ax[0].loglog(a, [r[k] for r in res["rows"]], marker="o", ms=3, label=f"{lab}: slope {res['rates'][k]:.2f}")
    aa = np.array([cfg.fit_from, max(a)])
    ax[0].loglog(aa, 1.0 / aa, color="k", ls=":", label="1/a")
    ax[0].set_xlabel("switching rate a (c² / a = σ² fixed)")
    ax[0].set_ylabel("error")
    ax[0].set_title(f"diffusion limit at t={cfg.t:g}, σ²={cfg.sigma2:g}; slopes fitted for a ≥ {cfg.fit_from:g}")
    ax[0].legend(fontsize=7)
    ax[0].grid(True, alpha=0.3)
    sd = math.sqrt(cfg.sigma2 * cfg.t)
    x = torch.linspace(-4 * sd, 4 * sd, 801, dtype=torch.float64)
    phi = torch.exp(-0.5 * (x / sd) ** 2) / (sd * math.sqrt(2 * math.pi))
    for av, col in zip((1.0, 5.0, 50.0), plt.cm.viridis(np.linspace(0.1, 0.8, 3))):
        kp = KacProcess(av, math.sqrt(cfg.sigma2 * av))
        ax[1].plot(x, kp.density(cfg.t, x), color=col, label=f"Kac density, a={av:g} (atoms {math.exp(-av * cfg.t):.2g})")
    ax[1].plot(x, phi, color="k", ls="--", label="heat kernel N(0, σ² t)")
    ax[1].set_xlabel("x")
    ax[1].set_title("continuous part of the Kac law vs the heat kernel")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    args, cfg, _ = _common.start(NAME, __doc__, DiffusionLimitConfig(), QUICK, argv)  # exact: no draws
    with _common.Stopwatch() as sw:
        res = run(cfg)
    cols = ["a", "c", "atom_mass", "density_sup", "density_l1", "velocity_sup", "velocity_l2"]
    _common.print_table(res["rows"], cols + (["pde_l1"] if "pde_l1" in res["rates"] else []),
                        f"errors against the diffusion limit (σ² = c²/a = {cfg.sigma2:g}, t = {cfg.t:g})")
    _common.print_table([dict(error=k, rate=v, decreasing=res["decreasing_over_fit_range"][k])
                         for k, v in res["rates"].items()], ["error", "rate", "decreasing"],
                        f"fitted rates (slope of log error vs log a, a >= {cfg.fit_from:g})")
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(res, cfg))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
