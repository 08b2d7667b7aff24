"""The CPU kernels' capability (default / avx2 / avx512): chosen at load from the CPU and EDD_EXT_CPU_CAPABILITY, the
forced one is the one that runs (every op family's kernel calls go to its build, compiled for it), results agree
across capabilities, and no AVX instruction sits outside the per-capability code (one build runs on any x86-64
CPU)."""
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

import edd_ext
from edd_ext import _ops

pytestmark = pytest.mark.skipif(not edd_ext.has_extension(), reason="extension not built")

NAMES = ("default", "avx2", "avx512")
X86 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform.startswith("linux")


def _cpu_flags():
    with open("/proc/cpuinfo") as f:
        return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())


def _best_from_cpuinfo():
    """The best capability by /proc/cpuinfo (an oracle independent of the extension's own detection)."""
    if not X86:
        return "default"
    flags = _cpu_flags()
    avx2 = {"avx2", "fma", "f16c"} <= flags
    if avx2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "avx512"
    return "avx2" if avx2 else "default"


def _available():
    return list(_ops._C.cpu_capabilities())


def test_the_best_capability_runs_unless_a_lower_one_is_asked_for():
    best = _best_from_cpuinfo()
    assert _available() == list(NAMES[: NAMES.index(best) + 1])
    forced = os.environ.get("EDD_EXT_CPU_CAPABILITY", "").lower()
    want = forced if forced in NAMES and NAMES.index(forced) <= NAMES.index(best) else best
    assert edd_ext.cpu_capability() == want
    assert f"running: {want}" in _ops._C.build_info()


@pytest.mark.parametrize("requested,supported,built,chosen,note", [
    (None, "avx512", "avx512", "avx512", ""),
    ("", "avx2", "avx512", "avx2", ""),
    ("default", "avx512", "avx512", "default", ""),
    ("AVX2", "avx512", "avx512", "avx2", ""),
    ("avx512", "avx512", "avx512", "avx512", ""),
    ("avx512", "avx2", "avx512", "avx2", "does not support"),
    ("avx2", "default", "avx512", "default", "does not support"),
    ("avx512", "avx512", "default", "default", "compiled without"),
    ("sse9", "avx2", "avx512", "avx2", "not one of default, avx2, avx512"),
])
def test_capability_rule(requested, supported, built, chosen, note):
    got, why = _ops._C.choose_cpu_capability(requested or "", supported, built)
    assert got == chosen
    if note:
        assert note in why and f"using {chosen}" in why
    else:
        assert why == ""


# Runs every CPU op family once at a small shape and reports what ran: the capability, what its kernels were
# compiled for, how many kernel calls each capability's build served, and a few results.
_PROBE = textwrap.dedent("""
    import json, sys, warnings
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import edd_ext as E
    from edd_ext import _ops
    g = torch.Generator().manual_seed(0)
    u = 3 * torch.randn(3, 4, 37, generator=g)
    z = torch.randn(3, 37, generator=g)
    rho = 0.3 * torch.randn(3, 37, generator=g)
    before = list(_ops._C.cpu_dispatch_counts())
    results = {
        "ensemble_stats": E.ensemble_stats(u).mutual_information.tolist(),
        "dirichlet_nll": E.dirichlet_nll(z, u, reduction="none").tolist(),
        "proxy_dirichlet_kl": E.proxy_dirichlet_kl(z, u, reduction="none").tolist(),
        "ensemble_kl": E.ensemble_kl(z, u, reduction="none").tolist(),
        "logit_gaussian_nll": E.logit_gaussian_nll(z, rho, u, reduction="none").tolist(),
        "dirichlet_uncertainty": E.uncertainty.dirichlet(z).mutual_information.tolist(),
        "logit_distribution": E.uncertainty.logit_distribution(z, rho, seed=3).total.tolist(),
        "simd_lgamma": torch.ops.edd_ext_testing.special_function(z.abs() + 0.5, "simd_lgamma").flatten().tolist(),
    }
    after = list(_ops._C.cpu_dispatch_counts())
    json.dump({"capability": E.cpu_capability(), "compiled_for": _ops._C.cpu_kernels_compiled_for(),
               "calls": [a - b for a, b in zip(after, before)], "results": results,
               "warnings": [str(w.message) for w in caught]}, sys.stdout)
""")
_OP_CALLS = 8


