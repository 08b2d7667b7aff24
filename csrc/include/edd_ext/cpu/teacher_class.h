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
  math::MemberMoments<acc_t> moments;
  for (int64_t m = 0; m < members; ++m) {
    acc_t l = (acc_t(row[m * vocab + k]) * inv_t - shift[m]) - log_sum[m];
    if (smooth) l = math::smooth_log_prob(l, log1m_eps, log_eps_v);
    moments.push(l);
  }
  return moments.finish(inv_m, log_m);
}

EDD_EXT_CPU_CAPABILITY_NAMESPACE_END
}  // namespace cpu
}  // namespace edd_ext
