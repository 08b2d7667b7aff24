// The vector helpers on their own, compiled once per CPU capability: elementwise (the "simd_*" names of the test
// op edd_ext_testing::special_function, checked against mpmath under every capability), as a throughput
// micro-benchmark over a cache-resident block (the floor of benchmarks/bench_floor.py), and what this build of
// the kernels was compiled for (the tests' check that a forced capability is the one that runs).
#include <algorithm>
#include <cstdint>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/cpu/vec_special.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

EDD_CPU_INLINE VecF evaluate(VectorFunction f, const VecF& x) {
  switch (f) {
    case VectorFunction::kLgamma:
      return lgamma_only(x);
    case VectorFunction::kDigamma:
      return gamma_terms<false, true, false>(x).digamma;
    case VectorFunction::kTrigamma:
      return gamma_terms<false, false, true>(x).trigamma;
    case VectorFunction::kExp:
      return exp_fast(x);
    case VectorFunction::kLog:
      return log_fast(x);
    case VectorFunction::kExpNonpositive:
      return exp_nonpositive(x);
    case VectorFunction::kLgammaDigamma: {
      const VecGamma g = gamma_terms<true, true, false>(x);
      return g.lgamma + g.digamma;
    }
    default: {
      const VecGamma g = gamma_family(x);
      return (g.lgamma + g.digamma) + g.trigamma;
    }
  }
}

// A ragged end is padded with 1 (inside every function's domain) and dropped.
void vector_function(VectorFunction f, const float* x, float* out, int64_t n) {
  float tmp[kLanes];
  for (int64_t i = 0; i < n; i += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, n - i);
    for (int64_t j = 0; j < kLanes; ++j) tmp[j] = j < count ? x[i + j] : 1.f;
    evaluate(f, VecF::loadu(tmp)).store(tmp);
    for (int64_t j = 0; j < count; ++j) out[i + j] = tmp[j];
  }
}

// The function is dispatched once per call, outside the timed loops; n is a multiple of kLanes or the end is
// skipped.
template <VectorFunction kF>
double throughput(const float* x, int64_t n, int64_t repeats) {
  VecF acc(0.f);
  for (int64_t r = 0; r < repeats; ++r) {
    for (int64_t i = 0; i + kLanes <= n; i += kLanes) acc = acc + evaluate(kF, VecF::loadu(x + i));
  }
  return double(horizontal_sum(acc));
}

double vector_throughput(VectorFunction f, const float* x, int64_t n, int64_t repeats) {
  switch (f) {
    case VectorFunction::kLgamma:
      return throughput<VectorFunction::kLgamma>(x, n, repeats);
    case VectorFunction::kDigamma:
      return throughput<VectorFunction::kDigamma>(x, n, repeats);
    case VectorFunction::kTrigamma:
      return throughput<VectorFunction::kTrigamma>(x, n, repeats);
    case VectorFunction::kExp:
      return throughput<VectorFunction::kExp>(x, n, repeats);
    case VectorFunction::kLog:
      return throughput<VectorFunction::kLog>(x, n, repeats);
    case VectorFunction::kExpNonpositive:
      return throughput<VectorFunction::kExpNonpositive>(x, n, repeats);
    case VectorFunction::kLgammaDigamma:
      return throughput<VectorFunction::kLgammaDigamma>(x, n, repeats);
    default:
      return throughput<VectorFunction::kGammaFamily>(x, n, repeats);
  }
}

CompiledFor compiled_for() {
  CompiledFor c;
  c.capability = kCompiledCapability;
  c.lanes = kLanes;
#if defined(__AVX2__)
  c.avx2 = true;
#else
  c.avx2 = false;
#endif
#if defined(__AVX512F__)
  c.avx512 = true;
#else
  c.avx512 = false;
#endif
  return c;
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(vector_function_kernel, vector_function);
EDD_EXT_REGISTER_CPU_KERNEL(vector_throughput_kernel, vector_throughput);
EDD_EXT_REGISTER_CPU_KERNEL(compiled_for_kernel, compiled_for);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
