"""Plain-PyTorch reference implementations of every formula in SPEC sections 1-3.

This module is the readable definition of what ``edd_ext`` computes. It serves three purposes:

* the oracle base for the kernel tests (call it with float64 inputs for a float64 truth);
* the benchmark peer, written the way published distillation code does it: ``log_softmax`` of every
  member, the ``[*, M, V]`` probabilities and log-probabilities materialised, special functions from
  ``torch.lgamma`` / ``torch.digamma`` (whose autograd uses ``torch.polygamma``);
* the fallback used when the compiled extension is absent.

Every public function has the name and keywords of the fused op it stands for (SPEC section 6).

Conventions (SPEC section 0):

* teacher logits are ``[*, M, V]``, student tensors ``[*, V]``, masks and per-position results ``[*]``;
* every loss is per position and summed over the V classes, then reduced with ``reduction``
  (``"none"`` -> ``[*]``, ``"sum"``, ``"mean"`` over the unmasked positions, 0 when there are none);
* computation runs in the inputs' dtype promoted to at least float32: float16 and bfloat16 inputs are
  upcast to float32, float64 stays float64, and the results have that dtype;
* every function is differentiable with autograd with respect to the student tensors. In the losses the
  teacher is a constant: teacher logits and :class:`EnsembleStats` are detached, no gradient reaches them;
* a masked position (``mask == False``) contributes exactly 0 to the loss and receives exactly 0
  gradient whatever it holds, NaN included: its inputs are replaced by harmless values with
  ``torch.where`` *before* anything is computed, and its loss is selected away afterwards.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from . import _signatures as S
from . import logit_top_k
from ._validation import (
    FAMILIES,
    check_choice,
    check_dirichlet_nll_options,
    check_ensemble_kl_options,
    check_loc_scale,
    check_logit_nll_options,
    check_logit_teacher,
    check_number,
    check_proxy_dirichlet_kl_options,
    check_stats_options,
    check_student_logits,
    check_teacher,
    check_teacher_logits,
    check_top_k,
    check_top_k_logit_targets,
)
from .types import DirichletUncertainty, EnsembleStats, TopKEnsembleStats, TopKLogitTargets, Uncertainty

__all__ = [
    "ensemble_stats",
    "ensemble_uncertainty",
    "top_k_stats",
    "top_k_dense_stats",
    "dirichlet_nll",
    "proxy_dirichlet_kl",
    "logit_gaussian_nll",
    "logit_laplace_nll",
    "ensemble_kl",
    "dirichlet_uncertainty",
    "logit_distribution_uncertainty",
    "gaussian_epkl_approximation",
]

Teacher = S.Teacher
_REFERENCE = """
    Implementation: the plain-PyTorch definition (materialises ``[*, M, V]``; the test oracle and benchmark peer).
"""

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype the formulas run in: the inputs' promoted dtype, at least float32."""
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def reduce_loss(loss: Tensor, mask: Optional[Tensor], reduction: str) -> Tensor:
    """Reduce a per-position loss ``[*]``.

    Masked positions (``mask == False``) contribute exactly zero, whatever their value (NaN included):
    they are selected away with ``torch.where``, never multiplied by zero.
    ``"mean"`` divides by the number of unmasked positions and is 0 when there are none.
    """
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = mask.sum() if mask is not None else torch.tensor(loss.numel(), device=loss.device)
    return total / count.clamp_min(1).to(loss.dtype)


def _log_of(value: float) -> float:
    """ln(value) for value >= 0, with ln(0) = -inf."""
    return math.log(value) if value > 0 else -math.inf


def _fill_masked(x: Tensor, mask: Optional[Tensor], value: float) -> Tensor:
    """Replace the masked positions of ``x`` (``[*, ...]``, mask ``[*]``) by ``value``.

    ``torch.where`` (not a multiplication) so that NaN and inf never leak out of a masked position,
    in the forward pass or in the backward pass.
    """
    if mask is None:
        return x
    keep = mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    return torch.where(keep, x, torch.full((), value, dtype=x.dtype, device=x.device))


