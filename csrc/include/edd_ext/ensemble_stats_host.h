// Host-side argument checks and output allocation for the ensemble-statistics ops, shared by the CPU and
// CUDA implementations so that both accept and return exactly the same things.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>

#include "edd_ext/checks.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {

struct EnsembleStatsProblem {
  at::Tensor logits;          // [*, M, V], contiguous
  at::Tensor mean_probs;      // [*, V] or undefined
  at::Tensor mean_log_probs;  // [*, V] or undefined
  at::Tensor measures;        // [*, 5]
  int64_t positions = 0, members = 0, vocab = 0;
  double inv_temperature = 1, inv_members = 1, log_members = 0;
  bool smooth = false;
  double log1m_eps = 0, log_eps_over_v = 0;
};

inline EnsembleStatsProblem make_ensemble_stats_problem(const at::Tensor& teacher_logits, double temperature,
                                                        double smoothing, bool with_rows) {
  check_teacher_logits(teacher_logits, "teacher_logits");
  TORCH_CHECK_VALUE(temperature > 0, "temperature: expected a positive number, got ", temperature);
  TORCH_CHECK_VALUE(smoothing >= 0 && smoothing < 1, "smoothing: expected a number in [0, 1), got ", smoothing);
  EnsembleStatsProblem p;
  p.logits = teacher_logits.contiguous();
  p.members = p.logits.size(-2);
  p.vocab = p.logits.size(-1);
  p.positions = p.logits.numel() / (p.members * p.vocab);
  const auto lead = leading_shape(p.logits, 2);
  const auto opts = p.logits.options().dtype(p.logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  p.measures = at::empty(with_trailing(lead, math::kNumMeasures), opts);
  if (with_rows) {
    p.mean_probs = at::empty(with_trailing(lead, p.vocab), opts);
    p.mean_log_probs = at::empty(with_trailing(lead, p.vocab), opts);
  }
  p.inv_temperature = 1.0 / temperature;
  p.inv_members = 1.0 / double(p.members);
  p.log_members = std::log(double(p.members));
  p.smooth = smoothing > 0;
  p.log1m_eps = std::log1p(-smoothing);
  p.log_eps_over_v = p.smooth ? std::log(smoothing / double(p.vocab)) : 0.0;
  return p;
}

}  // namespace edd_ext
