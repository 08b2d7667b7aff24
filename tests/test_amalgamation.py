"""Knowledge amalgamation with teacher uncertainty (SPEC section 4): edd_ext.amalgamation."""
from __future__ import annotations

import importlib.util
import math
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import edd_ext.amalgamation as A

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MAPS = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


# ----------------------------------------------------------------------------------------------------
# An independent plain-torch definition of the targets and the loss (no edd_ext code).
# ----------------------------------------------------------------------------------------------------
def oracle_targets(teachers, maps, num_classes, mode, sel_t=0.2, measure="entropy", teacher_t=1.0):
    padded, scores = [], []
    for x, lm in zip(teachers, maps):
        x = x.double()
        p = torch.softmax(x / teacher_t, -1)  # [*, R, C_i]
        p_bar = p.mean(-2)
        entropy = -(p_bar * torch.log(p_bar)).sum(-1)
        if measure == "entropy":
            u = entropy
        else:
            u = entropy - (-(p * torch.log(p)).sum(-1)).mean(-1)
        scores.append(1 - u / math.log(x.shape[-1]))
        full = torch.zeros(p_bar.shape[:-1] + (num_classes,), dtype=torch.float64)
        for j, k in enumerate(lm):
            full[..., k] = p_bar[..., j]
        padded.append(full)
    s = torch.stack(scores, -1)
    if mode == "hard":
        w = F.one_hot(s.argmax(-1), len(teachers)).double()
    elif mode == "soft":
        w = torch.softmax(s / sel_t, -1)
    else:
        w = torch.full_like(s, 1 / len(teachers))
    target = sum(w[..., i, None] * padded[i] for i in range(len(teachers)))
    srt = s.sort(-1, descending=True).values
    gap = srt[..., 0] - srt[..., 1] if len(teachers) > 1 else torch.ones_like(srt[..., 0])
    return target, s, gap


def oracle_loss(z, target, tau=1.0, weight=None):
    loss = F.kl_div(F.log_softmax(z / tau, -1), target, reduction="none").sum(-1)
    return loss if weight is None else loss * weight


def make_teachers(batch=(6,), passes=(8, 5), sizes=(5, 5), seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch + (r, c), generator=g, dtype=torch.float64) * 2).to(dtype).to(device)
            for r, c in zip(passes, sizes)]


def confident(batch, passes, c, cls, device="cpu"):
    x = torch.full(batch + (passes, c), -4.0, dtype=torch.float64, device=device)
    x[..., cls] = 6.0
    return x + 0.05 * torch.randn(x.shape, dtype=torch.float64, device=device)


# ----------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    r=st.integers(1, 6), c=st.integers(2, 9), scale=st.sampled_from([0.0, 0.1, 1.0, 10.0, 1e3]),
    measure=st.sampled_from(A.MEASURES), seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_scores_in_unit_interval(r, c, scale, measure, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, r, c, generator=g, dtype=torch.float64) * scale).to(dtype)
    s = A.teacher_score(x, measure=measure)
    assert s.shape == (4,)
    assert s.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()


