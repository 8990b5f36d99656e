"""Atomic checkpoint and JSON files.

A file written here is never seen half-written: the content goes to a temporary file in the
*same directory* (so that the rename stays on one file system), is flushed and fsync'ed, and then
``os.replace`` swaps it in. A crash leaves either the old file or the new one, plus at worst a
stray ``.NAME.*.tmp`` file, never a truncated checkpoint.

Damage (a copy cut short, a full disk, a file zeroed by a crashed file system) is caught on load:
``load_checkpoint`` verifies the file before unpickling it (torch writes zip archives with a CRC-32 per
record; every record is checked, so a truncated, zeroed or bit-flipped file is refused instead of being
read as garbage) and names the file in the error. Training checkpoints are saved with
``keep_previous=True``: the file being replaced is first renamed to its *previous* name
(``checkpoint.pt`` -> ``checkpoint.prev.pt``, ``distill.ckpt`` -> ``distill.prev.ckpt``,
:func:`previous_path`) if it is intact, so a good checkpoint always stays beside the newest one. When the
newest file is damaged ``load_checkpoint`` falls back to the previous one with a
:class:`CheckpointFallbackWarning`, and raises :class:`CheckpointError` (naming both files and what to do)
when neither is good.

API::

    save_checkpoint(path, obj, keep_previous=False)  # torch.save, atomically
    obj = load_checkpoint(path, map_location="cpu")   # verified; falls back to previous_path(path)
    obj = load_checkpoint(path, resumable=False)      # a file the user named: the error says to restore it
    verify_checkpoint(path)                           # None if intact, else the reason (a string)
    save_json(path, obj)                              # JSON (tensors, numpy, dataclasses, Paths made plain)
    obj = load_json(path)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

__all__ = ["atomic_write", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "previous_path",
           "CheckpointError", "CheckpointFallbackWarning", "save_json", "load_json", "to_jsonable"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[Any], None], mode: str = "wb",
                 before_replace: Optional[Callable[[Path], None]] = None) -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    ``mode`` is ``"wb"`` (binary) or ``"w"`` (text, UTF-8). Parent directories are created.
    ``before_replace(path)``, if given, runs after the temporary file is complete and just before it
    takes ``path``'s place (e.g. to move the old file aside). Returns the final path. On any exception
    the temporary file is removed and the old ``path`` (if any) is left untouched.
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
        if before_replace is not None:
            before_replace(path)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


class CheckpointError(RuntimeError):
    """A checkpoint (and its previous copy, if any) cannot be read; the message names the file(s)."""


class CheckpointFallbackWarning(UserWarning):
    """The newest checkpoint was damaged and the previous one (:func:`previous_path`) was loaded."""


def previous_path(path: PathLike) -> Path:
    """Where :func:`save_checkpoint` keeps the previous checkpoint: ``dir/stem.prev.suffix``
    (``checkpoint.pt`` -> ``checkpoint.prev.pt``; a name without suffix gets ``.prev``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}" if path.suffix else f"{path.name}.prev")


def verify_checkpoint(path: PathLike) -> Optional[str]:
    """``None`` if ``path`` is an intact ``torch.save`` archive, else why not (one short phrase).

    Checks that the file is not empty, that it is a complete zip archive (the directory at its end is
    present: a truncated file fails here) and that every record matches its CRC-32 (a zeroed or
    bit-flipped block fails here). Reads the whole file once; does not unpickle it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if size == 0:
        return "empty (0 bytes)"
    try:
        if not zipfile.is_zipfile(path):
            return f"truncated or not a torch checkpoint ({size} bytes, no zip directory at its end)"
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as e:
        return f"corrupt ({type(e).__name__}: {e})"
    if bad is not None:
        return f"corrupt (record {bad} fails its CRC-32 check)"
    return None


def save_checkpoint(path: PathLike, obj: Any, keep_previous: bool = False) -> Path:
    """``torch.save(obj, path)`` atomically (temporary file in the same directory, then replace).

    ``keep_previous=True``: a file already at ``path`` that passes :func:`verify_checkpoint` (one
    read of it) is renamed to :func:`previous_path` just before the new one takes its place; a damaged
    one is simply replaced, so the previous copy stays good. A crash between the two renames leaves the previous copy, which
    :func:`load_checkpoint` then reads.

    Keep ``obj`` to tensors, state dicts, numbers, strings, lists, tuples and dicts so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    if not keep_previous:
        return atomic_write(path, lambda f: torch.save(obj, f))

    def keep_good_previous(p: Path) -> None:
        if p.is_file() and verify_checkpoint(p) is None:
            os.replace(p, previous_path(p))

    return atomic_write(path, lambda f: torch.save(obj, f), before_replace=keep_good_previous)


def _read(path: Path, map_location: Any, weights_only: bool) -> Any:
    reason = verify_checkpoint(path)
    if reason is not None:
        raise CheckpointError(f"{path}: {reason}")
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file cannot be used
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(f"{path}: cannot be loaded ({type(e).__name__}: {msg})") from e


def load_checkpoint(path: PathLike, map_location: Any = "cpu", weights_only: bool = True,
                    fallback: bool = True, check: Optional[Callable[[Any], None]] = None,
                    resumable: bool = True) -> Any:
    """Read a checkpoint written by :func:`save_checkpoint`, verified (:func:`verify_checkpoint`) first.

    ``map_location`` as in ``torch.load`` (default: everything on the CPU). ``weights_only=True``
    (default) refuses arbitrary pickled objects; pass ``False`` only for files you trust.
    ``check(obj)`` may raise ``ValueError`` to refuse a readable file that is not what the caller
    expects (treated like damage, so the previous copy is tried).

    If ``path`` is damaged and ``fallback`` is true and :func:`previous_path` holds a good checkpoint,
    that one is returned with a :class:`CheckpointFallbackWarning` naming both files. Raises
    ``FileNotFoundError`` naming the path if neither file exists, and :class:`CheckpointError` naming
    the file(s) and the damage if no good one does.

    ``resumable`` chooses the advice in that error. True (default): the file is a run's own checkpoint,
    read to resume it, so starting afresh without ``--resume`` is one way out. False: the file is an
    input the user named (a teacher, a sample set), which a fresh run would read again, so the only
    advice is to restore a good copy of it.
    """
    path = Path(path)
    candidates = [path] + ([previous_path(path)] if fallback else [])
    existing = [p for p in candidates if p.is_file()]
    if not existing:
        raise FileNotFoundError(f"no checkpoint at {path}")
    problems = []
    for p in existing:
        try:
            obj = _read(p, map_location, weights_only)
            if check is not None:
                try:
                    check(obj)
                except ValueError as e:
                    raise CheckpointError(f"{p}: {e}") from e
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if p != path:
            why = problems[0] if problems else f"{path}: missing"
            warnings.warn(f"checkpoint {why}; loaded the previous checkpoint {p} instead",
                          CheckpointFallbackWarning, stacklevel=2)
        return obj
    if len(problems) == 1 and existing == [path]:
        hint = (f"no previous copy ({previous_path(path).name}) to fall back to" if fallback
                else "not falling back to a previous copy")
    else:
        hint = "the previous copy is damaged too"
    advice = ("restore a good copy, or delete it and run again without --resume to start afresh" if resumable
              else f"restore a good copy of {path}")
    raise CheckpointError(f"damaged checkpoint {'; '.join(problems)}; {hint}: {advice}")


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
