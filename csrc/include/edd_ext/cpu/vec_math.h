// Inlined float32 exp and log for the CPU kernels' hot loops. at::vec's exp()/log() call Sleef's u10
// routines out of line (through libtorch_cpu), which costs a call, spills and, for log, a slow general path;
// these are the classic Cephes expf / logf reductions with their minimax polynomials (relative error about
// 1 ulp over the whole range, as Sleef's u10), evaluated inline with FMAs.
//   exp: n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), e^r by a degree-7 polynomial, times 2^n applied
//        as 2^(n/2) 2^(n - n/2) so that results in the subnormal range round gradually as std::exp does;
//        x >= 88.73 gives +inf, x < -103.98 gives 0, NaN propagates.
//   log: x = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = f - f^2/2 + f^3 P(f) (f = m - 1), plus e ln 2 in
//        two parts; subnormal x is scaled by 2^23 first; log(0) = -inf, log(x < 0) = NaN, log(inf) = inf,
//        NaN propagates.
// Without AVX2 they fall back to at::vec's exp()/log().
#pragma once

#include "edd_ext/cpu/vec.h"

namespace edd_ext {
namespace cpu {

#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)

EDD_CPU_INLINE VecF exp_fast(const VecF& v) {
  __m256 x = v;
  // clamp (NaN kept: max/min return their second operand when either is NaN)
  x = _mm256_min_ps(_mm256_set1_ps(88.8f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-103.972084f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-150, 128]
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

// ln x for positive normal finite x only (no subnormal scaling, no special values: 0, inf and NaN give
// finite garbage, so a caller must get NaN/inf propagation from its other terms); the core of log_fast.
// exp(x) for x <= 0 (softmax weights exp(u - max)): the same reduction and polynomial as exp_fast, with a
// single 2^n scaling; results below FLT_MIN (x < -87.33) are flushed to 0 instead of rounded gradually, which
// changes a sum whose largest term is 1 by less than V * 1.2e-38. NaN propagates.
EDD_CPU_INLINE VecF exp_nonpositive(const VecF& v) {
  const __m256 x0 = v;
  const __m256 keep = _mm256_cmp_ps(x0, _mm256_set1_ps(-87.33654f), _CMP_NLT_UQ);  // NaN kept
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-87.33654f), x0);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i ni = _mm256_cvtps_epi32(n);  // in [-126, 0] (x >= -87.34, and x <= 0 for the callers)
  const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
  return _mm256_and_ps(_mm256_mul_ps(p, scale), keep);
}

EDD_CPU_INLINE __m256 log_core(__m256 x, __m256 e_adjust) {
  const __m256i xi = _mm256_castps_si256(x);
  __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(xi, 23), _mm256_set1_epi32(127)));
  e = _mm256_sub_ps(e, e_adjust);
  __m256 m = _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(xi, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
  // m in [1, 2): bring it into [sqrt(1/2), sqrt(2))
  const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356237f), _CMP_GT_OQ);
  m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
  e = _mm256_add_ps(e, _mm256_and_ps(big, _mm256_set1_ps(1.f)));
  const __m256 f = _mm256_sub_ps(m, _mm256_set1_ps(1.f));
  const __m256 z = _mm256_mul_ps(f, f);
  __m256 p = _mm256_set1_ps(7.0376836292e-2f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.1514610310e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.1676998740e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.2420140846e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.4249322787e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-1.6668057665e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.0000714765e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(-2.4999993993e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(3.3333331174e-1f));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, f), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  __m256 r = _mm256_add_ps(f, y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), r);
}

EDD_CPU_INLINE VecF log_fast_normal(const VecF& v) { return log_core(v, _mm256_setzero_ps()); }

EDD_CPU_INLINE VecF log_fast(const VecF& v) {
  const __m256 x0 = v;
  // subnormal inputs: scale by 2^23 (exact) and take 23 off the exponent
  const __m256 sub = _mm256_cmp_ps(x0, _mm256_set1_ps(1.17549435e-38f), _CMP_LT_OQ);
  const __m256 x = _mm256_blendv_ps(x0, _mm256_mul_ps(x0, _mm256_set1_ps(8388608.f)), sub);
  __m256 r = log_core(x, _mm256_and_ps(sub, _mm256_set1_ps(23.f)));
  // special values: 0 -> -inf, negative -> NaN, +inf and NaN -> themselves
  const __m256 zero = _mm256_setzero_ps();
  r = _mm256_blendv_ps(r, _mm256_set1_ps(-std::numeric_limits<float>::infinity()),
                       _mm256_cmp_ps(x0, zero, _CMP_EQ_OQ));
  r = _mm256_blendv_ps(r, _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN()),
                       _mm256_cmp_ps(x0, zero, _CMP_LT_OQ));
  const __m256 pass = _mm256_or_ps(_mm256_cmp_ps(x0, x0, _CMP_UNORD_Q),
                                   _mm256_cmp_ps(x0, _mm256_set1_ps(std::numeric_limits<float>::infinity()),
                                                 _CMP_EQ_OQ));
  return _mm256_blendv_ps(r, x0, pass);
}

#else

EDD_CPU_INLINE VecF exp_fast(const VecF& v) { return v.exp(); }
EDD_CPU_INLINE VecF log_fast(const VecF& v) { return v.log(); }

#endif

}  // namespace cpu
}  // namespace edd_ext
