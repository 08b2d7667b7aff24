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
  const int64_t members = p.members, vocab = p.vocab;
  const TeacherOptions o = teacher_options(p);

  // Without smoothing, the members' probabilities come from the exponentials the normaliser pass keeps ([M, V]
  // scratch, teacher_block_weighted): half the exponentials of teacher_block.
  std::vector<float> shift(members), log_sum(members), inv_sum(members);
  std::vector<float> weights(o.smooth ? 0 : members * vocab);
  float* kept = o.smooth ? nullptr : weights.data();
  double totals[math::kNumMeasures];
  for (int64_t n = begin; n < end; ++n) {
    const scalar_t* row = logits + n * members * vocab;
    member_normalizers(row, members, vocab, o.inv_temperature, shift.data(), log_sum.data(), kept, inv_sum.data());
    float* probs_row = p.mean_probs != nullptr ? p.mean_probs + n * vocab : nullptr;
    float* log_probs_row = p.mean_log_probs != nullptr ? p.mean_log_probs + n * vocab : nullptr;
    teacher_class_pass(
        row, members, vocab, shift.data(), log_sum.data(), kept, inv_sum.data(), o, totals,
        [&](int64_t k, const TeacherBlock& b) {
          if (probs_row == nullptr) return;
          b.mean_prob.store(probs_row + k);
          b.mean_log_prob.store(log_probs_row + k);
        },
        [&](int64_t k, const math::ClassTerms<float>& t) {
          if (probs_row == nullptr) return;
          probs_row[k] = t.mean_prob;
          log_probs_row[k] = t.mean_log_prob;
        });
    for (int i = 0; i < math::kNumMeasures; ++i) p.measures[n * math::kNumMeasures + i] = float(totals[i]);
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
