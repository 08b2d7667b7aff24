"""Fused distillation losses (SPEC section 2): EnD^2 Dirichlet NLL, proxy-Dirichlet KL, logit-space Gaussian
and Laplace NLL, and the ensemble-KL baseline.

Each loss is one C++ (CPU) / CUDA op that computes the per-position loss and its closed-form gradient in a
single fused pass over the teacher; from raw teacher logits ``[*, M, V]`` no ``[*, M, V]`` intermediate is
ever materialised. ``edd_ext.reference`` holds the plain-PyTorch definitions with the same signatures; it is
used as the fallback where the compiled ops are missing (no build, or a device without kernels).

Conventions (SPEC section 0 and ``edd_ext.reference``): student tensors ``[*, V]``; the teacher is raw logits
``[*, M, V]`` or an :class:`~edd_ext.EnsembleStats` (a constant: no gradient reaches it); ``mask`` ``[*]``
bool (True = a real position); every loss is summed over the V classes per position, then reduced with
``reduction`` (``"none"`` -> ``[*]``, ``"sum"``, ``"mean"`` over the unmasked positions, 0 when none is).
The student and the teacher may have different floating dtypes: the math runs in float32 (float64 when
either is float64), the loss has that dtype and the gradient the student's. The gradients are computed in
closed form in the forward pass; they are first order (no double backward through these losses).
"""
from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import Tensor

from . import _loss_ops, _ops
from . import reference as _reference
from ._reduction import check_reduction
from ._validation import check_choice
from .reference import _check_logit_inputs, _check_number, _check_teacher
from .types import EnsembleStats

__all__ = [
    "dirichlet_nll",
    "proxy_dirichlet_kl",
    "logit_gaussian_nll",
    "logit_laplace_nll",
    "ensemble_kl",
]

Teacher = Union[Tensor, EnsembleStats]

DIRECTIONS = ("reverse", "forward")
PRECISIONS = ("mkl", "epkl")
TEACHER_NORMS = ("log_softmax", "center", "none")

_warned_devices: set = set()


