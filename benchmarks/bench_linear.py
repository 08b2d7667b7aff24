"""The fused linear losses (SPEC section 2.5) against the unfused path: peak extra memory and time of one training
step (forward + backward) from the student's last hidden states x [N, D] and output layer W [V, D], b [V].

Peers, on the same inputs:
  fused           E.linear_<loss>(x, W, E.LinearTeachers(h [N, M, D], W_t [M, V, D], b_t [M, V]), linear_bias=b)
  unfused         u = h @ W_t.T + b_t member by member into one [N, M, V] tensor, without autograd (no copy beyond
                  it); E.<loss>(F.linear(x, W, b), u)
and, for ensemble_kl with the teacher given as statistics (an EnsembleStats; its mean probabilities pi^ [N, V] are
the target):
  fused-stats     E.linear_ensemble_kl(x, W, stats, linear_bias=b)
  unfused-stats   E.ensemble_kl(F.linear(x, W, b), stats)
  torch-lce       F.linear_cross_entropy(x, W, pi^, linear_bias=b, options=LinearCrossEntropyOptions()):
                  ensemble_kl + H[pi^], the same gradient (torch 2.13 chunks only class-index targets)
The logit-space losses take a second output layer (log-scale) of the same shape.

Memory: each case runs in a fresh Python process. It allocates the inputs, runs one warm-up step, drops the
gradients and hands freed heap memory back to the OS (glibc malloc_trim), reads its RSS, resets the RSS high-water
mark (/proc/self/clear_refs) and runs one step: peak extra = VmHWM - RSS, everything the step allocates (logits,
kernel buffers, the gradients of x, W and b) and nothing left from earlier cases. Time: median wall time of
``--repeats`` steps (the measured one included) in that process, and median CPU time (user + system, all threads),
which a shared machine's load disturbs less. Cases the unfused path cannot fit in the
machine's available memory are listed as not run, with the memory they would need.

    python benchmarks/bench_linear.py [--size quick|small|full] [--repeats 3] [--chunk-size C] [--write]

``--size small`` is the table a 2-core machine runs in about 15 minutes (N = 2048 for every loss, N = 8192 and
V = 128000 for dirichlet_nll); ``full`` adds N = 8192 for every loss, N = 32768 and N = 8192 at V = 128000.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext as E  # noqa: E402
from edd_ext._ops import linear as linear_op  # noqa: E402

D, M = 256, 4
LOGIT = ("logit_gaussian_nll", "logit_laplace_nll")
UNFUSED = ("unfused", "unfused-stats", "torch-lce")


def _pair(loss: str, n: int, v: int):
    return [(loss, "fused", n, v), (loss, "unfused", n, v)]


def default_cases(size: str):
    """(loss, impl, N, V) of the table of ``size`` ("quick", "small" or "full")."""
    if size == "quick":
        return _pair("dirichlet_nll", 256, 4000) + _pair("logit_gaussian_nll", 256, 4000) + [
            ("ensemble_kl", impl, 256, 4000) for impl in ("fused-stats", "unfused-stats", "torch-lce")]
    cases = []
    for n in (2048, 8192) if size == "full" else (2048,):
        for loss in ("dirichlet_nll", "proxy_dirichlet_kl", "ensemble_kl", "logit_gaussian_nll"):
            cases += _pair(loss, n, 32000)
        cases += [("ensemble_kl", impl, n, 32000) for impl in ("fused-stats", "unfused-stats", "torch-lce")]
    if size == "small":
        return cases + _pair("dirichlet_nll", 8192, 32000) + _pair("dirichlet_nll", 2048, 128000)
    cases += _pair("dirichlet_nll", 32768, 32000)
    for n in (2048, 8192):
        cases += _pair("dirichlet_nll", n, 128000)
    return cases


def unfused_bytes(loss: str, impl: str, n: int, v: int) -> int:
    """What the unfused peers hold at their peak, at least: the [N, M, V] teacher logits (or the [N, V] statistics
    rows) and, per student output layer, the [N, V] logits and their gradient (float32)."""
    heads = 2 if loss in LOGIT else 1
    teacher = M if impl == "unfused" else 0
    return 4 * n * v * (teacher + 2 * heads)


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


# ---- one case, in its own process ----


def make_inputs(loss: str, impl: str, n: int, v: int):
    g = torch.Generator().manual_seed(0)
    randn = lambda *shape, scale=1.0: torch.randn(*shape, generator=g).mul_(scale)  # noqa: E731
    x = randn(n, D).requires_grad_()
    heads = [randn(v, D, scale=D ** -0.5).requires_grad_() for _ in range(2 if loss in LOGIT else 1)]
    biases = [torch.zeros(v, requires_grad=True) for _ in heads]
    if loss in LOGIT:
        heads[1].data.mul_(0.1)
    if impl in ("fused", "unfused"):
        teacher = E.LinearTeachers(randn(n, M, D), randn(M, v, D, scale=2 * D ** -0.5), randn(M, v, scale=0.5))
    else:
        teacher = E.ensemble_stats(randn(n, M, v, scale=2.0))
    return x, heads, biases, teacher


def make_step(loss: str, impl: str, x, heads, biases, teacher, chunk_size):
    params = [x, *heads, *biases]

    def forward():
        if impl == "fused" or impl == "fused-stats":
            fn = getattr(E, "linear_" + loss)
            if loss in LOGIT:
                return fn(x, *heads, teacher, loc_bias=biases[0], log_scale_bias=biases[1], chunk_size=chunk_size)
            return fn(x, heads[0], teacher, linear_bias=biases[0], chunk_size=chunk_size)
        if impl == "torch-lce":
            return F.linear_cross_entropy(x, heads[0], teacher.mean_probs, linear_bias=biases[0],
                                          options=torch.nn.LinearCrossEntropyOptions())
        if impl == "unfused":
            h, w_t, b_t = teacher
            target = h.new_empty(h.shape[0], M, w_t.shape[1])
            with torch.no_grad():
                for m in range(M):
                    torch.addmm(b_t[m], h[:, m], w_t[m].t(), out=target[:, m])
        else:
            target = teacher
        students = [F.linear(x, w, b) for w, b in zip(heads, biases)]
        return getattr(E, loss)(*students, target)

    def step():
        for p in params:
            p.grad = None
        loss_value = forward()
        loss_value.backward()
        return loss_value.detach().item()

    return step, params


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def run_case(loss: str, impl: str, n: int, v: int, repeats: int, chunk_size) -> dict:
    torch.manual_seed(0)
    inputs = make_inputs(loss, impl, n, v)
    step, params = make_step(loss, impl, *inputs, chunk_size)
    step()  # warm-up
    for p in params:
        p.grad = None
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _rss_kib("VmRSS")
    times, cpu_times = [], []
    for i in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        value = step()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
        if i == 0:
            peak = (_rss_kib("VmHWM") - before) / 1024
    return dict(loss=loss, impl=impl, n=n, v=v, seconds=statistics.median(times), times=times,
                cpu_seconds=statistics.median(cpu_times), peak_mib=peak, value=value)


# ---- the table ----


def _fmt(x, digits=0):
    return "—" if x is None else f"{x:.{digits}f}"


def table(results: list, skipped: list) -> str:
    """Markdown rows; ratios against the unfused peer of the same loss, N and V (``unfused-stats`` for the
    statistics form)."""
    peers = {(r["loss"], r["n"], r["v"], r["impl"]): r for r in results}
    lines = ["| loss | teacher | N | V | impl | median s | median CPU s | peak extra MiB | time / unfused "
             "| CPU time / unfused | memory / unfused |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        stats_form = r["impl"] in ("fused-stats", "unfused-stats", "torch-lce")
        peer = peers.get((r["loss"], r["n"], r["v"], "unfused-stats" if stats_form else "unfused"))
        time_ratio = cpu_ratio = mem_ratio = None
        if peer is not None and peer is not r:
            time_ratio = r["seconds"] / peer["seconds"]
            cpu_ratio = r["cpu_seconds"] / peer["cpu_seconds"]
            mem_ratio = r["peak_mib"] / peer["peak_mib"] if peer["peak_mib"] > 0 else None
        lines.append(f"| {r['loss']} | {'EnsembleStats' if stats_form else 'LinearTeachers / logits'} | {r['n']} | "
                     f"{r['v']} | {r['impl']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {_fmt(r['peak_mib'])} | "
                     f"{_fmt(time_ratio, 2)} | {_fmt(cpu_ratio, 2)} | {_fmt(mem_ratio, 3)} |")
    for loss, impl, n, v, need in skipped:
        lines.append(f"| {loss} | {'EnsembleStats' if impl != 'unfused' else 'LinearTeachers / logits'} | {n} | {v} | "
                     f"{impl} | not run: needs ≥ {need / 2**30:.1f} GiB, more than the machine has available | — | — "
                     f"| — | — | — |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("quick", "small", "full"), default="full",
                   help="the table: quick (a smoke run), small (about 15 minutes on 2 cores) or full")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-size", type=int, default=None, help="default: the automatic one")
    p.add_argument("--only", default=None, help="comma-separated losses to run (default: the table's)")
    p.add_argument("--vocab", type=int, default=None, help="run only the cases of this V")
    p.add_argument("--write", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = p.parse_args(argv)
    if args.case is not None:
        loss, impl, n, v = json.loads(args.case)
        print(json.dumps(run_case(loss, impl, n, v, args.repeats, args.chunk_size)), flush=True)
        return None
    if not E.has_extension():
        sys.exit("bench_linear: the compiled extension is not built")
    cases = default_cases(args.size)
    if args.only:
        cases = [c for c in cases if c[0] in args.only.split(",")]
    if args.vocab:
        cases = [c for c in cases if c[3] == args.vocab]
    start_load = os.getloadavg()
    loads = [start_load[0]]
    started = _dt.datetime.now(_dt.timezone.utc)
    results, skipped = [], []
    for loss, impl, n, v in cases:
        if impl in UNFUSED and unfused_bytes(loss, impl, n, v) > 0.9 * available_bytes():
            skipped.append((loss, impl, n, v, unfused_bytes(loss, impl, n, v)))
            print(f"{loss:>20} {impl:>13} N={n} V={v}: skipped (needs {unfused_bytes(loss, impl, n, v) / 2**30:.1f} "
                  f"GiB)", flush=True)
            continue
        command = [sys.executable, os.path.abspath(__file__), "--case", json.dumps([loss, impl, n, v]),
                   "--repeats", str(args.repeats)] + (["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{loss} {impl} N={n} V={v} failed:\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        loads.append(os.getloadavg()[0])
        print(f"{loss:>20} {impl:>13} N={n:>6} V={v:>6}: {r['seconds']:8.2f} s (median of "
              f"{', '.join(f'{t:.2f}' for t in r['times'])}), CPU {r['cpu_seconds']:.2f} s, peak extra "
              f"{r['peak_mib']:8.0f} MiB, load {loads[-1]:.1f}", flush=True)
    text = table(results, skipped)
    print(text)
    if args.write:
        given = argv if argv is not None else sys.argv[1:]
        cmd = "python benchmarks/" + " ".join([os.path.basename(__file__)] + given)
        chunk = args.chunk_size or f"automatic ({linear_op.auto_chunk_size(32000, M, D)} at V = 32000, " \
                                   f"{linear_op.auto_chunk_size(128000, M, D)} at V = 128000)"
        minutes = (_dt.datetime.now(_dt.timezone.utc) - started).total_seconds() / 60
        with open(os.path.join(common.HERE, "RESULTS.md"), "a") as f:
            f.write(f"\n## Fused linear losses (CPU, bench_linear.py)\n\n"
                    f"- date: {started:%Y-%m-%d %H:%M} UTC, {len(results)} cases, {minutes:.0f} min\n"
                    f"- machine: {common.machine()}, {torch.backends.cpu.get_cpu_capability()}, torch "
                    f"{torch.__version__}\n"
                    f"- load average (1 min) over the run: min {min(loads):.1f}, median {statistics.median(loads):.1f}"
                    f", max {max(loads):.1f}; at the start (1, 5, 15 min) {', '.join(f'{x:.2f}' for x in start_load)} "
                    f"(the machine is shared)\n"
                    f"- D = {D}, M = {M}, float32, chunk size {chunk}; teachers as LinearTeachers unless the column "
                    f"says EnsembleStats\n- command: `{cmd}`\n\n{text}\n")
    return results


if __name__ == "__main__":
    main()
