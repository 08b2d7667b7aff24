"""Fused linear losses (SPEC section 2.5): from the student's last hidden states to the distillation loss without
a ``[*, V]`` student tensor or, with :class:`~edd_ext.LinearTeachers`, a ``[*, M, V]`` teacher tensor.

``E.linear_<loss>(input, linear_weight, teacher, *, linear_bias=None, chunk_size=None, ...)`` equals
``E.<loss>(F.linear(input, linear_weight, linear_bias), teacher, ...)``, in value and in the gradients of
``input``, ``linear_weight`` and ``linear_bias``, but is computed chunk by chunk over the positions: each chunk's
logits are formed, run through the loss's fused kernel (loss and logit gradient in one pass) and turned at once
into the chunk's share of the parameter gradients, so at no time is more than a chunk of logits alive, in the
forward or the backward (the calling convention of ``torch.nn.functional.linear_cross_entropy``; the method of
Liger-Kernel's fused linear losses and Cut Cross-Entropy). The op and its autograd are in
``edd_ext._ops.linear``.

The teacher is what the logit-level loss takes (``[*, M, V]`` logits, or an :class:`~edd_ext.EnsembleStats` or
:class:`~edd_ext.TopKEnsembleStats` for the categorical and Dirichlet losses; not the plain-PyTorch
:class:`~edd_ext.TopKLogitTargets`), or ``E.LinearTeachers(input, linear_weight, linear_bias)``: the teachers'
last hidden states and output layers, multiplied out one chunk at a time. Teachers get no gradient.

Memory: the backward keeps ``grad_input`` ``[*, D]`` and the parameter gradients (computed in the forward); a
chunk takes about ``chunk_size x (M + 2) x V`` floats (``(M + 4) x V`` for the logit-space losses). The default
``chunk_size`` (None) sizes a chunk to about 512 MiB from V, M and D, within 256 to 1024 positions
(``edd_ext._ops.linear.auto_chunk_size``; 694 positions at V = 32000, M = 4, D = 256; 256 at V = 128000).

Masked positions (``mask`` False) contribute exactly 0 and get exactly 0 gradient whatever their hidden states
hold, NaN included. On CPU they are not computed at all (each chunk gathers unmasked positions by index); on
other devices they are zeroed and skipped inside the chunk instead, since gathering them by index would need the
count on the host (a device synchronisation). No function here synchronises with the device.

``reduction="none"`` computes the per-position losses in the forward and recomputes every chunk in the backward
(the incoming gradient differs per position, so it cannot be folded in beforehand): twice the matmuls of
``"sum"`` / ``"mean"``. The gradients are first order (no double backward).
"""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor

from . import _signatures as S
from . import _validation as V
from ._ops import linear as _op
from .types import EnsembleStats, LinearTeachers, TopKEnsembleStats

__all__ = [
    "linear_dirichlet_nll",
    "linear_proxy_dirichlet_kl",
    "linear_ensemble_kl",
    "linear_logit_gaussian_nll",
    "linear_logit_laplace_nll",
]

LinearTeacher = Union[Tensor, EnsembleStats, TopKEnsembleStats, LinearTeachers]


def _stand_in(input: Tensor, vocab: int) -> Tensor:
    """A zero-stride tensor with the shape ``[*, V]``, dtype and device of the student's logits, so that the
    logit-level checks apply unchanged; nothing is allocated."""
    return input.new_zeros(()).expand(*input.shape[:-1], vocab)


