"""Reflow (rectified flow, Liu, Gong & Liu 2023) of a guided flow teacher: the few-step peer of DistillKac.

The teacher's own ``K_0``-step guided AB-2 solve couples each latent ``z`` (at ``T``) with the image it
reaches, ``x̂ = Φ_teacher(z)`` (at ``t_end``). Reflow trains a velocity network, initialised from the
teacher, by flow matching on the straight line between the two ends of each coupled pair,

    x_t = x̂ + u (z - x̂),   u = (t - t_end) / (T - t_end) ~ U(0, 1],   target  (z - x̂) / (T - t_end),

    L(θ) = E_{(z, x̂, y), u} (1/d) ‖v_θ(x_t, t, y) - (z - x̂)/(T - t_end)‖²,

so the learned field is (for a perfect fit of deterministic couplings) straight along the teacher's own
pairs, and a few Euler steps of it from ``z`` land near ``x̂``: the "2-rectified flow" of the paper. The
student is conditional on ``y`` and learns the guided coupling, so, like a DistillKac student, it takes one
network evaluation per step; unlike one, a single trained network is sampled at every step count
(:meth:`Reflow.sampler` with ``steps``).

The couplings come from the roll-out machinery of :class:`kacnum.students.distill.Distiller` with
``stages = (K_0, 1)``, ``source = "rollout"``, ``target = "trajectory"``: a pool of ``rollout_pool``
latents is solved by the teacher exactly as it samples (``grid(0)``, AB-2, guided), re-drawn every
``rollout_refresh`` steps from a seed derived from ``(seed, 1, refresh index)``. Optimiser, learning-rate
schedule, EMA, checkpoints (atomic, ``reflow.ckpt``) and resumption are the distiller's
(:mod:`kacnum.students.loop`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from kacnum.core.checks import check_int
from kacnum.flows.solvers import integrate, uniform_grid
from kacnum.students.distill import DistillBatch, DistillConfig, Distiller, Sampler
from kacnum.students.teachers import _PlainField, _rows

__all__ = ["Reflow", "ReflowSampler", "reflow_config", "reflow_loss", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "kacnum.reflow/1"


def reflow_config(config: DistillConfig, steps: int) -> DistillConfig:
    """The reflow run of a staged distillation's settings: ``stages = (K_0, 1)``, ``steps`` optimiser steps,
    roll-out couplings on the teacher's own trajectory, velocity output; batch, learning rate and schedule,
    EMA, guidance, pool size and refresh, seed are ``config``'s."""
    check_int("steps", steps, 1)
    return dataclasses.replace(config, stages=(config.stages[0], 1), steps_per_stage=int(steps), source="rollout",
                               target="trajectory", parameterization="velocity")


def reflow_loss(student: nn.Module, z: torch.Tensor, x_end: torch.Tensor, y: Optional[torch.Tensor], T: float,
                t_end: float, generator: Optional[torch.Generator] = None) -> dict:
    """Flow matching on the straight line between coupled ends (module docstring).

    ``z, x_end: (B, ...)`` the latent at ``T`` and the teacher's image at ``t_end`` of each pair; ``y: (B,)``
    long or None; ``u ~ U(0, 1]`` per row from ``generator``. Returns ``loss`` (scalar, differentiable),
    ``per_sample`` ``(B,)`` detached and ``t`` ``(B,)``.
    """
    if z.shape != x_end.shape:
        raise ValueError(f"x_end must have z's shape {tuple(z.shape)}, got {tuple(x_end.shape)}")
    if not t_end < T:
        raise ValueError(f"t_end must be < T = {T}, got {t_end}")
    b = z.shape[0]
    u = 1.0 - torch.rand(b, generator=generator, dtype=z.dtype, device=z.device)  # (0, 1]
    t = t_end + u * (T - t_end)
    x_t = x_end + _rows(u, z) * (z - x_end)
    target = (z - x_end) / (T - t_end)
    pred = student(x_t, t, y)
    per = (pred - target.detach()).pow(2).reshape(b, -1).mean(dim=1)
    return {"loss": per.mean(), "per_sample": per.detach(), "t": t}


