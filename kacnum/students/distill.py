"""Endpoint distillation of a (guided) flow into few-step students (docs/mathematics.md §7, DistillKac).

Student grid ``T = t_0 > t_1 > ... > t_K = t_end`` (uniform: ``t_k = T + (k/K)(t_end - T)``).
A student is a velocity network of the teacher's architecture, initialised from its teacher, that
takes ONE Euler step per interval:

    Ŷ = x + (t_{k+1} - t_k) s_θ(x, t_k, y)                       (parameterization="velocity")
    Ŷ = s_θ(x, t_k, y)                                             (parameterization="endpoint")

and is trained on the endpoint loss (mean over coordinates ``d``, batch mean over ``(k, x)``)

    L(θ) = E_{k ~ U{0..K-1}, x} (1/d) ‖Ŷ - stopgrad(Φ_teacher(x; t_k → t_{k+1}))‖².

Staged schedule ``stages = (K_0, K_1, ..., K_S)``, e.g. ``(100, 20, 4, 2, 1)``: ``K_0`` is the step
count of the continuous-time teacher, and stage ``i >= 1`` trains a ``K_i``-step student whose
teacher takes ``N_i = K_{i-1} / K_i`` sub-steps per student interval (5, 5, 2, 2 here; each count
must divide the previous one). The teacher of stage 1 is the frozen (optionally guided) teacher
field integrated with ``N_1`` steps of ``teacher_method`` (AB-2 by default) over the interval; the
teacher of stage ``i >= 2`` is the stage ``i-1`` student (its EMA), used as its own ``K_{i-1}``-step
Euler map, i.e. ``N_i`` of its steps on its own (finer, nested) grid. One-shot distillation is
``stages = (100, 1)``.

Guidance (docs/mathematics.md §5): with labels and ``guidance_scale = s``, the stage-1 teacher is the guided field
``u_s = u_∅ + s (u_y - u_∅)`` (2 network evaluations per call unless ``s`` is 0 or 1); the student
is conditional on ``y`` and learns the guided map, so it needs one evaluation per step. Labels are
replaced by the null label with probability ``p_uncond`` during distillation (the guided field at
the null label is the unconditional one). The default is ``p_uncond = 0``: every sampler here
(:class:`Sampler`, the pipeline's) is conditional whenever the data have labels, so a null-label
row trains a map that is never used; ``p_uncond = 0.1`` (the default before) keeps the students'
null-label capability.

Source of ``x`` at ``t_k`` (``source``):

* ``"forward"``: forward-noised data ``path.sample(x0, t_k).x_t`` (cheap; the teacher map is run
  on every batch, ``N`` teacher steps per target);
* ``"rollout"``: teacher roll-outs from the latent, as at inference. A pool of ``rollout_pool``
  latents is pushed through the stage's teacher map interval by interval; the state at ``t_{k+1}``
  is then the target of the state at ``t_k`` (no further teacher call). The pool is re-drawn every
  ``rollout_refresh`` steps from a seed derived from ``(seed, stage, refresh index)``, so a resumed
  run rebuilds exactly the pool it lost;
* ``"mix"``: ``round(rollout_fraction * batch_size)`` rows of every batch from the roll-out pool,
  the others forward-noised (``DistillBatch.from_pool`` says which).

Stage-1 target (``target``; stages ``i >= 2`` have an Euler teacher, which has no history, so the
two coincide there):

* ``"restart"`` (default, the behaviour before): ``N`` sub-steps of ``teacher_method`` started
  afresh in every student interval. With AB-2 this takes an Euler first sub-step in every interval,
  so the student learns another trajectory than the one the ``K_0``-step teacher follows when it
  samples (and whose FID is the reference);
* ``"trajectory"``: the state the ``K_0``-step teacher itself reaches, its AB-2 history carried
  across student intervals. Roll-out rows: the pool is ONE teacher solve on the fine grid
  ``grid(0)`` (``K_0`` uniform steps, exactly the teacher's sampler) from each latent, kept at the
  student grid times (``grid(0)[k N] == grid(1)[k]`` exactly), so the pairs ``(state at t_k, state
  at t_{k+1})`` are the teacher's own. Forward rows (no history exists for them): AB-2 primed with
  the slope at the previous fine time ``t_k - h`` at the point ``x - h u(x, t_k)`` (one explicit
  step back; its error is ``O(h^2)``, so the primed step keeps AB-2's local order), one extra call
  per target; rows with ``k = 0`` start at ``T`` as the teacher does (Euler first step).

The one-step maps (:func:`student_step`), the teachers' maps (:class:`FlowTeacher`,
:class:`StudentTeacher`, with :func:`interval_flow` and :func:`primed_ab2_flow` integrating over a
per-row interval) and :func:`endpoint_loss` live in :mod:`kacnum.students.teachers`; the optimiser
loop, :class:`EMA`, checkpoints and resumption in :mod:`kacnum.students.loop`. Both are re-exported
here.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checks import (check_finite_number, check_in_range, check_int, check_nonnegative, check_positive,
                                per_stage_counts)
from kacnum.flows.solvers import METHODS, NFE_PER_STEP, integrate, uniform_grid
from kacnum.students.loop import EMA, LR_SCHEDULES, StudentLoop, StudentTraining, _check_decay
from kacnum.students.teachers import (PARAMETERIZATIONS, TARGETS, FlowTeacher, StudentTeacher, _check_param,
                                      _PlainField, endpoint_loss, interval_flow, primed_ab2_flow, student_step)

__all__ = [
    "DistillConfig",
    "DistillBatch",
    "Distiller",
    "EMA",
    "FlowTeacher",
    "StudentTeacher",
    "StudentTraining",
    "RolloutPool",
    "Sampler",
    "validate_stages",
    "stage_substeps",
    "student_step",
    "interval_flow",
    "primed_ab2_flow",
    "endpoint_loss",
    "SOURCES",
    "TARGETS",
    "PARAMETERIZATIONS",
]

SOURCES = ("forward", "rollout", "mix")
CHECKPOINT_FORMAT = "kacnum.distill/1"


# ---------------------------------------------------------------------------------------------
# schedules


def validate_stages(stages: Sequence[int]) -> tuple[int, ...]:
    """Check a staged schedule ``(K_0, K_1, ..., K_S)`` and return it as a tuple of ints.

    Requires ``S >= 1``, integers ``K_i >= 1``, strictly decreasing, and each count dividing the
    previous one (``N_i = K_{i-1} / K_i`` teacher sub-steps per student interval).
    """
    try:
        st = tuple(stages)
    except TypeError:
        raise ValueError(f"stages must be a sequence of step counts such as (100, 20, 4, 2, 1), "
                         f"got {stages!r}") from None
    if len(st) < 2:
        raise ValueError(f"stages must hold at least 2 step counts (teacher, then students), got {st!r}")
    for k in st:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"stages must hold integers >= 1, got {st!r}")
    for prev, cur in zip(st, st[1:]):
        if cur >= prev:
            raise ValueError(f"stages must be strictly decreasing, got {prev} -> {cur} in {st!r}")
        if prev % cur:
            raise ValueError(f"stages: each step count must divide the previous one (the ratio is the "
                             f"teacher's sub-steps per student interval); {prev} -> {cur} in {st!r} "
                             f"gives {prev}/{cur}, not an integer")
    return st


def stage_substeps(stages: Sequence[int]) -> tuple[int, ...]:
    """Teacher sub-steps per student interval ``N_i = K_{i-1} / K_i``, ``i = 1..S``."""
    st = validate_stages(stages)
    return tuple(prev // cur for prev, cur in zip(st, st[1:]))


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class DistillConfig:
    """Staged endpoint distillation.

    Attributes:
        stages: ``(K_0, ..., K_S)``: teacher steps, then student step counts (see
            :func:`validate_stages`). One-shot: ``(100, 1)``.
        steps_per_stage: optimiser steps per student stage (int, or one per stage).
        batch_size: rows per step (pairs ``(k, x)``).
        lr, weight_decay: AdamW.
        lr_schedule: ``"constant"`` or ``"cosine"`` (per stage, ``lr (1 + cos(π n / steps)) / 2``
            at step ``n``: decays to 0 at the stage's end).
        grad_clip: max gradient norm; 0 switches clipping off.
        ema_decay, ema_warmup: see :class:`EMA`.
        source: ``"forward"``, ``"rollout"`` or ``"mix"`` (module docstring).
        rollout_fraction: share of each batch's rows taken from the roll-out pool with
            ``source="mix"`` (``round(rollout_fraction * batch_size)`` rows), in ``[0, 1]``.
        target: stage-1 target, ``"restart"`` (AB-2 restarted in every student interval; the
            default) or ``"trajectory"`` (the ``K_0``-step teacher's own states; module docstring).
        teacher_method: solver of the stage-1 teacher (``kacnum.flows.solvers.METHODS``).
        guidance_scale: ``s`` of the stage-1 teacher (used when labels are given).
        p_uncond: probability of the null label for a row, in ``[0, 1]``. Default 0: the samplers
            are always conditional when there are labels (0.1 was the default before).
        parameterization: ``"velocity"`` (one Euler step) or ``"endpoint"`` (direct output).
        t_end: last grid time (``0`` = the data end); the grids are uniform from ``T`` to ``t_end``.
        rollout_pool: roll-outs per pool (``source="rollout"``).
        rollout_refresh: steps between pool refreshes.
        teacher_from_ema: stage ``i >= 2`` teacher (and initialisation) = EMA of the previous
            student (else its raw weights).
        seed: seeds the data, time, label and noise draws (one generator) and the roll-out pools.
        checkpoint_every: also checkpoint every this many steps within a stage (0 = only at stage
            ends); checkpoints need ``out_dir``.
        log_every: keep the loss every this many steps in the history.
    """

    stages: tuple = (100, 20, 4, 2, 1)
    steps_per_stage: Union[int, tuple] = 2000
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    source: str = "forward"
    rollout_fraction: float = 0.5
    target: str = "restart"
    teacher_method: str = "ab2"
    guidance_scale: float = 1.0
    p_uncond: float = 0.0
    parameterization: str = "velocity"
    t_end: float = 0.0
    rollout_pool: int = 4096
    rollout_refresh: int = 500
    teacher_from_ema: bool = True
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 50

    def __post_init__(self):
        st = validate_stages(self.stages)
        object.__setattr__(self, "stages", st)
        object.__setattr__(self, "steps_per_stage", per_stage_counts("steps_per_stage", self.steps_per_stage, len(st) - 1))
        for name in ("batch_size", "rollout_pool", "rollout_refresh", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_int("checkpoint_every (0 = stage ends only)", self.checkpoint_every, 0)
        check_int("seed", self.seed, 0)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_nonnegative("grad_clip", self.grad_clip)
        _check_decay(self.ema_decay)
        check_in_range("p_uncond", self.p_uncond, 0.0, 1.0)
        check_in_range("rollout_fraction", self.rollout_fraction, 0.0, 1.0)
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        for name in ("guidance_scale", "t_end"):
            check_finite_number(name, getattr(self, name))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.teacher_method not in METHODS:
            raise ValueError(f"teacher_method must be one of {METHODS}, got {self.teacher_method!r}")
        _check_param(self.parameterization)

    @property
    def substeps(self) -> tuple[int, ...]:
        """``N_i`` per student stage."""
        return stage_substeps(self.stages)

    @property
    def uses_pool(self) -> bool:
        """Whether batches draw rows from a roll-out pool (``rollout``, or ``mix`` with a share > 0)."""
        return self.source == "rollout" or (self.source == "mix" and self.rollout_fraction > 0)

    @property
    def pool_rows(self) -> int:
        """Rows of a batch taken from the roll-out pool."""
        if self.source == "forward":
            return 0
        if self.source == "rollout":
            return self.batch_size
        return int(round(self.rollout_fraction * self.batch_size))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# batches, pools, samplers


@dataclass
class DistillBatch:
    """One training batch: ``x: (B, ...)`` at ``t = grid[k]``, ``t_next = grid[k+1]`` (``(B,)``),
    ``k: (B,)`` long, ``y: (B,)`` long or None, ``target: (B, ...)`` the teacher's endpoint,
    ``teacher_nfe``: network evaluations per target (forward rows; in roll-out mode: paid when the
    pool was built), and ``from_pool``: ``(B,)`` bool, the rows taken from the roll-out pool (None:
    all forward)."""

    x: torch.Tensor
    t: torch.Tensor
    t_next: torch.Tensor
    k: torch.Tensor
    y: Optional[torch.Tensor]
    target: torch.Tensor
    teacher_nfe: int
    from_pool: Optional[torch.Tensor] = None


@dataclass
class RolloutPool:
    """Teacher roll-outs: ``states: (K+1, P, ...)`` at the grid times (``states[0]`` the latents),
    ``labels: (P,)`` or None, ``teacher_nfe``: network evaluations per interval and roll-out."""

    states: torch.Tensor
    labels: Optional[torch.Tensor]
    teacher_nfe: int


class Sampler:
    """``sampler(n, y=None, generator=None, latent=None) -> x: (n, ...)`` at ``t_end``.

    Attributes: ``steps`` (solver steps), ``nfe`` (network evaluations per sample: ``steps`` times
    the calls per step and the 2 of a guided call), ``stage``.
    Labels: ``y`` an int, a ``(n,)`` tensor, or None (drawn from the training labels' frequencies
    with ``generator``; no labels if the data had none).
    """

    def __init__(self, distiller: "Distiller", stage: int):
        self.d, self.stage = distiller, stage
        self.steps = distiller.config.stages[stage]
        if stage == 0:
            per_call = 1
            if distiller.labels is not None:
                per_call = 1 if distiller.config.guidance_scale in (0.0, 1.0) else 2
            self.nfe = self.steps * NFE_PER_STEP[distiller.config.teacher_method] * per_call
        else:
            self.nfe = self.steps

    def _inputs(self, n: int, y, generator: Optional[torch.Generator], latent: Optional[torch.Tensor]):
        """``(latent, labels)``: the latents drawn with ``generator`` unless given, the labels as in the class doc."""
        d = self.d
        if latent is None:
            latent = d.path.sample_latent((n,) + d.sample_shape, generator=generator, dtype=d.dtype,
                                          device=d.device)
        return latent, d._labels_for(latent.shape[0], y, generator)

    def __call__(self, n: int, y=None, generator: Optional[torch.Generator] = None,
                 latent: Optional[torch.Tensor] = None) -> torch.Tensor:
        d = self.d
        latent, y = self._inputs(n, y, generator, latent)
        n = latent.shape[0]
        grid = d.grid(self.stage)
        with torch.no_grad():
            if self.stage == 0:
                teacher = FlowTeacher(d.teacher, grid, 1, d.config.teacher_method,
                                      d.config.guidance_scale, d.null_label if d.labels is not None else None)
                return integrate(teacher.field(y), latent, grid, d.config.teacher_method).x
            student = d.student(self.stage)
            if d.config.parameterization == "velocity":
                return integrate(_PlainField(student, y), latent, grid, "euler").x
            x = latent
            for k in range(self.steps):
                tk = grid[k].expand(n)
                x = student_step(student, x, tk, grid[k + 1].expand(n), y, "endpoint")
            return x


def _derived_seed(*parts: int) -> int:
    """The seed of a roll-out pool from ``(seed, stage, refresh index)``: a 63-bit linear congruential
    chain. It is not :func:`kacnum.core.seeds.derive_seed` (SplitMix64) and gives other seeds; the pools,
    and so the students, of every run and checkpoint written so far depend on this one, so it stays."""
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return s


# ---------------------------------------------------------------------------------------------
# the distiller


class Distiller(StudentLoop):
    """Staged endpoint distillation of ``teacher`` along ``path`` (see the module docstring).

    Args:
        teacher: velocity network ``teacher(x, t, y) -> (B, ...)`` (an ``nn.Module``, copied and
            frozen here); every student is a copy of it (same architecture).
        path: probability path with ``path.T``, ``path.sample(x0, t, generator).x_t`` (forward
            source) and ``path.sample_latent(shape, generator, dtype, device)``.
        data: training data ``(n, ...)`` (its dtype and device are used throughout).
        labels: ``(n,)`` long class labels, or None (unconditional).
        config: :class:`DistillConfig`.
        out_dir: where ``distill.ckpt`` and ``distill_config.json`` go (None: no checkpoints).
        null_label: the null label (default ``teacher.null_label``); needed when labels are given.

    Use :meth:`run` to train every stage, :meth:`sampler` to sample with a stage.
    """

    _CK_FORMAT = CHECKPOINT_FORMAT
    _CK_WHAT = "distillation"
    _CK_INDEX = "stage"
    _CONFIG_JSON = "distill_config.json"

    def __init__(self, teacher: nn.Module, path: Any, data: torch.Tensor,
                 labels: Optional[torch.Tensor] = None, config: DistillConfig = DistillConfig(),
                 out_dir: Union[str, Path, None] = None, null_label: Optional[int] = None):
        if not isinstance(config, DistillConfig):
            raise ValueError("config must be a DistillConfig")
        super().__init__(teacher, path, data, labels, config, out_dir, null_label)
        T = getattr(path, "T", None)
        if T is None:
            raise ValueError("path must have an attribute T (the latent time)")
        self.T = check_positive("path.T", T)
        if not config.t_end < self.T:
            raise ValueError(f"config.t_end must be < path.T = {self.T}, got {config.t_end}")
        self._gen = torch.Generator(device=self.device).manual_seed(config.seed)

    # -- small helpers -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / "distill.ckpt"

    @property
    def num_stages(self) -> int:
        """Number of student stages ``S``."""
        return len(self.config.stages) - 1

    def _stage_index(self, stage: int, allow_teacher: bool = True) -> int:
        s = len(self.config.stages)
        if isinstance(stage, bool) or not isinstance(stage, int) or not -s <= stage < s:
            raise ValueError(f"stage must be an integer in [{-s}, {s - 1}] (0 = teacher), got {stage!r}")
        stage = stage % s
        if stage == 0 and not allow_teacher:
            raise ValueError("stage must be >= 1 (a student stage) here, got 0")
        return stage

    def grid(self, stage: int) -> torch.Tensor:
        """Uniform grid ``(K + 1,)`` from ``T`` to ``t_end`` of ``stages[stage]`` steps (stage 0: teacher)."""
        k = self.config.stages[self._stage_index(stage)]
        return uniform_grid(self.T, self.config.t_end, k, dtype=self.dtype, device=self.device)

    def student(self, stage: int) -> nn.Module:
        """The trained student of ``stage`` (>= 1), frozen."""
        stage = self._stage_index(stage, allow_teacher=False)
        if stage > len(self.students):
            raise ValueError(f"stage {stage} has not been trained yet ({len(self.students)} of "
                             f"{self.num_stages} stages done): call run()")
        return self.students[stage - 1]

    def stage_teacher(self, stage: int) -> Union[FlowTeacher, StudentTeacher]:
        """The endpoint map the student of ``stage`` (>= 1) learns."""
        stage = self._stage_index(stage, allow_teacher=False)
        n = self.config.substeps[stage - 1]
        if stage == 1:
            return FlowTeacher(self.teacher, self.grid(1), n, self.config.teacher_method,
                               self.config.guidance_scale, self.null_label if self.labels is not None else None,
                               target=self.config.target)
        return StudentTeacher(self.student(stage - 1), self.grid(stage - 1), n, self.config.parameterization)

    def _drop(self, y: Optional[torch.Tensor], gen: torch.Generator) -> Optional[torch.Tensor]:
        if y is None or self.config.p_uncond == 0.0:
            return y
        u = torch.rand(y.shape, generator=gen, device=self.device)
        return torch.where(u < self.config.p_uncond, torch.full_like(y, self.null_label), y)

    def _labels_for(self, n: int, y, generator: Optional[torch.Generator]) -> Optional[torch.Tensor]:
        if self.labels is None:
            if y is not None:
                raise ValueError("y must be None: the data has no labels")
            return None
        if y is None:
            idx = torch.randint(self.labels.shape[0], (n,), generator=generator, device=self.device)
            return self.labels[idx]
        if isinstance(y, int) and not isinstance(y, bool):
            return torch.full((n,), y, dtype=torch.long, device=self.device)
        if not torch.is_tensor(y) or y.shape != (n,) or y.is_floating_point():
            raise ValueError(f"y must be None, an int or an integer tensor of shape ({n},)")
        return y.to(device=self.device, dtype=torch.long)

    # -- batches -------------------------------------------------------------------------------

    @torch.no_grad()
    def build_pool(self, stage: int, refresh_index: int = 0) -> RolloutPool:
        """Roll ``rollout_pool`` latents through the teacher map of ``stage`` (seeded by
        ``(seed, stage, refresh_index)``); chunks of ``4 batch_size`` rows. Stage 1 with
        ``target="trajectory"``: one ``K_0``-step solve of the teacher on ``grid(0)`` per latent, kept
        at the student grid times (:meth:`teacher_trajectory`)."""
        stage = self._stage_index(stage, allow_teacher=False)
        gen = torch.Generator(device=self.device).manual_seed(
            _derived_seed(self.config.seed, stage, refresh_index))
        p = self.config.rollout_pool
        teacher = self.stage_teacher(stage)
        z = self.path.sample_latent((p,) + self.sample_shape, generator=gen, dtype=self.dtype,
                                    device=self.device)
        y = self._drop(self._labels_for(p, None, gen), gen)
        kk = self.config.stages[stage]
        chunk = 4 * self.config.batch_size
        if stage == 1 and self.config.target == "trajectory":
            parts, nfe = [], 0
            for s in range(0, p, chunk):
                st, nfe = self.teacher_trajectory(z[s:s + chunk], None if y is None else y[s:s + chunk])
                parts.append(st)
            return RolloutPool(states=torch.cat(parts, dim=1), labels=y, teacher_nfe=int(nfe))
        states = [z]
        nfe = 0
        for k in range(kk):
            parts = []
            for s in range(0, p, chunk):
                xs = states[-1][s:s + chunk]
                ks = torch.full((xs.shape[0],), k, dtype=torch.long, device=self.device)
                out, nfe = teacher(xs, ks, None if y is None else y[s:s + chunk])
                parts.append(out)
            states.append(torch.cat(parts))
        return RolloutPool(states=torch.stack(states), labels=y, teacher_nfe=int(nfe))

    @torch.no_grad()
    def teacher_trajectory(self, z: torch.Tensor, y: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
        """The stage-1 teacher's own solve from latents ``z: (P, ...)`` at ``T``: ``stages[0]`` steps of
        ``teacher_method`` on ``grid(0)`` (the (guided) field with labels ``y``, as the teacher samples),
        returned at the student grid times ``grid(1)``: ``(K_1 + 1, P, ...)``, and the network
        evaluations per student interval."""
        n = self.config.substeps[0]
        field = self.stage_teacher(1).field(y)  # the stage-1 teacher's field (a subclass may replace it)
        kept = [z]

        def keep(i, t, x):
            if (i + 1) % n == 0:
                kept.append(x)

        res = integrate(field, z, self.grid(0), self.config.teacher_method, callback=keep)
        return torch.stack(kept), int(res.nfe_model) // self.config.stages[1]

    def make_batch(self, stage: int, pool: Optional[RolloutPool] = None,
                   generator: Optional[torch.Generator] = None) -> DistillBatch:
        """Draw one batch for ``stage`` (>= 1) with ``generator`` (default: the run's generator).

        ``source="forward"``: data rows, labels (null with probability ``p_uncond``), intervals
        ``k ~ U{0..K-1}``, ``x = path.sample(x0, t_k).x_t``, target = teacher map (no grad).
        ``source="rollout"``: rows ``(k, p)`` of ``pool`` (built with :meth:`build_pool` if None).
        ``source="mix"``: the first ``config.pool_rows`` rows from the pool, the others forward (the
        pool's draws come first, then the forward draws, all from one generator).
        """
        stage = self._stage_index(stage, allow_teacher=False)
        gen = self._gen if generator is None else generator
        cfg = self.config
        n_pool = cfg.pool_rows
        roll = None
        if n_pool > 0:
            if pool is None:
                pool = self.build_pool(stage)
            roll = self._pool_rows(stage, pool, n_pool, gen)
            if n_pool == cfg.batch_size:
                return roll
        fwd = self._forward_rows(stage, cfg.batch_size - n_pool, gen)
        if roll is None:
            return fwd
        cat = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
        mask = torch.cat([torch.ones(n_pool, dtype=torch.bool, device=self.device),
                          torch.zeros(fwd.x.shape[0], dtype=torch.bool, device=self.device)])
        return DistillBatch(x=cat(roll.x, fwd.x), t=cat(roll.t, fwd.t), t_next=cat(roll.t_next, fwd.t_next),
                            k=cat(roll.k, fwd.k), y=cat(roll.y, fwd.y), target=cat(roll.target, fwd.target),
                            teacher_nfe=fwd.teacher_nfe, from_pool=mask)

    def _pool_rows(self, stage: int, pool: RolloutPool, b: int, gen: torch.Generator) -> DistillBatch:
        kk = self.config.stages[stage]
        grid = self.grid(stage)
        pidx = torch.randint(pool.states.shape[1], (b,), generator=gen, device=self.device)
        k = torch.randint(kk, (b,), generator=gen, device=self.device)
        y = None if pool.labels is None else pool.labels[pidx]
        return DistillBatch(x=pool.states[k, pidx], t=grid[k], t_next=grid[k + 1], k=k, y=y,
                            target=pool.states[k + 1, pidx], teacher_nfe=pool.teacher_nfe,
                            from_pool=torch.ones(b, dtype=torch.bool, device=self.device))

    def _forward_rows(self, stage: int, b: int, gen: torch.Generator) -> DistillBatch:
        kk = self.config.stages[stage]
        grid = self.grid(stage)
        idx = torch.randint(self.data.shape[0], (b,), generator=gen, device=self.device)
        x0 = self.data[idx]
        y = None if self.labels is None else self._drop(self.labels[idx], gen)
        k = torch.randint(kk, (b,), generator=gen, device=self.device)
        t, t_next = grid[k], grid[k + 1]
        x = self.path.sample(x0, t, generator=gen).x_t
        with torch.no_grad():
            target, nfe = self.stage_teacher(stage)(x, k, y)
        return DistillBatch(x=x, t=t, t_next=t_next, k=k, y=y, target=target, teacher_nfe=int(nfe))

    # -- the training loop's hooks (kacnum.students.loop.StudentLoop) ----------------------------

    def _checkpoint_extra(self) -> dict:
        # the run's generator and the global RNGs: a resumed run draws the batches the lost steps drew
        st = {"generator": self._gen.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            st["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"rng": st}

    def _restore_extra(self, ck: dict) -> None:
        st = ck["rng"]
        self._gen.set_state(st["generator"].to("cpu"))
        torch.set_rng_state(st["torch"].to("cpu"))
        if "cuda" in st and self.device.type == "cuda":
            torch.cuda.set_rng_state(st["cuda"].to("cpu"), self.device)

    def _on_fresh_start(self) -> None:
        self._gen.manual_seed(self.config.seed)

    def _num_students(self) -> int:
        return self.num_stages

    def _steps(self, stage: int) -> int:
        return self.config.steps_per_stage[stage - 1]

    def _new_student(self, stage: int) -> nn.Module:
        src = self.teacher if stage == 1 else self.students[stage - 2]
        return copy.deepcopy(src)

    def _bar_label(self, stage: int) -> str:
        return f"distill {self.config.stages[stage - 1]}->{self.config.stages[stage]}"

    def _begin(self, stage: int) -> dict:
        return {"pool": None, "teacher_nfe": None}

    def _step_loss(self, stage: int, step: int, student: nn.Module, state: dict) -> torch.Tensor:
        cfg = self.config
        if cfg.uses_pool and (state["pool"] is None or step % cfg.rollout_refresh == 0):
            # refresh index step // rollout_refresh: a resumed stage rebuilds the pool it lost
            state["pool"] = self.build_pool(stage, step // cfg.rollout_refresh)
        batch = self.make_batch(stage, state["pool"])
        state["teacher_nfe"] = batch.teacher_nfe
        return self.training_loss(student, batch)["loss"]

    def _finished_model(self, tr: StudentTraining) -> nn.Module:
        return tr.ema.model if self.config.teacher_from_ema else copy.deepcopy(tr.student)

    def _record(self, stage: int, n_steps: int, final_loss: float, state: dict) -> dict:
        cfg = self.config
        return {
            "stage": stage,
            "teacher_steps": cfg.stages[stage - 1],
            "student_steps": cfg.stages[stage],
            "substeps": cfg.substeps[stage - 1],
            "steps": n_steps,
            "final_loss": final_loss,
            "teacher_nfe_per_target": state["teacher_nfe"],
            "source": cfg.source,
            "target": cfg.target if stage == 1 else "restart",
        }

    # -- training ------------------------------------------------------------------------------

    def training_loss(self, student: nn.Module, batch: DistillBatch) -> dict:
        """The loss of one batch (a dict with a differentiable scalar ``loss``): the endpoint loss
        (:func:`endpoint_loss`); :class:`kacnum.students.reflow.Reflow` replaces it."""
        return endpoint_loss(student, batch.x, batch.t, batch.t_next, batch.target, batch.y,
                             self.config.parameterization)

    def run(self, resume: bool = False, progress: bool = True,
            callback: Optional[Callable[[dict], None]] = None) -> list[dict]:
        """Train every remaining stage in order; returns :attr:`history` (one dict per stage).

        Checkpoints (with ``out_dir``) after each stage and every ``checkpoint_every`` steps:
        students, EMA, optimiser, stage, step, RNG states and config. ``resume=True`` continues from
        the checkpoint if there is one (a fresh start otherwise); with the same config the result
        equals that of an uninterrupted run. ``callback(info)`` after every step with
        ``info = {"stage", "step", "loss"}`` (``step`` counts from 1 within the stage).
        """
        return self._train_students(resume, progress, callback)

    def sampler(self, stage: int = -1) -> Sampler:
        """Sampler of ``stage``: 0 = the teacher (``stages[0]`` steps of ``teacher_method``, guided),
        ``i >= 1`` = the stage-``i`` student (``stages[i]`` Euler steps on its grid); -1 = the last."""
        stage = self._stage_index(stage)
        if stage >= 1:
            self.student(stage)  # raises if not trained
        return Sampler(self, stage)
