# The two commands a newcomer needs:
#   make demo    the end-to-end ensemble-distribution-distillation run (python -m edd_ext.demo)
#   make test    the test suite
# Both create a virtual environment in $(VENV) on first use and build the extension into it.
# TORCH_SPEC picks the torch to install there (default: the CPU wheel); use an existing environment with
# `make test VENV=/path/to/venv`.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=
PYTEST_ARGS ?=

# every file the build reads, headers included, so that editing any of them triggers a rebuild
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu) \
           $(wildcard csrc/include/edd_ext/*.h csrc/include/edd_ext/cpu/*.h csrc/include/edd_ext/cuda/*.cuh)

.PHONY: demo test install clean gpu-check

$(VENV)/.edd_ext-installed: $(SOURCES)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q numpy pybind11 ninja "setuptools>=64" wheel
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.edd_ext-installed

demo: install
	$(PY) -m edd_ext.demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# On a machine with a CUDA GPU (no internet needed): builds the extension against the Python and torch installed
# there, runs the CUDA tests, compute-sanitizer, the demo on GPU vs CPU and the GPU benchmarks, and writes
# gpu_check_output/gpu_check.md (or $$OUT/). Without a GPU it dry-runs what it can and says what it skipped.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf build edd_ext/_C*.so *.egg-info
