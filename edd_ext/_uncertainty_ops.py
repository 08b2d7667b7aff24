"""Fake (meta) kernels of the student-uncertainty ops (schemas in ``csrc/edd_ext.cpp``), so that they trace
under ``torch.compile(fullgraph=True)`` and pass ``torch.library.opcheck``. The measures are not
differentiable: the ops have no autograd formula, and the public functions detach their inputs."""
from __future__ import annotations

import torch

from . import _ops

NUM_MEASURES = _ops.NUM_MEASURES
NUM_DIRICHLET_MEASURES = 7  # the five measures, precision, differential_entropy

if _ops.has_extension():

    @torch.library.register_fake("edd_ext::dirichlet_uncertainty")
    def _dirichlet_uncertainty_fake(student_logits, model_offset):
        lead = student_logits.shape[:-1]
        return student_logits.new_empty((*lead, NUM_DIRICHLET_MEASURES), dtype=torch.float64)

    @torch.library.register_fake("edd_ext::logit_distribution_uncertainty")
    def _logit_distribution_uncertainty_fake(loc, log_scale, family, num_samples, seed, temperature, min_scale):
        lead = loc.shape[:-1]
        dtype = torch.float64 if loc.dtype == torch.float64 else torch.float32
        return loc.new_empty((*lead, NUM_MEASURES), dtype=dtype)

    @torch.library.register_fake("edd_ext_testing::philox4x32")
    def _philox4x32_fake(counters, seed):
        return torch.empty_like(counters)

    @torch.library.register_fake("edd_ext_testing::philox_noise")
    def _philox_noise_fake(positions, seed, num_samples, vocab, family):
        return positions.new_empty((positions.shape[0], num_samples, vocab), dtype=torch.float32)
