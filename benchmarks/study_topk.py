"""The compact top-k teacher statistics (SPEC section 1.1) on real teacher outputs: how far each loss and its
gradient move from the dense target as k grows, per storage dtype, and what a cache costs per token.

Trains the demo's teachers (edd_ext.demo: toy translation corpus, small transformers) and one student per
statistics-based loss (EnD: ensemble_kl, EnD2: dirichlet_nll warm-started from EnD, Proxy-Dirichlet:
proxy_dirichlet_kl) from live teachers, then on the held-out test sentences compares, for each loss with its own
student's logits, the loss ("mean" over the target tokens) and its gradient with the dense statistics against the
same with the top-k statistics for k = 8 ... 1024, the values stored in float32, float16 or bfloat16:
    loss error = |L_k - L_dense| / |L_dense|,   gradient error = ||g_k - g_dense|| / ||g_dense||   (over the batch)
and reports the smallest k at which both stay within 1 %, with its bytes per token. Bytes per token: the cache
format's (int32 indices, two value rows, seven float32 scalars) at V = 32000, and a cache built with
edd_ext.cache from random V = 32000 logits, measured on disk.

    python benchmarks/study_topk.py [--vocab 2000 --members 3 --teacher-steps 300 --student-steps 200]
        [--outputs logits.pt] [--output benchmarks/topk_study.json] [--figure docs/figures/topk_error.png] [--write]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext as E  # noqa: E402
from edd_ext import cache as C  # noqa: E402
from edd_ext.demo.corpus import toy_corpus  # noqa: E402
from edd_ext.demo.model import ModelConfig, Seq2Seq  # noqa: E402
from edd_ext.demo.train import make_batch, teacher_logits, train_students, train_teacher  # noqa: E402

KS = (8, 16, 32, 64, 128, 256, 512, 1024)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
STUDENTS = {"ensemble_kl": "EnD", "dirichlet_nll": "EnD2", "proxy_dirichlet_kl": "Proxy-Dirichlet"}


def bytes_per_token(k, dtype: torch.dtype) -> int:
    """The cache format's bytes per token: k int32 indices, k mean probabilities and k mean log-probabilities,
    seven float32 scalars."""
    return k * (4 + 2 * dtype.itemsize) + 7 * 4


def dense_bytes_per_token(vocab: int, dtype: torch.dtype) -> int:
    return 2 * vocab * dtype.itemsize + 5 * 4


def measured_bytes_per_token(vocab: int = 32000, tokens: int = 2048, ks=(16, 64, 256)) -> dict:
    """Bytes per token of caches built with edd_ext.cache from random logits (safetensors headers included)."""
    g = torch.Generator().manual_seed(0)
    lengths = [16] * (tokens // 16)
    out = {}
    for k in ks:
        with tempfile.TemporaryDirectory() as d:
            cache = C.build_cache(d, lengths, lambda idx: 3 * torch.randn(len(idx), 16, 3, vocab, generator=g),
                                  kind="top_k", top_k=k, storage_dtype="float16", shard_size=64, progress=False)
            out[k] = cache.bytes_per_token
    return out


def train(args):
    corpus = toy_corpus(vocab=args.vocab, train_size=args.train_size, test_size=args.test_size, seed=args.seed,
                        max_len=args.max_len)
    d = corpus.dictionary
    src = [d.encode(s) for s in corpus.train_src]
    tgt = [d.encode(t) for t in corpus.train_tgt]
    cfg = ModelConfig(vocab_size=len(d), d_model=128, nhead=4, layers=1, ffn=512, max_len=4 * args.max_len + 8)
    teachers = []
    for m in range(args.members):
        torch.manual_seed(args.seed * 1000 + m)
        model = Seq2Seq(cfg)
        train_teacher(model, src, tgt, steps=args.teacher_steps, batch_size=64, lr=3e-3, seed=args.seed * 1000 + m,
                      progress=False)
        teachers.append(model)
    students = {}
    for name in STUDENTS.values():
        torch.manual_seed(args.seed * 1000 + 999)
        students[name] = Seq2Seq(cfg)
    train_students(students, teachers, src, tgt, steps=args.student_steps, batch_size=64, lr=3e-3, seed=args.seed,
                   progress=False)
    test = make_batch([d.encode(s) for s in corpus.test_src], [d.encode(t) for t in corpus.test_tgt])
    with torch.no_grad():
        logits = teacher_logits(teachers, test.src, test.prev)
        student_logits = {name: model(test.src, test.prev)[0] for name, model in students.items()}
    return {"logits": logits, "students": student_logits, "mask": test.mask, "vocab": len(d)}


def neg_entropy(stats, mask) -> float:
    """The teacher term sum_k pi^_k ln pi^_k of ensemble_kl, mean over the tokens (no student dependence), for dense
    statistics or the target a TopKEnsembleStats stands for (the tail: (V - k) (tau / (V - k)) ln(tau / (V - k)))."""
    if isinstance(stats, E.TopKEnsembleStats):
        p = stats.mean_probs.double()
        tail = stats.tail_mass.double()
        per = torch.special.xlogy(p, p).sum(-1) + torch.special.xlogy(tail, tail / (stats.num_classes - stats.top_k))
    else:
        per = torch.special.xlogy(stats.mean_probs.double(), stats.mean_probs.double()).sum(-1)
    return float(per[mask].mean())


def study(logits, student_logits, mask, vocab: int) -> list:
    """logits: the teachers' [B, T, M, V] on the test sentences; student_logits: name -> [B, T, V]."""
    dense = E.ensemble_stats(logits)
    rows = []

    def value_and_grad(fn, z, stats):
        x = z.detach().clone().requires_grad_()
        value = fn(x, stats, mask=mask)
        value.backward()
        return value.item(), x.grad.double()

    for loss, student in STUDENTS.items():
        fn, z = getattr(E, loss), student_logits[student]
        ref_value, ref_grad = value_and_grad(fn, z, dense)
        for k in KS:
            if k > vocab:
                continue
            top = E.ensemble_stats(logits, top_k=k)
            for dtype_name, dtype in DTYPES.items():
                stored = top._replace(mean_probs=top.mean_probs.to(dtype), mean_log_probs=top.mean_log_probs.to(dtype))
                value, grad = value_and_grad(fn, z, stored)
                row = dict(loss=loss, student=student, k=k, dtype=dtype_name, loss_dense=ref_value, loss_topk=value,
                           loss_error=abs(value - ref_value) / abs(ref_value),
                           grad_error=float((grad - ref_grad).norm() / ref_grad.norm()),
                           tail_mass_mean=float(top.tail_mass[mask].mean()), bytes_per_token=bytes_per_token(k, dtype))
                if loss == "ensemble_kl":  # the student-dependent part, the cross-entropy: L - sum pi^ ln pi^
                    ce_dense, ce_topk = ref_value - neg_entropy(dense, mask), value - neg_entropy(stored, mask)
                    row["cross_entropy_error"] = abs(ce_topk - ce_dense) / abs(ce_dense)
                rows.append(row)
    return rows


