"""The fused linear losses (SPEC section 2.5) against the unfused path, ``E.<loss>(F.linear(input, W, b), teacher)``:
value and gradients of input, weight and bias for every loss and every teacher form (logits, EnsembleStats,
stacked and per-member LinearTeachers), masks with NaN in the masked rows (the CPU gather path and the
zero-and-skip path of other devices), chunk sizes that do and do not divide N, N = 0 and N = 1; gradcheck;
float16 / bfloat16 against float64 with the loss tests' tolerance rule; the reference fallback; errors; the
nn.Module forms; opcheck and torch.compile(fullgraph=True)."""
import inspect
import math

import _loss_oracles as O
import pytest
import torch
import torch.nn.functional as F

import edd_ext as E
from edd_ext import _ops, reference
from edd_ext._ops import linear as _linear_ops
from edd_ext.types import EnsembleStats, LinearTeachers, TopKEnsembleStats

LOSSES = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl", "logit_gaussian_nll", "logit_laplace_nll")
LOGIT = ("logit_gaussian_nll", "logit_laplace_nll")
FORMS = ("logits", "stats", "top_k", "stacked", "pairs")
STATS_FORMS = ("stats", "top_k")  # the categorical and Dirichlet losses only
TOP_K = 5
D, V, M = 6, 13, 3
WIDTHS = (4, 7, 5)  # the per-member form's hidden widths


def _cases():
    for loss in LOSSES:
        for form in FORMS:
            if not (loss in LOGIT and form in STATS_FORMS):
                yield loss, form


class Problem:
    """Student hidden states and output layer(s), and one teacher in a given form with its [*, M, V] logits."""

    def __init__(self, loss, form, lead=(2, 4), dtype=torch.float64, seed=0, teacher_dtype=None):
        teacher_dtype = teacher_dtype or dtype
        self.loss, self.form = loss, form
        self.input = O.randn(*lead, D, seed=seed, dtype=dtype)
        heads = 2 if loss in LOGIT else 1
        self.weights = [O.randn(V, D, seed=seed + 1 + h, scale=0.5, dtype=dtype) for h in range(heads)]
        self.biases = [O.randn(V, seed=seed + 3, scale=0.3, dtype=dtype), None][:heads]
        if heads == 2:
            self.weights[1].mul_(0.3)
        if form == "pairs":
            hidden = [O.randn(*lead, w, seed=seed + 10 + m, dtype=teacher_dtype) for m, w in enumerate(WIDTHS)]
            weight = [O.randn(V, w, seed=seed + 20 + m, dtype=teacher_dtype) for m, w in enumerate(WIDTHS)]
            bias = [O.randn(V, seed=seed + 30 + m, dtype=teacher_dtype) for m in range(len(WIDTHS))]
            bias[1] = None
            self.teacher = LinearTeachers.from_pairs(list(zip(hidden, weight, bias)))
            self.logits = torch.stack([F.linear(h, w, b) for h, w, b in zip(hidden, weight, bias)], dim=-2)
        else:
            hidden = O.randn(*lead, M, 5, seed=seed + 10, dtype=teacher_dtype)
            weight = O.randn(M, V, 5, seed=seed + 11, dtype=teacher_dtype)
            bias = O.randn(M, V, seed=seed + 12, dtype=teacher_dtype)
            self.logits = torch.einsum("...md,mvd->...mv", hidden, weight) + bias
            self.teacher = {"logits": self.logits, "stacked": LinearTeachers(hidden, weight, bias)}.get(form)
            if form == "stats":
                self.teacher = E.ensemble_stats(self.logits)
            if form == "top_k":
                self.teacher = E.ensemble_stats(self.logits, top_k=TOP_K)

    def params(self):
        return [self.input, *self.weights, *(b for b in self.biases if b is not None)]

    def leaves(self):
        return [p.detach().clone().requires_grad_() for p in self.params()]

    def _split(self, leaves):
        x, rest = leaves[0], leaves[1:]
        weights, rest = rest[:len(self.weights)], rest[len(self.weights):]
        biases = [None if b is None else rest.pop(0) for b in self.biases]
        return x, weights, biases

    def fused(self, leaves, fn=None, **kw):
        x, weights, biases = self._split(leaves)
        fn = fn or getattr(E, "linear_" + self.loss)
        if self.loss in LOGIT:
            return fn(x, *weights, self.teacher, loc_bias=biases[0], log_scale_bias=biases[1], **kw)
        return fn(x, weights[0], self.teacher, linear_bias=biases[0], **kw)

    def unfused(self, leaves, module=E, **kw):
        """The logit-level loss (``module`` = ``edd_ext`` or ``edd_ext.reference``) of the linear layers."""
        kw.pop("chunk_size", None)
        x, weights, biases = self._split(leaves)
        students = [F.linear(x, w, b) for w, b in zip(weights, biases)]
        teacher = self.teacher if self.form in STATS_FORMS else self.logits
        return getattr(module, self.loss)(*students, teacher, **kw)


