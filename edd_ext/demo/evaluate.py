"""Evaluation of every system: BLEU, prediction rejection against 100 - sentence BLEU, OOD-detection AUROC
for each sequence-level measure, and decoding cost."""
from __future__ import annotations

import math
import warnings
from typing import Dict, List

import numpy as np
import sacrebleu

from edd_ext import metrics

from .corpus import Corpus
from .decode import LengthLimit, System, decode_set


def evaluate_system(system: System, corpus: Corpus, *, max_len: LengthLimit, width: int, beam: int = 1,
                    by_length: bool = False, device=None, bleu_tokenize: str = "none", progress: bool = True) -> Dict:
    """Decode the in-domain test set and every OOD set with ``system`` and compute its metrics.

    ``max_len``, ``width``, ``beam``, ``by_length`` and ``device`` go to ``decode.decode_set``. BLEU and the
    per-sentence errors are computed on text: hypotheses through ``corpus.text`` (subword pieces decoded
    back), references from ``corpus.reference_text()``.

    Returns a dict with ``bleu``, ``decode_s`` (decoding + uncertainty scoring of all sets), ``prr``
    (measure -> PRR), ``auroc`` (measure -> OOD set -> AUROC), and the raw per-sentence arrays
    ``scores`` / ``errors`` used for the figure.
    """
    d = corpus.dictionary
    options = dict(max_len=max_len, width=width, beam=beam, by_length=by_length, device=device, progress=progress)
    test_ids = [d.encode(s) for s in corpus.test_src]
    hyps, id_scores, seconds = decode_set(system, test_ids, desc=f"{system.name}: test", **options)
    hyp_text = [corpus.text(d.decode(h)) for h in hyps]
    ref_text = corpus.reference_text()
    bleu = sacrebleu.corpus_bleu(hyp_text, [ref_text], tokenize=bleu_tokenize).score
    errors = metrics.sentence_error_from_bleu(hyp_text, ref_text, tokenize=bleu_tokenize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-equal errors give nan; reported as 0 below
        prr = {m: _finite(metrics.prediction_rejection_ratio(id_scores[m].numpy(), errors)) for m in system.measures}
    auroc: Dict[str, Dict[str, float]] = {m: {} for m in system.measures}
    ood_scores = {}
    for name, sentences in corpus.ood_src.items():
        ids = [d.encode(s) for s in sentences]
        _, scores, t = decode_set(system, ids, desc=f"{system.name}: {name}", **options)
        seconds += t
        ood_scores[name] = {m: v.numpy() for m, v in scores.items()}
        for m in system.measures:
            auroc[m][name] = metrics.auroc(id_scores[m].numpy(), scores[m].numpy())
    return {
        "bleu": float(bleu),
        "decode_s": seconds,
        "prr": prr,
        "auroc": auroc,
        "hypotheses": hyp_text[:5],
        "scores": {"test": {m: v.numpy() for m, v in id_scores.items()}, **ood_scores},
        "errors": np.asarray(errors),
    }


def _finite(x: float) -> float:
    return 0.0 if not math.isfinite(x) else float(x)


def mean_auroc(result: Dict) -> Dict[str, float]:
    return {m: float(np.mean(list(v.values()))) for m, v in result["auroc"].items()}


def sample_translations(corpus: Corpus, n: int = 3) -> List[Dict[str, str]]:
    return [{"source": corpus.text(s), "reference": r}
            for s, r in zip(corpus.test_src[:n], corpus.reference_text()[:n])]
