"""The noise processes of the Kac flows: one family behind one small interface.

What it holds: the interface :class:`NoiseProcess`, the registry ``PROCESSES`` and :func:`make_process`.
The laws are derived in docs/mathematics.md §1–3 (Kac process) and §14 (planar random flight).

A Kac-flow path is ``X_t = f(t) X0 + N_{g(t)}`` (:class:`kacnum.flows.paths.ProcessPath`), where ``N`` is a
finite-speed random process started at 0 whose ``d`` coordinates fall into independent *blocks* of
``block_size`` coordinates, all with the same law:

================  ==========  ===============================================  ==========================
process           block size  law of a block at time t                         path
================  ==========  ===============================================  ==========================
``KacProcess``    1           the 1D Kac law (telegrapher equation): atoms     :class:`~kacnum.flows.paths.KacPath`
(``kacnum.processes.kac``)              ``e^{-at}/2`` at ``±ct``, density on ``|y|<ct``  (coordinate-wise Kac flow)
``PlanarFlight``  2           the isotropic planar random flight: a circle     :class:`~kacnum.flows.paths.FlightPath`
(``kacnum.processes.flight``)           atom ``e^{-λt}`` on ``|y| = ct``, density on     (isotropic / block-isotropic
                              the open disc ``|y| < ct``                       in even ``d``)
================  ==========  ===============================================  ==========================

Both move at speed ``c`` (``|dN/dt| = c`` per block: in the max norm for Kac, the Euclidean norm for the
flight), so ``supp N_t`` is the product of the blocks' balls of radius ``ct`` in the block norm
(:meth:`block_norm`): the cube ``[-ct, ct]^d`` for Kac, the product of discs for the flight.

The interface (:class:`NoiseProcess`) is what :class:`~kacnum.flows.paths.ProcessPath` uses:

* ``a``, ``c``: rate and speed; ``block_size``: 1 or 2;
* ``sample(t, shape, generator=None, return_atoms=False, dtype=None, device=None)``: exact draws, the
  atom mask (``True`` where the block has had no event: it sits on the boundary of its ball, equal within
  a block) when asked; ``t`` broadcasts to ``shape`` (``(B, 1)``: one time per row);
* ``velocity(t, y, atom_mask=None)``: the conditional velocity ``E[dN/dt | N_t = y]`` per block, the atom
  velocity (speed ``c``, outward) where the mask says so;
* ``block_log_density(t, y)``: ``y: (..., block_size) -> (...)``, the log density of the continuous part
  of one block, ``-inf`` outside the open ball;
* ``block_norm(y)``: ``(..., block_size) -> (...)``; ``atom_mass(t)``: the mass of one block's atom.

Fast paths stay with each process: the Kac path evaluates its Bessel terms through piecewise-polynomial
tables and the exact finite-data fields are chunked the same way for both (``kacnum.flows.paths``).
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, Union, runtime_checkable

import torch

from kacnum.processes.flight import PlanarFlight
from kacnum.processes.kac import KacProcess

__all__ = ["NoiseProcess", "KacProcess", "PlanarFlight", "PROCESSES", "make_process"]

#: process name -> class (the names of ``kacnum.images.train.PATH_KINDS`` for the Kac-flow paths)
PROCESSES = {"kac": KacProcess, "flight": PlanarFlight}


@runtime_checkable
class NoiseProcess(Protocol):
    """What :class:`kacnum.flows.paths.ProcessPath` needs of its noise process (see the module docstring)."""

    a: float
    c: float
    block_size: int

    def sample(self, t, shape: Sequence[int], generator: Optional[torch.Generator] = None,
               return_atoms: bool = False, dtype: Optional[torch.dtype] = None,
               device: Optional[Union[str, torch.device]] = None):
        ...

    def velocity(self, t, y: torch.Tensor, atom_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        ...

    def block_log_density(self, t, y: torch.Tensor) -> torch.Tensor:
        ...

    def block_norm(self, y: torch.Tensor) -> torch.Tensor:
        ...

    def atom_mass(self, t) -> torch.Tensor:
        ...


def make_process(kind: str, a: float = 9.0, c: float = 3.0) -> NoiseProcess:
    """``KacProcess(a, c)`` for ``"kac"``, ``PlanarFlight(a, c)`` for ``"flight"``."""
    if kind not in PROCESSES:
        raise ValueError(f"kind must be one of {tuple(PROCESSES)}, got {kind!r}")
    return PROCESSES[kind](a, c)
