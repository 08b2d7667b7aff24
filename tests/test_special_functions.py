"""The shared host/device special functions (csrc/include/edd_ext/special_functions.h) against mpmath
(50-digit) and scipy.special, through the CPU op and, with a GPU, the CUDA op."""
import math

import mpmath
import numpy as np
import pytest
import scipy.special as sp
import torch

import edd_ext  # noqa: F401  (loads the ops)

mpmath.mp.dps = 30
ORACLES = {
    "lgamma": mpmath.loggamma,
    "digamma": mpmath.digamma,
    "trigamma": lambda v: mpmath.polygamma(1, v),
}
DIGAMMA_ROOT = 1.4616321449683622


def _grid(dtype):
    rng = np.random.default_rng(1234)
    x = np.concatenate([
        10.0 ** rng.uniform(-30, 30, 600),  # the whole documented domain
        rng.uniform(0.0, 3.0, 400),  # around the roots of lgamma (1, 2) and digamma (1.4616...)
        rng.uniform(DIGAMMA_ROOT - 1e-3, DIGAMMA_ROOT + 1e-3, 50),
        rng.uniform(3.0, 40.0, 200),  # across the series thresholds (8, 10)
        np.array([1.0, 2.0, 8.0, 10.0, 0.5, 1e-30, 1e30]),
    ])
    return torch.tensor(x, dtype=dtype)


def _mp(name, x):
    return np.array([float(ORACLES[name](mpmath.mpf(float(v)))) for v in x])


@pytest.mark.parametrize("name", list(ORACLES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_against_mpmath(name, dtype, device):
    x = _grid(dtype)
    want = _mp(name, x.double().numpy())
    got = torch.ops.edd_ext_testing.special_function(x.to(device), name).cpu().double().numpy()
    eps = torch.finfo(dtype).eps
    finite = np.abs(want) < torch.finfo(dtype).max  # trigamma(1e-30) = 1e60 overflows float32 by definition
    assert np.isinf(got[~finite]).all()
    # Relative error in ulps, with an absolute floor only where the function is exactly 0 (lgamma(1), lgamma(2)).
    err = np.abs(got[finite] - want[finite]) / np.maximum(np.abs(want[finite]), eps)
    assert err.max() <= 4 * eps, f"{name} {dtype}: max error {err.max() / eps:.1f} ulp at x={x[finite][err.argmax()]}"


SCIPY = [("lgamma", sp.gammaln), ("digamma", sp.digamma), ("trigamma", lambda v: sp.polygamma(1, v))]


@pytest.mark.parametrize("name,scipy_fn", SCIPY)
def test_against_scipy_away_from_roots(name, scipy_fn):
    x = torch.logspace(-20, 20, 4001, dtype=torch.float64)
    got = torch.ops.edd_ext_testing.special_function(x, name).numpy()
    want = scipy_fn(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


# (name, bound in ulp of max(|f|, 1)) for the float32 SIMD variant used by the CPU loss kernels.
SIMD_BOUNDS = [("lgamma", 32), ("digamma", 8), ("trigamma", 4)]


@pytest.mark.parametrize("name,ulps", SIMD_BOUNDS)
def test_simd_variant_against_mpmath(name, ulps):
    x = _grid(torch.float32)
    want = _mp(name, x.double().numpy())
    got = torch.ops.edd_ext_testing.special_function(x, "simd_" + name).double().numpy()
    eps = torch.finfo(torch.float32).eps
    finite = np.abs(want) < 1e38
    err = np.abs(got[finite] - want[finite]) / np.maximum(np.abs(want[finite]), 1.0)
    assert err.max() <= ulps * eps, f"simd_{name}: {err.max() / eps:.1f} ulp at x={x[finite][err.argmax()]}"
    if name == "trigamma":  # away from 1 the bound is relative
        big = finite & (np.abs(want) > 1)
        assert (np.abs(got[big] - want[big]) / np.abs(want[big])).max() <= ulps * eps


def test_simd_variant_handles_ragged_lengths():
    for n in (1, 7, 8, 9, 33):
        x = torch.rand(n) * 20 + 1e-3
        torch.testing.assert_close(torch.ops.edd_ext_testing.special_function(x, "simd_digamma"),
                                   torch.ops.edd_ext_testing.special_function(x, "digamma"), rtol=1e-5, atol=1e-6)


def test_float32_matches_float64_to_float_precision():
    x = torch.logspace(-6, 6, 2001, dtype=torch.float32)
    for name in ORACLES:
        f = torch.ops.edd_ext_testing.special_function(x, name).double()
        d = torch.ops.edd_ext_testing.special_function(x.double(), name)
        torch.testing.assert_close(f, d, rtol=1e-6, atol=1e-6)


def test_bad_name_and_dtype_raise_value_error():
    with pytest.raises(ValueError, match="name"):
        torch.ops.edd_ext_testing.special_function(torch.ones(3), "gamma")
    with pytest.raises(ValueError, match="x: expected float32 or float64"):
        torch.ops.edd_ext_testing.special_function(torch.ones(3, dtype=torch.float16), "lgamma")


# Outside the domain x >= 0 every function is NaN. Before this was defined, trigamma never returned for
# x = -inf or x < -2^24 (float), where x + 1 == x: the call runs in a child process so that such a
# regression fails here instead of hanging the suite.
OUTSIDE_DOMAIN = "[-float('inf'), -1e300, -2.0**60, -2.0**25, -1e7, -3.5, -1.0, -0.5, -1e-30, float('nan')]"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_outside_domain_is_nan_and_returns(dtype, device, tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import torch, edd_ext\n"
        f"x = torch.tensor({OUTSIDE_DOMAIN}, dtype=torch.{dtype}, device='{device}')\n"
        "for name in ('lgamma', 'digamma', 'trigamma'):\n"
        "    y = torch.ops.edd_ext_testing.special_function(x, name).cpu()\n"
        "    assert y.isnan().all(), (name, y)\n"
        "print('ok')\n"
    )
    # the child imports the edd_ext this process imported (its folder first on the path, the cwd an empty one)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(edd_ext.__file__)), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ends_of_the_domain(dtype, device):
    x = torch.tensor([0.0, float("inf")], dtype=dtype, device=device)
    want = {"lgamma": [math.inf, math.inf], "digamma": [-math.inf, math.inf], "trigamma": [math.inf, 0.0]}
    for name, values in want.items():
        got = torch.ops.edd_ext_testing.special_function(x, name).cpu()
        assert got.tolist() == values, (name, got)
