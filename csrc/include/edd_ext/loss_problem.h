// Problem set-up of the distillation-loss ops (SPEC section 2), shared by the CPU and CUDA implementations
// so that both accept and return exactly the same things: the shape, dtype and device checks of the inputs,
// and the allocation of the outputs. The Python layer validates first with the same wording; these checks
// guard direct torch.ops.edd_ext.* calls.
//
// Every loss op returns the loss (float32, or float64 when the student or the teacher is float64) and, when
// compute_grad is set, the gradient with respect to the student [*, V] in the student's dtype (otherwise an
// empty [0] tensor); the reduction of both is in edd_ext/loss_reduction.h. Masked positions (mask == False)
// are skipped: loss 0 and gradient 0, whatever they hold.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <string>

#include "edd_ext/checks.h"
#include "edd_ext/loss_options.h"

namespace edd_ext {

struct LossProblem {
  at::Tensor student;          // [N, V] contiguous (loc for the logit losses)
  at::Tensor log_scale;        // [N, V] contiguous (logit losses only)
  at::Tensor teacher_logits;   // [N, M, V] contiguous, or undefined
  at::Tensor teacher_rows;     // [N, V] contiguous (mean_probs or mean_log_probs), or undefined
  at::Tensor teacher_measure;  // [N] float64 (RMI or EPKL), or undefined
  at::Tensor mask;             // [N] bool, or undefined
  at::Tensor loss;             // [*]
  at::Tensor grad;             // [*, V], or [0] without compute_grad
  at::Tensor grad_log_scale;   // [*, V], or [0] (logit losses only)
  int64_t positions = 0, members = 0, vocab = 0;
  bool compute_grad = false;
  Reduction reduction = Reduction::kNone;
  // Factor the CPU kernels fold into every gradient element they write: 1 / (unmasked positions) for the
  // mean, else 1 (host_grad_scale). The CUDA kernels read the same factor from a device scalar when a mask must
  // be counted (cuda::grad_scale_for).
  double grad_scale = 1.0;

