// CUDA kernel of the Dirichlet student's uncertainty measures (SPEC section 3; formulas in
// edd_ext/student_math.h), one block per position, on the current stream, no host synchronisation; row sums
// are reduced in float64. Pass 1 finds the largest logit and sums alpha_k / alpha_top over the other classes
// (ln alpha_0 without overflow), pass 2 adds up the per-class terms.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/cuda/launch.cuh"
#include "edd_ext/student_uncertainty_host.h"

namespace edd_ext {
namespace {

template <typename T>
__device__ __forceinline__ T larger(T a, T b) {
  return b > a ? b : a;
}

// The block's maximum, returned to every thread. `scratch` holds kMaxWarps elements of shared memory.
template <typename T>
__device__ __forceinline__ T block_max(T v, T* scratch) {
#pragma unroll
  for (int offset = cuda::kWarpSize / 2; offset > 0; offset >>= 1) {
    v = larger(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  const int lane = threadIdx.x % cuda::kWarpSize, warp = threadIdx.x / cuda::kWarpSize;
  const int warps = (blockDim.x + cuda::kWarpSize - 1) / cuda::kWarpSize;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T t = lane < warps ? scratch[lane] : math::neg_inf<T>();
#pragma unroll
  for (int offset = cuda::kWarpSize / 2; offset > 0; offset >>= 1) {
    t = larger(t, __shfl_xor_sync(0xffffffffu, t, offset));
  }
  return t;
}

template <typename scalar_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t) dirichlet_kernel(const scalar_t* __restrict__ logits, int64_t positions, int64_t vocab, acc_t c,
                                 acc_t log_c, double* __restrict__ out) {
  __shared__ acc_t max_scratch[cuda::kMaxWarps];
  __shared__ double sum_scratch[math::kNumDirichletSums * cuda::kMaxWarps];
  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    const scalar_t* z = logits + n * vocab;
    acc_t max_z = math::neg_inf<acc_t>();
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) max_z = larger(max_z, acc_t(z[k]));
    max_z = block_max(max_z, max_scratch);
    const acc_t top = math::log_concentration(max_z, log_c);
    double rest[2] = {0, 0};  // sum of alpha_k / alpha_top over the other classes; classes equal to the top
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      const acc_t zk = acc_t(z[k]);
      if (zk == max_z) {
        rest[1] += 1;
      } else {
        rest[0] += double(math::exp_(math::log_concentration(zk, log_c) - top));
      }
    }
    cuda::block_sum(rest, sum_scratch);
    const math::DirichletScalars s = math::dirichlet_scalars(double(top), rest[0] + (rest[1] - 1));
    const acc_t log1p_rest = acc_t(s.log1p_rest), g0 = acc_t(s.g0);
    double sums[math::kNumDirichletSums] = {0, 0, 0, 0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      math::dirichlet_class_terms<acc_t>(acc_t(z[k]), c, log_c, top, log1p_rest, g0, sums);
    }
    cuda::block_sum(sums, sum_scratch);
    if (threadIdx.x == 0) math::dirichlet_finish(s, sums, vocab, out + n * math::kNumDirichletMeasures);
  }
}

at::Tensor dirichlet_uncertainty_cuda(const at::Tensor& student_logits, double model_offset) {
  DirichletProblem p = make_dirichlet_problem(student_logits, model_offset);
  if (p.positions == 0) return p.out;
  const c10::cuda::CUDAGuard guard(p.logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = cuda::threads_for(p.vocab);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.logits.scalar_type(), "edd_ext::dirichlet_uncertainty_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto kernel = dirichlet_kernel<scalar_t, acc_t>;
        const int64_t blocks = cuda::resident_grid(kernel, threads, 0, p.positions);
        kernel<<<blocks, threads, 0, stream>>>(
            p.logits.const_data_ptr<scalar_t>(), p.positions, p.vocab, acc_t(p.offset), acc_t(p.log_offset),
            p.out.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("dirichlet_uncertainty", &dirichlet_uncertainty_cuda); }

}  // namespace edd_ext
