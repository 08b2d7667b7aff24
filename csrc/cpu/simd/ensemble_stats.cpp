// SIMD kernel of the teacher-ensemble statistics (csrc/cpu/ensemble_stats.cpp has the ops and the float64
// kernel), compiled once per CPU capability: per-member log-softmax normalisers, then the per-class moments,
// kLanes classes per step (edd_ext/cpu/teacher_rows.h), float32 math, float64 row sums.
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

// float32 math (inputs float16, bfloat16, float32).
template <typename scalar_t>
void ensemble_rows(const EnsembleStatsView& p, int64_t begin, int64_t end) {
  const scalar_t* logits = static_cast<const scalar_t*>(p.logits);
  float* mean_probs = p.mean_probs;
  float* mean_log_probs = p.mean_log_probs;
  float* measures = p.measures;
  const int64_t members = p.members, vocab = p.vocab, body = vocab - vocab % kLanes;
  TeacherOptions o;
  o.inv_temperature = float(p.inv_temperature);
  o.inv_members = float(p.inv_members);
  o.log_members = float(p.log_members);
  o.smooth = p.smooth;
  o.log1m_eps = float(p.log1m_eps);
  o.log_eps_over_v = float(p.log_eps_over_v);

  // Without smoothing, the members' probabilities come from the exponentials the normaliser pass keeps ([M, V]
  // scratch, teacher_block_weighted): half the exponentials of teacher_block.
  std::vector<float> shift(members), log_sum(members), inv_sum(members);
  std::vector<float> weights(o.smooth ? 0 : members * vocab);
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* row = logits + n * members * vocab;
    member_normalizers(row, members, vocab, o.inv_temperature, shift.data(), log_sum.data(),
                       o.smooth ? nullptr : weights.data(), inv_sum.data());
    ChunkedSum sums[math::kNumMeasures];
    for (int64_t k = 0; k < body; k += kLanes) {
      const TeacherBlock b =
          o.smooth ? teacher_block(row, k, members, vocab, shift.data(), log_sum.data(), o)
                   : teacher_block_weighted(row, weights.data(), inv_sum.data(), k, members, vocab, shift.data(),
                                            log_sum.data(), o);
      const VecF p_log_p = b.mean_prob * b.log_mean_prob;
      sums[0].push(VecF(0.f) - p_log_p);
      sums[1].push(VecF(0.f) - b.mean_p_log_p);
      sums[2].push(clamp_rounding(b.mean_p_log_p - p_log_p));
      sums[3].push(clamp_rounding(b.mean_p_log_p - b.mean_prob * b.mean_log_prob));
      sums[4].push(clamp_rounding(b.mean_prob * (b.log_mean_prob - b.mean_log_prob)));
      if (mean_probs != nullptr) {
        b.mean_prob.store(mean_probs + n * vocab + k);
        b.mean_log_prob.store(mean_log_probs + n * vocab + k);
      }
    }
    double totals[math::kNumMeasures];
    for (int i = 0; i < math::kNumMeasures; ++i) totals[i] = sums[i].result();
    for (int64_t k = body; k < vocab; ++k) {
      const auto t = teacher_class<scalar_t, float>(row, k, members, vocab, shift.data(), log_sum.data(),
                                                         o.inv_temperature, o.smooth, o.log1m_eps,
                                                         o.log_eps_over_v, o.inv_members, o.log_members);
      for (int i = 0; i < math::kNumMeasures; ++i) totals[i] += double(t.measure[i]);
      if (mean_probs != nullptr) {
        mean_probs[n * vocab + k] = t.mean_prob;
        mean_log_probs[n * vocab + k] = t.mean_log_prob;
      }
    }
    for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = float(totals[i]);
  }
}

void ensemble_stats(const EnsembleStatsView& p, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.dtype, [&](auto t) { ensemble_rows<typename decltype(t)::type>(p, begin, end); });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(ensemble_stats_kernel, ensemble_stats);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
