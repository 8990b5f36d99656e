"""Guided Kac field: square-integrable along guided trajectories and within the bound of docs/mathematics.md §5.

Labelled finite data: the 3×3 grid, label = row (3 classes). The conditional fields are the exact Kac
marginal fields of each class (``KacPath.exact_velocity`` on the class's points), the unconditional one
the exact field of all points (``claims.ExactLabelledField``). For each guidance scale ``s`` the guided
field ``u_s = u_u + s (u_c - u_u)`` (``guidance.GuidedField``) is integrated from latent draws at T to 0
with AB-2 (``solvers.integrate``), and at every grid time ``guidance.guided_kinetic_energy`` records
``E|u_s|²`` and ``max |u_s|`` per coordinate. Bounds: ``(1 + 2|s - 1|) B(t)`` per coordinate with the Kac
speed bound ``B(t) = |f'(t)| sup|x0| + c |g'(t)|`` (``path.speed_bound``), and ``d ((1 + 2|s - 1|) B)²`` for
the energy. Also reported: the ratio to the bound built from the observed ``max(|u_c|, |u_u|)`` and
``∫ E|u_s|² dt`` (finite: square-integrable along the flow).

    python experiments/guidance_integrability.py                 # default budget (~1 min)
    python experiments/guidance_integrability.py --quick         # < 30 s
    python experiments/guidance_integrability.py --paper-figures # also paper_figures/guidance_integrability.png
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.theory import claims  # noqa: E402
from kacnum.flows.paths import KacPath  # noqa: E402

NAME = "guidance_integrability"


@dataclass(frozen=True)
class GuidanceConfig(_common.GridSetting):
    """Budget and parameters beyond the shared Kac path and grid data (``--quick`` changes only the budget)."""

    scales: tuple = (1.0, 1.2, 2.0, 4.0)
    n_samples: int = 2001
    n_steps: int = 100
    method: str = "ab2"


QUICK = dict(n_samples=300, n_steps=40)


def run(cfg: GuidanceConfig, generator: torch.Generator):
    """Rows per scale and per-time curves (see ``claims.guidance_integrability``)."""
    path = KacPath(cfg.a, cfg.c)
    support, labels = claims.labelled_grid_support(cfg.spacing)
    rows, curves = claims.guidance_integrability(path, support, labels, cfg.scales, cfg.n_samples, cfg.n_steps,
                                                 generator, method=cfg.method)
    worst = dict(guided_max_speed_bound=claims.worst_ratio(r["max_ratio"] for r in rows),
                 guided_energy_bound=claims.worst_ratio(r["energy_ratio"] for r in rows),
                 guided_max_speed_observed_bound=claims.worst_ratio(r["observed_ratio"] for r in rows))
    res = dict(worst_ratios=worst, rows=rows,
               curves={str(s): {k: v for k, v in c.items() if k in ("t", "energy", "max_abs", "bound")}
                       for s, c in curves.items()})
    return res, curves


def figure(curves: dict, cfg: GuidanceConfig, support: torch.Tensor):
    """E|u_s|² and max|u_s| against t per scale (with the bounds), and the final samples for the largest s."""
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    colors = plt.cm.plasma(np.linspace(0.05, 0.8, len(curves)))
    for (s, c), col in zip(curves.items(), colors):
        t = c["t"].numpy()
        ax[0].semilogy(t, c["energy"].numpy(), color=col, label=f"s={s:g}")
        ax[0].semilogy(t, 2 * c["bound"].numpy() ** 2, color=col, ls=":", lw=0.9)
        ax[1].plot(t, c["max_abs"].numpy(), color=col, label=f"s={s:g}")
        ax[1].plot(t, c["bound"].numpy(), color=col, ls=":", lw=0.9)
    ax[0].set_title("E|u_s|² along guided AB-2 trajectories (dotted: d((1+2|s-1|)B)²)")
    ax[1].set_title("max |u_s| per coordinate (dotted: (1+2|s-1|)B)")
    for a in ax[:2]:
        a.set_xlabel("t (T = 1 latent → 0 data)")
        a.legend(fontsize=7)
        a.grid(True, alpha=0.3)
    s_max = max(curves)
    c = curves[s_max]
    x, y = c["x"].numpy(), c["y"].numpy()
    s_one = min(curves, key=lambda v: abs(v - 1.0))
    x1 = curves[s_one]["x"].numpy()
    ax[2].scatter(x1[:, 0], x1[:, 1], s=4, color="0.6", label=f"s={s_one:g}")
    ax[2].scatter(x[:, 0], x[:, 1], s=4, c=y, cmap="viridis", label=f"s={s_max:g} (colour = label)")
    ax[2].scatter(support[:, 0], support[:, 1], marker="x", color="r", s=30, label="data")
    ax[2].set_aspect("equal")
    ax[2].set_title("samples at t = 0")
    ax[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _options(parser) -> None:
    parser.add_argument("--scales", type=cli.float_list(), default=None, metavar="S1,S2,...",
                        help="comma-separated guidance scales, finite numbers (default 1,1.2,2,4)")


def main(argv=None) -> dict:
    args, cfg, gen = _common.start(NAME, __doc__, GuidanceConfig(), QUICK, argv, options=_options)
    if args.scales is not None:
        cfg = replace(cfg, scales=args.scales)
    with _common.Stopwatch() as sw:
        res, curves = run(cfg, gen)
    _common.print_table(res["rows"], ["scale", "max_speed", "bound_at_t0", "max_ratio", "max_energy", "energy_ratio",
                                      "observed_ratio", "energy_integral", "nfe_model"],
                        "guided exact Kac fields: worst ratios over the trajectory (claim: <= 1)")
    _common.print_worst_ratios(res["worst_ratios"])
    support, _ = claims.labelled_grid_support(cfg.spacing)
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(curves, cfg, support))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
