// ln Gamma, psi and psi' of kLanes float32 values at once, without per-lane branches, for the CPU loss kernels.
//
// Same asymptotic series as the scalar header (edd_ext/special_functions.h) at y >= 8; below that the
// argument is brought up with fixed steps instead of data-dependent loops:
//   x < 1:       f(x) from f(x + 1) and the recurrence (-ln x, -1/x, +1/x^2), only evaluated when a lane needs it,
//   1 <= x < 8:  y = x + 7, with the seven recurrence terms folded into one rational function:
//                D = prod_i (x + i), D'/D = sum_i 1/(x + i), T/D^2 = sum_i 1/(x + i)^2   (i = 0..6),
//                so the whole shift costs one log and two divisions (D < 15^7: no overflow in float).
// Accuracy in float32, against mpmath (tests/test_special_functions.py): psi' within 4 ulp; psi within 8 ulp of
// max(|psi|, 1); ln Gamma within 32 ulp of max(|lnG|, 1) — i.e. an absolute error of at most ~4e-6 near the
// roots of ln Gamma (1, 2), where the shifted series cancels. That is below what a float32 sum of such
// terms over a vocabulary, or a gradient psi(a_k) - psi(a_0) - l_k, resolves; the scalar header math keeps
// full relative accuracy for the float64 paths.
#pragma once

#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/special_functions.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {

struct VecGamma {
  VecF lgamma, digamma, trigamma;
};

// Horner evaluation of c[0] + c[1] f + ... + c[N-1] f^(N-1).
template <int N>
EDD_CPU_INLINE VecF horner(const VecF& f, const float (&c)[N]) {
  VecF r(c[N - 1]);
  for (int i = N - 2; i >= 0; --i) r = at::vec::fmadd(r, f, VecF(c[i]));
  return r;
}

// The members of VecGamma selected by the flags (the others are left 0). Each selected value is computed
// with exactly the same arithmetic in every variant, so the "simd_*" tests of gamma_family cover them all.
// The x < 1 step (its own log and division) is only evaluated when some lane needs it; the other lanes get
// exactly the same result either way.
template <bool kLgamma, bool kDigamma, bool kTrigamma>
EDD_CPU_INLINE VecGamma gamma_terms(const VecF& x) {
  const VecF one(1.f), zero(0.f), half(0.5f);
  // x < 1: one recurrence step up.
  const VecF small = x < one;
  const bool any_small = any_lane(small);
  const VecF x1 = any_small ? VecF::blendv(x, x + one, small) : x;
  // 1 <= x1 < 8: seven steps up, as one rational function. Other lanes compute with a dummy 1.
  const VecF shifted = x1 < VecF(8.f);
  const VecF xs = VecF::blendv(one, x1, shifted);
  VecF d = one, dd = zero, t = zero;
  for (int i = 0; i < 7; ++i) {
    const VecF term = xs + VecF(float(i));
    if (kTrigamma) t = at::vec::fmadd(t, term * term, d * d);
    if (kDigamma) dd = at::vec::fmadd(dd, term, d);
    d = d * term;
  }
  const VecF y = VecF::blendv(x1, xs + VecF(7.f), shifted);
  // Asymptotic series at y >= 8 (coefficients as in special_functions.h, truncated for float).
  const VecF r = one / y, f = r * r;
  static constexpr float kLg[] = {1.f / 12, -1.f / 360, 1.f / 1260, -1.f / 1680, 1.f / 1188};
  static constexpr float kDg[] = {-1.f / 12, 1.f / 120, -1.f / 252, 1.f / 240, -1.f / 132};
  static constexpr float kTg[] = {1.f / 6, -1.f / 30, 1.f / 42, -1.f / 30, 5.f / 66};
  VecGamma g{zero, zero, zero};
  if (kLgamma || kDigamma) {
    const VecF ly = log_fast_normal(y);  // y >= 8 (NaN / inf reach the result through y and 1 / y)
    if (kLgamma) g.lgamma = (y - half) * ly - y + VecF(math::half_log_two_pi<float>()) + r * horner(f, kLg);
    if (kDigamma) g.digamma = ly - half * r + f * horner(f, kDg);
  }
  // shifted lanes: 5040 <= d < 15^7
  if (kLgamma) g.lgamma = g.lgamma - VecF::blendv(zero, log_fast_normal(d), shifted);
  if (kDigamma || kTrigamma) {
    const VecF rd = one / d;
    if (kDigamma) g.digamma = g.digamma - VecF::blendv(zero, dd * rd, shifted);
    if (kTrigamma) {
      g.trigamma = r + half * f + r * f * horner(f, kTg);
      g.trigamma = g.trigamma + VecF::blendv(zero, t * rd * rd, shifted);
    }
  }
  if (any_small) {
    if (kLgamma) g.lgamma = g.lgamma + VecF::blendv(zero, zero - log_fast(x), small);
    if (kDigamma || kTrigamma) {
      const VecF rx = one / x;
      if (kDigamma) g.digamma = g.digamma + VecF::blendv(zero, zero - rx, small);
      if (kTrigamma) g.trigamma = g.trigamma + VecF::blendv(zero, rx * rx, small);
    }
  }
  return g;
}

EDD_CPU_INLINE VecGamma gamma_family(const VecF& x) { return gamma_terms<true, true, true>(x); }
EDD_CPU_INLINE VecF lgamma_only(const VecF& x) { return gamma_terms<true, false, false>(x).lgamma; }

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
