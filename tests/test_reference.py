"""Tests of ``edd_ext.reference`` against independent oracles.

The reference is never compared with itself: every expected value comes from a different formulation
(float64 numpy/scipy definitions, all M^2 pairwise KLs, ``torch.distributions``) or from an identity
that the SPEC states.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special as sp
from torch.distributions import Dirichlet, Laplace, Normal, kl_divergence

from edd_ext import reference as R
from edd_ext.types import DirichletUncertainty, EnsembleStats, Uncertainty

LOSSES = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl")
LOGIT_LOSSES = ("logit_gaussian_nll", "logit_laplace_nll")
MEASURES = ("total", "data", "mutual_information", "epkl", "rmi")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float64) -> torch.Tensor:
    return (torch.randn(*shape, generator=_gen(seed), dtype=torch.float64) * scale).to(dtype)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Independent oracles
# --------------------------------------------------------------------------------------------------


def oracle_ensemble(logits: np.ndarray, temperature=1.0, smoothing=0.0) -> dict:
    """Ensemble measures straight from their definitions, in float64 probability space."""
    probs = np.exp(sp.log_softmax(logits / temperature, axis=-1))
    v = probs.shape[-1]
    probs = (1.0 - smoothing) * probs + smoothing / v
    log_probs = np.log(probs)
    mean = probs.mean(-2)
    # kl[..., i, j] = KL(pi^(i) || pi^(j))
    kl = (probs[..., :, None, :] * (log_probs[..., :, None, :] - log_probs[..., None, :, :])).sum(-1)
    return {
        "mean_probs": mean,
        "mean_log_probs": log_probs.mean(-2),
        "total": sp.entr(mean).sum(-1),
        "data": sp.entr(probs).sum(-1).mean(-1),
        # MI = mean_m KL(pi^(m) || pi^), RMI = mean_m KL(pi^ || pi^(m)), EPKL = mean of all M^2 pairs
        "mutual_information": (probs * (log_probs - np.log(mean)[..., None, :])).sum(-1).mean(-1),
        "rmi": (mean[..., None, :] * (np.log(mean)[..., None, :] - log_probs)).sum(-1).mean(-1),
        "epkl": kl.mean((-1, -2)),
    }


def oracle_target(teacher: torch.Tensor, precision="mkl", target_offset=1.0, eps=1.1920929e-7, max_precision=None):
    """Proxy target (beta [*, V], beta0 [*]) from the pairwise-KL definitions of RMI / EPKL."""
    o = oracle_ensemble(_np(teacher))
    v = teacher.shape[-1]
    if precision == "mkl":
        b0_hat = (v - 1) / (2 * np.maximum(o["rmi"], 0) + eps)
    else:
        b0_hat = (v - 1) / (np.maximum(o["epkl"], 0) + eps)
    if max_precision is not None:
        b0_hat = np.minimum(b0_hat, max_precision)
    beta = b0_hat[..., None] * o["mean_probs"] + target_offset
    return torch.from_numpy(beta), torch.from_numpy(b0_hat + target_offset * v), torch.from_numpy(o["mean_probs"])


def _call_loss(name, student, teacher, **kw):
    return getattr(R, name)(student, teacher, **kw)


def _call_logit_loss(name, loc, log_scale, teacher, **kw):
    return getattr(R, name)(loc, log_scale, teacher, **kw)


# --------------------------------------------------------------------------------------------------
# SPEC section 1: ensemble statistics
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_ensemble_stats_match_pairwise_definitions(temperature, smoothing, dtype, tol):
    u = _randn(2, 3, 4, 7, seed=1, scale=2.0, dtype=dtype)
    stats = R.ensemble_stats(u, temperature=temperature, smoothing=smoothing)
    expected = oracle_ensemble(_np(u), temperature, smoothing)
    assert isinstance(stats, EnsembleStats) and stats.num_members == 4
    assert stats.mean_probs.shape == (2, 3, 7) and stats.total.shape == (2, 3)
    for field, want in expected.items():
        got = getattr(stats, field)
        assert got.dtype == dtype
        np.testing.assert_allclose(_np(got), want, atol=tol, rtol=tol, err_msg=field)


def test_ensemble_uncertainty_is_the_stats_measures():
    u = _randn(3, 5, 6, seed=2)
    unc = R.ensemble_uncertainty(u, temperature=1.5)
    assert isinstance(unc, Uncertainty)
    expected = oracle_ensemble(_np(u), 1.5)
    for field in MEASURES:
        np.testing.assert_allclose(_np(getattr(unc, field)), expected[field], atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    m=st.integers(1, 5),
    v=st.integers(2, 9),
    scale=st.floats(0.01, 20.0),
    seed=st.integers(0, 2**16),
)
def test_ensemble_identities(m, v, scale, seed):
    stats = R.ensemble_stats(_randn(3, m, v, seed=seed, scale=scale))
    np.testing.assert_allclose(_np(stats.total), _np(stats.data + stats.mutual_information), atol=1e-12)
    np.testing.assert_allclose(_np(stats.epkl), _np(stats.mutual_information + stats.rmi), atol=1e-9)
    for field in ("mutual_information", "epkl", "rmi"):
        assert (getattr(stats, field) >= -1e-9).all(), field
    assert (stats.total <= math.log(v) + 1e-12).all()
    if m == 1:
        for field in ("mutual_information", "epkl", "rmi"):
            assert getattr(stats, field).abs().max() < 1e-12


def test_mean_log_probs_in_log_space():
    # exp(-300) underflows in float32: the mean log-probability must still be the exact log-softmax.
    u = torch.tensor([[[0.0, -300.0, 5.0], [1.0, -200.0, 0.0]]], dtype=torch.float32)
    stats = R.ensemble_stats(u)
    expected = sp.log_softmax(_np(u), axis=-1).mean(-2)
    assert torch.isfinite(stats.mean_log_probs).all()
    np.testing.assert_allclose(_np(stats.mean_log_probs), expected, rtol=1e-6)
    expected = oracle_ensemble(_np(u))
    for field in MEASURES:
        np.testing.assert_allclose(_np(getattr(stats, field)), expected[field], rtol=1e-5, err_msg=field)


def test_minus_infinity_teacher_logits_give_finite_measures():
    # A class every member rules out (e.g. a masked vocabulary entry) contributes 0 ln 0 = 0.
    u = torch.tensor([[[0.0, 1.0, -math.inf], [1.0, 0.0, -math.inf]]], dtype=torch.float64)
    stats = R.ensemble_stats(u)
    expected = oracle_ensemble(_np(u[..., :2]))
    for field in MEASURES:
        np.testing.assert_allclose(_np(getattr(stats, field)), expected[field], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_ensemble_stats_dtypes(dtype):
    stats = R.ensemble_stats(_randn(2, 3, 5, seed=3, dtype=dtype))
    want = torch.float64 if dtype == torch.float64 else torch.float32
    for field in EnsembleStats._fields[:-1]:
        assert getattr(stats, field).dtype == want


# --------------------------------------------------------------------------------------------------
# SPEC section 2.1: Dirichlet NLL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_offset", [1.0, 0.5])
def test_dirichlet_nll_matches_torch_dirichlet(model_offset):
    z = _randn(5, 6, seed=4).requires_grad_()
    u = _randn(5, 3, 6, seed=5)
    loss = R.dirichlet_nll(z, u, model_offset=model_offset, reduction="none")

    alpha = z.detach().exp() + model_offset
    members = torch.softmax(u, dim=-1).transpose(0, 1)  # [M, B, V]
    expected = -Dirichlet(alpha).log_prob(members).mean(0)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)

    # dL/dz_k = (alpha_k - c)(psi(alpha_k) - psi(alpha_0) - l-_k)
    loss.sum().backward()
    a = _np(alpha)
    mean_log = sp.log_softmax(_np(u), axis=-1).mean(-2)
    grad = (a - model_offset) * (sp.digamma(a) - sp.digamma(a.sum(-1, keepdims=True)) - mean_log)
    np.testing.assert_allclose(_np(z.grad), grad, rtol=1e-9, atol=1e-10)


def test_dirichlet_nll_single_member_is_finite():
    z = torch.tensor([[3.0, -1.0, 0.5], [80.0, -1e4, 0.0]], requires_grad=True)
    u = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]]])
    loss = R.dirichlet_nll(z, u, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------------------------------
# SPEC section 2.2: Proxy-Dirichlet KL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("precision", ["mkl", "epkl"])
@pytest.mark.parametrize("target_offset,max_precision", [(1.0, None), (0.5, None), (1.0, 4.0)])
def test_proxy_kl_matches_torch_kl_divergence(direction, precision, target_offset, max_precision):
    z = _randn(4, 7, seed=6).requires_grad_()
    u = _randn(4, 3, 7, seed=7, scale=1.5)
    c = 0.75
    loss = R.proxy_dirichlet_kl(
        z, u, direction=direction, precision=precision, model_offset=c,
        target_offset=target_offset, max_precision=max_precision, reduction="none",
    )
    beta, beta0, _ = oracle_target(u, precision, target_offset, max_precision=max_precision)
    alpha = z.detach().exp() + c
    if direction == "reverse":
        kl = kl_divergence(Dirichlet(alpha), Dirichlet(beta))
    else:
        kl = kl_divergence(Dirichlet(beta), Dirichlet(alpha))
    torch.testing.assert_close(loss, kl / beta0, rtol=1e-9, atol=1e-11)

    # dL/dz_j = (alpha_j - c) / beta0 * dKL/dalpha_j, with the SPEC's gradient of each direction
    loss.sum().backward()
    a, b = _np(alpha), _np(beta)
    a0, b0 = a.sum(-1, keepdims=True), _np(beta0)[:, None]
    if direction == "reverse":
        dkl = sp.polygamma(1, a) * (a - b) - sp.polygamma(1, a0) * (a0 - b0)
    else:
        dkl = sp.digamma(a) - sp.digamma(a0) - sp.digamma(b) + sp.digamma(b0)
    np.testing.assert_allclose(_np(z.grad), (a - c) * dkl / b0, rtol=1e-8, atol=1e-11)


def test_proxy_kl_reference_code_compat():
    z = _randn(4, 6, seed=8).requires_grad_()
    u = _randn(4, 3, 6, seed=9)
    loss = R.proxy_dirichlet_kl(z, u, reference_code_compat=True, reduction="none")
    _, beta0, mean = oracle_target(u)
    alpha = z.detach().exp() + 1.0
    expected_log = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
    expected = -(mean * expected_log).sum(-1) - Dirichlet(alpha).entropy() / beta0
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)


def test_proxy_kl_compat_optimum_has_extra_precision():
    # The released objective is stationary at alpha = beta0 * pi^ + 1 (precision beta^0 + 2V),
    # the exact KL at alpha = beta (precision beta^0 + V).
    u = _randn(3, 4, 5, seed=10)
    beta, beta0, mean = oracle_target(u)

    def grad_at(alpha, **kw):
        z = (alpha - 1.0).log().requires_grad_()
        R.proxy_dirichlet_kl(z, u, reduction="sum", **kw).backward()
        return z.grad

    compat_opt = beta0[:, None] * mean + 1.0
    assert grad_at(compat_opt, reference_code_compat=True).abs().max() < 1e-10
    assert grad_at(beta, reference_code_compat=True).abs().max() > 1e-4
    assert grad_at(beta).abs().max() < 1e-10
    assert grad_at(compat_opt).abs().max() > 1e-4


@pytest.mark.parametrize("direction", ["reverse", "forward"])
@pytest.mark.parametrize("precision", ["mkl", "epkl"])
def test_proxy_kl_is_zero_at_the_target(direction, precision):
    u = _randn(3, 4, 6, seed=11, scale=2.0)
    beta, _, _ = oracle_target(u, precision)
    z = (beta - 1.0).log().requires_grad_()  # alpha = exp(z) + 1 = beta
    loss = R.proxy_dirichlet_kl(z, u, direction=direction, precision=precision, reduction="none")
    loss.sum().backward()
    assert loss.abs().max() < 1e-10
    assert z.grad.abs().max() < 1e-10


@settings(max_examples=25, deadline=None)
@given(
    direction=st.sampled_from(["reverse", "forward"]),
    precision=st.sampled_from(["mkl", "epkl"]),
    student_scale=st.floats(0.0, 6.0),
    teacher_scale=st.floats(0.0, 6.0),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_proxy_kl_is_nonnegative(direction, precision, student_scale, teacher_scale, m, seed):
    z = _randn(3, 5, seed=seed, scale=student_scale)
    u = _randn(3, m, 5, seed=seed + 1, scale=teacher_scale)
    loss = R.proxy_dirichlet_kl(z, u, direction=direction, precision=precision, reduction="none")
    assert torch.isfinite(loss).all()
    assert (loss >= -1e-9).all()


# --------------------------------------------------------------------------------------------------
# SPEC section 2.3: logit-space losses
# --------------------------------------------------------------------------------------------------


def _oracle_targets(u: torch.Tensor, teacher_norm: str, temperature: float) -> torch.Tensor:
    x = _np(u) / temperature
    if teacher_norm == "log_softmax":
        x = sp.log_softmax(x, axis=-1)
    elif teacher_norm == "center":
        x = x - x.mean(-1, keepdims=True)
    return torch.from_numpy(x)


@pytest.mark.parametrize("name,dist", [("logit_gaussian_nll", Normal), ("logit_laplace_nll", Laplace)])
@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
@pytest.mark.parametrize("temperature,min_scale", [(1.0, 0.0), (2.0, 0.3)])
def test_logit_losses_match_torch_distributions(name, dist, teacher_norm, temperature, min_scale):
    loc = _randn(4, 6, seed=12, scale=2.0).requires_grad_()
    log_scale = _randn(4, 6, seed=13, scale=0.5).requires_grad_()
    u = _randn(4, 3, 6, seed=14, scale=2.0)
    loss = _call_logit_loss(
        name, loc, log_scale, u, teacher_norm=teacher_norm, temperature=temperature,
        min_scale=min_scale, reduction="none",
    )
    x = _oracle_targets(u, teacher_norm, temperature)  # [B, M, V]
    mu, s = loc.detach(), log_scale.detach().exp() + min_scale
    expected = -dist(mu.unsqueeze(-2), s.unsqueeze(-2)).log_prob(x).mean(-2).sum(-1)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)

    # SPEC gradients
    loss.sum().backward()
    mu_np, s_np, x_np = _np(mu), _np(s), _np(x)
    dev = x_np - mu_np[:, None, :]
    if dist is Normal:
        v = (dev**2).mean(1)
        grad_mu = (mu_np - x_np.mean(1)) / s_np**2
        grad_rho = (1 - v / s_np**2) * (s_np - min_scale) / s_np
    else:
        a = np.abs(dev).mean(1)
        grad_mu = -np.sign(dev).sum(1) / (x_np.shape[1] * s_np)
        grad_rho = (1 - a / s_np) * (s_np - min_scale) / s_np
    np.testing.assert_allclose(_np(loc.grad), grad_mu, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(_np(log_scale.grad), grad_rho, rtol=1e-9, atol=1e-10)


def test_gaussian_nll_is_accurate_for_large_logits_in_float32():
    # Deviations of order 1 around 1e4: E[x^2] - 2 mu E[x] + mu^2 would lose everything in float32.
    u = (1e4 + _randn(8, 4, 6, seed=15)).to(torch.float32)
    loc = (1e4 + _randn(8, 6, seed=16)).to(torch.float32)
    log_scale = torch.zeros(8, 6)
    loss = R.logit_gaussian_nll(loc, log_scale, u, teacher_norm="none", reduction="none")
    x, mu = _np(u), _np(loc)
    expected = (0.5 * math.log(2 * math.pi) + ((x - mu[:, None, :]) ** 2).mean(1) / 2).sum(-1)
    np.testing.assert_allclose(_np(loss), expected, rtol=1e-3)


def test_logit_losses_reject_ensemble_stats():
    u = _randn(2, 3, 4, seed=17)
    with pytest.raises(ValueError, match="teacher_logits"):
        R.logit_gaussian_nll(torch.zeros(2, 4), torch.zeros(2, 4), R.ensemble_stats(u))


# --------------------------------------------------------------------------------------------------
# SPEC section 2.4: ensemble KL
# --------------------------------------------------------------------------------------------------


def test_ensemble_kl_matches_kl_div():
    z = _randn(5, 7, seed=18).requires_grad_()
    u = _randn(5, 4, 7, seed=19)
    loss = R.ensemble_kl(z, u, reduction="none")
    target = torch.softmax(u, -1).mean(-2)
    expected = F.kl_div(torch.log_softmax(z.detach(), -1), target, reduction="none").sum(-1)
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.sum().backward()
    torch.testing.assert_close(z.grad, torch.softmax(z.detach(), -1) - target, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Shared loss behaviour: EnsembleStats teachers, gradcheck, masks, reductions, dtypes
# --------------------------------------------------------------------------------------------------


def _numpy_ensemble_stats(u: torch.Tensor) -> EnsembleStats:
    """The statistics of SPEC section 1 written independently of the library: numpy/scipy member by member,
    EPKL as the mean of all M^2 pairwise KLs, RMI as EPKL - MI."""
    x = u.detach().numpy()
    log_p = x - sp.logsumexp(x, axis=-1, keepdims=True)  # [*, M, V]
    p = np.exp(log_p)
    mean_p, mean_log_p = p.mean(-2), log_p.mean(-2)
    total = -(mean_p * np.log(mean_p)).sum(-1)
    data = -(p * log_p).sum(-1).mean(-1)
    pairwise_kl = (p[..., :, None, :] * (log_p[..., :, None, :] - log_p[..., None, :, :])).sum(-1)  # [*, M, M]
    epkl = pairwise_kl.mean((-1, -2))
    fields = [mean_p, mean_log_p, total, data, total - data, epkl, epkl - (total - data)]
    return EnsembleStats(*(torch.from_numpy(np.ascontiguousarray(f)) for f in fields), num_members=x.shape[-2])


@pytest.mark.parametrize(
    "name,kw",
    [
        ("dirichlet_nll", {}),
        ("proxy_dirichlet_kl", {}),
        ("proxy_dirichlet_kl", {"direction": "forward", "precision": "epkl"}),
        ("proxy_dirichlet_kl", {"reference_code_compat": True}),
        ("ensemble_kl", {}),
    ],
)
def test_ensemble_stats_teacher_equals_logits_teacher(name, kw):
    """A loss given teacher logits equals the loss given the teacher's statistics computed independently."""
    z1 = _randn(2, 3, 6, seed=20).requires_grad_()
    z2 = z1.detach().clone().requires_grad_()
    u = _randn(2, 3, 4, 6, seed=21).requires_grad_()
    l1 = _call_loss(name, z1, u, reduction="none", **kw)
    l2 = _call_loss(name, z2, _numpy_ensemble_stats(u), reduction="none", **kw)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    l1.sum().backward()
    l2.sum().backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-12, atol=1e-12)
    assert u.grad is None  # the teacher is a constant


