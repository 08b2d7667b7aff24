// scale_grad_ on the CPU (edd_ext/grad_scale.h): one task per block of rows; a factor of exactly 1 and masked
// rows leave the row untouched.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>

#include "edd_ext/grad_scale.h"

namespace edd_ext {
namespace {

template <typename grad_t, typename factor_t>
void scale_rows(const GradScaleProblem& p, grad_t* grad) {
  using acc_t = at::opmath_type<grad_t>;
  const factor_t* factor = p.factor.const_data_ptr<factor_t>();
  const bool* keep = p.mask_data();
  const int64_t vocab = p.vocab;
  at::parallel_for(0, p.rows, std::max<int64_t>(1, 32768 / vocab), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const factor_t f = factor[n * p.factor_stride];
      if ((keep != nullptr && !keep[n]) || f == factor_t(1)) continue;
      const acc_t s = acc_t(f);
      grad_t* g = grad + n * vocab;
      for (int64_t k = 0; k < vocab; ++k) g[k] = grad_t(acc_t(g[k]) * s);
    }
  });
}

void scale_grad_cpu(at::Tensor& grad, const at::Tensor& factor, const c10::optional<at::Tensor>& mask) {
  const GradScaleProblem p = make_grad_scale_problem(grad, factor, mask);
  if (p.rows == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "edd_ext::scale_grad_", [&] {
    if (p.factor.scalar_type() == at::kDouble) {
      scale_rows<scalar_t, double>(p, grad.mutable_data_ptr<scalar_t>());
    } else {
      scale_rows<scalar_t, float>(p, grad.mutable_data_ptr<scalar_t>());
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("scale_grad_", &scale_grad_cpu); }

}  // namespace edd_ext
