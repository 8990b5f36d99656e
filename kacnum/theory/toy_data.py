"""Two-dimensional toy data sets with class labels (the mixture component of each point).

Every generator draws only from the given ``torch.Generator`` (same seed, same data) and returns
``(x (n, 2), y (n,) long)``. Components are equally likely. Scales (about [-1, 1] to [-3, 3], the
range the Kac defaults ``c g(T) = 3`` cover):

==================  =======  ==================================================================
name                classes  layout
==================  =======  ==================================================================
eight_gaussians     8        centres ``radius (cos kπ/4, sin kπ/4)``, radius 2, std 0.1:
                             inside [-2.5, 2.5]²
checkerboard        8        uniform on the 8 dark squares of a 4x4 board of side 1 on [-2, 2]²
two_moons           2        two interleaved half circles of radius 1, centred and scaled by
                             1.5, Gaussian noise 0.05: about [-2.4, 2.4] x [-1.3, 1.3]
grid9               9        near-Dirac grid ``{-1.5, 0, 1.5}²`` with std 0.01; the exact support
                             is :func:`grid9_support` (for ``ProbabilityPath.exact_velocity``)
==================  =======  ==================================================================
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from kacnum.core.checks import check_nonnegative, check_positive

__all__ = [
    "TOY_DATASETS",
    "TOY_NUM_CLASSES",
    "eight_gaussians",
    "checkerboard",
    "two_moons",
    "grid9",
    "grid9_support",
    "make_toy",
]

TOY_DATASETS = ("eight_gaussians", "checkerboard", "two_moons", "grid9")
TOY_NUM_CLASSES = {"eight_gaussians": 8, "checkerboard": 8, "two_moons": 2, "grid9": 9}

Pair = Tuple[torch.Tensor, torch.Tensor]


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (number of points) must be an integer >= 1, got {n!r}")
    return n


def _labels(n: int, k: int, generator) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=generator)


def _out(x: torch.Tensor, y: torch.Tensor, dtype, device) -> Pair:
    return x.to(dtype=dtype or torch.get_default_dtype(), device=device), y.to(device=device)


def eight_gaussians(n: int, generator: Optional[torch.Generator] = None, radius: float = 2.0,
                    std: float = 0.1, dtype: Optional[torch.dtype] = None, device=None) -> Pair:
    """Mixture of 8 isotropic Gaussians ``N(radius (cos kπ/4, sin kπ/4), std² I)``; label ``k``."""
    n = _check_n(n)
    radius = check_positive("radius", radius)
    std = check_nonnegative("std", std)
    y = _labels(n, 8, generator)
    ang = y.to(torch.float64) * (math.pi / 4.0)
    centres = radius * torch.stack([torch.cos(ang), torch.sin(ang)], dim=1)
    x = centres + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(x, y, dtype, device)


def checkerboard(n: int, generator: Optional[torch.Generator] = None, size: float = 4.0,
                 dtype: Optional[torch.dtype] = None, device=None) -> Pair:
    """Uniform on the 8 dark squares of a 4x4 board covering ``[-size/2, size/2]²``.

    Square ``(i, j)`` (column i, row j from the bottom left, side ``size/4``) is dark when ``i + j`` is
    even; the label is its rank ``0..7`` in row-major order.
    """
    n = _check_n(n)
    size = check_positive("size", size)
    dark = [(i, j) for j in range(4) for i in range(4) if (i + j) % 2 == 0]
    cells = torch.tensor(dark, dtype=torch.float64)  # (8, 2)
    y = _labels(n, 8, generator)
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    side = size / 4.0
    x = (cells[y] + u) * side - size / 2.0
    return _out(x, y, dtype, device)


def two_moons(n: int, generator: Optional[torch.Generator] = None, noise: float = 0.05, scale: float = 1.5,
              dtype: Optional[torch.dtype] = None, device=None) -> Pair:
    """Two interleaved half circles (label 0 upper, 1 lower), centred, scaled, plus Gaussian noise.

    Upper: ``(cos θ, sin θ)``, lower: ``(1 - cos θ, 1/2 - sin θ)``, ``θ ~ U[0, π]``; then
    ``x = scale ((p - (1/2, 1/4)) + noise N(0, I))``.
    """
    n = _check_n(n)
    noise = check_nonnegative("noise", noise)
    scale = check_positive("scale", scale)
    y = _labels(n, 2, generator)
    theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    p = torch.where((y == 0)[:, None], upper, lower) - torch.tensor([0.5, 0.25], dtype=torch.float64)
    x = scale * (p + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64))
    return _out(x, y, dtype, device)


def grid9_support(spacing: float = 1.5, dtype: Optional[torch.dtype] = None, device=None) -> Pair:
    """The 9 grid points ``{-spacing, 0, spacing}²`` (label order, row-major from the bottom left)
    and their weights ``1/9``: the exact support of :func:`grid9` with ``std = 0``."""
    spacing = check_positive("spacing", spacing)
    v = torch.tensor([-spacing, 0.0, spacing], dtype=torch.float64)
    pts = torch.stack([v.repeat(3), v.repeat_interleave(3)], dim=1)  # (9, 2): x fastest
    w = torch.full((9,), 1.0 / 9.0, dtype=torch.float64)
    dt = dtype or torch.get_default_dtype()
    return pts.to(dtype=dt, device=device), w.to(dtype=dt, device=device)


def grid9(n: int, generator: Optional[torch.Generator] = None, spacing: float = 1.5, std: float = 0.01,
          dtype: Optional[torch.dtype] = None, device=None) -> Pair:
    """Near-Dirac mixture: ``grid9_support(spacing)[0][k] + std N(0, I)``, label ``k`` (``std = 0``: exact Diracs)."""
    n = _check_n(n)
    std = check_nonnegative("std", std)
    pts, _ = grid9_support(spacing, dtype=torch.float64)
    y = _labels(n, 9, generator)
    x = pts[y] + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return _out(x, y, dtype, device)


_MAKERS = {"eight_gaussians": eight_gaussians, "checkerboard": checkerboard, "two_moons": two_moons,
           "grid9": grid9}


def make_toy(name: str, n: int, generator: Optional[torch.Generator] = None, **kwargs) -> Pair:
    """``(x (n, 2), y (n,))`` from the data set ``name`` in :data:`TOY_DATASETS`; ``kwargs`` go to its
    generator (e.g. ``std``, ``dtype``, ``device``)."""
    if name not in _MAKERS:
        raise ValueError(f"name must be one of {TOY_DATASETS}, got {name!r}")
    return _MAKERS[name](n, generator, **kwargs)
