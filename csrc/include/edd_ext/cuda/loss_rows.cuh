// Block-per-position building blocks of the distillation-loss CUDA kernels: the members' normalisers of one
// position's teacher logits, the student's precision, zeroing a masked position's gradient row, the mean's
// gradient factor, and the launch configuration.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/cuda/launch.cuh"
#include "edd_ext/logit_math.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cuda {

// Shared scratch of the block reductions used by the loss kernels.
template <typename acc_t>
struct LossScratch {
  LogSumExpScratch<acc_t, double> lse;
  double sums[2 * kMaxWarps];
};

// A teacher row's streaming log-sum-exp: exponentials in acc_t, the running sum in float64 (as on the CPU).
template <typename acc_t>
using RowLogSumExp = math::OnlineLogSumExp<acc_t, double>;

// Per-member normalisers of one position's logits u [M, V] into the block's scratch (shift[m], offset[m]), so
// that the targets are x_mk = (u_mk / T - shift_m) - offset_m (the three modes: scalar_target_normalizers in
// edd_ext/cpu/loss_rows.h; "center" averages the logits other than -inf, so that a -inf logit is a target of -inf
// under every mode).
// Every thread of the block must call it; the results are visible to all threads on return.
template <typename teacher_t, typename acc_t>
__device__ void block_target_normalizers(const teacher_t* __restrict__ row, int64_t members, int64_t vocab, acc_t inv_t,
                                         math::TeacherNorm norm, acc_t* shift, acc_t* offset,
                                         LossScratch<acc_t>& scratch) {
  for (int64_t m = 0; m < members; ++m) {
    const teacher_t* u = row + m * vocab;
    if (norm == math::TeacherNorm::kLogSoftmax) {
      RowLogSumExp<acc_t> acc;
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) acc.push(acc_t(u[k]) * inv_t);
      const RowLogSumExp<acc_t> total = block_logsumexp(acc, scratch.lse);
      if (threadIdx.x == 0) {
        shift[m] = total.max;
        offset[m] = acc_t(::log(total.sum));
      }
    } else if (norm == math::TeacherNorm::kCenter) {
      double sum[2] = {0, 0};  // the logits other than -inf over T, and their count
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
        const acc_t x = acc_t(u[k]) * inv_t;
        if (x != math::neg_inf<acc_t>()) {
          sum[0] += double(x);
          sum[1] += 1.0;
        }
      }
      block_sum(sum, scratch.sums);
      if (threadIdx.x == 0) {
        shift[m] = acc_t(math::finite_mean(sum[0], sum[1]));
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

// The factor every gradient element is multiplied by before its one rounding to the student dtype: for the
// mean, 1 / (unmasked positions), counted on the device when there is a mask (no host synchronisation); else 1.
// The CPU kernels fold the same factor in (host_grad_scale), so that both round once, alike.
struct GradScale {
  double value = 1.0;
  const double* device = nullptr;  // a float64 scalar on the device, read instead of `value` when set
  __device__ __forceinline__ double get() const { return device != nullptr ? *device : value; }
};

// The problem's gradient factor; `holder` keeps the device scalar alive until the kernel is enqueued.
inline GradScale grad_scale_for(const LossProblem& p, at::Tensor& holder) {
  GradScale s;
  if (p.reduction != Reduction::kMean || !p.compute_grad) return s;
  if (!p.mask.defined()) {
    s.value = 1.0 / double(p.positions > 1 ? p.positions : 1);
    return s;
  }
  holder = unmasked_count(p, at::kDouble).reciprocal();
  s.device = holder.const_data_ptr<double>();
  return s;
}

// Everything a loss kernel launch needs: the grid, the block size, the placement of the members'
// normalisers (2 M values of acc_t) and, when they live in global memory, their workspace.
template <typename acc_t>
struct LossLaunch {
  int64_t blocks = 1;
  int threads = 128;
  ScratchPlacement members{0, 0};
  at::Tensor workspace;  // [blocks, 2 M] acc_t, or undefined

  acc_t* member_workspace() const { return workspace.defined() ? workspace.mutable_data_ptr<acc_t>() : nullptr; }
};

template <typename acc_t, typename Kernel>
LossLaunch<acc_t> loss_launch(Kernel kernel, const LossProblem& p, int64_t members) {
  LossLaunch<acc_t> l;
  l.threads = threads_for(p.vocab);
  l.members = place_scratch(kernel, 2 * members, sizeof(acc_t));
  l.blocks = resident_grid(kernel, l.threads, l.members.shared_bytes, p.positions);
  if (l.members.global_row > 0) {
    l.workspace = at::empty({l.blocks, l.members.global_row},
                            p.student.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  }
  return l;
}

}  // namespace cuda
}  // namespace edd_ext
