"""Fake kernels of the test-only ops (the host/device special functions and the Philox generator, exposed so
that the tests can check the shared header math through the CPU and CUDA builds); not public API."""
from __future__ import annotations

import torch

from . import has_extension

if has_extension():

    @torch.library.register_fake("edd_ext_testing::special_function")
    def _special_function_fake(x, name):
        return torch.empty_like(x)

    @torch.library.register_fake("edd_ext_testing::philox4x32")
    def _philox4x32_fake(counters, seed):
        return torch.empty_like(counters)

    @torch.library.register_fake("edd_ext_testing::philox_noise")
    def _philox_noise_fake(positions, seed, num_samples, vocab, family):
        return positions.new_empty((positions.shape[0], num_samples, vocab), dtype=torch.float32)
