"""Fake (meta) kernels, autograd and thin call wrappers for the distillation-loss ops
(``torch.ops.edd_ext.{dirichlet_nll, proxy_dirichlet_kl, logit_nll, ensemble_kl}``; schemas in
``csrc/edd_ext.cpp``).

Each op computes the loss, reduced as asked (``"none"`` -> ``[*]``, ``"sum"``/``"mean"`` -> a scalar), and, when
asked (``compute_grad``), its closed-form gradient with respect to the student tensor(s) ``[*, V]`` in the same
fused pass, already divided by the number of unmasked positions for ``"mean"`` (masked rows are exactly 0).
The registered backward only scales that gradient by the incoming gradient (a scalar for ``"sum"``/``"mean"``,
a ``[*]`` tensor for ``"none"``; masked positions are selected away with ``torch.where``, never multiplied by
zero).

Memory: the wrappers below drop the op's gradient output and say so (``reuse_grad=True``), so the saved
gradient has no reader but this backward when the graph is freed after it (``retain_graph=False``, no
``create_graph``). The usual training step (``loss.backward()``, an incoming gradient of exactly 1, on CPU or
CUDA) then hands the gradient the kernel wrote to autograd as it is: no second ``[*, V]`` buffer, no extra
pass, no host synchronisation; any other incoming gradient scales it in place (``scale_grad_``). Otherwise (a
retained graph that may run backward again, ``create_graph``, tracing under ``torch.compile``/functorch, a direct
op call that keeps the gradient output) the backward returns a new tensor and the saved gradient stays untouched.

The gradients are first order: the saved gradient is a constant of the backward graph, so these losses do
not support double backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..types import EnsembleStats
from . import has_extension

__all__ = ["dirichlet_nll", "proxy_dirichlet_kl", "logit_nll", "ensemble_kl"]


def _loss_dtype(student: Tensor, teacher: Tensor) -> torch.dtype:
    """float64 when the student or the teacher is float64, else float32 (what the kernels compute in)."""
    return torch.float64 if torch.float64 in (student.dtype, teacher.dtype) else torch.float32


REDUCTION_CODES = {"none": 0, "sum": 1, "mean": 2}


def _fake_outputs(student: Tensor, teacher: Tensor, reduction: int, compute_grad: bool, num_grads: int = 1):
    shape = student.shape[:-1] if reduction == 0 else ()
    loss = student.new_empty(shape, dtype=_loss_dtype(student, teacher))
    grads = tuple(student.new_empty(student.shape if compute_grad else (0,)) for _ in range(num_grads))
    return (loss, *grads)


def _keep_graph() -> bool:
    """Whether the running backward keeps the graph (``retain_graph``); True when that cannot be told."""
    keep = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if keep is None else bool(keep())


def _is_plain(t: Tensor) -> bool:
    """A plain eager tensor: not a fake, functional, traced or functorch-wrapped one."""
    if type(t) is not Tensor:
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is None or not wrapped(t)


def _saved_gradient_is_free(reuse_grad: bool, grad: Tensor, grad_loss: Tensor) -> bool:
    """True when nothing can read the saved gradient after this backward: the op's caller dropped it
    (``reuse_grad``), the graph is freed after this node (no ``retain_graph``), no graph of the backward is
    built (no ``create_graph``), and no tracer is running."""
    return (
        reuse_grad
        and not torch.is_grad_enabled()
        and _is_plain(grad)
        and _is_plain(grad_loss)
        and not torch.compiler.is_compiling()
        and not _keep_graph()
    )


def _scaled(grad: Tensor, grad_loss: Tensor, mask: Optional[Tensor], reuse_grad: bool = False) -> Tensor:
    """dOut/dstudent = grad * dOut/dLoss, broadcast over the classes; zero where ``mask`` is False.

    ``grad`` already holds the reduction's factor (and zero rows where masked). When the saved gradient is free
    (see ``_saved_gradient_is_free``) it is scaled in place by ``torch.ops.edd_ext.scale_grad_``, which leaves
    rows whose incoming gradient is exactly 1 (and masked rows) untouched, reading the incoming gradient on the
    device: the usual ``loss.backward()`` costs no pass over the gradient and no host synchronisation, on CPU and
    CUDA alike. Otherwise a new tensor is returned.
    """
    if grad.dim() == 1 and grad.shape[0] == 0:
        raise RuntimeError(
            "edd_ext: the loss was computed without its gradient (no input required grad), but a backward "
            "pass reached it"
        )
    if _saved_gradient_is_free(reuse_grad, grad, grad_loss):
        torch.ops.edd_ext.scale_grad_(grad, grad_loss, mask)
        return grad
    per_position = grad_loss.dim() > 0
    if per_position and mask is not None:
        grad_loss = torch.where(mask, grad_loss, torch.zeros((), dtype=grad_loss.dtype, device=grad_loss.device))
    factor = grad_loss.unsqueeze(-1) if per_position else grad_loss
    return (grad * factor).to(grad.dtype)


def _requires_grad(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


if has_extension():

    # ---- fake kernels (shapes and dtypes only) ----

    @torch.library.register_fake("edd_ext::dirichlet_nll")
    def _dirichlet_nll_fake(student_logits, teacher_logits, mean_log_probs, mask, model_offset, reduction,
                            compute_grad, reuse_grad=False):
        teacher = teacher_logits if teacher_logits is not None else mean_log_probs
        return _fake_outputs(student_logits, teacher, reduction, compute_grad)

    @torch.library.register_fake("edd_ext::proxy_dirichlet_kl")
    def _proxy_dirichlet_kl_fake(student_logits, teacher_logits, mean_probs, teacher_measure, mask, direction,
                                 precision, model_offset, target_offset, eps, max_precision, reference_code_compat,
                                 reduction, compute_grad, reuse_grad=False):
        teacher = teacher_logits if teacher_logits is not None else mean_probs
        return _fake_outputs(student_logits, teacher, reduction, compute_grad)

    @torch.library.register_fake("edd_ext::logit_nll")
    def _logit_nll_fake(loc, log_scale, teacher_logits, mask, family, teacher_norm, temperature, min_scale,
                        reduction, compute_grad, reuse_grad=False):
        return _fake_outputs(loc, teacher_logits, reduction, compute_grad, num_grads=2)

    @torch.library.register_fake("edd_ext::scale_grad_")
    def _scale_grad_fake(grad, factor, mask):
        return None

    @torch.library.register_fake("edd_ext::ensemble_kl")
    def _ensemble_kl_fake(student_logits, teacher_logits, mean_probs, mask, reduction, compute_grad,
                          reuse_grad=False):
        teacher = teacher_logits if teacher_logits is not None else mean_probs
        return _fake_outputs(student_logits, teacher, reduction, compute_grad)

    # ---- autograd: the forward already computed dOut/dStudent; the backward scales it ----

    # The gradient outputs are non-differentiable; set_materialize_grads(False) keeps autograd from filling an
    # [*, V] tensor of zeros as their incoming gradient on every backward.

    def _setup_one_grad(mask_index: int):
        def setup_context(ctx, inputs, output):
            ctx.set_materialize_grads(False)
            ctx.mark_non_differentiable(*output[1:])
            ctx.save_for_backward(output[1], inputs[mask_index])
            ctx.num_inputs = len(inputs)
            ctx.reuse_grad = bool(inputs[-1])

        return setup_context

    def _backward_one_grad(ctx, grad_loss, *unused):
        if grad_loss is None:  # nothing reached the loss output
            return (None,) * ctx.num_inputs
        grad, mask = ctx.saved_tensors
        return (_scaled(grad, grad_loss, mask, ctx.reuse_grad),) + (None,) * (ctx.num_inputs - 1)

    def _setup_logit(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(output[1], output[2], inputs[3])
        ctx.num_inputs = len(inputs)
        ctx.reuse_grad = bool(inputs[-1])

    def _backward_logit(ctx, grad_loss, *unused):
        if grad_loss is None:
            return (None,) * ctx.num_inputs
        grad_loc, grad_log_scale, mask = ctx.saved_tensors
        return (_scaled(grad_loc, grad_loss, mask, ctx.reuse_grad),
                _scaled(grad_log_scale, grad_loss, mask, ctx.reuse_grad)) + (None,) * (
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


# ---- call wrappers: the reduced loss, with the gradient computed only when autograd needs it ----
# ``teacher`` is ``[*, M, V]`` logits or an EnsembleStats; each wrapper passes the op the one form it got.


def proxy_measure_field(precision: str) -> str:
    """The teacher measure the compiled proxy-KL ops read for the target precision (SPEC section 2.2): ``"rmi"``
    for ``precision="mkl"``, ``"epkl"`` otherwise (a ``[*]`` field of EnsembleStats and TopKEnsembleStats)."""
    return "rmi" if precision == "mkl" else "epkl"


def _logits_or(teacher, field: str):
    """(teacher logits or None, the EnsembleStats field or None)."""
    if isinstance(teacher, EnsembleStats):
        return None, getattr(teacher, field).detach()
    return teacher.detach(), None


def dirichlet_nll(student_logits: Tensor, teacher, *, model_offset: float, mask: Optional[Tensor],
                  reduction: str) -> Tensor:
    loss, _ = torch.ops.edd_ext.dirichlet_nll(
        student_logits, *_logits_or(teacher, "mean_log_probs"), mask, float(model_offset),
        REDUCTION_CODES[reduction], _requires_grad(student_logits), True,
    )
    return loss


def proxy_dirichlet_kl(student_logits: Tensor, teacher, *, direction: str, precision: str, model_offset: float,
                       target_offset: float, eps: float, max_precision: Optional[float],
                       reference_code_compat: bool, mask: Optional[Tensor], reduction: str) -> Tensor:
    logits, mean_probs = _logits_or(teacher, "mean_probs")
    measure = None if logits is not None else _logits_or(teacher, proxy_measure_field(precision))[1]
    loss, _ = torch.ops.edd_ext.proxy_dirichlet_kl(
        student_logits, logits, mean_probs, measure, mask, direction, precision, float(model_offset),
        float(target_offset), float(eps), None if max_precision is None else float(max_precision),
        bool(reference_code_compat), REDUCTION_CODES[reduction], _requires_grad(student_logits), True,
    )
    return loss


def logit_nll(loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, *, family: str, teacher_norm: str,
              temperature: float, min_scale: float, mask: Optional[Tensor], reduction: str) -> Tensor:
    loss, _, _ = torch.ops.edd_ext.logit_nll(
        loc, log_scale, teacher_logits.detach(), mask, family, teacher_norm, float(temperature), float(min_scale),
        REDUCTION_CODES[reduction], _requires_grad(loc, log_scale), True,
    )
    return loss


def ensemble_kl(student_logits: Tensor, teacher, *, mask: Optional[Tensor], reduction: str) -> Tensor:
    loss, _ = torch.ops.edd_ext.ensemble_kl(
        student_logits, *_logits_or(teacher, "mean_probs"), mask, REDUCTION_CODES[reduction],
        _requires_grad(student_logits), True
    )
    return loss
