"""Behaviour shared by every fused loss: masking (exact zeros, NaN isolation), reductions, batch splitting,
teacher shift invariance, dtypes and layouts, structural errors, the nn.Module forms, torch.library.opcheck
and torch.compile(fullgraph=True)."""
import math

import _loss_oracles as O
import pytest
import torch

import edd_ext
from edd_ext import _ops
from edd_ext import reference as R
from edd_ext.types import EnsembleStats

DISTILL = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl")
LOGIT = ("logit_gaussian_nll", "logit_laplace_nll")
ALL = DISTILL + LOGIT
DISTILL_CASES = [(name, as_stats) for name in DISTILL for as_stats in (False, True)] + [(n, False) for n in LOGIT]


def _students(name, lead, v, dtype=torch.float64, seed=0):
    z = O.randn(*lead, v, seed=seed, dtype=dtype)
    if name in LOGIT:
        return [z, O.randn(*lead, v, seed=seed + 100, scale=0.3, dtype=dtype)]
    return [z]


def _apply(module, name, students, teacher, **kw):
    return getattr(module, name)(*students, teacher, **kw)


def _teacher(name, u, as_stats):
    return edd_ext.ensemble_stats(u) if as_stats and name in DISTILL else u


def _grads(loss, students, weights=None):
    return torch.autograd.grad(loss if weights is None else (loss * weights).sum(), students)


