"""Knowledge amalgamation with teacher uncertainty (MUKA, SPEC section 4).

K teachers, each trained on its own subset of a label set, supervise one student over the union of the
subsets, without labels. For every input each teacher is run R times with Monte-Carlo dropout; the R
passes play the role of ensemble members, so a teacher's logits for a batch are ``[*, R, C_i]`` and the
library's ensemble-uncertainty op gives, per input, the entropy of the mean prediction H[p̄ᵢ] (``total``)
and the mutual information between prediction and dropout mask (``mutual_information``).

Teacher i's adequacy for an input is

    sᵢ = 1 − H[p̄ᵢ] / ln Cᵢ                    (measure="entropy", the default)
    sᵢ = 1 − MI / ln Cᵢ                        (measure="mutual_information")

which lies in [0, 1] (both measures are between 0 and ln Cᵢ) and is comparable between teachers with
different numbers of classes. Each p̄ᵢ is zero-padded into the union label space through a label map
(``label_maps[i][j]`` = the union index of teacher i's class j) and the teachers are combined into a target
t ∈ Δ^C per input:

    mode="hard":     t = pad(p̄_{i*}),  i* = argmax_i sᵢ   (ties: the first teacher)
    mode="soft":     t = Σᵢ wᵢ pad(p̄ᵢ),  w = softmax(s / selection_temperature)  (0.2 by default)
    mode="average":  t = (1/K) Σᵢ pad(p̄ᵢ)   — the uncertainty-free baseline

As ``selection_temperature → 0`` the soft weights tend to the hard one-hot selection. The student with
logits z ∈ ℝ^C is trained with

    L = w_margin · KL(t ‖ softmax(z / τ)) = w_margin · Σₖ tₖ (ln tₖ − log_softmax(z / τ)ₖ),
    ∂L/∂zₖ = w_margin · (softmax(z / τ)ₖ − tₖ) / τ,

where w_margin = 1, or, with ``margin_weighting=True``, the gap s₍₁₎ − s₍₂₎ ∈ [0, 1] between the best and
the second-best teacher score (inputs on which the teachers' adequacy is ambiguous count less). The target
is a constant: no gradient reaches the teachers. The loss is not multiplied by τ² (as some distillation
recipes do); scale it yourself if yours expects that.

Everything is batched over the positions ``[*]`` (no Python loop over examples; the only loops are over the
K teachers and the R dropout passes), works on CPU and CUDA tensors, and accumulates in float32 (float64
for float64 inputs).
"""
from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._reduction import check_mask, check_reduction, reduce_loss
from ._validation import check_choice, check_float_tensor, check_positive, check_student_logits

__all__ = [
    "MODES",
    "MEASURES",
    "DROPOUT_TYPES",
    "AmalgamationTargets",
    "AmalgamationLoss",
    "mc_dropout_logits",
    "teacher_score",
    "teacher_mean_probs",
    "pad_to_union",
    "selection_weights",
    "margin_weights",
    "amalgamation_targets",
    "amalgamation_kl",
    "amalgamation_loss",
]

#: Ways of combining the teachers: best teacher, score-softmax mixture, plain average (no uncertainty).
MODES = ("hard", "soft", "average")
#: Uncertainty behind the teacher score: entropy of the mean prediction, or mutual information.
MEASURES = ("entropy", "mutual_information")

LabelMap = Union[Sequence[int], Tensor]


# The ensemble-uncertainty op, ``f(teacher_logits [*, M, V], *, temperature) -> Uncertainty`` (fields ``[*]``):
# the one place this module looks it up. The R dropout passes are its "members" axis.
try:
    from .uncertainty import ensemble as _ensemble_uncertainty  # the public op (SPEC section 6)
except ImportError:
    from .reference import ensemble_uncertainty as _ensemble_uncertainty  # plain-PyTorch definition


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
                f"module: expected the forward to return a logits Tensor [B, C], got "
                + (f"shape {_shape(out)}" if isinstance(out, Tensor) else type(out).__name__)
            )
    return torch.stack(outputs, dim=-2)


