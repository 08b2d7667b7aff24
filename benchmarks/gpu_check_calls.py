"""One small call of every CUDA kernel of edd_ext, for compute-sanitizer (memcheck, racecheck) in `make gpu-check`.

    compute-sanitizer --tool memcheck python benchmarks/gpu_check_calls.py [--device cuda]

Covers each kernel family with its variants that take other code paths: teacher logits and statistics, a mask,
"mean" and "none" (the device scalar of the mean's factor; the backward's scale_grad_ with a factor of 1 and of
2), 128- and 512-thread blocks, every teacher_norm, both noise families, and members beyond the shared-memory
limit (the global-workspace path). Inputs are tiny, so that the sanitizers finish in seconds. Prints one line per
call; --device cpu runs the same calls on the CPU (a dry run of this script).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

if os.environ.get("EDD_BENCH_PACKAGE_DIR"):
    sys.path.insert(0, os.environ["EDD_BENCH_PACKAGE_DIR"])

import edd_ext  # noqa: E402


def calls(device: torch.device):
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32, scale=1.0):
        return (scale * torch.randn(*shape, generator=g)).to(dtype).to(device)

    mask = torch.tensor([True, False, True], device=device)
    for v, dtype in ((37, torch.float32), (8200, torch.bfloat16), (37, torch.float64)):
        u = randn(3, 2, v, dtype=dtype, scale=2.0)
        yield f"ensemble_stats V={v} {dtype}", lambda u=u: edd_ext.ensemble_stats(u, smoothing=0.1)
        for name, loss in (("dirichlet_nll", edd_ext.dirichlet_nll), ("proxy_dirichlet_kl", edd_ext.proxy_dirichlet_kl),
                           ("ensemble_kl", edd_ext.ensemble_kl)):
            for teacher in ("logits", "stats"):
                for reduction, factor in (("mean", 1.0), ("none", 2.0)):
                    def step(loss=loss, teacher=teacher, reduction=reduction, factor=factor, u=u, v=v, dtype=dtype):
                        z = randn(3, v, dtype=dtype).requires_grad_()
                        t = u if teacher == "logits" else edd_ext.ensemble_stats(u)
                        (factor * loss(z, t, mask=mask, reduction=reduction).sum()).backward()
                        return z.grad
                    yield f"{name} V={v} {dtype} {teacher} {reduction} x{factor}", step
        for norm in ("log_softmax", "center", "none"):
            for loss in (edd_ext.logit_gaussian_nll, edd_ext.logit_laplace_nll):
                def step(loss=loss, norm=norm, u=u, v=v, dtype=dtype):
                    mu, rho = randn(3, v, dtype=dtype).requires_grad_(), randn(3, v, dtype=dtype).requires_grad_()
                    loss(mu, rho, u, teacher_norm=norm, min_scale=0.01, mask=mask).backward()
                    return mu.grad
                yield f"{loss.__name__} {norm} V={v} {dtype}", step
        z = randn(3, v, dtype=dtype)
        yield f"uncertainty.dirichlet V={v} {dtype}", lambda z=z: edd_ext.uncertainty.dirichlet(z)
        for family in ("gaussian", "laplace"):
            yield (f"uncertainty.logit_distribution {family} V={v} {dtype}",
                   lambda z=z, family=family: edd_ext.uncertainty.logit_distribution(z, 0.1 * z, family=family,
                                                                                    num_samples=6))
    # members beyond the 48 KiB of shared memory: the normalisers in a global workspace
    u = randn(2, 6200, 3)
    z = randn(2, 3).requires_grad_()
    yield "ensemble_stats M=6200", lambda: edd_ext.ensemble_stats(u)
    yield "proxy_dirichlet_kl M=6200", lambda: edd_ext.proxy_dirichlet_kl(z, u).backward()
    yield "logit_gaussian_nll M=6200", lambda: edd_ext.logit_gaussian_nll(z, z, u)
    positions = torch.tensor([0, 5], device=device)
    for family in ("gaussian", "laplace"):
        yield (f"philox_noise {family}",
               lambda family=family: torch.ops.edd_ext_testing.philox_noise(positions, 1, 5, 9, family))
    counters = torch.arange(40, device=device).view(10, 4)
    yield "philox4x32", lambda: torch.ops.edd_ext_testing.philox4x32(counters, 7)
    x = torch.linspace(-2, 30, 301, device=device)
    for name in ("lgamma", "digamma", "trigamma"):
        yield f"special_function {name}", lambda name=name: torch.ops.edd_ext_testing.special_function(x, name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    count = 0
    for what, fn in calls(device):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        print("ok", what, flush=True)
        count += 1
    print(f"{count} calls on {device} ({edd_ext.__file__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
