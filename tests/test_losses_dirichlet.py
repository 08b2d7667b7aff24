"""edd_ext.dirichlet_nll and edd_ext.proxy_dirichlet_kl (the fused kernels) against float64 oracles built on
torch.distributions (Dirichlet.log_prob, kl_divergence(Dirichlet, Dirichlet)) and the pairwise definitions of
the ensemble measures; gradcheck of every option; the SPEC's properties (KL >= 0 and 0 at the target,
stationary points); finiteness at extreme student logits."""
import math

import _loss_oracles as O
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import edd_ext
from edd_ext import reference as R

SIZES = [(v, m) for v in (2, 7, 1271, 32000) for m in (1, 3, 10)]


def _inputs(v, m, dtype, positions=3, seed=0):
    z = O.randn(positions, v, seed=seed, dtype=dtype)
    u = O.randn(positions, m, v, seed=seed + 1, scale=3.0, dtype=dtype)
    return z, u


def _run(fn, dtype, device, *students):
    """Fused loss (reduction "none") and the students' gradients of its sum, on `device`."""
    xs = [s.detach().clone().to(device).requires_grad_() for s in students]
    loss = fn(*xs)
    loss.sum().backward()
    return loss, [x.grad for x in xs]


def _check(fused_fn, ref_fn, oracle_fn, z, dtype, device):
    truth, (grad_truth,) = O.value_and_grads(oracle_fn, z)
    loss, (grad,) = _run(fused_fn, dtype, device, z)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert grad.dtype == dtype and loss.device.type == device.type
    peer = peer_grad = None
    if dtype != torch.float64:
        peer, (peer_grad,) = _run(ref_fn, dtype, torch.device("cpu"), z)
    O.assert_close_to_truth(loss, truth, dtype, peer=peer, what="loss")
    O.assert_close_to_truth(grad, grad_truth, dtype, peer=peer_grad, rtol=1e-8 if dtype == torch.float64 else None,
                            what="grad")


# --------------------------------------------------------------------------------------------------
# values and gradients against torch.distributions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v,m", SIZES)
@pytest.mark.parametrize("dtype", O.DTYPES)
def test_dirichlet_nll_matches_torch_dirichlet(v, m, dtype, device):
    z, u = _inputs(v, m, dtype)
    ud = u.to(device)
    _check(lambda s: edd_ext.dirichlet_nll(s, ud, reduction="none"),
           lambda s: R.dirichlet_nll(s, u, reduction="none"),
           lambda s: O.dirichlet_nll(s, u), z, dtype, device)


@pytest.mark.parametrize("v,m", SIZES)
@pytest.mark.parametrize("dtype", O.DTYPES)
def test_proxy_kl_matches_torch_kl_divergence(v, m, dtype, device):
    z, u = _inputs(v, m, dtype)
    ud = u.to(device)
    # With M = 1 the target precision (V - 1) / (2 RMI + eps) divides by rounding noise of RMI = 0 in reduced
    # precision (ill-conditioned in any implementation): clamp it there.
    kw = {"max_precision": 1e3 * v} if (m == 1 and dtype != torch.float64) else {}
    _check(lambda s: edd_ext.proxy_dirichlet_kl(s, ud, reduction="none", **kw),
           lambda s: R.proxy_dirichlet_kl(s, u, reduction="none", **kw),
           lambda s: O.proxy_dirichlet_kl(s, u, **kw), z, dtype, device)


PROXY_OPTIONS = [
    {},
    {"direction": "forward"},
    {"precision": "epkl"},
    {"direction": "forward", "precision": "epkl", "target_offset": 0.5},
    {"model_offset": 0.75, "target_offset": 2.0},
    {"max_precision": 3.0},
    {"eps": 1e-3},
    {"reference_code_compat": True},
    {"reference_code_compat": True, "precision": "epkl", "model_offset": 0.5},
]


