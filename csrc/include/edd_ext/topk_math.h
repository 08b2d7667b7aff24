// Per-position bookkeeping of the compact top-k statistics (SPEC section 1.1), shared by the CPU and CUDA
// kernels: the order in which classes are listed, and the tail's two numbers.
//
// A position lists the k classes of largest ensemble mean probability pi^, by decreasing pi^ (ties: the smaller
// class first). The V - k others form the tail, summarised by
//   tau    = sum over the tail of pi^ (= 1 - sum of the listed pi^),
//   lambda = (1 / (V - k)) sum over the tail of l- (l- = the members' mean log-probability).
// The kernels sum pi^ and l- over all V classes in one streaming pass and over the listed ones once they are
// known, both in float64, and take the tail as the difference: tau then carries the float64 rounding of the two
// sums (~1e-16), not the float32 rounding of 1 - sum of the listed pi^ (~6e-8), which matters when the listed
// classes hold nearly all the mass.
#pragma once

#include <cstdint>

#include "edd_ext/macros.h"

namespace edd_ext {
namespace math {

// The selection key of a mean probability: itself when positive, else 0 (zero and NaN sort with the smallest;
// mean probabilities are never negative), so that the listing order is a strict weak order even with NaN.
template <typename T>
EDD_HD T selection_key(T mean_prob) {
  return mean_prob > T(0) ? mean_prob : T(0);
}

// Whether class a (mean probability pa) is listed before class b (pb): the larger key first, then the smaller
// class.
template <typename T>
EDD_HD bool listed_before(T pa, int64_t a, T pb, int64_t b) {
  const T ka = selection_key(pa), kb = selection_key(pb);
  return ka > kb || (ka == kb && a < b);
}

// Float64 sums of pi^ and l- over a set of classes; the classes with l- = -inf (a member gives them probability
// 0) are counted apart, so that one among the listed classes does not turn the tail's mean into -inf - -inf.
// The fields are an array so that the CUDA kernels reduce them with one block_sum.
struct ClassSums {
  static constexpr int kProb = 0, kLogProb = 1, kNegInf = 2, kSize = 3;
  double v[kSize] = {0, 0, 0};

  EDD_HD void push(double mean_prob, double mean_log_prob) {
    v[kProb] += mean_prob;
    if (mean_log_prob == neg_inf<double>()) {
      v[kNegInf] += 1;
    } else {
      v[kLogProb] += mean_log_prob;
    }
  }
};

// The tail's tau and lambda from the sums over all V classes and over the k listed ones: tau clamped at 0
// against rounding; lambda = -inf when a tail class has l- = -inf; both 0 when k = V (no tail).
template <typename T>
EDD_HD void tail_of(const ClassSums& all, const ClassSums& listed, int64_t vocab, int64_t k, T* tail_mass,
                    T* tail_mean_log_prob) {
  if (k >= vocab) {
    *tail_mass = T(0);
    *tail_mean_log_prob = T(0);
    return;
  }
  const double mass = all.v[ClassSums::kProb] - listed.v[ClassSums::kProb];
  *tail_mass = T(mass > 0.0 || mass != mass ? mass : 0.0);  // NaN propagates
  if (all.v[ClassSums::kNegInf] > listed.v[ClassSums::kNegInf]) {
    *tail_mean_log_prob = neg_inf<T>();
  } else {
    *tail_mean_log_prob = T((all.v[ClassSums::kLogProb] - listed.v[ClassSums::kLogProb]) / double(vocab - k));
  }
}

// The per-class value a tail class takes in the losses: pi^_j = tau / (V - k) (0 when k = V).
EDD_HD double tail_class_mean_prob(double tail_mass, int64_t vocab, int64_t k) {
  return k < vocab ? tail_mass / double(vocab - k) : 0.0;
}

}  // namespace math
}  // namespace edd_ext
