"""Result types shared by the statistics, the losses and the uncertainty measures.

They are ``NamedTuple`` s so that they travel through ``torch.compile(fullgraph=True)``,
``torch.save`` and ``tuple``-based code unchanged.
"""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

__all__ = ["Uncertainty", "DirichletUncertainty", "EnsembleStats", "MEASURE_NAMES"]

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