@pytest.mark.parametrize(
    "name,kw",
    [
        ("dirichlet_nll", {"model_offset": 0.5}),
        ("proxy_dirichlet_kl", {}),
        ("proxy_dirichlet_kl", {"direction": "forward", "precision": "epkl", "target_offset": 0.5}),
        ("proxy_dirichlet_kl", {"reference_code_compat": True, "max_precision": 3.0}),
        ("ensemble_kl", {}),
    ],
)
def test_gradcheck_losses(name, kw):
    z = _randn(3, 5, seed=22).requires_grad_()
    u = _randn(3, 3, 5, seed=23)
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda s: _call_loss(name, s, u, mask=mask, **kw), (z,))


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_gradcheck_logit_losses(name):
    loc = _randn(3, 5, seed=24).requires_grad_()
    log_scale = _randn(3, 5, seed=25, scale=0.3).requires_grad_()
    u = _randn(3, 4, 5, seed=26)
    fn = lambda a, b: _call_logit_loss(name, a, b, u, min_scale=0.1, reduction="sum")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (loc, log_scale))


def test_gradcheck_uncertainty_measures():
    z = _randn(2, 5, seed=27).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: torch.stack(tuple(R.dirichlet_uncertainty(s))), (z,))
    loc = _randn(2, 5, seed=28).requires_grad_()
    log_scale = _randn(2, 5, seed=29).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: R.gaussian_epkl_approximation(a, b), (loc, log_scale))
    fn = lambda a, b: torch.stack(tuple(R.logit_distribution_uncertainty(a, b, num_samples=4)))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (loc, log_scale))


