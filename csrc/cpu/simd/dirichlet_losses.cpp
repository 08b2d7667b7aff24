// SIMD kernels of the Dirichlet distillation losses (csrc/cpu/dirichlet_losses.cpp has the ops, the formulas
// and the float64 kernels), compiled once per CPU capability: kLanes classes per step with the vector
// transcriptions of the per-class functions (edd_ext/cpu/loss_blocks.h), the scalar functions for the row
// tail, every row sum and per-position scalar (alpha_0, beta_0, the loss) in float64.
#include <cmath>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/teacher_rows.h"
#include "edd_ext/cpu/vec.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/ensemble_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

// Each loss in two parts, so that the heavy class pass is compiled once rather than once per dtype pair: the
// teacher part (one instance per teacher dtype) leaves the per-class teacher quantity in a float32 row, and the
// class pass (one instance, or one per proxy mode) reads it with the student's float32 rows (float_row).

// Stores one block's gradient (when computed, times the reduction's factor) and pushes its loss terms.
inline void emit_block(const VecF& loss, const VecF& grad, const VecF& grad_scale, float* g, int64_t k,
                       ChunkedSum& sum) {
  sum.push(loss);
  if (g != nullptr) (grad * grad_scale).store(g + k);
}

struct Scratch {
  std::vector<float> shift, log_sum, inv_sum;  // [M]
  std::vector<float> excess;                   // e = exp(z) [V]
  std::vector<float> teacher;                  // the class pass's teacher row [V]
  std::vector<float> weights;                  // exp(u - max) [M, V] (proxy KL from logits)
  std::vector<float> student, grad;            // float32 copies of a float16 / bfloat16 student's rows
};

// ---- EnD^2 ----
// e = exp(z) and alpha_0 in a first pass over the student (e kept in a scratch row); from logits, the members'
// normalisers, whose exponential pass also sums the shifted logits over the members into the teacher row (the
// teacher's M rows are read twice in all: for the maxima, then for the exponentials and the sum); then one
// class pass over the two rows.

// The members' mean log-probabilities l of position n: l_k = (row_k - sub) * scale in the SIMD body, l_k = row_k
// in the row tail.
struct NllTeacher {
  const float* row;
  float sub, scale;
};

// From logits, l_k = (1/M) sum_m ((u_mk - shift_m) - log_sum_m) = (1/M) (D_k - sum_m log_sum_m) with
// D_k = sum_m (u_mk - shift_m) from the normaliser pass (member_normalizers), the row tail with the scalar
// formula; from statistics, the given row (sub 0, scale 1: exact).
template <typename teacher_t>
NllTeacher nll_teacher_row(const LossView& p, int64_t n, Scratch& ws) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  if (logits == nullptr) {
    return NllTeacher{float_row(p.teacher_rows_data<teacher_t>() + n * vocab, vocab, ws.teacher.data()), 0.f, 1.f};
  }
  const float inv_m = float(1.0 / double(members));
  const teacher_t* row = logits + n * members * vocab;
  float* shift = ws.shift.data();
  float* log_sum = ws.log_sum.data();
  float* l = ws.teacher.data();
  member_normalizers(row, members, vocab, 1.f, shift, log_sum, nullptr, nullptr, l);
  float sub = 0.f;
  for (int64_t m = 0; m < members; ++m) sub += log_sum[m];
  for (int64_t k = body; k < vocab; ++k) {
    float acc = 0;
    for (int64_t m = 0; m < members; ++m) acc += (float(row[m * vocab + k]) - shift[m]) - log_sum[m];
    l[k] = acc * inv_m;
  }
  return NllTeacher{l, sub, inv_m};
}

double nll_class_pass(const float* z, float* g, const NllTeacher& teacher, const DirichletNllArgs& a,
                      int64_t vocab, float grad_scale, Scratch& ws) {
  const int64_t body = vocab - vocab % kLanes;
  const float c = float(a.model_offset), log_c = float(a.log_model_offset), c_minus_one = float(a.model_offset - 1);
  const double alpha0 = student_excess_row(z, vocab, a.model_offset, ws.excess.data());
  const float digamma_alpha0 = float(math::digamma(alpha0));
  const NllConsts consts{VecF(c), VecF(c_minus_one), VecF(digamma_alpha0)};
  const VecF vgrad_scale(grad_scale), vsub(teacher.sub), vscale(teacher.scale);
  ChunkedSum sum;
  VecF l, dz;
  for (int64_t k = 0; k < body; k += kLanes) {
    const VecF mean_log_prob = (VecF::loadu(teacher.row + k) - vsub) * vscale;
    dirichlet_nll_block(VecF::loadu(ws.excess.data() + k), mean_log_prob, consts, l, dz);
    emit_block(l, dz, vgrad_scale, g, k, sum);
  }
  double total = sum.result();
  for (int64_t k = body; k < vocab; ++k) {
    const math::ClassLossGrad<float> t =
        math::dirichlet_nll_class(z[k], c, log_c, c_minus_one, teacher.row[k], digamma_alpha0);
    total += double(t.loss);
    if (g != nullptr) g[k] = t.grad * grad_scale;
  }
  return total - math::lgamma(alpha0);
}

