// The CPU teacher pass shared by the ensemble statistics and the losses that take raw teacher logits:
// per-member log-softmax normalisers (pass 1), then the ensemble's per-class quantities for kLanes classes at
// a time (pass 2), straight from the [M, V] logits of one position — no [M, V] float copy is made.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {
namespace cpu {

struct TeacherOptions {
  float inv_temperature = 1.f;
  float inv_members = 1.f;
  float log_members = 0.f;
  bool smooth = false;
  float log1m_eps = 0.f, log_eps_over_v = 0.f;
};

// The float32 options of a statistics problem (EnsembleStatsProblem: temperature, members, smoothing in float64).
template <typename Problem>
TeacherOptions teacher_options(const Problem& p) {
  TeacherOptions o;
  o.inv_temperature = float(p.inv_temperature);
  o.inv_members = float(p.inv_members);
  o.log_members = float(p.log_members);
  o.smooth = p.smooth;
  o.log1m_eps = float(p.log1m_eps);
  o.log_eps_over_v = float(p.log_eps_over_v);
  return o;
}

// Member m's log-probabilities are l_mk = (u_mk / T - shift[m]) - log_sum[m]. Subtracting the maximum first
// keeps l exact for large logits; the exponential sums are accumulated in double.
// With `weights` ([M, V], optional) the SIMD body's w_mk = exp(u_mk / T - shift_m) are kept, and inv_sum_m =
// 1 / sum_k w_mk, so that a later pass forms p_mk = w_mk inv_sum_m without a second exponential (within
// ~2 ulp of exp(l_mk)). With `shifted_sum` ([V], optional, not with `weights`) the SIMD body's
// sum_m (u_mk / T - shift_m) is written there, from the exponential pass's own arguments, so that a later pass
// forms the members' mean log-probability from one row instead of reading the M rows again.
template <typename scalar_t>
void member_normalizers(const scalar_t* row, int64_t members, int64_t vocab, float inv_t, float* shift,
                        float* log_sum, float* weights = nullptr, float* inv_sum = nullptr,
                        float* shifted_sum = nullptr) {
  const int64_t body = vocab - vocab % kLanes;
  for (int64_t m = 0; m < members; ++m) {
    const scalar_t* u = row + m * vocab;
    // the maximum need not propagate NaN: a NaN logit makes the exponential sum NaN
    // (four independent chains: this pass streams the logits from memory)
    const VecF lowest(-std::numeric_limits<float>::infinity());
    VecF vmax[4] = {lowest, lowest, lowest, lowest};
    int64_t k0 = 0;
    for (; k0 + 4 * kLanes <= body; k0 += 4 * kLanes) {
      for (int j = 0; j < 4; ++j) vmax[j] = fast_max(vmax[j], load_float(u + k0 + j * kLanes));
    }
    for (; k0 < body; k0 += kLanes) vmax[0] = fast_max(vmax[0], load_float(u + k0));
    float mx = horizontal_max(fast_max(fast_max(vmax[0], vmax[1]), fast_max(vmax[2], vmax[3])));
    for (int64_t k = body; k < vocab; ++k) mx = std::max(mx, float(u[k]));
    mx *= inv_t;  // T > 0
    const VecF vt(inv_t), vmx(mx);
    // u / T - max <= 0 (or NaN); T = 1 (the losses' teachers) skips the product, which is exact then
    auto shifted = [&](int64_t k) { return (inv_t == 1.f ? load_float(u + k) : load_float(u + k) * vt) - vmx; };
    auto weight = [&](int64_t k) { return exp_nonpositive(shifted(k)); };
    ChunkedSum sum;
    if (shifted_sum != nullptr) {
      for (int64_t k = 0; k < body; k += kLanes) {
        const VecF d = shifted(k);
        sum.push(exp_nonpositive(d));
        (m == 0 ? d : VecF::loadu(shifted_sum + k) + d).store(shifted_sum + k);
      }
    } else if (weights != nullptr) {
      float* w = weights + m * vocab;
      for (int64_t k = 0; k < body; k += kLanes) {
        const VecF e = weight(k);
        e.store(w + k);
        sum.push(e);
      }
    } else {
      for (int64_t k = 0; k < body; k += kLanes) sum.push(weight(k));
    }
    double total = sum.result();
    for (int64_t k = body; k < vocab; ++k) total += std::exp(double(float(u[k]) * inv_t - mx));
    shift[m] = mx;
    log_sum[m] = float(std::log(total));
    if (inv_sum != nullptr) inv_sum[m] = float(1.0 / total);
  }
}

// A log-probability of -inf raised to the lowest finite float (one max instruction; NaN and finite values pass
// unchanged), so that p l is 0 x finite = 0 for it (0 ln 0 = 0) and bitwise unchanged otherwise.
EDD_CPU_INLINE VecF finite_log_prob(const VecF& l) { return fast_max(VecF(std::numeric_limits<float>::lowest()), l); }

// The ensemble at kLanes classes [k, k + kLanes): mean probability p, mean log-probability E[l], E[p l]
// and ln p (from the summed probabilities; from the largest member's l where they underflow). A member's
// log-probability of -inf (probability 0) adds 0 to E[p l] (ensemble_math.h).
struct TeacherBlock {
  VecF mean_prob, mean_log_prob, mean_p_log_p, log_mean_prob;
};

template <typename scalar_t>
EDD_CPU_INLINE TeacherBlock teacher_block(const scalar_t* row, int64_t k, int64_t members, int64_t vocab,
                                  const float* shift, const float* log_sum, const TeacherOptions& o) {
  const VecF vt(o.inv_temperature);
  VecF sp(0.f), sl(0.f), spl(0.f), ml(-std::numeric_limits<float>::infinity());
  for (int64_t m = 0; m < members; ++m) {
    VecF l = (load_float(row + m * vocab + k) * vt - VecF(shift[m])) - VecF(log_sum[m]);
    if (o.smooth) l = logaddexp(l + VecF(o.log1m_eps), VecF(o.log_eps_over_v));
    const VecF p = exp_fast(l);
    sp = sp + p;
    sl = sl + l;
    spl = at::vec::fmadd(p, finite_log_prob(l), spl);
    ml = at::vec::maximum(ml, l);
  }
  const VecF inv_m(o.inv_members), log_m(o.log_members);
  TeacherBlock b;
  b.mean_prob = sp * inv_m;
  b.mean_log_prob = sl * inv_m;
  b.mean_p_log_p = spl * inv_m;
  const VecF zero(0.f);
  b.log_mean_prob = VecF::blendv(ml - log_m, log_fast(sp) - log_m, sp > zero);
  return b;
}

// teacher_block from the weights kept by member_normalizers (p_mk = w_mk inv_sum_m; no smoothing).
template <typename scalar_t>
EDD_CPU_INLINE TeacherBlock teacher_block_weighted(const scalar_t* row, const float* weights, const float* inv_sum,
                                                   int64_t k, int64_t members, int64_t vocab, const float* shift,
                                                   const float* log_sum, const TeacherOptions& o) {
  const VecF vt(o.inv_temperature);
  VecF sp(0.f), sl(0.f), spl(0.f), ml(-std::numeric_limits<float>::infinity());
  for (int64_t m = 0; m < members; ++m) {
    const VecF l = (load_float(row + m * vocab + k) * vt - VecF(shift[m])) - VecF(log_sum[m]);
    const VecF p = VecF::loadu(weights + m * vocab + k) * VecF(inv_sum[m]);
    sp = sp + p;
    sl = sl + l;
    spl = at::vec::fmadd(p, finite_log_prob(l), spl);
    ml = at::vec::maximum(ml, l);
  }
  const VecF inv_m(o.inv_members), log_m(o.log_members);
  TeacherBlock b;
  b.mean_prob = sp * inv_m;
  b.mean_log_prob = sl * inv_m;
  b.mean_p_log_p = spl * inv_m;
  const VecF zero(0.f);
  b.log_mean_prob = VecF::blendv(ml - log_m, log_fast(sp) - log_m, sp > zero);
  return b;
}

// The same quantities for one class with the scalar header math (row tails, float64 inputs).
template <typename scalar_t, typename acc_t>
inline math::ClassTerms<acc_t> teacher_class(const scalar_t* row, int64_t k, int64_t members, int64_t vocab,
                                             const acc_t* shift, const acc_t* log_sum, acc_t inv_t, bool smooth,
                                             acc_t log1m_eps, acc_t log_eps_v, acc_t inv_m, acc_t log_m) {
  return math::ensemble_class_terms(row, k, members, vocab, shift, log_sum, inv_t, smooth, log1m_eps, log_eps_v, inv_m,
                                    log_m);
}

// One position's class pass of the ensemble statistics with float32 math (after member_normalizers): every
// class's ensemble terms (teacher_block for the SIMD body, teacher_class for the row tail), the five measures
// summed in float64 into `measures`, and each block and tail class handed to on_block(k, const TeacherBlock&)
// and on_class(k, const math::ClassTerms<float>&).
template <typename scalar_t, typename OnBlock, typename OnClass>
void teacher_class_pass(const scalar_t* row, int64_t members, int64_t vocab, const float* shift, const float* log_sum,
                        const TeacherOptions& o, double* measures, OnBlock&& on_block, OnClass&& on_class) {
  const int64_t body = vocab - vocab % kLanes;
  ChunkedSum sums[math::kNumMeasures];
  for (int64_t k = 0; k < body; k += kLanes) {
    const TeacherBlock b = teacher_block(row, k, members, vocab, shift, log_sum, o);
    const VecF p_log_p = xmul(b.mean_prob, b.log_mean_prob);
    sums[0].push(VecF(0.f) - p_log_p);
    sums[1].push(VecF(0.f) - b.mean_p_log_p);
    sums[2].push(clamp_rounding(b.mean_p_log_p - p_log_p));
    sums[3].push(clamp_rounding(b.mean_p_log_p - xmul(b.mean_prob, b.mean_log_prob)));
    sums[4].push(clamp_rounding(xmul(b.mean_prob, b.log_mean_prob - b.mean_log_prob)));
    on_block(k, b);
  }
  for (int i = 0; i < math::kNumMeasures; ++i) measures[i] = sums[i].result();
  for (int64_t k = body; k < vocab; ++k) {
    const math::ClassTerms<float> t =
        teacher_class<scalar_t, float>(row, k, members, vocab, shift, log_sum, o.inv_temperature, o.smooth, o.log1m_eps,
                                       o.log_eps_over_v, o.inv_members, o.log_members);
    for (int i = 0; i < math::kNumMeasures; ++i) measures[i] += double(t.measure[i]);
    on_class(k, t);
  }
}

// The same pass with the scalar math of acc_t (float64 inputs), after the member normalisers shift / log_sum.
template <typename scalar_t, typename acc_t, typename OnClass>
void teacher_class_pass_scalar(const scalar_t* row, int64_t members, int64_t vocab, const acc_t* shift,
                               const acc_t* log_sum, acc_t inv_t, bool smooth, acc_t log1m_eps, acc_t log_eps_v,
                               acc_t inv_m, acc_t log_m, double* measures, OnClass&& on_class) {
  for (int i = 0; i < math::kNumMeasures; ++i) measures[i] = 0;
  for (int64_t k = 0; k < vocab; ++k) {
    const math::ClassTerms<acc_t> t = teacher_class<scalar_t, acc_t>(row, k, members, vocab, shift, log_sum, inv_t,
                                                                     smooth, log1m_eps, log_eps_v, inv_m, log_m);
    for (int i = 0; i < math::kNumMeasures; ++i) measures[i] += double(t.measure[i]);
    on_class(k, t);
  }
}

}  // namespace cpu
}  // namespace edd_ext
