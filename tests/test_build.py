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


# torch.ops.edd_ext is the public API and nothing else; the ops that only tests use live in edd_ext_testing.
PUBLIC_OPS = {"ensemble_stats", "ensemble_uncertainty", "dirichlet_nll", "proxy_dirichlet_kl", "logit_nll",
              "ensemble_kl", "scale_grad_", "dirichlet_uncertainty", "logit_distribution_uncertainty",
              "topk_ensemble_stats", "topk_dirichlet_nll", "topk_proxy_dirichlet_kl", "topk_ensemble_kl"}
TESTING_OPS = {"special_function", "philox4x32", "philox_noise"}
# public ops defined in Python over the compiled ones (torch.library.custom_op): the fused linear losses' chunk loop
PYTHON_OPS = {"linear_loss"}


def _registered(namespace):
    names = torch._C._dispatch_get_all_op_names()
    return {n.split("::", 1)[1].split(".", 1)[0] for n in names if n.startswith(namespace + "::")}


@pytest.mark.skipif(not edd_ext.has_extension(), reason="extension not built")
def test_op_namespaces():
    assert _registered("edd_ext") == PUBLIC_OPS | PYTHON_OPS
    assert _registered("edd_ext_testing") == TESTING_OPS


@pytest.mark.skipif(not edd_ext.has_extension(), reason="extension not built")
def test_ops_registered_for_cpu():
    for namespace, names in (("edd_ext", PUBLIC_OPS), ("edd_ext_testing", TESTING_OPS)):
        for name in names:
            op = getattr(getattr(torch.ops, namespace), name)
            assert torch._C._dispatch_has_kernel_for_dispatch_key(op.default.name(), "CPU"), (namespace, name)


def test_fallback_to_reference_warns_once(monkeypatch):
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setattr(_ops, "_warned", set())
    x = torch.randn(3, 4, 9, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="reference"):
        got = edd_ext.ensemble_stats(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        edd_ext.ensemble_stats(x)
    want = reference.ensemble_stats(x)
    torch.testing.assert_close(got.mutual_information, want.mutual_information)


def _meta_calls():
    u = torch.randn(2, 3, 4, 7, device="meta")
    z = torch.randn(2, 3, 7, device="meta")
    yield "ensemble_stats", lambda: edd_ext.ensemble_stats(u).mean_probs, (2, 3, 7)
    yield "uncertainty.ensemble", lambda: edd_ext.uncertainty.ensemble(u).total, (2, 3)
    yield "dirichlet_nll", lambda: edd_ext.dirichlet_nll(z, u, reduction="none"), (2, 3)
    yield "proxy_dirichlet_kl", lambda: edd_ext.proxy_dirichlet_kl(z, u, reduction="none"), (2, 3)
    yield "ensemble_kl", lambda: edd_ext.ensemble_kl(z, u, reduction="none"), (2, 3)
    yield "logit_gaussian_nll", lambda: edd_ext.logit_gaussian_nll(z, z, u, reduction="none"), (2, 3)
    yield "ensemble_stats top_k", lambda: edd_ext.ensemble_stats(u, top_k=3).mean_probs, (2, 3, 3)
    yield "proxy_dirichlet_kl top_k", lambda: edd_ext.proxy_dirichlet_kl(
        z, reference.ensemble_stats(u, top_k=3), reduction="none"), (2, 3)
    yield "uncertainty.dirichlet", lambda: edd_ext.uncertainty.dirichlet(z).epkl, (2, 3)


@pytest.mark.parametrize("name, call, shape", list(_meta_calls()), ids=[c[0] for c in _meta_calls()])
def test_a_device_without_kernels_falls_back_to_the_reference_with_one_warning(monkeypatch, name, call, shape):
    """One rule for every op: tensors on a device type the build has no kernels for (here "meta") are
    computed by the reference, with a warning that names the reason, once."""
    monkeypatch.setattr(_ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="no kernels for device type 'meta'"):
        out = call()
    assert out.device.type == "meta" and tuple(out.shape) == shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        call()
