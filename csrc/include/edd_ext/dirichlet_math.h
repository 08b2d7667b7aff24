// Per-class terms of the Dirichlet distillation losses (SPEC sections 2.1 and 2.2), shared by the CPU and
// CUDA kernels.
//
// Notation: the student's concentrations are alpha_k = e_k + c with e_k = exp(z_k) (c = model_offset), so
// d alpha_k / d z_k = e_k; alpha_0 = sum_k alpha_k. Every per-class function returns the class's
// contribution to the loss (summed over k in float64 by the caller, which adds the per-position alpha_0 /
// beta_0 terms) and the class's gradient dL/dz_k, which needs only per-position scalars computed before the
// class loop (alpha_0, beta_0 and their digamma / trigamma). The per-position scalars are float64: with
// z = 80, exp(z) V overflows float32.
#pragma once

#include "edd_ext/macros.h"
#include "edd_ext/softmax.h"
#include "edd_ext/special_functions.h"

namespace edd_ext {
namespace math {

// Below this concentration, ln Gamma and psi are taken from their leading terms in ln alpha (alpha may have
// underflowed to 0 when c = 0 and z is very negative, while ln alpha = z is exact).
template <typename T>
EDD_HD T tiny_concentration() {
  return T(1e-20);
}

template <typename T>
EDD_HD T euler_gamma() {
  return T(0.57721566490153286060651209008240243);
}

// One class of the student: alpha = exp(z) + c, e = exp(z) = d alpha / dz.
template <typename T>
struct StudentConcentration {
  T alpha;
  T excess;  // e = alpha - c
};

template <typename T>
EDD_HD StudentConcentration<T> student_concentration(T z, T c) {
  StudentConcentration<T> a;
  a.excess = exp_(z);
  a.alpha = a.excess + c;
  return a;
}

// ln Gamma(alpha) and e psi(alpha), finite wherever they are mathematically: for alpha below
// tiny_concentration(), ln Gamma(alpha) = -ln alpha - gamma alpha + O(alpha^2) and
// e psi(alpha) = -e / alpha - gamma e + O(e alpha), with ln alpha = logaddexp(z, ln c) and
// e / alpha = exp(z - ln alpha) <= 1, exact where alpha itself underflows.
template <typename T>
struct LogGammaDigamma {
  T lgamma;
  T excess_digamma;  // e psi(alpha)
};

template <typename T>
EDD_HD LogGammaDigamma<T> lgamma_excess_digamma(T z, T log_c, const StudentConcentration<T>& a) {
  LogGammaDigamma<T> out;
  if (a.alpha < tiny_concentration<T>()) {
    const T log_alpha = logaddexp(z, log_c);
    out.lgamma = -log_alpha - euler_gamma<T>() * a.alpha;
    out.excess_digamma = -exp_(z - log_alpha) - euler_gamma<T>() * a.excess;
  } else {
    out.lgamma = lgamma(a.alpha);
    out.excess_digamma = a.excess * digamma(a.alpha);
  }
  return out;
}

// ---- 2.1 EnD^2: Dirichlet negative log-likelihood of the members ----
//   L = sum_k [ lnG(alpha_k) - (alpha_k - 1) l_k ] - lnG(alpha_0)
//   dL/dz_k = e_k (psi(alpha_k) - psi(alpha_0) - l_k)
// (alpha_k - 1) is formed as e_k + (c - 1), exact for small e_k when c = 1.
template <typename T>
struct ClassLossGrad {
  T loss;
  T grad;
};

// A class with l_k = -inf (a member gives it probability 0, no smoothing) has an infinite NLL: its loss term and
// its gradient are +inf (never NaN, whatever alpha_k).
template <typename T>
EDD_HD ClassLossGrad<T> dirichlet_nll_class(T z, T c, T log_c, T c_minus_one, T mean_log_prob, T digamma_alpha0) {
  if (mean_log_prob == neg_inf<T>()) return {pos_inf<T>(), pos_inf<T>()};
  const StudentConcentration<T> a = student_concentration(z, c);
  const LogGammaDigamma<T> g = lgamma_excess_digamma(z, log_c, a);
  ClassLossGrad<T> out;
  out.loss = g.lgamma - (a.excess + c_minus_one) * mean_log_prob;
  out.grad = g.excess_digamma - a.excess * (digamma_alpha0 + mean_log_prob);
  return out;
}

// ---- 2.2 Proxy-Dirichlet KL ----
// Target beta_k = beta^_0 pi^_k + t, beta_0 = beta^_0 + t V, beta^_0 from the ensemble's RMI or EPKL.
enum class ProxyMode : int { kReverse = 0, kForward = 1, kReferenceCompat = 2 };

// beta^_0 = (V - 1) / (2 max(RMI, 0) + eps)  (mkl)   or   (V - 1) / (max(EPKL, 0) + eps)  (epkl),
// clamped to max_precision (<= 0: no clamp). NaN propagates (a broken teacher is never hidden).
EDD_HD double proxy_target_precision(double measure, bool mkl, double vocab, double eps, double max_precision) {
  const double m = measure < 0.0 ? 0.0 : measure;
  double b = (vocab - 1.0) / ((mkl ? 2.0 * m : m) + eps);
  if (max_precision > 0.0 && b > max_precision) b = max_precision;
  return b;
}

// Per-position scalars of the proxy KL, all float64 (alpha_0 may exceed the float32 range).
struct ProxyScalars {
  double alpha0, beta0, inv_beta0;
  double lgamma_alpha0, digamma_alpha0, trigamma_alpha0;
  double lgamma_beta0, digamma_beta0;
  double grad_shift;  // the per-position term of dL/dalpha_k times beta_0 (see proxy_kl_class)
  double loss_shift;  // the per-position term of L times beta_0
};

// alpha0: student precision; target_precision: beta^_0; target_offset: t; mass: sum_k pi^_k (1 for
// normalised teacher probabilities; the compat gradient uses it).
EDD_HD ProxyScalars proxy_scalars(ProxyMode mode, double alpha0, double target_precision, double target_offset,
                                  double vocab, double mass) {
  ProxyScalars s;
  s.alpha0 = alpha0;
  s.beta0 = target_precision + target_offset * vocab;
  s.inv_beta0 = 1.0 / s.beta0;
  s.lgamma_alpha0 = lgamma(alpha0);
  s.digamma_alpha0 = digamma(alpha0);
  s.trigamma_alpha0 = trigamma(alpha0);
  s.lgamma_beta0 = lgamma(s.beta0);
  s.digamma_beta0 = digamma(s.beta0);
  switch (mode) {
    case ProxyMode::kReverse:
      // KL[Dir(a) || Dir(b)] = lnG(a0) - lnG(b0) + sum_k [lnG(b_k) - lnG(a_k) + (a_k - b_k)(psi(a_k) - psi(a0))]
      s.loss_shift = s.lgamma_alpha0 - s.lgamma_beta0;
      s.grad_shift = s.trigamma_alpha0 * (alpha0 - s.beta0);
      break;
    case ProxyMode::kForward:
      // KL[Dir(b) || Dir(a)] = lnG(b0) - lnG(a0) + sum_k [lnG(a_k) - lnG(b_k) + (b_k - a_k)(psi(b_k) - psi(b0))]
      s.loss_shift = s.lgamma_beta0 - s.lgamma_alpha0;
      s.grad_shift = s.digamma_alpha0 - s.digamma_beta0;
      break;
    default:
      // beta_0 L = -beta_0 sum_k pi^_k (psi(a_k) - psi(a0)) - sum_k lnG(a_k) + lnG(a0)
      //            + sum_k (a_k - 1)(psi(a_k) - psi(a0))
      s.loss_shift = s.lgamma_alpha0;
      s.grad_shift = s.trigamma_alpha0 * (alpha0 - vocab - s.beta0 * mass);
      break;
  }
  return s;
}

// One class of beta_0 L and of dL/dz_k (the caller sums `loss`, adds `loss_shift` and divides by beta_0).
//   reverse:  beta_0 L_k      = lnG(b_k) - lnG(a_k) + (a_k - b_k)(psi(a_k) - psi(a0))
//             dL/dz_k         = e_k [psi'(a_k)(a_k - b_k) - psi'(a0)(a0 - b0)] / beta_0
//   forward:  beta_0 L_k      = lnG(a_k) - lnG(b_k) + (b_k - a_k)(psi(b_k) - psi(b0))
//             dL/dz_k         = e_k [psi(a_k) - psi(a0) - psi(b_k) + psi(b0)] / beta_0
//   compat:   beta_0 L_k      = (psi(a_k) - psi(a0))(a_k - 1 - beta_0 pi^_k) - lnG(a_k)
//             dL/dz_k         = e_k [psi'(a_k)(a_k - 1 - beta_0 pi^_k) - psi'(a0)(a0 - V - beta_0 S)] / beta_0
//   (compat: d/da_j of -sum pi^_k(psi(a_k) - psi(a0)) is -pi^_j psi'(a_j) + S psi'(a0), S = sum pi^; of the
//   entropy H = sum lnG(a_k) - lnG(a0) - sum (a_k - 1)(psi(a_k) - psi(a0)) it is
//   -(a_j - 1) psi'(a_j) + (a0 - V) psi'(a0).)
// mean_prob: pi^_k; target_precision: beta^_0 (float), target_offset: t.
template <typename T>
EDD_HD ClassLossGrad<T> proxy_kl_class(ProxyMode mode, T z, T c, T log_c, T mean_prob, T target_precision,
                                       T target_offset, T digamma_alpha0, T digamma_beta0, T grad_shift,
                                       T inv_beta0) {
  const StudentConcentration<T> a = student_concentration(z, c);
  ClassLossGrad<T> out;
  if (mode == ProxyMode::kForward) {
    const T b = target_precision * mean_prob + target_offset;
    const LogGammaDigamma<T> ga = lgamma_excess_digamma(z, log_c, a);
    const T digamma_b = digamma(b);
    out.loss = ga.lgamma - lgamma(b) + (b - a.alpha) * (digamma_b - digamma_beta0);
    out.grad = (ga.excess_digamma - a.excess * (digamma_b + grad_shift)) * inv_beta0;
    return out;
  }
  const GammaFamily<T> ga = gamma_family(a.alpha);
  const T expected_log = ga.digamma - digamma_alpha0;
  if (mode == ProxyMode::kReverse) {
    const T b = target_precision * mean_prob + target_offset;
    const T diff = a.alpha - b;
    out.loss = lgamma(b) - ga.lgamma + diff * expected_log;
    out.grad = a.excess * (ga.trigamma * diff - grad_shift) * inv_beta0;
  } else {
    // the beta_0 pi^_k + 1 of the compat objective's optimum (target_precision here is beta_0)
    const T diff = (a.excess + (c - T(1))) - target_precision * mean_prob;
    out.loss = expected_log * diff - ga.lgamma;
    out.grad = a.excess * (ga.trigamma * diff - grad_shift) * inv_beta0;
  }
  return out;
}

}  // namespace math
}  // namespace edd_ext