def _xmul(p: Tensor, x: Tensor) -> Tensor:
    """``p * x`` with the convention 0 * x = 0 (for 0 ln 0 = 0 when a teacher logit is -inf).

    NaN in ``p`` still propagates, so a broken teacher is never silently hidden.
    """
    return torch.where(p == 0, torch.zeros((), dtype=p.dtype, device=p.device), p * x)


def _concentrations(student_logits: Tensor, model_offset: float) -> tuple[Tensor, Tensor]:
    """Student Dirichlet concentrations ``alpha = exp(z) + c`` and ``ln alpha = logaddexp(z, ln c)``.

    ``ln alpha`` is computed in log space so that it is exact where ``exp(z)`` underflows
    (``c = 0`` and very negative ``z``).
    """
    alpha = student_logits.exp() + model_offset
    log_c = student_logits.new_tensor(_log_of(model_offset))
    log_alpha = torch.logaddexp(student_logits, log_c)
    return alpha, log_alpha


def _scale(log_scale: Tensor, min_scale: float) -> tuple[Tensor, Tensor]:
    """``s = exp(rho) + min_scale`` and ``ln s = logaddexp(rho, ln min_scale)``."""
    log_s = torch.logaddexp(log_scale, log_scale.new_tensor(_log_of(min_scale)))
    return log_s.exp(), log_s


def _log_beta(concentration: Tensor, precision: Tensor) -> Tensor:
    """ln B(a) = sum_k lnGamma(a_k) - lnGamma(a_0): the log normaliser of Dir(a). ``[*, V], [*] -> [*]``."""
    return torch.lgamma(concentration).sum(-1) - torch.lgamma(precision)


def _dirichlet_kl(a: Tensor, a0: Tensor, b: Tensor, b0: Tensor) -> Tensor:
    """KL[Dir(a) || Dir(b)] = ln B(b) - ln B(a) + sum_k (a_k - b_k)(psi(a_k) - psi(a_0)).

    Expanded, this is the SPEC's lnGamma(a0) - sum lnGamma(a_k) - lnGamma(b0) + sum lnGamma(b_k)
    + sum_k (a_k - b_k)(psi(a_k) - psi(a0)). ``a, b: [*, V]``, ``a0, b0: [*]`` -> ``[*]``.
    """
    expected_log = torch.digamma(a) - torch.digamma(a0).unsqueeze(-1)  # E_{Dir(a)}[ln pi_k]
    return _log_beta(b, b0) - _log_beta(a, a0) + ((a - b) * expected_log).sum(-1)


def _dirichlet_entropy(alpha: Tensor, alpha0: Tensor) -> Tensor:
    """H[Dir(alpha)] = sum lnGamma(alpha_k) - lnGamma(alpha0) - sum (alpha_k - 1)(psi(alpha_k) - psi(alpha0))."""
    expected_log = torch.digamma(alpha) - torch.digamma(alpha0).unsqueeze(-1)
    return _log_beta(alpha, alpha0) - ((alpha - 1.0) * expected_log).sum(-1)


