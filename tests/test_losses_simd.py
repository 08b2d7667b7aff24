"""The CPU SIMD loss kernels (float32 / float16 / bfloat16 inputs: kLanes classes per step plus a scalar row
tail) against the scalar float64 kernels on the same values, at vocabulary sizes that exercise the tail
(V < 8, V = 8, odd V), for every option; masking and NaN isolation; the scalar fallback for
model_offset < 1e-6."""
import math

import pytest
import torch

import edd_ext

F64 = torch.float64
VOCABS = (2, 5, 8, 9, 1271)
MEMBERS = (1, 3)


def _randn(*shape, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=F64)


def _loss_and_grads(fn, students, dtype):
    xs = [s.detach().to(dtype).requires_grad_() for s in students]
    loss = fn(*xs)
    loss.sum().backward()
    return loss, [x.grad for x in xs]


def _compare(fn, students, teacher_fn, dtype, teacher_dtype=None, loss_rtol=2e-5, grad_rtol=2e-5):
    """fn(*students, teacher) with (dtype, teacher_dtype) inputs against the float64 kernels on the same
    (rounded) values: the loss within loss_rtol of the row's sum of absolute terms' scale, each gradient
    within grad_rtol of the row's largest gradient."""
    teacher_dtype = teacher_dtype or dtype
    rounded = [s.to(dtype).to(F64) for s in students]
    teacher = teacher_fn(teacher_dtype)
    teacher64 = teacher_fn(F64) if teacher_dtype == F64 else _to64(teacher)
    loss, grads = _loss_and_grads(lambda *xs: fn(*xs, teacher), rounded, dtype)
    loss64, grads64 = _loss_and_grads(lambda *xs: fn(*xs, teacher64), rounded, F64)
    assert loss.dtype == torch.float32 and all(g.dtype == dtype for g in grads)
    v = students[0].shape[-1]
    loss_floor = loss_rtol * math.sqrt(v) * loss64.abs().clamp_min(1.0)
    assert torch.all((loss.double() - loss64).abs() <= loss_floor), (loss, loss64)
    # rounding the gradient to the student's dtype is part of the result
    grad_rtol = max(grad_rtol, 2 * torch.finfo(dtype).eps)
    for g, g64 in zip(grads, grads64):
        scale = g64.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30)
        err = ((g.double() - g64).abs() / scale).max().item()
        assert err <= grad_rtol, f"gradient error {err:.3g} of the row's scale"


def _to64(teacher):
    if isinstance(teacher, torch.Tensor):
        return teacher.to(F64)
    return type(teacher)(*[t.to(F64) if isinstance(t, torch.Tensor) else t for t in teacher])


def _logits(positions, m, v, seed):
    return lambda dtype: _randn(positions, m, v, seed=seed, scale=3.0).to(dtype)


def _stats(positions, m, v, seed):
    return lambda dtype: edd_ext.ensemble_stats(_randn(positions, m, v, seed=seed, scale=3.0).to(dtype))