def _poisoned_inputs(teacher_as_stats: bool):
    """Student [4, V] and teacher with NaN / inf in rows 1 and 3, which the mask excludes."""
    z = _randn(4, 6, seed=30)
    u = _randn(4, 3, 6, seed=31)
    z[1] = math.nan
    z[3, 0] = math.inf
    mask = torch.tensor([True, False, True, False])
    if teacher_as_stats:
        stats = R.ensemble_stats(u)
        poisoned = EnsembleStats(*(f.clone() if torch.is_tensor(f) else f for f in stats))
        for f in poisoned[:-1]:
            f[1] = math.nan
        teacher, clean = poisoned, stats
    else:
        teacher = u.clone()
        teacher[1] = math.nan
        teacher[3] = -math.inf
        clean = u
    return z, teacher, clean, mask


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("teacher_as_stats", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_masked_rows_give_zero_loss_and_zero_grad(name, teacher_as_stats, reduction):
    z, teacher, clean, mask = _poisoned_inputs(teacher_as_stats)
    z.requires_grad_()
    loss = _call_loss(name, z, teacher, mask=mask, reduction=reduction)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert (z.grad[~mask] == 0).all()
    assert torch.isfinite(z.grad).all()

    # Unmasked rows: the same as the loss computed on those rows alone.
    keep = mask.nonzero().squeeze(-1)
    sub_teacher = EnsembleStats(*(f[keep] for f in clean[:-1]), clean.num_members) if teacher_as_stats else clean[keep]
    z_sub = z.detach()[keep].requires_grad_()
    expected = _call_loss(name, z_sub, sub_teacher, reduction="none")
    expected.sum().backward()
    if reduction == "none":
        assert (loss[~mask] == 0).all()
        torch.testing.assert_close(loss[keep], expected)
    elif reduction == "sum":
        torch.testing.assert_close(loss, expected.sum())
    else:
        torch.testing.assert_close(loss, expected.mean())
    scale = 1.0 / len(keep) if reduction == "mean" else 1.0
    torch.testing.assert_close(z.grad[keep], z_sub.grad * scale)


@pytest.mark.parametrize("name", LOGIT_LOSSES)
def test_logit_losses_masked_rows(name):
    loc = _randn(3, 5, seed=32)
    log_scale = _randn(3, 5, seed=33)
    u = _randn(3, 2, 5, seed=34)
    loc[1], log_scale[1], u[1] = math.nan, math.inf, math.nan
    loc.requires_grad_()
    log_scale.requires_grad_()
    mask = torch.tensor([True, False, True])
    loss = _call_logit_loss(name, loc, log_scale, u, mask=mask, reduction="none")
    loss.sum().backward()
    assert loss[1] == 0 and torch.isfinite(loss).all()
    assert (loc.grad[1] == 0).all() and (log_scale.grad[1] == 0).all()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()
    expected = _call_logit_loss(name, loc.detach()[[0, 2]], log_scale.detach()[[0, 2]], u[[0, 2]], reduction="none")
    torch.testing.assert_close(loss[[0, 2]], expected)


@pytest.mark.parametrize("name", LOSSES + LOGIT_LOSSES)
def test_all_masked_mean_is_zero(name):
    z = _randn(2, 3, 4, seed=35).requires_grad_()
    u = _randn(2, 3, 2, 4, seed=36)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    if name in LOGIT_LOSSES:
        loss = _call_logit_loss(name, z, z, u, mask=mask)
    else:
        loss = _call_loss(name, z, u, mask=mask)
    loss.backward()
    assert loss.item() == 0.0 and (z.grad == 0).all()


@pytest.mark.parametrize("name", LOSSES + LOGIT_LOSSES)
def test_reductions_are_consistent(name):
    z = _randn(2, 3, 5, seed=37)
    u = _randn(2, 3, 2, 5, seed=38)
    mask = torch.tensor([[True, False, True], [True, True, False]])

    def run(**kw):
        if name in LOGIT_LOSSES:
            return _call_logit_loss(name, z, z * 0.1, u, **kw)
        return _call_loss(name, z, u, **kw)

    per_position = run(reduction="none")
    assert per_position.shape == (2, 3)
    torch.testing.assert_close(run(reduction="sum"), per_position.sum())
    torch.testing.assert_close(run(reduction="mean"), per_position.mean())
    torch.testing.assert_close(run(mask=mask, reduction="sum"), per_position[mask].sum())
    torch.testing.assert_close(run(mask=mask, reduction="mean"), per_position[mask].mean())
    torch.testing.assert_close(run(mask=mask, reduction="none"), torch.where(mask, per_position, 0.0))


@pytest.mark.parametrize("name", LOSSES)
def test_nan_in_one_position_leaves_the_others_alone(name):
    z = _randn(3, 5, seed=39)
    u = _randn(3, 2, 5, seed=40)
    clean = _call_loss(name, z, u, reduction="none")
    z_bad, u_bad = z.clone(), u.clone()
    z_bad[1, 2] = math.nan
    u_bad[1, 0, 3] = math.nan
    dirty = _call_loss(name, z_bad, u_bad, reduction="none")
    assert torch.isnan(dirty[1])
    torch.testing.assert_close(dirty[[0, 2]], clean[[0, 2]], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", LOSSES + LOGIT_LOSSES)
def test_loss_dtypes(name, dtype):
    z = _randn(2, 5, seed=41, dtype=dtype).requires_grad_()
    u = _randn(2, 3, 5, seed=42, dtype=dtype)
    if name in LOGIT_LOSSES:
        loss = _call_logit_loss(name, z, z, u)
    else:
        loss = _call_loss(name, z, u)
    loss.backward()
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()


def test_extreme_student_logits_are_finite_in_float32():
    z = torch.tensor([[80.0, -1e4, 0.0, 80.0, -5.0, 3.0, -1e4, 10.0], [-1e4] * 7 + [80.0]]).requires_grad_()
    u = _randn(2, 3, 8, seed=43, scale=3.0, dtype=torch.float32)
    calls = [
        lambda s: R.dirichlet_nll(s, u),
        lambda s: R.proxy_dirichlet_kl(s, u),
        lambda s: R.proxy_dirichlet_kl(s, u, direction="forward"),
        lambda s: R.proxy_dirichlet_kl(s, u, reference_code_compat=True),
        lambda s: R.ensemble_kl(s, u),
        lambda s: torch.stack(tuple(R.dirichlet_uncertainty(s))).sum(),
    ]
    for call in calls:
        z.grad = None
        loss = call(z)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


# --------------------------------------------------------------------------------------------------
# Structural errors
# --------------------------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes():
    z = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"teacher.*\(2, 'M', 5\).*\(2, 5\).*\(2, 3, 6\)"):
        R.dirichlet_nll(z, torch.zeros(2, 3, 6))
    with pytest.raises(ValueError, match=r"\(3, 2, 5\)"):
        R.ensemble_kl(z, torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match=r"mean_probs.*\(2, 5\).*\(2, 4\)"):
        R.proxy_dirichlet_kl(z, R.ensemble_stats(torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"teacher_logits.*\(2, 5\).*\(2, 3, 4\)"):
        R.logit_laplace_nll(z, z, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"log_scale.*\(2, 5\).*\(2, 4\)"):
        R.logit_gaussian_nll(z, torch.zeros(2, 4), torch.zeros(2, 3, 5))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: R.ensemble_stats(torch.zeros(2, 3, 1)), "V >= 2"),
        (lambda: R.ensemble_stats(torch.zeros(2, 0, 4)), "M >= 1"),
        (lambda: R.ensemble_stats(torch.zeros(4)), "teacher_logits"),
        (lambda: R.ensemble_stats(torch.zeros(2, 3, 4, dtype=torch.long)), "floating"),
        (lambda: R.ensemble_stats(torch.zeros(2, 3, 4), temperature=0.0), "temperature"),
        (lambda: R.ensemble_stats(torch.zeros(2, 3, 4), smoothing=1.5), "smoothing"),
        (lambda: R.dirichlet_nll(torch.zeros(2, 1), torch.zeros(2, 3, 1)), "V >= 2"),
        (lambda: R.dirichlet_nll(torch.zeros(2, 4), torch.zeros(2, 3, 4), reduction="avg"), "reduction"),
        (lambda: R.dirichlet_nll(torch.zeros(2, 4), torch.zeros(2, 3, 4), model_offset=-1.0), "model_offset"),
        (lambda: R.dirichlet_nll(torch.zeros(2, 4), [1.0]), "teacher"),
        (lambda: R.proxy_dirichlet_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), direction="both"), "direction"),
        (lambda: R.proxy_dirichlet_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), precision="max"), "precision"),
        (lambda: R.proxy_dirichlet_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), eps=0.0), "eps"),
        (lambda: R.proxy_dirichlet_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), max_precision=0.0), "max_precision"),
        (
            lambda: R.proxy_dirichlet_kl(
                torch.zeros(2, 4), torch.zeros(2, 3, 4), direction="forward", reference_code_compat=True
            ),
            "reference_code_compat",
        ),
        (lambda: R.ensemble_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), mask=torch.ones(2)), "mask"),
        (lambda: R.ensemble_kl(torch.zeros(2, 4), torch.zeros(2, 3, 4), mask=torch.ones(3, dtype=torch.bool)), "mask"),
        (lambda: R.logit_gaussian_nll(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3, 4), teacher_norm="z"),
         "teacher_norm"),
        (lambda: R.logit_laplace_nll(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3, 4), min_scale=-1.0),
         "min_scale"),
        (lambda: R.logit_gaussian_nll(torch.zeros(2, 4), torch.zeros(2, 4).double(), torch.zeros(2, 3, 4)),
         "log_scale"),
        (lambda: R.logit_distribution_uncertainty(torch.zeros(2, 4), torch.zeros(2, 4), family="cauchy"), "family"),
        (lambda: R.logit_distribution_uncertainty(torch.zeros(2, 4), torch.zeros(2, 4), num_samples=0), "num_samples"),
        (lambda: R.dirichlet_uncertainty(torch.zeros(3, 1)), "V >= 2"),
        (lambda: R.gaussian_epkl_approximation(torch.zeros(3, 4), torch.zeros(4, 4)), "log_scale"),
    ],
)
def test_structural_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------------
# SPEC section 3: Dirichlet and logit-distribution uncertainty
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_offset", [1.0, 0.25, 0.0])
def test_dirichlet_uncertainty_matches_scipy(model_offset):
    z = _randn(3, 4, 6, seed=44, scale=2.0)
    unc = R.dirichlet_uncertainty(z, model_offset=model_offset)
    assert isinstance(unc, DirichletUncertainty) and unc.total.shape == (3, 4)

    a = np.exp(_np(z)) + model_offset
    a0 = a.sum(-1, keepdims=True)
    p = a / a0
    v = a.shape[-1]
    expected = {
        "total": sp.entr(p).sum(-1),
        "data": -(p * (sp.digamma(a + 1) - sp.digamma(a0 + 1))).sum(-1),
        "epkl": (v - 1) / a0[..., 0],
        "rmi": (p * (np.log(p) - sp.digamma(a) + sp.digamma(a0))).sum(-1),
        "precision": a0[..., 0],
        "differential_entropy": _np(Dirichlet(torch.from_numpy(a)).entropy()),
    }
    expected["mutual_information"] = expected["total"] - expected["data"]
    for field, want in expected.items():
        np.testing.assert_allclose(_np(getattr(unc, field)), want, rtol=1e-10, atol=1e-12, err_msg=field)
    # EPKL = MI + RMI, and MI >= 0 (the released code's sign error would make it negative)
    np.testing.assert_allclose(_np(unc.epkl), _np(unc.mutual_information + unc.rmi), rtol=1e-9)
    assert (unc.mutual_information > 0).all()


