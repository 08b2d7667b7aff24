"""Run every benchmark family and append their tables to benchmarks/RESULTS.md and results.csv.

    python benchmarks/run_all.py [--device cpu|cuda] [--quick] [--no-compile]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_ensemble_stats  # noqa: E402
import bench_losses  # noqa: E402
import bench_uncertainty  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    common_args = (["--device", args.device] if args.device else []) + (["--quick"] if args.quick else []) + (
        ["--no-compile"] if args.no_compile else []) + ["--write"]
    for module in (bench_ensemble_stats, bench_losses, bench_uncertainty):
        print(f"== {module.__name__}", flush=True)
        module.main(list(common_args))


if __name__ == "__main__":
    main()
