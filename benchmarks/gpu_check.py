"""`make gpu-check`: everything about the CUDA path that needs a GPU, checked in one command.

    python benchmarks/gpu_check.py [--output DIR] [--package DIR] [--deadline SECONDS]

Made for a GPU machine without internet (one H100 / H200, Python 3.12, a CUDA build of torch, nvcc, pytest and
hypothesis installed) and meant to finish within 8 minutes there. Steps, each timed and recorded:
  1. build   the extension against the torch already installed: `pip install --no-build-isolation --no-deps
             --target DIR .` with FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST from the GPU (e.g. 9.0), MAX_JOBS = cores;
  2. kernels every compiled kernel against its launch bounds (.ci/check_cuda_resources.py, when cuobjdump is found);
  3. tests   every CUDA test of the suite (pytest -m cuda: CPU-vs-CUDA agreement for every op and dtype, the
             bit-identical noise, many members, -inf logits, indexing past 2^31, a side stream, no host sync);
  4. sanitizer  compute-sanitizer memcheck and racecheck on one small call of each kernel (gpu_check_calls.py);
  5. demo    `python -m edd_ext.demo --quick --device cuda` and the same run with --device cpu (same seed, run
             alongside), and their tables compared;
  6. bench   the GPU benchmarks (bench_losses, bench_ensemble_stats, bench_uncertainty, no torch.compile peers),
             written to DIR/bench/RESULTS.md and results.csv.
It writes DIR/gpu_check.md (the summary and each step's output tail) and DIR/gpu_check.json. DIR is --output,
else $OUT when set (the device machine's return folder), else gpu_check_output/. Exit status 1 when a step failed.

Without a GPU it says so and runs what does not need one, as a dry run of the script itself: the build (with the
CPU kernels only; --package DIR reuses a build instead), the CUDA test file with the CPU standing in for the GPU
(EDD_EXT_TEST_SECOND_DEVICE=cpu), the kernel-call script on the CPU, and the demo comparison over two CPU runs
(--with-demo; slow on a small machine). It lists every step it skipped and why.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
TAIL = 4000  # characters of a step's output kept in the report

#: Largest differences between the CPU and the GPU demo tables that pass (the two runs train in different float
#: arithmetic from the same seed, so their models differ a little; first guesses, to be set from GPU runs).
DEMO_TOLERANCE = {"bleu": 3.0, "prr": 10.0, "auroc": 5.0}
DEMO_TIMING_COLUMNS = {"decode_s", "relative_cost", "train_s"}


@dataclass
class Step:
    name: str
    status: str = "not run"  # ok | FAILED | skipped | not run
    seconds: float = 0.0
    note: str = ""
    output: str = ""
    details: Dict[str, object] = field(default_factory=dict)


class Check:
    def __init__(self, args):
        self.args = args
        self.start = time.monotonic()
        self.out = Path(args.output).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.steps: List[Step] = []
        self.python = sys.executable
        self.gpu = self._probe_gpu()
        self.package: Optional[Path] = Path(args.package).resolve() if args.package else None

    # ---- helpers ----

    def left(self) -> float:
        return self.args.deadline - (time.monotonic() - self.start)

    def env(self, **extra) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({"PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
        if self.package is not None:
            env["PYTHONPATH"] = str(self.package) + os.pathsep + env.get("PYTHONPATH", "")
            env["EDD_BENCH_PACKAGE_DIR"] = str(self.package)
        env.update(extra)
        return env

    def python_cmd(self, *args: str) -> List[str]:
        # -P: the checkout is not put first on sys.path, so that the package built in --package is imported
        return [self.python, "-P", *args] if sys.version_info >= (3, 11) else [self.python, *args]

    def run(self, step: Step, cmd: List[str], limit: float, env=None, cwd=ROOT) -> bool:
        limit = min(limit, self.left())
        if limit < 5:
            step.status, step.note = "not run", "the time budget is spent"
            return False
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=cwd, env=env or self.env(), capture_output=True, text=True, timeout=limit)
            ok, text = done.returncode == 0, done.stdout + done.stderr
            if not ok:
                step.note = (step.note + "; " if step.note else "") + f"exit status {done.returncode}"
        except subprocess.TimeoutExpired as exc:
            ok = False
            text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
            step.note = (step.note + "; " if step.note else "") + f"stopped after {limit:.0f} s"
        step.seconds += time.monotonic() - t0
        step.output += f"$ {' '.join(cmd)}\n{text[-TAIL:]}\n"
        step.status = "ok" if ok and step.status != "FAILED" else "FAILED"
        return ok

    def skip(self, step: Step, why: str) -> None:
        step.status, step.note = "skipped", why
        print(f"-- {step.name}: skipped ({why})", flush=True)

    def _probe_gpu(self) -> Optional[Dict[str, object]]:
        code = ("import json, torch\n"
                "ok = torch.cuda.is_available() and torch.version.cuda is not None\n"
                "print(json.dumps(dict(name=torch.cuda.get_device_name(0),\n"
                "                      capability=torch.cuda.get_device_capability(0),\n"
                "                      torch=torch.__version__, cuda=torch.version.cuda) if ok else None))\n")
        done = subprocess.run([self.python, "-c", code], capture_output=True, text=True)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None

    # ---- steps ----

    def build(self) -> None:
        step = self.add("build")
        if self.package is not None:
            return self.skip(step, f"--package {self.package} given")
        target = self.out / "package"
        shutil.rmtree(target, ignore_errors=True)
        env = self.env(MAX_JOBS=str(os.cpu_count() or 4))
        env.pop("PYTHONPATH", None)
        if self.gpu:
            major, minor = self.gpu["capability"]
            env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}")
            env.setdefault("CUDA_HOME", "/usr/local/cuda")
        else:
            env["FORCE_CPU"] = "1"
            step.note = "no GPU: the CPU kernels only"
        if shutil.which("ninja") is None and not _importable(self.python, "ninja"):
            step.note += ("; " if step.note else "") + "ninja not found: files compile one at a time (slow)"
        cmd = [self.python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
               "--target", str(target), "."]
        if self.run(step, cmd, self.args.build_limit, env=env):
            self.package = target
        print(f"-- build: {step.status} in {step.seconds:.0f} s {step.note}", flush=True)

    def kernels(self) -> None:
        step = self.add("kernels")
        if not self.gpu:
            return self.skip(step, "no GPU build to inspect (CI checks the CUDA build of every change)")
        binaries = sorted((self.package / "edd_ext").glob("_C*.so")) if self.package else []
        if not binaries:
            return self.skip(step, "no built extension")
        self.run(step, [self.python, str(ROOT / ".ci" / "check_cuda_resources.py"), str(binaries[0])], 60)
        if "cuobjdump not found" in step.output:
            step.status, step.note = "skipped", "cuobjdump not found"
        print(f"-- kernels: {step.status} {step.note}", flush=True)

    def tests(self) -> None:
        step = self.add("tests")
        junit = self.out / "pytest.xml"
        if self.gpu:
            cmd = self.python_cmd("-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", f"--junitxml={junit}",
                                  "-rfE", "tests")
            self.run(step, cmd, self.args.test_limit)
        else:
            step.note = "no GPU: tests/test_cuda.py with the CPU standing in for the GPU (a dry run of its code)"
            cmd = self.python_cmd("-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", f"--junitxml={junit}",
                                  "tests/test_cuda.py")
            self.run(step, cmd, self.args.test_limit, env=self.env(EDD_EXT_TEST_SECOND_DEVICE="cpu"))
        step.details["summary"] = _last_line(step.output, ("passed", "failed", "error"))
        print(f"-- tests: {step.status} ({step.details['summary']}) {step.note}", flush=True)

    def sanitizer(self) -> None:
        step = self.add("sanitizer")
        calls = str(ROOT / "benchmarks" / "gpu_check_calls.py")
        if not self.gpu:
            step.note = "no GPU: the kernel calls on the CPU only (no compute-sanitizer)"
            self.run(step, self.python_cmd(calls, "--device", "cpu"), 120)
            step.status = "skipped" if step.status == "ok" else step.status
            print(f"-- sanitizer: {step.status} {step.note}", flush=True)
            return
        tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
        if not os.access(tool, os.X_OK):
            return self.skip(step, "compute-sanitizer not found")
        for kind in ("memcheck", "racecheck"):
            cmd = [tool, "--tool", kind, "--error-exitcode", "1", "--print-limit", "20",
                   *self.python_cmd(calls, "--device", "cuda")]
            # without the caching allocator memcheck sees every buffer's real bounds
            self.run(step, cmd, self.args.sanitizer_limit, env=self.env(PYTORCH_NO_CUDA_MEMORY_CACHING="1"))
            step.details[kind] = _last_line(step.output, ("ERROR SUMMARY", "RACECHECK SUMMARY"))
        print(f"-- sanitizer: {step.status} {step.details} {step.note}", flush=True)

    def demo_start(self):
        """The CPU run of the demo, started in the background (it is the slow one)."""
        if not (self.gpu or self.args.with_demo):
            return None
        out = self.out / "demo_cpu"
        threads = str(max(1, (os.cpu_count() or 2) // 2))
        cmd = self.python_cmd("-m", "edd_ext.demo", "--quick", "--device", "cpu", "--seed", str(self.args.seed),
                              "--output-dir", str(out), "--no-progress", "--threads", threads)
        log = open(self.out / "demo_cpu.log", "w")
        proc = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        return proc, log

    def demo(self, background) -> None:
        step = self.add("demo")
        if background is None:
            return self.skip(step, "no GPU (--with-demo compares two CPU runs instead)")
        device = "cuda" if self.gpu else "cpu"
        out = self.out / f"demo_{device}" if self.gpu else self.out / "demo_cpu_again"
        cmd = self.python_cmd("-m", "edd_ext.demo", "--quick", "--device", device, "--seed", str(self.args.seed),
                              "--output-dir", str(out), "--no-progress")
        self.run(step, cmd, self.args.demo_limit, cwd=tempfile.gettempdir())
        proc, log = background
        try:
            proc.wait(timeout=max(5.0, self.left() - 60))
        except subprocess.TimeoutExpired:
            proc.kill()
            step.note += "; the CPU run did not finish in time"
        log.close()
        step.output += "$ (CPU run)\n" + (self.out / "demo_cpu.log").read_text(errors="replace")[-TAIL:] + "\n"
        if proc.returncode != 0:
            step.status = "FAILED"
            step.note += f"; the CPU run exited with {proc.returncode}"
        if "unrecognized arguments: --device" in step.output:
            step.note += "; this demo has no --device option yet"
        cpu_json, dev_json = self.out / "demo_cpu" / "results.json", out / "results.json"
        if cpu_json.exists() and dev_json.exists():
            diffs, worst_ok = compare_demo_tables(json.loads(cpu_json.read_text()), json.loads(dev_json.read_text()))
            step.details["differences"] = diffs
            if not worst_ok:
                step.status = "FAILED"
                step.note += "; the tables differ beyond the tolerance"
        print(f"-- demo: {step.status} {step.note}", flush=True)

    def bench(self) -> None:
        step = self.add("bench")
        if not self.gpu:
            return self.skip(step, "no GPU (benchmarks time the GPU)")
        results = self.out / "bench"
        results.mkdir(exist_ok=True)
        env = self.env(EDD_BENCH_RESULTS_DIR=str(results))
        here = ROOT / "benchmarks"
        for script, extra in (("bench_losses.py", ["--shapes", "1024x5x32000,4096x5x32000,1024x5x128000"]),
                              ("bench_ensemble_stats.py", []), ("bench_uncertainty.py", [])):
            self.run(step, [self.python, str(here / script), "--device", "cuda", "--no-compile", "--write", *extra],
                     self.args.bench_limit / 3, env=env)
        print(f"-- bench: {step.status} {step.note}", flush=True)

    def add(self, name: str) -> Step:
        step = Step(name)
        self.steps.append(step)
        print(f"== [{time.monotonic() - self.start:5.0f} s] {name}", flush=True)
        return step

    # ---- report ----

    def report(self) -> int:
        total = time.monotonic() - self.start
        where = (f"{self.gpu['name']} (sm_{self.gpu['capability'][0]}{self.gpu['capability'][1]}), torch "
                 f"{self.gpu['torch']}, CUDA {self.gpu['cuda']}" if self.gpu else "no GPU visible to torch")
        lines = ["# make gpu-check", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                 f"- device: {where}", f"- Python {sys.version.split()[0]}, {os.cpu_count()} CPU cores",
                 f"- total: {total:.0f} s (budget {self.args.deadline:.0f} s)", "",
                 "| step | status | seconds | note |", "|---|---|---:|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.note} |" for s in self.steps]
        for s in self.steps:
            if s.details:
                lines += ["", f"## {s.name}: details", "", "```", json.dumps(s.details, indent=1, default=str), "```"]
        for s in self.steps:
            if s.output:
                lines += ["", f"## {s.name}: output (tail)", "", "```", s.output.strip()[-3 * TAIL:], "```"]
        (self.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(
            {"device": self.gpu, "seconds": total, "steps": [asdict(s) for s in self.steps]}, indent=1, default=str))
        print("\n".join(lines[: 9 + len(self.steps)]))
        print(f"written: {self.out / 'gpu_check.md'}")
        skipped = [s.name for s in self.steps if s.status == "skipped"]
        if not self.gpu:
            print(f"NO GPU: nothing ran on a GPU. Skipped or run on the CPU instead: {', '.join(skipped)}.")
        return 1 if any(s.status == "FAILED" for s in self.steps) else 0


def compare_demo_tables(cpu: Dict, dev: Dict):
    """Per system and column, |GPU - CPU| of the demo's table (timings left out); and whether all pass."""
    rows_cpu = {r["system"]: r for r in cpu["table"]}
    rows_dev = {r["system"]: r for r in dev["table"]}
    diffs, ok = {}, set(rows_cpu) == set(rows_dev)
    for system in sorted(set(rows_cpu) & set(rows_dev)):
        for column, a in rows_cpu[system].items():
            b = rows_dev[system].get(column)
            if column == "system" or column in DEMO_TIMING_COLUMNS or a is None or b is None:
                if (a is None) != (b is None):
                    ok = False
                continue
            d = abs(float(b) - float(a))
            kind = next((k for k in DEMO_TOLERANCE if column.startswith(k)), None)
            if kind is None:
                continue
            if math.isnan(d) or d > DEMO_TOLERANCE[kind]:
                ok = False
            key = f"{system}.{column}"
            if d > 0:
                diffs[key] = round(d, 3)
    worst = dict(sorted(diffs.items(), key=lambda kv: -kv[1])[:15])
    return {"systems": sorted(rows_cpu), "largest": worst, "tolerance": DEMO_TOLERANCE}, ok


