// SIMD building blocks of the CPU loss kernels: kLanes classes at a time, in float32, each block the
// vector transcription of a per-class function of the header math (dirichlet_math.h, logit_math.h) with the
// same operations in the same order (the build does not contract a * b + c into FMAs), so that a kernel's
// SIMD body and its scalar tail differ only by the vector special functions' rounding (vec_special.h).
// Row sums are accumulated in double (ChunkedSum); the per-position scalars stay float64 as in the scalar
// kernels. Used for float32/float16/bfloat16 students and teachers; float64 keeps the scalar path.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/simd_limits.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/cpu/vec_special.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {

// ---- the student's rows as float32 ----
// The SIMD loss kernels' per-position bodies take the student rows and write the gradient rows as float32, so
// that each is compiled once per teacher dtype rather than once per (student, teacher) pair: a float32 student's
// rows are used in place; a float16 / bfloat16 one is widened into a scratch row (exact), and its gradient is
// computed into a scratch row and rounded to the student's dtype afterwards (the same single rounding as a
// direct store).
template <typename student_t>
const float* float_row(const student_t* row, int64_t vocab, float* scratch) {
  if constexpr (std::is_same_v<student_t, float>) {
    return row;
  } else {
    const int64_t body = vocab - vocab % kLanes;
    for (int64_t k = 0; k < body; k += kLanes) load_float(row + k).store(scratch + k);
    for (int64_t k = body; k < vocab; ++k) scratch[k] = float(row[k]);
    return scratch;
  }
}

// Where the body writes a gradient row (nullptr: no gradient).
template <typename student_t>
float* float_grad_row(student_t* grad, float* scratch) {
  if constexpr (std::is_same_v<student_t, float>) {
    return grad;
  } else {
    return grad != nullptr ? scratch : nullptr;
  }
}

// Rounds a gradient row written by float_grad_row into the student's dtype.
template <typename student_t>
void store_grad_row(const float* row, student_t* grad, int64_t vocab) {
  if constexpr (!std::is_same_v<student_t, float>) {
    if (grad != nullptr) {
      for (int64_t k = 0; k < vocab; ++k) grad[k] = student_t(row[k]);
    }
  }
}

// Scratch rows for float_row / float_grad_row: `vocab` floats unless the student is float32.
template <typename student_t>
std::vector<float> student_scratch(int64_t vocab) {
  return std::vector<float>(std::is_same_v<student_t, float> ? 0 : vocab);
}

