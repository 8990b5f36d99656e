"""Layer 5: image generation: networks, data, the training engine, metrics and the DistillKac pipeline.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``models``         the UNet (DDPM++-style) and MLP velocity networks, named presets
``data``           MNIST, CIFAR-10, CelebA-64 and image-folder loaders (local files; clear errors)
``distributed``    the process group and devices (single process or ``torchrun``)
``train``          the teacher training engine: configuration, steps, EMA, checkpoints, resume
``sampling``       sampling a trained network (guided solves in batches), image grids
``metrics``        feature networks, FID/KID with intervals, sample files, result tables
``pipeline``       the staged pipeline: teacher -> sample -> distil -> baselines -> evaluation
=================  =====================================================================================
"""

from kacnum.core import lazy_submodules as _lazy

__getattr__, __dir__ = _lazy(__name__, __path__)