# The subprocess checks cover every capability from any parent: CI's runs under a forced capability skip them.
_FORCED = bool(os.environ.get("EDD_EXT_CPU_CAPABILITY"))
probing = pytest.mark.skipif(_FORCED, reason="run once, without EDD_EXT_CPU_CAPABILITY")


def _probe(requested):
    env = dict(os.environ, EDD_EXT_CPU_CAPABILITY=requested)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def probes():
    return {name: _probe(name) for name in _available()}


@probing
@pytest.mark.parametrize("name", NAMES)
def test_a_forced_capability_is_the_one_that_runs(probes, name):
    if name not in probes:
        pytest.skip(f"this CPU or build has no {name}")
    p = probes[name]
    assert p["capability"] == name and p["warnings"] == []
    compiled = p["compiled_for"]
    assert compiled["capability"] == name
    assert compiled["lanes"] == (16 if name == "avx512" else 8)
    assert compiled["avx2"] == (name != "default") and compiled["avx512"] == (name == "avx512")
    # every op family's kernel call went to this capability's build, and none to another one
    want = [_OP_CALLS if c == name else 0 for c in NAMES]
    assert p["calls"] == want


@probing
def test_capabilities_agree(probes):
    """The same results from every capability: the losses and measures to float32 rounding (the builds differ
    in vector width and fused multiply-adds), the Monte-Carlo measures bit for bit (plain code, no contraction)."""
    names = list(probes)
    if len(names) < 2:
        pytest.skip("one capability only")
    ref = probes[names[0]]["results"]
    for name in names[1:]:
        got = probes[name]["results"]
        assert got["logit_distribution"] == ref["logit_distribution"], name
        for key, values in ref.items():
            for a, b in zip(values, got[key]):
                assert abs(a - b) <= 2e-5 * max(1.0, abs(a)), (name, key, a, b)


@probing
def test_asking_for_an_unknown_capability_warns_and_runs_the_best():
    p = _probe("avx1024")
    best = _available()[-1]
    assert p["capability"] == best
    assert any("EDD_EXT_CPU_CAPABILITY=avx1024" in w and f"using {best}" in w for w in p["warnings"])


# ---- one build runs on any x86-64 CPU ----

# A function uses instructions beyond the x86-64 baseline when one of its instructions is VEX/EVEX encoded (AT&T
# mnemonics starting with "v", e.g. vmovups, vfmadd231ps, vzeroupper) or touches ymm/zmm or mask registers.
_BEYOND_BASELINE = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+|k[a-z]+[bwdq]?)\s|%[yz]mm\d|%k[0-7]")
# The inline namespaces, demangled, and as mangled names spell them: objdump -C leaves the names of OpenMP's
# outlined loop bodies ("<mangled>._omp_fn.0", local to their translation unit) undemangled.
_CAPABILITY_NAMESPACES = ("::AVX2::", "::AVX512::", "4AVX2", "6AVX512")


@pytest.mark.skipif(not X86 or shutil.which("objdump") is None, reason="needs x86-64 Linux and objdump")
def test_no_avx_instruction_outside_the_capability_builds():
    """Every function of the extension that uses AVX / AVX-512 instructions belongs to an AVX2 or AVX-512 build:
    its name is in their inline namespace (edd_ext::cpu::AVX2::..., at::vec::AVX512::...), so it is only reached
    through a kernel table whose capability this CPU supports, or it is a compiler clone of one of their
    functions ("[clone .constprop.0]", local to its translation unit). The rest -- op code, scalar kernels, the
    portable build -- runs on any x86-64 CPU. This also fails if the linker kept a vector build's copy of an
    inline function that the builds share (the portable objects are linked first so that it keeps theirs)."""
    so = _ops._C.__file__
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so], capture_output=True, text=True,
                          check=True).stdout
    offenders, function, vector_functions = set(), None, 0
    for line in dump.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        if function is None or not _BEYOND_BASELINE.search(line):
            continue
        if any(ns in function for ns in _CAPABILITY_NAMESPACES):
            vector_functions += 1
        elif "[clone ." not in function:
            offenders.add(function)
        function = None  # decided; skip its other lines
    assert not offenders, f"AVX instructions outside the AVX2/AVX-512 builds: {sorted(offenders)[:10]}"
    assert vector_functions > 0, "no AVX2/AVX-512 build found in the extension"
