"""edd_ext.uncertainty.dirichlet against closed forms evaluated with scipy.special (float64) and mpmath
(extreme logits), against Monte-Carlo sampling from torch.distributions.Dirichlet, identities, limits,
dtypes, errors, opcheck and torch.compile."""
import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import special, stats

import edd_ext
from edd_ext import reference

FIELDS = ("total", "data", "mutual_information", "epkl", "rmi", "precision", "differential_entropy")
TOL = {  # (rtol, atol), against the float64 oracle on the same (rounded) inputs
    torch.float64: (1e-10, 1e-12),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-5, 2e-5),
    torch.bfloat16: (2e-5, 2e-5),
}


def oracle(z, c=1.0):
    """The SPEC's formulas, term by term, in float64 with scipy.special."""
    z = z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else np.asarray(z, dtype=np.float64)
    v = z.shape[-1]
    alpha = np.exp(z) + c
    a0 = alpha.sum(-1, keepdims=True)
    p = alpha / a0
    total = -special.xlogy(p, p).sum(-1)
    data = -(p * (special.digamma(alpha + 1) - special.digamma(a0 + 1))).sum(-1)
    rmi = (p * (np.log(p) - special.digamma(alpha) + special.digamma(a0))).sum(-1)
    entropy = (special.gammaln(alpha).sum(-1) - special.gammaln(a0[..., 0])
               - ((alpha - 1) * (special.digamma(alpha) - special.digamma(a0))).sum(-1))
    return dict(total=total, data=data, mutual_information=total - data, epkl=(v - 1) / a0[..., 0], rmi=rmi,
                precision=a0[..., 0], differential_entropy=entropy)


def mp_oracle(z, c=1.0):
    """The same formulas at 100 significant digits (mpmath), for logits where float64 cancels (TU - DU at
    alpha_0 ~ e^80 subtracts digamma values ~80 that agree to 35 digits)."""
    with mpmath.workdps(100):
        alpha = [mpmath.exp(mpmath.mpf(float(x))) + c for x in z]
        a0 = sum(alpha)
        p = [a / a0 for a in alpha]
        total = -sum(q * mpmath.log(q) for q in p)
        data = -sum(q * (mpmath.digamma(a + 1) - mpmath.digamma(a0 + 1)) for q, a in zip(p, alpha))
        rmi = sum(q * (mpmath.log(q) - mpmath.digamma(a) + mpmath.digamma(a0)) for q, a in zip(p, alpha))
        entropy = (sum(mpmath.loggamma(a) for a in alpha) - mpmath.loggamma(a0)
                   - sum((a - 1) * (mpmath.digamma(a) - mpmath.digamma(a0)) for a in alpha))
        values = (total, data, total - data, (len(z) - 1) / a0, rmi, a0, entropy)
        return {name: float(x) for name, x in zip(FIELDS, values)}


def assert_matches(got, want, rtol, atol, fields=FIELDS):
    for name in fields:
        np.testing.assert_allclose(getattr(got, name).cpu().numpy(), want[name], rtol=rtol, atol=atol, err_msg=name)


def logits(shape, dtype=torch.float32, device="cpu", scale=3.0):
    return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype).to(device)