def _resolve_teacher(
    student_name: str, student: Tensor, teacher: Teacher, mask: Optional[Tensor]
) -> tuple[Tensor, EnsembleStats]:
    """Validate ``student [*, V]``, ``teacher`` and ``mask``; return the student (upcast, masked
    positions set to 0) and the teacher's statistics (detached, same dtype, masked positions made finite)."""
    teacher_dtype = check_teacher(student_name, student, teacher, mask)
    dtype = _compute_dtype(student.dtype, teacher_dtype)
    student = _fill_masked(student.to(dtype), mask, 0.0)
    if isinstance(teacher, TopKEnsembleStats):
        if mask is not None:  # any k distinct classes, so that a masked position's indices scatter
            listed = torch.arange(teacher.top_k, device=student.device).expand_as(teacher.indices)
            teacher = teacher._replace(indices=torch.where(mask.unsqueeze(-1), teacher.indices.long(), listed))
        teacher = top_k_dense_stats(teacher)
    if isinstance(teacher, Tensor):
        logits = _fill_masked(teacher.detach().to(dtype), mask, 0.0)
        return student, _ensemble_stats(logits, temperature=1.0, smoothing=0.0)
    num_classes = student.shape[-1]
    stats = EnsembleStats(
        mean_probs=_fill_masked(teacher.mean_probs.detach().to(dtype), mask, 1.0 / num_classes),
        mean_log_probs=_fill_masked(teacher.mean_log_probs.detach().to(dtype), mask, -math.log(num_classes)),
        total=_fill_masked(teacher.total.detach().to(dtype), mask, 0.0),
        data=_fill_masked(teacher.data.detach().to(dtype), mask, 0.0),
        mutual_information=_fill_masked(teacher.mutual_information.detach().to(dtype), mask, 0.0),
        epkl=_fill_masked(teacher.epkl.detach().to(dtype), mask, 0.0),
        rmi=_fill_masked(teacher.rmi.detach().to(dtype), mask, 0.0),
        num_members=teacher.num_members,
    )
    return student, stats


# --------------------------------------------------------------------------------------------------
# SPEC section 1: teacher statistics
# --------------------------------------------------------------------------------------------------


def _ensemble_stats(teacher_logits: Tensor, *, temperature: float, smoothing: float) -> EnsembleStats:
    """:func:`ensemble_stats` without the checks, on logits already in the compute dtype."""
    num_members, num_classes = teacher_logits.shape[-2], teacher_logits.shape[-1]

    # ln pi^(m) = u/T - logsumexp(u/T), for every member: [*, M, V]
    log_probs = torch.log_softmax(teacher_logits / temperature, dim=-1)
    if smoothing > 0:
        # pi~ = (1 - eps) pi + eps/V, in log space: ln pi~ = logaddexp(ln(1 - eps) + ln pi, ln(eps/V))
        uniform = log_probs.new_tensor(math.log(smoothing / num_classes))
        log_probs = torch.logaddexp(log_probs + math.log1p(-smoothing), uniform)
    probs = log_probs.exp()  # pi^(m)  [*, M, V]

    mean_probs = probs.mean(-2)  # pi^_k                      [*, V]
    mean_log_probs = log_probs.mean(-2)  # l-_k = mean_m ln pi^(m)_k  [*, V]
    log_mean_probs = torch.logsumexp(log_probs, dim=-2) - math.log(num_members)  # ln pi^_k, in log space

    total = -_xmul(mean_probs, log_mean_probs).sum(-1)  # TU = H[pi^]
    data = -_xmul(probs, log_probs).sum(-1).mean(-1)  # DU = mean_m H[pi^(m)]
    mutual_information = total - data  # MI = TU - DU
    epkl = -_xmul(mean_probs, mean_log_probs).sum(-1) - data  # EPKL = -sum pi^ l- - DU
    rmi = _xmul(mean_probs, log_mean_probs - mean_log_probs).sum(-1)  # RMI = sum pi^ (ln pi^ - l-)
    return EnsembleStats(
        mean_probs=mean_probs,
        mean_log_probs=mean_log_probs,
        total=total,
        data=data,
        mutual_information=mutual_information,
        epkl=epkl,
        rmi=rmi,
        num_members=num_members,
    )


