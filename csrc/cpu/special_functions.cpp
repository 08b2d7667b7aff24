// Elementwise lgamma / digamma / trigamma through the shared header, so that the host/device math is
// tested against scipy.special from Python (tests/test_special_functions.py).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "edd_ext/checks.h"
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

int function_index(c10::string_view name) {
  if (name == "lgamma") return 0;
  if (name == "digamma") return 1;
  TORCH_CHECK_VALUE(name == "trigamma", "name: expected one of 'lgamma', 'digamma', 'trigamma', got '", name, "'");
  return 2;
}

at::Tensor special_function_cpu(const at::Tensor& x, c10::string_view name) {
  const int which = function_index(name);
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                    "x: expected float32 or float64, got ", x.scalar_type());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
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

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("special_function", &special_function_cpu); }

}  // namespace edd_ext
