"""Layer 2: probability paths over the noise processes, their exact fields, losses, solvers and guidance.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``paths``          ``X_t = f(t) X0 + N_{g(t)}`` (Kac, planar flight), Gaussian and VP paths; conditional
                   targets and the exact marginal fields of finite and Gaussian-mixture data
``losses``         conditional flow matching and ε/v-prediction losses, time sampling, preconditioning
``grids``          decreasing time grids (uniform, power, uniform in the Kac atom mass)
``solvers``        fixed-grid ODE solvers (Euler, Heun, midpoint, RK4, AB-2) counting evaluations; DDIM
``guidance``       classifier-free guidance in velocity space
=================  =====================================================================================

The mathematics is derived in ``docs/mathematics.md`` (sections 4-6, 13).
"""
from kacnum.flows.guidance import GuidedField
from kacnum.flows.losses import EpsilonLoss, FlowMatchingLoss
from kacnum.flows.paths import FlightPath, GaussianPath, KacPath, PathSample, ProbabilityPath, ProcessPath, VPPath
from kacnum.flows.solvers import SolveResult, integrate

__all__ = ["ProbabilityPath", "ProcessPath", "KacPath", "FlightPath", "GaussianPath", "VPPath", "PathSample",
           "FlowMatchingLoss", "EpsilonLoss", "GuidedField", "integrate", "SolveResult"]

from kacnum.core import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__)
