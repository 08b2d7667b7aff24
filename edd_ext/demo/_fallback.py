"""Minimal plain-PyTorch versions of the library functions the demo uses (SPEC sections 1-3).

They are used only when neither the public ``edd_ext`` name nor ``edd_ext.reference`` provides a
function (see ``_api.py``); the signatures follow SPEC section 6. They favour clarity over speed and are
not part of the library's API.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..types import DirichletUncertainty, EnsembleStats, Uncertainty


def _reduce(loss: Tensor, mask: Optional[Tensor], reduction: str) -> Tensor:
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    count = mask.sum() if mask is not None else torch.tensor(loss.numel(), device=loss.device)
    return loss.sum() / count.clamp_min(1).to(loss.dtype)


def _member_log_probs(teacher_logits: Tensor, temperature: float = 1.0, smoothing: float = 0.0) -> Tensor:
    dtype = torch.float64 if teacher_logits.dtype == torch.float64 else torch.float32
    logp = torch.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if smoothing > 0:
        v = logp.shape[-1]
        logp = torch.logaddexp(logp + math.log1p(-smoothing), torch.full_like(logp, math.log(smoothing / v)))
    return logp


def _measures(logp: Tensor) -> Uncertainty:
    """Ensemble measures from members' log-probabilities ``[*, M, V]``."""
    m = logp.shape[-2]
    log_mean = torch.logsumexp(logp, dim=-2) - math.log(m)
    mean_probs = log_mean.exp()
    mean_log = logp.mean(-2)
    total = -(mean_probs * log_mean).sum(-1)
    data = -(logp.exp() * logp).sum(-1).mean(-1)
    epkl = -(mean_probs * mean_log).sum(-1) - data
    mi = total - data
    return Uncertainty(total, data, mi, epkl, epkl - mi)


def ensemble_stats(teacher_logits: Tensor, *, temperature: float = 1.0, smoothing: float = 0.0) -> EnsembleStats:
    logp = _member_log_probs(teacher_logits, temperature, smoothing)
    m = logp.shape[-2]
    u = _measures(logp)
    mean_probs = (torch.logsumexp(logp, dim=-2) - math.log(m)).exp()
    return EnsembleStats(mean_probs, logp.mean(-2), *u, num_members=m)


def _stats(teacher: Union[Tensor, EnsembleStats]) -> EnsembleStats:
    return teacher if isinstance(teacher, EnsembleStats) else ensemble_stats(teacher)


def ensemble_kl(student_logits: Tensor, teacher, *, mask=None, reduction: str = "mean") -> Tensor:
    s = _stats(teacher)
    p = s.mean_probs
    loss = (torch.xlogy(p, p) - p * torch.log_softmax(student_logits.float(), -1)).sum(-1)
    return _reduce(loss, mask, reduction)


def dirichlet_nll(student_logits: Tensor, teacher, *, model_offset: float = 1.0, mask=None,
                  reduction: str = "mean") -> Tensor:
    s = _stats(teacher)
    alpha = student_logits.float().exp() + model_offset
    loss = (torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha.sum(-1))
            - ((alpha - 1) * s.mean_log_probs).sum(-1))
    return _reduce(loss, mask, reduction)


def _dirichlet_kl(a: Tensor, b: Tensor) -> Tensor:
    a0, b0 = a.sum(-1), b.sum(-1)
    return (torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(b0) + torch.lgamma(b).sum(-1)
            + ((a - b) * (torch.digamma(a) - torch.digamma(a0)[..., None])).sum(-1))


def proxy_dirichlet_kl(student_logits: Tensor, teacher, *, direction: str = "reverse", precision: str = "mkl",
                       model_offset: float = 1.0, target_offset: float = 1.0, eps: float = 1.1920929e-7,
                       max_precision=None, reference_code_compat: bool = False, mask=None,
                       reduction: str = "mean") -> Tensor:
    s = _stats(teacher)
    v = student_logits.shape[-1]
    spread = 2 * s.rmi.clamp_min(0) if precision == "mkl" else s.epkl.clamp_min(0)
    b_hat = (v - 1) / (spread + eps)
    if max_precision is not None:
        b_hat = b_hat.clamp_max(max_precision)
    beta = (b_hat[..., None] * s.mean_probs + target_offset).detach()
    alpha = student_logits.float().exp() + model_offset
    kl = _dirichlet_kl(alpha, beta) if direction == "reverse" else _dirichlet_kl(beta, alpha)
    return _reduce(kl / beta.sum(-1), mask, reduction)


def _logit_targets(teacher_logits: Tensor, temperature: float) -> Tensor:
    return torch.log_softmax(teacher_logits.float() / temperature, -1)


