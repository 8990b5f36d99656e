"""Theorem 8 (endpoint → path stability of few-step students), inside and outside its hypotheses (docs/mathematics.md §8, §13).

DistillKac's Theorem 8 (derived form, docs/mathematics.md §8): a student of ``M`` Euler steps of a field ``ε``-close to a
**Lipschitz** teacher field has path error ``≤ (ε + A h/2)(e^{LΔ} - 1)/L``, ``h = Δ/M``: ``O(1/M)``. This
script measures that rate in three regimes, each with its fit range, a paired bootstrap interval over the
starting latents and the local slopes between consecutive ``M``:

1. **smooth** (the hypotheses hold): Kac path (``a = 9, c = 3``) on Gaussian-mixture data
   ``Σ_k w_k N(μ_k, σ² I)`` (``σ = 0.1``, the ``n_support`` seeded means uniform in ``[-1, 1]^d``), whose
   exact marginal field (``KacPath.exact_velocity(..., data_sigma=σ)``) is Lipschitz in ``x``. Teacher: RK4
   on the exact field; students: Euler with ``M = 4 … 256`` (slope fitted on ``M ≥ fit_min_m``); sup over
   the path of the coupled RMS error and of ``W2`` (POT); the measured Lipschitz constant ``L(t)`` (max,
   p99, median over samples, at two finite-difference steps) and acceleration ``A(t)`` along the teacher,
   ``∫ L dt``, and the bound's constant (Grönwall, :func:`kacnum.theory.stability.gronwall_constant`) against the
   measured ``C = max_M M · err``. The same for the Gaussian (rectified-flow) and VP paths on the same data
   (closed-form fields). Repeated over ``data_seeds`` (the spread of the slope). Distilled students
   (MLP fitted to the exact Kac field, then staged endpoint distillation ``K0 → 8 → 4 → 2 → 1`` with that
   MLP as the teacher) with the per-interval bound ``sup W2 ≤ sqrt(endpoint MSE) + A Δ²/8`` and the
   endpoint/path correlation.
2. **finite** (the hypothesis fails): the same means as a Dirac mixture (``σ = 0``). The Kac and Gaussian
   paths, and a single data point (Kac, whose field only jumps at the cone faces) as a control. Slopes of
   the whole path, at fixed ``τ ∈ {0.5, 0.2, 0.1, 0.05, 0.01}`` and of the median sample; the share of
   samples that a student sends to another data point than the teacher does, against ``M``, with its
   own slope; ``L(t)`` along the teacher.
3. **transition**: ``σ ∈ {0.25, 0.1, 0.03, 0}``: slope and constant against ``σ`` (Kac).

The top-level ``slope`` of ``theorem8.json`` is the smooth regime's Kac slope (data seed ``data_seeds[0]``).

Every case's RK4 teacher is checked against itself (``N/4``, ``N/2`` and ``N`` steps; Richardson estimate of its
error). Where that error is 0.1 or more of the smallest student error, a line (also in ``theorem8_results.md``)
says how far it can move the fitted slope (:func:`kacnum.theory.stability.slope_shift_bound`) and whether the
slope stands, i.e. whether that shift is within half the slope's bootstrap interval.

Outputs in ``--out`` (default ``runs/theorem8``): ``config.json``, ``theorem8.json`` (= ``results.json``),
``theorem8_rate.png`` (both regimes), ``theorem8_local_slopes.png``, ``theorem8_profiles.png``
(``L(t)``, ``A(t)``), ``theorem8_sigma.png`` (the transition), ``theorem8_correlation.png``,
``theorem8_trajectories.png`` (``--paper-figures`` also writes them to ``paper_figures/``).

    python experiments/theorem8.py --quick --out runs/theorem8_quick     # < 60 s on 2 cores
    python experiments/theorem8.py                                       # < 5 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402
import matplotlib.ticker  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common  # noqa: E402
from kacnum.core import cli  # noqa: E402
from kacnum.core.checkpoint import save_json  # noqa: E402
from kacnum.students.distill import DistillConfig  # noqa: E402
from kacnum.images.models.mlp import MLP  # noqa: E402
from kacnum.flows.paths import GaussianPath, KacPath, VPPath  # noqa: E402
from kacnum.flows.solvers import uniform_grid  # noqa: E402
from kacnum.theory.stability import (  # noqa: E402
    ExactField,
    ExactTeacherDistiller,
    ModelField,
    bootstrap_slope,
    coupled_sq_errors,
    fit_loglog_slope,
    fit_velocity_mlp,
    gronwall_constant,
    interval_bound_check,
    lipschitz_profile,
    local_slopes,
    loglog_correlation,
    mode_mismatch,
    path_error_summary,
    piecewise_linear,
    slope_shift_bound,
    student_states,
    teacher_trajectory,
    w2_along_path,
)

PATHS = ("kac", "gaussian", "vp")


def _pos_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {v!r}")


@dataclass(frozen=True)
class Theorem8Config:
    """Everything one run depends on (``--quick`` changes only the budget fields)."""

    dim: int = 2
    n_support: int = 32
    data_seeds: tuple = (0, 1, 2)
    latent_seed: int = 1
    kac_a: float = 9.0
    kac_c: float = 3.0
    T: float = 1.0
    t_min: float = 1e-3
    t_cut: float = 0.2
    sigma: float = 0.1
    sigmas: tuple = (0.25, 0.1, 0.03, 0.0)
    smooth_paths: tuple = PATHS
    vp_solver: str = "ddim"
    # smooth regime
    samples: int = 400
    spread_samples: int = 200
    teacher_steps: int = 192
    conv_samples: int = 100
    ms: tuple = (4, 8, 16, 32, 64, 128, 256)
    fit_min_m: int = 16
    n_tau: int = 129
    w2_samples: int = 300
    w2_stride: int = 8
    n_boot: int = 500
    lip_times: int = 25
    lip_samples: int = 100
    lip_eps: tuple = (1e-3, 1e-5)
    # finite regime and transition
    finite_samples: int = 600
    finite_teacher_steps: int = 768
    taus_fixed: tuple = (0.5, 0.2, 0.1, 0.05, 0.01)
    transition_samples: int = 120
    transition_teacher_steps: int = 1024
    # distillation (smooth regime; MLP teacher fitted to the exact Kac field)
    distill: bool = True
    distill_ms: tuple = (8, 4, 2, 1)
    distill_teacher_steps: int = 64
    distill_steps: int = 400
    distill_batch: int = 256
    distill_lr: float = 1e-3
    distill_pool: int = 1024
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
        for name in ("kac_a", "kac_c", "T"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.t_min) and 0.0 < self.t_min < self.T):
            raise ValueError(f"--t-min must lie in (0, T={self.T:g}) (the VP and Gaussian fields need t > 0), "
                             f"got {self.t_min!r}")
        if not (math.isfinite(self.t_cut) and self.t_min <= self.t_cut < self.T):
            raise ValueError(f"--t-cut must lie in [t_min, T), got {self.t_cut!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"--sigma must be a finite number > 0 (the smooth regime), got {self.sigma!r}")
        if not self.sigmas or any(not (math.isfinite(s) and s >= 0) for s in self.sigmas):
            raise ValueError(f"--sigmas must be finite numbers >= 0, got {self.sigmas!r}")
        if not set(self.smooth_paths) <= set(PATHS) or "kac" not in self.smooth_paths:
            raise ValueError(f"--smooth-paths must be a subset of {PATHS} containing 'kac', got {self.smooth_paths!r}")
        if self.vp_solver not in ("ddim", "euler"):
            raise ValueError(f"--vp-solver must be 'ddim' or 'euler', got {self.vp_solver!r}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"--device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if str(self.device).startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} asked for, but this torch has no CUDA device")
        if not self.data_seeds:
            raise ValueError("--data-seeds must hold at least one seed")
        for name in ("dim", "n_support", "samples", "spread_samples", "teacher_steps", "conv_samples", "n_tau",
                     "w2_samples", "w2_stride", "n_boot", "lip_times", "lip_samples", "finite_samples",
                     "finite_teacher_steps", "transition_samples", "transition_teacher_steps",
                     "distill_teacher_steps", "distill_steps", "distill_batch", "distill_pool", "mlp_hidden",
                     "mlp_depth", "fit_points", "fit_steps", "bound_sub_points"):
            _pos_int(name, getattr(self, name))
        for name in ("teacher_steps", "finite_teacher_steps", "transition_teacher_steps"):
            if getattr(self, name) % 4:
                raise ValueError(f"--{name.replace('_', '-')} must be a multiple of 4 (self-convergence uses N/2, N/4), "
                                 f"got {getattr(self, name)}")
        if self.n_tau < 3:
            raise ValueError(f"--n-tau must be >= 3, got {self.n_tau}")
        if len(self.ms) < 2 or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.ms):
            raise ValueError(f"--ms must hold >= 2 integers >= 1, got {self.ms!r}")
        if sum(m >= self.fit_min_m for m in self.ms) < 2:
            raise ValueError(f"--fit-min-m={self.fit_min_m} leaves fewer than 2 step counts of --ms {self.ms!r}")
        if any(not (math.isfinite(e) and e > 0) for e in self.lip_eps) or not self.lip_eps:
            raise ValueError(f"--lip-eps must be numbers > 0, got {self.lip_eps!r}")
        if any(not (self.t_min <= t < self.T) for t in self.taus_fixed):
            raise ValueError(f"--taus-fixed must lie in [t_min, T), got {self.taus_fixed!r}")
        if not (math.isfinite(self.distill_lr) and self.distill_lr > 0):
            raise ValueError(f"--distill-lr must be > 0, got {self.distill_lr!r}")
        if not (0.0 <= self.distill_ema < 1.0):
            raise ValueError(f"--distill-ema must lie in [0, 1), got {self.distill_ema!r}")
        if self.distill:
            dm = tuple(sorted(self.distill_ms, reverse=True))
            if not dm or any(not isinstance(m, int) or m < 1 or self.distill_teacher_steps % m for m in dm):
                raise ValueError(f"--distill-ms must be integers >= 1 dividing --distill-teacher-steps "
                                 f"({self.distill_teacher_steps}), got {self.distill_ms!r}")
            if any(a % b for a, b in zip(dm, dm[1:])):
                raise ValueError(f"--distill-ms must each divide the previous one (staged), got {dm!r}")


QUICK = dict(data_seeds=(0, 1, 2), sigmas=(0.25, 0.1, 0.0), samples=160, spread_samples=64, teacher_steps=128,
             conv_samples=40,
             ms=(4, 8, 16, 32, 64, 128), n_tau=65, w2_samples=150, w2_stride=8, n_boot=200, lip_times=9,
             lip_samples=40, finite_samples=200, finite_teacher_steps=256, transition_samples=80,
             transition_teacher_steps=128, distill_teacher_steps=32, distill_steps=80, distill_batch=128,
             distill_pool=256, mlp_hidden=64, mlp_depth=2, fit_points=4096, fit_steps=200, bound_sub_points=4,
             quick=True)


# ------------------------------------------------------------------------------------------------ setup


def make_support(dim: int, n: int, seed: int) -> torch.Tensor:
    """``n`` points uniform in ``[-1, 1]^dim`` from ``seed``: ``(n, dim)`` float64 (the means / Dirac points)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, dim, generator=gen, dtype=torch.float64) * 2.0 - 1.0


