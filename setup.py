"""Build edd_ext: the C++ CPU extension always; the CUDA kernels too when torch has CUDA and nvcc is found
(or FORCE_CUDA=1).

Environment switches:
  FORCE_CUDA=1            build the CUDA kernels even without a visible GPU (needs a CUDA build of torch)
  FORCE_CPU=1             never build the CUDA kernels
  CUDA_HOME               CUDA toolkit root (default: /usr/local/cuda when it exists)
  TORCH_CUDA_ARCH_LIST    target architectures (default without a GPU: "8.0;9.0")
  MAX_JOBS                parallel compile jobs (default: from free memory and cores)
  EDD_EXT_DEBUG=1         -O0 -g instead of -O3 -g0

The vectorised CPU kernels (csrc/cpu/simd/*.cpp) are compiled once per CPU capability -- the portable baseline,
and on x86-64 also AVX2 (+FMA, F16C) and AVX-512 (F, BW, VL, DQ) -- against light headers (no torch tensor
headers); the extension picks the best one the CPU supports when it loads (EDD_EXT_CPU_CAPABILITY=default|avx2|
avx512 forces a lower one), so one build runs on any CPU of the architecture. Everything else is compiled once,
for the baseline. The CPU ops run on OpenMP threads (-fopenmp when compiling and linking).
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


# The CPU capabilities the vectorised kernels are built for: (name, compiler flags). Each build defines
# CPU_CAPABILITY=<name> (the inline namespace its code lives in, as in ATen) and CPU_CAPABILITY_<name> for the
# vector ones. Order matters: the portable objects are linked first, so that where the builds share an inline
# function that was not inlined, the copy the linker keeps is the portable one.
_X86_CAPABILITIES = [
    ("DEFAULT", []),
    ("AVX2", ["-mavx2", "-mfma", "-mf16c"]),
    ("AVX512", ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"]),
]


def _cpu_capabilities():
    import platform

    if platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32":
        return _X86_CAPABILITIES
    return _X86_CAPABILITIES[:1]


def _openmp_flags():
    """-fopenmp where GCC or a Linux clang compiles: ATen's inline at::parallel_for is an OpenMP loop that runs on
    one thread without it. The extension then uses the OpenMP runtime torch loaded (same soname)."""
    if sys.platform.startswith("linux"):
        return ["-fopenmp"]
    return []


class BuildExtensionWithCpuCapabilities(BuildExtension):
    """torch's BuildExtension, plus one compile of the vectorised CPU kernels per capability (its own object folder
    and flags), whose objects are linked after the ones compiled once."""

    def build_extension(self, ext):
        kernels = getattr(ext, "cpu_capability_sources", [])
        if kernels:
            cxx = ext.extra_compile_args["cxx"] if isinstance(ext.extra_compile_args, dict) else ext.extra_compile_args
            objects = []
            for name, flags in _cpu_capabilities():
                macros = ext.define_macros + [("CPU_CAPABILITY", name)]
                if name != "DEFAULT":
                    macros.append(("CPU_CAPABILITY_" + name, None))
                objects += self.compiler.compile(
                    kernels, output_dir=os.path.join(self.build_temp, "cpu_" + name.lower()), macros=macros,
                    include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=list(cxx) + flags,
                    depends=ext.depends)
            ext.extra_objects = objects + [o for o in ext.extra_objects if o not in objects]
        super().build_extension(ext)


def _version():
    """The version from edd_ext/_version.py, without importing the package (its compiled part is not built yet)."""
    scope = {}
    with open(os.path.join(ROOT, "edd_ext", "_version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


def extensions():
    with_cuda, reason = _want_cuda()
    sources = ["csrc/module.cpp", "csrc/edd_ext.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    kernels = sorted(glob.glob("csrc/cpu/simd/*.cpp"))
    opt = ["-O0", "-g"] if _flag("EDD_EXT_DEBUG") else ["-O3", "-g0"]
    openmp = _openmp_flags()
    # -ffp-contract=off: no implicit a*b+c fusion, so a formula rounds the same in every kernel and build (the
    # Monte-Carlo noise is bit-reproducible); SIMD code asks for fused multiply-adds explicitly.
    cxx = opt + ["-fvisibility=hidden", "-ffp-contract=off"] + openmp
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
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=openmp)
        what = "C++ CPU + CUDA kernels (archs %s, CUDA_HOME=%s)" % (archs, CUDA_HOME)
    else:
        ext = CppExtension("edd_ext._C", sources, include_dirs=include_dirs, define_macros=macros,
                           extra_compile_args={"cxx": cxx}, extra_link_args=openmp)
        what = "C++ CPU kernels only"
    ext.cpu_capability_sources = kernels
    capabilities = [name.lower() for name, _ in _cpu_capabilities()]
    _max_jobs()
    print("edd_ext build: %s [%s]; CPU kernels for %s (%d sources each); OpenMP: %s; torch %s; MAX_JOBS=%s; "
          "%d sources" % (what, reason, ", ".join(capabilities), len(kernels), "yes" if openmp else "no",
                          torch.__version__, os.environ["MAX_JOBS"], len(sources)), flush=True)
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
    cmdclass={"build_ext": BuildExtensionWithCpuCapabilities.with_options(use_ninja=True)},
    zip_safe=False,
)
