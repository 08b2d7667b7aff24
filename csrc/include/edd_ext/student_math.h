// Math of the student uncertainty measures (SPEC section 3), shared by the CPU and CUDA kernels:
//   * the noise of the logit-distribution Monte Carlo: Philox bits -> standard normal (Box-Muller) or
//     standard Laplace (inverse CDF) variates;
//   * the per-class terms of the Dirichlet measures.
//
// Noise. The variates are float32 for every input dtype (the draws, not the arithmetic after them, are
// float: a float64 run sees the very same noise as a float32 run). The transforms are written without
// libm calls and without floating-point selects (the branches are integer bit operations), so that
// the CPU loops over a row vectorise and the device and the host evaluate the same expressions; and every
// product and sum is rounded on its own (mul_rn, add_rn, sub_rn: nvcc would otherwise contract a * b + c
// into one fused multiply-add, which the CPU build, compiled with -ffp-contract=off, does not), so that a seed
// gives the same bits on the CPU and on the GPU (tests/test_noise_ptx.py checks the PTX for fma).
//   uniforms:  24-bit, U = (b + 1) 2^-24 in [2^-24, 1] (never 0) from the top 24 bits of a word;
//   Gaussian:  words (w0, w1) -> r = sqrt(-2 ln U(w0)), theta = 2 pi A(w1), A = b 2^-24 in [0, 1):
//              (r cos theta, r sin theta); likewise (w2, w3). |eps| <= sqrt(2 ln 2^24) = 5.77, a tail
//              of probability 2e-9 cut off;
//   Laplace:   F^-1(u) = -sgn(u - 1/2) ln(1 - 2|u - 1/2|), drawn as a sign (bit 31) times -ln V with
//              V = 1 - 2|u - 1/2| uniform on (0, 1] from bits 0..23; |eps| <= 24 ln 2 = 16.6.
//
// Dirichlet. With alpha_k = exp(z_k) + c, alpha_0 = sum_k alpha_k, p = alpha / alpha_0, and
//   g(x) = psi(x + 1) - ln x,   h(x) = ln x - psi(x) = 1/x - g(x)    (both > 0, decreasing)
// the SPEC's measures are
//   MI   = TU - DU = sum_k p_k (g(alpha_k) - g(alpha_0)) = (1/alpha_0) sum_k [alpha_k g(alpha_k) - p_k G0]
//   RMI  = sum_k p_k (h(alpha_k) - h(alpha_0))         = (1/alpha_0) sum_k [(1 - alpha_k g(alpha_k)) - p_k H0]
//   EPKL = MI + RMI = (V - 1) / alpha_0
// with G0 = alpha_0 g(alpha_0), H0 = 1 - G0 in (0, 1). Every bracket is >= 0 term by term and O(1), so MI
// and RMI keep their relative accuracy when alpha_0 is huge (MI ~ 1e-35 at z = 80), where TU - DU of two
// separately summed entropies would be rounding noise, and nothing underflows in float.
//   H[Dir] = sum_k F(alpha_k) - F(alpha_0) - (V - 1) psi(alpha_0),   F(x) = ln Gamma(x) - (x - 1) psi(x) + x
// F grows like (1/2) ln x: the sum never forms ln Gamma(alpha_0) ~ alpha_0 ln alpha_0 (1e41 at z = 80)
// only to cancel it.
#pragma once

#include <cstdint>
#include <cstring>

#include "edd_ext/ensemble_math.h"
#include "edd_ext/macros.h"
#include "edd_ext/philox.h"
#include "edd_ext/softmax.h"
#include "edd_ext/special_functions.h"

