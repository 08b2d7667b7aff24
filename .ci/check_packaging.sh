#!/usr/bin/env bash
# Packaging check: build the source distribution, build a wheel from it in a fresh virtual environment outside
# the checkout, install that wheel there and run one fused op, so that a file missing from the sdist (a header,
# a source) fails CI instead of a user's `pip install`.
#   bash .ci/check_packaging.sh BUILD_PYTHON
# BUILD_PYTHON is an environment with torch, setuptools and the `build` package (the CPU .venv in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:?usage: bash .ci/check_packaging.sh BUILD_PYTHON}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d /tmp/edd_ext-packaging.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

"$PY" -m pip install -q build
"$PY" -m build --sdist --no-isolation --outdir "$WORK/dist" . >"$WORK/sdist.log" 2>&1 \
  || { tail -30 "$WORK/sdist.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/edd_ext-*.tar.gz)
tar -tzf "$SDIST" >"$WORK/sdist.files"
echo "check_packaging: sdist $(basename "$SDIST"): $(wc -l <"$WORK/sdist.files") entries"
for must in csrc/include/edd_ext/special_functions.h csrc/edd_ext.cpp MANIFEST.in edd_ext/_version.py; do
  grep -q "/$must\$" "$WORK/sdist.files" || { echo "check_packaging: $must is missing from the sdist" >&2; exit 1; }
done

python3 -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$TORCH_SPEC" numpy pybind11 ninja "setuptools>=64" wheel
# The wheel is built from the sdist alone (not from this checkout), then installed.
(cd "$WORK" && MAX_JOBS=${MAX_JOBS:-2} "$VPY" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/wheels" "$SDIST")
"$VPY" -m pip install -q "$WORK"/wheels/edd_ext-*.whl
(cd "$WORK" && "$VPY" - <<'PY'
import torch
import edd_ext as E

assert "/venv/" in E.__file__, E.__file__
assert E.has_extension(), "the compiled ops did not load from the installed wheel"
u = torch.randn(4, 3, 50, dtype=torch.float64)
z = torch.randn(4, 50, dtype=torch.float64, requires_grad=True)
loss = E.proxy_dirichlet_kl(z, u)
loss.backward()
want = E.reference.proxy_dirichlet_kl(z.detach(), u)
torch.testing.assert_close(loss.detach(), want)
print(f"check_packaging: edd_ext {E.__version__} from the sdist's wheel runs the fused ops "
      f"(proxy_dirichlet_kl = {loss.item():.6f})")
PY
)
