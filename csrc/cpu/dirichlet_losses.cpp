// CPU kernels of the Dirichlet distillation losses (SPEC sections 2.1 and 2.2): EnD^2 (Dirichlet NLL of
// the members) and the proxy-Dirichlet KL, forward and closed-form gradient in one call.
//
// One task per position. From raw teacher logits [M, V]: one pass per member for its log-sum-exp, then a
// single streaming pass over the teacher per class (no [M, V] copy is made); the proxy KL keeps the mean
// probabilities of the position in an O(V) scratch row between its teacher pass and its class pass. Per-class
// math in float32 (float64 for float64 inputs), every row sum and per-position scalar (alpha_0, beta_0, the
// loss) in float64. Masked positions are skipped: loss 0, gradient row 0.
//
// float32/float16/bfloat16 inputs take the SIMD kernels (*_rows_simd: kLanes classes per step with the vector
// transcriptions of the per-class functions, edd_ext/cpu/loss_blocks.h, and the scalar functions for the
// row tail); float64 inputs, and model_offset < kMinSimdModelOffset, take the scalar kernels (*_rows).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/ensemble_math.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {
namespace {

// EnD^2, per position n with l_k = (1/M) sum_m ln pi^(m)_k:
//   L = sum_k [lnG(alpha_k) - (alpha_k - 1) l_k] - lnG(alpha_0)
// d/dalpha_k of lnG(alpha_k) - lnG(alpha_0) is psi(alpha_k) - psi(alpha_0), of -(alpha_k - 1) l_k is -l_k;
// chain rule d alpha_k / dz_k = exp(z_k):  dL/dz_k = exp(z_k) (psi(alpha_k) - psi(alpha_0) - l_k).
// alpha_0 (float64) is summed first, then one pass computes every class's term and gradient.
template <typename student_t, typename teacher_t, typename acc_t>
void dirichlet_nll_rows(const LossProblem& p, double model_offset) {
  const int64_t vocab = p.vocab, members = p.members;
  const acc_t c = acc_t(model_offset), log_c = acc_t(log_or_neg_inf(model_offset)), c_minus_one = acc_t(model_offset - 1);
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const student_t* student = p.student.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr;
  const teacher_t* rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr<teacher_t>() : nullptr;
  const acc_t grad_scale = acc_t(p.grad_scale);

  struct Scratch {
    std::vector<acc_t> shift;
    std::vector<acc_t> offset;
  };
  auto make_scratch = [&] { return Scratch{std::vector<acc_t>(members), std::vector<acc_t>(members)}; };

  cpu::for_each_position<acc_t, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<acc_t>& shift = ws.shift;
    std::vector<acc_t>& offset = ws.offset;
    const student_t* z = student + n * vocab;
    const double alpha0 = cpu::student_precision<student_t, acc_t>(z, vocab, model_offset);
    const acc_t digamma_alpha0 = acc_t(math::digamma(alpha0));
    double sum = 0;
    auto class_pass = [&](auto&& mean_log_prob) {
      for (int64_t k = 0; k < vocab; ++k) {
        const math::ClassLossGrad<acc_t> t =
            math::dirichlet_nll_class(acc_t(z[k]), c, log_c, c_minus_one, mean_log_prob(k), digamma_alpha0);
        sum += double(t.loss);
        if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
      }
    };
    if (logits != nullptr) {
      const teacher_t* row = logits + n * members * vocab;
      cpu::scalar_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift.data(),
                                     offset.data());
      class_pass([&](int64_t k) {
        acc_t l = 0;
        for (int64_t m = 0; m < members; ++m) l += (acc_t(row[m * vocab + k]) - shift[m]) - offset[m];
        return l * inv_m;
      });
    } else {
      const teacher_t* row = rows + n * vocab;
      class_pass([&](int64_t k) { return acc_t(row[k]); });
    }
    return sum - math::lgamma(alpha0);
  });
}