def smallest_k(rows, tolerance=0.01) -> dict:
    """Per (loss, dtype): the smallest k from which on both errors stay within the tolerance."""
    out = {}
    for loss in STUDENTS:
        for dtype in DTYPES:
            ok = [r for r in rows if r["loss"] == loss and r["dtype"] == dtype]
            ok.sort(key=lambda r: r["k"])
            best = None
            for r in reversed(ok):
                if r["loss_error"] <= tolerance and r["grad_error"] <= tolerance:
                    best = r["k"]
                else:
                    break
            out[f"{loss}/{dtype}"] = best
    return out


def table(rows, vocab: int) -> str:
    lines = [f"Relative error of the loss / of its gradient against the dense target (V = {vocab}); "
             "mean tail mass tau per k in the last column",
             "| loss (student) | dtype | " + " | ".join(f"k={k}" for k in KS if k <= vocab) + " |",
             "|---|---|" + "---:|" * len([k for k in KS if k <= vocab])]
    for loss, student in STUDENTS.items():
        for dtype in DTYPES:
            cells = [f"{100 * r['loss_error']:.2g}% / {100 * r['grad_error']:.2g}%" for r in rows
                     if r["loss"] == loss and r["dtype"] == dtype]
            lines.append(f"| {loss} ({student}) | {dtype} | " + " | ".join(cells) + " |")
    cells = [f"{100 * r['cross_entropy_error']:.2g}%" for r in rows
             if r["loss"] == "ensemble_kl" and r["dtype"] == "float16"]
    lines.append("| ensemble_kl without its teacher term (the cross-entropy) | float16 | " + " | ".join(cells) + " |")
    taus = {r["k"]: r["tail_mass_mean"] for r in rows}
    lines.append("| tail mass tau (mean) | | " + " | ".join(f"{taus[k]:.2g}" for k in sorted(taus)) + " |")
    return "\n".join(lines)


