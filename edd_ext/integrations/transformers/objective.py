"""The distillation objective the trainer minimises: one of the library's five losses with its options, an
optional EnD anchor term and a teacher temperature, summed over the target positions of a batch.

    loss = loss_weight * L(student, teachers at temperature T) + anchor_weight * ensemble_kl(mu, teachers at T)

where mu is the student's logits (the location of a logit-space student). The anchor is the combination the
published logit-space criteria use (their student regresses all V teacher log-probabilities, and the KL term
keeps the top classes, which decide the translation, in place); it is allowed with every loss.

The sum runs over the positions whose label is not -100; normalising it (by the step's token count) is the
trainer's job. It is computed from logits (``from_logits``) or, with the fused linear losses of
``edd_ext`` (``E.linear_*``), from the student's and teachers' last hidden states and output layers
(``from_hidden``), so that no ``[N, V]`` or ``[N, M, V]`` tensor exists.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Tuple

from torch import Tensor

import edd_ext as E
from edd_ext._validation import check_choice

__all__ = ["DistillationObjective", "LOSSES", "linear_losses_available"]

#: loss name -> whether the student needs a log-scale head (a logit-space loss)
LOSSES = {
    "ensemble_kl": False,
    "dirichlet_nll": False,
    "proxy_dirichlet_kl": False,
    "logit_gaussian_nll": True,
    "logit_laplace_nll": True,
}
#: keywords the objective sets itself
_RESERVED = ("mask", "reduction", "temperature")


def linear_losses_available() -> bool:
    """Whether this ``edd_ext`` has the fused linear losses (``E.linear_*`` and ``E.LinearTeachers``)."""
    return hasattr(E, "LinearTeachers") and all(hasattr(E, "linear_" + name) for name in LOSSES)


def _check_weight(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class DistillationObjective:
    """Loss ``loss`` (a name of :data:`LOSSES`) with keyword ``options`` (those of ``edd_ext.<loss>``, e.g.
    ``direction``, ``precision``, ``model_offset`` or ``min_scale``, ``teacher_norm``), weighted by
    ``loss_weight``, plus ``anchor_weight`` times ``ensemble_kl``; teachers at ``temperature``."""

    loss: str = "proxy_dirichlet_kl"
    options: Mapping = field(default_factory=dict)
    loss_weight: float = 1.0
    anchor_weight: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        check_choice("loss", self.loss, tuple(LOSSES))
        allowed = [name for name, p in inspect.signature(getattr(E, self.loss)).parameters.items()
                   if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in _RESERVED]
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(f"loss_options: {unknown} are not options of {self.loss}; expected some of {allowed}")
        _check_weight("loss_weight", self.loss_weight)
        _check_weight("anchor_weight", self.anchor_weight)
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature: expected a finite number > 0, got {self.temperature!r}")

    @property
    def uses_log_scale(self) -> bool:
        """Whether the student needs a log-scale head (a logit-space loss)."""
        return LOSSES[self.loss]

    @property
    def family(self) -> Optional[str]:
        """``"gaussian"`` or ``"laplace"`` for a logit-space loss, else None."""
        return self.loss.split("_")[1] if self.uses_log_scale else None

    @property
    def _needs_stats(self) -> bool:
        return not self.uses_log_scale or self.anchor_weight > 0

    def from_logits(self, logits: Tensor, log_scale: Optional[Tensor], teacher_logits: Tensor, mask: Tensor) -> Tensor:
        """Summed objective from the student's ``logits`` (mu) ``[B, T, V]``, its ``log_scale`` ``[B, T, V]``
        (logit-space losses only), the teachers' ``teacher_logits`` ``[B, T, M, V]`` and ``mask`` ``[B, T]``."""
        stats = E.ensemble_stats(teacher_logits, temperature=self.temperature) if self._needs_stats else None
        fn = getattr(E, self.loss)
        if self.uses_log_scale:
            main = fn(logits, log_scale, teacher_logits, temperature=self.temperature, mask=mask, reduction="sum",
                      **self.options)
        else:
            main = fn(logits, stats, mask=mask, reduction="sum", **self.options)
        loss = main * self.loss_weight if self.loss_weight != 1 else main
        if self.anchor_weight > 0:
            loss = loss + self.anchor_weight * E.ensemble_kl(logits, stats, mask=mask, reduction="sum")
        return loss

    def from_hidden(self, hidden: Tensor, output_layer: Tuple[Tensor, Optional[Tensor]],
                    log_scale_layer: Optional[Tuple[Tensor, Tensor]], teacher_hidden: Sequence[Tensor],
                    teacher_layers: Sequence[Tuple[Tensor, Optional[Tensor]]], mask: Tensor) -> Tensor:
        """Summed objective from hidden states, with the fused linear losses.

        hidden: the student's ``[B, T, D]``; output_layer: its ``(W [V, D], b [V] or None)``; log_scale_layer:
        the log-scale head's ``(W, b)`` (logit-space losses only); teacher_hidden: M tensors ``[B, T, D_m]``;
        teacher_layers: M ``(W_m [V, D_m], b_m)``; mask: ``[B, T]``. Only the unmasked positions are used.
        """
        x = hidden[mask]  # [N, D]
        teachers = self._linear_teachers([h[mask] for h in teacher_hidden], teacher_layers)
        weight, bias = output_layer
        if self.uses_log_scale:
            main = getattr(E, "linear_" + self.loss)(
                x, weight, log_scale_layer[0], teachers, loc_bias=bias, log_scale_bias=log_scale_layer[1],
                reduction="sum", **self.options)
        else:
            main = getattr(E, "linear_" + self.loss)(x, weight, teachers, linear_bias=bias, reduction="sum",
                                                     **self.options)
        loss = main * self.loss_weight if self.loss_weight != 1 else main
        if self.anchor_weight > 0:
            loss = loss + self.anchor_weight * E.linear_ensemble_kl(x, weight, teachers, linear_bias=bias,
                                                                    reduction="sum")
        return loss

    def _linear_teachers(self, hidden: Sequence[Tensor], layers: Sequence[Tuple[Tensor, Optional[Tensor]]]):
        """``E.LinearTeachers`` of the M teachers with the temperature folded into their output layers
        (u / T = h (W / T)^T + b / T)."""
        t = float(self.temperature)
        weights = [w / t for w, _ in layers]
        biases = [None if b is None else b / t for _, b in layers]
        return E.LinearTeachers(list(hidden), weights, biases)
