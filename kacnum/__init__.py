"""kacnum: Kac flows, the telegrapher equation and DistillKac few-step generation.

The package is built in layers, each using only the ones below it::

    kacnum.core        ground floor: input checks, checkpoints, progress, seeds, command-line conventions
    kacnum.processes   the Kac process and the planar flight: exact laws, samplers, velocities; the PDE
    kacnum.flows       probability paths and their exact fields, losses, time grids, ODE solvers, guidance
    kacnum.students    few-step students: DistillKac (staged, one-shot), progressive distillation, reflow
    kacnum.theory      the measurements behind the papers' claims (Theorem 8, finite speed, ...), transport
    kacnum.images      networks, data, the training engine, metrics, the DistillKac image pipeline

The core objects are importable from the root (``kacnum.KacProcess(a, c)``, ``kacnum.KacPath(...)``,
``kacnum.integrate(...)``). Subpackages load on first access (``kacnum.theory``). The module names of the
flat layout before version 0.2 (``kacnum.kac``, ``kacnum.paths``, ``kacnum.train``, ...) still import, as
aliases of their new homes (:mod:`kacnum.core.legacy`).
"""
import importlib

from kacnum.core import legacy as _legacy
from kacnum.flows.guidance import GuidedField
from kacnum.flows.losses import EpsilonLoss, FlowMatchingLoss
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, PathSample, ProbabilityPath, ProcessPath, VPPath
from kacnum.flows.solvers import SolveResult, integrate
from kacnum.processes.flight import PlanarFlight
from kacnum.processes.kac import KacPaths, KacProcess

__version__ = "0.2.0"

__all__ = [
    "KacProcess", "KacPaths", "KacPath", "PlanarFlight", "FlightPath", "ProcessPath", "GaussianPath", "VPPath",
    "PathSample", "ProbabilityPath",
    "FlowMatchingLoss", "EpsilonLoss", "GuidedField", "integrate", "SolveResult",
]

#: the layers, loaded on first access (``kacnum.images``)
LAYERS = ("core", "processes", "flows", "students", "theory", "images")

_legacy.install()


def __getattr__(name):
    if name in LAYERS or name in _legacy.MOVED:
        return importlib.import_module(f"kacnum.{name}")
    raise AttributeError(f"module 'kacnum' has no attribute {name!r}")
