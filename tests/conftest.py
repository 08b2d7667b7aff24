"""Shared fixtures: devices (CUDA cases skip without a GPU or a CUDA build), dtype tolerances, hypothesis
profiles ("ci" is derandomised so that CI runs are repeatable; HYPOTHESIS_PROFILE=dev explores more)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import edd_ext

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CUDA_OK = torch.cuda.is_available() and edd_ext.cuda_built()
CUDA_SKIP_REASON = "needs a CUDA device and an extension built with CUDA kernels"

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not CUDA_OK, reason=CUDA_SKIP_REASON)])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
