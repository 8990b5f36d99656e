"""Atomic checkpoint and JSON files.

A file written here is never seen half-written: the content goes to a temporary file in the
*same directory* (so that the rename stays on one file system), is flushed and fsync'ed, and then
``os.replace`` swaps it in. A crash leaves either the old file or the new one, plus at worst a
stray ``.NAME.*.tmp`` file, never a truncated checkpoint.

API::

    save_checkpoint(path, obj)                  # torch.save, atomically
    obj = load_checkpoint(path, map_location="cpu")
    save_json(path, obj)                        # JSON (tensors, numpy, dataclasses, Paths made plain)
    obj = load_json(path)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "save_json", "load_json", "to_jsonable"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    ``mode`` is ``"wb"`` (binary) or ``"w"`` (text, UTF-8). Parent directories are created.
    Returns the final path. On any exception the temporary file is removed and the old ``path``
    (if any) is left untouched.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        kwargs = {"encoding": "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: PathLike, obj: Any) -> Path:
    """``torch.save(obj, path)`` atomically (temporary file in the same directory, then replace).

    Keep ``obj`` to tensors, state dicts, numbers, strings, lists, tuples and dicts so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`.

    ``map_location`` as in ``torch.load`` (default: everything on the CPU). ``weights_only=True``
    (default) refuses arbitrary pickled objects; pass ``False`` only for files you trust.
    Raises ``FileNotFoundError`` naming the path if it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types from ``obj``: dataclasses and mappings -> dicts, tuples/sets/tensors/arrays ->
    lists, numpy/torch scalars -> numbers, ``Path``/``torch.dtype``/``torch.device`` -> strings, and
    non-finite floats -> ``None`` (strict JSON has no NaN or inf)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if torch.is_tensor(obj):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, (torch.dtype, torch.device, os.PathLike)):
        return str(obj)
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return to_jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    raise ValueError(f"obj holds a value of type {type(obj).__name__} that JSON cannot represent")


def save_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``to_jsonable(obj)`` as UTF-8 JSON (keys in insertion order), atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text), mode="w")


def load_json(path: PathLike) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