def test_score_matches_definition_and_extremes():
    x = make_teachers(batch=(3, 4))[0]
    _, s_ref, _ = oracle_targets([x], [MAPS[0]], 10, "hard")
    torch.testing.assert_close(A.teacher_score(x), s_ref[..., 0])
    _, s_mi, _ = oracle_targets([x], [MAPS[0]], 10, "hard", measure="mutual_information")
    torch.testing.assert_close(A.teacher_score(x, measure="mutual_information"), s_mi[..., 0])
    uniform = torch.zeros(2, 4, 7, dtype=torch.float64)
    torch.testing.assert_close(A.teacher_score(uniform), torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert (A.teacher_score(confident((2,), 4, 7, 3)) > 0.99).all()


def test_confident_teacher_is_chosen():
    batch = (5,)
    sure = confident(batch, 8, 5, 2)  # teacher 0: every pass says class 2
    unsure = torch.randn(batch + (8, 5), dtype=torch.float64) * 0.3  # teacher 1: flat
    out = A.amalgamation_targets([unsure, sure], MAPS, 10, mode="hard")
    assert (out.weights.argmax(-1) == 1).all()
    assert (out.target.argmax(-1) == 5 + 2).all()
    soft = A.amalgamation_targets([unsure, sure], MAPS, 10, mode="soft")
    assert (soft.weights[..., 1] > 0.9).all()


def test_mutual_information_prefers_the_teacher_whose_passes_agree():
    # Both teachers' mean predictions are equally flat over 2 of their classes, but teacher 0's passes
    # disagree (epistemic) while teacher 1's passes agree on a 50/50 split (aleatoric).
    disagree = torch.tensor([[8.0, -8.0, -8.0], [-8.0, 8.0, -8.0]], dtype=torch.float64).repeat(4, 1, 1)
    agree = torch.tensor([[8.0, 8.0, -8.0], [8.0, 8.0, -8.0]], dtype=torch.float64).repeat(4, 1, 1)
    maps = [[0, 1, 2], [3, 4, 5]]
    s_mi = A.amalgamation_targets([disagree, agree], maps, measure="mutual_information").scores
    assert (s_mi[:, 1] > s_mi[:, 0] + 0.5).all()
    s_h = A.amalgamation_targets([disagree, agree], maps, measure="entropy").scores
    torch.testing.assert_close(s_h[:, 0], s_h[:, 1], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Weights, padding, targets
# ----------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), seed=st.integers(0, 2**16), temperature=st.sampled_from([1e-3, 0.05, 0.2, 1.0, 50.0]))
def test_soft_weights_sum_to_one(k, seed, temperature):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(3, 7, k, generator=g)
    for mode in A.MODES:
        w = A.selection_weights(scores, mode=mode, temperature=temperature)
        assert w.shape == scores.shape and (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(3, 7))


def test_soft_tends_to_hard_as_temperature_goes_to_zero():
    teachers = make_teachers(batch=(40,), passes=(6, 6, 6), sizes=(4, 3, 3))
    maps = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    hard = A.amalgamation_targets(teachers, maps, mode="hard")
    gaps = []
    for t in (1.0, 0.2, 0.02, 1e-3, 1e-5):
        soft = A.amalgamation_targets(teachers, maps, mode="soft", selection_temperature=t)
        gaps.append(float((soft.target - hard.target).abs().max()))
    assert all(b <= a + 1e-12 for a, b in zip(gaps, gaps[1:])), gaps
    s = hard.scores.sort(-1, descending=True).values
    assert (s[:, 0] - s[:, 1]).min() > 1e-3  # distinct scores, so the limit is the one-hot selection
    assert gaps[-1] < 1e-6


def test_zero_padding_outside_teacher_labels():
    probs = torch.softmax(torch.randn(3, 4, 3), -1)
    out = A.pad_to_union(probs, [7, 1, 4], 9)
    assert out.shape == (3, 4, 9)
    others = [k for k in range(9) if k not in (7, 1, 4)]
    assert (out[..., others] == 0).all()
    assert torch.equal(out[..., [7, 1, 4]], probs)
    hard = A.amalgamation_targets(make_teachers(batch=(20,)), MAPS, 10, mode="hard")
    chosen = hard.weights.argmax(-1)
    for i, lm in enumerate(MAPS):
        outside = [k for k in range(10) if k not in lm]
        assert (hard.target[chosen == i][:, outside] == 0).all()
    torch.testing.assert_close(hard.target.sum(-1), torch.ones(20, dtype=torch.float64))


def test_overlapping_label_maps_and_uncovered_classes():
    teachers = make_teachers(batch=(5,), sizes=(3, 3))
    maps = [[0, 1, 2], [2, 3, 4]]  # class 2 is shared; classes 5 and 6 are covered by no teacher
    for mode in A.MODES:
        got = A.amalgamation_targets(teachers, maps, 7, mode=mode)
        want, _, _ = oracle_targets(teachers, maps, 7, mode)
        torch.testing.assert_close(got.target, want)
        assert (got.target[:, 5:] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", A.MODES)
@pytest.mark.parametrize("measure", A.MEASURES)
def test_targets_match_oracle(device, mode, measure):
    teachers = make_teachers(batch=(3, 5), passes=(4, 7, 2), sizes=(4, 2, 4), device=device)
    maps = [[9, 0, 3, 5], [1, 8], [2, 4, 6, 7]]
    got = A.amalgamation_targets(teachers, maps, mode=mode, measure=measure, selection_temperature=0.3,
                                 teacher_temperature=1.7)
    want, scores, margin = oracle_targets([t.cpu() for t in teachers], maps, 10, mode, 0.3, measure, 1.7)
    assert got.target.shape == (3, 5, 10) and got.weights.shape == got.scores.shape == (3, 5, 3)
    torch.testing.assert_close(got.target.cpu(), want)
    torch.testing.assert_close(got.scores.cpu(), scores)
    torch.testing.assert_close(got.margin.cpu(), margin)
    torch.testing.assert_close(got.margin, A.margin_weights(got.scores))


# ----------------------------------------------------------------------------------------------------
# The loss: values and gradients against plain torch KL
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", A.MODES)
@pytest.mark.parametrize("margin", [False, True])
@pytest.mark.parametrize("tau", [1.0, 2.5])
def test_loss_and_gradient_match_autograd_reference(device, mode, margin, tau):
    teachers = make_teachers(batch=(4, 3), device=device, seed=3)
    z = (torch.randn(4, 3, 10, dtype=torch.float64) * 3).to(device).requires_grad_()
    loss = A.amalgamation_loss(z, teachers, MAPS, mode=mode, temperature=tau, margin_weighting=margin,
                               reduction="none")
    target, _, gap = oracle_targets([t.cpu() for t in teachers], MAPS, 10, mode)
    z_ref = z.detach().cpu().clone().requires_grad_()
    want = oracle_loss(z_ref, target, tau, gap if margin else None)
    torch.testing.assert_close(loss.cpu(), want.detach())
    g = torch.randn(4, 3, dtype=torch.float64)
    (grad,) = torch.autograd.grad(loss, z, g.to(device))
    (grad_ref,) = torch.autograd.grad(want, z_ref, g)
    torch.testing.assert_close(grad.cpu(), grad_ref)
    # The closed form: dL/dz = w (softmax(z/tau) - t) / tau.
    w = (gap if margin else torch.ones_like(gap)) * g
    closed = w[..., None] * (torch.softmax(z_ref.detach() / tau, -1) - target) / tau
    torch.testing.assert_close(grad.cpu(), closed)


def test_gradcheck_and_no_gradient_to_teachers():
    teachers = [t.requires_grad_() for t in make_teachers(batch=(3,), passes=(3, 4))]
    z = torch.randn(3, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda z: A.amalgamation_loss(z, teachers, MAPS, mode="soft", temperature=1.3, margin_weighting=True), (z,)
    )
    loss = A.amalgamation_loss(z, teachers, MAPS)
    assert not torch.autograd.grad(loss, teachers, allow_unused=True, materialize_grads=True)[0].any()


def test_reductions_and_mask():
    teachers = make_teachers(batch=(4, 5))
    z = torch.randn(4, 5, 10, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(4, 5) > 0.4
    mask[0, 0] = True
    none = A.amalgamation_loss(z, teachers, MAPS, reduction="none")
    torch.testing.assert_close(A.amalgamation_loss(z, teachers, MAPS, reduction="sum"), none.sum())
    torch.testing.assert_close(A.amalgamation_loss(z, teachers, MAPS), none.mean())
    torch.testing.assert_close(A.amalgamation_loss(z, teachers, MAPS, mask=mask), none[mask].sum() / mask.sum())
    # A masked position contributes exactly 0 and gets exactly 0 gradient, even holding NaN.
    bad = z.detach().clone()
    bad[~mask] = float("nan")
    bad_teachers = [t.clone() for t in teachers]
    bad_teachers[0][~mask] = float("nan")
    bad.requires_grad_()
    loss = A.amalgamation_loss(bad, bad_teachers, MAPS, mask=mask, margin_weighting=True, reduction="none")
    assert (loss[~mask] == 0).all() and torch.isfinite(loss).all()
    (grad,) = torch.autograd.grad(loss.sum(), bad)
    assert (grad[~mask] == 0).all() and torch.isfinite(grad).all()
    empty = torch.zeros(4, 5, dtype=torch.bool)
    assert A.amalgamation_loss(z, teachers, MAPS, mask=empty).item() == 0.0


def test_loss_is_zero_when_student_matches_target():
    teachers = make_teachers(batch=(6,))
    target = A.amalgamation_targets(teachers, MAPS, 10, mode="soft").target
    z = torch.log(target)
    torch.testing.assert_close(A.amalgamation_loss(z, teachers, MAPS), torch.zeros((), dtype=torch.float64),
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs_compute_in_float32(dtype):
    teachers = make_teachers(batch=(8,), dtype=dtype)
    z = torch.randn(8, 10).to(dtype).requires_grad_()
    loss = A.amalgamation_loss(z, teachers, MAPS, reduction="none")
    assert loss.dtype == torch.float32
    target, _, _ = oracle_targets([t.double() for t in teachers], MAPS, 10, "soft")
    want = oracle_loss(z.detach().double(), target)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss.double(), want, atol=tol, rtol=tol)
    loss.sum().backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()


def test_extreme_student_logits_are_finite():
    teachers = make_teachers(batch=(4,), dtype=torch.float32)
    z = torch.tensor([[-1e4] * 5 + [80.0] * 5] * 4, requires_grad=True)
    for mode in A.MODES:
        loss = A.amalgamation_loss(z, teachers, MAPS, mode=mode)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_module_matches_function():
    teachers = make_teachers(batch=(2, 3))
    z = torch.randn(2, 3, 10, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    module = A.AmalgamationLoss([torch.tensor(m) for m in MAPS], 10, mode="hard", margin_weighting=True,
                                temperature=2.0)
    want = A.amalgamation_loss(z, teachers, MAPS, mode="hard", margin_weighting=True, temperature=2.0, mask=mask)
    torch.testing.assert_close(module(z, teachers, mask), want)
    want_targets = A.amalgamation_targets(teachers, MAPS, mode="hard").target
    torch.testing.assert_close(module.targets(teachers).target, want_targets)
    assert "num_teachers=2" in repr(module)
    assert module.state_dict() == {}  # the label maps are configuration, not checkpoint state
    np = pytest.importorskip("numpy")
    torch.testing.assert_close(A.amalgamation_loss(z, teachers, [np.arange(5), np.arange(5, 10)]),
                               A.amalgamation_loss(z, teachers, MAPS))


@pytest.mark.parametrize("mode", A.MODES)
def test_module_compiles_without_graph_breaks(mode):
    teachers = make_teachers(batch=(4,), dtype=torch.float32)
    z = torch.randn(4, 10, requires_grad=True)
    module = A.AmalgamationLoss(MAPS, mode=mode, margin_weighting=True)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    got = compiled(z, teachers)
    (grad,) = torch.autograd.grad(got, z)
    want = module(z, teachers)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad, torch.autograd.grad(want, z)[0])


# ----------------------------------------------------------------------------------------------------
# Monte-Carlo dropout
# ----------------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self, fail: bool = False):
        super().__init__()
        self.fail = fail
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.3), nn.Linear(16, 4))

    def forward(self, x, shift=0.0):
        if self.fail:
            raise RuntimeError("forward failed")
        return self.head(self.body(x)) + shift


def modes(module):
    return {name: m.training for name, m in module.named_modules()}


@pytest.mark.parametrize("device", DEVICES)
def test_mc_dropout_logits_passes_differ_and_modes_are_restored(device):
    torch.manual_seed(0)
    net = Net().to(device)
    net.train()
    net.head.eval()  # a mixed configuration that must come back exactly
    net.body[1].running_mean.normal_()
    before = modes(net)
    bn_state = {k: v.clone() for k, v in net.body[1].state_dict().items()}
    x = torch.randn(5, 6, device=device)
    out = A.mc_dropout_logits(net, x, num_passes=7)
    assert out.shape == (5, 7, 4) and out.device == x.device and not out.requires_grad
    assert modes(net) == before
    assert all(torch.equal(v, net.body[1].state_dict()[k]) for k, v in bn_state.items())  # BN in eval mode
    assert not torch.allclose(out[:, 0], out[:, 1])  # dropout was active
    # Batch norm used its running statistics: one example alone gives the same distribution of outputs.
    torch.manual_seed(1)
    net.eval()
    single = A.mc_dropout_logits(net, x[:1], num_passes=1)
    net.body[3].p = net.head[1].p = 0.0
    torch.testing.assert_close(A.mc_dropout_logits(net, x[:1], num_passes=2)[:, 0], net(x[:1]))
    assert modes(net) == {k: False for k in before}
    assert single.shape == (1, 1, 4)


def test_mc_dropout_logits_restores_modes_on_exception_and_accepts_args():
    net = Net(fail=True)
    net.train()
    net.body.eval()
    before = modes(net)
    with pytest.raises(RuntimeError, match="forward failed"):
        A.mc_dropout_logits(net, torch.randn(3, 6), num_passes=3)
    assert modes(net) == before
    net.fail = False
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    a = A.mc_dropout_logits(net, (x, 100.0), num_passes=2)
    b = A.mc_dropout_logits(net, {"x": x, "shift": 100.0}, num_passes=2)
    assert a.shape == b.shape == (3, 2, 4) and (a > 50).all() and (b > 50).all()
    assert modes(net) == before
    seq = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5))
    assert A.mc_dropout_logits(seq, torch.randn(2, 5, 6), num_passes=3).shape == (2, 5, 3, 4)
    with pytest.warns(UserWarning, match="no dropout layer"):
        A.mc_dropout_logits(nn.Linear(6, 4), x, num_passes=2)


