// SIMD building blocks of the CPU loss kernels: kLanes classes at a time, in float32, each block the
// vector transcription of a per-class function of the header math (dirichlet_math.h, logit_math.h) with the
// same operations in the same order (the build does not contract a * b + c into FMAs), so that a kernel's
// SIMD body and its scalar tail differ only by the vector special functions' rounding (vec_special.h).
// Row sums are accumulated in double (ChunkedSum); the per-position scalars stay float64 as in the scalar
// kernels. Used for float32/float16/bfloat16 students and teachers; float64 keeps the scalar path.
#pragma once

#include <cmath>
#include <cstdint>

#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_special.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cpu {

// The smallest model_offset c the SIMD Dirichlet kernels take: below it, alpha = exp(z) + c can underflow
// and the scalar per-class functions switch to their small-argument forms (tiny_concentration), so those
// positions route to the scalar kernels.
constexpr double kMinSimdModelOffset = 1e-6;

// e_k = exp(z_k) of a student row into `excess` (float32), and alpha_0 = sum_k e_k + c V summed in double
// (as cpu::student_precision; 64 x kLanes terms of at most e^80 fit float32 before each flush).
template <typename student_t>
double student_excess_row(const student_t* z, int64_t vocab, double c, float* excess) {
  const int64_t body = vocab - vocab % kLanes;
  ChunkedSum sum;
  for (int64_t k = 0; k < body; k += kLanes) {
    const VecF e = load_float(z + k).exp();
    e.store(excess + k);
    sum.push(e);
  }
  double total = sum.result();
  for (int64_t k = body; k < vocab; ++k) {
    excess[k] = math::exp_(float(z[k]));
    total += double(excess[k]);
  }
  return total + c * double(vocab);
}

// The members' mean log-probability (1/M) sum_m l_mk at kLanes classes (inv_t = 1).
template <typename teacher_t>
inline VecF mean_log_prob_block(const teacher_t* row, int64_t k, int64_t members, int64_t vocab, const float* shift,
                                const float* log_sum, float inv_members) {
  VecF l(0.f);
  for (int64_t m = 0; m < members; ++m) {
    l = l + ((load_float(row + m * vocab + k) - VecF(shift[m])) - VecF(log_sum[m]));
  }
  return l * VecF(inv_members);
}

// ---- EnD^2 (dirichlet_nll_class) ----
struct NllConsts {
  VecF c, c_minus_one, digamma_alpha0;
};

inline void dirichlet_nll_block(const VecF& e, const VecF& mean_log_prob, const NllConsts& k, VecF& loss,
                                VecF& grad) {
  const VecF alpha = e + k.c;
  const VecGamma g = gamma_terms<true, true, false>(alpha);
  loss = g.lgamma - (e + k.c_minus_one) * mean_log_prob;
  grad = e * g.digamma - e * (k.digamma_alpha0 + mean_log_prob);
}

// ---- Proxy-Dirichlet KL (proxy_kl_class) ----
struct ProxyConsts {
  VecF c, c_minus_one, class_precision, target_offset, digamma_alpha0, digamma_beta0, grad_shift, inv_beta0;
};

template <math::ProxyMode kMode>
inline void proxy_kl_block(const VecF& e, const VecF& mean_prob, const ProxyConsts& k, VecF& loss, VecF& grad) {
  const VecF alpha = e + k.c;
  if constexpr (kMode == math::ProxyMode::kForward) {
    const VecF b = k.class_precision * mean_prob + k.target_offset;
    const VecGamma ga = gamma_terms<true, true, false>(alpha);
    const VecGamma gb = gamma_terms<true, true, false>(b);
    loss = ga.lgamma - gb.lgamma + (b - alpha) * (gb.digamma - k.digamma_beta0);
    grad = (e * ga.digamma - e * (gb.digamma + k.grad_shift)) * k.inv_beta0;
  } else {
    const VecGamma ga = gamma_family(alpha);
    const VecF expected_log = ga.digamma - k.digamma_alpha0;
    if constexpr (kMode == math::ProxyMode::kReverse) {
      const VecF b = k.class_precision * mean_prob + k.target_offset;
      const VecF diff = alpha - b;
      loss = lgamma_only(b) - ga.lgamma + diff * expected_log;
      grad = e * (ga.trigamma * diff - k.grad_shift) * k.inv_beta0;
    } else {
      const VecF diff = (e + k.c_minus_one) - k.class_precision * mean_prob;
      loss = expected_log * diff - ga.lgamma;
      grad = e * (ga.trigamma * diff - k.grad_shift) * k.inv_beta0;
    }
  }
}

}  // namespace cpu
}  // namespace edd_ext
