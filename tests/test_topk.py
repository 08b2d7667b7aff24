"""The compact top-k teacher statistics (SPEC section 1.1) and the losses that read them: against the float64
oracle of tests/_topk_oracle.py (definitions, not the kernels' identities), k = V against the dense path, the tail
definition, masks (NaN and garbage indices included), gradients (gradcheck), errors, the plain-PyTorch fallback,
opcheck and torch.compile."""
import math

import _topk_oracle as O
import numpy as np
import pytest
import torch

import edd_ext as E
from edd_ext import reference as R

LOSSES = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl")
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def logits(*shape, seed=0, scale=3.0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype).to(device)


def oracle_loss(name, z, target_p, target_logp, rmi, num_classes):
    if name == "dirichlet_nll":
        return O.dirichlet_nll(z, target_logp)
    if name == "proxy_dirichlet_kl":
        return O.proxy_dirichlet_kl(z, target_p, rmi, num_classes)
    return O.ensemble_kl(z, target_p)


def f64(x):
    return x.detach().cpu().double().numpy()


# --------------------------------------------------------------------------------------------------
# ensemble_stats(top_k=k)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,members,vocab,k", [((3,), 1, 37, 5), ((2, 3), 4, 1271, 64), ((), 3, 300, 1)])
def test_top_k_stats_match_the_definitions(dtype, lead, members, vocab, k, device):
    x = logits(*lead, members, vocab, dtype=dtype, device=device)
    s = E.ensemble_stats(x, top_k=k)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert isinstance(s, E.TopKEnsembleStats) and s.num_classes == vocab and s.num_members == members
    assert s.indices.dtype == torch.int64 and s.indices.shape == (*lead, k) and s.top_k == k
    assert s.mean_probs.dtype == out_dtype and s.tail_mass.shape == lead and s.rmi.shape == lead
    mean_p, mean_logp, rmi, epkl = O.dense(x)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-7)
    idx = s.indices.cpu().numpy()
    if dtype == torch.float64:
        np.testing.assert_array_equal(idx, O.top_k(mean_p, mean_logp, k)["indices"])
    else:  # float32 math may swap two near-equal classes: check that the listed set is a top-k set of the truth
        listed = np.take_along_axis(mean_p, idx, -1)
        kth = -np.sort(-mean_p, axis=-1)[..., k - 1:k]
        assert (listed >= kth * (1 - 1e-5)).all()
        assert (np.diff(f64(s.mean_probs), axis=-1) <= 0).all(), "listed by decreasing mean probability"
    want = O.top_k(mean_p, mean_logp, k, indices=idx)  # the tail of the chosen classes, summed over the tail
    for field in ("mean_probs", "mean_log_probs", "tail_mass", "tail_mean_log_prob"):
        np.testing.assert_allclose(f64(getattr(s, field)), want[field], err_msg=field, **tol)
    np.testing.assert_allclose(f64(s.rmi), rmi, **tol)
    np.testing.assert_allclose(f64(s.epkl), epkl, **tol)
    dense = E.ensemble_stats(x)
    for field in ("total", "data", "mutual_information", "epkl", "rmi"):  # the measures are the dense ones
        torch.testing.assert_close(getattr(s, field), getattr(dense, field), rtol=0, atol=0)


def test_k_equal_to_v_is_the_dense_statistics_exactly(device):
    x = logits(4, 3, 41, device=device)
    s = E.ensemble_stats(x, top_k=41)
    dense = E.ensemble_stats(x)
    assert torch.equal(s.tail_mass, torch.zeros(4, device=device))
    assert torch.equal(s.tail_mean_log_prob, torch.zeros(4, device=device))
    back = R.top_k_dense_stats(s)
    assert torch.equal(back.mean_probs, dense.mean_probs) and torch.equal(back.mean_log_probs, dense.mean_log_probs)


def test_tail_keeps_its_digits_when_the_top_k_hold_nearly_all_the_mass():
    # a peaked ensemble: the tail mass is ~1e-9, far below float32's rounding of 1 - sum(listed)
    x = logits(6, 3, 500, scale=1.0, dtype=torch.float64)
    x[..., 0] += 30.0
    x32 = x.float()
    s = E.ensemble_stats(x32, top_k=4)
    mean_p, mean_logp, _, _ = O.dense(x32)
    want = O.top_k(mean_p, mean_logp, 4, indices=s.indices.numpy())["tail_mass"]
    assert (want < 1e-8).all()
    np.testing.assert_allclose(f64(s.tail_mass), want, rtol=1e-4)


