"""FID with its protocol: reference statistics (cached), :func:`calc_fid` and :func:`fid`.

FID is the Fréchet distance (:func:`~kacnum.images.metrics.frechet.frechet_distance`) between Gaussians
fitted (mean, unbiased covariance) to network features of generated and of reference images. A FID
number means nothing without its protocol (which network, which layer, how images were resized, how
many generated and reference images, which reference split): reference statistics carry it, a
:func:`calc_fid` with an extractor of another protocol is refused, and every FID comes back as a
:class:`FIDResult` that records it.

Reference statistics (:func:`reference_stats`) and reference features for KID
(:func:`reference_features`) are cached in ``.npz`` files named by :func:`stats_cache_path`, whose hash
covers the whole protocol; a cache file with another stored protocol is recomputed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import numpy as np
import torch

from kacnum.core.checkpoint import atomic_write
from kacnum.core.checks import check_positive
from kacnum.core.progress import Progress
from kacnum.images.metrics.features import FeatureExtractor, _iter_image_batches, extract_features
from kacnum.images.metrics.frechet import (FeatureStats, _jsonable, _MomentAccumulator, feature_statistics,
                                           frechet_distance)

__all__ = [
    "FIDResult",
    "compute_reference_stats",
    "reference_stats",
    "reference_features",
    "stats_cache_path",
    "calc_fid",
    "fid",
]


@dataclass(frozen=True)
class FIDResult:
    """A FID value with the protocol it was measured under.

    Attributes:
        value: the Fréchet distance between the fitted Gaussians.
        extractor: extractor name (e.g. ``inception-v3-fid``, ``kacnum-small-cnn``).
        resize: resize method used before the network.
        n_generated: number of generated images (or feature vectors).
        n_reference: number of reference images behind the reference statistics.
        reference_dataset: data set of the reference statistics.
        reference_split: split of the reference statistics (``train`` / ``test`` ...).
        protocol: the full extractor protocol (weights hash, resolution, ...).
    """

    value: float
    extractor: str
    resize: str | None
    n_generated: int
    n_reference: int
    reference_dataset: str | None
    reference_split: str | None
    protocol: dict = field(default_factory=dict)

    def __float__(self) -> float:
        return float(self.value)

    def to_dict(self) -> dict:
        """JSON-able dict, for results.json."""
        return _jsonable(dataclasses.asdict(self))


def _extract_stats(
    images_or_loader: Any,
    extractor: FeatureExtractor,
    protocol: dict,
    max_images: int | None,
    progress: bool,
    desc: str,
) -> FeatureStats:
    acc = _MomentAccumulator()
    total = None
    if torch.is_tensor(images_or_loader) or isinstance(images_or_loader, np.ndarray):
        total = images_or_loader.shape[0] if max_images is None else min(max_images, images_or_loader.shape[0])
    bar = Progress(total or 0, desc, unit="img", enabled=progress)  # bars on a terminal, lines in a log
    try:
        for batch in _iter_image_batches(images_or_loader, extractor.batch_size, max_images):
            acc.update(extractor(batch))
            bar.update(int(batch.shape[0]))
    finally:
        bar.close()
    return acc.finalize({**protocol, "n": acc.n})


def compute_reference_stats(
    images_or_loader: Any,
    extractor: FeatureExtractor,
    *,
    dataset_name: str,
    split: str = "train",
    max_images: int | None = None,
    progress: bool = True,
) -> FeatureStats:
    """Feature statistics of reference images (no caching).

    Args:
        images_or_loader: ``(N, C, H, W)`` in [-1, 1], an iterable of such batches (or of
            ``(images, labels)``), or a zero-argument callable returning either.
        extractor: a :class:`FeatureExtractor`.
        dataset_name, split: recorded in the protocol (e.g. ``"cifar10"``, ``"train"``).
        max_images: use at most this many images (in iteration order).

    The result's protocol is ``{kind: "reference", dataset, split, max_images, n, extractor}``.
    """
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    protocol = _reference_key("reference", dataset_name, split, max_images, extractor)
    return _extract_stats(images_or_loader, extractor, protocol, max_images, progress, f"ref stats {dataset_name}")



def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", str(s)).strip("-") or "x"


def stats_cache_path(
    cache_dir: Union[str, os.PathLike],
    dataset_name: str,
    split: str,
    extractor_protocol: Mapping,
    max_images: int | None = None,
) -> Path:
    """Cache file ``<dataset>-<split>-<extractor>-<hash>.npz``; the hash covers the whole protocol."""
    key = _jsonable({"dataset": dataset_name, "split": split, "max_images": max_images, "extractor": dict(extractor_protocol)})
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = extractor_protocol.get("name", "extractor")
    return Path(cache_dir) / f"{_slug(dataset_name)}-{_slug(split)}-{_slug(name)}-{digest}.npz"

def _reference_key(kind: str, dataset_name: str, split: str, max_images: int | None,
                   extractor: FeatureExtractor) -> dict:
    """The protocol of reference statistics or features (``kind``): what a cache file must match."""
    return _jsonable({"kind": kind, "dataset": str(dataset_name), "split": str(split), "max_images": max_images,
                      "extractor": extractor.protocol})


def _cached(path: Path | None, recompute: bool, read: Callable[[Path], Any], compute: Callable[[], Any],
            write: Callable[[Path, Any], None], what: str) -> Any:
    """The value cached at ``path``, or ``compute()`` written there.

    ``read(path)`` returns the cached value, or None when the file holds another protocol (then a
    warning names the file and the value is recomputed and overwritten). ``recompute`` skips the
    cache; ``path=None`` means no cache at all (nothing is read or written).
    """
    if path is not None and path.is_file() and not recompute:
        value = read(path)
        if value is not None:
            return value
        # stacklevel 3: the warning points at the caller of reference_stats / reference_features
        warnings.warn(f"cached {what} {path} have a different protocol; recomputing", stacklevel=3)
    value = compute()
    if path is not None:
        write(path, value)
    return value


def reference_stats(
    dataset_name: str,
    images_or_loader: Any,
    extractor: FeatureExtractor,
    cache_dir: Union[str, os.PathLike, None],
    *,
    split: str = "train",
    max_images: int | None = None,
    recompute: bool = False,
    progress: bool = True,
) -> FeatureStats:
    """Reference statistics, computed once and cached in ``cache_dir`` (``None``: no cache).

    The cache file (:func:`stats_cache_path`) is keyed by data set, split, ``max_images`` and the
    extractor protocol (weights hash included), and is written atomically. A cached file whose
    stored protocol does not match is recomputed. Pass a zero-argument callable as
    ``images_or_loader`` to load the data only on a cache miss.
    """
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    path = want = None
    if cache_dir is not None:
        path = stats_cache_path(cache_dir, dataset_name, split, extractor.protocol, max_images)
        want = _reference_key("reference", dataset_name, split, max_images, extractor)

    def read(p: Path) -> FeatureStats | None:
        stats = FeatureStats.load(p)
        # the stored protocol also holds n; only the keys of the request must agree
        return stats if {k: stats.protocol.get(k) for k in want} == want else None

    def compute() -> FeatureStats:
        return compute_reference_stats(images_or_loader, extractor, dataset_name=dataset_name, split=split,
                                       max_images=max_images, progress=progress)

    return _cached(path, recompute, read, compute, lambda p, stats: stats.save(p), "statistics")


def reference_features(
    dataset_name: str,
    images_or_loader: Any,
    extractor: FeatureExtractor,
    cache_dir: Union[str, os.PathLike, None],
    *,
    split: str = "train",
    max_images: int | None = None,
    recompute: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """Reference features ``(N, D)`` float32 (for KID), cached like :func:`reference_stats`: file
    ``<dataset>-<split>-<extractor>-<hash>.features.npz`` (arrays ``features``, ``protocol`` as JSON),
    keyed by data set, split, ``max_images`` and the extractor protocol; written atomically."""
    if max_images is not None:
        max_images = int(check_positive("max_images", max_images))
    want = _reference_key("reference-features", dataset_name, split, max_images, extractor)
    path = None
    if cache_dir is not None:
        path = stats_cache_path(cache_dir, dataset_name, split, extractor.protocol, max_images)
        path = path.with_name(path.name[: -len(".npz")] + ".features.npz")

    def read(p: Path) -> np.ndarray | None:
        with np.load(p, allow_pickle=False) as z:
            return z["features"] if json.loads(str(z["protocol"])) == want else None

    def write(p: Path, feats: np.ndarray) -> None:
        atomic_write(p, lambda f: np.savez(f, features=feats, protocol=np.array(json.dumps(want, sort_keys=True))))

    return _cached(path, recompute, read,
                   lambda: extract_features(images_or_loader, extractor, max_images=max_images, progress=progress),
                   write, "features")


def _protocol_diff(a: Mapping, b: Mapping) -> list[str]:
    a, b = _jsonable(dict(a)), _jsonable(dict(b))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def calc_fid(
    samples_or_features: Any,
    reference: Union[FeatureStats, str, os.PathLike],
    extractor: FeatureExtractor | None = None,
    *,
    max_images: int | None = None,
    progress: bool = False,
) -> FIDResult:
    """FID between generated samples and reference statistics, with its protocol.

    Args:
        samples_or_features: one of
            * images ``(N, C, H, W)`` in [-1, 1] (needs ``extractor``), or an iterable / callable
              of image batches as in :func:`compute_reference_stats`;
            * features ``(N, D)`` already extracted (the extractor, if given, is only used for the
              protocol check);
            * a :class:`FeatureStats` of generated features.
        reference: :class:`FeatureStats` (or the path of a saved one), e.g. from
            :func:`reference_stats`.
        extractor: the feature extractor. It must have the same protocol as the one stored in
            ``reference`` (else ``ValueError``): FIDs from different networks/resizes are not
            comparable.
        max_images: use at most this many generated images.

    Returns:
        :class:`FIDResult` (``float(result)`` is the FID).
    """
    if not isinstance(reference, FeatureStats):
        reference = FeatureStats.load(reference)
    ref_proto = reference.protocol.get("extractor")
    if extractor is not None and ref_proto is not None:
        diff = _protocol_diff(extractor.protocol, ref_proto)
        if diff:
            raise ValueError(
                f"extractor protocol differs from the one of reference_stats in {diff}; "
                "recompute the reference statistics with this extractor"
            )
    x = samples_or_features
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(x, FeatureStats):
        gen = x
        gen_proto = gen.protocol.get("extractor")
        if gen_proto is not None and ref_proto is not None and _protocol_diff(gen_proto, ref_proto):
            raise ValueError(
                f"samples_or_features statistics used a different extractor protocol than reference "
                f"(differs in {_protocol_diff(gen_proto, ref_proto)})"
            )
    elif torch.is_tensor(x) and x.dim() == 2:
        if max_images is not None:
            x = x[: int(max_images)]
        gen = feature_statistics(x, protocol={"kind": "generated", "extractor": extractor.protocol if extractor else ref_proto})
    elif torch.is_tensor(x) and x.dim() != 4:
        raise ValueError(
            f"samples_or_features must be images (N, C, H, W) or features (N, D), got shape {tuple(x.shape)}"
        )
    else:
        if extractor is None:
            raise ValueError("extractor is required when samples_or_features are images")
        gen = _extract_stats(x, extractor, {"kind": "generated", "extractor": extractor.protocol}, max_images, progress, "FID features")
    if gen.dim != reference.dim:
        raise ValueError(f"feature dimension of samples ({gen.dim}) differs from reference ({reference.dim})")
    value = frechet_distance(gen.mu, gen.sigma, reference.mu, reference.sigma)
    proto = dict(extractor.protocol if extractor is not None else (ref_proto or gen.protocol.get("extractor") or {}))
    return FIDResult(
        value=value,
        extractor=str(proto.get("name", "unknown")),
        resize=proto.get("resize"),
        n_generated=gen.n,
        n_reference=reference.n,
        reference_dataset=reference.protocol.get("dataset"),
        reference_split=reference.protocol.get("split"),
        protocol=proto,
    )


def fid(
    samples_or_features: Any,
    reference: Union[FeatureStats, str, os.PathLike],
    extractor: FeatureExtractor | None = None,
    **kwargs,
) -> float:
    """``calc_fid(...).value``: the FID as a float (use :func:`calc_fid` to keep the protocol)."""
    return calc_fid(samples_or_features, reference, extractor, **kwargs).value