template <typename student_t, typename teacher_t>
void dirichlet_nll_rows(const LossView& p, const DirichletNllArgs& a, int64_t begin, int64_t end) {
  const int64_t vocab = p.vocab, members = p.members;
  const student_t* student = p.student_data<student_t>();
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members), std::vector<float>(members), {}, std::vector<float>(vocab),
                   std::vector<float>(vocab), {}, student_scratch<student_t>(vocab),
                   student_scratch<student_t>(vocab)};
  };
  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    const NllTeacher teacher = nll_teacher_row<teacher_t>(p, n, ws);
    float* g = float_grad_row(out.student, ws.grad.data());
    const double loss = nll_class_pass(float_row(student + n * vocab, vocab, ws.student.data()), g, teacher, a,
                                       vocab, float(p.grad_scale), ws);
    store_grad_row(g, out.student, vocab);
    return loss;
  });
}

// ---- Proxy-Dirichlet KL ----
// (from logits) the members' normalisers, keeping exp(u - max) in an [M, V] scratch, then one teacher pass that
// writes pi^ into the teacher row and sums the measure and the mass; e = exp(z) and alpha_0 into a second row;
// the per-position scalars in float64; one class pass over the two rows.
struct ProxyTeacher {
  const float* mean_probs;  // pi^ [V]
  double measure, mass;     // RMI (mkl) or EPKL, and sum_k pi^_k
};

template <typename teacher_t>
ProxyTeacher proxy_teacher_row(const LossView& p, const ProxyOptions& o, int64_t n, Scratch& ws) {
  const int64_t vocab = p.vocab, members = p.members, body = vocab - vocab % kLanes;
  const teacher_t* logits = p.teacher_logits_data<teacher_t>();
  ProxyTeacher t{nullptr, 0, 0};
  if (logits == nullptr) {
    t.mean_probs = float_row(p.teacher_rows_data<teacher_t>() + n * vocab, vocab, ws.teacher.data());
    t.measure = p.teacher_measure[n];
    ChunkedSum mass_sum;
    for (int64_t k = 0; k < body; k += kLanes) mass_sum.push(VecF::loadu(t.mean_probs + k));
    t.mass = mass_sum.result();
    for (int64_t k = body; k < vocab; ++k) t.mass += double(t.mean_probs[k]);
    return t;
  }
  TeacherOptions to;
  to.inv_members = float(1.0 / double(members));
  to.log_members = float(std::log(double(members)));
  const teacher_t* row = logits + n * members * vocab;
  float* shift = ws.shift.data();
  float* log_sum = ws.log_sum.data();
  float* mean_probs = ws.teacher.data();
  member_normalizers(row, members, vocab, 1.f, shift, log_sum, ws.weights.data(), ws.inv_sum.data());
  ChunkedSum measure_sum, mass_sum;
  for (int64_t k = 0; k < body; k += kLanes) {
    const TeacherBlock b =
        teacher_block_weighted(row, ws.weights.data(), ws.inv_sum.data(), k, members, vocab, shift, log_sum, to);
    b.mean_prob.store(mean_probs + k);
    measure_sum.push(o.mkl ? clamp_rounding(xmul(b.mean_prob, b.log_mean_prob - b.mean_log_prob))
                           : clamp_rounding(b.mean_p_log_p - xmul(b.mean_prob, b.mean_log_prob)));
    mass_sum.push(b.mean_prob);
  }
  t.measure = measure_sum.result();
  t.mass = mass_sum.result();
  for (int64_t k = body; k < vocab; ++k) {
    const math::ClassTerms<float> c = teacher_class<teacher_t, float>(row, k, members, vocab, shift, log_sum, 1.f,
                                                                      false, 0.f, 0.f, to.inv_members, to.log_members);
    mean_probs[k] = c.mean_prob;
    t.measure += double(c.measure[o.mkl ? 4 : 3]);
    t.mass += double(c.mean_prob);
  }
  t.mean_probs = mean_probs;
  return t;
}