def _importable(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def _last_line(text: str, needles) -> str:
    for line in reversed(text.splitlines()):
        if any(n in line for n in needles):
            return line.strip("= ").strip()
    return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.environ.get("OUT") or str(ROOT / "gpu_check_output"))
    p.add_argument("--package", default=None, help="a folder with a built edd_ext to use instead of building one")
    p.add_argument("--deadline", type=float, default=470.0, help="seconds for the whole check (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-demo", action="store_true", help="without a GPU: compare two CPU runs of the demo")
    p.add_argument("--build-limit", type=float, default=240.0)
    p.add_argument("--test-limit", type=float, default=150.0)
    p.add_argument("--sanitizer-limit", type=float, default=60.0, help="seconds for each sanitizer tool")
    p.add_argument("--demo-limit", type=float, default=120.0)
    p.add_argument("--bench-limit", type=float, default=90.0, help="seconds for the three benchmark scripts")
    args = p.parse_args(argv)
    check = Check(args)
    print("GPU:", check.gpu or "none visible to torch: a dry run of what does not need one", flush=True)
    check.build()
    if check.package is None and check.steps[-1].status == "FAILED":
        return check.report()
    background = check.demo_start()
    check.kernels()
    check.tests()
    check.sanitizer()
    check.demo(background)
    check.bench()
    return check.report()


if __name__ == "__main__":
    sys.exit(main())
