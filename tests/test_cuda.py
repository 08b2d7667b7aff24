"""The CUDA kernels against the CPU kernels (which the rest of the suite checks against float64 oracles), and the
properties only a GPU run can show: every op and dtype agrees with the CPU, the Monte-Carlo noise is bit-identical,
any number of members runs, indexing past 2^31 elements, inputs on a non-default stream, no host synchronisation in
forward or backward, bounded memory. Skipped without a GPU (`make gpu-check` runs them on one).

EDD_EXT_TEST_SECOND_DEVICE=cpu runs the comparisons with the CPU standing in for the GPU: a dry run of this file's
own code on a machine without a GPU (benchmarks/gpu_check.py does that), not a test of anything."""
import math
import os

import pytest
import torch
from conftest import CUDA_OK, CUDA_SKIP_REASON

import edd_ext

SECOND = os.environ.get("EDD_EXT_TEST_SECOND_DEVICE", "cuda")
DRY_RUN = SECOND == "cpu"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not (CUDA_OK or DRY_RUN), reason=CUDA_SKIP_REASON)]
needs_gpu = pytest.mark.skipif(DRY_RUN or not CUDA_OK, reason="a property of the GPU itself")

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# loss / measure tolerance of the GPU against the CPU, by the inputs' dtype: both compute in float32 (float64
# for float64 inputs) but sum in another order and use the device's exp / log
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-5, atol=2e-5),
       torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
# (V, M): below and above the 512-thread block (V >= 8192), one member, many
SHAPES = [(7, 1), (1000, 5), (9000, 3)]


