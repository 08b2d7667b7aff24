// Elementwise lgamma / digamma / trigamma through the shared header, so that the host/device math is
// tested against scipy.special from Python (tests/test_special_functions.py); and the CPU kernels' float32
// vector helpers (the "simd_*" names), tested against mpmath under every CPU capability.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <utility>

#include "edd_ext/checks.h"
#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/parallel.h"
#include "edd_ext/special_functions.h"

namespace edd_ext {
namespace {

template <typename T>
T evaluate(int which, T x) {
  switch (which) {
    case 0:
      return math::lgamma(x);
    case 1:
      return math::digamma(x);
    default:
      return math::trigamma(x);
  }
}

// "lgamma" | "digamma" | "trigamma": the scalar header math (CPU and CUDA), index 0..2;
// "simd_lgamma" | "simd_digamma" | "simd_trigamma" | "simd_exp" | "simd_log": the float32 vector helpers of the
// CPU kernels (csrc/cpu/simd/vector_functions.cpp, the running capability's build), index 3 + VectorFunction.
int function_index(c10::string_view name) {
  static constexpr const char* kScalar[] = {"lgamma", "digamma", "trigamma"};
  static constexpr std::pair<const char*, cpu::VectorFunction> kVector[] = {
      {"simd_lgamma", cpu::VectorFunction::kLgamma},     {"simd_digamma", cpu::VectorFunction::kDigamma},
      {"simd_trigamma", cpu::VectorFunction::kTrigamma}, {"simd_exp", cpu::VectorFunction::kExp},
      {"simd_log", cpu::VectorFunction::kLog}};
  for (int i = 0; i < 3; ++i) {
    if (name == kScalar[i]) return i;
  }
  for (const auto& [vector_name, f] : kVector) {
    if (name == vector_name) return 3 + int(f);
  }
  TORCH_CHECK_VALUE(false, "name: expected one of 'lgamma', 'digamma', 'trigamma' (or, on CPU, 'simd_lgamma', "
                    "'simd_digamma', 'simd_trigamma', 'simd_exp', 'simd_log'), got '", name, "'");
  return -1;
}

at::Tensor special_function_cpu(const at::Tensor& x, c10::string_view name) {
  const int which = function_index(name);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                    "x: expected float32 or float64, got ", x.scalar_type());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  if (which >= 3) {
    TORCH_CHECK_VALUE(in.scalar_type() == at::kFloat, "x: the simd_ variants take float32, got ", in.scalar_type());
    const cpu::VectorFunction f = cpu::VectorFunction(which - 3);
    cpu::VectorFunctionKernel* kernel = cpu::vector_function_kernel.get();
    const float* src = in.const_data_ptr<float>();
    float* dst = out.mutable_data_ptr<float>();
    cpu::parallel_positions(in.numel(), 4096, [&](int64_t b, int64_t e) { kernel(f, src + b, dst + b, e - b); });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "edd_ext::special_function", [&] {
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    cpu::parallel_positions(in.numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = evaluate<scalar_t>(which, src[i]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext_testing, CPU, m) { m.impl("special_function", &special_function_cpu); }

}  // namespace edd_ext
