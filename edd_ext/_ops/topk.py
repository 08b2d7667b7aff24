"""Ops of the compact top-k teacher statistics (SPEC section 1.1) and of the losses that read them: call
wrappers, fake kernels and autograd (schemas in ``csrc/edd_ext.cpp``, kernels in ``csrc/cpu/topk_*.cpp`` and
``csrc/cuda/topk_*.cu``).

* ``topk_ensemble_stats``: ``[*, M, V]`` logits -> the k classes of largest mean probability with their values,
  the tail and the five exact measures, selected online in one streaming pass (no ``[*, V]`` output);
* ``topk_dirichlet_nll``, ``topk_proxy_dirichlet_kl``, ``topk_ensemble_kl``: the losses of ``_ops.losses`` with a
  sparse target — ``indices [*, k]``, the listed values ``[*, k]`` and the tail ``[*]`` — read directly, never
  expanded into a ``[*, V]`` row: every class outside the list takes the tail's per-class value (tau / (V - k),
  or lambda). Their outputs, gradient handling and autograd are those of ``_ops.losses`` (see there).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..types import TopKEnsembleStats
from . import NUM_MEASURES, has_extension, stats_dtype
from .losses import REDUCTION_CODES, _requires_grad, proxy_measure_field

__all__ = ["ensemble_stats", "dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl"]


def ensemble_stats(teacher_logits: Tensor, *, temperature: float, smoothing: float, top_k: int) -> TopKEnsembleStats:
    """``[*, M, V]`` -> :class:`TopKEnsembleStats` (``[*, k]`` listed classes, ``[*]`` tail and measures)."""
    indices, mean_probs, mean_log_probs, tail_mass, tail_mean_log_prob, measures = (
        torch.ops.edd_ext.topk_ensemble_stats(teacher_logits.detach(), int(top_k), float(temperature),
                                              float(smoothing)))
    return TopKEnsembleStats(indices, mean_probs, mean_log_probs, tail_mass, tail_mean_log_prob,
                             *measures.unbind(-1), num_classes=teacher_logits.shape[-1],
                             num_members=teacher_logits.shape[-2])


def _listed(teacher: TopKEnsembleStats, field: str):
    """(indices as int64, the listed values of ``field``), detached: the target is a constant."""
    return teacher.indices.long(), getattr(teacher, field).detach()


def dirichlet_nll(student_logits: Tensor, teacher: TopKEnsembleStats, *, model_offset: float,
                  mask: Optional[Tensor], reduction: str) -> Tensor:
    loss, _ = torch.ops.edd_ext.topk_dirichlet_nll(
        student_logits, *_listed(teacher, "mean_log_probs"), teacher.tail_mean_log_prob.detach(), mask,
        float(model_offset), REDUCTION_CODES[reduction], _requires_grad(student_logits), True,
    )
    return loss


def proxy_dirichlet_kl(student_logits: Tensor, teacher: TopKEnsembleStats, *, direction: str, precision: str,
                       model_offset: float, target_offset: float, eps: float, max_precision: Optional[float],
                       reference_code_compat: bool, mask: Optional[Tensor], reduction: str) -> Tensor:
    measure = getattr(teacher, proxy_measure_field(precision))
    loss, _ = torch.ops.edd_ext.topk_proxy_dirichlet_kl(
        student_logits, *_listed(teacher, "mean_probs"), teacher.tail_mass.detach(), measure.detach(), mask,
        direction, precision, float(model_offset), float(target_offset), float(eps),
        None if max_precision is None else float(max_precision), bool(reference_code_compat),
        REDUCTION_CODES[reduction], _requires_grad(student_logits), True,
    )
    return loss


def ensemble_kl(student_logits: Tensor, teacher: TopKEnsembleStats, *, mask: Optional[Tensor],
                reduction: str) -> Tensor:
    loss, _ = torch.ops.edd_ext.topk_ensemble_kl(
        student_logits, *_listed(teacher, "mean_probs"), teacher.tail_mass.detach(), mask,
        REDUCTION_CODES[reduction], _requires_grad(student_logits), True,
    )
    return loss


if has_extension():
    from .losses import _backward_one_grad, _fake_outputs, _setup_one_grad

    @torch.library.register_fake("edd_ext::topk_ensemble_stats")
    def _topk_ensemble_stats_fake(teacher_logits, k, temperature, smoothing):
        lead = teacher_logits.shape[:-2]
        dtype = stats_dtype(teacher_logits)
        values = teacher_logits.new_empty((*lead, k), dtype=dtype)
        return (teacher_logits.new_empty((*lead, k), dtype=torch.int64), values, torch.empty_like(values),
                teacher_logits.new_empty(lead, dtype=dtype), teacher_logits.new_empty(lead, dtype=dtype),
                teacher_logits.new_empty((*lead, NUM_MEASURES), dtype=dtype))

    @torch.library.register_fake("edd_ext::topk_dirichlet_nll")
    def _topk_dirichlet_nll_fake(student_logits, indices, mean_log_probs, tail_mean_log_prob, mask, model_offset,
                                 reduction, compute_grad, reuse_grad=False):
        return _fake_outputs(student_logits, mean_log_probs, reduction, compute_grad)

    @torch.library.register_fake("edd_ext::topk_proxy_dirichlet_kl")
    def _topk_proxy_dirichlet_kl_fake(student_logits, indices, mean_probs, tail_mass, teacher_measure, mask,
                                      direction, precision, model_offset, target_offset, eps, max_precision,
                                      reference_code_compat, reduction, compute_grad, reuse_grad=False):
        return _fake_outputs(student_logits, mean_probs, reduction, compute_grad)

    @torch.library.register_fake("edd_ext::topk_ensemble_kl")
    def _topk_ensemble_kl_fake(student_logits, indices, mean_probs, tail_mass, mask, reduction, compute_grad,
                               reuse_grad=False):
        return _fake_outputs(student_logits, mean_probs, reduction, compute_grad)

    torch.library.register_autograd("edd_ext::topk_dirichlet_nll", _backward_one_grad,
                                    setup_context=_setup_one_grad(mask_index=4))
    torch.library.register_autograd("edd_ext::topk_proxy_dirichlet_kl", _backward_one_grad,
                                    setup_context=_setup_one_grad(mask_index=5))
    torch.library.register_autograd("edd_ext::topk_ensemble_kl", _backward_one_grad,
                                    setup_context=_setup_one_grad(mask_index=4))
