"""edd_ext.ensemble_kl (the fused kernel) against a float64 oracle built on torch.distributions
(kl_divergence(Categorical, Categorical)); gradcheck; the optimum at the ensemble mean; zero-probability
classes; invariances."""
import _loss_oracles as O
import pytest
import torch

import edd_ext
from edd_ext import reference as R

SIZES = [(v, m) for v in (2, 7, 1271, 32000) for m in (1, 3, 10)]


def _inputs(v, m, dtype, positions=3, seed=0):
    return O.randn(positions, v, seed=seed, scale=2.0, dtype=dtype), O.randn(positions, m, v, seed=seed + 1,
                                                                             scale=3.0, dtype=dtype)


def _run(fn, device, z):
    x = z.detach().clone().to(device).requires_grad_()
    loss = fn(x)
    loss.sum().backward()
    return loss, x.grad


@pytest.mark.parametrize("v,m", SIZES)
@pytest.mark.parametrize("dtype", O.DTYPES)
@pytest.mark.parametrize("as_stats", [False, True])
def test_matches_categorical_kl_divergence(v, m, dtype, as_stats, device):
    if as_stats and v == 32000 and m == 10 and dtype in (torch.float16, torch.bfloat16):
        pytest.skip("covered by the float32 case")
    z, u = _inputs(v, m, dtype)
    ud = u.to(device)
    teacher = edd_ext.ensemble_stats(ud) if as_stats else ud
    truth, (grad_truth,) = O.value_and_grads(lambda s: O.ensemble_kl(s, u), z)
    loss, grad = _run(lambda s: edd_ext.ensemble_kl(s, teacher, reduction="none"), device, z)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and grad.dtype == dtype
    peer = peer_grad = None
    if dtype != torch.float64:
        peer, peer_grad = _run(lambda s: R.ensemble_kl(s, u, reduction="none"), "cpu", z)
    O.assert_close_to_truth(loss, truth, dtype, peer=peer, atol=1e-12 if dtype == torch.float64 else None,
                            what="loss")
    O.assert_close_to_truth(grad, grad_truth, dtype, peer=peer_grad, atol=1e-12 if dtype == torch.float64 else None,
                            what="grad")


@pytest.mark.parametrize("as_stats", [False, True])
def test_gradcheck(as_stats):
    z = O.randn(3, 6, seed=2).requires_grad_()
    u = O.randn(3, 4, 6, seed=3)
    teacher = edd_ext.ensemble_stats(u) if as_stats else u
    mask = torch.tensor([False, True, True])
    assert torch.autograd.gradcheck(lambda s: edd_ext.ensemble_kl(s, teacher, mask=mask, reduction="none"), (z,))


def test_zero_at_the_ensemble_mean_with_zero_gradient():
    u = O.randn(4, 5, 30, seed=4, scale=2.0)
    z = torch.softmax(u, -1).mean(-2).log().requires_grad_()
    loss = edd_ext.ensemble_kl(z, u, reduction="none")
    loss.sum().backward()
    assert loss.abs().max() < 1e-14 and z.grad.abs().max() < 1e-15


def test_zero_probability_classes_contribute_nothing():
    # A -inf teacher logit in every member gives pi^_k = 0 exactly; 0 ln 0 = 0 (in the loss and from stats).
    z = O.randn(2, 8, seed=5).requires_grad_()
    u = O.randn(2, 3, 8, seed=6)
    u[..., 2] = -float("inf")
    loss = edd_ext.ensemble_kl(z, u, reduction="none")
    loss.sum().backward()
    truth, (grad_truth,) = O.value_and_grads(lambda s: O.ensemble_kl(s, u), z)
    torch.testing.assert_close(loss, truth)
    torch.testing.assert_close(z.grad, grad_truth)
    torch.testing.assert_close(edd_ext.ensemble_kl(z, edd_ext.ensemble_stats(u), reduction="none"), truth)


def test_extreme_student_logits_are_finite_in_float32(device):
    z = O.randn(2, 32000, seed=7, dtype=torch.float32)
    z[0, :5] = 80.0
    z[1, :] = -1e4
    z[1, 3] = 80.0
    z = z.to(device).requires_grad_()
    u = O.randn(2, 5, 32000, seed=8, scale=4.0, dtype=torch.float32).to(device)
    loss = edd_ext.ensemble_kl(z, u)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # (Categorical's KL is inf where the student's probability underflows in float64: use the definition.)
    truth, (grad_truth,) = O.value_and_grads(lambda s: R.ensemble_kl(s, O.f64(u)), z.detach().cpu())
    torch.testing.assert_close(loss.cpu().double(), truth, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z.grad.cpu().double(), grad_truth, rtol=1e-4, atol=1e-7)


def test_invariant_to_student_and_member_shifts():
    z = O.randn(3, 40, seed=9)
    u = O.randn(3, 4, 40, seed=10)
    a = edd_ext.ensemble_kl(z, u, reduction="none")
    b = edd_ext.ensemble_kl(z + 100.0, u + 50.0 * O.randn(3, 4, 1, seed=11), reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
