#!/usr/bin/env bash
# Install the optional fairseq integration (python_examples/fairseq, tests/test_fairseq.py) into a virtual
# environment:   bash .ci/install_fairseq.sh VENV_PYTHON
#
# fairseq 0.12.2 from PyPI does not import on Python 3.11; fairseq-fixed 0.12.3.1 (imports as `fairseq`) does.
# It is built once into a wheel (≈3-6 min, its Cython/C++ parts) kept in $FAIRSEQ_WHEEL_DIR (default
# ~/.cache/edd_ext/wheels) and installed from there, so reruns take seconds; a rerun on an environment that
# already has everything at the pinned versions installs nothing.
#   --no-build-isolation  builds against the venv's own torch (an isolated build env would pull a CUDA torch)
#   --no-deps             keeps out torchaudio, which fails to import beside torch 2.13 (fairseq needs it for
#                         audio tasks only); the dependencies translation needs are installed explicitly below
set -euo pipefail

PY=${1:?usage: bash .ci/install_fairseq.sh VENV_PYTHON}
FAIRSEQ_SPEC="fairseq-fixed==0.12.3.1"
# What fairseq's translation/generation path imports, at the versions this integration was verified with.
DEPS=("hydra-core==1.3.2" "omegaconf==2.3.0" "bitarray==3.12.3" "regex==2026.11.19" "sacrebleu==2.6.0"
      "cffi==2.1.1" "tqdm>=4.60" "packaging>=21" "scipy>=1.10" "scikit-learn>=1.3")
BUILD_DEPS=("numpy>=1.24" "cython>=3")
WHEEL_DIR=${FAIRSEQ_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/edd_ext/wheels}
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { "$PY" -m pip "$@"; }
say() { echo "install_fairseq: $*"; }

"$PY" -c "import sys; assert sys.version_info >= (3, 9), sys.version" \
  || { echo "install_fairseq: $PY is not a Python >= 3.9 interpreter" >&2; exit 1; }

satisfied() {
  "$PY" - "$FAIRSEQ_SPEC" "${DEPS[@]}" <<'PY'
import sys
from importlib import metadata
from packaging.requirements import Requirement
for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(version, prereleases=True):
        sys.exit(1)
import fairseq  # noqa: F401  (the build must import, not just be recorded as installed)
PY
}

if satisfied 2>/dev/null; then
  say "fairseq-fixed and its pinned dependencies are already installed in $PY"
  exit 0
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  say "no torch in $PY: installing torch==2.13.0"
  pip install -q "torch==2.13.0"
fi
pip install -q "${BUILD_DEPS[@]}" packaging wheel "setuptools>=64"

wheel=$(ls "$WHEEL_DIR"/fairseq_fixed-0.12.3.1-*.whl 2>/dev/null | head -1 || true)
torch_version=$("$PY" -c "import torch; print(torch.__version__)")
stamp_file="$WHEEL_DIR/fairseq_fixed.torch-version"
if [ -n "$wheel" ] && [ "$(cat "$stamp_file" 2>/dev/null)" != "$torch_version" ]; then
  say "cached wheel was built against torch $(cat "$stamp_file" 2>/dev/null || echo '?'), this venv has $torch_version: rebuilding"
  rm -f "$wheel"
  wheel=""
fi
if [ -z "$wheel" ]; then
  say "building the $FAIRSEQ_SPEC wheel into $WHEEL_DIR (a few minutes, once)"
  mkdir -p "$WHEEL_DIR"
  MAX_JOBS=${MAX_JOBS:-2} pip wheel -q --no-build-isolation --no-deps "$FAIRSEQ_SPEC" -w "$WHEEL_DIR"
  echo "$torch_version" > "$stamp_file"
  wheel=$(ls "$WHEEL_DIR"/fairseq_fixed-0.12.3.1-*.whl | head -1)
fi

say "installing $(basename "$wheel") and its pinned dependencies"
say "(pip may report that fairseq-fixed requires torchaudio: it is left out on purpose, see above)"
pip install -q --no-deps "$wheel"
pip install -q "${DEPS[@]}"
"$PY" -c "import fairseq, torch; print('install_fairseq: fairseq', fairseq.__version__, 'with torch', torch.__version__)"
