// CPU kernels for the teacher-ensemble statistics (SPEC section 1): one task per position, two streaming
// passes over its [M, V] logits — per-member log-softmax normalisers, then the per-class moments
// (cpu::teacher_class_pass) — with SIMD float32 math for half/bfloat16/float32 inputs (edd_ext/cpu/teacher_rows.h)
// and scalar float64 math for float64; row sums (exponential sums and measures) in float64.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/ensemble_stats_host.h"

namespace edd_ext {
namespace {

int64_t grain_for(const EnsembleStatsProblem& p) { return std::max<int64_t>(1, 32768 / (p.members * p.vocab)); }

// float32 math (inputs float16, bfloat16, float32).
template <typename scalar_t>
void ensemble_rows_simd(const EnsembleStatsProblem& p, const scalar_t* logits, float* mean_probs,
                        float* mean_log_probs, float* measures) {
  const int64_t members = p.members, vocab = p.vocab;
  const cpu::TeacherOptions o = cpu::teacher_options(p);

  at::parallel_for(0, p.positions, grain_for(p), [&](int64_t begin, int64_t end) {
    std::vector<float> shift(members), log_sum(members);
    double totals[math::kNumMeasures];
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* row = logits + n * members * vocab;
      cpu::member_normalizers(row, members, vocab, o.inv_temperature, shift.data(), log_sum.data());
      float* probs_row = mean_probs != nullptr ? mean_probs + n * vocab : nullptr;
      float* log_probs_row = mean_log_probs != nullptr ? mean_log_probs + n * vocab : nullptr;
      cpu::teacher_class_pass(
          row, members, vocab, shift.data(), log_sum.data(), o, totals,
          [&](int64_t k, const cpu::TeacherBlock& b) {
            if (probs_row == nullptr) return;
            b.mean_prob.store(probs_row + k);
            b.mean_log_prob.store(log_probs_row + k);
          },
          [&](int64_t k, const math::ClassTerms<float>& t) {
            if (probs_row == nullptr) return;
            probs_row[k] = t.mean_prob;
            log_probs_row[k] = t.mean_log_prob;
          });
      for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = float(totals[i]);
    }
  });
}

// float64 math (float64 inputs: the precision reference, e.g. for gradcheck).
void ensemble_rows_double(const EnsembleStatsProblem& p, const double* logits, double* mean_probs,
                          double* mean_log_probs, double* measures) {
  const int64_t members = p.members, vocab = p.vocab;
  at::parallel_for(0, p.positions, grain_for(p), [&](int64_t begin, int64_t end) {
    std::vector<double> shift(members), log_sum(members);
    for (int64_t n = begin; n < end; ++n) {
      const double* row = logits + n * members * vocab;
      cpu::scalar_target_normalizers(row, members, vocab, p.inv_temperature, math::TeacherNorm::kLogSoftmax,
                                     shift.data(), log_sum.data());
      cpu::teacher_class_pass_scalar(row, members, vocab, shift.data(), log_sum.data(), p.inv_temperature, p.smooth,
                                     p.log1m_eps, p.log_eps_over_v, p.inv_members, p.log_members,
                                     measures + n * math::kNumMeasures,
                                     [&](int64_t k, const math::ClassTerms<double>& t) {
                                       if (mean_probs == nullptr) return;
                                       mean_probs[n * vocab + k] = t.mean_prob;
                                       mean_log_probs[n * vocab + k] = t.mean_log_prob;
                                     });
    }
  });
}

EnsembleStatsProblem run(const at::Tensor& teacher_logits, double temperature, double smoothing, bool with_rows) {
  EnsembleStatsProblem p = make_ensemble_stats_problem(teacher_logits, temperature, smoothing, with_rows);
  if (p.positions == 0) return p;
  if (p.logits.scalar_type() == at::kDouble) {
    ensemble_rows_double(p, p.logits.const_data_ptr<double>(),
                         with_rows ? p.mean_probs.mutable_data_ptr<double>() : nullptr,
                         with_rows ? p.mean_log_probs.mutable_data_ptr<double>() : nullptr,
                         p.measures.mutable_data_ptr<double>());
    return p;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.logits.scalar_type(), "edd_ext::ensemble_stats", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      ensemble_rows_simd<scalar_t>(p, p.logits.const_data_ptr<scalar_t>(),
                                   with_rows ? p.mean_probs.mutable_data_ptr<float>() : nullptr,
                                   with_rows ? p.mean_log_probs.mutable_data_ptr<float>() : nullptr,
                                   p.measures.mutable_data_ptr<float>());
    }
  });
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> ensemble_stats_cpu(const at::Tensor& teacher_logits, double temperature,
                                                                  double smoothing) {
  EnsembleStatsProblem p = run(teacher_logits, temperature, smoothing, /*with_rows=*/true);
  return {p.mean_probs, p.mean_log_probs, p.measures};
}

at::Tensor ensemble_uncertainty_cpu(const at::Tensor& teacher_logits, double temperature, double smoothing) {
  return run(teacher_logits, temperature, smoothing, /*with_rows=*/false).measures;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) {
  m.impl("ensemble_stats", &ensemble_stats_cpu);
  m.impl("ensemble_uncertainty", &ensemble_uncertainty_cpu);
}

}  // namespace edd_ext
