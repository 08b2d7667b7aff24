// CPU kernels for the teacher-ensemble statistics (SPEC section 1): one task per position, two streaming
// passes over its [M, V] logits (per-member log-sum-exp, then the per-class moments), float32 math for
// half/bfloat16/float32 inputs, float64 for float64, row sums (log-sum-exp and measures) in float64.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "edd_ext/ensemble_stats_host.h"

namespace edd_ext {
namespace {

template <typename scalar_t, typename acc_t>
void ensemble_rows(const EnsembleStatsProblem& p, const scalar_t* logits, acc_t* mean_probs, acc_t* mean_log_probs,
                   acc_t* measures) {
  const int64_t members = p.members, vocab = p.vocab;
  const acc_t inv_t = acc_t(p.inv_temperature), inv_m = acc_t(p.inv_members), log_m = acc_t(p.log_members);
  const acc_t log1m_eps = acc_t(p.log1m_eps), log_eps_v = acc_t(p.log_eps_over_v);
  const bool smooth = p.smooth;
  const int64_t grain = std::max<int64_t>(1, 32768 / (members * vocab));

  at::parallel_for(0, p.positions, grain, [&](int64_t begin, int64_t end) {
    // Member m's log-probabilities are (u / T - shift[m]) - log_sum[m]: subtracting the maximum first keeps
    // them exact for large logits, where u / T - logsumexp would lose the digits of the smaller term.
    std::vector<acc_t> shift(members), log_sum(members);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* row = logits + n * members * vocab;
      for (int64_t m = 0; m < members; ++m) {
        math::OnlineLogSumExp<acc_t, double> acc;
        const scalar_t* u = row + m * vocab;
        for (int64_t k = 0; k < vocab; ++k) acc.push(acc_t(u[k]) * inv_t);
        shift[m] = acc.max;
        log_sum[m] = acc_t(std::log(acc.sum));
      }
      double sums[math::kNumMeasures] = {0, 0, 0, 0, 0};
      for (int64_t k = 0; k < vocab; ++k) {
        math::MemberMoments<acc_t> moments;
        for (int64_t m = 0; m < members; ++m) {
          acc_t l = (acc_t(row[m * vocab + k]) * inv_t - shift[m]) - log_sum[m];
          if (smooth) l = math::smooth_log_prob(l, log1m_eps, log_eps_v);
          moments.push(l);
        }
        const math::ClassTerms<acc_t> terms = moments.finish(inv_m, log_m);
        for (int i = 0; i < math::kNumMeasures; ++i) sums[i] += double(terms.measure[i]);
        if (mean_probs != nullptr) {
          mean_probs[n * vocab + k] = terms.mean_prob;
          mean_log_probs[n * vocab + k] = terms.mean_log_prob;
        }
      }
      for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = acc_t(sums[i]);
    }
  });
}

EnsembleStatsProblem run(const at::Tensor& teacher_logits, double temperature, double smoothing, bool with_rows) {
  EnsembleStatsProblem p = make_ensemble_stats_problem(teacher_logits, temperature, smoothing, with_rows);
  if (p.positions == 0) return p;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.logits.scalar_type(), "edd_ext::ensemble_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    ensemble_rows<scalar_t, acc_t>(p, p.logits.const_data_ptr<scalar_t>(),
                                   with_rows ? p.mean_probs.mutable_data_ptr<acc_t>() : nullptr,
                                   with_rows ? p.mean_log_probs.mutable_data_ptr<acc_t>() : nullptr,
                                   p.measures.mutable_data_ptr<acc_t>());
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