class ReflowSampler(Sampler):
    """``sampler(n, y=None, generator=None, latent=None) -> x: (n, ...)`` at ``t_end``: ``steps`` uniform Euler
    steps of the reflowed field from ``T`` (one network evaluation each: ``nfe = steps``); latents and labels as
    :class:`~kacnum.students.distill.Sampler` draws them."""

    def __init__(self, reflow: "Reflow", steps: int):
        self.d = reflow
        self.steps = check_int("steps", steps, 1)
        self.nfe = self.steps
        self.stage = 1

    def __call__(self, n: int, y=None, generator: Optional[torch.Generator] = None,
                 latent: Optional[torch.Tensor] = None) -> torch.Tensor:
        d = self.d
        latent, y = self._inputs(n, y, generator, latent)
        grid = uniform_grid(d.T, d.config.t_end, self.steps, dtype=d.dtype, device=d.device)
        with torch.no_grad():
            return integrate(_PlainField(d.student(1), y), latent, grid, "euler").x


class Reflow(Distiller):
    """Reflow of ``teacher`` on its own ``stages[0]``-step couplings (module docstring).

    Takes the arguments of :class:`~kacnum.students.distill.Distiller`; ``config`` must have ``stages = (K_0, 1)``,
    ``source = "rollout"``, ``target = "trajectory"`` and ``parameterization = "velocity"``
    (:func:`reflow_config` makes one from a staged config). :meth:`run` trains the one student
    (``steps_per_stage`` optimiser steps); :meth:`sampler` ``(steps=K)`` samples it with ``K`` Euler steps.
    """

    _CK_FORMAT = CHECKPOINT_FORMAT
    _CK_WHAT = "reflow"

    def __init__(self, teacher: nn.Module, path: Any, data: torch.Tensor,
                 labels: Optional[torch.Tensor] = None, config: Optional[DistillConfig] = None,
                 out_dir: Union[str, Path, None] = None, null_label: Optional[int] = None):
        if config is None:
            config = reflow_config(DistillConfig(), DistillConfig().steps_per_stage[0])
        if not isinstance(config, DistillConfig):
            raise ValueError("config must be a DistillConfig (see reflow_config)")
        wrong = [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in
                 (("source", "rollout"), ("target", "trajectory"), ("parameterization", "velocity"))
                 if getattr(config, k) != v]
        if len(config.stages) != 2 or config.stages[1] != 1:
            wrong.insert(0, f"stages={config.stages!r} (needs (K_0, 1))")
        if wrong:
            raise ValueError("reflow config: " + ", ".join(wrong) + "; build it with reflow_config(config, steps)")
        super().__init__(teacher, path, data, labels, config, out_dir=out_dir, null_label=null_label)

    @property
    def checkpoint_path(self) -> Optional[Path]:
        return None if self.out_dir is None else self.out_dir / "reflow.ckpt"

    def _bar_label(self, stage: int) -> str:
        return f"reflow on {self.config.stages[0]}-step couplings"

    def training_loss(self, student: nn.Module, batch: DistillBatch) -> dict:
        """:func:`reflow_loss` on the pool's pairs (``batch.x`` the latents, ``batch.target`` the teacher's
        images), times drawn from the run's generator."""
        return reflow_loss(student, batch.x, batch.target, batch.y, self.T, self.config.t_end, self._gen)

    def sampler(self, stage: int = -1, steps: Optional[int] = None) -> Sampler:
        """``stage = 0``: the teacher's sampler; otherwise the reflowed student with ``steps`` Euler steps
        (default 1)."""
        stage = self._stage_index(stage)
        if stage == 0:
            return Sampler(self, 0)
        self.student(1)  # raises if not trained
        return ReflowSampler(self, 1 if steps is None else steps)
