// Host-side argument checks and output allocation of the top-k ops (SPEC section 1.1), shared by the CPU and
// CUDA implementations so that both accept and return exactly the same things. The Python layer validates first
// (edd_ext/_validation.py, check_top_k and check_topk_stats); these guard direct torch.ops.edd_ext.* calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include "edd_ext/checks.h"
#include "edd_ext/ensemble_stats_host.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {

// topk_ensemble_stats: the dense problem without its [*, V] rows, plus the [*, k] and [*] outputs.
struct TopKStatsProblem {
  EnsembleStatsProblem dense;  // logits, measures [*, 5] and the options
  int64_t k = 0;
  at::Tensor indices;             // [*, k] int64
  at::Tensor listed_probs;        // [*, k] mean probabilities of the listed classes
  at::Tensor listed_log_probs;    // [*, k] their mean log-probabilities
  at::Tensor tail_mass;           // [*]
  at::Tensor tail_mean_log_prob;  // [*]
};

inline TopKStatsProblem make_topk_stats_problem(const at::Tensor& teacher_logits, int64_t k, double temperature,
                                                double smoothing) {
  TopKStatsProblem p;
  p.dense = make_ensemble_stats_problem(teacher_logits, temperature, smoothing, /*with_rows=*/false);
  const int64_t vocab = p.dense.vocab;
  TORCH_CHECK_VALUE(k >= 1 && k <= vocab, "k: expected an int in [1, V] = [1, ", vocab, "] for teacher_logits ",
                    shape_str(teacher_logits), ", got ", k);
  p.k = k;
  const auto lead = leading_shape(p.dense.logits, 2);
  const auto opts = p.dense.measures.options();
  p.indices = at::empty(with_trailing(lead, k), opts.dtype(at::kLong));
  p.listed_probs = at::empty(with_trailing(lead, k), opts);
  p.listed_log_probs = at::empty(with_trailing(lead, k), opts);
  p.tail_mass = at::empty(lead, opts);
  p.tail_mean_log_prob = at::empty(lead, opts);
  return p;
}

// The sparse target of a top-k loss: k listed classes and their values per position, and the tail's value.
struct TopKTarget {
  at::Tensor indices;  // [N, k] int64, contiguous
  at::Tensor values;   // [N, k] contiguous: the listed classes' mean probabilities or mean log-probabilities
  at::Tensor tail;     // [N] float64: tail_mass or tail_mean_log_prob
  int64_t k = 0;
};

// A [*] per-position tensor of a top-k loss (the tail, the measure): floating, the positions of student_logits.
inline at::Tensor per_position_double(const at::Tensor& t, const char* name, const at::Tensor& student) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.dim() + 1 == student.dim() && t.sizes() == student.sizes().slice(0, student.dim() - 1), name,
                    ": expected shape ", batch_shape_str(student, 1), " (the positions of student_logits ",
                    shape_str(student), "), got ", shape_str(t));
  check_same_device(student, "student_logits", t, name);
  return t.to(at::kDouble).contiguous();
}

// Student logits [*, V] against the sparse target (indices [*, k], values [*, k], tail [*]) and, for the proxy KL,
// the ensemble's measure [*] (stored in p.teacher_measure as for the dense op).
inline LossProblem make_topk_loss_problem(const at::Tensor& student_logits, const at::Tensor& indices,
                                          const at::Tensor& values, const char* values_name, const at::Tensor& tail,
                                          const char* tail_name, const c10::optional<at::Tensor>& teacher_measure,
                                          const c10::optional<at::Tensor>& mask, int64_t reduction, bool compute_grad,
                                          TopKTarget& target) {
  check_student(student_logits, "student_logits");
  const int64_t vocab = student_logits.size(-1);
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kLong, "indices: expected dtype torch.int64, got ",
                    indices.scalar_type(), " (shape ", shape_str(indices), ")");
  TORCH_CHECK_VALUE(
      indices.dim() == student_logits.dim() &&
          indices.sizes().slice(0, indices.dim() - 1) == student_logits.sizes().slice(0, student_logits.dim() - 1) &&
          indices.size(-1) >= 1 && indices.size(-1) <= vocab,
      "indices: expected [*, k] with 1 <= k <= V for student_logits ", shape_str(student_logits), " ([*, V]), got ",
      shape_str(indices));
  check_same_device(student_logits, "student_logits", indices, "indices");
  check_floating(values, values_name);
  TORCH_CHECK_VALUE(values.sizes() == indices.sizes(), values_name, ": expected the shape of indices ",
                    shape_str(indices), ", got ", shape_str(values));
  check_same_device(student_logits, "student_logits", values, values_name);
  check_mask(mask, student_logits, "student_logits");

  LossProblem p;
  p.compute_grad = compute_grad;
  p.reduction = parse_reduction(reduction);
  p.student = student_logits.contiguous();
  p.vocab = vocab;
  p.positions = student_logits.numel() / vocab;
  if (teacher_measure.has_value())
    p.teacher_measure = per_position_double(*teacher_measure, "teacher_measure", student_logits);
  if (mask.has_value()) p.mask = mask->contiguous();
  allocate_outputs(p, student_logits, 1, values.scalar_type(), false);

  target.indices = indices.contiguous();
  target.values = values.contiguous();
  target.tail = per_position_double(tail, tail_name, student_logits);
  target.k = indices.size(-1);
  return p;
}

