// Digamma, trigamma and log-gamma for real arguments x >= 0, in float and double, for host and device.
// Outside that domain (x < 0, -inf, NaN) each returns NaN: the recurrences below step x by 1 until it reaches
// a threshold, which never happens for x = -inf or for x < -2^24 in float (-2^53 in double), where x + 1 == x.
// At the ends of the domain: lnG(0) = psi'(0) = +inf, psi(0) = -inf; lnG(+inf) = psi(+inf) = +inf, psi'(+inf) = 0.
//
// Above a threshold (10 in double, 8 in float) each is its asymptotic (Stirling / Bernoulli) series,
// truncated where the next term is below the type's rounding error at the threshold. Below it:
//   psi'  shifts up with psi'(x) = psi'(x + 1) + 1/x^2 (all terms positive: no cancellation);
//   psi   and ln Gamma reduce with their recurrences into [1, 2], where a polynomial fitted at Chebyshev
//         nodes, with the function's roots factored out, keeps the relative accuracy near those roots
//         (psi: x0 = 1.4616...; ln Gamma: 1 and 2) that a shift-and-series route loses to cancellation.
// Measured against mpmath over (1e-30, 1e30): at most 2 ulp in double and in float (tests/test_special_functions.py).
// The losses evaluate them at Dirichlet concentrations, which are positive; `gamma_family` gives all three.
#pragma once

#include "edd_ext/macros.h"

