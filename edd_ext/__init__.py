"""edd_ext: fused ensemble-distribution-distillation losses and uncertainty measures for PyTorch.

See SPEC section 6 for the public API; ``edd_ext.reference`` holds the plain-PyTorch definitions.
"""
from . import amalgamation, cache, distributed, metrics, nn, plotting, uncertainty
from ._ops import cuda_built, has_extension
from ._version import __version__  # noqa: F401  (the version, single-sourced)
from .logit_top_k import top_k_logit_targets
from .losses import dirichlet_nll, ensemble_kl, logit_gaussian_nll, logit_laplace_nll, proxy_dirichlet_kl
from .stats import ensemble_stats
from .types import DirichletUncertainty, EnsembleStats, TopKEnsembleStats, TopKLogitTargets, Uncertainty

__all__ = [
    "ensemble_stats",
    "dirichlet_nll",
    "proxy_dirichlet_kl",
    "logit_gaussian_nll",
    "logit_laplace_nll",
    "ensemble_kl",
    "nn",
    "uncertainty",
    "metrics",
    "plotting",
    "amalgamation",
    "cache",
    "distributed",
    "EnsembleStats",
    "TopKEnsembleStats",
    "TopKLogitTargets",
    "top_k_logit_targets",
    "Uncertainty",
    "DirichletUncertainty",
    "has_extension",
    "cuda_built",
]
