"""Input validation shared by every module.

Every public function checks its inputs with these helpers so that bad input raises a
``ValueError`` that names the parameter and the allowed range, instead of producing NaN
somewhere downstream.
"""
from __future__ import annotations

import math
from typing import Union

import torch

Number = Union[int, float]


def check_positive(name: str, value: Number) -> float:
    """Return ``float(value)`` if it is a finite number > 0, else raise ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(name: str, value: Number) -> float:
    """Return ``float(value)`` if it is a finite number >= 0, else raise ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_in_range(name: str, value: Number, low: float, high: float) -> float:
    """Return ``float(value)`` if ``low <= value <= high``, else raise ``ValueError``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}") from None
    if not math.isfinite(v) or v < low or v > high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return v


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise ``ValueError`` if tensor ``x`` holds NaN or inf."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf); found non-finite values")
    return x


def check_times(name: str, t: torch.Tensor, low: float = 0.0, high: float = math.inf) -> torch.Tensor:
    """Raise ``ValueError`` unless every entry of ``t`` is finite and in ``[low, high]``."""
    check_finite(name, t)
    if t.numel() and (bool((t < low).any()) or bool((t > high).any())):
        lo, hi = float(t.min()), float(t.max())
        raise ValueError(f"{name} must lie in [{low}, {high}]; got values in [{lo:.6g}, {hi:.6g}]")
    return t


def check_shape(name: str, x: torch.Tensor, shape: tuple) -> torch.Tensor:
    """Raise ``ValueError`` unless ``x.shape`` matches ``shape`` (``None`` entries are free)."""
    if x.dim() != len(shape) or any(s is not None and s != xs for s, xs in zip(shape, x.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    return x


def as_tensor(t, like: torch.Tensor | None = None, dtype=None, device=None) -> torch.Tensor:
    """Convert a float or tensor to a tensor with the dtype/device of ``like`` (if given)."""
    if like is not None:
        dtype = dtype or like.dtype
        device = device or like.device
    if torch.is_tensor(t):
        return t.to(dtype=dtype or t.dtype, device=device or t.device)
    return torch.as_tensor(t, dtype=dtype or torch.get_default_dtype(), device=device)


def check_int(name: str, value, minimum: int = 0) -> int:
    """Return ``value`` if it is an ``int`` (not a bool) ``>= minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def per_stage_counts(name: str, value, n_stages: int) -> tuple:
    """An int (the same for every stage) or one int >= 1 per stage, as a tuple of ``n_stages`` ints."""
    if isinstance(value, (list, tuple)):
        counts = tuple(value)
        if len(counts) != n_stages:
            raise ValueError(f"{name} must be an int or hold one count per stage ({n_stages}), got {len(counts)}")
    else:
        counts = (value,) * n_stages
    for v in counts:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must hold integers >= 1, got {value!r}")
    return counts


def check_finite_number(name: str, value) -> float:
    """Return ``float(value)`` if it is a finite real number (not a bool), else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
