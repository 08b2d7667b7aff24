// CPU kernels of the Dirichlet student's uncertainty measures (SPEC section 3; formulas in
// edd_ext/student_math.h): two passes over each position's V logits, one task per position.
//   1. ln alpha_0 = top + log1p(rest): top = ln alpha of the largest logit, rest = sum of alpha_k / alpha_top
//      over the other classes (and the ties);
//   2. every class's share of the four row sums (TU, alpha_0 MI, alpha_0 RMI, sum F(alpha_k)).
// Row sums and the per-position scalars are float64.
//
// float32/float16/bfloat16 logits take the SIMD kernel (csrc/cpu/simd/dirichlet_uncertainty.cpp, compiled once
// per CPU capability: kLanes classes per step, float32 math with the vector special functions of
// edd_ext/cpu/vec_special.h, the scalar header math for the row tail); float64 logits, and model_offset <
// kMinSimdModelOffset (concentrations near 0), take the scalar kernel here (dirichlet_rows), whose per-class
// terms are the header functions themselves.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/parallel.h"
#include "edd_ext/student_uncertainty_host.h"

namespace edd_ext {
namespace {

// Positions per parallel chunk: about 4k classes.
int64_t dirichlet_grain(const DirichletProblem& p) { return std::max<int64_t>(1, 4096 / p.vocab); }

template <typename scalar_t, typename acc_t>
void dirichlet_rows(const DirichletProblem& p, const scalar_t* logits, double* out) {
  const int64_t vocab = p.vocab;
  const acc_t c = acc_t(p.offset), log_c = acc_t(p.log_offset);
  cpu::parallel_positions(p.positions, dirichlet_grain(p), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* z = logits + n * vocab;
      // Pass 1: ln alpha_0 = top + log1p(rest), top = ln alpha of the largest logit (logaddexp is monotone).
      acc_t max_z = acc_t(z[0]);
      for (int64_t k = 1; k < vocab; ++k) max_z = math::larger(max_z, acc_t(z[k]));
      const acc_t top = math::log_concentration(max_z, log_c);
      double rest = 0, ties = 0;  // alpha_k / alpha_top over the other classes; classes equal to the top
      for (int64_t k = 0; k < vocab; ++k) {
        const acc_t zk = acc_t(z[k]);
        if (zk == max_z) {
          ties += 1;
        } else {
          rest += double(math::exp_(math::log_concentration(zk, log_c) - top));
        }
      }
      const math::DirichletScalars s = math::dirichlet_scalars(double(top), rest + (ties - 1));
      // Pass 2: the per-class terms.
      double sums[math::kNumDirichletSums] = {0, 0, 0, 0};
      const acc_t log1p_rest = acc_t(s.log1p_rest), g0 = acc_t(s.g0);
      for (int64_t k = 0; k < vocab; ++k) {
        math::dirichlet_class_terms<acc_t>(acc_t(z[k]), c, log_c, top, log1p_rest, g0, sums);
      }
      math::dirichlet_finish(s, sums, vocab, out + n * math::kNumDirichletMeasures);
    }
  });
}

at::Tensor dirichlet_uncertainty_cpu(const at::Tensor& student_logits, double model_offset) {
  DirichletProblem p = make_dirichlet_problem(student_logits, model_offset);
  if (p.positions == 0) return p.out;
  if (p.logits.scalar_type() != at::kDouble && p.offset >= cpu::kMinSimdModelOffset) {
    const cpu::DirichletUncertaintyView v{.logits = p.logits.const_data_ptr(), .dtype = p.logits.scalar_type(),
                                          .out = p.out.mutable_data_ptr<double>(), .positions = p.positions,
                                          .vocab = p.vocab, .offset = p.offset, .log_offset = p.log_offset};
    cpu::run_kernel(cpu::dirichlet_uncertainty_kernel, p.positions, dirichlet_grain(p), v);
    return p.out;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.logits.scalar_type(), "edd_ext::dirichlet_uncertainty",
                                  [&] {
                                    using acc_t = at::opmath_type<scalar_t>;
                                    dirichlet_rows<scalar_t, acc_t>(p, p.logits.const_data_ptr<scalar_t>(),
                                                                    p.out.mutable_data_ptr<double>());
                                  });
  return p.out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("dirichlet_uncertainty", &dirichlet_uncertainty_cpu); }

}  // namespace edd_ext