# --------------------------------------------------------------------------------------------------
# masking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,as_stats", DISTILL_CASES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_masked_positions_are_exact_zeros_even_with_nan(name, as_stats, reduction, device):
    students = [s.to(device) for s in _students(name, (5,), 9)]
    u = O.randn(5, 3, 9, seed=1).to(device)
    clean_teacher = _teacher(name, u, as_stats)
    mask = torch.tensor([True, False, True, False, True], device=device)
    poisoned = [s.clone() for s in students]
    for s in poisoned:
        s[1] = math.nan
        s[3, 0] = math.inf
    if isinstance(clean_teacher, EnsembleStats):
        teacher = EnsembleStats(*(f.clone() for f in clean_teacher[:-1]), clean_teacher.num_members)
        for f in teacher[:-1]:
            f[1] = math.nan
            f[3] = -math.inf
    else:
        teacher = u.clone()
        teacher[1] = math.nan
        teacher[3] = -math.inf
    xs = [s.requires_grad_() for s in poisoned]
    loss = _apply(edd_ext, name, xs, teacher, mask=mask, reduction=reduction)
    grads = _grads(loss.sum(), xs)
    assert torch.isfinite(loss).all()
    for g in grads:
        assert (g[~mask] == 0).all() and torch.isfinite(g).all()

    keep = mask.nonzero().squeeze(-1)
    sub_teacher = (EnsembleStats(*(f[keep] for f in clean_teacher[:-1]), clean_teacher.num_members)
                   if isinstance(clean_teacher, EnsembleStats) else clean_teacher[keep])
    sub = [s[keep].clone().requires_grad_() for s in students]
    expected = _apply(edd_ext, name, sub, sub_teacher, reduction="none")
    sub_grads = _grads(expected.sum(), sub)
    if reduction == "none":
        assert (loss[~mask] == 0).all()
        torch.testing.assert_close(loss[keep], expected, rtol=0, atol=0)
    elif reduction == "sum":
        torch.testing.assert_close(loss, expected.sum())
    else:
        torch.testing.assert_close(loss, expected.mean())
    scale = 1.0 / len(keep) if reduction == "mean" else 1.0
    for g, sg in zip(grads, sub_grads):
        torch.testing.assert_close(g[keep], sg * scale, rtol=0 if reduction == "none" else 1e-15, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_masked_positions_get_zero_gradient_whatever_the_incoming_gradient(name):
    students = [s.requires_grad_() for s in _students(name, (4,), 6)]
    u = O.randn(4, 2, 6, seed=2)
    mask = torch.tensor([True, False, True, True])
    loss = _apply(edd_ext, name, students, u, mask=mask, reduction="none")
    weights = torch.tensor([1.0, math.nan, 2.0, -1.0], dtype=torch.float64)
    for g in _grads(loss, students, weights):
        assert (g[1] == 0).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("name", ALL)
def test_all_masked_mean_is_zero(name):
    students = [s.requires_grad_() for s in _students(name, (2, 3), 4)]
    u = O.randn(2, 3, 2, 4, seed=3)
    loss = _apply(edd_ext, name, students, u, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    for g in _grads(loss, students):
        assert (g == 0).all()


@pytest.mark.parametrize("name", ALL)
def test_nan_in_one_position_leaves_the_others_alone(name):
    students = _students(name, (3,), 5)
    u = O.randn(3, 2, 5, seed=4)
    clean = _apply(edd_ext, name, students, u, reduction="none")
    bad = [s.clone() for s in students]
    bad[0][1, 2] = math.nan
    u_bad = u.clone()
    u_bad[1, 0, 3] = math.nan
    dirty = _apply(edd_ext, name, bad, u_bad, reduction="none")
    assert torch.isnan(dirty[1])
    torch.testing.assert_close(dirty[[0, 2]], clean[[0, 2]], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# reductions, batch splitting, invariances
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_reductions_are_consistent(name):
    students = _students(name, (2, 3), 5)
    u = O.randn(2, 3, 2, 5, seed=5)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    run = lambda **kw: _apply(edd_ext, name, students, u, **kw)  # noqa: E731
    per_position = run(reduction="none")
    assert per_position.shape == (2, 3)
    torch.testing.assert_close(run(reduction="sum"), per_position.sum())
    torch.testing.assert_close(run(reduction="mean"), per_position.mean())
    torch.testing.assert_close(run(mask=mask, reduction="sum"), per_position[mask].sum())
    torch.testing.assert_close(run(mask=mask, reduction="mean"), per_position[mask].mean())
    torch.testing.assert_close(run(mask=mask, reduction="none"), torch.where(mask, per_position, 0.0))
    torch.testing.assert_close(run(reduction="none"), _apply(R, name, students, u, reduction="none"),
                               rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_splitting_the_batch_changes_nothing(name):
    students = [s.requires_grad_() for s in _students(name, (7,), 13)]
    u = O.randn(7, 3, 13, seed=6)
    whole = _apply(edd_ext, name, students, u, reduction="none")
    whole_grads = _grads(whole.sum(), students)
    parts, part_grads = [], []
    for idx in (slice(0, 3), slice(3, 7)):
        sub = [s.detach()[idx].clone().requires_grad_() for s in students]
        loss = _apply(edd_ext, name, sub, u[idx], reduction="none")
        parts.append(loss)
        part_grads.append(_grads(loss.sum(), sub))
    torch.testing.assert_close(whole, torch.cat(parts), rtol=0, atol=0)
    for i, g in enumerate(whole_grads):
        torch.testing.assert_close(g, torch.cat([pg[i] for pg in part_grads]), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_invariant_to_per_member_teacher_shifts(name):
    students = _students(name, (4,), 50)
    u = O.randn(4, 3, 50, seed=7, scale=2.0)
    shifted = u + 40.0 * O.randn(4, 3, 1, seed=8)
    a = _apply(edd_ext, name, students, u, reduction="none")
    b = _apply(edd_ext, name, students, shifted, reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# dtypes, layouts, autograd plumbing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTILL)
@pytest.mark.parametrize(
    "student_dtype,teacher_dtype",
    [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.float16),
     (torch.float32, torch.float64), (torch.float64, torch.float32)],
)
def test_student_and_teacher_dtypes_may_differ(name, student_dtype, teacher_dtype):
    z = O.randn(3, 40, seed=9, dtype=student_dtype).requires_grad_()
    u = O.randn(3, 4, 40, seed=10, scale=2.0, dtype=teacher_dtype)
    for teacher in (u, edd_ext.ensemble_stats(u)):
        got = getattr(edd_ext, name)(z, teacher, reduction="none")
        (grad,) = torch.autograd.grad(got.sum(), z)
        want = getattr(R, name)(z, teacher, reduction="none")
        (want_grad,) = torch.autograd.grad(want.sum(), z)
        assert got.dtype == want.dtype and grad.dtype == student_dtype
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(grad.double(), want_grad.double(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
def test_non_contiguous_inputs_and_leading_dims(name):
    base = [s for s in _students(name, (4, 6), 2 * 11)]
    students = [s[..., ::2].transpose(0, 1) for s in base]  # [6, 4, 11], strided
    u = O.randn(4, 6, 3, 11, seed=11).transpose(0, 1)  # [6, 4, 3, 11]
    assert not students[0].is_contiguous() and not u.is_contiguous()
    got = _apply(edd_ext, name, students, u, reduction="none")
    want = _apply(edd_ext, name, [s.contiguous() for s in students], u.contiguous(), reduction="none")
    assert got.shape == (6, 4)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name):
    students = [s.requires_grad_() for s in _students(name, (0, 3), 5)]
    u = torch.zeros(0, 3, 2, 5, dtype=torch.float64)
    loss = _apply(edd_ext, name, students, u, reduction="none")
    assert loss.shape == (0, 3)
    assert _apply(edd_ext, name, students, u).item() == 0.0


@pytest.mark.parametrize("name", ALL)
def test_teacher_requiring_grad_is_a_constant(name):
    students = [s.requires_grad_() for s in _students(name, (3,), 5)]
    u = O.randn(3, 2, 5, seed=12).requires_grad_()
    _apply(edd_ext, name, students, u).backward()
    assert u.grad is None and all(s.grad is not None for s in students)


def test_no_gradient_is_computed_without_autograd():
    z, u = O.randn(3, 5), O.randn(3, 2, 5)
    loss, grad = torch.ops.edd_ext.dirichlet_nll(z, u, None, None, 1.0, 0, False)
    assert loss.shape == (3,) and grad.shape == (0,)
    z.requires_grad_()
    with torch.no_grad():
        plain = edd_ext.dirichlet_nll(z, u, reduction="none")
    torch.testing.assert_close(plain, edd_ext.dirichlet_nll(z, u, reduction="none").detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_falls_back_to_the_reference_without_the_extension(name, monkeypatch):
    students = _students(name, (3,), 6)
    u = O.randn(3, 2, 6, seed=13)
    fused = _apply(edd_ext, name, students, u, reduction="none")
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setattr(_ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="compiled extension is not available"):
        fallback = _apply(edd_ext, name, students, u, reduction="none")
    torch.testing.assert_close(fallback, fused, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# structural errors
# --------------------------------------------------------------------------------------------------

Z, U = torch.zeros(2, 5), torch.zeros(2, 3, 5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: edd_ext.dirichlet_nll(Z, torch.zeros(2, 3, 6)),
         r"teacher: expected .*\(2, 'M', 5\).*\(2, 5\).*\(2, 3, 6\)"),
        (lambda: edd_ext.ensemble_kl(Z, torch.zeros(3, 2, 5)), r"teacher: .*\(3, 2, 5\)"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, edd_ext.ensemble_stats(torch.zeros(2, 3, 4))),
         r"mean_probs of shape \(2, 5\).*\(2, 4\)"),
        (lambda: edd_ext.logit_laplace_nll(Z, Z, torch.zeros(2, 3, 4)), r"teacher_logits.*\(2, 5\).*\(2, 3, 4\)"),
        (lambda: edd_ext.logit_gaussian_nll(Z, torch.zeros(2, 4), U), r"log_scale.*\(2, 5\).*\(2, 4\)"),
        (lambda: edd_ext.logit_gaussian_nll(Z, Z.double(), U), r"log_scale: expected the dtype of loc"),
        (lambda: edd_ext.logit_gaussian_nll(Z, Z, edd_ext.ensemble_stats(U)), r"teacher_logits: .*EnsembleStats"),
        (lambda: edd_ext.dirichlet_nll(Z, U.to("meta")), r"teacher: expected device cpu"),
        (lambda: edd_ext.logit_gaussian_nll(Z, Z, U.to("meta")), r"teacher_logits: expected device cpu"),
        (lambda: edd_ext.ensemble_kl(Z, U, mask=torch.ones(2, device="meta", dtype=torch.bool)),
         r"mask: expected device"),
        (lambda: edd_ext.dirichlet_nll(torch.zeros(2, 1), torch.zeros(2, 3, 1)), "V >= 2"),
        (lambda: edd_ext.dirichlet_nll(Z, torch.zeros(2, 0, 5)), "M >= 1"),
        (lambda: edd_ext.dirichlet_nll(Z.long(), U), "student_logits: expected a floating dtype"),
        (lambda: edd_ext.dirichlet_nll(Z, [1.0]), "teacher: expected a Tensor"),
        (lambda: edd_ext.dirichlet_nll(Z, U, reduction="avg"), "reduction"),
        (lambda: edd_ext.dirichlet_nll(Z, U, model_offset=-1.0), "model_offset"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, direction="both"), "direction"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, precision="max"), "precision"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, eps=0.0), "eps"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, max_precision=0.0), "max_precision"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, target_offset=math.nan), "target_offset"),
        (lambda: edd_ext.proxy_dirichlet_kl(Z, U, direction="forward", reference_code_compat=True),
         "reference_code_compat"),
        (lambda: edd_ext.ensemble_kl(Z, U, mask=torch.ones(2)), "mask: expected dtype torch.bool"),
        (lambda: edd_ext.ensemble_kl(Z, U, mask=torch.ones(3, dtype=torch.bool)), r"mask: expected shape \(2,\)"),
        (lambda: edd_ext.logit_gaussian_nll(Z, Z, U, teacher_norm="z"), "teacher_norm"),
        (lambda: edd_ext.logit_laplace_nll(Z, Z, U, temperature=0.0), "temperature"),
        (lambda: edd_ext.logit_laplace_nll(Z, Z, U, min_scale=-1.0), "min_scale"),
        (lambda: edd_ext.nn.ProxyDirichletKLLoss(direction="sideways"), "direction"),
        (lambda: edd_ext.nn.LogitGaussianNLLLoss(teacher_norm="softmax"), "teacher_norm"),
        (lambda: edd_ext.nn.EnsembleKLLoss(reduction="max"), "reduction"),
    ],
)
def test_structural_errors_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: torch.ops.edd_ext.dirichlet_nll(Z, U, Z, None, 1.0, 2, True), "exactly one of them, got both"),
        (lambda: torch.ops.edd_ext.ensemble_kl(Z, None, None, None, 2, True), "exactly one of them, got neither"),
        (lambda: torch.ops.edd_ext.ensemble_kl(Z, None, torch.zeros(2, 4), None, 2, True),
         r"mean_probs: expected the shape"),
        (lambda: torch.ops.edd_ext.proxy_dirichlet_kl(Z, None, Z, None, None, "reverse", "mkl", 1.0, 1.0, 1e-7, None,
                                                      False, 2, True), "teacher_measure"),
        (lambda: torch.ops.edd_ext.proxy_dirichlet_kl(Z, U, None, None, None, "up", "mkl", 1.0, 1.0, 1e-7, None, False,
                                                      2, True), "direction"),
        (lambda: torch.ops.edd_ext.logit_nll(Z, Z, U, None, "cauchy", "none", 1.0, 0.0, 2, True), "family"),
        (lambda: torch.ops.edd_ext.logit_nll(Z, Z, torch.zeros(2, 3, 4), None, "gaussian", "none", 1.0, 0.0, 2, True),
         r"teacher_logits: expected \[\*, M, V\] logits matching loc \[2, 5\]"),
        (lambda: torch.ops.edd_ext.dirichlet_nll(Z, U, None, torch.ones(2, 5, dtype=torch.bool), 1.0, 2, True),
         r"mask: expected shape \[2\]"),
        (lambda: torch.ops.edd_ext.ensemble_kl(Z, U, None, None, 3, True), r"reduction: expected 0 \(none\)"),
    ],
)
def test_op_level_checks_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------------
# nn.Module forms
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module,name,kw",
    [
        (edd_ext.nn.DirichletNLLLoss, "dirichlet_nll", {"model_offset": 0.5}),
        (edd_ext.nn.ProxyDirichletKLLoss, "proxy_dirichlet_kl", {"direction": "forward", "precision": "epkl"}),
        (edd_ext.nn.EnsembleKLLoss, "ensemble_kl", {}),
        (edd_ext.nn.LogitGaussianNLLLoss, "logit_gaussian_nll", {"teacher_norm": "center", "min_scale": 0.1}),
        (edd_ext.nn.LogitLaplaceNLLLoss, "logit_laplace_nll", {"temperature": 2.0}),
    ],
)
def test_modules_match_the_functions(module, name, kw):
    students = _students(name, (2, 3), 7)
    u = O.randn(2, 3, 4, 7, seed=14)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    loss_fn = module(reduction="sum", **kw)
    assert "reduction='sum'" in repr(loss_fn)
    torch.testing.assert_close(loss_fn(*students, u, mask=mask),
                               _apply(edd_ext, name, students, u, mask=mask, reduction="sum", **kw))


