"""The end-to-end demo (``python -m edd_ext.demo``): the real ``--quick`` run through the command line
(about 2 minutes on one core) checks the shape of the results table and that every number in it is finite;
smaller runs (tiny vocabulary, model and step counts; 10-30 s each) cover reproducibility, the user-file
path (with --bpe and --beam) and the EnD² warm start; the corpus generator and the options are tested directly.
Decoding, subwords and the file checks have their own fast tests in test_demo_decode.py.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import edd_ext
from edd_ext.demo import corpus as demo_corpus
from edd_ext.demo.__main__ import PRESETS, parse_args

ROOT = Path(edd_ext.__file__).resolve().parents[1]
SYSTEMS = ["ensemble", "single", "EnD", "EnD2", "Proxy-Dirichlet", "Logit-Gaussian", "Logit-Laplace"]
MEASURES = ["TU", "DU", "MI", "EPKL", "RMI", "PE", "EP"]
TINY = ["--quick", "--vocab", "120", "--members", "2", "--train-size", "300", "--test-size", "20",
        "--teacher-steps", "15", "--student-steps", "10", "--batch-size", "16", "--d-model", "32", "--ffn", "64",
        "--num-samples", "3", "--threads", "1", "--no-progress", "--seed", "3"]


def _run_demo(args, tmp_path, timeout=170):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", "edd_ext.demo", *args, "--output-dir", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _check_results(out: Path, stdout: str, ood_sets):
    results = json.loads((out / "results.json").read_text())
    assert results["ood_sets"] == ood_sets
    table = results["table"]
    assert [row["system"] for row in table] == SYSTEMS
    columns = results["columns"]
    expected = ["system", "bleu", "decode_s", "relative_cost", "train_s"]
    for m in MEASURES:
        expected += [f"prr_{m}", f"auroc_{m}"] + [f"auroc_{m}_{s}" for s in ood_sets]
    assert columns == expected
    for row in table:
        assert list(row) == columns, row["system"]
        has = set(results["measures"][row["system"]])
        for key, value in row.items():
            if key == "system":
                continue
            measure = key.split("_")[1] if key.startswith(("prr_", "auroc_")) else None
            if measure is not None and measure not in has:
                assert value is None, (row["system"], key)
                continue
            assert isinstance(value, (int, float)) and math.isfinite(value), (row["system"], key, value)
            if key.startswith("auroc_") or key == "bleu":
                assert 0.0 <= value <= 100.0, (row["system"], key, value)
    # Every system has the total-uncertainty and sequence-probability scores; the ensemble has all seven.
    assert all({"TU", "PE"} <= set(results["measures"][s]) for s in SYSTEMS)
    assert results["measures"]["ensemble"] == MEASURES
    for value in results["timings"].values():
        assert math.isfinite(value) and value >= 0
    assert (out / "results.png").stat().st_size > 0
    for system in SYSTEMS:
        assert system in stdout
    return results


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    out, stdout = _run_demo(["--quick", "--threads", "1", "--no-progress"], tmp_path, timeout=900)
    results = _check_results(out, stdout, ["permuted", "copy", "noise", "foreign"])
    assert results["vocab_size"] == PRESETS["quick"]["vocab"]
    assert results["config"]["members"] == PRESETS["quick"]["members"]
    assert results["students"]["EnD2"]["init"] == "EnD"


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    out, stdout = _run_demo(TINY, tmp_path)
    results = _check_results(out, stdout, ["permuted", "copy", "noise", "foreign"])
    assert results["vocab_size"] == 120
    assert results["config"]["members"] == 2


@pytest.mark.slow
def test_demo_is_reproducible(tmp_path):
    args = TINY + ["--methods", "EnD,Logit-Laplace"]
    tables = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        out, _ = _run_demo(args, tmp_path / name)
        table = json.loads((out / "results.json").read_text())["table"]
        tables.append([{k: v for k, v in row.items() if k not in ("decode_s", "relative_cost", "train_s")}
                       for row in table])
    assert tables[0] == tables[1]


@pytest.mark.slow
def test_demo_user_files(tmp_path):
    """Raw text files with an OOD file, through --bpe (a joint SentencePiece model, BLEU on the decoded text)
    and --beam 2 (n-best sequence measures), with the sizes taken from the data."""
    pytest.importorskip("sentencepiece")
    corpus = demo_corpus.toy_corpus(vocab=100, train_size=200, test_size=16, seed=1, max_len=6)
    files = {}
    for name, sents in [("train.src", corpus.train_src), ("train.tgt", corpus.train_tgt),
                        ("test.src", corpus.test_src), ("test.tgt", corpus.test_tgt),
                        ("other.src", corpus.ood_src["foreign"])]:
        files[name] = tmp_path / name
        files[name].write_text("\n".join(" ".join(s).capitalize() + "." for s in sents) + "\n")
    args = [a for a in TINY if a not in ("--vocab", "120")]
    args += ["--train-src", str(files["train.src"]), "--train-tgt", str(files["train.tgt"]),
             "--test-src", str(files["test.src"]), "--test-tgt", str(files["test.tgt"]),
             "--ood-src", str(files["other.src"]), "--bpe", "80", "--beam", "2", "--device", "cpu"]
    out, stdout = _run_demo(args, tmp_path)
    results = _check_results(out, stdout, ["permuted", "copy", "noise", "other"])
    assert results["config"]["bleu_tokenize"] == "13a" and results["config"]["beam"] == 2
    assert (out / "bpe.model").stat().st_size > 0 and "BPE" in results["corpus"]
    assert results["examples"][0]["reference"] == files["test.tgt"].read_text().splitlines()[0]
    sizes = results["sizes"]
    assert sizes["decode_batches_by_length"] and sizes["batch_tokens"] > 0
    assert sizes["decode_length_limit"]["ratio"] > 0 and results["environment"]["device"] == "cpu"
    assert set(results["estimate"]["seconds"]) == {"teachers_s", "students_s", "evaluation_s", "total_s"}


def test_toy_corpus_is_deterministic_and_ambiguous():
    a = demo_corpus.toy_corpus(vocab=300, train_size=400, test_size=20, seed=7)
    b = demo_corpus.toy_corpus(vocab=300, train_size=400, test_size=20, seed=7)
    c = demo_corpus.toy_corpus(vocab=300, train_size=400, test_size=20, seed=8)
    assert a.train_src == b.train_src and a.train_tgt == b.train_tgt and a.ood_src == b.ood_src
    assert a.train_src != c.train_src
    assert len(a.dictionary) == 300
    assert set(a.ood_src) == {"permuted", "copy", "noise", "foreign"}
    # Every token of every split is in the dictionary (no <unk>), and the foreign words never occur in training.
    d = a.dictionary
    for sents in [a.train_src, a.train_tgt, a.test_src, a.test_tgt, *a.ood_src.values()]:
        assert all(demo_corpus.UNK not in d.encode(s) for s in sents)
    train_words = {w for s in a.train_src + a.train_tgt for w in s}
    assert not train_words & {w for s in a.ood_src["foreign"] for w in s}
    # Genuine ambiguity: the same source word is translated in more than one way across the corpus.
    lang = demo_corpus.make_language(300, seed=7)
    assert lang.num_ambiguous > 0
    assert all(abs(p.sum() - 1) < 1e-9 for p in lang.probabilities)


def test_quick_preset_and_overrides():
    args = parse_args(["--quick", "--vocab", "800"])
    assert args.vocab == 800 and args.members == PRESETS["quick"]["members"]
    assert args.teacher_steps == PRESETS["quick"]["teacher_steps"]
    args = parse_args([])
    assert args.vocab == PRESETS["default"]["vocab"] and args.members == 5
    with pytest.raises(SystemExit):
        parse_args(["--train-src", "a.txt"])  # the four files go together
    with pytest.raises(SystemExit):
        parse_args(["--methods", "EnD,Unknown"])


def _tiny_setup():
    import torch

    from edd_ext.demo.model import ModelConfig, Seq2Seq

    corpus = demo_corpus.toy_corpus(vocab=60, train_size=64, test_size=4, seed=2, max_len=5)
    d = corpus.dictionary
    src = [d.encode(s) for s in corpus.train_src]
    tgt = [d.encode(t) for t in corpus.train_tgt]
    cfg = ModelConfig(vocab_size=len(d), d_model=16, nhead=2, layers=1, ffn=32, dropout=0.0, max_len=32)
    torch.manual_seed(0)
    teachers = [Seq2Seq(cfg).eval() for _ in range(2)]
    return cfg, teachers, src, tgt


def test_end2_student_starts_from_the_end_student():
    import torch

    from edd_ext.demo.model import Seq2Seq
    from edd_ext.demo.train import train_students

    cfg, teachers, src, tgt = _tiny_setup()
    torch.manual_seed(1)
    init = Seq2Seq(cfg).state_dict()
    kw = dict(steps=3, batch_size=8, lr=1e-3, seed=0, progress=False)

    def fresh():
        m = Seq2Seq(cfg)
        m.load_state_dict(init)
        return m

    # Alone: a private EnD student is trained first; only EnD2 is returned.
    alone = {"EnD2": fresh()}
    info = train_students(alone, teachers, src, tgt, end2_init="EnD", **kw)
    assert list(info) == ["EnD2"] and info["EnD2"]["init"] == "EnD"
    # Beside an EnD student from the same initialisation: the same EnD phase, so the same EnD2 result.
    both = {"EnD": fresh(), "EnD2": fresh()}
    info = train_students(both, teachers, src, tgt, end2_init="EnD", **kw)
    assert list(info) == ["EnD", "EnD2"]
    assert info["EnD2"]["train_s"] >= info["EnD"]["train_s"]
    for (k, a), b in zip(alone["EnD2"].state_dict().items(), both["EnD2"].state_dict().values()):
        assert torch.equal(a, b), k
    # ... which differs from the EnD student (the Dirichlet-NLL phase moved it) and from a scratch EnD2.
    assert not torch.equal(both["EnD2"].out_bias, both["EnD"].out_bias)
    scratch = {"EnD2": fresh()}
    train_students(scratch, teachers, src, tgt, end2_init="scratch", **kw)
    assert not torch.equal(scratch["EnD2"].out_bias, both["EnD2"].out_bias)
    with pytest.raises(ValueError, match="end2_init"):
        train_students({"EnD2": fresh()}, teachers, src, tgt, end2_init="EnD-ish", **kw)


def test_end2_init_flag():
    assert parse_args([]).end2_init == "EnD"
    assert parse_args(["--end2-init", "scratch"]).end2_init == "scratch"
    with pytest.raises(SystemExit):
        parse_args(["--end2-init", "warm"])


def _nan_like_loss(*args, **kwargs):
    """A loss that "works" but returns garbage: NaN, still attached to the student's graph."""
    student = args[0]
    return student.sum() * float("nan")


