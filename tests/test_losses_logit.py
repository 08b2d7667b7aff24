"""edd_ext.logit_gaussian_nll and edd_ext.logit_laplace_nll (the fused kernel) against float64 oracles built on
torch.distributions (Normal / Laplace .log_prob); gradcheck of every option; the optima (Gaussian at the
members' mean and standard deviation, Laplace at their median and mean absolute deviation); the centred
accumulation of the Gaussian deviations; invariance to per-member shifts of the teacher."""
import _loss_oracles as O
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edd_ext
from edd_ext import reference as R

SIZES = [(v, m) for v in (2, 7, 1271, 32000) for m in (1, 3, 10)]
FAMILIES = ("gaussian", "laplace")


def _fused(family):
    return edd_ext.logit_gaussian_nll if family == "gaussian" else edd_ext.logit_laplace_nll


def _reference(family):
    return R.logit_gaussian_nll if family == "gaussian" else R.logit_laplace_nll


def _inputs(v, m, dtype, positions=3, seed=0):
    loc = O.randn(positions, v, seed=seed, scale=3.0, dtype=dtype) - 8.0
    log_scale = O.randn(positions, v, seed=seed + 1, scale=0.5, dtype=dtype)
    u = O.randn(positions, m, v, seed=seed + 2, scale=3.0, dtype=dtype)
    return loc, log_scale, u


def _run(fn, device, loc, log_scale):
    a = loc.detach().clone().to(device).requires_grad_()
    b = log_scale.detach().clone().to(device).requires_grad_()
    loss = fn(a, b)
    loss.sum().backward()
    return loss, a.grad, b.grad


def _check(family, loc, log_scale, u, dtype, device, **kw):
    truth, (g_loc, g_rho) = O.value_and_grads(lambda a, b: O.logit_nll(family, a, b, u, **kw), loc, log_scale)
    ud = u.to(device)
    loss, got_loc, got_rho = _run(lambda a, b: _fused(family)(a, b, ud, reduction="none", **kw), device, loc, log_scale)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got_loc.dtype == dtype and got_rho.dtype == dtype
    peer = (None, None, None)
    if dtype != torch.float64:
        peer = _run(lambda a, b: _reference(family)(a, b, u, reduction="none", **kw), "cpu", loc, log_scale)
    O.assert_close_to_truth(loss, truth, dtype, peer=peer[0], what="loss")
    O.assert_close_to_truth(got_loc, g_loc, dtype, peer=peer[1], what="grad loc")
    O.assert_close_to_truth(got_rho, g_rho, dtype, peer=peer[2], what="grad log_scale")


