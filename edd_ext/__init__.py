"""edd_ext: fused ensemble-distribution-distillation losses and uncertainty measures for PyTorch.

See SPEC section 6 for the public API; ``edd_ext.reference`` holds the plain-PyTorch definitions.
"""
from . import amalgamation, metrics, plotting, uncertainty
from ._ops import cuda_built, has_extension
from .stats import ensemble_stats
from .types import DirichletUncertainty, EnsembleStats, Uncertainty

__version__ = "0.1.0"

__all__ = [
    "ensemble_stats",
    "uncertainty",
    "metrics",
    "plotting",
    "amalgamation",
    "EnsembleStats",
    "Uncertainty",
    "DirichletUncertainty",
    "has_extension",
    "cuda_built",
]
