"""One-step maps of students and teachers, and the endpoint loss (docs/mathematics.md §7).

A student of ``K`` steps on the grid ``T = t_0 > ... > t_K = t_end`` moves a state from ``t_k`` to
``t_{k+1}`` with ONE network evaluation (:func:`student_step`). What it learns is the map of its
teacher over the same interval:

* :class:`FlowTeacher`: the (guided) teacher field integrated over the interval with ``N`` sub-steps
  of a solver of :mod:`kacnum.flows.solvers` (the teacher of the first student);
* :class:`StudentTeacher`: a finer student used as its own Euler map, ``N`` of its steps (the teacher
  of every later student).

Time reparameterisation. A batch mixes intervals, while :func:`kacnum.flows.solvers.integrate` takes one
grid. :func:`interval_flow` therefore integrates in ``τ ∈ [0, 1]`` with per-row
``t(τ) = (1 - τ) t_from + τ t_to`` and ``dx/dτ = (t_to - t_from) u(x, t(τ))``; every method of
``solvers`` is invariant under this affine change of time, so ``N`` uniform steps in ``τ`` are
exactly ``N`` uniform steps of the same method on each row's own interval. AB-2 started afresh in an
interval takes an Euler first sub-step; :func:`primed_ab2_flow` instead continues a uniform-step
trajectory that arrived at ``x``, priming AB-2 with the slope one fine step back (``target="trajectory"``
of :class:`kacnum.students.distill.DistillConfig`).

The loss (:func:`endpoint_loss`) is the mean square distance, per coordinate, between the student's
step and the stopped-gradient teacher endpoint.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from kacnum.flows.guidance import GuidedField
from kacnum.flows.solvers import METHODS, SolveResult, integrate, uniform_grid

__all__ = [
    "FlowTeacher",
    "StudentTeacher",
    "student_step",
    "interval_flow",
    "primed_ab2_flow",
    "endpoint_loss",
    "TARGETS",
    "PARAMETERIZATIONS",
]

#: stage-1 targets: AB-2 restarted in every student interval, or the K_0-step teacher's own states
TARGETS = ("restart", "trajectory")
#: student outputs: a velocity (one Euler step) or the endpoint itself
PARAMETERIZATIONS = ("velocity", "endpoint")


def _rows(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, ..., 1)`` broadcasting against ``x: (B, ...)``."""
    return v.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def _check_param(parameterization: str) -> str:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    return parameterization


def student_step(model: Callable, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                 y: Optional[torch.Tensor] = None, parameterization: str = "velocity") -> torch.Tensor:
    """One student step from ``t`` to ``t_next`` (per row), 1 network evaluation.

    ``velocity``: ``x + (t_next - t) model(x, t, y)``; ``endpoint``: ``model(x, t, y)``.
    Shapes: ``x: (B, ...)``, ``t, t_next: (B,)``, ``y: (B,)`` long or None. Autograd stays on.
    """
    out = model(x, t, y)
    if _check_param(parameterization) == "endpoint":
        return out
    return x + _rows(t_next - t, x) * out


def _check_interval(x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor) -> int:
    """Check per-row interval ends ``t_from, t_to: (B,)`` for ``x: (B, ...)``, distinct in every row; returns ``B``."""
    b = x.shape[0]
    for name, v in (("t_from", t_from), ("t_to", t_to)):
        if not torch.is_tensor(v) or v.shape != (b,):
            raise ValueError(f"{name} must be a tensor of shape ({b},)")
    if bool((t_from == t_to).any()):
        raise ValueError("t_from and t_to must differ in every row")
    return b


