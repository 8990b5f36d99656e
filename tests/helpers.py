"""Small helpers shared by the tests (importable as ``helpers``: tests/conftest.py puts tests/ on sys.path)."""
from kacnum.images.metrics import FeatureExtractor


class IdentityExtractor(FeatureExtractor):
    """Features = the flattened pixels of 1×2×2 toy images (an extractor whose FID we can compute
    independently)."""

    name = "identity"
    feature_dim = 4

    @property
    def protocol(self):
        return {"name": self.name, "layer": "pixels", "feature_dim": 4, "resize": "none"}

    def _features(self, x):
        return x.reshape(x.shape[0], -1)