// e_k = exp(z_k) of a student row into `excess` (float32), and alpha_0 = sum_k e_k + c V summed in double
// (as cpu::student_precision; 64 x kLanes terms of at most e^80 fit float32 before each flush).
inline double student_excess_row(const float* z, int64_t vocab, double c, float* excess) {
  const int64_t body = vocab - vocab % kLanes;
  ChunkedSum sum;
  for (int64_t k = 0; k < body; k += kLanes) {
    const VecF e = exp_fast(load_float(z + k));
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

// ---- EnD^2 (dirichlet_nll_class) ----
struct NllConsts {
  VecF c, c_minus_one, digamma_alpha0;
};

EDD_CPU_INLINE void dirichlet_nll_block(const VecF& e, const VecF& mean_log_prob, const NllConsts& k, VecF& loss,
                                VecF& grad) {
  const VecF alpha = e + k.c;
  const VecGamma g = gamma_terms<true, true, false>(alpha);
  loss = g.lgamma - (e + k.c_minus_one) * mean_log_prob;
  grad = e * g.digamma - e * (k.digamma_alpha0 + mean_log_prob);
  // l = -inf (a member gives the class probability 0): +inf, as dirichlet_nll_class
  const VecF infinite = mean_log_prob == VecF(-std::numeric_limits<float>::infinity());
  const VecF inf(std::numeric_limits<float>::infinity());
  loss = VecF::blendv(loss, inf, infinite);
  grad = VecF::blendv(grad, inf, infinite);
}

// ---- Proxy-Dirichlet KL (proxy_kl_class) ----
struct ProxyConsts {
  VecF c, c_minus_one, class_precision, target_offset, digamma_alpha0, digamma_beta0, grad_shift, inv_beta0;
};

template <math::ProxyMode kMode>
EDD_CPU_INLINE void proxy_kl_block(const VecF& e, const VecF& mean_prob, const ProxyConsts& k, VecF& loss, VecF& grad) {
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

// ---- EnD baseline (ensemble_kl_class) ----
// The loss alone (the dense kernel takes its gradient q - pi^ from the student's kept exponentials).
EDD_CPU_INLINE VecF ensemble_kl_loss_block(const VecF& z, const VecF& z_max, const VecF& z_log_sum,
                                           const VecF& mean_prob, const VecF& log_mean_prob) {
  const VecF log_q = (z - z_max) - z_log_sum;
  return VecF::blendv(mean_prob * (log_mean_prob - log_q), VecF(0.f), mean_prob == VecF(0.f));
}

EDD_CPU_INLINE void ensemble_kl_block(const VecF& z, const VecF& z_max, const VecF& z_log_sum, const VecF& mean_prob,
                                      const VecF& log_mean_prob, VecF& loss, VecF& grad) {
  loss = ensemble_kl_loss_block(z, z_max, z_log_sum, mean_prob, log_mean_prob);
  grad = exp_fast((z - z_max) - z_log_sum) - mean_prob;
}

// ---- Logit-space losses (gaussian_class, laplace_class) ----
// Per-member normalisers of the targets x_mk = (u_mk / T - shift_m) - offset_m for every teacher_norm
// (the SIMD form of loss_rows.h, scalar_target_normalizers): log_softmax through member_normalizers; center
// sums u / T in double.
template <typename teacher_t>
void target_normalizers(const teacher_t* row, int64_t members, int64_t vocab, float inv_t, math::TeacherNorm norm,
                        float* shift, float* offset) {
  if (norm == math::TeacherNorm::kLogSoftmax) return member_normalizers(row, members, vocab, inv_t, shift, offset);
  const int64_t body = vocab - vocab % kLanes;
  for (int64_t m = 0; m < members; ++m) {
    offset[m] = 0.f;
    shift[m] = 0.f;
    if (norm != math::TeacherNorm::kCenter) continue;
    // the mean of the logits other than -inf (math::finite_mean)
    const teacher_t* u = row + m * vocab;
    const VecF neg_inf(-std::numeric_limits<float>::infinity()), zero(0.f), one(1.f);
    ChunkedSum sum, count;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF x = load_float(u + k) * VecF(inv_t);
      const VecF skip = x == neg_inf;
      sum.push(VecF::blendv(x, zero, skip));
      count.push(VecF::blendv(one, zero, skip));
    }
    double total = sum.result(), finite = count.result();
    for (int64_t k = body; k < vocab; ++k) {
      const float x = float(u[k]) * inv_t;
      if (x != math::neg_inf<float>()) {
        total += double(x);
        finite += 1.0;
      }
    }
    shift[m] = float(math::finite_mean(total, finite));
  }
}

template <typename teacher_t>
EDD_CPU_INLINE VecF target_block(const teacher_t* row, int64_t m, int64_t k, int64_t vocab, float inv_t, const float* shift,
                         const float* offset) {
  return (load_float(row + m * vocab + k) * VecF(inv_t) - VecF(shift[m])) - VecF(offset[m]);
}

struct ScaleBlock {
  VecF log_scale, inv_scale, ratio;
};

// student_scale: s = exp(rho) + s_min in log space (s_min = 0: one exponential).
EDD_CPU_INLINE ScaleBlock scale_block(const VecF& rho, float log_min_scale, bool no_min_scale) {
  ScaleBlock s;
  if (no_min_scale) {
    s.log_scale = rho;
    s.inv_scale = exp_fast(rho.neg());
    s.ratio = VecF(1.f);
    return s;
  }
  s.log_scale = logaddexp(rho, VecF(log_min_scale));
  s.inv_scale = exp_fast(s.log_scale.neg());
  s.ratio = exp_fast(rho - s.log_scale);
  return s;
}

struct LocScaleBlock {
  VecF loss, grad_loc, grad_log_scale;
};

// Gaussian: the members' targets in centred form around member 0 (CentredMoments), then gaussian_class.
template <typename teacher_t>
EDD_CPU_INLINE LocScaleBlock gaussian_block(const teacher_t* row, int64_t k, int64_t members, int64_t vocab, float inv_t,
                                    const float* shift, const float* offset, const VecF& mu, const ScaleBlock& s,
                                    float inv_members) {
  const VecF pivot = target_block(row, 0, k, vocab, inv_t, shift, offset);
  VecF sum_d(0.f), lowest = pivot;
  for (int64_t m = 1; m < members; ++m) {
    const VecF x = target_block(row, m, k, vocab, inv_t, shift, offset);
    sum_d = sum_d + (x - pivot);
    lowest = at::vec::minimum(lowest, x);
  }
  const VecF inv_m(inv_members);
  const VecF mean_d = sum_d * inv_m;
  VecF spread(0.f);
  for (int64_t m = 0; m < members; ++m) {
    const VecF d = (target_block(row, m, k, vocab, inv_t, shift, offset) - pivot) - mean_d;
    spread = spread + d * d;
  }
  const VecF dev = (mu - pivot) - mean_d;
  const VecF inv_var = s.inv_scale * s.inv_scale;
  const VecF v = spread * inv_m + dev * dev;
  const VecF z2 = v * inv_var;
  LocScaleBlock out;
  out.loss = s.log_scale + VecF(math::half_log_2pi<float>()) + VecF(0.5f) * z2;
  out.grad_loc = dev * inv_var;
  out.grad_log_scale = (VecF(1.f) - z2) * s.ratio;
  // a target of -inf: +inf loss, gradients +inf and -inf (as math::gaussian_of)
  const VecF inf(std::numeric_limits<float>::infinity());
  const VecF infinite = lowest == inf.neg();
  out.loss = VecF::blendv(out.loss, inf, infinite);
  out.grad_loc = VecF::blendv(out.grad_loc, inf, infinite);
  out.grad_log_scale = VecF::blendv(out.grad_log_scale, inf.neg(), infinite);
  return out;
}

// Laplace: sum_m |x_m - mu| and sum_m sign(x_m - mu), then laplace_class.
template <typename teacher_t>
EDD_CPU_INLINE LocScaleBlock laplace_block(const teacher_t* row, int64_t k, int64_t members, int64_t vocab, float inv_t,
                                   const float* shift, const float* offset, const VecF& mu, const ScaleBlock& s,
                                   float inv_members) {
  const VecF zero(0.f), one(1.f);
  VecF abs_sum(0.f), sign_sum(0.f);
  for (int64_t m = 0; m < members; ++m) {
    const VecF d = target_block(row, m, k, vocab, inv_t, shift, offset) - mu;
    abs_sum = abs_sum + d.abs();
    sign_sum = sign_sum + (VecF::blendv(zero, one, d > zero) - VecF::blendv(zero, one, d < zero));
  }
  const VecF inv_m(inv_members);
  const VecF a = abs_sum * inv_m;
  const VecF z1 = a * s.inv_scale;
  LocScaleBlock out;
  out.loss = s.log_scale + VecF(math::log_2<float>()) + z1;
  out.grad_loc = sign_sum.neg() * inv_m * s.inv_scale;
  out.grad_log_scale = (one - z1) * s.ratio;
  return out;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
