"""Uncertainty measures of a student that predicts a Gaussian or Laplace distribution over logits
(SPEC section 3): the fused Monte-Carlo estimate and the closed-form Gaussian EPKL approximation."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _ops, reference
from .._validation import FAMILIES, check_choice, check_int, check_loc_scale, check_real
from ..types import Uncertainty

__all__ = ["logit_distribution", "gaussian_epkl", "FAMILIES"]

_MAX_SAMPLES = 2**32


def logit_distribution(
    loc: Tensor,
    log_scale: Tensor,
    *,
    family: str = "gaussian",
    num_samples: int = 25,
    seed: int = 0,
    temperature: float = 1.0,
    min_scale: float = 0.0,
) -> Uncertainty:
    r"""Monte-Carlo uncertainty of a Gaussian or Laplace distribution over a student's logits.

    With s = exp(rho) + ``min_scale``, S = ``num_samples`` draws z^(s) = mu + s * eps^(s) and
    p^(s) = softmax(z^(s) / T), the result is the ensemble measures (SPEC section 1) of {p^(s)}:
    ``total`` H[mean_s p^(s)], ``data`` mean_s H[p^(s)], ``mutual_information`` = total - data, ``epkl``
    (the mean KL over all S^2 ordered pairs of samples, self-pairs included) and ``rmi`` = epkl - MI.

    The fused kernel never stores the ``[*, S, V]`` samples: eps^(s)_k is a pure function of
    (``seed``, position, s, k) through a counter-based generator (Philox4x32-10; standard normal by
    Box-Muller, standard Laplace by its inverse CDF, ``csrc/include/edd_ext/student_math.h``), so each pass
    over a row regenerates the noise it needs. Consequently:

    * the same ``seed`` gives bit-identical results on every run, for any thread count, and on the CPU for any
      instruction set the kernel dispatches to (AVX-512, AVX2 or the x86-64 baseline);
    * the noise is common to every input: shifting ``loc`` by a constant per position leaves the
      measures unchanged, and two students compared under one seed see the same draws;
    * "position" is the flat index in ``loc.reshape(-1, V)``: a row evaluated inside a different batch
      (another index) gets other draws;
    * CPU and CUDA evaluate the same generator and transforms; their results agree to rounding-level
      differences of the math libraries, i.e. statistically, not bitwise.

    The numbers differ from :func:`edd_ext.reference.logit_distribution_uncertainty`, which samples with
    ``torch``'s generator; the two agree within Monte-Carlo error. The measures are not differentiable
    (no autograd formula; inputs are detached).

    Shape:
        loc, log_scale: ``[*, V]`` (V >= 2), same dtype and device. Output: :class:`~edd_ext.Uncertainty`,
        every field ``[*]``, float32 (float64 for float64 inputs; the noise itself is float32 either way).

    Args:
        family: ``"gaussian"`` or ``"laplace"`` (standard Laplace noise: scale s, variance 2 s^2).
        num_samples: S >= 1.
        seed: any int in [-2^63, 2^64); the generator key is ``seed`` mod 2^64.
        temperature: T > 0.
        min_scale: floor added to exp(rho), >= 0.
    """
    check_loc_scale(loc, log_scale)
    check_choice("family", family, FAMILIES)
    check_int("num_samples", num_samples, 1, _MAX_SAMPLES + 1)
    check_int("seed", seed, -(2**63), 2**64)
    check_real("temperature", temperature, minimum=0.0, strict=True)
    check_real("min_scale", min_scale, minimum=0.0, strict=False)
    if not _ops.fused(loc):
        return reference.logit_distribution_uncertainty(
            loc.detach(), log_scale.detach(), family=family, num_samples=int(num_samples), seed=int(seed) % 2**63,
            temperature=float(temperature), min_scale=float(min_scale),
        )
    return _ops.uncertainty.logit_distribution_uncertainty(loc, log_scale, family, num_samples, seed, temperature,
                                                           min_scale)


def gaussian_epkl(loc: Tensor, log_scale: Tensor, *, min_scale: float = 0.0) -> Tensor:
    r"""Closed-form EPKL of a Gaussian over logits, for small scales:

        EPKL ~= sum_k s_k^2 p_k (1 - p_k),   p = softmax(mu),   s = exp(rho) + min_scale

    the expected second-order (Fisher) term of KL[softmax(z) || softmax(z')] for two independent draws
    z, z' ~ N(mu, diag s^2). The Monte-Carlo EPKL of :func:`logit_distribution` with S samples counts the S
    zero self-pairs among its S^2 pairs, so it approaches (1 - 1/S) times this value as s -> 0.

    Plain tensor ops, on purpose: a log-softmax, one more log-sum-exp and an elementwise product summed over
    V are bound by memory traffic, which a fused kernel would not reduce by much, and ``torch.compile`` fuses
    them anyway. Evaluated in log space, exp(2 ln s + ln p + ln(1 - p)), so that large scales do not overflow
    s^2; 1 - p is -expm1(ln p) except for the most probable class, where it is the softmax mass of the other
    classes (accurate even when p rounds to 1). Not differentiable (inputs are detached), like the other
    measures.

    Shape:
        loc, log_scale: ``[*, V]``. Output: ``[*]``, float32 (float64 for float64 inputs).
    """
    check_loc_scale(loc, log_scale)
    check_real("min_scale", min_scale, minimum=0.0, strict=False)
    dtype = torch.float64 if loc.dtype == torch.float64 else torch.float32
    mu, rho = loc.detach().to(dtype), log_scale.detach().to(dtype)
    if min_scale > 0:
        rho = torch.logaddexp(rho, torch.tensor(math.log(min_scale), dtype=dtype, device=rho.device))
    lse = torch.logsumexp(mu, dim=-1, keepdim=True)
    log_p = mu - lse
    top = mu.argmax(dim=-1, keepdim=True)
    others = mu.scatter(-1, top, float("-inf")).logsumexp(dim=-1, keepdim=True) - lse  # ln(1 - p_top)
    log_rest = torch.log(-torch.expm1(log_p)).scatter(-1, top, others)
    return torch.exp(2.0 * rho + log_p + log_rest).sum(-1)