def make_path(name: str, cfg: Theorem8Config):
    if name == "kac":
        return KacPath(a=cfg.kac_a, c=cfg.kac_c, T=cfg.T)
    if name == "gaussian":
        return GaussianPath(T=cfg.T)
    return VPPath(T=cfg.T)


class _Log:
    """Progress lines with the elapsed wall time, flushed (readable in a log file)."""

    def __init__(self, t0: float):
        self.t0 = t0

    def __call__(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ one case


def _student_row(case: str, path: str, kind: str, m: int, times, states, teacher_tau, taus, cfg, support,
                 w2: bool) -> tuple[dict, torch.Tensor]:
    y_tau = piecewise_linear(times, states, taus)
    sq = coupled_sq_errors(y_tau, teacher_tau)
    pe = path_error_summary(sq, taus, cfg.t_cut)
    row = {"case": case, "path": path, "kind": kind, "M": m, "nfe": m,
           "coupled_endpoint_rms": pe.endpoint, "coupled_sup": pe.sup, "coupled_argmax_tau": pe.argmax_tau,
           "coupled_sup_restricted": pe.sup_restricted,
           "median_sample_sup": float(torch.quantile(sq.amax(dim=0).sqrt(), 0.5)),
           "mode_mismatch": mode_mismatch(y_tau[-1], teacher_tau[-1], support)}
    if w2:
        q = taus.numel()
        regular = sorted(set(range(0, q, cfg.w2_stride)) | {q - 1})
        idx = sorted(set(regular) | {int(pe.rms.argmax())})
        vals = w2_along_path(y_tau, teacher_tau, idx, n_samples=cfg.w2_samples)
        on_regular = np.isin(np.asarray(idx), np.asarray(regular))
        j = int(np.argmax(vals))
        row.update({"endpoint_w2": float(vals[-1]), "path_w2_sup": float(vals[j]),
                    "path_w2_argmax_tau": float(taus[idx[j]]), "path_w2_mean": float(vals[on_regular].mean())})
    return row, sq


def _per_sample_accel(states: torch.Tensor, h: float) -> torch.Tensor:
    """``(N+1, B)`` per-sample acceleration by second differences (0 at the two ends)."""
    acc = torch.zeros(states.shape[0], states.shape[1], dtype=states.dtype)
    acc[1:-1] = (states[2:] - 2.0 * states[1:-1] + states[:-2]).norm(dim=-1) / (h * h)
    return acc


def _profiles(field, teacher, cfg: Theorem8Config) -> dict:
    """``L(t)`` (two ε) and ``A(t)`` along the teacher, ``∫ L dt`` and the Grönwall constants."""
    N = teacher.grid.numel() - 1
    idx = sorted(set(np.linspace(0, N, cfg.lip_times).round().astype(int).tolist()))
    times = teacher.grid[idx].cpu()
    lip = lipschitz_profile(field, teacher.states[idx], teacher.grid[idx], cfg.lip_eps, cfg.lip_samples)
    h = abs(float(teacher.grid[1] - teacher.grid[0]))
    acc = _per_sample_accel(teacher.states.cpu(), h)
    # A at a node: the max over the neighbouring fine nodes (the second difference is centred)
    A = {"max": [], "p99": [], "median": []}
    for j in idx:
        lo, hi = max(1, j - 1), min(N - 1, j + 1)
        a = acc[lo:hi + 1].reshape(-1)
        A["max"].append(float(a.max()))
        A["p99"].append(float(torch.quantile(a, 0.99)))
        A["median"].append(float(a.median()))
    t = times.numpy()
    delta = cfg.T - cfg.t_min
    out = {"t": t.tolist(), "lipschitz": lip["eps"], "accel": A, "lip_samples": lip["n_samples"]}
    e_fine = repr(float(min(cfg.lip_eps)))
    e_coarse = repr(float(max(cfg.lip_eps)))
    integ, bound_c = {}, {}
    for stat in ("max", "p99", "median"):
        Lc = np.asarray(lip["eps"][e_coarse][stat])
        order = np.argsort(t)
        integ[stat] = float(np.trapezoid(Lc[order], t[order])) if hasattr(np, "trapezoid") else \
            float(np.trapz(Lc[order], t[order]))
        bound_c[stat] = gronwall_constant(t, Lc, np.asarray(A[stat]), delta)
    out["integral_L"] = integ
    out["bound_constant"] = bound_c
    out["eps_ratio_max"] = float(max(np.asarray(lip["eps"][e_fine]["max"]) /
                                     np.maximum(np.asarray(lip["eps"][e_coarse]["max"]), 1e-300)))
    return out


def run_case(case: str, path_name: str, support: torch.Tensor, sigma: float, cfg: Theorem8Config, *, samples: int,
             teacher_steps: int, ms: Sequence[int], w2: bool, profiles: bool, log: _Log, taus: torch.Tensor,
             keep_plot: bool = False) -> dict:
    """Teacher (RK4 on the exact field), students of every ``M``, slopes, optional ``W2`` and profiles."""
    device = torch.device(cfg.device)
    path = make_path(path_name, cfg)
    gen = torch.Generator(device="cpu").manual_seed(cfg.latent_seed)
    latents = path.sample_latent((samples, cfg.dim), generator=gen, dtype=torch.float64).to(device)
    exact = ExactField(path, support.to(device), data_sigma=sigma)
    t0 = time.perf_counter()
    teacher = teacher_trajectory(exact, latents, uniform_grid(cfg.T, cfg.t_min, teacher_steps, device=device), "rk4")
    n_conv = min(cfg.conv_samples, samples)
    teacher_tau = teacher.at(taus).cpu()
    coarse = [teacher_trajectory(exact, latents[:n_conv], uniform_grid(cfg.T, cfg.t_min, teacher_steps // k,
                                                                      device=device), "rk4").at(taus).cpu()
              for k in (2, 4)]
    conv = path_error_summary(coupled_sq_errors(coarse[0], teacher_tau[:, :n_conv]), taus, cfg.t_cut)
    conv4 = path_error_summary(coupled_sq_errors(coarse[1], coarse[0]), taus, cfg.t_cut)
    # observed order from three levels, and the Richardson estimate of the N-step teacher's own error
    order = math.log2(conv4.sup / conv.sup) if conv.sup > 0 and conv4.sup > 0 else 4.0
    order_c = min(max(order, 1.0), 4.0)
    teacher_err = conv.sup / (2.0 ** order_c - 1.0)
    solver = cfg.vp_solver if path_name == "vp" else "euler"
    sfield = ExactField(path, support.to(device), quantity="epsilon", data_sigma=sigma) if solver == "ddim" else exact
    rows, sqs = [], {}
    plot = {}
    for m in ms:
        grid = uniform_grid(cfg.T, cfg.t_min, m, device=device)
        st = student_states(sfield, latents, grid, solver, alpha_bar=path.alpha_bar if solver == "ddim" else None)
        row, sq = _student_row(case, path_name, solver, m, grid.cpu(), st.cpu(), teacher_tau, taus, cfg,
                               support.cpu(), w2)
        rows.append(row)
        sqs[m] = sq
        if keep_plot and m == 8:
            plot["student"] = (grid.cpu(), st[:, :12].cpu())
    fit_ms = [m for m in ms if m >= cfg.fit_min_m]
    fit_sq = [sqs[m] for m in fit_ms]
    full = bootstrap_slope(fit_ms, fit_sq, cfg.n_boot, seed=cfg.seed)
    med = bootstrap_slope(fit_ms, fit_sq, cfg.n_boot, seed=cfg.seed, stat="median")
    errs = [r["coupled_sup"] for r in rows]
    slope = {"fit_ms": fit_ms, "slope": full["slope"], "ci": full["ci"], "level": full["level"],
             "slope_median": med["slope"], "ci_median": med["ci"],
             "local": local_slopes(list(ms), errs),
             "local_median": local_slopes(list(ms), [r["median_sample_sup"] for r in rows]),
             "C_measured": max(m * e for m, e in zip(ms, errs)),
             "C_fit": float(math.exp(full["intercept"]))}
    # the teacher's own error moves every measured error by at most teacher_err: the slope by at most this
    shift = slope_shift_bound(fit_ms, full["err"], teacher_err)
    # fixed tau (finite regime diagnostics; cheap everywhere)
    fixed = {}
    for tau in cfg.taus_fixed:
        q = int((taus - tau).abs().argmin())
        mask = torch.zeros(taus.numel(), dtype=torch.bool)
        mask[q] = True
        b = bootstrap_slope(fit_ms, fit_sq, cfg.n_boot, seed=cfg.seed, rows=mask)
        fixed[f"{float(taus[q]):.3g}"] = {"slope": b["slope"], "ci": b["ci"], "err": b["err"]}
    slope["fixed_tau"] = fixed
    mm = [(m, r["mode_mismatch"]) for m, r in zip(ms, rows) if m in fit_ms and r["mode_mismatch"] > 0]
    slope["mismatch"] = {"M": [m for m, _ in mm], "share": [v for _, v in mm],
                         "slope": fit_loglog_slope([m for m, _ in mm], [v for _, v in mm])[0] if len(mm) >= 2 else None}
    min_err = min(errs)
    info = {"case": case, "path": path_name, "sigma": sigma, "n_support": int(support.shape[0]), "samples": samples,
            "teacher": {"method": "rk4", "steps": teacher_steps, "nfe": teacher.nfe,
                        "self_convergence": {"vs_steps": teacher_steps // 2, "samples": n_conv, "sup_rms": conv.sup,
                                             "endpoint_rms": conv.endpoint, "sup_rms_quarter_vs_half": conv4.sup,
                                             "observed_order": order, "richardson_error": teacher_err,
                                             "over_smallest_student_error": teacher_err / min_err if min_err > 0 else None,
                                             "slope_shift_bound": shift,
                                             "slope_stands": bool(shift <= 0.5 * (full["ci"][1] - full["ci"][0])),
                                             "definition": "richardson_error = sup_tau RMS(N/2 vs N) / (2^p - 1), p the "
                                                           "observed order from N/4, N/2, N clamped to [1, 4]; "
                                                           "over_smallest_student_error = richardson_error / min_M err; "
                                                           "slope_shift_bound = the most the teacher's error can move "
                                                           "the fitted slope (kacnum.theory.stability.slope_shift_bound); "
                                                           "slope_stands = that bound is within half the slope's "
                                                           "bootstrap interval"},
                        "max_speed": teacher.max_speed(), "max_accel": float(teacher.accel[1:-1].max())},
            "slope": slope, "rows": rows, "wall_s": None}
    if profiles:
        info["profiles"] = _profiles(exact, teacher, cfg)
        pb = info["profiles"]["bound_constant"]
        info["bound_vs_measured"] = {k: (v / slope["C_measured"] if slope["C_measured"] > 0 else None)
                                     for k, v in pb.items()}
    if keep_plot:
        plot["teacher"] = teacher.states[:, :12].cpu()
        plot["teacher_grid"] = teacher.grid.cpu()
        info["_plot"] = plot
    info["_sq"] = sqs
    info["_teacher"] = teacher if (case == "smooth/kac") else None
    info["_latents"] = latents if (case == "smooth/kac") else None
    info["wall_s"] = time.perf_counter() - t0
    sc = info["teacher"]["self_convergence"]
    log(f"{case:24s} sigma={sigma:<5g} n={samples:<4d} teacher RK4x{teacher_steps} (error {sc['richardson_error']:.1e}, "
        f"order {sc['observed_order']:.1f}, {sc['over_smallest_student_error']:.2g} of the smallest)  slope {slope['slope']:+.3f} "
        f"[{slope['ci'][0]:+.3f}, {slope['ci'][1]:+.3f}]  C = {slope['C_measured']:.3g}  ({info['wall_s']:.1f}s)")
    return info


# ------------------------------------------------------------------------------------------------ distillation


def run_distillation(support: torch.Tensor, cfg: Theorem8Config, taus: torch.Tensor, base: dict, log: _Log) -> dict:
    """MLP fitted to the exact Kac field (Gaussian-mixture data), then staged endpoint distillation with the MLP
    as teacher; students measured against the MLP teacher's RK4 trajectory, per-interval bound checked."""
    device = torch.device(cfg.device)
    path = make_path("kac", cfg)
    exact = ExactField(path, support.to(device), data_sigma=cfg.sigma)
    torch.manual_seed(cfg.seed)
    model = MLP(dim=cfg.dim, hidden=cfg.mlp_hidden, depth=cfg.mlp_depth, T=cfg.T).to(device)
    fit = fit_velocity_mlp(model, path, support, exact, n_points=cfg.fit_points, steps=cfg.fit_steps, lr=cfg.fit_lr,
                           t_min=cfg.t_min, seed=cfg.seed, data_sigma=cfg.sigma)
    log(f"distillation: MLP fitted to the exact Kac field (mse {fit['final_mse']:.3g})")
    teacher_net = copy.deepcopy(model).eval()
    for p in teacher_net.parameters():
        p.requires_grad_(False)
    tfield = ModelField(teacher_net)
    latents = base["_latents"]
    teacher = teacher_trajectory(tfield, latents, uniform_grid(cfg.T, cfg.t_min, cfg.teacher_steps, device=device), "rk4")
    teacher_tau = teacher.at(taus).cpu()
    gen = torch.Generator().manual_seed(cfg.seed)
    k = torch.randint(support.shape[0], (max(cfg.distill_pool, 1024),), generator=gen)
    data = (support[k] + cfg.sigma * torch.randn(k.numel(), cfg.dim, generator=gen, dtype=torch.float64))
    ms = tuple(sorted(cfg.distill_ms, reverse=True))
    dcfg = DistillConfig(stages=(cfg.distill_teacher_steps,) + ms, steps_per_stage=cfg.distill_steps,
                         batch_size=cfg.distill_batch, lr=cfg.distill_lr, lr_schedule="cosine",
                         ema_decay=cfg.distill_ema, source="rollout", teacher_method="rk4", p_uncond=0.0,
                         t_end=cfg.t_min, rollout_pool=cfg.distill_pool, rollout_refresh=max(cfg.distill_steps, 1),
                         seed=cfg.seed, log_every=10)
    d = ExactTeacherDistiller(model, teacher_net, path, data.to(device=device, dtype=torch.float32), config=dcfg)
    d.run(progress=False)
    log(f"distillation: {' -> '.join(map(str, dcfg.stages))} done")
    rows, bounds = [], []
    for stage, m in enumerate(ms, start=1):
        grid = uniform_grid(cfg.T, cfg.t_min, m, device=device)
        st = student_states(d.student_field(stage), latents, grid, "euler")
        row, _ = _student_row("smooth/kac_distilled", "kac", "distilled", m, grid.cpu(), st.cpu(), teacher_tau, taus,
                              cfg, support.cpu(), True)
        checks = interval_bound_check(d.student_step_fn(stage), teacher, grid, cfg.bound_sub_points,
                                      w2_samples=cfg.w2_samples)
        row.update({"bound_worst_ratio_accel": max(c.ratio_accel for c in checks),
                    "bound_worst_ratio_chord": max(c.ratio_chord for c in checks),
                    "bound_holds": all(c.ratio_accel <= 1.0 + 1e-9 for c in checks)})
        bounds.append({"M": m, "intervals": [dataclasses.asdict(c) for c in checks]})
        rows.append(row)
    return {"mlp_fit_mse": fit["final_mse"], "rows": rows, "bounds": bounds,
            "bound_worst_ratio": max(r["bound_worst_ratio_accel"] for r in rows),
            "bound_worst_ratio_chord": max(r["bound_worst_ratio_chord"] for r in rows),
            "teacher_note": "the MLP fitted to the exact Kac field (a smooth network teacher), RK4"}


# ------------------------------------------------------------------------------------------------ the run


def _strip(info: dict) -> dict:
    return {k: v for k, v in info.items() if not k.startswith("_")}


def run(cfg: Theorem8Config, t0: Optional[float] = None) -> dict:
    log = _Log(time.perf_counter() if t0 is None else t0)
    taus = uniform_grid(cfg.T, cfg.t_min, cfg.n_tau - 1)
    seed0 = cfg.data_seeds[0]
    support0 = make_support(cfg.dim, cfg.n_support, seed0)
    cases, rows = {}, []
    log(f"smooth regime: Kac/Gaussian/VP on Gaussian-mixture data (sigma={cfg.sigma}, {cfg.n_support} means, "
        f"d={cfg.dim}), Euler students M={list(cfg.ms)}")
    for name in cfg.smooth_paths:
        cases[f"smooth/{name}"] = run_case(f"smooth/{name}", name, support0, cfg.sigma, cfg, samples=cfg.samples,
                                           teacher_steps=cfg.teacher_steps, ms=cfg.ms, w2=True,
                                           profiles=(name == "kac"), log=log, taus=taus, keep_plot=(name == "kac"))
    for s in cfg.data_seeds[1:]:
        sup = make_support(cfg.dim, cfg.n_support, s)
        cases[f"smooth/kac_seed{s}"] = run_case(f"smooth/kac_seed{s}", "kac", sup, cfg.sigma, cfg,
                                                samples=cfg.spread_samples, teacher_steps=cfg.teacher_steps, ms=cfg.ms,
                                                w2=False, profiles=False, log=log, taus=taus)
    distill = None
    if cfg.distill:
        distill = run_distillation(support0, cfg, taus, cases["smooth/kac"], log)
    log("finite regime: the same points as a Dirac mixture (sigma = 0)")
    cases["finite/kac"] = run_case("finite/kac", "kac", support0, 0.0, cfg, samples=cfg.finite_samples,
                                   teacher_steps=cfg.finite_teacher_steps, ms=cfg.ms, w2=True, profiles=True, log=log,
                                   taus=taus, keep_plot=True)
    cases["finite/gaussian"] = run_case("finite/gaussian", "gaussian", support0, 0.0, cfg, samples=cfg.finite_samples,
                                        teacher_steps=cfg.finite_teacher_steps, ms=cfg.ms, w2=True, profiles=False,
                                        log=log, taus=taus)
    # one point: the field jumps only at its cone faces and the RK4 teacher converges at order 1: twice the steps
    cases["finite/kac_single_point"] = run_case("finite/kac_single_point", "kac", support0[:1], 0.0, cfg,
                                                samples=cfg.finite_samples, teacher_steps=2 * cfg.finite_teacher_steps,
                                                ms=cfg.ms, w2=False, profiles=False, log=log, taus=taus)
    log(f"transition: sigma in {list(cfg.sigmas)} (Kac)")
    transition = []
    for s in cfg.sigmas:
        if s == cfg.sigma:
            c = cases["smooth/kac"]
        elif s == 0:
            c = cases["finite/kac"]
        else:
            steps = cfg.teacher_steps if s >= cfg.sigma else cfg.transition_teacher_steps  # L grows like 1/sigma
            c = run_case(f"transition/kac_sigma{s:g}", "kac", support0, s, cfg, samples=cfg.transition_samples,
                         teacher_steps=steps, ms=cfg.ms, w2=False, profiles=False, log=log, taus=taus)
            cases[c["case"]] = c
        transition.append({"sigma": s, "case": c["case"], "slope": c["slope"]["slope"], "ci": c["slope"]["ci"],
                           "slope_median": c["slope"]["slope_median"], "C_measured": c["slope"]["C_measured"],
                           "teacher_self_convergence": c["teacher"]["self_convergence"]["over_smallest_student_error"]})
    for c in cases.values():
        rows.extend(c["rows"])
    if distill:
        rows.extend(distill["rows"])
    return summarize(cfg, cases, rows, transition, distill)


#: a teacher whose own error (Richardson estimate) is below this share of the smallest student error passes silently
TEACHER_RATIO_OK = 0.1


def _teacher_flag(case: dict, cfg: Theorem8Config) -> str:
    """The option that sets the teacher steps of ``case`` (see :func:`run`)."""
    if case["case"].startswith("finite/"):
        return "--finite-teacher-steps"
    if case["case"].startswith("transition/") and case["sigma"] < cfg.sigma:
        return "--transition-teacher-steps"
    return "--teacher-steps"


def teacher_note(name: str, case: dict, cfg: Theorem8Config) -> str:
    """One line for a case whose teacher error is not negligible: how large it is, how far it can move the
    fitted (RMS) slope, and whether that slope stands (the move is within half its bootstrap interval)."""
    sc, s = case["teacher"]["self_convergence"], case["slope"]
    r, shift = sc["over_smallest_student_error"], sc["slope_shift_bound"]
    head = (f"teacher check, {name}: the RK4 teacher's own error (Richardson estimate) is {r:.2f} of the smallest "
            f"student error (silent below {TEACHER_RATIO_OK:g}); it can move the fitted slope {s['slope']:+.3f} by at "
            f"most {shift:.3f} (to anywhere in [{s['slope'] - shift:+.3f}, {s['slope'] + shift:+.3f}])")
    half = 0.5 * (s["ci"][1] - s["ci"][0])
    if sc["slope_stands"]:
        return f"{head}, within half its 95 % interval ({half:.3f}): the slope stands"
    return (f"{head}, more than half its 95 % interval ({half:.3f}): the slope is not settled; raise "
            f"{_teacher_flag(case, cfg)}")


def summarize(cfg: Theorem8Config, cases: dict, rows: list, transition: list, distill: Optional[dict]) -> dict:
    head = cases["smooth/kac"]["slope"]
    spread_cases = ["smooth/kac"] + [f"smooth/kac_seed{s}" for s in cfg.data_seeds[1:]]
    spread = [cases[k]["slope"]["slope"] for k in spread_cases]
    # correlation of endpoint W2 and sup path W2 across the students that have W2
    def corr(sel):
        sel = [r for r in sel if "endpoint_w2" in r]
        return loglog_correlation([r["endpoint_w2"] for r in sel], [r["path_w2_sup"] for r in sel])

    smooth_rows = [r for r in rows if r["case"].startswith("smooth/")]
    finite_rows = [r for r in rows if r["case"].startswith("finite/")]
    corr_detail = {"smooth_all_students": corr(smooth_rows), "finite_all_students": corr(finite_rows),
                   "smooth_distilled": corr([r for r in rows if r["kind"] == "distilled"])}
    equal_m = []
    for m in cfg.ms:
        e = {"M": m}
        for regime in ("smooth", "finite"):
            for name in PATHS:
                c = cases.get(f"{regime}/{name}")
                if c is None:
                    continue
                r = next(r for r in c["rows"] if r["M"] == m)
                e[f"{regime}/{name}"] = r["coupled_sup"]
            if f"{regime}/kac" in e and f"{regime}/gaussian" in e:
                e[f"{regime}/kac_over_gaussian"] = e[f"{regime}/kac"] / e[f"{regime}/gaussian"]
        equal_m.append(e)
    constants = {k: {"C_measured": c["slope"]["C_measured"], "C_fit": c["slope"]["C_fit"]} for k, c in cases.items()}
    fin = cases["finite/kac"]["slope"]
    verdict = {
        "smooth": (f"O(1/M) holds where the teacher field is Lipschitz: Kac slope {head['slope']:+.3f} "
                   f"[{head['ci'][0]:+.3f}, {head['ci'][1]:+.3f}] on M >= {cfg.fit_min_m}, over {len(spread)} data sets "
                   f"{min(spread):+.3f} to {max(spread):+.3f}"),
        "finite": (f"on Dirac data the rate is lost: whole-path slope {fin['slope']:+.3f} "
                   f"[{fin['ci'][0]:+.3f}, {fin['ci'][1]:+.3f}], median sample {fin['slope_median']:+.3f}; the share "
                   f"of samples ending at another data point falls like M^{fin['mismatch']['slope'] or float('nan'):+.2f}, "
                   "each such sample errs by the data spacing, so the RMS error falls like its square root"),
    }
    res = {
        "slope": head["slope"], "slope_ci": head["ci"], "slope_path": "kac",
        "slope_regime": f"smooth: Kac path, Gaussian-mixture data sigma={cfg.sigma}, data seed {cfg.data_seeds[0]}",
        "slope_fit_ms": head["fit_ms"], "slope_local": head["local"], "slope_median": head["slope_median"],
        "slope_median_ci": head["ci_median"],
        "slope_definition": ("least-squares slope of log sup_tau sqrt(mean_b |Y_tau - X_tau|^2) against log M over "
                             f"M >= {cfg.fit_min_m}, Euler students on the exact field, tau in [t_min, T] (whole path); "
                             "CI: paired bootstrap over the starting latents; local slopes between consecutive M"),
        "slope_spread": {"cases": spread_cases, "seeds": list(cfg.data_seeds), "slopes": spread,
                         "cis": [cases[k]["slope"]["ci"] for k in spread_cases],
                         "mean": float(np.mean(spread)), "sd": float(np.std(spread, ddof=1)) if len(spread) > 1 else 0.0,
                         "min": min(spread), "max": max(spread)},
        "finite": {"slope": fin["slope"], "ci": fin["ci"], "slope_median": fin["slope_median"],
                   "ci_median": fin["ci_median"], "fixed_tau": fin["fixed_tau"], "mismatch": fin["mismatch"],
                   "gaussian": {k: cases["finite/gaussian"]["slope"][k] for k in ("slope", "ci", "slope_median",
                                                                                  "fixed_tau", "mismatch")},
                   "single_point": {k: cases["finite/kac_single_point"]["slope"][k] for k in ("slope", "ci",
                                                                                              "slope_median")}},
        "transition": transition,
        "profiles": {"smooth/kac": cases["smooth/kac"].get("profiles"), "finite/kac": cases["finite/kac"].get("profiles")},
        "bound_vs_measured": {"smooth/kac": cases["smooth/kac"].get("bound_vs_measured"),
                              "finite/kac": cases["finite/kac"].get("bound_vs_measured")},
        "correlation": corr_detail["smooth_all_students"]["pearson_log"],
        "correlation_definition": "Pearson correlation of log endpoint W2 and log sup_tau W2 across the smooth "
                                  "regime's students (Euler on the exact Kac/Gaussian/VP fields, distilled)",
        "correlation_detail": corr_detail,
        "constants": constants, "equal_m": equal_m,
        "bound_worst_ratio": {"kac_distilled": distill["bound_worst_ratio"]} if distill else {},
        "bound_worst_ratio_chord": {"kac_distilled": distill["bound_worst_ratio_chord"]} if distill else {},
        "distillation": {k: v for k, v in distill.items() if k != "rows"} if distill else None,
        "cases": {k: _strip({kk: vv for kk, vv in c.items() if kk != "rows"}) for k, c in cases.items()},
        "verdict": verdict,
        "rows": rows,
    }
    for k, c in cases.items():
        sc = c["teacher"]["self_convergence"]
        r = sc["over_smallest_student_error"]
        sc["ok"] = bool(r is not None and r < TEACHER_RATIO_OK)
        if not sc["ok"]:
            print(teacher_note(k, c, cfg), flush=True)
    res["_plot"] = {"smooth": cases["smooth/kac"].get("_plot"), "finite": cases["finite/kac"].get("_plot")}
    res["_cases"] = cases
    return res


# ------------------------------------------------------------------------------------------------ figures

COLORS = {"kac": "C0", "gaussian": "C1", "vp": "C2", "kac_single_point": "C4", "kac_distilled": "C3"}


def _case_curve(c):
    ms = [r["M"] for r in c["rows"]]
    return np.asarray(ms, float), np.asarray([r["coupled_sup"] for r in c["rows"]]), \
        np.asarray([r["median_sample_sup"] for r in c["rows"]])


def plot_rate(res: dict, cfg: Theorem8Config):
    cases = res["_cases"]
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.4))
    ax = axes[0]
    for k, c in cases.items():
        if not k.startswith("smooth/"):
            continue
        name = k.split("/")[1]
        m, e, _ = _case_curve(c)
        s = c["slope"]
        color = COLORS.get(name, "C0" if name.startswith("kac") else "C7")
        style = "o-" if "seed" not in name else ".:"
        ax.loglog(m, e, style, color=color, alpha=1.0 if "seed" not in name else 0.6,
                  label=f"{name}: {s['slope']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}]")
    if res.get("distillation"):
        dr = sorted((r for r in res["rows"] if r["kind"] == "distilled"), key=lambda r: r["M"])
        ax.loglog([r["M"] for r in dr], [r["coupled_sup"] for r in dr], "D", color="C3", mfc="none", ms=7,
                  label="kac distilled (vs its MLP teacher)")
    ax.set_title(f"smooth: Gaussian-mixture data, sigma = {cfg.sigma:g} (hypotheses hold)", fontsize=9)
    ax = axes[1]
    for k in ("finite/kac", "finite/gaussian", "finite/kac_single_point"):
        c = cases[k]
        name = k.split("/")[1]
        m, e, med = _case_curve(c)
        s = c["slope"]
        ax.loglog(m, e, "o-", color=COLORS[name], label=f"{name} RMS: {s['slope']:+.2f} [{s['ci'][0]:+.2f}, {s['ci'][1]:+.2f}]")
        ax.loglog(m, med, "s--", color=COLORS[name], alpha=0.6, ms=4, label=f"{name} median sample: {s['slope_median']:+.2f}")
    ax.set_title("finite: the same points as Dirac data (Lipschitz hypothesis fails)", fontsize=9)
    for ax in axes:
        m = np.asarray(cfg.ms, float)
        ys = [ln.get_ydata()[0] for ln in ax.get_lines()]
        ax.loglog(m, max(ys) / m * m[0], "k-", lw=0.8, alpha=0.35, label="slope -1")
        ax.loglog(m, max(ys) / np.sqrt(m) * np.sqrt(m[0]), "k:", lw=0.8, alpha=0.35, label="slope -1/2")
        ax.axvspan(cfg.fit_min_m, max(cfg.ms), color="0.9", zorder=-1)
        ax.set_xlabel("Euler student steps M (shaded: fit range)")
        ax.set_ylabel("sup over the path of the coupled RMS error")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Theorem 8: path error against M (d={cfg.dim}, {cfg.n_support} points, a={cfg.kac_a:g}, c={cfg.kac_c:g}, "
                 f"t in [{cfg.t_min:g}, {cfg.T:g}])", fontsize=10)
    return fig


