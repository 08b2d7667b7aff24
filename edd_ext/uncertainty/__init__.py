"""Uncertainty measures (SPEC section 3): ensembles, Dirichlet and logit-distribution students,
sequence-level scores."""
from ..stats import ensemble_uncertainty as ensemble
from ..types import DirichletUncertainty, Uncertainty
from . import sequence  # noqa: F401

__all__ = ["ensemble", "sequence", "Uncertainty", "DirichletUncertainty"]