def _value_and_grads(fn, leaves, weight=None):
    out = fn(leaves)
    total = out.sum() if weight is None else (out * weight).sum()
    grads = torch.autograd.grad(total, leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]


def _assert_same(problem, rtol=1e-10, atol=1e-12, weight=None, **kw):
    got = _value_and_grads(lambda ls: problem.fused(ls, **kw), problem.leaves(), weight)
    want = _value_and_grads(lambda ls: problem.unfused(ls, **kw), problem.leaves(), weight)
    names = ["loss", "grad input"] + [f"grad parameter {i}" for i in range(len(got[1]) - 1)]
    for name, g, w in zip(names, [got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    return got


# --------------------------------------------------------------------------------------------------
# equality with the unfused path (float64)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss,form", list(_cases()))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_matches_the_unfused_path(loss, form, reduction):
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    _assert_same(Problem(loss, form), chunk_size=3, reduction=reduction, mask=mask)


@pytest.mark.parametrize("chunk_size", [None, 1, 2, 3, 5, 8, 100])
@pytest.mark.parametrize("loss", ["proxy_dirichlet_kl", "logit_gaussian_nll"])
def test_chunk_sizes_that_do_and_do_not_divide_n(loss, chunk_size):
    _assert_same(Problem(loss, "stacked"), chunk_size=chunk_size)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_weighted_per_position_losses(loss, reduction):
    # an incoming gradient other than 1: per position for "none" (the recomputing backward), a scalar otherwise
    weight = O.randn(2, 4, seed=5) if reduction == "none" else torch.tensor(-2.5, dtype=torch.float64)
    _assert_same(Problem(loss, "pairs"), chunk_size=3, reduction=reduction, weight=weight)


@pytest.mark.parametrize("loss", LOSSES)
def test_options_reach_the_loss(loss):
    options = {
        "dirichlet_nll": dict(model_offset=0.5),
        "proxy_dirichlet_kl": dict(direction="forward", precision="epkl", model_offset=0.7, target_offset=2.0,
                                   eps=1e-3, max_precision=40.0),
        "ensemble_kl": {},
        "logit_gaussian_nll": dict(teacher_norm="center", temperature=2.0, min_scale=0.1),
        "logit_laplace_nll": dict(teacher_norm="none", temperature=0.5, min_scale=0.05),
    }[loss]
    _assert_same(Problem(loss, "stacked", seed=3), chunk_size=5, **options)
    if loss == "proxy_dirichlet_kl":
        _assert_same(Problem(loss, "stats", seed=3), reference_code_compat=True)


@pytest.mark.parametrize("lead", [(0,), (1,), (0, 3), (1, 1)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_empty_and_single_position(lead, reduction):
    for loss in ("dirichlet_nll", "logit_laplace_nll"):
        out, grads = _assert_same(Problem(loss, "stacked", lead=lead), reduction=reduction)
        assert out.shape == (lead if reduction == "none" else ())


def test_leading_dims_and_non_contiguous_hidden_states():
    p = Problem("ensemble_kl", "stacked", lead=(3, 4))
    p.input = p.input.transpose(0, 1).contiguous().transpose(0, 1)
    assert not p.input.is_contiguous()
    _assert_same(p, chunk_size=5, reduction="none")


@pytest.mark.parametrize("form", ["logits", "pairs"])
def test_teachers_of_another_dtype(form):
    p = Problem("proxy_dirichlet_kl", form, dtype=torch.float32, teacher_dtype=torch.bfloat16)
    _assert_same(p, rtol=1e-5, atol=1e-6, chunk_size=3)


# --------------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------------


def _poisoned(problem, mask):
    """The problem with NaN / inf in the masked rows of the hidden states and of every teacher tensor."""
    bad = ~mask
    problem.input = problem.input.clone()
    problem.input[bad] = math.nan
    t = problem.teacher
    if isinstance(t, LinearTeachers):
        hidden = [h.clone() for h in t.input] if isinstance(t.input, list) else t.input.clone()
        for h in (hidden if isinstance(hidden, list) else [hidden]):
            h[bad] = math.inf
        problem.teacher = LinearTeachers(hidden, t.linear_weight, t.linear_bias)
    elif isinstance(t, TopKEnsembleStats):
        fields = [f.clone() for f in t[:-2]]
        fields[0][bad] = 10 ** 6  # class indices out of range
        for f in fields[1:]:
            f[bad] = math.nan
        problem.teacher = TopKEnsembleStats(*fields, num_classes=t.num_classes, num_members=t.num_members)
    elif isinstance(t, EnsembleStats):
        fields = [f.clone() for f in t[:-1]]
        for f in fields:
            f[bad] = math.nan
        problem.teacher = EnsembleStats(*fields, t.num_members)
    else:
        problem.teacher = t.clone()
        problem.teacher[bad] = math.nan
    return problem


@pytest.mark.parametrize("gather", [True, False], ids=["gathered", "zeroed"])
@pytest.mark.parametrize("loss,form", list(_cases()))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_masked_rows_with_nan_are_exact_zeros(loss, form, reduction, gather, monkeypatch):
    monkeypatch.setattr(_linear_ops, "_gathers_rows", lambda device: gather)
    mask = torch.tensor([[True, False, True, True], [False, True, False, True]])
    clean = Problem(loss, form)
    poisoned = _poisoned(Problem(loss, form), mask)
    got = _value_and_grads(lambda ls: poisoned.fused(ls, mask=mask, reduction=reduction, chunk_size=3),
                           poisoned.leaves())
    want = _value_and_grads(lambda ls: clean.unfused(ls, mask=mask, reduction=reduction), clean.leaves())
    assert torch.isfinite(got[0]).all() and all(torch.isfinite(g).all() for g in got[1])
    assert (got[1][0][~mask] == 0).all()
    if reduction == "none":
        assert (got[0][~mask] == 0).all()
    for g, w in zip([got[0], *got[1]], [want[0], *want[1]]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_all_masked_mean_is_zero_with_zero_gradients():
    p = Problem("dirichlet_nll", "stacked")
    out, grads = _value_and_grads(lambda ls: p.fused(ls, mask=torch.zeros(2, 4, dtype=torch.bool)), p.leaves())
    assert out.item() == 0.0 and all((g == 0).all() for g in grads)


# --------------------------------------------------------------------------------------------------
# gradcheck, reduced precision, the fallback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(loss, reduction):
    p = Problem(loss, "pairs" if loss in LOGIT else "stacked", lead=(3,), seed=7)
    mask = torch.tensor([True, False, True])
    fn = lambda *ls: p.fused(list(ls), chunk_size=2, mask=mask, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(p.leaves()), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("loss,dtype", [(loss, torch.bfloat16) for loss in LOSSES]
                         + [("dirichlet_nll", torch.float16), ("logit_laplace_nll", torch.float16)])
def test_reduced_precision_against_float64(loss, dtype):
    """bf16 / fp16 hidden states, output layers and teachers: the fused result's error against the float64 truth
    (the same rounded inputs, upcast) is within the loss tests' rule, relative to plain PyTorch in the same dtype
    (F.linear + edd_ext.reference)."""
    low = Problem(loss, "stacked", lead=(4, 8), dtype=dtype, seed=11)
    truth = Problem(loss, "stacked", lead=(4, 8), dtype=dtype, seed=11)
    truth.input, truth.weights = O.f64(truth.input), [O.f64(w) for w in truth.weights]
    truth.biases = [None if b is None else O.f64(b) for b in truth.biases]
    truth.logits = O.f64(truth.logits)
    got = _value_and_grads(lambda ls: low.fused(ls, chunk_size=5), low.leaves())
    peer = _value_and_grads(lambda ls: low.unfused(ls, module=reference), low.leaves())
    want = _value_and_grads(lambda ls: truth.unfused(ls, module=reference), truth.leaves())
    for i, (g, pr, w) in enumerate(zip([got[0], *got[1]], [peer[0], *peer[1]], [want[0], *want[1]])):
        assert g.dtype == (torch.float32 if i == 0 else dtype)
        O.assert_close_to_truth(g, w, dtype, peer=pr, rtol=2e-3, atol=1e-3, what=f"{loss} output {i}")


@pytest.mark.parametrize("loss,form", [("dirichlet_nll", "stats"), ("proxy_dirichlet_kl", "logits"),
                                       ("proxy_dirichlet_kl", "top_k"),
                                       ("ensemble_kl", "stacked"), ("logit_gaussian_nll", "pairs"),
                                       ("logit_laplace_nll", "stacked")])
def test_falls_back_to_the_reference_without_the_extension(loss, form, monkeypatch):
    p = Problem(loss, form)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    fused = _value_and_grads(lambda ls: p.fused(ls, mask=mask, chunk_size=3, reduction="none"), p.leaves())
    monkeypatch.setattr(_ops, "_C", None)
    monkeypatch.setattr(_ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match="plain-PyTorch reference"):
        fallback = _value_and_grads(lambda ls: p.fused(ls, mask=mask, chunk_size=3, reduction="none"), p.leaves())
    for g, w in zip([fallback[0], *fallback[1]], [fused[0], *fused[1]]):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------------------
# autograd corners
# --------------------------------------------------------------------------------------------------


def test_no_gradient_is_computed_without_autograd_and_teachers_get_none():
    p = Problem("ensemble_kl", "stacked")
    hidden = p.teacher.input.clone().requires_grad_()
    p.teacher = LinearTeachers(hidden, p.teacher.linear_weight, p.teacher.linear_bias)
    with torch.no_grad():
        plain = p.fused(p.params())
    leaves = p.leaves()
    loss = p.fused(leaves)
    torch.testing.assert_close(plain, loss.detach(), rtol=0, atol=0)
    loss.backward()
    assert hidden.grad is None and all(leaf.grad is not None for leaf in leaves)


def test_a_frozen_output_layer_gets_no_gradient():
    p = Problem("dirichlet_nll", "logits")
    x = p.input.clone().requires_grad_()
    loss = E.linear_dirichlet_nll(x, p.weights[0], p.logits, linear_bias=p.biases[0])
    (gx,) = torch.autograd.grad(loss, [x])
    want = _value_and_grads(lambda ls: p.unfused(ls), p.leaves())[1][0]
    torch.testing.assert_close(gx, want)


# --------------------------------------------------------------------------------------------------
# structural errors
# --------------------------------------------------------------------------------------------------

X, W, U = torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, 3, 5)
H, WT = torch.zeros(2, 3, 6), torch.zeros(3, 5, 6)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: E.linear_ensemble_kl(X, torch.zeros(5, 3), U),
         r"linear_weight: expected \[V, D\] with D = 4.*\(2, 4\).*\(5, 3\)"),
        (lambda: E.linear_ensemble_kl(X, torch.zeros(5, 4, 1), U), r"linear_weight: expected a \[V, D\]"),
        (lambda: E.linear_ensemble_kl(X, W, U, linear_bias=torch.zeros(4)), r"linear_bias: expected shape \(5,\)"),
        (lambda: E.linear_ensemble_kl(X, W.double(), U), r"linear_weight: expected the dtype of input"),
        (lambda: E.linear_dirichlet_nll(X, W, torch.zeros(2, 3, 6)), r"teacher: expected .*\(2, 'M', 5\).*\(2, 3, 6\)"),
        (lambda: E.linear_dirichlet_nll(X, W, torch.zeros(2, 0, 5)), "M >= 1"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, torch.zeros(3, 7, 6))),
         r"teacher.linear_weight: expected \[M, V, D\] with V = 5, the classes of linear_weight, got \(3, 7, 6\)"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, torch.zeros(3, 5, 2))),
         r"teacher.linear_weight: expected \[M, V, D\] with D = 6, the hidden width of teacher.input \(2, 3, 6\)"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(torch.zeros(2, 0, 6), torch.zeros(0, 5, 6))),
         r"teacher.input: expected M >= 1 members in \[\*, M, D\], got shape \(2, 0, 6\)"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers([], [])), "teacher.input: expected M >= 1"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, torch.zeros(2, 5, 6))), r"M = 3"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(torch.zeros(3, 3, 6), WT)),
         r"teacher.input: expected \[\*, M, D\] hidden states with \* = \(2,\)"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, WT, torch.zeros(3, 4))), r"teacher.linear_bias"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers.from_pairs([(torch.zeros(2, 3), torch.zeros(5, 4))])),
         r"teacher\[0\].linear_weight: expected \[V, D_m\] with D = 3"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers.from_pairs([(torch.zeros(2, 3), torch.zeros(6, 3))])),
         r"teacher\[0\].linear_weight: expected \[V, D_m\] with V = 5"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers([torch.zeros(2, 3)], [])), "one linear_weight"),
        (lambda: LinearTeachers.from_pairs([(X,)]), r"members\[0\]"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, WT.double())),
         "teacher.linear_weight: expected the dtype"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, WT.to("meta"))),
         "teacher.linear_weight: expected device"),
        (lambda: E.linear_dirichlet_nll(X, W, U, chunk_size=0), r"chunk_size: expected None or an int >= 1"),
        (lambda: E.linear_dirichlet_nll(X, W, U, chunk_size=-2), "chunk_size"),
        (lambda: E.linear_dirichlet_nll(X, W, U, chunk_size=2.0), "chunk_size"),
        (lambda: E.linear_dirichlet_nll(X, W, U, chunk_size=True), "chunk_size"),
        (lambda: E.linear_dirichlet_nll(X, W, U, mask=torch.ones(3, dtype=torch.bool)), r"mask: expected shape \(2,\)"),
        (lambda: E.linear_dirichlet_nll(X, W, LinearTeachers(H, WT), mask=torch.ones(2)), "mask: expected dtype"),
        (lambda: E.linear_proxy_dirichlet_kl(X, W, U, direction="both"), "direction"),
        (lambda: E.linear_dirichlet_nll(X, W, U, reduction="avg"), "reduction"),
        (lambda: E.linear_logit_gaussian_nll(X, W, torch.zeros(6, 4), U),
         r"log_scale_weight: expected \[V, D\] with V = 5"),
        (lambda: E.linear_logit_gaussian_nll(X, W, W, E.ensemble_stats(U)), r"teacher_logits: .*EnsembleStats"),
        (lambda: E.linear_logit_laplace_nll(X, W, W, U, min_scale=-1.0), "min_scale"),
        (lambda: E.linear_logit_laplace_nll(X, W, W, E.top_k_logit_targets(U, top_k=2)), "TopKLogitTargets"),
        (lambda: E.linear_ensemble_kl(X, W, E.ensemble_stats(torch.zeros(2, 3, 6), top_k=2)), "num_classes"),
        (lambda: E.linear_logit_laplace_nll(X, W, W, LinearTeachers(H, WT), teacher_norm="z"), "teacher_norm"),
    ],
)
def test_structural_errors_are_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------------
# nn.Module forms, opcheck, torch.compile
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module,loss,kw",
    [
        (E.nn.LinearDirichletNLLLoss, "dirichlet_nll", {"model_offset": 0.5}),
        (E.nn.LinearProxyDirichletKLLoss, "proxy_dirichlet_kl", {"direction": "forward", "precision": "epkl"}),
        (E.nn.LinearEnsembleKLLoss, "ensemble_kl", {}),
        (E.nn.LinearLogitGaussianNLLLoss, "logit_gaussian_nll", {"teacher_norm": "center", "min_scale": 0.1}),
        (E.nn.LinearLogitLaplaceNLLLoss, "logit_laplace_nll", {"temperature": 2.0}),
    ],
)
def test_modules_match_the_functions(module, loss, kw):
    p = Problem(loss, "stacked")
    mask = torch.tensor([[True, False, True, True], [True, True, True, False]])
    loss_fn = module(reduction="sum", chunk_size=3, **kw)
    assert "reduction='sum'" in repr(loss_fn) and "chunk_size=3" in repr(loss_fn)
    torch.testing.assert_close(p.fused(p.params(), fn=loss_fn, mask=mask),
                               p.fused(p.params(), mask=mask, reduction="sum", chunk_size=3, **kw), rtol=0, atol=0)
    with pytest.raises(ValueError, match="chunk_size"):
        module(chunk_size=0)