def test_mc_dropout_feeds_the_loss():
    torch.manual_seed(0)
    teachers = [nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, c)) for c in (5, 5)]
    x = torch.randn(8, 6)
    mc = [A.mc_dropout_logits(t, x) for t in teachers]
    assert mc[0].shape == (8, 16, 5)  # SPEC default R = 16
    student = nn.Linear(6, 10)
    loss = A.amalgamation_loss(student(x), mc, MAPS)
    loss.backward()
    assert torch.isfinite(loss) and student.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# Structural errors
# ----------------------------------------------------------------------------------------------------
def test_value_errors_for_label_maps():
    teachers = make_teachers(batch=(4,))
    z = torch.randn(4, 10, dtype=torch.float64)
    bad_maps = [
        ([[0, 1, 2, 3], [5, 6, 7, 8, 9]], r"label_maps\[0\].*5 entries"),
        ([[0, 1, 2, 3, 3], [5, 6, 7, 8, 9]], r"label_maps\[0\].*distinct"),
        ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 10]], r"label_maps\[1\].*\[0, 10\).*10"),
        ([[0, 1, 2, 3, -1], [5, 6, 7, 8, 9]], r"label_maps\[0\].*-1"),
        ([[0.0, 1.0, 2.0, 3.0, 4.0], [5, 6, 7, 8, 9]], r"label_maps\[0\].*int"),
        ([torch.tensor([0.0, 1, 2, 3, 4]), MAPS[1]], r"label_maps\[0\].*dtype torch.float32"),
        ([torch.arange(10).view(2, 5), MAPS[1]], r"label_maps\[0\].*1-D.*\(2, 5\)"),
        ([MAPS[0]], r"label_maps: expected 2 maps"),
        (torch.arange(10).view(2, 5), r"label_maps: expected a list"),
    ]
    for maps, msg in bad_maps:
        with pytest.raises(ValueError, match=msg):
            A.amalgamation_loss(z, teachers, maps)
    with pytest.raises(ValueError, match=r"label_maps\[1\].*\[0, 8\)"):
        A.amalgamation_targets(teachers, MAPS, 8)
    with pytest.raises(ValueError, match=r"label_map.*distinct"):
        A.pad_to_union(torch.rand(2, 3), [1, 1, 2], 4)
    with pytest.raises(ValueError, match=r"label_map.*3 entries"):
        A.pad_to_union(torch.rand(2, 3), [1, 2], 4)
    with pytest.raises(ValueError, match=r"label_maps\[1\].*distinct"):
        A.AmalgamationLoss([[0, 1], [2, 2]])
    with pytest.raises(ValueError, match="num_classes"):
        A.amalgamation_targets(teachers, MAPS, 1)