def test_ties_go_to_the_smaller_class(device):
    x = torch.zeros(2, 3, 10, device=device)
    x[..., 7] = 1.0
    x[..., 3] = 1.0  # classes 3 and 7 tie for the top; the eight others tie below them
    s = E.ensemble_stats(x, top_k=4)
    assert s.indices.tolist() == [[3, 7, 0, 1], [3, 7, 0, 1]]
    assert torch.equal(R.ensemble_stats(x.cpu(), top_k=4).indices, s.indices.cpu())


def test_neg_inf_logits_give_a_finite_tail_or_an_exact_neg_inf_mean(device):
    x = logits(2, 2, 12, device=device)
    x[0, :, 5] = -math.inf  # every member: pi^ = 0, l- = -inf, in the tail
    x[1, 0, 2] = -math.inf  # one member: l- = -inf; class 2 may be listed
    x[1, 1, 2] = 20.0
    s = E.ensemble_stats(x, top_k=3)
    assert 2 in s.indices[1].tolist() and s.mean_log_probs[1, 0] == -math.inf
    assert s.tail_mean_log_prob[0] == -math.inf and torch.isfinite(s.tail_mean_log_prob[1])
    assert torch.isfinite(s.tail_mass).all()


def test_top_k_with_temperature_and_smoothing(device):
    x = logits(3, 2, 50, dtype=torch.float64, device=device)
    s = E.ensemble_stats(x, top_k=7, temperature=2.0, smoothing=0.1)
    mean_p, mean_logp, rmi, _ = O.dense(x, temperature=2.0, smoothing=0.1)
    want = O.top_k(mean_p, mean_logp, 7)
    np.testing.assert_array_equal(s.indices.cpu().numpy(), want["indices"])
    for field in ("mean_probs", "mean_log_probs", "tail_mass", "tail_mean_log_prob"):
        np.testing.assert_allclose(f64(getattr(s, field)), want[field], rtol=1e-10, atol=1e-12, err_msg=field)


def test_fallback_matches_the_kernel():
    x = logits(5, 3, 97, dtype=torch.float64)
    fused, plain = E.ensemble_stats(x, top_k=9), R.ensemble_stats(x, top_k=9)
    assert torch.equal(fused.indices, plain.indices) and fused.num_classes == plain.num_classes
    for field in E.TopKEnsembleStats._fields[1:-2]:
        torch.testing.assert_close(getattr(fused, field), getattr(plain, field), rtol=1e-12, atol=1e-14, msg=field)


@pytest.mark.parametrize("top_k", [0, 38, 2.0, True])
def test_top_k_out_of_range_is_a_value_error(top_k):
    with pytest.raises(ValueError, match=r"top_k: expected an int in \[1, V\] = \[1, 37\]"):
        E.ensemble_stats(logits(2, 3, 37), top_k=top_k)


# --------------------------------------------------------------------------------------------------
# the losses with a TopKEnsembleStats teacher
# --------------------------------------------------------------------------------------------------


def _case(vocab=37, k=5, lead=(6,), seed=0, dtype=torch.float64, device="cpu"):
    u = logits(*lead, 3, vocab, seed=seed + 1, dtype=dtype, device=device)
    z = logits(*lead, vocab, seed=seed, scale=1.5, dtype=dtype, device=device)
    return z, u, E.ensemble_stats(u, top_k=k)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("k", [1, 5, 36, 37])