def ensemble_stats(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0,
                   top_k: Optional[int] = None):
    """Statistics of an ensemble of M categoricals (SPEC section 1).

    With pi^(m) = softmax(u^(m) / T) (optionally smoothed, pi~ = (1 - eps) pi + eps / V, in log space):

    * ``mean_probs``      pi^_k = (1/M) sum_m pi^(m)_k
    * ``mean_log_probs``  l-_k  = (1/M) sum_m ln pi^(m)_k, computed as u/T - logsumexp(u/T), never as
      the log of an underflowed probability
    * ``total``               TU  = H[pi^] = -sum_k pi^_k ln pi^_k
    * ``data``                DU  = (1/M) sum_m H[pi^(m)]
    * ``mutual_information``  MI  = TU - DU
    * ``epkl``                EPKL = -sum_k pi^_k l-_k - DU   (the mean of all M^2 pairwise KLs)
    * ``rmi``                 RMI = sum_k pi^_k (ln pi^_k - l-_k) = EPKL - MI

    Shape:
        teacher_logits: ``[*, M, V]`` (M >= 1, V >= 2).
        Output: ``mean_probs``, ``mean_log_probs`` ``[*, V]``; the five measures ``[*]``;
        ``num_members = M``. Float32, or float64 for float64 logits.

    Args:
        temperature: T > 0, divides the logits.
        smoothing: eps in [0, 1), central smoothing of every member's probabilities.
        top_k: k in [1, V]: return the compact :class:`TopKEnsembleStats` of :func:`top_k_stats` instead.
    """
    check_teacher_logits("teacher_logits", teacher_logits)
    check_stats_options(temperature, smoothing)
    if top_k is not None:
        check_top_k(top_k, teacher_logits.shape[-1])
    logits = teacher_logits.to(_compute_dtype(teacher_logits.dtype))
    stats = _ensemble_stats(logits, temperature=temperature, smoothing=smoothing)
    return stats if top_k is None else top_k_stats(stats, top_k)


def top_k_stats(stats: EnsembleStats, top_k: int) -> TopKEnsembleStats:
    """The top-k form of dense statistics (SPEC section 1.1).

    * ``indices``: the k classes of largest pi^, by decreasing pi^ (a stable sort: ties keep the smaller class
      first); ``mean_probs`` and ``mean_log_probs`` their pi^ and l-;
    * ``tail_mass``: tau = sum of pi^ over the other V - k classes (= 1 - sum of the listed pi^, summed over the
      tail itself so that it keeps its digits when the listed classes hold nearly all the mass);
    * ``tail_mean_log_prob``: lambda = (1 / (V - k)) sum of l- over the tail (0 when k = V);
    * the five measures as they are (exact over all V classes).

    Shape: ``[*, V]`` rows -> ``[*, k]`` listed values and ``[*]`` tail and measures.
    """
    num_classes = stats.mean_probs.shape[-1]
    check_top_k(top_k, num_classes)
    order = torch.sort(stats.mean_probs, dim=-1, descending=True, stable=True).indices
    indices = order[..., :top_k]
    in_tail = torch.ones_like(stats.mean_probs, dtype=torch.bool).scatter(-1, indices, False)
    zero = torch.zeros((), dtype=stats.mean_probs.dtype, device=stats.mean_probs.device)
    tail_log_sum = torch.where(in_tail, stats.mean_log_probs, zero).sum(-1)
    return TopKEnsembleStats(
        indices=indices,
        mean_probs=stats.mean_probs.gather(-1, indices),
        mean_log_probs=stats.mean_log_probs.gather(-1, indices),
        tail_mass=torch.where(in_tail, stats.mean_probs, zero).sum(-1),
        tail_mean_log_prob=tail_log_sum / max(num_classes - top_k, 1),
        total=stats.total,
        data=stats.data,
        mutual_information=stats.mutual_information,
        epkl=stats.epkl,
        rmi=stats.rmi,
        num_classes=num_classes,
        num_members=stats.num_members,
    )


