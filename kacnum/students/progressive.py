"""Progressive distillation (Salimans & Ho 2022) of the VP/DDIM baseline (docs/mathematics.md §9).

VP path (``kacnum.flows.paths.VPPath``): ``z_t = α_t x + σ_t ε`` with ``α_t = sqrt(ᾱ(t))``,
``σ_t = sqrt(1 - ᾱ(t))``. A network output ``o = model(z_t, t, y)`` is read, according to its
parameterisation, as a data prediction ``x̂`` and a noise prediction ``ε̂`` (always with
``z_t = α_t x̂ + σ_t ε̂``):

=========  ==========================  ==========================  ============================
param      x̂                           ε̂                           loss weight implied in x-space
=========  ==========================  ==========================  ============================
``eps``    ``(z - σ o) / α``           ``o``                       ``SNR = α²/σ²``
``x``      ``o``                       ``(z - α o) / σ``           ``1``
``v``      ``α z - σ o``               ``σ z + α o``               ``1 + SNR``
=========  ==========================  ==========================  ============================

(``v = α ε - σ x``; the loss is the plain mean square of ``o`` against the target in the same
parameterisation, which is the x-space loss times the weight in the last column.)

DDIM step (deterministic, η = 0) from ``t`` to ``s``:  ``z_s = α_s x̂ + σ_s ε̂``.

Target (derivation). The teacher takes two DDIM steps ``t → t' → t''`` from ``z_t`` and lands on
``z_{t''}``. The student takes ONE DDIM step ``t → t''`` with its prediction ``x̃`` (and
``ε̃ = (z_t - α_t x̃)/σ_t``):

    z_{t''} = α_{t''} x̃ + σ_{t''} (z_t - α_t x̃) / σ_t
    ⇒  x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t),
       ε̃ = (z_t - α_t x̃) / σ_t,   ṽ = α_t ε̃ - σ_t x̃.

The denominator is ``α_{t''} (1 - sqrt(SNR_t / SNR_{t''})) > 0`` because the SNR decreases in ``t``.
With an exact ε-model for single-point data ``x = c`` every DDIM step predicts ``x̂ = c``, so
``x̃ = c`` and ``ε̃ = ε̂(z_t)``: the teacher itself has zero loss (``tests/test_progressive.py``).

Rounds. ``schedule = (N_0, N_0/2, ..., N_R)``, e.g. ``(16, 8, 4, 2, 1)``: round ``r`` trains an
``N_r``-step student on the uniform grid ``T = t_0 > ... > t_{N_r} = t_min`` against the teacher's
two steps per student step on the subdivided grid (``kacnum.flows.solvers.subdivide_grid``). The teacher
of round 1 is the (optionally guided, docs/mathematics.md §5, ε-space) base model sampled with ``N_0`` DDIM steps:
exactly :func:`kacnum.flows.solvers.ddim_sample` on ``path.default_time_grid(N_0)``. The teacher of round
``r ≥ 2`` is the round ``r-1`` student (EMA weights). Every student is initialised from its
teacher's weights; when the parameterisation differs from the base model's ``eps`` the first
round's student starts with a mismatched output head (documented cost: the first round relearns
the output's meaning). ``v`` is the default: Salimans & Ho report that ``eps`` fails at one or two
steps (``α_T = 0.0066`` with the default VP schedule amplifies any ε-error by ``σ/α ≈ 150``).

Clipping. The target ``x̃`` is clamped to the data range (``clip_x``, default 1) and ``ε̃`` recomputed
from it: with an ε-parameterised base the implied data prediction at high noise is the ε-error
amplified by ``σ/α`` and the raw ``x̃`` is far outside the data range there (see
:class:`ProgressiveConfig`); DDPM/DDIM samplers commonly clip ``x̂`` for the same reason.

Training rows: ``x ~ data``, label dropped to the null label with probability ``p_uncond`` (default 0),
``k ~ U{0..N_r - 1}``, ``t = t_k``, ``z_t = path.sample(x, t).x_t``. All draws of step ``n`` of
round ``r`` come from a generator seeded with ``derive_seed(seed, r, n)``: a resumed run repeats
the uninterrupted run's steps exactly (weights, EMA and optimiser come from the checkpoint,
written atomically after every round and every ``checkpoint_every`` steps).

Budget (document it next to any result): the base model's sampling cost is ``N_0`` DDIM steps;
each round costs ``steps_per_round`` optimiser steps of ``batch_size`` rows plus 2 teacher
evaluations per row (4 network evaluations in round 1 when guided).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from kacnum.core.checks import (check_finite_number, check_in_range, check_int, check_nonnegative, check_positive,
                                per_stage_counts)
from kacnum.core.seeds import derive_seed
from kacnum.flows.guidance import GuidedField
from kacnum.flows.paths import VPPath
from kacnum.flows.solvers import subdivide_grid
from kacnum.students.loop import LR_SCHEDULES, StudentLoop
from kacnum.students.teachers import _rows

__all__ = [
    "PARAMETERIZATIONS",
    "ProgressiveConfig",
    "ProgressiveDistiller",
    "validate_schedule",
    "split_output",
    "output_target",
    "ddim_step",
    "pd_target",
    "pd_sample",
]

PARAMETERIZATIONS = ("eps", "x", "v")
CHECKPOINT_FORMAT = "kacnum.progressive/1"


# ---------------------------------------------------------------------------------------------
# formulas


def _check_param(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    return parameterization


def validate_schedule(schedule: Sequence[int]) -> tuple[int, ...]:
    """Check ``(N_0, N_1, ..., N_R)`` with ``R >= 1`` and ``N_{r} = N_{r-1} / 2`` (integers >= 1)."""
    try:
        st = tuple(schedule)
    except TypeError:
        raise ValueError(f"schedule must be a sequence of step counts such as (16, 8, 4, 2, 1), got {schedule!r}") from None
    if len(st) < 2:
        raise ValueError(f"schedule must hold at least 2 step counts (base, then students), got {st!r}")
    for k in st:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"schedule must hold integers >= 1, got {st!r}")
    for prev, cur in zip(st, st[1:]):
        if prev != 2 * cur:
            raise ValueError(f"schedule must halve the step count every round (2 teacher steps -> 1 student "
                             f"step); {prev} -> {cur} in {st!r}")
    return st


def split_output(out: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 parameterization: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x̂, ε̂)`` from a network output (table in the module docstring).

    ``out, z: (B, ...)``; ``alpha, sigma: (B,)`` (``α_t``, ``σ_t`` of each row, ``σ > 0``).
    """
    a, s = _rows(alpha, z), _rows(sigma, z)
    p = _check_param(parameterization)
    if p == "eps":
        return (z - s * out) / a, out
    if p == "x":
        return out, (z - a * out) / s
    return a * z - s * out, s * z + a * out


