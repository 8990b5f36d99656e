"""Seeds derived from integers, so that every random draw is reproducible and independent of batching.

``derive_seed(seed, rank, step)`` mixes its arguments with SplitMix64: nearby inputs give unrelated
63-bit seeds, so one ``torch.Generator`` per (run, process, step, batch) can be seeded without overlap.
"""
from __future__ import annotations

__all__ = ["derive_seed"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 mixing), e.g. ``derive_seed(seed, rank, step)``."""
    s = 0x243F6A8885A308D3
    for p in parts:
        s = (s + 0x9E3779B97F4A7C15 + (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        s = z ^ (z >> 31)
    return s & 0x7FFFFFFFFFFFFFFF
