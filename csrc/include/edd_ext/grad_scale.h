// Host-side checks of scale_grad_, the in-place scaling of a loss op's saved gradient by the incoming gradient
// in the registered backward (edd_ext/_loss_ops.py), shared by the CPU and CUDA implementations.
//
// grad [*, V] (the op's own gradient output: contiguous) is multiplied row by row by `factor`, a 0-dim tensor
// (the incoming gradient of a "sum" / "mean" loss) or one value per position [*] ("none"); rows whose factor is
// exactly 1 and masked rows (already exactly 0) are not touched, so that the usual `loss.backward()` (an incoming
// gradient of 1) costs no pass over the gradient and no host synchronisation on either device. The product is
// taken in the gradient's compute type (float for float16 / bfloat16) and rounded once.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include "edd_ext/checks.h"

namespace edd_ext {

struct GradScaleProblem {
  at::Tensor factor;  // 0-dim, or [rows] contiguous
  at::Tensor mask;    // [rows] bool contiguous, or undefined
  int64_t rows = 0, vocab = 0;
  int64_t factor_stride = 0;  // 0: one factor for every row; 1: one per row

  const bool* mask_data() const { return mask.defined() ? mask.const_data_ptr<bool>() : nullptr; }
};

inline GradScaleProblem make_grad_scale_problem(const at::Tensor& grad, const at::Tensor& factor,
                                                const c10::optional<at::Tensor>& mask) {
  check_student(grad, "grad");
  TORCH_CHECK_VALUE(grad.is_contiguous(), "grad: expected a contiguous [*, V] tensor, got shape ", shape_str(grad),
                    " with strides ", grad.strides());
  TORCH_CHECK_VALUE(factor.scalar_type() == at::kFloat || factor.scalar_type() == at::kDouble,
                    "factor: expected float32 or float64, got ", factor.scalar_type(), " (shape ", shape_str(factor), ")");
  const bool per_row = factor.dim() > 0;
  TORCH_CHECK_VALUE(!per_row || factor.sizes() == grad.sizes().slice(0, grad.dim() - 1),
                    "factor: expected a 0-dim tensor or the positions of grad ", shape_str(grad), ", got shape ",
                    shape_str(factor));
  check_same_device(grad, "grad", factor, "factor");
  GradScaleProblem p;
  p.vocab = grad.size(-1);
  p.rows = grad.numel() / p.vocab;
  p.factor = factor.contiguous();
  p.factor_stride = per_row ? 1 : 0;
  if (mask.has_value()) {
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool && mask->sizes() == grad.sizes().slice(0, grad.dim() - 1),
                      "mask: expected a bool tensor of the positions of grad ", shape_str(grad), ", got ",
                      mask->scalar_type(), " of shape ", shape_str(*mask));
    check_same_device(grad, "grad", *mask, "mask");
    p.mask = mask->contiguous();
  }
  return p;
}

}  // namespace edd_ext
