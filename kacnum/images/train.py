"""Training loop for velocity (and ε) networks on images: one process, or several with torchrun.

The loss is :class:`kacnum.flows.losses.FlowMatchingLoss` on a :class:`~kacnum.flows.paths.KacPath` (the Kac flow
teacher, docs/mathematics.md §4) or a :class:`~kacnum.flows.paths.GaussianPath` (rectified flow baseline, docs/mathematics.md §9), or
:class:`kacnum.flows.losses.EpsilonLoss` on a :class:`~kacnum.flows.paths.VPPath`; labels are dropped to the null
label with probability ``p_uncond`` (classifier-free guidance training, docs/mathematics.md §5). One step::

    lr_n   = lr · warmup(n) · decay(n)                       (see :func:`lr_factor`)
    loss   = E (1/d) ‖u_θ(x_t, t, y') - u_t‖²                 (bf16 autocast around u_θ on CUDA)
    θ      ← Adam/AdamW(θ, clip(∇loss, grad_clip), lr_n)
    θ_ema  ← d_n θ_ema + (1 - d_n) θ                          (kacnum.students.distill.EMA)

Reproducibility and exact resumption
------------------------------------
* The data order is a function of ``(seed, epoch)`` only: the ``DistributedSampler`` of
  :func:`kacnum.images.data.make_loader` (``distributed=True``; with one process ``num_replicas=1``) gives the
  epoch's permutation and its share for this rank; batches are gathered by tensor indexing, so a
  resumed run jumps to ``(epoch, position)`` without touching the skipped batches.
* Every random draw of step ``n`` (times, Kac/Gaussian noise, label dropout from the step generator;
  dropout from the global torch RNG) comes from generators re-seeded at the start of the step with
  ``derive_seed(seed, rank, n)``: the draws of a step do not depend on history, so a run resumed from
  a checkpoint at step ``n`` repeats the uninterrupted run's losses bit for bit on the CPU (the
  optimiser, EMA and weights are restored from the checkpoint). Ranks draw different noise.
* ``checkpoint.pt`` (written atomically by :func:`kacnum.core.checkpoint.save_checkpoint`: temporary file,
  fsync, ``os.replace``) holds the model, EMA, optimiser, LR-schedule state, step, data position, the
  RNG states of torch/CUDA/numpy/python and the resolved config. An interrupted run (Ctrl-C, a crash
  during a write) leaves the previous checkpoint intact. The checkpoint it replaces is kept as
  ``checkpoint.prev.pt``; resuming verifies the file and falls back to that copy, with a warning, when
  ``checkpoint.pt`` is damaged (truncated, zeroed, a failed CRC).

Multi-GPU
---------
``torchrun --nproc_per_node=N experiments/cifar_distill.py ...``: :func:`setup_distributed` reads
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment and joins the process group (NCCL on CUDA,
gloo on the CPU); the model is wrapped in ``DistributedDataParallel``. ``batch_size`` is the GLOBAL
batch: each of the ``N`` ranks takes ``batch_size / N`` images per step (it must divide). Only rank 0
writes logs, sample grids and checkpoints; every rank can resume from them.

Sampling and image grids (:func:`sample_images`, :func:`save_image_grid`) live in
:mod:`kacnum.images.sampling`, the process group and devices (:func:`setup_distributed`,
:func:`resolve_device`, :class:`DistInfo`) in :mod:`kacnum.images.distributed`; both are importable from
here as well.

Output files in ``out_dir``: ``config.json`` (the resolved config), ``train_log.jsonl`` (one JSON line
per ``log_every`` steps: ``step, epoch, loss, lr, images_per_s, seconds``), ``samples_XXXXXX.png``
(guided AB-2 samples of the EMA model), ``checkpoint.pt``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from kacnum.core.checkpoint import atomic_write, load_checkpoint, previous_path, save_checkpoint, save_json
from kacnum.core.checks import check_in_range, check_int, check_nonnegative, check_positive
from kacnum.core.progress import Progress
from kacnum.core.seeds import derive_seed  # noqa: F401  (part of this module's interface)
from kacnum.flows.losses import (LOSS_WEIGHTINGS, PRECONDITIONINGS, VP_PREDICTIONS, EpsilonLoss, FlowMatchingLoss,
                                 Preconditioned, TimeSampler, VToEps)
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, ProbabilityPath, VPPath
from kacnum.flows.solvers import METHODS
from kacnum.images.data import DATASETS, load_dataset, make_loader
# part of this module's interface: sampling and the process group live in their own modules
from kacnum.images.distributed import DistInfo, resolve_device, setup_distributed  # noqa: F401
from kacnum.images.models import PRESETS, make_model
from kacnum.images.sampling import _Autocast, sample_images, save_image_grid  # noqa: F401
from kacnum.students.distill import EMA

__all__ = [
    "TrainConfig",
    "Trainer",
    "DistInfo",
    "PATH_KINDS",
    "CHECKPOINT_FORMAT",
    "setup_distributed",
    "make_path",
    "make_loss",
    "with_path",
    "wrap_prediction",
    "lr_factor",
    "derive_seed",
    "synthetic_dataset",
    "save_image_grid",
    "load_teacher",
    "sample_images",
]

PATH_KINDS = ("kac", "gaussian", "vp", "flight")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINT_FORMAT = "kacnum.train/1"
#: config fields that may differ between a run and its resumption (they do not change the maths)
RESUMABLE_FIELDS = ("total_steps", "log_every", "sample_every", "checkpoint_every", "num_samples",
                    "guidance_scale", "sample_steps", "sample_method", "compile", "data_dir")


# ----------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (written to ``config.json``).

    Model and data:
        model: a key of :data:`kacnum.images.models.PRESETS`; ``model_overrides`` replaces config fields.
        dataset: a key of :data:`kacnum.images.data.DATASETS` or ``"synthetic"`` (random class-conditioned
            images of the model's shape: :func:`synthetic_dataset`; ``synthetic_size`` images).
        data_dir: passed to :func:`kacnum.images.data.load_dataset` (None: ``$KACNUM_DATA`` or the default).
    Path (docs/mathematics.md §4, §9):
        path: ``"kac"`` (flow matching on ``KacPath(a, c, T, f_schedule, g_schedule)``),
            ``"gaussian"`` (rectified flow), ``"vp"`` (ε- or v-prediction: ``vp_prediction``) or ``"flight"``
            (flow matching on ``FlightPath(a, c, T, f_schedule, g_schedule)``: the block-isotropic Kac flow,
            planar random flights on pairs of horizontally adjacent pixels; ``a`` is the flight's event rate).
        a, c: Kac switching rate and speed (9, 3 as the Kac-flow code; 25, 2 reported for CIFAR-10).
        vp_prediction: what the ``"vp"`` network predicts: ``"eps"`` (the noise, default) or ``"v"``
            (``v = α ε - σ x0``, Salimans & Ho 2022; :class:`kacnum.flows.losses.EpsilonLoss`). A v-network is
            saved as it is and wrapped in :class:`kacnum.flows.losses.VToEps` (an ε-model) where it is sampled
            (:func:`wrap_prediction`, :func:`load_teacher`, :meth:`Trainer.sample`). Path ``"vp"`` only.
    Optimisation:
        optimizer: ``"adam"`` or ``"adamw"``; ``lr``, ``betas``, ``eps``, ``weight_decay``.
        warmup_steps: linear warm-up length; lr_schedule: ``"constant"`` or ``"cosine"`` (to 0 at
            ``total_steps``), see :func:`lr_factor`.
        grad_clip: max global gradient norm (0: off).
        batch_size: GLOBAL batch (split evenly across DDP ranks).
        total_steps: optimiser steps.
        ema_decay, ema_warmup: :class:`kacnum.students.distill.EMA` (``d_n = min(decay, (1+n)/(10+n))``).
        p_uncond: label dropout probability.
        bf16: bfloat16 autocast around the network on CUDA (ignored on the CPU).
        compile: ``torch.compile`` the training network.
        seed: seeds the initial weights, the data order and every per-step draw.
    Bookkeeping:
        log_every: steps per ``train_log.jsonl`` line (the loss is the window mean over ranks).
        sample_every: steps between sample grids (0: only at the end). checkpoint_every: steps
            between checkpoints (0: only at the end).
        num_samples, guidance_scale, sample_steps, sample_method: the sample grids (guided
            ``sample_method`` integration of the EMA model, ``sample_steps`` steps from ``T`` to 0).
    Teacher-training options (:mod:`kacnum.flows.losses`; the defaults are the plain loss, bit for bit):
        data_sigma: data smoothing ``x0 + σ ε`` before the path (0: off).
        time_sampling: ``"uniform"``, ``"logit_normal:m,s"`` or ``"power:k"`` (:class:`kacnum.flows.losses.TimeSampler`).
        loss_weighting: ``"none"`` or ``"atom"`` (Kac only: ``w ∝ 1 - e^{-a g(t)}``).
        precond: ``"none"``, ``"in"`` (``c_in = 1/std(x_t)``) or ``"inout"`` (also ``c_out = std(u_t)``):
            the network is wrapped in :class:`kacnum.flows.losses.Preconditioned` (saved with the checkpoint).
        precond_sigma_data: the data's pooled standard deviation for the preconditioner (0: measured on
            the training images; ``data_sigma`` is added in quadrature).
    """

    model: str = "digits_tiny"
    model_overrides: dict = field(default_factory=dict)
    dataset: str = "digits"
    data_dir: Optional[str] = None
    synthetic_size: int = 10_000
    path: str = "kac"
    a: float = 9.0
    c: float = 3.0
    T: float = 1.0
    f_schedule: str = "linear"
    g_schedule: str = "t"
    optimizer: str = "adam"
    lr: float = 2e-4
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    batch_size: int = 128
    total_steps: int = 1000
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    p_uncond: float = 0.1
    bf16: bool = False
    compile: bool = False
    seed: int = 0
    log_every: int = 100
    sample_every: int = 0
    checkpoint_every: int = 1000
    num_samples: int = 64
    guidance_scale: float = 1.2
    sample_steps: int = 100
    sample_method: str = "ab2"
    data_sigma: float = 0.0
    time_sampling: str = "uniform"
    loss_weighting: str = "none"
    precond: str = "none"
    precond_sigma_data: float = 0.0
    vp_prediction: str = "eps"

    def __post_init__(self):
        if self.model not in PRESETS:
            raise ValueError(f"model must be one of {sorted(PRESETS)}, got {self.model!r}")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        if self.dataset not in DATASETS and self.dataset != "synthetic":
            raise ValueError(f"dataset must be one of {sorted(DATASETS) + ['synthetic']}, got {self.dataset!r}")
        if self.path not in PATH_KINDS:
            raise ValueError(f"path must be one of {PATH_KINDS}, got {self.path!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.sample_method not in METHODS:
            raise ValueError(f"sample_method must be one of {METHODS}, got {self.sample_method!r}")
        for name in ("batch_size", "total_steps", "log_every", "num_samples", "sample_steps", "synthetic_size"):
            check_int(name, getattr(self, name), 1)
        for name in ("warmup_steps", "sample_every", "checkpoint_every", "seed"):
            check_int(name, getattr(self, name), 0)
        for name in ("a", "c", "T", "lr", "eps"):
            check_positive(name, getattr(self, name))
        check_nonnegative("weight_decay", self.weight_decay)
        check_nonnegative("grad_clip", self.grad_clip)
        check_in_range("p_uncond", self.p_uncond, 0.0, 1.0)
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0 - 1e-12)
        check_in_range("guidance_scale", self.guidance_scale, -1e6, 1e6)
        betas = tuple(float(b) for b in self.betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", betas)
        check_nonnegative("data_sigma", self.data_sigma)
        check_nonnegative("precond_sigma_data", self.precond_sigma_data)
        object.__setattr__(self, "time_sampling", TimeSampler(self.time_sampling).spec)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.loss_weighting == "atom" and self.path != "kac":
            raise ValueError(f"loss_weighting 'atom' needs path 'kac' (it weights by the Kac atom mass), "
                             f"got path {self.path!r}")
        if self.precond not in PRECONDITIONINGS:
            raise ValueError(f"precond must be one of {PRECONDITIONINGS}, got {self.precond!r}")
        if self.precond != "none" and self.path not in ("kac", "gaussian", "vp"):
            raise ValueError(f"precond {self.precond!r} needs path 'kac', 'gaussian' or 'vp' (the marginal scales "
                             f"of kacnum.flows.losses.marginal_std), got path {self.path!r}")
        if self.vp_prediction not in VP_PREDICTIONS:
            raise ValueError(f"vp_prediction must be one of {VP_PREDICTIONS}, got {self.vp_prediction!r}")
        if self.vp_prediction != "eps" and self.path != "vp":
            raise ValueError(f"vp_prediction {self.vp_prediction!r} needs path 'vp' (it is what the VP diffusion "
                             f"network predicts), got path {self.path!r}; leave vp_prediction 'eps' for other paths")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict` (unknown keys raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


#: field -> default: a checkpoint written before a field existed resumes as if it held the default
_FIELD_DEFAULTS = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
                   for f in dataclasses.fields(TrainConfig)}


def make_path(config: TrainConfig) -> ProbabilityPath:
    """The probability path of ``config``: ``KacPath(a, c, T, f, g)``, ``FlightPath(a, c, T, f, g)``,
    ``GaussianPath(T)`` or ``VPPath(T=T)``."""
    if config.path == "kac":
        return KacPath(config.a, config.c, config.T, f=config.f_schedule, g=config.g_schedule)
    if config.path == "flight":
        return FlightPath(config.a, config.c, config.T, f=config.f_schedule, g=config.g_schedule)
    if config.path == "gaussian":
        return GaussianPath(T=config.T)
    return VPPath(T=config.T)


def with_path(config: TrainConfig, path: str, vp_prediction: Optional[str] = None) -> TrainConfig:
    """``config`` on another path (the baselines of the Kac teacher): the same recipe (data smoothing,
    time density, preconditioning), and ``loss_weighting`` reset to ``"none"`` off the Kac path (the
    ``atom`` weighting has no meaning without atoms). ``vp_prediction`` (``"eps"``, ``"v"``) sets the VP
    network's prediction for ``path="vp"`` (None: ``config``'s); off the VP path it is reset to ``"eps"``."""
    weighting = config.loss_weighting if path == "kac" else "none"
    if path != "vp":
        if vp_prediction not in (None, "eps"):
            raise ValueError(f"vp_prediction {vp_prediction!r} needs path 'vp', got path {path!r}")
        pred = "eps"
    else:
        pred = config.vp_prediction if vp_prediction is None else vp_prediction
    return dataclasses.replace(config, path=path, loss_weighting=weighting, vp_prediction=pred)


def make_loss(config: TrainConfig, path: ProbabilityPath, null_label: Optional[int]):
    """``FlowMatchingLoss`` (kac, gaussian, flight) or ``EpsilonLoss`` (vp; target ε or v as
    ``config.vp_prediction``) with ``p_uncond`` and ``null_label``."""
    kw = dict(p_uncond=config.p_uncond, null_label=null_label, data_sigma=config.data_sigma,
              time_sampling=config.time_sampling, weighting=config.loss_weighting)
    if config.path == "vp":
        return EpsilonLoss(path, prediction=config.vp_prediction, **kw)
    return FlowMatchingLoss(path, **kw)


def wrap_prediction(model: nn.Module, config: TrainConfig, path: ProbabilityPath) -> nn.Module:
    """The model the samplers take: ``VToEps(model, path)`` (an ε-model) for a VP v-prediction network
    (``config.path == "vp"`` and ``config.vp_prediction == "v"``), else ``model`` itself. The network
    itself (``model``) is what checkpoints store."""
    if config.path == "vp" and config.vp_prediction == "v":
        return model if isinstance(model, VToEps) else VToEps(model, path)
    return model


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str = "constant") -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based).

    ``warmup = min(1, (step + 1) / warmup_steps)`` (1 if ``warmup_steps = 0``); ``decay = 1``
    (constant) or ``(1 + cos(π p)) / 2`` with ``p = (step - warmup_steps) / (total_steps - warmup_steps)``
    clipped to ``[0, 1]`` (cosine). Returns ``warmup · decay``.
    """
    w = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
    if schedule == "constant":
        return w
    if schedule != "cosine":
        raise ValueError(f"schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, max(0.0, (step - warmup_steps) / span))
    return w * 0.5 * (1.0 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------------
# data


def synthetic_dataset(n: int, channels: int, resolution: int, num_classes: int,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SYNTHETIC class-conditioned images for pipeline and throughput checks (not a real data set).

    Class ``k`` has a smooth template ``m_k`` (a ``(C, 4, 4)`` standard normal field upsampled
    bilinearly to ``resolution``); image ``i`` of class ``y_i`` is
    ``clamp(0.7 tanh(m_{y_i}) + 0.15 ξ_i, -1, 1)``, ``ξ_i`` a smooth ``(C, 8, 8)`` normal field
    upsampled likewise. Labels ``y_i = i mod K`` (``K = max(num_classes, 1)``; all 0 when
    ``num_classes = 0``). Deterministic in ``seed``.

    Returns ``images: (n, C, R, R)`` float32 in [-1, 1], ``labels: (n,)`` int64.
    """
    check_int("n", n, 1)
    check_int("channels", channels, 1)
    check_int("resolution", resolution, 1)
    check_int("num_classes", num_classes, 0)
    gen = torch.Generator().manual_seed(int(seed))
    k = max(num_classes, 1)
    up = torch.nn.functional.interpolate
    templates = up(torch.randn(k, channels, 4, 4, generator=gen), size=(resolution, resolution),
                   mode="bilinear", align_corners=False)
    labels = torch.arange(n) % k
    images = torch.empty(n, channels, resolution, resolution)
    for s in range(0, n, 4096):
        e = min(n, s + 4096)
        noise = up(torch.randn(e - s, channels, 8, 8, generator=gen), size=(resolution, resolution),
                   mode="bilinear", align_corners=False)
        images[s:e] = (0.7 * torch.tanh(templates[labels[s:e]]) + 0.15 * noise).clamp_(-1.0, 1.0)
    if num_classes == 0:
        labels = torch.zeros(n, dtype=torch.long)
    return images, labels.long()


class _Batches:
    """Deterministic batches: the epoch's order from the loader's ``DistributedSampler`` (a function
    of ``(seed, epoch)``), this rank's share, ``local_batch`` images per batch, last partial batch dropped."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, local_batch: int, seed: int,
                 world_size: int, rank: int):
        self.loader = make_loader(images, labels, local_batch, shuffle=True, seed=seed, drop_last=True,
                                  distributed=True, num_replicas=world_size, rank=rank)
        self.images, self.labels, self.b = images, labels, local_batch
        self.per_epoch = len(self.loader)
        if self.per_epoch < 1:
            raise ValueError(f"batch_size per rank ({local_batch}) must be <= the images per rank "
                             f"({len(self.loader.sampler)})")
        self._epoch, self._order = None, None

    def get(self, epoch: int, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch != self._epoch:
            self.loader.sampler.set_epoch(epoch)
            self._order = torch.as_tensor(list(iter(self.loader.sampler)), dtype=torch.long)
            self._order = self._order.to(self.images.device)
            self._epoch = epoch
        idx = self._order[position * self.b:(position + 1) * self.b]
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)


# ----------------------------------------------------------------------------------------------
# RNG states (kept as plain tensors / numbers so that load_checkpoint(weights_only=True) reads them)


def _rng_state(device: torch.device) -> dict:
    key, arr, pos, has_gauss, cached = np.random.get_state()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": key, "state": torch.from_numpy(arr.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device: torch.device) -> None:
    torch.set_rng_state(st["torch"].cpu())
    n = st["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"].cpu(), device)

# ----------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Train ``config`` (see the module docstring); ``fit()`` runs the loop.

    Args:
        config: :class:`TrainConfig`.
        out_dir: where config.json, train_log.jsonl, samples_*.png and checkpoint.pt go (None: nothing
            is written and ``resume`` is unavailable).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or None/``"auto"`` (CUDA if present). Under
            torchrun the rank's ``cuda:LOCAL_RANK``.
        data: ``(images (N, C, H, W) in [-1, 1], labels (N,))`` to use instead of loading
            ``config.dataset`` (tests, benchmarks).
        extra_config: more JSON written into ``config.json`` under ``"extra"`` (e.g. the experiment's
            command line).
        data_on_device: keep the whole training set on the device (default: True on CUDA).

    Attributes after construction: ``model`` (the raw network), ``ema`` (``kacnum.students.distill.EMA``),
    ``optimizer``, ``path``, ``loss_fn``, ``step`` (optimiser steps done), ``dist`` (:class:`DistInfo`),
    ``history`` (the logged rows of this process's run).
    """

    def __init__(self, config: TrainConfig, out_dir: Union[str, os.PathLike, None] = None,
                 device: Union[str, torch.device, None] = None,
                 data: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                 extra_config: Optional[dict] = None, data_on_device: Optional[bool] = None):
        if not isinstance(config, TrainConfig):
            raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = cfg = config
        self.dist = setup_distributed(device)
        self.device = dev = self.dist.device
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.extra_config = dict(extra_config or {})
        world = self.dist.world_size
        if cfg.batch_size % world:
            raise ValueError(f"batch_size ({cfg.batch_size}, the global batch) must be divisible by the "
                             f"number of processes ({world})")
        self.local_batch = cfg.batch_size // world
        self.bf16 = bool(cfg.bf16 and dev.type == "cuda")
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels

        # data first (a missing file fails before a large network is built), except synthetic
        # data, whose shape is the network's; the initial weights are the same on every rank
        images = labels = None
        if data is not None or cfg.dataset != "synthetic":
            images, labels = self._load_data(data)
        torch.manual_seed(derive_seed(cfg.seed, 0xA11CE))
        self.model = make_model(cfg.model, **cfg.model_overrides).to(dev)
        mcfg = self.model.config
        self.sample_shape = (mcfg.in_channels, mcfg.resolution, mcfg.resolution) \
            if hasattr(mcfg, "resolution") else (mcfg.dim,)
        self.num_classes = int(getattr(self.model, "num_classes", 0))
        if images is None:
            images, labels = synthetic_dataset(cfg.synthetic_size, self.sample_shape[0], self.sample_shape[-1],
                                               self.num_classes, seed=cfg.seed)
        if tuple(images.shape[1:]) != self.sample_shape:
            raise ValueError(f"data images have shape {tuple(images.shape[1:])} but model {cfg.model!r} "
                             f"takes {self.sample_shape}: choose a matching model or set model_overrides")
        if self.num_classes > 0 and labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels reach {int(labels.max())} but the model has num_classes={self.num_classes}")
        if data_on_device is None:
            data_on_device = dev.type == "cuda"
        if data_on_device:
            images, labels = images.to(dev), labels.to(dev)
        self.num_images = images.shape[0]
        self.batches = _Batches(images, labels, self.local_batch, cfg.seed, world, self.dist.rank)

        self.path = make_path(cfg)
        if cfg.precond != "none":  # no parameters: the initial weights are unchanged
            sd = cfg.precond_sigma_data or float(images.float().std())
            self.model = Preconditioned(self.model, self.path, math.sqrt(sd ** 2 + cfg.data_sigma ** 2), cfg.precond)
        self.loss_fn = make_loss(cfg, self.path, self.model.null_label if self.num_classes > 0 else None)
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_warmup)
        # value checks inside the network synchronise with the device; inputs here are valid
        if dev.type == "cuda" or cfg.compile:
            for m in (self.model, self.ema.model):
                if hasattr(m, "check_inputs"):
                    m.check_inputs = False
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        kwargs = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
        if dev.type == "cuda":
            kwargs["fused"] = True
        self.optimizer = opt_cls(params, **kwargs)

        net: nn.Module = self.model
        if world > 1:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[dev.index] if dev.type == "cuda" else None)
        self.ddp = net if world > 1 else None
        if cfg.compile:
            net = torch.compile(net)
        self.net = _Autocast(net, self.bf16, dev.type)
        self.gen = torch.Generator(device=dev)
        self.step = 0
        self.history: list[dict] = []
        self.grids: list[str] = []

    # -- set-up helpers ------------------------------------------------------------------------

    def _load_data(self, data):
        cfg = self.config
        if data is not None:
            images, labels = data
            if not torch.is_tensor(images) or images.dim() < 2 or not images.is_floating_point():
                raise ValueError("data[0] must be a floating tensor (N, C, H, W)")
            if not torch.is_tensor(labels) or labels.shape != (images.shape[0],):
                raise ValueError(f"data[1] must be a ({images.shape[0]},) tensor of labels")
            return images.float(), labels.long()
        return load_dataset(cfg.dataset, data_dir=cfg.data_dir, split="train")

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def resolved(self) -> dict:
        """The resolved configuration written to ``config.json``."""
        mc = self.model.config
        return {
            "format": CHECKPOINT_FORMAT,
            "train": self.config.to_dict(),
            "resolved": {
                "device": str(self.device),
                "world_size": self.dist.world_size,
                "local_batch": self.local_batch,
                "bf16_autocast": self.bf16,
                "model_config": dataclasses.asdict(mc),
                "num_parameters": sum(p.numel() for p in self.model.parameters()),
                "num_images": self.num_images,
                "batches_per_epoch": self.batches.per_epoch,
                "path": repr(self.path),
                "loss": repr(self.loss_fn),
                "preconditioner": self.model.get_extra_state() if isinstance(self.model, Preconditioned) else None,
                "torch_version": torch.__version__,
            },
            "extra": self.extra_config,
        }

    def _file(self, name: str) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / name

    # -- one step --------------------------------------------------------------------------------

    def position(self, step: Optional[int] = None) -> tuple[int, int]:
        """``(epoch, batch index within the epoch)`` of optimiser step ``step`` (default: the next)."""
        s = self.step if step is None else step
        return divmod(s, self.batches.per_epoch)

    def train_step(self) -> torch.Tensor:
        """One optimiser step on the next batch; returns the (detached, rank-local) loss."""
        cfg = self.config
        n = self.step
        x0, y = self.batches.get(*self.position(n))
        x0 = x0.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True) if self.num_classes > 0 else None
        # every draw of step n is a function of (seed, rank, n): see the module docstring
        self.gen.manual_seed(derive_seed(cfg.seed, self.dist.rank, n, 1))
        torch.manual_seed(derive_seed(cfg.seed, self.dist.rank, n, 2))
        lr = cfg.lr * lr_factor(n, cfg.warmup_steps, cfg.total_steps, cfg.lr_schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_fn(self.net, x0, y, generator=self.gen)
        out["loss"].backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step = n + 1
        return out["loss"].detach()

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        epoch, position = self.position()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step,
            "epoch": epoch,
            "position": position,
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"kind": self.config.lr_schedule, "warmup_steps": self.config.warmup_steps,
                          "last_lr": self.optimizer.param_groups[0]["lr"]},
            "rng": _rng_state(self.device),
            "generator": self.gen.get_state(),
        }

    def save_checkpoint(self, path: Union[str, os.PathLike, None] = None) -> Optional[Path]:
        """Write the checkpoint atomically (rank 0 only; other ranks return None)."""
        path = Path(path) if path is not None else self._file("checkpoint.pt")
        if path is None or not self.is_main:
            return None
        return save_checkpoint(path, self.state_dict(), keep_previous=True)

    def load_state_dict(self, ck: dict) -> None:
        """Restore a :meth:`state_dict` (config compatibility checked: only ``RESUMABLE_FIELDS`` may differ)."""
        if ck.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a training checkpoint ({CHECKPOINT_FORMAT}), format={ck.get('format')!r}")
        mine, theirs = self.config.to_dict(), dict(ck["config"])
        diff = sorted(k for k in mine if k not in RESUMABLE_FIELDS
                      and _plain(mine[k]) != _plain(theirs.get(k, _FIELD_DEFAULTS.get(k))))
        if diff:
            raise ValueError(f"config differs from the checkpoint's in {diff}; resume with the same "
                             f"configuration (only {list(RESUMABLE_FIELDS)} may change)")
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.step = int(ck["step"])
        if (int(ck["epoch"]), int(ck["position"])) != self.position() and \
                int(ck["world_size"]) == self.dist.world_size:
            raise ValueError("checkpoint data position does not match its step (batches per epoch changed?)")
        _set_rng_state(ck["rng"], self.device)

    def load_checkpoint(self, path: Union[str, os.PathLike, None] = None) -> bool:
        """Load ``path`` (default ``out_dir/checkpoint.pt``); False if there is none.

        The file is verified first; a damaged one falls back to ``checkpoint.prev.pt`` with a warning
        (:func:`kacnum.core.checkpoint.load_checkpoint`), or raises :class:`kacnum.core.checkpoint.CheckpointError`
        naming the file when there is no good copy."""
        path = Path(path) if path is not None else self._file("checkpoint.pt")
        if path is None or not (path.is_file() or previous_path(path).is_file()):
            return False
        self.load_state_dict(load_checkpoint(path, map_location="cpu"))
        return True

    # -- samples -----------------------------------------------------------------------------------

    def sample(self, n: Optional[int] = None, steps: Optional[int] = None,
               guidance_scale: Optional[float] = None, seed: Optional[int] = None,
               use_ema: bool = True) -> dict:
        """Guided samples of the EMA (or raw) model: see :func:`sample_images` (a VP v-network through
        :class:`kacnum.flows.losses.VToEps`)."""
        cfg = self.config
        model = self.ema.model if use_ema else self.model
        was = model.training
        model.eval()
        try:
            return sample_images(wrap_prediction(model, cfg, self.path), self.path, n or cfg.num_samples,
                                 guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale,
                                 steps=steps or cfg.sample_steps, method=cfg.sample_method,
                                 seed=derive_seed(cfg.seed, 0x5A) if seed is None else seed,
                                 bf16=self.bf16, device=self.device, eps_model=cfg.path == "vp")
        finally:
            model.train(was)

    def save_samples(self) -> Optional[Path]:
        """Sample a grid with the EMA model and write ``samples_{step:06d}.png`` (rank 0)."""
        f = self._file(f"samples_{self.step:06d}.png")
        if f is None or not self.is_main:
            return None
        out = self.sample()
        nrow = self.num_classes if 0 < self.num_classes <= 16 else 8
        scale = max(1, 64 // self.sample_shape[-1])
        save_image_grid(out["images"], f, nrow=nrow, scale=scale)
        self.grids.append(str(f))
        return f

    # -- the loop ----------------------------------------------------------------------------------

    def _truncate_log(self, step: int) -> None:
        f = self._file("train_log.jsonl")
        if f is None or not f.is_file():
            return
        keep = []
        for ln in f.read_text().splitlines():
            try:
                if json.loads(ln)["step"] <= step:
                    keep.append(ln)
            except (ValueError, KeyError, TypeError):
                pass  # a line cut short by a crash
        atomic_write(f, lambda fh: fh.write("".join(k + "\n" for k in keep)), mode="w")

    def _log(self, row: dict) -> None:
        self.history.append(row)
        f = self._file("train_log.jsonl")
        if f is not None and self.is_main:
            with open(f, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")

    def fit(self, resume: bool = False, progress: bool = True, max_steps: Optional[int] = None,
            callback: Optional[Callable[[dict], None]] = None) -> dict:
        """Train until ``config.total_steps`` (or ``max_steps`` more steps, whichever comes first).

        ``resume=True`` continues from ``out_dir/checkpoint.pt`` if it exists (fresh start
        otherwise). Checkpoints every ``checkpoint_every`` steps and at the end (also when stopping
        at ``max_steps``); sample grids every ``sample_every`` steps and at the end.
        ``callback({"step", "loss", "lr"})`` after every step (``loss`` as a float: a device sync).
        Returns a summary dict (steps, final loss, images/s, seconds, files).
        """
        cfg = self.config
        if resume:
            if self.out_dir is None:
                raise ValueError("resume=True needs out_dir (where checkpoint.pt lives)")
            if self.load_checkpoint():
                self._truncate_log(self.step)
        if self.is_main and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_json(self.out_dir / "config.json", self.resolved())
        self.model.train()
        end = cfg.total_steps if max_steps is None else min(cfg.total_steps, self.step + int(max_steps))
        start = self.step
        bar = Progress(cfg.total_steps, "train", initial=start, enabled=progress and self.is_main)
        win_loss = torch.zeros((), device=self.device, dtype=torch.float64)
        win_n, t_win, t0 = 0, time.perf_counter(), time.perf_counter()
        imgs_per_s = []
        try:
            while self.step < end:
                loss = self.train_step()
                win_loss += loss
                win_n += 1
                if callback is not None:
                    callback({"step": self.step, "loss": float(loss), "lr": self.optimizer.param_groups[0]["lr"]})
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == end:
                    mean = win_loss / win_n
                    if self.dist.world_size > 1:
                        dist.all_reduce(mean)
                        mean /= self.dist.world_size
                    mean = float(mean)  # synchronises: the window's wall time is complete
                    now = time.perf_counter()
                    ips = cfg.batch_size * win_n / max(now - t_win, 1e-9)
                    imgs_per_s.append(ips)
                    epoch, _ = self.position(self.step - 1)
                    self._log({"step": self.step, "epoch": epoch, "loss": mean,
                               "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": ips,
                               "seconds": now - t0})
                    bar.set_postfix(loss=mean, **{"img/s": round(ips)})
                    win_loss.zero_()
                    win_n, t_win = 0, time.perf_counter()
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < end:
                    self.save_checkpoint()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.total_steps:
                    self.save_samples()
                    t_win = time.perf_counter()  # keep sampling time out of images/s
        finally:
            bar.close()
        if self.step > start or not self._file_exists("checkpoint.pt"):
            self.save_checkpoint()
        if self.step >= cfg.total_steps and not self._file_exists(f"samples_{self.step:06d}.png"):
            self.save_samples()
        if self.dist.world_size > 1:
            dist.barrier()
        tail = [r["loss"] for r in self.history[-5:]]
        return {
            "start_step": start,
            "steps": self.step,
            "final_loss": sum(tail) / len(tail) if tail else None,
            "images_per_s": float(np.median(imgs_per_s)) if imgs_per_s else None,
            "seconds": time.perf_counter() - t0,
            "checkpoint": str(self._file("checkpoint.pt")) if self.out_dir is not None else None,
            "grids": list(self.grids),
        }

    def _file_exists(self, name: str) -> bool:
        f = self._file(name)
        return f is not None and f.is_file()

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self.dist.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    if isinstance(v, dict):
        return {k: _plain(u) for k, u in v.items()}
    return v


def load_teacher(checkpoint: Union[str, os.PathLike], device: Union[str, torch.device, None] = None,
                 use_ema: bool = True) -> tuple[nn.Module, ProbabilityPath, TrainConfig]:
    """Rebuild ``(model, path, config)`` from a training ``checkpoint.pt``.

    ``model`` is the EMA network (``use_ema``) or the raw one, in eval mode with gradients off, on
    ``device`` (None: CUDA if present). A VP v-prediction network (``config.vp_prediction == "v"``) comes
    wrapped in :class:`kacnum.flows.losses.VToEps`, an ε-model like the ``"eps"`` one (the raw network is
    ``model.net``).
    """
    dev = resolve_device(device)
    # a file the user names (--teacher, ...): a damaged one is restored, not dropped by leaving out --resume
    ck = load_checkpoint(checkpoint, map_location="cpu", resumable=False)
    if ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{checkpoint} is not a training checkpoint ({CHECKPOINT_FORMAT})")
    cfg = TrainConfig.from_dict(ck["config"])
    model = make_model(cfg.model, **cfg.model_overrides)
    path = make_path(cfg)
    if cfg.precond != "none":  # sigma_data and the path come back from the checkpoint's extra state
        model = Preconditioned(model, path, 1.0, cfg.precond)
    model.load_state_dict(ck["ema"]["model"] if use_ema else ck["model"])
    model = model.to(dev).eval().requires_grad_(False)
    return wrap_prediction(model, cfg, path).eval(), path, cfg
