"""Teacher-ensemble statistics (SPEC section 1): edd_ext.ensemble_stats vs the eager reference and
torch.compile of it, forward only (the teacher needs no gradient).

    python benchmarks/bench_ensemble_stats.py [--device cpu|cuda] [--quick] [--write]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import edd_ext  # noqa: E402
from edd_ext import reference  # noqa: E402

CPU_SHAPES = [(1024, 5, 8000), (1024, 5, 32000), (1024, 10, 32000), (1024, 5, 50000)]
GPU_SHAPES = [(1024, 5, 32000), (4096, 5, 32000), (4096, 10, 50000), (1024, 5, 128000)]
QUICK_SHAPES = [(256, 5, 8000)]


def run(device: torch.device, shapes, dtypes, repeats: int, compiled: bool):
    rows = []
    compiled_ref = torch.compile(reference.ensemble_stats, dynamic=False) if compiled else None
    for n, m, v in shapes:
        for dtype in dtypes:
            x = torch.randn(n, m, v, device=device).mul_(3).to(dtype)
            input_mib = x.numel() * x.element_size() / 2**20
            impls = {"edd_ext": lambda x=x: edd_ext.ensemble_stats(x), "eager": lambda x=x: reference.ensemble_stats(x)}
            if compiled_ref is not None:
                impls["compiled"] = lambda x=x: compiled_ref(x)
            for impl, fn in impls.items():
                ms = common.median_time(fn, device, repeats=repeats, warmup=1)
                peak = common.peak_extra_memory(fn, device)
                rows.append(common.Row("ensemble_stats", "forward", impl, f"N={n} M={m} V={v}",
                                       str(dtype).replace("torch.", ""), device.type, ms, peak, input_mib))
                print(f"{impl:>9} N={n} M={m} V={v} {dtype}: {ms:9.1f} ms  peak +{peak or 0:7.0f} MiB", flush=True)
            del x
    common.add_ratios(rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="one small shape (a smoke run)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md and results.csv")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    rows = run(device, shapes, [torch.float32, torch.bfloat16], args.repeats, not args.no_compile)
    if args.write:
        command = " ".join([os.path.basename(__file__)] + (argv or sys.argv[1:]))
        common.write_results(rows, "python benchmarks/" + command,
                             "ensemble_stats", os.path.join(common.RESULTS_DIR, "RESULTS.md"),
                             os.path.join(common.RESULTS_DIR, "results.csv"))
    return rows


if __name__ == "__main__":
    main()
