// Elementwise lgamma / digamma / trigamma through the shared header, so that the host/device math is
// tested against scipy.special from Python (tests/test_special_functions.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "edd_ext/checks.h"
#include "edd_ext/cpu/vec_special.h"
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

// "lgamma" | "digamma" | "trigamma": the scalar header math (CPU and CUDA);
// "simd_lgamma" | "simd_digamma" | "simd_trigamma": the float32 SIMD variant used by the CPU loss kernels.
int function_index(c10::string_view name) {
  const bool simd = name.substr(0, 5) == "simd_";
  const c10::string_view base = simd ? name.substr(5) : name;
  int index = 2;
  if (base == "lgamma") index = 0;
  else if (base == "digamma") index = 1;
  else
    TORCH_CHECK_VALUE(base == "trigamma", "name: expected one of 'lgamma', 'digamma', 'trigamma' (or their 'simd_' "
                      "variants on CPU), got '", name, "'");
  return simd ? index + 3 : index;
}

void simd_float(int which, const float* src, float* dst, int64_t begin, int64_t end) {
  using cpu::kLanes;
  int64_t i = begin;
  float tmp[kLanes];
  for (; i < end; i += kLanes) {
    const int64_t count = std::min<int64_t>(kLanes, end - i);
    for (int64_t j = 0; j < kLanes; ++j) tmp[j] = j < count ? src[i + j] : 1.f;
    const cpu::VecGamma g = cpu::gamma_family(cpu::VecF::loadu(tmp));
    (which == 0 ? g.lgamma : (which == 1 ? g.digamma : g.trigamma)).store(tmp);
    for (int64_t j = 0; j < count; ++j) dst[i + j] = tmp[j];
  }
}

at::Tensor special_function_cpu(const at::Tensor& x, c10::string_view name) {
  const int which = function_index(name);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                    "x: expected float32 or float64, got ", x.scalar_type());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  if (which >= 3) {
    TORCH_CHECK_VALUE(in.scalar_type() == at::kFloat, "x: the simd_ variants take float32, got ", in.scalar_type());
    const float* src = in.const_data_ptr<float>();
    float* dst = out.mutable_data_ptr<float>();
    at::parallel_for(0, in.numel(), 4096, [&](int64_t b, int64_t e) { simd_float(which - 3, src, dst, b, e); });
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "edd_ext::special_function", [&] {
    const scalar_t* src = in.const_data_ptr<scalar_t>();
    scalar_t* dst = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, in.numel(), 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) dst[i] = evaluate<scalar_t>(which, src[i]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext_testing, CPU, m) { m.impl("special_function", &special_function_cpu); }

}  // namespace edd_ext