# --------------------------------------------------------------------------------------------------------
# Teacher scores and targets
# --------------------------------------------------------------------------------------------------------
def _teacher_evidence(x: Tensor, measure: str, temperature: float) -> Tuple[Tensor, Tensor]:
    """Unchecked: ``x`` [*, R, C] -> (mean probabilities [*, C], score [*]), both constants."""
    x = x.detach().to(_compute_dtype(x.dtype))
    unc = _ensemble_uncertainty(x, temperature=temperature)
    u = unc.total if measure == "entropy" else unc.mutual_information
    score = (1.0 - u.to(x.dtype) / math.log(x.shape[-1])).clamp(0.0, 1.0)
    mean_probs = torch.softmax(x / temperature, dim=-1).mean(dim=-2)
    return mean_probs, score


def teacher_score(mc_logits: Tensor, *, measure: str = "entropy", temperature: float = 1.0) -> Tensor:
    """Adequacy of one teacher for each input, from its R Monte-Carlo-dropout passes.

    ``measure="entropy"``: s = 1 − H[p̄]/ln C, with p̄ the mean of the R passes' softmax(logits/T);
    ``measure="mutual_information"``: s = 1 − MI/ln C (epistemic part only). 1 = certain, 0 = uniform
    (or maximal disagreement).

    Args:
        mc_logits: ``[*, R, C]`` logits of R dropout passes (e.g. from :func:`mc_dropout_logits`).
        measure: ``"entropy"`` or ``"mutual_information"``.
        temperature: teacher temperature T.

    Returns:
        ``[*]`` scores in [0, 1] (float32, or float64 for float64 input); no gradient.
    """
    _check_mc_logits("mc_logits", mc_logits)
    check_choice("measure", measure, MEASURES)
    _check_temperature("temperature", temperature)
    return _teacher_evidence(mc_logits, measure, temperature)[1]


