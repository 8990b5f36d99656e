"""The argument checks every ``sample`` and law of :mod:`kacnum.processes` starts with.

Times become floating tensors in ``[0, ∞)``; a ``shape`` is an int ``n`` (meaning ``(n,)``, as for
``torch.rand``) or a sequence of non-negative ints; a dtype is float32 or float64. Each bad value raises
one ``ValueError`` naming the argument.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Optional, Tuple, Union

import torch

from kacnum.core.checks import as_tensor, check_finite, check_positive, check_times

__all__ = ["TimeLike", "RateAndSpeed", "time_tensor", "float_tensor", "sample_shape", "sample_arguments"]

TimeLike = Union[float, int, torch.Tensor]


def time_tensor(t: TimeLike, like: Optional[torch.Tensor] = None, name: str = "t") -> torch.Tensor:
    """``t`` as a floating tensor of times in ``[0, ∞)`` (dtype and device of ``like`` when given).

    Without ``like`` a Python number becomes float64, so that the scalar summaries of a law (atom mass,
    variance) lose no digits; a tensor keeps its floating dtype (an integer one becomes the default dtype).
    """
    if like is not None:
        tt = as_tensor(t, like=like)
    else:
        tt = as_tensor(t, dtype=None if torch.is_tensor(t) else torch.float64)
    if not tt.is_floating_point():
        tt = tt.to(torch.get_default_dtype())
    check_times(name, tt, 0.0, math.inf)
    return tt


def float_tensor(name: str, x) -> torch.Tensor:
    """``x`` as a finite floating tensor (a number or an integer tensor becomes the default dtype)."""
    if not torch.is_tensor(x):
        x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    check_finite(name, x)
    return x


def _size(value) -> Optional[int]:
    """``value`` as an ``int`` size if it is an integer (a bool is not), else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def sample_shape(shape) -> Tuple[int, ...]:
    """The ``shape`` argument of ``sample`` as a tuple of sizes: an int ``n`` means ``(n,)`` (as for ``torch.rand``).

    Raises ``ValueError`` unless ``shape`` is an int or a sequence of ints, all ``≥ 0``.
    """
    single = _size(shape)
    if single is not None:
        sizes = (single,)
    else:
        iterable = isinstance(shape, Iterable) and not isinstance(shape, (str, bytes))
        sizes = tuple(_size(s) for s in shape) if iterable else (None,)
        if None in sizes:
            raise ValueError(f"shape must be an int or a sequence of ints, got {shape!r}")
    if any(s < 0 for s in sizes):
        raise ValueError(f"shape must hold non-negative sizes, got {sizes}")
    return sizes


def sample_arguments(t: TimeLike, shape, dtype: Optional[torch.dtype], device) -> Tuple[torch.Tensor, Tuple[int, ...], torch.dtype, torch.device]:
    """The checks every ``sample`` of :mod:`kacnum.processes` starts with: ``(t, shape, dtype, device)``.

    ``shape`` through :func:`sample_shape`; ``dtype`` float32 or float64, by default ``t``'s if it is a
    floating tensor, else the default dtype; ``device`` by default ``t``'s if it is a tensor, else the CPU;
    ``t`` as a tensor of that dtype and device (:func:`time_tensor`). Whether ``t`` broadcasts to ``shape``
    is left to the caller.
    """
    shape = sample_shape(shape)
    if torch.is_tensor(t):
        dtype = dtype or (t.dtype if t.is_floating_point() else torch.get_default_dtype())
        device = device if device is not None else t.device
    dtype = dtype or torch.get_default_dtype()
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    return time_tensor(t, like=torch.empty((), dtype=dtype, device=device)), shape, dtype, device


class RateAndSpeed:
    """The two parameters every noise process has: the rate ``a > 0`` of its events (named by ``rate_name`` in
    errors) and its speed ``c > 0``, checked once here; ``repr`` shows both."""

    rate_name = "a (rate)"

    def __init__(self, a: float = 9.0, c: float = 3.0):
        self.a = check_positive(self.rate_name, a)
        self.c = check_positive("c (speed)", c)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a:g}, c={self.c:g})"

    _time = staticmethod(time_tensor)
