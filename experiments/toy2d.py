"""2D toy benchmark: guided Kac teacher, staged DistillKac, Gaussian FM and VP-DDIM baselines.

For each data set (8 Gaussians, checkerboard, two moons, a 9-point near-Dirac grid; labels = mixture
component) this script

1. trains three networks of the same architecture (MLP) and budget: a Kac flow teacher
   (``KacPath``, flow matching), Gaussian flow matching (``GaussianPath``) and VP diffusion
   (``VPPath``, ε-prediction), all class-conditional with label dropout ``p_uncond`` and sampled with
   classifier-free guidance of scale ``--guidance``;
2. samples the Kac teacher with AB-2 and Euler at every NFE of ``--nfes`` (default 100 20 4 2 1);
3. distils it with the staged schedule ``nfes`` (100 → 20 → 4 → 2 → 1) from forward-noised data and
   from teacher roll-outs, and one-shot ``100 → 1`` with the same number of optimiser steps;
4. samples Gaussian FM (Euler and AB-2) and VP (DDIM) at every NFE;
4b. (``--no-flight`` skips it) the isotropic Kac flow: a teacher on ``FlightPath`` (the planar random
   flight of docs/mathematics.md §14, same ``a``, ``c``: a disc-shaped latent with a circle atom instead of the square with
   edge atoms) trained with the same budget, sampled with AB-2 and Euler at every NFE
   (``flight_teacher_*``), and distilled with the staged schedule from the main source
   (``flight_distill_staged_<source>``): rows to read against the coordinate-wise Kac teacher and students
   and Gaussian FM at the same NFE;
5. measures W2 (POT, exact network simplex) between ``n_eval`` samples and ``n_eval`` held-out data
   points. Generation uses the held-out labels themselves (the data's label frequencies, with the
   reference set's exact class counts, so that count noise between clusters does not dominate W2)
   and one latent draw per path shared by all its methods and NFEs; the ``data`` row is the W2
   between the held-out set and an independent data sample with the same class counts: the noise
   floor of the estimate.

NFE is the number of solver steps (DistillKac's accounting); ``nfe_model`` counts network
evaluations (a guided step costs 2; a distilled student, which learnt the guided map, costs 1).

Outputs in ``--out`` (default ``runs/toy2d``): ``config.json``, ``results.json`` (``rows`` with
``dataset, method, nfe, nfe_model, w2``; ``checks``; distillation histories), ``results.md`` (tables),
``samples.png`` (methods × NFE for each data set) and ``samples_<dataset>.png``.

    python experiments/toy2d.py --quick --out runs/toy2d_quick      # < 2 min on 2 cores (a smoke test)
    python experiments/toy2d.py                                     # default budget

The quick budget trains every network for a few hundred steps: it checks that the pipeline runs and
writes its files, and its verdicts are marked "quick budget, not conclusive"; the comparison of the
methods is the default budget's.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from kacnum.core import cli  # noqa: E402
from kacnum.core.checks import check_finite_number, check_int, check_positive  # noqa: E402
from kacnum.core.checkpoint import save_json  # noqa: E402
from kacnum.students.distill import EMA, DistillConfig, Distiller, validate_stages  # noqa: E402
from kacnum.flows.guidance import GuidedField  # noqa: E402
from kacnum.flows.losses import EpsilonLoss, FlowMatchingLoss  # noqa: E402
from kacnum.images.models.mlp import MLP  # noqa: E402
from kacnum.processes.kac import KacProcess  # noqa: E402
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, VPPath  # noqa: E402
from kacnum.core.progress import Progress  # noqa: E402
from kacnum.flows.solvers import ddim_sample, integrate  # noqa: E402
from kacnum.theory.toy_data import TOY_DATASETS, TOY_NUM_CLASSES, make_toy  # noqa: E402
from kacnum.theory.transport import wasserstein_empirical  # noqa: E402

DATASETS = TOY_DATASETS


@dataclass(frozen=True)
class Toy2DConfig:
    """Budget and settings of one run (``--quick`` and the default differ only here)."""

    datasets: tuple = DATASETS
    nfes: tuple = (100, 20, 4, 2, 1)
    n_train: int = 20000
    n_eval: int = 2000
    hidden: int = 128
    depth: int = 3
    train_steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    ema_decay: float = 0.999
    guidance: float = 1.2
    p_uncond: float = 0.1
    kac_a: float = 9.0
    kac_c: float = 3.0
    distill_steps: int = 300
    distill_lr: float = 5e-4
    distill_batch: int = 256
    distill_ema: float = 0.99
    distill_source: str = "rollout"
    compare_sources: bool = True
    rollout_pool: int = 1024
    rollout_refresh: int = 300
    one_shot: bool = True
    flight: bool = True
    seed: int = 0
    threads: int = 1  # two threads lose to contention on a shared 2-core machine
    quick: bool = False

    def __post_init__(self):
        validate_stages(self.nfes)
        unknown = sorted(set(self.datasets) - set(DATASETS))
        if unknown or not self.datasets:
            raise ValueError(f"datasets must be a non-empty subset of {DATASETS}, got {self.datasets!r}")
        if self.distill_source not in ("forward", "rollout"):
            raise ValueError(f"distill_source must be 'forward' or 'rollout', got {self.distill_source!r}")
        if self.n_eval < 2:
            raise ValueError(f"n_eval must be >= 2, got {self.n_eval}")
        for name in ("n_train", "hidden", "depth", "train_steps", "batch_size", "distill_steps", "distill_batch",
                     "rollout_pool", "rollout_refresh", "threads"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        for name in ("lr", "distill_lr", "kac_a", "kac_c"):
            check_positive(name, getattr(self, name))
        check_finite_number("guidance", self.guidance)


QUICK = dict(n_train=4000, n_eval=600, hidden=64, depth=2, train_steps=400, batch_size=256, lr=3e-3,
             ema_decay=0.99, distill_steps=60, distill_lr=1e-3, distill_batch=128, distill_ema=0.9,
             rollout_pool=512, rollout_refresh=30, quick=True)


# ------------------------------------------------------------------------------------------ training


def train_model(model: torch.nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, steps: int,
                batch_size: int, lr: float, ema_decay: float, seed: int, desc: str = "train") -> tuple:
    """AdamW with cosine decay, gradient clip 1, EMA; ``loss_fn(model, x0, y, generator)["loss"]``.

    Returns ``(ema_model, losses)``.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 0.5 * (1 + math.cos(math.pi * min(n, steps) / steps)))
    ema = EMA(model, ema_decay)
    losses = []
    model.train()
    bar = Progress(steps, desc, every_steps=steps)  # log lines: first step, every 30 s, the end
    for _ in bar.iterate(range(steps)):
        idx = torch.randint(x.shape[0], (batch_size,), generator=gen)
        out = loss_fn(model, x[idx], y[idx], generator=gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(model)
        losses.append(float(out["loss"].detach()))
        bar.set_postfix(loss=losses[-1])
    bar.close()
    return ema.model, losses


# ------------------------------------------------------------------------------------------ sampling


def fast_kac_path(a: float, c: float) -> KacPath:
    """``KacPath(a, c)`` whose noise uses the exact per-element Poisson-Beta sampler.

    Both of ``KacProcess``'s samplers are exact; for rows of 2 coordinates the default row-wise
    table sampler builds a 256-cell CDF table per row (about 100x slower here), so the toy runs pin
    ``method="poisson_beta"``. Nothing else of the path changes.
    """
    path = KacPath(a=a, c=c)
    path.process.sample = functools.partial(KacProcess.sample, path.process, method="poisson_beta")
    return path


def eval_labels(y_test: torch.Tensor) -> torch.Tensor:
    """Generation labels: the held-out set's own labels, so every method is scored with exactly the
    class counts of the reference set (the data's label frequencies without count noise)."""
    return y_test.clone()


def matched_reference(name: str, y_test: torch.Tensor, seed: int) -> torch.Tensor:
    """An independent data sample with exactly ``y_test``'s class counts (the W2 noise floor)."""
    x, y = make_toy(name, 8 * y_test.shape[0], torch.Generator().manual_seed(seed))
    parts = []
    for c in torch.unique(y_test):
        need = int((y_test == c).sum())
        have = x[y == c]
        if have.shape[0] < need:
            raise RuntimeError(f"matched_reference: class {int(c)} of {name} too rare for {need} points")
        parts.append(have[:need])
    return torch.cat(parts).float()


@torch.no_grad()
def sample_flow(model, path, z: torch.Tensor, steps: int, method: str, y: torch.Tensor,
                guidance: float) -> tuple[torch.Tensor, int]:
    """Guided flow from the latents ``z: (n, 2)`` with ``steps`` steps of ``method`` on
    ``path.default_time_grid``. Returns ``(x, nfe_model)``."""
    field = GuidedField(model, guidance, null_label=model.null_label).field(y)
    res = integrate(field, z, path.default_time_grid(steps, dtype=z.dtype), method)
    return res.x, res.nfe_model


@torch.no_grad()
def sample_ddim(model, path: VPPath, z: torch.Tensor, steps: int, y: torch.Tensor,
                guidance: float) -> tuple[torch.Tensor, int]:
    """Guided DDIM (eta = 0) of an eps-model from ``T`` to ``path.t_min_default``."""
    eps = GuidedField(model, guidance, null_label=model.null_label).field(y)
    res = ddim_sample(eps, z, path.alpha_bar, path.default_time_grid(steps, dtype=z.dtype))
    return res.x, res.nfe_model


# ------------------------------------------------------------------------------------------ one data set


def run_dataset(name: str, cfg: Toy2DConfig, log: Callable[[str], None]) -> dict:
    """Train, distil, sample and score every method on data set ``name``; returns rows, samples,
    distillation histories and timings."""
    seed = cfg.seed
    x_train, y_train = make_toy(name, cfg.n_train, torch.Generator().manual_seed(seed))
    x_test, y_test = make_toy(name, cfg.n_eval, torch.Generator().manual_seed(seed + 10_000))
    x_train, x_test = x_train.float(), x_test.float()
    y_train, y_test = y_train.long(), y_test.long()
    num_classes = TOY_NUM_CLASSES[name]
    y_gen = eval_labels(y_test)
    rows, samples, timing, histories = [], {}, {}, {}

    def score(method: str, nfe: int, nfe_model: int, x: torch.Tensor):
        w2 = wasserstein_empirical(x.double(), x_test.double(), p=2, exact_max=max(5000, cfg.n_eval))
        rows.append({"dataset": name, "method": method, "nfe": nfe, "nfe_model": nfe_model, "w2": w2})
        samples[(method, nfe)] = x.detach().cpu()
        log(f"  {name:16s} {method:24s} NFE {nfe:4d} ({nfe_model:4d} evals)  W2 {w2:.4f}")

    score("data", 0, 0, matched_reference(name, y_test, seed + 20_000))

    def new_model():
        torch.manual_seed(seed)
        return MLP(dim=2, hidden=cfg.hidden, depth=cfg.depth, num_classes=num_classes, T=1.0)

    kac = fast_kac_path(cfg.kac_a, cfg.kac_c)
    paths = {"kac": kac, "gaussian_fm": GaussianPath(), "vp": VPPath()}
    losses = {
        "kac": FlowMatchingLoss(kac, p_uncond=cfg.p_uncond, null_label=num_classes),
        "gaussian_fm": FlowMatchingLoss(paths["gaussian_fm"], p_uncond=cfg.p_uncond, null_label=num_classes),
        "vp": EpsilonLoss(paths["vp"], p_uncond=cfg.p_uncond, null_label=num_classes),
    }
    if cfg.flight:  # the isotropic Kac flow (planar random flight), same a and c
        paths["flight"] = FlightPath(cfg.kac_a, cfg.kac_c)
        losses["flight"] = FlowMatchingLoss(paths["flight"], p_uncond=cfg.p_uncond, null_label=num_classes)
    models = {}
    for key in paths:
        t0 = time.perf_counter()
        models[key], trace = train_model(new_model(), losses[key], x_train, y_train, cfg.train_steps,
                                         cfg.batch_size, cfg.lr, cfg.ema_decay, seed, desc=f"{name}:{key}")
        timing[f"train_{key}"] = time.perf_counter() - t0
        tail = trace[-max(1, len(trace) // 10):]
        log(f"  {name:16s} trained {key:12s} {timing[f'train_{key}']:6.1f}s  final loss {sum(tail) / len(tail):.4f}")

    # common random numbers: one latent draw per path family, shared by every method and NFE
    z = {key: p.sample_latent((cfg.n_eval, 2), generator=torch.Generator().manual_seed(seed + 30_000),
                              dtype=torch.float32) for key, p in paths.items()}

    # -- teacher and baselines, direct sampling
    t0 = time.perf_counter()
    direct = (("kac", ("ab2", "euler")), ("gaussian_fm", ("euler", "ab2"))) + \
        ((("flight", ("ab2", "euler")),) if cfg.flight else ())
    for key, methods in direct:
        for method in methods:
            tag = f"{key + '_teacher' if key in ('kac', 'flight') else key}_{method}"
            for nfe in cfg.nfes:
                x, nm = sample_flow(models[key], paths[key], z[key], nfe, method, y_gen, cfg.guidance)
                score(tag, nfe, nm, x)
    for nfe in cfg.nfes:
        x, nm = sample_ddim(models["vp"], paths["vp"], z["vp"], nfe, y_gen, cfg.guidance)
        score("vp_ddim", nfe, nm, x)
    timing["sample_direct"] = time.perf_counter() - t0

    # -- distillation
    base = dict(steps_per_stage=cfg.distill_steps, batch_size=cfg.distill_batch, lr=cfg.distill_lr,
                lr_schedule="cosine", ema_decay=cfg.distill_ema, guidance_scale=cfg.guidance,
                p_uncond=cfg.p_uncond, rollout_pool=cfg.rollout_pool, rollout_refresh=cfg.rollout_refresh,
                seed=seed, teacher_method="ab2")
    runs = [(f"distill_staged_{cfg.distill_source}", DistillConfig(stages=cfg.nfes, source=cfg.distill_source, **base))]
    if cfg.compare_sources:
        other = "forward" if cfg.distill_source == "rollout" else "rollout"
        runs.append((f"distill_staged_{other}", DistillConfig(stages=cfg.nfes, source=other, **base)))
    if cfg.one_shot:
        total = cfg.distill_steps * (len(cfg.nfes) - 1)
        # one student interval: x at t_0 = T is the latent whatever the source; roll-outs are cheaper
        runs.append(("distill_oneshot", DistillConfig(stages=(cfg.nfes[0], cfg.nfes[-1]), source="rollout",
                                                      **{**base, "steps_per_stage": total})))
    runs = [("kac", m, c) for m, c in runs]
    if cfg.flight:  # the isotropic teacher's students: the staged schedule from the main source
        runs.append(("flight", f"flight_distill_staged_{cfg.distill_source}",
                     DistillConfig(stages=cfg.nfes, source=cfg.distill_source, **base)))
    for key, method, dcfg in runs:
        t0 = time.perf_counter()
        d = Distiller(models[key], paths[key], x_train, y_train, dcfg)
        hist = d.run()
        timing[method] = time.perf_counter() - t0
        histories[method] = [{k: v for k, v in h.items() if k != "losses"} for h in hist]
        log(f"  {name:16s} {method} {timing[method]:6.1f}s  final losses "
            + ", ".join(f"{h['student_steps']}:{h['final_loss']:.2e}" for h in hist))
        for stage in range(1, len(dcfg.stages)):
            s = d.sampler(stage)
            score(method, s.steps, s.nfe, s(cfg.n_eval, y=y_gen, latent=z[key]))
    return {"rows": rows, "samples": samples, "timing": timing, "distill": histories,
            "num_classes": num_classes}


# ------------------------------------------------------------------------------------------ reporting


def _lookup(rows: Sequence[dict], dataset: str, method: str, nfe: int) -> Optional[float]:
    for r in rows:
        if r["dataset"] == dataset and r["method"] == method and r["nfe"] == nfe:
            return r["w2"]
    return None


def goal_checks(rows: Sequence[dict], cfg: Toy2DConfig) -> dict:
    """The toy goals, per data set: 1-step distilled W2 / 100-step teacher W2 <= 1.5; distilled W2
    below the best Gaussian-FM solver and DDIM at NFE 1, 2, 4; staged vs one-shot at 1 step;
    forward vs roll-out sources."""
    staged = f"distill_staged_{cfg.distill_source}"
    k0, k_last = cfg.nfes[0], cfg.nfes[-1]
    out = {}
    for ds in cfg.datasets:
        c = {}
        teacher = _lookup(rows, ds, "kac_teacher_ab2", k0)
        one = _lookup(rows, ds, staged, k_last)
        if teacher and one is not None:
            c["ratio_1step_to_teacher"] = one / teacher
            c["ratio_within_1.5"] = one / teacher <= 1.5
        beats = {}
        for nfe in (4, 2, 1):
            if nfe not in cfg.nfes[1:]:
                continue
            dw = _lookup(rows, ds, staged, nfe)
            fm = [w for w in (_lookup(rows, ds, "gaussian_fm_euler", nfe), _lookup(rows, ds, "gaussian_fm_ab2", nfe))
                  if w is not None]
            dd = _lookup(rows, ds, "vp_ddim", nfe)
            beats[str(nfe)] = {"distilled": dw, "gaussian_fm_best": min(fm) if fm else None, "vp_ddim": dd,
                               "beats_both": dw is not None and bool(fm) and dd is not None
                               and dw < min(fm) and dw < dd}
        c["beats_baselines"] = beats
        os_w = _lookup(rows, ds, "distill_oneshot", k_last)
        if os_w is not None and one is not None:
            c["staged_vs_oneshot"] = {"staged": one, "oneshot": os_w, "staged_better": one < os_w}
        srcs = {}
        for src in ("forward", "rollout"):
            vals = {str(n): _lookup(rows, ds, f"distill_staged_{src}", n) for n in cfg.nfes[1:]}
            if any(v is not None for v in vals.values()):
                srcs[src] = vals
        if len(srcs) == 2:
            srcs["rollout_better_at"] = [n for n in srcs["forward"]
                                         if srcs["rollout"][n] is not None and srcs["forward"][n] is not None
                                         and srcs["rollout"][n] < srcs["forward"][n]]
        c["sources"] = srcs
        fl_one = _lookup(rows, ds, f"flight_distill_staged_{cfg.distill_source}", k_last)
        fl_teacher = _lookup(rows, ds, "flight_teacher_ab2", k0)
        if fl_teacher is not None:
            iso = {}
            for nfe in cfg.nfes:
                fm = [w for w in (_lookup(rows, ds, "gaussian_fm_euler", nfe), _lookup(rows, ds, "gaussian_fm_ab2", nfe))
                      if w is not None]
                iso[str(nfe)] = {"flight_teacher": _lookup(rows, ds, "flight_teacher_ab2", nfe),
                                 "kac_teacher": _lookup(rows, ds, "kac_teacher_ab2", nfe),
                                 "flight_distilled": _lookup(rows, ds, f"flight_distill_staged_{cfg.distill_source}", nfe),
                                 "kac_distilled": _lookup(rows, ds, staged, nfe),
                                 "gaussian_fm_best": min(fm) if fm else None}
            c["isotropic"] = iso
            if fl_one is not None:
                c["flight_ratio_1step_to_teacher"] = fl_one / fl_teacher
        out[ds] = c
    return out


def results_markdown(rows: Sequence[dict], cfg: Toy2DConfig, checks: dict) -> str:
    lines = [f"# toy2d: W2 to held-out data ({cfg.n_eval} samples, exact OT), guidance {cfg.guidance}", ""]
    # the quick budget only exercises the pipeline: its networks are barely trained, so its verdicts say
    # nothing about the methods (the default budget's comparison is the result)
    quick = " [quick budget, not conclusive]" if cfg.quick else ""
    if cfg.quick:
        lines += ["Quick budget (`--quick`): a smoke test of the pipeline with barely trained networks. The verdicts "
                  "below are marked as not conclusive: they do not carry over to the default budget, whose run "
                  "is the comparison of the methods.", ""]
    for ds in cfg.datasets:
        methods = []
        for r in rows:
            if r["dataset"] == ds and r["method"] not in methods:
                methods.append(r["method"])
        lines += [f"## {ds}", "", "| method | " + " | ".join(f"NFE {n}" for n in cfg.nfes) + " |",
                  "|---|" + "---|" * len(cfg.nfes)]
        for m in methods:
            if m == "data":
                continue
            cells = []
            for n in cfg.nfes:
                w = _lookup(rows, ds, m, n)
                cells.append("" if w is None else f"{w:.4f}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        floor = _lookup(rows, ds, "data", 0)
        c = checks.get(ds, {})
        lines += ["", f"noise floor (data vs data): {floor:.4f}"]
        if "ratio_1step_to_teacher" in c:
            lines.append(f"1-step distilled / {cfg.nfes[0]}-step teacher: {c['ratio_1step_to_teacher']:.3f} "
                         f"({'within' if c['ratio_within_1.5'] else 'NOT within'} 1.5){quick}")
        for nfe, b in c.get("beats_baselines", {}).items():
            lines.append(f"NFE {nfe}: distilled {'beats' if b['beats_both'] else 'does NOT beat'} "
                         f"Gaussian FM and DDIM{quick}")
        if "staged_vs_oneshot" in c:
            s = c["staged_vs_oneshot"]
            lines.append(f"staged {s['staged']:.4f} vs one-shot {s['oneshot']:.4f} at 1 step{quick}")
        if "flight_ratio_1step_to_teacher" in c:
            lines.append(f"isotropic (flight) 1-step distilled / {cfg.nfes[0]}-step teacher: "
                         f"{c['flight_ratio_1step_to_teacher']:.3f}{quick}")
        lines.append("")
    return "\n".join(lines)


def plot_samples(result: dict, name: str, cfg: Toy2DConfig):
    """Figure for one data set: rows = methods, columns = NFE."""
    methods = []
    for (m, _n) in result["samples"]:
        if m not in methods and m != "data":
            methods.append(m)
    fig, axes = plt.subplots(len(methods) + 1, len(cfg.nfes), figsize=(1.6 * len(cfg.nfes), 1.6 * (len(methods) + 1)),
                             squeeze=False)
    ref = result["samples"][("data", 0)]
    lim = float(ref.abs().max()) * 1.15 + 0.1
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    axes[0, 0].scatter(ref[:, 0], ref[:, 1], s=0.5, c="k")
    axes[0, 0].set_title("data", fontsize=7)
    for ax in axes[0, 1:]:
        ax.axis("off")
    for i, m in enumerate(methods, start=1):
        axes[i, 0].set_ylabel(m.replace("distill_", "d_"), fontsize=6)
        for j, n in enumerate(cfg.nfes):
            x = result["samples"].get((m, n))
            if x is None:
                axes[i, j].set_frame_on(False)  # keeps the row label of column 0
                continue
            axes[i, j].scatter(x[:, 0].clamp(-lim, lim), x[:, 1].clamp(-lim, lim), s=0.5, c="C0")
            axes[i, j].set_title(f"NFE {n}", fontsize=6)
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    return fig


def combine_pngs(paths: Sequence[Path], out: Path) -> None:
    """Stack per-data-set PNGs side by side into one image."""
    from PIL import Image

    imgs = [Image.open(p).convert("RGB") for p in paths]
    h = max(i.height for i in imgs)
    canvas = Image.new("RGB", (sum(i.width for i in imgs), h), "white")
    xoff = 0
    for i in imgs:
        canvas.paste(i, (xoff, 0))
        xoff += i.width
    canvas.save(out)


# ------------------------------------------------------------------------------------------ main


#: Toy2DConfig field (or library parameter) -> the flag that sets it, for error messages
FLAGS = {"stages": "--nfes", "nfes": "--nfes", "distill_source": "--source", "datasets": "--datasets",
         "guidance": "--guidance", **{f: "--" + f.replace("_", "-") for f in (
             "train_steps", "distill_steps", "n_eval", "n_train", "hidden", "depth", "seed", "threads",
             "rollout_pool", "rollout_refresh", "batch_size", "distill_batch")}}


def parse_args(argv: Optional[Sequence[str]] = None) -> tuple[Toy2DConfig, Path]:
    """``(Toy2DConfig, out)`` from the command line; bad values raise ``cli.UsageError`` (one line naming
    the flag) or exit with argparse's one-line error, before anything runs."""
    p = cli.ArgumentParser(prog="experiments/toy2d.py", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/toy2d"), help="output directory")
    p.add_argument("--quick", action="store_true", help="small budget (< 2 min on 2 cores)")
    p.add_argument("--datasets", type=cli.choice_list(DATASETS), default=None,
                   help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--nfes", type=cli.int_list(minimum=1), default=None,
                   help="staged schedule / NFE list, e.g. 100,20,4,2,1 (each divides the previous)")
    p.add_argument("--guidance", type=cli.finite_float, default=None, help="guidance scale s (1 = none)")
    p.add_argument("--source", choices=("forward", "rollout"), default=None, help="main distillation source")
    p.add_argument("--no-compare-sources", action="store_true", help="distil with the main source only")
    p.add_argument("--no-one-shot", action="store_true", help="skip one-shot 100 -> 1")
    p.add_argument("--no-flight", action="store_true", help="skip the isotropic Kac flow (FlightPath) rows")
    for name, typ in (("train-steps", cli.positive_int), ("distill-steps", cli.positive_int),
                      ("n-eval", cli.int_at_least(2)), ("n-train", cli.positive_int), ("hidden", cli.positive_int),
                      ("depth", cli.positive_int), ("seed", cli.nonnegative_int), ("threads", cli.positive_int),
                      ("rollout-pool", cli.positive_int), ("rollout-refresh", cli.positive_int),
                      ("batch-size", cli.positive_int), ("distill-batch", cli.positive_int)):
        p.add_argument(f"--{name}", type=typ, default=None)
    a = p.parse_args(argv)
    kw = dict(QUICK) if a.quick else {}
    if a.datasets:
        kw["datasets"] = a.datasets
    if a.nfes:
        kw["nfes"] = a.nfes
    if a.guidance is not None:
        kw["guidance"] = a.guidance
    if a.source:
        kw["distill_source"] = a.source
    if a.no_compare_sources:
        kw["compare_sources"] = False
    if a.no_one_shot:
        kw["one_shot"] = False
    if a.no_flight:
        kw["flight"] = False
    for name in ("train_steps", "distill_steps", "n_eval", "n_train", "hidden", "depth", "seed", "threads",
                 "rollout_pool", "rollout_refresh", "batch_size", "distill_batch"):
        v = getattr(a, name)
        if v is not None:
            kw[name] = v
    try:
        cfg = Toy2DConfig(**kw)
    except ValueError as e:
        raise cli.UsageError(cli.renamed(cli.one_line(e), FLAGS)) from None
    return cfg, a.out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, out = parse_args(argv)
    cli.check_out_dir(out, "--out")
    if "--threads" not in argv and not any(x.startswith("--threads=") for x in argv):
        cfg = dataclasses.replace(cfg, threads=cli.resolve_threads(None))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, out)
    finally:
        torch.set_num_threads(threads_before)


def _run(cfg: Toy2DConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", cfg)
    t_start = time.perf_counter()
    all_rows, timing, distill = [], {}, {}
    pngs = []

    def log(msg: str) -> None:
        print(msg, flush=True)

    for name in cfg.datasets:
        t0 = time.perf_counter()
        res = run_dataset(name, cfg, log)
        all_rows += res["rows"]
        timing[name] = {**res["timing"], "total": time.perf_counter() - t0}
        distill[name] = res["distill"]
        fig = plot_samples(res, name, cfg)
        png = out / f"samples_{name}.png"
        fig.savefig(png, dpi=90)
        plt.close(fig)
        pngs.append(png)
    combine_pngs(pngs, out / "samples.png")
    checks = goal_checks(all_rows, cfg)
    results = {"config": cfg, "rows": all_rows, "checks": checks, "distill": distill, "timing": timing,
               "seconds": time.perf_counter() - t_start,
               "w2": "exact OT (POT emd2), p = 2, to held-out data; nfe = solver steps, "
                     "nfe_model = network evaluations"}
    save_json(out / "results.json", results)
    md = results_markdown(all_rows, cfg, checks)
    (out / "results.md").write_text(md + f"\ntotal time {results['seconds']:.0f} s\n")
    print(md)
    print(f"total time {results['seconds']:.0f} s; files in {out}")
    return results


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
