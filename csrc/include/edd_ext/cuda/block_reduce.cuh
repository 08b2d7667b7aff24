// Block-wide reductions for the block-per-position CUDA kernels (blockDim.x a multiple of 32, <= 1024).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kMaxWarps = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sums each of the N values over the block; every thread receives the totals.
// `scratch` holds N * kMaxWarps elements of shared memory.
template <typename T, int N>
__device__ __forceinline__ void block_sum(T (&v)[N], T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(v[i]);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) scratch[i * kMaxWarps + warp] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(lane < warps ? scratch[i * kMaxWarps + lane] : T(0));
}

// Shared scratch of block_logsumexp: each warp's maximum and (rescaled) sum.
template <typename T, typename S>
struct LogSumExpScratch {
  T max[kMaxWarps];
  S sum[kMaxWarps];
};

// Merges the threads' streaming log-sum-exp states; every thread receives the block's merged state.
template <typename T, typename S, typename Exp>
__device__ __forceinline__ math::OnlineLogSumExp<T, S, Exp> block_logsumexp(math::OnlineLogSumExp<T, S, Exp> s,
                                                                             LogSumExpScratch<T, S>& scratch) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other_max = __shfl_xor_sync(0xffffffffu, s.max, offset);
    const S other_sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    s.merge(other_max, other_sum);
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  __syncthreads();
  if (lane == 0) {
    scratch.max[warp] = s.max;
    scratch.sum[warp] = s.sum;
  }
  __syncthreads();
  math::OnlineLogSumExp<T, S, Exp> t;
  if (lane < warps) {
    t.max = scratch.max[lane];
    t.sum = scratch.sum[lane];
  }
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other_max = __shfl_xor_sync(0xffffffffu, t.max, offset);
    const S other_sum = __shfl_xor_sync(0xffffffffu, t.sum, offset);
    t.merge(other_max, other_sum);
  }
  return t;
}

// The largest block of the block-per-position kernels. Each of them is declared EDD_EXT_BLOCK_KERNEL(acc_t), i.e.
// with __launch_bounds__(kMaxBlockThreads, min_blocks_per_sm<acc_t>()), so that its registers per thread fit the
// block in every build (debug builds included): two 512-thread blocks per multiprocessor (<= 64 registers) for
// float math, one (<= 128 registers) for float64 math, which spills at 64. .ci/check_cuda_resources.py checks
// the compiled kernels against their launch bounds.
constexpr int kMaxBlockThreads = 512;

template <typename acc_t>
constexpr int min_blocks_per_sm() {
  return sizeof(acc_t) > 4 ? 1 : 2;
}

#define EDD_EXT_BLOCK_KERNEL(acc_t) \
  __global__ void __launch_bounds__(::edd_ext::cuda::kMaxBlockThreads, ::edd_ext::cuda::min_blocks_per_sm<acc_t>())

// Threads per block for a row of `vocab` classes.
inline int threads_for(int64_t vocab) { return vocab >= 8192 ? kMaxBlockThreads : (vocab >= 1024 ? 256 : 128); }

// Threads per block of the elementwise kernels (one element per thread and step).
constexpr int kElementwiseThreads = 256;

}  // namespace cuda
}  // namespace edd_ext
