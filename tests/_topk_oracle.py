"""Float64 oracle of the top-k teacher statistics (SPEC section 1.1) and of the losses read against them, written
from the definitions with numpy / scipy and torch.distributions — independent of ``edd_ext.reference`` and of
the kernels' identities (the tail is summed over the tail classes themselves; RMI and EPKL are averages of
pairwise KLs)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import log_softmax
from torch.distributions import Categorical, Dirichlet, kl_divergence

F64 = torch.float64


def members(logits, temperature=1.0, smoothing=0.0):
    """(pi^(m) [*, M, V], ln pi^(m)) in float64 numpy."""
    u = logits.detach().cpu().double().numpy()
    logp = log_softmax(u / temperature, axis=-1)
    if smoothing:
        logp = np.logaddexp(np.log1p(-smoothing) + logp, np.log(smoothing / u.shape[-1]))
    return np.exp(logp), logp


def dense(logits, temperature=1.0, smoothing=0.0):
    """pi^ and l- [*, V], and RMI = mean_m KL(pi^ || pi^(m)), EPKL = the mean of the M^2 pairwise KLs [*]."""
    p, logp = members(logits, temperature, smoothing)
    mean_p, mean_logp = p.mean(-2), logp.mean(-2)
    log_mean_p = np.log(mean_p)
    rmi = (mean_p[..., None, :] * (log_mean_p[..., None, :] - logp)).sum(-1).mean(-1)
    kl = (p[..., :, None, :] * (logp[..., :, None, :] - logp[..., None, :, :])).sum(-1)
    return mean_p, mean_logp, rmi, kl.mean((-1, -2))


def top_k(mean_p, mean_logp, k, indices=None):
    """The top-k form of dense float64 rows [*, V] (the k largest pi^, ties to the smaller class), or of the given
    ``indices`` [*, k]: listed values, tau summed over the tail classes and lambda their mean l- (0 when k = V)."""
    num_classes = mean_p.shape[-1]
    if indices is None:
        order = np.argsort(-mean_p, axis=-1, kind="stable")
        indices = order[..., :k]
    in_tail = np.ones(mean_p.shape, dtype=bool)
    np.put_along_axis(in_tail, indices, False, axis=-1)
    tail_mass = np.where(in_tail, mean_p, 0.0).sum(-1)
    tail_mean = np.where(in_tail, mean_logp, 0.0).sum(-1) / max(num_classes - k, 1)
    return dict(indices=indices, mean_probs=np.take_along_axis(mean_p, indices, -1),
                mean_log_probs=np.take_along_axis(mean_logp, indices, -1), tail_mass=tail_mass,
                tail_mean_log_prob=tail_mean)


def filled(stats: dict, num_classes: int):
    """The dense target a top-k form stands for: tail classes at tau / (V - k) and lambda. torch float64 [*, V]."""
    indices = stats["indices"]
    k = indices.shape[-1]
    tail_p = stats["tail_mass"] / (num_classes - k) if num_classes > k else np.zeros_like(stats["tail_mass"])
    p = np.repeat(tail_p[..., None], num_classes, -1)
    logp = np.repeat(np.asarray(stats["tail_mean_log_prob"], dtype=np.float64)[..., None], num_classes, -1)
    np.put_along_axis(p, indices, stats["mean_probs"], -1)
    np.put_along_axis(logp, indices, stats["mean_log_probs"], -1)
    return torch.from_numpy(p), torch.from_numpy(logp)


# ---- losses per position [*] of a float64 student against a dense float64 target ----


def dirichlet_nll(z, mean_logp):
    alpha = z.exp() + 1.0
    return -Dirichlet(alpha, validate_args=False).log_prob(mean_logp.exp())


def proxy_dirichlet_kl(z, mean_p, rmi, num_classes, eps=1.1920929e-7):
    b0_hat = (num_classes - 1) / (2 * torch.as_tensor(rmi).clamp_min(0) + eps)
    beta = b0_hat.unsqueeze(-1) * mean_p + 1.0
    alpha = z.exp() + 1.0
    kl = kl_divergence(Dirichlet(alpha, validate_args=False), Dirichlet(beta, validate_args=False))
    return kl / (b0_hat + num_classes)


def ensemble_kl(z, mean_p):
    return kl_divergence(Categorical(probs=mean_p, validate_args=False), Categorical(logits=z, validate_args=False))
