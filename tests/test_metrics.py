"""AUROC, prediction-rejection curve and PRR (edd_ext.metrics) against independent oracles."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edd_ext import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the AUROC test oracle")

# Small integer-valued floats give plenty of ties.
tied_scores = hnp.arrays(np.float64, st.integers(1, 30), elements=st.integers(-4, 4).map(float))
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
# BLEU-like errors on a 0.1 grid, so affine maps of them stay exactly distinct.
grid_errors = st.integers(0, 1000).map(lambda k: k / 10)


# ----------------------------------------------------------------------------------------------- AUROC
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_id,n_ood", [(1, 1), (7, 3), (200, 150)])
def test_auroc_matches_sklearn_with_ties(seed, n_id, n_ood):
    rng = np.random.default_rng(seed)
    id_scores = rng.integers(0, 6, n_id).astype(np.float64)
    ood_scores = rng.integers(2, 8, n_ood).astype(np.float64)
    labels = np.r_[np.zeros(n_id), np.ones(n_ood)]
    expected = sklearn_metrics.roc_auc_score(labels, np.r_[id_scores, ood_scores])
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(expected, abs=1e-12)


def test_auroc_matches_sklearn_continuous():
    rng = np.random.default_rng(1)
    id_scores, ood_scores = rng.normal(0, 1, 300), rng.normal(0.7, 1.3, 100)
    labels = np.r_[np.zeros(300), np.ones(100)]
    expected = sklearn_metrics.roc_auc_score(labels, np.r_[id_scores, ood_scores])
    assert metrics.auroc(id_scores, ood_scores) == pytest.approx(expected, abs=1e-12)


@settings(deadline=None, max_examples=60)
@given(tied_scores, tied_scores)
def test_auroc_negated_scores_complement(id_scores, ood_scores):
    assert metrics.auroc(-id_scores, -ood_scores) == pytest.approx(
        1.0 - metrics.auroc(id_scores, ood_scores), abs=1e-12
    )


@settings(deadline=None, max_examples=40)
@given(tied_scores, tied_scores)
def test_auroc_swapping_sets_complements(id_scores, ood_scores):
    assert metrics.auroc(ood_scores, id_scores) == pytest.approx(
        1.0 - metrics.auroc(id_scores, ood_scores), abs=1e-12
    )


def test_auroc_extremes_and_ties():
    assert metrics.auroc([0.0, 1.0], [2.0, 3.0]) == 1.0
    assert metrics.auroc([2.0, 3.0], [0.0, 1.0]) == 0.0
    assert metrics.auroc([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.5
    assert metrics.auroc([-math.inf, 0.0], [math.inf]) == 1.0


def test_auroc_accepts_tensors_arrays_and_lists():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=50), rng.normal(0.5, 1, 40)
    expected = metrics.auroc(a, b)
    assert isinstance(expected, float)
    assert metrics.auroc(a.tolist(), b.tolist()) == expected
    assert metrics.auroc(torch.tensor(a), torch.tensor(b)) == expected
    grad_tensor = torch.tensor(a, requires_grad=True)
    assert metrics.auroc(grad_tensor, torch.tensor(b)) == expected
    # Any shape is flattened.
    assert metrics.auroc(a.reshape(5, 10), b.reshape(2, 20)) == expected
    # Low-precision tensors are accepted (ranks of the rounded values).
    half = metrics.auroc(torch.tensor(a).bfloat16(), torch.tensor(b).bfloat16())
    assert half == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize(
    "id_scores,ood_scores,name",
    [
        ([], [1.0], "in_domain_scores"),
        ([1.0], np.zeros((0, 3)), "out_of_domain_scores"),
        ([1.0, math.nan], [1.0], "in_domain_scores"),
        ([1.0], torch.tensor([0.0, math.nan]), "out_of_domain_scores"),
    ],
)
def test_auroc_rejects_empty_and_nan(id_scores, ood_scores, name):
    with pytest.raises(ValueError, match=name):
        metrics.auroc(id_scores, ood_scores)


# ------------------------------------------------------------------------------------ rejection curve
def loop_rejection_curve(uncertainty, error):
    """Plain-loop oracle: reject the k most uncertain items, breaking ties uniformly at random (so a
    partially rejected tie group loses its mean error per rejected item)."""
    n = len(error)
    groups = {}
    for u, e in zip(uncertainty, error):
        groups.setdefault(float(u), []).append(float(e))
    descending = sorted(groups, reverse=True)
    total = sum(float(e) for e in error)
    curve = []
    for k in range(n + 1):
        remaining, retained = k, total
        for key in descending:
            members = groups[key]
            take = min(remaining, len(members))
            retained -= take * (sum(members) / len(members))
            remaining -= take
            if remaining == 0:
                break
        curve.append(retained / n)
    return curve


def loop_trapezoid(curve):
    n = len(curve) - 1
    return sum((curve[k] + curve[k + 1]) / 2.0 / n for k in range(n))


def permutation_average_curve(uncertainty, error):
    """Average the tie-free curve over every tie-breaking order (small N only)."""
    n = len(error)
    curves = []
    for perm in itertools.permutations(range(n)):
        order = sorted(range(n), key=lambda i: (-uncertainty[i], perm[i]))
        curve = [sum(error[i] for i in order[k:]) / n for k in range(n + 1)]
        curves.append(curve)
    return np.mean(curves, axis=0)


@pytest.mark.parametrize("seed", range(4))
def test_rejection_curve_matches_loop_oracle(seed):
    rng = np.random.default_rng(seed)
    n = 37
    uncertainty = rng.integers(0, 6, n).astype(np.float64)  # many ties
    error = rng.random(n) * 100
    curve = metrics.rejection_curve(uncertainty, error)
    np.testing.assert_allclose(curve.uncertainty, loop_rejection_curve(uncertainty, error), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(curve.oracle, loop_rejection_curve(error, error), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(curve.fraction_rejected, np.arange(n + 1) / n)
    np.testing.assert_allclose(curve.random, error.mean() * (1 - np.arange(n + 1) / n), atol=1e-12)
    assert curve.auc_uncertainty == pytest.approx(loop_trapezoid(loop_rejection_curve(uncertainty, error)), rel=1e-12)
    assert curve.auc_oracle == pytest.approx(loop_trapezoid(loop_rejection_curve(error, error)), rel=1e-12)
    assert curve.auc_random == pytest.approx(loop_trapezoid(list(curve.random)), rel=1e-12)
    expected_prr = (curve.auc_uncertainty - curve.auc_random) / (curve.auc_oracle - curve.auc_random) * 100
    assert curve.prr == pytest.approx(expected_prr, rel=1e-9)
    assert curve.prr == metrics.prediction_rejection_ratio(uncertainty, error)


def test_rejection_curve_tie_average_is_expected_over_tie_breaking():
    uncertainty = [0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    error = [3.0, 10.0, 0.0, 5.0, 7.0, 1.0]
    curve = metrics.rejection_curve(uncertainty, error)
    np.testing.assert_allclose(curve.uncertainty, permutation_average_curve(uncertainty, error), atol=1e-12)


def test_rejection_curve_endpoints_and_types():
    rng = np.random.default_rng(3)
    error = rng.random(20)
    curve = metrics.rejection_curve(torch.tensor(rng.random(20), dtype=torch.float32), torch.tensor(error))
    assert isinstance(curve, metrics.RejectionCurve)
    for arr in (curve.fraction_rejected, curve.uncertainty, curve.oracle, curve.random):
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float64 and arr.shape == (21,)
    assert curve.uncertainty[0] == pytest.approx(error.mean(), rel=1e-12)
    assert curve.uncertainty[-1] == 0.0 and curve.oracle[-1] == 0.0 and curve.random[-1] == 0.0
    # The oracle is never above any other ranking.
    assert np.all(curve.oracle <= curve.uncertainty + 1e-12)
    assert isinstance(curve.prr, float) and isinstance(curve.auc_uncertainty, float)


# ------------------------------------------------------------------------------------------------ PRR
@settings(deadline=None, max_examples=60)
@given(hnp.arrays(np.float64, st.integers(2, 40), elements=finite_floats))
def test_prr_of_error_itself_is_100(error):
    if np.all(error == error[0]):
        return
    assert metrics.prediction_rejection_ratio(error, error) == 100.0
    # Any strictly increasing transform ranks the same way (here: exact scaling, and dense integer ranks).
    assert metrics.prediction_rejection_ratio(4.0 * error, error) == 100.0
    dense_ranks = np.unique(error, return_inverse=True)[1].reshape(-1)
    assert metrics.prediction_rejection_ratio(torch.tensor(dense_ranks), error) == 100.0
    assert metrics.prediction_rejection_ratio(-error, error) == pytest.approx(-100.0, abs=1e-9)


@settings(deadline=None, max_examples=60)
@given(
    hnp.arrays(np.float64, st.integers(1, 40), elements=finite_floats),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_prr_of_constant_uncertainty_is_exactly_zero(error, constant):
    if np.all(error == error[0]):
        return
    assert metrics.prediction_rejection_ratio(np.full(error.shape, constant), error) == 0.0
    assert metrics.rejection_curve(np.full(error.shape, constant), error).prr == 0.0


def test_prr_of_random_uncertainty_is_zero_on_average():
    rng = np.random.default_rng(1234)
    n, trials = 200, 300
    values = [
        metrics.prediction_rejection_ratio(rng.random(n), rng.gamma(2.0, 10.0, n)) for _ in range(trials)
    ]
    # One trial has a standard deviation of roughly 100 / sqrt(n) ~ 7; the mean's is ~ 0.4.
    assert abs(np.mean(values)) < 2.0
    assert np.std(values) > 1.0  # the statistic really varies, the mean is not trivially zero


@settings(deadline=None, max_examples=40)
@given(tied_scores.flatmap(lambda u: st.tuples(st.just(u), hnp.arrays(np.float64, u.shape, elements=grid_errors))),
       st.randoms(use_true_random=False))
def test_prr_invariant_to_item_order_and_error_affine_maps(pair, random):
    uncertainty, error = pair
    if np.all(error == error[0]):
        return
    base = metrics.prediction_rejection_ratio(uncertainty, error)
    perm = list(range(len(error)))
    random.shuffle(perm)
    assert metrics.prediction_rejection_ratio(uncertainty[perm], error[perm]) == pytest.approx(base, abs=1e-8)
    assert metrics.prediction_rejection_ratio(uncertainty, 3.0 * error + 11.0) == pytest.approx(base, abs=1e-8)


@pytest.mark.parametrize("error", [[5.0, 5.0, 5.0], [2.0]])
def test_prr_all_equal_errors_is_nan_with_warning(error):
    with pytest.warns(RuntimeWarning, match="every error is equal"):
        assert math.isnan(metrics.prediction_rejection_ratio(np.arange(len(error), dtype=float), error))
    with pytest.warns(RuntimeWarning):
        curve = metrics.rejection_curve(np.arange(len(error), dtype=float), error)
    assert math.isnan(curve.prr)
    np.testing.assert_allclose(curve.uncertainty, curve.oracle)


def test_prr_allows_infinite_uncertainty():
    error = np.array([1.0, 5.0, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert metrics.prediction_rejection_ratio([-math.inf, math.inf, 0.0], error) == 100.0


@pytest.mark.parametrize(
    "uncertainty,error,pattern",
    [
        ([], [], "uncertainty"),
        ([1.0, 2.0], [1.0], "2 uncertainties and 1 errors"),
        ([1.0, math.nan], [1.0, 2.0], "uncertainty"),
        ([1.0, 2.0], [math.nan, 2.0], "error"),
        ([1.0, 2.0], [math.inf, 2.0], "error"),
        ("ab", [1.0, 2.0], "uncertainty"),
    ],
)
def test_rejection_inputs_validated(uncertainty, error, pattern):
    with pytest.raises(ValueError, match=pattern):
        metrics.prediction_rejection_ratio(uncertainty, error)
    with pytest.raises(ValueError, match=pattern):
        metrics.rejection_curve(uncertainty, error)


# ------------------------------------------------------------------------------------- sentence BLEU
def test_sentence_error_from_bleu():
    pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat .", "completely unrelated words here", "a dog ran in the park"]
    refs = ["the cat sat on the mat .", "nothing in common at all", "the dog ran in the park"]
    err = metrics.sentence_error_from_bleu(hyps, refs)
    assert err.shape == (3,) and err.dtype == np.float64
    assert err[0] == 0.0
    assert err[1] == pytest.approx(100.0, abs=1e-9)
    assert 0.0 < err[2] < 100.0
    # Several references per hypothesis.
    multi = metrics.sentence_error_from_bleu(hyps[:1], [["something else", hyps[0]]])
    assert multi[0] == 0.0
    with pytest.raises(ValueError, match="2 hypotheses and 1 references"):
        metrics.sentence_error_from_bleu(hyps[:2], refs[:1])