def test_value_errors_for_shapes_and_options():
    teachers = make_teachers(batch=(4,))
    z = torch.randn(4, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"teacher_mc_logits\[1\].*\(4,\).*\(3, 5, 5\)"):
        A.amalgamation_loss(z, [teachers[0], torch.randn(3, 5, 5)], MAPS)
    with pytest.raises(ValueError, match=r"teacher_mc_logits: expected a list.*\(4, 8, 5\)"):
        A.amalgamation_loss(z, teachers[0], MAPS)
    with pytest.raises(ValueError, match="teacher_mc_logits: expected at least one"):
        A.amalgamation_targets([], [])
    with pytest.raises(ValueError, match=r"teacher_mc_logits\[0\].*C >= 2.*\(4, 8, 1\)"):
        A.amalgamation_targets([torch.randn(4, 8, 1), teachers[1]], [[0], MAPS[1]])
    with pytest.raises(ValueError, match=r"teacher_mc_logits\[0\].*at least 2 dimension"):
        A.amalgamation_targets([torch.randn(5), teachers[1]], MAPS)
    with pytest.raises(ValueError, match=r"teacher_mc_logits\[0\].*floating dtype"):
        A.amalgamation_targets([torch.ones(4, 8, 5, dtype=torch.long), teachers[1]], MAPS)
    with pytest.raises(ValueError, match=r"student_logits.*\(4,\).*\(5, 10\)"):
        A.amalgamation_loss(torch.randn(5, 10), teachers, MAPS)
    with pytest.raises(ValueError, match=r"label_maps\[1\].*\[0, 9\)"):
        A.amalgamation_loss(torch.randn(4, 9), teachers, MAPS)
    with pytest.raises(ValueError, match=r"mc_logits.*\(4,\)"):
        A.teacher_score(torch.randn(4))
    with pytest.raises(ValueError, match=r"target: expected the shape.*\(4, 10\).*\(4, 9\)"):
        A.amalgamation_kl(z, torch.rand(4, 9))
    with pytest.raises(ValueError, match=r"weight: expected.*\(4,\).*\(3,\)"):
        A.amalgamation_kl(z, torch.rand(4, 10, dtype=torch.float64), weight=torch.rand(3))
    with pytest.raises(ValueError, match="mask"):
        A.amalgamation_loss(z, teachers, MAPS, mask=torch.ones(4, 1, dtype=torch.bool))
    options = [
        (dict(mode="best"), "mode"), (dict(measure="variance"), "measure"), (dict(reduction="avg"), "reduction"),
        (dict(temperature=0.0), "temperature"), (dict(selection_temperature=-1.0), "selection_temperature"),
        (dict(teacher_temperature=float("nan")), "teacher_temperature"),
    ]
    for kw, name in options:
        with pytest.raises(ValueError, match=name):
            A.amalgamation_loss(z, teachers, MAPS, **kw)
    with pytest.raises(ValueError, match="margin_weighting.*K = 1"):
        A.amalgamation_loss(z, teachers[:1], MAPS[:1], margin_weighting=True)
    with pytest.raises(ValueError, match=r"scores.*K >= 2"):
        A.margin_weights(torch.rand(4, 1))
    module = A.AmalgamationLoss(MAPS)
    with pytest.raises(ValueError, match=r"teacher_mc_logits\[1\].*C_i = 5.*\(4, 8, 4\)"):
        module(z, [teachers[0], torch.randn(4, 8, 4)])
    with pytest.raises(ValueError, match="expected 2 teachers"):
        module(z, teachers[:1])
    with pytest.raises(ValueError, match="module: expected an nn.Module"):
        A.mc_dropout_logits(lambda x: x, torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_passes"):
        A.mc_dropout_logits(Net(), torch.randn(2, 6), num_passes=0)


# ----------------------------------------------------------------------------------------------------
# The example
# ----------------------------------------------------------------------------------------------------
def _load_demo():
    path = os.path.join(os.path.dirname(__file__), "..", "python_examples", "amalgamation_demo.py")
    spec = importlib.util.spec_from_file_location("amalgamation_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_quick_mode_beats_uncertainty_free_baseline():
    pytest.importorskip("sklearn")
    demo = _load_demo()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = demo.run(quick=True, seed=0)
    finally:
        torch.set_num_threads(threads)
    methods = result["methods"]
    for name in ("average", "hard", "soft", "supervised"):
        assert 0.0 <= methods[name]["student_acc"] <= 1.0
    baseline = methods["average"]["student_acc"]
    assert methods["hard"]["student_acc"] > baseline
    assert methods["soft"]["student_acc"] > baseline
    assert methods["hard"]["routing_acc"] > 0.8
    table = demo.format_table([result])
    assert "average" in table and "soft" in table and "student test acc" in table
