"""The counter-based generator behind the logit-distribution Monte Carlo (csrc/include/edd_ext/philox.h,
student_math.h): Philox4x32-10 against the Random123 known-answer vectors, and the float32 normal and Laplace
noise it feeds (moments, Kolmogorov-Smirnov tests, independence, reproducibility, CPU = CUDA)."""
import numpy as np
import pytest
import torch
from scipy import stats

import edd_ext

MASK32 = 0xFFFFFFFF

# Random123 tests/kat_vectors, philox4x32 with 10 rounds: (counter, key, output).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32, MASK32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def seed_of(key):
    """The int64 seed whose low and high 32-bit words are the Philox key."""
    word = key[0] | (key[1] << 32)
    return word - 2**64 if word >= 2**63 else word


def noise(positions, samples, vocab, family, seed=0, device="cpu"):
    pos = torch.as_tensor(positions, dtype=torch.int64, device=device)
    return torch.ops.edd_ext_testing.philox_noise(pos, seed, samples, vocab, family)


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_known_answer_vectors(counter, key, expected, device):
    c = torch.tensor([counter], dtype=torch.int64, device=device)
    out = torch.ops.edd_ext_testing.philox4x32(c, seed_of(key))
    assert [v & MASK32 for v in out[0].tolist()] == list(expected)


def test_counter_and_key_change_every_word():
    base = torch.ops.edd_ext_testing.philox4x32(torch.zeros(1, 4, dtype=torch.int64), 0)
    for i in range(4):
        c = torch.zeros(1, 4, dtype=torch.int64)
        c[0, i] = 1
        assert (torch.ops.edd_ext_testing.philox4x32(c, 0) != base).all()
    for seed in (1, 1 << 32):
        assert (torch.ops.edd_ext_testing.philox4x32(torch.zeros(1, 4, dtype=torch.int64), seed) != base).all()


def test_noise_layout_matches_the_counter_convention():
    """Sample s of class k at position n is word s % 4 of Philox((k, s // 4, n_lo, n_hi), seed) transformed:
    re-derive the Laplace variates of one position from the raw words."""
    n, seed, samples, vocab = 5, 1234, 6, 7
    got = noise([n], samples, vocab, "laplace", seed)[0].double().numpy()
    k = torch.arange(vocab).repeat_interleave(2)
    g = torch.tensor([0, 1] * vocab)
    counters = torch.stack([k, g, torch.full_like(k, n), torch.zeros_like(k)], -1)
    words = torch.ops.edd_ext_testing.philox4x32(counters, seed) & MASK32
    words = words.view(vocab, 2, 4).reshape(vocab, 8)[:, :samples].T
    words = words.numpy().astype(np.uint64)
    v = ((words & 0xFFFFFF) + 1) * 2.0**-24
    want = np.where(words >> 31, np.log(v), -np.log(v))
    np.testing.assert_allclose(got, want, rtol=2e-7, atol=1e-7)


@pytest.fixture(scope="module")
def gaussian_draws():
    return noise(range(8), 25, 5000, "gaussian", seed=7).double().numpy()  # 1e6 draws


@pytest.fixture(scope="module")
def laplace_draws():
    return noise(range(8), 25, 5000, "laplace", seed=7).double().numpy()


def assert_moments(x, mean, var, fourth):
    n = x.size
    assert abs(x.mean() - mean) < 5 * np.sqrt(var / n)
    assert abs(x.var() - var) < 5 * np.sqrt((fourth - var**2) / n)


def test_gaussian_noise_distribution(gaussian_draws):
    x = gaussian_draws.ravel()
    assert_moments(x, 0.0, 1.0, 3.0)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    assert abs(stats.skew(x)) < 5 * np.sqrt(6 / x.size)
    assert abs(stats.kurtosis(x)) < 5 * np.sqrt(24 / x.size)
    assert np.abs(x).max() <= np.sqrt(2 * 24 * np.log(2)) + 1e-5  # the 24-bit uniform bounds the tail


