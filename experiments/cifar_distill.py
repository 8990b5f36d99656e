"""Image-scale DistillKac pipeline: Kac flow teacher -> guided samples -> distillation -> evaluation.

Stages (``--stage``; ``all`` runs them in order):

* ``teacher``: train the class-conditional Kac flow teacher (``kacnum.train.Trainer``: flow matching on
  ``KacPath(a, c)``, label dropout 0.1, EMA) -> ``OUT/teacher/{config.json, train_log.jsonl,
  checkpoint.pt, samples_XXXXXX.png}``. ``--resume`` continues from ``OUT/teacher/checkpoint.pt``.
* ``sample``: guided AB-2 sampling (``--sample-steps``, default 100, guidance ``--guidance``) of the
  EMA teacher -> ``OUT/sample/{samples.pt, samples.png}``.
* ``distill``, ``eval``: the next issue (pluggable functions in :data:`STAGES`).

Presets (``--preset``):

========= ================= ========================= ===================================================
preset    model             data                      budget
========= ================= ========================= ===================================================
smoke     digits_tiny       scikit-learn digits 8x8   300 steps, batch 64: well under 2 min on a CPU (tests)
cpu       mnist_small       MNIST 28x28 (mnist.pkl.gz) 15k steps, batch 64: about an hour on 2 cores
gpu       cifar10_kacflow   CIFAR-10 32x32            400k steps, batch 128 (global), bf16 autocast
========= ================= ========================= ===================================================

The gpu preset follows the Kac-flow reference code (``train_telegraphers.py`` of Duong et al.): Adam,
lr 2e-4, no warm-up, gradient clip 1.0, EMA 0.9999, batch 128, 400k steps (its ``--epochs`` default
counts optimiser steps), the DDPM++-style UNet of ``kacnum.models`` (38.3M parameters with the label
table). DistillKac's teacher length was not retrievable; we assume the same. Unlike the reference the
teacher here is class-conditional (label dropout 0.1) so that it can be guided (SPEC §5).

Multi-GPU: ``torchrun --nproc_per_node=N experiments/cifar_distill.py --preset gpu`` (``--batch-size``
stays the global batch, ``N`` must divide it; rank 0 writes every file).

``--dataset synthetic`` trains on SYNTHETIC class-conditioned images of the model's shape
(``kacnum.train.synthetic_dataset``), for pipeline and throughput checks where CIFAR-10 is absent.
Other datasets: ``digits``, ``mnist``, ``mnist5k``, ``cifar10``; the model follows the dataset's shape.

    python experiments/cifar_distill.py --preset smoke --out runs/smoke
    python experiments/cifar_distill.py --preset cpu --dataset mnist5k
    torchrun --nproc_per_node=8 experiments/cifar_distill.py --preset gpu --data-dir /data --resume
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from kacnum.checkpoint import load_json, save_checkpoint, save_json
from kacnum.data import DATASETS, DataNotFoundError
from kacnum.models import PRESETS
from kacnum.train import (
    PATH_KINDS,
    TrainConfig,
    Trainer,
    load_teacher,
    resolve_device,
    sample_images,
    save_image_grid,
)

#: TrainConfig fields of each preset
PRESET_CONFIGS = {
    "smoke": dict(model="digits_tiny", dataset="digits", batch_size=64, total_steps=300, lr=1e-3,
                  warmup_steps=20, ema_decay=0.99, log_every=10, sample_every=0, checkpoint_every=100,
                  num_samples=40, sample_steps=20, guidance_scale=1.2, bf16=False),
    "cpu": dict(model="mnist_small", dataset="mnist", batch_size=64, total_steps=15_000, lr=5e-4,
                warmup_steps=500, ema_decay=0.999, log_every=50, sample_every=2500, checkpoint_every=500,
                num_samples=100, sample_steps=100, guidance_scale=1.2, bf16=False),
    "gpu": dict(model="cifar10_kacflow", dataset="cifar10", batch_size=128, total_steps=400_000, lr=2e-4,
                warmup_steps=0, ema_decay=0.9999, log_every=100, sample_every=10_000,
                checkpoint_every=5_000, num_samples=100, sample_steps=100, guidance_scale=1.2, bf16=True),
}
#: images drawn by the ``sample`` stage per preset (``--num-samples`` overrides)
PRESET_NUM_SAMPLES = {"smoke": 100, "cpu": 1000, "gpu": 10_000}
#: model used when ``--dataset`` has another shape than the preset's model
DATASET_MODELS = {"digits": "digits_tiny", "mnist": "mnist_small", "mnist5k": "mnist_small",
                  "cifar10": "cifar10_kacflow"}
DATASET_CHOICES = ("digits", "mnist", "mnist5k", "cifar10", "synthetic")
STAGE_ORDER = ("teacher", "sample", "distill", "eval")


class StageError(RuntimeError):
    """A stage cannot run (missing input, not implemented): the message is shown without a traceback."""


@dataclass
class RunContext:
    """What every stage receives: parsed ``args``, the teacher's ``train`` config, ``out`` folder,
    the ``device`` string and ``results`` gathered so far (stage name -> dict)."""

    args: argparse.Namespace
    train: TrainConfig
    out: Path
    device: Optional[str]
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
                       ("sample_every", "sample_every"), ("log_every", "log_every")):
        v = getattr(args, attr)
        if v is not None:
            fields[name] = str(v) if name == "data_dir" else v
    return TrainConfig(**fields)


# ----------------------------------------------------------------------------------------------
# stages


def stage_teacher(ctx: RunContext) -> dict:
    """Train (or resume) the Kac flow teacher into ``OUT/teacher``."""
    trainer = Trainer(ctx.train, ctx.teacher_dir, device=ctx.device,
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


def stage_sample(ctx: RunContext) -> dict:
    """Guided AB-2 samples of the EMA teacher -> ``OUT/sample/samples.pt`` and ``samples.png``."""
    if not ctx.teacher_checkpoint.is_file():
        raise StageError(f"stage 'sample' needs the teacher checkpoint {ctx.teacher_checkpoint}; "
                         f"run --stage teacher first")
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # under torchrun only rank 0 samples
    device = resolve_device(ctx.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model, path, cfg = load_teacher(ctx.teacher_checkpoint, device=device)
    n = ctx.args.num_samples or PRESET_NUM_SAMPLES[ctx.args.preset]
    steps = ctx.args.sample_steps
    scale = ctx.args.guidance if ctx.args.guidance is not None else cfg.guidance_scale
    t0 = time.perf_counter()
    out = sample_images(model, path, n, guidance_scale=scale, steps=steps, method="ab2",
                        seed=ctx.args.sample_seed, batch_size=ctx.args.sample_batch,
                        bf16=cfg.bf16 and device.type == "cuda", device=device,
                        eps_model=cfg.path == "vp", progress=not ctx.args.quiet)
    seconds = time.perf_counter() - t0
    folder = ctx.out / "sample"
    save_checkpoint(folder / "samples.pt", {"images": out["images"], "labels": out["labels"],
                                            "guidance_scale": scale, "steps": steps, "method": "ab2",
                                            "nfe": out["nfe"], "nfe_model": out["nfe_model"],
                                            "seed": ctx.args.sample_seed})
    k = getattr(model, "num_classes", 0)
    shown = out["images"][:100]
    save_image_grid(shown, folder / "samples.png", nrow=k if 0 < k <= 16 else 10,
                    scale=max(1, 64 // shown.shape[-1]))
    return {"num_samples": n, "steps": steps, "guidance_scale": scale, "nfe": out["nfe"],
            "nfe_model": out["nfe_model"], "seconds": seconds, "images_per_s": n / seconds,
            "file": str(folder / "samples.pt"), "grid": str(folder / "samples.png")}


def stage_distill(ctx: RunContext) -> dict:
    """Staged endpoint distillation of the guided teacher (SPEC §7): the next issue."""
    raise NotImplementedError("stage 'distill' is not implemented yet (next issue: kacnum.distill.Distiller "
                              "on the teacher checkpoint); run --stage teacher or --stage sample")


def stage_eval(ctx: RunContext) -> dict:
    """FID / classifier metrics of teacher and students: the next issue."""
    raise NotImplementedError("stage 'eval' is not implemented yet (next issue: kacnum.metrics on the "
                              "stage samples); run --stage teacher or --stage sample")


#: stage name -> function(RunContext) -> results dict
STAGES: dict[str, Callable[[RunContext], dict]] = {
    "teacher": stage_teacher,
    "sample": stage_sample,
    "distill": stage_distill,
    "eval": stage_eval,
}


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESET_CONFIGS), default="smoke")
    p.add_argument("--stage", choices=STAGE_ORDER + ("all",), default="teacher")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the teacher from OUT/teacher/checkpoint.pt")
    p.add_argument("--dataset", choices=DATASET_CHOICES, default=None,
                   help="override the preset's data set ('synthetic': random class-conditioned images)")
    p.add_argument("--data-dir", default=None, help="folder holding the data files (default $KACNUM_DATA)")
    p.add_argument("--model", choices=sorted(k for k, v in PRESETS.items() if hasattr(v, "resolution")),
                   default=None, help="override the model preset")
    p.add_argument("--path", choices=PATH_KINDS, default=None, help="probability path (default kac)")
    p.add_argument("--steps", type=int, default=None, help="teacher optimiser steps")
    p.add_argument("--batch-size", type=int, default=None, help="GLOBAL batch (split across DDP ranks)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--a", type=float, default=None, help="Kac switching rate (default 9)")
    p.add_argument("--c", type=float, default=None, help="Kac speed (default 3)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale s of sample grids and stage sample")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast on CUDA (gpu preset: on)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--sample-every", type=int, default=None, help="steps between sample grids (0: at the end)")
    p.add_argument("--grid-sample-steps", type=int, default=None, help="AB-2 steps of the training grids")
    p.add_argument("--num-samples", type=int, default=None, help="images of stage sample")
    p.add_argument("--sample-steps", type=int, default=100, help="AB-2 steps of stage sample")
    p.add_argument("--sample-batch", type=int, default=500)
    p.add_argument("--sample-seed", type=int, default=1234)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.out is None:
        args.out = Path("runs") / args.preset
    return args


def _print_table(results: dict) -> None:
    keys = ("steps", "final_loss", "images_per_s", "seconds", "num_samples", "nfe_model")
    print(f"{'stage':<9}" + "".join(f"{k:>14}" for k in keys))
    for stage, r in results.items():
        if not isinstance(r, dict) or not r:
            continue
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append(f"{v:>14.4g}" if isinstance(v, float) else f"{'' if v is None else v:>14}")
        print(f"{stage:<9}" + "".join(cells))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the chosen stage(s); returns the exit status (0 ok, 2 bad input or data, 3 stage unavailable)."""
    args = parse_args(argv)
    try:
        train_cfg = build_train_config(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    results_file = out / "results.json"
    results = load_json(results_file) if results_file.is_file() else {}
    ctx = RunContext(args=args, train=train_cfg, out=out, device=args.device, results=results)
    if rank0:
        save_json(out / "config.json", {"experiment": "cifar_distill", "preset": args.preset, "stage": args.stage,
                                        "argv": args.argv, "teacher": train_cfg.to_dict(),
                                        "sample": {"num_samples": args.num_samples or PRESET_NUM_SAMPLES[args.preset],
                                                   "steps": args.sample_steps, "method": "ab2",
                                                   "seed": args.sample_seed}})
    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    status = 0
    for stage in stages:
        try:
            res = STAGES[stage](ctx)
        except (DataNotFoundError, StageError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            break
        except NotImplementedError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 3
            break
        if rank0 and res:
            results[stage] = res
            save_json(results_file, results)
    if rank0:
        _print_table(results)
    return status


if __name__ == "__main__":
    sys.exit(main())
