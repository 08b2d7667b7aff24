"""Structural checks shared by the public functions: each raises ``ValueError`` naming the argument,
what was expected and what was seen, before any kernel runs (SPEC section 5)."""
from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_float_tensor(name: str, x: object, min_dim: int = 1) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name}: expected a Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {x.dtype} "
            f"with shape {tuple(x.shape)}"
        )
    if x.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimension(s), got shape {tuple(x.shape)}")


def check_teacher_logits(name: str, x: object) -> None:
    """Teacher logits ``[*, M, V]`` with M >= 1 and V >= 2."""
    check_float_tensor(name, x, min_dim=2)
    m, v = x.shape[-2], x.shape[-1]
    if m < 1:
        raise ValueError(f"{name}: expected M >= 1 members in [*, M, V], got shape {tuple(x.shape)}")
    if v < 2:
        raise ValueError(f"{name}: expected V >= 2 classes in [*, M, V], got shape {tuple(x.shape)}")


def check_student_logits(name: str, x: object) -> None:
    """Student tensors ``[*, V]`` with V >= 2."""
    check_float_tensor(name, x, min_dim=1)
    if x.shape[-1] < 2:
        raise ValueError(f"{name}: expected V >= 2 classes in [*, V], got shape {tuple(x.shape)}")


def check_same_device(**tensors: Tensor) -> None:
    items = [(k, t) for k, t in tensors.items() if t is not None]
    if not items:
        return
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: expected device {first.device} (that of {first_name}), got {t.device}")


def check_positive(name: str, value: float) -> None:
    if not (value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
