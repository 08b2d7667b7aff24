"""Top-k teacher statistics (SPEC section 1.1): ensemble_stats(top_k=k) against the dense ensemble_stats (time,
peak extra memory: the top-k pass writes no [N, V] rows) and the losses read from top-k statistics against the same
losses from dense statistics (forward + backward, a [N, V] float32 student).

    python benchmarks/bench_topk.py [--device cpu|cuda] [--quick] [--write]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext  # noqa: E402

SHAPES = [(1024, 5, 32000)]
QUICK_SHAPES = [(128, 3, 8000)]
KS = (64, 1024)
LOSSES = ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl")


def run_shape(device: torch.device, n: int, m: int, v: int, repeats: int):
    rows = []
    shape = f"N={n} M={m} V={v}"
    u = torch.randn(n, m, v, device=device).mul_(3)
    input_mib = u.numel() * u.element_size() / 2**20

    def record(op, mode, impl, fn):
        ms = common.median_time(fn, device, repeats=repeats, warmup=1)
        peak = common.peak_extra_memory(fn, device)
        rows.append(common.Row(op, mode, impl, shape, "float32", device.type, ms, peak, input_mib))
        print(f"{op:>20} {mode:>7} {impl:>10} {shape}: {ms:9.1f} ms  peak +{peak or 0:6.0f} MiB", flush=True)

    record("ensemble_stats", "forward", "dense", lambda: edd_ext.ensemble_stats(u))
    for k in KS:
        record("ensemble_stats", "forward", f"top_k={k}", lambda k=k: edd_ext.ensemble_stats(u, top_k=k))
    dense = edd_ext.ensemble_stats(u)
    top = {k: edd_ext.ensemble_stats(u, top_k=k) for k in KS}
    z = torch.randn(n, v, device=device)

    def full(name, stats):
        x = z.clone().requires_grad_()
        getattr(edd_ext, name)(x, stats).backward()
        return x.grad

    for name in LOSSES:
        record(name, "full", "dense", lambda name=name: full(name, dense))
        for k in KS:
            record(name, "full", f"top_k={k}", lambda name=name, k=k: full(name, top[k]))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one small shape (a smoke run)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md and results.csv")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = [r for shape in (QUICK_SHAPES if args.quick else SHAPES) for r in run_shape(device, *shape, args.repeats)]
    if args.write:
        command = " ".join([os.path.basename(__file__)] + (argv or sys.argv[1:]))
        common.write_results(rows, "python benchmarks/" + command, "top-k statistics and losses",
                             os.path.join(common.HERE, "RESULTS.md"), os.path.join(common.HERE, "results.csv"),
                             notes="'impl' dense: the [N, V] statistics; top_k=k: TopKEnsembleStats (the losses read "
                                   "the sparse target). Losses: forward + backward of a float32 [N, V] student.")


if __name__ == "__main__":
    main()