// The problems of the three top-k loss ops, their options checked: the same for both backends.
inline LossProblem topk_dirichlet_nll_problem(const at::Tensor& student_logits, const at::Tensor& indices,
                                              const at::Tensor& mean_log_probs, const at::Tensor& tail_mean_log_prob,
                                              const c10::optional<at::Tensor>& mask, double model_offset,
                                              int64_t reduction, bool compute_grad, TopKTarget& target) {
  check_nonnegative_option(model_offset, "model_offset");
  return make_topk_loss_problem(student_logits, indices, mean_log_probs, "mean_log_probs", tail_mean_log_prob,
                                "tail_mean_log_prob", c10::nullopt, mask, reduction, compute_grad, target);
}

inline LossProblem topk_proxy_problem(const at::Tensor& student_logits, const at::Tensor& indices,
                                      const at::Tensor& mean_probs, const at::Tensor& tail_mass,
                                      const at::Tensor& teacher_measure, const c10::optional<at::Tensor>& mask,
                                      int64_t reduction, bool compute_grad, TopKTarget& target) {
  return make_topk_loss_problem(student_logits, indices, mean_probs, "mean_probs", tail_mass, "tail_mass",
                                teacher_measure, mask, reduction, compute_grad, target);
}

inline LossProblem topk_ensemble_kl_problem(const at::Tensor& student_logits, const at::Tensor& indices,
                                            const at::Tensor& mean_probs, const at::Tensor& tail_mass,
                                            const c10::optional<at::Tensor>& mask, int64_t reduction, bool compute_grad,
                                            TopKTarget& target) {
  return make_topk_loss_problem(student_logits, indices, mean_probs, "mean_probs", tail_mass, "tail_mass", c10::nullopt,
                                mask, reduction, compute_grad, target);
}

// The data of a top-k loss problem for the kernels of both backends (position n's rows start at n * vocab,
// n * k and n).
template <typename student_t, typename teacher_t, typename acc_t>
struct TopKArgs {
  using student_type = student_t;
  using teacher_type = teacher_t;
  using acc_type = acc_t;
  const student_t* student;  // [N, V]
  const int64_t* indices;    // [N, k]
  const teacher_t* values;   // [N, k]
  const double* tail;        // [N]
  const double* measure;     // [N] (the proxy KL's RMI or EPKL), or nullptr
  const bool* mask;          // [N], or nullptr
  int64_t positions, vocab, k;
  acc_t* loss;      // [N]
  student_t* grad;  // [N, V], or nullptr
};

template <typename student_t, typename teacher_t, typename acc_t>
TopKArgs<student_t, teacher_t, acc_t> topk_args(const LossProblem& p, const TopKTarget& t) {
  return {p.student.const_data_ptr<student_t>(),
          t.indices.const_data_ptr<int64_t>(),
          t.values.const_data_ptr<teacher_t>(),
          t.tail.const_data_ptr<double>(),
          p.teacher_measure.defined() ? p.teacher_measure.const_data_ptr<double>() : nullptr,
          p.mask_data(),
          p.positions,
          p.vocab,
          t.k,
          p.loss.mutable_data_ptr<acc_t>(),
          p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr};
}

}  // namespace edd_ext
