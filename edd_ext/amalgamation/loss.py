"""The student's loss against the amalgamated target: ``amalgamation_kl``, ``amalgamation_loss``,
``AmalgamationLoss``."""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from .._validation import check_choice, check_float_tensor, check_mask, check_reduction, check_student_logits
from ..reference import reduce_loss
from ._checks import (
    MEASURES,
    MODES,
    LabelMap,
    _check_num_classes,
    _check_teacher_list,
    _check_temperature,
    _compute_dtype,
    _infer_num_classes,
    _label_map_tensor,
    _label_maps,
    _shape,
)
from .targets import AmalgamationTargets, _targets


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