// Proxy-Dirichlet KL, per position n (formulas and gradients in edd_ext/dirichlet_math.h, proxy_kl_class):
// target beta_k = beta^_0 pi^_k + t with beta^_0 from the ensemble's RMI (mkl) or EPKL (epkl).
//   1. from logits: the members' log-sum-exps, then one pass over the teacher that writes pi^ into the
//      scratch row and sums RMI / EPKL (ensemble_math.h, each class's term >= 0); from statistics: pi^ and
//      the measure are given;
//   2. alpha_0 and the per-position scalars (lnG, psi, psi' of alpha_0 and beta_0) in float64;
//   3. one class pass: beta_0 L_k and dL/dz_k = exp(z_k) dL/dalpha_k.
template <typename student_t, typename teacher_t, typename acc_t>
void proxy_kl_rows(const LossProblem& p, const ProxyOptions& o) {
  const int64_t vocab = p.vocab, members = p.members;
  const acc_t c = acc_t(o.model_offset), log_c = acc_t(o.log_model_offset), t_off = acc_t(o.target_offset);
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const acc_t log_m = acc_t(std::log(double(members > 0 ? members : 1)));
  const student_t* student = p.student.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr;
  const teacher_t* rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr<teacher_t>() : nullptr;
  const double* measures = p.teacher_measure.defined() ? p.teacher_measure.const_data_ptr<double>() : nullptr;
  const acc_t grad_scale = acc_t(p.grad_scale);
  const int measure_index = o.mkl ? 4 : 3;  // rmi, epkl in the ensemble measure order

  struct Scratch {
    std::vector<acc_t> shift;
    std::vector<acc_t> offset;
    std::vector<acc_t> scratch;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<acc_t>(members), std::vector<acc_t>(members),
                   std::vector<acc_t>(logits != nullptr ? vocab : 0)};
  };

  cpu::for_each_position<acc_t, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<acc_t>& shift = ws.shift;
    std::vector<acc_t>& offset = ws.offset;
    std::vector<acc_t>& scratch = ws.scratch;
    const student_t* z = student + n * vocab;
    double measure = 0, mass = 0;
    const acc_t* mean_probs_acc = nullptr;
    const teacher_t* mean_probs_row = nullptr;
    if (logits != nullptr) {
      const teacher_t* row = logits + n * members * vocab;
      cpu::scalar_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift.data(),
                                     offset.data());
      for (int64_t k = 0; k < vocab; ++k) {
        math::MemberMoments<acc_t> moments;
        for (int64_t m = 0; m < members; ++m) moments.push((acc_t(row[m * vocab + k]) - shift[m]) - offset[m]);
        const math::ClassTerms<acc_t> terms = moments.finish(inv_m, log_m);
        scratch[k] = terms.mean_prob;
        measure += double(terms.measure[measure_index]);
        mass += double(terms.mean_prob);
      }
      mean_probs_acc = scratch.data();
    } else {
      mean_probs_row = rows + n * vocab;
      measure = measures[n];
      for (int64_t k = 0; k < vocab; ++k) mass += double(acc_t(mean_probs_row[k]));
    }
    const double alpha0 = cpu::student_precision<student_t, acc_t>(z, vocab, o.model_offset);
    const double target_precision = math::proxy_target_precision(measure, o.mkl, double(vocab), o.eps, o.max_precision);
    const math::ProxyScalars s =
        math::proxy_scalars(o.mode, alpha0, target_precision, o.target_offset, double(vocab), mass);
    // the compat objective's per-class target is beta_0 pi^_k (+ 1, folded into its formula)
    const acc_t class_precision = acc_t(o.mode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const acc_t dig_a0 = acc_t(s.digamma_alpha0), dig_b0 = acc_t(s.digamma_beta0);
    const acc_t grad_shift = acc_t(s.grad_shift), inv_beta0 = acc_t(s.inv_beta0);
    double sum = 0;
    auto class_pass = [&](const auto* mean_probs) {
      for (int64_t k = 0; k < vocab; ++k) {
        const math::ClassLossGrad<acc_t> t =
            math::proxy_kl_class(o.mode, acc_t(z[k]), c, log_c, acc_t(mean_probs[k]), class_precision, t_off, dig_a0,
                                 dig_b0, grad_shift, inv_beta0);
        sum += double(t.loss);
        if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
      }
    };
    if (mean_probs_acc != nullptr) {
      class_pass(mean_probs_acc);
    } else {
      class_pass(mean_probs_row);
    }
    return (sum + s.loss_shift) * s.inv_beta0;
  });
}

using cpu::kLanes;
using cpu::VecF;

