"""Training with each fused loss follows the plain-PyTorch reference (after Liger-Kernel's convergence tests):
a small linear student distilled from a fixed random ensemble for a few hundred Adam steps, once with the
fused loss and once with ``edd_ext.reference``, from the same initialisation; the two loss curves must agree
and the loss must go down."""
import pytest
import torch

import edd_ext
from edd_ext import reference as R

POSITIONS, FEATURES, MEMBERS, VOCAB, STEPS = 48, 16, 3, 40, 200

CASES = [
    ("dirichlet_nll", {}),
    ("proxy_dirichlet_kl", {}),
    ("proxy_dirichlet_kl", {"direction": "forward", "precision": "epkl"}),
    ("ensemble_kl", {}),
    ("logit_gaussian_nll", {"min_scale": 0.01}),
    ("logit_laplace_nll", {}),
]


def _train(module, name, kw, features, teacher, mask):
    torch.manual_seed(0)
    logit_loss = name.startswith("logit_")
    head = torch.nn.Linear(FEATURES, VOCAB * (2 if logit_loss else 1))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    curve = []
    for _ in range(STEPS):
        out = head(features)
        students = out.split(VOCAB, dim=-1) if logit_loss else (out,)
        loss = getattr(module, name)(*students, teacher, mask=mask, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return torch.tensor(curve, dtype=torch.float64)


@pytest.mark.parametrize("name,kw", CASES)
def test_fused_loss_follows_the_reference_curve(name, kw):
    g = torch.Generator().manual_seed(1)
    features = torch.randn(POSITIONS, FEATURES, generator=g)
    teacher = 2.0 * torch.randn(POSITIONS, MEMBERS, VOCAB, generator=g) + torch.randn(POSITIONS, 1, VOCAB, generator=g)
    mask = torch.rand(POSITIONS, generator=g) > 0.1
    fused = _train(edd_ext, name, kw, features, teacher, mask)
    reference = _train(R, name, kw, features, teacher, mask)
    assert fused[-10:].mean() < fused[:10].mean() - 0.05 * fused[:10].abs().mean()
    scale = reference.abs().max()
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-4 * scale.item())
