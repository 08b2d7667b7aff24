// The Monte-Carlo kernel of the logit-distribution uncertainty (SPEC section 3; the op, with its checks, is
// csrc/cpu/student_uncertainty.cpp), for float32 math (compiled once per CPU capability:
// csrc/cpu/simd/student_uncertainty.cpp) and float64 math (the op file). Per position, samples are taken four at
// a time, the four that one Philox call per class gives (edd_ext/philox.h). For each group the kernel
//   1. draws the group's noise once and writes its four rows y_j = (mu + s eps_j) / T into a per-thread [4, V]
//      workspace (straight-line integer/float code that the compiler vectorises for the capability);
//   2. per row: max, e = exp(y - max), the sum and ln-sum-exp;
//   3. adds every class's log-probability l = y - lse and probability p = e / sum to its running sums
//      (sum p, sum l, sum p l), which `MemberMoments::finish` (edd_ext/ensemble_math.h) turns into the
//      class's share of the five ensemble measures at the end.
// So each (sample, class) noise value is drawn exactly once and memory stays O(V) per thread; the CUDA kernel
// regenerates the same numbers in each of its passes instead. Row sums are accumulated in float64. Nothing is
// contracted into FMAs, so every capability's build rounds exactly like the baseline: a seed gives the same bits
// on any CPU.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "edd_ext/cpu/capability.h"
#include "edd_ext/cpu/kernels.h"
#include "edd_ext/ensemble_math.h"
#include "edd_ext/philox.h"
#include "edd_ext/student_math.h"

