// SIMD kernel of the logit-space losses (csrc/cpu/logit_losses.cpp has the op, the formulas and the float64
// kernel), compiled once per CPU capability: kLanes classes per step (edd_ext/cpu/loss_blocks.h), the scalar
// header math for the row tail, float64 row sums.
#include <cmath>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/logit_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

struct Scratch {
  std::vector<float> shift, offset;             // [M]
  std::vector<float> loc, log_scale;            // float32 copies of a float16 / bfloat16 student's rows
  std::vector<float> grad_loc, grad_log_scale;  // and its gradient rows
};

// One position, with the student's rows mu, rho and gradient rows (nullptr: none) as float32 (float_row), so that
// it is compiled once per teacher dtype; returns its loss.
template <typename teacher_t>
double logit_position(const LossView& p, const LogitNllArgs& a, int64_t n, const float* mu, const float* rho,
                      float* g_loc, float* g_rho, Scratch& ws) {
  const bool laplace = a.laplace;
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float inv_m = float(1.0 / double(members));
  const float inv_t = float(a.inv_temperature), log_min_scale = float(a.log_min_scale);
  const bool no_min_scale = log_min_scale == math::neg_inf<float>();
  const float grad_scale = float(p.grad_scale);
  const VecF vgrad_scale(grad_scale);
  const float* shift = ws.shift.data();
  const float* offset = ws.offset.data();
  const teacher_t* row = p.teacher_logits_data<teacher_t>() + n * members * vocab;
  target_normalizers(row, members, vocab, inv_t, a.norm, ws.shift.data(), ws.offset.data());
  ChunkedSum sum;
  for (int64_t k = 0; k < body; k += kLanes) {
    const VecF vmu = VecF::loadu(mu + k);
    const ScaleBlock s = scale_block(VecF::loadu(rho + k), log_min_scale, no_min_scale);
    const LocScaleBlock t = laplace ? laplace_block(row, k, members, vocab, inv_t, shift, offset, vmu, s, inv_m)
                                    : gaussian_block(row, k, members, vocab, inv_t, shift, offset, vmu, s, inv_m);
    sum.push(t.loss);
    if (g_loc != nullptr) {
      (t.grad_loc * vgrad_scale).store(g_loc + k);
      (t.grad_log_scale * vgrad_scale).store(g_rho + k);
    }
  }
  double total = sum.result();
  auto target = [&](int64_t m, int64_t k) { return (float(row[m * vocab + k]) * inv_t - shift[m]) - offset[m]; };
  for (int64_t k = body; k < vocab; ++k) {
    const math::LocScaleLossGrad<float> t =
        math::logit_class<float>(laplace, target, members, k, mu[k], rho[k], log_min_scale, inv_m);
    total += double(t.loss);
    if (g_loc != nullptr) {
      g_loc[k] = t.grad_loc * grad_scale;
      g_rho[k] = t.grad_log_scale * grad_scale;
    }
  }
  return total;
}

template <typename student_t, typename teacher_t>
void logit_nll_rows(const LossView& p, const LogitNllArgs& a, int64_t begin, int64_t end) {
  const int64_t vocab = p.vocab, members = p.members;
  const student_t* locs = p.student_data<student_t>();
  const student_t* log_scales = p.log_scale_data<student_t>();
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members),         std::vector<float>(members),
                   student_scratch<student_t>(vocab), student_scratch<student_t>(vocab),
                   student_scratch<student_t>(vocab), student_scratch<student_t>(vocab)};
  };
  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    float* g_loc = float_grad_row(out.student, ws.grad_loc.data());
    float* g_rho = float_grad_row(out.log_scale, ws.grad_log_scale.data());
    const double loss =
        logit_position<teacher_t>(p, a, n, float_row(locs + n * vocab, vocab, ws.loc.data()),
                                  float_row(log_scales + n * vocab, vocab, ws.log_scale.data()), g_loc, g_rho, ws);
    store_grad_row(g_loc, out.student, vocab);
    store_grad_row(g_rho, out.log_scale, vocab);
    return loss;
  });
}

void logit_nll(const LossView& p, const LogitNllArgs& a, int64_t begin, int64_t end) {
  dispatch_simd_pair(p, [&](auto s, auto t) {
    logit_nll_rows<typename decltype(s)::type, typename decltype(t)::type>(p, a, begin, end);
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(logit_nll_kernel, logit_nll);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