def top_k_dense_stats(stats: TopKEnsembleStats) -> EnsembleStats:
    """The dense statistics a :class:`TopKEnsembleStats` stands for (SPEC section 1.1): every class outside
    ``indices`` gets pi^_j = tau / (V - k) and l-_j = lambda, the listed classes their own values; the measures
    are kept. With k = V these are the dense statistics exactly.

    Shape: ``[*, k]`` listed values and ``[*]`` tail -> ``[*, V]`` rows; computed in the values' dtype promoted
    with the tail's, at least float32.
    """
    num_classes, top_k = stats.num_classes, stats.top_k
    dtype = _compute_dtype(stats.mean_probs.dtype, stats.tail_mass.dtype)
    indices = stats.indices.long()
    shape = indices.shape[:-1] + (num_classes,)
    tail_prob = stats.tail_mass.to(dtype) / (num_classes - top_k) if num_classes > top_k else \
        torch.zeros(indices.shape[:-1], dtype=dtype, device=indices.device)
    tail_log_prob = stats.tail_mean_log_prob.to(dtype)
    return EnsembleStats(
        mean_probs=tail_prob.unsqueeze(-1).expand(shape).scatter(-1, indices, stats.mean_probs.to(dtype)),
        mean_log_probs=tail_log_prob.unsqueeze(-1).expand(shape).scatter(-1, indices, stats.mean_log_probs.to(dtype)),
        total=stats.total,
        data=stats.data,
        mutual_information=stats.mutual_information,
        epkl=stats.epkl,
        rmi=stats.rmi,
        num_members=stats.num_members,
    )


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> Uncertainty:
    """The five ensemble uncertainty measures of :func:`ensemble_stats` (SPEC sections 1 and 3).

    Shape:
        teacher_logits: ``[*, M, V]``. Output: :class:`Uncertainty` with fields of shape ``[*]``.
    """
    return ensemble_stats(teacher_logits, temperature=temperature, smoothing=smoothing).uncertainty


# --------------------------------------------------------------------------------------------------
# SPEC section 2: losses
# --------------------------------------------------------------------------------------------------


@S.implements(S.dirichlet_nll, note=_REFERENCE)
def dirichlet_nll(student_logits, teacher, *, model_offset, mask, reduction):
    check_dirichlet_nll_options(model_offset=model_offset, reduction=reduction)
    z, stats = _resolve_teacher("student_logits", student_logits, teacher, mask)

    alpha, _ = _concentrations(z, model_offset)
    alpha0 = alpha.sum(-1)
    # l-_k = -inf (a member gives class k probability 0): the term is -inf whatever alpha_k, so that the loss is
    # +inf (never NaN from 0 * -inf); autograd sees a finite stand-in there
    zero_prob = stats.mean_log_probs == -math.inf
    weighted = (alpha - 1.0) * stats.mean_log_probs.masked_fill(zero_prob, 0.0)
    weighted = weighted.masked_fill(zero_prob, -math.inf)
    loss = _log_beta(alpha, alpha0) - weighted.sum(-1)
    return reduce_loss(loss, mask, reduction)


@S.implements(S.proxy_dirichlet_kl, note=_REFERENCE)
def proxy_dirichlet_kl(student_logits, teacher, *, direction, precision, model_offset, target_offset, eps,
                       max_precision, reference_code_compat, mask, reduction):
    check_proxy_dirichlet_kl_options(
        direction=direction, precision=precision, model_offset=model_offset, target_offset=target_offset, eps=eps,
        max_precision=max_precision, reference_code_compat=reference_code_compat, reduction=reduction,
    )
    z, stats = _resolve_teacher("student_logits", student_logits, teacher, mask)
    num_classes = z.shape[-1]

    # Target Dirichlet: mean pi^, precision beta^_0 from the ensemble's diversity.
    if precision == "mkl":
        target_precision = (num_classes - 1) / (2.0 * stats.rmi.clamp_min(0.0) + eps)
    else:
        target_precision = (num_classes - 1) / (stats.epkl.clamp_min(0.0) + eps)
    if max_precision is not None:
        target_precision = target_precision.clamp_max(max_precision)
    beta = target_precision.unsqueeze(-1) * stats.mean_probs + target_offset  # [*, V]
    beta0 = target_precision + target_offset * num_classes  # [*]

    alpha, _ = _concentrations(z, model_offset)
    alpha0 = alpha.sum(-1)

    if reference_code_compat:
        expected_log = torch.digamma(alpha) - torch.digamma(alpha0).unsqueeze(-1)
        loss = -(stats.mean_probs * expected_log).sum(-1) - _dirichlet_entropy(alpha, alpha0) / beta0
    elif direction == "reverse":
        loss = _dirichlet_kl(alpha, alpha0, beta, beta0) / beta0
    else:
        loss = _dirichlet_kl(beta, beta0, alpha, alpha0) / beta0
    return reduce_loss(loss, mask, reduction)


