"""edd_ext.uncertainty.logit_distribution (fused Monte Carlo over Philox noise) and gaussian_epkl:
exactly the ensemble measures of the samples the generator defines; within Monte-Carlo error of the
plain-PyTorch sampler in edd_ext.reference; determinism, common-noise invariances, the small-scale limit,
dtypes, extremes, errors, opcheck and torch.compile."""
import math

import pytest
import torch

import edd_ext
from edd_ext import reference

MEASURES = ("total", "data", "mutual_information", "epkl", "rmi")
FAMILIES = ("gaussian", "laplace")


def inputs(shape, dtype=torch.float32, device="cpu", loc_scale=3.0, log_scale_mean=-1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = loc_scale * torch.randn(shape, generator=g, dtype=torch.float64)
    rho = log_scale_mean + 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    return mu.to(dtype).to(device), rho.to(dtype).to(device)


def drawn_samples(mu, rho, family, num_samples, seed, min_scale=0.0):
    """The [*, S, V] samples the kernel's generator defines, materialised in float64 from the noise op."""
    vocab = mu.shape[-1]
    positions = torch.arange(mu.numel() // vocab, device=mu.device)
    eps = torch.ops.edd_ext_testing.philox_noise(positions, seed, num_samples, vocab, family).double()
    eps = eps.reshape(*mu.shape[:-1], num_samples, vocab)
    scale = rho.double().exp() + min_scale
    return mu.double().unsqueeze(-2) + scale.unsqueeze(-2) * eps


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("lead,num_samples", [((), 1), ((3,), 7), ((2, 3), 25)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_the_ensemble_measures_of_the_generated_samples(family, lead, num_samples, dtype, device):
    """The kernel is exactly (to rounding) the ensemble measures of the samples z = mu + s eps its Philox
    noise defines: the noise op, materialised, is an oracle for everything after the generator."""
    mu, rho = inputs((*lead, 301), dtype, device)
    kw = dict(family=family, num_samples=num_samples, seed=42, temperature=1.5, min_scale=0.05)
    got = edd_ext.uncertainty.logit_distribution(mu, rho, **kw)
    samples = drawn_samples(mu, rho, family, num_samples, seed=42, min_scale=0.05)
    want = reference.ensemble_uncertainty(samples, temperature=1.5)
    tol = dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    for name in MEASURES:
        value = getattr(got, name)
        assert value.shape == lead and value.dtype == dtype
        torch.testing.assert_close(value, getattr(want, name).to(dtype), **tol, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_agrees_with_the_reference_sampler_within_monte_carlo_error(family):
    """Same S, independent noise: per position and measure, the means over 24 seeds of the kernel and of
    the materialising reference sampler differ by less than 5 combined standard errors."""
    mu, rho = inputs((6, 40), torch.float64, loc_scale=2.0, log_scale_mean=0.0, seed=3)
    seeds = range(24)
    kernel = [edd_ext.uncertainty.logit_distribution(mu, rho, family=family, seed=s) for s in seeds]
    sampler = [reference.logit_distribution_uncertainty(mu, rho, family=family, seed=1000 + s) for s in seeds]
    for i, name in enumerate(MEASURES):
        a = torch.stack([u[i] for u in kernel])  # [seeds, positions]
        b = torch.stack([u[i] for u in sampler])
        se = torch.sqrt(a.var(0) / len(seeds) + b.var(0) / len(seeds))
        gap = (a.mean(0) - b.mean(0)).abs()
        assert (gap < 5 * se).all(), (name, gap, se)
        assert (se < 0.1 * a.mean(0).abs()).all()  # the comparison has power: errors of 10% would show


def test_same_seed_is_bit_identical_and_seeds_differ():
    mu, rho = inputs((5, 257))
    a = edd_ext.uncertainty.logit_distribution(mu, rho, seed=9)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        b = edd_ext.uncertainty.logit_distribution(mu, rho, seed=9)
    finally:
        torch.set_num_threads(threads)
    c = edd_ext.uncertainty.logit_distribution(mu, rho, seed=10)
    d = edd_ext.uncertainty.logit_distribution(mu, rho, seed=2**64 - 1)
    for x, y, z, w in zip(a, b, c, d):
        assert torch.equal(x, y)
        assert not torch.equal(x, z) and not torch.equal(x, w)
    # the first rows' noise does not depend on the rows after them
    head = edd_ext.uncertainty.logit_distribution(mu[:2], rho[:2], seed=9)
    for x, y in zip(a, head):
        assert torch.equal(x[:2], y)


@pytest.mark.parametrize("family", FAMILIES)
def test_invariant_to_a_shift_of_the_location(family, device):
    """Common noise: mu -> mu + c (per position) shifts every sample's logits by c, which softmax ignores."""
    mu, rho = inputs((4, 3, 129), torch.float64, device)
    shift = 40.0 * torch.randn(4, 3, 1, dtype=torch.float64, device=device)
    a = edd_ext.uncertainty.logit_distribution(mu, rho, family=family, seed=5)
    b = edd_ext.uncertainty.logit_distribution(mu + shift, rho, family=family, seed=5)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


def test_temperature_and_min_scale_are_rescalings(device):
    """z / T = mu / T + (s / T) eps, and s = exp(rho) + m: the same draws under the rewritten inputs."""
    mu, rho = inputs((3, 65), torch.float64, device)
    a = edd_ext.uncertainty.logit_distribution(mu, rho, temperature=2.5, min_scale=0.3, seed=1)
    b = edd_ext.uncertainty.logit_distribution(mu / 2.5, ((rho.exp() + 0.3) / 2.5).log(), seed=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("family,variance", [("gaussian", 1.0), ("laplace", 2.0)])
def test_small_scale_limit_is_the_closed_form_epkl(family, variance):
    """For small s the pairwise KL is its second-order (Fisher) term, whose expectation over two independent
    draws is sum_k Var(s eps_k) p_k (1 - p_k) (Stein's lemma for the Gaussian); the S self-pairs contribute 0,
    so E[MC EPKL] = (1 - 1/S) Var(eps) * gaussian_epkl. Checked on the mean over seeds, within 5 standard
    errors, with the O(s^3) remainder far below them."""
    mu, rho = inputs((4, 100), torch.float64, loc_scale=1.0, log_scale_mean=math.log(0.01), seed=7)
    s = 25
    runs = torch.stack([edd_ext.uncertainty.logit_distribution(mu, rho, family=family, num_samples=s, seed=k).epkl
                        for k in range(32)])
    closed = (1 - 1 / s) * variance * edd_ext.uncertainty.gaussian_epkl(mu, rho)
    se = runs.std(0) / math.sqrt(runs.shape[0])
    assert ((runs.mean(0) - closed).abs() < 5 * se).all()
    assert (se < 0.03 * closed).all()  # power: a 10% error in the scale convention would show


def test_gaussian_epkl_matches_the_reference(device):
    mu, rho = inputs((2, 5, 77), torch.float64, device)
    for min_scale in (0.0, 0.2):
        got = edd_ext.uncertainty.gaussian_epkl(mu, rho, min_scale=min_scale)
        want = reference.gaussian_epkl_approximation(mu, rho, min_scale=min_scale)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    assert edd_ext.uncertainty.gaussian_epkl(mu.float(), rho.float()).dtype == torch.float32


def test_gaussian_epkl_extremes_are_finite():
    """s^2 = e^120 overflows float32 and 1 - p = e^-80 rounds to 0 for the top class; the terms do neither."""
    mu = torch.tensor([[80.0, -1e4, 0.0], [0.0, 0.0, 0.0], [5.0, 5.0, -1e4]])
    rho = torch.tensor([[60.0, 60.0, -1e4], [-1e4, -1e4, -1e4], [0.0, 0.0, 0.0]])
    e = edd_ext.uncertainty.gaussian_epkl(mu, rho)
    assert torch.isfinite(e).all() and e[1] == 0
    assert e[0].item() == pytest.approx(math.exp(120.0 - 80.0), rel=1e-5)  # the top class's s^2 p (1 - p)
    assert e[2].item() == pytest.approx(0.5, rel=1e-6)  # two tied classes, p = 1/2 each


def test_one_sample_or_zero_scale_has_no_knowledge_uncertainty(device):
    mu, rho = inputs((3, 50), torch.float64, device)
    one = edd_ext.uncertainty.logit_distribution(mu, rho, num_samples=1)
    flat = edd_ext.uncertainty.logit_distribution(mu, torch.full_like(rho, -1e4), num_samples=6)
    entropy = -(torch.softmax(mu, -1) * torch.log_softmax(mu, -1)).sum(-1)
    for u in (one, flat):
        tol = 16 * torch.finfo(torch.float64).eps * u.total  # rounding of S equal terms, nothing more
        for t in (u.mutual_information, u.epkl, u.rmi):
            assert ((t >= 0) & (t <= tol)).all()
        torch.testing.assert_close(u.total, u.data)
    torch.testing.assert_close(flat.total, entropy, rtol=1e-12, atol=1e-12)


def test_identities_and_bounds():
    mu, rho = inputs((16, 40), torch.float64, log_scale_mean=0.5)
    for family in FAMILIES:
        u = edd_ext.uncertainty.logit_distribution(mu, rho, family=family, num_samples=11)
        torch.testing.assert_close(u.mutual_information, u.total - u.data, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(u.epkl, u.mutual_information + u.rmi, rtol=1e-10, atol=1e-12)
        assert (u.mutual_information >= 0).all() and (u.rmi >= 0).all()
        assert (u.total <= math.log(40) + 1e-12).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_use_float32_math(dtype, device):
    mu, rho = inputs((3, 4, 97), dtype, device)
    got = edd_ext.uncertainty.logit_distribution(mu, rho, seed=4)
    want = edd_ext.uncertainty.logit_distribution(mu.float(), rho.float(), seed=4)
    for x, y in zip(got, want):
        assert x.dtype == torch.float32
        assert torch.equal(x, y)


def test_extreme_inputs_stay_finite(device):
    mu, rho = inputs((4, 500), torch.float32, device)
    mu[0, :3] = 80.0
    mu[1] = -1e4
    mu[2, ::2] = -1e4
    rho[2] = 5.0  # scales of 150: samples far apart
    rho[3] = -1e4  # zero scale
    for family in FAMILIES:
        for t in edd_ext.uncertainty.logit_distribution(mu, rho, family=family, temperature=0.1):
            assert torch.isfinite(t).all()


def test_nan_position_does_not_leak(device):
    mu, rho = inputs((4, 30), torch.float32, device)
    clean = edd_ext.uncertainty.logit_distribution(mu, rho)
    mu[1, 3] = float("nan")
    rho[2, 4] = -float("nan")  # sign bit set, as x86 arithmetic produces it
    u = edd_ext.uncertainty.logit_distribution(mu, rho)
    for got, want in zip(u, clean):
        assert torch.isnan(got[1]) and torch.isnan(got[2])
        assert torch.equal(got[[0, 3]], want[[0, 3]])


def test_non_contiguous_and_empty_inputs(device):
    mu, rho = inputs((6, 2 * 33), torch.float32, device)
    a = edd_ext.uncertainty.logit_distribution(mu[:, ::2], rho[:, ::2], seed=3)
    b = edd_ext.uncertainty.logit_distribution(mu[:, ::2].contiguous(), rho[:, ::2].contiguous(), seed=3)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    u = edd_ext.uncertainty.logit_distribution(torch.empty(0, 5, device=device), torch.empty(0, 5, device=device))
    assert u.total.shape == (0,)


def test_not_differentiable():
    mu = torch.randn(2, 9, requires_grad=True)
    rho = torch.randn(2, 9, requires_grad=True)
    assert not any(t.requires_grad for t in edd_ext.uncertainty.logit_distribution(mu, rho))
    assert not edd_ext.uncertainty.gaussian_epkl(mu, rho).requires_grad


def _pair(*shape, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((torch.randn(3, 5), torch.randn(3, 4)), {}, r"log_scale: expected the shape of loc \(3, 5\) .*got \(3, 4\)"),
        ((torch.randn(3, 5), torch.randn(3, 5).double()), {}, r"log_scale: expected the dtype of loc \(torch.float32"),
        (_pair(3, 1), {}, r"loc: expected V >= 2 classes in \[\*, V\], got shape \(3, 1\)"),
        ((torch.randn(3, 5), [1.0]), {}, r"log_scale: expected a Tensor, got list"),
        (_pair(2, 5), {"family": "cauchy"}, r"family: expected one of \('gaussian', 'laplace'\), got 'cauchy'"),
        (_pair(2, 5), {"num_samples": 0}, r"num_samples: expected an int in \[1, 4294967297\), got 0"),
        (_pair(2, 5), {"num_samples": 2.0}, r"num_samples: expected an int"),
        (_pair(2, 5), {"num_samples": True}, r"num_samples: expected an int"),
        (_pair(2, 5), {"seed": 2**64}, r"seed: expected an int in \[-9223372036854775808, 18446744073709551616\)"),
        (_pair(2, 5), {"seed": "0"}, r"seed: expected an int"),
        (_pair(2, 5), {"temperature": 0.0}, r"temperature: expected a finite number > 0.0, got 0.0"),
        (_pair(2, 5), {"min_scale": -1.0}, r"min_scale: expected a finite number >= 0.0, got -1.0"),
    ],
)
def test_structural_errors_are_value_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        edd_ext.uncertainty.logit_distribution(*args, **kwargs)


def test_gaussian_epkl_errors():
    with pytest.raises(ValueError, match=r"log_scale: expected the shape of loc"):
        edd_ext.uncertainty.gaussian_epkl(torch.randn(2, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"min_scale: expected a finite number >= 0.0"):
        edd_ext.uncertainty.gaussian_epkl(torch.randn(2, 3), torch.randn(2, 3), min_scale=float("inf"))


def test_op_level_checks_raise_value_error():
    op = torch.ops.edd_ext.logit_distribution_uncertainty
    x = torch.randn(2, 5)
    with pytest.raises(ValueError, match=r"log_scale: expected the shape of loc \[2, 5\] \(\[\*, V\]\), got \[5, 2"):
        op(x, x.t(), "gaussian", 4, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"family: expected one of 'gaussian', 'laplace', got 'normal'"):
        op(x, x, "normal", 4, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"num_samples: expected an int in \[1, 2\^32\], got 0"):
        op(x, x, "gaussian", 0, 0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"temperature: expected a positive number"):
        op(x, x, "gaussian", 4, 0, -1.0, 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype, device):
    mu, rho = inputs((2, 3, 21), dtype, device)
    op = torch.ops.edd_ext.logit_distribution_uncertainty.default
    torch.library.opcheck(op, (mu, rho, "gaussian", 5, 3, 1.0, 0.0))
    torch.library.opcheck(op, (mu[0], rho[0], "laplace", 2, -3, 0.5, 0.1))


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()

    def measures(mu, rho):
        u = edd_ext.uncertainty.logit_distribution(mu, rho, family="laplace", num_samples=6, seed=3)
        return u, edd_ext.uncertainty.gaussian_epkl(mu, rho, min_scale=0.1)

    fn = torch.compile(measures, fullgraph=True, backend="aot_eager")
    mu, rho = inputs((3, 4, 19), torch.float32, device)
    (got, got_epkl), (want, want_epkl) = fn(mu, rho), measures(mu, rho)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    torch.testing.assert_close(got_epkl, want_epkl)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and edd_ext.cuda_built()), reason="needs CUDA")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(family, dtype):
    """The same generator on both devices: results agree far inside the Monte-Carlo error (several percent
    here), because only the last bits of the noise and of the exponentials differ; a vocabulary-sized row."""
    mu, rho = inputs((6, 32000), dtype, loc_scale=4.0)
    a = edd_ext.uncertainty.logit_distribution(mu, rho, family=family, num_samples=13, seed=8)
    b = edd_ext.uncertainty.logit_distribution(mu.cuda(), rho.cuda(), family=family, num_samples=13, seed=8)
    for name in MEASURES:
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=1e-3, atol=1e-5, msg=name)
