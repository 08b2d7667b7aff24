// Block-wide reductions for the block-per-position CUDA kernels (blockDim.x a multiple of 32, <= 1024).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <algorithm>
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

// Merges the threads' streaming log-sum-exp states; every thread receives the block's merged state.
// `scratch` holds 2 * kMaxWarps elements of shared memory.
template <typename T>
__device__ __forceinline__ math::OnlineLogSumExp<T> block_logsumexp(math::OnlineLogSumExp<T> s, T* scratch) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other_max = __shfl_xor_sync(0xffffffffu, s.max, offset);
    const T other_sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    s.merge(other_max, other_sum);
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = s.max;
    scratch[kMaxWarps + warp] = s.sum;
  }
  __syncthreads();
  math::OnlineLogSumExp<T> t;
  if (lane < warps) {
    t.max = scratch[lane];
    t.sum = scratch[kMaxWarps + lane];
  }
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset >>= 1) {
    const T other_max = __shfl_xor_sync(0xffffffffu, t.max, offset);
    const T other_sum = __shfl_xor_sync(0xffffffffu, t.sum, offset);
    t.merge(other_max, other_sum);
  }
  return t;
}

// Threads per block for a row of `vocab` classes.
inline int threads_for(int64_t vocab) { return vocab >= 8192 ? 512 : (vocab >= 1024 ? 256 : 128); }

// Blocks for `positions` rows on `device`: at most `blocks_per_sm` per multiprocessor (a block loops over
// positions).
inline int64_t grid_for(int64_t positions, int device, int blocks_per_sm) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max<int64_t>(1, std::min<int64_t>(positions, int64_t(std::max(sms, 1)) * blocks_per_sm));
}

}  // namespace cuda
}  // namespace edd_ext
