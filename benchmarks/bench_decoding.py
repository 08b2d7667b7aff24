"""Decoding cost of the demo's models against hypothesis length: full recomputation of the decoder over the
prefix at every step (the demo's decoding before incremental decoding, ``FullDecoder``) vs incremental
decoding with per-layer key/value caches (``IncrementalDecoder``), greedy and beam search.

The models are the default demo's (V = 2000, d_model 128, one layer, feed-forward 512) with random weights
(the cost does not depend on the weights); EOS is banned until the hypothesis length L so that every
hypothesis has exactly L tokens. Reported: milliseconds per sentence (median over interleaved rounds of a
batch of ``--sentences`` sources, divided by the batch size) for one model and for the M-member ensemble, and the
growth from one length to the next (2.0 = linear in L, 4.0 = quadratic).

    python benchmarks/bench_decoding.py [--device cpu|cuda] [--lengths 16,32,64] [--write]
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from edd_ext.demo.decode import EnsembleSystem, System, search  # noqa: E402
from edd_ext.demo.model import ModelConfig, Seq2Seq  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def models(members: int, max_len: int, device: torch.device):
    cfg = ModelConfig(vocab_size=2000, d_model=128, nhead=4, layers=1, ffn=512, max_len=max_len + 4)
    out = []
    for m in range(members):
        torch.manual_seed(m)
        out.append(Seq2Seq(cfg).to(device).eval())
    return out


def run(args) -> list:
    """Every (system, length, decoder) cell timed once per round, rounds interleaved so that a change of the
    machine's load during the run touches every cell alike; the median over rounds per cell."""
    device = torch.device(args.device)
    lengths = [int(x) for x in args.lengths.split(",")]
    teachers = models(args.members, max(lengths), device)
    systems = [System("single model", teachers[:1]), EnsembleSystem(f"ensemble (M={args.members})", teachers)]
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 2000, (args.sentences, args.source_len), generator=g).to(device)
    variants = [("full", 1, False), ("incremental", 1, True), (f"beam {args.beam}", args.beam, True)]
    cells = {}
    for system in systems:
        for length in lengths:
            for name, beam, incremental in variants:
                fn = functools.partial(search, system, src, length, beam=beam, min_len=length,
                                       incremental=incremental)
                assert int(fn().lengths.min()) == length  # also the warm-up
                cells[system.name, length, name] = (fn, [])
    for _ in range(args.repeats):
        for fn, times in cells.values():
            times.append(common.median_time(fn, device, repeats=1, warmup=0) / args.sentences)
    rows = []
    for system in systems:
        for length in lengths:
            row = {"system": system.name, "length": length}
            row.update({name: statistics.median(cells[system.name, length, name][1]) for name, _, _ in variants})
            rows.append(row)
            print(row, flush=True)
    return rows


def table(rows, beam: int) -> str:
    head = ("| system | L | full recomputation ms/sentence | incremental ms/sentence | speed-up | "
            f"beam {beam} incremental ms/sentence | growth full | growth incremental |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    prev = {}

    def growth(row, before, key):
        return "—" if before is None else f"{row[key] / before[key]:.2f}"

    for r in rows:
        p = prev.get(r["system"])
        lines.append(f"| {r['system']} | {r['length']} | {r['full']:.2f} | {r['incremental']:.2f} | "
                     f"{r['full'] / r['incremental']:.1f}x | {r[f'beam {beam}']:.2f} | {growth(r, p, 'full')} | "
                     f"{growth(r, p, 'incremental')} |")
        prev[r["system"]] = r
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--lengths", default="16,32,64")
    p.add_argument("--sentences", type=int, default=64, help="sources per batch (default: %(default)s)")
    p.add_argument("--source-len", type=int, default=10)
    p.add_argument("--members", type=int, default=5)
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, as the demo (default: %(default)s)")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(args)
    text = table(rows, args.beam)
    print(text)
    if args.write:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python benchmarks/bench_decoding.py " + " ".join(argv if argv is not None else sys.argv[1:])
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write(f"\n## Demo decoding: cost against hypothesis length\n\n- date: {stamp}\n- machine: "
                    f"{common.machine()}; load average at the end {os.getloadavg()[0]:.1f}\n- torch {torch.__version__}"
                    f"\n- command: `{command}`\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