def _op_cases():
    opts = [_linear_ops.OPTIONS[k] for k in _linear_ops.OPTIONS]
    p = Problem("dirichlet_nll", "stacked", lead=(5,), dtype=torch.float32)
    q = Problem("logit_laplace_nll", "pairs", lead=(5,), dtype=torch.float32)
    x, w, b = (t.requires_grad_() for t in p.leaves())
    y, lw, sw, lb = (t.requires_grad_() for t in q.leaves())
    mask = torch.tensor([True, False, True, True, False])
    t, u = p.teacher, q.teacher
    yield (x, w, b, None, None, None, [], [], [t.input], [t.linear_weight], [t.linear_bias], mask, None,
           "dirichlet_nll", *opts, 2, 2, True, True)
    # reduction none: the backward runs the op again with grad_loss
    yield (y, lw, lb, sw, None, None, [], [], list(u.input), list(u.linear_weight), list(u.linear_bias), mask, None,
           "logit_laplace_nll", *opts, 0, 3, True, True)
    stats = list(E.ensemble_stats(p.logits.float()))[:-1]
    yield (x, w, None, None, None, None, stats, [], [], [], [], mask, None, "ensemble_kl", *opts, 2, None, True, False)
    top_k = list(E.ensemble_stats(p.logits.float(), top_k=TOP_K))[:-2]
    yield (x, w, b, None, None, None, [], top_k, [], [], [], None, None, "dirichlet_nll", *opts, 1, 2, True, True)
    yield (x.detach(), w.detach(), None, None, None, p.logits.float(), [], [], [], [], [], None, None, "ensemble_kl",
           *opts, 1, 4, False, False)


