"""The one place where the demo binds to library functions.

Each name resolves, in the order of ``PREFERENCE``, to the public ``edd_ext`` API (SPEC section 6), to the
plain-PyTorch ``edd_ext.reference`` implementation, or to the demo's own minimal version in
``_fallback.py``. A candidate is taken only if it imports and passes a tiny smoke call, so the demo runs
whether or not the compiled extension is built. ``SOURCES`` records where every name came from
(written to results.json).
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict

import torch

from . import _fallback

#: Where names are looked up first. Use ("reference", "fallback") to benchmark against the plain-PyTorch peer.
PREFERENCE = ("public", "reference", "fallback")

#: demo name -> (public dotted name under edd_ext, reference module attribute)
_NAMES = {
    "ensemble_stats": ("ensemble_stats", "ensemble_stats"),
    "ensemble_kl": ("ensemble_kl", "ensemble_kl"),
    "dirichlet_nll": ("dirichlet_nll", "dirichlet_nll"),
    "proxy_dirichlet_kl": ("proxy_dirichlet_kl", "proxy_dirichlet_kl"),
    "logit_gaussian_nll": ("logit_gaussian_nll", "logit_gaussian_nll"),
    "logit_laplace_nll": ("logit_laplace_nll", "logit_laplace_nll"),
    "ensemble_uncertainty": ("uncertainty.ensemble", "ensemble_uncertainty"),
    "dirichlet_uncertainty": ("uncertainty.dirichlet", "dirichlet_uncertainty"),
    "logit_distribution_uncertainty": ("uncertainty.logit_distribution", "logit_distribution_uncertainty"),
}


def _probe(name: str, fn: Callable) -> bool:
    """A tiny call with the demo's argument pattern; False if it raises or gives non-finite values."""
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 3, 3, 7, generator=g)
    z = torch.randn(2, 3, 7, generator=g)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    try:
        if name == "ensemble_stats":
            out = fn(teacher).total
        elif name in ("ensemble_kl", "dirichlet_nll", "proxy_dirichlet_kl"):
            zz = z.clone().requires_grad_()
            out = fn(zz, _get("ensemble_stats")(teacher), mask=mask)
            out.backward()
            out = torch.stack([out, zz.grad.sum()])
        elif name in ("logit_gaussian_nll", "logit_laplace_nll"):
            zz = z.clone().requires_grad_()
            out = fn(zz, 0.1 * zz, teacher, mask=mask)
            out.backward()
            out = torch.stack([out, zz.grad.sum()])
        elif name == "ensemble_uncertainty":
            out = fn(teacher).total
        elif name == "dirichlet_uncertainty":
            out = fn(z).epkl
        elif name == "logit_distribution_uncertainty":
            out = fn(z, z * 0.1, family="laplace", num_samples=3, seed=0).mutual_information
        else:
            return True
        return bool(torch.isfinite(torch.as_tensor(out, dtype=torch.float64)).all())
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def _candidates(name: str):
    public, ref = _NAMES[name]
    for kind in PREFERENCE:
        try:
            if kind == "public":
                obj = importlib.import_module("edd_ext")
                for part in public.split("."):
                    obj = getattr(obj, part)
                yield f"edd_ext.{public}", obj
            elif kind == "reference":
                yield f"edd_ext.reference.{ref}", getattr(importlib.import_module("edd_ext.reference"), ref)
            else:
                yield f"edd_ext.demo._fallback.{name}", getattr(_fallback, name)
        except (ImportError, AttributeError):
            continue


SOURCES: Dict[str, str] = {}
_CACHE: Dict[str, Callable] = {}


def _get(name: str) -> Callable:
    if name not in _CACHE:
        for label, fn in _candidates(name):
            if label.startswith("edd_ext.demo._fallback") or _probe(name, fn):
                _CACHE[name], SOURCES[name] = fn, label
                break
    return _CACHE[name]


def resolve_all() -> Dict[str, str]:
    """Bind every name now; returns ``SOURCES``."""
    for name in _NAMES:
        _get(name)
    return dict(SOURCES)


def ensemble_stats(*args, **kwargs):
    return _get("ensemble_stats")(*args, **kwargs)


def ensemble_kl(*args, **kwargs):
    return _get("ensemble_kl")(*args, **kwargs)


def dirichlet_nll(*args, **kwargs):
    return _get("dirichlet_nll")(*args, **kwargs)


def proxy_dirichlet_kl(*args, **kwargs):
    return _get("proxy_dirichlet_kl")(*args, **kwargs)


def logit_gaussian_nll(*args, **kwargs):
    return _get("logit_gaussian_nll")(*args, **kwargs)


def logit_laplace_nll(*args, **kwargs):
    return _get("logit_laplace_nll")(*args, **kwargs)


def ensemble_uncertainty(*args, **kwargs):
    return _get("ensemble_uncertainty")(*args, **kwargs)


def dirichlet_uncertainty(*args, **kwargs):
    return _get("dirichlet_uncertainty")(*args, **kwargs)


def logit_distribution_uncertainty(*args, **kwargs):
    return _get("logit_distribution_uncertainty")(*args, **kwargs)


# Sequence-level scores and metrics: the public modules (sequence scores fall back to the demo's versions).
try:
    from edd_ext.uncertainty.sequence import chain_rule_average, expectation_of_products, product_of_expectations
except ImportError:  # pragma: no cover - depends on the state of the library
    from ._fallback import chain_rule_average, expectation_of_products, product_of_expectations  # noqa: F401

from edd_ext.metrics import (  # noqa: E402,F401
    auroc,
    prediction_rejection_ratio,
    rejection_curve,
    sentence_error_from_bleu,
)
