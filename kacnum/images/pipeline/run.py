"""All stages from one :class:`~kacnum.images.pipeline.config.PipelineConfig`: teacher -> sample -> distill ->
baselines -> eval, each resuming from what is on disk."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from kacnum.core.checkpoint import load_json, save_json
from kacnum.flows.solvers import parse_time_grid
from kacnum.images.metrics import reference_features
from kacnum.images.train import Trainer, load_teacher

from .baselines import baselines_stage
from .config import CLASSIFIER_DATASETS, INCEPTION_DATASETS, PIPELINE_STAGES, PipelineConfig
from .evaluation import eval_stage
from .features import _load_split, feature_extractor_for, reference_for
from .samples import collect_sample_sets
from .sampling import guidance_sweep, sample_stage
from .students import distill_stage

__all__ = ["run_pipeline"]


def run_pipeline(config: PipelineConfig, out_dir: Union[str, Path], *, stages: Sequence[str] = PIPELINE_STAGES,
                 resume: bool = True, device=None, data: Optional[tuple] = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Run ``stages`` in order into ``out_dir`` (``teacher/``, ``sample/``, ``distill/``, ``baselines/``,
    ``eval/``); every stage resumes from what is on disk when ``resume``. Returns ``{stage: result}``
    and writes ``out_dir/pipeline.json`` (config, per-stage seconds and results without images)."""
    out = Path(out_dir)
    for s in stages:
        if s not in PIPELINE_STAGES:
            raise ValueError(f"stages must be drawn from {PIPELINE_STAGES}, got {s!r}")
    cfg = config
    parse_time_grid(cfg.time_grid)  # a bad grid name fails here, before any stage
    base_grid = cfg.baseline_time_grid if cfg.baseline_time_grid is not None else cfg.time_grid
    if "baselines" in stages and cfg.baselines and parse_time_grid(base_grid)[0] == "kac":
        raise ValueError("time_grid 'kac' needs a Kac path, and the FM/VP baselines are not: set "
                         "baseline_time_grid (--baseline-time-grid) to 'uniform' or 'power:RHO'")
    summary_file = out / "pipeline.json"
    summary = load_json(summary_file) if (resume and summary_file.is_file()) else {}
    summary["config"] = cfg.to_dict()
    summary.setdefault("seconds", {})
    results: dict = {}
    ckpt = out / "teacher" / "checkpoint.pt"

    def images_labels():
        if data is not None:
            return data
        from kacnum.images.data import load_dataset

        return load_dataset(cfg.train.dataset, data_dir=cfg.train.data_dir, split="train")

    for stage in stages:
        t0 = time.perf_counter()
        log(f"[pipeline] stage {stage}")
        if stage == "teacher":
            trainer = Trainer(cfg.train, out / "teacher", device=device, data=data,
                              extra_config={"pipeline": cfg.to_dict()})
            try:
                res = trainer.fit(resume=resume, progress=progress)
            finally:
                trainer.close()
        elif stage == "sample":
            model, path, _ = load_teacher(ckpt, device=device)
            recs = [sample_stage(model, path, out / "sample", num_samples=cfg.num_samples, guidance=cfg.guidance,
                                 steps=cfg.sample_steps, method=cfg.sample_method, batch_size=cfg.sample_batch,
                                 seed=cfg.sample_seed, resume=resume, progress=progress, bf16=cfg.train.bf16,
                                 time_grid=cfg.time_grid)]
            if cfg.teacher_fewstep:
                for n in cfg.nfe_list:
                    if n < cfg.sample_steps:
                        recs.append(sample_stage(model, path, out / "sample", num_samples=cfg.num_samples,
                                                 guidance=cfg.guidance, steps=int(n), method=cfg.sample_method,
                                                 batch_size=cfg.sample_batch, seed=cfg.sample_seed,
                                                 name="kac_teacher_fewstep", resume=resume, bf16=cfg.train.bf16,
                                                 time_grid=cfg.time_grid, progress=progress))
            if cfg.guidance_sweep:
                recs += guidance_sweep(model, path, out / "sample", cfg.guidance_sweep, num_samples=cfg.num_samples,
                                       steps=cfg.sample_steps, method=cfg.sample_method, batch_size=cfg.sample_batch,
                                       seed=cfg.sample_seed, resume=resume, time_grid=cfg.time_grid,
                                       progress=progress)
            res = {"samples": recs}
        elif stage == "distill":
            model, path, _ = load_teacher(ckpt, device=device)
            images, labels = images_labels()
            res = distill_stage(model, path, images, labels, out / "distill", schedule=cfg.schedule,
                                guidance=cfg.guidance, steps_per_stage=cfg.distill_steps, batch_size=cfg.distill_batch,
                                lr=cfg.distill_lr, source=cfg.source, resume=resume, seed=cfg.train.seed,
                                device=device, num_samples=cfg.num_samples, sample_batch=cfg.sample_batch,
                                sample_seed=cfg.sample_seed, distill_overrides=cfg.distill_overrides,
                                progress=progress, oneshot=tuple(cfg.oneshot), reflow=bool(cfg.reflow))
        elif stage == "baselines":
            if not cfg.baselines:
                continue
            res = baselines_stage(cfg.train, out / "baselines", data=data, nfe_list=cfg.nfe_list,
                                  guidance=cfg.guidance, num_samples=cfg.num_samples, sample_batch=cfg.sample_batch,
                                  sample_seed=cfg.sample_seed, fm_solvers=cfg.fm_solvers, pd_config=cfg.pd,
                                  kinds=cfg.baseline_kinds, resume=resume, device=device, progress=progress,
                                  time_grid=base_grid, distill_fm=_distill_settings(cfg) if cfg.distill_fm else None,
                                  vp_prediction=cfg.vp_prediction)
        else:
            ds = cfg.train.dataset
            ext = feature_extractor_for(ds, out / "eval", inception_path=cfg.inception_path, kind=cfg.feature,
                                        device=device or "cpu", data_dir=cfg.train.data_dir,
                                        data=data if ds not in CLASSIFIER_DATASETS + INCEPTION_DATASETS else None,
                                        classifier_epochs=cfg.classifier_epochs, seed=cfg.train.seed,
                                        progress=progress)
            ref_data = data[0] if (data is not None and ds not in CLASSIFIER_DATASETS + INCEPTION_DATASETS) else None
            ref = reference_for(ds, ext, out / "eval", split=cfg.reference_split, data=ref_data,
                                data_dir=cfg.train.data_dir, progress=progress)
            ref_feats = reference_features(ds, ref_data if ref_data is not None else
                                           (lambda: _load_split(ds, cfg.reference_split, cfg.train.data_dir)[0]),
                                           ext, out / "eval", split=cfg.reference_split,
                                           max_images=cfg.kid_reference_images, progress=progress)
            files = collect_sample_sets(*(out / d for d in ("sample", "distill", "baselines") if (out / d).is_dir()))
            res = eval_stage(files, ref, ext, out / "eval", teacher=("kac_teacher", cfg.sample_steps), dataset=ds,
                             progress=progress, n_boot=cfg.eval_bootstrap, kid_reference=ref_feats,
                             floor=_heldout(ds, cfg, data),
                             extra={"time_grid": cfg.time_grid, "baseline_time_grid": base_grid})
        seconds = time.perf_counter() - t0
        results[stage] = res
        summary["seconds"][stage] = seconds
        summary[stage] = _strip(res)
        save_json(summary_file, summary)
        log(f"[pipeline] stage {stage} done in {seconds:.1f} s")
    return results


