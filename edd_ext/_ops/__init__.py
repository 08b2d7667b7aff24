"""The compiled ops (``torch.ops.edd_ext.*``): loading, and the one rule for when the public functions use them.

Layout, one module per op family (the pattern of pytorch/extension-cpp's ``ops.py``): each module holds the
call wrapper of its ops (the public function in ``edd_ext`` validates its arguments, then calls the wrapper),
and beside it the op's ``torch.library.register_fake`` (shapes and dtypes, for ``torch.compile`` and
``opcheck``) and, for differentiable ops, ``torch.library.register_autograd``:

* ``_ops.stats``        ``ensemble_stats``, ``ensemble_uncertainty``
* ``_ops.losses``       ``dirichlet_nll``, ``proxy_dirichlet_kl``, ``logit_nll``, ``ensemble_kl``
* ``_ops.uncertainty``  ``dirichlet_uncertainty``, ``logit_distribution_uncertainty``
* ``_ops.linear``       ``linear_loss`` (a Python ``torch.library.custom_op`` over the loss ops: the fused linear
                        losses, chunked over positions)
* ``_ops.topk``         ``topk_ensemble_stats`` and the losses that read top-k statistics (``topk_*``)
* ``_ops.testing``      the test-only ops (special functions, Philox) of ``torch.ops.edd_ext_testing``

Schemas live in ``csrc/edd_ext.cpp``; CPU kernels in ``csrc/cpu``, CUDA kernels in ``csrc/cuda``.

The fallback rule (:func:`fused`), the same for every op: when the compiled extension is missing, or the
tensors are on a device type the loaded build has no kernels for, the public function computes the same thing
with ``edd_ext.reference`` (plain PyTorch: slower, more memory) and says why in one warning per reason.
"""
from __future__ import annotations

import warnings

import torch

try:
    from .. import _C  # noqa: F401  (loading it registers torch.ops.edd_ext.*)

    EXTENSION_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without a build
    _C = None
    EXTENSION_ERROR = exc

#: Number of ensemble measures in a ``[*, 5]`` kernel output (``types.MEASURE_NAMES`` order).
NUM_MEASURES = 5

_warned: set = set()


def has_extension() -> bool:
    """True when the compiled ops are loaded."""
    return _C is not None


def cuda_built() -> bool:
    """True when the compiled extension includes the CUDA kernels."""
    return _C is not None and bool(_C.cuda_built())


def cpu_capability():
    """The instruction set of the CPU kernels running in this process: ``"default"`` (portable), ``"avx2"`` or
    ``"avx512"``; ``None`` without the compiled extension.

    The extension carries a build of its vectorised CPU kernels per capability and picks the best one this CPU
    supports when it loads; the environment variable ``EDD_EXT_CPU_CAPABILITY=default|avx2|avx512`` (read at
    import) asks for a lower one. Asking for one the CPU (or the build) lacks gives the best available, with a
    ``RuntimeWarning``.
    """
    return None if _C is None else str(_C.cpu_capability())


if _C is not None and _C.cpu_capability_note():
    warnings.warn(f"edd_ext: {_C.cpu_capability_note()}", RuntimeWarning, stacklevel=2)


def _unserved_reason(device: torch.device):
    if _C is None:
        return f"the compiled extension is not available ({EXTENSION_ERROR})"
    if device.type == "cpu" or (device.type == "cuda" and cuda_built()):
        return None
    return f"the loaded build has no kernels for device type {device.type!r}"


def fused(tensor: torch.Tensor) -> bool:
    """Whether the compiled ops serve ``tensor``'s device; if not, warns once per reason (the caller then uses
    ``edd_ext.reference``)."""
    reason = _unserved_reason(tensor.device)
    if reason is None:
        return True
    if reason not in _warned:
        warnings.warn(
            f"edd_ext: {reason}; using the plain-PyTorch reference implementations, which are slower and use "
            "more memory.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned.add(reason)
    return False


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype statistics and measures are returned in: float64 for float64 input, else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# The op-family modules register fake kernels and autograd at import; they need the loaded ops.
from . import linear, losses, stats, testing, topk, uncertainty  # noqa: E402,F401
