// The CPU op of the compact top-k teacher statistics (SPEC section 1.1): the checks and outputs here, compiled
// once; the kernel (csrc/cpu/simd/topk_stats.cpp, edd_ext/cpu/topk_kernels.h) compiled once per CPU capability.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cpu/topk_kernels.h"
#include "edd_ext/topk_host.h"

namespace edd_ext {
namespace cpu {

Kernel<TopkStatsKernel> topk_ensemble_stats_kernel;

}  // namespace cpu

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_ensemble_stats_cpu(
    const at::Tensor& teacher_logits, int64_t k, double temperature, double smoothing) {
  TopKStatsProblem p = make_topk_stats_problem(teacher_logits, k, temperature, smoothing);
  if (p.dense.positions > 0) cpu::topk_ensemble_stats_kernel.get()(p);
  return {p.indices, p.listed_probs, p.listed_log_probs, p.tail_mass, p.tail_mean_log_prob, p.dense.measures};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("topk_ensemble_stats", &topk_ensemble_stats_cpu); }

}  // namespace edd_ext
