"""Monte-Carlo dropout passes of a teacher: ``mc_dropout_logits(module, inputs, R)`` -> ``[*, R, C]``."""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ._checks import _shape

# --------------------------------------------------------------------------------------------------------
# Monte-Carlo dropout
# --------------------------------------------------------------------------------------------------------
#: Layers switched to train mode by :func:`mc_dropout_logits` (every ``nn.Dropout*`` / ``nn.AlphaDropout*``).
DROPOUT_TYPES: Tuple[type, ...] = (nn.modules.dropout._DropoutNd,)


def mc_dropout_logits(
    module: nn.Module,
    inputs: Union[Tensor, Sequence[Any], dict],
    num_passes: int = 16,
    *,
    dropout_types: Sequence[type] = (),
    no_grad: bool = True,
) -> Tensor:
    """Run ``num_passes`` stochastic forward passes of ``module`` with only its dropout layers active.

    Every submodule is put in eval mode except the dropout layers (subclasses of ``nn.Dropout``,
    ``nn.Dropout1d/2d/3d``, ``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``, plus any ``dropout_types``),
    which are put in train mode; batch norm therefore uses its running statistics and is not updated.
    Each submodule's original ``training`` flag is restored afterwards, also when the forward raises.
    Modes are set on the ``training`` attribute directly, so an overridden ``train()`` is not called.
    Dropout done through ``F.dropout(x, training=self.training)`` inside another kind of module follows
    that module's mode (eval): list such module types in ``dropout_types``.

    Args:
        module: any ``nn.Module`` returning logits ``[B, C]`` (or ``[B, T, C]``, ...).
        inputs: a Tensor (passed as the one positional argument), a tuple/list of positional arguments, or
            a dict of keyword arguments.
        num_passes: R >= 1, the number of dropout passes (SPEC default 16).
        dropout_types: extra module types to switch to train mode.
        no_grad: run the passes under ``torch.no_grad()`` (teachers are not trained).

    Returns:
        ``[B, R, C]``: the passes stacked on the second-to-last axis (``[B, T, R, C]`` for ``[B, T, C]``
        outputs), the "members" layout of ``edd_ext.uncertainty.ensemble``.
    """
    if not isinstance(module, nn.Module):
        raise ValueError(f"module: expected an nn.Module, got {type(module).__name__}")
    if isinstance(num_passes, bool) or not isinstance(num_passes, int) or num_passes < 1:
        raise ValueError(f"num_passes: expected an int >= 1, got {num_passes!r}")
    extra = tuple(dropout_types)
    if not all(isinstance(t, type) for t in extra):
        raise ValueError(f"dropout_types: expected module classes, got {extra!r}")
    types = DROPOUT_TYPES + extra
    if isinstance(inputs, dict):
        args, kwargs = (), dict(inputs)
    elif isinstance(inputs, (tuple, list)):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}

    saved = [(m, m.training) for m in module.modules()]
    if not any(isinstance(m, types) for m, _ in saved):
        warnings.warn(
            f"mc_dropout_logits: {type(module).__name__} has no dropout layer of types "
            f"{[t.__name__ for t in types]}; all {num_passes} passes will be identical",
            stacklevel=2,
        )
    outputs = []
    try:
        for m, _ in saved:
            m.training = isinstance(m, types)
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            for _ in range(num_passes):
                outputs.append(module(*args, **kwargs))
    finally:
        for m, mode in saved:
            m.training = mode
    for out in outputs[:1]:
        if not isinstance(out, Tensor) or out.dim() < 1:
            raise ValueError(
                "module: expected the forward to return a logits Tensor [B, C], got "
                + (f"shape {_shape(out)}" if isinstance(out, Tensor) else type(out).__name__)
            )
    return torch.stack(outputs, dim=-2)