@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
@pytest.mark.parametrize("vocab", [2, 7, 1000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_closed_forms(lead, vocab, dtype, device):
    z = logits((*lead, vocab), dtype, device)
    u = edd_ext.uncertainty.dirichlet(z)
    assert isinstance(u, edd_ext.DirichletUncertainty)
    for t in u:
        assert t.shape == lead and t.dtype == torch.float64 and t.device == z.device
    assert_matches(u, oracle(z.cpu()), *TOL[dtype])


@pytest.mark.parametrize("model_offset", [0.0, 0.5, 1.0, 3.0])
def test_model_offset(model_offset, device):
    z = logits((4, 37), torch.float64, device)
    assert_matches(edd_ext.uncertainty.dirichlet(z, model_offset=model_offset), oracle(z.cpu(), model_offset),
                   *TOL[torch.float64])


def test_agrees_with_the_reference_implementation():
    z = logits((3, 4, 50), torch.float64)
    got, want = edd_ext.uncertainty.dirichlet(z), reference.dirichlet_uncertainty(z)
    for name in FIELDS:
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-12)


def test_matches_monte_carlo_over_dirichlet_samples():
    """Each measure as an expectation over pi ~ Dir(alpha), estimated from 40000 draws (5 standard errors)."""
    torch.manual_seed(1)
    z = torch.randn(6, dtype=torch.float64)
    alpha = z.exp() + 1.0
    p = alpha / alpha.sum()
    u = edd_ext.uncertainty.dirichlet(z)
    dist = torch.distributions.Dirichlet(alpha)
    pi = dist.sample((40000,))
    log_pi = pi.log()
    other = pi.roll(1, 0)  # independent partners for the pairwise KL
    draws = {
        "data": -(pi * log_pi).sum(-1),  # E H[pi]
        "mutual_information": (pi * (log_pi - p.log())).sum(-1),  # E KL(pi || p)
        "rmi": (p * (p.log() - log_pi)).sum(-1),  # E KL(p || pi)
        "epkl": (pi * (log_pi - other.log())).sum(-1),  # E KL(pi || pi')
        "differential_entropy": -dist.log_prob(pi),
    }
    for name, x in draws.items():
        mean, se = x.mean().item(), x.std().item() / math.sqrt(x.numel())
        assert abs(getattr(u, name).item() - mean) < 5 * se, (name, getattr(u, name).item(), mean, se)
    assert abs(u.total.item() - (-(p * p.log()).sum().item())) < 1e-12


def test_differential_entropy_matches_scipy():
    z = logits((5, 4), torch.float64)
    got = edd_ext.uncertainty.dirichlet(z, model_offset=0.3).differential_entropy
    want = [stats.dirichlet(row.exp().numpy() + 0.3).entropy() for row in z]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)