namespace edd_ext {
namespace math {

template <typename T>
struct SeriesThreshold;
template <>
struct SeriesThreshold<double> {
  static constexpr double value = 10.0;
};
template <>
struct SeriesThreshold<float> {
  static constexpr float value = 8.0f;
};

// psi(y) - ln y + 1/(2y), for y >= threshold: -sum_n B_2n / (2n y^2n).
template <typename T>
EDD_HD T digamma_tail(T y) {
  const T f = T(1) / (y * y);
  return -f * (T(1.0 / 12) -
               f * (T(1.0 / 120) -
                    f * (T(1.0 / 252) -
                         f * (T(1.0 / 240) - f * (T(1.0 / 132) - f * (T(691.0 / 32760) - f * T(1.0 / 12)))))));
}

// psi'(y) - 1/y - 1/(2y^2), for y >= threshold: sum_n B_2n / y^(2n+1).
template <typename T>
EDD_HD T trigamma_tail(T y) {
  const T r = T(1) / y;
  const T f = r * r;
  return r * f *
         (T(1.0 / 6) -
          f * (T(1.0 / 30) -
               f * (T(1.0 / 42) -
                    f * (T(1.0 / 30) - f * (T(5.0 / 66) - f * (T(691.0 / 2730) - f * (T(7.0 / 6) - f * T(3617.0 / 510))))))));
}

// lnG(y) - [(y - 1/2) ln y - y + ln(2 pi)/2], for y >= threshold: sum_n B_2n / (2n (2n-1) y^(2n-1)).
template <typename T>
EDD_HD T lgamma_tail(T y) {
  const T r = T(1) / y;
  const T f = r * r;
  return r * (T(1.0 / 12) -
              f * (T(1.0 / 360) -
                   f * (T(1.0 / 1260) -
                        f * (T(1.0 / 1680) - f * (T(1.0 / 1188) - f * (T(691.0 / 360360) - f * T(1.0 / 156)))))));
}

// True outside the domain x >= 0 (NaN included).
template <typename T>
EDD_HD bool outside_domain(T x) {
  return !(x >= T(0));
}

template <typename T>
EDD_HD T half_log_two_pi() {
  return T(0.91893853320467274178032973640562);
}

// psi(1.5 + t) / (1.5 + t - x0) on t in [-1/2, 1/2], x0 = 1.46163214496836234126... the positive root of
// psi: a polynomial fitted at Chebyshev nodes (relative error 9e-17 at degree 20, 2e-8 at degree 9).
template <typename T>
EDD_HD T digamma_core_poly(T t);

template <>
EDD_HD double digamma_core_poly<double>(double t) {
  constexpr double c[] = {0.951055876031832879711, -0.423627421281457284244, 0.240542484240784772679, -0.148404923054858075403, 0.094988724453541820622, -0.0619221331907270689943, 0.0407608338843387033165, -0.0269758000292536667636, 0.0179072505636197743935, -0.0119081465139767382846, 0.00792697273564635837741, -0.00528090306609060557264, 0.00351875043619501354859, -0.00233755264710311833917, 0.00155807491372137622351, -0.0010776863967234224621, 0.000718410796904637792818, -0.000354763520533719787647, 0.000236501717193398146199, -0.000378390789724885796392, 0.000252259050696488506177};
  double r = c[20];
  for (int i = 19; i >= 0; --i) r = c[i] + t * r;
  return r;
}

template <>
EDD_HD float digamma_core_poly<float>(float t) {
  constexpr float c[] = {0.9510558962f, -0.4236274347f, 0.240538453f, -0.1484022375f, 0.09511622179f, -0.06200706886f, 0.03936941934f, -0.02604888223f, 0.02390907144f, -0.01590631756f};
  float r = c[9];
  for (int i = 8; i >= 0; --i) r = c[i] + t * r;
  return r;
}

// x - x0, with x0 split into a head (exactly subtracted, Sterbenz) and a tail.
EDD_HD double minus_digamma_root(double x) { return (x - 1.4616321449683622) - 9.549995429965697e-17; }
EDD_HD float minus_digamma_root(float x) { return (x - 1.4616321325302124f) - 1.243815006546356e-08f; }

// psi(x) for x >= 0: the asymptotic series from the threshold up; below it, the recurrence brings x into
// [1, 2] (down, adding 1/(x-1) + ... > 0; or up once from x < 1, adding -1/x), where the fitted core with
// its root factored out keeps the relative accuracy near the root.
template <typename T>
EDD_HD T digamma(T x) {
  if (x >= SeriesThreshold<T>::value) return log_(x) - T(0.5) / x + digamma_tail(x);
  if (outside_domain(x)) return quiet_nan<T>();
  T shift = 0;
  if (x < T(1)) {
    shift = -T(1) / x;
    x += T(1);
  }
  while (x > T(2)) {
    x -= T(1);
    shift += T(1) / x;
  }
  return minus_digamma_root(x) * digamma_core_poly(x - T(1.5)) + shift;
}

// psi'(x) for x >= 0.
template <typename T>
EDD_HD T trigamma(T x) {
  if (outside_domain(x)) return quiet_nan<T>();
  T shift = 0;
  while (x < SeriesThreshold<T>::value) {
    const T r = T(1) / x;  // r * r, not 1 / (x * x): x * x is subnormal in float below 1e-19
    shift += r * r;
    x += T(1);
  }
  const T r = T(1) / x;
  return r + T(0.5) * r * r + trigamma_tail(x) + shift;
}

// ln Gamma(1.5 + t) / ((t + 1/2)(t - 1/2)) on t in [-1/2, 1/2]: a polynomial fitted at Chebyshev nodes
// (relative error 9e-18 at degree 20, 4e-9 at degree 9). Factoring out the two roots keeps the relative
// accuracy of ln Gamma near x = 1 and x = 2, where the shift-and-Stirling route loses it to cancellation.
template <typename T>
EDD_HD T lgamma_core_poly(T t);

template <>
EDD_HD double lgamma_core_poly<double>(double t) {
  constexpr double c[] = {0.483128950540980889382, -0.145959895914305937921, 0.0629114010745648462884, -0.031308487501053271819, 0.0167970986312139495585, -0.00942562244482964900216, 0.00544645784221955293351, -0.00321207422060729067648, 0.00192291623212279232684, -0.0011644113772196050024, 0.000711520275205129861392, -0.000438035161325805358741, 0.000271302735451140075007, -0.00016857179450351722231, 0.000105417152221859049249, -0.0000679373302739704651213, 0.0000428164286279477919191, -0.0000214877025206257627058, 0.0000135842754591309424239, -0.0000185278039970329613571, 0.0000118209694454671452167};
  double r = c[20];
  for (int i = 19; i >= 0; --i) r = c[i] + t * r;
  return r;
}

template <>
EDD_HD float lgamma_core_poly<float>(float t) {
  constexpr float c[] = {0.4831289523f, -0.145959897f, 0.06291105386f, -0.03130827317f, 0.01680809775f, -0.009432411479f, 0.005325991991f, -0.003137736412f, 0.002446744656f, -0.001487484341f};
  float r = c[9];
  for (int i = 8; i >= 0; --i) r = c[i] + t * r;
  return r;
}

// ln Gamma(x) for x >= 0.
//   x < 1/2:            ln G(x + 1) - ln x        (-ln x dominates: no cancellation)
//   1/2 <= x < 1:       x (x - 1) P(x - 1/2) - ln x, every argument formed exactly
//   1 <= x <= 2:        (x - 1)(x - 2) P(x - 3/2)
//   2 < x < threshold:  ln G(x - n) + ln((x - n) ... (x - 1)), with x - n in (1, 2] (exact)
//   x >= threshold:     Stirling series
template <typename T>
EDD_HD T lgamma(T x) {
  if (x >= SeriesThreshold<T>::value) {
    if (x == pos_inf<T>()) return x;  // the series would give inf - inf
    return (x - T(0.5)) * log_(x) - x + half_log_two_pi<T>() + lgamma_tail(x);
  }
  if (outside_domain(x)) return quiet_nan<T>();
  if (x < T(0.5)) {
    const T y = x + T(1);
    return (y - T(1)) * (y - T(2)) * lgamma_core_poly(y - T(1.5)) - log_(x);
  }
  if (x < T(1)) return x * (x - T(1)) * lgamma_core_poly(x - T(0.5)) - log_(x);
  T prod = 1;
  while (x > T(2)) {
    x -= T(1);
    prod *= x;
  }
  return (x - T(1)) * (x - T(2)) * lgamma_core_poly(x - T(1.5)) + log_(prod);
}

template <typename T>
struct GammaFamily {
  T lgamma;
  T digamma;
  T trigamma;
};

// lnG(x), psi(x) and psi'(x) for x > 0 (the Dirichlet losses need all three of one concentration).
template <typename T>
EDD_HD GammaFamily<T> gamma_family(T x) {
  GammaFamily<T> out;
  out.lgamma = lgamma(x);
  out.digamma = digamma(x);
  out.trigamma = trigamma(x);
  return out;
}

}  // namespace math
}  // namespace edd_ext
