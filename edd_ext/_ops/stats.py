"""Ops ``edd_ext::ensemble_stats`` and ``edd_ext::ensemble_uncertainty`` (SPEC section 1): call wrappers and
fake kernels. The statistics are constants of the training graph (no autograd formula; inputs are detached)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..types import EnsembleStats, Uncertainty
from . import NUM_MEASURES, has_extension, stats_dtype


def ensemble_stats(teacher_logits: Tensor, *, temperature: float, smoothing: float) -> EnsembleStats:
    """``[*, M, V]`` -> :class:`EnsembleStats` (``[*, V]`` rows and ``[*]`` measures)."""
    mean_probs, mean_log_probs, measures = torch.ops.edd_ext.ensemble_stats(
        teacher_logits.detach(), float(temperature), float(smoothing)
    )
    return EnsembleStats(mean_probs, mean_log_probs, *measures.unbind(-1), num_members=teacher_logits.shape[-2])


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float, smoothing: float) -> Uncertainty:
    """``[*, M, V]`` -> the five measures ``[*]``, without writing the ``[*, V]`` rows."""
    measures = torch.ops.edd_ext.ensemble_uncertainty(teacher_logits.detach(), float(temperature), float(smoothing))
    return Uncertainty(*measures.unbind(-1))


if has_extension():

    @torch.library.register_fake("edd_ext::ensemble_stats")
    def _ensemble_stats_fake(teacher_logits, temperature, smoothing):
        lead, vocab = teacher_logits.shape[:-2], teacher_logits.shape[-1]
        dtype = stats_dtype(teacher_logits)
        rows = teacher_logits.new_empty((*lead, vocab), dtype=dtype)
        return rows, torch.empty_like(rows), teacher_logits.new_empty((*lead, NUM_MEASURES), dtype=dtype)

    @torch.library.register_fake("edd_ext::ensemble_uncertainty")
    def _ensemble_uncertainty_fake(teacher_logits, temperature, smoothing):
        lead = teacher_logits.shape[:-2]
        return teacher_logits.new_empty((*lead, NUM_MEASURES), dtype=stats_dtype(teacher_logits))
