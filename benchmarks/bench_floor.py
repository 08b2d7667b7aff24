"""The floor this CPU allows for each loss: the time of the N M V teacher exponentials plus the N V special
functions the loss needs per class, measured with the library's own vector helpers (the running capability's
build) over a cache-resident block on every thread, against the loss's measured time (forward + backward from raw
teacher logits, median of --repeats) -- the ratio is what the rest of the kernel (memory traffic, the other
arithmetic, the scalar tails, threading) costs on top.

    python benchmarks/bench_floor.py [--shape 1024x5x32000] [--repeats 5] [--write]
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
from edd_ext import _ops  # noqa: E402

BLOCK = 4096  # floats: 16 KiB, L1-resident

# The arguments each helper sees in the kernels.
DOMAINS = {
    "exp_nonpositive": (-20.0, 0.0),  # u - max u: the members' softmax normalisers
    "exp": (-10.0, 10.0),  # the student's exp(z) / softmax
    "log": (1e-6, 1.0),  # ln of a mean probability
    "lgamma": (1.0, 50.0),  # concentrations
    "lgamma_digamma": (1.0, 50.0),
    "gamma_family": (1.0, 50.0),
}

# Per position: how many evaluations of each helper a loss needs (M V teacher exponentials; per class the
# student's exponential and the loss's special functions).
def needs(m, v):
    teacher = {"exp_nonpositive": m * v}
    return {
        "ensemble_kl": {**teacher, "exp": v, "log": v},
        "dirichlet_nll": {**teacher, "exp": v, "lgamma_digamma": v},
        "proxy_dirichlet_kl": {**teacher, "exp": v, "log": v, "gamma_family": v, "lgamma": v},
        "logit_gaussian_nll": {**teacher, "exp": v},
        "logit_laplace_nll": {**teacher, "exp": v},
    }


def helper_ns(name, repeats):
    """Nanoseconds per evaluation of a helper, all threads busy (median of `repeats` timings)."""
    lo, hi = DOMAINS[name]
    values = torch.linspace(lo, hi, BLOCK).tolist()
    per_call = 2000 * torch.get_num_threads()
    _ops._C.cpu_vector_throughput(name, values, per_call)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _ops._C.cpu_vector_throughput(name, values, per_call)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e9 / (BLOCK * per_call)


def loss_ms(name, n, m, v, repeats):
    g = torch.Generator().manual_seed(0)
    u = torch.randn(n, m, v, generator=g).mul_(3)
    z = torch.randn(n, v, generator=g, requires_grad=True)
    rho = (0.1 * torch.randn(n, v, generator=g)).requires_grad_()
    fn = getattr(edd_ext, name)
    args = (z, rho, u) if name.startswith("logit") else (z, u)

    def step():
        z.grad = rho.grad = None
        fn(*args).backward()

    return common.median_time(step, torch.device("cpu"), repeats=repeats, warmup=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="1024x5x32000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    n, m, v = (int(x) for x in args.shape.split("x"))
    load_start = os.getloadavg()[0]
    ns = {name: helper_ns(name, args.repeats) for name in DOMAINS}
    for name, t in ns.items():
        print(f"{name:>16}: {t:6.3f} ns per value ({torch.get_num_threads()} threads)", flush=True)
    rows = []
    for loss, counts in needs(m, v).items():
        floor = n * sum(count * ns[name] for name, count in counts.items()) / 1e6
        measured = loss_ms(loss, n, m, v, args.repeats)
        rows.append((loss, counts, floor, measured))
        print(f"{loss:>20}: floor {floor:7.1f} ms, measured {measured:7.1f} ms, x{measured / floor:.2f}", flush=True)
    if args.write:
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        command = "python benchmarks/" + " ".join([os.path.basename(__file__)] + (argv or sys.argv[1:]))
        lines = [f"\n## floor\n\n- date: {stamp}\n- machine: {common.machine()}; "
                 f"load average at the start {load_start:.1f}, at the end "
                 f"{os.getloadavg()[0]:.1f}\n- torch {torch.__version__}, Python {sys.version.split()[0]}\n"
                 f"- command: `{command}`\n",
                 "The vector helpers, all threads busy, a 16 KiB block of arguments in the range the kernels see:\n",
                 "| helper | arguments | ns per value |", "|---|---|---:|"]
        lines += [f"| {name} | [{DOMAINS[name][0]:g}, {DOMAINS[name][1]:g}] | {t:.3f} |" for name, t in ns.items()]
        lines += ["", f"Each loss, forward + backward from float32 teacher logits, N={n} M={m} V={v}; its floor is "
                  "N x (the evaluations it needs per position) x (ns per value):\n",
                  "| loss | evaluations per position | floor ms | edd_ext ms | ratio |", "|---|---|---:|---:|---:|"]
        for loss, counts, floor, measured in rows:
            what = " + ".join(f"{c} {name}" for name, c in counts.items())
            lines.append(f"| {loss} | {what} | {floor:.1f} | {measured:.1f} | {measured / floor:.2f} |")
        with open(os.path.join(common.HERE, "RESULTS.md"), "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
