"""Decoding with uncertainty: ``generate`` 's hypotheses (greedy or beam) plus their token- and
sequence-level uncertainty, through the library's fused measures (SPEC section 3).

After ``generate``, one teacher-forced pass over the hypotheses gives every position's outputs, and:

* an ensemble (a list of models, or an :class:`EnsembleForGeneration`): ``E.uncertainty.ensemble`` of the
  members' logits; PE and EP sequence scores from the members' token log-probabilities;
* a Dirichlet student (``distribution="dirichlet"``, the default for a plain model): ``E.uncertainty.dirichlet``
  of its logits (alpha = exp(z) + ``model_offset``); PE under its expected categorical alpha / alpha_0;
* a logit-space student (:class:`LogScaleHeadForSeq2SeqLM`): ``E.uncertainty.logit_distribution`` (Monte
  Carlo, ``num_samples`` draws of the ``family`` the model was trained with); PE under softmax(mu);
* a categorical model (``distribution="categorical"``, e.g. an EnD student or a single teacher): its entropy
  as TU = DU (MI = EPKL = RMI = 0: one distribution has no knowledge uncertainty, and only ``total`` and
  ``pe`` are reported per sequence); PE under softmax(z).

Token measures are averaged over each hypothesis with the chain rule
(``E.uncertainty.sequence.chain_rule_average``); with ``num_return_sequences = R > 1`` every score is also
aggregated over each input's R hypotheses with weights softmax(ln P(y_b)) (``nbest_aggregate``).
Decoding distributions: an ensemble decodes with its mean p-bar; a student with its own logits (for a
Dirichlet student softmax(z), whose greedy arg-max equals that of alpha / alpha_0 since alpha is increasing
in z; beam scores differ). Hypotheses are scored up to and including their first EOS.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

import edd_ext as E

from .ensemble import EnsembleForGeneration
from .log_scale_head import LogScaleHeadForSeq2SeqLM

__all__ = ["generate_with_uncertainty", "GenerationWithUncertainty", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("ensemble", "dirichlet", "categorical", "gaussian", "laplace")


@dataclass
class GenerationWithUncertainty:
    """What :func:`generate_with_uncertainty` returns (N = batch size x ``num_return_sequences``).

    sequences: ``[N, 1 + L]`` as ``generate`` returns them (decoder start token first).
    mask: ``[N, L]`` True at the scored tokens ``sequences[:, 1:]`` (up to and including the first EOS).
    token_uncertainty: :class:`edd_ext.Uncertainty` (or ``DirichletUncertainty``), fields ``[N, L]``, 0 where
        ``mask`` is False.
    token_log_probs: ``[N, M, L]`` log-probability each member gives to each token (M = 1 for a student:
        its predictive distribution).
    sequence_log_probs: ``[N]`` ln P(y) of each hypothesis under the decoding distribution.
    sequence_uncertainty: name -> ``[N]``: ``total, data, mutual_information, epkl, rmi`` (chain-rule averages
        of the token measures, plus ``precision`` and ``differential_entropy`` for a Dirichlet student),
        ``pe`` (product of expectations) and, for an ensemble, ``ep`` (expectation of products).
    nbest_uncertainty: for ``num_return_sequences > 1``, each ``sequence_uncertainty`` score aggregated over an
        input's hypotheses, ``[batch size]``; else None.
    """

    sequences: Tensor
    mask: Tensor
    token_uncertainty: tuple
    token_log_probs: Tensor
    sequence_log_probs: Tensor
    sequence_uncertainty: Dict[str, Tensor]
    nbest_uncertainty: Optional[Dict[str, Tensor]] = None


def _resolve(model_or_ensemble, distribution: Optional[str]):
    """(the model that generates, the distribution its outputs are read as)."""
    model = model_or_ensemble
    if isinstance(model, (list, tuple, nn.ModuleList)):
        model = EnsembleForGeneration(list(model)).eval()
    if isinstance(model, EnsembleForGeneration):
        allowed, default = ("ensemble",), "ensemble"
    elif isinstance(model, LogScaleHeadForSeq2SeqLM):
        allowed, default = ("gaussian", "laplace"), model.config.family
    else:
        allowed, default = ("dirichlet", "categorical"), "dirichlet"
    if distribution is None:
        return model, default
    if distribution not in allowed:
        raise ValueError(
            f"distribution: expected one of {allowed} for a {type(model).__name__}, got {distribution!r}"
        )
    return model, distribution


def _scored_mask(tokens: Tensor, eos_token_id) -> Tensor:
    """True up to and including the first EOS of each row of ``tokens`` ``[N, L]``."""
    eos = torch.zeros_like(tokens, dtype=torch.bool)
    for e in ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])):
        eos |= tokens.eq(e)
    return (eos.long().cumsum(-1) - eos.long()).eq(0)


def _gather(log_probs: Tensor, tokens: Tensor) -> Tensor:
    """``log_probs [N, L, M, V]`` at ``tokens [N, L]`` -> ``[N, M, L]``."""
    index = tokens[:, :, None, None].expand(-1, -1, log_probs.shape[-2], 1)
    return log_probs.gather(-1, index)[..., 0].transpose(1, 2)


def _token_outputs(model, kind: str, inputs: dict, tokens: Tensor, *, model_offset: float, num_samples: int,
                   seed: int):
    """(token measures with ``[N, L]`` fields, token log-probs ``[N, M, L]``)."""
    if kind == "ensemble":
        logits = model.member_logits(**inputs)  # [N, L, M, V]
        return E.uncertainty.ensemble(logits), _gather(torch.log_softmax(logits.float(), -1), tokens)
    out = model(**inputs)
    z = out.logits
    if kind == "dirichlet":
        log_c = math.log(model_offset) if model_offset > 0 else -math.inf
        log_alpha = torch.logaddexp(z.float(), torch.full_like(z, log_c, dtype=torch.float32))
        log_p = log_alpha - torch.logsumexp(log_alpha, -1, keepdim=True)
        measures = E.uncertainty.dirichlet(z, model_offset=model_offset)
    elif kind == "categorical":
        log_p = torch.log_softmax(z.float(), -1)
        entropy = E.uncertainty.ensemble(z[..., None, :]).total
        zero = torch.zeros_like(entropy)
        measures = E.Uncertainty(entropy, entropy, zero, zero, zero)
    else:
        log_p = torch.log_softmax(z.float(), -1)
        measures = E.uncertainty.logit_distribution(z, out.log_scale, family=kind, num_samples=num_samples,
                                                    seed=seed)
    return measures, _gather(log_p[..., None, :], tokens)


@torch.no_grad()
def generate_with_uncertainty(
    model_or_ensemble: Union[nn.Module, Sequence[nn.Module]],
    *,
    distribution: Optional[str] = None,
    model_offset: float = 1.0,
    num_samples: int = 25,
    seed: int = 0,
    nbest_temperature: float = 1.0,
    **generate_kwargs,
) -> GenerationWithUncertainty:
    """Decode with ``generate(**generate_kwargs)`` and score the hypotheses' uncertainty.

    Args:
        model_or_ensemble: a list of seq2seq models (an ensemble, decoded with its mean probability), an
            :class:`EnsembleForGeneration`, a :class:`LogScaleHeadForSeq2SeqLM` (logit-space student) or a plain
            seq2seq model (a Dirichlet student unless ``distribution="categorical"``).
        distribution: override of the distribution read from the model (one of ``DISTRIBUTIONS``); for a plain
            model ``"dirichlet"`` (default) or ``"categorical"``.
        model_offset: c in a Dirichlet student's alpha = exp(z) + c.
        num_samples, seed: Monte-Carlo draws and their seed for a logit-space student.
        nbest_temperature: T of the n-best weights softmax(ln P(y_b) / T) when ``num_return_sequences > 1``.
        generate_kwargs: passed to ``generate``; must hold ``input_ids`` (and usually ``attention_mask``);
            e.g. ``num_beams``, ``num_return_sequences``, ``max_new_tokens``.

    Returns:
        :class:`GenerationWithUncertainty`.
    """
    model, kind = _resolve(model_or_ensemble, distribution)
    if "input_ids" not in generate_kwargs:
        raise ValueError(f"generate_kwargs: expected input_ids=[B, S] among them, got {sorted(generate_kwargs)}")
    generate_kwargs["return_dict_in_generate"] = False
    sequences = model.generate(**generate_kwargs)
    repeats = sequences.shape[0] // generate_kwargs["input_ids"].shape[0]
    inputs = {"decoder_input_ids": sequences[:, :-1]}
    for key in ("input_ids", "attention_mask"):
        if generate_kwargs.get(key) is not None:
            inputs[key] = generate_kwargs[key].repeat_interleave(repeats, dim=0)
    tokens = sequences[:, 1:]
    eos = generate_kwargs.get("eos_token_id", model.generation_config.eos_token_id)
    mask = _scored_mask(tokens, eos)
    measures, token_log_probs = _token_outputs(model, kind, inputs, tokens, model_offset=model_offset,
                                               num_samples=num_samples, seed=seed)
    zero = torch.zeros((), device=mask.device)
    measures = type(measures)(*(torch.where(mask, m.float(), zero) for m in measures))
    token_log_probs = torch.where(mask[:, None, :], token_log_probs, zero)
    names = ("total",) if kind == "categorical" else measures._fields
    sequence = {name: E.uncertainty.sequence.chain_rule_average(getattr(measures, name), mask) for name in names}
    sequence["pe"] = E.uncertainty.sequence.product_of_expectations(token_log_probs, mask)
    if kind == "ensemble":
        sequence["ep"] = E.uncertainty.sequence.expectation_of_products(token_log_probs, mask)
    m = token_log_probs.shape[1]
    sequence_log_probs = (torch.logsumexp(token_log_probs, 1) - math.log(m)).sum(-1)  # under p-bar for an ensemble
    nbest = None
    if repeats > 1:
        weights_input = sequence_log_probs.view(-1, repeats)
        nbest = {name: E.uncertainty.sequence.nbest_aggregate(score.view(-1, repeats), weights_input,
                                                              nbest_temperature)
                 for name, score in sequence.items()}
    return GenerationWithUncertainty(sequences, mask, measures, token_log_probs, sequence_log_probs, sequence, nbest)
