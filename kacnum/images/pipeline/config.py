"""The pipeline's settings: the methods and their labels, the published numbers it is compared with, and
:class:`PipelineConfig` with its presets (:data:`PIPELINE_PRESETS`, :func:`pipeline_config`).

The published CIFAR-10 FIDs are quoted, never computed here: the DistillKac paper's own table
(docs/mathematics.md §10) and other papers' baselines (docs/mathematics.md §9).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

from kacnum.flows.losses import VP_PREDICTIONS
from kacnum.images.train import TrainConfig
from kacnum.students.progressive import ProgressiveConfig

__all__ = ["METHODS", "method_label", "PAPER_CIFAR10", "LITERATURE_CIFAR10", "STUDENT_TEACHERS", "PAPER_RATIOS_CIFAR10",
           "TARGETS", "INCEPTION_DATASETS", "CLASSIFIER_DATASETS", "PipelineConfig", "PIPELINE_STAGES",
           "PIPELINE_PRESETS", "pipeline_config"]

#: method key -> label used in results.md (the order is the table's row order)
METHODS = {
    "kac_teacher": "guided Kac flow teacher, AB-2",
    "kac_teacher_sweep": "guided Kac flow teacher, AB-2 (guidance sweep)",
    "kac_teacher_fewstep": "guided Kac flow teacher, AB-2, not distilled",
    "distillkac": "DistillKac student (Euler)",
    "distillkac_oneshot": "DistillKac one-shot student (Euler; K0 → K directly, the staged optimiser steps)",
    "fm_teacher": "guided Gaussian FM teacher, AB-2 (DistillFM's teacher)",
    "distillfm": "DistillFM student (Euler): the same staged distillation of the Gaussian FM teacher",
    "distillfm_oneshot": "DistillFM one-shot student (Euler; K0 → K directly, the staged optimiser steps)",
    "reflow_kac": "reflow of the Kac teacher on its own couplings (Euler; the staged optimiser steps)",
    "reflow_fm": "2-rectified flow: reflow of the FM teacher on its own couplings (Euler; the staged optimiser steps)",
    "fm_euler": "Gaussian flow matching (rectified flow), Euler",
    "fm_ab2": "Gaussian flow matching (rectified flow), AB-2",
    "vp_ddim": "VP diffusion ({prediction}), DDIM",
    "vp_pd": "progressive distillation of the VP model ({prediction} teacher, DDIM student)",
}


def method_label(method: str, meta: Optional[Mapping] = None) -> str:
    """The results.md label of a sample set: :data:`METHODS`' text, with the VP network's prediction read from
    the set's ``meta`` (``prediction`` of a DDIM set, ``pd_config.base_parameterization`` of a PD set; sets
    without it are ε-prediction sets of earlier runs)."""
    meta = meta or {}
    prediction = meta.get("prediction", "eps") if method == "vp_ddim" else \
        (meta.get("pd_config") or {}).get("base_parameterization", "eps")
    name = {"eps": "ε-prediction", "v": "v-prediction"}.get(prediction, f"{prediction}-prediction")
    return METHODS.get(method, method).replace("{prediction}", name)


#: DistillKac's own CIFAR-10 numbers (docs/mathematics.md §10), by (method, NFE)
PAPER_CIFAR10 = {
    ("kac_teacher", 100): 3.58,
    ("distillkac", 20): 3.72,
    ("distillkac", 4): 4.14,
    ("distillkac", 2): 4.68,
    ("distillkac", 1): 5.66,
}
#: CIFAR-10 numbers of other papers quoted for orientation (docs/mathematics.md §9), by (method, NFE)
LITERATURE_CIFAR10 = {
    ("vp_ddim", 100): 4.16,
    ("vp_ddim", 20): 6.84,
    ("vp_pd", 4): 3.00,
}
#: student method -> the method of its teacher's row (the denominator of its FID ratio)
STUDENT_TEACHERS = {"distillkac": "kac_teacher", "distillkac_oneshot": "kac_teacher", "distillfm": "fm_teacher",
                    "distillfm_oneshot": "fm_teacher", "reflow_kac": "kac_teacher", "reflow_fm": "fm_teacher"}
#: the paper's ratios student/teacher (CIFAR-10)
PAPER_RATIOS_CIFAR10 = {1: 5.66 / 3.58, 4: 4.14 / 3.58}
#: the goals on the ratios student/teacher FID, by student steps (1 step within 1.4x, 4 steps within 1.1x)
TARGETS = {1: 1.4, 4: 1.1}

#: data sets whose FID uses the standard Inception features; those whose FID uses the project's classifier
INCEPTION_DATASETS = ("cifar10", "celeba64")
CLASSIFIER_DATASETS = ("digits", "mnist", "mnist5k")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything after (and including) the teacher's :class:`~kacnum.images.train.TrainConfig`.

    Attributes:
        train: the Kac teacher's config (baselines reuse it with ``path`` replaced).
        guidance: guidance scale of teacher sampling, distillation and baselines (DistillKac: 1.2).
        guidance_sweep: extra teacher scales sampled at ``sample_steps`` (empty: none).
        sample_steps, sample_method: the teacher's sampler (100 AB-2).
        num_samples, sample_batch, sample_seed: every sample set.
        nfe_list: NFEs of the baselines and the undistilled few-step teacher rows.
        schedule, distill_steps, distill_batch, distill_lr, source, distill_overrides: distillation
            (``distill_overrides``: other :class:`~kacnum.students.distill.DistillConfig` fields, e.g. ``target``,
            ``rollout_fraction``, ``lr_schedule``, ``p_uncond``).
        oneshot: student step counts also distilled in one shot from the teacher at the staged budget
            (:func:`distill_stage`'s ``oneshot``; e.g. ``(1,)``); also for DistillFM.
        reflow: also reflow the teacher on its own couplings with the staged run's optimiser steps
            (:func:`distill_stage`'s ``reflow``: ``reflow_kac``; with DistillFM also ``reflow_fm``, 2-rectified
            flow of the FM teacher).
        distill_fm: in the baselines stage, also distil the FM model with the same settings (DistillFM,
            :func:`baselines_stage`'s ``distill_fm``; needs ``"fm"`` in ``baseline_kinds``).
        pd: progressive distillation config (None: no PD baseline); its guidance is set to ``guidance``.
        baselines: train and sample the baselines; baseline_kinds: which (``"fm"``, ``"vp"``; PD needs vp).
        vp_prediction: what the VP baseline's network predicts: ``"v"`` (default; on MNIST at 600 steps DDIM-100
            FID 54 against 919 for ``"eps"``, README) or ``"eps"`` (:func:`baselines_stage`).
        fm_solvers: solvers of the FM baseline.
        teacher_fewstep: also sample the undistilled teacher at every NFE of ``nfe_list`` below
            ``sample_steps``.
        classifier_epochs, reference_split, inception_path, feature: FID set-up (``feature``: ``auto``,
            ``inception`` or ``classifier``).
        time_grid: sampling grid of the teacher (``uniform``, ``power:RHO``, ``kac``;
            :func:`kacnum.flows.solvers.make_time_grid`); baseline_time_grid: of the FM/DDIM baselines (None: the
            same as ``time_grid``; ``kac`` is refused for them).
        eval_bootstrap: bootstrap resamples per FID interval; kid_reference_images: reference images whose
            features KID uses (cached in ``eval/``; None: all).
    """

    train: TrainConfig = TrainConfig()
    guidance: float = 1.2
    guidance_sweep: tuple = ()
    sample_steps: int = 100
    sample_method: str = "ab2"
    num_samples: int = 1000
    sample_batch: int = 500
    sample_seed: int = 1234
    nfe_list: tuple = (100, 20, 4, 2, 1)
    schedule: tuple = (100, 20, 4, 2, 1)
    distill_steps: Union[int, tuple] = 2000
    distill_batch: int = 128
    distill_lr: float = 1e-4
    source: str = "forward"
    distill_overrides: dict = field(default_factory=dict)
    oneshot: tuple = ()
    reflow: bool = False
    distill_fm: bool = False
    pd: Optional[ProgressiveConfig] = ProgressiveConfig()
    baselines: bool = True
    baseline_kinds: tuple = ("fm", "vp")
    fm_solvers: tuple = ("euler", "ab2")
    teacher_fewstep: bool = True
    classifier_epochs: int = 30
    reference_split: str = "train"
    inception_path: Optional[str] = None
    feature: str = "auto"
    time_grid: str = "uniform"
    baseline_time_grid: Optional[str] = None
    eval_bootstrap: int = 200
    kid_reference_images: Optional[int] = 10_000
    vp_prediction: str = "v"

    def __post_init__(self):
        if self.vp_prediction not in VP_PREDICTIONS:
            raise ValueError(f"vp_prediction must be one of {VP_PREDICTIONS}, got {self.vp_prediction!r}")
        if getattr(self.train, "path", None) == "vp":
            raise ValueError("train.path must be a flow path (kac, flight or gaussian) for the pipeline's teacher, "
                             "which is sampled and distilled as a velocity field; got 'vp' (the VP diffusion model "
                             "is a baseline: the baselines stage trains it with DDIM and progressive distillation)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PIPELINE_STAGES = ("teacher", "sample", "distill", "baselines", "eval")


def _matched_preset(num_samples: int, sample_batch: int, steps: int, batch: int, lr: float, ema_decay: float,
                    classifier_epochs: int, **distill_overrides) -> dict:
    """Preset fields whose progressive-distillation baseline gets the distillation's own budget: ``steps``
    optimiser steps per PD round as per distillation stage, the same batch, learning rate and EMA decay."""
    return dict(num_samples=num_samples, sample_batch=sample_batch, distill_steps=steps, distill_batch=batch,
                distill_lr=lr, distill_overrides={"ema_decay": ema_decay, **distill_overrides},
                pd=ProgressiveConfig(steps_per_round=steps, batch_size=batch, lr=lr, ema_decay=ema_decay),
                classifier_epochs=classifier_epochs)


#: post-teacher settings per preset (:func:`pipeline_config`); the teacher's TrainConfig comes from the caller.
#: ``digits`` is the configuration measured for the digits table; ``cpu`` targets MNIST on 2 cores
#: (classifier 5 epochs: 30 would take ~40 min on one core); ``gpu`` targets CIFAR-10 (50k samples, the
#: standard FID count; DistillKac's distillation budget was not retrievable: 10k steps per stage is ours).
PIPELINE_PRESETS = {
    "smoke": _matched_preset(100, 100, steps=20, batch=32, lr=3e-4, ema_decay=0.9, classifier_epochs=5,
                             rollout_pool=256),
    "digits": _matched_preset(400, 400, steps=100, batch=128, lr=3e-4, ema_decay=0.99, classifier_epochs=30),
    # distillation from the measured sweep (README, paper_figures/mnist_controls/): 1000 steps per stage,
    # lr 5e-4 cosine, trajectory targets, roll-out inputs; DistillFM beside it as the thesis's control
    "cpu": dict(num_samples=1000, sample_batch=500, distill_steps=1000, distill_batch=64, distill_lr=5e-4,
                source="rollout", distill_fm=True,
                distill_overrides={"ema_decay": 0.99, "lr_schedule": "cosine", "target": "trajectory",
                                   "rollout_pool": 512, "rollout_refresh": 800}, nfe_list=(20, 4, 2, 1),
                pd=ProgressiveConfig(steps_per_round=300, batch_size=64, lr=2e-4, ema_decay=0.99),
                classifier_epochs=5),
    "gpu": _matched_preset(50_000, 2000, steps=10_000, batch=256, lr=1e-4, ema_decay=0.999, classifier_epochs=5),
}


def pipeline_config(preset: str, train: TrainConfig, **overrides) -> "PipelineConfig":
    """``PipelineConfig(train=train, guidance=train.guidance_scale, **PIPELINE_PRESETS[preset], **overrides)``."""
    if preset not in PIPELINE_PRESETS:
        raise ValueError(f"preset must be one of {sorted(PIPELINE_PRESETS)}, got {preset!r}")
    fields = {"guidance": train.guidance_scale, **PIPELINE_PRESETS[preset], **overrides}
    return PipelineConfig(train=train, **fields)