def _logit_targets(teacher_logits: Tensor, teacher_norm: str, temperature: float) -> Tensor:
    """Normalised teacher logits x^(m) ``[*, M, V]``: the logits divided by T, then
    ``log_softmax`` (default), centred (each member's mean logit other than -inf subtracted) or left as they are."""
    scaled = teacher_logits / temperature
    if teacher_norm == "log_softmax":
        return torch.log_softmax(scaled, dim=-1)
    if teacher_norm == "center":
        # the mean of the logits other than -inf, so that a -inf logit stays a target of -inf
        kept = scaled != -math.inf
        total = torch.where(kept, scaled, torch.zeros((), dtype=scaled.dtype, device=scaled.device)).sum(-1, True)
        return scaled - total / kept.sum(-1, keepdim=True).clamp_min(1)
    return scaled


def _resolve_logit_inputs(loc, log_scale, teacher_logits, *, teacher_norm, temperature, min_scale, mask, reduction):
    """Checks shared by the logit-space losses; returns (mu, rho, x) upcast, masked positions made finite (x: the
    targets [*, M, V], or the TopKLogitTargets as given)."""
    check_logit_nll_options(teacher_norm=teacher_norm, temperature=temperature, min_scale=min_scale,
                            reduction=reduction)
    check_loc_scale(loc, log_scale)
    check_logit_teacher(loc, teacher_logits, mask)
    if isinstance(teacher_logits, TopKLogitTargets):
        check_top_k_logit_targets(loc, teacher_logits, teacher_norm, temperature)
        dtype = _compute_dtype(loc.dtype, teacher_logits.targets.dtype)
        mu = _fill_masked(loc.to(dtype), mask, 0.0)
        rho = _fill_masked(log_scale.to(dtype), mask, 0.0)
        return mu, rho, logit_top_k.fill_masked(teacher_logits, mask)
    dtype = _compute_dtype(loc.dtype, teacher_logits.dtype)
    mu = _fill_masked(loc.to(dtype), mask, 0.0)
    rho = _fill_masked(log_scale.to(dtype), mask, 0.0)
    u = _fill_masked(teacher_logits.detach().to(dtype), mask, 0.0)
    return mu, rho, _logit_targets(u, teacher_norm, temperature)


@S.implements(S.logit_gaussian_nll, note=_REFERENCE)
def logit_gaussian_nll(loc, log_scale, teacher_logits, *, teacher_norm, temperature, min_scale, mask, reduction):
    mu, rho, x = _resolve_logit_inputs(loc, log_scale, teacher_logits, teacher_norm=teacher_norm,
                                       temperature=temperature, min_scale=min_scale, mask=mask, reduction=reduction)
    if isinstance(x, TopKLogitTargets):
        return reduce_loss(logit_top_k.logit_nll("gaussian", mu, rho, x, min_scale), mask, reduction)
    scale, log_s = _scale(rho, min_scale)

    # a target of -inf (a teacher logit of -inf) makes the class's term +inf; autograd sees a finite stand-in
    infinite = (x == -math.inf).any(-2)  # [*, V]
    x = x.masked_fill(x == -math.inf, 0.0)
    mean_x = x.mean(-2)  # x-      [*, V]
    spread = (x - mean_x.unsqueeze(-2)).square().mean(-2)  # (1/M) sum_m (x - x-)^2
    sq_dev = spread + (mean_x - mu).square()  # v = (1/M) sum_m (x - mu)^2
    terms = (log_s + _HALF_LOG_2PI + sq_dev / (2.0 * scale.square())).masked_fill(infinite, math.inf)
    return reduce_loss(terms.sum(-1), mask, reduction)