def test_loss_and_gradient_match_the_oracle_of_the_filled_target(name, k, device):
    z, u, s = _case(k=k, device=device)
    mean_p, mean_logp, rmi, _ = O.dense(u)
    target_p, target_logp = O.filled(O.top_k(mean_p, mean_logp, k), 37)
    z64 = z.detach().cpu().double().requires_grad_()
    want = oracle_loss(name, z64, target_p, target_logp, rmi, 37)
    (want_grad,) = torch.autograd.grad(want.sum(), z64)
    x = z.clone().requires_grad_()
    got = getattr(E, name)(x, s, reduction="none")
    got.sum().backward()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(x.grad.cpu(), want_grad, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_k_equal_to_v_equals_the_dense_loss(name, dtype, device):
    z, u, s = _case(vocab=45, k=45, dtype=dtype, device=device)
    dense = E.ensemble_stats(u)
    x1, x2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    a = getattr(E, name)(x1, s, reduction="none")
    b = getattr(E, name)(x2, dense, reduction="none")
    a.sum().backward()
    b.sum().backward()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(x1.grad, x2.grad, **tol)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("student_dtype,stats_dtype", [
    (torch.float32, torch.float32), (torch.float32, torch.float16), (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32)])
def test_reduced_precision_matches_the_float64_path(name, student_dtype, stats_dtype, device):
    # e.g. a cache's float16 values with a float32 student (the SIMD kernels): against the same rounded inputs
    # in float64
    z, u, s64 = _case(vocab=203, k=17, dtype=torch.float64, device=device)
    s = s64._replace(mean_probs=s64.mean_probs.to(stats_dtype), mean_log_probs=s64.mean_log_probs.to(stats_dtype))
    z = z.to(student_dtype)
    rounded = s._replace(mean_probs=s.mean_probs.double(), mean_log_probs=s.mean_log_probs.double())
    x, x64 = z.clone().requires_grad_(), z.double().requires_grad_()
    got = getattr(E, name)(x, s, reduction="none")
    want = getattr(E, name)(x64, rounded, reduction="none")
    got.sum().backward()
    want.sum().backward()
    assert got.dtype == torch.float32 and x.grad.dtype == student_dtype
    scale = want.abs().max().item()
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * scale + 1e-5)
    grad_tol = 1e-2 if student_dtype != torch.float32 else 1e-4
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=grad_tol, atol=grad_tol * x64.grad.abs().max().item())


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_masked_positions_are_exact_zeros_whatever_they_hold(name, reduction, device):
    z, u, s = _case(device=device)
    mask = torch.tensor([True, False, True, False, True, True], device=device)
    poisoned = s._replace(indices=s.indices.clone(), mean_probs=s.mean_probs.clone(), tail_mass=s.tail_mass.clone())
    poisoned.indices[1] = 0  # repeated classes
    poisoned.indices[3, 0] = 10 ** 6  # out of range
    poisoned.mean_probs[1] = math.nan
    poisoned.tail_mass[3] = math.nan
    zp = z.clone()
    zp[1] = math.nan
    for module in (E, R):
        x = zp.clone().requires_grad_()
        loss = getattr(module, name)(x, poisoned, mask=mask, reduction=reduction)
        (loss.sum() if reduction == "none" else loss).backward()
        assert torch.isfinite(loss).all() and torch.isfinite(x.grad).all()
        assert (x.grad[~mask] == 0).all()
        keep = mask.nonzero().squeeze(-1)
        sub = E.TopKEnsembleStats(*(f[keep] for f in s[:-2]), s.num_classes, s.num_members)
        y = z[keep].clone().requires_grad_()
        expected = getattr(E, name)(y, sub, reduction="none")
        expected.sum().backward()
        if reduction == "none":
            assert (loss[~mask] == 0).all()
            torch.testing.assert_close(loss[keep], expected, rtol=1e-12, atol=1e-12)
        else:
            total = expected.sum() / (len(keep) if reduction == "mean" else 1)
            torch.testing.assert_close(loss, total, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_gradcheck(name):
    z, _, s = _case(vocab=9, k=3, lead=(2,))
    x = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: getattr(E, name)(t, s, reduction="none"), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_fallback_matches_the_kernel_loss(name):
    z, _, s = _case(vocab=53, k=8)
    x, y = z.clone().requires_grad_(), z.clone().requires_grad_()
    a, b = getattr(E, name)(x, s), getattr(R, name)(y, s)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-12)


