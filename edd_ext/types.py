"""Result types shared by the statistics, the losses and the uncertainty measures, and the teachers of the fused
linear losses.

They are ``NamedTuple`` s so that they travel through ``torch.compile(fullgraph=True)``,
``torch.save`` and ``tuple``-based code unchanged.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

from torch import Tensor

__all__ = ["Uncertainty", "DirichletUncertainty", "EnsembleStats", "TopKEnsembleStats", "TopKLogitTargets",
           "LinearTeachers", "MEASURE_NAMES"]

#: Field order of the five measures every uncertainty set carries (and of the ``[*, 5]`` kernel output).
MEASURE_NAMES = ("total", "data", "mutual_information", "epkl", "rmi")


class Uncertainty(NamedTuple):
    """Per-position uncertainty measures, each of shape ``[*]`` (nats).

    total: TU, entropy of the expected categorical.
    data: DU, expected entropy (aleatoric part).
    mutual_information: MI = TU - DU (epistemic part).
    epkl: expected pairwise KL divergence.
    rmi: reverse mutual information, EPKL - MI.
    """

    total: Tensor
    data: Tensor
    mutual_information: Tensor
    epkl: Tensor
    rmi: Tensor


class DirichletUncertainty(NamedTuple):
    """Measures of a Dirichlet student, each ``[*]``: the five of :class:`Uncertainty` plus
    ``precision`` (alpha_0) and ``differential_entropy`` (of the Dirichlet)."""

    total: Tensor
    data: Tensor
    mutual_information: Tensor
    epkl: Tensor
    rmi: Tensor
    precision: Tensor
    differential_entropy: Tensor


class EnsembleStats(NamedTuple):
    """Teacher-ensemble statistics of SPEC section 1.

    mean_probs: ``[*, V]`` ensemble mean probability (float32, or float64 for float64 teachers).
    mean_log_probs: ``[*, V]`` mean of the members' log-probabilities.
    total, data, mutual_information, epkl, rmi: ``[*]`` ensemble uncertainty measures.
    num_members: M, the ensemble size the statistics were computed from.
    """

    mean_probs: Tensor
    mean_log_probs: Tensor
    total: Tensor
    data: Tensor
    mutual_information: Tensor
    epkl: Tensor
    rmi: Tensor
    num_members: int = 0

    @property
    def uncertainty(self) -> Uncertainty:
        return Uncertainty(self.total, self.data, self.mutual_information, self.epkl, self.rmi)


class TopKEnsembleStats(NamedTuple):
    """The compact teacher statistics of SPEC section 1.1 (``ensemble_stats(..., top_k=k)``), for caches.

    Per position, the k classes of largest ensemble mean probability and a two-number summary of the other
    V - k (the tail); the five measures are computed exactly over all V classes.

    indices: ``[*, k]`` int64 (int32 accepted): the k classes, by decreasing mean probability (ties: smaller
        class first).
    mean_probs: ``[*, k]`` their ensemble mean probability pi^ (float32, float64 for float64 teachers; a cache
        may hold float16 or bfloat16).
    mean_log_probs: ``[*, k]`` their mean log-probability l- = (1/M) sum_m ln pi^(m).
    tail_mass: ``[*]`` tau = the tail classes' total mean probability (= 1 - sum of ``mean_probs``; 0 when k = V).
    tail_mean_log_prob: ``[*]`` lambda = the mean of l- over the V - k tail classes (0 when k = V).
    total, data, mutual_information, epkl, rmi: ``[*]`` the ensemble measures, exact over all V classes.
    num_classes: V.
    num_members: M.

    A loss reading it stands for the dense target in which every tail class j has pi^_j = tau / (V - k) and
    l-_j = lambda; with k = V that is the dense statistics exactly.
    """

    indices: Tensor
    mean_probs: Tensor
    mean_log_probs: Tensor
    tail_mass: Tensor
    tail_mean_log_prob: Tensor
    total: Tensor
    data: Tensor
    mutual_information: Tensor
    epkl: Tensor
    rmi: Tensor
    num_classes: int
    num_members: int = 0

    @property
    def top_k(self) -> int:
        """k, the number of listed classes per position."""
        return self.indices.shape[-1]

    @property
    def uncertainty(self) -> Uncertainty:
        return Uncertainty(self.total, self.data, self.mutual_information, self.epkl, self.rmi)


class TopKLogitTargets(NamedTuple):
    """The top-k form of the logit-space losses' targets (``edd_ext.top_k_logit_targets``; an approximation, see
    ``edd_ext.logit_top_k``).

    indices: ``[*, k]`` the k classes of largest ensemble mean probability.
    targets: ``[*, M, k]`` every member's normalised logit x^(m) of those classes.
    tail_mean: ``[*, M]`` each member's mean target over the V - k other classes.
    tail_variance: ``[*]`` the members' pooled variance of their targets over those classes.
    num_classes: V. teacher_norm, temperature: how the targets were normalised (the losses check them).
    """

    indices: Tensor
    targets: Tensor
    tail_mean: Tensor
    tail_variance: Tensor
    num_classes: int
    teacher_norm: str = "log_softmax"
    temperature: float = 1.0

    @property
    def top_k(self) -> int:
        return self.indices.shape[-1]


class LinearTeachers(NamedTuple):
    """The teachers of a fused linear loss (``edd_ext.linear_*``) as their last hidden states and output layers,
    so that their ``[*, M, V]`` logits are only ever formed one chunk of positions at a time.

    Stacked (members of one hidden width D):
        input: ``[*, M, D]``; linear_weight: ``[M, V, D]`` (``nn.Linear`` layout per member);
        linear_bias: ``[M, V]`` or None.
    Per member (widths may differ), sequences of length M:
        input: M tensors ``[*, D_m]``; linear_weight: M tensors ``[V, D_m]``; linear_bias: None, or M entries
        ``[V]`` / None. :meth:`from_pairs` builds this form from ``(input, linear_weight[, linear_bias])`` tuples.

    Member m's logits are ``input_m @ linear_weight_m.T + linear_bias_m``. The teachers are constants: no gradient
    reaches these tensors.
    """

    input: Union[Tensor, Sequence[Tensor]]
    linear_weight: Union[Tensor, Sequence[Tensor]]
    linear_bias: Union[Tensor, Sequence[Optional[Tensor]], None] = None

    @classmethod
    def from_pairs(cls, members: Sequence[Tuple[Tensor, ...]]) -> LinearTeachers:
        """The per-member form from M tuples ``(input [*, D_m], linear_weight [V, D_m])`` or
        ``(input, linear_weight, linear_bias [V] | None)``."""
        members = [tuple(m) for m in members]
        for m, pair in enumerate(members):
            if len(pair) not in (2, 3):
                raise ValueError(
                    f"members[{m}]: expected (input, linear_weight) or (input, linear_weight, linear_bias), "
                    f"got a tuple of {len(pair)}"
                )
        members = [pair + (None,) * (3 - len(pair)) for pair in members]
        return cls([m[0] for m in members], [m[1] for m in members], [m[2] for m in members])
