"""UNet velocity network in the DDPM++ / ADM family, written from scratch.

Call signature shared by every velocity network of kacnum::

    v = model(x, t, y=None)        x: (B, C, H, W)   t: (B,) in [0, T]   y: (B,) long or None
                                   v: (B, C, H, W), same dtype and device as x

Building blocks
---------------
* Time embedding (:class:`TimeClassEmbedding`): sinusoidal features of ``s = time_scale * t / T``
  (``time_scale = 1000`` by default), ``[cos(s w_k), sin(s w_k)]`` with ``w_k = 10000^(-k/half)``,
  ``k = 0..half-1``, followed by ``Linear -> SiLU -> Linear``.  The highest frequency is 1 rad per
  unit of ``s``, so a time step ``dt = 1e-3 T`` moves the features by O(1): the network can resolve
  t at the scale of a fine solver grid.
* Class conditioning: an embedding table with ``num_classes + 1`` rows added to the time
  embedding.  The last row (``null_label == num_classes``) is the NULL label used by
  classifier-free guidance; ``y=None`` means the NULL label for every sample.
* :class:`ResBlock`: GroupNorm -> SiLU -> conv3x3 -> adaptive scale-shift GroupNorm
  ``h = GN(h) * (1 + scale(e)) + shift(e)`` -> SiLU -> dropout -> conv3x3, plus a (1x1 conv) skip;
  the sum is divided by sqrt(2) (DDPM++ ``skip_rescale``).
* :class:`AttentionBlock`: multi-head self-attention over the H*W positions through
  :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on
  CUDA).  Placed after every residual block whose feature map is ``r x r`` with ``r`` in
  ``attn_resolutions``, and in the middle block (``mid_attention``).
* Down-sampling: conv3x3 with stride 2; up-sampling: nearest x2 then conv3x3.  The final conv
  is zero-initialised, so a freshly built network outputs exactly 0.

Presets (:data:`PRESETS`, built with :func:`make_model`); parameter counts computed with
:func:`count_parameters` on the built models (tests/test_models.py checks this table):

================== ============================================================== ============
name               configuration                                                   parameters
================== ============================================================== ============
cifar10_kacflow    32x32x3, 128 ch, mult (1,2,2,2), 2 res blocks, attn 16 (+mid),   38,312,835
                   dropout 0.1, 10 classes
mnist_small        28x28x1, 16 ch, mult (1,2,2), 1 res block, attn 7 (+mid),           300,641
                   10 classes
digits_tiny        8x8x1, 16 ch, mult (1,2), 1 res block, mid attn only, 10 classes    178,209
tiny               8x8x1, 8 ch, mult (1,2), 1 res block, attn 4 (+mid), 3 classes       48,529
mlp_2d             MLP(dim=2, hidden=256, depth=4), unconditional                      610,306
================== ============================================================== ============

For scale: DDPM's CIFAR-10 UNet of the same shape has 35.7M parameters; the difference is the
scale-shift projections (2x the time-embedding projection) and the label table.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kacnum.core.checks import check_in_range, check_positive

__all__ = [
    "UNetConfig",
    "UNet",
    "ResBlock",
    "AttentionBlock",
    "TimeClassEmbedding",
    "timestep_features",
    "check_velocity_inputs",
    "count_parameters",
]


# --------------------------------------------------------------------------------------------
# Embeddings and input checks shared with kacnum.images.models.mlp
# --------------------------------------------------------------------------------------------
def timestep_features(
    t: torch.Tensor, dim: int, T: float = 1.0, time_scale: float = 1000.0, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal features of ``s = time_scale * t / T``.

    ``t: (B,)`` -> ``(B, dim)`` holding ``[cos(s w_0..w_{h-1}), sin(s w_0..w_{h-1})]`` with
    ``h = dim // 2`` and ``w_k = max_period^(-k / h)`` (a zero column is appended when ``dim`` is
    odd).  Computed in at least float32 so that bf16/fp16 inputs do not lose time resolution.
    """
    half = dim // 2
    work = torch.promote_types(t.dtype, torch.float32)
    k = torch.arange(half, device=t.device, dtype=work)
    freqs = torch.exp(-math.log(max_period) * k / half)
    s = t.to(work) * (time_scale / T)
    arg = s[:, None] * freqs[None, :]
    feats = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)
    if dim % 2:
        feats = F.pad(feats, (0, 1))
    return feats


