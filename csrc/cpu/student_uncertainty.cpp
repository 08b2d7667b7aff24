// CPU kernels for the uncertainty of a student (SPEC section 3): the Monte-Carlo measures of a Gaussian or
// Laplace distribution over logits (the Dirichlet measures are in dirichlet_uncertainty.cpp).
//
// Logit distribution, per position (a task of at::parallel_for): samples are taken four at a time, the four
// that one Philox call per class gives (edd_ext/philox.h). For each group the kernel
//   1. draws the group's noise once and writes its four rows y_j = (mu + s eps_j) / T into a per-thread [4, V]
//      workspace (vectorised: Philox and the noise transforms are straight-line integer/float code);
//   2. per row: max, e = exp(y - max) (vectorised), the sum and ln-sum-exp;
//   3. adds every class's log-probability l = y - lse and probability p = e / sum to its running sums
//      (sum p, sum l, sum p l), which `MemberMoments::finish` (edd_ext/ensemble_math.h) turns into the
//      class's share of the five ensemble measures at the end.
// So each (sample, class) noise value is drawn exactly once and memory stays O(V) per thread; the CUDA kernel
// regenerates the same numbers in each of its passes instead. Row sums are accumulated in float64.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "edd_ext/student_uncertainty_host.h"

namespace edd_ext {
namespace {

using math::Family;

// The hot row loops are compiled for AVX-512, AVX2 and the x86-64 baseline, picked at load time (GCC target
// clones; elsewhere one baseline build). Without contraction into FMAs every clone rounds exactly like the
// baseline, so a seed gives the same bits on any CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define EDD_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#define EDD_CPU_INLINE inline __attribute__((always_inline))
#else
#define EDD_CPU_CLONES
#define EDD_CPU_INLINE inline
#endif

// max(a, b) as one compare-and-select (maxss); a NaN in `b` is skipped, and reaches the results through the
// log-probabilities instead.
template <typename T>
inline T larger(T a, T b) {
  return b > a ? b : a;
}

// ---------------------------------------------------------------------------------------------------
// Logit distribution
// ---------------------------------------------------------------------------------------------------

// Rows y_j[k] = a[k] + b[k] eps_j[k] of the four samples of group `group`.
template <Family kFamily, typename acc_t>
EDD_CPU_INLINE void draw_group(const philox::Stream& stream, uint32_t group, const acc_t* __restrict a,
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

// The float instances, in target clones (EDD_CPU_CLONES).
EDD_CPU_CLONES void draw_group_gaussian(const philox::Stream& stream, uint32_t group, const float* a, const float* b,
                                        float* y0, float* y1, float* y2, float* y3, int64_t vocab) {
  draw_group<Family::kGaussian, float>(stream, group, a, b, y0, y1, y2, y3, vocab);
}

EDD_CPU_CLONES void draw_group_laplace(const philox::Stream& stream, uint32_t group, const float* a, const float* b,
                                       float* y0, float* y1, float* y2, float* y3, int64_t vocab) {
  draw_group<Family::kLaplace, float>(stream, group, a, b, y0, y1, y2, y3, vocab);
}

template <Family kFamily>
void draw(const philox::Stream& stream, uint32_t group, const float* a, const float* b, float* const (&y)[4],
          int64_t vocab) {
  if (kFamily == Family::kGaussian) {
    draw_group_gaussian(stream, group, a, b, y[0], y[1], y[2], y[3], vocab);
  } else {
    draw_group_laplace(stream, group, a, b, y[0], y[1], y[2], y[3], vocab);
  }
}

template <Family kFamily>
void draw(const philox::Stream& stream, uint32_t group, const double* a, const double* b, double* const (&y)[4],
          int64_t vocab) {
  draw_group<kFamily, double>(stream, group, a, b, y[0], y[1], y[2], y[3], vocab);
}

// The largest element of a row. Floats through integer keys that order like them (the sign-magnitude bit
// pattern folded into two's complement), because an integer max reduction vectorises and a float one, with
// its NaN rules, does not. A positive NaN is the largest key (and makes the row NaN); a negative one is
// skipped and reaches the results through the log-probabilities.
EDD_CPU_INLINE float row_max(const float* __restrict y, int64_t vocab) {
  int32_t m = std::numeric_limits<int32_t>::min();
  for (int64_t k = 0; k < vocab; ++k) {
    const int32_t b = int32_t(math::float_bits(y[k]));
    const int32_t key = b ^ ((b >> 31) & 0x7fffffff);
    m = key > m ? key : m;
  }
  return math::bits_float(uint32_t(m ^ ((m >> 31) & 0x7fffffff)));
}

EDD_CPU_INLINE double row_max(const double* __restrict y, int64_t vocab) {
  double m = y[0];
  for (int64_t k = 1; k < vocab; ++k) m = larger(m, y[k]);
  return m;
}

// e = exp(y - max y); returns ln sum exp(y) and 1 / sum exp(y - max). The sum runs in eight lanes (that
// vectorise) combined in float64.
template <typename acc_t>
EDD_CPU_INLINE void softmax_row_impl(const acc_t* __restrict y, acc_t* __restrict e, int64_t vocab, acc_t& lse,
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

EDD_CPU_CLONES void softmax_row(const float* y, float* e, int64_t vocab, float& lse, float& inv_sum) {
  softmax_row_impl<float>(y, e, vocab, lse, inv_sum);
}

void softmax_row(const double* y, double* e, int64_t vocab, double& lse, double& inv_sum) {
  softmax_row_impl<double>(y, e, vocab, lse, inv_sum);
}

// Running per-class sums over samples: sum p, sum l, sum p l, for the first `kRows` rows of a group.
template <int kRows, typename acc_t>
EDD_CPU_INLINE void accumulate_rows(const acc_t* __restrict y0, const acc_t* __restrict y1, const acc_t* __restrict y2,
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
EDD_CPU_INLINE void accumulate_impl(int rows, acc_t* const (&y)[4], acc_t* const (&e)[4], const acc_t (&lse)[4],
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

EDD_CPU_CLONES void accumulate(int rows, float* const (&y)[4], float* const (&e)[4], const float (&lse)[4],
                               const float (&inv_sum)[4], float* sum_p, float* sum_l, float* sum_pl, int64_t vocab) {
  accumulate_impl<float>(rows, y, e, lse, inv_sum, sum_p, sum_l, sum_pl, vocab);
}

void accumulate(int rows, double* const (&y)[4], double* const (&e)[4], const double (&lse)[4],
                const double (&inv_sum)[4], double* sum_p, double* sum_l, double* sum_pl, int64_t vocab) {
  accumulate_impl<double>(rows, y, e, lse, inv_sum, sum_p, sum_l, sum_pl, vocab);
}

// In place: rho -> s / T = (exp(rho) + min_scale) / T.
template <typename acc_t>
EDD_CPU_INLINE void scales_impl(acc_t* __restrict b, int64_t vocab, acc_t min_scale, acc_t inv_t) {
  for (int64_t k = 0; k < vocab; ++k) b[k] = math::sample_scale(b[k], min_scale, inv_t);
}

EDD_CPU_CLONES void scales(float* b, int64_t vocab, float min_scale, float inv_t) {
  scales_impl<float>(b, vocab, min_scale, inv_t);
}

void scales(double* b, int64_t vocab, double min_scale, double inv_t) { scales_impl<double>(b, vocab, min_scale, inv_t); }

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
void logit_position(const LogitProblem& p, int64_t n, const scalar_t* loc, const scalar_t* log_scale,
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
    draw<kFamily>(stream, uint32_t(g), w.a, w.b, w.y, vocab);
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

template <Family kFamily, typename scalar_t, typename acc_t>
void logit_rows(const LogitProblem& p, const scalar_t* loc, const scalar_t* log_scale, acc_t* out) {
  at::parallel_for(0, p.positions, 1, [&](int64_t begin, int64_t end) {
    LogitWorkspace<acc_t> workspace(p.vocab);
    for (int64_t n = begin; n < end; ++n) {
      logit_position<kFamily, scalar_t, acc_t>(p, n, loc, log_scale, workspace, out);
    }
  });
}

at::Tensor logit_distribution_uncertainty_cpu(const at::Tensor& loc, const at::Tensor& log_scale,
                                              c10::string_view family, int64_t num_samples, int64_t seed,
                                              double temperature, double min_scale) {
  LogitProblem p = make_logit_problem(loc, log_scale, family, num_samples, seed, temperature, min_scale);
  if (p.positions == 0) return p.out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.loc.scalar_type(), "edd_ext::logit_distribution_uncertainty", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* mu = p.loc.const_data_ptr<scalar_t>();
        const scalar_t* rho = p.log_scale.const_data_ptr<scalar_t>();
        acc_t* out = p.out.mutable_data_ptr<acc_t>();
        if (p.family == Family::kGaussian) {
          logit_rows<Family::kGaussian, scalar_t, acc_t>(p, mu, rho, out);
        } else {
          logit_rows<Family::kLaplace, scalar_t, acc_t>(p, mu, rho, out);
        }
      });
  return p.out;
}

// ---------------------------------------------------------------------------------------------------
// Test access to the generator
// ---------------------------------------------------------------------------------------------------

at::Tensor philox4x32_cpu(const at::Tensor& counters, int64_t seed) {
  check_philox_counters(counters);
  const at::Tensor in = counters.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t* c = in.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const uint64_t key = uint64_t(seed);
  for (int64_t i = 0; i < in.numel() / 4; ++i) {
    const philox::Words w = philox::philox4x32_10(uint32_t(c[4 * i]), uint32_t(c[4 * i + 1]), uint32_t(c[4 * i + 2]),
                                                  uint32_t(c[4 * i + 3]), uint32_t(key), uint32_t(key >> 32));
    o[4 * i] = w.w0;
    o[4 * i + 1] = w.w1;
    o[4 * i + 2] = w.w2;
    o[4 * i + 3] = w.w3;
  }
  return out;
}

template <Family kFamily>
void noise_rows(const int64_t* positions, int64_t count, uint64_t seed, int64_t samples, int64_t vocab, float* out) {
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const philox::Stream stream(seed, uint64_t(positions[i]));
      float* rows = out + i * samples * vocab;
      for (int64_t s = 0; s < samples; ++s) {
        for (int64_t k = 0; k < vocab; ++k) {
          const math::Noise4 e = math::noise4<kFamily>(stream.bits(uint32_t(k), uint32_t(s / 4)));
          rows[s * vocab + k] = math::noise_component(e, int(s % 4));
        }
      }
    }
  });
}

at::Tensor philox_noise_cpu(const at::Tensor& positions, int64_t seed, int64_t num_samples, int64_t vocab,
                            c10::string_view family) {
  check_philox_noise_args(positions, num_samples, vocab, family);
  const at::Tensor pos = positions.contiguous();
  at::Tensor out = at::empty({pos.size(0), num_samples, vocab}, pos.options().dtype(at::kFloat));
  if (parse_family(family) == Family::kGaussian) {
    noise_rows<Family::kGaussian>(pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab,
                                  out.mutable_data_ptr<float>());
  } else {
    noise_rows<Family::kLaplace>(pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab,
                                 out.mutable_data_ptr<float>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("logit_distribution_uncertainty", &logit_distribution_uncertainty_cpu); }

TORCH_LIBRARY_IMPL(edd_ext_testing, CPU, m) {
  m.impl("philox4x32", &philox4x32_cpu);
  m.impl("philox_noise", &philox_noise_cpu);
}

}  // namespace edd_ext
