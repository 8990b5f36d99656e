"""Theorem 8 (endpoint → path stability of few-step students), measured on finite data (SPEC §8).

Data: ``n_support`` seeded points uniform in ``[-1, 1]^d`` (``d = 2`` by default; 8 and 32 work),
uniform weights, so the exact marginal velocity of every path is known
(:meth:`kacnum.paths.ProbabilityPath.exact_velocity`). Time runs from the latent at ``T = 1`` to the
data end ``t_min`` (the SAME ``t_min`` for every path; default 1e-3, since the VP field needs
``t > 0``).

For each path (Kac flow ``a = 9, c = 3``; Gaussian flow matching; VP diffusion) the script

1. integrates the teacher: RK4 on the exact field with ``teacher_steps`` uniform steps from the same
   ``samples`` latents, kept at every step; its self-convergence is measured against ``teacher_steps/2``
   steps on ``conv_samples`` of the latents;
2. runs the students ``M = 1, 2, 4, ..., 64``: Euler on the exact field (``--vp-solver ddim``: DDIM on
   the exact ε for VP, the VP sampler; ``euler`` for plain Euler on its probability-flow field);
3. (Kac by default, ``--distill-paths``) fits an MLP to the exact field, then distils the exact-field
   RK4 teacher into ``M = 8, 4, 2, 1``-step Euler students with :class:`kacnum.distill.Distiller`
   (staged ``K0 → 8 → 4 → 2 → 1`` from teacher roll-outs; ``--distill-schedule direct`` trains each
   ``M`` from the exact teacher instead);
4. measures for every student, on a τ grid of ``n_tau`` points (student paths piecewise linear between
   their steps, teacher from its fine trajectory): the coupled RMS error ``sqrt(mean_b |Y_τ - X_τ|²)``
   (same latents) and its sup over τ (also restricted to ``τ >= t_cut``), the median over samples of
   the per-sample sup, the fraction of samples sent to another data point than the teacher's
   (``mode_mismatch``), and ``W2`` (POT, exact) at the end point and at every ``w2_stride``-th τ (plus
   the coupled argmax), on the first ``w2_samples``;
5. fits the log-log slope of the sup path error against ``M`` (``M >= fit_min_m``) with a paired
   bootstrap interval over the latents (whole path, ``τ >= t_cut``, and the median sample), the
   constants ``C`` in ``err ≈ C/M`` per path, and the correlation between endpoint ``W2`` and
   whole-path ``W2`` (sup and τ-average) across all students;
6. checks the per-interval bound ``sup_τ W2 ≤ sqrt(endpoint MSE) + A Δ²/8`` for the distilled students
   started on the teacher (``A`` = max acceleration of the teacher on the interval, by second
   differences), and the sharper chord bound.

Outputs in ``--out`` (default ``runs/theorem8``): ``config.json``, ``theorem8.json`` (= ``results.json``)
with top-level ``slope``, ``slope_ci`` (Kac, whole path, RMS), ``slope_restricted``, ``slope_median``,
``correlation``, ``constants``, ``equal_m``, ``bound_worst_ratio``, ``rows`` and ``wall_time_s``, and
``theorem8_rate.png``, ``theorem8_correlation.png``, ``theorem8_trajectories.png``
(``--paper-figures`` also writes them to ``paper_figures/``).

    python experiments/theorem8.py --quick --out runs/theorem8_quick     # < 60 s on 2 cores
    python experiments/theorem8.py                                       # < 5 min on 2 cores
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from kacnum.checkpoint import save_json  # noqa: E402
from kacnum.distill import DistillConfig  # noqa: E402
from kacnum.models.mlp import MLP  # noqa: E402
from kacnum.paths import GaussianPath, KacPath, VPPath  # noqa: E402
from kacnum.solvers import uniform_grid  # noqa: E402
from kacnum.stability import (  # noqa: E402
    ExactField,
    ExactTeacherDistiller,
    bootstrap_slope,
    coupled_sq_errors,
    fit_loglog_slope,
    fit_velocity_mlp,
    interval_bound_check,
    loglog_correlation,
    mode_mismatch,
    path_error_summary,
    piecewise_linear,
    rate_constant,
    student_states,
    teacher_trajectory,
    w2_along_path,
)

PATHS = ("kac", "gaussian", "vp")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Theorem8Config:
    """Everything one run depends on (``--quick`` changes only the budget fields)."""

    dim: int = 2
    n_support: int = 32
    data_seed: int = 0
    latent_seed: int = 1
    paths: tuple = PATHS
    kac_a: float = 9.0
    kac_c: float = 3.0
    T: float = 1.0
    t_min: float = 1e-3
    t_cut: float = 0.2
    vp_solver: str = "ddim"
    samples: int = 1000
    w2_samples: int = 500
    teacher_steps: int = 768
    conv_samples: int = 250
    n_tau: int = 193
    w2_stride: int = 12
    ms: tuple = (1, 2, 4, 8, 16, 32, 64)
    fit_min_m: int = 4
    n_boot: int = 1000
    # distillation
    distill_paths: tuple = ("kac",)
    distill_ms: tuple = (8, 4, 2, 1)
    distill_schedule: str = "staged"
    distill_teacher_steps: int = 128
    distill_steps: int = 600
    distill_batch: int = 256
    distill_lr: float = 1e-3
    distill_pool: int = 2048
    distill_ema: float = 0.99
    mlp_hidden: int = 128
    mlp_depth: int = 3
    fit_points: int = 16384
    fit_steps: int = 1000
    fit_lr: float = 2e-3
    bound_sub_points: int = 8
    seed: int = 0
    device: str = "cpu"
    quick: bool = False

    def __post_init__(self):
        if not set(self.paths) <= set(PATHS) or not self.paths:
            raise ValueError(f"paths must be a non-empty subset of {PATHS}, got {self.paths!r}")
        if not set(self.distill_paths) <= set(self.paths):
            raise ValueError(f"distill_paths must be a subset of paths {self.paths!r}, got {self.distill_paths!r}")
        if self.vp_solver not in ("ddim", "euler"):
            raise ValueError(f"vp_solver must be 'ddim' or 'euler', got {self.vp_solver!r}")
        if self.distill_schedule not in ("staged", "direct"):
            raise ValueError(f"distill_schedule must be 'staged' or 'direct', got {self.distill_schedule!r}")
        if not 0.0 < self.t_min < self.T:
            raise ValueError(f"t_min must lie in (0, T) (the VP field needs t > 0), got {self.t_min!r}")
        if not self.t_min <= self.t_cut < self.T:
            raise ValueError(f"t_cut must lie in [t_min, T), got {self.t_cut!r}")
        for name in ("dim", "n_support", "samples", "w2_samples", "teacher_steps", "conv_samples", "n_tau",
                     "w2_stride", "n_boot", "distill_teacher_steps", "distill_steps", "distill_batch",
                     "distill_pool", "mlp_hidden", "mlp_depth", "fit_points", "fit_steps", "bound_sub_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.teacher_steps % 2:
            raise ValueError(f"teacher_steps must be even (its self-convergence uses half), got {self.teacher_steps}")
        if self.n_tau < 3:
            raise ValueError(f"n_tau must be >= 3, got {self.n_tau}")
        if len(self.ms) < 2 or any(not isinstance(m, int) or m < 1 for m in self.ms):
            raise ValueError(f"ms must hold >= 2 integers >= 1, got {self.ms!r}")
        if sum(m >= self.fit_min_m for m in self.ms) < 2:
            raise ValueError(f"fit_min_m={self.fit_min_m} leaves fewer than 2 step counts of {self.ms!r}")
        if self.distill_paths:
            dm = tuple(sorted(self.distill_ms, reverse=True))
            if not dm or any(self.distill_teacher_steps % m for m in dm):
                raise ValueError(f"distill_ms must be non-empty and divide distill_teacher_steps, got {self.distill_ms!r}")
            if self.distill_schedule == "staged" and any(a % b for a, b in zip(dm, dm[1:])):
                raise ValueError(f"staged distill_ms must each divide the previous one, got {dm!r}")


QUICK = dict(samples=400, w2_samples=250, teacher_steps=192, conv_samples=150, n_tau=97, w2_stride=12,
             n_boot=400, distill_teacher_steps=32, distill_steps=80, distill_batch=128, distill_pool=512,
             mlp_hidden=64, mlp_depth=2, fit_points=4096, fit_steps=200, bound_sub_points=4, quick=True)


# ------------------------------------------------------------------------------------------------ setup


def make_support(dim: int, n: int, seed: int) -> torch.Tensor:
    """``n`` points uniform in ``[-1, 1]^dim`` from ``seed``: ``(n, dim)`` float64."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=gen, dtype=torch.float64) * 2.0 - 1.0


