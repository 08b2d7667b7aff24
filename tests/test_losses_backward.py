"""The fused losses' backward against float64 oracles in every way autograd can run it: the reduction's factor
folded into the kernel's gradient, the gradient handed to autograd without a copy (or scaled in place) when the
graph is freed after the backward, and the saved gradient left untouched whenever something may read it again
(retain_graph, create_graph, a later in-place change of .grad, views of the student, direct op calls that keep
the gradient output, optimizers, AMP-style loss scaling, torch.compile)."""
import math

import _loss_oracles as O
import pytest
import torch

import edd_ext

V = 37  # odd: exercises the SIMD kernels' row tails
LOSSES = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl", "logit_gaussian_nll", "logit_laplace_nll")
LOGIT = ("logit_gaussian_nll", "logit_laplace_nll")


def _oracle(name):
    if name == "logit_gaussian_nll":
        return lambda loc, rho, u: O.logit_nll("gaussian", loc, rho, u)
    if name == "logit_laplace_nll":
        return lambda loc, rho, u: O.logit_nll("laplace", loc, rho, u)
    return getattr(O, name)


def _case(name, lead=(6,), dtype=torch.float32, seed=0):
    students = [O.randn(*lead, V, seed=seed, dtype=dtype)]
    if name in LOGIT:
        students.append(O.randn(*lead, V, seed=seed + 1, scale=0.3, dtype=dtype))
    u = O.randn(*lead, 3, V, seed=seed + 2, scale=2.0, dtype=dtype)
    return students, u


def _leaves(students):
    return [s.clone().requires_grad_() for s in students]


def _loss(name, students, u, **kw):
    return getattr(edd_ext, name)(*students, u, **kw)


def _truth_grads(name, students, u, mask=None, reduction="mean", weight=1.0):
    """d(weight * reduce(oracle loss))/d(students), float64."""
    xs = [O.f64(s).requires_grad_() for s in students]
    per_position = _oracle(name)(*xs, O.f64(u))
    if mask is not None:
        per_position = torch.where(mask, per_position, torch.zeros((), dtype=O.F64))
    if reduction == "none":
        out = per_position.sum()
    elif reduction == "sum":
        out = per_position.sum()
    else:
        count = int(mask.sum()) if mask is not None else per_position.numel()
        out = per_position.sum() / max(count, 1)
    return torch.autograd.grad(weight * out, xs)


def _assert_truth(got, truth, what=""):
    for g, t in zip(got, truth):
        torch.testing.assert_close(O.f64(g), t, rtol=2e-4, atol=2e-6, msg=lambda m: f"{what}: {m}")


def _saved_pointers():
    """saved_tensors_hooks that record the data pointers of the tensors saved for backward."""
    ptrs = []

    def pack(t):
        ptrs.append(t.data_ptr())
        return t

    return ptrs, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradient_matches_the_oracle_for_each_reduction_with_a_mask(name, reduction):
    students, u = _case(name)
    mask = torch.tensor([True, False, True, True, False, True])
    poisoned = [s.clone() for s in students]
    for s in poisoned:
        s[1] = math.nan  # a masked row: its gradient must be exactly 0 whatever it holds
    xs = _leaves(poisoned)
    out = _loss(name, xs, u, mask=mask, reduction=reduction)
    assert out.shape == ((6,) if reduction == "none" else ())
    (out.sum() if reduction == "none" else out).backward()
    _assert_truth([x.grad for x in xs], _truth_grads(name, students, u, mask, reduction), name)
    for x in xs:
        assert torch.equal(x.grad[1], torch.zeros(V)) and torch.equal(x.grad[4], torch.zeros(V))


