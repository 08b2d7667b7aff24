// Block-per-position building blocks of the distillation-loss CUDA kernels: the members' normalisers of one
// position's teacher logits, zeroing a masked position's gradient row, and the launch configuration.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/logit_math.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cuda {

// Shared scratch of the block reductions used by the loss kernels.
template <typename acc_t>
struct LossScratch {
  acc_t lse[2 * kMaxWarps];
  double sums[2 * kMaxWarps];
};

// Per-member normalisers of one position's logits u [M, V] into shared memory (shift[m], offset[m]), so that
// the targets are x_mk = (u_mk / T - shift_m) - offset_m (the three modes: scalar_target_normalizers in
// edd_ext/cpu/loss_rows.h).
// Every thread of the block must call it; the results are visible to all threads on return.
template <typename teacher_t, typename acc_t>
__device__ void block_target_normalizers(const teacher_t* __restrict__ row, int64_t members, int64_t vocab, acc_t inv_t,
                                         math::TeacherNorm norm, acc_t* shift, acc_t* offset,
                                         LossScratch<acc_t>& scratch) {
  for (int64_t m = 0; m < members; ++m) {
    const teacher_t* u = row + m * vocab;
    if (norm == math::TeacherNorm::kLogSoftmax) {
      math::OnlineLogSumExp<acc_t> acc;
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) acc.push(acc_t(u[k]) * inv_t);
      const math::OnlineLogSumExp<acc_t> total = block_logsumexp(acc, scratch.lse);
      if (threadIdx.x == 0) {
        shift[m] = total.max;
        offset[m] = math::log_(total.sum);
      }
    } else if (norm == math::TeacherNorm::kCenter) {
      double sum[1] = {0};
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) sum[0] += double(acc_t(u[k]) * inv_t);
      block_sum(sum, scratch.sums);
      if (threadIdx.x == 0) {
        shift[m] = acc_t(sum[0] / double(vocab));
        offset[m] = acc_t(0);
      }
    } else if (threadIdx.x == 0) {
      shift[m] = acc_t(0);
      offset[m] = acc_t(0);
    }
  }
  __syncthreads();
}

// Student precision alpha_0 = sum_k exp(z_k) + c V (float64), reduced over the block.
template <typename student_t, typename acc_t>
__device__ double block_student_precision(const student_t* __restrict__ z, int64_t vocab, double c,
                                          LossScratch<acc_t>& scratch) {
  double sum[1] = {0};
  for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) sum[0] += double(math::exp_(acc_t(z[k])));
  block_sum(sum, scratch.sums);
  return sum[0] + c * double(vocab);
}

template <typename T>
__device__ void block_zero_row(T* row, int64_t vocab) {
  if (row == nullptr) return;
  for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) row[k] = T(0);
}

// Dynamic shared memory of the loss kernels: the members' shift and offset (2 M values of acc_t).
inline size_t member_shared_bytes(int64_t members, size_t acc_size) {
  const size_t bytes = 2 * acc_size * size_t(members);
  TORCH_CHECK_VALUE(bytes <= 48 * 1024, "teacher_logits: the CUDA kernels take at most ", 48 * 1024 / (2 * acc_size),
                    " members in [*, M, V], got M = ", members);
  return bytes;
}

// Blocks for `positions` rows: at most a few resident blocks per multiprocessor (a block loops over
// positions), so that per-block scratch rows stay O(V) per block.
inline int64_t loss_blocks(int64_t positions, int device) {
  static int sm_count[64] = {0};
  int& sms = sm_count[device >= 0 && device < 64 ? device : 0];
  if (sms == 0) {
    int value = 0;
    if (cudaDeviceGetAttribute(&value, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || value <= 0) {
      (void)cudaGetLastError();
      value = 80;
    }
    sms = value;
  }
  return std::max<int64_t>(1, std::min<int64_t>(positions, int64_t(sms) * 4));
}

}  // namespace cuda
}  // namespace edd_ext
