"""The host-side logic of `make gpu-check` and of CI's kernel-resource check, on fixed inputs (no GPU needed):
the demo-table comparison, and the parsing of cuobjdump's resource usage and launch bounds."""
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load("gpu_check", "benchmarks/gpu_check.py")
resources = _load("check_cuda_resources", ".ci/check_cuda_resources.py")


def _table(bleu, auroc, decode_s):
    return {"table": [{"system": "ensemble", "bleu": bleu, "decode_s": decode_s, "relative_cost": None,
                       "train_s": 3.0, "prr_MI": 40.0, "auroc_MI": auroc},
                      {"system": "EnD2", "bleu": 20.0, "decode_s": 1.0, "relative_cost": 1.0, "train_s": 9.0,
                       "prr_MI": None, "auroc_MI": None}]}


def test_demo_tables_within_tolerance_pass_and_timings_are_ignored():
    diffs, ok = gpu_check.compare_demo_tables(_table(25.0, 80.0, 9.0), _table(26.5, 78.0, 1.0))
    assert ok
    assert diffs["largest"] == {"ensemble.auroc_MI": 2.0, "ensemble.bleu": 1.5}


def test_demo_tables_beyond_tolerance_or_with_a_missing_cell_fail():
    assert not gpu_check.compare_demo_tables(_table(25.0, 80.0, 9.0), _table(35.0, 80.0, 9.0))[1]
    other = _table(25.0, 80.0, 9.0)
    other["table"][0]["auroc_MI"] = None
    assert not gpu_check.compare_demo_tables(_table(25.0, 80.0, 9.0), other)[1]
    other = _table(25.0, 80.0, 9.0)
    other["table"].pop()
    assert not gpu_check.compare_demo_tables(_table(25.0, 80.0, 9.0), other)[1]


USAGE = """
Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function _Z6kernelPf:
  REG:40 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:576 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _Z5spillPd:
  REG:200 STACK:48 SHARED:0 LOCAL:16 CONSTANT[0]:576 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

ELF = """
Fatbin elf code:
================
arch = sm_90

.nv.info._Z6kernelPf
	<0x12>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x200 0x1 0x1
	<0x13>
	Attribute:	EIATTR_CRS_STACK_SIZE
	Format:	EIFMT_SVAL
	Value:	0x0

.nv.info._Z5spillPd
	<0x13>
	Attribute:	EIATTR_CRS_STACK_SIZE
	Format:	EIFMT_SVAL
	Value:	0x0 0x0 0x1
"""


def test_resource_usage_and_launch_bounds_are_parsed():
    kernels = resources.resource_usage(USAGE)
    assert set(kernels) == {("sm_90", "_Z6kernelPf"), ("sm_90", "_Z5spillPd")}
    k = kernels[("sm_90", "_Z6kernelPf")]
    assert (k.registers, k.stack, k.local, k.shared) == (40, 0, 0, 1024)
    bounds = resources.max_threads(ELF)
    assert bounds == {("sm_90", "_Z6kernelPf"): 512}
