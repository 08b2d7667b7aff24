"""``torch.nn.Module`` forms of the fused distillation losses (SPEC section 2; math in ``edd_ext.losses``).

Options are fixed at construction (and checked there); ``forward`` takes the student tensor(s), the teacher
and an optional ``mask``. Every module is stateless and works under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from torch import Tensor, nn

from . import linear, losses
from ._reduction import check_reduction
from ._validation import check_choice
from .reference import _check_number

__all__ = [
    "DirichletNLLLoss",
    "ProxyDirichletKLLoss",
    "LogitGaussianNLLLoss",
    "LogitLaplaceNLLLoss",
    "EnsembleKLLoss",
    "LinearDirichletNLLLoss",
    "LinearProxyDirichletKLLoss",
    "LinearEnsembleKLLoss",
    "LinearLogitGaussianNLLLoss",
    "LinearLogitLaplaceNLLLoss",
]


class DirichletNLLLoss(nn.Module):
    """EnD^2: negative log-likelihood of the ensemble members under the student Dirichlet (SPEC 2.1).

    With alpha_k = exp(z_k) + c and l-_k = (1/M) sum_m ln pi^(m)_k:

        L = sum_k lnGamma(alpha_k) - lnGamma(alpha_0) - sum_k (alpha_k - 1) l-_k

    Args:
        model_offset: c >= 0 (default 1).
        reduction: ``"none"`` | ``"sum"`` | ``"mean"`` (over unmasked positions).

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`~edd_ext.EnsembleStats`;
        mask: ``[*]`` bool. Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """

    def __init__(self, *, model_offset: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        _check_number("model_offset", model_offset, minimum=0.0)
        check_reduction(reduction)
        self.model_offset = model_offset
        self.reduction = reduction

    def forward(self, student_logits: Tensor, teacher, mask: Optional[Tensor] = None) -> Tensor:
        return losses.dirichlet_nll(student_logits, teacher, model_offset=self.model_offset, mask=mask,
                                    reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"model_offset={self.model_offset}, reduction={self.reduction!r}"


class ProxyDirichletKLLoss(nn.Module):
    """Proxy-Dirichlet KL to a Dirichlet with the ensemble's mean and a precision from its diversity (SPEC 2.2).

    beta^_0 = (V - 1) / (2 max(RMI, 0) + eps) (``"mkl"``) or (V - 1) / (max(EPKL, 0) + eps) (``"epkl"``),
    beta_k = beta^_0 pi^_k + t; L = KL[Dir(alpha) || Dir(beta)] / beta_0 (``"reverse"``) or
    KL[Dir(beta) || Dir(alpha)] / beta_0 (``"forward"``). See :func:`edd_ext.proxy_dirichlet_kl` for
    ``reference_code_compat``.

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`~edd_ext.EnsembleStats`;
        mask: ``[*]`` bool. Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """

    def __init__(
        self,
        *,
        direction: str = "reverse",
        precision: str = "mkl",
        model_offset: float = 1.0,
        target_offset: float = 1.0,
        eps: float = 1.1920929e-7,
        max_precision: Optional[float] = None,
        reference_code_compat: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_choice("direction", direction, losses.DIRECTIONS)
        check_choice("precision", precision, losses.PRECISIONS)
        _check_number("model_offset", model_offset, minimum=0.0)
        _check_number("target_offset", target_offset, minimum=0.0)
        _check_number("eps", eps, minimum=0.0, strict=True)
        if max_precision is not None:
            _check_number("max_precision", max_precision, minimum=0.0, strict=True)
        if reference_code_compat and direction != "reverse":
            raise ValueError(
                f"reference_code_compat: the released code's objective exists for direction='reverse' only, "
                f"got direction={direction!r}"
            )
        check_reduction(reduction)
        self.direction = direction
        self.precision = precision
        self.model_offset = model_offset
        self.target_offset = target_offset
        self.eps = eps
        self.max_precision = max_precision
        self.reference_code_compat = reference_code_compat
        self.reduction = reduction

    def forward(self, student_logits: Tensor, teacher, mask: Optional[Tensor] = None) -> Tensor:
        return losses.proxy_dirichlet_kl(
            student_logits, teacher, direction=self.direction, precision=self.precision,
            model_offset=self.model_offset, target_offset=self.target_offset, eps=self.eps,
            max_precision=self.max_precision, reference_code_compat=self.reference_code_compat, mask=mask,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (f"direction={self.direction!r}, precision={self.precision!r}, model_offset={self.model_offset}, "
                f"target_offset={self.target_offset}, eps={self.eps}, max_precision={self.max_precision}, "
                f"reference_code_compat={self.reference_code_compat}, reduction={self.reduction!r}")


class _LogitNLLLoss(nn.Module):
    _fn = None

    def __init__(self, *, teacher_norm: str = "log_softmax", temperature: float = 1.0, min_scale: float = 0.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        check_choice("teacher_norm", teacher_norm, losses.TEACHER_NORMS)
        _check_number("temperature", temperature, minimum=0.0, strict=True)
        _check_number("min_scale", min_scale, minimum=0.0)
        check_reduction(reduction)
        self.teacher_norm = teacher_norm
        self.temperature = temperature
        self.min_scale = min_scale
        self.reduction = reduction

    def forward(self, loc: Tensor, log_scale: Tensor, teacher_logits: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return type(self)._fn(loc, log_scale, teacher_logits, teacher_norm=self.teacher_norm,
                              temperature=self.temperature, min_scale=self.min_scale, mask=mask,
                              reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"teacher_norm={self.teacher_norm!r}, temperature={self.temperature}, min_scale={self.min_scale}, "
                f"reduction={self.reduction!r}")


class LogitGaussianNLLLoss(_LogitNLLLoss):
    """Gaussian NLL of the members' normalised logits (SPEC 2.3):
    L = sum_k [ln s_k + 1/2 ln 2pi + (1/M) sum_m (x^(m)_k - mu_k)^2 / (2 s_k^2)], s = exp(rho) + min_scale.

    Shape:
        loc, log_scale: ``[*, V]``; teacher_logits: ``[*, M, V]``; mask: ``[*]`` bool.
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """

    _fn = staticmethod(losses.logit_gaussian_nll)


class LogitLaplaceNLLLoss(_LogitNLLLoss):
    """Laplace NLL of the members' normalised logits (SPEC 2.3):
    L = sum_k [ln s_k + ln 2 + (1/M) sum_m |x^(m)_k - mu_k| / s_k], s = exp(rho) + min_scale.

    Shape:
        loc, log_scale: ``[*, V]``; teacher_logits: ``[*, M, V]``; mask: ``[*]`` bool.
        Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """

    _fn = staticmethod(losses.logit_laplace_nll)


class EnsembleKLLoss(nn.Module):
    """EnD baseline: L = sum_k pi^_k (ln pi^_k - log_softmax(z)_k), KL from the ensemble mean (SPEC 2.4).

    Shape:
        student_logits: ``[*, V]``; teacher: ``[*, M, V]`` logits or :class:`~edd_ext.EnsembleStats`;
        mask: ``[*]`` bool. Output: ``[*]`` for ``reduction="none"``, else a scalar.
    """

    def __init__(self, *, reduction: str = "mean") -> None:
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, student_logits: Tensor, teacher, mask: Optional[Tensor] = None) -> Tensor:
        return losses.ensemble_kl(student_logits, teacher, mask=mask, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


# ---- fused linear losses (SPEC section 2.5) ----

#: Keywords of the linear functions that are inputs, not options.
_LINEAR_INPUTS = ("linear_bias", "loc_bias", "log_scale_bias", "mask")


class _LinearLoss(nn.Module):
    """Base of the fused linear loss modules: holds the function's options (``chunk_size``, ``reduction`` and the
    loss's keywords), checked at construction."""

    function: Callable
    loss: str

    def __init__(self, **options) -> None:
        super().__init__()
        defaults = {name: p.default for name, p in inspect.signature(self.function).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and name not in _LINEAR_INPUTS}
        unknown = options.keys() - defaults.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(unknown)}")
        self.options = {**defaults, **options}
        linear.check_options(self.loss, **self.options)

    def forward(self, input: Tensor, linear_weight: Tensor, teacher, linear_bias: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        return type(self).function(input, linear_weight, teacher, linear_bias=linear_bias, mask=mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


class _LinearLogitLoss(_LinearLoss):
    def forward(self, input: Tensor, loc_weight: Tensor, log_scale_weight: Tensor, teacher,
                loc_bias: Optional[Tensor] = None, log_scale_bias: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        return type(self).function(input, loc_weight, log_scale_weight, teacher, loc_bias=loc_bias,
                                   log_scale_bias=log_scale_bias, mask=mask, **self.options)


def _linear_module(class_name: str, loss: str) -> type:
    """The module class of ``edd_ext.linear_<loss>``."""
    function = getattr(linear, "linear_" + loss)
    base = _LinearLogitLoss if loss.startswith("logit_") else _LinearLoss
    return type(class_name, (base,), {
        "function": staticmethod(function),
        "loss": loss,
        "__module__": __name__,
        "__doc__": f"Module form of :func:`edd_ext.linear_{loss}`: holds its options (``chunk_size``, "
                   f"``reduction`` and the loss's keywords), fixed at construction; ``forward`` takes the inputs "
                   f"and the teacher.\n\n    " + (function.__doc__ or ""),
    })


LinearDirichletNLLLoss = _linear_module("LinearDirichletNLLLoss", "dirichlet_nll")
LinearProxyDirichletKLLoss = _linear_module("LinearProxyDirichletKLLoss", "proxy_dirichlet_kl")
LinearEnsembleKLLoss = _linear_module("LinearEnsembleKLLoss", "ensemble_kl")
LinearLogitGaussianNLLLoss = _linear_module("LinearLogitGaussianNLLLoss", "logit_gaussian_nll")
LinearLogitLaplaceNLLLoss = _linear_module("LinearLogitLaplaceNLLLoss", "logit_laplace_nll")
