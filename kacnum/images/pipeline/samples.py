"""Sample sets: the files every sampler of the pipeline writes and every later stage reads.

One :class:`SampleSet` per (method, NFE[, guidance]) is saved as ``<method>[_s<guidance>]_nfe<NNN>.samples.pt``
(atomic ``torch.save`` of plain tensors, format ``kacnum.pipeline.samples/1``), with ``<stem>.npz`` + ``<stem>.json``
(:func:`kacnum.images.metrics.save_sample_set`: uint8 ``(N, H, W, C)`` images and labels, readable with
``numpy.load``) and a PNG grid ``<stem>.png`` beside it. A re-run with ``resume`` reuses a file whose recorded
settings (``meta``) equal the new ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

import torch

from kacnum.core.checkpoint import load_checkpoint, save_checkpoint
from kacnum.core.seeds import derive_seed
from kacnum.images.metrics import save_sample_set
from kacnum.images.train import save_image_grid

__all__ = ["SAMPLES_FORMAT", "SAMPLES_SUFFIX", "SampleSet", "sample_file_name", "collect_sample_sets", "coupled_sets"]

SAMPLES_FORMAT = "kacnum.pipeline.samples/1"
SAMPLES_SUFFIX = ".samples.pt"


@dataclass
class SampleSet:
    """Generated images of one (method, NFE[, guidance]).

    Attributes:
        method: a key of :data:`METHODS` (other names are allowed and shown as they are).
        nfe: solver steps = calls of the (guided) field, the paper's NFE.
        nfe_model: network evaluations per image (``2 nfe`` for a guided call).
        images: ``(N, C, H, W)`` float32 on the CPU (not clamped).
        labels: ``(N,)`` long class labels the images were generated for, or None.
        guidance: guidance scale ``s`` (None: no labels).
        meta: the settings that produced the set (seed, solver, ...): a re-run with other settings
            does not reuse the file.
    """

    method: str
    nfe: int
    nfe_model: int
    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    guidance: Optional[float] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if not torch.is_tensor(self.images) or self.images.dim() != 4:
            raise ValueError("images must be a (N, C, H, W) tensor")
        if self.labels is not None and (not torch.is_tensor(self.labels) or self.labels.shape != (self.images.shape[0],)):
            raise ValueError(f"labels must be None or a ({self.images.shape[0]},) tensor")
        for name in ("nfe", "nfe_model"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")

    @property
    def num(self) -> int:
        return int(self.images.shape[0])

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically (``torch.save`` of plain tensors and numbers)."""
        return save_checkpoint(path, {
            "format": SAMPLES_FORMAT, "method": self.method, "nfe": self.nfe, "nfe_model": self.nfe_model,
            "images": self.images.detach().float().cpu(), "guidance": self.guidance, "meta": self.meta,
            "labels": None if self.labels is None else self.labels.detach().long().cpu(),
        })

    @classmethod
    def load(cls, path: Union[str, Path], method: str = "kac_teacher") -> "SampleSet":
        """Read a file from :meth:`save`, or the ``samples.pt`` of ``experiments/cifar_distill.py``'s
        own sample stage (keys images, labels, nfe, nfe_model, steps, guidance_scale, seed; read as
        ``method``) or of ``experiments/teacher_study.py`` (its ``meta`` and ``sampling`` dicts become the
        set's meta)."""
        obj = load_checkpoint(path)
        if not isinstance(obj, dict) or "images" not in obj:
            raise ValueError(f"{path} is not a sample file (no 'images')")
        if obj.get("format") == SAMPLES_FORMAT:
            return cls(obj["method"], int(obj["nfe"]), int(obj["nfe_model"]), obj["images"], obj["labels"],
                       obj["guidance"], dict(obj["meta"]))
        meta = {k: v for src in (obj.get("sampling"), obj.get("meta")) if isinstance(src, dict) for k, v in src.items()}
        meta.update({k: obj[k] for k in ("steps", "method", "seed") if k in obj})
        return cls(method, int(obj.get("nfe", obj.get("steps"))), int(obj.get("nfe_model", obj.get("nfe"))),
                   obj["images"].float(), obj.get("labels"), obj.get("guidance_scale"), meta)

    def record(self, file: Optional[Path] = None, grid: Optional[Path] = None, seconds: Optional[float] = None) -> dict:
        """A JSON-able summary (no images)."""
        return {"method": self.method, "nfe": self.nfe, "nfe_model": self.nfe_model, "guidance": self.guidance,
                "num_samples": self.num, "file": None if file is None else str(file),
                "grid": None if grid is None else str(grid), "seconds": seconds, "meta": self.meta}


def sample_file_name(method: str, nfe: int, guidance: Optional[float] = None, with_guidance: bool = False) -> str:
    """``<method>[_s<guidance>]_nfe<NNN>.samples.pt``."""
    g = f"_s{guidance:g}" if with_guidance and guidance is not None else ""
    return f"{method}{g}_nfe{int(nfe):03d}{SAMPLES_SUFFIX}"


def collect_sample_sets(*folders: Union[str, Path]) -> list[Path]:
    """Every ``*.samples.pt`` under the folders (recursively), sorted."""
    found = set()
    for f in folders:
        found.update(Path(f).rglob(f"*{SAMPLES_SUFFIX}"))
    return sorted(found)


