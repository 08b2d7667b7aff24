"""Every CPU op runs its positions on every thread torch allows (OpenMP through at::parallel_for: a build without
-fopenmp runs them all on the calling thread). A test hook records the threads that ran the chunks of a call."""
import pytest
import torch

import edd_ext
from edd_ext import _ops

pytestmark = pytest.mark.skipif(not edd_ext.has_extension(), reason="extension not built")

THREADS = 2
# M V = 32768 teacher elements: one position per chunk at least (from statistics, with V elements per position,
# 32768 / V = 4), so N = 16 positions make at least THREADS chunks everywhere
N, M, V = 16, 4, 8192


def _calls(dtype):
    g = torch.Generator().manual_seed(0)
    u = (3 * torch.randn(N, M, V, generator=g)).to(dtype)
    z = torch.randn(N, V, generator=g).to(dtype)
    rho = (0.3 * torch.randn(N, V, generator=g)).to(dtype)
    stats = edd_ext.ensemble_stats(u)
    return {
        "ensemble_stats": lambda: edd_ext.ensemble_stats(u),
        "uncertainty.ensemble": lambda: edd_ext.uncertainty.ensemble(u),
        "dirichlet_nll": lambda: edd_ext.dirichlet_nll(z, u),
        "dirichlet_nll[stats]": lambda: edd_ext.dirichlet_nll(z, stats),
        "proxy_dirichlet_kl": lambda: edd_ext.proxy_dirichlet_kl(z, u),
        "ensemble_kl": lambda: edd_ext.ensemble_kl(z, u),
        "logit_gaussian_nll": lambda: edd_ext.logit_gaussian_nll(z, rho, u),
        "logit_laplace_nll": lambda: edd_ext.logit_laplace_nll(z, rho, u),
        "uncertainty.dirichlet": lambda: edd_ext.uncertainty.dirichlet(z),
        "uncertainty.logit_distribution": lambda: edd_ext.uncertainty.logit_distribution(z, rho, num_samples=4),
    }


CALLS = sorted(_calls(torch.float32))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CALLS)
def test_every_op_uses_every_thread(two_threads, name, dtype):
    call = _calls(dtype)[name]
    _ops._C.record_cpu_threads(True)
    try:
        call()
    finally:
        threads = _ops._C.record_cpu_threads(False)
    assert len(threads) == THREADS, (
        f"{name} ran its {N} positions on {len(threads)} thread(s) with torch.get_num_threads() == "
        f"{torch.get_num_threads()} (is the extension built with OpenMP? {_ops._C.build_info()})")


def test_one_thread_when_torch_allows_one():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _ops._C.record_cpu_threads(True)
        _calls(torch.float32)["ensemble_kl"]()
        threads = _ops._C.record_cpu_threads(False)
    finally:
        torch.set_num_threads(before)
    assert len(threads) == 1