@pytest.mark.parametrize("kw", PROXY_OPTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("v", [7, 1271])
def test_proxy_kl_options_match_oracle(kw, dtype, v, device):
    z, u = _inputs(v, 3, dtype, seed=5)
    ud = u.to(device)
    _check(lambda s: edd_ext.proxy_dirichlet_kl(s, ud, reduction="none", **kw),
           lambda s: R.proxy_dirichlet_kl(s, u, reduction="none", **kw),
           lambda s: O.proxy_dirichlet_kl(s, u, **kw), z, dtype, device)


@pytest.mark.parametrize("model_offset", [1.0, 0.5, 0.0])
def test_dirichlet_nll_model_offset(model_offset, device):
    z, u = _inputs(9, 4, torch.float64, seed=7)
    _check(lambda s: edd_ext.dirichlet_nll(s, u.to(device), model_offset=model_offset, reduction="none"), None,
           lambda s: O.dirichlet_nll(s, u, model_offset), z, torch.float64, device)


@pytest.mark.parametrize("name,kw", [("dirichlet_nll", {})] + [("proxy_dirichlet_kl", kw) for kw in PROXY_OPTIONS])
def test_stats_teacher_equals_logits_teacher(name, kw, device):
    z, u = _inputs(11, 4, torch.float64, seed=9)
    z, u = z.to(device), u.to(device)
    fn = getattr(edd_ext, name)
    a, (ga,) = _run(lambda s: fn(s, u, reduction="none", **kw), torch.float64, device, z)
    b, (gb,) = _run(lambda s: fn(s, edd_ext.ensemble_stats(u), reduction="none", **kw), torch.float64, device, z)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_stats_teacher_in_float32_with_float64_student():
    z, u = _inputs(50, 3, torch.float64, seed=10)
    stats = edd_ext.ensemble_stats(u.float())  # float32 rows, float64 student: computed in float64
    for fn in (edd_ext.dirichlet_nll, edd_ext.proxy_dirichlet_kl):
        got = fn(z, stats, reduction="none")
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, fn(z, u, reduction="none"), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# gradcheck (float64) of every option, from logits and from statistics, with a mask
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,kw",
    [("dirichlet_nll", {}), ("dirichlet_nll", {"model_offset": 0.3}), ("dirichlet_nll", {"model_offset": 0.0})]
    + [("proxy_dirichlet_kl", kw) for kw in PROXY_OPTIONS],
)
@pytest.mark.parametrize("as_stats", [False, True])
def test_gradcheck(name, kw, as_stats):
    z = O.randn(3, 5, seed=11).requires_grad_()
    u = O.randn(3, 3, 5, seed=12, scale=2.0)
    teacher = edd_ext.ensemble_stats(u) if as_stats else u
    mask = torch.tensor([True, False, True])
    fn = getattr(edd_ext, name)
    assert torch.autograd.gradcheck(lambda s: fn(s, teacher, mask=mask, reduction="none", **kw), (z,))


# --------------------------------------------------------------------------------------------------
# properties (float64)
# --------------------------------------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(
    direction=st.sampled_from(["reverse", "forward"]),
    precision=st.sampled_from(["mkl", "epkl"]),
    student_scale=st.floats(0.0, 6.0),
    teacher_scale=st.floats(0.0, 6.0),
    m=st.integers(1, 5),
    v=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_proxy_kl_is_nonnegative(direction, precision, student_scale, teacher_scale, m, v, seed):
    z = O.randn(3, v, seed=seed, scale=student_scale)
    u = O.randn(3, m, v, seed=seed + 1, scale=teacher_scale)
    loss = edd_ext.proxy_dirichlet_kl(z, u, direction=direction, precision=precision, reduction="none")
    assert torch.isfinite(loss).all()
    assert (loss >= -1e-9 * (1 + loss.abs().max())).all()


@settings(max_examples=10, deadline=None)
@given(
    direction=st.sampled_from(["reverse", "forward"]),
    precision=st.sampled_from(["mkl", "epkl"]),
    target_offset=st.sampled_from([0.5, 1.0, 2.0]),
    model_offset=st.sampled_from([0.25, 1.0]),
    v=st.integers(2, 30),
    seed=st.integers(0, 2**16),
)
def test_proxy_kl_is_zero_and_stationary_at_the_target(direction, precision, target_offset, model_offset, v, seed):
    u = O.randn(3, 4, v, seed=seed, scale=2.0)
    beta, _, _ = O.ensemble_target(u, precision, target_offset)
    # alpha = exp(z) + c = beta needs beta > c
    if (beta <= model_offset + 1e-3).any():
        return
    z = (beta - model_offset).log().requires_grad_()
    loss = edd_ext.proxy_dirichlet_kl(z, u, direction=direction, precision=precision, target_offset=target_offset,
                                      model_offset=model_offset, reduction="none")
    loss.sum().backward()
    assert loss.abs().max() < 1e-9
    assert z.grad.abs().max() < 1e-9


def test_compat_objective_is_stationary_at_its_own_optimum():
    # The released objective's optimum is alpha = beta_0 pi^ + 1 (precision beta^_0 + 2V), not beta.
    u = O.randn(3, 4, 6, seed=13)
    beta, beta0, mean = O.ensemble_target(u)

    def grad_at(alpha, **kw):
        z = (alpha - 1.0).log().requires_grad_()
        edd_ext.proxy_dirichlet_kl(z, u, reduction="sum", **kw).backward()
        return z.grad

    compat_opt = beta0[:, None] * mean + 1.0
    assert grad_at(compat_opt, reference_code_compat=True).abs().max() < 1e-10
    assert grad_at(beta, reference_code_compat=True).abs().max() > 1e-4
    assert grad_at(beta).abs().max() < 1e-10


