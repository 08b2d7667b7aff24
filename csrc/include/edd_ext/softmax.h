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

// Streaming log-sum-exp: a running maximum and the sum of exp(x - max), merged pairwise for
// parallel reductions (the "online softmax" normaliser).
template <typename T>
struct OnlineLogSumExp {
  T max = neg_inf<T>();
  T sum = T(0);

  EDD_HD void push(T x) {
    if (x > max) {
      sum = sum * exp_(max - x) + T(1);
      max = x;
    } else {
      sum += exp_(x - max);
    }
  }

  EDD_HD void merge(T other_max, T other_sum) {
    if (other_max == neg_inf<T>()) return;
    if (other_max > max) {
      sum = sum * exp_(max - other_max) + other_sum;
      max = other_max;
    } else {
      sum += other_sum * exp_(other_max - max);
    }
  }

  EDD_HD T result() const { return max + log_(sum); }
};

}  // namespace math
}  // namespace edd_ext
