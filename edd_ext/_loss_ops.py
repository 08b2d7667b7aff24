"""Fake (meta) kernels, autograd and thin call wrappers for the distillation-loss ops
(``torch.ops.edd_ext.{dirichlet_nll, proxy_dirichlet_kl, logit_nll, ensemble_kl}``; schemas in
``csrc/edd_ext.cpp``).

Each op computes the per-position loss ``[*]`` and, when asked (``compute_grad``), its closed-form gradient
with respect to the student tensor(s) ``[*, V]`` in the same fused pass. The registered backward only scales
that gradient by the incoming per-position gradient (a scalar broadcast for ``"sum"``/``"mean"``, a ``[*]``
tensor for ``"none"``); masked positions are selected away (``torch.where``), never multiplied by zero.
The gradients are first order: the saved gradient is a constant of the backward graph, so these losses do
not support double backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ops

__all__ = ["dirichlet_nll", "proxy_dirichlet_kl", "logit_nll", "ensemble_kl"]


def _loss_dtype(student: Tensor, teacher: Tensor) -> torch.dtype:
    """float64 when the student or the teacher is float64, else float32 (what the kernels compute in)."""
    return torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32


def _fake_outputs(student: Tensor, teacher: Tensor, compute_grad: bool, num_grads: int = 1):
    loss = student.new_empty(student.shape[:-1], dtype=_loss_dtype(student, teacher))
    grads = tuple(student.new_empty(student.shape if compute_grad else (0,)) for _ in range(num_grads))
    return (loss, *grads)


def _scaled(grad: Tensor, grad_loss: Tensor, mask: Optional[Tensor]) -> Tensor:
    """dL/dstudent = grad * dOut/dL, broadcast over the classes; zero where ``mask`` is False."""
    if grad.dim() == 1 and grad.shape[0] == 0:
        raise RuntimeError(
            "edd_ext: the loss was computed without its gradient (no input required grad), but a backward "
            "pass reached it"
        )
    if mask is not None:
        grad_loss = torch.where(mask, grad_loss, torch.zeros((), dtype=grad_loss.dtype, device=grad_loss.device))
    return (grad * grad_loss.unsqueeze(-1)).to(grad.dtype)


def _requires_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _detach(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()


if _ops.has_extension():

    # ---- fake kernels (shapes and dtypes only) ----

    @torch.library.register_fake("edd_ext::dirichlet_nll")
    def _dirichlet_nll_fake(student_logits, teacher_logits, mean_log_probs, mask, model_offset, compute_grad):
        teacher = teacher_logits if teacher_logits is not None else mean_log_probs
        return _fake_outputs(student_logits, teacher, compute_grad)

    @torch.library.register_fake("edd_ext::proxy_dirichlet_kl")
    def _proxy_dirichlet_kl_fake(student_logits, teacher_logits, mean_probs, teacher_measure, mask, direction,
                                 precision, model_offset, target_offset, eps, max_precision, reference_code_compat,
                                 compute_grad):
        teacher = teacher_logits if teacher_logits is not None else mean_probs
        return _fake_outputs(student_logits, teacher, compute_grad)

    @torch.library.register_fake("edd_ext::logit_nll")
    def _logit_nll_fake(loc, log_scale, teacher_logits, mask, family, teacher_norm, temperature, min_scale,
                        compute_grad):
        return _fake_outputs(loc, teacher_logits, compute_grad, num_grads=2)

    @torch.library.register_fake("edd_ext::ensemble_kl")
    def _ensemble_kl_fake(student_logits, teacher_logits, mean_probs, mask, compute_grad):
        teacher = teacher_logits if teacher_logits is not None else mean_probs
        return _fake_outputs(student_logits, teacher, compute_grad)

    # ---- autograd: the forward already computed dLoss/dStudent; the backward scales it ----

    def _setup_one_grad(mask_index: int):
        def setup_context(ctx, inputs, output):
            ctx.mark_non_differentiable(*output[1:])
            ctx.save_for_backward(output[1], inputs[mask_index])
            ctx.num_inputs = len(inputs)

        return setup_context

    def _backward_one_grad(ctx, grad_loss, *unused):
        grad, mask = ctx.saved_tensors
        return (_scaled(grad, grad_loss, mask),) + (None,) * (ctx.num_inputs - 1)

    def _setup_logit(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(output[1], output[2], inputs[3])
        ctx.num_inputs = len(inputs)

    def _backward_logit(ctx, grad_loss, *unused):
        grad_loc, grad_log_scale, mask = ctx.saved_tensors
        return (_scaled(grad_loc, grad_loss, mask), _scaled(grad_log_scale, grad_loss, mask)) + (None,) * (
            ctx.num_inputs - 2
        )

    torch.library.register_autograd(
        "edd_ext::dirichlet_nll", _backward_one_grad, setup_context=_setup_one_grad(mask_index=3)
    )
    torch.library.register_autograd(
        "edd_ext::proxy_dirichlet_kl", _backward_one_grad, setup_context=_setup_one_grad(mask_index=4)
    )
    torch.library.register_autograd("edd_ext::ensemble_kl", _backward_one_grad, setup_context=_setup_one_grad(3))
    torch.library.register_autograd("edd_ext::logit_nll", _backward_logit, setup_context=_setup_logit)


# ---- call wrappers: the per-position loss [*], with the gradient computed only when autograd needs it ----


def dirichlet_nll(student_logits: Tensor, teacher_logits: Optional[Tensor], mean_log_probs: Optional[Tensor],
                  mask: Optional[Tensor], model_offset: float) -> Tensor:
    loss, _ = torch.ops.edd_ext.dirichlet_nll(
        student_logits, _detach(teacher_logits), _detach(mean_log_probs), mask, float(model_offset),
        _requires_grad(student_logits),
    )
    return loss


def proxy_dirichlet_kl(student_logits: Tensor, teacher_logits: Optional[Tensor], mean_probs: Optional[Tensor],
                       teacher_measure: Optional[Tensor], mask: Optional[Tensor], *, direction: str, precision: str,
                       model_offset: float, target_offset: float, eps: float, max_precision: Optional[float],
                       reference_code_compat: bool) -> Tensor:
    loss, _ = torch.ops.edd_ext.proxy_dirichlet_kl(
        student_logits, _detach(teacher_logits), _detach(mean_probs), _detach(teacher_measure), mask, direction,
        precision, float(model_offset), float(target_offset), float(eps),
        None if max_precision is None else float(max_precision), bool(reference_code_compat),
        _requires_grad(student_logits),
    )
    return loss


def logit_nll(loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, mask: Optional[Tensor], *, family: str,
              teacher_norm: str, temperature: float, min_scale: float) -> Tensor:
    loss, _, _ = torch.ops.edd_ext.logit_nll(
        loc, log_scale, teacher_logits.detach(), mask, family, teacher_norm, float(temperature), float(min_scale),
        _requires_grad(loc, log_scale),
    )
    return loss


def ensemble_kl(student_logits: Tensor, teacher_logits: Optional[Tensor], mean_probs: Optional[Tensor],
                mask: Optional[Tensor]) -> Tensor:
    loss, _ = torch.ops.edd_ext.ensemble_kl(
        student_logits, _detach(teacher_logits), _detach(mean_probs), mask, _requires_grad(student_logits)
    )
    return loss
