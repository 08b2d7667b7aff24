"""Vocabulary sweep: the whole demo at several vocabulary sizes, and how each student's translation quality
and OOD detection hold up as the vocabulary grows.

    python -m edd_ext.demo.sweep --vocab 300,1000,4000 [--output-dir DIR] [any demo option, e.g. --quick]
    python -m edd_ext.demo.sweep --output-vocab 1000,4000,16000 --vocab 1000 [...]

``--vocab LIST`` changes the built-in corpus with the vocabulary (more types, each seen less often, so the
teachers' task changes too). ``--output-vocab LIST`` keeps one corpus (``--vocab``) and only widens the
softmax with classes that never occur, the rare tail of a real subword vocabulary: the number of classes
the losses sum over changes, the translation task does not.

Every other option is passed to the demo unchanged (``python -m edd_ext.demo --help``), so all runs share
the budget and the seed. Writes ``DIR/V<vocab>/results.json`` (+ ``.png``) for every run, ``DIR/sweep.json``
and the figure ``DIR/sweep.png``, and prints the sweep table: each system's BLEU, its BLEU relative to the
ensemble's, and its OOD-detection AUROC (mean over the OOD sets) of MI (total uncertainty ``TU`` for the
systems without a knowledge-uncertainty measure).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from .__main__ import parse_args, run
from .report import KNOWLEDGE_MEASURE, write_json


def parse_sweep_args(argv: Optional[List[str]] = None):
    """(sweep options, the demo options passed through)."""
    p = argparse.ArgumentParser(prog="python -m edd_ext.demo.sweep", description=__doc__.split("\n\n")[0],
                                epilog="Any other option goes to the demo (python -m edd_ext.demo --help).")
    p.add_argument("--vocab", dest="vocab_text", default=None,
                   help="comma-separated vocabulary sizes of the built-in corpus (default: 300,1000,4000); with "
                        "--output-vocab, the one corpus's size, passed to the demo")
    p.add_argument("--output-vocab", dest="output_text", default=None,
                   help="comma-separated softmax sizes for one corpus")
    p.add_argument("--output-dir", default="sweep_output", help="where the runs and the sweep go "
                                                                "(default: %(default)s)")
    args, demo_argv = p.parse_known_args(argv)
    fixed = []
    if args.output_text is not None:  # --vocab is then the demo's fixed corpus size
        flag, text = "--output-vocab", args.output_text
        if args.vocab_text is not None:
            fixed = ["--vocab", args.vocab_text]
    else:
        flag, text = "--vocab", "300,1000,4000" if args.vocab_text is None else args.vocab_text
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        p.error(f"{flag}: expected comma-separated integers, got {text!r}")
    if not sizes or min(sizes) < 50:
        p.error(f"{flag}: expected sizes of at least 50, got {text!r}")
    if any(a.startswith(("--vocab", "--output-vocab", "--output-dir", "--train-src", "--train-tgt", "--test-src",
                         "--test-tgt")) for a in demo_argv):
        p.error("the sweep sets the swept size and --output-dir of each run and uses the built-in corpus")
    args.sizes, args.flag = sizes, flag
    return args, demo_argv + fixed


def summarise(payloads: Dict[int, Dict]) -> List[Dict]:
    """One row per (vocabulary, system): BLEU, BLEU / ensemble BLEU and the OOD AUROC used for the sweep."""
    rows = []
    for vocab, payload in payloads.items():
        table = payload["table"]
        ensemble_bleu = next(r["bleu"] for r in table if r["system"] == "ensemble")
        for r in table:
            measure = KNOWLEDGE_MEASURE if r.get(f"auroc_{KNOWLEDGE_MEASURE}") is not None else "TU"
            rows.append({"vocab": vocab, "system": r["system"], "bleu": r["bleu"],
                         "bleu_vs_ensemble": r["bleu"] / ensemble_bleu if ensemble_bleu > 0 else None,
                         "auroc_measure": measure, "auroc": r[f"auroc_{measure}"]})
    return rows


def format_sweep(rows: List[Dict], sizes: Sequence[int]) -> str:
    systems = list(dict.fromkeys(r["system"] for r in rows))
    cell = {(r["system"], r["vocab"]): r for r in rows}
    name_w = max(len("system"), *(len(s) for s in systems)) + 1
    lines = []
    for title, key, fmt in [("BLEU", "bleu", "{:.1f}"), ("BLEU relative to the ensemble", "bleu_vs_ensemble",
                                                          "{:.2f}"),
                            (f"OOD-detection AUROC (%), mean over the OOD sets, of {KNOWLEDGE_MEASURE} "
                             "(TU where a system has no MI)", "auroc", "{:.1f}")]:
        head = f"{'system':<{name_w}}" + "".join(f"{'V=' + str(v):>9}" for v in sizes)
        lines += [title, head, "-" * len(head)]
        for s in systems:
            vals = [cell.get((s, v), {}).get(key) for v in sizes]
            lines.append(f"{s:<{name_w}}" + "".join(f"{'—' if x is None else fmt.format(x):>9}" for x in vals))
        lines.append("")
    return "\n".join(lines).rstrip()


def _nan(x: Optional[float]) -> float:
    return float("nan") if x is None else x


def write_sweep_figure(path: Path, rows: List[Dict], sizes: Sequence[int],
                       title: str = "Vocabulary sweep", xlabel: str = "vocabulary size V") -> Optional[Path]:
    """Two panels against the vocabulary (log axis): BLEU relative to the ensemble, and OOD AUROC."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # matplotlib is optional
        return None
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    systems = [s for s in dict.fromkeys(r["system"] for r in rows) if s != "single"]
    for i, s in enumerate(systems):
        pts = sorted(((r["vocab"], r) for r in rows if r["system"] == s), key=lambda p: p[0])
        style = dict(marker="o", color=f"C{i}", linestyle="--" if s == "ensemble" else "-")
        xs = [v for v, _ in pts]
        if s != "ensemble":
            axes[0].plot(xs, [_nan(r["bleu_vs_ensemble"]) for _, r in pts], label=s, **style)
        axes[1].plot(xs, [_nan(r["auroc"]) for _, r in pts], label=f"{s} ({pts[0][1]['auroc_measure']})", **style)
    axes[0].axhline(1.0, color="grey", linewidth=0.8)
    axes[0].set_ylabel("student BLEU / ensemble BLEU")
    axes[1].axhline(50.0, color="grey", linewidth=0.8)
    axes[1].set_ylabel("OOD AUROC (%), mean over OOD sets")
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(sizes), [str(v) for v in sizes])
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args, demo_argv = parse_sweep_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payloads = {}
    for vocab in tqdm(args.sizes, desc="vocabulary sweep", leave=True, dynamic_ncols=True):
        run_args = parse_args([*demo_argv, args.flag, str(vocab), "--output-dir", str(out / f"V{vocab}")])
        payloads[vocab] = run(run_args)
    rows = summarise(payloads)
    text = format_sweep(rows, args.sizes)
    if args.flag == "--vocab":
        title, xlabel = "Vocabulary sweep (corpus vocabulary)", "vocabulary size V"
    else:
        title, xlabel = "Vocabulary sweep (softmax size, one corpus)", "softmax size V (classes)"
    figure = write_sweep_figure(out / "sweep.png", rows, args.sizes, title, xlabel)
    write_json(out / "sweep.json", {"vocab": args.sizes, "swept": args.flag, "demo_args": demo_argv, "rows": rows,
                                    "timings": {v: p["timings"] for v, p in payloads.items()},
                                    "figure": str(figure) if figure else None})
    print("\n" + text, flush=True)
    print(f"\nwrote {out / 'sweep.json'}" + (f" and {figure}" if figure else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