def _linear(loss: str, input: Tensor, weights: dict, biases: dict, teacher: LinearTeacher,
            chunk_size: Optional[int], mask: Optional[Tensor], reduction: str, **options) -> Tensor:
    """Check, flatten the positions ``[*]`` to ``[N]``, run the op, restore ``[*]`` for ``reduction="none"``."""
    V.check_linear_options(loss, chunk_size=chunk_size, reduction=reduction, **options)
    V.check_linear(input, weights, biases)
    first_weight = next(iter(weights))
    weight_list, bias_list = list(weights.values()), list(biases.values())
    batch, width = input.shape[:-1], input.shape[-1]
    vocab = weight_list[0].shape[0]
    logit_loss = len(weights) == 2
    teacher_args = {}
    if isinstance(teacher, LinearTeachers):
        V.check_linear_teachers(teacher, batch, vocab, input.device, first_weight)
        V.check_mask(mask, batch, input.device)
        hidden, weight, bias = teacher
        if isinstance(hidden, Tensor):
            hidden, weight, bias = [hidden.reshape(-1, *hidden.shape[-2:])], [weight], [bias]
        else:
            hidden = [h.reshape(-1, h.shape[-1]) for h in hidden]
            bias = [None] * len(hidden) if bias is None else list(bias)
        teacher_args = dict(teacher_inputs=hidden, teacher_weights=list(weight), teacher_biases=bias)
    elif logit_loss:
        V.check_linear_logit_teacher(_stand_in(input, vocab), teacher, mask)
        teacher_args = dict(teacher_logits=teacher.reshape(-1, *teacher.shape[-2:]))
    else:
        V.check_teacher(f"input @ {first_weight}.T", _stand_in(input, vocab), teacher, mask)
        if isinstance(teacher, (EnsembleStats, TopKEnsembleStats)):
            kind, fields = (("teacher_stats", EnsembleStats._fields[:-1]) if isinstance(teacher, EnsembleStats)
                            else ("teacher_top_k", TopKEnsembleStats._fields[:-2]))
            teacher_args = {kind: [getattr(teacher, f).reshape(-1, *getattr(teacher, f).shape[len(batch):])
                                   for f in fields]}
        else:
            teacher_args = dict(teacher_logits=teacher.reshape(-1, *teacher.shape[-2:]))
    out = _op.linear_loss(
        loss, input.reshape(-1, width), weight_list, bias_list, mask=None if mask is None else mask.reshape(-1),
        reduction=reduction, chunk_size=chunk_size, **teacher_args, **options,
    )
    return out.reshape(batch) if reduction == "none" else out


_NOTE = """
    Implementation: one custom op (``torch.ops.edd_ext.linear_loss``, in ``edd_ext._ops.linear``) runs the chunks,
    each through the loss's fused kernel; devices the loaded build has no kernels for use :mod:`edd_ext.reference`
    per chunk (with a warning).
"""


def _distribution_form(loss: str):
    """``linear_<loss>`` for a loss of one ``[*, V]`` student tensor (the categorical and Dirichlet losses)."""

    @S.implements(S.linear_stub(loss), note=_NOTE)
    def fn(input, linear_weight, teacher, *, linear_bias, chunk_size, mask, reduction, **options):
        return _linear(loss, input, {"linear_weight": linear_weight}, {"linear_bias": linear_bias}, teacher,
                       chunk_size, mask, reduction, **options)

    return fn


def _logit_form(loss: str):
    """``linear_<loss>`` for a logit-space loss: two output layers, the location's and the log-scale's."""

    @S.implements(S.linear_stub(loss), note=_NOTE)
    def fn(input, loc_weight, log_scale_weight, teacher, *, loc_bias, log_scale_bias, chunk_size, mask, reduction,
           **options):
        return _linear(loss, input, {"loc_weight": loc_weight, "log_scale_weight": log_scale_weight},
                       {"loc_bias": loc_bias, "log_scale_bias": log_scale_bias}, teacher, chunk_size, mask, reduction,
                       **options)

    return fn


linear_dirichlet_nll = _distribution_form("dirichlet_nll")
linear_proxy_dirichlet_kl = _distribution_form("proxy_dirichlet_kl")
linear_ensemble_kl = _distribution_form("ensemble_kl")
linear_logit_gaussian_nll = _logit_form("logit_gaussian_nll")
linear_logit_laplace_nll = _logit_form("logit_laplace_nll")
