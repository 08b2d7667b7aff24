"""edd_ext.ensemble_stats / edd_ext.uncertainty.ensemble against a float64 oracle written from the
definitions (entropies and the M^2 pairwise KLs, not the identities the kernel uses), plus identities,
invariances, odd shapes, dtypes, errors, opcheck and torch.compile."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import log_softmax as np_log_softmax
from scipy.special import xlogy

import edd_ext

TOL = {  # (rtol, atol) on the measures
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-5, 1e-6),  # compared with the oracle on the same (rounded) inputs: math is float32
    torch.bfloat16: (1e-5, 1e-6),
}


def oracle(logits, temperature=1.0, smoothing=0.0):
    """float64 numpy: per position, the members' probabilities, the entropies and every pairwise KL."""
    u = logits.detach().cpu().double().numpy()
    v = u.shape[-1]
    logp = np_log_softmax(u / temperature, axis=-1)  # [*, M, V]
    if smoothing:
        logp = np.logaddexp(np.log1p(-smoothing) + logp, np.log(smoothing / v))
    p = np.exp(logp)
    mean_p = p.mean(-2)
    mean_logp = logp.mean(-2)
    entropy = lambda q, lq: -np.where(q > 0, q * lq, 0.0).sum(-1)  # noqa: E731  (0 ln 0 = 0)
    total = -xlogy(mean_p, mean_p).sum(-1)
    data = entropy(p, logp).mean(-1)
    # KL(p_i || p_j) for every ordered pair, averaged over all M^2 pairs.
    pairwise = p[..., :, None, :] * (logp[..., :, None, :] - logp[..., None, :, :])
    kl = np.where(p[..., :, None, :] > 0, pairwise, 0.0).sum(-1)
    epkl = kl.mean((-1, -2))
    rmi = (xlogy(mean_p, mean_p)[..., None, :] - mean_p[..., None, :] * logp).sum(-1).mean(-1)  # mean_m KL(p^ || p_m)
    return dict(mean_probs=mean_p, mean_log_probs=mean_logp, total=total, data=data,
                mutual_information=total - data, epkl=epkl, rmi=rmi)


def assert_matches_oracle(stats, logits, dtype, **options):
    want = oracle(logits, **options)
    rtol, atol = TOL[dtype]
    for name in ("total", "data", "mutual_information", "epkl", "rmi"):
        got = getattr(stats, name).cpu().double().numpy()
        np.testing.assert_allclose(got, want[name], rtol=rtol, atol=atol, err_msg=name)
    if hasattr(stats, "mean_probs"):
        np.testing.assert_allclose(stats.mean_probs.cpu().double().numpy(), want["mean_probs"], rtol=rtol,
                                   atol=atol * 1e-2)
        np.testing.assert_allclose(stats.mean_log_probs.cpu().double().numpy(), want["mean_log_probs"], rtol=rtol,
                                   atol=atol)


def teacher(shape, dtype=torch.float32, device="cpu", scale=3.0):
    return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype).to(device)


@pytest.mark.parametrize("lead", [(), (3,), (2, 5)])
@pytest.mark.parametrize("members", [1, 7])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_definitions(lead, members, dtype, device):
    x = teacher((*lead, members, 1271), dtype, device)
    stats = edd_ext.ensemble_stats(x)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert stats.mean_probs.shape == (*lead, 1271) and stats.mean_probs.dtype == out_dtype
    assert stats.total.shape == lead and stats.num_members == members
    assert_matches_oracle(stats, x, dtype)
    assert_matches_oracle(edd_ext.uncertainty.ensemble(x), x, dtype)


@pytest.mark.parametrize("temperature,smoothing", [(2.0, 0.0), (0.5, 0.1), (1.0, 0.01)])
def test_temperature_and_smoothing(temperature, smoothing, device):
    x = teacher((4, 3, 37), torch.float64, device)
    stats = edd_ext.ensemble_stats(x, temperature=temperature, smoothing=smoothing)
    assert_matches_oracle(stats, x, torch.float64, temperature=temperature, smoothing=smoothing)


def test_large_vocabulary(device):
    x = teacher((2, 3, 50000), torch.float32, device, scale=5.0)
    assert_matches_oracle(edd_ext.ensemble_stats(x), x, torch.float32)


def test_non_contiguous_inputs(device):
    base = teacher((6, 4, 2 * 301), torch.float32, device)
    for x in (base[..., ::2], base.transpose(0, 1).transpose(0, 1)[::2], base.permute(1, 0, 2).permute(1, 0, 2)):
        assert_matches_oracle(edd_ext.ensemble_stats(x), x, torch.float32)
    xt = teacher((4, 6, 301), torch.float32, device).transpose(0, 1)  # [6, 4, 301] with a strided member axis
    assert not xt.is_contiguous()
    assert_matches_oracle(edd_ext.ensemble_stats(xt), xt, torch.float32)


def test_extreme_logits_stay_finite(device):
    x = teacher((3, 4, 500), torch.float32, device, scale=1.0)
    x[0] *= 1e4  # near-one-hot members: probabilities underflow to 0
    x[1, :, 0] = 80.0
    x[2] = -1e4
    stats = edd_ext.ensemble_stats(x)
    for t in stats[:-1]:
        assert torch.isfinite(t).all()
    assert_matches_oracle(stats, x, torch.float32)


