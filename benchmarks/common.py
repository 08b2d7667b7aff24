"""Shared benchmark machinery: timing (median of repeats), peak extra memory, machine description, and
the results table writer. Peers run side by side in one process on the same inputs."""
from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
#: Where --write appends RESULTS.md and results.csv: this folder, or EDD_BENCH_RESULTS_DIR (make gpu-check).
RESULTS_DIR = os.environ.get("EDD_BENCH_RESULTS_DIR", HERE)
# Benchmarks run from a checkout: the repository's package (with its built extension) comes first, or the built
# package in EDD_BENCH_PACKAGE_DIR (make gpu-check builds into a folder of its own).
_PACKAGE_DIR = os.environ.get("EDD_BENCH_PACKAGE_DIR", os.path.dirname(HERE))
if _PACKAGE_DIR not in sys.path:
    sys.path.insert(0, _PACKAGE_DIR)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name):
                return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def peak_extra_memory(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory (MiB) allocated while ``fn`` runs beyond what was held before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: the rise of the process's peak RSS (VmHWM after a reset
    through /proc/self/clear_refs) over its RSS before the call; None where that is unavailable.
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        del out
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    if not _reset_peak_rss():
        return None
    before = _rss_kb("VmRSS")
    out = fn()
    del out
    return max(0, _rss_kb("VmHWM") - before) / 1024


def median_time(fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 1,
                max_seconds: float = 20.0) -> float:
    """Median wall time (ms) of ``fn`` over ``repeats`` runs after ``warmup`` runs (fewer if slow)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        times.append(dt * 1e3)
        spent += dt
        if spent > max_seconds and len(times) >= 3:
            break
    return statistics.median(times)


@dataclass
class Row:
    op: str
    mode: str
    impl: str
    shape: str
    dtype: str
    device: str
    ms: float
    peak_mib: Optional[float]
    input_mib: float
    speedup_vs_eager: Optional[float] = None
    speedup_vs_compiled: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)


def add_ratios(rows: List[Row], ours: str = "edd_ext") -> None:
    """Fill the speedups of our rows against the eager and compiled peers of the same case."""
    key = lambda r: (r.op, r.mode, r.shape, r.dtype, r.device)  # noqa: E731
    by_case: Dict[tuple, Dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(key(r), {})[r.impl] = r
    for case in by_case.values():
        if ours not in case:
            continue
        r = case[ours]
        if r.ms <= 0:
            continue
        if "eager" in case:
            r.speedup_vs_eager = case["eager"].ms / r.ms
        if "compiled" in case:
            r.speedup_vs_compiled = case["compiled"].ms / r.ms


def write_results(rows: List[Row], command: str, title: str, path_md: str, path_csv: str, notes: str = "") -> None:
    """Append a dated section to RESULTS.md and all rows to results.csv."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}; "
              f"load average at the end {os.getloadavg()[0]:.1f}\n- torch {torch.__version__}, Python "
              f"{sys.version.split()[0]}\n- command: `{command}`\n")
    lines = [header, notes + "\n" if notes else "",
             "| op | mode | shape | dtype | impl | median ms | peak extra MiB | inputs MiB | × eager | × compiled |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    fmt = lambda v, p=1: "—" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r.op} | {r.mode} | {r.shape} | {r.dtype} | {r.impl} | {r.ms:.1f} | {fmt(r.peak_mib, 0)} | "
                     f"{r.input_mib:.0f} | {fmt(r.speedup_vs_eager)} | {fmt(r.speedup_vs_compiled)} |")
    new_file = not os.path.exists(path_md)
    with open(path_md, "a") as f:
        if new_file:
            f.write("# Benchmark results\n\nMedians over repeats; peers run in the same process on the same inputs. "
                    "'peak extra' is memory allocated during the call beyond what was held before it "
                    "(CPU: rise of peak RSS; GPU: torch.cuda.max_memory_allocated).\n")
        f.write("\n".join(lines) + "\n")
    new_csv = not os.path.exists(path_csv)
    with open(path_csv, "a", newline="") as f:
        w = csv.writer(f)
        names = [k for k in asdict(rows[0]).keys() if k != "extra"] + ["date", "machine", "torch"] if rows else []
        if new_csv and rows:
            w.writerow(names)
        for r in rows:
            d = asdict(r)
            d.pop("extra")
            w.writerow(list(d.values()) + [stamp, machine(), torch.__version__])