def test_proxy_options_and_module_form():
    z, u, s = _case(vocab=31, k=4)
    dense = R.top_k_dense_stats(s)
    for options in (dict(direction="forward", precision="epkl", max_precision=50.0), dict(reference_code_compat=True),
                    dict(model_offset=0.5, target_offset=2.0)):
        a = E.proxy_dirichlet_kl(z, s, reduction="none", **options)
        b = E.proxy_dirichlet_kl(z, dense, reduction="none", **options)
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=str(options))
    module = E.nn.ProxyDirichletKLLoss(direction="forward")
    torch.testing.assert_close(module(z, s), E.proxy_dirichlet_kl(z, s, direction="forward"))
    torch.testing.assert_close(E.nn.DirichletNLLLoss(model_offset=0.0)(z, s),
                               E.dirichlet_nll(z, dense, model_offset=0.0), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
def test_bad_indices_are_value_errors(name, device):
    z, _, s = _case(device=device)
    if device.type == "cuda":
        pytest.skip("the CUDA kernels report bad indices with a device assertion")
    out_of_range = s._replace(indices=s.indices.clone())
    out_of_range.indices[2, 1] = 37
    with pytest.raises(ValueError, match=r"indices: expected classes in \[0, V\) = \[0, 37\), got 37 at position 2"):
        getattr(E, name)(z, out_of_range)
    repeated = s._replace(indices=s.indices.clone())
    repeated.indices[4, 2] = repeated.indices[4, 0]
    with pytest.raises(ValueError, match="indices: expected k distinct classes per position, got class .* twice "
                                         "at position 4"):
        getattr(E, name)(z, repeated)


def test_structural_errors_name_the_field():
    z, u, s = _case()
    with pytest.raises(ValueError, match=r"teacher.tail_mass: expected shape \(6,\)"):
        E.ensemble_kl(z, s._replace(tail_mass=s.tail_mass[:3]))
    with pytest.raises(ValueError, match="teacher.indices: expected dtype torch.int64 or torch.int32"):
        E.ensemble_kl(z, s._replace(indices=s.indices.float()))
    with pytest.raises(ValueError, match=r"teacher.mean_probs: expected the shape of teacher.indices \(6, 5\)"):
        E.ensemble_kl(z, s._replace(mean_probs=s.mean_probs[:, :4]))
    with pytest.raises(ValueError, match="num_classes 37 .* got indices of shape .* and num_classes 40"):
        E.ensemble_kl(z, s._replace(num_classes=40))
    with pytest.raises(ValueError, match="teacher_logits: the logit-space losses need every member's logits"):
        E.logit_gaussian_nll(z, z, s)


def test_int32_indices_as_a_cache_stores_them():
    z, _, s = _case()
    a = E.dirichlet_nll(z, s)
    b = E.dirichlet_nll(z, s._replace(indices=s.indices.int()))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# --------------------------------------------------------------------------------------------------


def test_opcheck_of_every_top_k_op():
    from torch.library import opcheck

    z, u, s = _case(vocab=23, k=4, lead=(3,), dtype=torch.float32)
    z = z.requires_grad_()
    mask = torch.tensor([True, False, True])
    opcheck(torch.ops.edd_ext.topk_ensemble_stats.default, (u, 4, 1.0, 0.0))
    for reduction, grad in ((0, True), (2, True), (1, False)):
        x = z if grad else z.detach()  # compute_grad=False: no gradient is made, so the student must not need one
        opcheck(torch.ops.edd_ext.topk_dirichlet_nll.default,
                (x, s.indices, s.mean_log_probs, s.tail_mean_log_prob, mask, 1.0, reduction, grad))
        opcheck(torch.ops.edd_ext.topk_proxy_dirichlet_kl.default,
                (x, s.indices, s.mean_probs, s.tail_mass, s.rmi, mask, "reverse", "mkl", 1.0, 1.0, 1.1920929e-7, None,
                 False, reduction, grad))
        opcheck(torch.ops.edd_ext.topk_ensemble_kl.default,
                (x, s.indices, s.mean_probs, s.tail_mass, None, reduction, grad))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    z, u, _ = _case(vocab=29, k=6, dtype=torch.float32)
    mask = torch.tensor([True, True, False, True, True, False])

    def total(x):
        s = E.ensemble_stats(u, top_k=6)
        return (E.dirichlet_nll(x, s, mask=mask) + E.proxy_dirichlet_kl(x, s, reduction="sum")
                + (E.ensemble_kl(x, s, reduction="none") * torch.arange(6.0)).sum())

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, total):
        x = z.clone().requires_grad_()
        out = fn(x)
        out.backward()
        results.append((out.detach(), x.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
