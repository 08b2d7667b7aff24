"""Float64 oracles for the fused-loss tests, built on ``torch.distributions`` and the pairwise definitions of
the ensemble measures (never on the kernels' identities), plus the tolerance rule shared by the loss tests.

Tolerance rule for reduced-precision inputs (after apple/ml-cross-entropy): the fused result's error against
the float64 truth may be at most a small multiple of the error that plain PyTorch makes in the same dtype
(``edd_ext.reference``), plus a floor relative to the result's size.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Dirichlet, Laplace, Normal, kl_divergence

F64 = torch.float64
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def randn(*shape, seed=0, scale=1.0, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=F64)).to(dtype).to(device)


def f64(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", F64)


# ---- teacher statistics from the definitions ----


def member_probs(u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.softmax(f64(u) / temperature, dim=-1)  # [*, M, V]


def ensemble_target(u, precision="mkl", target_offset=1.0, eps=1.1920929e-7, max_precision=None):
    """(beta [*, V], beta0 [*], mean_probs [*, V]) of the proxy target, from RMI = mean_m KL(pi^ || pi_m) and
    EPKL = the mean of all M^2 pairwise KLs."""
    p = member_probs(u)
    logp = torch.log_softmax(f64(u), dim=-1)
    mean = p.mean(-2)
    if precision == "mkl":
        rmi = (mean.unsqueeze(-2) * (mean.log().unsqueeze(-2) - logp)).sum(-1).mean(-1)
        b0_hat = (u.shape[-1] - 1) / (2 * rmi.clamp_min(0) + eps)
    else:
        kl = (p.unsqueeze(-2) * (logp.unsqueeze(-2) - logp.unsqueeze(-3))).sum(-1)  # [*, M, M]
        b0_hat = (u.shape[-1] - 1) / (kl.mean((-1, -2)).clamp_min(0) + eps)
    if max_precision is not None:
        b0_hat = b0_hat.clamp_max(max_precision)
    beta = b0_hat.unsqueeze(-1) * mean + target_offset
    return beta, b0_hat + target_offset * u.shape[-1], mean


# ---- losses (per position [*]) as differentiable functions of float64 student tensors ----


def dirichlet_nll(z, u, model_offset=1.0):
    alpha = z.exp() + model_offset
    members = member_probs(u).movedim(-2, 0)  # [M, *, V]
    return -Dirichlet(alpha, validate_args=False).log_prob(members).mean(0)


def proxy_dirichlet_kl(z, u, direction="reverse", precision="mkl", model_offset=1.0, target_offset=1.0,
                       eps=1.1920929e-7, max_precision=None, reference_code_compat=False):
    beta, beta0, mean = ensemble_target(u, precision, target_offset, eps, max_precision)
    alpha = z.exp() + model_offset
    if reference_code_compat:
        expected_log = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True))
        entropy = Dirichlet(alpha, validate_args=False).entropy()
        return -(mean * expected_log).sum(-1) - entropy / beta0
    if direction == "reverse":
        kl = kl_divergence(Dirichlet(alpha, validate_args=False), Dirichlet(beta, validate_args=False))
    else:
        kl = kl_divergence(Dirichlet(beta, validate_args=False), Dirichlet(alpha, validate_args=False))
    return kl / beta0


def logit_targets(u, teacher_norm="log_softmax", temperature=1.0):
    x = f64(u) / temperature
    if teacher_norm == "log_softmax":
        return torch.log_softmax(x, -1)
    if teacher_norm == "center":
        return x - x.mean(-1, keepdim=True)
    return x


def logit_nll(family, loc, log_scale, u, teacher_norm="log_softmax", temperature=1.0, min_scale=0.0):
    x = logit_targets(u, teacher_norm, temperature)  # [*, M, V]
    dist = Normal if family == "gaussian" else Laplace
    s = log_scale.exp() + min_scale
    return -dist(loc.unsqueeze(-2), s.unsqueeze(-2), validate_args=False).log_prob(x).mean(-2).sum(-1)


def ensemble_kl(z, u):
    mean = member_probs(u).mean(-2)
    return kl_divergence(Categorical(probs=mean, validate_args=False), Categorical(logits=z, validate_args=False))


def value_and_grads(fn, *students):
    """fn's per-position value and d(sum)/d(each student), all float64."""
    xs = [f64(s).requires_grad_() for s in students]
    out = fn(*xs)
    grads = torch.autograd.grad(out.sum(), xs)
    return out.detach(), [g.detach() for g in grads]


# ---- comparison ----


def assert_close_to_truth(got, truth, dtype, peer=None, rtol=None, atol=None, what=""):
    """float64: plain rtol/atol. Other dtypes: |got - truth| <= 4 |peer - truth| + floor elementwise-max, where
    peer is plain PyTorch's result in the same dtype and floor = rtol * max|truth| + atol."""
    got, truth = f64(got), f64(truth)
    assert got.shape == truth.shape, (what, got.shape, truth.shape)
    if dtype == F64:
        torch.testing.assert_close(got, truth, rtol=rtol or 1e-9, atol=atol or 1e-10, msg=lambda m: f"{what}: {m}")
        return
    scale = truth.abs().max().item() if truth.numel() else 0.0
    floor = (rtol or 2e-6) * scale + (atol or 1e-6)
    err = (got - truth).abs().max().item() if truth.numel() else 0.0
    peer_err = (f64(peer) - truth).abs().max().item() if peer is not None and truth.numel() else 0.0
    assert math.isfinite(err) and err <= 4 * peer_err + floor, (
        f"{what}: error {err:.3g} > 4 x plain-PyTorch error {peer_err:.3g} + {floor:.3g} (scale {scale:.3g})"
    )
