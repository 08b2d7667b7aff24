// Reduction and gradient scaling of the distillation-loss ops (SPEC section 2), shared by the CPU and CUDA
// implementations. The loss is reduced as asked: per position [*] (reduction none), or the sum or mean over
// the unmasked positions [] (sum, mean; the mean is 0 when none is unmasked). The gradient is that of the
// output: for none, of each position's own loss; for mean, already divided by the number of unmasked
// positions: every kernel folds the factor into the rows it writes, before their one rounding (the CUDA
// kernels read it from a device scalar when a mask must be counted: cuda::grad_scale_for).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>

#include <cstdint>

#include "edd_ext/loss_problem.h"

namespace edd_ext {

// CPU: the mean's 1 / max(unmasked positions, 1) (counting a host mask is free), else 1.
inline double host_grad_scale(const LossProblem& p) {
  if (p.reduction != Reduction::kMean) return 1.0;
  const int64_t count = p.mask.defined() ? p.mask.sum().item<int64_t>() : p.positions;
  return 1.0 / double(count > 1 ? count : 1);
}

// The number of unmasked positions as a 0-dim tensor of `dtype` on the inputs' device, at least 1 (no host
// synchronisation on CUDA).
inline at::Tensor unmasked_count(const LossProblem& p, at::ScalarType dtype) {
  if (!p.mask.defined()) return at::scalar_tensor(double(p.positions > 1 ? p.positions : 1), p.loss.options().dtype(dtype));
  return p.mask.sum().clamp_min(1).to(dtype);
}

// The op's loss output from the per-position losses (masked ones are 0): [*], their sum, or their mean.
inline at::Tensor reduced_loss(const LossProblem& p) {
  if (p.reduction == Reduction::kNone) return p.loss;
  at::Tensor total = p.loss.sum();
  if (p.reduction == Reduction::kSum) return total;
  return total.div(unmasked_count(p, total.scalar_type()));
}

}  // namespace edd_ext
