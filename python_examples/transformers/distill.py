"""Ensemble distribution distillation with Hugging Face transformers, end to end on CPU.

Builds small Marian (or T5) models from a configuration (no download) and a word-level tokenizer trained
locally with ``tokenizers`` on the built-in toy corpus of ``edd_ext.demo``; trains M teachers with
``Seq2SeqTrainer`` (cross-entropy); distils them with ``EnsembleDistillationTrainer`` into a Proxy-Dirichlet
student and a logit-Laplace student (a ``LogScaleHeadForSeq2SeqLM``); then decodes the test set and the
out-of-distribution (OOD) sets with ``generate_with_uncertainty`` and prints BLEU (sacrebleu) and the OOD
detection AUROC of each sequence-level measure (``edd_ext.metrics.auroc``).

    python python_examples/transformers/distill.py --quick        # a few minutes on 2 CPU cores
    python python_examples/transformers/distill.py --model t5 --output-dir hf_output
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import sacrebleu
import torch
from transformers import (
    AutoModelForSeq2SeqLM,
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)

import edd_ext as E
from edd_ext.demo.corpus import toy_corpus
from edd_ext.integrations.transformers import (
    EnsembleDistillationTrainer,
    LogScaleHeadForSeq2SeqLM,
    generate_with_uncertainty,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from toy_seq2seq import encode_pairs, marian_config, t5_config, word_tokenizer  # noqa: E402

PRESETS = {
    "default": dict(vocab=1000, train_size=8000, test_size=200, teacher_steps=600, student_steps=600,
                    batch_size=32, d_model=64, ffn=256, lr=3e-3),
    "quick": dict(vocab=300, train_size=2000, test_size=60, teacher_steps=500, student_steps=400,
                  batch_size=32, d_model=64, ffn=128, lr=3e-3),
}
MEASURES = ("total", "data", "mutual_information", "epkl", "rmi", "pe", "ep")
SHORT = dict(total="TU", data="DU", mutual_information="MI", epkl="EPKL", rmi="RMI", pe="PE", ep="EP")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small run (CI smoke test)")
    p.add_argument("--model", choices=["marian", "t5"], default="marian")
    p.add_argument("--members", type=int, default=3, help="number of teachers M (default: %(default)s)")
    for key in PRESETS["default"]:
        kind = float if key == "lr" else int
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None,
                       help=f"default {PRESETS['default'][key]}, --quick {PRESETS['quick'][key]}")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; these models are small: more threads mostly contend (default: 1)")
    p.add_argument("--output-dir", default="hf_distill_output", help="checkpoints and results.json")
    args = p.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_model(args, tokenizer, seed: int):
    set_seed(seed)
    cfg = (marian_config if args.model == "marian" else t5_config)(tokenizer, d_model=args.d_model, ffn=args.ffn)
    return AutoModelForSeq2SeqLM.from_config(cfg)


def training_args(args, name: str, steps: int, lr: float) -> Seq2SeqTrainingArguments:
    return Seq2SeqTrainingArguments(
        output_dir=os.path.join(args.output_dir, name), use_cpu=True, report_to=[], max_steps=steps,
        per_device_train_batch_size=args.batch_size, learning_rate=lr, warmup_steps=steps // 10,
        lr_scheduler_type="linear", logging_steps=max(1, steps // 5), save_strategy="no",
        remove_unused_columns=False, disable_tqdm=True, seed=args.seed, dataloader_num_workers=0)


def train(trainer_cls, model, args, name, steps, lr, data, tokenizer, **kwargs):
    start = time.perf_counter()
    trainer = trainer_cls(model=model, args=training_args(args, name, steps, lr), train_dataset=data,
                          data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
                          **kwargs)
    result = trainer.train()
    print(f"  {name}: {steps} steps in {time.perf_counter() - start:.0f} s, final loss "
          f"{trainer.state.log_history[-2].get('loss', float('nan')):.4g} (train loss {result.training_loss:.4g})")
    return model.eval()


def decode(system, distribution, tokenizer, sentences, args):
    """(hypothesis strings, sequence measures name -> [N] numpy)."""
    hyps, scores = [], {}
    for i in range(0, len(sentences), 64):
        batch = tokenizer(sentences[i:i + 64], return_tensors="pt", padding=True)
        out = generate_with_uncertainty(system, distribution=distribution, input_ids=batch["input_ids"],
                                        attention_mask=batch["attention_mask"], max_new_tokens=args.max_new_tokens,
                                        num_beams=args.num_beams, seed=args.seed)
        hyps += tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        for k, v in out.sequence_uncertainty.items():
            scores.setdefault(k, []).append(v.numpy())
    return hyps, {k: np.concatenate(v) for k, v in scores.items()}


def evaluate(name, system, distribution, tokenizer, corpus, args):
    start = time.perf_counter()
    test_src = [" ".join(s) for s in corpus.test_src]
    hyps, id_scores = decode(system, distribution, tokenizer, test_src, args)
    bleu = sacrebleu.corpus_bleu(hyps, [[" ".join(t) for t in corpus.test_tgt]], tokenize="none").score
    auroc = {}
    for ood_name, sentences in corpus.ood_src.items():
        _, ood_scores = decode(system, distribution, tokenizer, [" ".join(s) for s in sentences], args)
        auroc[ood_name] = {m: 100 * E.metrics.auroc(id_scores[m], ood_scores[m]) for m in id_scores}
    measures = [m for m in MEASURES if m in id_scores]
    mean = {m: float(np.mean([auroc[s][m] for s in auroc])) for m in measures}
    return dict(name=name, bleu=bleu, auroc=auroc, mean_auroc=mean, decode_s=time.perf_counter() - start,
                example=hyps[0])


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    corpus = toy_corpus(vocab=args.vocab, train_size=args.train_size, test_size=args.test_size, seed=args.seed)
    # the joint source/target/foreign vocabulary of the corpus, as one word-level tokenizer
    tokenizer = word_tokenizer([" ".join(corpus.dictionary.words[4:])])
    data = encode_pairs(tokenizer, [" ".join(s) for s in corpus.train_src], [" ".join(t) for t in corpus.train_tgt])
    print(f"{corpus.description}; tokenizer: {len(tokenizer)} tokens; model: {args.model}, d_model {args.d_model}")

    print(f"teachers (M = {args.members}, cross-entropy with Seq2SeqTrainer)")
    teachers = [train(Seq2SeqTrainer, build_model(args, tokenizer, args.seed + 1 + m), args, f"teacher{m}",
                      args.teacher_steps, args.lr, data, tokenizer) for m in range(args.members)]

    print("students (EnsembleDistillationTrainer)")
    init = build_model(args, tokenizer, args.seed + 100)
    proxy = train(EnsembleDistillationTrainer, copy.deepcopy(init), args, "proxy_dirichlet", args.student_steps,
                  args.lr, data, tokenizer, teachers=teachers, loss="proxy_dirichlet_kl")
    # the logit-space student: a log-scale head started at the teachers' per-class spread, trained with the
    # Laplace NLL averaged over the V classes plus the EnD anchor term
    laplace = LogScaleHeadForSeq2SeqLM.from_model(copy.deepcopy(init))
    laplace.init_from_teachers(teachers, **DataCollatorForSeq2Seq(tokenizer, model=laplace)(data[:256]))
    laplace = train(EnsembleDistillationTrainer, laplace, args, "logit_laplace", args.student_steps, args.lr, data,
                    tokenizer, teachers=teachers, loss="logit_laplace_nll", loss_weight=1.0 / len(tokenizer),
                    anchor_weight=1.0)
    laplace.save_pretrained(os.path.join(args.output_dir, "logit_laplace"))  # with its log-scale head

    print("decoding the test and OOD sets with generate_with_uncertainty")
    systems = [("ensemble", teachers, None), ("single", teachers[0], "categorical"),
               ("Proxy-Dirichlet", proxy, "dirichlet"), ("Logit-Laplace", laplace, None)]
    results = [evaluate(name, system, distribution, tokenizer, corpus, args) for name, system, distribution in systems]
    report(results, corpus)
    broken = [r["name"] for r in results
              if not all(math.isfinite(v) for v in [r["bleu"], *r["mean_auroc"].values()])]
    if broken:
        raise SystemExit(f"non-finite BLEU or AUROC for {broken}")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(f"total {time.perf_counter() - start:.0f} s; results in {args.output_dir}/results.json")


def report(results, corpus):
    print(f"\nOOD-detection AUROC (%), mean over the {len(corpus.ood_src)} OOD sets ({', '.join(corpus.ood_src)})")
    print(f"{'system':16s} {'BLEU':>5s} {'dec s':>6s} | " + " ".join(f"{SHORT[m]:>5s}" for m in MEASURES))
    for r in results:
        cells = " ".join(f"{r['mean_auroc'][m]:5.1f}" if m in r["mean_auroc"] else f"{'-':>5s}" for m in MEASURES)
        print(f"{r['name']:16s} {r['bleu']:5.1f} {r['decode_s']:6.1f} | {cells}")


if __name__ == "__main__":
    main()
