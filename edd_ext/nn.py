"""``torch.nn.Module`` forms of the fused distillation losses (SPEC section 2; math in ``edd_ext.losses``).

Each module holds nothing but the loss's options, fixed (and checked, by the loss's own option check) at
construction; ``forward`` takes the student tensor(s), the teacher and an optional ``mask`` and forwards them
with the options to the function. Names, keywords, defaults and docstrings come from ``edd_ext._signatures``.
Every module is stateless and works under ``torch.compile(fullgraph=True)``.
"""
from __future__ import annotations

import inspect
from typing import Callable, Optional

from torch import Tensor, nn

from . import _signatures, _validation, losses

__all__ = [
    "DirichletNLLLoss",
    "ProxyDirichletKLLoss",
    "LogitGaussianNLLLoss",
    "LogitLaplaceNLLLoss",
    "EnsembleKLLoss",
]


class _LossModule(nn.Module):
    """Base of the loss modules: ``options`` are the function's keywords other than ``mask``."""

    function: Callable
    check_options: Callable

    def __init__(self, **options) -> None:
        super().__init__()
        defaults = _signatures.defaults(self.function)
        defaults.pop("mask")
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
