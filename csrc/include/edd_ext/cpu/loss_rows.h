// Per-position building blocks of the CPU distillation-loss kernels: the loop over the positions (the
// output pointers, at::parallel_for and a masked position's zero rows), the scalar normalisers of one
// position's teacher logits [M, V] and student row [V], and the allocation advice for the gradient rows.
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

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

// Zeroes a masked position's gradient row (when gradients are computed).
template <typename T>
void zero_row(T* row, int64_t vocab) {
  if (row == nullptr) return;
  for (int64_t k = 0; k < vocab; ++k) row[k] = T(0);
}

// The loss kernels' handling of a masked position n: true (the caller skips it) after writing its exact-zero
// loss and zeroing its gradient rows (each may be nullptr); false for an unmasked position.
template <typename acc_t, typename... Rows>
bool skip_masked(const bool* mask, int64_t n, acc_t* loss, int64_t vocab, Rows*... rows) {
  if (mask == nullptr || mask[n]) return false;
  loss[n] = acc_t(0);
  (zero_row(rows, vocab), ...);
  return true;
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

// Positions per parallel task: about 32k teacher elements.
inline int64_t grain_for(int64_t members, int64_t vocab) {
  const int64_t work = (members > 0 ? members : 1) * vocab;
  return work >= 32768 ? 1 : 32768 / work;
}

// The gradient rows of one position: w.r.t. the student (loc for the logit losses) and, for the logit losses,
// w.r.t. log_scale; nullptr where the op computes no gradient (or the loss has no log_scale).
template <typename student_t>
struct GradRows {
  student_t* student;
  student_t* log_scale;
};

// The position loop of every CPU loss kernel: one task per grain_for(members, vocab) positions; each task
// makes its own scratch (`make_scratch()`, called once per task); every masked position gets its zero loss
// and gradient rows (skip_masked), and every other position n gets loss[n] = acc_t(body(n, scratch, rows)),
// the body writing the gradient rows itself (when they are not nullptr).
template <typename acc_t, typename student_t, typename MakeScratch, typename Body>
void for_each_position(const LossProblem& p, MakeScratch&& make_scratch, Body&& body) {
  const int64_t vocab = p.vocab;
  const bool* mask = p.mask_data();
  acc_t* loss = p.loss.mutable_data_ptr<acc_t>();
  student_t* grad = p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr;
  student_t* grad_log_scale =
      p.compute_grad && p.grad_log_scale.defined() ? p.grad_log_scale.mutable_data_ptr<student_t>() : nullptr;
  at::parallel_for(0, p.positions, grain_for(p.members, vocab), [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t n = begin; n < end; ++n) {
      const GradRows<student_t> rows{grad != nullptr ? grad + n * vocab : nullptr,
                                     grad_log_scale != nullptr ? grad_log_scale + n * vocab : nullptr};
      if (skip_masked(mask, n, loss, vocab, rows.student, rows.log_scale)) continue;
      loss[n] = acc_t(body(n, scratch, rows));
    }
  });
}

}  // namespace cpu
}  // namespace edd_ext
