// Argument checks for the op implementations. The Python layer validates first and raises ValueError with
// the same wording; these guard direct torch.ops.edd_ext.* calls. TORCH_CHECK_VALUE surfaces as ValueError.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>

namespace edd_ext {

inline std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + "]";
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name,
                    ": expected a floating dtype (float16, bfloat16, float32, float64), got ", t.scalar_type(),
                    " with shape ", shape_str(t));
}

// Teacher logits [*, M, V] with M >= 1 and V >= 2.
inline void check_teacher_logits(const at::Tensor& t, const char* name) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.dim() >= 2, name, ": expected [*, M, V], got shape ", shape_str(t));
  TORCH_CHECK_VALUE(t.size(-2) >= 1, name, ": expected M >= 1 members in [*, M, V], got shape ", shape_str(t));
  TORCH_CHECK_VALUE(t.size(-1) >= 2, name, ": expected V >= 2 classes in [*, M, V], got shape ", shape_str(t));
}

// Student tensor [*, V] with V >= 2.
inline void check_student(const at::Tensor& t, const char* name) {
  check_floating(t, name);
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) >= 2, name, ": expected [*, V] with V >= 2, got shape ",
                    shape_str(t));
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), b_name, ": expected device ", a.device(), " (that of ", a_name,
                    "), got ", b.device());
}

// Leading (position) dimensions of a tensor, dropping its last `trailing` dims.
inline std::vector<int64_t> leading_shape(const at::Tensor& t, int64_t trailing) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end() - trailing);
}

inline std::vector<int64_t> with_trailing(std::vector<int64_t> shape, int64_t last) {
  shape.push_back(last);
  return shape;
}

}  // namespace edd_ext