def logit_gaussian_nll(loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, *, teacher_norm: str = "log_softmax",
                       temperature: float = 1.0, min_scale: float = 0.0, mask=None, reduction: str = "mean") -> Tensor:
    x = _logit_targets(teacher_logits, temperature)
    mean = x.mean(-2)
    var = (x - mean[..., None, :]).pow(2).mean(-2) + (mean - loc.float()).pow(2)
    scale = log_scale.float().exp() + min_scale
    loss = (scale.log() + 0.5 * math.log(2 * math.pi) + var / (2 * scale * scale)).sum(-1)
    return _reduce(loss, mask, reduction)


def logit_laplace_nll(loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, *, teacher_norm: str = "log_softmax",
                      temperature: float = 1.0, min_scale: float = 0.0, mask=None, reduction: str = "mean") -> Tensor:
    x = _logit_targets(teacher_logits, temperature)
    dev = (x - loc.float()[..., None, :]).abs().mean(-2)
    scale = log_scale.float().exp() + min_scale
    loss = (scale.log() + math.log(2.0) + dev / scale).sum(-1)
    return _reduce(loss, mask, reduction)


def ensemble_uncertainty(teacher_logits: Tensor, *, temperature: float = 1.0) -> Uncertainty:
    return _measures(_member_log_probs(teacher_logits, temperature))


def dirichlet_uncertainty(student_logits: Tensor, *, model_offset: float = 1.0) -> DirichletUncertainty:
    z = student_logits.double()
    log_alpha = torch.logaddexp(z, torch.full_like(z, math.log(model_offset)))
    alpha = log_alpha.exp()
    alpha0 = alpha.sum(-1)
    logp = log_alpha - alpha0.log()[..., None]
    p = logp.exp()
    total = -(p * logp).sum(-1)
    data = -(p * (torch.digamma(alpha + 1) - torch.digamma(alpha0 + 1)[..., None])).sum(-1)
    epkl = (z.shape[-1] - 1) / alpha0
    rmi = (p * (logp - torch.digamma(alpha) + torch.digamma(alpha0)[..., None])).sum(-1)
    dig = torch.digamma(alpha) - torch.digamma(alpha0)[..., None]
    entropy = torch.lgamma(alpha).sum(-1) - torch.lgamma(alpha0) - ((alpha - 1) * dig).sum(-1)
    out = [total, data, total - data, epkl, rmi, alpha0, entropy]
    return DirichletUncertainty(*(t.float() for t in out))


def logit_distribution_uncertainty(loc: Tensor, log_scale: Tensor, *, family: str = "gaussian", num_samples: int = 25,
                                   seed: int = 0, temperature: float = 1.0, min_scale: float = 0.0) -> Uncertainty:
    gen = torch.Generator(device=loc.device).manual_seed(seed)
    shape = (*loc.shape[:-1], num_samples, loc.shape[-1])
    if family == "gaussian":
        noise = torch.randn(shape, generator=gen, device=loc.device)
    else:  # Laplace by inverse CDF of a uniform on (-1/2, 1/2)
        u = torch.rand(shape, generator=gen, device=loc.device).clamp(1e-7, 1 - 1e-7) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs())
    scale = log_scale.float().exp() + min_scale
    samples = loc.float()[..., None, :] + scale[..., None, :] * noise
    return ensemble_uncertainty(samples, temperature=temperature)


# ---- sequence level (SPEC section 3, Malinin & Gales 2021); same signatures as edd_ext.uncertainty.sequence ----
def chain_rule_average(token_measure: Tensor, mask: Tensor) -> Tensor:
    """Mean of a token-level measure over each hypothesis: ``[B, L]`` -> ``[B]``."""
    x = torch.where(mask, token_measure, 0.0)
    return x.sum(-1) / mask.sum(-1).clamp_min(1).to(x.dtype)


def product_of_expectations(token_log_probs: Tensor, mask: Tensor) -> Tensor:
    """PE score -(1/L) sum_l (logsumexp_m ln P_m(y_l) - ln M) from ``[B, M, L]`` member token log-probs."""
    log_mean = torch.logsumexp(token_log_probs, -2) - math.log(token_log_probs.shape[-2])
    return -chain_rule_average(log_mean, mask)


def expectation_of_products(token_log_probs: Tensor, mask: Tensor) -> Tensor:
    """EP score -(1/L)(logsumexp_m sum_l ln P_m(y_l) - ln M) from ``[B, M, L]`` member token log-probs."""
    seq = torch.where(mask[..., None, :], token_log_probs, 0.0).sum(-1)
    length = mask.sum(-1).clamp_min(1).to(seq.dtype)
    return -(torch.logsumexp(seq, -1) - math.log(token_log_probs.shape[-2])) / length