def teacher_mean_probs(mc_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    """p̄ = (1/R) Σ_r softmax(logits_r / T): ``[*, R, C]`` -> ``[*, C]`` (float32, or float64); no gradient."""
    _check_mc_logits("mc_logits", mc_logits)
    _check_temperature("temperature", temperature)
    x = mc_logits.detach().to(_compute_dtype(mc_logits.dtype))
    return torch.softmax(x / temperature, dim=-1).mean(dim=-2)


def pad_to_union(probs: Tensor, label_map: LabelMap, num_classes: int) -> Tensor:
    """Zero-pad a teacher's distribution ``[*, C_i]`` into the union label space ``[*, num_classes]``.

    ``out[..., label_map[j]] = probs[..., j]``; every union class outside ``label_map`` gets exactly 0.

    Raises:
        ValueError: when ``label_map`` is not 1-D with C_i distinct integers in ``[0, num_classes)``.
    """
    check_float_tensor("probs", probs, min_dim=1)
    num_classes = _check_num_classes(num_classes)
    index = _label_map_tensor("label_map", label_map, probs.shape[-1], num_classes).to(probs.device)
    return _pad(probs, index, num_classes)


def _pad(probs: Tensor, index: Tensor, num_classes: int) -> Tensor:
    out = probs.new_zeros(probs.shape[:-1] + (num_classes,))
    return out.index_copy(-1, index, probs)


def _check_scores(scores: object) -> None:
    check_float_tensor("scores", scores, min_dim=1)
    if scores.shape[-1] < 1:
        raise ValueError(f"scores: expected K >= 1 teachers in [*, K], got shape {_shape(scores)}")


def selection_weights(scores: Tensor, *, mode: str = "soft", temperature: float = 0.2) -> Tensor:
    """Per-input teacher weights ``[*, K]`` from scores ``[*, K]``; each row sums to 1.

    ``"hard"``: one-hot of argmax (the first teacher on ties); ``"soft"``: softmax(scores / temperature),
    which tends to ``"hard"`` as temperature → 0; ``"average"``: 1/K everywhere (scores ignored).
    """
    _check_scores(scores)
    check_choice("mode", mode, MODES)
    _check_temperature("temperature", temperature)
    return _weights(scores, mode, temperature)


def _weights(scores: Tensor, mode: str, temperature: float) -> Tensor:
    k = scores.shape[-1]
    if mode == "soft":
        return torch.softmax(scores / temperature, dim=-1)
    if mode == "hard":
        return F.one_hot(scores.argmax(dim=-1), k).to(scores.dtype)
    return torch.full_like(scores, 1.0 / k)


def margin_weights(scores: Tensor) -> Tensor:
    """Gap between the best and second-best teacher score: ``[*, K]`` -> ``[*]`` (in [0, 1] for scores in [0, 1]).

    Raises:
        ValueError: when K < 2 (there is no second-best teacher).
    """
    _check_scores(scores)
    if scores.shape[-1] < 2:
        raise ValueError(f"scores: margin weighting needs K >= 2 teachers in [*, K], got shape {_shape(scores)}")
    top2 = scores.topk(2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


class AmalgamationTargets(NamedTuple):
    """Result of :func:`amalgamation_targets`.

    target: ``[*, C]`` the amalgamated distribution over the union label space (rows sum to 1).
    weights: ``[*, K]`` each teacher's weight in the target (one-hot for ``"hard"``).
    scores: ``[*, K]`` each teacher's adequacy score in [0, 1].
    margin: ``[*]`` best minus second-best score (ones when K == 1).
    """

    target: Tensor
    weights: Tensor
    scores: Tensor
    margin: Tensor


def amalgamation_targets(
    teacher_mc_logits: Sequence[Tensor],
    label_maps: Sequence[LabelMap],
    num_classes: Optional[int] = None,
    *,
    mode: str = "soft",
    selection_temperature: float = 0.2,
    measure: str = "entropy",
    teacher_temperature: float = 1.0,
) -> AmalgamationTargets:
    """Score the K teachers on every input and combine their distributions into one target.

    Args:
        teacher_mc_logits: K tensors ``[*, R_i, C_i]``: teacher i's logits from R_i dropout passes over its
            own C_i classes; the positions ``[*]`` must agree across teachers.
        label_maps: K maps; ``label_maps[i][j]`` is the union index of teacher i's class j (C_i distinct ints).
            Teachers may share union classes.
        num_classes: C, the size of the union label space (default: 1 + the largest index in the maps).
        mode: ``"hard"``, ``"soft"`` or ``"average"`` (see the module docstring).
        selection_temperature: temperature of the score softmax in ``"soft"`` mode (default 0.2).
        measure: ``"entropy"`` or ``"mutual_information"`` for the teacher score.
        teacher_temperature: T applied to the teacher logits.

    Returns:
        :class:`AmalgamationTargets` (float32, or float64 when the teachers are float64); no gradient.
    """
    teachers = _check_teacher_list(teacher_mc_logits)
    if num_classes is None:
        num_classes = _infer_num_classes(label_maps)
    num_classes = _check_num_classes(num_classes)
    maps = _label_maps(label_maps, [x.shape[-1] for x in teachers], num_classes)
    check_choice("mode", mode, MODES)
    check_choice("measure", measure, MEASURES)
    _check_temperature("selection_temperature", selection_temperature)
    _check_temperature("teacher_temperature", teacher_temperature)
    device = teachers[0].device
    return _targets(
        teachers, [m.to(device) for m in maps], num_classes, mode, selection_temperature, measure, teacher_temperature
    )


def _targets(
    teachers: List[Tensor],
    maps: List[Tensor],
    num_classes: int,
    mode: str,
    selection_temperature: float,
    measure: str,
    teacher_temperature: float,
) -> AmalgamationTargets:
    """Unchecked core of :func:`amalgamation_targets` (label maps already validated, on the teachers' device)."""
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in teachers) else torch.float32
    padded, scores = [], []
    for x, index in zip(teachers, maps):  # a loop over the K teachers, not over examples
        mean_probs, score = _teacher_evidence(x, measure, teacher_temperature)
        padded.append(_pad(mean_probs.to(dtype), index, num_classes))
        scores.append(score.to(dtype))
    padded_t = torch.stack(padded, dim=-2)  # [*, K, C]
    scores_t = torch.stack(scores, dim=-1)  # [*, K]
    weights = _weights(scores_t, mode, selection_temperature)
    if mode == "hard":
        # Gather the chosen teacher instead of summing one-hot products, so a NaN in a teacher that was not
        # chosen cannot leak into the target.
        best = scores_t.argmax(dim=-1, keepdim=True).unsqueeze(-1)  # [*, 1, 1]
        target = torch.take_along_dim(padded_t, best, dim=-2).squeeze(-2)
    else:
        target = (weights.unsqueeze(-1) * padded_t).sum(dim=-2)
    if scores_t.shape[-1] >= 2:
        top2 = scores_t.topk(2, dim=-1).values
        margin = top2[..., 0] - top2[..., 1]
    else:
        margin = torch.ones_like(scores_t[..., 0])
    return AmalgamationTargets(target, weights, scores_t, margin)


# --------------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------------
def amalgamation_kl(
    student_logits: Tensor,
    target: Tensor,
    *,
    temperature: float = 1.0,
    weight: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """KL(target ‖ softmax(student_logits / τ)) per position, optionally weighted.

    L = weight · Σₖ tₖ (ln tₖ − log_softmax(z/τ)ₖ)   (0 · ln 0 = 0),
    ∂L/∂z = weight · (softmax(z/τ) − t) / τ.

    Args:
        student_logits: ``[*, C]`` student logits z over the union label space.
        target: ``[*, C]`` target distribution (e.g. ``amalgamation_targets(...).target``); treated as a
            constant (detached).
        temperature: τ > 0.
        weight: optional ``[*]`` per-position weight (e.g. the margin), treated as a constant.
        mask: optional bool ``[*]``; False positions contribute exactly 0 and get exactly 0 gradient.
        reduction: ``"none"`` (``[*]``), ``"sum"``, or ``"mean"`` (over unmasked positions).

    Returns:
        The loss in float32 (float64 for float64 student logits).
    """
    check_student_logits("student_logits", student_logits)
    check_float_tensor("target", target, min_dim=1)
    if target.shape != student_logits.shape:
        raise ValueError(
            f"target: expected the shape of student_logits {_shape(student_logits)}, got {_shape(target)}"
        )
    if target.device != student_logits.device:
        raise ValueError(
            f"target: expected device {student_logits.device} (that of student_logits), got {target.device}"
        )
    batch_shape = student_logits.shape[:-1]
    if weight is not None:
        check_float_tensor("weight", weight, min_dim=0)
        if weight.shape != batch_shape:
            raise ValueError(
                f"weight: expected the positions' shape {tuple(batch_shape)} of student_logits "
                f"{_shape(student_logits)}, got {_shape(weight)}"
            )
        if weight.device != student_logits.device:
            raise ValueError(f"weight: expected device {student_logits.device}, got {weight.device}")
    check_mask(mask, batch_shape, student_logits.device)
    check_reduction(reduction)
    _check_temperature("temperature", temperature)
    return _kl(student_logits, target, temperature, weight, mask, reduction)


def _kl(
    student_logits: Tensor,
    target: Tensor,
    temperature: float,
    weight: Optional[Tensor],
    mask: Optional[Tensor],
    reduction: str,
) -> Tensor:
    dtype = _compute_dtype(student_logits.dtype)
    z = student_logits.to(dtype)
    t = target.detach().to(dtype)
    if mask is not None:
        # Replace masked rows by harmless values so that neither the loss nor the gradient of a masked
        # position can be NaN (the gradient through torch.where is exactly 0 there).
        keep = mask.unsqueeze(-1)
        z = torch.where(keep, z, torch.zeros((), dtype=dtype, device=z.device))
        t = torch.where(keep, t, torch.full((), 1.0 / t.shape[-1], dtype=dtype, device=t.device))
    log_q = torch.log_softmax(z / temperature, dim=-1)
    loss = (torch.xlogy(t, t) - t * log_q).sum(dim=-1)  # [*]
    if weight is not None:
        w = weight.detach().to(dtype)
        if mask is not None:
            w = torch.where(mask, w, torch.zeros((), dtype=dtype, device=w.device))
        loss = loss * w
    return reduce_loss(loss, mask, reduction)


def _check_student_against_teachers(student_logits: Tensor, teachers: List[Tensor]) -> None:
    check_student_logits("student_logits", student_logits)
    first = teachers[0]
    if student_logits.shape[:-1] != first.shape[:-2]:
        raise ValueError(
            f"student_logits: expected the positions' shape {_shape(first)[:-2]} of teacher_mc_logits[0] "
            f"(shape {_shape(first)}) before [C], got shape {_shape(student_logits)}"
        )
    if student_logits.device != first.device:
        raise ValueError(
            f"student_logits: expected device {first.device} (that of teacher_mc_logits), got {student_logits.device}"
        )


def amalgamation_loss(
    student_logits: Tensor,
    teacher_mc_logits: Sequence[Tensor],
    label_maps: Sequence[LabelMap],
    *,
    mode: str = "soft",
    selection_temperature: float = 0.2,
    measure: str = "entropy",
    teacher_temperature: float = 1.0,
    temperature: float = 1.0,
    margin_weighting: bool = False,
    mask: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    """The MUKA loss: amalgamate the teachers (:func:`amalgamation_targets`) and distil the student on it.

    Args:
        student_logits: ``[*, C]`` student logits over the union label space (C = num_classes).
        teacher_mc_logits: K tensors ``[*, R_i, C_i]`` of Monte-Carlo-dropout teacher logits.
        label_maps: K maps from each teacher's classes to union indices in ``[0, C)``.
        mode, selection_temperature, measure, teacher_temperature: as in :func:`amalgamation_targets`.
        temperature: the student temperature τ of KL(t ‖ softmax(z/τ)).
        margin_weighting: weight each position by the gap between its two best teacher scores (K >= 2).
        mask: optional bool ``[*]`` (True = a real position).
        reduction: ``"none"`` (``[*]``), ``"sum"`` or ``"mean"`` (over unmasked positions).

    Returns:
        The loss (float32, or float64 for float64 student logits); gradients flow to ``student_logits`` only.
    """
    teachers = _check_teacher_list(teacher_mc_logits)
    _check_student_against_teachers(student_logits, teachers)
    num_classes = student_logits.shape[-1]
    maps = _label_maps(label_maps, [x.shape[-1] for x in teachers], num_classes)
    return _loss_checked(
        student_logits, teachers, [m.to(student_logits.device) for m in maps], mode=mode,
        selection_temperature=selection_temperature, measure=measure, teacher_temperature=teacher_temperature,
        temperature=temperature, margin_weighting=margin_weighting, mask=mask, reduction=reduction,
    )


def _loss_checked(
    student_logits: Tensor,
    teachers: List[Tensor],
    maps: List[Tensor],
    *,
    mode: str,
    selection_temperature: float,
    measure: str,
    teacher_temperature: float,
    temperature: float,
    margin_weighting: bool,
    mask: Optional[Tensor],
    reduction: str,
) -> Tensor:
    """Option checks and the computation; tensors and label maps already validated."""
    check_choice("mode", mode, MODES)
    check_choice("measure", measure, MEASURES)
    _check_temperature("selection_temperature", selection_temperature)
    _check_temperature("teacher_temperature", teacher_temperature)
    _check_temperature("temperature", temperature)
    if margin_weighting and len(teachers) < 2:
        raise ValueError(f"margin_weighting: needs K >= 2 teachers, got K = {len(teachers)}")
    check_mask(mask, student_logits.shape[:-1], student_logits.device)
    check_reduction(reduction)
    amalgam = _targets(
        teachers, maps, student_logits.shape[-1], mode, selection_temperature, measure, teacher_temperature
    )
    weight = amalgam.margin if margin_weighting else None
    return _kl(student_logits, amalgam.target, temperature, weight, mask, reduction)


class AmalgamationLoss(nn.Module):
    """``nn.Module`` form of :func:`amalgamation_loss`, with the label maps validated once.

    The maps are registered as (non-persistent) buffers, so they follow ``.to(device)`` and the forward
    pass does no host synchronisation; this is the form to use under ``torch.compile(fullgraph=True)``
    (the functional form validates list label maps on the host at every call).

    Shape:
        - student_logits: ``[*, C]`` with C = ``num_classes``.
        - teacher_mc_logits: K tensors ``[*, R_i, C_i]``.
        - mask: ``[*]`` bool, optional.
        - output: scalar, or ``[*]`` for ``reduction="none"``.
    """

    def __init__(
        self,
        label_maps: Sequence[LabelMap],
        num_classes: Optional[int] = None,
        *,
        mode: str = "soft",
        selection_temperature: float = 0.2,
        measure: str = "entropy",
        teacher_temperature: float = 1.0,
        temperature: float = 1.0,
        margin_weighting: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if num_classes is None:
            num_classes = _infer_num_classes(label_maps)
        self.num_classes = _check_num_classes(num_classes)
        if isinstance(label_maps, Tensor) or not isinstance(label_maps, (list, tuple)) or len(label_maps) == 0:
            raise ValueError(
                "label_maps: expected a non-empty list of label maps (one per teacher), got "
                f"{type(label_maps).__name__}"
            )
        for i, lm in enumerate(label_maps):
            index = _label_map_tensor(f"label_maps[{i}]", lm, None, self.num_classes)
            self.register_buffer(f"label_map_{i}", index, persistent=False)
        self.num_teachers = len(label_maps)
        check_choice("mode", mode, MODES)
        check_choice("measure", measure, MEASURES)
        _check_temperature("selection_temperature", selection_temperature)
        _check_temperature("teacher_temperature", teacher_temperature)
        _check_temperature("temperature", temperature)
        check_reduction(reduction)
        if margin_weighting and self.num_teachers < 2:
            raise ValueError(f"margin_weighting: needs K >= 2 teachers, got K = {self.num_teachers}")
        self.mode = mode
        self.selection_temperature = selection_temperature
        self.measure = measure
        self.teacher_temperature = teacher_temperature
        self.temperature = temperature
        self.margin_weighting = margin_weighting
        self.reduction = reduction

    @property
    def label_maps(self) -> List[Tensor]:
        return [getattr(self, f"label_map_{i}") for i in range(self.num_teachers)]

    def targets(self, teacher_mc_logits: Sequence[Tensor]) -> AmalgamationTargets:
        """The amalgamated targets for ``teacher_mc_logits`` (K tensors ``[*, R_i, C_i]``)."""
        teachers = self._check_teachers(teacher_mc_logits)
        return _targets(
            teachers, self._maps_on(teachers[0].device), self.num_classes, self.mode,
            self.selection_temperature, self.measure, self.teacher_temperature,
        )

    def forward(
        self, student_logits: Tensor, teacher_mc_logits: Sequence[Tensor], mask: Optional[Tensor] = None
    ) -> Tensor:
        teachers = self._check_teachers(teacher_mc_logits)
        _check_student_against_teachers(student_logits, teachers)
        if student_logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"student_logits: expected C = num_classes = {self.num_classes} classes in [*, C], "
                f"got shape {_shape(student_logits)}"
            )
        return _loss_checked(
            student_logits, teachers, self._maps_on(student_logits.device), mode=self.mode,
            selection_temperature=self.selection_temperature, measure=self.measure,
            teacher_temperature=self.teacher_temperature, temperature=self.temperature,
            margin_weighting=self.margin_weighting, mask=mask, reduction=self.reduction,
        )

    def _check_teachers(self, teacher_mc_logits: Sequence[Tensor]) -> List[Tensor]:
        teachers = _check_teacher_list(teacher_mc_logits)
        if len(teachers) != self.num_teachers:
            raise ValueError(
                f"teacher_mc_logits: expected {self.num_teachers} teachers (one per label map), got {len(teachers)}"
            )
        for i, (x, lm) in enumerate(zip(teachers, self.label_maps)):
            if x.shape[-1] != lm.numel():
                raise ValueError(
                    f"teacher_mc_logits[{i}]: expected C_i = {lm.numel()} classes (the length of label_maps[{i}]) "
                    f"in [*, R, C_i], got shape {_shape(x)}"
                )
        return teachers

    def _maps_on(self, device: torch.device) -> List[Tensor]:
        return [m if m.device == device else m.to(device) for m in self.label_maps]

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_teachers={self.num_teachers}, mode={self.mode!r}, "
            f"selection_temperature={self.selection_temperature}, measure={self.measure!r}, "
            f"temperature={self.temperature}, margin_weighting={self.margin_weighting}, reduction={self.reduction!r}"
        )
