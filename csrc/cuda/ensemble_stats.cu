// CUDA kernels for the teacher-ensemble statistics (SPEC section 1): one block per position (as many blocks
// as are resident at once, looping over positions); pass 1 merges per-thread streaming log-sum-exps of each
// member (float64 running sums), pass 2 accumulates the per-class moments (edd_ext/ensemble_math.h) and writes
// the [V] rows; row sums are reduced in float64. The members' normalisers live in shared memory, or for very
// large M in a global workspace row per block. No host sync; the kernel runs on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/cuda/launch.cuh"
#include "edd_ext/ensemble_stats_host.h"

namespace edd_ext {
namespace {

template <typename scalar_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    ensemble_stats_kernel(const scalar_t* __restrict__ logits, int64_t positions, int64_t members, int64_t vocab,
                          acc_t inv_t, acc_t inv_m, acc_t log_m, bool smooth, acc_t log1m_eps, acc_t log_eps_v,
                          acc_t* __restrict__ member_workspace, int64_t member_row, acc_t* __restrict__ mean_probs,
                          acc_t* __restrict__ mean_log_probs, acc_t* __restrict__ measures) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw);  // [members]: max logit / T
  acc_t* log_sum = shift + members;                                               // [members]: ln sum exp(u / T - shift)
  __shared__ cuda::LogSumExpScratch<acc_t, double> lse_scratch;
  __shared__ double sum_scratch[math::kNumMeasures * cuda::kMaxWarps];

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    const scalar_t* row = logits + n * members * vocab;
    for (int64_t m = 0; m < members; ++m) {
      math::OnlineLogSumExp<acc_t, double> acc;
      const scalar_t* u = row + m * vocab;
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) acc.push(acc_t(u[k]) * inv_t);
      const math::OnlineLogSumExp<acc_t, double> total = cuda::block_logsumexp(acc, lse_scratch);
      if (threadIdx.x == 0) {
        shift[m] = total.max;
        log_sum[m] = acc_t(::log(total.sum));
      }
    }
    __syncthreads();
    double sums[math::kNumMeasures] = {0, 0, 0, 0, 0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      const math::ClassTerms<acc_t> terms = math::ensemble_class_terms(row, k, members, vocab, shift, log_sum, inv_t,
                                                                       smooth, log1m_eps, log_eps_v, inv_m, log_m);
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) sums[i] += double(terms.measure[i]);
      if (mean_probs != nullptr) {
        mean_probs[n * vocab + k] = terms.mean_prob;
        mean_log_probs[n * vocab + k] = terms.mean_log_prob;
      }
    }
    cuda::block_sum(sums, sum_scratch);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = acc_t(sums[i]);
    }
    __syncthreads();  // shift[] and log_sum[] are rewritten by the next position
  }
}

EnsembleStatsProblem run(const at::Tensor& teacher_logits, double temperature, double smoothing, bool with_rows) {
  EnsembleStatsProblem p = make_ensemble_stats_problem(teacher_logits, temperature, smoothing, with_rows);
  if (p.positions == 0) return p;
  const c10::cuda::CUDAGuard guard(p.logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = cuda::threads_for(p.vocab);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.logits.scalar_type(), "edd_ext::ensemble_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto kernel = ensemble_stats_kernel<scalar_t, acc_t>;
    // the members' shift and log-sum (2 M values) in shared memory, or for large M in a global row per block
    const cuda::ScratchPlacement members = cuda::place_scratch(kernel, 2 * p.members, sizeof(acc_t));
    const int64_t blocks = cuda::resident_grid(kernel, threads, members.shared_bytes, p.positions);
    at::Tensor workspace;
    if (members.global_row > 0) workspace = at::empty({blocks, members.global_row}, p.measures.options());
    kernel<<<blocks, threads, members.shared_bytes, stream>>>(
        p.logits.const_data_ptr<scalar_t>(), p.positions, p.members, p.vocab, acc_t(p.inv_temperature),
        acc_t(p.inv_members), acc_t(p.log_members), p.smooth, acc_t(p.log1m_eps), acc_t(p.log_eps_over_v),
        workspace.defined() ? workspace.mutable_data_ptr<acc_t>() : nullptr, members.global_row,
        with_rows ? p.mean_probs.mutable_data_ptr<acc_t>() : nullptr,
        with_rows ? p.mean_log_probs.mutable_data_ptr<acc_t>() : nullptr, p.measures.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ensemble_stats_cuda(const at::Tensor& teacher_logits,
                                                                   double temperature, double smoothing) {
  EnsembleStatsProblem p = run(teacher_logits, temperature, smoothing, /*with_rows=*/true);
  return {p.mean_probs, p.mean_log_probs, p.measures};
}

at::Tensor ensemble_uncertainty_cuda(const at::Tensor& teacher_logits, double temperature, double smoothing) {
  return run(teacher_logits, temperature, smoothing, /*with_rows=*/false).measures;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) {
  m.impl("ensemble_stats", &ensemble_stats_cuda);
  m.impl("ensemble_uncertainty", &ensemble_uncertainty_cuda);
}

}  // namespace edd_ext
