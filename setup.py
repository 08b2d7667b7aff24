"""Build edd_ext: the C++ CPU extension always; the CUDA kernels too when torch has CUDA and nvcc is found
(or FORCE_CUDA=1).

Environment switches:
  FORCE_CUDA=1            build the CUDA kernels even without a visible GPU (needs a CUDA build of torch)
  FORCE_CPU=1             never build the CUDA kernels
  CUDA_HOME               CUDA toolkit root (default: /usr/local/cuda when it exists)
  TORCH_CUDA_ARCH_LIST    target architectures (default without a GPU: "8.0;9.0")
  MAX_JOBS                parallel compile jobs (default: from free memory and cores)
  EDD_EXT_DEBUG=1         -O0 -g instead of -O3 -g0
  EDD_EXT_CPU_SIMD=0      portable CPU kernels (default: AVX2/FMA/F16C when the build machine has them)
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda/include"):
    # Set before torch.utils.cpp_extension is imported: it resolves CUDA_HOME at import time, and an nvcc
    # wrapper on PATH can point it at a folder without headers.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda():
    if _flag("FORCE_CPU"):
        return False, "FORCE_CPU=1"
    if torch.version.cuda is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1, but the installed torch %s is a CPU build: install a CUDA build of torch."
                     % torch.__version__)
        return False, "torch %s is a CPU build" % torch.__version__
    if CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            sys.exit("FORCE_CUDA=1, but no CUDA toolkit was found: set CUDA_HOME.")
        return False, "no CUDA toolkit (CUDA_HOME) found"
    if _flag("FORCE_CUDA"):
        return True, "FORCE_CUDA=1"
    if torch.cuda.is_available():
        return True, "a GPU is visible"
    return False, "no GPU visible (set FORCE_CUDA=1 to build the CUDA kernels anyway)"


def _max_jobs():
    if "MAX_JOBS" in os.environ:
        return
    cores = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            free_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_memory = max(1, int(free_kb / (3.5 * 1024 * 1024)))  # an nvcc job peaks near 3.2 GB
    except (OSError, StopIteration, ValueError):
        by_memory = cores
    os.environ["MAX_JOBS"] = str(max(1, min(cores, by_memory)))


def _cpu_simd_flags():
    """AVX2 + FMA + F16C SIMD for the CPU kernels when the build machine has them (x86-64 since ~2013);
    EDD_EXT_CPU_SIMD=0 builds the portable (non-SIMD) variant of at::vec instead."""
    if os.environ.get("EDD_EXT_CPU_SIMD", "1") == "0":
        return [], "portable"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    if all(flag in flags for flag in ("avx2", "fma", "f16c")):
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"], "AVX2"
    return [], "portable"


def _version():
    """The version from edd_ext/_version.py, without importing the package (its compiled part is not built yet)."""
    scope = {}
    with open(os.path.join(ROOT, "edd_ext", "_version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


def extensions():
    with_cuda, reason = _want_cuda()
    sources = ["csrc/module.cpp", "csrc/edd_ext.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    opt = ["-O0", "-g"] if _flag("EDD_EXT_DEBUG") else ["-O3", "-g0"]
    simd, simd_name = _cpu_simd_flags()
    # -ffp-contract=off: no implicit a*b+c fusion, so a formula rounds the same in every kernel and build (the
    # Monte-Carlo noise is bit-reproducible); SIMD code asks for fused multiply-adds explicitly.
    cxx = opt + ["-fvisibility=hidden", "-ffp-contract=off"] + simd
    macros = []
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "(detected)")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros += [("EDD_EXT_WITH_CUDA", None), ("EDD_EXT_CUDA_ARCHS", '"%s"' % archs)]
        nvcc = (["-O0", "-G"] if _flag("EDD_EXT_DEBUG") else ["-O3", "-lineinfo"]) + [
            "--expt-relaxed-constexpr", "-Xcompiler", "-fvisibility=hidden"]
        ext = CUDAExtension("edd_ext._C", sources, include_dirs=include_dirs, define_macros=macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc})
        what = "C++ CPU + CUDA kernels (archs %s, CUDA_HOME=%s)" % (archs, CUDA_HOME)
    else:
        ext = CppExtension("edd_ext._C", sources, include_dirs=include_dirs, define_macros=macros,
                           extra_compile_args={"cxx": cxx})
        what = "C++ CPU kernels only"
    _max_jobs()
    print("edd_ext build: %s [%s]; CPU SIMD: %s; torch %s; MAX_JOBS=%s; %d sources"
          % (what, reason, simd_name, torch.__version__, os.environ["MAX_JOBS"], len(sources)), flush=True)
    return [ext]


setup(
    name="edd_ext",
    version=_version(),
    description="Fused ensemble-distribution-distillation losses and uncertainty measures for PyTorch",
    packages=find_packages(include=["edd_ext", "edd_ext.*"]),
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy", "tqdm", "sacrebleu>=2", "safetensors"],
    extras_require={
        "test": ["pytest", "hypothesis", "scipy", "scikit-learn", "matplotlib", "expecttest", "sentencepiece==0.2.3"],
        "plot": ["matplotlib"],
        # the demo's --bpe (joint subword vocabularies); the version the demo was run and tested with
        "bpe": ["sentencepiece==0.2.3"],
        # fairseq-fixed itself must be built against the installed torch and without its torchaudio dependency:
        # `bash .ci/install_fairseq.sh PYTHON` does both (see python_examples/fairseq/README.md).
        "fairseq": ["hydra-core==1.3.2", "omegaconf==2.3.0", "bitarray", "regex", "sacrebleu>=2"],
        # edd_ext.integrations.transformers: the version its tests run against (with torch 2.13)
        "transformers": ["transformers==5.23.0", "accelerate>=1.16", "tokenizers>=0.23"],
    },
    entry_points={"console_scripts": ["edd-demo = edd_ext.demo.__main__:main"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
