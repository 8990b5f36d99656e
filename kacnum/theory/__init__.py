"""Layer 4: the measurements behind the papers' claims.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``claims``         finite speed, bounded kinetic energy, Wasserstein-Lipschitz, diffusion limit, guidance
``stability``      endpoint-to-path stability of distilled students (Theorem 8) and its O(1/M) rate
``transport``      Wasserstein distances (1D closed form, empirical OT through POT)
``toy_data``       the 2D toy data sets of the distillation experiments
=================  =====================================================================================

The claims and their derived bounds are in ``docs/mathematics.md`` (section 8).
"""

from kacnum.core import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__)