@settings(max_examples=10, deadline=None)
@given(m=st.integers(2, 6), v=st.integers(2, 40), seed=st.integers(0, 2**16))
def test_dirichlet_nll_gradient_vanishes_at_moment_matching_precision(m, v, seed):
    # dL/dalpha_k = psi(alpha_k) - psi(alpha_0) - l-_k = 0 <=> E_Dir[ln pi_k] = l-_k: check the gradient agrees
    # with that condition's residual (not its root, which has no closed form).
    z = O.randn(2, v, seed=seed).requires_grad_()
    u = O.randn(2, m, v, seed=seed + 1)
    edd_ext.dirichlet_nll(z, u, reduction="sum").backward()
    alpha = z.detach().exp() + 1.0
    residual = torch.digamma(alpha) - torch.digamma(alpha.sum(-1, keepdim=True)) - torch.log_softmax(u, -1).mean(-2)
    torch.testing.assert_close(z.grad, (alpha - 1.0) * residual, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# extreme inputs
# --------------------------------------------------------------------------------------------------


def _extreme_student(v, dtype=torch.float32):
    z = O.randn(2, v, seed=14, dtype=dtype)
    z[0, :5] = 80.0
    z[0, 5:50] = -1e4
    z[1, :] = -1e4
    z[1, 7] = 80.0
    return z


@pytest.mark.parametrize(
    "call",
    [
        lambda z, u: edd_ext.dirichlet_nll(z, u),
        lambda z, u: edd_ext.proxy_dirichlet_kl(z, u),
        lambda z, u: edd_ext.proxy_dirichlet_kl(z, u, direction="forward", precision="epkl"),
        lambda z, u: edd_ext.proxy_dirichlet_kl(z, u, reference_code_compat=True),
    ],
)
def test_extreme_student_logits_are_finite_in_float32(call, device):
    z = _extreme_student(32000).to(device).requires_grad_()
    u = O.randn(2, 5, 32000, seed=15, scale=4.0, dtype=torch.float32).to(device)
    u[0, 0] *= 10.0  # a near-one-hot member (log-probabilities down to about -300)
    loss = call(z, u)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("m", [1, 3])
def test_dirichlet_nll_extreme_logits_match_float64_oracle(m, device):
    z = _extreme_student(300, torch.float64)
    u = O.randn(2, m, 300, seed=16, scale=3.0)
    _check(lambda s: edd_ext.dirichlet_nll(s, u.float().to(device), reduction="none"),
           lambda s: R.dirichlet_nll(s, u.float(), reduction="none"),
           lambda s: O.dirichlet_nll(s, u.float()), z.float(), torch.float32, device)


@pytest.mark.parametrize("name,kw", [("dirichlet_nll", {}), ("proxy_dirichlet_kl", {"direction": "forward"})])
def test_zero_model_offset_with_underflowing_concentrations(name, kw, device):
    # c = 0 and z = -200: alpha = exp(-200) underflows in float32 (not in float64), yet ln Gamma(alpha) ~ 200
    # and exp(z) psi(alpha) ~ -1 are finite; the kernel takes them from ln alpha.
    z = O.randn(2, 20, seed=17)
    z[:, :6] = -200.0
    u = O.randn(2, 3, 20, seed=18)
    fn = getattr(edd_ext, name)
    oracle = O.dirichlet_nll if name == "dirichlet_nll" else O.proxy_dirichlet_kl
    truth, (grad_truth,) = O.value_and_grads(lambda s: oracle(s, u, model_offset=0.0, **kw), z)
    loss, (grad,) = _run(lambda s: fn(s, u.float().to(device), model_offset=0.0, reduction="none", **kw),
                         torch.float32, device, z.float())
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loss.cpu().double(), truth, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.cpu().double(), grad_truth, rtol=1e-4, atol=1e-5)


def test_single_member_nll_is_finite():
    z = torch.tensor([[3.0, -1.0, 0.5], [80.0, -1e4, 0.0]], requires_grad=True)
    u = torch.tensor([[[2.0, 0.0, -1.0]], [[0.0, 0.0, 0.0]]])
    loss = edd_ext.dirichlet_nll(z, u, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    assert math.isfinite(edd_ext.proxy_dirichlet_kl(z, u).item())
