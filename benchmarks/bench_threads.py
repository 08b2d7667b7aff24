"""Thread scaling of every CPU op: edd_ext at 1 thread and at --threads threads (torch.set_num_threads), forward +
backward for the losses and forward for the statistics and uncertainty measures, the two thread counts alternated
within each repeat so that a change of machine load hits both alike (median of --repeats).

    python benchmarks/bench_threads.py [--threads 2] [--dtypes float32,bfloat16] [--repeats 7] [--write]
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext  # noqa: E402

N, M, V = 1024, 5, 32000
N_UNCERTAINTY = 256


def cases(dtype):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(N, M, V, generator=g).mul_(3).to(dtype)
    z = torch.randn(N, V, generator=g, requires_grad=True)
    rho = (0.1 * torch.randn(N, V, generator=g)).requires_grad_()
    zu = torch.randn(N_UNCERTAINTY, V, generator=g).mul_(2).to(dtype)
    ru = (0.3 * torch.randn(N_UNCERTAINTY, V, generator=g) - 1).to(dtype)

    def full(fn, *params):
        def run():
            for p in params:
                p.grad = None
            fn().backward()
        return run

    shape, shape_u = f"N={N} M={M} V={V}", f"N={N_UNCERTAINTY} V={V}"
    return [
        ("dirichlet_nll", "full", shape, full(lambda: edd_ext.dirichlet_nll(z, u), z)),
        ("proxy_dirichlet_kl", "full", shape, full(lambda: edd_ext.proxy_dirichlet_kl(z, u), z)),
        ("logit_gaussian_nll", "full", shape, full(lambda: edd_ext.logit_gaussian_nll(z, rho, u), z, rho)),
        ("logit_laplace_nll", "full", shape, full(lambda: edd_ext.logit_laplace_nll(z, rho, u), z, rho)),
        ("ensemble_kl", "full", shape, full(lambda: edd_ext.ensemble_kl(z, u), z)),
        ("ensemble_stats", "forward", shape, lambda: edd_ext.ensemble_stats(u)),
        ("uncertainty.dirichlet", "forward", shape_u, lambda: edd_ext.uncertainty.dirichlet(zu)),
        ("uncertainty.logit_distribution[S=25]", "forward", shape_u,
         lambda: edd_ext.uncertainty.logit_distribution(zu, ru, num_samples=25)),
    ]


def timed(fn, threads):
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run(threads, dtypes, repeats):
    rows = []
    for dtype in dtypes:
        for op, mode, shape, fn in cases(dtype):
            for t in (1, threads):  # warm-up
                timed(fn, t)
            times = {1: [], threads: []}
            for _ in range(repeats):
                for t in (1, threads):
                    times[t].append(timed(fn, t))
            one, many = statistics.median(times[1]), statistics.median(times[threads])
            rows.append((op, mode, shape, str(dtype).replace("torch.", ""), one, many))
            print(f"{op:>36} {mode:>7} {rows[-1][3]:>8}: 1 thread {one:8.1f} ms, {threads} threads {many:8.1f} ms, "
                  f"x{one / many:.2f}", flush=True)
    torch.set_num_threads(threads)
    return rows


def write(rows, threads, command, load_start):
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"\n## thread scaling\n\n- date: {stamp}\n- machine: {common.machine()}; "
             f"load average at the start {load_start:.1f}, at the end "
             f"{os.getloadavg()[0]:.1f}\n- torch {torch.__version__}, Python {sys.version.split()[0]}\n"
             f"- command: `{command}`\n",
             f"| op | mode | shape | dtype | 1 thread ms | {threads} threads ms | speedup |",
             "|---|---|---|---|---:|---:|---:|"]
    for op, mode, shape, dtype, one, many in rows:
        lines.append(f"| {op} | {mode} | {shape} | {dtype} | {one:.1f} | {many:.1f} | {one / many:.2f} |")
    with open(os.path.join(common.HERE, "RESULTS.md"), "a") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    load_start = os.getloadavg()[0]
    rows = run(args.threads, [getattr(torch, d) for d in args.dtypes.split(",")], args.repeats)
    if args.write:
        command = "python benchmarks/" + " ".join([os.path.basename(__file__)] + (argv or sys.argv[1:]))
        write(rows, args.threads, command, load_start)
    return rows


if __name__ == "__main__":
    main()