def _randn(*shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def _close(got, want, dtype, what):
    torch.testing.assert_close(got.cpu().double(), want.cpu().double(), **TOL[dtype], equal_nan=True, msg=what)


def _both(fn, *tensors, grads=()):
    """fn on the CPU and on the second device: outputs (and the gradients of their sum w.r.t. `grads`)."""
    out = []
    for device in ("cpu", SECOND):
        xs = [t.detach().clone().to(device).requires_grad_(i in grads) if t.is_floating_point() else t.to(device)
              for i, t in enumerate(tensors)]
        result = fn(*xs)
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        gs = []
        if grads:
            values[0].sum().backward()
            gs = [xs[i].grad for i in grads]
        out.append(([v.detach() for v in values], gs))
    return out


def _agree(fn, tensors, grads, dtype, what):
    (cpu_vals, cpu_grads), (dev_vals, dev_grads) = _both(fn, *tensors, grads=grads)
    for i, (a, b) in enumerate(zip(cpu_vals, dev_vals)):
        _close(b, a, dtype, f"{what}: output {i}")
    for i, (a, b) in enumerate(zip(cpu_grads, dev_grads)):
        assert b.dtype == a.dtype
        _close(b, a, dtype, f"{what}: gradient {i}")


# ---- every op and dtype ----------------------------------------------------------------------------------


@pytest.mark.parametrize("v,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ensemble_stats_agree(v, m, dtype):
    u = _randn(4, m, v, dtype=dtype, seed=1, scale=3.0)
    for smoothing in (0.0, 0.05):
        _agree(lambda x, eps=smoothing: _stats_fields(edd_ext.ensemble_stats(x, smoothing=eps, temperature=1.5)),
               [u], (), dtype, f"ensemble_stats eps={smoothing}")


def _stats_fields(s):
    return (s.mean_probs, s.mean_log_probs, s.total, s.data, s.mutual_information, s.epkl, s.rmi)


LOSSES = {
    "dirichlet_nll": lambda z, t, k: edd_ext.dirichlet_nll(z, t, **k),
    "proxy_reverse": lambda z, t, k: edd_ext.proxy_dirichlet_kl(z, t, **k),
    "proxy_forward_epkl": lambda z, t, k: edd_ext.proxy_dirichlet_kl(z, t, direction="forward", precision="epkl",
                                                                      **k),
    "proxy_compat": lambda z, t, k: edd_ext.proxy_dirichlet_kl(z, t, reference_code_compat=True, max_precision=50.0,
                                                                **k),
    "ensemble_kl": lambda z, t, k: edd_ext.ensemble_kl(z, t, **k),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("v,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_categorical_losses_agree(name, v, m, dtype, reduction):
    z = _randn(5, v, dtype=dtype, seed=2)
    u = _randn(5, m, v, dtype=dtype, seed=3, scale=2.0)
    mask = torch.tensor([True, False, True, True, True])
    loss = LOSSES[name]
    _agree(lambda s, t, k: loss(s, t, dict(mask=k, reduction=reduction)), [z, u, mask], (0,), dtype,
           f"{name} (logits)")
    # from precomputed statistics (float32 rows for reduced-precision teachers)
    _agree(lambda s, t, k: loss(s, edd_ext.ensemble_stats(t), dict(mask=k, reduction=reduction)), [z, u, mask], (0,),
           dtype, f"{name} (stats)")


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
@pytest.mark.parametrize("v,m", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_losses_agree(family, teacher_norm, v, m, dtype):
    fn = edd_ext.logit_gaussian_nll if family == "gaussian" else edd_ext.logit_laplace_nll
    mu, rho = _randn(3, v, dtype=dtype, seed=4), _randn(3, v, dtype=dtype, seed=5, scale=0.3)
    u = _randn(3, m, v, dtype=dtype, seed=6, scale=2.0)
    mask = torch.tensor([True, True, False])
    _agree(lambda a, b, t, k: fn(a, b, t, teacher_norm=teacher_norm, temperature=1.3, min_scale=0.01, mask=k),
           [mu, rho, u, mask], (0, 1), dtype, f"{family} {teacher_norm}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mean_gradient_rounds_once_like_the_cpu(dtype):
    """The mean's 1/N is folded in before the one rounding to the student dtype: a per-position gradient above
    the float16 range (here (mu - x-)/s^2 = 3 e^10 = 6.6e4) still gives the CPU's finite 66 at N = 1000."""
    n, v = 1000, 16
    u = torch.zeros(n, 2, v, dtype=dtype)
    mu = torch.full((n, v), 3.0, dtype=dtype) + torch.log_softmax(torch.zeros(v), -1).to(dtype)
    rho = torch.full((n, v), -5.0, dtype=dtype)
    (cpu_vals, cpu_grads), (dev_vals, dev_grads) = _both(
        lambda a, b, t: edd_ext.logit_gaussian_nll(a, b, t), mu, rho, u, grads=(0, 1))
    assert torch.isfinite(cpu_grads[0]).all() and torch.isfinite(dev_grads[0].cpu()).all()
    torch.testing.assert_close(dev_grads[0].cpu().float(), cpu_grads[0].float(), rtol=2e-3, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_student_uncertainty_agrees(dtype):
    z = _randn(6, 9000, dtype=dtype, seed=7, scale=2.0)
    _agree(lambda x: _stats_fields_dirichlet(edd_ext.uncertainty.dirichlet(x, model_offset=0.5)), [z], (), dtype,
           "uncertainty.dirichlet")
    mu, rho = _randn(4, 1000, dtype=dtype, seed=8), _randn(4, 1000, dtype=dtype, seed=9, scale=0.3)
    for family in ("gaussian", "laplace"):
        _agree(lambda a, b, family=family: _measures(edd_ext.uncertainty.logit_distribution(
                   a, b, family=family, num_samples=13, seed=11, min_scale=0.01)),
               [mu, rho], (), torch.float32 if dtype == torch.float64 else dtype, f"logit_distribution {family}")


def _measures(u):
    return (u.total, u.data, u.mutual_information, u.epkl, u.rmi)


def _stats_fields_dirichlet(u):
    return _measures(u) + (u.precision, u.differential_entropy)


@pytest.mark.parametrize("name", ["lgamma", "digamma", "trigamma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_functions_agree(name, dtype):
    x = torch.cat([torch.logspace(-20, 20, 2001, dtype=dtype), torch.tensor([0.0, math.inf, -1.0, -math.inf],
                                                                           dtype=dtype)])
    a = torch.ops.edd_ext_testing.special_function(x, name)
    b = torch.ops.edd_ext_testing.special_function(x.to(SECOND), name).cpu()
    torch.testing.assert_close(b, a, rtol=4 * torch.finfo(dtype).eps, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_grad_agrees(dtype):
    grad = _randn(6, 300, dtype=dtype, seed=12)
    factor = torch.tensor([1.0, 2.5, -0.5, 1.0, math.nan, 3.0])
    mask = torch.tensor([True, True, True, True, False, True])
    results = []
    for device in ("cpu", SECOND):
        g = grad.clone().to(device)
        torch.ops.edd_ext.scale_grad_(g, factor.to(device), mask.to(device))
        results.append(g.cpu())
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0][[0, 3, 4]], grad[[0, 3, 4]])  # factor 1 and masked rows untouched


# ---- the Monte-Carlo noise is the same bits on both devices ------------------------------------------------


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_noise_is_bit_identical(family):
    positions = torch.tensor([0, 1, 77, 2**33 + 5])
    for seed in (0, 3, 2**40 + 1):
        a = torch.ops.edd_ext_testing.philox_noise(positions, seed, 13, 4099, family)
        b = torch.ops.edd_ext_testing.philox_noise(positions.to(SECOND), seed, 13, 4099, family).cpu()
        assert torch.equal(a.view(torch.int32), b.view(torch.int32)), (family, seed)
    counters = torch.randint(0, 2**32, (1000, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.ops.edd_ext_testing.philox4x32(counters, 12345),
                       torch.ops.edd_ext_testing.philox4x32(counters.to(SECOND), 12345).cpu())


# ---- any number of members -----------------------------------------------------------------------------------


@pytest.mark.parametrize("m,dtype", [(7000, torch.float32), (3100, torch.float64)])
def test_many_members(m, dtype):
    """2 M normalisers beyond a block's 48 KiB of shared memory: the kernels keep them in a global workspace."""
    u = _randn(3, m, 6, dtype=dtype, seed=13)
    z = _randn(3, 6, dtype=dtype, seed=14)
    _agree(lambda x: _stats_fields(edd_ext.ensemble_stats(x)), [u], (), dtype, "ensemble_stats")
    for name, loss in LOSSES.items():
        _agree(lambda s, t, loss=loss: loss(s, t, dict(reduction="none")), [z, u], (0,), dtype, name)
    _agree(lambda a, b, t: edd_ext.logit_gaussian_nll(a, b, t, reduction="none"), [z, z * 0.1, u], (0, 1), dtype,
           "logit_gaussian_nll")


# ---- GPU-only properties ----------------------------------------------------------------------------------------


@needs_gpu
def test_indexing_past_two_to_the_31():
    """N M V > 2^31 teacher elements (4.3 GB of bfloat16): the positions at the end agree with the CPU on those rows."""
    n, m, v = 4100, 2, 262144
    assert n * m * v > 2**31
    u = torch.empty(n, m, v, dtype=torch.bfloat16, device="cuda").normal_(0, 2, generator=None)
    z = torch.empty(n, v, dtype=torch.bfloat16, device="cuda").normal_()
    stats = edd_ext.ensemble_stats(u)
    loss = edd_ext.ensemble_kl(z, u, reduction="none")
    tail = slice(n - 3, n)
    cpu_stats = edd_ext.ensemble_stats(u[tail].cpu())
    for a, b in zip(_stats_fields(stats), _stats_fields(cpu_stats)):
        _close(a[tail], b, torch.bfloat16, "ensemble_stats past 2^31")
    _close(loss[tail], edd_ext.ensemble_kl(z[tail].cpu(), u[tail].cpu(), reduction="none"), torch.bfloat16,
           "ensemble_kl past 2^31")


@needs_gpu
def test_non_default_stream():
    """Inputs written on a side stream and the ops run there (current stream) give the default-stream results."""
    z = _randn(64, 5000, dtype=torch.float32, seed=15).cuda()
    u = _randn(64, 4, 5000, dtype=torch.float32, seed=16).cuda()
    want = (edd_ext.proxy_dirichlet_kl(z, u, reduction="none"), edd_ext.ensemble_stats(u).rmi,
            edd_ext.uncertainty.logit_distribution(z, z * 0.1).total)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(20):  # keep the side stream busy before the inputs are written
            big = big @ big / 64
        zs, us = torch.empty_like(z), torch.empty_like(u)
        zs.copy_(z)
        us.copy_(u)
        got = (edd_ext.proxy_dirichlet_kl(zs, us, reduction="none"), edd_ext.ensemble_stats(us).rmi,
               edd_ext.uncertainty.logit_distribution(zs, zs * 0.1).total)
    side.synchronize()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_gpu
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_no_host_sync_in_forward_and_backward(name):
    z = _randn(32, 3000, dtype=torch.bfloat16, seed=17).cuda().requires_grad_()
    u = _randn(32, 3, 3000, dtype=torch.bfloat16, seed=18).cuda()
    mask = (torch.arange(32, device="cuda") % 5) != 0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = LOSSES[name](z, u, dict(mask=mask, reduction="mean"))
        loss.backward()
        (2.0 * LOSSES[name](z, u, dict(mask=mask, reduction="none")).sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(z.grad).all()


@needs_gpu
def test_backward_of_one_touches_no_gradient_element():
    """loss.backward() (an incoming gradient of 1): the saved gradient is handed to autograd as it is."""
    z = _randn(8, 4000, dtype=torch.float32, seed=19).cuda().requires_grad_()
    u = _randn(8, 3, 4000, dtype=torch.float32, seed=20).cuda()
    loss = edd_ext.ensemble_kl(z, u)
    loss.backward()
    want = (torch.softmax(z.detach(), -1) - edd_ext.ensemble_stats(u).mean_probs) / 8
    torch.testing.assert_close(z.grad, want, rtol=1e-5, atol=1e-7)


@needs_gpu
def test_proxy_kl_needs_no_vocabulary_sized_workspace():
    n, m, v = 256, 3, 262144
    z = torch.randn(n, v, device="cuda", dtype=torch.bfloat16).requires_grad_()
    u = torch.randn(n, m, v, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = edd_ext.proxy_dirichlet_kl(z, u)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    grad_bytes = z.numel() * z.element_size()
    assert extra <= grad_bytes + (16 << 20), f"{extra / 2**20:.0f} MiB beyond the inputs ({grad_bytes >> 20} MiB grad)"
    del loss
