// SIMD kernels of the Dirichlet distillation losses (csrc/cpu/dirichlet_losses.cpp has the ops, the formulas
// and the float64 kernels), compiled once per CPU capability: kLanes classes per step with the vector
// transcriptions of the per-class functions (edd_ext/cpu/loss_blocks.h), the scalar functions for the row
// tail, every row sum and per-position scalar (alpha_0, beta_0, the loss) in float64.
#include <cmath>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Stores one block's gradient (when computed, times the reduction's factor) and pushes its loss terms.
template <typename student_t>
inline void emit_block(const VecF& loss, const VecF& grad, const VecF& grad_scale, student_t* g, int64_t k,
                       ChunkedSum& sum) {
  sum.push(loss);
  if (g != nullptr) store_float(grad * grad_scale, g + k);
}

// EnD^2 with float32 math: e = exp(z) and alpha_0 in a first pass over the student (e kept in a scratch
// row); from logits, the members' normalisers, whose exponential pass also sums the shifted logits over the
// members into a second scratch row; then one class pass over the two rows (the teacher's M rows are read
// twice in all: for the maxima, then for the exponentials and the sum).
template <typename student_t, typename teacher_t>
void dirichlet_nll_rows(const LossView& p, const DirichletNllArgs& a, int64_t begin, int64_t end) {
  const double model_offset = a.model_offset;
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float c = float(model_offset), log_c = float(a.log_model_offset);
  const float c_minus_one = float(model_offset - 1);
  const float inv_m = float(1.0 / double(members > 0 ? members : 1));
  const student_t* student = p.student_data<student_t>();
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  const teacher_t* rows = p.teacher_rows_data<teacher_t>();
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

  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    student_t* g = out.student;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& log_sum = ws.log_sum;
    std::vector<float>& excess = ws.excess;
    std::vector<float>& shifted_sum = ws.shifted_sum;
    const student_t* z = student + n * vocab;
    const double alpha0 = student_excess_row(z, vocab, model_offset, excess.data());
    const float digamma_alpha0 = float(math::digamma(alpha0));
    const NllConsts consts{VecF(c), VecF(c_minus_one), VecF(digamma_alpha0)};
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    // from logits: l_k = (1/M) sum_m ((u_mk - shift_m) - log_sum_m) = (1/M) (D_k - sum_m log_sum_m), with
    // D_k = sum_m (u_mk - shift_m) kept by the normaliser pass (the M rows are not read a third time)
    float total_log_sum = 0.f;
    if (logits != nullptr) {
      member_normalizers(row, members, vocab, 1.f, shift.data(), log_sum.data(), nullptr, nullptr,
                              shifted_sum.data());
      for (int64_t m = 0; m < members; ++m) total_log_sum += log_sum[m];
    }
    const VecF vtotal_log_sum(total_log_sum), vinv_m(inv_m);
    const VecF vgrad_scale(grad_scale);
    ChunkedSum sum;
    VecF l, dz;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF mean_log_prob = logits != nullptr ? (VecF::loadu(shifted_sum.data() + k) - vtotal_log_sum) * vinv_m
                                                   : load_float(row + k);
      dirichlet_nll_block(VecF::loadu(excess.data() + k), mean_log_prob, consts, l, dz);
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
void proxy_kl_rows(const LossView& p, const ProxyOptions& o, int64_t begin, int64_t end) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float c = float(o.model_offset), log_c = float(o.log_model_offset), t_off = float(o.target_offset);
  TeacherOptions to;
  to.inv_members = float(1.0 / double(members > 0 ? members : 1));
  to.log_members = float(std::log(double(members > 0 ? members : 1)));
  const student_t* student = p.student_data<student_t>();
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  const teacher_t* rows = p.teacher_rows_data<teacher_t>();
  const double* measures = p.teacher_measure;
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

  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
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
      member_normalizers(row, members, vocab, 1.f, shift.data(), log_sum.data(), weights.data(), inv_sum.data());
      ChunkedSum measure_sum, mass_sum;
      for (int64_t k = 0; k < body; k += kLanes) {
        const TeacherBlock b = teacher_block_weighted(row, weights.data(), inv_sum.data(), k, members, vocab,
                                                                shift.data(), log_sum.data(), to);
        b.mean_prob.store(scratch.data() + k);
        measure_sum.push(o.mkl ? clamp_rounding(b.mean_prob * (b.log_mean_prob - b.mean_log_prob))
                               : clamp_rounding(b.mean_p_log_p - b.mean_prob * b.mean_log_prob));
        mass_sum.push(b.mean_prob);
      }
      measure = measure_sum.result();
      mass = mass_sum.result();
      for (int64_t k = body; k < vocab; ++k) {
        const math::ClassTerms<float> t = teacher_class<teacher_t, float>(
            row, k, members, vocab, shift.data(), log_sum.data(), 1.f, false, 0.f, 0.f, to.inv_members, to.log_members);
        scratch[k] = t.mean_prob;
        measure += double(t.measure[o.mkl ? 4 : 3]);
        mass += double(t.mean_prob);
      }
    } else {
      mean_probs_row = rows + n * vocab;
      measure = measures[n];
      ChunkedSum mass_sum;
      for (int64_t k = 0; k < body; k += kLanes) mass_sum.push(load_float(mean_probs_row + k));
      mass = mass_sum.result();
      for (int64_t k = body; k < vocab; ++k) mass += double(float(mean_probs_row[k]));
    }
    const double alpha0 = student_excess_row(z, vocab, o.model_offset, excess.data());
    const double target_precision = math::proxy_target_precision(measure, o.mkl, double(vocab), o.eps, o.max_precision);
    const math::ProxyScalars s =
        math::proxy_scalars(kMode, alpha0, target_precision, o.target_offset, double(vocab), mass);
    const float class_precision = float(kMode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const float dig_a0 = float(s.digamma_alpha0), dig_b0 = float(s.digamma_beta0);
    const float grad_shift = float(s.grad_shift), inv_beta0 = float(s.inv_beta0);
    const ProxyConsts consts{VecF(c),      VecF(c - 1.f), VecF(class_precision), VecF(t_off),
                                  VecF(dig_a0), VecF(dig_b0),  VecF(grad_shift),      VecF(inv_beta0)};
    auto mean_prob_at = [&](int64_t k) {
      return logits != nullptr ? VecF::loadu(scratch.data() + k) : load_float(mean_probs_row + k);
    };
    const VecF vgrad_scale(grad_scale);
    ChunkedSum sum;
    VecF l, dz;
    for (int64_t k = 0; k < body; k += kLanes) {
      proxy_kl_block<kMode>(VecF::loadu(excess.data() + k), mean_prob_at(k), consts, l, dz);
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
void proxy_kl_modes(const LossView& p, const ProxyOptions& o, int64_t begin, int64_t end) {
  switch (o.mode) {
    case math::ProxyMode::kReverse:
      return proxy_kl_rows<math::ProxyMode::kReverse, student_t, teacher_t>(p, o, begin, end);
    case math::ProxyMode::kForward:
      return proxy_kl_rows<math::ProxyMode::kForward, student_t, teacher_t>(p, o, begin, end);
    default:
      return proxy_kl_rows<math::ProxyMode::kReferenceCompat, student_t, teacher_t>(p, o, begin, end);
  }
}

void dirichlet_nll(const LossView& p, const DirichletNllArgs& a, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.teacher_type, [&](auto t) {
    dispatch_simd_dtype(p.student_type, [&](auto s) {
      dirichlet_nll_rows<typename decltype(s)::type, typename decltype(t)::type>(p, a, begin, end);
    });
  });
}

void proxy_kl(const LossView& p, const ProxyOptions& o, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.teacher_type, [&](auto t) {
    dispatch_simd_dtype(p.student_type, [&](auto s) {
      proxy_kl_modes<typename decltype(s)::type, typename decltype(t)::type>(p, o, begin, end);
    });
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(dirichlet_nll_kernel, dirichlet_nll);
EDD_EXT_REGISTER_CPU_KERNEL(proxy_kl_kernel, proxy_kl);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
