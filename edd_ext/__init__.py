"""edd_ext: fused ensemble-distribution-distillation losses and uncertainty measures for PyTorch.

See SPEC section 6 for the public API; ``edd_ext.reference`` holds the plain-PyTorch definitions.
"""
from . import amalgamation, cache, distributed, metrics, nn, plotting, uncertainty
from ._ops import cpu_capability, cuda_built, has_extension
from ._version import __version__  # noqa: F401  (the version, single-sourced)
from .linear import (
    linear_dirichlet_nll,
    linear_ensemble_kl,
    linear_logit_gaussian_nll,
    linear_logit_laplace_nll,
    linear_proxy_dirichlet_kl,
)
from .logit_top_k import top_k_logit_targets
from .losses import dirichlet_nll, ensemble_kl, logit_gaussian_nll, logit_laplace_nll, proxy_dirichlet_kl
from .stats import ensemble_stats
from .types import (
    DirichletUncertainty,
    EnsembleStats,
    LinearTeachers,
    TopKEnsembleStats,
    TopKLogitTargets,
    Uncertainty,
)

__all__ = [
    "ensemble_stats",
    "dirichlet_nll",
    "proxy_dirichlet_kl",
    "logit_gaussian_nll",
    "logit_laplace_nll",
    "ensemble_kl",
    "linear_dirichlet_nll",
    "linear_proxy_dirichlet_kl",
    "linear_ensemble_kl",
    "linear_logit_gaussian_nll",
    "linear_logit_laplace_nll",
    "LinearTeachers",
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
    "cpu_capability",
]