def make_path(name: str, cfg: Theorem8Config):
    if name == "kac":
        return KacPath(a=cfg.kac_a, c=cfg.kac_c, T=cfg.T)
    if name == "gaussian":
        return GaussianPath(T=cfg.T)
    return VPPath(T=cfg.T)


def _stamp(msg: str, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ measurement


def measure_student(name: str, kind: str, m: int, times: torch.Tensor, states: torch.Tensor, teacher_tau: torch.Tensor,
                    taus: torch.Tensor, cfg: Theorem8Config, nfe: int, support: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """One student's row and its coupled squared errors ``(Q, B)``."""
    y_tau = piecewise_linear(times, states, taus)
    sq = coupled_sq_errors(y_tau, teacher_tau)
    pe = path_error_summary(sq, taus, cfg.t_cut)
    q = taus.numel()
    regular = sorted(set(range(0, q, cfg.w2_stride)) | {q - 1})
    idx = sorted(set(regular) | {int(pe.rms.argmax())})
    w2 = w2_along_path(y_tau, teacher_tau, idx, n_samples=cfg.w2_samples)
    on_regular = np.isin(np.asarray(idx), np.asarray(regular))
    w2_taus = taus[idx]
    keep = (w2_taus >= cfg.t_cut).numpy()
    j = int(np.argmax(w2))
    row = {
        "path": name, "kind": kind, "M": m, "nfe": nfe,
        "endpoint_w2": float(w2[-1]),
        "path_w2_sup": float(w2[j]), "path_w2_argmax_tau": float(w2_taus[j]),
        "path_w2_sup_restricted": float(w2[keep].max()) if keep.any() else float("nan"),
        "path_w2_mean": float(w2[on_regular].mean()),
        "coupled_endpoint_rms": pe.endpoint, "coupled_sup": pe.sup, "coupled_argmax_tau": pe.argmax_tau,
        "coupled_sup_restricted": pe.sup_restricted,
        "median_sample_sup": float(torch.quantile(sq.amax(dim=0).sqrt(), 0.5)),
        "mode_mismatch": mode_mismatch(y_tau[-1], teacher_tau[-1], support),
        "path_over_endpoint_w2": float(w2[j] / w2[-1]) if w2[-1] > 0 else float("inf"),
    }
    return row, sq


def run_teacher(name: str, path, field, latents: torch.Tensor, taus: torch.Tensor, cfg: Theorem8Config) -> tuple:
    grid = uniform_grid(cfg.T, cfg.t_min, cfg.teacher_steps, device=latents.device)
    t0 = time.perf_counter()
    teacher = teacher_trajectory(field, latents, grid, "rk4", progress=True)
    wall = time.perf_counter() - t0
    n = min(cfg.conv_samples, latents.shape[0])
    half = teacher_trajectory(field, latents[:n], uniform_grid(cfg.T, cfg.t_min, cfg.teacher_steps // 2,
                                                               device=latents.device), "rk4")
    sq = coupled_sq_errors(half.at(taus), teacher.at(taus)[:, :n])
    conv = path_error_summary(sq, taus, cfg.t_cut)
    keep = teacher.grid >= cfg.t_cut
    acc = teacher.accel[1:-1]
    info = {
        "method": "rk4", "steps": cfg.teacher_steps, "nfe": teacher.nfe, "wall_s": wall,
        "self_convergence": {"vs_steps": cfg.teacher_steps // 2, "samples": n, "endpoint_rms": conv.endpoint,
                             "sup_rms": conv.sup, "sup_rms_restricted": conv.sup_restricted},
        "max_speed": teacher.max_speed(),
        "max_accel": float(acc.max()),
        "median_node_accel": float(acc.median()),
        "max_accel_restricted": float(teacher.accel[keep][1:].max()) if int(keep.sum()) > 2 else float("nan"),
    }
    return teacher, info


def run_distillation(name: str, path, support: torch.Tensor, exact: ExactField, cfg: Theorem8Config, device,
                     t0: float) -> tuple[list, dict]:
    """Fit an MLP to the exact field, then distil. Returns ``([(M, distiller, stage)], info)``."""
    torch.manual_seed(cfg.seed)
    model = MLP(dim=cfg.dim, hidden=cfg.mlp_hidden, depth=cfg.mlp_depth, T=cfg.T).to(device)
    fit = fit_velocity_mlp(model, path, support, exact, n_points=cfg.fit_points, steps=cfg.fit_steps,
                           lr=cfg.fit_lr, t_min=cfg.t_min, seed=cfg.seed, progress=True)
    _stamp(f"{name}: MLP fitted to the exact field, mse {fit['final_mse']:.3g}", t0)
    data = support.to(device=device, dtype=torch.float32)
    ms = tuple(sorted(cfg.distill_ms, reverse=True))
    base = dict(steps_per_stage=cfg.distill_steps, batch_size=cfg.distill_batch, lr=cfg.distill_lr,
                lr_schedule="cosine", ema_decay=cfg.distill_ema, source="rollout", teacher_method="rk4",
                p_uncond=0.0, t_end=cfg.t_min, rollout_pool=cfg.distill_pool,
                rollout_refresh=max(cfg.distill_steps, 1), seed=cfg.seed, log_every=10)
    students, hist = [], []
    schedules = [(cfg.distill_teacher_steps,) + ms] if cfg.distill_schedule == "staged" else \
        [(cfg.distill_teacher_steps, m) for m in ms]
    for stages in schedules:
        d = ExactTeacherDistiller(model, exact, path, data, config=DistillConfig(stages=stages, **base))
        h = d.run(progress=True)
        for i, m in enumerate(stages[1:], start=1):
            students.append((m, d, i))
        hist.extend({k: v for k, v in e.items() if k != "losses"} for e in h)
        _stamp(f"{name}: distilled {' -> '.join(map(str, stages))}", t0)
    return students, {"mlp_fit_mse": fit["final_mse"], "stages": hist}


def run(cfg: Theorem8Config, progress_t0: Optional[float] = None) -> dict:
    t0 = time.perf_counter() if progress_t0 is None else progress_t0
    device = torch.device(cfg.device)
    support = make_support(cfg.dim, cfg.n_support, cfg.data_seed).to(device)
    taus = uniform_grid(cfg.T, cfg.t_min, cfg.n_tau - 1)
    rows, slopes, teachers, distill_info, bounds, traj_plot = [], {}, {}, {}, {}, {}
    sq_by_path: dict = {}
    for name in cfg.paths:
        path = make_path(name, cfg)
        gen = torch.Generator(device="cpu").manual_seed(cfg.latent_seed)
        latents = path.sample_latent((cfg.samples, cfg.dim), generator=gen, dtype=torch.float64).to(device)
        exact = ExactField(path, support)
        teacher, info = run_teacher(name, path, exact, latents, taus, cfg)
        teachers[name] = info
        _stamp(f"{name}: teacher RK4 x{cfg.teacher_steps} ({info['wall_s']:.1f}s), self-convergence "
               f"{info['self_convergence']['sup_rms']:.2e}", t0)
        teacher_tau = teacher.at(taus).cpu()
        solver = cfg.vp_solver if name == "vp" else "euler"
        student_field = ExactField(path, support, quantity="epsilon") if solver == "ddim" else exact
        sq_by_path[name] = {}
        traj_plot[name] = {"teacher": teacher.states[:, :12].cpu(), "teacher_grid": teacher.grid.cpu()}
        for m in cfg.ms:
            grid = uniform_grid(cfg.T, cfg.t_min, m, device=device)
            st = student_states(student_field, latents, grid, solver,
                                alpha_bar=path.alpha_bar if solver == "ddim" else None)
            row, sq = measure_student(name, solver, m, grid.cpu(), st.cpu(), teacher_tau, taus, cfg, nfe=m,
                                      support=support.cpu())
            rows.append(row)
            sq_by_path[name][m] = sq
            if m == 4:
                traj_plot[name]["euler"] = (grid.cpu(), st[:, :12].cpu())
        _stamp(f"{name}: {len(cfg.ms)} {solver} students measured", t0)
        if name in cfg.distill_paths:
            students, dinfo = run_distillation(name, path, support, exact, cfg, device, t0)
            distill_info[name] = dinfo
            sq_by_path[name + "_distilled"] = {}
            bounds[name] = []
            for m, d, stage in sorted(students, key=lambda s: s[0]):
                grid = uniform_grid(cfg.T, cfg.t_min, m, device=device)  # d.grid(stage) in float64
                st = student_states(d.student_field(stage), latents, grid, "euler")
                row, sq = measure_student(name, "distilled", m, grid.cpu(), st.cpu(), teacher_tau, taus, cfg, nfe=m,
                                          support=support.cpu())
                checks = interval_bound_check(d.student_step_fn(stage), teacher, grid, cfg.bound_sub_points,
                                              w2_samples=cfg.w2_samples)
                worst = max(checks, key=lambda c: c.ratio_accel)
                worst_c = max(checks, key=lambda c: c.ratio_chord)
                row.update({"bound_worst_ratio_accel": worst.ratio_accel, "bound_worst_ratio_chord": worst_c.ratio_chord,
                            "bound_holds": all(c.ratio_accel <= 1.0 + 1e-9 for c in checks)})
                bounds[name].append({"M": m, "intervals": [dataclasses.asdict(c) for c in checks]})
                rows.append(row)
                sq_by_path[name + "_distilled"][m] = sq
                if m == min(4, max(cfg.distill_ms)):
                    traj_plot[name]["distilled"] = (grid.cpu(), st[:, :12].cpu())
            _stamp(f"{name}: {len(students)} distilled students measured, bound checked", t0)
        del teacher
    return summarize(cfg, rows, sq_by_path, taus, teachers, distill_info, bounds, traj_plot, support.cpu())


def summarize(cfg, rows, sq_by_path, taus, teachers, distill_info, bounds, traj_plot, support) -> dict:
    keep = taus >= cfg.t_cut
    slopes, constants = {}, {}
    for key, per_m in sq_by_path.items():
        ms = sorted(per_m)
        fit_ms = [m for m in ms if m >= cfg.fit_min_m] if key in cfg.paths else ms
        if len(fit_ms) < 2:
            continue
        sqs = [per_m[m] for m in fit_ms]
        full = bootstrap_slope(fit_ms, sqs, cfg.n_boot, seed=cfg.seed)
        rest = bootstrap_slope(fit_ms, sqs, cfg.n_boot, seed=cfg.seed, rows=keep)
        med = bootstrap_slope(fit_ms, sqs, cfg.n_boot, seed=cfg.seed, stat="median")
        med_r = bootstrap_slope(fit_ms, sqs, cfg.n_boot, seed=cfg.seed, rows=keep, stat="median")
        all_m = fit_loglog_slope(ms, [float(per_m[m].mean(1).sqrt().max()) for m in ms])[0]
        slopes[key] = {"fit_ms": fit_ms, "slope": full["slope"], "ci": full["ci"], "slope_all_ms": all_m,
                       "slope_restricted": rest["slope"], "ci_restricted": rest["ci"],
                       "slope_median": med["slope"], "ci_median": med["ci"],
                       "slope_median_restricted": med_r["slope"], "ci_median_restricted": med_r["ci"],
                       "level": full["level"]}
        constants[key] = {"C": rate_constant(fit_ms, full["err"]), "C_restricted": rate_constant(fit_ms, rest["err"]),
                          "C_median": rate_constant(fit_ms, med["err"])}
    # equal-M comparison (Euler/DDIM students)
    by = {(r["path"], r["kind"], r["M"]): r for r in rows}
    equal_m = []
    for m in cfg.ms:
        e = {"M": m}
        for name in cfg.paths:
            kind = cfg.vp_solver if name == "vp" else "euler"
            r = by.get((name, kind, m))
            if r:
                e[name] = r["coupled_sup"]
                e[name + "_restricted"] = r["coupled_sup_restricted"]
                e[name + "_endpoint_w2"] = r["endpoint_w2"]
        for other in ("gaussian", "vp"):
            if "kac" in e and other in e:
                e[f"kac_over_{other}"] = e["kac"] / e[other]
        equal_m.append(e)
    ep = [r["endpoint_w2"] for r in rows]
    pw = [r["path_w2_sup"] for r in rows]
    corr_all = loglog_correlation(ep, pw)
    corr_detail = {"all_students": corr_all,
                   "all_students_mean_path": loglog_correlation(ep, [r["path_w2_mean"] for r in rows])}
    for name in cfg.paths:
        sel = [r for r in rows if r["path"] == name]
        corr_detail[name] = loglog_correlation([r["endpoint_w2"] for r in sel], [r["path_w2_sup"] for r in sel])
    dist = [r for r in rows if r["kind"] == "distilled"]
    if dist:
        corr_detail["distilled"] = loglog_correlation([r["endpoint_w2"] for r in dist], [r["path_w2_sup"] for r in dist])
    worst = {name: max((iv["ratio_accel"] for b in bl for iv in b["intervals"]), default=float("nan"))
             for name, bl in bounds.items()}
    worst_chord = {name: max((iv["ratio_chord"] for b in bl for iv in b["intervals"]), default=float("nan"))
                   for name, bl in bounds.items()}
    head = "kac" if "kac" in slopes else cfg.paths[0]
    min_student = {name: min(r["coupled_sup"] for r in rows if r["path"] == name) for name in cfg.paths}
    for name, info in teachers.items():
        sc = info["self_convergence"]
        sc["over_smallest_student_error"] = sc["sup_rms"] / min_student[name] if min_student[name] > 0 else float("inf")
        sc["ok"] = bool(sc["over_smallest_student_error"] < 0.1)
        if not sc["ok"]:
            print(f"WARNING: the {name} teacher's self-convergence error is {sc['over_smallest_student_error']:.2f} of "
                  f"the smallest student error (want << 1): raise --teacher-steps", flush=True)
    return {
        "slope": slopes[head]["slope"], "slope_ci": slopes[head]["ci"], "slope_path": head,
        "slope_restricted": slopes[head]["slope_restricted"], "slope_restricted_ci": slopes[head]["ci_restricted"],
        "slope_median": slopes[head]["slope_median"], "slope_median_ci": slopes[head]["ci_median"],
        "slope_definition": ("least-squares slope of log sup_tau sqrt(mean_b |Y_tau - X_tau|^2) against log M over "
                             f"M >= {cfg.fit_min_m}, Euler students on the exact field, tau in [t_min, T]; "
                             f"'restricted': tau in [t_cut={cfg.t_cut}, T]; 'median': median over samples of the "
                             "per-sample sup_tau |Y_tau - X_tau|; CI: paired bootstrap over latents"),
        "correlation": corr_all["pearson_log"],
        "correlation_definition": "Pearson correlation of log endpoint W2 and log sup_tau W2 across all students",
        "correlation_detail": corr_detail,
        "slopes": slopes, "constants": constants, "equal_m": equal_m,
        "bound_worst_ratio": worst, "bound_worst_ratio_chord": worst_chord,
        "teachers": teachers, "distillation": distill_info, "bounds": bounds, "rows": rows,
        "_plot": {"traj": traj_plot, "support": support},
    }


# ------------------------------------------------------------------------------------------------ outputs

COLORS = {"kac": "C0", "gaussian": "C1", "vp": "C2"}


def plot_rate(res: dict, cfg: Theorem8Config, path: Path) -> None:
    """Left: the coupled RMS path error (whole path, and tau >= t_cut); right: the median sample's."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2))
    rows = res["rows"]
    for name in cfg.paths:
        kind = cfg.vp_solver if name == "vp" else "euler"
        sel = sorted((r for r in rows if r["path"] == name and r["kind"] == kind), key=lambda r: r["M"])
        dsel = sorted((r for r in rows if r["path"] == name and r["kind"] == "distilled"), key=lambda r: r["M"])
        s = res["slopes"][name]
        m = np.array([r["M"] for r in sel], dtype=float)
        for ax, key, rkey, sk, lab in ((axes[0], "coupled_sup", "coupled_sup_restricted", "slope", "RMS"),
                                        (axes[1], "median_sample_sup", None, "slope_median", "median")):
            e = np.array([r[key] for r in sel])
            ci = s["ci" + sk[len("slope"):]]
            ax.loglog(m, e, "o-", color=COLORS[name], label=f"{name} {kind}: {s[sk]:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
            if rkey is not None:
                ax.loglog(m, [r[rkey] for r in sel], "s--", color=COLORS[name], alpha=0.55, ms=4,
                          label=f"{name}, tau >= {cfg.t_cut:g}: {s['slope_restricted']:.2f}")
            if dsel:
                ax.loglog([r["M"] for r in dsel], [r[key] for r in dsel], "D", color=COLORS[name], mfc="none",
                          ms=7, label=f"{name} distilled (MLP)")
    for ax, title in zip(axes, ("sup over tau of the coupled RMS error", "median over samples of sup over tau")):
        m = np.array(cfg.ms, dtype=float)
        ys = [ln.get_ydata()[0] for ln in ax.get_lines()]
        ax.loglog(m, max(ys) / m, "k-", lw=0.8, alpha=0.4, label="slope -1")
        ax.loglog(m, max(ys) / np.sqrt(m), "k:", lw=0.8, alpha=0.4, label="slope -1/2")
        ax.set_xlabel("student steps M")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="lower left")
        ax.grid(True, which="both", alpha=0.25)
    axes[0].set_ylabel("path error")
    fig.suptitle(f"Theorem 8: path error vs M (d={cfg.dim}, n={cfg.n_support} points, t_min={cfg.t_min:g}); "
                 f"slopes fitted on M >= {cfg.fit_min_m}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_correlation(res: dict, cfg: Theorem8Config, path: Path) -> None:
    """Endpoint W2 against sup_tau W2 (left) and against the tau-average of W2 (right), every student."""
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 4.0))
    rows = res["rows"]
    det = res["correlation_detail"]
    for ax, key, lab, c in ((axes[0], "path_w2_sup", r"sup$_\tau$ W2 along the path", det["all_students"]),
                            (axes[1], "path_w2_mean", r"mean over $\tau$ of W2", det["all_students_mean_path"])):
        for r in rows:
            mk = "D" if r["kind"] == "distilled" else "o"
            ax.loglog(r["endpoint_w2"], r[key], mk, color=COLORS[r["path"]], mfc="none" if mk == "D" else None)
        vals = [r["endpoint_w2"] for r in rows] + [r[key] for r in rows]
        lo, hi = min(vals), max(vals)
        ax.loglog([lo, hi], [lo, hi], "k-", lw=0.8, alpha=0.4)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("endpoint W2")
        ax.set_ylabel(lab)
        ax.set_title(f"r(log) = {c['pearson_log']:.3f}, Spearman {c['spearman']:.3f} (n = {c['n']})", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
    for name in cfg.paths:
        axes[0].plot([], [], "o", color=COLORS[name], label=name)
    axes[0].plot([], [], "D", color="gray", mfc="none", label="distilled")
    axes[0].legend(fontsize=7)
    fig.suptitle("endpoint error vs whole-path error across students (W2, POT exact)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_trajectories(res: dict, cfg: Theorem8Config, path: Path) -> None:
    traj = res["_plot"]["traj"]
    names = [n for n in cfg.paths if n in traj]
    fig, axes = plt.subplots(1, len(names), figsize=(4.0 * len(names), 4.0), squeeze=False)
    sup = res["_plot"]["support"]
    for ax, name in zip(axes[0], names):
        tp = traj[name]
        X = tp["teacher"].numpy()
        for b in range(X.shape[1]):
            ax.plot(X[:, b, 0], X[:, b, 1], "-", color="k", lw=0.8, alpha=0.7, label="teacher (RK4)" if b == 0 else None)
        if "euler" in tp:
            g, Y = tp["euler"]
            Y = Y.numpy()
            for b in range(Y.shape[1]):
                ax.plot(Y[:, b, 0], Y[:, b, 1], "o-", color=COLORS[name], lw=1, ms=2.5, alpha=0.8,
                        label=f"Euler M={g.numel() - 1}" if b == 0 else None)
        if "distilled" in tp:
            g, Y = tp["distilled"]
            Y = Y.numpy()
            for b in range(Y.shape[1]):
                ax.plot(Y[:, b, 0], Y[:, b, 1], "s--", color="C3", lw=1, ms=2.5, alpha=0.8,
                        label=f"distilled M={g.numel() - 1}" if b == 0 else None)
        ax.plot(sup[:, 0], sup[:, 1], "x", color="gray", ms=4, label="data")
        ax.set_title(name + ("" if cfg.dim == 2 else " (coords 0, 1)"), fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=6.5, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(res: dict) -> None:
    head = (f"{'path':9s} {'kind':9s} {'M':>3s} {'endpt W2':>9s} {'sup W2':>9s} {'argmax':>7s} "
            f"{'RMS end':>9s} {'RMS sup':>9s} {'sup t>=c':>9s} {'median':>9s} {'mismatch':>8s} {'M*sup':>7s} "
            f"{'bound r':>8s}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        br = r.get("bound_worst_ratio_accel")
        print(f"{r['path']:9s} {r['kind']:9s} {r['M']:3d} {r['endpoint_w2']:9.3e} {r['path_w2_sup']:9.3e} "
              f"{r['path_w2_argmax_tau']:7.3f} {r['coupled_endpoint_rms']:9.3e} {r['coupled_sup']:9.3e} "
              f"{r['coupled_sup_restricted']:9.3e} {r['median_sample_sup']:9.3e} {r['mode_mismatch']:8.4f} "
              f"{r['M'] * r['coupled_sup']:7.3f} "
              f"{'' if br is None else f'{br:8.2e}'}")
    print()
    for k, s in res["slopes"].items():
        print(f"slope {k:15s} {s['slope']:+.3f} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]   tau>=t_cut: "
              f"{s['slope_restricted']:+.3f} [{s['ci_restricted'][0]:+.3f}, {s['ci_restricted'][1]:+.3f}]   "
              f"median: {s['slope_median']:+.3f} [{s['ci_median'][0]:+.3f}, {s['ci_median'][1]:+.3f}]   "
              f"all M: {s['slope_all_ms']:+.3f}   C = {res['constants'][k]['C']:.3f} "
              f"(restricted {res['constants'][k]['C_restricted']:.3f})")
    print(f"correlation (log endpoint W2, log sup path W2), all students: {res['correlation']:.3f}")
    for name, info in res["teachers"].items():
        sc = info["self_convergence"]
        print(f"teacher {name:9s}: RK4 x{info['steps']}, vs x{sc['vs_steps']}: sup RMS {sc['sup_rms']:.2e} "
              f"({sc['over_smallest_student_error']:.2e} of the smallest student error), V {info['max_speed']:.3g}, "
              f"A {info['max_accel']:.3g} (tau>=t_cut {info['max_accel_restricted']:.3g})")
    for name, w in res["bound_worst_ratio"].items():
        print(f"bound {name}: worst sup W2 / (sqrt(endpoint MSE) + A D^2/8) = {w:.3e};  worst chord-bound ratio "
              f"{res['bound_worst_ratio_chord'][name]:.3f}")


# ------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[Theorem8Config, argparse.Namespace]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/theorem8"), help="output directory")
    p.add_argument("--quick", action="store_true", help="small budget (< 60 s on 2 cores)")
    p.add_argument("--paper-figures", action="store_true", help="also write the figures to paper_figures/")
    p.add_argument("--paper-dir", type=Path, default=REPO / "paper_figures", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the field evaluations are small, and on a shared "
                        "2-core machine 2 threads ran the Kac teacher 10x slower than 1)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=None)
    p.add_argument("--distill-paths", nargs="*", choices=PATHS, default=None, help="paths with distilled students")
    p.add_argument("--ms", nargs="+", type=int, default=None, help="Euler student step counts")
    p.add_argument("--distill-ms", nargs="+", type=int, default=None, help="distilled student step counts")
    fields = {f.name: f for f in dataclasses.fields(Theorem8Config)}
    for name in ("dim", "n_support", "data_seed", "latent_seed", "kac_a", "kac_c", "t_min", "t_cut", "vp_solver",
                 "samples", "w2_samples", "teacher_steps", "conv_samples", "n_tau", "w2_stride", "fit_min_m",
                 "n_boot", "distill_schedule", "distill_teacher_steps", "distill_steps", "distill_batch",
                 "distill_lr", "distill_pool", "mlp_hidden", "mlp_depth", "fit_points", "fit_steps",
                 "bound_sub_points", "seed", "device"):
        typ = type(fields[name].default)
        p.add_argument("--" + name.replace("_", "-"), type=typ, default=None)
    a = p.parse_args(argv)
    over = dict(QUICK) if a.quick else {}
    for name in fields:
        v = getattr(a, name, None)
        if v is not None and name != "quick":
            over[name] = tuple(v) if isinstance(v, list) else v
    return Theorem8Config(**over), a


def main(argv: Optional[Sequence[str]] = None) -> dict:
    cfg, a = parse_args(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", dataclasses.asdict(cfg))
    t0 = time.perf_counter()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = run(cfg, t0)
    plot = res.pop("_plot")
    res["wall_time_s"] = time.perf_counter() - t0
    res["machine"] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_start": load0,
                      "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                      "python": platform.python_version(), "torch": torch.__version__}
    res["config"] = dataclasses.asdict(cfg)
    res["_plot"] = plot
    figs = {"rate": "theorem8_rate.png", "correlation": "theorem8_correlation.png",
            "trajectories": "theorem8_trajectories.png"}
    dirs = [out] + ([a.paper_dir] if a.paper_figures else [])
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        plot_rate(res, cfg, d / figs["rate"])
        plot_correlation(res, cfg, d / figs["correlation"])
        plot_trajectories(res, cfg, d / figs["trajectories"])
    res.pop("_plot")
    res["figures"] = {k: str(out / v) for k, v in figs.items()}
    save_json(out / "theorem8.json", res)
    save_json(out / "results.json", res)
    print_table(res)
    print(f"wall time {res['wall_time_s']:.1f}s (load average at start {load0}); results in {out}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
