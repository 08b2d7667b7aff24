"""Evaluation metrics for uncertainty estimates (SPEC section 3, "Metrics").

* :func:`auroc` — how well a score separates in-domain (label 0) from out-of-domain (label 1) inputs;
  a higher score means "more likely out-of-domain".
* :func:`rejection_curve` and :func:`prediction_rejection_ratio` — how well an uncertainty ranks the
  errors of a model (Malinin & Gales, 2021).
* :func:`sentence_error_from_bleu` — the per-sentence error ``100 - sentence BLEU`` used for translation.

These are evaluation utilities, not training ops: they take tensors (any device, any floating dtype),
numpy arrays or Python sequences, flatten them, and compute in float64 numpy without Python loops over
items. Inputs of any shape are accepted and flattened.

Prediction-rejection convention (Malinin & Gales, 2021)
--------------------------------------------------------
For N items with uncertainties ``u`` and errors ``e`` (for example ``100 - BLEU`` per sentence), the
``k`` most uncertain items are *rejected*: an oracle corrects them, so their error becomes 0, and the
curve records the mean error over **all** N items:

    curve[k] = (1/N) * sum of the errors of the N - k retained (least uncertain) items,  k = 0 .. N,

plotted against the fraction rejected ``k / N``. ``curve[0]`` is the mean error and ``curve[N] = 0``.
Items with tied uncertainty are ranked in every possible order with equal probability: within a tied
group each item's error is replaced by the group's mean error, which is the expected curve under random
tie-breaking. A constant uncertainty therefore gives exactly the random curve.

* the **oracle** curve rejects by the error itself (largest error first) — the best any ranking can do;
* the **random** curve is the straight line ``curve[0] * (1 - k/N)`` — the expected curve of a random
  ranking.

Areas are integrals of the piecewise-linear curves over the rejected fraction (trapezoidal rule on the
grid ``k / N``); they are *error* areas, so smaller is better. The prediction rejection ratio

    PRR = (AUC_uncertainty - AUC_random) / (AUC_oracle - AUC_random) * 100

is 100 for an oracle ranking, 0 (in expectation) for a random one and negative for a ranking worse than
random. Written with average ranks ``r`` (1-based, ascending, ties averaged),

    AUC - AUC_random = (1/N^2) * sum_i (r_i - (N + 1)/2) * e_i,

so a constant uncertainty (every ``r_i = (N + 1)/2``) gives a PRR of exactly 0, and any monotone
transform of the error gives exactly 100; that is how the ratio is computed.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple, Sequence, Union

import numpy as np

__all__ = [
    "auroc",
    "RejectionCurve",
    "rejection_curve",
    "prediction_rejection_ratio",
    "sentence_error_from_bleu",
]

#: A torch.Tensor (any device or dtype), a numpy array or a (nested) sequence of numbers.
ArrayLike = Any


def _as_float64(name: str, x: Any, *, allow_inf: bool = True) -> np.ndarray:
    """Flatten ``x`` (tensor, array or sequence) into a float64 numpy vector, rejecting empty or NaN input."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency of the package
        torch = None
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex():
            raise ValueError(f"{name}: expected real scores, got dtype {t.dtype} with shape {tuple(t.shape)}")
        arr = t.to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name}: expected a tensor, array or sequence of numbers ({err})") from None
    shape = arr.shape
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name}: expected at least one value, got an empty input of shape {shape}")
    if np.isnan(arr).any():
        raise ValueError(
            f"{name}: contains {int(np.isnan(arr).sum())} NaN value(s) (shape {shape}); "
            "drop or impute them before computing the metric"
        )
    if not allow_inf and np.isinf(arr).any():
        raise ValueError(f"{name}: contains {int(np.isinf(arr).sum())} infinite value(s) (shape {shape})")
    return arr


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ascending ranks of ``x``; tied values share the average of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)  # rank of the last member of each group
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(in_domain_scores: ArrayLike, out_of_domain_scores: ArrayLike) -> float:
    """Area under the ROC curve of a detector that flags high scores as out-of-domain.

    In-domain items are the negatives (label 0), out-of-domain items the positives (label 1). The value is
    the Mann-Whitney statistic: the probability that a random out-of-domain item scores higher than a
    random in-domain one, counting ties as one half (average ranks), so it equals
    ``sklearn.metrics.roc_auc_score`` on the concatenated labels and scores.

    Args:
        in_domain_scores: ``[N_id]`` (any shape, flattened) uncertainty of in-domain items.
        out_of_domain_scores: ``[N_ood]`` (any shape, flattened) uncertainty of out-of-domain items.
            Tensors (any device or floating dtype), numpy arrays or sequences; ``±inf`` is allowed.

    Returns:
        A Python float in ``[0, 1]``; 0.5 is chance, 1 a perfect separation.
        ``auroc(-a, -b) == 1 - auroc(a, b)``.

    Raises:
        ValueError: if either input is empty or contains NaN (the message names the argument).
    """
    neg = _as_float64("in_domain_scores", in_domain_scores)
    pos = _as_float64("out_of_domain_scores", out_of_domain_scores)
    n_neg, n_pos = neg.size, pos.size
    ranks = _average_ranks(np.concatenate([neg, pos]))
    u_statistic = ranks[n_neg:].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u_statistic / (float(n_neg) * float(n_pos)))