def output_target(x_tilde: torch.Tensor, eps_tilde: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                  parameterization: str) -> torch.Tensor:
    """What a network of ``parameterization`` must output for ``(x̃, ε̃)``: ``ε̃``, ``x̃`` or ``α ε̃ - σ x̃``."""
    p = _check_param(parameterization)
    if p == "eps":
        return eps_tilde
    if p == "x":
        return x_tilde
    return _rows(alpha, x_tilde) * eps_tilde - _rows(sigma, x_tilde) * x_tilde


def ddim_step(x_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_s: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM update ``z_s = α_s x̂ + σ_s ε̂`` (``alpha_s, sigma_s: (B,)``)."""
    return _rows(alpha_s, x_hat) * x_hat + _rows(sigma_s, x_hat) * eps_hat


def pd_target(z_t: torch.Tensor, z_tt: torch.Tensor, alpha_t: torch.Tensor, sigma_t: torch.Tensor,
              alpha_tt: torch.Tensor, sigma_tt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Progressive-distillation target ``(x̃, ε̃)``: the one DDIM step ``t → t''`` that maps ``z_t`` onto
    the teacher's two-step result ``z_{t''}``.

    ``x̃ = (z_{t''} - (σ_{t''}/σ_t) z_t) / (α_{t''} - (σ_{t''}/σ_t) α_t)``, ``ε̃ = (z_t - α_t x̃)/σ_t``.
    Shapes: ``z_t, z_tt: (B, ...)``; the schedule values ``(B,)`` (``t'' < t``).
    """
    r = sigma_tt / sigma_t
    den = alpha_tt - r * alpha_t
    if bool((den <= 0).any()):
        raise ValueError("pd_target needs SNR(t'') > SNR(t) in every row (t'' < t); got a non-positive denominator")
    x_tilde = (z_tt - _rows(r, z_t) * z_t) / _rows(den, z_t)
    eps_tilde = (z_t - _rows(alpha_t, z_t) * x_tilde) / _rows(sigma_t, z_t)
    return x_tilde, eps_tilde


class _Net:
    """``net(z, t, y) -> (x̂, ε̂)`` for a model of a given parameterisation, optionally guided."""

    def __init__(self, model: Callable, path: VPPath, parameterization: str, guidance_scale: float = 1.0,
                 null_label: Optional[int] = None):
        self.path, self.parameterization = path, _check_param(parameterization)
        self.fn = model
        self.nfe_per_call = 1
        if null_label is not None and guidance_scale != 1.0:
            self.fn = GuidedField(model, guidance_scale, null_label=null_label)
            self.nfe_per_call = self.fn.nfe_per_call

    def __call__(self, z, t, y):
        if y is None and isinstance(self.fn, GuidedField):
            out = self.fn.model(z, t, None)  # no labels: the unconditional (null-label) field
        else:
            out = self.fn(z, t, y)
        return split_output(out, z, self.path.alpha(t), self.path.sigma(t), self.parameterization)


def _ddim_chain(net: _Net, z: torch.Tensor, times: Sequence[torch.Tensor], y) -> torch.Tensor:
    """DDIM along per-row times ``times[0] > times[1] > ...`` (each ``(B,)``)."""
    for t, s in zip(times, times[1:]):
        x_hat, eps_hat = net(z, t, y)
        z = ddim_step(x_hat, eps_hat, net.path.alpha(s), net.path.sigma(s))
    return z


@torch.no_grad()
def pd_sample(model: Callable, path: VPPath, latent: torch.Tensor, steps: int, parameterization: str = "v",
              y: Optional[torch.Tensor] = None, t_min: Optional[float] = None, guidance_scale: float = 1.0,
              null_label: Optional[int] = None) -> torch.Tensor:
    """``steps`` DDIM steps of ``model`` (read as ``parameterization``) from ``latent: (B, ...)`` at ``T``
    down to ``t_min`` (default ``path.t_min_default``) on the uniform grid; returns ``z_{t_min}``.
    With ``parameterization="eps"`` this equals :func:`kacnum.flows.solvers.ddim_sample` (η = 0)."""
    grid = path.default_time_grid(steps, t_min, dtype=latent.dtype, device=latent.device)
    net = _Net(model, path, parameterization, guidance_scale, null_label)
    times = [grid[i].expand(latent.shape[0]) for i in range(grid.numel())]
    return _ddim_chain(net, latent, times, y)


# ---------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class ProgressiveConfig:
    """Progressive distillation of a VP ε-model.

    Attributes:
        schedule: ``(N_0, ..., N_R)`` DDIM steps: base teacher, then each round's student (halving).
        steps_per_round: optimiser steps per round (int, or one per round).
        batch_size, lr, weight_decay, grad_clip: AdamW (clip 0 = off).
        lr_schedule: ``"constant"`` or ``"cosine"`` (per round, to 0 at its end).
        ema_decay, ema_warmup: :class:`kacnum.students.loop.EMA`; the EMA is the round's result.
        parameterization: the students' output (``"v"`` default, ``"x"``, ``"eps"``).
        base_parameterization: the base model's output (``"eps"`` for the VP baseline).
        guidance_scale: ε-space guidance of the base teacher (used when labels are given).
        p_uncond: probability of the null label for a training row. Default 0: the students are
            always sampled with labels (:meth:`ProgressiveDistiller.sample` in the pipeline), as the
            DistillKac students are (:class:`kacnum.students.distill.DistillConfig`); 0.1 was the default before.
        t_min: last grid time (``None``: ``path.t_min_default``).
        clip_x: clamp the target ``x̃`` to ``[-clip_x, clip_x]`` (the data range; ``ε̃`` is recomputed
            from it), or ``None``. Needed for an ε-parameterised base: its implied data prediction
            ``(z - σ ε̂)/α`` at high noise amplifies the ε-error by ``σ/α`` (150 at ``T``); measured on
            digits with the trained VP model, 16 → 8 steps: ``x̃`` rms 4.7, max 30 at ``t = T`` against
            0.8 for the data. Default 1.0 (images in [-1, 1]).
        seed: seeds every draw (``derive_seed(seed, round, step)`` per step).
        checkpoint_every: also checkpoint every this many steps (0: only at round ends).
        log_every: keep the loss every this many steps in the history.
    """

    schedule: tuple = (16, 8, 4, 2, 1)
    steps_per_round: Union[int, tuple] = 2000
    batch_size: int = 128
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    ema_warmup: bool = True
    parameterization: str = "v"
    base_parameterization: str = "eps"
    guidance_scale: float = 1.0
    p_uncond: float = 0.0
    t_min: Optional[float] = None
    clip_x: Optional[float] = 1.0
    seed: int = 0
    checkpoint_every: int = 0
    log_every: int = 50

    def __post_init__(self):
        st = validate_schedule(self.schedule)
        object.__setattr__(self, "schedule", st)
        object.__setattr__(self, "steps_per_round", per_stage_counts("steps_per_round", self.steps_per_round, len(st) - 1))
        for name in ("batch_size", "log_every"):
            check_int(name, getattr(self, name), 1)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        check_int("seed", self.seed, 0)
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_nonnegative("grad_clip", self.grad_clip)
        check_in_range("ema_decay", self.ema_decay, 0.0, 1.0 - 1e-12)
        check_in_range("p_uncond", self.p_uncond, 0.0, 1.0)
        check_finite_number("guidance_scale", self.guidance_scale)
        if self.t_min is not None:
            check_positive("t_min", self.t_min)
        if self.clip_x is not None:
            check_positive("clip_x", self.clip_x)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check_param(self.parameterization)
        _check_param(self.base_parameterization)

    @property
    def num_rounds(self) -> int:
        return len(self.schedule) - 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# the distiller


class ProgressiveDistiller(StudentLoop):
    """Progressive distillation of ``teacher`` (a VP model ``teacher(z, t, y)``) along ``path``.

    Args:
        teacher: base network (``nn.Module``; copied and frozen); students are copies of it.
        path: a :class:`~kacnum.flows.paths.VPPath`.
        data: ``(n, ...)`` training data (dtype and device used throughout).
        labels: ``(n,)`` long or None.
        config: :class:`ProgressiveConfig`.
        out_dir: where ``progressive.ckpt`` and ``progressive_config.json`` go (None: no files).
        null_label: default ``teacher.null_label`` (needed with labels).

    :meth:`run` trains the rounds; :meth:`sample` draws images with a round's student (or the base).
    """

    _CK_FORMAT = CHECKPOINT_FORMAT
    _CK_WHAT = "progressive-distillation"
    _CK_INDEX = "round"
    _CONFIG_JSON = "progressive_config.json"

    def __init__(self, teacher: nn.Module, path: VPPath, data: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 config: ProgressiveConfig = ProgressiveConfig(), out_dir: Union[str, Path, None] = None,
                 null_label: Optional[int] = None):
        if not isinstance(config, ProgressiveConfig):
            raise ValueError("config must be a ProgressiveConfig")
        if not isinstance(path, VPPath):
            raise ValueError(f"path must be a VPPath, got {type(path).__name__}")
        super().__init__(teacher, path, data, labels, config, out_dir, null_label)

    # -- helpers -------------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / "progressive.ckpt"

    def grid(self, steps: int) -> torch.Tensor:
        """Uniform DDIM grid ``(steps + 1,)`` from ``T`` to ``t_min``."""
        return self.path.default_time_grid(steps, self.config.t_min, dtype=self.dtype, device=self.device)

    def _check_round(self, r: int) -> int:
        n = self.config.num_rounds
        if isinstance(r, bool) or not isinstance(r, int) or not 0 <= r <= n:
            raise ValueError(f"round must be an integer in [0, {n}] (0 = the base model), got {r!r}")
        if r > len(self.students):
            raise ValueError(f"round {r} has not been trained yet ({len(self.students)} of {n} done): call run()")
        return r

    def net(self, r: int) -> _Net:
        """``(z, t, y) -> (x̂, ε̂)`` of round ``r`` (0: the guided base model)."""
        r = self._check_round(r)
        cfg = self.config
        if r == 0:
            null = self.null_label if self.labels is not None else None
            return _Net(self.teacher, self.path, cfg.base_parameterization, cfg.guidance_scale, null)
        return _Net(self.students[r - 1], self.path, cfg.parameterization)

    def nfe(self, r: int) -> tuple[int, int]:
        """``(steps, network evaluations)`` per sample of round ``r``."""
        r = self._check_round(r)
        steps = self.config.schedule[r]
        return steps, steps * self.net(r).nfe_per_call

    def make_batch(self, r: int, generator: torch.Generator) -> dict:
        """Rows for round ``r >= 1``: ``z_t, t, y``, the output ``target`` and the teacher's ``z_{t''}``."""
        cfg = self.config
        n = cfg.schedule[r]
        grid = self.grid(n)
        fine = subdivide_grid(grid, 2)
        b = cfg.batch_size
        idx = torch.randint(self.data.shape[0], (b,), generator=generator, device=self.device)
        x0 = self.data[idx]
        y = None
        if self.labels is not None:
            y = self.labels[idx]
            if cfg.p_uncond > 0:
                drop = torch.rand(b, generator=generator, device=self.device) < cfg.p_uncond
                y = torch.where(drop, torch.full_like(y, self.null_label), y)
        k = torch.randint(n, (b,), generator=generator, device=self.device)
        t, t_mid, t_end = fine[2 * k], fine[2 * k + 1], fine[2 * k + 2]
        z_t = self.path.sample(x0, t, generator=generator).x_t
        with torch.no_grad():
            z_end = _ddim_chain(self.net(r - 1), z_t, [t, t_mid, t_end], y)
            a_t, s_t = self.path.alpha(t), self.path.sigma(t)
            x_t, e_t = pd_target(z_t, z_end, a_t, s_t, self.path.alpha(t_end), self.path.sigma(t_end))
            if cfg.clip_x is not None:
                x_t = x_t.clamp(-cfg.clip_x, cfg.clip_x)
                e_t = (z_t - _rows(a_t, z_t) * x_t) / _rows(s_t, z_t)
            target = output_target(x_t, e_t, a_t, s_t, cfg.parameterization)
        return {"z": z_t, "t": t, "t_next": t_end, "y": y, "k": k, "target": target, "x_tilde": x_t,
                "z_teacher": z_end}

    def loss(self, student: Callable, batch: dict) -> torch.Tensor:
        """``mean_b (1/d) ‖student(z_t, t, y) - target‖²`` in the students' parameterisation."""
        out = student(batch["z"], batch["t"], batch["y"])
        return (out - batch["target"]).pow(2).reshape(out.shape[0], -1).mean(dim=1).mean()

    # -- the training loop's hooks (kacnum.students.loop.StudentLoop) ----------------------------

    def _num_students(self) -> int:
        return self.config.num_rounds

    def _steps(self, r: int) -> int:
        return self.config.steps_per_round[r - 1]

    def _new_student(self, r: int) -> nn.Module:
        return copy.deepcopy(self.teacher if r == 1 else self.students[r - 2])

    def _bar_label(self, r: int) -> str:
        return f"progressive {self.config.schedule[r - 1]}->{self.config.schedule[r]}"

    def _begin(self, r: int) -> dict:
        return {"gen": torch.Generator(device=self.device)}

    def _step_loss(self, r: int, step: int, student: nn.Module, state: dict) -> torch.Tensor:
        # the draws of a step depend on (seed, round, step) only: no generator state to checkpoint
        gen = state["gen"].manual_seed(derive_seed(self.config.seed, r, step))
        return self.loss(student, self.make_batch(r, gen))

    def _record(self, r: int, n_steps: int, final_loss: float, state: dict) -> dict:
        cfg = self.config
        return {"round": r, "teacher_steps": cfg.schedule[r - 1], "student_steps": cfg.schedule[r], "steps": n_steps,
                "final_loss": final_loss}

    # -- training ------------------------------------------------------------------------------

    def run(self, resume: bool = False, progress: bool = True,
            callback: Optional[Callable[[dict], None]] = None) -> list[dict]:
        """Train every remaining round; returns :attr:`history` (one dict per round).

        ``resume=True`` continues from ``out_dir/progressive.ckpt`` if present (same config required;
        the result equals an uninterrupted run's). ``callback({"round", "step", "loss"})`` after
        every optimiser step (``step`` counts from 1 within the round).
        """
        return self._train_students(resume, progress, callback)

    @torch.no_grad()
    def sample(self, r: int, latent: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """DDIM samples of round ``r`` (0: the guided base model with ``schedule[0]`` steps) from
        ``latent: (B, ...)`` (``path.sample_latent``) with labels ``y: (B,)`` or None."""
        r = self._check_round(r)
        grid = self.grid(self.config.schedule[r])
        times = [grid[i].expand(latent.shape[0]) for i in range(grid.numel())]
        return _ddim_chain(self.net(r), latent.to(self.device, self.dtype), times, y)
