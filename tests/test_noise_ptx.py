"""The Monte-Carlo noise is bit-identical on the CPU and the GPU only if nvcc fuses none of its products and sums
into FMAs (the CPU build does not contract): compile the noise path of the shared header to PTX with the CUDA
toolkit, as the extension's build does (-O3), and look for fma instructions. Runs wherever nvcc is installed
(CI has it); no GPU needed."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "cuda_probes", "noise_probe.cu")


def _nvcc():
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = os.path.join(home, "bin", "nvcc")
    return path if os.access(path, os.X_OK) else shutil.which("nvcc")


NVCC = _nvcc()


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    if NVCC is None:
        pytest.skip("needs nvcc (the CUDA toolkit)")
    out = tmp_path_factory.mktemp("ptx") / "noise_probe.ptx"
    cmd = [NVCC, "-ptx", "-O3", "-arch=sm_90", "--expt-relaxed-constexpr", "-std=c++17",
           "-I", os.path.join(ROOT, "csrc", "include"), PROBE, "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


def _functions(ptx_text):
    """{mangled entry name: body} of every kernel in the PTX."""
    bodies = {}
    for match in re.finditer(r"\.entry\s+(\S+?)\s*\(", ptx_text):
        start = match.end()
        end = ptx_text.find("\n}", start)
        bodies[match.group(1)] = ptx_text[start:end]
    return bodies


def test_noise_path_has_no_fused_multiply_add(ptx):
    bodies = _functions(ptx)
    probes = {name: body for name, body in bodies.items() if "probe" in name}
    assert len(probes) == 5, sorted(bodies)  # Gaussian, Laplace noise; float, double samples; exp_flush
    for name, body in probes.items():
        fused = re.findall(r"\bfma\.\w+\.f(?:32|64)", body)
        assert not fused, f"{name}: {len(fused)} fused multiply-adds in the noise path ({fused[:3]})"


def test_control_is_contracted(ptx):
    """nvcc does contract plain a * b + c: the check above can see a contraction."""
    control = [body for name, body in _functions(ptx).items() if "contraction_control" in name]
    assert control and re.search(r"\bfma\.rn\.f32", control[0])
