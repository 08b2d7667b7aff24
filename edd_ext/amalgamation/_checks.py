"""Argument checks and small helpers shared by the amalgamation modules; the modes and measures."""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_float_tensor, check_positive

#: Ways of combining the teachers: best teacher, score-softmax mixture, plain average (no uncertainty).
MODES = ("hard", "soft", "average")
#: Uncertainty behind the teacher score: entropy of the mean prediction, or mutual information.
MEASURES = ("entropy", "mutual_information")

LabelMap = Union[Sequence[int], Tensor]


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shape(x: Tensor) -> Tuple[int, ...]:
    return tuple(x.shape)


def _check_temperature(name: str, value: float) -> None:
    if isinstance(value, Tensor) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    check_positive(name, value)


def _check_mc_logits(name: str, x: object) -> None:
    """MC-dropout logits ``[*, R, C]`` with R >= 1 passes and C >= 2 classes."""
    check_float_tensor(name, x, min_dim=2)
    r, c = x.shape[-2], x.shape[-1]
    if r < 1:
        raise ValueError(f"{name}: expected R >= 1 dropout passes in [*, R, C], got shape {_shape(x)}")
    if c < 2:
        raise ValueError(f"{name}: expected C >= 2 classes in [*, R, C], got shape {_shape(x)}")


def _check_teacher_list(teacher_mc_logits: object) -> List[Tensor]:
    if isinstance(teacher_mc_logits, Tensor) or not isinstance(teacher_mc_logits, (list, tuple)):
        raise ValueError(
            "teacher_mc_logits: expected a list of K tensors [*, R, C_i] (one per teacher), got "
            + (f"a Tensor of shape {_shape(teacher_mc_logits)}" if isinstance(teacher_mc_logits, Tensor)
               else type(teacher_mc_logits).__name__)
        )
    if len(teacher_mc_logits) == 0:
        raise ValueError("teacher_mc_logits: expected at least one teacher, got an empty list")
    for i, x in enumerate(teacher_mc_logits):
        _check_mc_logits(f"teacher_mc_logits[{i}]", x)
    first = teacher_mc_logits[0]
    for i, x in enumerate(teacher_mc_logits[1:], start=1):
        if x.shape[:-2] != first.shape[:-2]:
            raise ValueError(
                f"teacher_mc_logits[{i}]: expected the positions' shape {_shape(first)[:-2]} of "
                f"teacher_mc_logits[0] (shape {_shape(first)}) before [R, C_i], got shape {_shape(x)}"
            )
        if x.device != first.device:
            raise ValueError(
                f"teacher_mc_logits[{i}]: expected device {first.device} (that of teacher_mc_logits[0]), "
                f"got {x.device}"
            )
    return list(teacher_mc_logits)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes: expected an int >= 2 (the size of the union label space), got {num_classes!r}")
    return num_classes


def _label_map_tensor(name: str, label_map: object, size: Optional[int], num_classes: int) -> Tensor:
    """Validate one label map on the host and return it as a CPU ``int64`` tensor ``[C_i]``.

    (A label map given as a CUDA tensor is copied to the host for the check; pass lists, or build an
    :class:`AmalgamationLoss` once, to keep the training step free of host synchronisation.)
    """
    if not isinstance(label_map, Tensor) and hasattr(label_map, "__array__"):  # e.g. a NumPy array
        label_map = torch.as_tensor(label_map)
    if isinstance(label_map, Tensor):
        if label_map.dtype == torch.bool or label_map.is_floating_point() or label_map.is_complex():
            raise ValueError(f"{name}: expected an integer tensor of union indices, got dtype {label_map.dtype}")
        lm = label_map.detach().to("cpu", torch.int64)
    elif isinstance(label_map, (list, tuple, range)):
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in label_map):
            raise ValueError(f"{name}: expected a sequence of int union indices, got {list(label_map)!r}")
        lm = torch.tensor([int(v) for v in label_map], dtype=torch.int64)
    else:
        raise ValueError(
            f"{name}: expected a list of ints, an integer Tensor or array, got {type(label_map).__name__}"
        )
    if lm.dim() != 1 or lm.numel() < 1:
        raise ValueError(f"{name}: expected a non-empty 1-D map [C_i], got shape {_shape(lm)}")
    if size is not None and lm.numel() != size:
        raise ValueError(
            f"{name}: expected {size} entries (one per class of that teacher, C_i = {size}), got {lm.numel()}"
        )
    bad = (lm < 0) | (lm >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"{name}: expected union indices in [0, {num_classes}) (num_classes = {num_classes}), "
            f"got {lm[bad].tolist()}"
        )
    if torch.unique(lm).numel() != lm.numel():
        raise ValueError(f"{name}: expected distinct union indices, got duplicates in {lm.tolist()}")
    return lm


def _label_maps(label_maps: object, sizes: Sequence[int], num_classes: int) -> List[Tensor]:
    if isinstance(label_maps, Tensor) or not isinstance(label_maps, (list, tuple)):
        raise ValueError(
            f"label_maps: expected a list of K label maps (one per teacher), got {type(label_maps).__name__}"
        )
    if len(label_maps) != len(sizes):
        raise ValueError(
            f"label_maps: expected {len(sizes)} maps (one per teacher in teacher_mc_logits), got {len(label_maps)}"
        )
    return [
        _label_map_tensor(f"label_maps[{i}]", lm, c, num_classes) for i, (lm, c) in enumerate(zip(label_maps, sizes))
    ]


def _infer_num_classes(label_maps: object) -> int:
    """``1 + the largest union index`` of the maps (used when ``num_classes`` is not given)."""
    if isinstance(label_maps, Tensor) or not isinstance(label_maps, (list, tuple)) or len(label_maps) == 0:
        raise ValueError(
            f"label_maps: expected a non-empty list of label maps (one per teacher), got {type(label_maps).__name__}"
        )
    top = -1
    for lm in label_maps:
        if not isinstance(lm, Tensor) and hasattr(lm, "__array__"):
            lm = torch.as_tensor(lm)
        if isinstance(lm, Tensor):
            if lm.numel() > 0 and not (lm.is_floating_point() or lm.is_complex() or lm.dtype == torch.bool):
                top = max(top, int(lm.max()))
        elif isinstance(lm, (list, tuple, range)) and len(lm) > 0:
            if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in lm):
                top = max(top, int(max(lm)))
    return max(top + 1, 2)
