// SIMD helpers for the per-capability CPU kernels (csrc/cpu/simd/): at::vec::Vectorized<float> is 16 lanes of
// AVX-512, 8 of AVX2, or ATen's portable 8-lane fallback, as CPU_CAPABILITY_AVX512 / CPU_CAPABILITY_AVX2 say.
// CPU-only: never included by CUDA code.
//
// Every definition here and in the headers built on it (vec_math.h, vec_special.h, teacher_rows.h,
// loss_blocks.h) lives in the inline namespace CPU_CAPABILITY, like at::vec itself, so that the copies the
// three capability builds make of an inline function carry three different names and never merge at link
// time (an AVX-512 copy must not stand in for the portable one). Shared translation units, compiled once
// without CPU_CAPABILITY, must not include these headers: they call the kernels through edd_ext/cpu/kernels.h.
#pragma once

#if !defined(CPU_CAPABILITY)
#error "edd_ext/cpu/vec.h belongs to the per-capability kernel sources (csrc/cpu/simd/, compiled with CPU_CAPABILITY)"
#endif

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if (defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)) && !defined(_MSC_VER)
#define EDD_CPU_X86_SIMD 1
#endif

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {

// Forces inlining of the small vector functions of the hot loops (an out-of-line call passes each vector
// through memory).
#if defined(__GNUC__)
#define EDD_CPU_INLINE inline __attribute__((always_inline))
#else
#define EDD_CPU_INLINE inline
#endif

using VecF = at::vec::Vectorized<float>;
using VecI = at::vec::Vectorized<int32_t>;
constexpr int64_t kLanes = VecF::size();
static_assert(int64_t(VecI::size()) == kLanes, "float and int32 vectors must have the same lanes");

// The bits of a float vector as int32 lanes and back (at::vec::cast has no int32 <- float specialisation,
// and its generic form goes through memory).
EDD_CPU_INLINE VecI lane_bits(const VecF& v) {
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  return _mm512_castps_si512(v);
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_castps_si256(v);
#else
  return at::vec::cast<int32_t>(v);
#endif
}

EDD_CPU_INLINE VecF lanes_float(const VecI& v) { return at::vec::cast<float>(v); }

// Loads kLanes consecutive values of any floating type as float32.
template <typename scalar_t>
EDD_CPU_INLINE VecF load_float(const scalar_t* p) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return VecF::loadu(p);
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // bfloat16 is the upper half of a float32: widen and shift (exact)
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));  // exact
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
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
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  const __m512i bits = _mm512_castps_si512(mask);
  return _mm512_test_epi32_mask(bits, bits) != 0;
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
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

// max(a, b) and min(a, b) with the x86 rule for NaN: the second operand is returned when either is NaN (so
// fast_max(c, x) keeps a NaN x, and a running fast_max(m, x) skips one). at::vec's maximum / minimum propagate
// NaN from either side at the cost of extra instructions.
EDD_CPU_INLINE VecF fast_max(const VecF& a, const VecF& b) {
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  return _mm512_max_ps(a, b);
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_max_ps(a, b);
#else
  return VecF::blendv(b, a, a > b);
#endif
}

EDD_CPU_INLINE VecF fast_min(const VecF& a, const VecF& b) {
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  return _mm512_min_ps(a, b);
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_min_ps(a, b);
#else
  return VecF::blendv(b, a, a < b);
#endif
}

// `value` where `x < bound` is false (NaN x included), 0 where it is true.
EDD_CPU_INLINE VecF zero_where_less(const VecF& value, const VecF& x, const VecF& bound) {
#if defined(CPU_CAPABILITY_AVX512) && !defined(_MSC_VER)
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, bound, _CMP_NLT_UQ), value);
#elif defined(CPU_CAPABILITY_AVX2) && !defined(_MSC_VER)
  return _mm256_andnot_ps(_mm256_cmp_ps(x, bound, _CMP_LT_OQ), value);
#else
  return VecF::blendv(value, VecF(0.f), x < bound);
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
