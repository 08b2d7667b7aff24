"""Teacher-ensemble statistics (SPEC section 1), dense or in the compact top-k form (section 1.1)."""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from . import _ops, reference
from ._validation import check_stats_options, check_teacher_logits, check_top_k
from .types import EnsembleStats, TopKEnsembleStats, Uncertainty


def ensemble_stats(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0,
                   top_k: Optional[int] = None) -> Union[EnsembleStats, TopKEnsembleStats]:
    """Ensemble mean probabilities, mean log-probabilities and uncertainty measures in one fused pass.

    Args:
        teacher_logits: ``[*, M, V]`` logits of M ensemble members (any float dtype; treated as a constant).
            A logit of -inf is a probability of exactly 0 (0 ln 0 = 0 in every entropy term).
        temperature: T, members' probabilities are softmax(u / T).
        smoothing: central smoothing eps in [0, 1), pi~ = (1 - eps) pi + eps / V, applied in log space.
        top_k: k in [1, V]: return the compact :class:`TopKEnsembleStats` (SPEC section 1.1) instead — the k
            classes of largest pi^ with their pi^ and l-, the tail mass tau = 1 - sum of the listed pi^ and the
            tail mean lambda of l- over the other V - k classes, and the five measures computed exactly over all
            V classes. Every loss that takes statistics reads it as the dense target whose tail classes have
            pi^_j = tau / (V - k) and l-_j = lambda. The fused kernels select the k classes online in the same
            streaming pass: no ``[*, V]`` tensor is written. (The CUDA kernel takes k <= 1024.)

    Returns:
        :class:`EnsembleStats` with ``mean_probs`` and ``mean_log_probs`` ``[*, V]`` and the measures
        ``total, data, mutual_information, epkl, rmi`` ``[*]``, float32 (float64 for float64 input); or, with
        ``top_k``, a :class:`TopKEnsembleStats` (``indices`` int64 and the values ``[*, k]``, the tail and the
        measures ``[*]``, ``num_classes = V``).

    A teacher logit of -inf (vocabulary padding, a banned token) is a probability of exactly 0 and entropy terms
    use 0 ln 0 = 0: the measures are finite and equal their limits. Where some members give a class probability
    0 and others do not, ``mean_log_probs`` is -inf there and EPKL and RMI are +inf (an infinite KL between those
    members); TU, DU and MI stay finite.
    """
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    if top_k is not None:
        check_top_k(top_k, teacher_logits.shape[-1])
        fn = _ops.topk.ensemble_stats if _ops.fused(teacher_logits) else reference.ensemble_stats
        return fn(teacher_logits, temperature=temperature, smoothing=smoothing, top_k=top_k)
    fn = _ops.stats.ensemble_stats if _ops.fused(teacher_logits) else reference.ensemble_stats
    return fn(teacher_logits, temperature=temperature, smoothing=smoothing)


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> Uncertainty:
    """The five ensemble measures ``[*]`` of :func:`ensemble_stats`, without writing the ``[*, V]`` rows."""
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    fn = _ops.stats.ensemble_uncertainty if _ops.fused(teacher_logits) else reference.ensemble_uncertainty
    return fn(teacher_logits, temperature=temperature, smoothing=smoothing)
