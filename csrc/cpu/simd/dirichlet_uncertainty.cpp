// SIMD kernel of the Dirichlet student's uncertainty measures (csrc/cpu/dirichlet_uncertainty.cpp has the op,
// the passes and the float64 kernel), compiled once per CPU capability: the same two passes, kLanes classes at
// a time, float32 math with the vector special functions, sums in float64 (ChunkedSum), the scalar header math
// for the row tail.
#include <limits>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/cpu/vec_special.h"
#include "edd_ext/student_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

// psi(y) - ln y + 1/(2y) and ln Gamma(y) - ((y - 1/2) ln y - y + ln(2 pi)/2) for y >= 8, from r = 1/y: the
// series of math::digamma_tail / math::lgamma_tail with the float coefficients of vec_special.h.
EDD_CPU_INLINE VecF digamma_tail_vec(const VecF& r) {
  static constexpr float kDg[] = {-1.f / 12, 1.f / 120, -1.f / 252, 1.f / 240, -1.f / 132};
  const VecF f = r * r;
  return f * horner(f, kDg);
}

EDD_CPU_INLINE VecF lgamma_tail_vec(const VecF& r) {
  static constexpr float kLg[] = {1.f / 12, -1.f / 360, 1.f / 1260, -1.f / 1680, 1.f / 1188};
  return r * horner(r * r, kLg);
}

struct DirichletTerms {
  VecF xg;       // x g(x) = x (psi(x + 1) - ln x)
  VecF entropy;  // F(x) = ln Gamma(x) - (x - 1) psi(x) + x
};

// math::x_times_g and math::entropy_term of kLanes concentrations x >= kMinSimdModelOffset, given ln x.
//   x >= 8: the series forms of the header (no cancellation: x g(x) = 1/2 + x digamma_tail(x));
//   x < 8:  psi(x + 1) = psi(x + 8) - sum_{i=1..7} 1/(x + i), with psi(x + 8) from its series, so that
//           g(x) = (ln(x + 8) - ln x) - 1/(2(x + 8)) + digamma_tail(x + 8) - sum_i 1/(x + i) never subtracts
//           two values of psi near each other; F from the vector ln Gamma and psi.
// Lanes of the other range compute with a dummy argument; a range no lane is in is skipped.
EDD_CPU_INLINE DirichletTerms dirichlet_terms(const VecF& x, const VecF& log_x) {
  const VecF one(1.f), half(0.5f), eight(8.f);
  const VecF large = x >= eight;  // false for NaN: NaN lanes take the x < 8 formulas (NaN either way)
  const bool any_large = any_lane(large);
  const bool all_large = any_large && !any_lane((x < eight) | (x != x));
  DirichletTerms t{VecF(0.f), VecF(0.f)};
  if (any_large) {
    const VecF xl = VecF::blendv(eight, x, large);
    const VecF r = one / xl, dt = digamma_tail_vec(r);
    const VecF ll = VecF::blendv(VecF(2.0794415f), log_x, large);  // ln 8 for the dummy lanes
    t.xg = half + xl * dt;
    t.entropy = half * ll + VecF(math::half_log_two_pi<float>()) + half - half * r + lgamma_tail_vec(r) -
                (xl - one) * dt;
  }
  if (!all_large) {
    const VecF xs = VecF::blendv(x, one, large);
    const VecF ls = VecF::blendv(log_x, VecF(0.f), large);
    const VecF y = xs + eight, ry = one / y;
    VecF inv_sum(0.f);
    for (int i = 1; i < 8; ++i) inv_sum = inv_sum + one / (xs + VecF(float(i)));
    const VecF g = (log_fast_normal(y) - ls) - half * ry + digamma_tail_vec(ry) - inv_sum;
    const VecGamma lg = gamma_terms<true, true, false>(xs);
    const VecF xg = xs * g;
    const VecF entropy = lg.lgamma - (xs - one) * lg.digamma + xs;
    t.xg = any_large ? VecF::blendv(xg, t.xg, large) : xg;
    t.entropy = any_large ? VecF::blendv(entropy, t.entropy, large) : entropy;
  }
  return t;
}

