"""The training loop shared by every few-step student: optimiser, schedule, EMA, progress, checkpoints.

A trainer of this package (:class:`kacnum.students.distill.Distiller`, its subclass
:class:`kacnum.students.reflow.Reflow`, :class:`kacnum.students.progressive.ProgressiveDistiller`)
trains a sequence of students ``1, ..., S`` (stages or rounds), each initialised from its teacher's
weights. :class:`StudentLoop` runs them in order; per student ``i`` of ``n_i`` optimiser steps:

* one AdamW step per batch (:class:`StudentTraining`), learning rate ``lr`` times
  ``1`` (``"constant"``) or ``(1 + cos(π min(n, n_i) / n_i)) / 2`` (``"cosine"``) after ``n`` steps,
  gradient norm clipped to ``grad_clip`` (0: off), and an :class:`EMA` of the weights;
* a progress display (:class:`kacnum.core.progress.Progress`) showing the loss of the latest step;
* with ``out_dir``: an atomic checkpoint every ``checkpoint_every`` steps and after each student,
  the file it replaces kept as the previous copy; ``resume=True`` loads the newest intact copy
  (verified, :func:`kacnum.core.checkpoint.load_checkpoint`), refuses a checkpoint of another kind or
  of another configuration, and continues exactly where it stopped: with the same configuration the
  weights equal those of an uninterrupted run, bit for bit.

Checkpoint content (a dict; the trainer's ``_CK_FORMAT`` names it, e.g. ``"kacnum.distill/1"``)::

    format, config, <stage|round>, step, finished (state dicts), history,
    student, ema, optimizer, scheduler, losses   (None / [] between students)
    [+ the trainer's extra entries, e.g. rng]
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from kacnum.core.checkpoint import load_checkpoint, previous_path, save_checkpoint, save_json
from kacnum.core.progress import Progress

__all__ = ["EMA", "StudentTraining", "StudentLoop", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "cosine")
#: config fields that may change between a run and its resumption (they change no number of the run)
RESUMABLE_FIELDS = ("checkpoint_every", "log_every")


# ---------------------------------------------------------------------------------------------
# EMA, learning rate, one optimiser step


def _check_decay(decay) -> float:
    try:
        d = float(decay)
    except (TypeError, ValueError):
        d = math.nan
    if not 0.0 <= d < 1.0:
        raise ValueError(f"ema_decay must be a number in [0, 1), got {decay!r}")
    return d


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    After the ``n``-th update (``n = 1, 2, ...``) ``θ_ema ← d_n θ_ema + (1 - d_n) θ`` with
    ``d_n = min(decay, (1 + n) / (10 + n))`` if ``warmup`` else ``decay`` (the warm-up lets a short
    run's average forget the initial weights). ``decay`` in ``[0, 1)``; 0 copies the model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.decay = _check_decay(decay)
        self.warmup = bool(warmup)
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    def current_decay(self) -> float:
        """``d_n`` for the next update."""
        n = self.num_updates + 1
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for pe, p in zip(self.model.parameters(), model.parameters()):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])


class _LRFactor:
    """Multiplier of the base learning rate at step ``n`` (picklable, for ``LambdaLR``)."""

    def __init__(self, schedule: str, n_steps: int):
        self.schedule, self.n_steps = schedule, n_steps

    def __call__(self, n: int) -> float:
        if self.schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(n, self.n_steps) / self.n_steps))


class StudentTraining:
    """The optimiser state of one student while it trains: AdamW, a constant or cosine learning rate over
    ``n_steps``, gradient clipping and an :class:`EMA`, all read from ``config`` (fields ``lr``,
    ``weight_decay``, ``lr_schedule``, ``grad_clip``, ``ema_decay``, ``ema_warmup``).

    ``restore(ck)`` loads the states of a checkpoint dict (keys student, ema, optimizer, scheduler,
    step, losses) and returns ``(step, losses)``; ``step(loss)`` is one optimiser step.
    """

    def __init__(self, student: nn.Module, config, n_steps: int):
        self.student = student.train().requires_grad_(True)
        self.ema = EMA(self.student, config.ema_decay, config.ema_warmup)
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _LRFactor(config.lr_schedule, n_steps))
        self.grad_clip = config.grad_clip

    def restore(self, ck: dict) -> tuple[int, list]:
        self.student.load_state_dict(ck["student"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        return int(ck["step"]), list(ck["losses"])

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.student.parameters(), self.grad_clip)
        self.opt.step()
        self.sched.step()
        self.ema.update(self.student)


def _plain(v):
    """Tuples as lists, so that a config read back from a checkpoint compares equal to the live one."""
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


# ---------------------------------------------------------------------------------------------
# the loop


class StudentLoop:
    """Base of the student trainers: common inputs, the loop over students, checkpoints, resumption.

    A subclass sets the class attributes ``_CK_FORMAT`` (checkpoint format string), ``_CK_WHAT`` (the kind
    of run, for error messages), ``_CK_INDEX`` (``"stage"`` or ``"round"``: the checkpoint key and the
    callback key), ``_CONFIG_JSON`` (the config's file name in ``out_dir``), has a ``checkpoint_path``
    and implements the hooks

    * ``_num_students()``, ``_steps(i)`` (optimiser steps of student ``i``), ``_bar_label(i)``;
    * ``_new_student(i)``: a fresh copy of student ``i``'s teacher (the initial weights);
    * ``_begin(i)``: per-student state for ``_step_loss`` (default an empty dict);
    * ``_step_loss(i, step, student, state)``: the differentiable scalar loss of step ``step`` (from 0);
    * ``_record(i, n_steps, final_loss, state)``: the history entry (``losses`` and ``seconds`` are added);

    and may override ``_finished_model(tr)`` (default: the EMA), ``_on_fresh_start()``,
    ``_checkpoint_extra()`` and ``_restore_extra(ck)`` (state outside the students, e.g. RNGs).
    """

    _CK_FORMAT = ""
    _CK_WHAT = ""
    _CK_INDEX = "stage"
    _CK_RESUMABLE: tuple = RESUMABLE_FIELDS
    _CONFIG_JSON = ""

    def __init__(self, teacher: nn.Module, path: Any, data: torch.Tensor, labels: Optional[torch.Tensor],
                 config, out_dir: Union[str, Path, None], null_label: Optional[int]):
        """Check and store the inputs every trainer shares: ``teacher`` (an ``nn.Module``, copied and
        frozen), ``data: (n, ...)`` floating (its dtype and device are used throughout), ``labels: (n,)``
        integers or None, and with labels a ``null_label`` (default ``teacher.null_label``)."""
        if not isinstance(teacher, nn.Module):
            raise ValueError("teacher must be a torch.nn.Module (students are copies of it)")
        if not torch.is_tensor(data) or not data.is_floating_point() or data.dim() < 2 or data.shape[0] < 1:
            raise ValueError("data must be a floating tensor of shape (n, ...) with n >= 1")
        if labels is not None:
            if not torch.is_tensor(labels) or labels.shape != (data.shape[0],) or labels.is_floating_point():
                raise ValueError(f"labels must be None or an integer tensor of shape ({data.shape[0]},)")
            labels = labels.to(device=data.device, dtype=torch.long)
            if null_label is None:
                null_label = getattr(teacher, "null_label", None)
            if isinstance(null_label, bool) or not isinstance(null_label, int):
                raise ValueError("null_label must be an integer (or teacher.null_label must exist) when "
                                 "labels are given")
        self.config, self.path = config, path
        self.data, self.labels, self.null_label = data, labels, null_label
        self.dtype, self.device = data.dtype, data.device
        self.sample_shape = tuple(data.shape[1:])
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.students: list[nn.Module] = []  # the finished students (frozen)
        self.history: list[dict] = []

    @property
    def checkpoint_path(self) -> Optional[Path]:
        raise NotImplementedError

    # -- hooks (see the class docstring) ---------------------------------------------------------

    def _begin(self, index: int) -> Any:
        return {}

    def _finished_model(self, tr: StudentTraining) -> nn.Module:
        return tr.ema.model

    def _on_fresh_start(self) -> None:
        pass

    def _checkpoint_extra(self) -> dict:
        return {}

    def _restore_extra(self, ck: dict) -> None:
        pass

    # -- checkpoints -----------------------------------------------------------------------------

    def _checkpoint_state(self, index: int, step: int, tr: Optional[StudentTraining] = None,
                          losses: Optional[list] = None) -> dict:
        """The checkpoint dict (module docstring); ``tr`` None between students."""
        return {
            "format": self._CK_FORMAT,
            "config": self.config.to_dict(),
            self._CK_INDEX: index,
            "step": step,
            "finished": [m.state_dict() for m in self.students],
            "history": self.history,
            "student": None if tr is None else tr.student.state_dict(),
            "ema": None if tr is None else tr.ema.state_dict(),
            "optimizer": None if tr is None else tr.opt.state_dict(),
            "scheduler": None if tr is None else tr.sched.state_dict(),
            "losses": list(losses or []),
        }

    def _save(self, index: int, step: int, tr: Optional[StudentTraining] = None,
              losses: Optional[list] = None) -> None:
        """Write the checkpoint atomically, keeping the intact file it replaces (no ``out_dir``: nothing)."""
        if self.checkpoint_path is None:
            return
        state = self._checkpoint_state(index, step, tr, losses)
        state.update(self._checkpoint_extra())
        save_checkpoint(self.checkpoint_path, state, keep_previous=True)

    def _load(self) -> Optional[dict]:
        """Read the checkpoint (None if there is none), check its format and config, restore the
        finished students, the history and the extra state; return it for the student in training."""
        path = self.checkpoint_path
        if path is None:
            raise ValueError("resume=True needs out_dir (where the checkpoint lives)")
        if not path.is_file() and not previous_path(path).is_file():
            return None
        ck = load_checkpoint(path, map_location=self.device)  # verified; falls back to the previous copy
        if ck.get("format") != self._CK_FORMAT:
            raise ValueError(f"{path} is not a {self._CK_WHAT} checkpoint ({self._CK_FORMAT})")
        mine, theirs = self.config.to_dict(), dict(ck["config"])
        # a field the checkpoint predates counts as its default (the behaviour it was written with)
        defaults = {f.name: f.default for f in dataclasses.fields(self.config)}
        diff = sorted(k for k in mine if k not in self._CK_RESUMABLE
                      and _plain(mine[k]) != _plain(theirs.get(k, defaults.get(k))))
        if diff:
            raise ValueError(f"config differs from the checkpoint's in {diff}: resume with the same "
                             f"configuration (only {self._CK_RESUMABLE} may change)")
        self.students = []
        for i, sd in enumerate(ck["finished"]):
            m = self._new_student(i + 1)
            m.load_state_dict(sd)
            self.students.append(m.eval().requires_grad_(False))
        self.history = list(ck["history"])
        self._restore_extra(ck)
        return ck

    # -- training --------------------------------------------------------------------------------

    def _train_students(self, resume: bool, progress: bool,
                        callback: Optional[Callable[[dict], None]]) -> list[dict]:
        """Train every remaining student in order and return :attr:`history` (module docstring).

        ``callback({<index key>: i, "step": n, "loss": value})`` after every optimiser step, ``n``
        counting from 1 within student ``i``.
        """
        cfg = self.config
        ck = self._load() if resume else None
        if ck is None:
            self.students, self.history = [], []
            self._on_fresh_start()
            if self.out_dir is not None:
                save_json(self.out_dir / self._CONFIG_JSON, cfg.to_dict())
        for index in range(len(self.students) + 1, self._num_students() + 1):
            t0 = time.perf_counter()
            n_steps = self._steps(index)
            tr = StudentTraining(self._new_student(index), cfg, n_steps)
            step0, losses = 0, []
            if ck is not None and ck["student"] is not None and int(ck[self._CK_INDEX]) == index:
                step0, losses = tr.restore(ck)
            ck = None
            state = self._begin(index)
            bar = Progress(n_steps, self._bar_label(index), initial=step0, enabled=progress)
            for step in bar.iterate(range(step0, n_steps)):
                loss = self._step_loss(index, step, tr.student, state)
                tr.step(loss)
                value = float(loss.detach())
                losses.append(value)
                # every step: the display writes its lines on its own schedule, and must show the latest loss then
                bar.set_postfix(loss=value)
                done = step + 1
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < n_steps:
                    self._save(index, done, tr, losses)
                if callback is not None:
                    callback({self._CK_INDEX: index, "step": done, "loss": value})
            bar.close()
            self.students.append(self._finished_model(tr).eval().requires_grad_(False))
            tail = losses[-max(1, len(losses) // 10):]
            entry = self._record(index, n_steps, sum(tail) / len(tail), state)
            entry["losses"] = losses[::cfg.log_every]
            entry["seconds"] = time.perf_counter() - t0
            self.history.append(entry)
            self._save(index + 1, 0)
        return self.history
