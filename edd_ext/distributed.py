"""Data-parallel training with the token-mean losses: one normaliser for the whole optimisation step.

``reduction="mean"`` divides a micro-batch's loss by *its own* token count. Under
``DistributedDataParallel`` (which averages gradients over the W processes) and gradient accumulation, the
step's gradient is then a mean of per-micro-batch means: it depends on how the tokens fell into micro-batches
and differs from the gradient of one process on the whole batch whenever the micro-batches hold different
numbers of tokens (they almost always do for sequences). The fix is to sum and to divide by the token count of
the whole step, counted once per step over every micro-batch and process::

    n = E.distributed.global_token_count([mb.mask for mb in micro_batches])   # one all_reduce per step
    for mb in micro_batches:                                                   # gradient accumulation
        with ddp.no_sync() if mb is not micro_batches[-1] else contextlib.nullcontext():
            loss = E.proxy_dirichlet_kl(ddp(mb.x), stats(mb), mask=mb.mask, reduction="sum")
            (loss * dist.get_world_size() / n).backward()   # DDP's average over W cancels the factor W
    optimizer.step()

The gradient is then that of (sum of the losses of all the step's tokens) / (their number), identical (to
rounding) to one process on the whole batch; tests/test_distributed.py checks it with two processes.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["global_token_count"]


def global_token_count(masks: Union[Tensor, Sequence[Tensor]], group: Optional[dist.ProcessGroup] = None) -> Tensor:
    """The number of True entries in ``masks`` (one mask or the masks of a step's micro-batches), summed over
    every process of ``group`` with one ``all_reduce`` (no communication when ``torch.distributed`` is not
    initialised). Returns a float32 scalar tensor on the masks' device (at least 1, so it can divide; the count
    itself is reduced as an integer).

    Shape:
        masks: bool tensors of any shapes (True = a real target token). Output: a scalar tensor.
    """
    if isinstance(masks, Tensor):
        masks = [masks]
    if len(masks) == 0:
        raise ValueError("masks: expected at least one bool mask, got an empty sequence")
    for i, m in enumerate(masks):
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise ValueError(f"masks[{i}]: expected a bool Tensor, got "
                             f"{m.dtype if isinstance(m, Tensor) else type(m).__name__}")
    count = torch.stack([m.sum() for m in masks]).sum()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count, group=group)
    return count.clamp_min(1).to(torch.float32)
