"""The baselines stage: Gaussian flow matching, VP diffusion with DDIM, progressive distillation of the VP model
and DistillFM, all with the teacher's network preset, data, step budget and guidance (docs/mathematics.md §9)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.flows.paths import ProbabilityPath
from kacnum.flows.solvers import parse_time_grid
from kacnum.images.train import TrainConfig, Trainer, with_path, wrap_prediction
from kacnum.students.progressive import ProgressiveConfig, ProgressiveDistiller

from .samples import SampleSet, _balanced_labels, _reuse_or_draw, _seeded_batches, sample_file_name
from .sampling import _ddim_meta, _num_classes, sample_ddim_set, sample_stage
from .students import distill_stage

__all__ = ["baselines_stage"]


def baselines_stage(train_config: TrainConfig, out_dir: Union[str, Path], *,
                    data: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                    nfe_list: Sequence[int] = (100, 20, 4, 2, 1), guidance: float = 1.2, num_samples: int = 1000,
                    sample_batch: int = 500, sample_seed: int = 1234, fm_solvers: Sequence[str] = ("euler", "ab2"),
                    pd_config: Optional[ProgressiveConfig] = None, kinds: Sequence[str] = ("fm", "vp"),
                    resume: bool = True, device=None, progress: bool = True, time_grid: str = "uniform",
                    distill_fm: Optional[Mapping[str, Any]] = None, vp_prediction: Optional[str] = None) -> dict:
    """Baselines with the teacher's UNet preset, data, step budget and guidance (docs/mathematics.md §9).

    * ``fm``: ``kacnum.images.train.with_path(train_config, "gaussian")`` (the teacher's recipe: data smoothing,
      time density, preconditioning; no atom weighting) trained with
      :class:`kacnum.images.train.Trainer` in ``out_dir/fm``, sampled with each solver of ``fm_solvers`` at every
      NFE of ``nfe_list`` (methods ``fm_euler``, ``fm_ab2``).
    * ``vp``: ``path="vp"`` in ``out_dir/vp``, predicting ``vp_prediction``: ``"eps"`` (ε) or ``"v"``
      (``v = α ε - σ x0``, sampled through :class:`kacnum.flows.losses.VToEps` and recorded as ``prediction``
      in the sets' meta; None: ``train_config.vp_prediction``, ``"eps"`` for a Kac teacher), sampled with
      DDIM at every NFE (``vp_ddim``); then, if ``pd_config`` is given, progressive distillation
      (:class:`kacnum.students.progressive.ProgressiveDistiller`, guided base, ``out_dir/pd``; a v base is given as it
      is, with ``base_parameterization="v"``) sampled at each round's step count (``vp_pd``).
      Changing ``vp_prediction`` over an existing ``out_dir/vp`` fails on resumption (the configs differ):
      use another ``out_dir``.
    * ``distill_fm`` (a dict of :func:`distill_stage` keyword arguments: schedule, steps_per_stage,
      batch_size, lr, source, seed, distill_overrides, oneshot), with ``fm`` in ``kinds``: DistillFM, the
      same staged endpoint distillation applied to the trained FM model, whose ``schedule[0]``-step guided
      AB-2 samples are its teacher row (``fm_teacher``); students ``distillfm`` (and ``distillfm_oneshot``)
      in ``out_dir/distill_fm`` (result keys ``fm_teacher``, ``distill_fm``).

    Training resumes from each ``checkpoint.pt`` when ``resume`` (a finished run is not retrained);
    samples go to ``out_dir/samples``. ``time_grid``: the FM and DDIM sampling grid (``uniform`` or
    ``power:RHO``; ``kac`` is refused: these are not Kac paths; PD keeps its training grid). Returns
    ``{"fm": summary, "vp": summary, "pd": history, "samples": [...]}``.
    """
    out_dir = Path(out_dir)
    for k in kinds:
        if k not in ("fm", "vp"):
            raise ValueError(f"kinds must hold 'fm' and/or 'vp', got {k!r}")
    if parse_time_grid(time_grid)[0] == "kac":
        raise ValueError("time_grid 'kac' needs a Kac path, and the FM/VP baselines are not: use 'uniform' or "
                         "'power:RHO' for the baselines (PipelineConfig.baseline_time_grid, --baseline-time-grid)")
    result: dict = {"samples": []}
    samples_dir = out_dir / "samples"
    for kind in kinds:
        # the recipe; no atom weighting; the VP network predicts vp_prediction
        cfg = with_path(train_config, "gaussian") if kind == "fm" else with_path(train_config, "vp", vp_prediction)
        trainer = Trainer(cfg, out_dir / kind, device=device, data=data, extra_config={"baseline": kind})
        try:
            summary = trainer.fit(resume=resume, progress=progress)
        finally:
            trainer.close()
        result[kind] = summary
        model = trainer.ema.model.eval().requires_grad_(False)
        path = trainer.path
        k = _num_classes(model)
        if kind == "fm":
            for solver in fm_solvers:
                for nfe in nfe_list:
                    result["samples"].append(sample_stage(
                        model, path, samples_dir, num_samples=num_samples, guidance=guidance, steps=int(nfe),
                        method=solver, batch_size=sample_batch, seed=sample_seed, device=trainer.device,
                        name=f"fm_{solver}", resume=resume, bf16=train_config.bf16, time_grid=time_grid,
                        progress=progress))
            if distill_fm is not None:
                result.update(_distill_fm(model, path, trainer, dict(distill_fm), out_dir, samples_dir, guidance=guidance,
                                          num_samples=num_samples, sample_batch=sample_batch, sample_seed=sample_seed,
                                          resume=resume, progress=progress, time_grid=time_grid,
                                          bf16=train_config.bf16))
                result["samples"] += [result["fm_teacher"]] + result["distill_fm"]["samples"]
            continue
        eps_model = wrap_prediction(model, cfg, path)  # a v-network as an ε-model (VToEps)
        for nfe in nfe_list:
            meta = _ddim_meta(nfe, sample_seed, sample_batch, path, time_grid=time_grid)
            if cfg.vp_prediction != "eps":  # (ε sets keep the meta of earlier runs: reused)
                meta["prediction"] = cfg.vp_prediction

            def draw_ddim(nfe=nfe, meta=meta) -> SampleSet:
                s = sample_ddim_set(eps_model, path, num_samples=num_samples, steps=int(nfe), guidance=guidance,
                                    seed=sample_seed, batch_size=sample_batch, device=trainer.device,
                                    time_grid=time_grid)
                s.meta.update(meta)
                return s

            result["samples"].append(_reuse_or_draw(samples_dir / sample_file_name("vp_ddim", nfe), meta, resume,
                                                    num_samples, draw_ddim, k, with_grid=False))
        if pd_config is None:
            continue
        images, labels = trainer.batches.images, trainer.batches.labels
        pcfg = dataclasses.replace(pd_config, guidance_scale=float(guidance))
        if cfg.vp_prediction == "v":  # the raw v-network is the base: students start with the right output head
            pcfg = dataclasses.replace(pcfg, base_parameterization="v")
        pd = ProgressiveDistiller(model, path, images.to(trainer.device, torch.float32),
                                  labels.to(trainer.device) if k > 0 else None, pcfg, out_dir=out_dir / "pd")
        result["pd"] = pd.run(resume=resume, progress=progress)
        for r in range(1, pcfg.num_rounds + 1):
            steps, nfe_model = pd.nfe(r)
            meta = {"solver": f"ddim[{pcfg.parameterization}]", "steps": steps, "seed": sample_seed,
                    "batch_size": sample_batch, "pd_config": pcfg.to_dict(), "path": repr(path)}

            def draw_pd(r=r, steps=steps, nfe_model=nfe_model, meta=meta) -> SampleSet:
                lbl = _balanced_labels(num_samples, k)
                outs = []
                for s0, e, gen in _seeded_batches(num_samples, sample_batch, sample_seed, trainer.device):
                    z = path.sample_latent((e - s0,) + tuple(images.shape[1:]), generator=gen, dtype=torch.float32,
                                           device=trainer.device)
                    outs.append(pd.sample(r, z, None if lbl is None else lbl[s0:e].to(trainer.device)).float().cpu())
                return SampleSet("vp_pd", steps, nfe_model, torch.cat(outs), lbl, float(guidance) if k > 0 else None,
                                 meta)

            result["samples"].append(_reuse_or_draw(samples_dir / sample_file_name("vp_pd", steps), meta, resume,
                                                    num_samples, draw_pd, k, with_grid=False))
    return result


def _distill_fm(model: nn.Module, path: ProbabilityPath, trainer, settings: dict, out_dir: Path, samples_dir: Path, *,
                guidance: float, num_samples: int, sample_batch: int, sample_seed: int, resume: bool, progress: bool,
                time_grid: str, bf16: bool) -> dict:
    """DistillFM, the control of the thesis: the FM model as a teacher sampled like the Kac teacher
    (``settings["schedule"][0]`` guided AB-2 steps, method ``fm_teacher``), and distilled with
    :func:`distill_stage` (method ``distillfm``, ``out_dir/distill_fm``) with ``settings`` (the Kac
    distillation's schedule, budget, source, target, overrides, one-shot list)."""
    k = _num_classes(model)
    schedule = tuple(settings.get("schedule", (100, 20, 4, 2, 1)))
    teacher = sample_stage(model, path, samples_dir, num_samples=num_samples, guidance=guidance, steps=int(schedule[0]),
                           method="ab2", batch_size=sample_batch, seed=sample_seed, device=trainer.device,
                           name="fm_teacher", resume=resume, bf16=bf16, time_grid=time_grid, progress=progress)
    images, labels = trainer.batches.images, trainer.batches.labels
    res = distill_stage(model, path, images, labels if k > 0 else None, out_dir / "distill_fm", guidance=guidance,
                        resume=resume, device=trainer.device, num_samples=num_samples, sample_batch=sample_batch,
                        sample_seed=sample_seed, progress=progress, method="distillfm", **settings)
    return {"fm_teacher": teacher, "distill_fm": res}
