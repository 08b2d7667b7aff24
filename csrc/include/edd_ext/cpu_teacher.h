// CPU helpers for reading one position's teacher logits [M, V] and student row [V] in the loss kernels.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "edd_ext/logit_math.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cpu {

// Per-member normalisers of one position's logits u [M, V], so that the targets are
//   x_mk = (u_mk / T - shift_m) - offset_m
// log_softmax: shift = max_k u_mk / T, offset = ln sum_k exp(u_mk / T - shift)  (x = log-probabilities; the
//              maximum is subtracted first so that large logits keep their digits)
// center:      shift = mean_k u_mk / T over the logits other than -inf (summed in float64), offset = 0
// none:        shift = offset = 0
template <typename teacher_t, typename acc_t>
void member_normalisers(const teacher_t* row, int64_t members, int64_t vocab, acc_t inv_t, math::TeacherNorm norm,
                        acc_t* shift, acc_t* offset) {
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

}  // namespace cpu
}  // namespace edd_ext
