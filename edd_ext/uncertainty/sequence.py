"""Sequence-level uncertainty of autoregressive ensembles (SPEC section 3; Malinin & Gales, 2021,
"Uncertainty estimation in autoregressive structured prediction").

A hypothesis ``y`` of length ``L`` (EOS included) is scored by an ensemble of ``M`` members through the
log-probability each member gives to each of its tokens, ``ln P_m(y_l | y_<l, x)``. Hypotheses of a
batch are padded to a common length and described by a bool ``mask`` (True = a real token):

* :func:`product_of_expectations` — PE score: the ensemble predicts each token with the *mean* of its
  members' distributions, ``-(1/L) sum_l ln pbar_l(y_l)``, ``ln pbar_l = logsumexp_m ln P_m - ln M``;
* :func:`expectation_of_products` — EP score: the ensemble is the mean of its members' *sequence*
  probabilities, ``-(1/L) (logsumexp_m sum_l ln P_m(y_l) - ln M)``;
* :func:`chain_rule_average` — the length-normalised chain-rule approximation of a sequence measure from
  a token-level measure (e.g. the token-level total uncertainty or mutual information);
* :func:`nbest_weights` and :func:`nbest_aggregate` — combine the scores of the ``B`` hypotheses of a
  beam, weighted by ``softmax(ln P(y_b) / T)``.

Conventions shared by every function:

* Masked tokens never influence a result or a gradient, whatever their values (NaN and inf included):
  they are replaced by 0 with ``torch.where`` before any arithmetic, so their gradient is exactly 0.
* A row whose tokens are all masked (``L = 0``) scores exactly 0.
* Computation is in float32 for float16/bfloat16/float32 inputs and in float64 for float64 inputs;
  results have that dtype.
* Everything is batched over the leading ``*`` dimensions with tensor ops only (no host
  synchronisation), so it works on any device and under ``torch.compile``.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, TypeVar, Union

import torch
from torch import Tensor

from .._validation import check_float_tensor, check_same_device

__all__ = [
    "product_of_expectations",
    "expectation_of_products",
    "chain_rule_average",
    "nbest_weights",
    "nbest_aggregate",
]

_T = TypeVar("_T", bound=tuple)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_mask(mask: Optional[Tensor], expected: torch.Size, ref: Tensor, ref_name: str, hint: str) -> None:
    """``mask`` must be a bool tensor of shape ``expected`` on ``ref``'s device; ``hint`` says why."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask: expected a bool Tensor of shape {tuple(expected)}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype} (shape {tuple(mask.shape)})")
    if mask.shape != expected:
        raise ValueError(
            f"mask: expected shape {tuple(expected)} ({hint}), got {tuple(mask.shape)}"
        )
    check_same_device(**{ref_name: ref, "mask": mask})


def _check_token_log_probs(token_log_probs: Tensor, mask: Optional[Tensor]) -> None:
    check_float_tensor("token_log_probs", token_log_probs, min_dim=2)
    if token_log_probs.shape[-2] < 1:
        raise ValueError(
            f"token_log_probs: expected M >= 1 members in [*, M, L], got shape {tuple(token_log_probs.shape)}"
        )
    expected = token_log_probs.shape[:-2] + token_log_probs.shape[-1:]
    _check_mask(
        mask, expected, token_log_probs, "token_log_probs",
        f"[*, L] of token_log_probs [*, M, L] with shape {tuple(token_log_probs.shape)}",
    )


