"""Score uncertainty-aware generations: BLEU, prediction-rejection ratio and out-of-domain detection.

For each system (a folder written by ``edd_fairseq.generate``) it reads ``uncertainty-{subset}.jsonl`` of the
in-domain subset and of every OOD subset, and reports

* BLEU of the best hypotheses on the in-domain subset (sacrebleu, corpus level);
* PRR of every sequence-level measure on the in-domain subset against the per-sentence error
  100 - sentence BLEU (``edd_ext.metrics.prediction_rejection_ratio``; 100 = oracle, 0 = random);
* AUROC of every measure for separating the in-domain subset (negatives) from each OOD subset (positives)
  (``edd_ext.metrics.auroc``; 50 = chance, shown in percent).

Measures are those of the best hypothesis (``--levels sequence``) and the n-best aggregates (``nbest``).

Usage:
  python -m edd_fairseq.score --system ensemble=out/ensemble --system proxy=out/proxy \
      --id test --ood permuted=test1 --ood foreign=test2 [--levels sequence,nbest] [--json scores.json]
"""
import argparse
import json
import math
import os
import warnings
from typing import Dict, List

MEASURE_ORDER = ("pe", "ep", "tu", "du", "mi", "epkl", "rmi")


def read_jsonl(path: str) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _named(values: List[str], flag: str) -> Dict[str, str]:
    out = {}
    for v in values:
        if "=" not in v:
            raise SystemExit(f"{flag}: expected NAME=VALUE, got {v!r}")
        name, value = v.split("=", 1)
        out[name] = value
    return out


def score_system(folder: str, id_subset: str, ood_subsets: Dict[str, str], levels: List[str]) -> dict:
    import numpy as np
    import sacrebleu

    from edd_ext import metrics

    ind = read_jsonl(os.path.join(folder, f"uncertainty-{id_subset}.jsonl"))
    hyps, refs = [r["hyp"] for r in ind], [r["ref"] for r in ind]
    result = {"folder": folder, "kind": ind[0]["kind"] if ind else None, "sentences": len(ind),
              "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "measures": {}}
    error = metrics.sentence_error_from_bleu(hyps, refs)
    ood = {name: read_jsonl(os.path.join(folder, f"uncertainty-{subset}.jsonl"))
           for name, subset in ood_subsets.items()}
    for level in levels:
        names = [m for m in MEASURE_ORDER if ind and m in ind[0][level]]
        for m in names:
            u = np.array([r[level][m] for r in ind], dtype=np.float64)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                entry = {"prr": metrics.prediction_rejection_ratio(u, error)}
            for name, records in ood.items():
                v = np.array([r[level][m] for r in records], dtype=np.float64)
                entry["auroc_" + name] = 100.0 * metrics.auroc(u, v)
            result["measures"][m if level == "sequence" else f"{m}@{level}"] = entry
    return result


def format_table(results: Dict[str, dict], ood_names: List[str]) -> str:
    cols = ["PRR"] + [f"AUROC {n}" for n in ood_names]
    lines = []
    header = f"{'system':<12} {'measure':<12} " + " ".join(f"{c:>15}" for c in cols)
    lines.append(header)
    lines.append("-" * len(header))
    for system, r in results.items():
        lines.append(f"{system:<12} {'BLEU':<12} {r['bleu']:>15.2f}   ({r['kind']}, {r['sentences']} sentences)")
        for m, entry in r["measures"].items():
            values = [entry["prr"]] + [entry["auroc_" + n] for n in ood_names]
            lines.append(f"{'':<12} {m:<12} " + " ".join(
                f"{v:>15.1f}" if not math.isnan(v) else f"{'nan':>15}" for v in values))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--system", action="append", required=True, metavar="NAME=FOLDER",
                   help="a folder written by edd_fairseq.generate (repeatable)")
    p.add_argument("--id", default="test", help="in-domain subset (default: test)")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=SUBSET",
                   help="an out-of-domain subset (repeatable)")
    p.add_argument("--levels", default="sequence,nbest", help="comma-separated: sequence, nbest")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args(argv)
    systems = _named(args.system, "--system")
    oods = _named(args.ood, "--ood")
    levels = [x for x in args.levels.split(",") if x]
    for level in levels:
        if level not in ("sequence", "nbest"):
            raise SystemExit(f"--levels: expected sequence and/or nbest, got {level!r}")
    results = {name: score_system(folder, args.id, oods, levels) for name, folder in systems.items()}
    print(format_table(results, list(oods)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
