// CPU kernel of the EnD baseline, KL from the ensemble mean to the student's categorical (SPEC section 2.4),
// forward and closed-form gradient in one call. One task per position: the student's log-sum-exp and (from
// raw teacher logits) each member's, then one streaming pass that forms pi^_k from the M members, the loss
// term and the gradient. Float32 math (float64 for float64 inputs), float64 row sums. float32/float16/bfloat16
// inputs take the SIMD kernel (ensemble_kl_rows_simd: kLanes classes per step, scalar row tail).
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

// L = sum_k pi^_k (ln pi^_k - log q_k), q = softmax(z). With log q_k = z_k - lse(z),
// dL/dz_j = -pi^_j + (sum_k pi^_k) q_j = q_j - pi^_j (pi^ sums to one).
// ln pi^_k = ln(sum_m exp(l_mk)) - ln M from the members' log-probabilities l_mk (0 ln 0 = 0 where they
// underflow); from statistics, ln pi^_k = ln(mean_probs_k).
template <typename student_t, typename teacher_t, typename acc_t>
void ensemble_kl_rows(const LossProblem& p) {
  const int64_t vocab = p.vocab, members = p.members;
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const acc_t log_m = acc_t(std::log(double(members > 0 ? members : 1)));
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
    math::OnlineLogSumExp<acc_t, double> student_lse;
    for (int64_t k = 0; k < vocab; ++k) student_lse.push(acc_t(z[k]));
    const acc_t z_max = student_lse.max, z_log_sum = acc_t(std::log(student_lse.sum));
    double sum = 0;
    auto class_pass = [&](auto&& mean_prob_and_log) {
      for (int64_t k = 0; k < vocab; ++k) {
        acc_t mean_prob, log_mean_prob;
        mean_prob_and_log(k, mean_prob, log_mean_prob);
        const math::KLClass<acc_t> t = math::ensemble_kl_class(acc_t(z[k]), z_max, z_log_sum, mean_prob, log_mean_prob);
        sum += double(t.loss);
        if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
      }
    };
    if (logits != nullptr) {
      const teacher_t* row = logits + n * members * vocab;
      cpu::scalar_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift.data(),
                                     offset.data());
      class_pass([&](int64_t k, acc_t& mean_prob, acc_t& log_mean_prob) {
        acc_t sum_p = 0;
        for (int64_t m = 0; m < members; ++m) sum_p += math::exp_((acc_t(row[m * vocab + k]) - shift[m]) - offset[m]);
        mean_prob = sum_p * inv_m;
        log_mean_prob = math::log_(sum_p) - log_m;
      });
    } else {
      const teacher_t* row = rows + n * vocab;
      class_pass([&](int64_t k, acc_t& mean_prob, acc_t& log_mean_prob) {
        mean_prob = acc_t(row[k]);
        log_mean_prob = math::log_(mean_prob);
      });
    }
    return sum;
  });
}

using cpu::kLanes;
using cpu::VecF;

// The SIMD kernel forms the members' probabilities from the exp(u - max) its normaliser pass keeps ([M, V]
// scratch): p_mk = w_mk / sum_k w_mk; the per-class terms are cpu::ensemble_kl_block.

template <typename student_t, typename teacher_t>
void ensemble_kl_rows_simd(const LossProblem& p) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float inv_m = float(1.0 / double(members > 0 ? members : 1));
  const float log_m = float(std::log(double(members > 0 ? members : 1)));
  const student_t* student = p.student.const_data_ptr<student_t>();
  const teacher_t* logits = p.teacher_logits.defined() ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr;
  const teacher_t* rows = p.teacher_rows.defined() ? p.teacher_rows.const_data_ptr<teacher_t>() : nullptr;
  const float grad_scale = float(p.grad_scale);

  struct Scratch {
    std::vector<float> shift;
    std::vector<float> log_sum;
    std::vector<float> inv_sum;
    std::vector<float> weights;
  };
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members), std::vector<float>(members), std::vector<float>(members),
                   std::vector<float>(logits != nullptr ? members * vocab : 0)};
  };

  cpu::for_each_position<float, student_t>(p, make_scratch, [&](int64_t n, Scratch& ws, cpu::GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& log_sum = ws.log_sum;
    std::vector<float>& inv_sum = ws.inv_sum;
    std::vector<float>& weights = ws.weights;
    const student_t* z = student + n * vocab;
    float z_max, z_log_sum;
    cpu::member_normalizers(z, 1, vocab, 1.f, &z_max, &z_log_sum);
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    if (logits != nullptr) {
      cpu::member_normalizers(row, members, vocab, 1.f, shift.data(), log_sum.data(), weights.data(), inv_sum.data());
    }
    const VecF vz_max(z_max), vz_log_sum(z_log_sum), vgrad_scale(grad_scale);
    cpu::ChunkedSum sum;
    VecF l, dz;
    for (int64_t k = 0; k < body; k += kLanes) {
      VecF mean_prob, log_mean_prob;
      if (logits != nullptr) {
        VecF sum_p(0.f);
        for (int64_t m = 0; m < members; ++m) {
          sum_p = sum_p + VecF::loadu(weights.data() + m * vocab + k) * VecF(inv_sum[m]);
        }
        mean_prob = sum_p * VecF(inv_m);
        log_mean_prob = cpu::log_fast(sum_p) - VecF(log_m);
      } else {
        mean_prob = cpu::load_float(row + k);
        log_mean_prob = cpu::log_fast(mean_prob);
      }
      cpu::ensemble_kl_block(cpu::load_float(z + k), vz_max, vz_log_sum, mean_prob, log_mean_prob, l, dz);
      sum.push(l);
      if (g != nullptr) cpu::store_float(dz * vgrad_scale, g + k);
    }
    double total = sum.result();
    for (int64_t k = body; k < vocab; ++k) {
      float mean_prob, log_mean_prob;
      if (logits != nullptr) {
        float sum_p = 0;
        for (int64_t m = 0; m < members; ++m) sum_p += math::exp_((float(row[m * vocab + k]) - shift[m]) - log_sum[m]);
        mean_prob = sum_p * inv_m;
        log_mean_prob = math::log_(sum_p) - log_m;
      } else {
        mean_prob = float(row[k]);
        log_mean_prob = math::log_(mean_prob);
      }
      const math::KLClass<float> t = math::ensemble_kl_class(float(z[k]), z_max, z_log_sum, mean_prob, log_mean_prob);
      total += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * grad_scale);
    }
    return total;
  });
}

std::tuple<at::Tensor, at::Tensor> ensemble_kl_cpu(const at::Tensor& student_logits,
                                                   const c10::optional<at::Tensor>& teacher_logits,
                                                   const c10::optional<at::Tensor>& mean_probs,
                                                   const c10::optional<at::Tensor>& mask, int64_t reduction,
                                                   bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_probs, "mean_probs", c10::nullopt,
                                       nullptr, mask, reduction, compute_grad);
  p.grad_scale = host_grad_scale(p);
  if (p.compute_grad) cpu::advise_huge_pages(p.grad.mutable_data_ptr(), p.grad.nbytes());
  if (p.positions > 0) {
    dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
      using student_t = typename decltype(s)::type;
      using teacher_t = typename decltype(t)::type;
      using acc_t = loss_acc_t<student_t, teacher_t>;
      if constexpr (std::is_same_v<acc_t, float>) return ensemble_kl_rows_simd<student_t, teacher_t>(p);
      ensemble_kl_rows<student_t, teacher_t, acc_t>(p);
    });
  }
  return {reduced_loss(p), p.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("ensemble_kl", &ensemble_kl_cpu); }

}  // namespace edd_ext
