"""The compact form of the teacher targets of the logit-space losses (SPEC section 2.3) — an approximation.

The Gaussian and Laplace NLLs need every member's normalised logit x^(m)_j of every class (the Laplace one has no
sufficient statistic), M V numbers per position. :func:`top_k_logit_targets` keeps, per position, the k classes
of largest ensemble mean probability with every member's target exactly, and summarises the V - k others (the
tail) by each member's mean target t_m and the pooled within-tail variance sigma^2:

    t_m      = (1 / (V - k)) sum_{j in tail} x^(m)_j
    sigma^2  = (1 / M) sum_m (1 / (V - k)) sum_{j in tail} (x^(m)_j - t_m)^2

``logit_gaussian_nll`` and ``logit_laplace_nll`` take the result in place of the teacher logits and read each tail
class's member targets as a distribution with mean t_m and variance sigma^2:

* Gaussian: v_j = (1/M) sum_m (x^(m)_j - mu_j)^2 becomes (1/M) sum_m (t_m - mu_j)^2 + sigma^2 — exact, summed over
  the tail, whenever the student's location and scale are the same for every tail class;
* Laplace: |x^(m)_j - mu_j| becomes its expectation under N(t_m, sigma^2),
  sigma sqrt(2/pi) exp(-d^2 / (2 sigma^2)) + d erf(d / (sigma sqrt 2)) with d = t_m - mu_j (|d| when sigma = 0) —
  exact when every tail class has the same target in each member, an approximation otherwise.

With k = V there is no tail and both losses equal the dense ones. These losses run in plain PyTorch (autograd;
``[*, V]`` temporaries, and ``[*, M, V]`` for the Laplace tail), not in a fused kernel.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ._validation import check_choice, check_number, check_teacher_logits, check_top_k
from .types import TopKLogitTargets

__all__ = ["top_k_logit_targets", "logit_nll"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def top_k_logit_targets(teacher_logits: Tensor, *, top_k: int, teacher_norm: str = "log_softmax",
                        temperature: float = 1.0) -> TopKLogitTargets:
    """The top-k form of the logit-space losses' targets (see the module docstring).

    Shape:
        teacher_logits: ``[*, M, V]``. Output: ``indices [*, k]`` (the k classes of largest ensemble mean
        probability softmax(u / T), by decreasing mean probability, ties to the smaller class), ``targets
        [*, M, k]``, ``tail_mean [*, M]``, ``tail_variance [*]``; float32, or float64 for float64 logits.
    """
    from .reference import _compute_dtype, _logit_targets

    check_teacher_logits("teacher_logits", teacher_logits)
    check_top_k(top_k, teacher_logits.shape[-1])
    check_choice("teacher_norm", teacher_norm, ("log_softmax", "center", "none"))
    check_number("temperature", temperature, minimum=0.0, strict=True)
    u = teacher_logits.detach().to(_compute_dtype(teacher_logits.dtype))
    num_classes = u.shape[-1]
    x = _logit_targets(u, teacher_norm, temperature)  # [*, M, V]
    mean_probs = torch.softmax(u / temperature, dim=-1).mean(-2)
    indices = torch.sort(mean_probs, dim=-1, descending=True, stable=True).indices[..., :top_k]
    in_tail = torch.ones_like(mean_probs, dtype=torch.bool).scatter(-1, indices, False).unsqueeze(-2)  # [*, 1, V]
    zero = x.new_zeros(())
    count = max(num_classes - top_k, 1)
    tail_mean = torch.where(in_tail, x, zero).sum(-1) / count  # [*, M]
    deviation = torch.where(in_tail, x - tail_mean.unsqueeze(-1), zero)  # centred: no E[x^2] - E[x]^2
    return TopKLogitTargets(
        indices=indices,
        targets=x.gather(-1, indices.unsqueeze(-2).expand(*x.shape[:-1], top_k)),
        tail_mean=tail_mean,
        tail_variance=deviation.square().sum(-1).mean(-1) / count,
        num_classes=num_classes,
        teacher_norm=teacher_norm,
        temperature=float(temperature),
    )


def _expected_abs_normal(d: Tensor, sigma: Tensor) -> Tensor:
    """E|X| for X ~ N(d, sigma^2): sigma sqrt(2/pi) exp(-d^2 / (2 sigma^2)) + d erf(d / (sigma sqrt 2)); |d| where
    sigma = 0 (selected with torch.where, its gradient finite on both sides)."""
    positive = sigma > 0
    s = torch.where(positive, sigma, torch.ones_like(sigma))
    smooth = s * math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * (d / s).square()) + d * torch.erf(d / (s * math.sqrt(2)))
    return torch.where(positive, smooth, d.abs())


def logit_nll(family: str, mu: Tensor, rho: Tensor, targets: TopKLogitTargets, min_scale: float) -> Tensor:
    """The per-position Gaussian or Laplace NLL ``[*]`` of the student (``mu``, ``rho`` ``[*, V]``, already in the
    compute dtype) against top-k targets (see the module docstring)."""
    from .reference import _scale

    dtype = mu.dtype
    scale, log_s = _scale(rho, min_scale)
    indices = targets.indices.long()
    x = targets.targets.to(dtype)  # [*, M, k]
    tail_mean = targets.tail_mean.to(dtype)  # [*, M]
    tail_variance = targets.tail_variance.to(dtype).clamp_min(0.0)  # [*]
    listed_mu = mu.gather(-1, indices).unsqueeze(-2)  # [*, 1, k]
    if family == "gaussian":
        mean_t = tail_mean.mean(-1, keepdim=True)
        spread_t = (tail_mean - mean_t).square().mean(-1, keepdim=True)
        tail = (mean_t - mu).square() + spread_t + tail_variance.unsqueeze(-1)  # [*, V]
        mean_x = x.mean(-2, keepdim=True)
        listed = ((x - mean_x).square().mean(-2, keepdim=True) + (mean_x - listed_mu).square()).squeeze(-2)
        deviation = tail.scatter(-1, indices, listed)  # v_j
        return (log_s + _HALF_LOG_2PI + deviation / (2.0 * scale.square())).sum(-1)
    tail = _expected_abs_normal(tail_mean.unsqueeze(-1) - mu.unsqueeze(-2),
                                tail_variance.sqrt()[..., None, None]).mean(-2)  # [*, V]
    listed = (x - listed_mu).abs().mean(-2)
    deviation = tail.scatter(-1, indices, listed)  # a_j
    return (log_s + _LOG_2 + deviation / scale).sum(-1)


def fill_masked(targets: TopKLogitTargets, mask: Optional[Tensor]) -> TopKLogitTargets:
    """Masked positions made harmless (distinct indices, zero targets) so that nothing NaN reaches the sums."""
    if mask is None:
        return targets
    keep = mask.unsqueeze(-1)
    listed = torch.arange(targets.indices.shape[-1], device=mask.device)
    zero = targets.targets.new_zeros(())
    return targets._replace(
        indices=torch.where(keep, targets.indices.long(), listed),
        targets=torch.where(keep.unsqueeze(-1), targets.targets, zero),
        tail_mean=torch.where(keep, targets.tail_mean, zero),
        tail_variance=torch.where(mask, targets.tail_variance, zero),
    )
