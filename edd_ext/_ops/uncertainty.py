"""Ops ``edd_ext::dirichlet_uncertainty`` and ``edd_ext::logit_distribution_uncertainty`` (SPEC section 3):
call wrappers and fake kernels. The measures are not differentiable: no autograd formula, inputs detached."""
from __future__ import annotations

import torch
from torch import Tensor

from ..types import DirichletUncertainty, Uncertainty
from . import NUM_MEASURES, has_extension, stats_dtype

NUM_DIRICHLET_MEASURES = 7  # the five measures, precision, differential_entropy


def dirichlet_uncertainty(student_logits: Tensor, model_offset: float) -> DirichletUncertainty:
    """``[*, V]`` -> :class:`DirichletUncertainty`, every field ``[*]`` float64."""
    out = torch.ops.edd_ext.dirichlet_uncertainty(student_logits.detach(), float(model_offset))
    return DirichletUncertainty(*out.unbind(-1))


def seed_word(seed: int) -> int:
    """``seed`` mod 2^64 as the signed int64 the op schema carries."""
    seed = int(seed) % 2**64
    return seed - 2**64 if seed >= 2**63 else seed


def logit_distribution_uncertainty(loc: Tensor, log_scale: Tensor, family: str, num_samples: int, seed: int,
                                   temperature: float, min_scale: float) -> Uncertainty:
    """``[*, V]`` location and log-scale -> the five Monte-Carlo measures ``[*]``."""
    out = torch.ops.edd_ext.logit_distribution_uncertainty(
        loc.detach(), log_scale.detach(), family, int(num_samples), seed_word(seed), float(temperature),
        float(min_scale),
    )
    return Uncertainty(*out.unbind(-1))


if has_extension():

    @torch.library.register_fake("edd_ext::dirichlet_uncertainty")
    def _dirichlet_uncertainty_fake(student_logits, model_offset):
        lead = student_logits.shape[:-1]
        return student_logits.new_empty((*lead, NUM_DIRICHLET_MEASURES), dtype=torch.float64)

    @torch.library.register_fake("edd_ext::logit_distribution_uncertainty")
    def _logit_distribution_uncertainty_fake(loc, log_scale, family, num_samples, seed, temperature, min_scale):
        lead = loc.shape[:-1]
        return loc.new_empty((*lead, NUM_MEASURES), dtype=stats_dtype(loc))
