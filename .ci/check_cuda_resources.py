"""Check every compiled CUDA kernel of a build against its launch bounds, from the binary itself.

    python .ci/check_cuda_resources.py BINARY [--cuobjdump PATH]

BINARY is the built extension (edd_ext/_C*.so) or an object file. For every kernel of every architecture in it,
read with `cuobjdump --dump-resource-usage` and `cuobjdump -elf`:
  * it declares __launch_bounds__ (EIATTR_MAX_THREADS), the largest block any launch of it uses
    (csrc/include/edd_ext/cuda/block_reduce.cuh: kMaxBlockThreads, kElementwiseThreads);
  * registers per thread x that block <= 65536, a block's register file from sm_80 to sm_120, so that every
    launch fits (a kernel over the limit fails to launch, as the 512-thread kernels of a -G build once did);
  * no local memory and no stack frame (nothing spilled, no array indexed at run time);
  * static shared memory <= 48 KiB, the most a block gets without opting in.
Prints one line per kernel and exits 1 on any violation. cuobjdump comes with the CUDA toolkit, from PyPI
(`pip install nvidia-cuda-cuobjdump`, found here under nvidia/cu13/bin) or with Triton.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

REGISTERS_PER_BLOCK = 65536
STATIC_SHARED_LIMIT = 48 * 1024


@dataclass
class Kernel:
    arch: str
    name: str
    registers: int = 0
    stack: int = 0
    local: int = 0
    shared: int = 0
    max_threads: Optional[int] = None


def find_cuobjdump(given: Optional[str]) -> str:
    candidates = [given] if given else []
    candidates += [shutil.which("cuobjdump"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin",
                                                            "cuobjdump")]
    try:
        import nvidia  # the namespace package of the nvidia-* wheels

        for root in nvidia.__path__:
            candidates += [os.path.join(root, sub, "bin", "cuobjdump") for sub in ("cu13", "cu12", "cuda_cuobjdump")]
    except ImportError:
        pass
    try:
        import triton  # ships a cuobjdump for its NVIDIA backend

        candidates.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("cuobjdump not found: install the CUDA toolkit's or `pip install nvidia-cuda-cuobjdump`")


def run(cuobjdump: str, *args: str) -> str:
    done = subprocess.run([cuobjdump, *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{cuobjdump} {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def resource_usage(text: str) -> Dict[Tuple[str, str], Kernel]:
    """{(arch, mangled name): Kernel} from `cuobjdump --dump-resource-usage`."""
    kernels: Dict[Tuple[str, str], Kernel] = {}
    arch, name = "?", None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"\s*Function (\S+):\s*$", line)
        if m:
            name = m.group(1)
            continue
        if name is not None and "REG:" in line:
            fields = dict(re.findall(r"(\w+):(\d+)", line))
            kernels[(arch, name)] = Kernel(arch, name, int(fields.get("REG", 0)), int(fields.get("STACK", 0)),
                                           int(fields.get("LOCAL", 0)), int(fields.get("SHARED", 0)))
            name = None
    return kernels


def max_threads(text: str) -> Dict[Tuple[str, str], int]:
    """{(arch, mangled name): launch bound} from the EIATTR_MAX_THREADS attributes of `cuobjdump -elf`."""
    bounds: Dict[Tuple[str, str], int] = {}
    arch, name, attribute = "?", None, None
    for line in text.splitlines():
        m = re.match(r"\s*arch = (\S+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"^\.nv\.info\.(\S+)\s*$", line)
        if m:
            name, attribute = m.group(1), None
            continue
        if re.match(r"^\.\S", line):  # another section
            name = None
            continue
        m = re.match(r"\s*Attribute:\s*(\S+)", line)
        if m:
            attribute = m.group(1)
            continue
        m = re.match(r"\s*Value:\s*(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)", line)
        if m and name is not None and attribute == "EIATTR_MAX_THREADS":
            bounds[(arch, name)] = int(m.group(1), 16) * int(m.group(2), 16) * int(m.group(3), 16)
    return bounds


def demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return {n: n for n in names}
    done = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    out = done.stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short(name: str, width: int = 110) -> str:
    name = re.sub(r"\(anonymous namespace\)::|edd_ext::|c10::", "", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary")
    p.add_argument("--cuobjdump", default=None)
    args = p.parse_args(argv)
    tool = find_cuobjdump(args.cuobjdump)
    kernels = resource_usage(run(tool, "--dump-resource-usage", args.binary))
    if not kernels:
        print(f"no CUDA kernels in {args.binary}")
        return 1
    for key, bound in max_threads(run(tool, "-elf", args.binary)).items():
        if key in kernels:
            kernels[key].max_threads = bound
    names = demangle(sorted({k.name for k in kernels.values()}))
    problems = []
    print(f"{'arch':<7}{'REG':>5}{'bound':>7}{'REG x bound':>13}{'STACK':>7}{'LOCAL':>7}{'SHARED':>8}  kernel")
    for k in sorted(kernels.values(), key=lambda k: (k.arch, names[k.name])):
        used = k.registers * (k.max_threads or 0)
        print(f"{k.arch:<7}{k.registers:>5}{k.max_threads or '-':>7}{used or '-':>13}{k.stack:>7}{k.local:>7}"
              f"{k.shared:>8}  {short(names[k.name])}")
        where = f"{k.arch} {names[k.name]}"
        if k.max_threads is None:
            problems.append(f"{where}: no __launch_bounds__ (its largest block is unknown)")
        elif used > REGISTERS_PER_BLOCK:
            problems.append(f"{where}: {k.registers} registers x {k.max_threads} threads = {used} > "
                            f"{REGISTERS_PER_BLOCK}")
        if k.stack or k.local:
            problems.append(f"{where}: a {k.stack}-byte stack frame, {k.local} bytes of local memory")
        if k.shared > STATIC_SHARED_LIMIT:
            problems.append(f"{where}: {k.shared} bytes of static shared memory > {STATIC_SHARED_LIMIT}")
    print(f"{len(kernels)} kernels checked ({len({k.arch for k in kernels.values()})} architectures)")
    for line in problems:
        print("FAIL", line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