def test_opcheck():
    for args in _op_cases():
        torch.library.opcheck(torch.ops.edd_ext.linear_loss.default, args)


def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    p = Problem("proxy_dirichlet_kl", "stacked", dtype=torch.float32)
    q = Problem("logit_gaussian_nll", "pairs", dtype=torch.float32)
    mask = torch.tensor([[True, False, True, True], [True, True, False, True]])
    kl = E.nn.LinearEnsembleKLLoss(chunk_size=3)

    def total(x, w, b, sw):
        return (E.linear_proxy_dirichlet_kl(x, w, p.teacher, linear_bias=b, mask=mask)
                + E.linear_dirichlet_nll(x, w, E.ensemble_stats(p.logits), reduction="none").sum()
                + E.linear_ensemble_kl(x, w, E.ensemble_stats(p.logits, top_k=TOP_K), mask=mask)
                + kl(x, w, p.teacher, linear_bias=b, mask=mask)
                + E.linear_logit_gaussian_nll(x, w, sw, q.teacher, loc_bias=b, mask=mask, chunk_size=5))

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, total):
        leaves = [t.detach().clone().requires_grad_() for t in (p.input, p.weights[0], p.biases[0], q.weights[1])]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss] + [leaf.grad for leaf in leaves])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_signatures_are_the_losses_with_the_linear_inputs():
    for loss in LOSSES:
        params = inspect.signature(getattr(E, "linear_" + loss)).parameters
        heads = ("loc", "log_scale") if loss in LOGIT else ("linear",)
        assert list(params)[:len(heads) + 2] == ["input", *(h + "_weight" for h in heads), "teacher"]
        assert all(params[h + "_bias"].default is None for h in heads) and params["chunk_size"].default is None
        for name, p in inspect.signature(getattr(E, loss)).parameters.items():
            if p.kind is p.KEYWORD_ONLY:
                assert params[name].default == p.default, (loss, name)
    with pytest.raises(TypeError, match="model_offset"):
        E.linear_ensemble_kl(X, W, U, model_offset=1.0)


def test_public_names():
    for name in ("linear_dirichlet_nll", "linear_proxy_dirichlet_kl", "linear_ensemble_kl",
                 "linear_logit_gaussian_nll", "linear_logit_laplace_nll", "LinearTeachers"):
        assert name in E.__all__ and hasattr(E, name)


def test_auto_chunk_size():
    size = _linear_ops.auto_chunk_size
    assert size(32000, 4, 256) == _linear_ops.CHUNK_BYTES // (4 * (6 * 32000 + 5 * 256))
    assert size(100, 4, 256) == _linear_ops.MAX_CHUNK
    assert size(10**7, 64, 8192, heads=2) == _linear_ops.MIN_CHUNK
