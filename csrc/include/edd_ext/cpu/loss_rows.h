// Per-position building blocks of the CPU distillation-loss ops: the loop over the positions (the view of the
// problem, cpu::parallel_positions, position_range with its masked positions' zero rows) for the scalar kernels
// and the call of a per-capability SIMD kernel (edd_ext/cpu/kernels.h) on every chunk, the scalar normalisers of
// one position's teacher logits [M, V] and student row [V], and the allocation advice for the gradient rows.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "edd_ext/cpu/capability.h"
#include "edd_ext/cpu/loss_view.h"
#include "edd_ext/cpu/parallel.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cpu {

// Per-member normalisers of one position's logits u [M, V] for every teacher_norm, in the scalar math of acc_t
// (float64 inputs and row tails; loss_blocks.h, target_normalizers, is the SIMD float32 form), so that the
// targets are
//   x_mk = (u_mk / T - shift_m) - offset_m
// log_softmax: shift = max_k u_mk / T, offset = ln sum_k exp(u_mk / T - shift)  (x = log-probabilities; the
//              maximum is subtracted first so that large logits keep their digits)
// center:      shift = mean_k u_mk / T over the logits other than -inf (summed in float64), offset = 0
// none:        shift = offset = 0
template <typename teacher_t, typename acc_t>
void scalar_target_normalizers(const teacher_t* row, int64_t members, int64_t vocab, acc_t inv_t,
                               math::TeacherNorm norm, acc_t* shift, acc_t* offset) {
  for (int64_t m = 0; m < members; ++m) {
    const teacher_t* u = row + m * vocab;
    if (norm == math::TeacherNorm::kLogSoftmax) {
      math::OnlineLogSumExp<acc_t, double> acc;
      for (int64_t k = 0; k < vocab; ++k) acc.push(acc_t(u[k]) * inv_t);
      shift[m] = acc.max;
      offset[m] = acc_t(std::log(acc.sum));
    } else if (norm == math::TeacherNorm::kCenter) {
      double sum = 0, finite = 0;  // the logits other than -inf (math::finite_mean)
      for (int64_t k = 0; k < vocab; ++k) {
        const acc_t x = acc_t(u[k]) * inv_t;
        if (x != math::neg_inf<acc_t>()) {
          sum += double(x);
          finite += 1.0;
        }
      }
      shift[m] = acc_t(math::finite_mean(sum, finite));
      offset[m] = acc_t(0);
    } else {
      shift[m] = acc_t(0);
      offset[m] = acc_t(0);
    }
  }
}

// Student precision alpha_0 = sum_k exp(z_k) + c V, summed in float64 (exp(80) V overflows float32).
template <typename student_t, typename acc_t>
double student_precision(const student_t* z, int64_t vocab, double c) {
  double sum = 0;
  for (int64_t k = 0; k < vocab; ++k) sum += double(math::exp_(acc_t(z[k])));
  return sum + c * double(vocab);
}

// Asks the kernel to back a freshly allocated output (the gradient rows, written once by the loss kernels)
// with transparent huge pages where the system leaves that to madvise: a 100 MB gradient then takes ~50
// page faults instead of ~25k. Only whole 2 MiB pages inside the buffer are advised; advice only, so a
// failure (or another OS) changes nothing.
inline void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (data == nullptr || bytes < 2 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// The view of a loss problem that the position loops and the SIMD kernels read.
inline LossView loss_view(const LossProblem& p) {
  LossView v;
  v.student = p.student.const_data_ptr();
  v.log_scale = p.log_scale.defined() ? p.log_scale.const_data_ptr() : nullptr;
  v.teacher_logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr() : nullptr;
  v.teacher_rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr() : nullptr;
  v.teacher_measure = p.teacher_measure.defined() ? p.teacher_measure.const_data_ptr<double>() : nullptr;
  v.mask = p.mask_data();
  v.loss = p.loss.mutable_data_ptr();
  v.grad = p.compute_grad ? p.grad.mutable_data_ptr() : nullptr;
  v.grad_log_scale = p.compute_grad && p.grad_log_scale.defined() ? p.grad_log_scale.mutable_data_ptr() : nullptr;
  v.positions = p.positions;
  v.members = p.members;
  v.vocab = p.vocab;
  v.student_type = p.student.scalar_type();
  v.teacher_type = p.teacher_type();
  v.grad_scale = p.grad_scale;
  return v;
}

// The position loop of every scalar CPU loss kernel: one chunk per grain_for(members, vocab) positions or more,
// in parallel; each chunk makes its own scratch (`make_scratch()`) and runs position_range (edd_ext/cpu/loss_view.h).
template <typename acc_t, typename student_t, typename MakeScratch, typename Body>
void for_each_position(const LossProblem& p, MakeScratch&& make_scratch, Body&& body) {
  const LossView v = loss_view(p);
  parallel_positions(p.positions, grain_for(p.members, p.vocab), [&](int64_t begin, int64_t end) {
    position_range<acc_t, student_t>(v, begin, end, make_scratch, body);
  });
}

// A per-capability SIMD loss kernel (`kernel`, a Kernel<Fn> of edd_ext/cpu/kernels.h) on every chunk of positions,
// in parallel: version(view, args..., begin, end).
template <typename Fn, typename... Args>
void run_simd_kernel(const Kernel<Fn>& kernel, const LossProblem& p, const Args&... args) {
  run_kernel(kernel, p.positions, grain_for(p.members, p.vocab), loss_view(p), args...);
}

}  // namespace cpu
}  // namespace edd_ext
