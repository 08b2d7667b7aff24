// CPU kernels for the teacher-ensemble statistics (SPEC section 1): one task per position, two streaming
// passes over its [M, V] logits — per-member log-softmax normalisers, then the per-class moments — with
// SIMD float32 math for half/bfloat16/float32 inputs (csrc/cpu/simd/ensemble_stats.cpp, compiled once per CPU
// capability) and scalar float64 math for float64 here; row sums (exponential sums and measures) in float64.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/cpu/parallel.h"
#include "edd_ext/cpu/teacher_class.h"
#include "edd_ext/ensemble_stats_host.h"

namespace edd_ext {
namespace {

int64_t grain_for(const EnsembleStatsProblem& p) { return std::max<int64_t>(1, 32768 / (p.members * p.vocab)); }

// float64 math (float64 inputs: the precision reference, e.g. for gradcheck).
void ensemble_rows_double(const EnsembleStatsProblem& p, const double* logits, double* mean_probs,
                          double* mean_log_probs, double* measures) {
  const int64_t members = p.members, vocab = p.vocab;
  cpu::parallel_positions(p.positions, grain_for(p), [&](int64_t begin, int64_t end) {
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
  const cpu::EnsembleStatsView v{
      .logits = p.logits.const_data_ptr(), .dtype = p.logits.scalar_type(),
      .mean_probs = with_rows ? p.mean_probs.mutable_data_ptr<float>() : nullptr,
      .mean_log_probs = with_rows ? p.mean_log_probs.mutable_data_ptr<float>() : nullptr,
      .measures = p.measures.mutable_data_ptr<float>(), .positions = p.positions, .members = p.members,
      .vocab = p.vocab, .inv_temperature = p.inv_temperature, .inv_members = p.inv_members,
      .log_members = p.log_members, .smooth = p.smooth, .log1m_eps = p.log1m_eps, .log_eps_over_v = p.log_eps_over_v};
  cpu::run_kernel(cpu::ensemble_stats_kernel, p.positions, grain_for(p), v);
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