@pytest.mark.parametrize("v,m", SIZES)
@pytest.mark.parametrize("dtype", O.DTYPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_torch_distributions(family, v, m, dtype, device):
    loc, log_scale, u = _inputs(v, m, dtype)
    _check(family, loc, log_scale, u, dtype, device)


@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
@pytest.mark.parametrize("temperature,min_scale", [(1.0, 0.0), (2.0, 0.3), (0.5, 1e-3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family", FAMILIES)
def test_options_match_torch_distributions(family, teacher_norm, temperature, min_scale, dtype, device):
    loc, log_scale, u = _inputs(1271, 4, dtype, seed=3)
    if teacher_norm != "log_softmax":
        loc = loc + 8.0
    _check(family, loc, log_scale, u, dtype, device, teacher_norm=teacher_norm, temperature=temperature,
           min_scale=min_scale)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
@pytest.mark.parametrize("min_scale", [0.0, 0.2])
def test_gradcheck(family, teacher_norm, min_scale):
    loc = O.randn(3, 5, seed=4).requires_grad_()
    log_scale = O.randn(3, 5, seed=5, scale=0.3).requires_grad_()
    u = O.randn(3, 4, 5, seed=6)
    mask = torch.tensor([True, True, False])
    fn = lambda a, b: _fused(family)(a, b, u, teacher_norm=teacher_norm, temperature=1.5,  # noqa: E731
                                     min_scale=min_scale, mask=mask, reduction="none")
    assert torch.autograd.gradcheck(fn, (loc, log_scale))


@settings(max_examples=10, deadline=None)
@given(m=st.integers(2, 8), v=st.integers(2, 50), min_scale=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**16))
def test_gaussian_optimum_is_the_members_mean_and_std(m, v, min_scale, seed):
    u = O.randn(2, m, v, seed=seed, scale=2.0)
    x = torch.log_softmax(u, -1)
    mean, std = x.mean(-2), x.std(-2, unbiased=False)
    loc = mean.clone().requires_grad_()
    log_scale = (std - min_scale).log().requires_grad_()
    edd_ext.logit_gaussian_nll(loc, log_scale, u, min_scale=min_scale, reduction="sum").backward()
    assert loc.grad.abs().max() < 1e-9 and log_scale.grad.abs().max() < 1e-9
    # and it is a minimum: moving either parameter increases the loss
    base = edd_ext.logit_gaussian_nll(loc, log_scale, u, min_scale=min_scale, reduction="none")
    for dl, dr in ((1e-3, 0.0), (-1e-3, 0.0), (0.0, 1e-3), (0.0, -1e-3)):
        moved = edd_ext.logit_gaussian_nll(loc + dl, log_scale + dr, u, min_scale=min_scale, reduction="none")
        assert (moved > base).all()


@settings(max_examples=10, deadline=None)
@given(half_m=st.integers(1, 4), v=st.integers(2, 50), seed=st.integers(0, 2**16))
def test_laplace_optimum_is_the_members_median_and_mean_absolute_deviation(half_m, v, seed):
    m = 2 * half_m + 1  # odd: the median is a member's value and sum sign(x - median) = 0
    u = O.randn(2, m, v, seed=seed, scale=2.0)
    x = torch.log_softmax(u, -1)
    median = x.median(-2).values
    mad = (x - median.unsqueeze(-2)).abs().mean(-2)
    loc = median.clone().requires_grad_()
    log_scale = mad.log().requires_grad_()
    edd_ext.logit_laplace_nll(loc, log_scale, u, reduction="sum").backward()
    # The loss is not differentiable at the median: the kernel's own rounding of the targets puts mu a hair
    # above or below the median member, so its gradient is that member's sign term, -+1/(M s), or 0.
    assert ((loc.grad * m * mad).abs() <= 1 + 1e-9).all()
    assert log_scale.grad.abs().max() < 1e-9
    base = edd_ext.logit_laplace_nll(loc, log_scale, u, reduction="none")
    for dl, dr in ((1e-3, 0.0), (-1e-3, 0.0), (0.0, 1e-3), (0.0, -1e-3)):
        moved = edd_ext.logit_laplace_nll(loc + dl, log_scale + dr, u, reduction="none")
        assert (moved > base).all()


def test_gaussian_deviations_are_centred_in_float32(device):
    # Deviations of order 1 around 1e4: E[x^2] - 2 mu E[x] + mu^2 would lose every digit in float32.
    u = (1e4 + O.randn(8, 4, 600, seed=7)).float().to(device)
    loc = (1e4 + O.randn(8, 600, seed=8)).float().to(device)
    log_scale = torch.zeros(8, 600, device=device)
    got = edd_ext.logit_gaussian_nll(loc, log_scale, u, teacher_norm="none", reduction="none")
    truth = O.logit_nll("gaussian", O.f64(loc), O.f64(log_scale), u, teacher_norm="none")
    torch.testing.assert_close(got.cpu().double(), truth, rtol=1e-5, atol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center"])
def test_invariant_to_per_member_teacher_shifts(family, teacher_norm):
    loc, log_scale, u = _inputs(64, 3, torch.float64, seed=9)
    shifted = u + 30.0 * O.randn(3, 3, 1, seed=10)
    a = _fused(family)(loc, log_scale, u, teacher_norm=teacher_norm, reduction="none")
    b = _fused(family)(loc, log_scale, shifted, teacher_norm=teacher_norm, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_student_and_teacher_dtypes_may_differ(family):
    loc, log_scale, u = _inputs(100, 3, torch.float64, seed=11)
    for student_dtype, teacher_dtype in ((torch.bfloat16, torch.float32), (torch.float32, torch.float16),
                                         (torch.float32, torch.float64)):
        a = loc.to(student_dtype).requires_grad_()
        b = log_scale.to(student_dtype).requires_grad_()
        got = _fused(family)(a, b, u.to(teacher_dtype), reduction="none")
        got.sum().backward()
        want = _reference(family)(a.detach(), b.detach(), u.to(teacher_dtype), reduction="none")
        assert got.dtype == want.dtype and a.grad.dtype == student_dtype
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
