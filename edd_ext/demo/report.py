"""Results: the table (printed and in results.json) and the PNG figure."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from . import _api
from .decode import MEASURES

#: Measure whose per-OOD-set AUROC the third printed table shows (knowledge uncertainty).
KNOWLEDGE_MEASURE = "MI"


def build_table(results: Dict[str, Dict], ood_sets: Sequence[str], train_s: Dict[str, float]) -> List[Dict]:
    """One row per system with a fixed set of columns; a measure a system does not have is ``None``."""
    single_cost = results["single"]["decode_s"] if "single" in results else None
    rows = []
    for system, r in results.items():
        row = {"system": system, "bleu": r["bleu"], "decode_s": r["decode_s"],
               "relative_cost": r["decode_s"] / single_cost if single_cost else None,
               "train_s": train_s.get(system)}
        for m in MEASURES:
            has = m in r["prr"]
            row[f"prr_{m}"] = r["prr"][m] if has else None
            row[f"auroc_{m}"] = float(np.mean([r["auroc"][m][s] for s in ood_sets])) * 100 if has else None
            for s in ood_sets:
                row[f"auroc_{m}_{s}"] = r["auroc"][m][s] * 100 if has else None
        rows.append(row)
    return rows


def columns(ood_sets: Sequence[str]) -> List[str]:
    cols = ["system", "bleu", "decode_s", "relative_cost", "train_s"]
    for m in MEASURES:
        cols += [f"prr_{m}", f"auroc_{m}"] + [f"auroc_{m}_{s}" for s in ood_sets]
    return cols


def _cell(x: Optional[float], width: int, fmt: str = ".1f") -> str:
    return f"{'—' if x is None else format(x, fmt):>{width}}"


def format_table(rows: List[Dict], ood_sets: Sequence[str]) -> str:
    name_w = max(len("system"), *(len(r["system"]) for r in rows)) + 1
    lines = []
    head = f"{'system':<{name_w}}{'BLEU':>6}{'decode s':>9}{'cost':>6} | " + "".join(f"{m:>6}" for m in MEASURES)
    lines += ["Translation quality, decoding cost (x single model) and PRR (%) vs 100 - sentence BLEU", head,
              "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:<{name_w}}{r['bleu']:>6.1f}{r['decode_s']:>9.1f}"
                     f"{_cell(r['relative_cost'], 6)} | " + "".join(_cell(r[f'prr_{m}'], 6) for m in MEASURES))
    head = f"{'system':<{name_w}}" + "".join(f"{m:>6}" for m in MEASURES)
    lines += ["", f"OOD-detection AUROC (%), mean over {len(ood_sets)} OOD sets ({', '.join(ood_sets)})", head,
              "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:<{name_w}}" + "".join(_cell(r[f'auroc_{m}'], 6) for m in MEASURES))
    widths = [max(9, len(s) + 1) for s in ood_sets]
    head = f"{'system':<{name_w}}" + "".join(f"{s:>{w}}" for s, w in zip(ood_sets, widths))
    lines += ["", f"OOD-detection AUROC (%) of {KNOWLEDGE_MEASURE} (knowledge uncertainty) per OOD set", head,
              "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:<{name_w}}"
                     + "".join(_cell(r[f'auroc_{KNOWLEDGE_MEASURE}_{s}'], w) for s, w in zip(ood_sets, widths)))
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, payload: Dict) -> None:
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")


def write_figure(path: Path, results: Dict[str, Dict], ood_sets: Sequence[str], title: str) -> Optional[Path]:
    """Rejection curves (TU of every system) and ID-vs-OOD histograms of MI for the systems that have it."""
    if _api.plot_summary is None:
        return None
    rejection = {s: (r["scores"]["test"]["TU"], r["errors"]) for s, r in results.items()}
    ood = {}
    for s, r in results.items():
        if KNOWLEDGE_MEASURE in r["prr"]:
            all_ood = np.concatenate([r["scores"][o][KNOWLEDGE_MEASURE] for o in ood_sets])
            ood[f"{s}: {KNOWLEDGE_MEASURE}"] = (r["scores"]["test"][KNOWLEDGE_MEASURE], all_ood)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRR is undefined when every error is equal
        return _api.plot_summary(path, rejection=rejection, ood=ood, title=title)
