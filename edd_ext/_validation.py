"""Every argument check of the public functions, in one place: each raises ``ValueError`` naming the argument,
what was expected and what was seen, before any kernel runs (SPEC section 5). The fused path, the
plain-PyTorch reference and the ``nn.Module`` forms call the same checks, so they reject the same inputs with the
same messages (tests pin the messages)."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .types import EnsembleStats, TopKEnsembleStats, TopKLogitTargets

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("none", "sum", "mean")
DIRECTIONS = ("reverse", "forward")
PRECISIONS = ("mkl", "epkl")
TEACHER_NORMS = ("log_softmax", "center", "none")
FAMILIES = ("gaussian", "laplace")
INDEX_DTYPES = (torch.int64, torch.int32)

# --------------------------------------------------------------------------------------------------
# Numbers and choices
# --------------------------------------------------------------------------------------------------


def check_number(
    name: str,
    value: object,
    *,
    minimum: float,
    strict: bool = False,
    maximum: Optional[float] = None,
) -> None:
    """``value`` must be a finite real number >= ``minimum`` (> when ``strict``) and <= ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if (value <= minimum) if strict else (value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name}: expected a number {relation} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected a number <= {maximum}, got {value!r}")


def check_real(name: str, value: object, *, minimum: float, strict: bool) -> None:
    """Like :func:`check_number` (no maximum), with one message for every failure: "a finite number >= m"."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name}: expected a finite number {relation} {minimum}, got {value!r}")


def check_int(name: str, value: object, low: int, high: int) -> None:
    """``value`` must be an ``int`` in ``[low, high)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value < high:
        raise ValueError(f"{name}: expected an int in [{low}, {high}), got {value!r}")


