"""Teacher logits of -inf (vocabulary padding, banned tokens) are probabilities of exactly 0 (SPEC section 5).

The oracle is the float64 reference taken to the limit: the same teacher with every -inf replaced by FAR = -1e30,
where exp underflows to exactly 0 and the members' log-probabilities stay finite, so that every quantity with a
finite limit is that limit to float64 precision, and a quantity whose limit is +inf is astronomically large there.
  * the ensemble measures, the proxy-Dirichlet KL and the ensemble KL are finite and equal that limit (EPKL and
    RMI are +inf when only some members give a class probability 0: the KL between those members is infinite);
  * dirichlet_nll (l_k = -inf) and the logit Gaussian / Laplace NLL (a target of -inf) are +inf, never NaN;
  * a student logit of -inf (alpha_k = c) stays finite.
Runs the kernels on every device the suite has (CPU here, CUDA on a GPU machine) and checks the reference's own
-inf handling."""
import math

import pytest
import torch

import edd_ext
from edd_ext import reference as R

FAR = -1e30
N, M, V = 4, 3, 37  # 37 classes: the CPU SIMD body (32) and its scalar tail
SHARED = (0, 5, 36)  # -inf in every member
ONE_MEMBER = 7  # -inf in member 1 only (the "disagree" case)
DTYPES = [torch.float64, torch.float32]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _teacher(disagree: bool, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    u = 2.0 * torch.randn(N, M, V, generator=g, dtype=torch.float64)
    u[..., list(SHARED)] = -math.inf
    if disagree:
        u[:, 1, ONE_MEMBER] = -math.inf
    return u.to(dtype)


def _student(dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    return torch.randn(N, V, generator=g, dtype=torch.float64).to(dtype)


def _limit(u: torch.Tensor) -> torch.Tensor:
    """The teacher in float64 with -inf replaced by FAR."""
    return torch.where(u == -math.inf, torch.full((), FAR, dtype=torch.float64), u.double())


def _close(got, want, dtype, what):
    torch.testing.assert_close(got.detach().cpu().double(), want.detach().double(), **TOL[dtype], msg=what)


def _loss_and_grad(fn, students, device):
    xs = [s.detach().clone().to(device).requires_grad_() for s in students]
    loss = fn(*xs)
    loss.sum().backward()
    return loss.detach().cpu(), [x.grad.cpu() for x in xs]


# ---- ensemble statistics -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_ensemble_stats_at_shared_padding_equal_the_limit(dtype, smoothing, device):
    u = _teacher(disagree=False, dtype=dtype)
    got = edd_ext.ensemble_stats(u.to(device), smoothing=smoothing)
    want = R.ensemble_stats(_limit(u), smoothing=smoothing)
    for field in ("total", "data", "mutual_information", "epkl", "rmi", "mean_probs"):
        _close(getattr(got, field), getattr(want, field), dtype, field)
    log_probs = got.mean_log_probs.cpu()
    keep = [k for k in range(V) if k not in SHARED]
    _close(log_probs[:, keep], want.mean_log_probs[:, keep], dtype, "mean_log_probs")
    if smoothing == 0:
        assert (got.mean_probs.cpu()[:, list(SHARED)] == 0).all()
        assert (log_probs[:, list(SHARED)] == -math.inf).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_ensemble_stats_when_members_disagree(dtype, device):
    u = _teacher(disagree=True, dtype=dtype)
    got = edd_ext.ensemble_stats(u.to(device))
    want = R.ensemble_stats(_limit(u))
    for field in ("total", "data", "mutual_information", "mean_probs"):
        _close(getattr(got, field), getattr(want, field), dtype, field)
    for field in ("epkl", "rmi"):  # an infinite KL between the members: the limit is +inf
        assert (getattr(got, field).cpu() == math.inf).all(), field
        assert (getattr(want, field) > 1e25).all(), field


def test_reference_gives_the_limit_itself():
    for disagree in (False, True):
        u = _teacher(disagree)
        at_inf, at_limit = R.ensemble_stats(u), R.ensemble_stats(_limit(u))
        for field in ("total", "data", "mutual_information", "mean_probs"):
            torch.testing.assert_close(getattr(at_inf, field), getattr(at_limit, field), rtol=1e-12, atol=1e-14)
        for field in ("epkl", "rmi"):
            if disagree:
                assert (getattr(at_inf, field) == math.inf).all()
            else:
                torch.testing.assert_close(getattr(at_inf, field), getattr(at_limit, field), rtol=1e-12, atol=1e-14)


# ---- losses with a finite limit ------------------------------------------------------------------

FINITE_LOSSES = {
    "ensemble_kl": (edd_ext.ensemble_kl, R.ensemble_kl, {}),
    "proxy_reverse_mkl": (edd_ext.proxy_dirichlet_kl, R.proxy_dirichlet_kl, {}),
    "proxy_forward_epkl": (edd_ext.proxy_dirichlet_kl, R.proxy_dirichlet_kl,
                           {"direction": "forward", "precision": "epkl"}),
    "proxy_compat": (edd_ext.proxy_dirichlet_kl, R.proxy_dirichlet_kl, {"reference_code_compat": True}),
}


@pytest.mark.parametrize("name", sorted(FINITE_LOSSES))
@pytest.mark.parametrize("disagree", [False, True])
@pytest.mark.parametrize("from_stats", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_equal_the_limit(name, disagree, from_stats, dtype, device):
    fused, ref, kw = FINITE_LOSSES[name]
    u, z = _teacher(disagree, dtype), _student(dtype)
    teacher = edd_ext.ensemble_stats(u.to(device)) if from_stats else u.to(device)
    loss, (grad,) = _loss_and_grad(lambda s: fused(s, teacher, reduction="none", **kw), [z], device)
    want, (want_grad,) = _loss_and_grad(lambda s: ref(s, _limit(u), reduction="none", **kw), [z.double()], "cpu")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    _close(loss, want, dtype, "loss")
    _close(grad, want_grad, dtype, "grad")


@pytest.mark.parametrize("name", sorted(FINITE_LOSSES))
def test_reference_losses_equal_the_limit(name):
    _, ref, kw = FINITE_LOSSES[name]
    u, z = _teacher(disagree=True), _student()
    torch.testing.assert_close(ref(z, u, reduction="none", **kw), ref(z, _limit(u), reduction="none", **kw),
                               rtol=1e-9, atol=1e-12)


# ---- losses whose limit is +inf ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("from_stats", [False, True])
def test_dirichlet_nll_is_plus_inf(dtype, from_stats, device):
    u, z = _teacher(False, dtype), _student(dtype)
    teacher = edd_ext.ensemble_stats(u.to(device)) if from_stats else u.to(device)
    loss, (grad,) = _loss_and_grad(lambda s: edd_ext.dirichlet_nll(s, teacher, reduction="none"), [z], device)
    assert (loss == math.inf).all()
    assert (grad[:, list(SHARED)] == math.inf).all()
    # the other classes' gradients do not depend on the padded ones: the limit's gradients
    keep = [k for k in range(V) if k not in SHARED]
    want, (want_grad,) = _loss_and_grad(lambda s: R.dirichlet_nll(s, _limit(u), reduction="none"), [z.double()], "cpu")
    assert (want > 1e25).all()
    _close(grad[:, keep], want_grad[:, keep], dtype, "grad")
    # the reference itself is +inf too, and its mean reduction as well
    assert (R.dirichlet_nll(z.double(), u.double(), reduction="none") == math.inf).all()
    assert edd_ext.dirichlet_nll(z.to(device), teacher).item() == math.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_dirichlet_nll_with_smoothing_is_finite(dtype, device):
    u, z = _teacher(True, dtype), _student(dtype)
    loss, (grad,) = _loss_and_grad(
        lambda s: edd_ext.dirichlet_nll(s, edd_ext.ensemble_stats(u.to(device), smoothing=0.05), reduction="none"),
        [z], device)
    want, (want_grad,) = _loss_and_grad(
        lambda s: R.dirichlet_nll(s, R.ensemble_stats(_limit(u), smoothing=0.05), reduction="none"), [z.double()],
        "cpu")
    _close(loss, want, dtype, "loss")
    _close(grad, want_grad, dtype, "grad")


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
@pytest.mark.parametrize("teacher_norm", ["log_softmax", "center", "none"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_logit_losses_are_plus_inf(family, teacher_norm, dtype, device):
    fused = edd_ext.logit_gaussian_nll if family == "gaussian" else edd_ext.logit_laplace_nll
    ref = R.logit_gaussian_nll if family == "gaussian" else R.logit_laplace_nll
    u = _teacher(True, dtype)
    mu, rho = _student(dtype), 0.5 * _student(dtype).flip(-1)
    ud = u.to(device)
    loss, (g_mu, g_rho) = _loss_and_grad(
        lambda a, b: fused(a, b, ud, teacher_norm=teacher_norm, reduction="none"), [mu, rho], device)
    assert (loss == math.inf).all()
    assert not g_mu.isnan().any() and not g_rho.isnan().any()
    assert (g_rho[:, list(SHARED)] == -math.inf).all()
    assert (ref(mu.double(), rho.double(), u.double(), teacher_norm=teacher_norm, reduction="none") == math.inf).all()
    if teacher_norm == "log_softmax":
        # classes with finite targets: their gradients are the limit's (classes are independent)
        keep = [k for k in range(V) if k not in SHARED and k != ONE_MEMBER]
        want, (w_mu, w_rho) = _loss_and_grad(
            lambda a, b: ref(a, b, _limit(u), reduction="none"), [mu.double(), rho.double()], "cpu")
        assert (want > 1e25).all()
        _close(g_mu[:, keep], w_mu[:, keep], dtype, "grad loc")
        _close(g_rho[:, keep], w_rho[:, keep], dtype, "grad log_scale")


# ---- -inf student logits -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_neg_inf_student_logits_stay_finite(dtype, device):
    g = torch.Generator().manual_seed(5)
    u = torch.randn(N, M, V, generator=g, dtype=torch.float64).to(dtype)
    z = _student(dtype)
    z[:, [1, 20, 35]] = -math.inf
    z_limit = torch.where(z == -math.inf, torch.full((), FAR, dtype=torch.float64), z.double())
    for fused, ref in ((edd_ext.dirichlet_nll, R.dirichlet_nll), (edd_ext.proxy_dirichlet_kl, R.proxy_dirichlet_kl)):
        loss, (grad,) = _loss_and_grad(lambda s, f=fused: f(s, u.to(device), reduction="none"), [z], device)
        want, (want_grad,) = _loss_and_grad(lambda s, f=ref: f(s, u.double(), reduction="none"), [z_limit], "cpu")
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        _close(loss, want, dtype, fused.__name__)
        _close(grad, want_grad, dtype, fused.__name__ + " grad")
    got = edd_ext.uncertainty.dirichlet(z.to(device))
    want = R.dirichlet_uncertainty(z_limit)
    for field in ("total", "data", "mutual_information", "epkl", "rmi", "precision"):
        _close(getattr(got, field), getattr(want, field), dtype, field)
