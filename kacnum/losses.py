"""Training losses: conditional flow matching and the ε-prediction baseline (SPEC §4, §5, §9).

A loss is a small callable class whose hyper-parameters are fixed at construction (the EDM style);
it sees only the path's :class:`~kacnum.paths.PathSample` and the model output::

    loss_fn = FlowMatchingLoss(KacPath(), p_uncond=0.1)
    out = loss_fn(model, x0, y, generator=gen)        # out["loss"].backward()

Random draws, all from the one ``generator`` and in this order, so that one generator state gives one
loss: the times ``t ~ path.sample_time`` (skipped when ``t`` is given), the path noise
(``path.sample``), then the label dropout (``torch.rand(B)``, only when labels are given and
``p_uncond > 0``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from kacnum._checks import check_in_range
from kacnum.paths import GaussianPath, PathSample, ProbabilityPath, VPPath

__all__ = ["FlowMatchingLoss", "EpsilonLoss"]


class _PathLoss:
    """Shared machinery: time and noise draws, label dropout, per-sample squared error."""

    target_name = "u_t"

    def __init__(self, path: ProbabilityPath, p_uncond: float = 0.1, null_label: Optional[int] = None,
                 reduction: str = "mean"):
        if not isinstance(path, ProbabilityPath):
            raise ValueError(f"path must be a kacnum.paths.ProbabilityPath, got {type(path).__name__}")
        self.path = path
        self.p_uncond = check_in_range("p_uncond", p_uncond, 0.0, 1.0)
        if null_label is not None and (isinstance(null_label, bool) or not isinstance(null_label, int)):
            raise ValueError(f"null_label must be an integer or None, got {null_label!r}")
        self.null_label = null_label
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={self.path!r}, p_uncond={self.p_uncond:g}, "
                f"null_label={self.null_label!r}, reduction={self.reduction!r})")

    def _target(self, sample: PathSample) -> torch.Tensor:
        raise NotImplementedError

    def _drop_labels(self, model, y, batch: int, generator, device):
        if y is None:
            return None, None
        if not torch.is_tensor(y) or y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"y must be a ({batch},) integer tensor of labels or None")
        if self.p_uncond == 0.0:
            return y, torch.zeros(batch, dtype=torch.bool, device=y.device)
        null = self.null_label if self.null_label is not None else getattr(model, "null_label", None)
        if null is None:
            raise ValueError("null_label must be given (or the model must have a .null_label) when labels "
                             "are dropped (p_uncond > 0)")
        drop = torch.rand(batch, generator=generator, device=device) < self.p_uncond
        drop = drop.to(y.device)
        return torch.where(drop, torch.full_like(y, int(null)), y), drop

    def __call__(self, model: Callable, x0: torch.Tensor, y: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, t: Optional[torch.Tensor] = None) -> dict:
        """Loss of ``model(x, t, y)`` on a batch.

        Args:
            model: ``model(x_t, t, y) -> (B, ...)`` with ``x_t: (B, ...)``, ``t: (B,)``, ``y: (B,)`` long
                or ``None`` (unconditional).
            x0: ``(B, ...)`` data. y: ``(B,)`` integer labels or ``None``.
            generator: one ``torch.Generator`` (on ``x0``'s device) for every draw of this call.
            t: ``(B,)`` times to use instead of ``path.sample_time`` (e.g. a fixed grid for evaluation).

        Returns:
            dict with ``"loss"`` (scalar: mean, or sum, over the batch of ``per_sample``),
            ``"per_sample"`` ``(B,)`` = ``mean over coordinates of (pred - target)²``
            (``(1/d) ‖pred - target‖²``), ``"t"`` ``(B,)``, ``"y"`` the labels given to the model
            (``None`` if unconditional), ``"dropped"`` ``(B,)`` bool or ``None``, ``"sample"`` the
            :class:`PathSample`, ``"pred"`` the model output.
        """
        if not torch.is_tensor(x0) or x0.dim() < 1 or x0.shape[0] < 1:
            raise ValueError("x0 must be a tensor of shape (B, ...) with B >= 1")
        batch = x0.shape[0]
        if t is None:
            t = self.path.sample_time(batch, generator, dtype=x0.dtype, device=x0.device)
        sample = self.path.sample(x0, t, generator)
        y_in, dropped = self._drop_labels(model, y, batch, generator, x0.device)
        pred = model(sample.x_t, sample.t, y_in)
        target = self._target(sample)
        if not torch.is_tensor(pred) or pred.shape != target.shape:
            got = tuple(pred.shape) if torch.is_tensor(pred) else type(pred).__name__
            raise ValueError(f"model output must have x0's shape {tuple(target.shape)}, got {got}")
        per_sample = (pred - target).pow(2).reshape(batch, -1).mean(dim=1)
        loss = per_sample.mean() if self.reduction == "mean" else per_sample.sum()
        return {"loss": loss, "per_sample": per_sample, "t": sample.t, "y": y_in, "dropped": dropped,
                "sample": sample, "pred": pred}


class FlowMatchingLoss(_PathLoss):
    """Conditional flow matching ``E_{t, x0, noise} (1/d) ‖u_θ(x_t, t, y') - u_t‖²`` (SPEC §4).

    Args:
        path: any :class:`~kacnum.paths.ProbabilityPath` (Kac, Gaussian, VP); the target is
            ``PathSample.u_t``.
        p_uncond: probability of replacing a label by ``null_label`` (classifier-free guidance
            training, SPEC §5; default 0.1). Ignored for unconditional calls (``y=None``).
        null_label: the label meaning "unconditional"; ``None`` uses ``model.null_label``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the batch.
    """

    def _target(self, sample: PathSample) -> torch.Tensor:
        return sample.u_t


class EpsilonLoss(_PathLoss):
    """ε-prediction ``E (1/d) ‖ε_θ(x_t, t, y') - ε‖²`` for the VP diffusion baseline (SPEC §9).

    The model predicts the Gaussian noise ``PathSample.noise``; sample it with
    ``solvers.ddim_sample(model, x, path.alpha_bar, time_grid)`` or integrate
    ``path.velocity_field(model)``. ``path`` must be a :class:`~kacnum.paths.VPPath` or a
    :class:`~kacnum.paths.GaussianPath` (Gaussian noise). Other arguments as :class:`FlowMatchingLoss`.
    """

    target_name = "noise"

    def __init__(self, path: ProbabilityPath, p_uncond: float = 0.1, null_label: Optional[int] = None,
                 reduction: str = "mean"):
        if not isinstance(path, (VPPath, GaussianPath)):
            raise ValueError(f"path must be a VPPath or GaussianPath (Gaussian noise), got {type(path).__name__}")
        super().__init__(path, p_uncond, null_label, reduction)

    def _target(self, sample: PathSample) -> torch.Tensor:
        return sample.noise
