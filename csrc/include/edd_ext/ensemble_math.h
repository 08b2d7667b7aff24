// Per-class ensemble statistics (SPEC section 1), shared by the CPU and CUDA kernels.
//
// For one class k of one position, the M members' log-probabilities l_m = u_mk / T - lse_m are pushed
// into `MemberMoments`; `finish` turns their moments into the class's contribution to every measure.
// Each contribution is computed in a form that is non-negative term by term, so that the row sums never
// subtract two large numbers:
//   TU_k   = -p ln p                          (p = mean_m p_m)
//   DU_k   = -E[p_m l_m]
//   MI_k   = -p ln p + E[p_m l_m]             >= 0 (concavity of -x ln x)
//   EPKL_k = E[p_m l_m] - p * E[l_m]          >= 0 (covariance of p_m and l_m = ln p_m)
//   RMI_k  = p (ln p - E[l_m])                >= 0 (Jensen)
// so that MI = TU - DU and EPKL = MI + RMI hold to rounding, and identical members give exactly 0.
// A log-probability of -inf (a teacher logit of -inf) is a probability of exactly 0, and every product with a
// zero probability is 0 (0 ln 0 = 0, `xmul`): a class that every member gives probability 0 adds nothing; one
// that some members give 0 and others do not makes EPKL and RMI +inf (an infinite KL between those members,
// the limit), while TU, DU and MI stay finite.
#pragma once

#include "edd_ext/macros.h"
#include "edd_ext/softmax.h"

namespace edd_ext {
namespace math {

constexpr int kNumMeasures = 5;  // total, data, mutual_information, epkl, rmi (edd_ext/types.py order)

// Central label smoothing in log space: ln((1 - eps) exp(l) + eps / V).
template <typename T>
EDD_HD T smooth_log_prob(T log_prob, T log1m_eps, T log_eps_over_v) {
  return logaddexp(log_prob + log1m_eps, log_eps_over_v);
}

// A term that is >= 0 mathematically: rounding below zero is clamped, NaN propagates.
template <typename T>
EDD_HD T clamp_rounding(T x) {
  return x < T(0) ? T(0) : x;
}

// p x with 0 x = 0 for every x (-inf included); NaN in p propagates.
template <typename T>
EDD_HD T xmul(T p, T x) {
  return p == T(0) ? T(0) : p * x;
}

template <typename T>
struct ClassTerms {
  T mean_prob;      // p
  T mean_log_prob;  // E[l_m]
  T measure[kNumMeasures];
};

template <typename T>
struct MemberMoments {
  T sum_p = T(0);
  T sum_l = T(0);
  T sum_pl = T(0);
  T max_l = neg_inf<T>();

  EDD_HD void push(T log_prob) {
    const T p = exp_(log_prob);
    sum_p += p;
    sum_l += log_prob;
    sum_pl += xmul(p, log_prob);  // p -> 0 faster than l -> -inf: 0 for underflowed p and for l = -inf
    max_l = max_(max_l, log_prob);
  }

  EDD_HD ClassTerms<T> finish(T inv_members, T log_members) const {
    ClassTerms<T> out;
    const T p = sum_p * inv_members;
    const T mean_l = sum_l * inv_members;
    const T mean_pl = sum_pl * inv_members;
    // ln p from the summed probabilities; when they underflow, from the largest member's log-probability
    // (then p ln p is 0 to working precision either way, but RMI's p (ln p - E[l]) stays well defined).
    const T log_p = sum_p > T(0) ? log_(sum_p) - log_members : max_l - log_members;
    const T p_log_p = xmul(p, log_p);
    out.mean_prob = p;
    out.mean_log_prob = mean_l;
    out.measure[0] = -p_log_p;
    out.measure[1] = -mean_pl;
    out.measure[2] = clamp_rounding(mean_pl - p_log_p);
    out.measure[3] = clamp_rounding(mean_pl - xmul(p, mean_l));
    out.measure[4] = clamp_rounding(xmul(p, log_p - mean_l));
    return out;
  }
};

// The terms of class k of one position's logits u [M, V], given each member's normalisers (the maximum `shift`
// and `log_sum` = ln sum_k exp(u / T - shift)): l_m = (u_mk / T - shift_m) - log_sum_m, smoothed in log space
// when asked, pushed into MemberMoments.
template <typename scalar_t, typename T>
EDD_HD ClassTerms<T> ensemble_class_terms(const scalar_t* row, int64_t k, int64_t members, int64_t vocab,
                                          const T* shift, const T* log_sum, T inv_t, bool smooth, T log1m_eps,
                                          T log_eps_over_v, T inv_members, T log_members) {
  MemberMoments<T> moments;
  for (int64_t m = 0; m < members; ++m) {
    T l = (T(row[m * vocab + k]) * inv_t - shift[m]) - log_sum[m];
    if (smooth) l = smooth_log_prob(l, log1m_eps, log_eps_over_v);
    moments.push(l);
  }
  return moments.finish(inv_members, log_members);
}

}  // namespace math
}  // namespace edd_ext
