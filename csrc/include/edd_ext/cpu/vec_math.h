// Inlined float32 exp and log for the CPU kernels' hot loops. at::vec's exp()/log() call Sleef's u10
// routines out of line (through libtorch_cpu), which costs a call, spills and, for log, a slow general path;
// these are the classic Cephes expf / logf reductions with their minimax polynomials (relative error about
// 1 ulp over the whole range, as Sleef's u10), evaluated inline, written once on at::vec for every capability
// (AVX-512: 16 lanes, AVX2: 8, portable: 8 lanes of scalar code). The polynomials use explicit fused
// multiply-adds (at::vec::fmadd: one rounding on AVX2 / AVX-512, a product and a sum on the portable build;
// the build never contracts a * b + c on its own), so each capability rounds the same way on every run.
//   exp: n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), e^r by a degree-7 polynomial, times 2^n applied
//        as 2^(n/2) 2^(n - n/2) so that results in the subnormal range round gradually as std::exp does;
//        x >= 88.73 gives +inf, x < -103.98 gives 0, NaN propagates.
//   log: x = 2^e m with m in [sqrt(1/2), sqrt(2)), ln m = f - f^2/2 + f^3 P(f) (f = m - 1), plus e ln 2 in
//        two parts; subnormal x is scaled by 2^23 first; log(0) = -inf, log(x < 0) = NaN, log(inf) = inf,
//        NaN propagates.
#pragma once

#include "edd_ext/cpu/vec.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {

// ln 2 in two parts (the first exact in a few bits, so n * part stays exact) and 1 / ln 2.
constexpr float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f, kLog2e = 1.44269504088896341f;

// e^r - 1 - r - r^2/2 over r in [-ln2/2, ln2/2] as r^2 P(r) + ..., evaluated as 1 + r + r^2 P(r).
EDD_CPU_INLINE VecF exp_reduced(const VecF& x, VecF& n) {
  n = (x * VecF(kLog2e)).round();
  VecF r = at::vec::fnmadd(n, VecF(kLn2Hi), x);
  r = at::vec::fnmadd(n, VecF(kLn2Lo), r);
  VecF p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, VecF(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, VecF(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, VecF(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, VecF(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, VecF(5.0000001201e-1f));
  return at::vec::fmadd(p, r * r, r + VecF(1.f));
}

// 2^k as a float for integer k in [-126, 127] (exponent bits).
EDD_CPU_INLINE VecF pow2i(const VecI& k) { return lanes_float((k + VecI(127)) << VecI(23)); }

EDD_CPU_INLINE VecF exp_fast(const VecF& v) {
  // clamp (NaN kept: fast_min / fast_max return their second operand when either is NaN)
  const VecF x = fast_max(VecF(-103.972084f), fast_min(VecF(88.8f), v));
  VecF n;
  const VecF p = exp_reduced(x, n);
  const VecI ni = at::vec::convert_to_int_of_same_size(n);  // in [-150, 128], exactly integral
  const VecI n1 = ni >> VecI(1);
  return (p * pow2i(n1)) * pow2i(ni - n1);
}

// exp(x) for x <= 0 (softmax weights exp(u - max)): the same reduction and polynomial as exp_fast, with a
// single 2^n scaling; results below FLT_MIN (x < -87.33) are flushed to 0 instead of rounded gradually, which
// changes a sum whose largest term is 1 by less than V * 1.2e-38. NaN propagates.
EDD_CPU_INLINE VecF exp_nonpositive(const VecF& v) {
  const VecF cutoff(-87.33654f);
  VecF n;
  const VecF p = exp_reduced(fast_max(cutoff, v), n);
  // n in [-126, 0] (x >= -87.34, and x <= 0 for the callers)
  return zero_where_less(p * pow2i(at::vec::convert_to_int_of_same_size(n)), v, cutoff);
}

// ln x for positive normal finite x only (no subnormal scaling, no special values: 0, inf and NaN give
// finite garbage, so a caller must get NaN/inf propagation from its other terms); `e_adjust` is taken off the
// exponent (log_fast's subnormal scaling). The core of log_fast.
EDD_CPU_INLINE VecF log_core(const VecF& x, const VecF& e_adjust) {
  const VecI xi = lane_bits(x);
  VecF e = at::vec::convert_to_fp_of_same_size<float>((xi >> VecI(23)) - VecI(127)) - e_adjust;
  VecF m = lanes_float((xi & VecI(0x007fffff)) | VecI(0x3f800000));
  // m in [1, 2): bring it into [sqrt(1/2), sqrt(2))
  const VecF big = m > VecF(1.41421356237f);
  m = VecF::blendv(m, m * VecF(0.5f), big);
  e = e + (big & VecF(1.f));
  const VecF f = m - VecF(1.f);
  const VecF z = f * f;
  VecF p(7.0376836292e-2f);
  p = at::vec::fmadd(p, f, VecF(-1.1514610310e-1f));
  p = at::vec::fmadd(p, f, VecF(1.1676998740e-1f));
  p = at::vec::fmadd(p, f, VecF(-1.2420140846e-1f));
  p = at::vec::fmadd(p, f, VecF(1.4249322787e-1f));
  p = at::vec::fmadd(p, f, VecF(-1.6668057665e-1f));
  p = at::vec::fmadd(p, f, VecF(2.0000714765e-1f));
  p = at::vec::fmadd(p, f, VecF(-2.4999993993e-1f));
  p = at::vec::fmadd(p, f, VecF(3.3333331174e-1f));
  VecF y = (p * f) * z;
  y = at::vec::fmadd(e, VecF(kLn2Lo), y);
  y = at::vec::fnmadd(z, VecF(0.5f), y);
  return at::vec::fmadd(e, VecF(kLn2Hi), f + y);
}

EDD_CPU_INLINE VecF log_fast_normal(const VecF& v) { return log_core(v, VecF(0.f)); }

EDD_CPU_INLINE VecF log_fast(const VecF& x0) {
  // subnormal inputs: scale by 2^23 (exact) and take 23 off the exponent
  const VecF sub = x0 < VecF(1.17549435e-38f);
  const VecF x = VecF::blendv(x0, x0 * VecF(8388608.f), sub);
  VecF r = log_core(x, sub & VecF(23.f));
  // special values: 0 -> -inf, negative -> NaN, +inf and NaN -> themselves
  const VecF zero(0.f);
  r = VecF::blendv(r, VecF(-std::numeric_limits<float>::infinity()), x0 == zero);
  r = VecF::blendv(r, VecF(std::numeric_limits<float>::quiet_NaN()), x0 < zero);
  const VecF pass = (x0 != x0) | (x0 == VecF(std::numeric_limits<float>::infinity()));
  return VecF::blendv(r, x0, pass);
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