def _beside(file: Path, suffix: str) -> Path:
    """``<stem>.samples.pt`` -> ``<stem><suffix>`` in the same folder (the set's PNG grid, ``.npz``)."""
    file = Path(file)
    return file.with_name(file.name[: -len(SAMPLES_SUFFIX)] + suffix)


def _balanced_labels(n: int, num_classes: int) -> Optional[torch.Tensor]:
    """``arange(n) mod K``: every class equally often (None for an unconditional model, ``K = 0``)."""
    return torch.arange(n) % num_classes if num_classes > 0 else None


def _write_grid(images: torch.Tensor, file: Path, num_classes: int, max_images: int = 100) -> Path:
    shown = images[:max_images]
    nrow = num_classes if 0 < num_classes <= 16 else 10
    return save_image_grid(shown, file, nrow=nrow, scale=max(1, 64 // shown.shape[-1]))


def _reuse(file: Path, meta: dict, resume: bool) -> Optional[SampleSet]:
    """The saved set at ``file`` if ``resume`` and its settings equal ``meta``."""
    if not resume or not file.is_file():
        return None
    try:
        s = SampleSet.load(file)
    except (ValueError, RuntimeError, KeyError):
        return None
    return s if _plain(s.meta) == _plain(meta) else None


def _reuse_or_draw(file: Path, meta: dict, resume: bool, num_samples: int, draw: Callable[[], "SampleSet"],
                   num_classes: int, with_grid: bool = True) -> dict:
    """The record of the saved set at ``file`` when it can stand for a new one (``resume``, the same settings
    ``meta``, ``num_samples`` images; with its PNG grid when ``with_grid``), else of ``draw()``, a new set
    stored in ``file``'s folder (:func:`_store`) with the seconds it took."""
    old = _reuse(file, meta, resume)
    if old is not None and old.num == num_samples:
        return old.record(file, _beside(file, ".png") if with_grid else None)
    t0 = time.perf_counter()
    s = draw()
    return _store(s, file.parent, num_classes, time.perf_counter() - t0)


def _seeded_batches(n: int, batch_size: int, seed: int, device) -> Iterator[tuple[int, int, torch.Generator]]:
    """``(start, end, generator)`` for each batch of ``batch_size`` of ``n`` rows, batch ``i``'s generator on
    ``device`` seeded with ``derive_seed(seed, i)``: every sampler of the pipeline draws its latents this way, so
    that sets of the same seed and batch size start from the same latents (:func:`coupled_sets`)."""
    for i, start in enumerate(range(0, n, batch_size)):
        end = min(n, start + batch_size)
        yield start, end, torch.Generator(device=device).manual_seed(derive_seed(seed, i))


def _plain(v):
    """``v`` with tuples as lists and keys as strings: a meta dict compares equal to its saved copy."""
    if isinstance(v, dict):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v


def _export_npz(s: SampleSet, pt_file: Path) -> Path:
    """The set as ``<stem>.npz`` (uint8 images, labels) + ``<stem>.json`` beside ``pt_file``
    (:func:`kacnum.images.metrics.save_sample_set`: readable by any other metric)."""
    pt_file = Path(pt_file)
    npz = _beside(pt_file, ".npz")
    meta = dict(s.meta)
    meta.update({"method": s.method, "steps": int(meta.get("steps", s.nfe)), "nfe": s.nfe, "nfe_model": s.nfe_model,
                 "guidance": s.guidance, "seed": meta.get("seed"), "solver": meta.get("solver"),
                 "time_grid": meta.get("time_grid", "uniform"), "source_file": pt_file.name})
    return save_sample_set(npz, s.images, s.labels, meta)


def _store(s: SampleSet, out_dir: Path, num_classes: int, seconds: Optional[float],
           with_guidance: bool = False) -> dict:
    """Write ``s`` into ``out_dir`` (:func:`sample_file_name`; ``.samples.pt``, ``.npz`` + ``.json``, PNG grid)
    and return its record."""
    out_dir = Path(out_dir)
    file = out_dir / sample_file_name(s.method, s.nfe, s.guidance, with_guidance)
    s.save(file)
    _export_npz(s, file)
    grid = _write_grid(s.images, _beside(file, ".png"), num_classes)
    return s.record(file, grid, seconds)


def coupled_sets(a: SampleSet, b: SampleSet) -> bool:
    """Whether row ``i`` of ``a`` and of ``b`` came from the same latent and label, so that their FID ratio
    can take the paired interval (:func:`kacnum.images.metrics.paired_ratio_interval`): the same image shape and
    count, labels, latent seed and sampling batch size (latents are drawn per batch from
    ``derive_seed(seed, batch)``) and the same path (the latent law: a Kac and a Gaussian set are not coupled)."""
    if a.images.shape != b.images.shape:
        return False
    if (a.labels is None) != (b.labels is None) or (a.labels is not None and not torch.equal(a.labels, b.labels)):
        return False
    if not all(a.meta.get(k) is not None and a.meta.get(k) == b.meta.get(k) for k in ("seed", "path")):
        return False
    n = a.images.shape[0]  # the latents' batches: batch sizes >= n are one batch
    ba, bb = a.meta.get("batch_size"), b.meta.get("batch_size")
    return ba is not None and bb is not None and min(int(ba), n) == min(int(bb), n)
