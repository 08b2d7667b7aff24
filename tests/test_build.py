"""The compiled extension is what the tests exercise, and the fallback path works when it is absent."""
import os
import warnings

import pytest
import torch

import edd_ext
from edd_ext import _ops, reference


def test_extension_is_loaded():
    if os.environ.get("EDD_EXT_ALLOW_FALLBACK") == "1":
        pytest.skip("EDD_EXT_ALLOW_FALLBACK=1")
    assert edd_ext.has_extension(), f"edd_ext._C failed to load: {_ops.EXTENSION_ERROR}"
    info = edd_ext._ops._C.build_info()
    assert "CUDA kernels" in info
    assert isinstance(edd_ext.cuda_built(), bool)


def test_ops_registered_for_cpu():
    for name in ("ensemble_stats", "ensemble_uncertainty", "special_function"):
        op = getattr(torch.ops.edd_ext, name)
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CPU"), name


def test_fallback_to_reference_warns_once(monkeypatch):
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setattr(_ops, "_warned", False)
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="reference"):
        got = edd_ext.ensemble_stats(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edd_ext.ensemble_stats(x)
    want = reference.ensemble_stats(x)
    torch.testing.assert_close(got.mutual_information, want.mutual_information)
