"""Teacher-ensemble statistics (SPEC section 1)."""
from __future__ import annotations

from torch import Tensor

from . import _ops, reference
from ._validation import check_stats_options, check_teacher_logits
from .types import EnsembleStats, Uncertainty


def ensemble_stats(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> EnsembleStats:
    """Ensemble mean probabilities, mean log-probabilities and uncertainty measures in one fused pass.

    Args:
        teacher_logits: ``[*, M, V]`` logits of M ensemble members (any float dtype; treated as a constant).
            A logit of -inf is a probability of exactly 0 (0 ln 0 = 0 in every entropy term).
        temperature: T, members' probabilities are softmax(u / T).
        smoothing: central smoothing eps in [0, 1), pi~ = (1 - eps) pi + eps / V, applied in log space.

    Returns:
        :class:`EnsembleStats` with ``mean_probs`` and ``mean_log_probs`` ``[*, V]`` and the measures
        ``total, data, mutual_information, epkl, rmi`` ``[*]``, float32 (float64 for float64 input).
    """
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    fn = _ops.stats.ensemble_stats if _ops.fused(teacher_logits) else reference.ensemble_stats
    return fn(teacher_logits, temperature=temperature, smoothing=smoothing)


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> Uncertainty:
    """The five ensemble measures ``[*]`` of :func:`ensemble_stats`, without writing the ``[*, V]`` rows."""
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    fn = _ops.stats.ensemble_uncertainty if _ops.fused(teacher_logits) else reference.ensemble_uncertainty
    return fn(teacher_logits, temperature=temperature, smoothing=smoothing)
