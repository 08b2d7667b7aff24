"""The output layer of a seq2seq model: what it reads, and its weights, so that a loss can start from the
decoder's hidden states instead of the logits.

For the supported architectures the logits are ``F.linear(h, W, b)`` where ``h`` ``[B, T, D]`` is what the
output layer (``get_output_embeddings()``, ``lm_head``) reads, ``W`` ``[V, D]`` its weight and ``b`` ``[V]``
the sum of its bias and, where the model has one, the ``final_logits_bias`` buffer (BART, mBART, Marian,
Pegasus add it after the output layer; M2M-100/NLLB have none). T5 and mT5 scale the decoder output by
d_model^-1/2 before the output layer when the embeddings are tied (``config.scale_decoder_outputs``); ``h``
is taken after that scaling, so ``W`` is the output layer's own weight in every case.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LINEAR_ARCHITECTURES",
    "supports_hidden_states",
    "capture_output_layer_input",
    "hidden_states_only",
    "output_layer",
]

#: ``config.model_type`` of the architectures whose logits are ``F.linear(h, W, b)`` as described above
#: (checked against the models' own logits in tests/test_transformers.py).
LINEAR_ARCHITECTURES = ("marian", "bart", "mbart", "pegasus", "m2m_100", "t5", "mt5")

_FINAL_LOGITS_BIAS = "final_logits_bias"


class CapturedHidden:
    """Holds the tensor an output layer read during a forward (``hidden``, ``[B, T, D]``)."""

    hidden: Optional[Tensor] = None


def _base(model: nn.Module) -> nn.Module:
    """The seq2seq model itself, under a :class:`LogScaleHeadForSeq2SeqLM` wrapper if there is one."""
    return getattr(model, "base", model) if hasattr(model, "log_scale_head") else model


def supports_hidden_states(model: nn.Module) -> bool:
    """Whether ``model``'s logits are known to be ``F.linear(h, W, b)`` of :func:`output_layer`."""
    return getattr(getattr(_base(model), "config", None), "model_type", None) in LINEAR_ARCHITECTURES


def output_layer(model: nn.Module) -> Tuple[Tensor, Optional[Tensor]]:
    """``(W [V, D], b [V] or None)`` with ``logits = F.linear(h, W, b)`` for the ``h`` of
    :func:`capture_output_layer_input` (gradients flow to ``W`` and to a trainable bias)."""
    base = _base(model)
    layer = base.get_output_embeddings()
    bias = layer.bias
    final = getattr(base, _FINAL_LOGITS_BIAS, None)
    if final is not None:
        final = final.reshape(-1)
        bias = final if bias is None else bias + final
    return layer.weight, bias


@contextlib.contextmanager
def capture_output_layer_input(model: nn.Module) -> Iterator[CapturedHidden]:
    """Within the block, every forward of ``model`` records what its output layer reads (``.hidden``)."""
    captured = CapturedHidden()

    def hook(module, args):
        captured.hidden = args[0]

    handle = _base(model).get_output_embeddings().register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class _ZeroWidth(nn.Module):
    """Stands in for a linear output layer: the same layer restricted to zero classes, ``[*, 0]``.

    No matmul and no ``[*, V]`` tensor, yet the output still depends on the layer's weight and bias, so a
    ``DistributedDataParallel(find_unused_parameters=True)`` forward does not mark them unused (their
    gradient comes later, from a loss that uses them directly).
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        self._layer = (layer,)  # a tuple: not registered as a submodule
        self.in_features, self.out_features = layer.in_features, layer.out_features

    def forward(self, hidden: Tensor) -> Tensor:
        layer = self._layer[0]
        bias = None if layer.bias is None else layer.bias[:0]
        return F.linear(hidden, layer.weight[:0], bias)


def _swap_module(root: nn.Module, target: nn.Module, replacement: nn.Module) -> List[tuple]:
    """Put ``replacement`` wherever ``target`` is a child inside ``root``; returns what to restore."""
    swapped = []
    for parent in root.modules():
        for name, child in list(parent.named_children()):
            if child is target:
                setattr(parent, name, replacement)
                swapped.append((parent, name, target))
    return swapped


@contextlib.contextmanager
def hidden_states_only(model: nn.Module) -> Iterator[CapturedHidden]:
    """Within the block, a forward of ``model`` computes no logits: its output layers (and a
    :class:`LogScaleHeadForSeq2SeqLM`'s head) return ``[B, T, 0]`` tensors, ``final_logits_bias`` is empty, and
    the hidden states the output layer would have read are recorded (``.hidden``).

    The parameters are untouched (only the modules that use them are bypassed), so a
    ``DistributedDataParallel`` wrapper's forward, which must run for its gradient hooks, can still be called.
    """
    base = _base(model)
    if not supports_hidden_states(model):
        raise ValueError(
            f"model: hidden states are taken for model types {LINEAR_ARCHITECTURES}, got "
            f"{getattr(base.config, 'model_type', type(base).__name__)!r}; use the logits instead"
        )
    layer = base.get_output_embeddings()
    restore = _swap_module(model, layer, _ZeroWidth(layer))
    head = getattr(model, "log_scale_head", None)
    if head is not None:
        restore += _swap_module(model, head, _ZeroWidth(head))
    final = base._buffers.get(_FINAL_LOGITS_BIAS)
    if final is not None:
        base._buffers[_FINAL_LOGITS_BIAS] = final[..., :0]
    try:
        with capture_output_layer_input(model) as captured:
            yield captured
    finally:
        if final is not None:
            base._buffers[_FINAL_LOGITS_BIAS] = final
        for parent, name, module in restore:
            setattr(parent, name, module)
