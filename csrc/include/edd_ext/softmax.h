// Numerically stable log-sum-exp helpers shared by the CPU and CUDA kernels.
#pragma once

#include "edd_ext/macros.h"

namespace edd_ext {
namespace math {

// ln(exp(a) + exp(b)), exact at -inf arguments.
template <typename T>
EDD_HD T logaddexp(T a, T b) {
  const T hi = max_(a, b);
  const T lo = min_(a, b);
  if (hi == neg_inf<T>()) return hi;
  return hi + log1p_(exp_(lo - hi));
}

// The exponential of OnlineLogSumExp unless it is given another.
struct StdExp {
  template <typename T>
  EDD_HD T operator()(T x) const {
    return exp_(x);
  }
};

// Streaming log-sum-exp: a running maximum and the sum of exp(x - max), merged pairwise for
// parallel reductions (the "online softmax" normaliser). The exponentials are taken in T by `Exp`; the running
// sum is kept in S, which may be wider (a long float row keeps its accuracy in double). A -inf element (a
// probability of 0) adds nothing, also before any finite one; NaN propagates.
template <typename T, typename S = T, typename Exp = StdExp>
struct OnlineLogSumExp {
  T max = neg_inf<T>();
  S sum = S(0);

  EDD_HD void push(T x) {
    if (x > max) {
      sum = sum * S(Exp()(max - x)) + S(1);
      max = x;
    } else if (x != neg_inf<T>()) {
      sum += S(Exp()(x - max));
    }
  }

  EDD_HD void merge(T other_max, S other_sum) {
    if (other_max == neg_inf<T>()) return;
    if (other_max > max) {
      sum = sum * S(Exp()(max - other_max)) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * S(Exp()(other_max - max));
    }
  }

  EDD_HD T result() const { return max + T(log_(sum)); }
};

}  // namespace math
}  // namespace edd_ext