// Stores one block's gradient (when computed, times the reduction's factor) and pushes its loss terms.
template <typename student_t>
inline void emit_block(const VecF& loss, const VecF& grad, const VecF& grad_scale, student_t* g, int64_t k,
                       cpu::ChunkedSum& sum) {
  sum.push(loss);
  if (g != nullptr) cpu::store_float(grad * grad_scale, g + k);
}

// EnD^2 with float32 math: e = exp(z) and alpha_0 in a first pass over the student (e kept in a scratch
// row); from logits, the members' normalisers, whose exponential pass also sums the shifted logits over the
// members into a second scratch row; then one class pass over the two rows (the teacher's M rows are read
// twice in all: for the maxima, then for the exponentials and the sum).
template <typename student_t, typename teacher_t>
void dirichlet_nll_rows_simd(const LossProblem& p, double model_offset) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float c = float(model_offset), log_c = float(log_or_neg_inf(model_offset));
  const float c_minus_one = float(model_offset - 1);
  const float inv_m = float(1.0 / double(members > 0 ? members : 1));
  const student_t* student = p.student.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr;
  const teacher_t* rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr<teacher_t>() : nullptr;
  const float grad_scale = float(p.grad_scale);

  struct Scratch {
    std::vector<float> shift;
    std::vector<float> log_sum;
    std::vector<float> excess;
    std::vector<float> shifted_sum;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members), std::vector<float>(members), std::vector<float>(vocab),
                   std::vector<float>(logits != nullptr ? vocab : 0)};
  };

  cpu::for_each_position<float, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& log_sum = ws.log_sum;
    std::vector<float>& excess = ws.excess;
    std::vector<float>& shifted_sum = ws.shifted_sum;
    const student_t* z = student + n * vocab;
    const double alpha0 = cpu::student_excess_row(z, vocab, model_offset, excess.data());
    const float digamma_alpha0 = float(math::digamma(alpha0));
    const cpu::NllConsts consts{VecF(c), VecF(c_minus_one), VecF(digamma_alpha0)};
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    // from logits: l_k = (1/M) sum_m ((u_mk - shift_m) - log_sum_m) = (1/M) (D_k - sum_m log_sum_m), with
    // D_k = sum_m (u_mk - shift_m) kept by the normaliser pass (the M rows are not read a third time)
    float total_log_sum = 0.f;
    if (logits != nullptr) {
      cpu::member_normalizers(row, members, vocab, 1.f, shift.data(), log_sum.data(), nullptr, nullptr,
                              shifted_sum.data());
      for (int64_t m = 0; m < members; ++m) total_log_sum += log_sum[m];
    }
    const VecF vtotal_log_sum(total_log_sum), vinv_m(inv_m);
    const VecF vgrad_scale(grad_scale);
    cpu::ChunkedSum sum;
    VecF l, dz;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF mean_log_prob = logits != nullptr ? (VecF::loadu(shifted_sum.data() + k) - vtotal_log_sum) * vinv_m
                                                   : cpu::load_float(row + k);
      cpu::dirichlet_nll_block(VecF::loadu(excess.data() + k), mean_log_prob, consts, l, dz);
      emit_block(l, dz, vgrad_scale, g, k, sum);
    }
    double total = sum.result();
    for (int64_t k = body; k < vocab; ++k) {
      float mean_log_prob;
      if (logits != nullptr) {
        float acc = 0;
        for (int64_t m = 0; m < members; ++m) acc += (float(row[m * vocab + k]) - shift[m]) - log_sum[m];
        mean_log_prob = acc * inv_m;
      } else {
        mean_log_prob = float(row[k]);
      }
      const math::ClassLossGrad<float> t =
          math::dirichlet_nll_class(float(z[k]), c, log_c, c_minus_one, mean_log_prob, digamma_alpha0);
      total += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
    }
    return total - math::lgamma(alpha0);
  });
}