def test_identities_and_bounds(device):
    z = logits((64, 33), torch.float64, device, scale=4.0)
    u = edd_ext.uncertainty.dirichlet(z)
    torch.testing.assert_close(u.mutual_information, u.total - u.data, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(u.epkl, u.mutual_information + u.rmi, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(u.epkl * u.precision, torch.full_like(u.epkl, 32.0), rtol=1e-14, atol=0)
    assert (u.mutual_information > 0).all() and (u.rmi > 0).all() and (u.data > 0).all()
    assert (u.total <= math.log(33) + 1e-12).all()


def test_mutual_information_vanishes_as_precision_grows():
    """Shifting every logit by t multiplies alpha_0 by ~e^t; MI -> 0 like (V - 1) / (2 alpha_0), and so does RMI."""
    z = logits((8,), torch.float64, scale=1.0)
    shifts = torch.tensor([0.0, 5.0, 10.0, 20.0, 40.0, 70.0], dtype=torch.float64)
    u = edd_ext.uncertainty.dirichlet(z + shifts[:, None])
    assert (u.mutual_information.diff() < 0).all() and (u.precision.diff() > 0).all()
    assert u.mutual_information[-1] < 1e-30
    for scaled in (u.mutual_information * u.precision, u.rmi * u.precision):
        gap = (scaled - 3.5).abs()  # (V - 1) / 2, approached like 1 / alpha
        assert (gap[1:4] < gap[:3]).all() and (gap[4:] < 1e-14).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_are_finite_and_accurate(dtype, device):
    rows = [
        [80.0, -1e4, 0.0, 3.0],
        [80.0, 80.0, 79.0, -1e4],
        [-1e4, -1e4, -1e4, -1e4],
        [80.0, -1e4, -1e4, -1e4],
        [-30.0, -1e4, 2.0, 80.0],
    ]
    z = torch.tensor(rows, dtype=dtype, device=device)
    u = edd_ext.uncertainty.dirichlet(z)
    for t in u:
        assert torch.isfinite(t).all()
    rtol = 1e-9 if dtype == torch.float64 else 1e-5
    for i, row in enumerate(rows):
        want = mp_oracle(row)
        for name in FIELDS:
            got = getattr(u, name)[i].item()
            assert got == pytest.approx(want[name], rel=rtol, abs=1e-300), (i, name, got, want[name])


def test_large_vocabulary_at_the_top_of_the_range(device):
    """V e^80 overflows float32; precision and every measure stay finite and keep their relative accuracy."""
    z = torch.full((2, 32000), -1e4, device=device)
    z[0] = 80.0
    z[1, :5] = 80.0
    u = edd_ext.uncertainty.dirichlet(z)
    for t in u:
        assert torch.isfinite(t).all()
    assert u.precision[0].item() == pytest.approx(32000 * math.exp(80.0), rel=1e-6)
    assert u.mutual_information[0].item() == pytest.approx(31999 / (2 * u.precision[0].item()), rel=1e-5)
    assert u.total[1].item() == pytest.approx(math.log(5), rel=1e-5)


def test_nan_position_does_not_leak(device):
    z = logits((4, 20), torch.float32, device)
    clean = edd_ext.uncertainty.dirichlet(z)
    z[2, 5] = float("nan")
    u = edd_ext.uncertainty.dirichlet(z)
    keep = torch.tensor([0, 1, 3], device=device)
    for got, want in zip(u, clean):
        assert torch.isnan(got[2])
        assert torch.equal(got[keep], want[keep])


def test_non_contiguous_and_empty_inputs(device):
    base = logits((6, 2 * 41), torch.float32, device)
    for z in (base[:, ::2], base.t().contiguous().t()[::2]):
        assert not z.is_contiguous()
        assert_matches(edd_ext.uncertainty.dirichlet(z), oracle(z.cpu()), *TOL[torch.float32])
    u = edd_ext.uncertainty.dirichlet(torch.empty(0, 3, 10, device=device))
    assert u.total.shape == (0, 3) and u.precision.dtype == torch.float64


def test_not_differentiable():
    z = torch.randn(3, 5, requires_grad=True)
    u = edd_ext.uncertainty.dirichlet(z)
    assert not any(t.requires_grad for t in u)


@pytest.mark.parametrize(
    "z,kwargs,match",
    [
        (torch.randn(3, 1), {}, r"student_logits: expected V >= 2 classes in \[\*, V\], got shape \(3, 1\)"),
        (torch.ones(3, 4, dtype=torch.int64), {}, r"student_logits: expected a floating dtype.*torch.int64"),
        (torch.tensor(1.0), {}, r"student_logits: expected at least 1 dimension"),
        ([1.0, 2.0], {}, r"student_logits: expected a Tensor, got list"),
        (torch.randn(3, 4), {"model_offset": -1.0}, r"model_offset: expected a finite number >= 0, got -1.0"),
        (torch.randn(3, 4), {"model_offset": float("nan")}, r"model_offset: expected a finite number >= 0"),
        (torch.randn(3, 4), {"model_offset": True}, r"model_offset: expected a finite number >= 0, got True"),
    ],
)
def test_structural_errors_are_value_errors(z, kwargs, match):
    with pytest.raises(ValueError, match=match):
        edd_ext.uncertainty.dirichlet(z, **kwargs)


def test_op_level_checks_raise_value_error():
    with pytest.raises(ValueError, match=r"student_logits: expected \[\*, V\] with V >= 2"):
        torch.ops.edd_ext.dirichlet_uncertainty(torch.randn(2, 1), 1.0)
    with pytest.raises(ValueError, match=r"model_offset: expected a finite number >= 0"):
        torch.ops.edd_ext.dirichlet_uncertainty(torch.randn(2, 3), -0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype, device):
    z = logits((2, 3, 17), dtype, device)
    torch.library.opcheck(torch.ops.edd_ext.dirichlet_uncertainty.default, (z, 1.0))
    torch.library.opcheck(torch.ops.edd_ext.dirichlet_uncertainty.default, (z[0], 0.0))


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda t: edd_ext.uncertainty.dirichlet(t, model_offset=0.5), fullgraph=True,
                       backend="aot_eager")
    z = logits((3, 4, 19), torch.float32, device)
    for got, want in zip(fn(z), edd_ext.uncertainty.dirichlet(z, model_offset=0.5)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and edd_ext.cuda_built()), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    z = logits((16, 32000), dtype, scale=5.0)
    z[0, :3] = 80.0
    z[1] = -1e4
    a, b = edd_ext.uncertainty.dirichlet(z), edd_ext.uncertainty.dirichlet(z.cuda())
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in FIELDS:
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=rtol, atol=0, msg=name)


