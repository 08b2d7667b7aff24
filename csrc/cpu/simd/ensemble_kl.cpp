// SIMD kernel of the EnD baseline (csrc/cpu/ensemble_kl.cpp has the op, the formulas and the float64 kernel),
// compiled once per CPU capability: float32 math, kLanes classes per step, the scalar header math for the row
// tail, float64 row sums. The members' probabilities come from the exp(u - max) the normaliser pass keeps
// ([M, V] scratch): p_mk = w_mk / sum_k w_mk.
#include <cmath>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/cpu/vec_math.h"
#include "edd_ext/logit_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

struct Scratch {
  std::vector<float> shift, log_sum, inv_sum, weights;
  std::vector<float> student_weights;  // exp(z - max z) [V], with a gradient
  std::vector<float> student, grad;    // float32 copies of a float16 / bfloat16 student's rows
};

// One position, float32 student row z and gradient row g (nullptr: none); returns its loss.
template <typename teacher_t>
double ensemble_kl_position(const LossView& p, int64_t n, const float* z, float* g, Scratch& ws) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float inv_m = float(1.0 / double(members > 0 ? members : 1));
  const float log_m = float(std::log(double(members > 0 ? members : 1)));
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  const float grad_scale = float(p.grad_scale);
  float* shift = ws.shift.data();
  float* log_sum = ws.log_sum.data();
  float* inv_sum = ws.inv_sum.data();
  float* weights = ws.weights.data();
  float z_max, z_log_sum, z_inv_sum = 0.f;
  float* q = g != nullptr ? ws.student_weights.data() : nullptr;
  member_normalizers(z, 1, vocab, 1.f, &z_max, &z_log_sum, q, &z_inv_sum);
  const teacher_t* row = logits != nullptr ? logits + n * members * vocab : p.teacher_rows_data<teacher_t>() + n * vocab;
  if (logits != nullptr) member_normalizers(row, members, vocab, 1.f, shift, log_sum, weights, inv_sum);
  const VecF vz_max(z_max), vz_log_sum(z_log_sum), vz_inv_sum(z_inv_sum), vgrad_scale(grad_scale);
  ChunkedSum sum;
  for (int64_t k = 0; k < body; k += kLanes) {
    VecF mean_prob, log_mean_prob;
    if (logits != nullptr) {
      VecF sum_p(0.f);
      for (int64_t m = 0; m < members; ++m) sum_p = sum_p + VecF::loadu(weights + m * vocab + k) * VecF(inv_sum[m]);
      mean_prob = sum_p * VecF(inv_m);
      log_mean_prob = log_fast(sum_p) - VecF(log_m);
    } else {
      mean_prob = load_float(row + k);
      log_mean_prob = log_fast(mean_prob);
    }
    sum.push(ensemble_kl_loss_block(VecF::loadu(z + k), vz_max, vz_log_sum, mean_prob, log_mean_prob));
    if (g != nullptr) ((VecF::loadu(q + k) * vz_inv_sum - mean_prob) * vgrad_scale).store(g + k);
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
    const math::KLClass<float> t = math::ensemble_kl_class(z[k], z_max, z_log_sum, mean_prob, log_mean_prob);
    total += double(t.loss);
    if (g != nullptr) g[k] = t.grad * grad_scale;
  }
  return total;
}

template <typename student_t, typename teacher_t>
void ensemble_kl_rows(const LossView& p, int64_t begin, int64_t end) {
  const int64_t vocab = p.vocab, members = p.members;
  const student_t* student = p.student_data<student_t>();
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members), std::vector<float>(members), std::vector<float>(members),
                   std::vector<float>(p.teacher_logits != nullptr ? members * vocab : 0),
                   std::vector<float>(p.grad != nullptr ? vocab : 0), student_scratch<student_t>(vocab),
                   student_scratch<student_t>(vocab)};
  };
  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    float* g = float_grad_row(out.student, ws.grad.data());
    const double loss = ensemble_kl_position<teacher_t>(p, n, float_row(student + n * vocab, vocab, ws.student.data()),
                                                        g, ws);
    store_grad_row(g, out.student, vocab);
    return loss;
  });
}

void ensemble_kl(const LossView& p, int64_t begin, int64_t end) {
  dispatch_simd_pair(p, [&](auto s, auto t) {
    ensemble_kl_rows<typename decltype(s)::type, typename decltype(t)::type>(p, begin, end);
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(ensemble_kl_kernel, ensemble_kl);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
