"""Masking and reduction shared by every loss (SPEC section 0)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

REDUCTIONS = ("none", "sum", "mean")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def check_mask(mask: Optional[Tensor], batch_shape: torch.Size, device: torch.device) -> None:
    """``mask`` must be a bool tensor of the positions' shape ``[*]`` on the inputs' device."""
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask: expected a bool Tensor of shape {tuple(batch_shape)}, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype} (shape {tuple(mask.shape)})")
    if mask.shape != batch_shape:
        raise ValueError(
            f"mask: expected shape {tuple(batch_shape)} (the positions' shape), got {tuple(mask.shape)}"
        )
    if mask.device != device:
        raise ValueError(f"mask: expected device {device}, got {mask.device}")


def reduce_loss(loss: Tensor, mask: Optional[Tensor], reduction: str) -> Tensor:
    """Reduce a per-position loss ``[*]``.

    Masked positions (``mask == False``) contribute exactly zero, whatever their value (NaN included):
    they are selected away with ``torch.where``, never multiplied by zero.
    ``"mean"`` divides by the number of unmasked positions and is 0 when there are none.
    """
    if mask is not None:
        loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    count = mask.sum() if mask is not None else torch.tensor(loss.numel(), device=loss.device)
    return total / count.clamp_min(1).to(loss.dtype)
