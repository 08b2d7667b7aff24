"""Teacher scores from their MC-dropout uncertainty, selection weights and the amalgamated targets ``[*, C]``."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_choice, check_float_tensor
from ._checks import (
    MEASURES,
    MODES,
    LabelMap,
    _check_mc_logits,
    _check_num_classes,
    _check_teacher_list,
    _check_temperature,
    _compute_dtype,
    _infer_num_classes,
    _label_map_tensor,
    _label_maps,
    _shape,
)

# The ensemble-uncertainty op, ``f(teacher_logits [*, M, V], *, temperature) -> Uncertainty`` (fields ``[*]``):
# the one place this module looks it up. The R dropout passes are its "members" axis.
try:
    from ..uncertainty import ensemble as _ensemble_uncertainty  # the public op (SPEC section 6)
except ImportError:
    from ..reference import ensemble_uncertainty as _ensemble_uncertainty  # plain-PyTorch definition



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
