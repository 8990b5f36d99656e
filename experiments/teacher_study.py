"""Training the Kac teacher well: one table of teacher-training recipes at the same budget.

On MNIST (``--preset cpu``: ``mnist_small``, 3000 steps) the guided Kac teacher with 100 AB-2 steps scores
FID 4.94 and Gaussian flow matching on the same UNet, data and budget 3.10 with 20 AB-2 steps; the Kac
sampler is converged (docs/mathematics.md §13), so the gap is in what the network learned. This script trains one
teacher per row, every row with the same model, data, steps, batch, learning rate, EMA and seed, and
measures for each:

* the held-out loss per bin of t (:func:`kacnum.flows.losses.binned_loss` on the test split: a fine bin
  t < 0.05 and ten bins of width 0.1, the same t and noise for every row of a path, and the share of Kac
  coordinates on atoms per bin);
* FID with its 95 % bootstrap interval, KID and class accuracy of ``--num-samples`` guided samples
  (guidance 1.2; Kac rows 100 AB-2 steps, the FM row at 20 and at 100, the VP rows 100 and 20 DDIM steps),
  with the pipeline's evaluation:
  the project's feature classifier and reference statistics from ``--eval-cache`` (default ``OUT/eval``;
  point it at an earlier run's ``eval/`` folder to reuse that classifier), one extractor for every row,
  and the FID floor of as many real test images;
* wall time (training, per-bin loss, sampling, evaluation).

Rows (``--rows``; default: all but ``kac_sigma15`` and ``kac_power2``):

================= =============================================================================
fm                Gaussian flow matching (rectified flow), same UNet: the bar (20 and 100 AB-2)
kac               Kac flow, a = 9, c = 3, g = t, uniform t, no weighting (today's teacher)
kac_sigma05       + data smoothing σ = 0.05 (``data_sigma``: x0 + σ ε before the path)
kac_sigma15       + data smoothing σ = 0.15
kac_logitnormal   + training times logit-normal(0, 1) (fewer t near 0 and near T)
kac_power2        + training times with CDF x² (density 2t: fewer small t)
kac_atom          + loss weight ∝ 1 - e^{-a g(t)} (down-weights the atom-dominated small t)
kac_precond       + EDM-style preconditioning c_in = 1/std(x_t), c_out = std(u_t) (``inout``)
kac_a25c2         Kac flow with a = 25, c = 2 (reported best for CIFAR-10)
kac_gt2           Kac flow with g(t) = t²
flight            the block-isotropic Kac flow: pairs of pixels as planar random flights (``--path flight``)
vp                VP diffusion, ε-prediction (the pipeline's VP baseline with --vp-prediction eps), DDIM at 100 and 20 steps
vp_v              VP diffusion, v-prediction (``v = α ε - σ x0``, Salimans & Ho 2022; the pipeline's default), DDIM at 100 and 20
================= =============================================================================

The VP rows are not in the default list (``--rows vp,vp_v``). Their held-out loss is against the row's own
target (ε for ``vp``, v for ``vp_v``; labelled in the tables), not comparable with each other or with the
flow rows' velocity loss.

Budget. The default (``--dataset mnist``) is a reduced MNIST budget sized for about 40 minutes on
2 CPU cores: 8 rows of 600 steps at batch 64 (lr 5e-4, 60 warm-up steps, EMA 0.999 with warm-up),
250 samples per set, per-bin loss on 500 test images. The estimate, from quiet-machine timings of
``mnist_small`` with 2 threads (README: 0.278 s per training step at batch 64; 5.2 ms per image and
guided AB-2 step; ~180 s for the 5-epoch feature classifier and reference statistics, once per cache),
is printed by ``--help`` and at the start of a run (45 min); ``--estimate`` measures this machine (10
training steps and 100 samples x 5 guided steps, ~15 s) and prints the estimate from those numbers
instead. Measured here with ``--estimate --threads 1`` while another job used the other core: 0.308 s
per step and 3.9 ms per image and guided step, 43 min for the default table (with 2 threads on the busy
machine 1.69 s per step: oversubscribed; use ``--threads 1`` when the cores are shared). The whole
``--preset cpu`` step budget (3000) takes ``--steps 3000`` (about 2 h); the rows can be run in several
runs with ``--resume``.

Files: ``OUT/config.json``, ``OUT/rows/<row>/`` (the Trainer's ``checkpoint.pt``, ``train_log.jsonl``,
``config.json``; ``nfeNNN.samples.pt`` the sample sets; ``row.json`` the row's results),
``OUT/results.json`` (every row: settings, per-bin loss, sets with FID/KID/accuracy, seconds; the floor;
the budget), ``OUT/results.md`` (the table and the per-bin losses) and ``OUT/teacher_study.png``
(held-out loss and loss relative to the target's mean square per bin of t, one curve per row; FID bars
with their intervals). ``--resume`` skips rows whose ``row.json`` holds the same settings, continues an
interrupted training from its checkpoint and reuses sample sets with the same settings; without it
every requested row is trained afresh (the evaluation cache is always reused).

Errors (``kacnum.core.cli``): one line naming the flag, exit status 2 (bad usage, missing data) or 1.

    python experiments/teacher_study.py --quick                      # digits, 2 rows, < 2 min
    python experiments/teacher_study.py --dataset mnist --out runs/teacher_study --resume
    python experiments/teacher_study.py --rows kac,kac_precond --steps 3000 --eval-cache runs/cpu/eval
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # experiments/_common.py, for the figure

import torch  # noqa: E402

from kacnum.core import cli  # noqa: E402
from kacnum.core.checkpoint import (  # noqa: E402
    atomic_write, load_checkpoint, load_json, save_checkpoint, save_json)

NAME = "teacher_study"
FORMAT = "kacnum.teacher_study/1"


@dataclass(frozen=True)
class Row:
    """One training recipe: ``overrides`` of the base :class:`~kacnum.images.train.TrainConfig` and the step
    counts it is sampled at (``--sample-steps``; ``fm``: also ``--fm-steps``, the FM and VP rows) with
    ``sampler``: ``"ab2"`` (guided AB-2 of the velocity) or ``"ddim"`` (guided DDIM of a VP model,
    :func:`kacnum.images.pipeline.sample_ddim_set`; a v-network through :class:`kacnum.flows.losses.VToEps`)."""

    label: str
    overrides: dict = field(default_factory=dict)
    fm: bool = False
    sampler: str = "ab2"


ROWS = {
    "fm": Row("Gaussian FM (rectified flow)", {"path": "gaussian"}, fm=True),
    "kac": Row("Kac a=9 c=3 g=t (default)"),
    "kac_sigma05": Row("Kac + data_sigma 0.05", {"data_sigma": 0.05}),
    "kac_sigma15": Row("Kac + data_sigma 0.15", {"data_sigma": 0.15}),
    "kac_logitnormal": Row("Kac + t ~ logit-normal(0,1)", {"time_sampling": "logit_normal:0,1"}),
    "kac_power2": Row("Kac + t ~ power:2 (CDF t^2)", {"time_sampling": "power:2"}),
    "kac_atom": Row("Kac + atom weighting", {"loss_weighting": "atom"}),
    "kac_precond": Row("Kac + preconditioning (in+out)", {"precond": "inout"}),
    "kac_a25c2": Row("Kac a=25 c=2", {"a": 25.0, "c": 2.0}),
    "kac_gt2": Row("Kac g(t)=t^2", {"g_schedule": "t2"}),
    "flight": Row("planar random flight a=9 c=3 (block-isotropic)", {"path": "flight"}),
    "vp": Row("VP diffusion, eps-prediction (DDIM)", {"path": "vp"}, fm=True, sampler="ddim"),
    "vp_v": Row("VP diffusion, v-prediction (DDIM)", {"path": "vp", "vp_prediction": "v"}, fm=True, sampler="ddim"),
}
DEFAULT_ROWS = ("fm", "kac", "kac_sigma05", "kac_logitnormal", "kac_atom", "kac_precond", "kac_a25c2", "kac_gt2")

#: per data set: model, training budget and evaluation sizes of the default run
DATASET_DEFAULTS = {
    "mnist": dict(model="mnist_small", steps=600, batch_size=64, lr=5e-4, ema_decay=0.999, num_samples=250,
                  eval_images=500, classifier_epochs=5),
    "digits": dict(model="digits_tiny", steps=800, batch_size=64, lr=1e-3, ema_decay=0.995, num_samples=360,
                   eval_images=360, classifier_epochs=30),
}
#: ``--quick``: digits, 2 rows, a few steps (the tests run it)
QUICK = dict(dataset="digits", rows=("fm", "kac"), steps=30, batch_size=32, num_samples=40, eval_images=40,
             sample_steps=10, fm_steps=4, classifier_epochs=2, n_boot=50, kid_subset=40)

#: quiet-machine timings, 2 threads (README, ``--preset cpu``), for the estimate printed by --help
TIMING_MNIST = dict(step_s=0.278, image_step_s=0.0052, forward_image_s=0.0013, eval_set_s=5.0, fixed_s=180.0)
TIMING_DIGITS = dict(step_s=0.030, image_step_s=0.0004, forward_image_s=0.0001, eval_set_s=1.0, fixed_s=20.0)


def estimate_seconds(timing: dict, rows: Sequence[str], steps: int, num_samples: int, sample_steps: int,
                     fm_steps: int, eval_images: int, n_bins: int = 11) -> dict:
    """Wall-time estimate: per row ``steps · step_s`` (training), ``n_bins · eval_images · forward_image_s``
    (per-bin loss), ``num_samples · nfe · image_step_s`` per sample set (guided AB-2), ``eval_set_s`` per
    set; plus ``fixed_s`` once (feature classifier and reference statistics)."""
    per_row = {}
    for r in rows:
        nfes = [sample_steps] + ([fm_steps] if ROWS[r].fm and fm_steps != sample_steps else [])
        per_row[r] = (steps * timing["step_s"] + n_bins * eval_images * timing["forward_image_s"]
                      + sum(num_samples * n * timing["image_step_s"] + timing["eval_set_s"] for n in nfes))
    return {"per_row_s": per_row, "fixed_s": timing["fixed_s"], "total_s": timing["fixed_s"] + sum(per_row.values())}


def _default_estimate_text() -> str:
    d = DATASET_DEFAULTS["mnist"]
    e = estimate_seconds(TIMING_MNIST, DEFAULT_ROWS, d["steps"], d["num_samples"], 100, 20, d["eval_images"])
    kac = e["per_row_s"]["kac"]
    return (f"Estimated time of the default MNIST table on 2 quiet cores: {e['total_s'] / 60:.0f} min "
            f"({len(DEFAULT_ROWS)} rows, {kac / 60:.1f} min per Kac row: {d['steps']} steps x "
            f"{TIMING_MNIST['step_s']:.3f} s, {d['num_samples']} samples x 100 guided AB-2 steps x "
            f"{1e3 * TIMING_MNIST['image_step_s']:.1f} ms; + {TIMING_MNIST['fixed_s']:.0f} s classifier and "
            f"reference once). Measure this machine with --estimate.")


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog=f"experiments/{NAME}.py", description=__doc__,
                           epilog=_default_estimate_text())
    p.add_argument("--dataset", choices=tuple(DATASET_DEFAULTS), default="mnist", help="data set (default mnist)")
    p.add_argument("--rows", type=cli.choice_list(tuple(ROWS)), default=None, metavar="R1,R2,...",
                   help=f"rows to run, in this order (default {','.join(DEFAULT_ROWS)}; all: {','.join(ROWS)})")
    p.add_argument("--steps", type=cli.positive_int, default=None, help="optimiser steps per row (mnist 600)")
    p.add_argument("--batch-size", type=cli.positive_int, default=None, help="batch per step (64)")
    p.add_argument("--lr", type=cli.positive_float, default=None, help="learning rate (mnist 5e-4)")
    p.add_argument("--ema-decay", type=cli.float_in(0.0, 0.999999), default=None, help="EMA decay (mnist 0.999)")
    p.add_argument("--num-samples", type=cli.positive_int, default=None, help="samples per set (mnist 250)")
    p.add_argument("--sample-steps", type=cli.positive_int, default=100,
                   help="sampling steps of every row (100; AB-2, DDIM for the VP rows)")
    p.add_argument("--fm-steps", type=cli.positive_int, default=20,
                   help="extra sampling steps of the FM and VP rows (20)")
    p.add_argument("--guidance", type=cli.float_in(0.0, 50.0), default=1.2, help="guidance scale (1.2)")
    p.add_argument("--eval-images", type=cli.positive_int, default=None,
                   help="test images of the per-bin loss (mnist 500)")
    p.add_argument("--classifier-epochs", type=cli.positive_int, default=None,
                   help="epochs of the feature classifier when the cache has none (mnist 5)")
    p.add_argument("--n-boot", type=cli.positive_int, default=200, help="bootstrap resamples per FID/KID interval")
    p.add_argument("--kid-subset", type=cli.int_at_least(2), default=1000, help="KID reference subset size (1000)")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="training seed of every row (0)")
    p.add_argument("--sample-seed", type=cli.nonnegative_int, default=1234, help="latent seed (1234)")
    p.add_argument("--eval-cache", type=Path, default=None,
                   help="folder of the feature classifier and reference statistics (default OUT/eval)")
    p.add_argument("--out", type=Path, default=Path("runs") / NAME, help=f"output folder (default runs/{NAME})")
    p.add_argument("--resume", action="store_true", help="skip finished rows, continue interrupted training")
    p.add_argument("--quick", action="store_true", help="digits, rows fm,kac, 30 steps: < 2 min (the tests)")
    p.add_argument("--estimate", action="store_true",
                   help="measure a few training and sampling steps here, print the estimated time, and stop")
    p.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch and BLAS threads (default: physical cores, 1 on a busy machine)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--quiet", action="store_true", help="no training progress lines")
    args = p.parse_args(argv)
    if args.quick:  # the quick budget replaces what was left at its default
        for k, v in QUICK.items():
            if getattr(args, k, None) in (None, p.get_default(k)):
                setattr(args, k, v)
    d = DATASET_DEFAULTS[args.dataset]
    for k in ("steps", "batch_size", "lr", "ema_decay", "num_samples", "eval_images", "classifier_epochs"):
        if getattr(args, k) is None:
            setattr(args, k, d[k])
    if args.rows is None:
        args.rows = DEFAULT_ROWS
    if len(set(args.rows)) != len(args.rows):
        raise cli.UsageError(f"--rows must not repeat a row, got {','.join(args.rows)}")
    args.model = d["model"]
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def validate(args: argparse.Namespace) -> None:
    cli.check_out_dir(args.out, "--out")
    cli.check_device(args.device, "--device")
    if args.eval_cache is not None and args.eval_cache.exists() and not args.eval_cache.is_dir():
        raise cli.UsageError(f"--eval-cache {args.eval_cache} is a file, not a folder")


# ----------------------------------------------------------------------------------------------
# one row


def train_config(args: argparse.Namespace, row: str):
    """The row's :class:`~kacnum.images.train.TrainConfig`: the shared budget plus the row's overrides."""
    from kacnum.images.train import TrainConfig

    base = dict(model=args.model, dataset=args.dataset, batch_size=args.batch_size, total_steps=args.steps,
                lr=args.lr, warmup_steps=min(200, max(1, args.steps // 10)), ema_decay=args.ema_decay,
                seed=args.seed, log_every=max(1, min(50, args.steps // 10)), sample_every=0,
                checkpoint_every=max(1, min(200, args.steps)), num_samples=10, sample_steps=10,
                guidance_scale=args.guidance)
    return TrainConfig(**{**base, **ROWS[row].overrides})


def _train_seconds(log_file: Path) -> Optional[float]:
    """Training wall time from ``train_log.jsonl``: each ``fit`` call logs seconds since its own start,
    so the total is the sum of the last value of every run of increasing ``seconds``."""
    if not log_file.is_file():
        return None
    total, last = 0.0, None
    for ln in log_file.read_text().splitlines():
        try:
            s = float(json.loads(ln)["seconds"])
        except (ValueError, KeyError, TypeError):
            continue
        if last is not None and s < last:
            total += last
        last = s
    return total + (last or 0.0)


def _sample_set(model, path, args, steps: int, file: Path, device, sampler: str = "ab2",
                prediction: Optional[str] = None) -> tuple[dict, float]:
    """Guided AB-2 samples, or (``sampler="ddim"``) guided DDIM samples of a VP ε-model (``model`` already
    wrapped for a v-network; ``prediction`` is recorded), reused from ``file`` under ``--resume`` when the
    settings match."""
    from kacnum.images.pipeline import sample_ddim_set, sample_flow_set

    meta = {"steps": steps, "num_samples": args.num_samples, "guidance": args.guidance, "seed": args.sample_seed,
            "solver": "ab2" if sampler == "ab2" else "ddim", "path": repr(path)}
    if prediction is not None:
        meta["prediction"] = prediction
    if args.resume and file.is_file():
        try:
            old = load_checkpoint(file)
            if old.get("meta") == meta:
                return old, 0.0
        except (ValueError, RuntimeError, OSError):
            pass
    t0 = time.perf_counter()
    if sampler == "ddim":
        s = sample_ddim_set(model, path, "teacher", num_samples=args.num_samples, steps=steps, guidance=args.guidance,
                            seed=args.sample_seed, batch_size=min(500, args.num_samples), device=device)
    else:
        s = sample_flow_set(model, path, "teacher", num_samples=args.num_samples, steps=steps, solver="ab2",
                            guidance=args.guidance, seed=args.sample_seed, batch_size=min(500, args.num_samples),
                            device=device)
    rec = {"format": FORMAT, "images": s.images, "labels": s.labels, "nfe": s.nfe, "nfe_model": s.nfe_model,
           "meta": meta, "sampling": dict(s.meta)}  # sampling: batch size etc., for coupled (paired) comparisons
    save_checkpoint(file, rec)
    return rec, time.perf_counter() - t0


def _evaluate_set(images: torch.Tensor, labels, ev: dict, n_boot: int, seed: int) -> dict:
    from kacnum.images.metrics import calc_fid, classifier_accuracy, extract_features, fid_bootstrap, kid

    x = images.clamp(-1, 1)
    f = extract_features(x, ev["extractor"])
    b = fid_bootstrap(f, ev["reference"], n_boot=n_boot, seed=seed)
    fid = calc_fid(torch.from_numpy(f), ev["reference"], ev["extractor"]).value
    k = kid(f, ev["kid"], n_boot=n_boot, seed=seed).to_dict()
    acc = classifier_accuracy(ev["extractor"], x, labels) if labels is not None else None
    return {"fid": fid, "fid_interval": [b.lo, b.hi], "fid_std": b.std, "kid": k, "accuracy": acc,
            "n": int(x.shape[0])}


def run_row(name: str, args: argparse.Namespace, data: dict, ev: dict, log) -> dict:
    """Train (or resume), per-bin loss, sample and evaluate one row; writes ``OUT/rows/<name>/row.json``."""
    from kacnum.flows.losses import binned_loss
    from kacnum.images.train import Trainer, wrap_prediction

    row_dir = Path(args.out) / "rows" / name
    cfg = train_config(args, name)
    steps_list = [args.sample_steps] + ([args.fm_steps] if ROWS[name].fm and args.fm_steps != args.sample_steps
                                        else [])
    train = cfg.to_dict()
    if train.get("vp_prediction") == "eps":  # the field's default: rows of earlier runs keep their settings
        del train["vp_prediction"]
    settings = {"train": train, "sample_steps": steps_list, "num_samples": args.num_samples,
                "guidance": args.guidance, "sample_seed": args.sample_seed, "eval_images": args.eval_images,
                "n_boot": args.n_boot, "kid_subset": args.kid_subset, "extractor": ev["extractor"].protocol}
    settings = json.loads(json.dumps(settings, default=str))
    done = row_dir / "row.json"
    if args.resume and done.is_file():
        old = load_json(done)
        if old.get("settings") == settings:
            log(f"[{NAME}] row {name}: finished earlier, skipped")
            return old
    if not args.resume:  # a fresh row: no stale log (its seconds would be summed) or results
        for old_file in ("train_log.jsonl", "row.json"):
            (row_dir / old_file).unlink(missing_ok=True)
    t_row = time.perf_counter()
    log(f"[{NAME}] row {name} ({ROWS[name].label}): training {cfg.total_steps} steps, batch {cfg.batch_size}")
    trainer = Trainer(cfg, row_dir, device=args.device, data=data["train"],
                      extra_config={"experiment": NAME, "row": name, "argv": args.argv})
    try:
        summary = trainer.fit(resume=args.resume, progress=not args.quiet)
    finally:
        trainer.close()
    model = trainer.ema.model.eval().requires_grad_(False)
    path = trainer.path
    train_s = _train_seconds(row_dir / "train_log.jsonl")
    log(f"[{NAME}] row {name}: trained ({train_s or 0:.0f} s), final loss {summary['final_loss']:.4g}; "
        f"per-bin held-out loss on {args.eval_images} test images")
    t0 = time.perf_counter()
    test_x, test_y = data["test"]
    # the raw network against its own target (u_t; eps or v for the VP rows)
    prediction = cfg.vp_prediction if cfg.path == "vp" else None
    binned = binned_loss(model, path, test_x[:args.eval_images], None if test_y is None else test_y[:args.eval_images],
                         seed=args.seed, data_sigma=cfg.data_sigma, device=trainer.device,
                         prediction=prediction or "eps")
    binned_s = time.perf_counter() - t0
    sampler = ROWS[name].sampler
    sample_model = wrap_prediction(model, cfg, path)  # a VP v-network as an eps-model (VToEps)
    sets = []
    for i, steps in enumerate(steps_list):
        log(f"[{NAME}] row {name}: {args.num_samples} samples, {steps} guided {sampler.upper()} steps")
        rec, sample_s = _sample_set(sample_model, path, args, steps, row_dir / f"nfe{steps:03d}.samples.pt",
                                    trainer.device, sampler=sampler, prediction=prediction)
        t0 = time.perf_counter()
        res = _evaluate_set(rec["images"], rec["labels"], ev, args.n_boot, args.sample_seed + i)
        res.update({"nfe": int(rec["nfe"]), "nfe_model": int(rec["nfe_model"]), "sample_seconds": sample_s,
                    "eval_seconds": time.perf_counter() - t0})
        sets.append(res)
        log(f"[{NAME}] row {name}: NFE {steps}: FID {res['fid']:.4g} [{res['fid_interval'][0]:.3g}, "
            f"{res['fid_interval'][1]:.3g}], KID x1e3 {1e3 * res['kid']['value']:.3g}, accuracy "
            f"{_fmt(res['accuracy'], '.3f')}")
    out = {"format": FORMAT, "name": name, "label": ROWS[name].label, "settings": settings,
           "path": repr(path), "sampler": sampler, "loss_target": binned["target"],
           "final_loss": summary["final_loss"], "train_seconds": train_s,
           "seconds_per_step": (train_s / cfg.total_steps) if train_s else None, "binned_seconds": binned_s,
           "binned": binned, "sets": sets, "row_seconds_this_call": time.perf_counter() - t_row,
           "wall_seconds": (train_s or 0.0) + binned_s + sum(s["sample_seconds"] + s["eval_seconds"] for s in sets)}
    save_json(done, out)
    return out


# ----------------------------------------------------------------------------------------------
# evaluation set-up (the pipeline's)


def evaluation(args: argparse.Namespace, data: dict, log) -> dict:
    """The pipeline's feature classifier, reference statistics and KID reference from ``--eval-cache``."""
    from kacnum.images.metrics import KIDReference, calc_fid, extract_features, fid_bootstrap, kid
    from kacnum.images.pipeline import feature_extractor_for, reference_features, reference_for

    cache = args.eval_cache or (Path(args.out) / "eval")
    t0 = time.perf_counter()
    log(f"[{NAME}] evaluation cache {cache}: feature classifier and reference statistics")
    ext = feature_extractor_for(args.dataset, cache, device=args.device, classifier_epochs=args.classifier_epochs,
                                seed=0, progress=False)
    ref = reference_for(args.dataset, ext, cache, split="train", data=data["train"][0])
    feats = reference_features(args.dataset, data["train"][0], ext, cache, split="train",
                               max_images=10_000)  # the pipeline's KID reference (same cache file)
    kref = KIDReference(feats, subset_size=min(args.kid_subset, feats.shape[0]), seed=0)
    # the floor: real test images, as many as the generated sets, against the same reference
    x = data["test"][0][:args.num_samples].clamp(-1, 1)
    f = extract_features(x, ext)
    b = fid_bootstrap(f, ref, n_boot=args.n_boot, seed=0)
    floor = {"fid": calc_fid(torch.from_numpy(f), ref, ext).value, "fid_interval": [b.lo, b.hi],
             "kid": kid(f, kref, n_boot=args.n_boot, seed=0).to_dict(), "n": int(x.shape[0]), "split": "test"}
    return {"extractor": ext, "reference": ref, "kid": kref, "floor": floor, "cache": str(cache),
            "seconds": time.perf_counter() - t0,
            "test_accuracy": ext.protocol.get("test_accuracy") if isinstance(ext.protocol, dict) else None}