def _masked_token_log_probs(token_log_probs: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """``token_log_probs`` in the compute dtype with masked tokens set to 0, and the lengths ``[*]``."""
    x = token_log_probs.to(_compute_dtype(token_log_probs))
    if mask is None:
        length = torch.full(x.shape[:-2], x.shape[-1], dtype=x.dtype, device=x.device)
        return x, length
    x = torch.where(mask.unsqueeze(-2), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x, mask.sum(-1).to(x.dtype)


def _normalise(total: Tensor, length: Tensor) -> Tensor:
    """``total / length``, exactly 0 where ``length == 0``."""
    zero = torch.zeros((), dtype=total.dtype, device=total.device)
    return torch.where(length > 0, total / length.clamp_min(1), zero)


def product_of_expectations(token_log_probs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Product-of-expectations sequence score, the length-normalised negative log-likelihood of the
    hypothesis under the token-level ensemble mean:

        PE = -(1/L) sum_l ln pbar_l(y_l),   ln pbar_l(y_l) = logsumexp_m ln P_m(y_l) - ln M.

    Shape:
        token_log_probs: ``[*, M, L]`` log-probability member ``m`` gives to the hypothesis token ``y_l``.
        mask: ``[*, L]`` bool, True for real tokens (EOS included); ``None`` means every token is real.
        Returns: ``[*]``; 0 for rows with no real token.

    Raises:
        ValueError: for a non-floating input, fewer than 2 dimensions, M = 0, or a mask of the wrong
            shape, dtype or device (the message names the shapes seen).
    """
    _check_token_log_probs(token_log_probs, mask)
    x, length = _masked_token_log_probs(token_log_probs, mask)
    log_mean = torch.logsumexp(x, dim=-2) - math.log(x.shape[-2])  # [*, L]; masked tokens give 0
    return _normalise(-log_mean.sum(-1), length)


def expectation_of_products(token_log_probs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Expectation-of-products sequence score, the length-normalised negative log-likelihood of the
    hypothesis under the mean of the members' *sequence* probabilities:

        EP = -(1/L) (logsumexp_m sum_l ln P_m(y_l) - ln M).

    Equals :func:`product_of_expectations` when M = 1 or L = 1.

    Shape:
        token_log_probs: ``[*, M, L]`` log-probability member ``m`` gives to the hypothesis token ``y_l``.
        mask: ``[*, L]`` bool, True for real tokens (EOS included); ``None`` means every token is real.
        Returns: ``[*]``; 0 for rows with no real token.

    Raises:
        ValueError: as :func:`product_of_expectations`.
    """
    _check_token_log_probs(token_log_probs, mask)
    x, length = _masked_token_log_probs(token_log_probs, mask)
    member_sequence_log_prob = x.sum(-1)  # [*, M]
    log_mean = torch.logsumexp(member_sequence_log_prob, dim=-1) - math.log(x.shape[-2])
    return _normalise(-log_mean, length)


def _chain_rule_tensor(name: str, token_measure: Tensor, mask: Optional[Tensor]) -> Tensor:
    check_float_tensor(name, token_measure, min_dim=1)
    _check_mask(mask, token_measure.shape, token_measure, name, f"that of {name}")
    x = token_measure.to(_compute_dtype(token_measure))
    if mask is None:
        return x.mean(-1) if x.shape[-1] > 0 else x.sum(-1)
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return _normalise(x.sum(-1), mask.sum(-1).to(x.dtype))


def chain_rule_average(
    token_measure: Union[Tensor, _T], mask: Optional[Tensor] = None
) -> Union[Tensor, _T]:
    """Chain-rule approximation of a sequence-level measure: the mean of a token-level measure over the
    real tokens of each hypothesis, ``(1/L) sum_l U_l``.

    ``token_measure`` is either one tensor or a NamedTuple of tensors, such as the
    :class:`edd_ext.Uncertainty` computed from the per-token distributions of a decoded hypothesis; a
    NamedTuple is averaged field by field and returned as the same type.

    Shape:
        token_measure: ``[*, L]`` (or a NamedTuple whose fields are all ``[*, L]`` tensors).
        mask: ``[*, L]`` bool, True for real tokens (EOS included); ``None`` means every token is real.
        Returns: ``[*]`` (or the same NamedTuple type with ``[*]`` fields); 0 for rows with no real token.

    Raises:
        ValueError: for a non-floating or 0-dimensional measure, a NamedTuple with a non-tensor field,
            or a mask whose shape, dtype or device does not match.
    """
    if isinstance(token_measure, tuple) and hasattr(token_measure, "_fields"):
        fields = token_measure._fields
        for field in fields:
            value = getattr(token_measure, field)
            if not isinstance(value, Tensor):
                raise ValueError(
                    f"token_measure.{field}: expected a [*, L] Tensor in every field of "
                    f"{type(token_measure).__name__}, got {type(value).__name__}"
                )
            first = getattr(token_measure, fields[0])
            if value.shape != first.shape:
                raise ValueError(
                    f"token_measure.{field}: expected shape {tuple(first.shape)} (that of "
                    f"token_measure.{fields[0]}), got {tuple(value.shape)}"
                )
        averaged = {f: _chain_rule_tensor(f"token_measure.{f}", getattr(token_measure, f), mask) for f in fields}
        return type(token_measure)(**averaged)
    return _chain_rule_tensor("token_measure", token_measure, mask)


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, (bool, Tensor)) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature: expected a positive real number, got {type(temperature).__name__}")
    if not temperature > 0:
        raise ValueError(
            f"temperature: expected a positive number (a small one approaches the arg-max), got {temperature!r}"
        )


def nbest_weights(
    sequence_log_probs: Tensor, temperature: float = 1.0, mask: Optional[Tensor] = None
) -> Tensor:
    """Weights of the hypotheses of an n-best list, ``softmax(ln P(y_b) / T)`` over the beam.

    ``T = 1`` weights hypotheses by their renormalised probability; ``T -> inf`` approaches uniform
    weights (``temperature=math.inf`` gives exactly ``1/B``); ``T -> 0`` approaches a one-hot weight on
    the most probable hypothesis.

    Shape:
        sequence_log_probs: ``[*, B]`` log-probability of each of the B hypotheses (e.g. the beam scores
            before length normalisation).
        mask: optional ``[*, B]`` bool, True for real hypotheses (for beams padded to a common B).
            Masked hypotheses get weight exactly 0 whatever their value; a row with none gets all zeros.
        Returns: ``[*, B]`` weights that sum to 1 over the real hypotheses of each row.

    Raises:
        ValueError: for a non-floating or 0-dimensional input, B = 0, a non-positive temperature, or a
            mask of the wrong shape, dtype or device.
    """
    check_float_tensor("sequence_log_probs", sequence_log_probs, min_dim=1)
    if sequence_log_probs.shape[-1] < 1:
        raise ValueError(
            f"sequence_log_probs: expected B >= 1 hypotheses in [*, B], got shape {tuple(sequence_log_probs.shape)}"
        )
    _check_temperature(temperature)
    _check_mask(mask, sequence_log_probs.shape, sequence_log_probs, "sequence_log_probs", "that of sequence_log_probs")
    x = sequence_log_probs.to(_compute_dtype(sequence_log_probs))
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if math.isinf(float(temperature)):
        logits = torch.zeros_like(x)
    else:
        logits = x / float(temperature)
    if mask is None:
        return torch.softmax(logits, dim=-1)
    logits = torch.where(mask, logits, torch.full((), -math.inf, dtype=x.dtype, device=x.device))
    # A fully masked row would give softmax(-inf, ..., -inf) = nan; give it a finite logit and zero it.
    any_real = mask.any(-1, keepdim=True)
    logits = torch.where(any_real, logits, zero)
    weights = torch.softmax(logits, dim=-1)
    return torch.where(mask, weights, zero)


def nbest_aggregate(
    scores: Tensor,
    sequence_log_probs: Tensor,
    temperature: float = 1.0,
    mask: Optional[Tensor] = None,
) -> Tensor:
    """Aggregate per-hypothesis uncertainty scores over an n-best list, ``sum_b w_b U_b`` with the
    weights ``w = softmax(ln P(y_b) / T)`` of :func:`nbest_weights`.

    Shape:
        scores: ``[*, B]`` uncertainty ``U_b`` of each hypothesis (e.g. a PE or EP score, or a chain-rule
            average).
        sequence_log_probs: ``[*, B]`` log-probability of each hypothesis.
        mask: optional ``[*, B]`` bool, True for real hypotheses; masked ones are ignored whatever their
            score or log-probability (NaN included).
        Returns: ``[*]``; 0 for rows with no real hypothesis.

    Raises:
        ValueError: for shape, dtype or device mismatches (naming the shapes seen) and as
            :func:`nbest_weights`.
    """
    check_float_tensor("scores", scores, min_dim=1)
    check_float_tensor("sequence_log_probs", sequence_log_probs, min_dim=1)
    if scores.shape != sequence_log_probs.shape:
        raise ValueError(
            f"scores and sequence_log_probs: expected the same [*, B] shape, got {tuple(scores.shape)} "
            f"and {tuple(sequence_log_probs.shape)}"
        )
    check_same_device(scores=scores, sequence_log_probs=sequence_log_probs)
    weights = nbest_weights(sequence_log_probs, temperature, mask)
    dtype = torch.promote_types(weights.dtype, _compute_dtype(scores))
    u = scores.to(dtype)
    if mask is not None:
        u = torch.where(mask, u, torch.zeros((), dtype=dtype, device=u.device))
    return (weights.to(dtype) * u).sum(-1)