def plot_local_slopes(res: dict, cfg: Theorem8Config):
    cases = res["_cases"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, style in (("smooth/kac", "o-"), ("smooth/gaussian", "o-"), ("smooth/vp", "o-"), ("finite/kac", "s--"),
                     ("finite/gaussian", "s--"), ("finite/kac_single_point", "^:")):
        if k not in cases:
            continue
        loc = cases[k]["slope"]["local"]
        mid = [math.sqrt(v["m"][0] * v["m"][1]) for v in loc]
        name = k.split("/")[1]
        ax.semilogx(mid, [v["slope"] for v in loc], style, color=COLORS.get(name, "C7"), label=k)
    ax.axhline(-1.0, color="k", lw=0.8, alpha=0.5)
    ax.axhline(-0.5, color="k", lw=0.8, ls=":", alpha=0.5)
    ax.set_xlabel("M (geometric mean of consecutive step counts)")
    ax.set_ylabel("local slope d log err / d log M")
    ax.set_title("local slopes of the sup path error", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7)
    return fig


def plot_profiles(res: dict, cfg: Theorem8Config):
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 4.0))
    for ax, key in zip(axes[:2], ("smooth/kac", "finite/kac")):
        pr = res["profiles"].get(key)
        if not pr:
            continue
        t = np.asarray(pr["t"])
        for j, (eps, rec) in enumerate(sorted(pr["lipschitz"].items(), key=lambda kv: -float(kv[0]))):
            ls = "-" if j == 0 else "--"
            for stat, col in (("max", "C3"), ("p99", "C1"), ("median", "C0")):
                ax.semilogy(t, np.maximum(rec[stat], 1e-6), ls, color=col, label=f"L {stat}, eps={float(eps):g}")
        ax.set_xlabel("t (data at 0, latent at T)")
        ax.set_title(f"{key}: Lipschitz constant along the teacher", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=6)
    ax = axes[2]
    for key, ls in (("smooth/kac", "-"), ("finite/kac", "--")):
        pr = res["profiles"].get(key)
        if not pr:
            continue
        t = np.asarray(pr["t"])
        for stat, col in (("max", "C3"), ("median", "C0")):
            ax.semilogy(t, np.maximum(pr["accel"][stat], 1e-6), ls, color=col, label=f"{key} A {stat}")
    ax.set_xlabel("t")
    ax.set_title("acceleration A(t) along the teacher", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6)
    return fig