@given(
    members=st.integers(1, 6),
    vocab=st.integers(2, 300),
    positions=st.integers(1, 4),
    scale=st.floats(0.01, 20.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_identities_and_bounds(members, vocab, positions, scale, seed):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(positions, members, vocab, generator=g, dtype=torch.float64)
    s = edd_ext.ensemble_stats(x)
    torch.testing.assert_close(s.total, s.data + s.mutual_information, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.epkl, s.mutual_information + s.rmi, rtol=1e-10, atol=1e-12)
    for t in (s.mutual_information, s.epkl, s.rmi):
        assert (t >= 0).all()
    assert (s.total <= np.log(vocab) + 1e-12).all()
    torch.testing.assert_close(s.mean_probs.sum(-1), torch.ones(positions, dtype=torch.float64))


@given(seed=st.integers(0, 2**31 - 1), members=st.integers(2, 6))
def test_invariant_to_member_shifts_and_permutation(seed, members):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(3, members, 64, generator=g, dtype=torch.float64)
    shift = 50 * torch.randn(3, members, 1, generator=g, dtype=torch.float64)
    perm = torch.randperm(members, generator=g)
    a = edd_ext.ensemble_stats(x)
    for y in (x + shift, x[:, perm]):
        b = edd_ext.ensemble_stats(y)
        for name in ("total", "data", "mutual_information", "epkl", "rmi", "mean_probs", "mean_log_probs"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_members_have_no_knowledge_uncertainty(dtype, device):
    one = teacher((5, 1, 997), dtype, device)
    s = edd_ext.ensemble_stats(one.expand(5, 6, 997))
    tol = 16 * torch.finfo(dtype).eps * s.total  # rounding of the mean of M equal numbers, nothing more
    for t in (s.mutual_information, s.epkl, s.rmi):
        assert ((t >= 0) & (t <= tol)).all()
    torch.testing.assert_close(s.total, s.data)


def test_nan_position_does_not_leak(device):
    x = teacher((4, 3, 50), torch.float32, device)
    clean = edd_ext.ensemble_stats(x)
    x[1, 2, 7] = float("nan")
    s = edd_ext.ensemble_stats(x)
    assert torch.isnan(s.total[1])
    keep = torch.tensor([0, 2, 3], device=device)
    torch.testing.assert_close(s.total[keep], clean.total[keep], rtol=0, atol=0)


def test_empty_batch(device):
    s = edd_ext.ensemble_stats(torch.empty(0, 3, 10, device=device))
    assert s.mean_probs.shape == (0, 10) and s.total.shape == (0,)


@pytest.mark.parametrize(
    "x,kwargs,match",
    [
        (torch.randn(10), {}, r"teacher_logits: expected at least 2 dimension\(s\), got shape \(10,\)"),
        (torch.randn(3, 4, 1), {}, r"V >= 2 classes in \[\*, M, V\], got shape \(3, 4, 1\)"),
        (torch.randn(3, 0, 5), {}, r"M >= 1 members"),
        (torch.ones(3, 4, 5, dtype=torch.int64), {}, r"teacher_logits: expected a floating dtype.*torch.int64"),
        (torch.randn(3, 4, 5), {"temperature": 0.0}, r"temperature: expected a positive number"),
        (torch.randn(3, 4, 5), {"smoothing": 1.0}, r"smoothing: expected a number in \[0, 1\)"),
        ([[1.0, 2.0]], {}, r"teacher_logits: expected a Tensor, got list"),
    ],
)
def test_structural_errors_are_value_errors(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        edd_ext.ensemble_stats(x, **kwargs)


def test_op_level_checks_raise_value_error():
    with pytest.raises(ValueError, match=r"teacher_logits: expected V >= 2"):
        torch.ops.edd_ext.ensemble_stats(torch.randn(2, 3, 1), 1.0, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        torch.ops.edd_ext.ensemble_uncertainty(torch.randn(2, 3, 4), -1.0, 0.0)


def test_teacher_requiring_grad_is_treated_as_constant():
    x = torch.randn(2, 3, 11, requires_grad=True)
    s = edd_ext.ensemble_stats(x)
    assert not s.mean_log_probs.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype, device):
    x = teacher((2, 3, 4, 33), dtype, device)
    torch.library.opcheck(torch.ops.edd_ext.ensemble_stats.default, (x, 1.5, 0.05))
    torch.library.opcheck(torch.ops.edd_ext.ensemble_uncertainty.default, (x, 1.0, 0.0))


def test_torch_compile_fullgraph(device):
    torch._dynamo.reset()
    fn = torch.compile(lambda t: edd_ext.ensemble_stats(t, temperature=2.0), fullgraph=True, backend="aot_eager")
    x = teacher((3, 4, 19), torch.float32, device)
    got, want = fn(x), edd_ext.ensemble_stats(x, temperature=2.0)
    for a, b in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and edd_ext.cuda_built()), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(dtype):
    x = teacher((8, 5, 32000), dtype)
    a = edd_ext.ensemble_stats(x)
    b = edd_ext.ensemble_stats(x.cuda())
    for name in ("total", "data", "mutual_information", "epkl", "rmi", "mean_probs", "mean_log_probs"):
        torch.testing.assert_close(getattr(b, name).cpu(), getattr(a, name), rtol=1e-5, atol=1e-7)
