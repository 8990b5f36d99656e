"""Layer 1: the noise processes of the Kac flows and their exact laws.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``kac``            the 1D Kac process (telegrapher equation): exact law, O(1) sampler, conditional velocity
``flight``         the planar random flight (isotropic Kac process in 2D): exact law, sampler, velocity
``events``         the event-driven path simulation both processes use for Monte Carlo references
``arguments``      the argument checks of the samplers and laws (times, shapes, dtypes)
``family``         the interface the paths use (:class:`NoiseProcess`), ``make_process``
``telegrapher``    finite-volume solvers of the telegrapher PDE (1D, 2D) and its exact solutions
=================  =====================================================================================

The mathematics is derived in ``docs/mathematics.md`` (sections 1-3 and 14).
"""
from kacnum.processes.family import PROCESSES, NoiseProcess, make_process
from kacnum.processes.flight import FlightPaths, PlanarFlight
from kacnum.processes.kac import KacPaths, KacProcess

__all__ = ["NoiseProcess", "KacProcess", "KacPaths", "PlanarFlight", "FlightPaths", "PROCESSES", "make_process"]

from kacnum.core import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__)