def plot_sigma(res: dict, cfg: Theorem8Config):
    tr = res["transition"]
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8))
    lab = [f"{r['sigma']:g}" for r in tr]
    x = np.arange(len(tr))
    s = np.asarray([r["slope"] for r in tr])
    lo = np.asarray([r["ci"][0] for r in tr])
    hi = np.asarray([r["ci"][1] for r in tr])
    axes[0].errorbar(x, s, yerr=[s - lo, hi - s], fmt="o-", capsize=4, label="RMS (whole path)")
    axes[0].plot(x, [r["slope_median"] for r in tr], "s--", label="median sample")
    axes[0].axhline(-1, color="k", lw=0.8, alpha=0.5)
    axes[0].axhline(-0.5, color="k", lw=0.8, ls=":", alpha=0.5)
    axes[0].set_ylabel(f"slope on M >= {cfg.fit_min_m}")
    axes[1].semilogy(x, [r["C_measured"] for r in tr], "o-")
    axes[1].set_ylabel("C = max_M M err")
    for ax in axes:
        ax.set_xticks(x, lab)
        ax.set_xlabel("data smoothing sigma (0 = Dirac data)")
        ax.grid(True, alpha=0.25)
    axes[0].legend(fontsize=7)
    fig.suptitle("Kac path: from Gaussian-mixture to finite data", fontsize=10)
    return fig