@S.implements(S.logit_laplace_nll, note=_REFERENCE)
def logit_laplace_nll(loc, log_scale, teacher_logits, *, teacher_norm, temperature, min_scale, mask, reduction):
    mu, rho, x = _resolve_logit_inputs(loc, log_scale, teacher_logits, teacher_norm=teacher_norm,
                                       temperature=temperature, min_scale=min_scale, mask=mask, reduction=reduction)
    if isinstance(x, TopKLogitTargets):
        return reduce_loss(logit_top_k.logit_nll("laplace", mu, rho, x, min_scale), mask, reduction)
    scale, log_s = _scale(rho, min_scale)

    abs_dev = (x - mu.unsqueeze(-2)).abs().mean(-2)  # a = (1/M) sum_m |x - mu|   [*, V]
    loss = (log_s + _LOG_2 + abs_dev / scale).sum(-1)
    return reduce_loss(loss, mask, reduction)


@S.implements(S.ensemble_kl, note=_REFERENCE)
def ensemble_kl(student_logits, teacher, *, mask, reduction):
    check_ensemble_kl_options(reduction=reduction)
    z, stats = _resolve_teacher("student_logits", student_logits, teacher, mask)
    target = stats.mean_probs
    student_log_probs = torch.log_softmax(z, dim=-1)
    loss = (torch.special.xlogy(target, target) - target * student_log_probs).sum(-1)
    return reduce_loss(loss, mask, reduction)


# --------------------------------------------------------------------------------------------------
# SPEC section 3: uncertainty of a Dirichlet or logit-distribution student
# --------------------------------------------------------------------------------------------------


def dirichlet_uncertainty(student_logits: Tensor, *, model_offset: float = 1.0) -> DirichletUncertainty:
    """Uncertainty measures of a Dirichlet student (SPEC section 3).

    With alpha_k = exp(z_k) + c (ln alpha = logaddexp(z, ln c)), alpha_0 = sum_k alpha_k and
    p = alpha / alpha_0:

        TU   = -sum_k p_k ln p_k
        DU   = -sum_k p_k (psi(alpha_k + 1) - psi(alpha_0 + 1))
        MI   = TU - DU                  (the released reference code has a sign error here)
        EPKL = (V - 1) / alpha_0
        RMI  = sum_k p_k (ln p_k - psi(alpha_k) + psi(alpha_0))      (= EPKL - MI)
        precision            alpha_0
        differential_entropy H[Dir(alpha)] = sum lnGamma(alpha_k) - lnGamma(alpha_0)
                                             - sum (alpha_k - 1)(psi(alpha_k) - psi(alpha_0))

    Shape:
        student_logits: ``[*, V]``. Output: :class:`DirichletUncertainty` with fields of shape ``[*]``.
    """
    check_student_logits("student_logits", student_logits)
    check_number("model_offset", model_offset, minimum=0.0)
    z = student_logits.to(_compute_dtype(student_logits.dtype))
    num_classes = z.shape[-1]

    alpha, log_alpha = _concentrations(z, model_offset)
    alpha0 = alpha.sum(-1)
    log_p = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True)  # ln p_k = ln alpha_k - ln alpha_0
    p = log_p.exp()
    digamma_alpha0 = torch.digamma(alpha0).unsqueeze(-1)
    digamma_alpha0_plus_1 = torch.digamma(alpha0 + 1.0).unsqueeze(-1)

    total = -(p * log_p).sum(-1)
    data = -(p * (torch.digamma(alpha + 1.0) - digamma_alpha0_plus_1)).sum(-1)
    return DirichletUncertainty(
        total=total,
        data=data,
        mutual_information=total - data,
        epkl=(num_classes - 1) / alpha0,
        rmi=(p * (log_p - torch.digamma(alpha) + digamma_alpha0)).sum(-1),
        precision=alpha0,
        differential_entropy=_dirichlet_entropy(alpha, alpha0),
    )


