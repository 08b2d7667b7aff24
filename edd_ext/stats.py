"""Teacher-ensemble statistics (SPEC section 1)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _ops
from ._validation import check_teacher_logits
from .types import EnsembleStats, Uncertainty


def check_stats_options(temperature: float, smoothing: float) -> None:
    if not (float(temperature) > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if not (0.0 <= float(smoothing) < 1.0):
        raise ValueError(f"smoothing: expected a number in [0, 1), got {smoothing!r}")


def ensemble_stats(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> EnsembleStats:
    """Ensemble mean probabilities, mean log-probabilities and uncertainty measures in one fused pass.

    Args:
        teacher_logits: ``[*, M, V]`` logits of M ensemble members (any float dtype; treated as a constant).
        temperature: T, members' probabilities are softmax(u / T).
        smoothing: central smoothing eps, pi~ = (1 - eps) pi + eps / V, applied in log space.

    Returns:
        :class:`EnsembleStats` with ``mean_probs`` and ``mean_log_probs`` ``[*, V]`` and the measures
        ``total, data, mutual_information, epkl, rmi`` ``[*]``, float32 (float64 for float64 input).

    A teacher logit of -inf (vocabulary padding, a banned token) is a probability of exactly 0 and entropy terms
    use 0 ln 0 = 0: the measures are finite and equal their limits. Where some members give a class probability
    0 and others do not, ``mean_log_probs`` is -inf there and EPKL and RMI are +inf (an infinite KL between those
    members); TU, DU and MI stay finite.
    """
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    members = teacher_logits.shape[-2]
    if not _ops.use_extension():
        from . import reference

        return reference.ensemble_stats(teacher_logits, temperature=temperature, smoothing=smoothing)
    mean_probs, mean_log_probs, measures = torch.ops.edd_ext.ensemble_stats(
        teacher_logits.detach(), float(temperature), float(smoothing)
    )
    return EnsembleStats(mean_probs, mean_log_probs, *measures.unbind(-1), num_members=members)


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> Uncertainty:
    """The five ensemble measures ``[*]`` of :func:`ensemble_stats`, without writing the ``[*, V]`` rows."""
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    if not _ops.use_extension():
        from . import reference

        return reference.ensemble_uncertainty(teacher_logits, temperature=temperature, smoothing=smoothing)
    measures = torch.ops.edd_ext.ensemble_uncertainty(teacher_logits.detach(), float(temperature), float(smoothing))
    return Uncertainty(*measures.unbind(-1))