def plot_correlation(res: dict, cfg: Theorem8Config):
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    for r in res["rows"]:
        if "endpoint_w2" not in r:
            continue
        name = "kac_distilled" if r["kind"] == "distilled" else r["path"]
        mk = "o" if r["case"].startswith("smooth") else "x"
        ax.loglog(r["endpoint_w2"], r["path_w2_sup"], mk, color=COLORS.get(name, "C7"), mfc="none" if mk == "o" else None)
    vals = [r["endpoint_w2"] for r in res["rows"] if "endpoint_w2" in r] + \
        [r["path_w2_sup"] for r in res["rows"] if "endpoint_w2" in r]
    ax.loglog([min(vals), max(vals)], [min(vals), max(vals)], "k-", lw=0.8, alpha=0.4)
    for name in ("kac", "gaussian", "vp", "kac_distilled"):
        ax.plot([], [], "o", color=COLORS[name], mfc="none", label=name)
    ax.plot([], [], "x", color="gray", label="finite regime")
    cs, cf = res["correlation_detail"]["smooth_all_students"], res["correlation_detail"]["finite_all_students"]
    ax.set_title(f"endpoint vs sup path W2: r(log) smooth {cs['pearson_log']:.3f} (n={cs['n']}), "
                 f"finite {cf['pearson_log']:.3f}", fontsize=8)
    ax.set_xlabel("endpoint W2")
    ax.set_ylabel("sup over tau of W2")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def plot_trajectories(res: dict, cfg: Theorem8Config):
    support = make_support(cfg.dim, cfg.n_support, cfg.data_seeds[0])
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2))
    for ax, key in zip(axes, ("smooth", "finite")):
        tp = res["_plot"].get(key)
        if not tp:
            continue
        X = tp["teacher"].numpy()
        for b in range(X.shape[1]):
            ax.plot(X[:, b, 0], X[:, b, 1], "-", color="k", lw=0.8, alpha=0.7, label="teacher (RK4)" if b == 0 else None)
        if "student" in tp:
            g, Y = tp["student"]
            Y = Y.numpy()
            for b in range(Y.shape[1]):
                ax.plot(Y[:, b, 0], Y[:, b, 1], "o-", color="C0", lw=1, ms=2.5, alpha=0.8,
                        label=f"Euler M={g.numel() - 1}" if b == 0 else None)
        ax.plot(support[:, 0], support[:, 1], "x", color="gray", ms=4, label="means / data points")
        ax.set_title(f"Kac, {key} regime", fontsize=9)
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=6.5, loc="upper right")
    return fig