def test_dirichlet_uncertainty_dtypes():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert R.dirichlet_uncertainty(torch.zeros(2, 3, dtype=dtype)).total.dtype == torch.float32
    assert R.dirichlet_uncertainty(torch.zeros(2, 3, dtype=torch.float64)).total.dtype == torch.float64


def test_logit_distribution_uncertainty_is_seeded():
    loc = _randn(3, 6, seed=45, dtype=torch.float32)
    log_scale = _randn(3, 6, seed=46, dtype=torch.float32)
    a = R.logit_distribution_uncertainty(loc, log_scale, seed=7)
    b = R.logit_distribution_uncertainty(loc, log_scale, seed=7)
    c = R.logit_distribution_uncertainty(loc, log_scale, seed=8)
    d = R.logit_distribution_uncertainty(loc, log_scale, generator=_gen(7))
    assert isinstance(a, Uncertainty) and a.total.shape == (3,) and a.total.dtype == torch.float32
    for field in MEASURES:
        assert torch.equal(getattr(a, field), getattr(b, field))
        assert torch.equal(getattr(a, field), getattr(d, field))
    assert not torch.equal(a.epkl, c.epkl)
    torch.testing.assert_close(a.total, a.data + a.mutual_information)


@pytest.mark.parametrize("family,variance", [("gaussian", 1.0), ("laplace", 2.0)])
def test_logit_distribution_small_scale_epkl(family, variance):
    # For small scales EPKL ~ (1 - 1/S) * Var[eps] * sum_k s_k^2 p_k (1 - p_k), p = softmax(mu).
    num_samples = 2000
    loc = _randn(4, 5, seed=47)
    log_scale = math.log(0.05) + _randn(4, 5, seed=48, scale=0.2)
    unc = R.logit_distribution_uncertainty(loc, log_scale, family=family, num_samples=num_samples, seed=3)
    p = sp.softmax(_np(loc), axis=-1)
    s = np.exp(_np(log_scale))
    expected = (1 - 1 / num_samples) * variance * (s**2 * p * (1 - p)).sum(-1)
    np.testing.assert_allclose(_np(unc.epkl), expected, rtol=0.15)