// Proxy-Dirichlet KL with float32 math: (from logits) the members' normalisers, keeping exp(u - max) in an
// [M, V] scratch, then one teacher pass that writes pi^ into a scratch row and sums the measure and the mass; e = exp(z) and alpha_0 into a second
// scratch row; the per-position scalars in float64; one class pass over the two scratch rows.
template <math::ProxyMode kMode, typename student_t, typename teacher_t>
void proxy_kl_rows_simd(const LossProblem& p, const ProxyOptions& o) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float c = float(o.model_offset), log_c = float(o.log_model_offset), t_off = float(o.target_offset);
  cpu::TeacherOptions to;
  to.inv_members = float(1.0 / double(members > 0 ? members : 1));
  to.log_members = float(std::log(double(members > 0 ? members : 1)));
  const student_t* student = p.student.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr;
  const teacher_t* rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr<teacher_t>() : nullptr;
  const double* measures = p.teacher_measure.defined() ? p.teacher_measure.const_data_ptr<double>() : nullptr;
  const float grad_scale = float(p.grad_scale);

  struct Scratch {
    std::vector<float> shift;
    std::vector<float> log_sum;
    std::vector<float> inv_sum;
    std::vector<float> excess;
    std::vector<float> scratch;
    std::vector<float> weights;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members),
                   std::vector<float>(members),
                   std::vector<float>(members),
                   std::vector<float>(vocab),
                   std::vector<float>(logits != nullptr ? vocab : 0),
                   std::vector<float>(logits != nullptr ? members * vocab : 0)};
  };

  cpu::for_each_position<float, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& log_sum = ws.log_sum;
    std::vector<float>& inv_sum = ws.inv_sum;
    std::vector<float>& excess = ws.excess;
    std::vector<float>& scratch = ws.scratch;
    std::vector<float>& weights = ws.weights;
    const student_t* z = student + n * vocab;
    double measure = 0, mass = 0;
    const teacher_t* mean_probs_row = nullptr;
    if (logits != nullptr) {
      const teacher_t* row = logits + n * members * vocab;
      cpu::member_normalizers(row, members, vocab, 1.f, shift.data(), log_sum.data(), weights.data(), inv_sum.data());
      cpu::ChunkedSum measure_sum, mass_sum;
      for (int64_t k = 0; k < body; k += kLanes) {
        const cpu::TeacherBlock b = cpu::teacher_block_weighted(row, weights.data(), inv_sum.data(), k, members, vocab,
                                                                shift.data(), log_sum.data(), to);
        b.mean_prob.store(scratch.data() + k);
        measure_sum.push(o.mkl ? cpu::clamp_rounding(cpu::xmul(b.mean_prob, b.log_mean_prob - b.mean_log_prob))
                               : cpu::clamp_rounding(b.mean_p_log_p - cpu::xmul(b.mean_prob, b.mean_log_prob)));
        mass_sum.push(b.mean_prob);
      }
      measure = measure_sum.result();
      mass = mass_sum.result();
      for (int64_t k = body; k < vocab; ++k) {
        const math::ClassTerms<float> t = cpu::teacher_class<teacher_t, float>(
            row, k, members, vocab, shift.data(), log_sum.data(), 1.f, false, 0.f, 0.f, to.inv_members, to.log_members);
        scratch[k] = t.mean_prob;
        measure += double(t.measure[o.mkl ? 4 : 3]);
        mass += double(t.mean_prob);
      }
    } else {
      mean_probs_row = rows + n * vocab;
      measure = measures[n];
      cpu::ChunkedSum mass_sum;
      for (int64_t k = 0; k < body; k += kLanes) mass_sum.push(cpu::load_float(mean_probs_row + k));
      mass = mass_sum.result();
      for (int64_t k = body; k < vocab; ++k) mass += double(float(mean_probs_row[k]));
    }
    const double alpha0 = cpu::student_excess_row(z, vocab, o.model_offset, excess.data());
    const double target_precision = math::proxy_target_precision(measure, o.mkl, double(vocab), o.eps, o.max_precision);
    const math::ProxyScalars s =
        math::proxy_scalars(kMode, alpha0, target_precision, o.target_offset, double(vocab), mass);
    const float class_precision = float(kMode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const float dig_a0 = float(s.digamma_alpha0), dig_b0 = float(s.digamma_beta0);
    const float grad_shift = float(s.grad_shift), inv_beta0 = float(s.inv_beta0);
    const cpu::ProxyConsts consts{VecF(c),      VecF(c - 1.f), VecF(class_precision), VecF(t_off),
                                  VecF(dig_a0), VecF(dig_b0),  VecF(grad_shift),      VecF(inv_beta0)};
    auto mean_prob_at = [&](int64_t k) {
      return logits != nullptr ? VecF::loadu(scratch.data() + k) : cpu::load_float(mean_probs_row + k);
    };
    const VecF vgrad_scale(grad_scale);
    cpu::ChunkedSum sum;
    VecF l, dz;
    for (int64_t k = 0; k < body; k += kLanes) {
      cpu::proxy_kl_block<kMode>(VecF::loadu(excess.data() + k), mean_prob_at(k), consts, l, dz);
      emit_block(l, dz, vgrad_scale, g, k, sum);
    }
    double total = sum.result();
    for (int64_t k = body; k < vocab; ++k) {
      const float mean_prob = logits != nullptr ? scratch[k] : float(mean_probs_row[k]);
      const math::ClassLossGrad<float> t = math::proxy_kl_class(
          kMode, float(z[k]), c, log_c, mean_prob, class_precision, t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
      total += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
    }
    return (total + s.loss_shift) * s.inv_beta0;
  });
}