class RejectionCurve(NamedTuple):
    """A prediction-rejection curve and its reference curves (see the module docstring).

    All curves are float64 numpy arrays of shape ``[N + 1]``, indexed by the number ``k`` of items rejected.

    fraction_rejected: ``k / N`` for ``k = 0 .. N``.
    uncertainty: mean error over all items after rejecting the ``k`` most uncertain (ties averaged).
    oracle: the same, rejecting by the error itself (largest first).
    random: ``uncertainty[0] * (1 - k/N)``, the expected curve of a random ranking.
    auc_uncertainty, auc_oracle, auc_random: areas under the three curves over ``fraction_rejected``
        (trapezoidal rule, which is exact for these piecewise-linear curves).
    prr: the prediction rejection ratio in percent (nan when every error is equal).
    """

    fraction_rejected: np.ndarray
    uncertainty: np.ndarray
    oracle: np.ndarray
    random: np.ndarray
    auc_uncertainty: float
    auc_oracle: float
    auc_random: float
    prr: float


def _check_pair(uncertainty: ArrayLike, error: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    u = _as_float64("uncertainty", uncertainty)
    e = _as_float64("error", error, allow_inf=False)
    if u.size != e.size:
        raise ValueError(
            f"uncertainty and error: expected one value per item in each, got {u.size} uncertainties "
            f"and {e.size} errors"
        )
    return u, e


def _curve_by(ranking: np.ndarray, error: np.ndarray) -> np.ndarray:
    """``curve[k]`` = (1/N) * error retained after rejecting the ``k`` highest-``ranking`` items.

    Ties in ``ranking`` are resolved by giving every member of a tied group the group's mean error.
    """
    n = error.size
    keys, inverse = np.unique(ranking, return_inverse=True)  # ascending unique values
    inverse = inverse.reshape(-1)
    group_mean = np.bincount(inverse, weights=error, minlength=keys.size) / np.bincount(
        inverse, minlength=keys.size
    )
    # Least uncertain first; the cumulative sum from the least uncertain end gives the retained error
    # for every k at once, and rejecting all N leaves exactly 0.
    retained = np.sort(inverse, kind="stable")
    per_item = group_mean[retained]
    curve = np.zeros(n + 1, dtype=np.float64)
    curve[:n] = np.cumsum(per_item)[::-1] / n
    return curve


def _centred_rank_sum(ranking: np.ndarray, error: np.ndarray) -> float:
    """``N^2 * (AUC(ranking) - AUC_random)`` in the rank form of the module docstring."""
    n = error.size
    weights = _average_ranks(ranking) - (n + 1) / 2.0  # exactly 0 for a constant ranking
    # Centring the error does not change the sum (the weights sum to 0) but keeps it well conditioned.
    return float(-np.dot(weights, error - error.mean()))


def _prr(u: np.ndarray, e: np.ndarray) -> float:
    denominator = _centred_rank_sum(e, e)
    if denominator == 0.0:
        warnings.warn(
            "prediction_rejection_ratio: every error is equal, so no ranking can beat random rejection "
            "and the ratio is 0/0; returning nan",
            RuntimeWarning,
            stacklevel=3,
        )
        return math.nan
    return 100.0 * (_centred_rank_sum(u, e) / denominator)  # exactly 100 when u ranks like e


def rejection_curve(uncertainty: ArrayLike, error: ArrayLike) -> RejectionCurve:
    """Prediction-rejection curve of ``uncertainty`` against a per-item ``error``, with the oracle and
    random curves, their areas and the PRR (convention in the module docstring).

    Args:
        uncertainty: ``[N]`` (any shape, flattened) uncertainty per item; higher is rejected first.
            ``±inf`` is allowed (it only ranks).
        error: ``[N]`` (same number of items) finite error per item, e.g. ``100 - sentence BLEU``.

    Returns:
        :class:`RejectionCurve` of float64 numpy arrays ``[N + 1]`` and float areas; the curves are in the
        units of ``error``.

    Raises:
        ValueError: for empty inputs, NaN anywhere, a non-finite error, or different numbers of items.
    """
    u, e = _check_pair(uncertainty, error)
    n = e.size
    fraction = np.arange(n + 1, dtype=np.float64) / n
    mean_error = float(e.mean())
    random_curve = mean_error * (1.0 - fraction)
    auc_random = mean_error / 2.0
    n2 = float(n) * float(n)
    return RejectionCurve(
        fraction_rejected=fraction,
        uncertainty=_curve_by(u, e),
        oracle=_curve_by(e, e),
        random=random_curve,
        auc_uncertainty=auc_random + _centred_rank_sum(u, e) / n2,
        auc_oracle=auc_random + _centred_rank_sum(e, e) / n2,
        auc_random=auc_random,
        prr=_prr(u, e),
    )


def prediction_rejection_ratio(uncertainty: ArrayLike, error: ArrayLike) -> float:
    """Prediction rejection ratio, ``(AUC_unc - AUC_rnd) / (AUC_orc - AUC_rnd) * 100``.

    100 means the uncertainty ranks the errors as well as the errors themselves, 0 means no better than
    random (a constant uncertainty gives exactly 0), negative means worse than random. Ties in
    ``uncertainty`` are averaged (the expected value under random tie-breaking), so the result does not
    depend on the input order.

    Args:
        uncertainty: ``[N]`` (any shape, flattened) uncertainty per item; ``±inf`` is allowed.
        error: ``[N]`` finite error per item, e.g. ``100 - sentence BLEU``.

    Returns:
        A Python float. When every error is equal (including N = 1) the ratio is 0/0: the function returns
        ``nan`` and emits a ``RuntimeWarning`` rather than raising, so an evaluation loop over many
        subsets keeps going.

    Raises:
        ValueError: for empty inputs, NaN anywhere, a non-finite error, or different numbers of items.
    """
    u, e = _check_pair(uncertainty, error)
    return _prr(u, e)


def sentence_error_from_bleu(
    hypotheses: Sequence[str],
    references: Union[Sequence[str], Sequence[Sequence[str]]],
    **bleu_kwargs: Any,
) -> np.ndarray:
    """Per-sentence error ``100 - sentence BLEU`` (sacrebleu), the error of translation PRR experiments.

    Args:
        hypotheses: ``N`` detokenised system outputs.
        references: ``N`` references, one string per hypothesis, or ``N`` sequences of strings when a
            hypothesis has several references.
        **bleu_kwargs: passed to ``sacrebleu.sentence_bleu`` (``tokenize``, ``smooth_method``,
            ``lowercase``, ...).

    Returns:
        float64 numpy array ``[N]`` with values in ``[0, 100]``.

    Raises:
        ImportError: if sacrebleu is not installed.
        ValueError: if the two lists have different lengths.
    """
    try:
        import sacrebleu
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sentence_error_from_bleu needs sacrebleu; install it with `pip install sacrebleu`"
        ) from err
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references: expected sequences of sentences, got a single string")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references: expected one reference entry per hypothesis, got "
            f"{len(hypotheses)} hypotheses and {len(references)} references"
        )
    scores = np.empty(len(hypotheses), dtype=np.float64)
    for i, (hyp, ref) in enumerate(zip(hypotheses, references)):
        refs = [ref] if isinstance(ref, str) else list(ref)
        scores[i] = sacrebleu.sentence_bleu(hyp, refs, **bleu_kwargs).score
    # sacrebleu can report 100 + 1e-14 for a perfect match; keep the error inside [0, 100].
    return np.clip(100.0 - scores, 0.0, 100.0)
