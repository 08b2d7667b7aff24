"""Uncertainty measures (SPEC section 3): ensembles, Dirichlet and logit-distribution students,
sequence-level scores."""
from ..stats import ensemble_uncertainty as ensemble
from ..types import DirichletUncertainty, Uncertainty
from . import sequence  # noqa: F401
from .dirichlet import dirichlet
from .logit import gaussian_epkl, logit_distribution

__all__ = [
    "ensemble",
    "dirichlet",
    "logit_distribution",
    "gaussian_epkl",
    "sequence",
    "Uncertainty",
    "DirichletUncertainty",
]
