"""Layer 3: few-step students of a flow, trained by one loop with verified, resumable checkpoints.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``teachers``       one-step student maps, teacher maps over an interval (AB-2 sub-steps), the endpoint loss
``loop``           the one training loop of every student: optimiser, schedule, EMA, progress, checkpoints,
                   verified resume
``distill``        DistillKac endpoint distillation, staged (100 -> 20 -> 4 -> 2 -> 1) and one-shot
``progressive``    progressive distillation of a VP (DDIM) teacher, halving the steps each round
``reflow``         reflow (2-rectified flow) of a guided teacher on its own couplings
=================  =====================================================================================

The endpoint objective and its stability bound are derived in ``docs/mathematics.md`` (sections 7-8).
"""

from kacnum.core import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__)