#: figure name -> (file, plot function, dpi)
FIGURES = {"rate": ("theorem8_rate.png", plot_rate, 90),
           "local_slopes": ("theorem8_local_slopes.png", plot_local_slopes, 90),
           "profiles": ("theorem8_profiles.png", plot_profiles, 85),
           "sigma": ("theorem8_sigma.png", plot_sigma, 90),
           "correlation": ("theorem8_correlation.png", plot_correlation, 90),
           "trajectories": ("theorem8_trajectories.png", plot_trajectories, 90)}


def print_table(res: dict) -> None:
    head = (f"{'case':30s} {'M':>4s} {'RMS sup':>9s} {'median':>9s} {'M*RMS':>7s} {'endpt W2':>9s} {'sup W2':>9s} "
            f"{'mismatch':>8s} {'bound r':>8s}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        br = r.get("bound_worst_ratio_accel")
        ew, pw = r.get("endpoint_w2"), r.get("path_w2_sup")
        print(f"{r['case']:30s} {r['M']:4d} {r['coupled_sup']:9.3e} {r['median_sample_sup']:9.3e} "
              f"{r['M'] * r['coupled_sup']:7.3f} {'' if ew is None else f'{ew:9.3e}':>9s} "
              f"{'' if pw is None else f'{pw:9.3e}':>9s} {r['mode_mismatch']:8.4f} {'' if br is None else f'{br:8.2e}'}")



def summary_markdown(res: dict, cfg: Theorem8Config, command: str) -> str:
    """The headline numbers of a run as a small markdown file (``theorem8_results.md``)."""
    L = [f"# Theorem 8: measured rates (`{command}`)", "",
         f"Wall time {res['wall_time_s']:.0f} s, {res['machine']['threads']} thread(s), load average at start "
         f"{res['machine']['loadavg_start'][0]:.2f}; torch {res['machine']['torch']}. Slopes: least squares of "
         f"log sup_tau RMS error against log M on M >= {cfg.fit_min_m}, 95 % paired bootstrap interval over the "
         "latents; C = max_M M * err.", "",
         "| case | sigma | slope | 95 % interval | median-sample slope | C | local slopes (M = 4 ... ) |",
         "|---|---|---|---|---|---|---|"]
    for k, c in res["cases"].items():
        s = c["slope"]
        loc = ", ".join(f"{v['slope']:+.2f}" for v in s["local"])
        L.append(f"| {k} | {c['sigma']:g} | {s['slope']:+.3f} | [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}] | "
                 f"{s['slope_median']:+.3f} | {s['C_measured']:.3g} | {loc} |")
    fin = res["finite"]
    L += ["", "Finite regime, slope of the coupled RMS error at fixed tau (Kac | Gaussian):", "",
          "| tau | Kac | Gaussian |", "|---|---|---|"]
    for tau, v in fin["fixed_tau"].items():
        g = fin["gaussian"]["fixed_tau"].get(tau, {})
        L.append(f"| {tau} | {v['slope']:+.3f} [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | {g.get('slope', float('nan')):+.3f} |")
    mm, gm = fin["mismatch"], fin["gaussian"]["mismatch"]
    fmt = lambda v: "n/a" if v is None else f"{v:+.2f}"  # noqa: E731
    L += ["", f"Share of samples a student sends to another data point than the teacher (M = {mm['M']}): Kac "
          f"{[round(v, 4) for v in mm['share']]} (slope {fmt(mm['slope'])}), Gaussian "
          f"{[round(v, 4) for v in gm['share']]} (slope {fmt(gm['slope'])}).", ""]
    for key in ("smooth/kac", "finite/kac"):
        pr = res["profiles"].get(key)
        if pr:
            L.append(f"- {key}: integral of L dt over [t_min, T] (max / p99 / median over samples) "
                     f"{pr['integral_L']['max']:.3g} / {pr['integral_L']['p99']:.3g} / {pr['integral_L']['median']:.3g}; "
                     f"Gronwall bound constant {pr['bound_constant']['max']:.3g} / {pr['bound_constant']['p99']:.3g} / "
                     f"{pr['bound_constant']['median']:.3g} against the measured C "
                     f"{res['cases'][key]['slope']['C_measured']:.3g}; largest L(eps=1e-5)/L(eps=1e-3) "
                     f"{pr['eps_ratio_max']:.3g} (100 = a jump).")
    sp = res["slope_spread"]
    L += [f"- Spread over data seeds {sp['seeds']}: {', '.join(f'{v:+.3f}' for v in sp['slopes'])} (sd {sp['sd']:.3f}).",
          f"- Correlation of log endpoint W2 and log sup-path W2: smooth {res['correlation']:.3f} "
          f"(n = {res['correlation_detail']['smooth_all_students']['n']}), finite "
          f"{res['correlation_detail']['finite_all_students']['pearson_log']:.3f}."]
    if res["bound_worst_ratio"]:
        L.append(f"- Per-interval bound for the distilled students: worst sup W2 / (sqrt(endpoint MSE) + A D^2/8) "
                 f"{res['bound_worst_ratio']['kac_distilled']:.3g}, chord form {res['bound_worst_ratio_chord']['kac_distilled']:.3g}.")
    L += [f"- {teacher_note(k, c, cfg)}." for k, c in res["cases"].items() if not c["teacher"]["self_convergence"]["ok"]]
    L += ["", *[f"**{k}**: {v}." for k, v in res["verdict"].items()], ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------ CLI


def _tuple_of(typ):
    def parse(text: str):
        try:
            return tuple(typ(v) for v in str(text).replace(" ", ",").split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {typ.__name__}s, got {text!r}")
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="experiments/theorem8.py", description=__doc__)  # one-line errors, --debug
    p.add_argument("--out", type=Path, default=Path("runs/theorem8"), help="output directory (default runs/theorem8)")
    p.add_argument("--quick", action="store_true", help="small budget (< 60 s on 2 cores)")
    p.add_argument("--paper-figures", action="store_true", help="also write the figures to paper_figures/")
    p.add_argument("--paper-dir", type=Path, default=_common.PAPER_FIGURES, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: the physical cores, 1 when the load average says the "
                        "machine is busy; kacnum.core.cli.resolve_threads)")
    p.add_argument("--no-distill", action="store_true", help="skip the distilled students")
    fields = {f.name: f for f in dataclasses.fields(Theorem8Config)}
    for name, f in fields.items():
        if name in ("quick", "distill"):
            continue
        d = f.default
        if isinstance(d, tuple):
            typ = _tuple_of(type(d[0]) if d else int)
            if name in ("smooth_paths",):
                typ = _tuple_of(str)
            p.add_argument("--" + name.replace("_", "-"), type=typ, default=None, metavar="A,B,...")
        else:
            p.add_argument("--" + name.replace("_", "-"), type=type(d), default=None)
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[Theorem8Config, argparse.Namespace]:
    a = build_parser().parse_args(argv)
    over = dict(QUICK) if a.quick else {}
    for f in dataclasses.fields(Theorem8Config):
        v = getattr(a, f.name, None)
        if v is not None and f.name not in ("quick", "distill"):
            over[f.name] = v
    if a.no_distill:
        over["distill"] = False
    cfg = Theorem8Config(**over)
    if a.threads is not None:
        cli.resolve_threads(a.threads, warn=False)  # a bad count fails here; main resolves it (and may warn)
    return cfg, a


def main(argv: Optional[Sequence[str]] = None) -> dict:
    t0 = time.perf_counter()
    cfg, a = parse_args(argv)
    cli.check_out_dir(a.out)
    if a.paper_figures:
        cli.check_out_dir(a.paper_dir, "--paper-figures")
    a.threads = cli.resolve_threads(a.threads)  # after the checks: a bad command prints its error line only
    print(f"theorem8: {'quick' if cfg.quick else 'default'} budget, output in {a.out}; three regimes (smooth, finite, "
          f"transition), {len(cfg.data_seeds)} data sets", flush=True)
    torch.set_num_threads(a.threads)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", dataclasses.asdict(cfg))
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    res = run(cfg, t0)
    plot, cases = res.pop("_plot"), res.pop("_cases")
    res["wall_time_s"] = time.perf_counter() - t0
    res["machine"] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "loadavg_start": load0,
                      "loadavg_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
                      "python": platform.python_version(), "torch": torch.__version__}
    res["config"] = dataclasses.asdict(cfg)
    res["_plot"], res["_cases"] = plot, cases
    folders = [out] + ([a.paper_dir] if a.paper_figures else [])
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
    for key, (filename, plot, dpi) in FIGURES.items():
        fig = plot(res, cfg)
        fig.tight_layout()
        for d in folders:
            fig.savefig(d / filename, dpi=dpi)
        plt.close(fig)
    res.pop("_plot")
    res.pop("_cases")
    res["figures"] = {k: str(out / filename) for k, (filename, _, _) in FIGURES.items()}
    md = summary_markdown(res, cfg, _common.shown_command("theorem8", argv))
    _common.write_text("theorem8_results.md", md, out, a.paper_dir if a.paper_figures else None)
    save_json(out / "theorem8.json", res)
    save_json(out / "results.json", res)
    print_table(res)
    print()
    print(md, flush=True)
    print(f"wall time {res['wall_time_s']:.1f}s (load average at start {load0}); results in {out}", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