template <math::ProxyMode kMode>
double proxy_class_pass(const float* z, float* g, const ProxyTeacher& teacher, const ProxyOptions& o, int64_t vocab,
                        float grad_scale, Scratch& ws) {
  const int64_t body = vocab - vocab % kLanes;
  const float c = float(o.model_offset), log_c = float(o.log_model_offset), t_off = float(o.target_offset);
  const float* mean_probs = teacher.mean_probs;
  const double alpha0 = student_excess_row(z, vocab, o.model_offset, ws.excess.data());
  const double target_precision =
      math::proxy_target_precision(teacher.measure, o.mkl, double(vocab), o.eps, o.max_precision);
  const math::ProxyScalars s =
      math::proxy_scalars(kMode, alpha0, target_precision, o.target_offset, double(vocab), teacher.mass);
  const float class_precision = float(kMode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
  const float dig_a0 = float(s.digamma_alpha0), dig_b0 = float(s.digamma_beta0);
  const float grad_shift = float(s.grad_shift), inv_beta0 = float(s.inv_beta0);
  const ProxyConsts consts{VecF(c),      VecF(c - 1.f), VecF(class_precision), VecF(t_off),
                           VecF(dig_a0), VecF(dig_b0),  VecF(grad_shift),      VecF(inv_beta0)};
  const VecF vgrad_scale(grad_scale);
  ChunkedSum sum;
  VecF l, dz;
  for (int64_t k = 0; k < body; k += kLanes) {
    proxy_kl_block<kMode>(VecF::loadu(ws.excess.data() + k), VecF::loadu(mean_probs + k), consts, l, dz);
    emit_block(l, dz, vgrad_scale, g, k, sum);
  }
  double total = sum.result();
  for (int64_t k = body; k < vocab; ++k) {
    const math::ClassLossGrad<float> t = math::proxy_kl_class(kMode, z[k], c, log_c, mean_probs[k], class_precision,
                                                              t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
    total += double(t.loss);
    if (g != nullptr) g[k] = t.grad * grad_scale;
  }
  return (total + s.loss_shift) * s.inv_beta0;
}

double proxy_class_pass(const float* z, float* g, const ProxyTeacher& teacher, const ProxyOptions& o, int64_t vocab,
                        float grad_scale, Scratch& ws) {
  switch (o.mode) {
    case math::ProxyMode::kReverse:
      return proxy_class_pass<math::ProxyMode::kReverse>(z, g, teacher, o, vocab, grad_scale, ws);
    case math::ProxyMode::kForward:
      return proxy_class_pass<math::ProxyMode::kForward>(z, g, teacher, o, vocab, grad_scale, ws);
    default:
      return proxy_class_pass<math::ProxyMode::kReferenceCompat>(z, g, teacher, o, vocab, grad_scale, ws);
  }
}

template <typename student_t, typename teacher_t>
void proxy_kl_rows(const LossView& p, const ProxyOptions& o, int64_t begin, int64_t end) {
  const int64_t vocab = p.vocab, members = p.members;
  const bool from_logits = p.teacher_logits != nullptr;
  const student_t* student = p.student_data<student_t>();
  auto make_scratch = [&] {
    return Scratch{std::vector<float>(members),
                   std::vector<float>(members),
                   std::vector<float>(members),
                   std::vector<float>(vocab),
                   std::vector<float>(vocab),
                   std::vector<float>(from_logits ? members * vocab : 0),
                   student_scratch<student_t>(vocab),
                   student_scratch<student_t>(vocab)};
  };
  position_range<float, student_t>(p, begin, end, make_scratch, [&](int64_t n, Scratch& ws, GradRows<student_t> out) {
    const ProxyTeacher teacher = proxy_teacher_row<teacher_t>(p, o, n, ws);
    float* g = float_grad_row(out.student, ws.grad.data());
    const double loss = proxy_class_pass(float_row(student + n * vocab, vocab, ws.student.data()), g, teacher, o,
                                         vocab, float(p.grad_scale), ws);
    store_grad_row(g, out.student, vocab);
    return loss;
  });
}

void dirichlet_nll(const LossView& p, const DirichletNllArgs& a, int64_t begin, int64_t end) {
  dispatch_simd_pair(p, [&](auto s, auto t) {
    dirichlet_nll_rows<typename decltype(s)::type, typename decltype(t)::type>(p, a, begin, end);
  });
}

void proxy_kl(const LossView& p, const ProxyOptions& o, int64_t begin, int64_t end) {
  dispatch_simd_pair(p, [&](auto s, auto t) {
    proxy_kl_rows<typename decltype(s)::type, typename decltype(t)::type>(p, o, begin, end);
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(dirichlet_nll_kernel, dirichlet_nll);
EDD_EXT_REGISTER_CPU_KERNEL(proxy_kl_kernel, proxy_kl);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