  at::ScalarType teacher_type() const {
    return teacher_logits.defined() ? teacher_logits.scalar_type() : teacher_rows.scalar_type();
  }
  const bool* mask_data() const { return mask.defined() ? mask.const_data_ptr<bool>() : nullptr; }
};

inline std::string batch_shape_str(const at::Tensor& t, int64_t trailing) {
  std::string s = "[";
  for (int64_t i = 0; i + trailing < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

// The loss dtype: float64 when any input is float64, else float32 (half and bfloat16 compute in float32).
inline at::ScalarType loss_dtype(at::ScalarType student, at::ScalarType teacher) {
  return (student == at::kDouble || teacher == at::kDouble) ? at::kDouble : at::kFloat;
}

inline void check_mask(const c10::optional<at::Tensor>& mask, const at::Tensor& student, const char* student_name) {
  if (!mask.has_value()) return;
  const at::Tensor& m = *mask;
  TORCH_CHECK_VALUE(m.scalar_type() == at::kBool, "mask: expected dtype torch.bool, got ", m.scalar_type(),
                    " (shape ", shape_str(m), ")");
  TORCH_CHECK_VALUE(m.dim() + 1 == student.dim() && m.sizes() == student.sizes().slice(0, student.dim() - 1),
                    "mask: expected shape ", batch_shape_str(student, 1), " (the positions of ", student_name, " ",
                    shape_str(student), "), got ", shape_str(m));
  check_same_device(student, student_name, m, "mask");
}

inline void check_teacher_matches(const at::Tensor& teacher_logits, const char* teacher_name, const at::Tensor& student,
                                  const char* student_name) {
  check_teacher_logits(teacher_logits, teacher_name);
  const bool match = teacher_logits.dim() == student.dim() + 1 &&
                     teacher_logits.sizes().slice(0, student.dim() - 1) == student.sizes().slice(0, student.dim() - 1) &&
                     teacher_logits.size(-1) == student.size(-1);
  TORCH_CHECK_VALUE(match, teacher_name, ": expected [*, M, V] logits matching ", student_name, " ",
                    shape_str(student), " ([*, V]), got ", shape_str(teacher_logits));
  check_same_device(student, student_name, teacher_logits, teacher_name);
}

inline void allocate_outputs(LossProblem& p, const at::Tensor& student, int64_t trailing_student_dims,
                             at::ScalarType teacher_type, bool with_log_scale) {
  const auto lead = leading_shape(student, trailing_student_dims);
  p.loss = at::empty(lead, student.options().dtype(loss_dtype(student.scalar_type(), teacher_type)));
  const auto opts = student.options();
  p.grad = p.compute_grad ? at::empty(student.sizes(), opts) : at::empty({0}, opts);
  if (with_log_scale) p.grad_log_scale = p.compute_grad ? at::empty(student.sizes(), opts) : at::empty({0}, opts);
}

// Student logits [*, V] with the teacher as logits [*, M, V] or as statistics rows [*, V] (+ a per-position
// measure [*] when `measure_name` is given).
inline LossProblem make_distill_problem(const at::Tensor& student_logits,
                                        const c10::optional<at::Tensor>& teacher_logits,
                                        const c10::optional<at::Tensor>& teacher_rows, const char* rows_name,
                                        const c10::optional<at::Tensor>& teacher_measure, const char* measure_name,
                                        const c10::optional<at::Tensor>& mask, int64_t reduction,
                                        bool compute_grad) {
  check_student(student_logits, "student_logits");
  TORCH_CHECK_VALUE(teacher_logits.has_value() != teacher_rows.has_value(), "teacher_logits, ", rows_name,
                    ": expected exactly one of them, got ", teacher_logits.has_value() ? "both" : "neither");
  LossProblem p;
  p.compute_grad = compute_grad;
  p.reduction = parse_reduction(reduction);
  p.student = student_logits.contiguous();
  p.vocab = student_logits.size(-1);
  p.positions = student_logits.numel() / p.vocab;
  if (teacher_logits.has_value()) {
    check_teacher_matches(*teacher_logits, "teacher_logits", student_logits, "student_logits");
    p.teacher_logits = teacher_logits->contiguous();
    p.members = p.teacher_logits.size(-2);
  } else {
    const at::Tensor& rows = *teacher_rows;
    check_floating(rows, rows_name);
    TORCH_CHECK_VALUE(rows.sizes() == student_logits.sizes(), rows_name, ": expected the shape of student_logits ",
                      shape_str(student_logits), ", got ", shape_str(rows));
    check_same_device(student_logits, "student_logits", rows, rows_name);
    p.teacher_rows = rows.contiguous();
    if (measure_name != nullptr) {
      TORCH_CHECK_VALUE(teacher_measure.has_value(), measure_name, ": expected a [*] tensor with ", rows_name,
                        ", got None");
      const at::Tensor& m = *teacher_measure;
      check_floating(m, measure_name);
      TORCH_CHECK_VALUE(m.dim() + 1 == rows.dim() && m.sizes() == rows.sizes().slice(0, rows.dim() - 1), measure_name,
                        ": expected shape ", batch_shape_str(rows, 1), " (the positions of ", rows_name, " ",
                        shape_str(rows), "), got ", shape_str(m));
      check_same_device(student_logits, "student_logits", m, measure_name);
      p.teacher_measure = m.to(at::kDouble).contiguous();
    }
  }
  check_mask(mask, student_logits, "student_logits");
  if (mask.has_value()) p.mask = mask->contiguous();
  allocate_outputs(p, student_logits, 1, p.teacher_type(), false);
  return p;
}

// loc, log_scale [*, V] and teacher logits [*, M, V].
inline LossProblem make_logit_problem(const at::Tensor& loc, const at::Tensor& log_scale,
                                      const at::Tensor& teacher_logits, const c10::optional<at::Tensor>& mask,
                                      int64_t reduction, bool compute_grad) {
  check_student(loc, "loc");
  check_student(log_scale, "log_scale");
  TORCH_CHECK_VALUE(log_scale.sizes() == loc.sizes(), "log_scale: expected the shape of loc ", shape_str(loc),
                    " ([*, V]), got ", shape_str(log_scale));
  TORCH_CHECK_VALUE(log_scale.scalar_type() == loc.scalar_type(), "log_scale: expected the dtype of loc (",
                    loc.scalar_type(), "), got ", log_scale.scalar_type(), " (shape ", shape_str(log_scale), ")");
  check_same_device(loc, "loc", log_scale, "log_scale");
  check_teacher_matches(teacher_logits, "teacher_logits", loc, "loc");
  check_mask(mask, loc, "loc");
  LossProblem p;
  p.compute_grad = compute_grad;
  p.reduction = parse_reduction(reduction);
  p.student = loc.contiguous();
  p.log_scale = log_scale.contiguous();
  p.teacher_logits = teacher_logits.contiguous();
  p.vocab = loc.size(-1);
  p.members = teacher_logits.size(-2);
  p.positions = loc.numel() / p.vocab;
  if (mask.has_value()) p.mask = mask->contiguous();
  allocate_outputs(p, loc, 1, teacher_logits.scalar_type(), true);
  return p;
}

}  // namespace edd_ext
