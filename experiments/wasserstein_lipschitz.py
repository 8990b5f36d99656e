"""Wasserstein-Lipschitz continuity of the Kac path (docs/mathematics.md §8) against its bounds, and the Brownian contrast.

Two measurements (all computed in ``kacnum.theory.claims``):

1. 1D, exact. ``W_p(μ_s, μ_t)`` of the Kac law from 0 for every pair ``s < t`` of a time grid and
   p = 1, 2, 4, from the exact quantile functions (``claims.kac_quantiles``: the exact CDF inverted by
   Newton steps; atoms exact), against ``c|t - s|``. Brownian contrast: ``σ|√t - √s| ‖Z‖_p``
   (``σ² = c²/a``, the diffusion limit) against the same ``c|t - s|``: unbounded as ``s, t → 0``.
2. d dimensions with data and schedules. ``W_p(ρ_s, ρ_t)`` of ``X_t = f(t) X0 + K_{g(t)}`` against
   ``|f(t) - f(s)| ‖X0‖_p + c√d |g(t) - g(s)|`` (d = 2): the product Kac law (data = {0}: the bound is
   ``c√d|t - s|``), and the 3×3 grid data with (f, g) = (linear, t) and (exp, t²). Coupled samples
   (same data points, same Kac paths) and exact OT (POT network simplex).
3. The isotropic flow (planar random flight, docs/mathematics.md §14). From 0: ``W_p(μ_s, μ_t)`` by the radial quantile
   coupling (``claims.flight_wasserstein_2d``: an upper bound of ``W_p``, equal to ``W_2``) against
   ``c|t - s|`` (speed ``c`` in the Euclidean norm; the 2D Kac product only has ``c√2|t - s|``), with the 2D
   Brownian contrast. With data: ``FlightPath`` on the same cases, against ``|Δf| ‖X0‖_p + c√(d/2) |Δg|``
   (coupled event-driven flights, exact OT).

    python experiments/wasserstein_lipschitz.py                 # default budget (~1 min)
    python experiments/wasserstein_lipschitz.py --quick         # < 30 s
    python experiments/wasserstein_lipschitz.py --paper-figures # also paper_figures/wasserstein_lipschitz.png
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.theory import claims  # noqa: E402
from kacnum.processes.kac import KacProcess  # noqa: E402
from kacnum.processes.flight import PlanarFlight  # noqa: E402
from kacnum.flows.paths import FlightPath, KacPath  # noqa: E402

NAME = "wasserstein_lipschitz"


@dataclass(frozen=True)
class WassersteinConfig(_common.GridSetting):
    """Budget and parameters beyond the shared Kac path and grid data (``--quick`` changes only the budget)."""

    times_1d: tuple = (0.0, 1e-3, 1e-2, 0.05, 0.1, 0.3, 1.0)
    ps_1d: tuple = (1.0, 2.0, 4.0)
    n_quantiles: int = 8192
    times_dd: tuple = (0.0, 0.01, 0.1, 0.3, 0.6, 1.0)
    ps_dd: tuple = (1.0, 2.0)
    n_dd: int = 999  # a multiple of the 9 support points
    cases_dd: tuple = (("product", "linear", "t"), ("grid", "linear", "t"), ("grid", "exp", "t2"))
    flight: bool = True


QUICK = dict(times_1d=(0.0, 1e-3, 0.1, 1.0), n_quantiles=2048, times_dd=(0.0, 0.1, 0.5, 1.0), n_dd=198)


def run(cfg: WassersteinConfig, generator: torch.Generator) -> dict:
    """Both measurements of the module docstring; returns the results dict (``worst_ratios`` on top)."""
    kp = KacProcess(cfg.a, cfg.c)
    rows_1d = claims.kac_wasserstein_1d(kp, cfg.times_1d, cfg.ps_1d, n=cfg.n_quantiles)
    grid_support, _ = claims.labelled_grid_support(cfg.spacing)
    rows_dd = []
    kinds = (("kac", KacPath), ("flight", FlightPath)) if cfg.flight else (("kac", KacPath),)
    for kind, cls in kinds:
        for data, f, g in cfg.cases_dd:
            support = torch.zeros(1, 2, dtype=torch.float64) if data == "product" else grid_support
            path = cls(cfg.a, cfg.c, f=f, g=g)
            case = f"{data}/f={f}/g={g}" if kind == "kac" else f"flight:{data}/f={f}/g={g}"
            for r in claims.kac_path_wasserstein(path, support, cfg.times_dd, cfg.ps_dd, cfg.n_dd, generator):
                rows_dd.append(dict(case=case, **r))
    rows_flight = claims.flight_wasserstein_2d(PlanarFlight(cfg.a, cfg.c), cfg.times_1d, cfg.ps_1d,
                                               n=cfg.n_quantiles) if cfg.flight else []
    worst = {f"kac_1d_p{int(p)}": claims.worst_ratio(r["ratio"] for r in rows_1d if r["p"] == p) for p in cfg.ps_1d}
    worst.update({f"brownian_1d_p{int(p)}": claims.worst_ratio(r["brownian_ratio"] for r in rows_1d if r["p"] == p)
                  for p in cfg.ps_1d})
    for kind in [k for k, _ in kinds]:
        for data, f, g in cfg.cases_dd:
            case = f"{data}/f={f}/g={g}" if kind == "kac" else f"flight:{data}/f={f}/g={g}"
            name = case if kind == "kac" else case.split(":", 1)[1]
            for p in cfg.ps_dd:
                worst[f"{kind}_2d_{name}_p{int(p)}"] = claims.worst_ratio(
                    r["ratio"] for r in rows_dd if r["case"] == case and r["p"] == p)
            worst[f"{kind}_2d_{name}_pathwise"] = claims.worst_ratio(
                r["pathwise_ratio"] for r in rows_dd if r["case"] == case)
    for p in (cfg.ps_1d if cfg.flight else ()):
        worst[f"flight_from0_p{int(p)}"] = claims.worst_ratio(r["ratio"] for r in rows_flight if r["p"] == p)
        worst[f"brownian_2d_p{int(p)}"] = claims.worst_ratio(r["brownian_ratio"] for r in rows_flight if r["p"] == p)
    return dict(worst_ratios=worst, rows_1d=rows_1d, rows_dd=rows_dd, rows_flight=rows_flight)


def figure(res: dict, cfg: WassersteinConfig):
    """Ratios to the bounds: 1D pairs (Kac vs Brownian, log scale) and the d = 2 cases."""
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = {1.0: "tab:blue", 2.0: "tab:orange", 4.0: "tab:green"}
    for p in cfg.ps_1d:
        rows = [r for r in res["rows_1d"] if r["p"] == p]
        ax[0].scatter([r["t"] - r["s"] for r in rows], [r["ratio"] for r in rows], s=18, color=colors.get(p),
                      label=f"Kac W_{p:g}/(c|t-s|)")
        ax[0].scatter([r["t"] - r["s"] for r in rows], [r["brownian_ratio"] for r in rows], s=18, marker="x",
                      color=colors.get(p), label=f"Brownian σ|√t-√s|‖Z‖_{p:g}/(c|t-s|)")
    ax[0].axhline(1.0, color="k", ls="--", lw=1)
    ax[0].set_xscale("log")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("|t - s| (all pairs of the time grid)")
    ax[0].set_ylabel("W_p / (c |t - s|)")
    ax[0].set_title(f"1D exact laws, a={cfg.a:g}, c={cfg.c:g}: bound 1")
    ax[0].legend(fontsize=7, ncol=2)
    markers = ["o", "s", "^", "v", "D", "P", "X"]
    cases = []
    for r in res["rows_dd"]:
        if r["case"] not in cases:
            cases.append(r["case"])
    for k, case in enumerate(cases):
        for p in cfg.ps_dd:
            rows = [r for r in res["rows_dd"] if r["case"] == case and r["p"] == p]
            ax[1].scatter([r["t"] - r["s"] for r in rows], [r["ratio"] for r in rows], s=18, marker=markers[k % 7],
                          label=f"{case}, p={p:g}", alpha=0.8)
    ax[1].axhline(1.0, color="k", ls="--", lw=1)
    ax[1].set_xscale("log")
    ax[1].set_ylim(0, 1.1)
    ax[1].set_xlabel("|t - s|")
    ax[1].set_ylabel("W_p / (|Δf| ‖X0‖_p + c√d |Δg|)")
    ax[1].set_title("d = 2, coupled samples, exact OT")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    args, cfg, gen = _common.start(NAME, __doc__, WassersteinConfig(), QUICK, argv)
    with _common.Stopwatch() as sw:
        res = run(cfg, gen)
    _common.print_table(res["rows_1d"], ["s", "t", "p", "w", "bound", "ratio", "brownian_w", "brownian_ratio"],
                        "1D Kac law from 0: W_p(μ_s, μ_t) against c|t - s| (claim: ratio <= 1)")
    _common.print_table(res["rows_dd"], ["case", "s", "t", "p", "w", "bound", "ratio", "pathwise_ratio"],
                        "d = 2: W_p(ρ_s, ρ_t) against |Δf| ‖X0‖_p + c√d |Δg| (flight: c√(d/2)) (claim: ratio <= 1)")
    if res["rows_flight"]:
        _common.print_table(res["rows_flight"], ["s", "t", "p", "w", "bound", "ratio", "brownian_w", "brownian_ratio"],
                            "planar flight from 0 (radial quantile coupling, = W_2): against c|t - s| (claim: ratio <= 1)")
    _common.print_worst_ratios(res["worst_ratios"], "worst ratios (Brownian: the contrast, not a claim)")
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(res, cfg))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