# ----------------------------------------------------------------------------------------------
# outputs


def _fmt(v, spec: str = ".4g") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _options(train: dict) -> str:
    if train["path"] == "vp":  # the held-out loss is against the row's own target
        pred = train.get("vp_prediction", "eps")
        opts = [f"vp, {pred}-prediction (DDIM; loss vs {pred})"]
    elif train["path"] != "kac":
        opts = [train["path"]]
    else:
        opts = [f"a={train['a']:g} c={train['c']:g} g={train['g_schedule']}"]
    for k, default in (("data_sigma", 0.0), ("time_sampling", "uniform"), ("loss_weighting", "none"),
                       ("precond", "none")):
        if train.get(k, default) != default:
            opts.append(f"{k}={train[k]}")
    return ", ".join(opts)


def markdown(res: dict) -> str:
    b = res["budget"]
    ev = res["evaluation"]
    lines = [f"# Kac teacher training study ({res['dataset']})", "",
             f"Same budget per row: {b['steps']} steps, batch {b['batch_size']}, lr {b['lr']:g} "
             f"({b['warmup_steps']} warm-up steps), EMA {b['ema_decay']:g}, seed {b['seed']}, model {b['model']}. "
             f"Samples: {b['num_samples']} per set, guidance {b['guidance']:g}, AB-2 (VP rows: DDIM). FID on the "
             f"project's classifier features (test accuracy {_fmt(ev.get('test_accuracy'), '.4f')}), reference "
             f"{res['dataset']}/train; "
             f"[95 % bootstrap interval]; KID × 10³ ± std over reference subsets. Held-out loss: mean squared "
             f"error against the conditional target on {b['eval_images']} test images (the row's own path and "
             f"data smoothing; VP rows: against their own ε or v target; losses of different paths or targets are "
             f"not on one scale: compare the relative loss).", "",
             "| row | path / options | NFE | FID [95 %] | KID × 10³ | class acc. | held-out loss (uniform t) | "
             "loss t<0.05 (rel.) | train s | sample s | row s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        fine = r["binned"]["bins"][0]
        for s in r["sets"]:
            k = s["kid"]
            lines.append(
                f"| {r['name']} | {_options(r['settings']['train'])} | {s['nfe']} | {_fmt(s['fid'])} "
                f"[{_fmt(s['fid_interval'][0], '.3g')}, {_fmt(s['fid_interval'][1], '.3g')}] | "
                f"{1e3 * k['value']:.3g} ± {1e3 * k['std']:.2g} | {_fmt(s['accuracy'], '.3f')} | "
                f"{_fmt(r['binned']['mean'])} | {_fmt(fine['mse'], '.3g')} ({_fmt(fine['relative'], '.3f')}) | "
                f"{_fmt(r['train_seconds'], '.0f')} | {_fmt(s['sample_seconds'], '.0f')} | {_fmt(r['wall_seconds'], '.0f')} |")
    fl = ev["floor"]
    lines += ["", f"FID floor ({fl['n']} real test images against the same reference): {_fmt(fl['fid'])} "
                  f"[{_fmt(fl['fid_interval'][0], '.3g')}, {_fmt(fl['fid_interval'][1], '.3g')}], "
                  f"KID × 10³ {1e3 * fl['kid']['value']:.3g}.", ""]
    bins = res["rows"][0]["binned"]["bins"] if res["rows"] else []
    head = [f"[{x['lo']:.2g}, {x['hi']:.2g})" for x in bins]
    lines += ["## Held-out loss per bin of t (mse; relative to the target's mean square in brackets)", "",
              "| row | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for r in res["rows"]:
        cells = [f"{_fmt(x['mse'], '.3g')} ({_fmt(x['relative'], '.2f')})" for x in r["binned"]["bins"]]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "Share of coordinates on a Kac atom per bin (the path's, not the network's):", "",
              "| row | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for r in res["rows"]:
        if r["binned"]["bins"][0]["atom_fraction"] is None:
            continue
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(x["atom_fraction"], ".3f") for x in r["binned"]["bins"]) + " |")
    lines += ["", f"Total wall time {res['seconds']:.0f} s (evaluation set-up {ev['seconds']:.0f} s).", ""]
    return "\n".join(lines)