def test_logit_distribution_vanishing_scale_and_temperature():
    loc = _randn(3, 6, seed=49, scale=2.0)
    log_scale = torch.full((3, 6), -30.0, dtype=torch.float64)
    unc = R.logit_distribution_uncertainty(loc, log_scale, temperature=2.0, num_samples=5)
    np.testing.assert_allclose(_np(unc.total), sp.entr(sp.softmax(_np(loc) / 2.0, axis=-1)).sum(-1), rtol=1e-10)
    assert unc.mutual_information.abs().max() < 1e-10 and unc.epkl.abs().max() < 1e-10
    # min_scale sets a floor under the scale
    floored = R.logit_distribution_uncertainty(loc, log_scale, min_scale=0.5, num_samples=50)
    assert (floored.epkl > 1e-3).all()


def test_gaussian_epkl_approximation_matches_numpy():
    loc = _randn(2, 3, 7, seed=50)
    log_scale = _randn(2, 3, 7, seed=51)
    got = R.gaussian_epkl_approximation(loc, log_scale, min_scale=0.2)
    p = sp.softmax(_np(loc), axis=-1)
    s = np.exp(_np(log_scale)) + 0.2
    np.testing.assert_allclose(_np(got), (s**2 * p * (1 - p)).sum(-1), rtol=1e-12)
    assert got.shape == (2, 3)