def _fused(device: torch.device) -> bool:
    """Whether the compiled ops serve tensors on ``device``; warns once per device type when they do not."""
    if not _ops.use_extension():
        return False
    if device.type == "cpu" or (device.type == "cuda" and _ops.cuda_built()):
        return True
    if device.type not in _warned_devices:
        warnings.warn(
            f"edd_ext: no compiled loss kernels for device type {device.type!r}; using the plain-PyTorch "
            "reference implementations.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned_devices.add(device.type)
    return False


def _teacher_parts(teacher: Teacher):
    """(logits or None, stats or None)."""
    return (None, teacher) if isinstance(teacher, EnsembleStats) else (teacher, None)


def dirichlet_nll(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    model_offset: float = 1.0,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """EnD^2: negative log-likelihood of the members' probability vectors under the student Dirichlet
    (SPEC section 2.1), fused.

    With alpha_k = exp(z_k) + c (c = ``model_offset``), alpha_0 = sum_k alpha_k and the teacher's mean
    log-probability l-_k = (1/M) sum_m ln pi^(m)_k:

        L = sum_k lnGamma(alpha_k) - lnGamma(alpha_0) - sum_k (alpha_k - 1) l-_k
        dL/dz_k = (alpha_k - c) (psi(alpha_k) - psi(alpha_0) - l-_k)

    alpha_0 and the per-position sums are float64, so the loss stays finite for z up to 80 at any V. With
    M = 1 or identical members the loss is unbounded below in the precision direction (the model's nature).

    A teacher logit of -inf is a probability of 0: where a member gives class k probability 0 (and no smoothing
    was applied to the statistics), l-_k = -inf and the negative log-likelihood is infinite; the loss is then
    +inf, with a gradient of +inf for that class, never NaN. A student logit of -inf (alpha_k = c) stays finite.

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`EnsembleStats` (uses
        ``mean_log_probs``); mask: ``[*]`` bool. Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """
    check_reduction(reduction)
    _check_number("model_offset", model_offset, minimum=0.0)
    _check_teacher("student_logits", student_logits, teacher, mask)
    if not _fused(student_logits.device):
        return _reference.dirichlet_nll(student_logits, teacher, model_offset=model_offset, mask=mask,
                                        reduction=reduction)
    logits, stats = _teacher_parts(teacher)
    return _loss_ops.dirichlet_nll(
        student_logits, logits, None if stats is None else stats.mean_log_probs, mask, model_offset, reduction
    )


def proxy_dirichlet_kl(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    direction: str = "reverse",
    precision: str = "mkl",
    model_offset: float = 1.0,
    target_offset: float = 1.0,
    eps: float = 1.1920929e-7,
    max_precision: Optional[float] = None,
    reference_code_compat: bool = False,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Proxy-Dirichlet KL to a target with the ensemble's mean and a precision from its diversity
    (SPEC section 2.2), fused.

    Target: beta^_0 = (V - 1) / (2 max(RMI, 0) + eps) (``precision="mkl"``) or (V - 1) / (max(EPKL, 0) + eps)
    (``"epkl"``), clamped to ``max_precision``; beta_k = beta^_0 pi^_k + t, beta_0 = beta^_0 + t V
    (t = ``target_offset``). Student alpha_k = exp(z_k) + c (c = ``model_offset``).

        direction="reverse":  L = KL[Dir(alpha) || Dir(beta)] / beta_0
            dL/dz_j = (alpha_j - c) [psi'(alpha_j)(alpha_j - beta_j) - psi'(alpha_0)(alpha_0 - beta_0)] / beta_0
        direction="forward":  L = KL[Dir(beta) || Dir(alpha)] / beta_0
            dL/dz_j = (alpha_j - c) [psi(alpha_j) - psi(alpha_0) - psi(beta_j) + psi(beta_0)] / beta_0

    The loss is >= 0 and zero at alpha = beta; the target is a constant. A teacher logit of -inf is a probability
    of exactly 0 (0 ln 0 = 0): the target stays finite, equal to its limit (when only some members give a class
    probability 0, RMI and EPKL are +inf and beta^_0 = 0).

    ``reference_code_compat=True`` (reverse only) reproduces the released code's objective,
    L = -sum_k pi^_k (psi(alpha_k) - psi(alpha_0)) - H[Dir(alpha)] / beta_0. It differs from the exact KL / beta_0
    by a z-dependent term: its optimum is alpha = beta_0 pi^ + 1, of precision beta^_0 + (t + 1) V
    (beta^_0 + 2V for t = 1) instead of beta^_0 + t V, and it is not zero there. Use it only to match
    published numbers.

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`EnsembleStats` (uses
        ``mean_probs`` and ``rmi`` or ``epkl``); mask: ``[*]`` bool. Output: ``[*]`` for
        ``reduction="none"``, else a scalar.
    """
    check_reduction(reduction)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("precision", precision, PRECISIONS)
    _check_number("model_offset", model_offset, minimum=0.0)
    _check_number("target_offset", target_offset, minimum=0.0)
    _check_number("eps", eps, minimum=0.0, strict=True)
    if max_precision is not None:
        _check_number("max_precision", max_precision, minimum=0.0, strict=True)
    if not isinstance(reference_code_compat, bool):
        raise ValueError(f"reference_code_compat: expected a bool, got {reference_code_compat!r}")
    if reference_code_compat and direction != "reverse":
        raise ValueError(
            f"reference_code_compat: the released code's objective exists for direction='reverse' only, "
            f"got direction={direction!r}"
        )
    _check_teacher("student_logits", student_logits, teacher, mask)
    options = dict(direction=direction, precision=precision, model_offset=model_offset, target_offset=target_offset,
                   eps=eps, max_precision=max_precision, reference_code_compat=reference_code_compat)
    if not _fused(student_logits.device):
        return _reference.proxy_dirichlet_kl(student_logits, teacher, mask=mask, reduction=reduction, **options)
    logits, stats = _teacher_parts(teacher)
    mean_probs = measure = None
    if stats is not None:
        mean_probs = stats.mean_probs
        measure = stats.rmi if precision == "mkl" else stats.epkl
    return _loss_ops.proxy_dirichlet_kl(student_logits, logits, mean_probs, measure, mask, reduction=reduction,
                                        **options)


def _logit_nll(family, loc, log_scale, teacher_logits, teacher_norm, temperature, min_scale, mask, reduction):
    _check_logit_inputs(loc, log_scale, teacher_logits, teacher_norm, temperature, min_scale, mask, reduction)
    if not _fused(loc.device):
        fn = _reference.logit_gaussian_nll if family == "gaussian" else _reference.logit_laplace_nll
        return fn(loc, log_scale, teacher_logits, teacher_norm=teacher_norm, temperature=temperature,
                  min_scale=min_scale, mask=mask, reduction=reduction)
    return _loss_ops.logit_nll(loc, log_scale, teacher_logits, mask, family=family, teacher_norm=teacher_norm,
                               temperature=temperature, min_scale=min_scale, reduction=reduction)


def logit_gaussian_nll(
    loc: Tensor,
    log_scale: Tensor,
    teacher_logits: Tensor,
    *,
    teacher_norm: str = "log_softmax",
    temperature: float = 1.0,
    min_scale: float = 0.0,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Gaussian NLL of the members' normalised logits (SPEC section 2.3), fused.

    With s_k = exp(rho_k) + ``min_scale`` (rho = ``log_scale``) and targets x^(m) = log_softmax(u^(m) / T)
    (``teacher_norm="log_softmax"``), u/T minus each member's mean logit (``"center"``) or u/T (``"none"``):

        L = sum_k [ ln s_k + 1/2 ln 2pi + v_k / (2 s_k^2) ],   v_k = (1/M) sum_m (x^(m)_k - mu_k)^2
        dL/dmu_k = (mu_k - x-_k) / s_k^2,   dL/drho_k = (1 - v_k / s_k^2) (s_k - min_scale) / s_k

    v is accumulated in centred form, v = (1/M) sum_m (x - x-)^2 + (x- - mu)^2, never as
    E[x^2] - 2 mu E[x] + mu^2. ``"center"`` subtracts the mean of the logits other than -inf.

    A teacher logit of -inf is a target of -inf, whose likelihood is 0: the loss is then +inf (never NaN), with
    gradients +inf (loc) and -inf (log_scale) for that class.

    Shape:
        loc, log_scale: ``[*, V]`` (same dtype); teacher_logits: ``[*, M, V]``; mask: ``[*]`` bool.
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """
    return _logit_nll("gaussian", loc, log_scale, teacher_logits, teacher_norm, temperature, min_scale, mask,
                      reduction)


def logit_laplace_nll(
    loc: Tensor,
    log_scale: Tensor,
    teacher_logits: Tensor,
    *,
    teacher_norm: str = "log_softmax",
    temperature: float = 1.0,
    min_scale: float = 0.0,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """Laplace NLL of the members' normalised logits (SPEC section 2.3), fused.

    With s_k = exp(rho_k) + ``min_scale`` and targets x^(m) as in :func:`logit_gaussian_nll`:

        L = sum_k [ ln s_k + ln 2 + a_k / s_k ],   a_k = (1/M) sum_m |x^(m)_k - mu_k|
        dL/dmu_k = -(1/(M s_k)) sum_m sign(x^(m)_k - mu_k),   dL/drho_k = (1 - a_k / s_k)(s_k - min_scale) / s_k

    Its optimum is mu at a median of the members' targets and s at their mean absolute deviation from it. A
    teacher logit of -inf is a target of -inf: the loss is then +inf (never NaN).

    Shape:
        loc, log_scale: ``[*, V]`` (same dtype); teacher_logits: ``[*, M, V]``; mask: ``[*]`` bool.
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """
    return _logit_nll("laplace", loc, log_scale, teacher_logits, teacher_norm, temperature, min_scale, mask,
                      reduction)


def ensemble_kl(
    student_logits: Tensor,
    teacher: Teacher,
    *,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """EnD baseline: KL from the ensemble mean to the student's categorical (SPEC section 2.4), fused.

        L = sum_k pi^_k (ln pi^_k - log_softmax(z)_k),   dL/dz = softmax(z) - pi^

    with 0 ln 0 = 0: a teacher logit of -inf (a probability of 0) adds nothing. Standard distillation to the
    ensemble mean; it gives no knowledge uncertainty.

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`EnsembleStats` (uses
        ``mean_probs``); mask: ``[*]`` bool. Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """
    check_reduction(reduction)
    _check_teacher("student_logits", student_logits, teacher, mask)
    if not _fused(student_logits.device):
        return _reference.ensemble_kl(student_logits, teacher, mask=mask, reduction=reduction)
    logits, stats = _teacher_parts(teacher)
    return _loss_ops.ensemble_kl(student_logits, logits, None if stats is None else stats.mean_probs, mask,
                                 reduction)
