"""The one place where the fairseq plugin binds to ``edd_ext``.

Every name resolves to the public ``edd_ext`` function (SPEC section 6) when it exists, and otherwise to the
plain-PyTorch definition in ``edd_ext.reference`` with the same signature. So the plugin runs today and picks
up each fused op as soon as ``edd_ext`` exports it. ``SOURCES`` says where every name came from.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict

import edd_ext
import edd_ext.reference as _reference

__all__ = [
    "ensemble_stats",
    "ensemble_uncertainty",
    "ensemble_kl",
    "dirichlet_nll",
    "proxy_dirichlet_kl",
    "logit_gaussian_nll",
    "logit_laplace_nll",
    "dirichlet_uncertainty",
    "logit_distribution_uncertainty",
    "sequence",
    "metrics",
    "EnsembleStats",
    "Uncertainty",
    "SOURCES",
]

#: plugin name -> (dotted name under ``edd_ext``, attribute of ``edd_ext.reference``)
_NAMES = {
    "ensemble_stats": ("ensemble_stats", "ensemble_stats"),
    "ensemble_uncertainty": ("uncertainty.ensemble", "ensemble_uncertainty"),
    "ensemble_kl": ("ensemble_kl", "ensemble_kl"),
    "dirichlet_nll": ("dirichlet_nll", "dirichlet_nll"),
    "proxy_dirichlet_kl": ("proxy_dirichlet_kl", "proxy_dirichlet_kl"),
    "logit_gaussian_nll": ("logit_gaussian_nll", "logit_gaussian_nll"),
    "logit_laplace_nll": ("logit_laplace_nll", "logit_laplace_nll"),
    "dirichlet_uncertainty": ("uncertainty.dirichlet", "dirichlet_uncertainty"),
    "logit_distribution_uncertainty": ("uncertainty.logit_distribution", "logit_distribution_uncertainty"),
}

#: plugin name -> "edd_ext.<name>" or "edd_ext.reference.<name>"
SOURCES: Dict[str, str] = {}


def _public(dotted: str):
    obj = edd_ext
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _resolve(name: str) -> Callable:
    public, reference = _NAMES[name]
    fn = _public(public)
    if callable(fn):
        SOURCES[name] = "edd_ext." + public
        return fn
    SOURCES[name] = "edd_ext.reference." + reference
    return getattr(_reference, reference)


ensemble_stats = _resolve("ensemble_stats")
ensemble_uncertainty = _resolve("ensemble_uncertainty")
ensemble_kl = _resolve("ensemble_kl")
dirichlet_nll = _resolve("dirichlet_nll")
proxy_dirichlet_kl = _resolve("proxy_dirichlet_kl")
logit_gaussian_nll = _resolve("logit_gaussian_nll")
logit_laplace_nll = _resolve("logit_laplace_nll")
dirichlet_uncertainty = _resolve("dirichlet_uncertainty")
logit_distribution_uncertainty = _resolve("logit_distribution_uncertainty")

sequence = importlib.import_module("edd_ext.uncertainty.sequence")
metrics = importlib.import_module("edd_ext.metrics")
EnsembleStats = edd_ext.EnsembleStats
Uncertainty = edd_ext.Uncertainty
