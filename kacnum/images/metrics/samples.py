"""Sample-set files that any other metric can read (:func:`save_sample_set`, :func:`load_sample_set`).

The pipeline writes one beside every ``*.samples.pt``:

* ``<name>.npz`` (``numpy.load``): ``images``, uint8 ``(N, H, W, C)``, pixel ``p`` of an image in
  [-1, 1] is ``round((x + 1) * 127.5)`` (``x = p / 127.5 - 1`` back); ``labels``, int64 ``(N,)``,
  the class each image was generated for (absent for unconditional sets).
* ``<name>.json``: ``format`` (``kacnum.samples.npz/1``), ``num_samples``, ``shape``, ``pixels``,
  ``has_labels`` and the generating settings: ``method``, ``steps`` (solver steps), ``nfe`` (the
  paper's count, = steps), ``nfe_model`` (network evaluations: 2 per guided step, 1 per student
  step), ``guidance``, ``seed``, ``solver``, ``time_grid`` and whatever else the writer records.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import numpy as np
import torch

from kacnum.core.checkpoint import atomic_write
from kacnum.images.metrics.frechet import ArrayLike, _jsonable

__all__ = [
    "SAMPLE_FILE_FORMAT",
    "images_to_uint8",
    "uint8_to_images",
    "sample_sidecar_path",
    "save_sample_set",
    "SampleFile",
    "load_sample_set",
]


#: ``format`` of the JSON sidecar of a sample-set ``.npz``
SAMPLE_FILE_FORMAT = "kacnum.samples.npz/1"


def images_to_uint8(images: ArrayLike) -> np.ndarray:
    """``(N, C, H, W)`` floats in [-1, 1] -> ``(N, H, W, C)`` uint8, ``p = round((x + 1) 127.5)`` (clamped)."""
    x = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images))
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"images must be a floating (N, C, H, W) array, got {tuple(x.shape)} {x.dtype}")
    x = ((x.detach().to("cpu", torch.float64).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def uint8_to_images(pixels: np.ndarray) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 -> ``(N, C, H, W)`` float32 in [-1, 1]: ``p / 127.5 - 1``."""
    p = np.asarray(pixels)
    if p.ndim != 4 or p.dtype != np.uint8:
        raise ValueError(f"pixels must be a uint8 (N, H, W, C) array, got {p.shape} {p.dtype}")
    return torch.from_numpy(p.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def sample_sidecar_path(path: Union[str, os.PathLike]) -> Path:
    """The JSON sidecar of a sample-set ``.npz``: same name, ``.json``."""
    return Path(path).with_suffix(".json")


def save_sample_set(path: Union[str, os.PathLike], images: ArrayLike, labels: ArrayLike | None = None,
                    meta: Mapping | None = None) -> Path:
    """Write ``path`` (``.npz``: ``images`` uint8 ``(N, H, W, C)``, ``labels`` int64 ``(N,)`` when given)
    and its sidecar ``path.with_suffix(".json")`` (``format``, ``num_samples``, ``shape``, ``pixels``
    and every key of ``meta``: method, steps, nfe, nfe_model, guidance, seed, solver, time_grid, ...),
    both atomically. Returns the ``.npz`` path."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path must end in .npz, got {path}")
    pix = images_to_uint8(images)
    arrays = {"images": pix}
    if labels is not None:
        lab = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
        if lab.shape != (pix.shape[0],):
            raise ValueError(f"labels must have shape ({pix.shape[0]},), got {lab.shape}")
        arrays["labels"] = lab.astype(np.int64)
    side = {**_jsonable(dict(meta or {})), "format": SAMPLE_FILE_FORMAT, "num_samples": int(pix.shape[0]),
            "shape": list(pix.shape), "pixels": "uint8 (N, H, W, C); image in [-1, 1] is p / 127.5 - 1",
            "has_labels": labels is not None}
    atomic_write(path, lambda f: np.savez(f, **arrays))
    atomic_write(sample_sidecar_path(path), lambda f: f.write(json.dumps(side, indent=1, sort_keys=True).encode()))
    return path


@dataclass
class SampleFile:
    """A sample set read by :func:`load_sample_set`: ``pixels`` uint8 ``(N, H, W, C)``, ``labels``
    ``(N,)`` int64 or None, ``meta`` (the sidecar)."""

    pixels: np.ndarray
    labels: np.ndarray | None
    meta: dict

    def images(self) -> torch.Tensor:
        """``(N, C, H, W)`` float32 in [-1, 1] (the input of every extractor here)."""
        return uint8_to_images(self.pixels)


def load_sample_set(path: Union[str, os.PathLike]) -> SampleFile:
    """Read a sample set written by :func:`save_sample_set` (the sidecar is optional: ``meta = {}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sample-set file at {path}")
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files:
            raise ValueError(f"{path} is not a sample-set file (no 'images' array)")
        pix = z["images"]
        labels = z["labels"] if "labels" in z.files else None
    side = sample_sidecar_path(path)
    meta = json.loads(side.read_text()) if side.is_file() else {}
    return SampleFile(pixels=pix, labels=labels, meta=meta)
