"""The fused distillation losses (SPEC section 2) from raw teacher logits: edd_ext vs the eager reference
(edd_ext.reference, written as published distillation code is) and torch.compile of it.

Modes: forward (no gradient), full (forward + backward), and backward = full - forward (derived; its peak
memory is not measured separately).

    python benchmarks/bench_losses.py [--device cpu|cuda] [--quick] [--losses a,b] [--write]
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext  # noqa: E402
from edd_ext import reference  # noqa: E402

LOSSES = ["dirichlet_nll", "proxy_dirichlet_kl", "logit_gaussian_nll", "logit_laplace_nll", "ensemble_kl"]
LOGIT_LOSSES = {"logit_gaussian_nll", "logit_laplace_nll"}
CPU_SHAPES = [(1024, 5, 32000), (1024, 10, 8000), (1024, 5, 50000)]
GPU_SHAPES = [(1024, 5, 32000), (4096, 5, 32000), (4096, 10, 50000), (1024, 5, 128000)]
QUICK_SHAPES = [(128, 5, 8000)]


def make_inputs(name, n, m, v, dtype, device):
    teacher = torch.randn(n, m, v, device=device).mul_(3).to(dtype)
    if name in LOGIT_LOSSES:
        loc = torch.randn(n, v, device=device, requires_grad=True)
        log_scale = (0.1 * torch.randn(n, v, device=device)).requires_grad_()
        return (loc, log_scale, teacher), [loc, log_scale]
    z = torch.randn(n, v, device=device, requires_grad=True)
    return (z, teacher), [z]


def step(fn, args, params, backward):
    if not backward:
        with torch.no_grad():
            return fn(*args)
    for p in params:
        p.grad = None
    loss = fn(*args)
    loss.backward()
    return loss


def _backward_rows(rows):
    """The backward mode, derived: full - forward of each implementation of the case just measured."""
    last = {}
    case = rows[-1] if rows else None
    for r in rows:
        if case is not None and (r.op, r.shape, r.dtype) == (case.op, case.shape, case.dtype):
            last[(r.impl, r.mode)] = r
    out = []
    for (impl, mode), full in list(last.items()):
        forward = last.get((impl, "forward"))
        # full <= forward: the backward drowned in the timing noise (a loaded machine); no row
        if mode == "full" and forward is not None and (impl, "backward") not in last and full.ms > forward.ms:
            out.append(common.Row(full.op, "backward", impl, full.shape, full.dtype, full.device,
                                  full.ms - forward.ms, None, full.input_mib))
    return out


def run(device, shapes, dtypes, losses, repeats, compiled):
    rows = []
    for name in losses:
        impls = {"edd_ext": getattr(edd_ext, name), "eager": getattr(reference, name)}
        if compiled:
            impls["compiled"] = torch.compile(getattr(reference, name), dynamic=False)
        for n, m, v in shapes:
            for dtype in dtypes:
                args, params = make_inputs(name, n, m, v, dtype, device)
                input_mib = sum(a.numel() * a.element_size() for a in args) / 2**20
                for mode, backward in (("forward", False), ("full", True)):
                    for impl, fn in impls.items():
                        run_once = functools.partial(step, fn, args, params, backward)
                        try:
                            ms = common.median_time(run_once, device, repeats=repeats, warmup=1)
                            peak = common.peak_extra_memory(run_once, device)
                        except (RuntimeError, MemoryError) as exc:  # e.g. the eager peer out of memory
                            print(f"{impl} {name} failed: {exc}", flush=True)
                            continue
                        rows.append(common.Row(name, mode, impl, f"N={n} M={m} V={v}",
                                               str(dtype).replace("torch.", ""), device.type, ms, peak, input_mib))
                        print(f"{name:>20} {mode:>7} {impl:>9} N={n} M={m} V={v} {dtype}: {ms:9.1f} ms "
                              f"peak +{peak or 0:7.0f} MiB", flush=True)
                rows.extend(_backward_rows(rows))
                del args, params
    common.add_ratios(rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--losses", default=",".join(LOSSES))
    p.add_argument("--shapes", default=None, help="e.g. 1024x5x32000,1024x10x8000")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    else:
        shapes = QUICK_SHAPES if args.quick else (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows = run(device, shapes, dtypes, args.losses.split(","), args.repeats, not args.no_compile)
    if args.write:
        args = argv if argv is not None else sys.argv[1:]
        cmd = "python benchmarks/" + " ".join([os.path.basename(__file__)] + args)
        common.write_results(rows, cmd, "losses", os.path.join(common.RESULTS_DIR, "RESULTS.md"),
                             os.path.join(common.RESULTS_DIR, "results.csv"),
                             notes="backward = full - forward, derived (no separate peak memory).")
    return rows


if __name__ == "__main__":
    main()
