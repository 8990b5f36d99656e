"""Probability paths behind one interface: Kac flow, Gaussian flow matching, VP diffusion (docs/mathematics.md §4, §9).

Time runs from the data at ``t = 0`` to the latent at ``t = T``; samplers integrate ``dx/dt`` from
``T`` down to ``t_min``. A path has one job: :meth:`ProbabilityPath.sample` turns data ``x0`` and times
``t`` into a :class:`PathSample` holding the point ``x_t`` and its conditional target velocity
``u_t``. Losses (``kacnum.flows.losses``) see only that sample and the model output; solvers
(``kacnum.flows.solvers``) see only a velocity field.

Paths
-----
* :class:`ProcessPath`: ``X_t = f(t) X0 + N_{g(t)}`` for a finite-speed noise process ``N`` of independent
  blocks (:mod:`kacnum.processes`), parameterised by the process; target ``u_t = f'(t) x0 + g'(t) u_N(g(t), N)``
  from the noise draw and its atom mask (docs/mathematics.md §3).
* :class:`KacPath`: ``N`` a product of independent 1D Kac processes (switching rate ``a``, speed ``c``),
  the coordinate-wise Kac flow (docs/mathematics.md §4).
* :class:`FlightPath`: ``N`` the isotropic planar random flight on pairs of coordinates (docs/mathematics.md §14).
* :class:`GaussianPath`: rectified flow ``x_t = (1 - t/T) x0 + (t/T) ε``, target ``(ε - x0)/T``.
* :class:`VPPath`: VP diffusion ``x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε`` trained by ε-prediction.

Every path also gives the exact marginal velocity of a finite weighted data set, or of a Gaussian mixture
around it (:meth:`ProbabilityPath.exact_velocity`, docs/mathematics.md §4, §13): a network-free teacher and the
ground truth of the theory experiments, computed in float64 in log space.

Modules
-------
``base`` (:class:`PathSample`, :class:`ProbabilityPath`, input checks), ``gaussian`` (the Gaussian-noise
paths), ``kernels`` (per-block densities, velocities and Gaussian-mixture quadratures of the Kac and flight
noise), ``fields`` (the exact fields of a process path), ``process`` (:class:`ProcessPath` and its two cases).
"""
# the private names are re-exported for the code and tests that import them from here
from kacnum.flows.paths.base import (_CPU_CHUNK, _CUDA_CHUNK, PathSample, ProbabilityPath, TimeLike, _check_data,
                                     _check_data_sigma, _per_row)
from kacnum.flows.paths.fields import _gm_pass, _kac_gm_pass, _kac_velocity_with_atoms, _velocity_with_atoms
from kacnum.flows.paths.gaussian import GaussianPath, VPPath, gaussian_posterior_mean
from kacnum.flows.paths.kernels import (GM_DEGENERATE, GM_NODES, GM_NODES_FLIGHT, GM_WIDTH, _BesselTable,
                                        _FlightKernel, _flight_logp_velocity, _gauss_legendre_nodes, _KacKernel,
                                        _kac_logp_velocity, _pairs)
from kacnum.flows.paths.process import KAC_F_SCHEDULES, KAC_G_SCHEDULES, FlightPath, KacPath, ProcessPath

__all__ = [
    "PathSample",
    "ProbabilityPath",
    "ProcessPath",
    "KacPath",
    "FlightPath",
    "GaussianPath",
    "VPPath",
    "KAC_F_SCHEDULES",
    "KAC_G_SCHEDULES",
]