# ---- the CPU SIMD kernel (float32/float16/bfloat16 logits, model_offset >= 1e-6): 8 classes per step, the
# scalar header math for the row tail; concentrations on both sides of its alpha = 8 switch in one vector.
# Tolerances: 3e-6 relative (float32 math), 1e-6 absolute for data = total - mutual_information, which cancels ----


@pytest.mark.parametrize("vocab", [8, 15, 17, 1029, 4099])
@pytest.mark.parametrize("model_offset", [0.0, 1e-6, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_simd_kernel_matches_the_float64_oracle(vocab, model_offset, scale):
    z = logits((5, vocab), torch.float32, scale=scale) + torch.tensor([[-4.0], [0.0], [2.0], [3.0], [6.0]])
    got = edd_ext.uncertainty.dirichlet(z, model_offset=model_offset)
    assert_matches(got, oracle(z, model_offset), rtol=3e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_simd_kernel_reduced_precision_inputs(dtype):
    z = logits((4, 1000), dtype, scale=2.0)
    assert_matches(edd_ext.uncertainty.dirichlet(z), oracle(z), rtol=3e-6, atol=1e-6)


def test_simd_kernel_extreme_logits_in_the_vector_body():
    pattern = [80.0, -1e4, 0.0, 3.0, 79.0, -30.0, 2.0, 7.9, 8.1, -1e4, 1.9, 2.1, 40.0, -5.0, 0.5, 80.0]
    rows = [pattern + pattern[:3], [-1e4] * 17 + [80.0, 2.0], [2.07944] * 19, [-1e4] * 19]
    z = torch.tensor(rows, dtype=torch.float32)
    u = edd_ext.uncertainty.dirichlet(z)
    for i in range(len(rows)):
        want = mp_oracle([float(x) for x in z[i]])
        for name in FIELDS:
            got = getattr(u, name)[i].item()
            assert math.isfinite(got) and got == pytest.approx(want[name], rel=1e-5, abs=1e-300), (i, name, got)


def test_simd_kernel_ties_at_the_maximum_in_body_and_tail():
    z = torch.zeros(2, 21)
    z[0, [3, 9, 20]] = 5.0  # three tied maxima, one in the scalar tail
    z[1, :] = 5.0  # every class tied
    assert_matches(edd_ext.uncertainty.dirichlet(z), oracle(z), rtol=3e-6, atol=1e-6)


@pytest.mark.parametrize("column", [5, 18])
def test_simd_kernel_nan_stays_in_its_position(column):
    z = logits((4, 19), torch.float32)
    clean = edd_ext.uncertainty.dirichlet(z)
    z[1, column] = float("nan")
    u = edd_ext.uncertainty.dirichlet(z)
    keep = torch.tensor([0, 2, 3])
    for got, want in zip(u, clean):
        assert torch.isnan(got[1])
        assert torch.equal(got[keep], want[keep])
