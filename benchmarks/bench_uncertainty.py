"""Student uncertainty measures (SPEC section 3): the Dirichlet measures and the Monte-Carlo measures of a
logit-distribution student (S samples regenerated from a counter-based generator, never materialised) vs
the plain-PyTorch peers in edd_ext.reference (which materialise [*, S, V] samples) and torch.compile of them.

    python benchmarks/bench_uncertainty.py [--device cpu|cuda] [--quick] [--write]
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

CPU_SHAPES = [(256, 32000), (1024, 8000)]
GPU_SHAPES = [(1024, 32000), (4096, 50000)]
QUICK_SHAPES = [(64, 8000)]


def cases(num_samples):
    return {
        "uncertainty.dirichlet": (
            lambda z, r: edd_ext.uncertainty.dirichlet(z),
            lambda z, r: reference.dirichlet_uncertainty(z),
        ),
        f"uncertainty.logit_distribution[gaussian, S={num_samples}]": (
            lambda z, r: edd_ext.uncertainty.logit_distribution(z, r, family="gaussian", num_samples=num_samples),
            lambda z, r: reference.logit_distribution_uncertainty(z, r, family="gaussian", num_samples=num_samples),
        ),
        f"uncertainty.logit_distribution[laplace, S={num_samples}]": (
            lambda z, r: edd_ext.uncertainty.logit_distribution(z, r, family="laplace", num_samples=num_samples),
            lambda z, r: reference.logit_distribution_uncertainty(z, r, family="laplace", num_samples=num_samples),
        ),
    }


def run(device, shapes, dtypes, repeats, compiled, num_samples):
    rows = []
    for name, (ours, ref) in cases(num_samples).items():
        impls = {"edd_ext": ours, "eager": ref}
        if compiled:
            impls["compiled"] = torch.compile(ref, dynamic=False)
        for n, v in shapes:
            for dtype in dtypes:
                z = torch.randn(n, v, device=device).mul_(2).to(dtype)
                r = (0.3 * torch.randn(n, v, device=device) - 1).to(dtype)
                input_mib = 2 * z.numel() * z.element_size() / 2**20
                for impl, fn in impls.items():
                    call = functools.partial(fn, z, r)
                    try:
                        ms = common.median_time(call, device, repeats=repeats, warmup=1)
                        peak = common.peak_extra_memory(call, device)
                    except (RuntimeError, MemoryError) as exc:
                        print(f"{impl} {name} failed: {exc}", flush=True)
                        continue
                    rows.append(common.Row(name, "forward", impl, f"N={n} V={v}", str(dtype).replace("torch.", ""),
                                           device.type, ms, peak, input_mib))
                    print(f"{name:>45} {impl:>9} N={n} V={v} {dtype}: {ms:9.1f} ms peak +{peak or 0:7.0f} MiB",
                          flush=True)
    common.add_ratios(rows)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--num-samples", type=int, default=25)
    p.add_argument("--dtypes", default="float32")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shapes = QUICK_SHAPES if args.quick else (GPU_SHAPES if device.type == "cuda" else CPU_SHAPES)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows = run(device, shapes, dtypes, args.repeats, not args.no_compile, args.num_samples)
    if args.write:
        args = argv if argv is not None else sys.argv[1:]
        cmd = "python benchmarks/" + " ".join([os.path.basename(__file__)] + args)
        common.write_results(rows, cmd, "uncertainty", os.path.join(common.RESULTS_DIR, "RESULTS.md"),
                             os.path.join(common.RESULTS_DIR, "results.csv"))
    return rows


if __name__ == "__main__":
    main()