def figure(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for ax, key, title in zip(axes, ("loss_error", "grad_error"), ("loss", "gradient")):
        for loss in STUDENTS:
            for dtype, style in (("float32", "-"), ("float16", "--"), ("bfloat16", ":")):
                pts = sorted((r["k"], r[key]) for r in rows if r["loss"] == loss and r["dtype"] == dtype)
                ax.plot([p[0] for p in pts], [max(p[1], 1e-9) for p in pts], style, marker="o", ms=3,
                        label=f"{loss} {dtype}")
        ax.axhline(0.01, color="grey", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel="k", title=f"relative error of the {title}")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--train-size", type=int, default=15000)
    p.add_argument("--test-size", type=int, default=300)
    p.add_argument("--max-len", type=int, default=10)
    p.add_argument("--teacher-steps", type=int, default=300)
    p.add_argument("--student-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=os.path.join(common.HERE, "topk_study.json"))
    p.add_argument("--figure", default=os.path.join(os.path.dirname(common.HERE), "docs", "figures",
                                                    "topk_error.png"))
    p.add_argument("--outputs", default=None, help="a .pt file for the test sentences' teacher and student logits: "
                                                  "read when it exists (no training), else written after training")
    p.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.outputs and os.path.exists(args.outputs):
        outputs = torch.load(args.outputs)
    else:
        outputs = train(args)
        if args.outputs:
            torch.save(outputs, args.outputs)
    train_s = time.perf_counter() - t0
    vocab = outputs["vocab"]
    rows = study(outputs["logits"], outputs["students"], outputs["mask"], vocab)
    sizes = {f"k={k}": {d: bytes_per_token(k, DTYPES[d]) for d in DTYPES} for k in (16, 64, 256)}
    sizes["dense"] = {d: dense_bytes_per_token(32000, DTYPES[d]) for d in DTYPES}
    measured = measured_bytes_per_token()
    best = smallest_k(rows)
    text = table(rows, vocab)
    text += ("\n\nBytes per token at V = 32000 (format; dense = the full statistics): "
             + "; ".join(f"{k}: " + ", ".join(f"{d} {b}" for d, b in v.items()) for k, v in sizes.items())
             + "\nMeasured on disk (edd_ext.cache, float16, 2048 tokens in shards of 64 sequences of 16): "
             + ", ".join(f"k={k}: {b:.0f} B" for k, b in measured.items())
             + "\nSmallest k with both errors <= 1 % (and bytes per token): "
             + "; ".join(f"{key}: " + ("none up to 1024" if k is None else
                                       f"k={k} ({bytes_per_token(k, DTYPES[key.split('/')[1]])} B)")
                         for key, k in best.items()))
    print(text)
    payload = dict(date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), machine=common.machine(),
                   load=os.getloadavg(), torch=torch.__version__, args=vars(args), vocab=vocab, train_s=train_s,
                   rows=rows, bytes_per_token_format=sizes, bytes_per_token_measured=measured, smallest_k=best)
    with open(args.output, "w") as f:
        json.dump(payload, f, indent=1)
    figure(rows, args.figure)
    if args.write:
        with open(os.path.join(common.HERE, "RESULTS.md"), "a") as f:
            command = " ".join([os.path.basename(__file__)] + (argv or sys.argv[1:]))
            f.write(f"\n## Top-k teacher statistics on real teacher outputs (study_topk.py)\n\n"
                    f"- date: {payload['date']}\n- machine: {payload['machine']}; load average "
                    f"{os.getloadavg()[0]:.1f}\n- command: `python benchmarks/{command}`\n\n{text}\n")
    return payload


if __name__ == "__main__":
    main()