def _distill_settings(cfg: "PipelineConfig") -> dict:
    """The Kac distillation's settings as :func:`distill_stage` keyword arguments (for DistillFM)."""
    return {"schedule": tuple(cfg.schedule), "steps_per_stage": cfg.distill_steps, "batch_size": cfg.distill_batch,
            "lr": cfg.distill_lr, "source": cfg.source, "seed": cfg.train.seed,
            "distill_overrides": dict(cfg.distill_overrides), "oneshot": tuple(cfg.oneshot),
            "reflow": bool(cfg.reflow)}


def _heldout(dataset: str, cfg: "PipelineConfig", data) -> dict:
    """Real images the reference did not use, for the FID floor row: the ``test`` split when the reference
    is the ``train`` split and the data set has one; else ``images=None`` and a note saying why."""
    if data is not None and dataset not in CLASSIFIER_DATASETS + INCEPTION_DATASETS:
        return {"images": None, "split": "test", "note": f"{dataset}: data given in memory, no held-out split"}
    if cfg.reference_split != "train":
        return {"images": None, "split": "test",
                "note": f"the reference is the {cfg.reference_split!r} split: no disjoint held-out split"}
    try:
        images, _ = _load_split(dataset, "test", cfg.train.data_dir)
    except (FileNotFoundError, ValueError) as e:  # DataNotFoundError is both
        return {"images": None, "split": "test", "note": f"{dataset} has no held-out split here: {e}"}
    return {"images": images, "split": "test", "note": None}


def _strip(res):
    """Results without tensors or loss curves (for pipeline.json)."""
    if isinstance(res, dict):
        return {k: _strip(v) for k, v in res.items() if k not in ("losses",) and not torch.is_tensor(v)}
    if isinstance(res, (list, tuple)):
        return [_strip(v) for v in res]
    return res