def check_positive(name: str, value: float) -> None:
    if not (value > 0):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def check_choice(name: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")


def check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: expected a bool, got {value!r}")


# --------------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------------


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


def check_stats(name: str, stats: EnsembleStats) -> None:
    """The fields of an :class:`EnsembleStats`: ``[*, V]`` mean (log-)probabilities and ``[*]`` measures."""
    for field in EnsembleStats._fields[:-1]:
        value = getattr(stats, field)
        if not isinstance(value, Tensor):
            raise ValueError(f"{name}.{field}: expected a Tensor, got {type(value).__name__}")
    check_float_tensor(f"{name}.mean_probs", stats.mean_probs, min_dim=1)
    shape = stats.mean_probs.shape
    if shape[-1] < 2:
        raise ValueError(f"{name}.mean_probs: expected V >= 2 classes in [*, V], got shape {tuple(shape)}")
    check_float_tensor(f"{name}.mean_log_probs", stats.mean_log_probs, min_dim=1)
    if stats.mean_log_probs.shape != shape:
        raise ValueError(
            f"{name}.mean_log_probs: expected the shape of {name}.mean_probs {tuple(shape)}, "
            f"got {tuple(stats.mean_log_probs.shape)}"
        )
    for field in ("total", "data", "mutual_information", "epkl", "rmi"):
        value = getattr(stats, field)
        if value.shape != shape[:-1]:
            raise ValueError(
                f"{name}.{field}: expected shape {tuple(shape[:-1])} (the positions of {name}.mean_probs "
                f"{tuple(shape)}), got {tuple(value.shape)}"
            )


def check_top_k(top_k: object, num_classes: int) -> None:
    """``top_k`` of ``ensemble_stats``: an int k with 1 <= k <= V."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or not 1 <= top_k <= num_classes:
        raise ValueError(f"top_k: expected an int in [1, V] = [1, {num_classes}], got {top_k!r}")


def check_topk_stats(name: str, stats: TopKEnsembleStats) -> None:
    """The fields of a :class:`TopKEnsembleStats`: ``[*, k]`` indices and values, ``[*]`` tail and measures,
    ``num_classes`` V >= 2 with k <= V. (That the indices are k distinct classes in [0, V) is checked by the
    kernels, which read them anyway: checking here would synchronise with the device.)"""
    for field in TopKEnsembleStats._fields[:-2]:
        value = getattr(stats, field)
        if not isinstance(value, Tensor):
            raise ValueError(f"{name}.{field}: expected a Tensor, got {type(value).__name__}")
    num_classes = stats.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"{name}.num_classes: expected an int V >= 2, got {num_classes!r}")
    indices = stats.indices
    if indices.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name}.indices: expected dtype torch.int64 or torch.int32, got {indices.dtype} "
                         f"(shape {tuple(indices.shape)})")
    if indices.dim() < 1 or not 1 <= indices.shape[-1] <= num_classes:
        raise ValueError(f"{name}.indices: expected [*, k] with 1 <= k <= num_classes = {num_classes}, got shape "
                         f"{tuple(indices.shape)}")
    shape = indices.shape
    for field in ("mean_probs", "mean_log_probs"):
        check_float_tensor(f"{name}.{field}", getattr(stats, field), min_dim=1)
        if getattr(stats, field).shape != shape:
            raise ValueError(f"{name}.{field}: expected the shape of {name}.indices {tuple(shape)}, got "
                             f"{tuple(getattr(stats, field).shape)}")
    for field in ("tail_mass", "tail_mean_log_prob", "total", "data", "mutual_information", "epkl", "rmi"):
        value = getattr(stats, field)
        check_float_tensor(f"{name}.{field}", value, min_dim=0)
        if value.shape != shape[:-1]:
            raise ValueError(
                f"{name}.{field}: expected shape {tuple(shape[:-1])} (the positions of {name}.indices "
                f"{tuple(shape)}), got {tuple(value.shape)}"
            )


def check_teacher(student_name: str, student: Tensor, teacher: object, mask: Optional[Tensor]) -> torch.dtype:
    """Structural checks of ``student [*, V]``, ``teacher`` (``[*, M, V]`` logits, an :class:`EnsembleStats`
    or a :class:`TopKEnsembleStats`) and ``mask``; returns the teacher's dtype."""
    check_student_logits(student_name, student)
    if isinstance(teacher, TopKEnsembleStats):
        check_topk_stats("teacher", teacher)
        if teacher.indices.shape[:-1] != student.shape[:-1] or teacher.num_classes != student.shape[-1]:
            raise ValueError(
                f"teacher: expected TopKEnsembleStats of positions {tuple(student.shape[:-1])} and num_classes "
                f"{student.shape[-1]} (those of {student_name} {tuple(student.shape)}), got indices of shape "
                f"{tuple(teacher.indices.shape)} and num_classes {teacher.num_classes}"
            )
        teacher_tensors = {f"teacher.{f}": getattr(teacher, f) for f in TopKEnsembleStats._fields[:-2]}
        teacher_dtype = teacher.mean_probs.dtype
    elif isinstance(teacher, EnsembleStats):
        check_stats("teacher", teacher)
        if teacher.mean_probs.shape != student.shape:
            raise ValueError(
                f"teacher: expected EnsembleStats with mean_probs of shape {tuple(student.shape)} "
                f"(that of {student_name}), got {tuple(teacher.mean_probs.shape)}"
            )
        teacher_tensors = {f"teacher.{f}": getattr(teacher, f) for f in EnsembleStats._fields[:-1]}
        teacher_dtype = teacher.mean_probs.dtype
    elif isinstance(teacher, Tensor):
        check_teacher_logits("teacher", teacher)
        expected = tuple(student.shape[:-1]) + ("M",) + tuple(student.shape[-1:])
        if teacher.shape[:-2] != student.shape[:-1] or teacher.shape[-1] != student.shape[-1]:
            raise ValueError(
                f"teacher: expected [*, M, V] logits of shape {expected} to match {student_name} of shape "
                f"{tuple(student.shape)} ([*, V]), got {tuple(teacher.shape)}"
            )
        teacher_tensors = {"teacher": teacher}
        teacher_dtype = teacher.dtype
    else:
        raise ValueError(
            f"teacher: expected a Tensor [*, M, V] of teacher logits, an EnsembleStats or a TopKEnsembleStats, "
            f"got {type(teacher).__name__}"
        )
    check_same_device(**{student_name: student}, **teacher_tensors)
    check_mask(mask, student.shape[:-1], student.device)
    return teacher_dtype


def check_loc_scale(loc: Tensor, log_scale: Tensor) -> None:
    """A logit-space student's ``loc`` and ``log_scale``: ``[*, V]`` each, same shape, dtype and device."""
    check_student_logits("loc", loc)
    check_student_logits("log_scale", log_scale)
    if log_scale.shape != loc.shape:
        raise ValueError(
            f"log_scale: expected the shape of loc {tuple(loc.shape)} ([*, V]), got {tuple(log_scale.shape)}"
        )
    if log_scale.dtype != loc.dtype:
        raise ValueError(
            f"log_scale: expected the dtype of loc ({loc.dtype}), got {log_scale.dtype} "
            f"(shape {tuple(log_scale.shape)})"
        )
    check_same_device(loc=loc, log_scale=log_scale)


def check_top_k_logit_targets(loc: Tensor, targets: TopKLogitTargets, teacher_norm: str, temperature: float) -> None:
    """A :class:`TopKLogitTargets` teacher of ``loc [*, V]``: its fields' shapes, and the normalisation the loss
    asks for must be the one its targets were computed with."""
    for field in TopKLogitTargets._fields[:4]:
        value = getattr(targets, field)
        if not isinstance(value, Tensor):
            raise ValueError(f"teacher_logits.{field}: expected a Tensor, got {type(value).__name__}")
    lead, k = tuple(loc.shape[:-1]), targets.indices.shape[-1]
    if targets.indices.dtype not in INDEX_DTYPES or tuple(targets.indices.shape[:-1]) != lead or \
            targets.num_classes != loc.shape[-1] or not 1 <= k <= loc.shape[-1]:
        raise ValueError(f"teacher_logits.indices: expected int64 or int32 [*, k] with positions {lead} and "
                         f"num_classes {loc.shape[-1]} (those of loc {tuple(loc.shape)}), got "
                         f"{targets.indices.dtype} of shape {tuple(targets.indices.shape)} and num_classes "
                         f"{targets.num_classes}")
    members = targets.targets.shape[-2] if targets.targets.dim() >= 2 else 0
    for field, shape in (("targets", lead + (members, k)), ("tail_mean", lead + (members,)), ("tail_variance", lead)):
        value = getattr(targets, field)
        check_float_tensor(f"teacher_logits.{field}", value, min_dim=0)
        if tuple(value.shape) != shape:
            raise ValueError(f"teacher_logits.{field}: expected shape {shape}, got {tuple(value.shape)}")
    if (teacher_norm, float(temperature)) != (targets.teacher_norm, float(targets.temperature)):
        raise ValueError(f"teacher_norm, temperature: the top-k targets were computed with teacher_norm="
                         f"{targets.teacher_norm!r}, temperature={targets.temperature!r}; got {teacher_norm!r}, "
                         f"{temperature!r}")


def check_logit_teacher(loc: Tensor, teacher_logits: object, mask: Optional[Tensor]) -> None:
    """The member logits ``[*, M, V]`` a logit-space loss needs, matching ``loc [*, V]``, and ``mask`` (top-k
    targets: :func:`check_top_k_logit_targets`)."""
    if isinstance(teacher_logits, TopKLogitTargets):
        check_same_device(loc=loc, **{f"teacher_logits.{f}": getattr(teacher_logits, f)
                                      for f in TopKLogitTargets._fields[:4]})
        check_mask(mask, loc.shape[:-1], loc.device)
        return
    if isinstance(teacher_logits, (EnsembleStats, TopKEnsembleStats)):
        raise ValueError(
            "teacher_logits: the logit-space losses need every member's logits [*, M, V]; "
            f"teacher statistics ({type(teacher_logits).__name__}) do not carry them"
        )
    check_teacher_logits("teacher_logits", teacher_logits)
    if teacher_logits.shape[:-2] != loc.shape[:-1] or teacher_logits.shape[-1] != loc.shape[-1]:
        expected = tuple(loc.shape[:-1]) + ("M",) + tuple(loc.shape[-1:])
        raise ValueError(
            f"teacher_logits: expected [*, M, V] logits of shape {expected} to match loc of shape "
            f"{tuple(loc.shape)} ([*, V]), got {tuple(teacher_logits.shape)}"
        )
    check_same_device(loc=loc, teacher_logits=teacher_logits)
    check_mask(mask, loc.shape[:-1], loc.device)


# --------------------------------------------------------------------------------------------------
# The options of each public function (shared by the function, its reference and its nn.Module form)
# --------------------------------------------------------------------------------------------------


def check_stats_options(temperature: float, smoothing: float) -> None:
    """``ensemble_stats`` / ``uncertainty.ensemble``: T > 0 and smoothing in [0, 1)."""
    if not (float(temperature) > 0):
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    if not (0.0 <= float(smoothing) < 1.0):
        raise ValueError(f"smoothing: expected a number in [0, 1), got {smoothing!r}")


def check_dirichlet_nll_options(*, model_offset: float, reduction: str) -> None:
    check_reduction(reduction)
    check_number("model_offset", model_offset, minimum=0.0)


def check_proxy_dirichlet_kl_options(
    *,
    direction: str,
    precision: str,
    model_offset: float,
    target_offset: float,
    eps: float,
    max_precision: Optional[float],
    reference_code_compat: bool,
    reduction: str,
) -> None:
    check_reduction(reduction)
    check_choice("direction", direction, DIRECTIONS)
    check_choice("precision", precision, PRECISIONS)
    check_number("model_offset", model_offset, minimum=0.0)
    check_number("target_offset", target_offset, minimum=0.0)
    check_number("eps", eps, minimum=0.0, strict=True)
    if max_precision is not None:
        check_number("max_precision", max_precision, minimum=0.0, strict=True)
    check_bool("reference_code_compat", reference_code_compat)
    if reference_code_compat and direction != "reverse":
        raise ValueError(
            f"reference_code_compat: the released code's objective exists for direction='reverse' only, "
            f"got direction={direction!r}"
        )


def check_logit_nll_options(*, teacher_norm: str, temperature: float, min_scale: float, reduction: str) -> None:
    check_reduction(reduction)
    check_choice("teacher_norm", teacher_norm, TEACHER_NORMS)
    check_number("temperature", temperature, minimum=0.0, strict=True)
    check_number("min_scale", min_scale, minimum=0.0)


def check_ensemble_kl_options(*, reduction: str) -> None:
    check_reduction(reduction)


def check_dirichlet_uncertainty_options(model_offset: object) -> None:
    if (
        isinstance(model_offset, bool)
        or not isinstance(model_offset, numbers.Real)
        or not math.isfinite(model_offset)
        or model_offset < 0
    ):
        raise ValueError(f"model_offset: expected a finite number >= 0, got {model_offset!r}")


# --------------------------------------------------------------------------------------------------
# Fused linear losses (SPEC section 2.5)
# --------------------------------------------------------------------------------------------------


def check_chunk_size(chunk_size: object) -> None:
    """``chunk_size`` is None (automatic) or an int >= 1."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected None or an int >= 1 (positions per chunk), got {chunk_size!r}")


#: The option check of each loss, by name (for the fused linear forms).
LOSS_OPTION_CHECKS = {
    "dirichlet_nll": check_dirichlet_nll_options,
    "proxy_dirichlet_kl": check_proxy_dirichlet_kl_options,
    "ensemble_kl": check_ensemble_kl_options,
    "logit_gaussian_nll": check_logit_nll_options,
    "logit_laplace_nll": check_logit_nll_options,
}


def check_linear_options(loss: str, *, chunk_size: object, **options) -> None:
    """The keywords of ``linear_<loss>``: ``chunk_size`` and those of the logit-level ``<loss>`` (its own check)."""
    check_chunk_size(chunk_size)
    LOSS_OPTION_CHECKS[loss](**options)


def check_linear_logit_teacher(loc: Tensor, teacher: object, mask: Optional[Tensor]) -> None:
    """The teacher of a fused linear logit-space loss other than ``LinearTeachers``: ``[*, M, V]`` logits matching
    ``loc [*, V]`` (top-k targets are read in plain PyTorch only, by the logit-level losses)."""
    if isinstance(teacher, TopKLogitTargets):
        raise ValueError(
            "teacher: the fused linear logit-space losses take [*, M, V] logits or LinearTeachers, got "
            "TopKLogitTargets (read in plain PyTorch only: apply logit_gaussian_nll / logit_laplace_nll to the "
            "output layers' logits)"
        )
    check_logit_teacher(loc, teacher, mask)


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
            raise ValueError(
                f"{name}: expected a [V, D] output layer (nn.Linear layout), got shape {tuple(weight.shape)}"
            )
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
