// CPU kernel of the logit-space distillation losses (SPEC section 2.3): Gaussian and Laplace negative
// log-likelihood of the members' normalised teacher logits under the student's per-class location and
// scale, forward and closed-form gradients in one call.
//
// One task per position: the members' normalisers (log-sum-exp or mean logit), then one streaming pass over
// the teacher per class. Gaussian deviations are accumulated in centred form around a pivot member
// (logit_math.h, CentredMoments: never E[x^2] - 2 mu E[x] + mu^2); Laplace needs every member (|x_m - mu| and sign(x_m - mu)).
// Float32 math (float64 for float64 inputs), float64 row sums. float32/float16/bfloat16 inputs take the SIMD
// kernel (csrc/cpu/simd/logit_losses.cpp, compiled once per CPU capability: kLanes classes per step,
// edd_ext/cpu/loss_blocks.h, scalar row tail); float64 inputs the scalar kernel here.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {
namespace {

// Gaussian, per class (logit_math.h, gaussian_class):
//   L_k = ln s + ln(2 pi)/2 + v / (2 s^2),  v = (1/M) sum_m (x_m - mu)^2 = spread/M + (x- - mu)^2
//   dL/dmu = (mu - x-)/s^2,  dL/drho = (1 - v/s^2)(s - s_min)/s
// Laplace, per class (laplace_class):
//   L_k = ln s + ln 2 + a/s,  a = (1/M) sum_m |x_m - mu|
//   dL/dmu = -(1/(M s)) sum_m sign(x_m - mu),  dL/drho = (1 - a/s)(s - s_min)/s
template <typename student_t, typename teacher_t, typename acc_t>
void logit_nll_rows(const LossProblem& p, bool laplace, math::TeacherNorm norm, double temperature, double min_scale) {
  const int64_t vocab = p.vocab, members = p.members;
  const acc_t inv_m = acc_t(1.0 / double(members));
  const acc_t inv_t = acc_t(1.0 / temperature), log_min_scale = acc_t(log_or_neg_inf(min_scale));
  const student_t* locs = p.student.const_data_ptr<student_t>();
  const student_t* log_scales = p.log_scale.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.const_data_ptr<teacher_t>();
  const acc_t grad_scale = acc_t(p.grad_scale);

  struct Scratch {
    std::vector<acc_t> shift;
    std::vector<acc_t> offset;
  };
  auto make_scratch = [&] { return Scratch{std::vector<acc_t>(members), std::vector<acc_t>(members)}; };

  cpu::for_each_position<acc_t, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g_loc = out.student;
    student_t* g_rho = out.log_scale;
    std::vector<acc_t>& shift = ws.shift;
    std::vector<acc_t>& offset = ws.offset;
    const student_t* mu_row = locs + n * vocab;
    const student_t* rho_row = log_scales + n * vocab;
    const teacher_t* row = logits + n * members * vocab;
    cpu::scalar_target_normalizers(row, members, vocab, inv_t, norm, shift.data(), offset.data());
    auto target = [&](int64_t m, int64_t k) { return (acc_t(row[m * vocab + k]) * inv_t - shift[m]) - offset[m]; };
    double sum = 0;
    for (int64_t k = 0; k < vocab; ++k) {
      const math::LocScaleLossGrad<acc_t> t =
          math::logit_class<acc_t>(laplace, target, members, k, acc_t(mu_row[k]), acc_t(rho_row[k]), log_min_scale, inv_m);
      sum += double(t.loss);
      if (g_loc != nullptr) {
        g_loc[k] = student_t(t.grad_loc * grad_scale);
        g_rho[k] = student_t(t.grad_log_scale * grad_scale);
      }
    }
    return sum;
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logit_nll_cpu(const at::Tensor& loc, const at::Tensor& log_scale,
                                                             const at::Tensor& teacher_logits,
                                                             const c10::optional<at::Tensor>& mask,
                                                             c10::string_view family, c10::string_view teacher_norm,
                                                             double temperature, double min_scale, int64_t reduction,
                                                             bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const bool laplace = parse_logit_family(family);
  const math::TeacherNorm norm = parse_teacher_norm(teacher_norm);
  check_positive_option(temperature, "temperature");
  check_nonnegative_option(min_scale, "min_scale");
  LossProblem p = make_logit_problem(loc, log_scale, teacher_logits, mask, reduction, compute_grad);
  p.grad_scale = host_grad_scale(p);
  if (p.compute_grad) cpu::advise_huge_pages(p.grad.mutable_data_ptr(), p.grad.nbytes());
  if (p.compute_grad) cpu::advise_huge_pages(p.grad_log_scale.mutable_data_ptr(), p.grad_log_scale.nbytes());
  if (p.positions > 0) {
    dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
      using student_t = typename decltype(s)::type;
      using teacher_t = typename decltype(t)::type;
      using acc_t = loss_acc_t<student_t, teacher_t>;
      if constexpr (std::is_same_v<acc_t, float>) {
        cpu::run_simd_kernel(cpu::logit_nll_kernel, p,
                             cpu::LogitNllArgs{laplace, norm, 1.0 / temperature, log_or_neg_inf(min_scale)});
      } else {
        logit_nll_rows<student_t, teacher_t, acc_t>(p, laplace, norm, temperature, min_scale);
      }
    });
  }
  return {reduced_loss(p), p.grad, p.grad_log_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("logit_nll", &logit_nll_cpu); }

}  // namespace edd_ext
