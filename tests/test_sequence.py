"""Sequence-level uncertainty (edd_ext.uncertainty.sequence): PE/EP scores, chain-rule averages, n-best."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edd_ext import Uncertainty
from edd_ext.uncertainty import sequence as seq


def random_token_log_probs(batch, m, length, *, seed=0, dtype=torch.float64, vocab=7):
    """Log-probabilities that M members give to the tokens of a hypothesis, from real softmaxes."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, m, length, vocab, generator=g, dtype=torch.float64) * 2
    tokens = torch.randint(vocab, (*batch, 1, length, 1), generator=g).expand(*batch, m, length, 1)
    return logits.log_softmax(-1).gather(-1, tokens).squeeze(-1).to(dtype)


def random_mask(batch, length, *, seed=0):
    """Right-padded masks with lengths in [0, length] (EOS included in the real tokens)."""
    g = torch.Generator().manual_seed(seed + 1)
    lengths = torch.randint(0, length + 1, batch, generator=g)
    return torch.arange(length) < lengths.unsqueeze(-1)


def loop_pe(lp, mask):
    """Plain-loop product of expectations for one hypothesis: lp [M, L], mask [L]."""
    m = lp.shape[0]
    total, count = 0.0, 0
    for t in range(lp.shape[1]):
        if mask[t]:
            total += math.log(sum(math.exp(float(lp[j, t])) for j in range(m)) / m)
            count += 1
    return -total / count if count else 0.0


def loop_ep(lp, mask):
    m = lp.shape[0]
    if not bool(mask.any()):
        return 0.0
    seq_log_probs = [sum(float(lp[j, t]) for t in range(lp.shape[1]) if mask[t]) for j in range(m)]
    top = max(seq_log_probs)
    log_mean = top + math.log(sum(math.exp(s - top) for s in seq_log_probs) / m)
    return -log_mean / int(mask.sum())


# ---------------------------------------------------------------------------------------- PE and EP
@pytest.mark.parametrize("m,length", [(1, 1), (1, 6), (3, 1), (5, 9)])
def test_pe_and_ep_match_loop_oracles(m, length):
    batch = (4, 3)
    lp = random_token_log_probs(batch, m, length, seed=m * 10 + length)
    mask = random_mask(batch, length, seed=m + length)
    pe = seq.product_of_expectations(lp, mask)
    ep = seq.expectation_of_products(lp, mask)
    assert pe.shape == batch and ep.shape == batch and pe.dtype == torch.float64
    for i in range(batch[0]):
        for j in range(batch[1]):
            assert float(pe[i, j]) == pytest.approx(loop_pe(lp[i, j], mask[i, j]), rel=1e-12, abs=1e-12)
            assert float(ep[i, j]) == pytest.approx(loop_ep(lp[i, j], mask[i, j]), rel=1e-12, abs=1e-12)


def test_no_mask_means_every_token_is_real():
    lp = random_token_log_probs((5,), 4, 6, seed=3)
    full = torch.ones(5, 6, dtype=torch.bool)
    torch.testing.assert_close(seq.product_of_expectations(lp), seq.product_of_expectations(lp, full))
    torch.testing.assert_close(seq.expectation_of_products(lp), seq.expectation_of_products(lp, full))
    # An unbatched [M, L] hypothesis gives a 0-dimensional score.
    assert seq.product_of_expectations(lp[0]).shape == ()


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 4), st.integers(1, 8), st.integers(0, 2**16))
def test_pe_equals_ep_for_one_member_or_one_token(m, length, seed):
    one_member = random_token_log_probs((3,), 1, length, seed=seed)
    mask = random_mask((3,), length, seed=seed)
    torch.testing.assert_close(
        seq.product_of_expectations(one_member, mask), seq.expectation_of_products(one_member, mask)
    )
    one_token = random_token_log_probs((3,), m, 1, seed=seed)
    torch.testing.assert_close(
        seq.product_of_expectations(one_token), seq.expectation_of_products(one_token)
    )


def test_identical_members_give_the_member_nll():
    lp = random_token_log_probs((6,), 1, 5, seed=4)
    mask = random_mask((6,), 5, seed=4)
    nll = -(lp[:, 0] * mask).sum(-1) / mask.sum(-1).clamp_min(1)
    for fn in (seq.product_of_expectations, seq.expectation_of_products):
        torch.testing.assert_close(fn(lp.expand(6, 4, 5), mask), nll)


