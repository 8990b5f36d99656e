"""Shared fixtures: a device/dtype matrix in the POT style (CPU always, CUDA when present)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Two cores: keep intra-op threads small so that test workers do not oversubscribe.
torch.set_num_threads(int(os.environ.get("KACNUM_TEST_THREADS", "1")))

settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param
