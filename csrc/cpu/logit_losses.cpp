// CPU kernel of the logit-space distillation losses (SPEC section 2.3): Gaussian and Laplace negative
// log-likelihood of the members' normalised teacher logits under the student's per-class location and
// scale, forward and closed-form gradients in one call.
//
// One task per position: the members' normalisers (log-sum-exp or mean logit), then one streaming pass over
// the teacher per class. Gaussian deviations are accumulated in centred form around a pivot member
// (logit_math.h, CentredMoments: never E[x^2] - 2 mu E[x] + mu^2); Laplace needs every member (|x_m - mu| and sign(x_m - mu)).
// Float32 math (float64 for float64 inputs), float64 row sums. float32/float16/bfloat16 inputs take the SIMD
// kernel (logit_nll_rows_simd: kLanes classes per step, edd_ext/cpu/loss_blocks.h, scalar row tail).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {
namespace {

// One class of either family with the header math (target(m, k): member m's normalised target).
template <typename acc_t, typename Target>
math::LocScaleLossGrad<acc_t> logit_class(bool laplace, const Target& target, int64_t members, int64_t k, acc_t mu,
                                          acc_t rho, acc_t log_min_scale, acc_t inv_m) {
  if (laplace) {
    acc_t abs_sum = 0, sign_sum = 0;
    for (int64_t m = 0; m < members; ++m) {
      const acc_t d = target(m, k) - mu;
      abs_sum += math::abs_(d);
      sign_sum += math::sign_of(d);
    }
    return math::laplace_class(rho, log_min_scale, abs_sum, sign_sum, inv_m);
  }
  math::CentredMoments<acc_t> c;
  c.first(target(0, k));
  for (int64_t m = 1; m < members; ++m) c.add(target(m, k));
  c.finish_mean(inv_m);
  for (int64_t m = 0; m < members; ++m) c.add_spread(target(m, k));
  return math::gaussian_of(c, rho, log_min_scale, mu, inv_m);
}

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
          logit_class<acc_t>(laplace, target, members, k, acc_t(mu_row[k]), acc_t(rho_row[k]), log_min_scale, inv_m);
      sum += double(t.loss);
      if (g_loc != nullptr) {
        g_loc[k] = student_t(t.grad_loc * grad_scale);
        g_rho[k] = student_t(t.grad_log_scale * grad_scale);
      }
    }
    return sum;
  });
}

using cpu::kLanes;
using cpu::VecF;

template <typename student_t, typename teacher_t>
void logit_nll_rows_simd(const LossProblem& p, bool laplace, math::TeacherNorm norm, double temperature,
                         double min_scale) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float inv_m = float(1.0 / double(members));
  const float inv_t = float(1.0 / temperature), log_min_scale = float(log_or_neg_inf(min_scale));
  const bool no_min_scale = log_min_scale == math::neg_inf<float>();
  const student_t* locs = p.student.const_data_ptr<student_t>();
  const student_t* log_scales = p.log_scale.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.const_data_ptr<teacher_t>();
  const VecF vgrad_scale(float(p.grad_scale));
  const float grad_scale = float(p.grad_scale);

  struct Scratch {
    std::vector<float> shift;
    std::vector<float> offset;
  };
  auto make_scratch = [&] { return Scratch{std::vector<float>(members), std::vector<float>(members)}; };

  cpu::for_each_position<float, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g_loc = out.student;
    student_t* g_rho = out.log_scale;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& offset = ws.offset;
    const student_t* mu_row = locs + n * vocab;
    const student_t* rho_row = log_scales + n * vocab;
    const teacher_t* row = logits + n * members * vocab;
    cpu::target_normalizers(row, members, vocab, inv_t, norm, shift.data(), offset.data());
    cpu::ChunkedSum sum;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF mu = cpu::load_float(mu_row + k);
      const cpu::ScaleBlock s = cpu::scale_block(cpu::load_float(rho_row + k), log_min_scale, no_min_scale);
      const cpu::LocScaleBlock t =
          laplace ? cpu::laplace_block(row, k, members, vocab, inv_t, shift.data(), offset.data(), mu, s, inv_m)
                  : cpu::gaussian_block(row, k, members, vocab, inv_t, shift.data(), offset.data(), mu, s, inv_m);
      sum.push(t.loss);
      if (g_loc != nullptr) {
        cpu::store_float(t.grad_loc * vgrad_scale, g_loc + k);
        cpu::store_float(t.grad_log_scale * vgrad_scale, g_rho + k);
      }
    }
    double total = sum.result();
    auto target = [&](int64_t m, int64_t k) { return (float(row[m * vocab + k]) * inv_t - shift[m]) - offset[m]; };
    for (int64_t k = body; k < vocab; ++k) {
      const math::LocScaleLossGrad<float> t =
          logit_class<float>(laplace, target, members, k, float(mu_row[k]), float(rho_row[k]), log_min_scale, inv_m);
      total += double(t.loss);
      if (g_loc != nullptr) {
        g_loc[k] = student_t(t.grad_loc * grad_scale);
        g_rho[k] = student_t(t.grad_log_scale * grad_scale);
      }
    }
    return total;
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
        return logit_nll_rows_simd<student_t, teacher_t>(p, laplace, norm, temperature, min_scale);
      }
      logit_nll_rows<student_t, teacher_t, acc_t>(p, laplace, norm, temperature, min_scale);
    });
  }
  return {reduced_loss(p), p.grad, p.grad_log_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("logit_nll", &logit_nll_cpu); }

}  // namespace edd_ext
