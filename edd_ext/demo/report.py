"""Results: the table (printed and in results.json) and the PNG figure."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from edd_ext import metrics

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
    """One PNG: mean OOD AUROC per system and measure, BLEU and decoding cost, prediction-rejection curves
    (PE, which every system has), and in-domain vs OOD histograms of MI for three systems."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is optional
        return None
    systems = list(results)
    fig = Figure(figsize=(18, 9.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.suptitle(title)

    ax = axes[0, 0]  # AUROC heat map
    grid = np.full((len(systems), len(MEASURES)), np.nan)
    for i, s in enumerate(systems):
        for j, m in enumerate(MEASURES):
            if m in results[s]["auroc"]:
                grid[i, j] = 100 * np.mean([results[s]["auroc"][m][o] for o in ood_sets])
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")  # 50 = chance
    for i in range(len(systems)):
        for j in range(len(MEASURES)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center")
    ax.set_xticks(range(len(MEASURES)), MEASURES)
    ax.set_yticks(range(len(systems)), systems)
    ax.set_title(f"OOD AUROC (%), mean over {len(ood_sets)} OOD sets")
    fig.colorbar(im, ax=ax, shrink=0.8)

    ax = axes[0, 1]  # BLEU and cost
    x = np.arange(len(systems))
    bleu = [results[s]["bleu"] for s in systems]
    ax.bar(x, bleu, color="tab:blue")
    ax.set_ylim(0, max(bleu) * 1.15 + 1)
    for xi, s, b in zip(x, systems, bleu):
        ax.annotate(f"{results[s]['decode_s']:.1f}s", (xi, b), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize="small")
    ax.set_xticks(x, systems, rotation=30, ha="right")
    ax.set_ylabel("BLEU (label: decoding + scoring time)")
    ax.set_title("Translation quality and cost")
    ax.grid(axis="y", alpha=0.3)

    ax = axes[0, 2]  # rejection curves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # PRR is undefined when every error is equal
        for s in systems:
            c = metrics.rejection_curve(results[s]["scores"]["test"]["PE"], results[s]["errors"])
            prr = "n/a" if not np.isfinite(c.prr) else f"{c.prr:.0f}"
            ax.plot(c.fraction_rejected, c.uncertainty, label=f"{s} (PRR {prr})")
    ax.set_xlabel("fraction rejected (most uncertain first, by PE)")
    ax.set_ylabel("mean 100 - sentence BLEU (rejected count as 0)")
    ax.set_title("Prediction rejection")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")

    shown = [s for s in ("ensemble", "Proxy-Dirichlet", "Logit-Laplace", "Logit-Gaussian", "EnD2")
             if s in results and KNOWLEDGE_MEASURE in results[s]["auroc"]][:3]
    for ax, s in zip(axes[1], shown):
        scores = results[s]["scores"]
        ident = scores["test"][KNOWLEDGE_MEASURE]
        bins = np.histogram_bin_edges(np.concatenate([ident] + [scores[o][KNOWLEDGE_MEASURE] for o in ood_sets]), 30)
        ax.hist(ident, bins=bins, density=True, alpha=0.6, label="in-domain test")
        for o in ood_sets:
            ax.hist(scores[o][KNOWLEDGE_MEASURE], bins=bins, density=True, histtype="step", lw=1.5,
                    label=f"{o} (AUROC {100 * results[s]['auroc'][KNOWLEDGE_MEASURE][o]:.0f})")
        ax.set_title(f"{s}: sequence-level {KNOWLEDGE_MEASURE}")
        ax.set_xlabel(KNOWLEDGE_MEASURE)
        ax.legend(fontsize="small")
    for ax in axes[1][len(shown):]:
        ax.set_visible(False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