# --------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# --------------------------------------------------------------------------------------------------


def _op_cases(dtype, device):
    z = O.randn(2, 3, 9, seed=15, dtype=dtype).to(device).requires_grad_()
    rho = O.randn(2, 3, 9, seed=16, scale=0.3, dtype=dtype).to(device).requires_grad_()
    u = O.randn(2, 3, 4, 9, seed=17, dtype=dtype).to(device)
    stats = edd_ext.ensemble_stats(u)
    mask = torch.tensor([[True, False, True], [True, True, False]], device=device)
    ops = torch.ops.edd_ext
    # reduction: 0 none, 1 sum, 2 mean
    yield ops.dirichlet_nll.default, (z, u, None, mask, 1.0, 2, True)
    yield ops.dirichlet_nll.default, (z, u, None, mask, 1.0, 0, True)
    # compute_grad=False: no gradient is made, so the student must not require one
    yield ops.dirichlet_nll.default, (z.detach(), None, stats.mean_log_probs, None, 0.5, 1, False)
    yield ops.proxy_dirichlet_kl.default, (z, u, None, None, mask, "reverse", "mkl", 1.0, 1.0, 1e-7, None, False, 2,
                                           True)
    yield ops.proxy_dirichlet_kl.default, (z, None, stats.mean_probs, stats.epkl, None, "forward", "epkl", 0.5, 2.0,
                                           1e-3, 50.0, False, 1, True)
    yield ops.proxy_dirichlet_kl.default, (z, u, None, None, None, "reverse", "mkl", 1.0, 1.0, 1e-7, None, True, 0,
                                           True)
    yield ops.ensemble_kl.default, (z, u, None, mask, 2, True)
    yield ops.ensemble_kl.default, (z.detach(), None, stats.mean_probs, None, 0, False)
    yield ops.logit_nll.default, (z, rho, u, mask, "gaussian", "log_softmax", 1.0, 0.0, 2, True)
    yield ops.logit_nll.default, (z, rho, u, None, "laplace", "center", 2.0, 0.1, 1, True)


