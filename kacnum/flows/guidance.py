"""Classifier-free guidance in velocity space (docs/mathematics.md §5, DistillKac).

    u_s(x, t, y) = u(x, t, null) + s (u(x, t, y) - u(x, t, null)),

``s = 1`` is no guidance (the conditional field), ``s = 0`` the unconditional one; the form
``(1 + w) u_c - w u_u`` of the DistillKac summary is ``s = 1 + w``. Both parts come from ONE
batched forward pass of the conditional network on ``[x, x], [t, t], [y, null]``.

Speed bound. If ``|u_c|, |u_u| <= B`` per coordinate then, since ``u_s = (1 - s) u_u + s u_c``,

    |u_s| <= (|s| + |1 - s|) B <= (1 + 2|s - 1|) B.

The right-hand form is docs/mathematics.md §5's; it equals the sharp constant for ``s >= 1`` (attained by
``u_c = B, u_u = -B``) and is loose for ``s < 1`` (for ``0 <= s <= 1`` the guided field is a convex
combination, bounded by ``B``). So for ``s > 1`` guidance leaves the Kac speed box ``[-c, c]^d``; an
optional clip back to a bound is offered, off by default.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from kacnum.core.checks import check_nonnegative, check_positive
from kacnum.flows.solvers import GridLike, integrate

__all__ = ["GuidedField", "LabelledField", "guided_kinetic_energy", "guidance_bound"]

Clip = Union[None, float, Callable[[torch.Tensor], Union[float, torch.Tensor]]]


def guidance_bound(scale: float, bound: float, sharp: bool = False) -> float:
    """Per-coordinate bound on ``|u_s|`` when ``|u_c|, |u_u| <= bound``.

    ``sharp=False``: docs/mathematics.md §5's ``(1 + 2|s - 1|) B``. ``sharp=True``: ``(|s| + |1 - s|) B``, the
    best constant for every ``s`` (equal to the former for ``s >= 1``).
    """
    s = float(scale)
    if not math.isfinite(s):
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    b = check_nonnegative("bound", bound)
    return (abs(s) + abs(1.0 - s)) * b if sharp else (1.0 + 2.0 * abs(s - 1.0)) * b


def _per_row(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


class GuidedField(torch.nn.Module):
    """Guided velocity ``u_s = u_u + s (u_c - u_u)`` around a conditional model (docs/mathematics.md §5).

    Args:
        model: ``model(x, t, y)`` with ``x: (B, ...)``, ``t: (B,)``, ``y: (B,)`` long labels, the
            null label meaning "unconditional"; returns a velocity of ``x``'s shape.
        scale: guidance strength ``s`` (finite). ``s = 1``: one evaluation of the conditional
            half only; ``s = 0``: one evaluation of the null half only; otherwise one batched
            evaluation of size ``2B``.
        null_label: the integer label of the unconditional model; defaults to ``num_classes``.
        num_classes: if given, labels must lie in ``[0, num_classes)`` or equal ``null_label``.
        clip: ``None`` (default, no clip), a bound ``> 0``, or ``clip(t) -> bound`` (a float or
            ``(B,)`` tensor, ``t: (B,)``); the guided output is clamped per coordinate to
            ``[-bound, bound]``, e.g. the Kac speed ``c`` (times ``g'(t)``).

    Use ``guided(x, t, y)`` (the model's own signature) or ``guided.field(y)`` for a solver.
    ``nfe_per_call`` (2, or 1 when ``s`` is 0 or 1) is the number of network evaluations a call
    costs, read by :func:`kacnum.flows.solvers.integrate` for ``nfe_model``. The scale is fixed at
    construction; :meth:`with_scale` gives a wrapper with another scale around the same model.
    """

    def __init__(self, model: Callable, scale: float = 1.0, null_label: Optional[int] = None,
                 num_classes: Optional[int] = None, clip: Clip = None):
        super().__init__()
        s = float(scale)
        if not math.isfinite(s):
            raise ValueError(f"scale must be a finite number, got {scale!r}")
        if num_classes is not None:
            if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
                raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if null_label is None:
            if num_classes is None:
                raise ValueError("null_label must be given (an integer) when num_classes is not")
            null_label = num_classes
        if isinstance(null_label, bool) or not isinstance(null_label, int):
            raise ValueError(f"null_label must be an integer, got {null_label!r}")
        if num_classes is not None and 0 <= null_label < num_classes:
            raise ValueError(f"null_label must lie outside [0, {num_classes}) (the class labels), "
                             f"got {null_label}")
        if clip is not None and not callable(clip):
            clip = check_positive("clip", clip)
        self.model = model
        self._scale = s
        self.null_label = null_label
        self.num_classes = num_classes
        self.clip = clip

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def nfe_per_call(self) -> int:
        return 1 if self._scale in (0.0, 1.0) else 2

    def with_scale(self, scale: float) -> "GuidedField":
        """A new wrapper around the same model with guidance strength ``scale``."""
        return GuidedField(self.model, scale, self.null_label, self.num_classes, self.clip)

    # -- input handling -------------------------------------------------------------------------

    def _labels(self, y, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        if not torch.is_tensor(y):
            if isinstance(y, bool) or not isinstance(y, int):
                raise ValueError(f"y must be an integer or a (B,) integer tensor, got {y!r}")
            y = torch.full((b,), y, dtype=torch.long, device=x.device)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
        if y.dim() == 0:
            y = y.expand(b)
        if y.shape != (b,):
            raise ValueError(f"y must have shape ({b},), got {tuple(y.shape)}")
        if self.num_classes is not None:
            ok = ((y >= 0) & (y < self.num_classes)) | (y == self.null_label)
            if not bool(ok.all()):
                raise ValueError(f"y must lie in [0, {self.num_classes}) or equal the null label "
                                 f"{self.null_label}")
        return y.to(device=x.device, dtype=torch.long)

    @staticmethod
    def _times(t, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def _clip(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.clip is None:
            return u
        if callable(self.clip):
            bound = torch.as_tensor(self.clip(t), dtype=u.dtype, device=u.device)
            if bound.dim() == 0:
                bound = bound.expand(u.shape[0])
            bound = _per_row(bound, u)
            return torch.maximum(torch.minimum(u, bound), -bound)
        return u.clamp(-self.clip, self.clip)

    # -- evaluation -----------------------------------------------------------------------------

    def components(self, x: torch.Tensor, t, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(u_s, u_c, u_u)`` from one batched call ``model([x, x], [t, t], [y, null])``.

        Always 2 network evaluations (diagnostics); ``u_s`` is clipped if ``clip`` is set, the
        parts are not. Shapes: all ``x``'s.
        """
        t = self._times(t, x)
        y = self._labels(y, x)
        null = torch.full_like(y, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        u_c, u_u = out.chunk(2)
        u_s = self._clip(u_u + self._scale * (u_c - u_u), t)
        return u_s, u_c, u_u

    def forward(self, x: torch.Tensor, t, y) -> torch.Tensor:
        """Guided velocity ``u_s(x, t, y)``: ``x: (B, ...)``, ``t: (B,)`` (or a scalar), ``y: (B,)``."""
        t = self._times(t, x)
        y = self._labels(y, x)
        if self._scale == 1.0:
            u = self.model(x, t, y)
        elif self._scale == 0.0:
            u = self.model(x, t, torch.full_like(y, self.null_label))
        else:
            null = torch.full_like(y, self.null_label)
            u_c, u_u = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
            u = u_u + self._scale * (u_c - u_u)
        return self._clip(u, t)

    def field(self, y) -> "LabelledField":
        """The ``(x, t)`` closure for a solver, labels ``y`` (int or ``(B,)``) fixed."""
        return LabelledField(self, y)


class LabelledField:
    """``field(x, t) = guided(x, t, y)`` with fixed labels; carries ``nfe_per_call``."""

    def __init__(self, guided: GuidedField, y):
        self.guided = guided
        self.y = y

    @property
    def nfe_per_call(self) -> int:
        return self.guided.nfe_per_call

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.guided(x, t, self.y)


def _stats(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    flat = u.reshape(u.shape[0], -1).to(torch.float64)
    sq = flat.pow(2).sum(dim=1)  # (B,)
    return sq.mean() / flat.shape[1], sq.mean(), flat.abs().max()


@torch.no_grad()
def guided_kinetic_energy(guided_field: GuidedField, x_T: torch.Tensor, y, time_grid: GridLike,
                          method: str = "ab2") -> dict:
    """Integrate the guided flow from ``x_T`` and record the speed of each field along it.

    The flow ``dx/dt = u_s(x, t, y)`` is integrated over ``time_grid`` (``(N+1,)``) with
    ``method``; then, at every grid state ``x_k`` (a diagnostic pass of ``N+1`` extra batched
    evaluations), the guided, conditional and unconditional velocities are recorded:

    - ``{part}_energy_per_dim[k] = E_batch |u(x_k, t_k)|^2 / d`` (``d = x[0].numel()``),
    - ``{part}_energy[k] = E_batch |u(x_k, t_k)|^2``,
    - ``{part}_max_abs[k] = max over batch and coordinates of |u|``,

    for ``part`` in ``guided`` (after clip, if any), ``cond``, ``uncond``. Also
    ``bound[k] = guidance_bound(s, max(cond_max_abs[k], uncond_max_abs[k]))`` (docs/mathematics.md §5, with B the
    observed bound at that time; ``guided_max_abs <= bound`` must hold without clip),
    ``time_grid``, ``x`` (final state), ``nfe`` and ``nfe_model`` of the solve. Tensors are
    float64 ``(N+1,)`` on the CPU.
    """
    if not isinstance(guided_field, GuidedField):
        raise ValueError("guided_field must be a GuidedField")
    res = integrate(guided_field.field(y), x_T, time_grid, method, return_trajectory=True)
    parts = ("guided", "cond", "uncond")
    rows = {f"{p}_{k}": [] for p in parts for k in ("energy_per_dim", "energy", "max_abs")}
    for t, xk in zip(res.time_grid.tolist(), res.trajectory):
        comps = guided_field.components(xk, t, y)
        for p, u in zip(parts, comps):
            e_d, e, m = _stats(u)
            rows[f"{p}_energy_per_dim"].append(e_d)
            rows[f"{p}_energy"].append(e)
            rows[f"{p}_max_abs"].append(m)
    out = {k: torch.stack(v).cpu() for k, v in rows.items()}
    b_obs = torch.maximum(out["cond_max_abs"], out["uncond_max_abs"])
    out["bound"] = (1.0 + 2.0 * abs(guided_field.scale - 1.0)) * b_obs
    out["time_grid"] = res.time_grid.to(device="cpu", dtype=torch.float64)
    out["x"] = res.x
    out["nfe"] = res.nfe
    out["nfe_model"] = res.nfe_model
    return out