def _raise(*args, **kwargs):
    raise RuntimeError("broken on purpose")


@pytest.mark.parametrize("name, broken, error", [
    ("proxy_dirichlet_kl", _raise, RuntimeError),
    ("proxy_dirichlet_kl", _nan_like_loss, FloatingPointError),
    ("logit_laplace_nll", _nan_like_loss, FloatingPointError),
])
def test_demo_fails_loudly_when_a_fused_loss_breaks(monkeypatch, tmp_path, name, broken, error):
    """The demo calls the public API directly: a loss that raises or returns NaN stops it, never a fallback."""
    import edd_ext as E
    from edd_ext.demo.__main__ import run

    monkeypatch.setattr(E, name, broken)
    method = {"proxy_dirichlet_kl": "Proxy-Dirichlet", "logit_laplace_nll": "Logit-Laplace"}[name]
    args = parse_args(TINY + ["--methods", method, "--teacher-steps", "2", "--output-dir", str(tmp_path)])
    with pytest.raises(error):
        run(args)


def test_demo_fails_loudly_when_an_uncertainty_measure_breaks(monkeypatch, tmp_path):
    import torch

    import edd_ext as E
    from edd_ext.demo.__main__ import run

    real = E.uncertainty.ensemble

    def nan_measures(*args, **kwargs):
        u = real(*args, **kwargs)
        return u._replace(mutual_information=torch.full_like(u.mutual_information, float("nan")))

    monkeypatch.setattr(E.uncertainty, "ensemble", nan_measures)
    args = parse_args(TINY + ["--methods", "EnD", "--teacher-steps", "2", "--student-steps", "2",
                              "--output-dir", str(tmp_path)])
    with pytest.raises(FloatingPointError, match="MI"):
        run(args)


