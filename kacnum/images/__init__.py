"""Layer 5: image generation: networks, data, the training engine, metrics and the DistillKac pipeline.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``models``         the UNet (DDPM++-style) and MLP velocity networks, named presets
``data``           MNIST, CIFAR-10, CelebA-64 and image-folder loaders (local files; clear errors)
``train``          the teacher training engine (single process or ``torchrun``), sampling, image grids
``metrics``        feature networks, FID/KID with intervals, sample files, result tables
``pipeline``       the staged pipeline: teacher -> sample -> distil -> baselines -> evaluation
=================  =====================================================================================
"""
