"""The distillation stage: staged endpoint distillation of the guided teacher (docs/mathematics.md §7), with its
one-shot and reflow controls, and samples of every student."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checkpoint import save_checkpoint
from kacnum.flows.paths import ProbabilityPath
from kacnum.images.train import resolve_device
from kacnum.students.distill import DistillConfig, Distiller, validate_stages
from kacnum.students.reflow import Reflow, reflow_config

from .samples import SampleSet, _balanced_labels, _reuse_or_draw, _seeded_batches, sample_file_name
from .sampling import _no_value_checks_on_cuda, _num_classes

__all__ = ["distill_stage", "oneshot_budget"]


def distill_stage(teacher_model: nn.Module, path: ProbabilityPath, images: torch.Tensor,
                  labels: Optional[torch.Tensor], out_dir: Union[str, Path], *,
                  schedule: Sequence[int] = (100, 20, 4, 2, 1), guidance: float = 1.2,
                  steps_per_stage: Union[int, Sequence[int]] = 2000, batch_size: int = 256, lr: float = 1e-4,
                  source: str = "forward", resume: bool = False, seed: int = 0, device=None,
                  num_samples: int = 1000, sample_batch: int = 500, sample_seed: int = 1234,
                  distill_overrides: Optional[Mapping[str, Any]] = None, progress: bool = True,
                  callback: Optional[Callable[[dict], None]] = None, method: str = "distillkac",
                  oneshot: Sequence[int] = (), reflow: bool = False) -> dict:
    """Staged endpoint distillation (docs/mathematics.md §7) of the guided teacher, then samples of every student.

    Builds ``DistillConfig(stages=schedule, steps_per_stage, batch_size, lr, source,
    guidance_scale=guidance, seed, **distill_overrides)`` and runs :class:`kacnum.students.distill.Distiller`
    with ``out_dir`` (its checkpoint ``distill.ckpt`` is written after every stage and every
    ``checkpoint_every`` steps; ``resume=True`` continues from it). Each finished student is also
    saved as ``student_<K>.pt`` (``{"state_dict", "stage", "steps", "distill_config"}``), and
    ``num_samples`` images of each are written as ``<method>_nfe<K>.samples.pt`` (+ PNG) in
    ``out_dir/samples`` (balanced labels, latents seeded per batch by ``derive_seed(sample_seed, b)``).
    ``method``: ``distillkac`` (a Kac teacher) or ``distillfm`` (the Gaussian FM teacher: DistillFM,
    the control of :func:`baselines_stage`).

    One-shot control (``oneshot``, student step counts ``K`` dividing ``schedule[0]``): the same teacher
    distilled directly ``schedule[0] → K`` (``stages=(schedule[0], K)``, every other setting the same) with
    the optimiser steps the staged run spent up to its ``K``-step student (all of them for ``K = 1``; the
    total when ``K`` is not in the schedule), in ``out_dir/oneshot_<K>``; samples
    ``<method>_oneshot_nfe<K>.samples.pt`` in ``out_dir/samples``.

    Reflow control (``reflow=True``): the same teacher reflowed on its own ``schedule[0]``-step couplings
    (:class:`kacnum.students.reflow.Reflow`, :func:`kacnum.students.reflow.reflow_config`: the staged run's settings, with all
    of its optimiser steps) in ``out_dir/reflow``, sampled with Euler at each student step count of the
    schedule; samples ``reflow_kac_nfe<K>`` (``method="distillkac"``) or ``reflow_fm_nfe<K>`` in
    ``out_dir/samples``.

    Args:
        teacher_model: the EMA teacher ``model(x, t, y)`` (class-conditional with a null label).
        path: its :class:`~kacnum.flows.paths.KacPath` (any path with ``T``, ``sample``, ``sample_latent``).
        images: ``(N, C, H, W)`` training images; labels: ``(N,)`` long or None.

    Returns ``{"history": [...per stage...], "samples": [records], "students": [files], "config": {...},
    "oneshot": [{"steps", "budget", "history", "config"}], "reflow": {"budget", "history", "config"} or None}``.
    """
    out_dir = Path(out_dir)
    dev = resolve_device(device) if device is not None else next(teacher_model.parameters()).device
    cfg = DistillConfig(stages=tuple(schedule), steps_per_stage=steps_per_stage if isinstance(steps_per_stage, int)
                        else tuple(steps_per_stage), batch_size=batch_size, lr=lr, source=source,
                        guidance_scale=float(guidance), seed=seed, **dict(distill_overrides or {}))
    _no_value_checks_on_cuda(teacher_model.to(dev))
    lab = None if labels is None or _num_classes(teacher_model) == 0 else labels.to(dev)
    null = getattr(teacher_model, "null_label", None) if lab is not None else None
    d = Distiller(teacher_model.to(dev), path, images.to(dev, torch.float32), lab, cfg, out_dir=out_dir,
                  null_label=null)
    runs = [(d, method, "", [(st, cfg.stages[st]) for st in range(1, d.num_stages + 1)])]
    shots = []
    for kk in oneshot:
        budget = oneshot_budget(cfg, int(kk))
        c1 = dataclasses.replace(cfg, stages=(cfg.stages[0], int(kk)), steps_per_stage=budget)
        d1 = Distiller(teacher_model.to(dev), path, images.to(dev, torch.float32), lab, c1,
                       out_dir=out_dir / f"oneshot_{int(kk):03d}", null_label=null)
        runs.append((d1, f"{method}_oneshot", f"oneshot_{int(kk):03d}_", [(1, int(kk))]))
        shots.append({"steps": int(kk), "budget": budget, "config": c1.to_dict()})
    rf = None
    if reflow:
        budget = int(sum(cfg.steps_per_stage))
        cr = reflow_config(cfg, budget)
        dr = Reflow(teacher_model.to(dev), path, images.to(dev, torch.float32), lab, cr, out_dir=out_dir / "reflow",
                    null_label=null)
        runs.append((dr, "reflow_kac" if method == "distillkac" else "reflow_fm", "reflow_",
                     [(1, int(kk)) for kk in cfg.stages[1:]]))
        rf = {"budget": budget, "config": cr.to_dict()}
    history = d.run(resume=resume, progress=progress, callback=callback)
    for (d1, _, _, _), shot in zip(runs[1:], shots):
        shot["history"] = [dict(h) for h in d1.run(resume=resume, progress=progress, callback=callback)]
    if rf is not None:
        rf["history"] = [dict(h) for h in runs[-1][0].run(resume=resume, progress=progress, callback=callback)]
    k = _num_classes(teacher_model) if lab is not None else 0
    records, students = [], []
    for dd, name, prefix, jobs in runs:
        c = dd.config
        for stage in sorted({st for st, _ in jobs}):
            sfile = out_dir / f"{prefix}student_{c.stages[stage]:03d}.pt"
            save_checkpoint(sfile, {"format": "kacnum.pipeline.student/1", "stage": stage, "steps": c.stages[stage],
                                    "state_dict": dd.student(stage).state_dict(), "distill_config": c.to_dict()})
            students.append(str(sfile))
        for stage, steps in jobs:
            meta = {"solver": "euler", "steps": steps, "seed": sample_seed, "batch_size": sample_batch,
                    "distill_config": c.to_dict(), "path": repr(path)}

            def draw(dd=dd, name=name, stage=stage, steps=steps, meta=meta) -> SampleSet:
                sampler = dd.sampler(stage, steps=steps) if isinstance(dd, Reflow) else dd.sampler(stage)
                lbl = _balanced_labels(num_samples, k)
                outs = [sampler(e - s, y=None if lbl is None else lbl[s:e].to(dev), generator=gen).float().cpu()
                        for s, e, gen in _seeded_batches(num_samples, sample_batch, sample_seed, dev)]
                return SampleSet(name, steps, int(sampler.nfe), torch.cat(outs), lbl,
                                 float(guidance) if k > 0 else None, meta)

            records.append(_reuse_or_draw(out_dir / "samples" / sample_file_name(name, steps), meta, resume,
                                          num_samples, draw, k))
    hist = [{kk: v for kk, v in h.items()} for h in history]
    return {"history": hist, "samples": records, "students": students, "config": cfg.to_dict(), "oneshot": shots,
            "reflow": rf}


def oneshot_budget(config: DistillConfig, steps: int) -> int:
    """Optimiser steps of a one-shot ``stages[0] → steps`` run at the staged run's budget: the staged
    steps spent up to (and including) the stage whose student takes ``steps`` steps, or all of them
    when ``steps`` is not in the schedule. ``steps`` must divide ``stages[0]``."""
    validate_stages((config.stages[0], int(steps)))
    st = list(config.stages[1:])
    upto = st.index(steps) + 1 if steps in st else len(st)
    return int(sum(config.steps_per_stage[:upto]))
