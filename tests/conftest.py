"""Shared fixtures: a device/dtype matrix in the POT style (CPU always, CUDA when present), and
``cd``: experiments/cifar_distill.py loaded as a module."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]
# tests/ is not a package: make its helper module (tests/helpers.py) importable under any --import-mode
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

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


@pytest.fixture(scope="module")
def cd():
    """experiments/cifar_distill.py as a module (loaded afresh for each test module)."""
    spec = importlib.util.spec_from_file_location("cifar_distill", ROOT / "experiments" / "cifar_distill.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cifar_distill"] = mod  # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod
