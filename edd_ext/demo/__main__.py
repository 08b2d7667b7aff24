"""Command line of the demo: ``python -m edd_ext.demo [--quick] [--output-dir DIR] ...`` (or ``edd-demo``)."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

import edd_ext as E

from .corpus import Corpus, DataError, add_ood_files, file_corpus, length_ratio, limit_lengths, toy_corpus
from .decode import DirichletSystem, EnsembleSystem, LengthLimit, LogitSystem, System, batch_groups
from .evaluate import evaluate_system, sample_translations
from .model import ModelConfig, Seq2Seq
from .plan import Workload, estimate_seconds, trial_step_seconds
from .report import build_table, columns, format_table, write_figure, write_json
from .subword import apply_bpe
from .train import END2_INIT, METHODS, batches, build_teacher_cache, train_students, train_teacher

#: Sizes of the default and the ``--quick`` runs; any option given on the command line wins.
PRESETS = {
    "default": dict(vocab=2000, train_size=15000, test_size=300, teacher_steps=700, student_steps=600,
                    batch_size=64, d_model=128, layers=1, ffn=512, lr=3e-3, max_len=10, num_samples=10, members=5),
    "quick": dict(vocab=600, train_size=3000, test_size=100, teacher_steps=300, student_steps=200,
                  batch_size=64, d_model=128, layers=1, ffn=512, lr=3e-3, max_len=8, num_samples=10, members=3),
}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="edd-demo",
        description="Ensemble distribution distillation end to end: train an ensemble of small translation "
                    "models, distil it into one student per method, and compare BLEU, prediction rejection, "
                    "OOD detection and decoding cost. Writes results.json and results.png.")
    p.add_argument("--quick", action="store_true", help="a small run (smoke test; under 3 min on 2 CPU cores)")
    p.add_argument("--output-dir", default="demo_output", help="where results.json and results.png go "
                                                               "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the corpus, every model and the data order "
                                                       "(default: %(default)s)")
    p.add_argument("--device", default=None,
                   help="where everything runs (models, losses, decoding, measures): cpu, cuda or cuda:N "
                        "(default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--beam", type=int, default=1,
                   help="hypotheses per source in beam search; the sequence measures are averaged over the n-best "
                        "list (default: %(default)s, greedy decoding)")
    p.add_argument("--bpe", type=int, default=None, metavar="N",
                   help="segment every split with a joint SentencePiece BPE model of N pieces trained on the "
                        "training sources and targets; BLEU is then computed on the decoded text (default: off)")
    g = p.add_argument_group("sizes", "Defaults come from the preset (default run / --quick); an option given "
                                      "here wins.")

    def sized(flag: str, type_, text: str) -> None:
        key = flag[2:].replace("-", "_")
        g.add_argument(flag, type=type_, help=f"{text} (default {PRESETS['default'][key]}, "
                                              f"--quick {PRESETS['quick'][key]})")

    sized("--members", int, "ensemble size M")
    sized("--vocab", int, "vocabulary size V: exact for the built-in corpus; for your files a cap, used only "
                          "when given")
    g.add_argument("--output-vocab", type=int, default=None,
                   help="softmax size: pad the dictionary to this many types with types that occur in no split "
                        "(the rare tail of a real vocabulary); the corpus, and so the task, stays the same "
                        "(default: no padding)")
    sized("--train-size", int, "built-in corpus: training sentences")
    sized("--test-size", int, "built-in corpus: sentences in the test set and in each OOD set")
    sized("--max-len", int, "built-in corpus: longest source sentence, in words (about)")
    sized("--teacher-steps", int, "updates per teacher")
    sized("--student-steps", int, "updates per student")
    sized("--batch-size", int, "sentences per update")
    sized("--d-model", int, "transformer width")
    sized("--layers", int, "encoder and decoder layers")
    sized("--ffn", int, "feed-forward width")
    sized("--lr", float, "peak Adam learning rate")
    sized("--num-samples", int, "Monte-Carlo samples for the logit-space students' uncertainty")
    f = p.add_argument_group("your own data (one sentence per line: whitespace tokens, or raw text with --bpe)",
                             "Sizes follow the data: the model's positions and each source's decoding length limit "
                             "come from the sentence lengths, training batches hold about --batch-tokens tokens of "
                             "similar-length pairs, decoding batches group sources of similar length.")
    f.add_argument("--train-src")
    f.add_argument("--train-tgt")
    f.add_argument("--test-src")
    f.add_argument("--test-tgt")
    f.add_argument("--ood-src", action="append", default=[], help="an OOD source file (repeatable)")
    f.add_argument("--max-sentence-tokens", type=int, default=128,
                   help="training pairs with a longer side are dropped, longer test/OOD sources cut (after --bpe "
                        "segmentation; default: %(default)s)")
    f.add_argument("--batch-tokens", type=int, default=None,
                   help="padded source+target tokens per training batch (default: --batch-size times the mean "
                        "pair length)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated students to train "
                                                                "(default: all)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="teachers' label smoothing "
                                                                      "(default: %(default)s)")
    p.add_argument("--logit-anchor", type=float, default=1.0,
                   help="weight of the EnD loss on the logit students' location; 0 trains them with the logit "
                        "NLL alone (default: %(default)s)")
    p.add_argument("--end2-init", choices=END2_INIT, default="EnD",
                   help="start of the EnD² student: the trained EnD student, then its own Dirichlet-NLL steps, or "
                        "a random initialisation, where it collapses to a flat Dirichlet (default: %(default)s)")
    p.add_argument("--linear-losses", action="store_true",
                   help="train the students through the fused linear losses (edd_ext.linear_*: decoder states and "
                        "output layers, the teachers as edd_ext.LinearTeachers), without forming the [B, T, V] "
                        "student or [B, T, M, V] teacher logits; the same results to rounding")
    p.add_argument("--teacher-cache-topk", type=int, default=None, metavar="K",
                   help="offline distillation: run the teachers once over the training corpus, cache its top-K "
                        "statistics (edd_ext.cache, float16) and train the students from the cache; the logit-space "
                        "students, which need every member's logits, are left out (default: live teachers)")
    p.add_argument("--bleu-tokenize", default=None,
                   help="sacrebleu tokenizer (default: 13a with --bpe, where BLEU is computed on detokenised text; "
                        "none otherwise, where the text is pre-tokenised)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads. The models are tiny: one thread is fastest, and on a busy 2-core "
                        "machine two threads ran the --quick run 5x slower (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "default"]
    args.vocab_cap = args.vocab  # for user files the vocabulary is a cap, and only when given
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    files = [args.train_src, args.train_tgt, args.test_src, args.test_tgt]
    if any(files) and not all(files):
        p.error("--train-src, --train-tgt, --test-src and --test-tgt go together")
    if args.output_vocab is not None and not args.train_src and args.output_vocab < args.vocab:
        p.error(f"--output-vocab: expected at least --vocab ({args.vocab}), got {args.output_vocab}")
    if args.members < 1:
        p.error(f"--members: expected at least 1, got {args.members}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        p.error(f"--methods: expected a comma-separated subset of {list(METHODS)}, got {args.methods!r}")
    if args.teacher_cache_topk is not None:
        if args.teacher_cache_topk < 1:
            p.error(f"--teacher-cache-topk: expected at least 1, got {args.teacher_cache_topk}")
        methods = [m for m in methods if not METHODS[m][1]]
        if not methods:
            p.error("--teacher-cache-topk: the logit-space students need live teachers; choose another method")
    args.methods = methods
    if args.beam < 1:
        p.error(f"--beam: expected at least 1 hypothesis per source, got {args.beam}")
    if args.bpe is not None and args.train_src and args.vocab_cap is not None:
        p.error("--vocab and --bpe: give one (with --bpe the vocabulary is the N pieces)")
    if args.bleu_tokenize is None:
        args.bleu_tokenize = "13a" if args.bpe else "none"
    args.device = check_device(p, args.device)
    return args


def check_device(p: argparse.ArgumentParser, device: Optional[str]) -> str:
    """The ``--device`` to use: the given one if it can run here (else a parser error that says why), or
    ``cuda`` when a GPU is visible, else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        p.error(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if dev.type == "cpu":
        return device
    if dev.type != "cuda":
        p.error(f"--device: expected cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        p.error(f"--device {device}: no CUDA device is visible (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda or 'no'}; torch.cuda.is_available() is False); use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        p.error(f"--device {device}: expected an index below the {torch.cuda.device_count()} visible GPUs")
    if not E.cuda_built():
        p.error(f"--device {device}: the loaded edd_ext build has no CUDA kernels (edd_ext.cuda_built() is False); "
                "rebuild it on this machine with pip install --no-build-isolation -e .")
    return device


def load_corpus(args: argparse.Namespace, bpe_model: Optional[Path] = None) -> Corpus:
    if args.train_src:
        corpus = file_corpus(args.train_src, args.train_tgt, args.test_src, args.test_tgt, args.ood_src,
                             vocab=None if args.bpe else args.vocab_cap, seed=args.seed)
    else:
        corpus = toy_corpus(vocab=args.vocab, train_size=args.train_size, test_size=args.test_size,
                            seed=args.seed, max_len=args.max_len)
        add_ood_files(corpus.ood_src, args.ood_src)
    if args.bpe:
        corpus = apply_bpe(corpus, args.bpe, save_to=bpe_model)
    limit_lengths(corpus, args.max_sentence_tokens)
    if args.output_vocab is not None:
        corpus_types = len(corpus.dictionary)
        corpus.dictionary.pad_to(args.output_vocab)
        if len(corpus.dictionary) > corpus_types:
            corpus.description += f"; softmax padded from {corpus_types} to {len(corpus.dictionary)} classes"
    return corpus


def _log(msg: str) -> None:
    print(msg, flush=True)


def _build_systems(args, teachers, students) -> List[System]:
    systems: List[System] = [EnsembleSystem("ensemble", teachers), System("single", teachers[:1])]
    for name, model in students.items():
        if name in ("EnD2", "Proxy-Dirichlet"):
            systems.append(DirichletSystem(name, [model]))
        elif name.startswith("Logit-"):
            systems.append(LogitSystem(name, [model], family=name.split("-")[1].lower(),
                                       num_samples=args.num_samples, seed=args.seed))
        else:
            systems.append(System(name, [model]))
    return systems


def _sizes(args, corpus: Corpus, src, tgt) -> Dict:
    """Model positions, decoding length limits and batch sizes. The built-in corpus keeps fixed sizes (one
    length limit for every source, sentence batches in corpus order); user files get sizes from the data."""
    d = corpus.dictionary
    longest = max(len(s) for s in src + tgt + [d.encode(t) for t in corpus.test_tgt])
    ood_longest = max((len(s) for sents in corpus.ood_src.values() for s in sents), default=0)
    positions = max(longest, ood_longest) * 2 + 4
    cap = 2 * longest + 2
    files = bool(args.train_src)
    if files:
        ratio = length_ratio(src, tgt)
        limit = LengthLimit(cap=cap, ratio=ratio, extra=10)
        batch_tokens = args.batch_tokens or round(args.batch_size * sum(len(s) + len(t) + 1 for s, t in
                                                                        zip(src, tgt)) / len(src))
    else:
        limit, batch_tokens = LengthLimit(cap=cap), args.batch_tokens
    return {"positions": positions, "limit": limit, "batch_tokens": batch_tokens, "by_length": files,
            "width": args.members * len(d)}


def _workload(args, corpus: Corpus, sizes: Dict, test_ids) -> Workload:
    warm = args.end2_init == "EnD" and "EnD2" in args.methods
    main_loop = len([m for m in args.methods if not (warm and m == "EnD2")]) + (warm and "EnD" not in args.methods)
    groups = batch_groups([sizes["limit"](len(s)) for s in test_ids], width=sizes["width"] * args.beam,
                          by_length=sizes["by_length"])
    mean_target = sum(map(len, corpus.test_tgt)) / max(1, len(corpus.test_tgt))
    return Workload(members=args.members, teacher_steps=args.teacher_steps, student_steps=args.student_steps,
                    students=main_loop, warm_start_steps=args.student_steps if warm else 0,
                    eval_models=args.members + 1 + len(args.methods),
                    eval_sentences=len(test_ids) + sum(map(len, corpus.ood_src.values())),
                    decode_rows=max(1, round(len(test_ids) / len(groups))), beam=args.beam,
                    hypothesis_len=mean_target + 1)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def run(args: argparse.Namespace) -> Dict:
    """The whole experiment; returns the results.json payload."""
    t_start = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(args.device)
    progress = not args.no_progress
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    t0 = time.perf_counter()
    corpus = load_corpus(args, bpe_model=out_dir / "bpe.model" if args.bpe else None)
    timings["corpus_s"] = time.perf_counter() - t0
    _log(f"[data] {corpus.description}; OOD sets: {', '.join(corpus.ood_src)}")
    for note in corpus.notes:
        _log(f"[data] {note}")
    d = corpus.dictionary
    src = [d.encode(s) for s in corpus.train_src]
    tgt = [d.encode(t) for t in corpus.train_tgt]
    test_ids = [d.encode(s) for s in corpus.test_src]
    sizes = _sizes(args, corpus, src, tgt)
    cfg = ModelConfig(vocab_size=len(d), d_model=args.d_model, nhead=4, layers=args.layers, ffn=args.ffn,
                      max_len=sizes["positions"])
    limit, batch_tokens = sizes["limit"], sizes["batch_tokens"]
    if sizes["by_length"]:
        _log(f"[sizes] {cfg.max_len} model positions; hypotheses up to min({limit.cap}, "
             f"{limit.ratio:.2f} x source + {limit.extra}) tokens; training batches of about {batch_tokens} tokens")

    # ---- the estimate ----
    t0 = time.perf_counter()
    trial_batch = next(batches(src, tgt, args.batch_size, 1, np.random.default_rng([args.seed, 30]), batch_tokens))
    work = _workload(args, corpus, sizes, test_ids)
    trial = trial_step_seconds(cfg, trial_batch, members=args.members, decode_rows=work.decode_rows * args.beam,
                               device=device)
    estimate = estimate_seconds(trial, work, batch_rows=trial_batch.src.shape[0])
    timings["estimate_s"] = time.perf_counter() - t0
    _log(f"[plan] on {args.device}: about {_minutes(estimate['total_s'])} (teachers "
         f"{_minutes(estimate['teachers_s'])}, students {_minutes(estimate['students_s'])}, evaluation "
         f"{_minutes(estimate['evaluation_s'])}), from trial steps at this machine's present load")

    # ---- teachers ----
    t0 = time.perf_counter()
    teachers, teacher_info = [], []
    for m in range(args.members):
        torch.manual_seed(args.seed * 1000 + m)
        model = Seq2Seq(cfg).to(device)
        info = train_teacher(model, src, tgt, steps=args.teacher_steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed * 1000 + m, label_smoothing=args.label_smoothing,
                             desc=f"teacher {m + 1}/{args.members}", progress=progress, max_tokens=batch_tokens)
        _log(f"[teacher {m + 1}/{args.members}] {info['train_s']:.0f} s, final NLL {info['final_loss']:.3f}")
        teachers.append(model)
        teacher_info.append(info)
    timings["teachers_s"] = time.perf_counter() - t0

    # ---- teacher cache (offline distillation) ----
    cache = None
    if args.teacher_cache_topk is not None:
        t0 = time.perf_counter()
        cache = build_teacher_cache(teachers, src, tgt, str(out_dir / "teacher_cache"), top_k=args.teacher_cache_topk,
                                    progress=progress)
        timings["teacher_cache_s"] = time.perf_counter() - t0
        _log(f"[teacher cache] top-{cache.top_k} statistics of {len(cache)} sentences, {cache.bytes_per_token:.0f} "
             f"bytes per token, {timings['teacher_cache_s']:.0f} s; students train from it (logit-space students "
             "left out)")

    # ---- students ----
    t0 = time.perf_counter()
    students = {}
    for name in args.methods:
        torch.manual_seed(args.seed * 1000 + 999)  # every student starts from the same initialisation
        students[name] = Seq2Seq(cfg, log_scale_head=METHODS[name][1]).to(device)
    student_info = train_students(students, teachers, src, tgt, steps=args.student_steps,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  logit_anchor=args.logit_anchor, end2_init=args.end2_init,
                                  progress=progress, max_tokens=batch_tokens, cache=cache,
                                  linear=args.linear_losses)
    timings["students_s"] = time.perf_counter() - t0
    _log(f"[students] {timings['students_s']:.0f} s ("
         + ("cache reads" if cache is not None else "teacher forward + ensemble_stats") + ": "
         f"{next(iter(student_info.values()))['teacher_forward_s']:.0f} s); final losses: "
         + ", ".join(f"{k} {v['final_loss']:.3g}" for k, v in student_info.items()))

    # ---- evaluation ----
    systems = _build_systems(args, teachers, students)
    t0 = time.perf_counter()
    results = {}
    for system in systems:
        results[system.name] = evaluate_system(system, corpus, max_len=limit, width=sizes["width"], beam=args.beam,
                                               by_length=sizes["by_length"], device=device,
                                               bleu_tokenize=args.bleu_tokenize, progress=progress)
        _log(f"[eval] {system.name}: BLEU {results[system.name]['bleu']:.1f}, "
             f"{results[system.name]['decode_s']:.1f} s")
    timings["evaluation_s"] = time.perf_counter() - t0

    # ---- report ----
    ood_sets = list(corpus.ood_src)
    train_s = {"ensemble": sum(i["train_s"] for i in teacher_info), "single": teacher_info[0]["train_s"]}
    train_s.update({k: v["train_s"] for k, v in student_info.items()})
    table = build_table(results, ood_sets, train_s)
    text = format_table(table, ood_sets)
    figure = write_figure(out_dir / "results.png", results, ood_sets,
                          title=f"EDD demo: V={len(d)}, M={args.members}")
    timings["total_s"] = time.perf_counter() - t_start
    payload = {
        "config": {k: v for k, v in vars(args).items()},
        "corpus": corpus.description,
        "corpus_notes": corpus.notes,
        "vocab_size": len(d),
        "model": asdict(cfg),
        "sizes": {"model_positions": cfg.max_len, "decode_length_limit": asdict(limit),
                  "batch_tokens": batch_tokens, "decode_batches_by_length": sizes["by_length"]},
        "extension": {"compiled": E.has_extension(), "cuda": E.cuda_built()},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "device": str(device),
                        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
                        platform.processor() or platform.machine(),
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "timings": timings,
        "estimate": {"seconds": estimate, "trial_steps_s": trial, "workload": asdict(work)},
        "ood_sets": ood_sets,
        "measures": {s.name: list(s.measures) for s in systems},
        "columns": columns(ood_sets),
        "table": table,
        "teachers": teacher_info,
        "students": student_info,
        "examples": sample_translations(corpus),
        "hypotheses": {k: v["hypotheses"] for k, v in results.items()},
        "figure": str(figure) if figure else None,
    }
    write_json(out_dir / "results.json", payload)
    _log("\n" + text)
    _log(f"\ntotal {timings['total_s']:.0f} s (estimated {estimate['total_s']:.0f} s; teachers "
         f"{timings['teachers_s']:.0f} s, students {timings['students_s']:.0f} s, evaluation "
         f"{timings['evaluation_s']:.0f} s); wrote {out_dir / 'results.json'}" + (f" and {figure}" if figure else ""))
    return payload


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except DataError as e:  # a problem with the user's files: the message says what and where
        print(f"edd-demo: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
