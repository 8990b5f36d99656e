"""kacnum: Kac flows, the telegrapher equation and DistillKac few-step generation.

The core objects are importable from the package root (``kacnum.KacProcess(a, c)``,
``kacnum.KacPath(...)``, ``kacnum.integrate(...)``); every submodule (``kacnum.telegrapher``,
``kacnum.transport``, ``kacnum.train``, ...) is loaded on first access.

The noise processes form one family (:mod:`kacnum.processes`): ``KacProcess`` (``kacnum.kac``, the
coordinate-wise Kac process) and ``PlanarFlight`` (``kacnum.flight``, the isotropic planar random flight),
both behind ``kacnum.paths.ProcessPath`` (``KacPath``, ``FlightPath``).
"""
import importlib

from kacnum.guidance import GuidedField
from kacnum.flight import PlanarFlight
from kacnum.kac import KacPaths, KacProcess
from kacnum.losses import EpsilonLoss, FlowMatchingLoss
from kacnum.paths import FlightPath, GaussianPath, KacPath, PathSample, ProbabilityPath, ProcessPath, VPPath
from kacnum.solvers import SolveResult, integrate

__version__ = "0.1.0"

__all__ = [
    "KacProcess", "KacPaths", "KacPath", "PlanarFlight", "FlightPath", "ProcessPath", "GaussianPath", "VPPath",
    "PathSample", "ProbabilityPath",
    "FlowMatchingLoss", "EpsilonLoss", "GuidedField", "integrate", "SolveResult",
]

_SUBMODULES = {
    "kac", "telegrapher", "transport", "paths", "losses", "solvers", "guidance", "distill", "progressive", "reflow",
    "stability", "claims", "models", "train", "data", "metrics", "pipeline", "checkpoint", "toy_data",
    "flight", "processes",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kacnum.{name}")
    raise AttributeError(f"module 'kacnum' has no attribute {name!r}")
