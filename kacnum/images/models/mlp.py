"""MLP velocity network for low-dimensional data (2D toy distributions).

Same call signature as :class:`kacnum.images.models.unet.UNet`::

    v = model(x, t, y=None)        x: (B, dim)   t: (B,) in [0, T]   y: (B,) long or None   v: (B, dim)

Architecture, with ``e = TimeClassEmbedding(t, y)`` (sinusoidal features of ``1000 t / T`` through
a two-layer MLP, plus a class embedding whose last row is the NULL label)::

    h_0 = Linear(x)
    h_k = act(Linear_k(h_{k-1}) + Linear'_k(e)),   k = 1..depth
    v   = Linear_out(h_depth)                       (zero-initialised: a fresh model outputs 0)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from kacnum.core.checks import check_positive
from kacnum.images.models.unet import TimeClassEmbedding, check_velocity_inputs

__all__ = ["MLPConfig", "MLP"]


@dataclass(frozen=True)
class MLPConfig:
    """Hyper-parameters of :class:`MLP`."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    num_classes: int = 0
    T: float = 1.0
    time_channels: int = 64
    time_scale: float = 1000.0


class MLP(nn.Module):
    """Time- (and class-) conditioned MLP velocity field on ``R^dim``.

    Args:
        dim: data dimension ``d``.
        hidden: width of the hidden layers.
        depth: number of hidden layers (each receives the embedding).
        num_classes: 0 = unconditional; ``null_label = num_classes``.
        T: time horizon; ``t`` must lie in ``[0, T]``.
        activation: a module class (or zero-argument factory) for the non-linearity, default SiLU.
        time_channels: number of sinusoidal time features.
        time_scale: the sinusoidal features see ``time_scale * t / T``.

    Shapes: ``x: (B, dim)``, ``t: (B,)`` (or a float), ``y: (B,)`` long or None -> ``(B, dim)``.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, num_classes: int = 0,
                 T: float = 1.0, activation: Callable[[], nn.Module] = nn.SiLU,
                 time_channels: int = 64, time_scale: float = 1000.0):
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("hidden", hidden, 1), ("depth", depth, 1),
                                 ("num_classes", num_classes, 0), ("time_channels", time_channels, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        T = check_positive("T", T)
        time_scale = check_positive("time_scale", time_scale)
        self.config = MLPConfig(dim=dim, hidden=hidden, depth=depth, num_classes=num_classes, T=T,
                                time_channels=time_channels, time_scale=time_scale)
        self.dim = dim
        self.num_classes = num_classes
        self.null_label = num_classes
        self.T = T
        self.check_inputs = True

        self.embed = TimeClassEmbedding(time_channels, hidden, num_classes, T, time_scale)
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.emb_proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.act = activation()
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def from_config(cls, config: MLPConfig, activation: Callable[[], nn.Module] = nn.SiLU) -> "MLP":
        return cls(**dataclasses.asdict(config), activation=activation)

    def forward(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        t, y = check_velocity_inputs(x, t, y, sample_shape=(self.dim,), num_classes=self.num_classes,
                                     T=self.T, check_values=self.check_inputs)
        e = self.embed(t, y)
        h = self.inp(x)
        for layer, proj in zip(self.layers, self.emb_proj):
            h = self.act(layer(h) + proj(e))
        return self.out(h)
