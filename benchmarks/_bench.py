"""What the benchmark scripts share: their common workload, a timer and the JSON writer.

The workload of the sampler, velocity and flight benchmarks is one training batch of the image models:
``rows × cols = 256 × 3072`` coordinates (256 images of 3×32×32), the Kac noise with ``a = 9``, ``c = 3``
and one time ``t ~ U(0, 1)`` per row (:class:`ImageBatch`; a benchmark's configuration extends it).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class ImageBatch:
    """A batch of ``rows`` images of ``cols`` coordinates each, Kac noise of switching rate ``a`` and speed ``c``."""

    rows: int = 256
    cols: int = 3072
    a: float = 9.0
    c: float = 3.0


def min_time(fn: Callable[[], object], repeats: int, device: Optional[torch.device] = None, warmup: int = 2) -> float:
    """The smallest wall time (seconds) of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls.

    On a CUDA ``device`` every timed call is followed by a synchronisation, so that it measures the work
    and not the launch. The minimum, not the mean: on a shared machine the noise only adds time.
    """
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def write_json(path: str, obj: dict) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (a temporary file in the same folder, then
    ``os.replace``), creating the folder if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