class TimeClassEmbedding(nn.Module):
    """``e(t, y) = MLP(sinusoid(t)) + E[y]``: ``t: (B,)``, ``y: (B,)`` long in ``[0, num_classes]``.

    ``E`` has ``num_classes + 1`` rows; row ``num_classes`` is the NULL label.  Output ``(B, emb_dim)``.
    """

    def __init__(self, feature_dim: int, emb_dim: int, num_classes: int, T: float, time_scale: float):
        super().__init__()
        self.feature_dim = feature_dim
        self.T = T
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(feature_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.feature_dim, self.T, self.time_scale)
        feats = feats.to(self.mlp[0].weight.dtype)
        return self.mlp(feats) + self.label_emb(y)


def check_velocity_inputs(
    x: torch.Tensor,
    t,
    y: Optional[torch.Tensor],
    *,
    sample_shape: Sequence[int],
    num_classes: int,
    T: float,
    check_values: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(x, t, y)`` for ``model(x, t, y)`` and return ``(t, y)`` as ``(B,)`` tensors.

    ``x: (B, *sample_shape)`` floating point; ``t``: ``(B,)`` (a float or a 0-dim tensor is broadcast
    to ``(B,)``), values in ``[0, T]``; ``y``: ``None`` (NULL label ``num_classes``) or ``(B,)`` integer
    labels in ``[0, num_classes]``.  ``check_values=False`` skips the value range checks (they
    synchronise with the device; turn them off for ``torch.compile`` or CUDA graphs).
    Raises ``ValueError`` naming ``x``, ``t`` or ``y``.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}"
                         + (f" of dtype {x.dtype}" if torch.is_tensor(x) else ""))
    want = tuple(sample_shape)
    if x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
        shape_txt = "(B, " + ", ".join(str(s) for s in want) + ")"
        raise ValueError(f"x must have shape {shape_txt}, got {tuple(x.shape)}")
    B = x.shape[0]
    if not torch.is_tensor(t):
        try:
            t = torch.full((B,), float(t), dtype=x.dtype, device=x.device)
        except (TypeError, ValueError):
            raise ValueError(f"t must be a float or a tensor of shape ({B},), got {type(t).__name__}") from None
    elif t.dim() == 0:
        t = t.to(device=x.device).expand(B)
    elif t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"t must have shape ({B},) to match x of batch size {B}, got {tuple(t.shape)}")
    else:
        t = t.to(device=x.device)
    if not t.is_floating_point():
        t = t.to(x.dtype)
    if y is None:
        y = torch.full((B,), num_classes, dtype=torch.long, device=x.device)
    else:
        if not torch.is_tensor(y) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"y must be None or an integer (long) tensor of shape ({B},), got "
                             f"{y.dtype if torch.is_tensor(y) else type(y).__name__}")
        if y.dim() != 1 or y.shape[0] != B:
            raise ValueError(f"y must have shape ({B},) to match x of batch size {B}, got {tuple(y.shape)}")
        y = y.to(device=x.device, dtype=torch.long)
    if check_values:
        if B and not bool(torch.isfinite(t).all()):
            raise ValueError("t must be finite (no NaN or inf)")
        # A relative slack of 1e-6 lets a time grid built by accumulation end at T(1 + eps).
        if B and (bool((t < 0).any()) or bool((t > T * (1 + 1e-6)).any())):
            raise ValueError(f"t must lie in [0, T] = [0, {T:g}]; got values in "
                             f"[{float(t.min()):.6g}, {float(t.max()):.6g}]")
        if B and (bool((y < 0).any()) or bool((y > num_classes).any())):
            raise ValueError(f"y must hold labels in [0, {num_classes}] ({num_classes} = null label); got "
                             f"values in [{int(y.min())}, {int(y.max())}]")
    return t, y


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# UNet blocks
# --------------------------------------------------------------------------------------------
def _num_groups(channels: int) -> int:
    """GroupNorm groups: 32 for >= 128 channels, else the largest divisor of ``channels`` <= channels/4."""
    g = max(1, min(32, channels // 4))
    while channels % g:
        g -= 1
    return g


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels, eps=1e-6)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with adaptive scale-shift normalisation.

    ``x: (B, C_in, H, W)``, ``emb: (B, emb_dim)`` -> ``(B, C_out, H, W)``::

        h = conv3x3(SiLU(GN(x)))
        scale, shift = Linear(SiLU(emb))
        h = conv3x3(dropout(SiLU(GN(h) * (1 + scale) + shift)))
        out = (skip(x) + h) / sqrt(2)          (without the division if skip_rescale=False)
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0,
                 skip_rescale: bool = True, zero_init: bool = False, use_checkpoint: bool = False):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if zero_init:
            _zero_(self.conv2)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.skip_rescale = skip_rescale
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        out = self.skip(x) + h
        return out * (1 / math.sqrt(2)) if self.skip_rescale else out

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the ``H * W`` positions of ``x: (B, C, H, W)``.

    ``out = x + proj(SDPA(q, k, v))`` with ``q, k, v`` from a 1x1 conv of ``GN(x)``, split into
    ``max(1, C // head_channels)`` heads (one head if ``head_channels <= 0``), divided by sqrt(2)
    when ``skip_rescale``.  ``resolution`` records the feature-map side it was built for.
    """

    def __init__(self, channels: int, resolution: int, head_channels: int = 64,
                 skip_rescale: bool = True, zero_init: bool = False, use_checkpoint: bool = False):
        super().__init__()
        if head_channels > 0 and channels % head_channels == 0:
            self.num_heads = channels // head_channels
        else:
            self.num_heads = 1
        self.resolution = resolution
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        if zero_init:
            _zero_(self.proj)
        self.skip_rescale = skip_rescale
        self.use_checkpoint = use_checkpoint

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        nh = self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(B, 3, nh, C // nh, H * W).transpose(-1, -2)
        q, k, v = qkv.unbind(dim=1)  # each (B, heads, H*W, C/heads)
        h = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous())
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        out = x + self.proj(h)
        return out * (1 / math.sqrt(2)) if self.skip_rescale else out

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Downsample(nn.Module):
    """Strided conv3x3: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then conv3x3: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Step(nn.ModuleList):
    """A list of blocks applied in order, each called as ``block(h, emb)``."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self:
            h = block(h, emb)
        return h


# --------------------------------------------------------------------------------------------
# Configuration and network
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (see the class docstring for their meaning)."""

    resolution: int = 32
    in_channels: int = 3
    channels: int = 128
    channel_mult: tuple = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple = (16,)
    dropout: float = 0.1
    num_classes: int = 0
    T: float = 1.0
    head_channels: int = 64
    mid_attention: bool = True
    skip_rescale: bool = True
    zero_init_residual: bool = False
    time_scale: float = 1000.0
    use_checkpoint: bool = False


class UNet(nn.Module):
    """Velocity network ``v = model(x, t, y=None)`` on square images.

    Args:
        resolution: side ``H = W`` of the input; must be divisible by ``2^(len(channel_mult) - 1)``.
        in_channels: image channels ``C`` (1 or 3, any >= 1 works); the output has ``C`` channels.
        channels: base width; level ``i`` has ``channels * channel_mult[i]`` channels.
        channel_mult: width multipliers, one per resolution level (level i works at
            ``resolution / 2^i``).
        num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
        attn_resolutions: feature-map sides ``r`` at which self-attention follows each residual
            block; every entry must be one of the level resolutions.
        dropout: dropout probability inside residual blocks, in [0, 1).
        num_classes: number of classes (0 = unconditional); labels ``0..num_classes-1``, plus
            ``null_label = num_classes`` for classifier-free guidance.
        T: time horizon; ``t`` must lie in ``[0, T]``.
        head_channels: channels per attention head (``<= 0``: a single head).
        mid_attention: self-attention in the middle block at the lowest resolution.
        skip_rescale: divide residual sums by sqrt(2) (DDPM++).
        zero_init_residual: zero-initialise the last conv of every residual/attention branch
            (ADM); the final output conv is always zero-initialised.
        time_scale: the sinusoidal features see ``time_scale * t / T``.
        use_checkpoint: gradient checkpointing of residual and attention blocks (training only).

    Shapes: ``x: (B, in_channels, resolution, resolution)``, ``t: (B,)`` (or a float),
    ``y: (B,)`` long or None -> ``(B, in_channels, resolution, resolution)``.
    """

    def __init__(self, resolution: int = 32, in_channels: int = 3, channels: int = 128,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, num_classes: int = 0,
                 T: float = 1.0, head_channels: int = 64, mid_attention: bool = True,
                 skip_rescale: bool = True, zero_init_residual: bool = False,
                 time_scale: float = 1000.0, use_checkpoint: bool = False):
        super().__init__()
        channel_mult = tuple(int(m) for m in channel_mult)
        attn_resolutions = tuple(int(r) for r in attn_resolutions)
        _check_int("in_channels", in_channels, 1)
        _check_int("channels", channels, 1)
        _check_int("num_res_blocks", num_res_blocks, 1)
        _check_int("num_classes", num_classes, 0)
        _check_int("resolution", resolution, 1)
        if not channel_mult or any(m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of integers >= 1, got {channel_mult}")
        levels = len(channel_mult)
        if resolution % (2 ** (levels - 1)):
            raise ValueError(f"resolution must be divisible by 2^(len(channel_mult) - 1) = {2 ** (levels - 1)}, "
                             f"got {resolution}")
        level_res = [resolution // 2 ** i for i in range(levels)]
        bad = [r for r in attn_resolutions if r not in level_res]
        if bad:
            raise ValueError(f"attn_resolutions must be among the level resolutions {level_res}, got {attn_resolutions}")
        check_in_range("dropout", dropout, 0.0, 0.999)
        T = check_positive("T", T)
        time_scale = check_positive("time_scale", time_scale)

        self.config = UNetConfig(
            resolution=resolution, in_channels=in_channels, channels=channels, channel_mult=channel_mult,
            num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions, dropout=float(dropout),
            num_classes=num_classes, T=T, head_channels=head_channels, mid_attention=mid_attention,
            skip_rescale=skip_rescale, zero_init_residual=zero_init_residual, time_scale=time_scale,
            use_checkpoint=use_checkpoint,
        )
        self.resolution = resolution
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_label = num_classes
        self.T = T
        self.check_inputs = True  # set False to skip value-range checks (torch.compile, CUDA graphs)

        emb_dim = 4 * channels
        self.embed = TimeClassEmbedding(channels, emb_dim, num_classes, T, time_scale)

        def res(cin, cout):
            return ResBlock(cin, cout, emb_dim, dropout, skip_rescale, zero_init_residual, use_checkpoint)

        def attn(ch, r):
            return AttentionBlock(ch, r, head_channels, skip_rescale, zero_init_residual, use_checkpoint)

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_ch = [channels]
        ch = channels
        for i, mult in enumerate(channel_mult):
            r = level_res[i]
            for _ in range(num_res_blocks):
                step = _Step([res(ch, channels * mult)])
                ch = channels * mult
                if r in attn_resolutions:
                    step.append(attn(ch, r))
                self.down.append(step)
                skip_ch.append(ch)
            if i < levels - 1:
                self.down.append(_Step([Downsample(ch)]))
                skip_ch.append(ch)

        r_mid = level_res[-1]
        self.mid = _Step([res(ch, ch)] + ([attn(ch, r_mid)] if mid_attention else []) + [res(ch, ch)])

        self.up = nn.ModuleList()
        for i in reversed(range(levels)):
            r = level_res[i]
            for j in range(num_res_blocks + 1):
                step = _Step([res(ch + skip_ch.pop(), channels * channel_mult[i])])
                ch = channels * channel_mult[i]
                if r in attn_resolutions:
                    step.append(attn(ch, r))
                if i > 0 and j == num_res_blocks:
                    step.append(Upsample(ch))
                self.up.append(step)
        assert not skip_ch

        self.norm_out = _norm(ch)
        self.conv_out = _zero_(nn.Conv2d(ch, in_channels, 3, padding=1))

    @classmethod
    def from_config(cls, config: UNetConfig) -> "UNet":
        return cls(**dataclasses.asdict(config))

    def forward(self, x: torch.Tensor, t, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        t, y = check_velocity_inputs(
            x, t, y, sample_shape=(self.in_channels, self.resolution, self.resolution),
            num_classes=self.num_classes, T=self.T, check_values=self.check_inputs,
        )
        emb = self.embed(t, y)
        h = self.conv_in(x)
        hs = [h]
        for step in self.down:
            h = step(h, emb)
            hs.append(h)
        h = self.mid(h, emb)
        for step in self.up:
            h = step(torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value

