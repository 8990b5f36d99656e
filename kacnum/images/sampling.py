"""Sampling a trained velocity (or ε) network, and image grids.

:func:`sample_images` integrates the (guided) flow of a network from latents at ``T`` down to
``t_min`` with a solver of :mod:`kacnum.flows.solvers`, one seeded generator per batch;
:func:`save_image_grid` writes images in [-1, 1] as one PNG grid, optionally with row labels.
The training engine (:mod:`kacnum.images.train`) uses both for its sample grids.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from kacnum.core.checkpoint import atomic_write
from kacnum.core.checks import check_int
from kacnum.core.progress import Progress
from kacnum.core.seeds import derive_seed
from kacnum.flows.guidance import GuidedField
from kacnum.flows.paths import ProbabilityPath, ProcessPath
from kacnum.flows.solvers import integrate
from kacnum.images.distributed import resolve_device

__all__ = ["sample_images", "save_image_grid", "UnconditionalField"]


class _Autocast(nn.Module):
    """``net(x, t, y)`` under bf16 autocast (when ``enabled``), output cast back to ``x``'s dtype."""

    def __init__(self, net: Callable, enabled: bool, device_type: str):
        super().__init__()
        self.net, self.enabled, self.device_type = net, bool(enabled), device_type

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.enabled:
            return self.net(x, t, y)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.net(x, t, y)
        return out.to(x.dtype)


def _latent(path: ProbabilityPath, shape, generator, device) -> torch.Tensor:
    if isinstance(path, ProcessPath) and path.f(path.T) != 0.0:
        # f = exp: the law at T is f(T) X0 + N_{g(T)}; start from N_{g(T)} (drops e^{-T} X0).
        return path.sample_noise(path.g(path.T), shape, generator, dtype=torch.float32, device=device)
    return path.sample_latent(shape, generator, dtype=torch.float32, device=device)


@torch.no_grad()
def sample_images(model: nn.Module, path: ProbabilityPath, n: int, labels: Optional[torch.Tensor] = None,
                  guidance_scale: float = 1.0, steps: int = 100, method: str = "ab2",
                  seed: int = 0, batch_size: int = 500, bf16: bool = False,
                  device: Union[str, torch.device, None] = None, eps_model: bool = False,
                  progress: bool = False) -> dict:
    """Draw ``n`` images by integrating the (guided) flow of ``model`` from ``T`` to ``t_min``.

    The field is ``GuidedField(model, guidance_scale)`` (docs/mathematics.md §5: ``u_∅ + s (u_y - u_∅)``; for an
    unconditional model the plain ``model(x, t)``), through ``path.velocity_field`` when ``eps_model``
    (VP ε-prediction). Grid: ``path.default_time_grid(steps)``; solver ``method`` (AB-2: ``steps`` NFE).
    Latents from ``path.sample_latent`` with a generator seeded by ``seed`` (one per batch:
    ``derive_seed(seed, batch index)``). ``labels``: ``(n,)`` long (default ``arange(n) mod K``).

    Returns ``{"images": (n, C, H, W) float32 CPU (not clamped), "labels": (n,), "nfe", "nfe_model"}``.
    """
    check_int("n", n, 1)
    dev = resolve_device(device) if device is not None else next(model.parameters()).device
    cfg = model.config
    shape = (cfg.in_channels, cfg.resolution, cfg.resolution)
    k = int(getattr(model, "num_classes", 0))
    if labels is None:
        labels = torch.arange(n) % k if k > 0 else None
    net = _Autocast(model, bf16 and dev.type == "cuda", dev.type)
    guided = GuidedField(net, guidance_scale, null_label=model.null_label, num_classes=k) if k > 0 else None
    grid = path.default_time_grid(steps, device=dev)
    out, nfe, nfe_model = [], 0, 0
    starts = range(0, n, batch_size)
    bar = Progress(len(starts), "sample", enabled=progress, unit="batch")
    for i, s in enumerate(bar.iterate(starts)):
        e = min(n, s + batch_size)
        gen = torch.Generator(device=dev).manual_seed(derive_seed(seed, i))
        x = _latent(path, (e - s,) + shape, gen, dev)
        if guided is not None:
            field_ = guided.field(labels[s:e].to(dev))
        else:
            field_ = UnconditionalField(net)
        if eps_model:
            field_ = path.velocity_field(field_)
        res = integrate(field_, x, grid, method)
        out.append(res.x.float().cpu())
        nfe, nfe_model = nfe + res.nfe, nfe_model + res.nfe_model
    bar.close()
    return {"images": torch.cat(out), "labels": labels, "nfe": nfe // len(out), "nfe_model": nfe_model // len(out)}


class UnconditionalField:
    """``net(x, t, None)`` as a solver field (one network evaluation per call)."""

    nfe_per_call = 1

    def __init__(self, net):
        self.net = net

    def __call__(self, x, t):
        return self.net(x, t, None)


def save_image_grid(images: torch.Tensor, path: Union[str, os.PathLike], nrow: int = 8, padding: int = 1,
                    scale: int = 1, row_labels: Optional[list] = None) -> Path:
    """Save ``images: (N, C, H, W)`` in ``[-1, 1]`` (clamped) as one PNG grid, ``nrow`` images per row.

    Pixels ``p = round((x + 1) · 127.5)``; 1 channel gives a grey PNG, 3 an RGB one; ``scale``
    enlarges each pixel (nearest). ``row_labels`` (one string per row) are written in a white margin
    left of the rows. Written atomically. Returns the path.
    """
    from PIL import Image

    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a (N, C, H, W) tensor with C in (1, 3), got "
                         f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
    check_int("nrow", nrow, 1)
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    canvas = torch.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), 255, dtype=torch.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        canvas[:, y0:y0 + h, x0:x0 + w] = x[i]
    if scale > 1:
        canvas = canvas.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = canvas.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[:, :, 0], mode="L") if c == 1 else Image.fromarray(arr, mode="RGB")
    if row_labels is not None:
        if len(row_labels) != rows:
            raise ValueError(f"row_labels must hold one label per row ({rows}), got {len(row_labels)}")
        img = _label_rows(img, [str(t) for t in row_labels], (h + padding) * scale, padding * scale)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def _label_rows(img, labels: list, row_height: int, top: int):
    """``img`` with a white margin on its left holding ``labels[i]`` beside row ``i``."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=max(10, min(14, row_height // 3)))
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    boxes = [draw.textbbox((0, 0), t, font=font) for t in labels]
    margin = max(b[2] - b[0] for b in boxes) + 8
    white = 255 if img.mode == "L" else (255, 255, 255)
    out = Image.new(img.mode, (img.width + margin, img.height), white)
    out.paste(img, (margin, 0))
    draw = ImageDraw.Draw(out)
    for i, (t, b) in enumerate(zip(labels, boxes)):
        y = top + i * row_height + (row_height - (b[3] - b[1])) // 2 - b[1]
        draw.text((4, y), t, fill=0 if img.mode == "L" else (0, 0, 0), font=font)
    return out