namespace edd_ext {
namespace math {

// ---------------------------------------------------------------------------------------------------
// Bit-level helpers
// ---------------------------------------------------------------------------------------------------

EDD_HD_INLINE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

EDD_HD_INLINE float bits_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

// Bitwise select: a where the mask is all ones, b where it is zero.
EDD_HD_INLINE float select_bits(uint32_t mask, float a, float b) {
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// a * b, a + b and a - b, each rounded to nearest on its own. On the device the intrinsics are never contracted
// into fused multiply-adds; on the host the build does not contract (-ffp-contract=off).
#if defined(__CUDA_ARCH__)
EDD_HD_INLINE float mul_rn(float a, float b) { return __fmul_rn(a, b); }
EDD_HD_INLINE float add_rn(float a, float b) { return __fadd_rn(a, b); }
EDD_HD_INLINE float sub_rn(float a, float b) { return __fsub_rn(a, b); }
EDD_HD_INLINE double mul_rn(double a, double b) { return __dmul_rn(a, b); }
EDD_HD_INLINE double add_rn(double a, double b) { return __dadd_rn(a, b); }
EDD_HD_INLINE double sub_rn(double a, double b) { return __dsub_rn(a, b); }
#else
EDD_HD_INLINE float mul_rn(float a, float b) { return a * b; }
EDD_HD_INLINE float add_rn(float a, float b) { return a + b; }
EDD_HD_INLINE float sub_rn(float a, float b) { return a - b; }
EDD_HD_INLINE double mul_rn(double a, double b) { return a * b; }
EDD_HD_INLINE double add_rn(double a, double b) { return a + b; }
EDD_HD_INLINE double sub_rn(double a, double b) { return a - b; }
#endif

// a * b + c with two roundings (a Horner step).
EDD_HD_INLINE float mul_add_rn(float a, float b, float c) { return add_rn(mul_rn(a, b), c); }

// One Monte-Carlo sample of a logit over the temperature, a + b eps (a = mu / T, b = s / T), rounded as the CPU
// kernel rounds it.
template <typename T>
EDD_HD_INLINE T sample_rn(T a, T b, float eps) {
  return add_rn(a, mul_rn(b, T(eps)));
}

// ---------------------------------------------------------------------------------------------------
// Float transforms for the noise and the softmax (no libm, no float selects)
// ---------------------------------------------------------------------------------------------------

constexpr float kTwoPow24Inv = 5.9604644775390625e-08f;  // 2^-24

// U = (top 24 bits + 1) 2^-24 in [2^-24, 1], exact in float.
EDD_HD_INLINE float uniform_open0(uint32_t w) { return mul_rn(float(int32_t(w >> 8) + 1), kTwoPow24Inv); }

// A = (top 24 bits) 2^-24 in [0, 1), exact in float.
EDD_HD_INLINE float uniform_open1(uint32_t w) { return mul_rn(float(int32_t(w >> 8)), kTwoPow24Inv); }

// ln x for a normal positive float: x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)) by an integer shift
// of the exponent bits, then the Cephes logf polynomial (within 2 ulp on that range).
EDD_HD_INLINE float log_positive(float x) {
  uint32_t ix = float_bits(x) + (0x3f800000u - 0x3f3504f3u);
  const float k = float(int32_t(ix >> 23) - 127);
  ix = (ix & 0x007fffffu) + 0x3f3504f3u;
  const float f = sub_rn(bits_float(ix), 1.0f);
  const float z = mul_rn(f, f);
  float y = 7.0376836292e-2f;
  y = mul_add_rn(y, f, -1.1514610310e-1f);
  y = mul_add_rn(y, f, 1.1676998740e-1f);
  y = mul_add_rn(y, f, -1.2420140846e-1f);
  y = mul_add_rn(y, f, 1.4249322787e-1f);
  y = mul_add_rn(y, f, -1.6668057665e-1f);
  y = mul_add_rn(y, f, 2.0000714765e-1f);
  y = mul_add_rn(y, f, -2.4999993993e-1f);
  y = mul_add_rn(y, f, 3.3333331174e-1f);
  y = mul_rn(mul_rn(y, f), z);
  y = add_rn(y, mul_rn(-2.12194440e-4f, k));
  y = add_rn(y, mul_rn(-0.5f, z));
  return add_rn(add_rn(f, y), mul_rn(0.693359375f, k));
}

// sqrt(x) for x >= 0 from an inverse-square-root estimate and two Newton steps (relative error of the
// estimate 1.8e-3 -> 5e-6 -> 4e-11, below float rounding); sqrt(0) = 0.
EDD_HD_INLINE float sqrt_nonnegative(float x) {
  float y = bits_float(0x5f375a86u - (float_bits(x) >> 1));
  const float half_x = mul_rn(0.5f, x);
  y = mul_rn(y, sub_rn(1.5f, mul_rn(mul_rn(half_x, y), y)));
  y = mul_rn(y, sub_rn(1.5f, mul_rn(mul_rn(half_x, y), y)));
  return mul_rn(x, y);
}

// (sin 2 pi a, cos 2 pi a) for a in [0, 1): the nearest quarter turn q is split off exactly, the rest
// x = 2 pi (a - q/4) in [-pi/4, pi/4] goes through the Cephes sinf/cosf polynomials, and the quadrant
// swaps and negates the pair with integer masks.
EDD_HD_INLINE void sincos_turns(float a, float& sin_out, float& cos_out) {
  const int32_t q = int32_t(add_rn(mul_rn(a, 4.0f), 0.5f));
  const float x = mul_rn(sub_rn(a, mul_rn(float(q), 0.25f)), 6.28318530717958647692f);
  const float z = mul_rn(x, x);
  const float s =
      add_rn(mul_rn(mul_rn(mul_add_rn(mul_add_rn(-1.9515295891e-4f, z, 8.3321608736e-3f), z, -1.6666654611e-1f), z),
                    x),
             x);
  const float c = add_rn(
      sub_rn(mul_rn(mul_rn(mul_add_rn(mul_add_rn(2.443315711809948e-5f, z, -1.388731625493765e-3f), z,
                                      4.166664568298827e-2f),
                           z),
                    z),
             mul_rn(0.5f, z)),
      1.0f);
  const uint32_t swap = 0u - uint32_t(q & 1);
  const uint32_t sin_sign = uint32_t(q & 2) << 30, cos_sign = uint32_t((q + 1) & 2) << 30;
  sin_out = bits_float(float_bits(select_bits(swap, c, s)) ^ sin_sign);
  cos_out = bits_float(float_bits(select_bits(swap, s, c)) ^ cos_sign);
}

// exp(x) (softmax terms exp(y - max y) <= 1, scales exp(rho)): the Cephes expf polynomial (within 2 ulp) and
// 2^n from the exponent bits. x < -87 (-inf included) flushes to +0, below 2^-125, far under what a
// probability sum resolves; x > 88.3 gives +inf (exp(88.3) = 2e38, near the float maximum); NaN stays NaN.
EDD_HD_INLINE float exp_flush(float x) {
  // Bit patterns: above kLow (-87) up to -inf are more negative floats (then negative NaNs); above kHigh (88.3)
  // up to +inf larger positive ones (then positive NaNs).
  constexpr uint32_t kLow = 0xc2ae0000u, kNegInf = 0xff800000u, kHigh = 0x42b0999au, kPosInf = 0x7f800000u;
  const uint32_t bits = float_bits(x);
  const uint32_t under = 0u - uint32_t((bits > kLow) & (bits <= kNegInf));
  const uint32_t over = 0u - uint32_t((bits > kHigh) & (bits <= kPosInf));
  const float xc = select_bits(under | over, 0.0f, x);
  const float t = mul_rn(xc, 1.44269504088896341f);
  const int32_t n = int32_t(float_bits(add_rn(t, 12582912.0f)) - 0x4b400000u);  // round(t), |t| < 2^22
  const float r = float(n);
  float f = sub_rn(xc, mul_rn(r, 0.693359375f));
  f = sub_rn(f, mul_rn(r, -2.12194440e-4f));
  const float z = mul_rn(f, f);
  float y = 1.9875691500e-4f;
  y = mul_add_rn(y, f, 1.3981999507e-3f);
  y = mul_add_rn(y, f, 8.3334519073e-3f);
  y = mul_add_rn(y, f, 4.1665795894e-2f);
  y = mul_add_rn(y, f, 1.6666665459e-1f);
  y = mul_add_rn(y, f, 5.0000001201e-1f);
  y = add_rn(add_rn(mul_rn(y, z), f), 1.0f);
  const float scale = bits_float(uint32_t(n + 127) << 23);
  return bits_float((float_bits(mul_rn(y, scale)) & ~(under | over)) | (over & kPosInf));
}

// The exponential of the Monte-Carlo kernels on both devices: exp_flush in float, exp in double.
EDD_HD_INLINE float exp_sample(float x) { return exp_flush(x); }
EDD_HD_INLINE double exp_sample(double x) { return exp_(x); }

struct SampleExp {
  template <typename T>
  EDD_HD T operator()(T x) const {
    return exp_sample(x);
  }
};

// The per-class location and scale of the samples over the temperature: a = mu / T, b = (exp(rho) + s_min) / T.
template <typename T>
EDD_HD_INLINE T sample_location(T mu, T inv_t) {
  return mul_rn(mu, inv_t);
}

template <typename T>
EDD_HD_INLINE T sample_scale(T rho, T min_scale, T inv_t) {
  return mul_rn(add_rn(exp_sample(rho), min_scale), inv_t);
}

// ---------------------------------------------------------------------------------------------------
// Noise of one Philox call: four samples of one class
// ---------------------------------------------------------------------------------------------------

enum class Family : int { kGaussian = 0, kLaplace = 1 };

struct Noise4 {
  float e0, e1, e2, e3;
};

EDD_HD_INLINE void box_muller(uint32_t radius_bits, uint32_t angle_bits, float& first, float& second) {
  const float r = sqrt_nonnegative(mul_rn(-2.0f, log_positive(uniform_open0(radius_bits))));
  float s, c;
  sincos_turns(uniform_open1(angle_bits), s, c);
  first = mul_rn(r, c);
  second = mul_rn(r, s);
}

EDD_HD_INLINE float laplace_from_bits(uint32_t w) {
  const float v = mul_rn(float(int32_t(w & 0x00ffffffu) + 1), kTwoPow24Inv);  // (0, 1]
  return bits_float(float_bits(-log_positive(v)) ^ (w & 0x80000000u));
}

template <Family kFamily>
EDD_HD_INLINE Noise4 noise4(const philox::Words& w) {
  Noise4 out;
  if (kFamily == Family::kGaussian) {
    box_muller(w.w0, w.w1, out.e0, out.e1);
    box_muller(w.w2, w.w3, out.e2, out.e3);
  } else {
    out.e0 = laplace_from_bits(w.w0);
    out.e1 = laplace_from_bits(w.w1);
    out.e2 = laplace_from_bits(w.w2);
    out.e3 = laplace_from_bits(w.w3);
  }
  return out;
}

EDD_HD_INLINE float noise_component(const Noise4& e, int j) {
  return j == 0 ? e.e0 : (j == 1 ? e.e1 : (j == 2 ? e.e2 : e.e3));
}

// ---------------------------------------------------------------------------------------------------
// Dirichlet measure terms
// ---------------------------------------------------------------------------------------------------

// ln alpha = ln(exp(z) + c) = logaddexp(z, ln c), exact where exp(z) underflows; a NaN logit stays NaN
// (the shared logaddexp takes max/min, which would drop it).
template <typename T>
EDD_HD T log_concentration(T z, T log_c) {
  if (log_c == neg_inf<T>()) return z;
  return z >= log_c ? z + log1p_(exp_(log_c - z)) : log_c + log1p_(exp_(z - log_c));
}

// x g(x) = x (psi(x + 1) - ln x) in [0, 1/2), given ln x (exact in log space even where x underflows).
// Above the series threshold psi(x + 1) - ln x = 1/(2x) + digamma_tail(x), which keeps the digits the
// direct difference cancels away.
template <typename T>
EDD_HD T x_times_g(T x, T log_x) {
  if (x >= SeriesThreshold<T>::value) return T(0.5) + x * digamma_tail(x);
  return x * (digamma(x + T(1)) - log_x);
}

// F(x) = ln Gamma(x) - (x - 1) psi(x) + x, given ln x; F(0) = -inf (the limit).
template <typename T>
EDD_HD T entropy_term(T x, T log_x) {
  if (x >= SeriesThreshold<T>::value) {
    return T(0.5) * log_x + half_log_two_pi<T>() + T(0.5) - T(0.5) / x + lgamma_tail(x) - (x - T(1)) * digamma_tail(x);
  }
  if (x == T(0)) return neg_inf<T>();
  return lgamma(x) - (x - T(1)) * digamma(x) + x;
}

// Per-position scalars of the Dirichlet measures, in float64 (alpha_0 reaches V e^80 ~ 1e40).
//   ln alpha_0 = top + log1p(rest): `top` is the largest ln alpha_k, `rest` = sum over the other classes of
//   alpha_k / alpha_top, so that ln p_k = (ln alpha_k - top) - log1p(rest) is exact for the top class
//   (p ln p of a near-one-hot student is not rounded to 0).
struct DirichletScalars {
  double log_alpha0, alpha0, log1p_rest, top;
  double g0;    // G0 = alpha_0 g(alpha_0)
  double f0;    // F(alpha_0)
  double psi0;  // psi(alpha_0)
};

EDD_HD DirichletScalars dirichlet_scalars(double top, double rest) {
  DirichletScalars s;
  s.top = top;
  s.log1p_rest = log1p_(rest);
  s.log_alpha0 = top + s.log1p_rest;
  s.alpha0 = exp_(s.log_alpha0);
  s.g0 = x_times_g(s.alpha0, s.log_alpha0);
  s.f0 = entropy_term(s.alpha0, s.log_alpha0);
  s.psi0 = digamma(s.alpha0);
  return s;
}

constexpr int kNumDirichletSums = 4;  // TU, alpha_0 MI, alpha_0 RMI, sum F(alpha_k)
constexpr int kNumDirichletMeasures = 7;  // the 5 measures, precision, differential entropy

// One class's contributions to the four row sums. `z` is the logit, `log_c` = ln c.
template <typename T>
EDD_HD void dirichlet_class_terms(T z, T c, T log_c, T top, T log1p_rest, T g0, double (&sums)[kNumDirichletSums]) {
  const T alpha = exp_(z) + c;
  const T log_alpha = log_concentration(z, log_c);
  const T log_p = (log_alpha - top) - log1p_rest;
  const T p = exp_(log_p);
  const T xg = x_times_g(alpha, log_alpha);
  sums[0] += double(-p * log_p);
  sums[1] += double(clamp_rounding(xg - p * g0));                     // alpha_k (g(alpha_k) - g(alpha_0))
  sums[2] += double(clamp_rounding((T(1) - xg) - p * (T(1) - g0)));  // alpha_k (h(alpha_k) - h(alpha_0))
  sums[3] += double(entropy_term(alpha, log_alpha));
}

// The seven per-position results from the row sums.
EDD_HD void dirichlet_finish(const DirichletScalars& s, const double (&sums)[kNumDirichletSums], int64_t vocab,
                             double* out) {
  const double inv_alpha0 = 1.0 / s.alpha0;
  const double total = sums[0];
  const double mutual_information = sums[1] * inv_alpha0;
  out[0] = total;
  out[1] = total - mutual_information;
  out[2] = mutual_information;
  out[3] = double(vocab - 1) * inv_alpha0;
  out[4] = sums[2] * inv_alpha0;
  out[5] = s.alpha0;
  out[6] = sums[3] - s.f0 - double(vocab - 1) * s.psi0;
}

}  // namespace math
}  // namespace edd_ext
