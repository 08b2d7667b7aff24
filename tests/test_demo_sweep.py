"""The vocabulary sweep (``python -m edd_ext.demo.sweep``): option handling, the summary arithmetic on
hand-made results, and one tiny end-to-end sweep through the command line."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edd_ext
from edd_ext.demo.sweep import format_sweep, parse_sweep_args, summarise

ROOT = Path(edd_ext.__file__).resolve().parents[1]


def test_sweep_options():
    args, rest = parse_sweep_args(["--vocab", "300,1000", "--quick", "--members", "2"])
    assert args.sizes == [300, 1000] and args.flag == "--vocab" and rest == ["--quick", "--members", "2"]
    assert parse_sweep_args([])[0].sizes == [300, 1000, 4000]
    # Softmax-size sweep: --vocab is then the demo's fixed corpus size.
    args, rest = parse_sweep_args(["--output-vocab", "1000,4000", "--vocab", "500", "--quick"])
    assert args.sizes == [1000, 4000] and args.flag == "--output-vocab" and rest == ["--quick", "--vocab", "500"]
    for bad in (["--vocab", "a,b"], ["--vocab", "10"], ["--vocab", ""], ["--train-src", "x.txt"],
                ["--output-vocab", "x"]):
        with pytest.raises(SystemExit):
            parse_sweep_args(bad)


def test_output_vocab_pads_the_softmax_only():
    from edd_ext.demo.__main__ import load_corpus, parse_args

    plain = load_corpus(parse_args(["--quick", "--vocab", "200", "--train-size", "50", "--test-size", "5"]))
    padded = load_corpus(parse_args(["--quick", "--vocab", "200", "--train-size", "50", "--test-size", "5",
                                     "--output-vocab", "260"]))
    assert len(plain.dictionary) == 200 and len(padded.dictionary) == 260
    assert padded.train_src == plain.train_src and padded.ood_src == plain.ood_src  # the same corpus
    assert padded.dictionary.words[:200] == plain.dictionary.words
    assert all(w.startswith("<unused") for w in padded.dictionary.words[200:])
    with pytest.raises(SystemExit):
        parse_args(["--vocab", "300", "--output-vocab", "200"])


def _row(system, bleu, mi=None, tu=None):
    return {"system": system, "bleu": bleu, "auroc_MI": mi, "auroc_TU": tu}


def test_summary_relative_bleu_and_measure_choice():
    payloads = {
        300: {"table": [_row("ensemble", 40.0, 90.0, 88.0), _row("EnD", 30.0, None, 80.0),
                        _row("EnD2", 20.0, 70.0, 75.0)]},
        4000: {"table": [_row("ensemble", 0.0, 60.0, 61.0), _row("EnD", 0.0, None, 55.0),
                         _row("EnD2", 0.0, 52.0, 51.0)]},
    }
    rows = {(r["vocab"], r["system"]): r for r in summarise(payloads)}
    assert rows[300, "EnD"]["bleu_vs_ensemble"] == pytest.approx(0.75)
    assert rows[300, "EnD2"]["bleu_vs_ensemble"] == pytest.approx(0.5)
    assert rows[300, "EnD"]["auroc_measure"] == "TU" and rows[300, "EnD"]["auroc"] == 80.0
    assert rows[300, "EnD2"]["auroc_measure"] == "MI" and rows[300, "EnD2"]["auroc"] == 70.0
    assert rows[4000, "EnD2"]["bleu_vs_ensemble"] is None  # no ratio against a zero ensemble BLEU
    text = format_sweep(list(rows.values()), [300, 4000])
    assert "V=300" in text and "V=4000" in text and "0.75" in text and "—" in text


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path):
    tiny = ["--quick", "--members", "2", "--train-size", "200", "--test-size", "12", "--teacher-steps", "10",
            "--student-steps", "6", "--batch-size", "16", "--d-model", "32", "--ffn", "64", "--num-samples", "3",
            "--threads", "1", "--no-progress", "--methods", "EnD,EnD2"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "edd_ext.demo.sweep", "--vocab", "80,120", "--output-dir",
                           str(out), *tiny], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["vocab"] == [80, 120]
    assert {(r["vocab"], r["system"]) for r in sweep["rows"]} == {
        (v, s) for v in (80, 120) for s in ("ensemble", "single", "EnD", "EnD2")}
    for r in sweep["rows"]:
        assert math.isfinite(r["bleu"]) and 0 <= r["auroc"] <= 100
    for v in (80, 120):
        assert json.loads((out / f"V{v}" / "results.json").read_text())["vocab_size"] == v
    assert (out / "sweep.png").stat().st_size > 0
    assert "BLEU relative to the ensemble" in proc.stdout
