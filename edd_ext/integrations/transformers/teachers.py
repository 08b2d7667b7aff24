"""The teacher ensemble of a distillation run: frozen models outside any data-parallel wrapper, run under
``torch.no_grad()`` in evaluation mode, optionally in bfloat16/float16."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .output_layer import hidden_states_only, output_layer

__all__ = ["prepare_teachers", "teacher_logits", "teacher_hidden_states"]

_HALF = (torch.bfloat16, torch.float16)


def prepare_teachers(teachers: Sequence[nn.Module], device: torch.device,
                     dtype: Optional[torch.dtype] = None) -> List[nn.Module]:
    """The teachers on ``device`` (in ``dtype`` when given), in evaluation mode, without gradients."""
    if dtype is not None and dtype not in _HALF + (torch.float32,):
        raise ValueError(f"teacher_dtype: expected None, torch.bfloat16, torch.float16 or torch.float32, got {dtype}")
    out = []
    for teacher in teachers:
        teacher = teacher.to(device=device, dtype=dtype) if dtype is not None else teacher.to(device)
        out.append(teacher.eval().requires_grad_(False))
    return out


@torch.no_grad()
def teacher_logits(teachers: Sequence[nn.Module], inputs: dict) -> Tensor:
    """The teachers' logits stacked ``[B, T, M, V]`` for the encoder/decoder ``inputs``."""
    return torch.stack([teacher(**inputs, use_cache=False).logits for teacher in teachers], dim=-2)


@torch.no_grad()
def teacher_hidden_states(teachers: Sequence[nn.Module],
                          inputs: dict) -> Tuple[List[Tensor], List[Tuple[Tensor, Optional[Tensor]]]]:
    """Each teacher's last hidden states ``[B, T, D_m]`` (no logits computed) and its output layer
    ``(W [V, D_m], b [V] or None)``."""
    hidden = []
    for teacher in teachers:
        with hidden_states_only(teacher) as captured:
            teacher(**inputs, use_cache=False)
        hidden.append(captured.hidden)
    return hidden, [tuple(t.detach() if t is not None else None for t in output_layer(m)) for m in teachers]