def logit_distribution_uncertainty(
    loc: Tensor,
    log_scale: Tensor,
    *,
    family: str = "gaussian",
    num_samples: int = 25,
    seed: int = 0,
    temperature: float = 1.0,
    min_scale: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Uncertainty:
    """Monte-Carlo uncertainty of a Gaussian or Laplace distribution over logits (SPEC section 3).

    Draws S samples z^(s) = mu + s * eps^(s) with s = exp(rho) + ``min_scale`` and eps^(s) standard normal
    (``family="gaussian"``) or standard Laplace (``"laplace"``, the difference of two Exp(1) variates),
    then returns the ensemble measures (SPEC section 1) of p^(s) = softmax(z^(s) / T).

    This is the plain-PyTorch sampler: it materialises the ``[*, S, V]`` samples with ``torch``'s own
    generator, so its numbers differ from the fused kernel's counter-based (Philox) noise; the two agree in
    distribution only. Samples are reparameterised, so the result is differentiable in ``loc`` and
    ``log_scale``. The same ``seed`` (or an identically seeded ``generator``) gives the same result.

    Shape:
        loc, log_scale: ``[*, V]``. Output: :class:`Uncertainty` with fields of shape ``[*]``.
    """
    check_loc_scale(loc, log_scale)
    check_choice("family", family, FAMILIES)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected an int >= 1, got {num_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    check_number("temperature", temperature, minimum=0.0, strict=True)
    check_number("min_scale", min_scale, minimum=0.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: expected a torch.Generator or None, got {type(generator).__name__}")

    dtype = _compute_dtype(loc.dtype)
    mu, rho = loc.to(dtype), log_scale.to(dtype)
    scale, _ = _scale(rho, min_scale)
    if generator is None:
        generator = torch.Generator(device=loc.device).manual_seed(seed)

    shape = mu.shape[:-1] + (num_samples, mu.shape[-1])  # [*, S, V]
    if family == "gaussian":
        noise = torch.randn(shape, generator=generator, dtype=dtype, device=mu.device)
    else:
        first = torch.empty(shape, dtype=dtype, device=mu.device).exponential_(generator=generator)
        second = torch.empty(shape, dtype=dtype, device=mu.device).exponential_(generator=generator)
        noise = first - second
    samples = mu.unsqueeze(-2) + scale.unsqueeze(-2) * noise  # z^(s)  [*, S, V]
    return _ensemble_stats(samples, temperature=temperature, smoothing=0.0).uncertainty


def gaussian_epkl_approximation(loc: Tensor, log_scale: Tensor, *, min_scale: float = 0.0) -> Tensor:
    """Closed-form small-scale approximation of a Gaussian logit distribution's EPKL (SPEC section 3).

        EPKL ~= sum_k s_k^2 p_k (1 - p_k),   p = softmax(mu),   s = exp(rho) + min_scale

    (second-order expansion of the pairwise KL around mu; the Monte-Carlo EPKL over S samples, which
    counts the S zero self-pairs, approaches (1 - 1/S) times this value as s -> 0).

    Shape:
        loc, log_scale: ``[*, V]``. Output: ``[*]``.
    """
    check_loc_scale(loc, log_scale)
    check_number("min_scale", min_scale, minimum=0.0)
    dtype = _compute_dtype(loc.dtype)
    mu, rho = loc.to(dtype), log_scale.to(dtype)
    scale, _ = _scale(rho, min_scale)
    p = torch.softmax(mu, dim=-1)
    return (scale.square() * p * (1.0 - p)).sum(-1)