def test_linear_losses_train_the_students_as_the_logit_path_does():
    """--linear-losses: every student's loss and gradients through the fused linear losses (decoder states, output
    layers, the teachers as LinearTeachers) equal the logit path's to rounding, and so do short training runs."""
    import numpy as np
    import torch

    from edd_ext.demo.model import Seq2Seq
    from edd_ext.demo.train import (
        METHODS,
        batches,
        linear_teachers,
        student_linear_loss,
        student_loss,
        teacher_logits,
        train_students,
    )

    cfg, teachers, src, tgt = _tiny_setup()
    torch.manual_seed(1)
    students = {m: Seq2Seq(cfg, log_scale_head=METHODS[m][1]) for m in METHODS}
    batch = next(batches(src, tgt, 8, 1, np.random.default_rng(0)))
    logits = teacher_logits(teachers, batch.src, batch.prev)
    stats = edd_ext.ensemble_stats(logits)
    members = linear_teachers(teachers, batch.src, batch.prev)
    for name, model in students.items():
        params = list(model.parameters())
        want = student_loss(name, model(batch.src, batch.prev), logits, stats, batch.mask)
        want_grads = torch.autograd.grad(want, params, allow_unused=True)
        got = student_linear_loss(name, model, batch, members)
        got_grads = torch.autograd.grad(got, params, allow_unused=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for g, w in zip(got_grads, want_grads):
            assert (g is None) == (w is None), name
            if g is not None:
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")

    kw = dict(steps=4, batch_size=8, lr=1e-3, seed=0, progress=False)
    runs = []
    for linear in (False, True):
        torch.manual_seed(1)
        trained = {m: Seq2Seq(cfg, log_scale_head=METHODS[m][1]) for m in METHODS}
        runs.append((trained, train_students(trained, teachers, src, tgt, linear=linear, **kw)))
    (logit_models, logit_info), (linear_models, linear_info) = runs
    for name in METHODS:
        assert math.isclose(linear_info[name]["final_loss"], logit_info[name]["final_loss"], rel_tol=1e-5), name
        # Adam divides by the gradient's size, so rounding in near-zero gradients moves a weight by up to ~lr
        for (key, a), b in zip(logit_models[name].state_dict().items(), linear_models[name].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=0, atol=kw["lr"], msg=lambda m, what=f"{name}.{key}": f"{what}: {m}")