@pytest.mark.parametrize("fn", [seq.product_of_expectations, seq.expectation_of_products])
def test_masked_tokens_are_inert_even_nan(fn):
    lp = random_token_log_probs((4,), 3, 7, seed=5)
    mask = random_mask((4,), 7, seed=5)
    mask[0] = False  # one fully masked row
    poisoned = lp.clone()
    poisoned[~mask.unsqueeze(-2).expand_as(lp)] = float("nan")
    poisoned[1, :, -1] = torch.where(mask[1, -1], poisoned[1, :, -1], torch.tensor(-math.inf, dtype=lp.dtype))
    poisoned.requires_grad_(True)
    out = fn(poisoned, mask)
    torch.testing.assert_close(out, fn(lp, mask), rtol=0, atol=0)
    assert out[0] == 0.0
    out.sum().backward()
    grad = poisoned.grad
    assert torch.isfinite(grad).all()
    assert (grad[~mask.unsqueeze(-2).expand_as(lp)] == 0).all()


@pytest.mark.parametrize("fn", [seq.product_of_expectations, seq.expectation_of_products])
def test_nan_in_one_row_stays_in_that_row(fn):
    lp = random_token_log_probs((3,), 2, 4, seed=6)
    bad = lp.clone()
    bad[1, 0, 0] = float("nan")
    out = fn(bad)
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("fn", [seq.product_of_expectations, seq.expectation_of_products])
def test_gradcheck(fn):
    lp = random_token_log_probs((2,), 3, 4, seed=7).requires_grad_(True)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert torch.autograd.gradcheck(lambda x: fn(x, mask), (lp,))


@pytest.mark.parametrize("dtype,expected", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                            (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_output_dtypes(dtype, expected):
    lp = random_token_log_probs((3,), 2, 4, seed=8)
    for fn in (seq.product_of_expectations, seq.expectation_of_products):
        out = fn(lp.to(dtype))
        assert out.dtype == expected
        torch.testing.assert_close(out.double(), fn(lp.to(dtype).double()), rtol=1e-6, atol=1e-6)


def test_structural_errors_name_the_shapes():
    lp = torch.zeros(2, 3, 5)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 5\).*got \(2, 3\)"):
        seq.product_of_expectations(lp, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        seq.expectation_of_products(lp, torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"token_log_probs: expected at least 2"):
        seq.product_of_expectations(torch.zeros(5))
    with pytest.raises(ValueError, match=r"M >= 1.*\(2, 0, 5\)"):
        seq.expectation_of_products(torch.zeros(2, 0, 5))
    with pytest.raises(ValueError, match="floating"):
        seq.product_of_expectations(torch.zeros(2, 3, 5, dtype=torch.long))


# ------------------------------------------------------------------------------------ chain rule
def test_chain_rule_average_is_masked_mean():
    g = torch.Generator().manual_seed(9)
    measure = torch.rand(4, 6, generator=g, dtype=torch.float64)
    mask = random_mask((4,), 6, seed=9)
    mask[2] = False
    poisoned = torch.where(mask, measure, torch.tensor(float("nan"), dtype=torch.float64))
    out = seq.chain_rule_average(poisoned, mask)
    for i in range(4):
        values = [float(measure[i, t]) for t in range(6) if mask[i, t]]
        assert float(out[i]) == pytest.approx(sum(values) / len(values) if values else 0.0, rel=1e-12)
    assert out[2] == 0.0
    torch.testing.assert_close(seq.chain_rule_average(measure), measure.mean(-1))
    assert seq.chain_rule_average(torch.zeros(3, 0)).tolist() == [0.0, 0.0, 0.0]


def test_chain_rule_average_of_an_uncertainty_tuple():
    g = torch.Generator().manual_seed(10)
    fields = [torch.rand(3, 5, generator=g) for _ in range(5)]
    mask = random_mask((3,), 5, seed=10)
    out = seq.chain_rule_average(Uncertainty(*fields), mask)
    assert isinstance(out, Uncertainty)
    for name, field in zip(Uncertainty._fields, fields):
        torch.testing.assert_close(getattr(out, name), seq.chain_rule_average(field, mask))
    with pytest.raises(ValueError, match=r"token_measure.mutual_information: expected shape"):
        seq.chain_rule_average(Uncertainty(*fields[:2], torch.rand(3, 4), *fields[3:]), mask)


def test_chain_rule_average_mask_shape_error():
    with pytest.raises(ValueError, match=r"mask: expected shape \(3, 5\).*got \(3, 4\)"):
        seq.chain_rule_average(torch.rand(3, 5), torch.ones(3, 4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------- n-best
beams = st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**16))


def random_beam(rows, b, seed):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(rows, b, generator=g, dtype=torch.float64) * 30


@settings(deadline=None, max_examples=40)
@given(beams, st.sampled_from([0.05, 0.5, 1.0, 3.0, 100.0]))
def test_nbest_weights_are_a_distribution(beam, temperature):
    rows, b, seed = beam
    w = seq.nbest_weights(random_beam(rows, b, seed), temperature)
    assert w.shape == (rows, b)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(rows, dtype=torch.float64))


def test_nbest_weights_follow_probabilities_at_unit_temperature():
    log_probs = torch.log(torch.tensor([[0.2, 0.1, 0.1], [0.5, 0.25, 0.25]], dtype=torch.float64))
    expected = torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(seq.nbest_weights(log_probs), expected)


def test_nbest_weights_temperature_limits():
    log_probs = random_beam(5, 4, seed=11)
    uniform = torch.full((5, 4), 0.25, dtype=torch.float64)
    torch.testing.assert_close(seq.nbest_weights(log_probs, 1e7), uniform, rtol=0, atol=1e-6)
    assert torch.equal(seq.nbest_weights(log_probs, math.inf), uniform)
    one_hot = torch.nn.functional.one_hot(log_probs.argmax(-1), 4).to(torch.float64)
    torch.testing.assert_close(seq.nbest_weights(log_probs, 1e-4), one_hot, rtol=0, atol=1e-12)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.nan, "1"])
