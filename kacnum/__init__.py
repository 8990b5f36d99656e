"""kacnum: Kac flows, the telegrapher equation and DistillKac few-step generation.

The core objects are importable from the package root (``kacnum.KacProcess(a, c)``,
``kacnum.KacPath(...)``, ``kacnum.integrate(...)``); every submodule (``kacnum.telegrapher``,
``kacnum.transport``, ``kacnum.train``, ...) is loaded on first access.
"""
import importlib

from kacnum.guidance import GuidedField
from kacnum.kac import KacPaths, KacProcess
from kacnum.losses import EpsilonLoss, FlowMatchingLoss
from kacnum.paths import GaussianPath, KacPath, PathSample, ProbabilityPath, VPPath
from kacnum.solvers import SolveResult, integrate

__version__ = "0.1.0"

__all__ = [
    "KacProcess", "KacPaths", "KacPath", "GaussianPath", "VPPath", "PathSample", "ProbabilityPath",
    "FlowMatchingLoss", "EpsilonLoss", "GuidedField", "integrate", "SolveResult",
]

_SUBMODULES = {
    "kac", "telegrapher", "transport", "paths", "losses", "solvers", "guidance", "distill", "progressive",
    "stability", "claims", "models", "train", "data", "metrics", "pipeline", "checkpoint", "toy_data",
    "flight",
}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"kacnum.{name}")
    raise AttributeError(f"module 'kacnum' has no attribute {name!r}")