def test_laplace_noise_distribution(laplace_draws):
    x = laplace_draws.ravel()
    assert_moments(x, 0.0, 2.0, 24.0)
    assert stats.kstest(x, "laplace").pvalue > 1e-3
    assert abs(np.mean(np.abs(x)) - 1.0) < 5 * np.sqrt(1.0 / x.size)


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_noise_is_uncorrelated_across_samples_classes_and_positions(family, gaussian_draws, laplace_draws):
    x = gaussian_draws if family == "gaussian" else laplace_draws  # [P, S, V]
    pairs = [
        (x[:, :-1], x[:, 1:]),  # neighbouring samples (the two halves of a Box-Muller pair among them)
        (x[:, :-4], x[:, 4:]),  # neighbouring sample groups
        (x[..., :-1], x[..., 1:]),  # neighbouring classes
        (x[:-1], x[1:]),  # neighbouring positions
    ]
    for a, b in pairs:
        a, b = a.ravel(), b.ravel()
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
        assert abs(np.corrcoef(a**2, b**2)[0, 1]) < 5 / np.sqrt(a.size)  # dependence beyond correlation


def test_box_muller_pairs_have_exponential_squared_radius(gaussian_draws):
    x = gaussian_draws[:, :24].reshape(8, 12, 2, -1)  # samples (0, 1), (2, 3), ... share one Philox word pair
    r2 = (x[:, :, 0] ** 2 + x[:, :, 1] ** 2).ravel()
    assert stats.kstest(r2, "expon", args=(0, 2)).pvalue > 1e-3
    angle = np.arctan2(x[:, :, 1], x[:, :, 0]).ravel()
    assert stats.kstest(angle, "uniform", args=(-np.pi, 2 * np.pi)).pvalue > 1e-3


def test_noise_is_reproducible_and_seeded():
    a = noise([0, 3, 2**40], 9, 33, "gaussian", seed=11)
    assert torch.equal(a, noise([0, 3, 2**40], 9, 33, "gaussian", seed=11))
    assert torch.equal(a[1], noise([3], 9, 33, "gaussian", seed=11)[0])  # a pure function of the position
    assert not torch.equal(a, noise([0, 3, 2**40], 9, 33, "gaussian", seed=12))
    assert not torch.equal(a[0], a[1])
    # the first samples do not depend on how many are drawn
    assert torch.equal(a[:, :5], noise([0, 3, 2**40], 5, 33, "gaussian", seed=11))


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and edd_ext.cuda_built()), reason="needs CUDA")
def test_same_noise_on_cpu_and_cuda():
    for family in ("gaussian", "laplace"):
        cpu = noise([0, 1, 99], 13, 1001, family, seed=3)
        gpu = noise([0, 1, 99], 13, 1001, family, seed=3, device="cuda").cpu()
        # the same generator and transforms; only contraction into FMAs may move the last bits
        torch.testing.assert_close(gpu, cpu, rtol=1e-5, atol=1e-6)


def test_test_ops_check_their_arguments():
    with pytest.raises(ValueError, match=r"counters: expected an int64 tensor \[\*, 4\]"):
        torch.ops.edd_ext_testing.philox4x32(torch.zeros(2, 3, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"family: expected one of 'gaussian', 'laplace', got 'cauchy'"):
        noise([0], 2, 3, "cauchy")
    with pytest.raises(ValueError, match=r"num_samples: expected an int in \[1, 2\^32\], got 0"):
        noise([0], 0, 3, "gaussian")
    with pytest.raises(ValueError, match=r"positions: expected a 1-d int64 tensor"):
        torch.ops.edd_ext_testing.philox_noise(torch.zeros(2, 2, dtype=torch.int64), 0, 1, 3, "gaussian")


def test_opcheck(device):
    c = torch.randint(0, 2**32, (5, 4), dtype=torch.int64, device=device)
    torch.library.opcheck(torch.ops.edd_ext_testing.philox4x32.default, (c, -7))
    pos = torch.tensor([0, 4], device=device)
    torch.library.opcheck(torch.ops.edd_ext_testing.philox_noise.default, (pos, 3, 5, 6, "laplace"))
