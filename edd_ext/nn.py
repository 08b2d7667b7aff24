"""``torch.nn.Module`` forms of the fused distillation losses (SPEC section 2; math in ``edd_ext.losses``) and of
the fused linear losses (SPEC section 2.5, ``edd_ext.linear``).

Each module holds nothing but the loss's options, fixed (and checked, by the loss's own option check) at
construction; ``forward`` takes the student tensor(s), the teacher and an optional ``mask`` and forwards them
with the options to the function. Names, keywords, defaults and docstrings come from ``edd_ext._signatures``.
Every module is stateless and works under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Optional

from torch import Tensor, nn

from . import _signatures, _validation, linear, losses

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


class _LossModule(nn.Module):
    """Base of the loss modules: ``options`` are the function's keywords other than ``mask`` (and the other
    keyword-only inputs, ``keyword_inputs``)."""

    function: Callable
    check_options: Callable
    keyword_inputs = ("mask",)

    def __init__(self, **options) -> None:
        super().__init__()
        defaults = _signatures.defaults(self.function)
        for name in self.keyword_inputs:
            defaults.pop(name)
        unknown = options.keys() - defaults.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {sorted(unknown)}")
        self.options = {**defaults, **options}
        type(self).check_options(**self.options)

    def forward(self, *inputs: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        return type(self).function(*inputs, mask=mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def loss_module(class_name: str, function: Callable, check_options: Callable) -> type:
    """The ``nn.Module`` class of the loss ``function`` (one of ``edd_ext.losses``)."""
    stub = _signatures.LOSSES[function.__name__]
    params = inspect.signature(stub).parameters
    options = [p for name, p in params.items() if p.kind is p.KEYWORD_ONLY and name != "mask"]
    inputs = [p for p in params.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    cls = type(class_name, (_LossModule,), {
        "function": staticmethod(function),
        "check_options": staticmethod(check_options),
        "__module__": __name__,
        "__doc__": f"Module form of :func:`edd_ext.{function.__name__}`; the options are fixed at construction.\n\n"
                   f"    forward({', '.join(p.name for p in inputs)}, mask=None)\n\n    " + (stub.__doc__ or ""),
    })
    cls.__signature__ = inspect.Signature(options)
    return cls


DirichletNLLLoss = loss_module("DirichletNLLLoss", losses.dirichlet_nll, _validation.check_dirichlet_nll_options)
ProxyDirichletKLLoss = loss_module("ProxyDirichletKLLoss", losses.proxy_dirichlet_kl,
                                   _validation.check_proxy_dirichlet_kl_options)
LogitGaussianNLLLoss = loss_module("LogitGaussianNLLLoss", losses.logit_gaussian_nll,
                                   _validation.check_logit_nll_options)
LogitLaplaceNLLLoss = loss_module("LogitLaplaceNLLLoss", losses.logit_laplace_nll,
                                  _validation.check_logit_nll_options)
EnsembleKLLoss = loss_module("EnsembleKLLoss", losses.ensemble_kl, _validation.check_ensemble_kl_options)


# ---- the fused linear losses (SPEC section 2.5) ----


class _LinearLossModule(_LossModule):
    """Base of the fused linear loss modules: the options are ``chunk_size``, ``reduction`` and the loss's keywords;
    ``forward(input, linear_weight, teacher, linear_bias=None, mask=None)``."""

    keyword_inputs = ("linear_bias", "mask")

    def forward(self, input: Tensor, linear_weight: Tensor, teacher, linear_bias: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        return type(self).function(input, linear_weight, teacher, linear_bias=linear_bias, mask=mask, **self.options)


class _LinearLogitLossModule(_LossModule):
    """Base of the fused linear logit-space loss modules:
    ``forward(input, loc_weight, log_scale_weight, teacher, loc_bias=None, log_scale_bias=None, mask=None)``."""

    keyword_inputs = ("loc_bias", "log_scale_bias", "mask")

    def forward(self, input: Tensor, loc_weight: Tensor, log_scale_weight: Tensor, teacher,
                loc_bias: Optional[Tensor] = None, log_scale_bias: Optional[Tensor] = None,
                mask: Optional[Tensor] = None) -> Tensor:
        return type(self).function(input, loc_weight, log_scale_weight, teacher, loc_bias=loc_bias,
                                   log_scale_bias=log_scale_bias, mask=mask, **self.options)


def linear_loss_module(class_name: str, loss: str) -> type:
    """The ``nn.Module`` class of ``edd_ext.linear_<loss>``: holds its options, fixed (and checked) at
    construction."""
    function = getattr(linear, "linear_" + loss)
    base = _LinearLogitLossModule if loss.startswith("logit_") else _LinearLossModule
    options = [p for name, p in inspect.signature(function).parameters.items()
               if p.kind is p.KEYWORD_ONLY and name not in base.keyword_inputs]
    cls = type(class_name, (base,), {
        "function": staticmethod(function),
        "check_options": staticmethod(functools.partial(_validation.check_linear_options, loss)),
        "__module__": __name__,
        "__doc__": f"Module form of :func:`edd_ext.linear_{loss}`; the options are fixed at construction.\n\n"
                   f"    {base.__doc__.splitlines()[-1].strip()}\n\n    " + (function.__doc__ or ""),
    })
    cls.__signature__ = inspect.Signature(options)
    return cls


LinearDirichletNLLLoss = linear_loss_module("LinearDirichletNLLLoss", "dirichlet_nll")
LinearProxyDirichletKLLoss = linear_loss_module("LinearProxyDirichletKLLoss", "proxy_dirichlet_kl")
LinearEnsembleKLLoss = linear_loss_module("LinearEnsembleKLLoss", "ensemble_kl")
LinearLogitGaussianNLLLoss = linear_loss_module("LinearLogitGaussianNLLLoss", "logit_gaussian_nll")
LinearLogitLaplaceNLLLoss = linear_loss_module("LinearLogitLaplaceNLLLoss", "logit_laplace_nll")
