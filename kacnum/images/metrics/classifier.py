"""A small CNN classifier: FID features for small grayscale data, and the accuracy of conditional samples.

:func:`train_classifier` trains a :class:`SmallCNN` (sklearn digits 8x8, MNIST 28x28, ...) with a
seeded split, initialisation, batch order and augmentation; :func:`save_classifier` /
:func:`load_classifier` keep it in a file (format ``kacnum-small-cnn-v1``). :class:`ClassifierExtractor`
is its penultimate layer as a :class:`~kacnum.images.metrics.features.FeatureExtractor`;
:func:`classifier_accuracy` is the share of images it assigns to their labels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kacnum.core.checkpoint import atomic_write
from kacnum.core.checks import check_in_range, check_positive
from kacnum.core.progress import Progress
from kacnum.images.metrics.features import RESIZE_METHODS, FeatureExtractor, check_images, resize_images
from kacnum.images.metrics.frechet import ArrayLike, _jsonable

__all__ = [
    "ClassifierConfig",
    "SmallCNN",
    "train_classifier",
    "save_classifier",
    "load_classifier",
    "weights_hash",
    "ClassifierExtractor",
    "classifier_accuracy",
]


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of :class:`SmallCNN`.

    Attributes:
        in_channels: image channels C.
        resolution: training image size (square, H = W), e.g. 8 for sklearn digits, 28 for MNIST.
        num_classes: number of classes K.
        width: channels of the first convolution (later ones use ``2 * width``).
        feature_dim: size of the penultimate layer (the FID features).
        dropout: dropout before the last linear layer (training only).
    """

    in_channels: int = 1
    resolution: int = 8
    num_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    dropout: float = 0.25

    def __post_init__(self):
        for name in ("in_channels", "resolution", "num_classes", "width", "feature_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.resolution < 4:
            raise ValueError(f"resolution must be >= 4, got {self.resolution}")
        check_in_range("dropout", self.dropout, 0.0, 0.9)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU (width w), MaxPool(2), Conv-BN-ReLU (2w), [MaxPool(2) if resolution >= 16],
    Conv-BN-ReLU (2w), AdaptiveAvgPool(4x4), Linear -> ReLU (features, ``(B, feature_dim)``),
    Dropout, Linear (logits, ``(B, num_classes)``). All convolutions 3x3, padding 1.

    Input ``x: (B, in_channels, resolution, resolution)`` with pixels in [-1, 1].
    ``train_info`` (a dict) records the data and measured test accuracy after training.
    """

    def __init__(self, config: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.in_channels, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2) if config.resolution >= 16 else nn.Identity(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * w * 16, config.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.feature_dim, config.num_classes))
        self.train_info: dict = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``(B, feature_dim)``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.body(x))


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of a model's state dict: parameter names, shapes, float32 bytes."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _check_labels(name: str, labels: ArrayLike, n: int, num_classes: int | None = None) -> torch.Tensor:
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if not torch.is_tensor(labels) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__
        raise ValueError(f"{name} must be a 1-D integer tensor of shape ({n},), got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got dtype {labels.dtype}")
    labels = labels.long()
    hi = num_classes - 1 if num_classes is not None else None
    if n and (int(labels.min()) < 0 or (hi is not None and int(labels.max()) > hi)):
        rng = f"[0, {hi}]" if hi is not None else "[0, inf)"
        raise ValueError(f"{name} must lie in {rng}, got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an independent integer shift in [-max_shift, max_shift]^2 (edge padding)."""
    b, _, h, w = x.shape
    s = max_shift
    xp = F.pad(x, (s, s, s, s), mode="replicate")
    d = torch.randint(0, 2 * s + 1, (b, 2), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] + d[:, :1]  # (b, h)
    cols = torch.arange(w, device=x.device)[None, :] + d[:, 1:]  # (b, w)
    bi = torch.arange(b, device=x.device)[:, None, None]
    return xp[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def train_classifier(
    images: ArrayLike,
    labels: ArrayLike,
    epochs: int = 30,
    *,
    test_images: ArrayLike | None = None,
    test_labels: ArrayLike | None = None,
    test_fraction: float = 0.2,
    batch_size: int = 128,
    lr: float = 4e-3,
    weight_decay: float = 1e-4,
    max_shift: int | None = None,
    config: ClassifierConfig | None = None,
    data_name: str = "unnamed",
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
) -> tuple[SmallCNN, float]:
    """Train a :class:`SmallCNN` with cross-entropy; return ``(model in eval mode, test_accuracy)``.

    Args:
        images: ``(N, C, R, R)`` in [-1, 1]; labels: ``(N,)`` integers in ``[0, K)``.
        epochs: passes over the training images.
        test_images, test_labels: held-out set; if absent, a random ``test_fraction`` of ``images``
            (seeded) is held out instead.
        batch_size, lr, weight_decay: AdamW with a cosine learning-rate decay to 0.
        max_shift: random translation augmentation in pixels (default ``max(1, round(R / 14))``: 1 for
            8x8 digits, 2 for 28x28 MNIST; 0 = off).
        config: architecture (default: ``ClassifierConfig`` with C, R, K taken from the data).
        data_name: recorded in ``model.train_info`` and hence in the extractor protocol.
        seed: seeds the split, initialisation, batches, augmentation and dropout (global RNG state is
            restored afterwards).

    ``model.train_info`` records data name, sizes, epochs, seed and the test accuracy.
    """
    x = check_images("images", images)
    n = x.shape[0]
    y = _check_labels("labels", labels, n)
    epochs = int(check_positive("epochs", epochs))
    check_positive("batch_size", batch_size)
    check_positive("lr", lr)
    if x.shape[2] != x.shape[3]:
        raise ValueError(f"images must be square (H = W), got {tuple(x.shape[2:])}")
    if test_images is None:
        check_in_range("test_fraction", test_fraction, 0.0, 0.9)
        n_test = int(round(test_fraction * n))
        if n_test < 1 or n - n_test < 2:
            raise ValueError(f"test_fraction={test_fraction} leaves no test or training images for N={n}")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        xt, yt = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    else:
        if test_labels is None:
            raise ValueError("test_labels must be given together with test_images")
        xt = check_images("test_images", test_images)
        yt = _check_labels("test_labels", test_labels, xt.shape[0])
    if config is None:
        config = ClassifierConfig(
            in_channels=x.shape[1], resolution=x.shape[2], num_classes=int(max(y.max(), yt.max())) + 1
        )
    if (x.shape[1], x.shape[2]) != (config.in_channels, config.resolution):
        raise ValueError(
            f"images must have shape (N, {config.in_channels}, {config.resolution}, {config.resolution}) "
            f"for this config, got {tuple(x.shape)}"
        )
    if int(max(y.max(), yt.max())) >= config.num_classes:
        raise ValueError(f"labels must lie in [0, {config.num_classes - 1}]")
    if max_shift is None:
        max_shift = max(1, round(config.resolution / 14))
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed + 1)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        model = SmallCNN(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(x.shape[0] / batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        xd, yd = x.to(device, torch.float32), y.to(device)
        model.train()
        for _ in Progress(epochs, "train classifier", unit="epoch", enabled=progress).iterate(range(epochs)):
            order = torch.randperm(xd.shape[0], generator=gen).to(device)
            for i in range(0, xd.shape[0], batch_size):
                idx = order[i : i + batch_size]
                xb = xd[idx]
                if max_shift > 0:
                    xb = _random_shift(xb, max_shift, gen)
                loss = F.cross_entropy(model(xb), yd[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.eval()
    acc = classifier_accuracy(model, xt, yt)
    model.train_info = {
        "data": data_name,
        "n_train": int(x.shape[0]),
        "n_test": int(xt.shape[0]),
        "epochs": epochs,
        "seed": int(seed),
        "test_accuracy": acc,
    }
    return model, acc


_CLASSIFIER_FORMAT = "kacnum-small-cnn-v1"


def save_classifier(model: SmallCNN, path: Union[str, os.PathLike]) -> Path:
    """Write config, weights and ``train_info`` to ``path`` atomically (temp file + ``os.replace``)."""
    payload = {
        "format": _CLASSIFIER_FORMAT,
        "config": dataclasses.asdict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_info": _jsonable(model.train_info),
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_classifier(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> SmallCNN:
    """Load a classifier written by :func:`save_classifier` (``weights_only`` loading), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no classifier file at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a kacnum classifier file (format {_CLASSIFIER_FORMAT})")
    model = SmallCNN(ClassifierConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.train_info = dict(payload["train_info"])
    return model.eval().to(device)


def _prepare_for_classifier(x: torch.Tensor, config: ClassifierConfig, resize: str) -> torch.Tensor:
    c = x.shape[1]
    if c != config.in_channels:
        if c == 1:
            x = x.expand(-1, config.in_channels, -1, -1)
        else:
            raise ValueError(f"images must have {config.in_channels} channel(s) (or 1) for this classifier, got {c}")
    return resize_images(x, (config.resolution, config.resolution), resize).clamp(-1.0, 1.0)


class ClassifierExtractor(FeatureExtractor):
    """Penultimate-layer features of a trained :class:`SmallCNN`: ``(B, C, H, W) -> (B, feature_dim)``.

    Images whose size differs from the classifier's training resolution are resized with
    ``resize``; single-channel images are repeated if the classifier has more channels.

    Args:
        model: a trained :class:`SmallCNN` or the path of a file from :func:`save_classifier`.
    """

    name = "kacnum-small-cnn"

    def __init__(
        self,
        model: Union[SmallCNN, str, os.PathLike],
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 512,
        resize: str = "bilinear",
    ):
        super().__init__(device=device, batch_size=batch_size)
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        if not isinstance(model, nn.Module):
            model = load_classifier(model, device=self.device)
        if not isinstance(model, SmallCNN):
            raise ValueError(f"model must be a SmallCNN or a path to one, got {type(model).__name__}")
        self.model = model.eval().to(self.device)
        self.resize = resize
        self.feature_dim = model.config.feature_dim
        self._hash = weights_hash(model)

    @property
    def protocol(self) -> dict:
        cfg = self.model.config
        info = self.model.train_info
        return {
            "name": self.name,
            "layer": "penultimate",
            "input_resolution": [cfg.resolution, cfg.resolution],
            "resize": self.resize,
            "channels": cfg.in_channels,
            "feature_dim": cfg.feature_dim,
            "train_data": info.get("data"),
            "test_accuracy": info.get("test_accuracy"),
            "weights_sha256": self._hash,
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(_prepare_for_classifier(x, self.model.config, self.resize))


@torch.no_grad()
def classifier_accuracy(
    classifier: Union[SmallCNN, ClassifierExtractor, nn.Module],
    images: ArrayLike,
    labels: ArrayLike,
    batch_size: int = 512,
) -> float:
    """Fraction of ``images: (B, C, H, W)`` in [-1, 1] that ``classifier`` assigns to ``labels: (B,)``.

    For class-conditional samples: the share of samples generated for class ``y`` that the
    classifier labels ``y``. A :class:`SmallCNN` (or its extractor) gets the same channel/resize
    preparation as in :class:`ClassifierExtractor`; any other module must accept the images as they
    are and return logits ``(B, K)``.
    """
    x = check_images("images", images)
    y = _check_labels("labels", labels, x.shape[0])
    resize = "bilinear"
    if isinstance(classifier, ClassifierExtractor):
        resize = classifier.resize
        classifier = classifier.model
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    correct = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device, torch.float32)
            if isinstance(classifier, SmallCNN):
                xb = _prepare_for_classifier(xb, classifier.config, resize)
            logits = classifier(xb)
            if logits.dim() != 2 or logits.shape[0] != xb.shape[0]:
                raise ValueError(f"classifier must return logits (B, K), got {tuple(logits.shape)}")
            correct += int((logits.argmax(1).cpu() == y[i : i + batch_size]).sum())
    finally:
        classifier.train(was_training)
    return correct / x.shape[0]

