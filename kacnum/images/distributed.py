"""Processes and devices: a single process, or one rank of a ``torchrun`` job.

:func:`setup_distributed` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` from the environment and joins
the process group (NCCL on CUDA, gloo on the CPU); :class:`DistInfo` says which rank this process is
and on which device it runs. :func:`resolve_device` turns ``None`` / ``"auto"`` into CUDA when present.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Union

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "resolve_device", "setup_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """``rank``, ``world_size``, ``local_rank``, the ``device`` of this process, ``initialized_here``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``None``/``"auto"``: CUDA if available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_distributed(device: Union[str, torch.device, None] = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group described by the torchrun environment, if any.

    With ``WORLD_SIZE > 1`` in the environment (set by ``torchrun``, or by hand together with
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) this initialises
    ``torch.distributed`` (NCCL on CUDA, gloo on the CPU) unless already done, and on CUDA uses
    ``cuda:LOCAL_RANK``. Without it: a single process on ``resolve_device(device)``.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistInfo(device=dev)
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    here = False
    if not dist.is_initialized():
        from datetime import timedelta

        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                timeout=timedelta(seconds=timeout_s))
        here = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=dev, initialized_here=here)

