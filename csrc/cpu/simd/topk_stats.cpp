// CPU kernel of the compact top-k teacher statistics (SPEC section 1.1; the listing order and the tail are
// edd_ext/topk_math.h). One task per position and the two streaming passes of the dense statistics over its
// [M, V] logits (the member normalisers, then cpu::teacher_class_pass, which sums the five measures over all V
// classes); inside the class pass, an online selection of the k classes of largest mean probability, and the
// float64 sums of pi^ and l- that give the tail. No [*, V] row is written.
//
// Selection: a heap of the k best classes seen so far in the listing order, whose worst entry is the bar a new
// class must clear. The SIMD body compares a whole block of kLanes classes with the bar at once, so once the bar
// has settled (after the first few hundred classes of a peaked distribution) a block costs one comparison and
// a class that clears it O(log k); the heap is sorted into the listing order at the end (O(k log k)).
// Compiled once per CPU capability (edd_ext/cpu/topk_kernels.h); csrc/cpu/topk_stats.cpp has the op, which sets up the
// problem and calls the running capability's kernel.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/topk_kernels.h"
#include "edd_ext/topk_host.h"
#include "edd_ext/topk_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

template <typename T>
struct Candidate {
  T mean_prob;
  T mean_log_prob;
  int64_t cls;
};

template <typename T>
bool listed_before(const Candidate<T>& a, const Candidate<T>& b) {
  return math::listed_before(a.mean_prob, a.cls, b.mean_prob, b.cls);
}

// The k best classes seen so far (classes arrive in increasing order, so a newcomer that ties the worst loses).
template <typename T>
class TopKHeap {
 public:
  explicit TopKHeap(int64_t k) : k_(k) { heap_.reserve(size_t(k)); }

  void clear() { heap_.clear(); }

  bool full() const { return int64_t(heap_.size()) == k_; }

  // The key a class must exceed to enter a full heap.
  T bar() const { return math::selection_key(heap_.front().mean_prob); }

  void push(T mean_prob, T mean_log_prob, int64_t cls) {
    const Candidate<T> c{mean_prob, mean_log_prob, cls};
    if (!full()) {
      heap_.push_back(c);
      std::push_heap(heap_.begin(), heap_.end(), listed_before<T>);  // the front is the worst held
    } else if (listed_before(c, heap_.front())) {
      std::pop_heap(heap_.begin(), heap_.end(), listed_before<T>);
      heap_.back() = c;
      std::push_heap(heap_.begin(), heap_.end(), listed_before<T>);
    }
  }

  // The held classes in the listing order (the heap is spent).
  const std::vector<Candidate<T>>& sorted() {
    std::sort_heap(heap_.begin(), heap_.end(), listed_before<T>);
    return heap_;
  }

 private:
  int64_t k_;
  std::vector<Candidate<T>> heap_;
};

// Writes position n's outputs from its selection and its sums over all classes.
template <typename T>
void write_position(const TopKStatsProblem& p, int64_t n, TopKHeap<T>& heap, const math::ClassSums& all) {
  const int64_t k = p.k;
  int64_t* indices = p.indices.mutable_data_ptr<int64_t>() + n * k;
  T* probs = p.listed_probs.mutable_data_ptr<T>() + n * k;
  T* log_probs = p.listed_log_probs.mutable_data_ptr<T>() + n * k;
  math::ClassSums listed;
  const std::vector<Candidate<T>>& entries = heap.sorted();
  for (int64_t i = 0; i < k; ++i) {
    indices[i] = entries[size_t(i)].cls;
    probs[i] = entries[size_t(i)].mean_prob;
    log_probs[i] = entries[size_t(i)].mean_log_prob;
    listed.push(double(probs[i]), double(log_probs[i]));
  }
  math::tail_of(all, listed, p.dense.vocab, k, p.tail_mass.mutable_data_ptr<T>() + n,
                p.tail_mean_log_prob.mutable_data_ptr<T>() + n);
}

// The SIMD body's share of math::ClassSums, lane by lane in float64 (each float32 lane widened exactly; the loops
// vectorise): pi^, l- with its -inf lanes set aside, and the count of those.
struct LaneSums {
  double prob[kLanes] = {}, log_prob[kLanes] = {}, neg_inf[kLanes] = {};

  void push(const VecF& mean_prob, const VecF& mean_log_prob) {
    const VecF is_neg_inf = mean_log_prob == VecF(-std::numeric_limits<float>::infinity());
    float p[kLanes], l[kLanes], c[kLanes];
    mean_prob.store(p);
    VecF::blendv(mean_log_prob, VecF(0.f), is_neg_inf).store(l);
    VecF::blendv(VecF(0.f), VecF(1.f), is_neg_inf).store(c);
    for (int64_t i = 0; i < kLanes; ++i) {
      prob[i] += double(p[i]);
      log_prob[i] += double(l[i]);
      neg_inf[i] += double(c[i]);
    }
  }