// ln alpha = logaddexp(z, ln c) (math::log_concentration); NaN stays NaN.
EDD_CPU_INLINE VecF log_concentration_vec(const VecF& z, const VecF& log_c) { return logaddexp(z, log_c); }

// The SIMD kernel: the same two passes, kLanes classes at a time, float32 math, sums in float64 (ChunkedSum).
template <typename scalar_t>
void dirichlet_rows(const DirichletUncertaintyView& p, int64_t begin, int64_t end) {
  const scalar_t* logits = static_cast<const scalar_t*>(p.logits);
  double* out = p.out;
  const int64_t vocab = p.vocab, body = vocab - vocab % kLanes;
  const float c = float(p.offset), log_c = float(p.log_offset);
  const VecF vc(c), vlog_c(log_c), zero(0.f), one(1.f);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* z = logits + n * vocab;
    // Pass 1 (a NaN logit is skipped by the maximum and reaches every result through `rest`).
    VecF vmax(-std::numeric_limits<float>::infinity());
    for (int64_t k = 0; k < body; k += kLanes) vmax = fast_max(load_float(z + k), vmax);
    float max_z = body > 0 ? horizontal_max(vmax) : float(z[0]);
    for (int64_t k = body; k < vocab; ++k) max_z = math::larger(max_z, float(z[k]));
    const float top = math::log_concentration(max_z, log_c);
    const VecF vmax_z(max_z), vtop(top);
    ChunkedSum rest_sum, tie_count;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF zk = load_float(z + k);
      const VecF tie = zk == vmax_z;
      const VecF ratio = exp_fast(log_concentration_vec(zk, vlog_c) - vtop);
      rest_sum.push(VecF::blendv(ratio, zero, tie));
      tie_count.push(VecF::blendv(zero, one, tie));
    }
    double rest = rest_sum.result(), ties = tie_count.result();
    for (int64_t k = body; k < vocab; ++k) {
      const float zk = float(z[k]);
      if (zk == max_z) {
        ties += 1;
      } else {
        rest += double(math::exp_(math::log_concentration(zk, log_c) - top));
      }
    }
    const math::DirichletScalars s = math::dirichlet_scalars(double(top), rest + (ties - 1));
    // Pass 2.
    const float log1p_rest = float(s.log1p_rest), g0 = float(s.g0);
    const VecF vlog1p_rest(log1p_rest), vg0(g0), vh0(1.f - g0);
    ChunkedSum total, mi, rmi, entropy;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF zk = load_float(z + k);
      const VecF alpha = exp_fast(zk) + vc;
      const VecF log_alpha = log_concentration_vec(zk, vlog_c);
      const VecF log_p = (log_alpha - vtop) - vlog1p_rest;
      const VecF prob = exp_fast(log_p);
      const DirichletTerms t = dirichlet_terms(alpha, log_alpha);
      total.push(zero - prob * log_p);
      mi.push(clamp_rounding(t.xg - prob * vg0));
      rmi.push(clamp_rounding((one - t.xg) - prob * vh0));
      entropy.push(t.entropy);
    }
    double sums[math::kNumDirichletSums] = {total.result(), mi.result(), rmi.result(), entropy.result()};
    for (int64_t k = body; k < vocab; ++k) {
      math::dirichlet_class_terms<float>(float(z[k]), c, log_c, top, log1p_rest, g0, sums);
    }
    math::dirichlet_finish(s, sums, vocab, out + n * math::kNumDirichletMeasures);
  }
}

void dirichlet_uncertainty(const DirichletUncertaintyView& p, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.dtype, [&](auto t) { dirichlet_rows<typename decltype(t)::type>(p, begin, end); });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(dirichlet_uncertainty_kernel, dirichlet_uncertainty);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
