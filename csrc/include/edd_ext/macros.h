// Portability macros for math shared by the CPU (C++) and CUDA kernels.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EDD_HD __host__ __device__ __forceinline__
#define EDD_DEVICE_CODE 1
#else
#define EDD_HD inline
#endif

#include <cmath>
#include <cstdint>
#include <limits>

namespace edd_ext {
namespace math {

// Overloads that resolve to the float or double version both on the host and on the device.
EDD_HD float exp_(float x) { return ::expf(x); }
EDD_HD double exp_(double x) { return ::exp(x); }
EDD_HD float log_(float x) { return ::logf(x); }
EDD_HD double log_(double x) { return ::log(x); }
EDD_HD float log1p_(float x) { return ::log1pf(x); }
EDD_HD double log1p_(double x) { return ::log1p(x); }
EDD_HD float expm1_(float x) { return ::expm1f(x); }
EDD_HD double expm1_(double x) { return ::expm1(x); }
EDD_HD float abs_(float x) { return ::fabsf(x); }
EDD_HD double abs_(double x) { return ::fabs(x); }
EDD_HD float max_(float a, float b) { return ::fmaxf(a, b); }
EDD_HD double max_(double a, double b) { return ::fmax(a, b); }
EDD_HD float min_(float a, float b) { return ::fminf(a, b); }
EDD_HD double min_(double a, double b) { return ::fmin(a, b); }

template <typename T>
EDD_HD T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

template <typename T>
EDD_HD T pos_inf() {
  return std::numeric_limits<T>::infinity();
}

template <typename T>
EDD_HD T quiet_nan() {
  return std::numeric_limits<T>::quiet_NaN();
}

}  // namespace math
}  // namespace edd_ext
