// One class's ensemble quantities from a position's teacher logits [M, V] and the members' normalisers, with the
// scalar header math: the float64 kernels and the row tails of the SIMD ones (edd_ext/cpu/teacher_rows.h).
#pragma once

#include <cstdint>

#include "edd_ext/cpu/capability.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {
namespace cpu {
EDD_EXT_CPU_CAPABILITY_NAMESPACE_BEGIN

// The same quantities for one class with the scalar header math (row tails, float64 inputs).
template <typename scalar_t, typename acc_t>
inline math::ClassTerms<acc_t> teacher_class(const scalar_t* row, int64_t k, int64_t members, int64_t vocab,
                                             const acc_t* shift, const acc_t* log_sum, acc_t inv_t, bool smooth,
                                             acc_t log1m_eps, acc_t log_eps_v, acc_t inv_m, acc_t log_m) {
  return math::ensemble_class_terms(row, k, members, vocab, shift, log_sum, inv_t, smooth, log1m_eps, log_eps_v, inv_m,
                                    log_m);
}

// One position's class pass of the ensemble statistics with the scalar math of acc_t (float64 inputs), after
// the member normalisers shift / log_sum: the five measures summed in float64 into `measures`, each class's
// terms handed to on_class(k, const math::ClassTerms<acc_t>&) (teacher_rows.h, teacher_class_pass, is the
// float32 SIMD form).
template <typename scalar_t, typename acc_t, typename OnClass>
void teacher_class_pass_scalar(const scalar_t* row, int64_t members, int64_t vocab, const acc_t* shift,
                               const acc_t* log_sum, acc_t inv_t, bool smooth, acc_t log1m_eps, acc_t log_eps_v,
                               acc_t inv_m, acc_t log_m, double* measures, OnClass&& on_class) {
  for (int i = 0; i < math::kNumMeasures; ++i) measures[i] = 0;
  for (int64_t k = 0; k < vocab; ++k) {
    const math::ClassTerms<acc_t> t = teacher_class<scalar_t, acc_t>(row, k, members, vocab, shift, log_sum, inv_t,
                                                                     smooth, log1m_eps, log_eps_v, inv_m, log_m);
    for (int i = 0; i < math::kNumMeasures; ++i) measures[i] += double(t.measure[i]);
    on_class(k, t);
  }
}

EDD_EXT_CPU_CAPABILITY_NAMESPACE_END
}  // namespace cpu
}  // namespace edd_ext
