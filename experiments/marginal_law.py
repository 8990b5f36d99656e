"""Does the probability-flow ODE of a path carry the path's marginals? (docs/mathematics.md §13)

A flow-matching sampler integrates ``dx/dt = u(t, x)`` backward from latents at ``T``, ``u`` the exact
marginal velocity ``E[u_t | x_t = x]``. For a path whose marginals have a smooth positive density and a
Lipschitz field, the flow pushes the law at ``T`` onto the law at every ``t`` (the continuity equation).
The Kac path on **finite data** is not such a path: the law of ``X_t = f X0 + K_g`` has atoms on the cone
faces of every data point, its field jumps across every face, and in backward time the face of point
``i``'s cone sweeps through the interior of point ``j``'s cone; there the exact dynamics send the share of
the mass that belongs to ``i`` onto ``i``'s face and let the rest go on, but a deterministic flow cannot
split the mass at one point. With Gaussian-mixture data (each point a ``N(x_i, σ² I)``) the law has no
atoms, the field is Lipschitz, and the flow is exact.

For the Kac, Gaussian (rectified flow) and VP paths the script measures, from exact latents and the
exact field (``exact_velocity(..., data_sigma=σ)``), with RK4 solved to convergence (``steps`` against
``2·steps``, reported):

* the share of the flow's end points at each data point (nearest point or mean) against what the data
  law gives (its weight for Dirac data; the same nearest-point rule on exact data draws for a mixture),
  with the χ² statistic and p-value (categories with fewer than 5 expected counts pooled), the Monte
  Carlo standard error of each share, and the same test on a subset at ``steps`` and ``2·steps``;
* ``W2`` between the flow's samples and exact samples of the path at several ``t`` (exact 1D formula,
  POT in 2D), beside the noise floor (``W2`` between independent exact samples of the same size, the mean
  over ``floor_repeats`` draws: on a multimodal law a single floor draw is dominated by the difference of
  its mode counts).

Cases: 1D, the two points ``±0.5`` with weights ``0.3 / 0.7`` (a σ sweep, and ``a`` with ``c²/a = 1``
fixed); 2D, 32 seeded points uniform in ``[-1, 1]²`` with equal weights and with unequal weights
(``w_i ∝ i``), Dirac and ``σ = 0.1``. In 2D also the isotropic Kac flow (``flight``: ``FlightPath``, the
planar random flight of docs/mathematics.md §14, same ``a`` and ``c``), whose finite-data law has a circle atom per point
instead of edge and corner atoms.

    python experiments/marginal_law.py              # default budget
    python experiments/marginal_law.py --quick      # < 40 s
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, VPPath  # noqa: E402
from kacnum.flows.solvers import integrate, uniform_grid  # noqa: E402
from kacnum.theory.stability import ExactField, piecewise_linear  # noqa: E402
from kacnum.theory.transport import wasserstein_1d, wasserstein_empirical  # noqa: E402

NAME = "marginal_law"
PATHS = ("kac", "gaussian", "vp")
#: the 2D cases also run the isotropic flow (planar random flight; needs an even dimension)
PATHS_2D = PATHS + ("flight",)


@dataclass(frozen=True)
class MarginalLawConfig:
    """Budget and parameters (``--quick`` changes only the budget)."""

    a: float = 9.0
    c: float = 3.0
    T: float = 1.0
    t_min: float = 1e-3
    steps_1d: int = 256
    steps_2d: int = 128
    samples_1d: int = 8000
    samples_2d: int = 1000
    conv_samples: int = 300
    sigmas_1d: tuple = (0.0, 0.01, 0.03, 0.1, 0.2)
    sigmas_2d: tuple = (0.0, 0.1)
    a_sweep: tuple = (1.0, 4.0, 9.0, 36.0, 100.0)
    t_checks: tuple = (0.5, 0.25, 0.1, 0.02)
    w2_samples_2d: int = 1000
    n_support_2d: int = 32
    data_seed: int = 0
    latent_seed: int = 1
    ref_samples: int = 400000
    floor_repeats: int = 5


QUICK = dict(steps_1d=128, steps_2d=48, samples_1d=3000, samples_2d=300, conv_samples=100, sigmas_1d=(0.0, 0.03, 0.2),
             a_sweep=(1.0, 9.0, 100.0), t_checks=(0.5, 0.1), w2_samples_2d=300, ref_samples=100000, floor_repeats=3)


def make_path(name: str, a: float, c: float, T: float):
    if name == "kac":
        return KacPath(a=a, c=c, T=T)
    if name == "flight":
        return FlightPath(a=a, c=c, T=T)
    if name == "gaussian":
        return GaussianPath(T=T)
    return VPPath(T=T)


def _draw_data(support: torch.Tensor, weights: torch.Tensor, sigma: float, n: int, gen: torch.Generator):
    k = torch.multinomial(weights, n, replacement=True, generator=gen)
    x0 = support[k].clone()
    if sigma > 0:
        x0 = x0 + sigma * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    return x0, k


def _nearest(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, support).argmin(dim=1)


def _w2(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape[1] == 1:
        return wasserstein_1d(a[:, 0], b[:, 0], p=2)
    return wasserstein_empirical(a, b, p=2, exact_max=5000)


def chi2_test(counts: torch.Tensor, expected: torch.Tensor, min_expected: float = 5.0) -> tuple:
    """Pearson χ² of ``counts`` against the probabilities ``expected``: ``(chi2, dof, p)``.

    Categories whose expected count is below ``min_expected`` are pooled (smallest first) until every
    pooled category reaches it, as the χ² approximation needs; categories of probability 0 are dropped.
    """
    n = float(counts.sum())
    keep = expected > 0
    c = counts[keep].double()
    e = expected[keep].double() * n
    order = torch.argsort(e)
    c, e = c[order].tolist(), e[order].tolist()
    pc, pe, acc_c, acc_e = [], [], 0.0, 0.0
    for ci, ei in zip(c, e):
        acc_c, acc_e = acc_c + ci, acc_e + ei
        if acc_e >= min_expected:
            pc.append(acc_c)
            pe.append(acc_e)
            acc_c = acc_e = 0.0
    if acc_e > 0:
        if pe:
            pc[-1] += acc_c
            pe[-1] += acc_e
        else:
            pc, pe = [acc_c], [acc_e]
    chi2 = float(sum((a - b) ** 2 / b for a, b in zip(pc, pe)))
    dof = len(pe) - 1
    return chi2, dof, float(stats.chi2.sf(chi2, dof)) if dof > 0 else float("nan")


def run_case(label: str, path_name: str, support: torch.Tensor, weights: torch.Tensor, sigma: float,
             cfg: MarginalLawConfig, *, a: float, c: float, samples: int, steps: int, w2_samples: int) -> dict:
    """The flow from exact latents, its convergence, the end-point shares and ``W2`` along the way."""
    path = make_path(path_name, a, c, cfg.T)
    d = support.shape[1]
    gen = torch.Generator().manual_seed(cfg.latent_seed)
    latents = path.sample_latent((samples, d), generator=gen, dtype=torch.float64)
    field = ExactField(path, support, weights, data_sigma=sigma)
    grid = uniform_grid(cfg.T, cfg.t_min, steps)
    res = integrate(field, latents, grid, "rk4", return_trajectory=True)
    end = res.trajectory[-1]
    # convergence: twice the steps on the first conv_samples latents
    nc = min(cfg.conv_samples, samples)
    fine = integrate(field, latents[:nc], uniform_grid(cfg.T, cfg.t_min, 2 * steps), "rk4").x
    conv_diff = (fine - end[:nc]).norm(dim=1)
    cls = _nearest(end, support)
    cls_fine = _nearest(fine, support)
    counts = torch.bincount(cls, minlength=support.shape[0]).double()
    # expected shares under the data law, by the same nearest-point rule
    rgen = torch.Generator().manual_seed(cfg.latent_seed + 1000)
    if sigma > 0:
        ref, _ = _draw_data(support, weights, sigma, cfg.ref_samples, rgen)
        expected = torch.bincount(_nearest(ref, support), minlength=support.shape[0]).double() / cfg.ref_samples
    else:
        expected = weights / weights.sum()
    chi2, dof, pval = chi2_test(counts, expected)
    # the same test on the conv subset at N and 2N steps: the verdict must not depend on the step count
    chi2_n = chi2_test(torch.bincount(cls[:nc], minlength=support.shape[0]).double(), expected)
    chi2_2n = chi2_test(torch.bincount(cls_fine, minlength=support.shape[0]).double(), expected)
    share = (counts / samples).tolist()
    share_se = [math.sqrt(max(p * (1 - p), 1e-300) / samples) for p in expected.tolist()]
    # W2 of the flow against exact path samples at several t, and the noise floor
    w2 = []
    dgen = torch.Generator().manual_seed(cfg.latent_seed + 2000)
    n = min(w2_samples, samples)
    for tc in tuple(cfg.t_checks) + (cfg.t_min,):
        xt_flow = piecewise_linear(grid, res.trajectory[:, :n], torch.tensor([tc], dtype=torch.float64))[0]
        tt = torch.full((n,), tc, dtype=torch.float64)
        draws = [path.sample(_draw_data(support, weights, sigma, n, dgen)[0], tt, dgen).x_t
                 for _ in range(cfg.floor_repeats + 1)]
        # W2(flow, exact) against the spread of W2(exact, exact'): on multimodal laws one floor draw is itself
        # noisy (it is dominated by the difference of the mode counts), so several are taken
        wf = float(np.mean([_w2(xt_flow, e) for e in draws[1:]]))
        floors = [_w2(draws[0], e) for e in draws[1:]]
        w0 = float(np.mean(floors))
        w2.append({"t": tc, "flow_vs_exact": wf, "noise_floor": w0, "noise_floor_max": float(np.max(floors)),
                   "ratio": wf / w0 if w0 > 0 else float("inf")})
    out = {"case": label, "path": path_name, "sigma": sigma, "a": a, "c": c, "d": d, "samples": samples,
           "steps": steps, "n_support": int(support.shape[0]),
           "convergence": {"vs_steps": 2 * steps, "samples": nc, "max_endpoint_diff": float(conv_diff.max()),
                           "rms_endpoint_diff": float(conv_diff.pow(2).mean().sqrt()),
                           "class_changes": float((cls[:nc] != cls_fine).double().mean()),
                           "p_value_subset_steps": chi2_n[2], "p_value_subset_2x_steps": chi2_2n[2],
                           "share_first_point_fine": float((cls_fine == 0).double().mean())},
           "share": share, "expected_share": expected.tolist(), "share_se": share_se,
           "chi2": chi2, "dof": dof, "p_value": pval, "w2": w2,
           "max_w2_ratio": max(r["ratio"] for r in w2)}
    return out


def run(cfg: MarginalLawConfig, log) -> dict:
    one_d = torch.tensor([[-0.5], [0.5]], dtype=torch.float64)
    w_1d = torch.tensor([0.3, 0.7], dtype=torch.float64)
    g = torch.Generator().manual_seed(cfg.data_seed)
    sup2 = torch.rand(cfg.n_support_2d, 2, generator=g, dtype=torch.float64) * 2.0 - 1.0
    w_eq = torch.full((cfg.n_support_2d,), 1.0 / cfg.n_support_2d, dtype=torch.float64)
    w_uneq = torch.arange(1, cfg.n_support_2d + 1, dtype=torch.float64)
    w_uneq = w_uneq / w_uneq.sum()
    cases = []

    def add(*args, **kw):
        r = run_case(*args, **kw)
        cases.append(r)
        log(f"{r['case']:34s} share[0] {r['share'][0]:.4f} (expected {r['expected_share'][0]:.4f} ± "
            f"{r['share_se'][0]:.4f})  chi2 {r['chi2']:9.1f} (dof {r['dof']}, p {r['p_value']:.2g})  max W2/floor "
            f"{r['max_w2_ratio']:.2f}  conv {r['convergence']['max_endpoint_diff']:.1e}")
        return r

    for name in PATHS:
        for s in cfg.sigmas_1d:
            add(f"1d/{name}/sigma{s:g}", name, one_d, w_1d, s, cfg, a=cfg.a, c=cfg.c, samples=cfg.samples_1d,
                steps=cfg.steps_1d, w2_samples=cfg.samples_1d)
    for a in cfg.a_sweep:
        c = math.sqrt(a * cfg.c ** 2 / cfg.a)
        if a == cfg.a:
            continue
        add(f"1d/kac_a{a:g}/sigma0", "kac", one_d, w_1d, 0.0, cfg, a=a, c=c, samples=cfg.samples_1d,
            steps=cfg.steps_1d, w2_samples=cfg.samples_1d)
    for wname, w in (("equal", w_eq), ("unequal", w_uneq)):
        for name in PATHS_2D:
            for s in cfg.sigmas_2d:
                if wname == "unequal" and s > 0:
                    continue
                add(f"2d/{wname}/{name}/sigma{s:g}", name, sup2, w, s, cfg, a=cfg.a, c=cfg.c,
                    samples=cfg.samples_2d, steps=cfg.steps_2d, w2_samples=cfg.w2_samples_2d)
    by = {r["case"]: r for r in cases}
    kac0 = by[f"1d/kac/sigma{0:g}"]
    gau0 = by[f"1d/gaussian/sigma{0:g}"]
    sigma_curve = [{"sigma": s, "kac_share": by[f"1d/kac/sigma{s:g}"]["share"][0],
                    "expected": by[f"1d/kac/sigma{s:g}"]["expected_share"][0],
                    "bias": by[f"1d/kac/sigma{s:g}"]["share"][0] - by[f"1d/kac/sigma{s:g}"]["expected_share"][0],
                    "se": by[f"1d/kac/sigma{s:g}"]["share_se"][0],
                    "gaussian_bias": by[f"1d/gaussian/sigma{s:g}"]["share"][0]
                    - by[f"1d/gaussian/sigma{s:g}"]["expected_share"][0]}
                   for s in cfg.sigmas_1d]
    a_curve = []
    for a in cfg.a_sweep:
        r = kac0 if a == cfg.a else by[f"1d/kac_a{a:g}/sigma0"]
        a_curve.append({"a": a, "c": r["c"], "share": r["share"][0], "bias": r["share"][0] - 0.3, "se": r["share_se"][0]})
    summary = {
        "one_d_two_points": {"kac_share_0.3_point": kac0["share"][0], "gaussian_share_0.3_point": gau0["share"][0],
                             "vp_share_0.3_point": by["1d/vp/sigma0"]["share"][0], "mc_se": kac0["share_se"][0],
                             "kac_p_value": kac0["p_value"], "gaussian_p_value": gau0["p_value"]},
        "two_d_p_values": {r["case"]: r["p_value"] for r in cases if r["case"].startswith("2d/")},
        "bias_vs_sigma": sigma_curve, "bias_vs_a": a_curve,
    }
    return {"cases": cases, "summary": summary}


def figure(res: dict, cfg: MarginalLawConfig):
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.9))
    sc = res["summary"]["bias_vs_sigma"]
    x = np.arange(len(sc))
    ax = axes[0]
    ax.errorbar(x - 0.05, [r["bias"] for r in sc], yerr=[2 * r["se"] for r in sc], fmt="o-", capsize=3, label="Kac")
    ax.errorbar(x + 0.05, [r["gaussian_bias"] for r in sc], yerr=[2 * r["se"] for r in sc], fmt="s--", capsize=3,
                label="Gaussian (rectified flow)")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, [f"{r['sigma']:g}" for r in sc])
    ax.set_xlabel("data smoothing sigma (0 = Dirac data)")
    ax.set_ylabel("flow share - data share of the 0.3 point")
    ax.set_title("1D, points ±0.5, weights 0.3/0.7 (±2 MC s.e.)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.25)
    ac = res["summary"]["bias_vs_a"]
    ax = axes[1]
    ax.errorbar([r["a"] for r in ac], [r["bias"] for r in ac], yerr=[2 * r["se"] for r in ac], fmt="o-", capsize=3)
    ax.set_xscale("log")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("switching rate a (c²/a = 1 fixed)")
    ax.set_ylabel("share bias of the 0.3 point (Dirac data)")
    ax.set_title("Kac, Dirac data: towards the diffusion limit", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax = axes[2]
    rows = [r for r in res["cases"] if r["case"].startswith("2d/")]
    ps = [max(r["p_value"], 1e-300) for r in rows]
    ax.barh(range(len(rows)), -np.log10(ps), color=["C0" if "/kac/" in r["case"] else "C3" if "/flight/" in r["case"] else "C1" if "gaussian" in r["case"]
                                                    else "C2" for r in rows])
    ax.axvline(-math.log10(0.01), color="k", lw=0.8, ls="--", label="p = 0.01")
    ax.set_yticks(range(len(rows)), [r["case"][3:] for r in rows], fontsize=7)
    ax.set_xlabel("-log10 p (chi2 of end-point shares against the weights)")
    ax.set_title("2D, 32 points", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> dict:
    # the draws come from cfg.data_seed and cfg.latent_seed (fixed: the figures compare cases), not --seed
    args, cfg, _ = _common.start(NAME, __doc__, MarginalLawConfig(), QUICK, argv)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    log(f"marginal_law: {'quick' if args.quick else 'default'} budget; Kac (a={cfg.a:g}, c={cfg.c:g}), Gaussian, VP; "
        f"1D two points and 2D 32 points; RK4 {cfg.steps_1d} (1D) / {cfg.steps_2d} (2D) steps")
    with _common.Stopwatch() as sw:
        res = run(cfg, log)
    cols = ["case", "share0", "expected0", "se0", "chi2", "dof", "p_value", "max_w2_ratio", "conv_max"]
    table = [dict(case=r["case"], share0=r["share"][0], expected0=r["expected_share"][0], se0=r["share_se"][0],
                  chi2=r["chi2"], dof=r["dof"], p_value=r["p_value"], max_w2_ratio=r["max_w2_ratio"],
                  conv_max=r["convergence"]["max_endpoint_diff"]) for r in res["cases"]]
    title = ("end-point share of the first data point (1D: the 0.3 point), chi2 against the data law, max over t of "
             "W2(flow, exact) / noise floor, RK4 convergence (max end-point change at twice the steps)")
    text = _common.print_table(table, cols, title)
    md = [f"# Marginal law of the probability-flow ODE (`{_common.shown_command(NAME, argv)}`)", "",
          "```", text, "```", "",
          "Share of the flow's end points at the first point (1D: the 0.3 point) against the data smoothing sigma "
          "(Kac | Gaussian bias, MC s.e.):", ""]
    md += [f"- sigma = {r['sigma']:g}: Kac {r['kac_share']:.4f} (bias {r['bias']:+.4f}), Gaussian bias "
           f"{r['gaussian_bias']:+.4f}, s.e. {r['se']:.4f}" for r in res["summary"]["bias_vs_sigma"]]
    md += ["", "Against the switching rate a (c^2/a = 1, Dirac data):", ""]
    md += [f"- a = {r['a']:g}, c = {r['c']:.3g}: share {r['share']:.4f} (bias {r['bias']:+.4f}, s.e. {r['se']:.4f})"
           for r in res["summary"]["bias_vs_a"]]
    md += ["", "Convergence (2D): fraction of the subset whose nearest point changes between N and 2N RK4 steps, "
           "and the p-value at N and 2N on that subset:", ""]
    md += [f"- {r['case']}: class changes {r['convergence']['class_changes']:.3f}, p {r['convergence']['p_value_subset_steps']:.3g}"
           f" (N) / {r['convergence']['p_value_subset_2x_steps']:.3g} (2N)" for r in res["cases"] if r["case"].startswith("2d/")]
    _common.write_text(f"{NAME}_results.md", "\n".join(md) + "\n", args.out,
                       _common.PAPER_FIGURES if args.paper_figures else None)
    s = res["summary"]["one_d_two_points"]
    print(f"1D two points: Kac sends {s['kac_share_0.3_point']:.4f} of the mass to the 0.3 point, Gaussian "
          f"{s['gaussian_share_0.3_point']:.4f}, VP {s['vp_share_0.3_point']:.4f} (MC s.e. {s['mc_se']:.4f})")
    return _common.finish(NAME, args, cfg, res, sw.seconds, figure(res, cfg))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
