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

template <typename student_t, typename teacher_t>
void logit_nll_rows(const LossView& p, const LogitNllArgs& a, int64_t begin, int64_t end) {
  const bool laplace = a.laplace;
  const math::TeacherNorm norm = a.norm;
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const float inv_m = float(1.0 / double(members));
  const float inv_t = float(a.inv_temperature), log_min_scale = float(a.log_min_scale);
  const bool no_min_scale = log_min_scale == math::neg_inf<float>();
  const student_t* locs = p.student_data<student_t>();
  const student_t* log_scales = p.log_scale_data<student_t>();
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  const VecF vgrad_scale(float(p.grad_scale));
  const float grad_scale = float(p.grad_scale);

  struct Scratch {
    std::vector<float> shift;
    std::vector<float> offset;
  };
  auto make_scratch = [&] { return Scratch{std::vector<float>(members), std::vector<float>(members)}; };

  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    student_t* g_loc = out.student;
    student_t* g_rho = out.log_scale;
    std::vector<float>& shift = ws.shift;
    std::vector<float>& offset = ws.offset;
    const student_t* mu_row = locs + n * vocab;
    const student_t* rho_row = log_scales + n * vocab;
    const teacher_t* row = logits + n * members * vocab;
    target_normalizers(row, members, vocab, inv_t, norm, shift.data(), offset.data());
    ChunkedSum sum;
    for (int64_t k = 0; k < body; k += kLanes) {
      const VecF mu = load_float(mu_row + k);
      const ScaleBlock s = scale_block(load_float(rho_row + k), log_min_scale, no_min_scale);
      const LocScaleBlock t =
          laplace ? laplace_block(row, k, members, vocab, inv_t, shift.data(), offset.data(), mu, s, inv_m)
                  : gaussian_block(row, k, members, vocab, inv_t, shift.data(), offset.data(), mu, s, inv_m);
      sum.push(t.loss);
      if (g_loc != nullptr) {
        store_float(t.grad_loc * vgrad_scale, g_loc + k);
        store_float(t.grad_log_scale * vgrad_scale, g_rho + k);
      }
    }
    double total = sum.result();
    auto target = [&](int64_t m, int64_t k) { return (float(row[m * vocab + k]) * inv_t - shift[m]) - offset[m]; };
    for (int64_t k = body; k < vocab; ++k) {
      const math::LocScaleLossGrad<float> t =
          math::logit_class<float>(laplace, target, members, k, float(mu_row[k]), float(rho_row[k]), log_min_scale, inv_m);
      total += double(t.loss);
      if (g_loc != nullptr) {
        g_loc[k] = student_t(t.grad_loc * grad_scale);
        g_rho[k] = student_t(t.grad_log_scale * grad_scale);
      }
    }
    return total;
  });
}

void logit_nll(const LossView& p, const LogitNllArgs& a, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.teacher_type, [&](auto t) {
    dispatch_simd_dtype(p.student_type, [&](auto s) {
      logit_nll_rows<typename decltype(s)::type, typename decltype(t)::type>(p, a, begin, end);
    });
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(logit_nll_kernel, logit_nll);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