def plot(res: dict, file: Path) -> Path:
    import _common  # experiments/_common.py (on sys.path, see the imports); it selects the Agg backend
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for r in res["rows"]:
        bins = r["binned"]["bins"]
        t = [x["t_mid"] for x in bins[1:]]
        for ax, key in ((axes[0], "mse"), (axes[1], "relative")):
            (line,) = ax.plot(t, [x[key] for x in bins[1:]], marker="o", ms=3, label=r["name"])
            ax.plot([bins[0]["t_mid"]], [bins[0][key]], marker="*", ms=9, color=line.get_color())
    for ax, title in ((axes[0], "held-out loss per bin of t (★: t < 0.05)"),
                      (axes[1], "held-out loss / mean square of the target")):
        ax.set_yscale("log")
        ax.set_xlabel("t")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    names, fids, lo, hi = [], [], [], []
    for r in res["rows"]:
        for s in r["sets"]:
            names.append(f"{r['name']}\nNFE {s['nfe']}")
            fids.append(s["fid"])
            lo.append(s["fid"] - s["fid_interval"][0])
            hi.append(s["fid_interval"][1] - s["fid"])
    ax = axes[2]
    ax.bar(range(len(fids)), fids, yerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.8)
    fl = res["evaluation"]["floor"]
    ax.axhline(fl["fid"], color="k", ls="--", lw=1, label=f"floor (real test images) {fl['fid']:.3g}")
    ax.set_xticks(range(len(fids)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if max(fids) > 10 * min(fids):  # one broken row (e.g. the eps VP at a short budget) must not hide the rest
        ax.set_yscale("log")
    ax.set_title("FID [95 % bootstrap interval]", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _common.write_png(fig, file, dpi=90)


def print_table(res: dict) -> None:
    print(f"{'row':<17}{'NFE':>5}{'FID':>9}{'95 % interval':>18}{'KID x1e3':>10}{'acc':>7}{'loss':>9}"
          f"{'loss t<.05':>11}{'row s':>8}")
    for r in res["rows"]:
        for s in r["sets"]:
            iv = f"[{s['fid_interval'][0]:.3g}, {s['fid_interval'][1]:.3g}]"
            print(f"{r['name']:<17}{s['nfe']:>5}{s['fid']:>9.4g}{iv:>18}{1e3 * s['kid']['value']:>10.3g}"
                  f"{_fmt(s['accuracy'], '.3f'):>7}{r['binned']['mean']:>9.4g}{r['binned']['bins'][0]['mse']:>11.4g}"
                  f"{_fmt(r['wall_seconds'], '.0f'):>8}")


# ----------------------------------------------------------------------------------------------
# estimate


def measure(args: argparse.Namespace, data: dict) -> dict:
    """Seconds per training step (Kac row, 2 warm-up + 8 timed) and per image and guided AB-2 step
    (2 batches of 4 steps) on this machine with the current threads."""
    from kacnum.images.train import Trainer, sample_images

    cfg = train_config(args, "kac")
    trainer = Trainer(cfg, None, device=args.device, data=data["train"])
    for _ in range(2):
        trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(8):
        trainer.train_step()
    step_s = (time.perf_counter() - t0) / 8
    model = trainer.ema.model.eval()
    n = min(100, args.num_samples)
    sample_images(model, trainer.path, n, guidance_scale=args.guidance, steps=1, seed=0, batch_size=n)
    t0 = time.perf_counter()
    sample_images(model, trainer.path, n, guidance_scale=args.guidance, steps=4, seed=0, batch_size=n)
    image_step_s = (time.perf_counter() - t0) / (4 * n)
    base = TIMING_MNIST if args.dataset == "mnist" else TIMING_DIGITS
    return {**base, "step_s": step_s, "image_step_s": image_step_s, "forward_image_s": image_step_s / 2}


# ----------------------------------------------------------------------------------------------
# main


@contextlib.contextmanager
def _thread_limit(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            yield
            return
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)


def _load(dataset: str) -> dict:
    from kacnum.images.data import load_dataset

    return {"train": load_dataset(dataset, split="train"), "test": load_dataset(dataset, split="test")}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    validate(args)
    threads = cli.resolve_threads(args.threads)
    log = (lambda s: None) if args.quiet else (lambda s: print(s, flush=True))
    with _thread_limit(threads):
        data = _load(args.dataset)
        timing = TIMING_MNIST if args.dataset == "mnist" else TIMING_DIGITS
        if args.estimate:
            log(f"[{NAME}] measuring {args.model} on this machine ({threads} threads) ...")
            timing = measure(args, data)
        est = estimate_seconds(timing, args.rows, args.steps, args.num_samples, args.sample_steps, args.fm_steps,
                               args.eval_images)
        log(f"[{NAME}] {len(args.rows)} rows on {args.dataset}, {args.steps} steps each; estimated "
            f"{est['total_s'] / 60:.1f} min ({timing['step_s']:.3f} s/step, {1e3 * timing['image_step_s']:.2f} ms "
            f"per image and guided step{', measured here' if args.estimate else ', quiet 2-core timings'})")
        if args.estimate:
            return {"estimate": est, "timing": timing, "threads": threads}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        save_json(out / "config.json", {"experiment": NAME, "argv": args.argv, "threads": threads,
                                        "rows": list(args.rows), "estimate": est,
                                        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}})
        t0 = time.perf_counter()
        ev = evaluation(args, data, log)
        rows = [run_row(name, args, data, ev, log) for name in args.rows]
        first = train_config(args, args.rows[0])
        res = {"format": FORMAT, "dataset": args.dataset, "rows": rows, "seconds": time.perf_counter() - t0,
               "threads": threads, "estimate": est,
               "budget": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                          "warmup_steps": first.warmup_steps, "ema_decay": args.ema_decay, "seed": args.seed,
                          "model": args.model, "num_samples": args.num_samples, "guidance": args.guidance,
                          "sample_steps": args.sample_steps, "fm_steps": args.fm_steps,
                          "eval_images": args.eval_images},
               "evaluation": {k: v for k, v in ev.items() if k not in ("extractor", "reference", "kid")}}
        res["evaluation"]["protocol"] = ev["extractor"].protocol
        save_json(out / "results.json", res)
        atomic_write(out / "results.md", lambda f: f.write(markdown(res)), mode="w")
        plot(res, out / f"{NAME}.png")
        if not args.quiet:
            print_table(res)
            print(f"[{NAME}] {out / 'results.md'}, {out / (NAME + '.png')} ({res['seconds']:.0f} s)")
        return res


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