namespace edd_ext {
namespace cpu {
EDD_EXT_CPU_CAPABILITY_NAMESPACE_BEGIN

using math::Family;

// Rows y_j[k] = a[k] + b[k] eps_j[k] of the four samples of group `group`.
template <Family kFamily, typename acc_t>
inline void draw_group(const philox::Stream& stream, uint32_t group, const acc_t* __restrict a,
                               const acc_t* __restrict b, acc_t* __restrict y0, acc_t* __restrict y1,
                               acc_t* __restrict y2, acc_t* __restrict y3, int64_t vocab) {
  for (int64_t k = 0; k < vocab; ++k) {
    const math::Noise4 e = math::noise4<kFamily>(stream.bits(uint32_t(k), group));
    y0[k] = math::sample_rn(a[k], b[k], e.e0);
    y1[k] = math::sample_rn(a[k], b[k], e.e1);
    y2[k] = math::sample_rn(a[k], b[k], e.e2);
    y3[k] = math::sample_rn(a[k], b[k], e.e3);
  }
}

// The largest element of a row. Floats through integer keys that order like them (the sign-magnitude bit
// pattern folded into two's complement), because an integer max reduction vectorises and a float one, with
// its NaN rules, does not. A positive NaN is the largest key (and makes the row NaN); a negative one is
// skipped and reaches the results through the log-probabilities.
inline float row_max(const float* __restrict y, int64_t vocab) {
  int32_t m = std::numeric_limits<int32_t>::min();
  for (int64_t k = 0; k < vocab; ++k) {
    const int32_t b = int32_t(math::float_bits(y[k]));
    const int32_t key = b ^ ((b >> 31) & 0x7fffffff);
    m = key > m ? key : m;
  }
  return math::bits_float(uint32_t(m ^ ((m >> 31) & 0x7fffffff)));
}

inline double row_max(const double* __restrict y, int64_t vocab) {
  double m = y[0];
  for (int64_t k = 1; k < vocab; ++k) m = math::larger(m, y[k]);
  return m;
}

// e = exp(y - max y); returns ln sum exp(y) and 1 / sum exp(y - max). The sum runs in eight lanes (that
// vectorise) combined in float64.
template <typename acc_t>
inline void softmax_row(const acc_t* __restrict y, acc_t* __restrict e, int64_t vocab, acc_t& lse,
                                     acc_t& inv_sum) {
  const acc_t mx = row_max(y, vocab);
  for (int64_t k = 0; k < vocab; ++k) e[k] = math::exp_sample(y[k] - mx);
  constexpr int kLanes = 8;
  acc_t s[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= vocab; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) s[l] += e[k + l];
  }
  double sum = 0;
  for (; k < vocab; ++k) sum += double(e[k]);
  for (int l = 0; l < kLanes; ++l) sum += double(s[l]);
  lse = mx + acc_t(std::log(sum));
  inv_sum = acc_t(1.0 / sum);
}

// Running per-class sums over samples: sum p, sum l, sum p l, for the first `kRows` rows of a group.
template <int kRows, typename acc_t>
inline void accumulate_rows(const acc_t* __restrict y0, const acc_t* __restrict y1, const acc_t* __restrict y2,
                     const acc_t* __restrict y3, const acc_t* __restrict e0, const acc_t* __restrict e1,
                     const acc_t* __restrict e2, const acc_t* __restrict e3, const acc_t (&lse)[4],
                     const acc_t (&inv_sum)[4], acc_t* __restrict sum_p, acc_t* __restrict sum_l,
                     acc_t* __restrict sum_pl, int64_t vocab) {
  for (int64_t k = 0; k < vocab; ++k) {
    const acc_t l0 = y0[k] - lse[0], p0 = e0[k] * inv_sum[0];
    acc_t sp = p0, sl = l0, spl = p0 * l0;
    if (kRows > 1) {
      const acc_t l1 = y1[k] - lse[1], p1 = e1[k] * inv_sum[1];
      sp += p1, sl += l1, spl += p1 * l1;
    }
    if (kRows > 2) {
      const acc_t l2 = y2[k] - lse[2], p2 = e2[k] * inv_sum[2];
      sp += p2, sl += l2, spl += p2 * l2;
    }
    if (kRows > 3) {
      const acc_t l3 = y3[k] - lse[3], p3 = e3[k] * inv_sum[3];
      sp += p3, sl += l3, spl += p3 * l3;
    }
    sum_p[k] += sp;
    sum_l[k] += sl;
    sum_pl[k] += spl;
  }
}

template <typename acc_t>
inline void accumulate(int rows, acc_t* const (&y)[4], acc_t* const (&e)[4], const acc_t (&lse)[4],
                                    const acc_t (&inv_sum)[4], acc_t* sum_p, acc_t* sum_l, acc_t* sum_pl,
                                    int64_t vocab) {
#define EDD_ACCUMULATE(ROWS)                                                                                    \
  accumulate_rows<ROWS, acc_t>(y[0], y[1], y[2], y[3], e[0], e[1], e[2], e[3], lse, inv_sum, sum_p, sum_l, sum_pl, \
                               vocab)
  switch (rows) {
    case 1: EDD_ACCUMULATE(1); break;
    case 2: EDD_ACCUMULATE(2); break;
    case 3: EDD_ACCUMULATE(3); break;
    default: EDD_ACCUMULATE(4); break;
  }
#undef EDD_ACCUMULATE
}

// In place: rho -> s / T = (exp(rho) + min_scale) / T.
template <typename acc_t>
inline void scales(acc_t* __restrict b, int64_t vocab, acc_t min_scale, acc_t inv_t) {
  for (int64_t k = 0; k < vocab; ++k) b[k] = math::sample_scale(b[k], min_scale, inv_t);
}

template <typename acc_t>
struct LogitWorkspace {
  explicit LogitWorkspace(int64_t vocab) : buffer(size_t(13 * vocab)) {
    acc_t* ptr = buffer.data();
    a = ptr;
    b = ptr + vocab;
    sum_p = ptr + 2 * vocab;
    sum_l = ptr + 3 * vocab;
    sum_pl = ptr + 4 * vocab;
    for (int j = 0; j < 4; ++j) {
      y[j] = ptr + (5 + 2 * j) * vocab;
      e[j] = ptr + (6 + 2 * j) * vocab;
    }
  }
  std::vector<acc_t> buffer;
  acc_t *a, *b, *sum_p, *sum_l, *sum_pl;
  acc_t *y[4], *e[4];
};

template <Family kFamily, typename scalar_t, typename acc_t>
void logit_position(const LogitSamplingView& p, int64_t n, const scalar_t* loc, const scalar_t* log_scale,
                    LogitWorkspace<acc_t>& w, acc_t* out) {
  const int64_t vocab = p.vocab;
  const acc_t inv_t = acc_t(p.inv_temperature), min_scale = acc_t(p.min_scale);
  const scalar_t* mu = loc + n * vocab;
  const scalar_t* rho = log_scale + n * vocab;
  for (int64_t k = 0; k < vocab; ++k) {
    w.a[k] = math::sample_location(acc_t(mu[k]), inv_t);
    w.b[k] = acc_t(rho[k]);
    w.sum_p[k] = w.sum_l[k] = w.sum_pl[k] = acc_t(0);
  }
  scales(w.b, vocab, min_scale, inv_t);
  const philox::Stream stream(p.seed, uint64_t(n));
  const int64_t groups = (p.samples + 3) / 4;
  for (int64_t g = 0; g < groups; ++g) {
    draw_group<kFamily, acc_t>(stream, uint32_t(g), w.a, w.b, w.y[0], w.y[1], w.y[2], w.y[3], vocab);
    const int rows = int(std::min<int64_t>(4, p.samples - 4 * g));
    acc_t lse[4] = {0, 0, 0, 0}, inv_sum[4] = {0, 0, 0, 0};
    for (int j = 0; j < rows; ++j) softmax_row(w.y[j], w.e[j], vocab, lse[j], inv_sum[j]);
    accumulate(rows, w.y, w.e, lse, inv_sum, w.sum_p, w.sum_l, w.sum_pl, vocab);
  }
  const acc_t inv_s = acc_t(p.inv_samples), log_s = acc_t(p.log_samples);
  double sums[math::kNumMeasures] = {0, 0, 0, 0, 0};
  for (int64_t k = 0; k < vocab; ++k) {
    math::MemberMoments<acc_t> moments;
    moments.sum_p = w.sum_p[k];
    moments.sum_l = w.sum_l[k];
    moments.sum_pl = w.sum_pl[k];
    // Read by `finish` only when every sample's probability underflowed (then p = 0 and any finite ln p
    // gives the same terms): the mean log-probability stands in for the largest one.
    moments.max_l = w.sum_l[k] * inv_s;
    const math::ClassTerms<acc_t> terms = moments.finish(inv_s, log_s);
    for (int i = 0; i < math::kNumMeasures; ++i) sums[i] += double(terms.measure[i]);
  }
  for (int i = 0; i < math::kNumMeasures; ++i) out[n * math::kNumMeasures + i] = acc_t(sums[i]);
}

// The positions [begin, end) of one chunk, with one workspace.
template <Family kFamily, typename scalar_t, typename acc_t>
void logit_positions(const LogitSamplingView& p, int64_t begin, int64_t end) {
  const scalar_t* loc = static_cast<const scalar_t*>(p.loc);
  const scalar_t* log_scale = static_cast<const scalar_t*>(p.log_scale);
  acc_t* out = static_cast<acc_t*>(p.out);
  LogitWorkspace<acc_t> workspace(p.vocab);
  for (int64_t n = begin; n < end; ++n) logit_position<kFamily, scalar_t, acc_t>(p, n, loc, log_scale, workspace, out);
}

EDD_EXT_CPU_CAPABILITY_NAMESPACE_END
}  // namespace cpu
}  // namespace edd_ext
