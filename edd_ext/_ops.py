"""Loading of the compiled ops (``torch.ops.edd_ext.*``) and their fake (meta) kernels for torch.compile.

Every op's schema lives in ``csrc/edd_ext.cpp``; CPU and CUDA kernels register in ``csrc/cpu`` and
``csrc/cuda``. When the extension is not built, the public functions fall back to ``edd_ext.reference``
(plain PyTorch) with a one-time warning.
"""
from __future__ import annotations

import warnings

import torch

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.edd_ext.*)

    EXTENSION_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = exc

NUM_MEASURES = 5
_warned = False


def has_extension() -> bool:
    """True when the compiled ops are loaded."""
    return _C is not None


def cuda_built() -> bool:
    """True when the compiled extension includes the CUDA kernels."""
    return _C is not None and bool(_C.cuda_built())


def use_extension() -> bool:
    """Whether the public functions run the fused ops; warns once when falling back to the reference."""
    global _warned
    if _C is not None:
        return True
    if not _warned:
        warnings.warn(
            f"edd_ext: the compiled extension is not available ({EXTENSION_ERROR}); using the plain-PyTorch "
            "reference implementations, which are slower and use more memory.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return False


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


if _C is not None:

    @torch.library.register_fake("edd_ext::ensemble_stats")
    def _ensemble_stats_fake(teacher_logits, temperature, smoothing):
        lead, vocab = teacher_logits.shape[:-2], teacher_logits.shape[-1]
        dtype = _stats_dtype(teacher_logits)
        rows = teacher_logits.new_empty((*lead, vocab), dtype=dtype)
        return rows, torch.empty_like(rows), teacher_logits.new_empty((*lead, NUM_MEASURES), dtype=dtype)

    @torch.library.register_fake("edd_ext::ensemble_uncertainty")
    def _ensemble_uncertainty_fake(teacher_logits, temperature, smoothing):
        lead = teacher_logits.shape[:-2]
        return teacher_logits.new_empty((*lead, NUM_MEASURES), dtype=_stats_dtype(teacher_logits))

    @torch.library.register_fake("edd_ext_testing::special_function")
    def _special_function_fake(x, name):
        return torch.empty_like(x)
