"""Uncertainty measures of a Dirichlet student (SPEC section 3), from one fused pass per position."""
from __future__ import annotations

from torch import Tensor

from .. import _ops, reference
from .._validation import check_dirichlet_uncertainty_options, check_student_logits
from ..types import DirichletUncertainty

__all__ = ["dirichlet"]


def dirichlet(student_logits: Tensor, *, model_offset: float = 1.0) -> DirichletUncertainty:
    r"""Uncertainty of the Dirichlet Dir(alpha) a student predicts, alpha = exp(z) + c.

    With alpha_0 = sum_k alpha_k, p = alpha / alpha_0 and the digamma function psi:

    * ``total``               TU = -sum_k p_k ln p_k (entropy of the expected categorical)
    * ``data``                DU = -sum_k p_k (psi(alpha_k + 1) - psi(alpha_0 + 1)) (expected entropy)
    * ``mutual_information``  MI = TU - DU (knowledge uncertainty)
    * ``epkl``                EPKL = (V - 1) / alpha_0
    * ``rmi``                 RMI = sum_k p_k (ln p_k - psi(alpha_k) + psi(alpha_0)) = EPKL - MI
    * ``precision``           alpha_0
    * ``differential_entropy`` H[Dir(alpha)] = ln B(alpha) - sum_k (alpha_k - 1)(psi(alpha_k) - psi(alpha_0))

    ``ln alpha`` is formed in log space and alpha_0 and every per-position quantity in float64, because
    alpha_0 reaches V e^80 ~ 1e39 at z = 80, beyond float32. MI and RMI are summed as terms that are
    non-negative one by one (``csrc/include/edd_ext/student_math.h``), so they keep their relative accuracy
    when alpha_0 is huge and MI is ~(V - 1) / (2 alpha_0), where subtracting two separately summed entropies
    would leave rounding noise. All seven are finite for logits in [-1e4, 80] when ``model_offset`` > 0;
    with ``model_offset = 0``, concentrations that underflow make the differential entropy -inf (its limit).

    The measures are not differentiable (no autograd formula; the input is detached).

    Shape:
        student_logits: ``[*, V]``, V >= 2, any float dtype (float32 math for half/bfloat16/float32 inputs,
        float64 for float64). Output: :class:`~edd_ext.DirichletUncertainty`, every field ``[*]`` float64.

    Args:
        model_offset: c >= 0 in alpha = exp(z) + c (SPEC ``model_offset``, default 1).
    """
    check_student_logits("student_logits", student_logits)
    check_dirichlet_uncertainty_options(model_offset)
    if not _ops.fused(student_logits):
        u = reference.dirichlet_uncertainty(student_logits.detach().double(), model_offset=float(model_offset))
        return DirichletUncertainty(*u)
    return _ops.uncertainty.dirichlet_uncertainty(student_logits, model_offset)
