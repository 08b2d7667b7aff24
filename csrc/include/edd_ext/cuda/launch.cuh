// Launch configuration of the block-per-position CUDA kernels: the grid from the occupancy calculator, and
// where a block keeps its per-member scratch (shared memory when it fits, else a global workspace row).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace edd_ext {
namespace cuda {

// Shared memory a block may use without opting in (cudaFuncAttributeMaxDynamicSharedMemorySize).
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// Blocks for `positions` rows of a block-per-position kernel (each block loops over positions): as many as are
// resident on the current device at once with `threads` threads and `dynamic_shared` bytes each (the occupancy
// calculator counts the kernel's registers and static shared memory), at most one per position.
template <typename Kernel>
int64_t resident_grid(Kernel kernel, int threads, size_t dynamic_shared, int64_t positions) {
  int device = 0, sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, dynamic_shared));
  TORCH_CHECK(per_sm > 0, "edd_ext: a kernel cannot run with ", threads, " threads and ", dynamic_shared,
              " bytes of dynamic shared memory per block on device ", device);
  return std::max<int64_t>(1, std::min<int64_t>(positions, int64_t(per_sm) * sms));
}

// Where a block keeps `values` elements of `value_size` bytes of per-position scratch (the members'
// normalisers, 2 M values): in dynamic shared memory when they fit beside the kernel's static shared memory
// within the default 48 KiB, else (large M) in a row of a global workspace per block, so that any M runs.
struct ScratchPlacement {
  size_t shared_bytes;  // dynamic shared memory to launch with (0 when global)
  int64_t global_row;   // elements per block of the global workspace (0 when shared)
};

template <typename Kernel>
ScratchPlacement place_scratch(Kernel kernel, int64_t values, size_t value_size) {
  cudaFuncAttributes attributes;
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attributes, kernel));
  const size_t bytes = value_size * size_t(values);
  if (attributes.sharedSizeBytes + bytes <= kDefaultSharedBytes) return {bytes, 0};
  return {0, values};
}

// The block's scratch row: the global workspace's row of this block, or the dynamic shared memory.
template <typename T>
__device__ __forceinline__ T* block_scratch(T* global_workspace, int64_t global_row, unsigned char* shared) {
  return global_workspace != nullptr ? global_workspace + int64_t(blockIdx.x) * global_row
                                     : reinterpret_cast<T*>(shared);
}

}  // namespace cuda
}  // namespace edd_ext