def test_opcheck(device):
    for op, args in _op_cases(torch.float32, device):
        torch.library.opcheck(op, args)


def test_opcheck_reduced_precision_student(device):
    # bfloat16 students: float32 loss, bfloat16 gradient (the fake kernels must say the same)
    cases = list(_op_cases(torch.bfloat16, device))
    for op, args in (cases[0], cases[-1]):
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_forward_and_backward(device):
    torch._dynamo.reset()
    z = O.randn(3, 4, 11, seed=18, dtype=torch.float32).to(device)
    rho = O.randn(3, 4, 11, seed=19, scale=0.3, dtype=torch.float32).to(device)
    u = O.randn(3, 4, 2, 11, seed=20, dtype=torch.float32).to(device)
    mask = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)).to(device) > 0.3
    kl = edd_ext.nn.ProxyDirichletKLLoss(direction="forward")

    def total(z, rho):
        stats = edd_ext.ensemble_stats(u)
        return (edd_ext.dirichlet_nll(z, u, mask=mask) + kl(z, stats, mask=mask)
                + edd_ext.proxy_dirichlet_kl(z, u, reduction="sum") + edd_ext.ensemble_kl(z, stats, mask=mask)
                + edd_ext.logit_gaussian_nll(z, rho, u, mask=mask)
                + edd_ext.logit_laplace_nll(z, rho, u, reduction="none").sum())

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, total):
        a, b = z.clone().requires_grad_(), rho.clone().requires_grad_()
        loss = fn(a, b)
        loss.backward()
        results.append((loss, a.grad, b.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_loss_ops_module_exports():
    assert set(edd_ext.losses.__all__) == set(edd_ext._signatures.LOSSES)
    for name in ALL:
        assert name in edd_ext.__all__
    assert "nn" in edd_ext.__all__
