// SIMD helpers for the CPU kernels (at::vec::Vectorized<float>: AVX2 when the build enables it, a portable
// fallback otherwise). CPU-only: never included by CUDA code.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace edd_ext {
namespace cpu {

// Forces inlining of the small vector functions of the hot loops (an out-of-line call passes each vector
// through memory).
#if defined(__GNUC__)
#define EDD_CPU_INLINE inline __attribute__((always_inline))
#else
#define EDD_CPU_INLINE inline
#endif

using VecF = at::vec::Vectorized<float>;
constexpr int64_t kLanes = VecF::size();

// Loads kLanes consecutive values of any floating type as float32.
template <typename scalar_t>
EDD_CPU_INLINE VecF load_float(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return VecF::loadu(p);
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // bfloat16 is the upper half of a float32: widen and shift (exact)
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));  // F16C (exact)
#endif
  } else {
    float tmp[kLanes];
    for (int64_t i = 0; i < kLanes; ++i) tmp[i] = float(p[i]);
    return VecF::loadu(tmp);
  }
}

// Stores kLanes float32 values as any floating type.
template <typename scalar_t>
inline void store_float(const VecF& v, scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    v.store(p);
  } else {
    float tmp[kLanes];
    v.store(tmp);
    for (int64_t i = 0; i < kLanes; ++i) p[i] = scalar_t(tmp[i]);
  }
}

// Whether any lane of a comparison mask is set.
inline bool any_lane(const VecF& mask) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_movemask_ps(mask) != 0;
#else
  int32_t bits[kLanes];
  mask.store(bits);
  for (int64_t i = 0; i < kLanes; ++i) {
    if (bits[i] != 0) return true;
  }
  return false;
#endif
}

// max(a, b) without NaN propagation (x86 max returns b when either is NaN), for maxima whose NaN reaches the
// result another way.
EDD_CPU_INLINE VecF fast_max(const VecF& a, const VecF& b) {
#if defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_max_ps(a, b);
#else
  return at::vec::maximum(a, b);
#endif
}

inline float horizontal_sum(const VecF& v) {
  return at::vec::vec_reduce_all<float>([](VecF& a, VecF& b) { return a + b; }, v);
}

inline float horizontal_max(const VecF& v) {
  return at::vec::vec_reduce_all<float>([](VecF& a, VecF& b) { return at::vec::maximum(a, b); }, v);
}

// max(x, 0) that keeps NaN (x86 max returns its second operand when either is NaN).
inline VecF clamp_rounding(const VecF& x) { return at::vec::clamp_min(x, VecF(0.f)); }

// p x with 0 x = 0 for every x (-inf included), as math::xmul; NaN in p propagates.
inline VecF xmul(const VecF& p, const VecF& x) { return VecF::blendv(p * x, VecF(0.f), p == VecF(0.f)); }

// ln(exp(a) + exp(b)) for finite b.
inline VecF logaddexp(const VecF& a, const VecF& b) {
  const VecF hi = at::vec::maximum(a, b), lo = at::vec::minimum(a, b);
  return hi + (lo - hi).exp().log1p();
}

// Sums many float vectors into a double without a long float chain: a float vector accumulator is
// flushed into the double total every kFlush pushes.
struct ChunkedSum {
  static constexpr int kFlush = 64;
  VecF acc = VecF(0.f);
  double total = 0;
  int pending = 0;
  void push(const VecF& v) {
    acc = acc + v;
    if (++pending == kFlush) flush();
  }
  void flush() {
    total += double(horizontal_sum(acc));
    acc = VecF(0.f);
    pending = 0;
  }
  double result() {
    flush();
    return total;
  }
};

}  // namespace cpu
}  // namespace edd_ext