  void add_to(math::ClassSums& sums) const {
    for (int64_t i = 0; i < kLanes; ++i) {
      sums.v[math::ClassSums::kProb] += prob[i];
      sums.v[math::ClassSums::kLogProb] += log_prob[i];
      sums.v[math::ClassSums::kNegInf] += neg_inf[i];
    }
  }
};

// float32 math (inputs float16, bfloat16, float32).
template <typename scalar_t>
void topk_rows_simd(const TopKStatsProblem& p) {
  const EnsembleStatsProblem& d = p.dense;
  const int64_t members = d.members, vocab = d.vocab;
  const cpu::TeacherOptions o = cpu::teacher_options(d);
  const scalar_t* logits = d.logits.const_data_ptr<scalar_t>();
  float* measures = d.measures.mutable_data_ptr<float>();

  at::parallel_for(0, d.positions, cpu::grain_for(members, vocab), [&](int64_t begin, int64_t end) {
    // the members' probabilities from the exponentials the normaliser pass keeps, as the dense statistics take
    // them (csrc/cpu/simd/ensemble_stats.cpp), so that the measures agree bit for bit
    std::vector<float> shift(members), log_sum(members), inv_sum(members);
    std::vector<float> weights(o.smooth ? 0 : members * vocab);
    float* kept = o.smooth ? nullptr : weights.data();
    TopKHeap<float> heap(p.k);
    double totals[math::kNumMeasures];
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* row = logits + n * members * vocab;
      cpu::member_normalizers(row, members, vocab, o.inv_temperature, shift.data(), log_sum.data(), kept,
                              inv_sum.data());
      heap.clear();
      math::ClassSums all;
      LaneSums lanes;
      cpu::teacher_class_pass(
          row, members, vocab, shift.data(), log_sum.data(), kept, inv_sum.data(), o, totals,
          [&](int64_t k, const cpu::TeacherBlock& b) {
            lanes.push(b.mean_prob, b.mean_log_prob);
            if (heap.full() && !cpu::any_lane(b.mean_prob > VecF(heap.bar()))) return;  // the common case
            float prob[kLanes], log_prob[kLanes];
            b.mean_prob.store(prob);
            b.mean_log_prob.store(log_prob);
            for (int64_t i = 0; i < kLanes; ++i) heap.push(prob[i], log_prob[i], k + i);
          },
          [&](int64_t k, const math::ClassTerms<float>& t) {
            all.push(double(t.mean_prob), double(t.mean_log_prob));
            heap.push(t.mean_prob, t.mean_log_prob, k);
          });
      lanes.add_to(all);
      for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = float(totals[i]);
      write_position(p, n, heap, all);
    }
  });
}

// float64 math (float64 inputs).
void topk_rows_double(const TopKStatsProblem& p) {
  const EnsembleStatsProblem& d = p.dense;
  const int64_t members = d.members, vocab = d.vocab;
  const double* logits = d.logits.const_data_ptr<double>();
  double* measures = d.measures.mutable_data_ptr<double>();

  at::parallel_for(0, d.positions, cpu::grain_for(members, vocab), [&](int64_t begin, int64_t end) {
    std::vector<double> shift(members), log_sum(members);
    TopKHeap<double> heap(p.k);
    for (int64_t n = begin; n < end; ++n) {
      const double* row = logits + n * members * vocab;
      cpu::scalar_target_normalizers(row, members, vocab, d.inv_temperature, math::TeacherNorm::kLogSoftmax,
                                     shift.data(), log_sum.data());
      heap.clear();
      math::ClassSums all;
      cpu::teacher_class_pass_scalar(row, members, vocab, shift.data(), log_sum.data(), d.inv_temperature, d.smooth,
                                     d.log1m_eps, d.log_eps_over_v, d.inv_members, d.log_members,
                                     measures + n * math::kNumMeasures,
                                     [&](int64_t k, const math::ClassTerms<double>& t) {
                                       all.push(t.mean_prob, t.mean_log_prob);
                                       heap.push(t.mean_prob, t.mean_log_prob, k);
                                     });
      write_position(p, n, heap, all);
    }
  });
}

void topk_ensemble_stats(const TopKStatsProblem& p) {
  if (p.dense.logits.scalar_type() == at::kDouble) return topk_rows_double(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.dense.logits.scalar_type(), "edd_ext::topk_ensemble_stats",
                                  [&] {
                                    if constexpr (!std::is_same_v<scalar_t, double>) topk_rows_simd<scalar_t>(p);
                                  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(topk_ensemble_stats_kernel, topk_ensemble_stats);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
