// The CPU loss kernels' view of a problem (raw pointers and sizes, built from a LossProblem by loss_rows.h) and
// their loop over a chunk of positions: every masked position gets its exact-zero loss and gradient rows, every
// other one the kernel's body. Light (no torch tensor headers): shared by the scalar kernels, compiled once, and
// the per-capability SIMD kernels (csrc/cpu/simd/), whose copies of the templates below live in their own
// capability's namespace.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "edd_ext/cpu/capability.h"

namespace edd_ext {
namespace cpu {

struct LossView {
  const void* student = nullptr;          // [N, V] (loc for the logit losses)
  const void* log_scale = nullptr;        // [N, V] (logit losses only)
  const void* teacher_logits = nullptr;   // [N, M, V], or nullptr
  const void* teacher_rows = nullptr;     // [N, V] (mean_probs or mean_log_probs), or nullptr
  const double* teacher_measure = nullptr;  // [N] (RMI or EPKL), or nullptr
  const bool* mask = nullptr;             // [N], or nullptr
  void* loss = nullptr;                   // [N] in the compute type (float32, float64 for float64 inputs)
  void* grad = nullptr;                   // [N, V] in the student's dtype, or nullptr (no gradient)
  void* grad_log_scale = nullptr;         // [N, V], or nullptr
  int64_t positions = 0, members = 0, vocab = 0;
  c10::ScalarType student_type = c10::ScalarType::Float, teacher_type = c10::ScalarType::Float;
  // factor folded into every gradient element: 1 / (unmasked positions) for the mean, else 1
  double grad_scale = 1.0;

  template <typename T>
  const T* student_data() const { return static_cast<const T*>(student); }
  template <typename T>
  const T* log_scale_data() const { return static_cast<const T*>(log_scale); }
  template <typename T>
  const T* teacher_logits_data() const { return static_cast<const T*>(teacher_logits); }
  template <typename T>
  const T* teacher_rows_data() const { return static_cast<const T*>(teacher_rows); }
};

EDD_EXT_CPU_CAPABILITY_NAMESPACE_BEGIN

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

// The gradient rows of one position: w.r.t. the student (loc for the logit losses) and, for the logit losses,
// w.r.t. log_scale; nullptr where the op computes no gradient (or the loss has no log_scale).
template <typename student_t>
struct GradRows {
  student_t* student;
  student_t* log_scale;
};

// The positions [begin, end) of one chunk: `make_scratch()` once, then every masked position gets its zero
// loss and gradient rows (skip_masked), and every other position n gets loss[n] = acc_t(body(n, scratch,
// rows)), the body writing the gradient rows itself (when they are not nullptr).
template <typename acc_t, typename student_t, typename MakeScratch, typename Body>
void position_range(const LossView& v, int64_t begin, int64_t end, MakeScratch&& make_scratch, Body&& body) {
  const int64_t vocab = v.vocab;
  acc_t* loss = static_cast<acc_t*>(v.loss);
  student_t* grad = static_cast<student_t*>(v.grad);
  student_t* grad_log_scale = static_cast<student_t*>(v.grad_log_scale);
  auto scratch = make_scratch();
  for (int64_t n = begin; n < end; ++n) {
    const GradRows<student_t> rows{grad != nullptr ? grad + n * vocab : nullptr,
                                   grad_log_scale != nullptr ? grad_log_scale + n * vocab : nullptr};
    if (skip_masked(v.mask, n, loss, vocab, rows.student, rows.log_scale)) continue;
    loss[n] = acc_t(body(n, scratch, rows));
  }
}

// Positions per parallel chunk: about 32k teacher elements.
inline int64_t grain_for(int64_t members, int64_t vocab) {
  const int64_t work = (members > 0 ? members : 1) * vocab;
  return work >= 32768 ? 1 : 32768 / work;
}

EDD_EXT_CPU_CAPABILITY_NAMESPACE_END
}  // namespace cpu
}  // namespace edd_ext
