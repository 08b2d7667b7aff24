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


# --------------------------------------------------------------------------------------------------
# Fused linear losses (SPEC section 2.5)
# --------------------------------------------------------------------------------------------------


def check_chunk_size(chunk_size: object) -> None:
    """``chunk_size`` is None (automatic) or an int >= 1."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected None or an int >= 1 (positions per chunk), got {chunk_size!r}")


def check_linear(input: object, weights: dict, biases: dict) -> None:
    """The student's hidden states ``input [*, D]`` and its output layer(s): each weight ``[V, D]`` (one V for
    all), each bias ``None`` or ``[V]``; one dtype and one device. ``weights`` / ``biases`` map argument names to
    tensors, in order (the first bias belongs to the first weight)."""
    check_float_tensor("input", input, min_dim=1)
    width = input.shape[-1]
    vocab = None
    for (name, weight), (bias_name, bias) in zip(weights.items(), biases.items()):
        check_float_tensor(name, weight, min_dim=2)
        if weight.dim() != 2:
            raise ValueError(f"{name}: expected a [V, D] output layer (nn.Linear layout), got shape {tuple(weight.shape)}")
        if weight.shape[1] != width:
            raise ValueError(
                f"{name}: expected [V, D] with D = {width}, the hidden width of input {tuple(input.shape)} ([*, D]), "
                f"got {tuple(weight.shape)}"
            )
        if vocab is None:
            vocab, first = weight.shape[0], name
            if vocab < 2:
                raise ValueError(f"{name}: expected V >= 2 classes in [V, D], got shape {tuple(weight.shape)}")
        elif weight.shape[0] != vocab:
            raise ValueError(f"{name}: expected [V, D] with V = {vocab} (that of {first}), got {tuple(weight.shape)}")
        if bias is not None:
            check_float_tensor(bias_name, bias, min_dim=1)
            if bias.shape != (vocab,):
                raise ValueError(f"{bias_name}: expected shape ({vocab},) ([V] of {name}), got {tuple(bias.shape)}")
        for other_name, other in ((name, weight), (bias_name, bias)):
            if other is not None and other.dtype != input.dtype:
                raise ValueError(
                    f"{other_name}: expected the dtype of input ({input.dtype}), got {other.dtype} "
                    f"(shape {tuple(other.shape)})"
                )
        check_same_device(input=input, **{name: weight, bias_name: bias})


def _check_member_layer(name: str, hidden: Tensor, weight: Tensor, bias, batch_shape, vocab: int,
                        student_weight: str) -> None:
    """One teacher's (or the stacked teachers') hidden states, output layer and bias; ``name`` is the prefix of
    the argument names (``teacher`` or ``teacher[m]``). Stacked: ``[*, M, D]``, ``[M, V, D]``, ``[M, V]``;
    one member: ``[*, D_m]``, ``[V, D_m]``, ``[V]``."""
    stacked = name == "teacher"
    lead = 2 if stacked else 1
    check_float_tensor(f"{name}.input", hidden, min_dim=lead)
    check_float_tensor(f"{name}.linear_weight", weight, min_dim=lead + 1)
    hidden_layout, weight_layout = ("[*, M, D]", "[M, V, D]") if stacked else ("[*, D_m]", "[V, D_m]")
    if hidden.shape[:-lead] != batch_shape:
        raise ValueError(
            f"{name}.input: expected {hidden_layout} hidden states with * = {tuple(batch_shape)} (the positions of "
            f"input), got {tuple(hidden.shape)}"
        )
    if weight.dim() != lead + 1:
        raise ValueError(f"{name}.linear_weight: expected a {weight_layout} output layer, got {tuple(weight.shape)}")
    if stacked and weight.shape[0] != hidden.shape[-2]:
        raise ValueError(
            f"{name}.linear_weight: expected [M, V, D] with M = {hidden.shape[-2]} (the members of {name}.input "
            f"{tuple(hidden.shape)}), got {tuple(weight.shape)}"
        )
    if weight.shape[-2] != vocab:
        raise ValueError(
            f"{name}.linear_weight: expected {weight_layout} with V = {vocab}, the classes of {student_weight}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[-1] != hidden.shape[-1]:
        raise ValueError(
            f"{name}.linear_weight: expected {weight_layout} with D = {hidden.shape[-1]}, the hidden width of "
            f"{name}.input {tuple(hidden.shape)}, got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_float_tensor(f"{name}.linear_bias", bias, min_dim=1)
        if bias.shape != weight.shape[:-1]:
            raise ValueError(
                f"{name}.linear_bias: expected shape {tuple(weight.shape[:-1])} (that of {name}.linear_weight "
                f"{tuple(weight.shape)} without D), got {tuple(bias.shape)}"
            )
    for part, t in (("linear_weight", weight), ("linear_bias", bias)):
        if t is not None and t.dtype != hidden.dtype:
            raise ValueError(
                f"{name}.{part}: expected the dtype of {name}.input ({hidden.dtype}), got {t.dtype} "
                f"(shape {tuple(t.shape)})"
            )


def check_linear_teachers(teachers, batch_shape: torch.Size, vocab: int, device: torch.device,
                          student_weight: str = "linear_weight") -> torch.dtype:
    """A ``LinearTeachers``: stacked (``input [*, M, D]``, ``linear_weight [M, V, D]``, ``linear_bias [M, V]`` or
    None) or per member (sequences of M ``[*, D_m]`` hidden states, M ``[V, D_m]`` weights and None or M biases
    ``[V]`` / None), with M >= 1, the student's positions ``batch_shape`` and classes ``vocab``, one dtype and
    ``device``. Returns the teachers' dtype."""
    hidden, weight, bias = teachers
    if isinstance(hidden, Tensor):
        if not isinstance(weight, Tensor):
            raise ValueError(
                f"teacher.linear_weight: expected a [M, V, D] Tensor with a stacked teacher.input, "
                f"got {type(weight).__name__}"
            )
        if bias is not None and not isinstance(bias, Tensor):
            raise ValueError(f"teacher.linear_bias: expected None or a [M, V] Tensor, got {type(bias).__name__}")
        if hidden.dim() >= 2 and hidden.shape[-2] < 1:
            raise ValueError(f"teacher.input: expected M >= 1 members in [*, M, D], got shape {tuple(hidden.shape)}")
        _check_member_layer("teacher", hidden, weight, bias, batch_shape, vocab, student_weight)
        members = [(hidden, weight, bias)]
    else:
        if not isinstance(hidden, (list, tuple)) or not isinstance(weight, (list, tuple)):
            raise ValueError(
                "teacher: expected LinearTeachers of Tensors (input [*, M, D], linear_weight [M, V, D]) or of "
                f"sequences of M members' tensors, got {type(hidden).__name__} and {type(weight).__name__}"
            )
        if len(hidden) == 0:
            raise ValueError("teacher.input: expected M >= 1 members' hidden states, got an empty sequence")
        biases = [None] * len(hidden) if bias is None else bias
        if len(weight) != len(hidden) or not isinstance(biases, (list, tuple)) or len(biases) != len(hidden):
            raise ValueError(
                f"teacher: expected one linear_weight (and, if given, one linear_bias) per member: M = {len(hidden)} "
                f"hidden states, got {len(weight)} weights and "
                f"{'a ' + type(bias).__name__ if not isinstance(biases, (list, tuple)) else len(biases)} biases"
            )
        members = list(zip(hidden, weight, biases))
        for m, (h, w, b) in enumerate(members):
            _check_member_layer(f"teacher[{m}]", h, w, b, batch_shape, vocab, student_weight)
    dtype = members[0][0].dtype
    for m, (h, w, b) in enumerate(members):
        if h.dtype != dtype:
            raise ValueError(f"teacher[{m}].input: expected the dtype of teacher[0].input ({dtype}), got {h.dtype}")
        for part, t in (("input", h), ("linear_weight", w), ("linear_bias", b)):
            if t is not None and t.device != device:
                raise ValueError(f"teacher.{part}: expected device {device} (that of input), got {t.device}")
    return dtype
