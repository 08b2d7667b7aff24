"""The top-k form of the logit-space losses' targets (edd_ext.logit_top_k, an approximation): its tail against a
numpy computation from the definitions, k = V equal to the dense losses, the cases where the tail summary is exact
(a student constant over the tail for the Gaussian, tail targets equal within each member for the Laplace), masks,
gradcheck and errors."""
import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

import edd_ext as E

FAMILIES = {"gaussian": E.logit_gaussian_nll, "laplace": E.logit_laplace_nll}


def _case(lead=(4,), members=3, vocab=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = 3.0 * torch.randn(*lead, members, vocab, generator=g, dtype=torch.float64)
    loc = torch.randn(*lead, vocab, generator=g, dtype=torch.float64) - 3.0
    rho = 0.3 * torch.randn(*lead, vocab, generator=g, dtype=torch.float64)
    return u, loc, rho


@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
def test_tail_mean_and_pooled_variance_from_the_definitions(teacher_norm):
    u, _, _ = _case()
    t = E.top_k_logit_targets(u, top_k=6, teacher_norm=teacher_norm, temperature=2.0)
    x = u.numpy() / 2.0
    if teacher_norm == "log_softmax":
        x = log_softmax(x, axis=-1)
    elif teacher_norm == "center":
        x = x - x.mean(-1, keepdims=True)
    mean_p = np.exp(log_softmax(u.numpy() / 2.0, axis=-1)).mean(-2)
    for n in range(u.shape[0]):
        listed = np.argsort(-mean_p[n], kind="stable")[:6]
        tail = np.setdiff1d(np.arange(u.shape[-1]), listed)
        np.testing.assert_array_equal(t.indices[n].numpy(), listed)
        np.testing.assert_allclose(t.targets[n].numpy(), x[n][:, listed], rtol=1e-12)
        np.testing.assert_allclose(t.tail_mean[n].numpy(), x[n][:, tail].mean(-1), rtol=1e-12)
        np.testing.assert_allclose(t.tail_variance[n].item(), x[n][:, tail].var(-1).mean(), rtol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_k_equal_to_v_is_the_dense_loss(family):
    u, loc, rho = _case()
    fn = FAMILIES[family]
    a = loc.clone().requires_grad_(), rho.clone().requires_grad_()
    b = loc.clone().requires_grad_(), rho.clone().requires_grad_()
    got = fn(*a, E.top_k_logit_targets(u, top_k=29), reduction="none")
    want = fn(*b, u, reduction="none")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for ga, gb in zip(torch.autograd.grad(got.sum(), a), torch.autograd.grad(want.sum(), b)):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_gaussian_tail_is_exact_for_a_student_constant_over_the_tail():
    u, loc, rho = _case()
    t = E.top_k_logit_targets(u, top_k=5)
    in_tail = torch.ones_like(loc, dtype=torch.bool).scatter(-1, t.indices, False)
    loc = torch.where(in_tail, torch.tensor(-4.0, dtype=torch.float64), loc)
    rho = torch.where(in_tail, torch.tensor(0.7, dtype=torch.float64), rho)
    torch.testing.assert_close(E.logit_gaussian_nll(loc, rho, t, reduction="none"),
                               E.logit_gaussian_nll(loc, rho, u, reduction="none"), rtol=1e-11, atol=1e-10)


def test_laplace_tail_is_exact_when_the_tail_targets_are_equal_within_each_member():
    u, loc, rho = _case()
    u[..., 5:] = u[..., 5:6]  # each member: one logit for all tail classes (the top 5 are among 0..4 by scale)
    u[..., :5] += 10.0
    t = E.top_k_logit_targets(u, top_k=5)
    assert torch.equal(t.indices.sort(-1).values, torch.arange(5).expand(4, 5))
    assert torch.all(t.tail_variance.abs() < 1e-20)
    torch.testing.assert_close(E.logit_laplace_nll(loc, rho, t, reduction="none"),
                               E.logit_laplace_nll(loc, rho, u, reduction="none"), rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_approximation_that_closes_in_as_k_grows(family):
    u, loc, rho = _case(vocab=200)
    want = FAMILIES[family](loc, rho, u)
    errors = [abs(float(FAMILIES[family](loc, rho, E.top_k_logit_targets(u, top_k=k)) - want)) for k in (4, 50, 190)]
    assert errors[-1] < errors[0] and errors[-1] < 1e-2 * abs(float(want))


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_positions_and_gradcheck(family):
    u, loc, rho = _case()
    t = E.top_k_logit_targets(u, top_k=4)
    mask = torch.tensor([True, False, True, True])
    poisoned = t._replace(targets=t.targets.clone(), indices=t.indices.clone())
    poisoned.targets[1] = math.nan
    poisoned.indices[1] = 0
    x = loc.clone()
    x[1] = math.nan
    x.requires_grad_()
    loss = FAMILIES[family](x, rho, poisoned, mask=mask, reduction="none")
    loss.sum().backward()
    assert loss[1] == 0 and torch.equal(x.grad[1], torch.zeros(29)) and torch.isfinite(x.grad).all()
    assert torch.autograd.gradcheck(lambda a, b: FAMILIES[family](a, b, t, reduction="none"),
                                    (loc.clone().requires_grad_(), rho.clone().requires_grad_()))


def test_options_must_match_the_targets_and_shapes_are_checked():
    u, loc, rho = _case()
    t = E.top_k_logit_targets(u, top_k=4, teacher_norm="center")
    with pytest.raises(ValueError, match="the top-k targets were computed with teacher_norm='center'"):
        E.logit_gaussian_nll(loc, rho, t)
    E.logit_gaussian_nll(loc, rho, t, teacher_norm="center")
    with pytest.raises(ValueError, match=r"teacher_logits.tail_mean: expected shape \(4, 3\)"):
        E.logit_laplace_nll(loc, rho, t._replace(tail_mean=t.tail_mean[:, :2]), teacher_norm="center")
    with pytest.raises(ValueError, match="num_classes 29"):
        E.logit_laplace_nll(loc, rho, t._replace(num_classes=30), teacher_norm="center")
    with pytest.raises(ValueError, match=r"top_k: expected an int in \[1, V\]"):
        E.top_k_logit_targets(u, top_k=30)