class _IntervalField:
    """``dx/dτ = (t_to - t_from) u(x, (1 - τ) t_from + τ t_to)``, per row; τ is ``(B,)``, all equal."""

    def __init__(self, field: Callable, t_from: torch.Tensor, t_to: torch.Tensor):
        self.field, self.t_from, self.t_to = field, t_from, t_to
        self.nfe_per_call = int(getattr(field, "nfe_per_call", 1))

    def __call__(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        # exact at both ends: τ = 0 gives t_from, τ = 1 gives t_to
        t = (1.0 - tau) * self.t_from + tau * self.t_to
        return _rows(self.t_to - self.t_from, x) * self.field(x, t)


def interval_flow(field: Callable, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                  n_substeps: int, method: str = "ab2") -> SolveResult:
    """Integrate ``dx/dt = field(x, t)`` over a per-row interval with ``n_substeps`` uniform steps.

    Row ``b`` goes from ``t_from[b]`` to ``t_to[b]`` (any signs, ``t_from != t_to``) with
    ``n_substeps`` steps of ``method`` (one of :data:`kacnum.flows.solvers.METHODS`), via the affine time
    change described in the module docstring and :func:`kacnum.flows.solvers.integrate`. ``field(x, t)``
    with ``t: (B,)``; ``field.nfe_per_call`` is honoured in ``nfe_model``. Returns the
    :class:`~kacnum.flows.solvers.SolveResult` (its ``time_grid`` is the ``τ`` grid). Autograd stays on.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    _check_interval(x, t_from, t_to)
    tau = uniform_grid(0.0, 1.0, n_substeps, dtype=x.dtype, device=x.device)
    wrapped = _IntervalField(field, t_from.to(x.dtype), t_to.to(x.dtype))
    return integrate(wrapped, x, tau, method)


def primed_ab2_flow(field: Callable, x: torch.Tensor, t_from: torch.Tensor, t_to: torch.Tensor,
                    n_substeps: int, has_history: torch.Tensor) -> SolveResult:
    """AB-2 over a per-row interval with ``n_substeps`` uniform steps, continuing a uniform-step
    trajectory that arrived at ``x`` (``target="trajectory"`` for forward rows).

    In ``τ`` (module docstring), ``h = 1/N``, ``g(x, τ) = (t_to - t_from) field(x, t(τ))``. Rows with
    ``has_history`` (``(B,)`` bool) get the history slope ``g(x - h g(x, 0), -h)``: the slope at the
    previous fine time ``t_from - (t_to - t_from)/N`` at one explicit step back from ``x``; then every
    sub-step is ``x + h (1.5 g_j - 0.5 g_{j-1})`` (uniform AB-2). Rows without history take an Euler
    first sub-step (exactly ``interval_flow(..., "ab2")``). ``nfe`` counts ``N + 1`` calls (the
    priming call is made for all rows); ``field.nfe_per_call`` is honoured. Autograd stays on.
    """
    b = _check_interval(x, t_from, t_to)
    if not torch.is_tensor(has_history) or has_history.shape != (b,) or has_history.dtype != torch.bool:
        raise ValueError(f"has_history must be a bool tensor of shape ({b},)")
    if isinstance(n_substeps, bool) or not isinstance(n_substeps, int) or n_substeps < 1:
        raise ValueError(f"n_substeps must be an integer >= 1, got {n_substeps!r}")
    g = _IntervalField(field, t_from.to(x.dtype), t_to.to(x.dtype))
    h = 1.0 / n_substeps
    ones = torch.ones(b, dtype=x.dtype, device=x.device)
    f_cur = g(x, 0.0 * ones)
    # rows without history: the call is made (batched) at τ = 0 and discarded (t_from - h may lie past T)
    f_back = g(x - h * f_cur, torch.where(has_history, -h * ones, 0.0 * ones))
    r = _rows(0.5 * has_history.to(x.dtype), x)  # AB-2 weight of the old slope: 0.5 (uniform), 0 = Euler
    f_prev = torch.where(_rows(has_history, x), f_back, f_cur)  # any finite value where r = 0
    for j in range(n_substeps):
        if j > 0:
            f_cur = g(x, (j * h) * ones)
            r = _rows(torch.full((b,), 0.5, dtype=x.dtype, device=x.device), x)
        x = x + h * ((1.0 + r) * f_cur - r * f_prev)
        f_prev = f_cur
    calls = n_substeps + 1
    tau = uniform_grid(0.0, 1.0, n_substeps, dtype=x.dtype, device=x.device)
    return SolveResult(x=x, nfe=calls, nfe_model=calls * g.nfe_per_call, trajectory=None, time_grid=tau)


def endpoint_loss(student: Callable, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                  target: torch.Tensor, y: Optional[torch.Tensor] = None,
                  parameterization: str = "velocity") -> dict:
    """Endpoint distillation loss ``mean_b (1/d) ‖Ŷ_b - target_b‖²`` with ``Ŷ = student_step(...)``.

    ``target`` is detached here (stop-gradient). Returns a dict of named terms:
    ``loss`` (scalar, differentiable), ``endpoint_mse`` (the same value, detached),
    ``per_sample`` ``(B,)`` detached, ``endpoint_rmse`` (scalar, detached).
    """
    if target.shape != x.shape:
        raise ValueError(f"target must have x's shape {tuple(x.shape)}, got {tuple(target.shape)}")
    pred = student_step(student, x, t, t_next, y, parameterization)
    per = (pred - target.detach()).pow(2).reshape(x.shape[0], -1).mean(dim=1)
    loss = per.mean()
    mse = loss.detach()
    return {"loss": loss, "endpoint_mse": mse, "endpoint_rmse": mse.sqrt(), "per_sample": per.detach()}


class _PlainField:
    """``field(x, t) = model(x, t, y)`` (no guidance), 1 evaluation per call."""

    nfe_per_call = 1

    def __init__(self, model: Callable, y: Optional[torch.Tensor]):
        self.model, self.y = model, y

    def __call__(self, x, t):
        return self.model(x, t, self.y)


class FlowTeacher:
    """Stage-1 teacher: the (guided) teacher field over each student interval, ``N`` sub-steps.

    ``teacher(x, k, y) -> (x_end, nfe)`` with ``x: (B, ...)`` at ``t_k = grid[k]``, ``k: (B,)`` long
    interval indices, ``y: (B,)`` long or None; ``x_end`` approximates the flow at ``t_{k+1}`` and
    ``nfe`` is the number of network evaluations per target (``N`` steps of ``method`` times 2 for a
    guided call). With ``y`` given the field is ``GuidedField(model, guidance_scale, null_label)``;
    rows with the null label get the unconditional field.

    ``target="trajectory"`` with AB-2: :func:`primed_ab2_flow` (rows with ``k >= 1`` continue a
    trajectory; ``N + 1`` calls per target); other methods have no history and ignore it.
    """

    def __init__(self, model: Callable, grid: torch.Tensor, n_substeps: int, method: str = "ab2",
                 guidance_scale: float = 1.0, null_label: Optional[int] = None, target: str = "restart"):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.model, self.grid, self.n_substeps, self.method = model, grid, int(n_substeps), method
        self.target = target
        self.guided = None
        if null_label is not None:
            self.guided = GuidedField(model, guidance_scale, null_label=null_label)

    def field(self, y: Optional[torch.Tensor]):
        if y is None or self.guided is None:
            return _PlainField(self.model, None if self.guided is None else y)
        return self.guided.field(y)

    def __call__(self, x: torch.Tensor, k: torch.Tensor, y: Optional[torch.Tensor]):
        if self.target == "trajectory" and self.method == "ab2":
            res = primed_ab2_flow(self.field(y), x, self.grid[k], self.grid[k + 1], self.n_substeps, k > 0)
        else:
            res = interval_flow(self.field(y), x, self.grid[k], self.grid[k + 1], self.n_substeps, self.method)
        return res.x, res.nfe_model


class StudentTeacher:
    """Teacher of stage ``i >= 2``: the stage ``i-1`` student as its own Euler map, ``N`` steps.

    ``fine_grid`` is the previous student's grid ``(K_{i-1} + 1,)``; interval ``k`` of the new grid
    spans ``fine_grid[k N : k N + N + 1]``. ``teacher(x, k, y) -> (x_end, N)``.
    """

    def __init__(self, student: Callable, fine_grid: torch.Tensor, n_substeps: int,
                 parameterization: str = "velocity"):
        self.student, self.fine_grid, self.n_substeps = student, fine_grid, int(n_substeps)
        self.parameterization = _check_param(parameterization)

    def __call__(self, x: torch.Tensor, k: torch.Tensor, y: Optional[torch.Tensor]):
        n = self.n_substeps
        for j in range(n):
            idx = k * n + j
            x = student_step(self.student, x, self.fine_grid[idx], self.fine_grid[idx + 1], y,
                             self.parameterization)
        return x, n