PROXY_OPTIONS = [
    dict(),
    dict(precision="epkl"),
    dict(direction="forward"),
    dict(reference_code_compat=True),
    dict(target_offset=0.5, max_precision=1e3),
    dict(model_offset=0.5),
]


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("m", (2, 5))  # M = 1: precision (V - 1) / eps, ill-conditioned in float32 by design
@pytest.mark.parametrize("options", PROXY_OPTIONS)
@pytest.mark.parametrize("teacher", ["logits", "stats"])
def test_proxy_kl_simd_matches_float64(v, m, options, teacher):
    z = _randn(4, v, seed=1)
    make = _logits if teacher == "logits" else _stats
    fn = lambda s, t: edd_ext.proxy_dirichlet_kl(s, t, reduction="none", **options)  # noqa: E731
    _compare(fn, [z], make(4, m, v, seed=2), torch.float32)


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("m", MEMBERS)
@pytest.mark.parametrize("model_offset", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("teacher", ["logits", "stats"])
def test_dirichlet_nll_simd_matches_float64(v, m, model_offset, teacher):
    z = _randn(4, v, seed=3)
    make = _logits if teacher == "logits" else _stats
    fn = lambda s, t: edd_ext.dirichlet_nll(s, t, model_offset=model_offset, reduction="none")  # noqa: E731
    _compare(fn, [z], make(4, m, v, seed=4), torch.float32)


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("m", MEMBERS + (10,))
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
@pytest.mark.parametrize("options", [dict(), dict(teacher_norm="center", temperature=2.0),
                                     dict(teacher_norm="none", min_scale=0.1)])
def test_logit_nll_simd_matches_float64(v, m, family, options):
    loc, log_scale = _randn(4, v, seed=5, scale=3.0) - 8.0, _randn(4, v, seed=6, scale=0.3)
    loss_fn = edd_ext.logit_gaussian_nll if family == "gaussian" else edd_ext.logit_laplace_nll
    fn = lambda mu, rho, t: loss_fn(mu, rho, t, reduction="none", **options)  # noqa: E731
    _compare(fn, [loc, log_scale], _logits(4, m, v, seed=7), torch.float32)


@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("m", MEMBERS)
@pytest.mark.parametrize("teacher", ["logits", "stats"])
def test_ensemble_kl_simd_matches_float64(v, m, teacher):
    z = _randn(4, v, seed=8, scale=2.0)
    make = _logits if teacher == "logits" else _stats
    _compare(lambda s, t: edd_ext.ensemble_kl(s, t, reduction="none"), [z], make(4, m, v, seed=9), torch.float32)


DISTILL = {
    "proxy_dirichlet_kl": lambda s, t, **kw: edd_ext.proxy_dirichlet_kl(s, t, reduction="none", **kw),
    "dirichlet_nll": lambda s, t, **kw: edd_ext.dirichlet_nll(s, t, reduction="none", **kw),
    "ensemble_kl": lambda s, t, **kw: edd_ext.ensemble_kl(s, t, reduction="none", **kw),
}


@pytest.mark.parametrize("name", sorted(DISTILL))
@pytest.mark.parametrize("dtype,teacher_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                 (torch.float32, torch.float16)])
def test_low_precision_pairs_match_float64(name, dtype, teacher_dtype):
    z = _randn(3, 1271, seed=10)
    _compare(DISTILL[name], [z], _logits(3, 3, 1271, seed=11), dtype, teacher_dtype)


@pytest.mark.parametrize("dtype,teacher_dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_logit_low_precision_pairs_match_float64(dtype, teacher_dtype, family):
    loc, log_scale = _randn(3, 1271, seed=12, scale=3.0) - 8.0, _randn(3, 1271, seed=13, scale=0.3)
    loss_fn = edd_ext.logit_gaussian_nll if family == "gaussian" else edd_ext.logit_laplace_nll
    _compare(lambda mu, rho, t: loss_fn(mu, rho, t, reduction="none"), [loc, log_scale], _logits(3, 3, 1271, 14),
             dtype, teacher_dtype)


@pytest.mark.parametrize("model_offset", [0.0, 1e-8])
@pytest.mark.parametrize("name", ["proxy_dirichlet_kl", "dirichlet_nll"])
def test_tiny_model_offset_takes_the_scalar_kernel(name, model_offset):
    z = _randn(3, 1271, seed=15, scale=4.0)
    # dirichlet_nll: exp(z) underflows in float32 (its small-concentration forms); the proxy KL's concentrations
    # stay representable
    z[0, :40] = -200.0 if name == "dirichlet_nll" else -30.0
    _compare(lambda s, t: DISTILL[name](s, t, model_offset=model_offset), [z], _logits(3, 3, 1271, 16),
             torch.float32)


@pytest.mark.parametrize("name", sorted(DISTILL) + ["logit_gaussian_nll", "logit_laplace_nll"])
def test_mask_and_nan_isolation(name):
    v = 1271
    z = _randn(4, v, seed=17).float()
    u = _randn(4, 3, v, seed=18, scale=3.0).float()
    rho = _randn(4, v, seed=19, scale=0.3).float()
    mask = torch.tensor([True, False, True, True])
    z_bad, u_bad = z.clone(), u.clone()
    z_bad[1, 3] = float("nan")  # masked position: NaN in the student
    u_bad[1, 0, 1270] = float("nan")
    z_bad[3, 1269] = float("nan")  # unmasked position: NaN in the student's tail and the teacher's SIMD body
    u_bad[3, 1, 5] = float("nan")

    def run(zz, uu):
        x = zz.clone().requires_grad_()
        if name.startswith("logit"):
            r = rho.clone().requires_grad_()
            fn = edd_ext.logit_gaussian_nll if "gaussian" in name else edd_ext.logit_laplace_nll
            loss = fn(x, r, uu, mask=mask, reduction="none")
        else:
            loss = DISTILL[name](x, uu, mask=mask)
        torch.where(mask, loss, torch.zeros(())).sum().backward()
        return loss.detach(), x.grad

    loss, grad = run(z_bad, u_bad)
    clean_loss, clean_grad = run(z, u)
    assert loss[1] == 0 and torch.all(grad[1] == 0)
    assert torch.isnan(loss[3])
    torch.testing.assert_close(loss[[0, 2]], clean_loss[[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(grad[[0, 2]], clean_grad[[0, 2]], rtol=0, atol=0)


# The members' normalisers (edd_ext/cpu/teacher_rows.h) over rows of several thousand classes: the maximum
# early, late, or in the row tail, with and without temperature, and leading runs of -inf.
NORMALISER_V = 2 * 2048 + 905


def _ramped_logits(where):
    """Teacher logits whose members reach their maxima in the first block, the last block or the row tail."""
    def make(dtype):
        u = _randn(3, 2, NORMALISER_V, seed=20, scale=3.0)
        ramp = torch.linspace(-6.0, 6.0, NORMALISER_V, dtype=F64)
        u = u + (ramp.flip(0) if where == "first" else ramp)
        if where == "tail":
            u[..., -1] = 40.0
        return u.to(dtype)
    return make


@pytest.mark.parametrize("where", ["first", "last", "tail"])
@pytest.mark.parametrize("name", sorted(DISTILL))
def test_normalisers_match_float64(name, where):
    z = _randn(3, NORMALISER_V, seed=21)
    _compare(DISTILL[name], [z], _ramped_logits(where), torch.float32)


@pytest.mark.parametrize("where", ["first", "last"])
def test_normalisers_logit_and_stats(where):
    loc, log_scale = _randn(3, NORMALISER_V, seed=22, scale=3.0) - 8.0, _randn(3, NORMALISER_V, seed=23, scale=0.3)
    _compare(lambda mu, rho, t: edd_ext.logit_gaussian_nll(mu, rho, t, reduction="none"), [loc, log_scale],
             _ramped_logits(where), torch.float32)
    u = _ramped_logits(where)(F64)
    for temperature in (1.0, 2.5):
        got = edd_ext.ensemble_stats(u.float(), temperature=temperature)
        want = edd_ext.ensemble_stats(u, temperature=temperature)
        torch.testing.assert_close(got.mean_probs.double(), want.mean_probs, rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(got.mean_log_probs.double(), want.mean_log_probs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.mutual_information.double(), want.mutual_information, rtol=1e-4, atol=1e-6)


def test_leading_classes_without_a_finite_logit():
    """A member whose first thousands of classes are -inf (probability 0) normalises like one whose first classes
    are finite but e^-1e30 times smaller: the same probabilities, loss and gradient."""
    u = _randn(2, 3, NORMALISER_V, seed=24, scale=3.0).float()
    u_inf, u_tiny = u.clone(), u.clone()
    u_inf[:, 1, : 2 * 2048 + 7] = float("-inf")
    u_tiny[:, 1, : 2 * 2048 + 7] = -1e30
    z = _randn(2, NORMALISER_V, seed=25).float()
    loss_inf, (grad_inf,) = _loss_and_grads(lambda s: edd_ext.ensemble_kl(s, u_inf, reduction="none"), [z],
                                            torch.float32)
    loss_tiny, (grad_tiny,) = _loss_and_grads(lambda s: edd_ext.ensemble_kl(s, u_tiny, reduction="none"), [z],
                                              torch.float32)
    assert torch.isfinite(loss_inf).all()
    torch.testing.assert_close(loss_inf, loss_tiny, rtol=0, atol=0)
    torch.testing.assert_close(grad_inf, grad_tiny, rtol=0, atol=0)
    torch.testing.assert_close(edd_ext.ensemble_stats(u_inf).mean_probs, edd_ext.ensemble_stats(u_tiny).mean_probs,
                               rtol=0, atol=0)
