// Per-class terms of the logit-space distillation losses (SPEC section 2.3), shared by the CPU and CUDA
// kernels.
//
// The student predicts a location mu_k and a log-scale rho_k; the scale is s_k = exp(rho_k) + s_min, taken
// in log space: ln s = logaddexp(rho, ln s_min), so that ds/drho / s = exp(rho - ln s) = (s - s_min) / s is
// in [0, 1] and exact at both ends. The targets are the members' normalised teacher logits x^(m)_k.
#pragma once

#include "edd_ext/macros.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace math {

// How the teacher logits u / T of each member are normalised into the targets x = u / T - shift - offset.
enum class TeacherNorm : int { kLogSoftmax = 0, kCenter = 1, kNone = 2 };

// The shift of teacher_norm "center": the mean of a member's logits over T other than -inf (sum and count of
// those), so that a -inf logit is a target of -inf; 0 when every logit is -inf.
EDD_HD double finite_mean(double sum, double count) { return count > 0 ? sum / count : 0.0; }

template <typename T>
EDD_HD T half_log_2pi() {
  return T(0.91893853320467274178032973640562);
}

template <typename T>
EDD_HD T log_2() {
  return T(0.69314718055994530941723212145818);
}

template <typename T>
struct StudentScale {
  T log_scale;  // ln s
  T inv_scale;  // 1 / s
  T ratio;      // (s - s_min) / s = d ln s / d rho
};

template <typename T>
EDD_HD StudentScale<T> student_scale(T rho, T log_min_scale) {
  StudentScale<T> s;
  if (log_min_scale == neg_inf<T>()) {  // s_min = 0 (the default): s = exp(rho), one exponential
    s.log_scale = rho;
    s.inv_scale = exp_(-rho);
    s.ratio = T(1);
    return s;
  }
  s.log_scale = logaddexp(rho, log_min_scale);
  s.inv_scale = exp_(-s.log_scale);
  s.ratio = exp_(rho - s.log_scale);
  return s;
}

template <typename T>
struct LocScaleLossGrad {
  T loss;
  T grad_loc;
  T grad_log_scale;
};

// Gaussian: with v = (1/M) sum_m (x_m - mu)^2 = spread / M + (mu - x-)^2 in centred form (x- the members'
// mean, spread = sum_m (x_m - x-)^2; the caller accumulates both around a pivot member, see
// `CentredMoments`, so that targets far from zero keep their digits),
//   L_k        = ln s + ln(2 pi) / 2 + v / (2 s^2)
//   dL/dmu_k   = (mu - x-) / s^2
//   dL/drho_k  = (1 - v / s^2) (s - s_min) / s       (d(ln s)/drho = ratio, d(1/s^2)/drho = -2 ratio / s^2)
template <typename T>
EDD_HD LocScaleLossGrad<T> gaussian_class(T rho, T log_min_scale, T dev, T spread, T inv_members) {
  const StudentScale<T> s = student_scale(rho, log_min_scale);
  const T inv_var = s.inv_scale * s.inv_scale;
  const T v = spread * inv_members + dev * dev;
  const T z2 = v * inv_var;
  LocScaleLossGrad<T> out;
  out.loss = s.log_scale + half_log_2pi<T>() + T(0.5) * z2;
  out.grad_loc = dev * inv_var;
  out.grad_log_scale = (T(1) - z2) * s.ratio;
  return out;
}

// The members' targets of one class in centred form around the first member x_0 (a pivot: x_m - x_0 and
// x_0 - mu are small when the targets are close to each other and to mu, and are formed exactly):
//   d_m = x_m - x_0,  d- = (1/M) sum_m d_m,  x- - mu = (x_0 - mu) + d-,  spread = sum_m (d_m - d-)^2.
// Usage: first(x_0); add(x_m) for m >= 1; then mean_offset(); then add_spread(x_m) for every m.
// `lowest` keeps the smallest target: -inf when a member gives the class probability 0 (see gaussian_of).
template <typename T>
struct CentredMoments {
  T pivot = T(0);
  T sum_d = T(0);
  T mean_d = T(0);
  T spread = T(0);
  T lowest = T(0);
  EDD_HD void first(T x0) {
    pivot = x0;
    lowest = x0;
  }
  EDD_HD void add(T x) {
    sum_d += x - pivot;
    lowest = min_(lowest, x);
  }
  EDD_HD void finish_mean(T inv_members) { mean_d = sum_d * inv_members; }
  EDD_HD void add_spread(T x) {
    const T d = (x - pivot) - mean_d;
    spread += d * d;
  }
  // mu - x-
  EDD_HD T loc_minus_mean(T mu) const { return (mu - pivot) - mean_d; }
};

// A Gaussian class with a target of -inf (a teacher logit of -inf: a probability of 0) has an infinite loss; it
// is +inf, and the gradients are their limits, dL/dmu = +inf, dL/drho = -inf (never NaN).
template <typename T>
EDD_HD LocScaleLossGrad<T> gaussian_of(const CentredMoments<T>& c, T rho, T log_min_scale, T mu, T inv_members) {
  if (c.lowest == neg_inf<T>()) return {pos_inf<T>(), pos_inf<T>(), neg_inf<T>()};
  return gaussian_class(rho, log_min_scale, c.loc_minus_mean(mu), c.spread, inv_members);
}

// Laplace: with a = (1/M) sum_m |x_m - mu| and n = sum_m sign(x_m - mu) (accumulated by the caller),
//   L_k        = ln s + ln 2 + a / s
//   dL/dmu_k   = -n / (M s)
//   dL/drho_k  = (1 - a / s) (s - s_min) / s
template <typename T>
EDD_HD LocScaleLossGrad<T> laplace_class(T rho, T log_min_scale, T abs_dev_sum, T sign_sum, T inv_members) {
  const StudentScale<T> s = student_scale(rho, log_min_scale);
  const T a = abs_dev_sum * inv_members;
  const T z1 = a * s.inv_scale;
  LocScaleLossGrad<T> out;
  out.loss = s.log_scale + log_2<T>() + z1;
  out.grad_loc = -sign_sum * inv_members * s.inv_scale;
  out.grad_log_scale = (T(1) - z1) * s.ratio;
  return out;
}

template <typename T>
EDD_HD T sign_of(T x) {
  return T(x > T(0)) - T(x < T(0));
}

// ---- 2.4 ensemble KL ----
//   L_k     = pi^_k (ln pi^_k - log q_k),  q = softmax(z), log q_k = (z_k - max z) - ln sum exp(z - max z)
//   dL/dz_k = q_k - pi^_k
// with 0 ln 0 = 0 (an underflowed or zero pi^_k contributes nothing; NaN still propagates).
template <typename T>
struct KLClass {
  T loss;
  T grad;
};

template <typename T>
EDD_HD KLClass<T> ensemble_kl_class(T z, T z_max, T z_log_sum, T mean_prob, T log_mean_prob) {
  const T log_q = (z - z_max) - z_log_sum;
  KLClass<T> out;
  out.loss = mean_prob == T(0) ? T(0) : mean_prob * (log_mean_prob - log_q);
  out.grad = exp_(log_q) - mean_prob;
  return out;
}

}  // namespace math
}  // namespace edd_ext
