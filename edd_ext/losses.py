"""Fused distillation losses (SPEC section 2): EnD^2 Dirichlet NLL, proxy-Dirichlet KL, logit-space Gaussian
and Laplace NLL, and the ensemble-KL baseline.

Each loss is one C++ (CPU) / CUDA op that computes the per-position loss and its closed-form gradient in a
single fused pass over the teacher; from raw teacher logits ``[*, M, V]`` no ``[*, M, V]`` intermediate is ever
materialised. Every function here follows one pattern: check the arguments (``edd_ext._validation``), then run
the op through its wrapper (``edd_ext._ops.losses``), or, where the compiled ops do not serve the inputs'
device (``edd_ext._ops.fused``), the plain-PyTorch definition in ``edd_ext.reference``. Signatures, defaults and
docstrings come from ``edd_ext._signatures``.

Conventions (SPEC section 0): student tensors ``[*, V]``; the teacher is raw logits ``[*, M, V]``, an
:class:`~edd_ext.EnsembleStats` or a :class:`~edd_ext.TopKEnsembleStats` (a constant: no gradient reaches it);
``mask`` ``[*]`` bool (True = a real position); every loss is summed over the V classes per position, then
reduced with ``reduction`` (``"none"`` -> ``[*]``, ``"sum"``, ``"mean"`` over the unmasked positions, 0 when none
is). The student and the teacher may
have different floating dtypes: the math runs in float32 (float64 when either is float64), the loss has that
dtype and the gradient the student's. The gradients are computed in closed form in the forward pass; they are
first order (no double backward through these losses).
"""
from __future__ import annotations

from . import _ops, reference
from . import _signatures as S
from . import _validation as V
from .types import TopKEnsembleStats, TopKLogitTargets

__all__ = ["dirichlet_nll", "proxy_dirichlet_kl", "logit_gaussian_nll", "logit_laplace_nll", "ensemble_kl"]

_FUSED = """
    Implementation: one fused C++ / CUDA op computes the loss and its gradient in a single pass over the teacher;
    devices the loaded build has no kernels for are served by :mod:`edd_ext.reference` (with a warning).
"""


def _categorical_loss(name: str, check_options):
    """The public form of a loss of ``student_logits [*, V]`` against a categorical teacher (logits, statistics or
    top-k statistics: the last have ops of their own, ``_ops.topk``)."""
    fused_op, topk_op, plain = getattr(_ops.losses, name), getattr(_ops.topk, name), getattr(reference, name)

    @S.implements(S.LOSSES[name], note=_FUSED)
    def loss(student_logits, teacher, *, mask, reduction, **options):
        check_options(reduction=reduction, **options)
        V.check_teacher("student_logits", student_logits, teacher, mask)
        if not _ops.fused(student_logits):
            fn = plain
        else:
            fn = topk_op if isinstance(teacher, TopKEnsembleStats) else fused_op
        return fn(student_logits, teacher, mask=mask, reduction=reduction, **options)

    return loss


dirichlet_nll = _categorical_loss("dirichlet_nll", V.check_dirichlet_nll_options)
proxy_dirichlet_kl = _categorical_loss("proxy_dirichlet_kl", V.check_proxy_dirichlet_kl_options)
ensemble_kl = _categorical_loss("ensemble_kl", V.check_ensemble_kl_options)


def _logit_nll(family, loc, log_scale, teacher_logits, *, mask, reduction, **options):
    V.check_logit_nll_options(reduction=reduction, **options)
    V.check_loc_scale(loc, log_scale)
    V.check_logit_teacher(loc, teacher_logits, mask)
    if isinstance(teacher_logits, TopKLogitTargets) or not _ops.fused(loc):  # top-k targets: plain PyTorch
        fn = reference.logit_gaussian_nll if family == "gaussian" else reference.logit_laplace_nll
        return fn(loc, log_scale, teacher_logits, mask=mask, reduction=reduction, **options)
    return _ops.losses.logit_nll(loc, log_scale, teacher_logits, family=family, mask=mask, reduction=reduction,
                                 **options)


@S.implements(S.logit_gaussian_nll, note=_FUSED)
def logit_gaussian_nll(loc, log_scale, teacher_logits, **options):
    return _logit_nll("gaussian", loc, log_scale, teacher_logits, **options)


@S.implements(S.logit_laplace_nll, note=_FUSED)
def logit_laplace_nll(loc, log_scale, teacher_logits, **options):
    return _logit_nll("laplace", loc, log_scale, teacher_logits, **options)