def test_nbest_weights_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature"):
        seq.nbest_weights(torch.zeros(2, 3), temperature)


def test_nbest_masked_hypotheses_are_inert():
    log_probs = random_beam(3, 5, seed=12)
    scores = torch.rand(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    bad_lp = torch.where(mask, log_probs, nan).requires_grad_(True)
    bad_scores = torch.where(mask, scores, nan).requires_grad_(True)
    w = seq.nbest_weights(bad_lp, 2.0, mask)
    torch.testing.assert_close(w[0, :3], seq.nbest_weights(log_probs[0, :3], 2.0))
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    agg = seq.nbest_aggregate(bad_scores, bad_lp, 2.0, mask)
    assert agg[2] == 0.0
    expected = (seq.nbest_weights(log_probs[0, :3], 2.0) * scores[0, :3]).sum()
    torch.testing.assert_close(agg[0], expected)
    agg.sum().backward()
    for grad in (bad_lp.grad, bad_scores.grad):
        assert torch.isfinite(grad).all() and (grad[~mask] == 0).all()


@settings(deadline=None, max_examples=40)
@given(beams, st.floats(0.1, 10.0))
def test_nbest_aggregate_is_weighted_sum(beam, temperature):
    rows, b, seed = beam
    log_probs = random_beam(rows, b, seed)
    scores = torch.rand(rows, b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = seq.nbest_aggregate(scores, log_probs, temperature)
    weights = torch.softmax(log_probs / temperature, dim=-1)
    torch.testing.assert_close(out, (weights * scores).sum(-1))
    # A constant score is returned unchanged; the aggregate lies between the extreme scores.
    torch.testing.assert_close(
        seq.nbest_aggregate(torch.full_like(scores, 2.5), log_probs, temperature),
        torch.full((rows,), 2.5, dtype=torch.float64),
    )
    assert (out >= scores.min(-1).values - 1e-12).all() and (out <= scores.max(-1).values + 1e-12).all()


def test_nbest_aggregate_shape_errors():
    with pytest.raises(ValueError, match=r"got \(2, 3\) and \(2, 4\)"):
        seq.nbest_aggregate(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        seq.nbest_aggregate(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"B >= 1"):
        seq.nbest_weights(torch.zeros(2, 0))


def test_end_to_end_nbest_of_pe_scores():
    """Score a beam of B hypotheses with PE, then aggregate with the ensemble's sequence probability."""
    batch, b, m, length = 2, 3, 4, 6
    lp = random_token_log_probs((batch, b), m, length, seed=13)
    mask = random_mask((batch, b), length, seed=13)
    mask[..., 0] = True
    pe = seq.product_of_expectations(lp, mask)  # [batch, B]
    lengths = mask.sum(-1)
    sequence_log_probs = -pe * lengths  # ln P_PE(y_b)
    out = seq.nbest_aggregate(pe, sequence_log_probs)
    assert out.shape == (batch,) and torch.isfinite(out).all()