template <typename student_t, typename teacher_t>
void proxy_kl_simd(const LossProblem& p, const ProxyOptions& o) {
  switch (o.mode) {
    case math::ProxyMode::kReverse:
      return proxy_kl_rows_simd<math::ProxyMode::kReverse, student_t, teacher_t>(p, o);
    case math::ProxyMode::kForward:
      return proxy_kl_rows_simd<math::ProxyMode::kForward, student_t, teacher_t>(p, o);
    default:
      return proxy_kl_rows_simd<math::ProxyMode::kReferenceCompat, student_t, teacher_t>(p, o);
  }
}

std::tuple<at::Tensor, at::Tensor> dirichlet_nll_cpu(const at::Tensor& student_logits,
                                                     const c10::optional<at::Tensor>& teacher_logits,
                                                     const c10::optional<at::Tensor>& mean_log_probs,
                                                     const c10::optional<at::Tensor>& mask, double model_offset,
                                                     int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  check_nonnegative_option(model_offset, "model_offset");
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_log_probs, "mean_log_probs",
                                       c10::nullopt, nullptr, mask, reduction, compute_grad);
  p.grad_scale = host_grad_scale(p);
  if (p.compute_grad) cpu::advise_huge_pages(p.grad.mutable_data_ptr(), p.grad.nbytes());
  if (p.positions > 0) {
    dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
      using student_t = typename decltype(s)::type;
      using teacher_t = typename decltype(t)::type;
      using acc_t = loss_acc_t<student_t, teacher_t>;
      if constexpr (std::is_same_v<acc_t, float>) {
        if (model_offset >= cpu::kMinSimdModelOffset) return dirichlet_nll_rows_simd<student_t, teacher_t>(p, model_offset);
      }
      dirichlet_nll_rows<student_t, teacher_t, acc_t>(p, model_offset);
    });
  }
  return {reduced_loss(p), p.grad};
}

std::tuple<at::Tensor, at::Tensor> proxy_dirichlet_kl_cpu(
    const at::Tensor& student_logits, const c10::optional<at::Tensor>& teacher_logits,
    const c10::optional<at::Tensor>& mean_probs, const c10::optional<at::Tensor>& teacher_measure,
    const c10::optional<at::Tensor>& mask, c10::string_view direction, c10::string_view precision,
    double model_offset, double target_offset, double eps, c10::optional<double> max_precision,
    bool reference_code_compat, int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const ProxyOptions o = parse_proxy_options(direction, precision, model_offset, target_offset, eps, max_precision,
                                             reference_code_compat);
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_probs, "mean_probs", teacher_measure,
                                       "teacher_measure", mask, reduction, compute_grad);
  p.grad_scale = host_grad_scale(p);
  if (p.compute_grad) cpu::advise_huge_pages(p.grad.mutable_data_ptr(), p.grad.nbytes());
  if (p.positions > 0) {
    dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
                               using student_t = typename decltype(s)::type;
                               using teacher_t = typename decltype(t)::type;
                               using acc_t = loss_acc_t<student_t, teacher_t>;
                               if constexpr (std::is_same_v<acc_t, float>) {
                                 if (o.model_offset >= cpu::kMinSimdModelOffset) return proxy_kl_simd<student_t, teacher_t>(p, o);
                               }
                               proxy_kl_rows<student_t, teacher_t, acc_t>(p, o);
                             });
  }
  return {reduced_loss(p), p.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) {
  m.impl("dirichlet_nll", &dirichlet_nll_cpu);
  m.impl("proxy_dirichlet_kl", &proxy_dirichlet_kl_cpu);
}

}  // namespace edd_ext