@pytest.mark.parametrize("name", LOSSES)
def test_mean_over_no_unmasked_position_is_zero_with_zero_gradient(name):
    students, u = _case(name)
    xs = _leaves(students)
    out = _loss(name, xs, u, mask=torch.zeros(6, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert all(torch.equal(x.grad, torch.zeros_like(x)) for x in xs)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_weighted_and_scaled_losses(name, reduction):
    # an AMP-style loss scale (65536) and a per-position weighting: incoming gradients other than 1
    students, u = _case(name)
    xs = _leaves(students)
    out = _loss(name, xs, u, reduction=reduction)
    if reduction == "none":
        w = torch.linspace(0.5, 3.0, 6)
        (out * w).sum().backward()
        xs64 = [O.f64(s).requires_grad_() for s in students]
        truth = torch.autograd.grad((_oracle(name)(*xs64, O.f64(u)) * w.double()).sum(), xs64)
    else:
        (out * 65536.0).backward()
        truth = _truth_grads(name, students, u, weight=65536.0)
    _assert_truth([x.grad for x in xs], truth, name)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_retain_graph_backward_twice_gives_identical_gradients(name, weight):
    students, u = _case(name)
    once = _leaves(students)
    (_loss(name, once, u) * weight).backward()
    xs = _leaves(students)
    out = _loss(name, xs, u) * weight
    out.backward(retain_graph=True)
    first = [x.grad.clone() for x in xs]
    out.backward(retain_graph=True)
    out.backward()
    for g1, g, x in zip(first, once, xs):
        assert torch.equal(g1, g.grad)
        assert torch.equal(x.grad, (g1 + g1) + g1)
    _assert_truth(first, _truth_grads(name, students, u, weight=weight), name)


@pytest.mark.parametrize("name", LOSSES)
def test_in_place_changes_of_grad_do_not_reach_a_retained_graph(name):
    # zero_grad(set_to_none=False), clipping and unscaling change .grad in place; the retained graph's saved
    # gradient must not see it, also when the student is a view of the leaf
    students, u = _case(name, lead=(2, 3))
    truth = _truth_grads(name, [s.reshape(6, V) for s in students], u.reshape(6, 3, V))
    leaves = _leaves(students)
    out = _loss(name, [x.reshape(6, V) for x in leaves], u.reshape(6, 3, V))
    for _ in range(3):
        out.backward(retain_graph=True)
        _assert_truth([x.grad.reshape(6, V) for x in leaves], truth, name)
        for x in leaves:
            x.grad.mul_(-7.0)
            x.grad.zero_()


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_accumulates_over_two_steps(name):
    students, u = _case(name)
    _, u2 = _case(name, seed=10)
    xs = _leaves(students)
    _loss(name, xs, u).backward()
    _loss(name, xs, u2).backward()
    truth = [a + b for a, b in zip(_truth_grads(name, students, u), _truth_grads(name, students, u2))]
    _assert_truth([x.grad for x in xs], truth, name)


def test_two_losses_on_one_student_with_retain_graph():
    students, u = _case("dirichlet_nll")
    z = _leaves(students)[0]
    total = edd_ext.dirichlet_nll(z, u) + edd_ext.ensemble_kl(z, u) + edd_ext.proxy_dirichlet_kl(z, u)
    truth = [sum(_truth_grads(n, students, u)[0] for n in ("dirichlet_nll", "ensemble_kl", "proxy_dirichlet_kl"))]
    total.backward(retain_graph=True)
    _assert_truth([z.grad], truth)
    total.backward()
    _assert_truth([z.grad], [2 * truth[0]])


@pytest.mark.parametrize("name", LOSSES)
def test_create_graph_and_autograd_grad(name):
    students, u = _case(name)
    xs = _leaves(students)
    out = _loss(name, xs, u)
    got = torch.autograd.grad(out, xs, create_graph=True)
    again = torch.autograd.grad(out, xs)
    truth = _truth_grads(name, students, u)
    _assert_truth(got, truth, name)
    _assert_truth(again, truth, name)


@pytest.mark.parametrize("name", LOSSES)
def test_optimizer_steps_from_the_handed_over_gradient(name):
    # SGD with momentum and weight decay changes the parameters in place and keeps the momentum buffer across
    # steps; zero_grad(set_to_none=False) zeroes .grad in place between steps
    students, u = _case(name)
    xs = _leaves(students)
    plain = [O.f64(s) for s in students]
    opt = torch.optim.SGD(xs, lr=0.1, momentum=0.9, weight_decay=0.01)
    buffers = [torch.zeros_like(p) for p in plain]
    for step in range(3):
        opt.zero_grad(set_to_none=False)
        _loss(name, xs, u).backward()
        truth = _truth_grads(name, plain, u)
        _assert_truth([x.grad for x in xs], truth, f"{name} step {step}")
        opt.step()
        for i, (p, g) in enumerate(zip(plain, truth)):
            d = g + 0.01 * p
            buffers[i] = d if step == 0 else 0.9 * buffers[i] + d
            plain[i] = p - 0.1 * buffers[i]
        for x, p in zip(xs, plain):
            torch.testing.assert_close(O.f64(x.detach()), p, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_the_kernels_gradient_becomes_grad_without_a_copy(name):
    students, u = _case(name)
    xs = _leaves(students)
    ptrs, hooks = _saved_pointers()
    with hooks:
        out = _loss(name, xs, u)
    out.backward()
    assert all(x.grad.data_ptr() in ptrs for x in xs)


@pytest.mark.parametrize("name", LOSSES)
def test_a_retained_graph_gets_a_copy(name):
    students, u = _case(name)
    xs = _leaves(students)
    ptrs, hooks = _saved_pointers()
    with hooks:
        out = _loss(name, xs, u)
    out.backward(retain_graph=True)
    assert not any(x.grad.data_ptr() in ptrs for x in xs)


@pytest.mark.parametrize("reuse_grad", [False, True])
def test_direct_op_calls_keep_their_gradient_output_unless_they_hand_it_over(reuse_grad):
    students, u = _case("dirichlet_nll")
    z = _leaves(students)[0]
    loss, grad = torch.ops.edd_ext.dirichlet_nll(z, u, None, None, 1.0, 2, True, reuse_grad)
    kept = grad.clone()
    (loss * 3.0).backward()
    torch.testing.assert_close(z.grad, 3.0 * kept, rtol=1e-6, atol=0)
    if reuse_grad:
        assert torch.equal(grad, z.grad)  # scaled in place: the documented contract of reuse_grad=True
    else:
        assert torch.equal(grad, kept)


def test_torch_compile_fullgraph_forward_and_backward_all_reductions():
    torch._dynamo.reset()
    students, u = _case("logit_gaussian_nll")
    mask = torch.tensor([True, False, True, True, False, True])

    def total(z, rho):
        return (edd_ext.dirichlet_nll(z, u, mask=mask) + 2.0 * edd_ext.proxy_dirichlet_kl(z, u, reduction="sum")
                + (edd_ext.ensemble_kl(z, u, reduction="none") * torch.arange(6.0)).sum()
                + edd_ext.logit_gaussian_nll(z, rho, u, mask=mask)
                + edd_ext.logit_laplace_nll(z, rho, u, reduction="none").sum())

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, total):
        xs = _leaves(students)
        out = fn(*xs)
        out.backward(retain_graph=True)
        first = [x.grad.clone() for x in xs]
        out.backward()
        results.append((out.detach(), *first, *[x.grad for x in xs]))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
