// Option parsing and dtype dispatch of the distillation-loss ops (SPEC section 2), shared by the CPU and CUDA
// implementations: the reduction, the string and number options (each checked once for both backends, with
// messages that name the argument), and the student/teacher dtype dispatch with its compute type.
#pragma once

#include <ATen/Dispatch.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "edd_ext/dirichlet_math.h"
#include "edd_ext/logit_math.h"

namespace edd_ext {

// The loss ops' reduction argument.
enum class Reduction : int64_t { kNone = 0, kSum = 1, kMean = 2 };

inline Reduction parse_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= 2, "reduction: expected 0 (none), 1 (sum) or 2 (mean), got ",
                    reduction);
  return static_cast<Reduction>(reduction);
}

inline void check_positive_option(double value, const char* name) {
  TORCH_CHECK_VALUE(value > 0 && std::isfinite(value), name, ": expected a positive finite number, got ", value);
}

inline void check_nonnegative_option(double value, const char* name) {
  TORCH_CHECK_VALUE(value >= 0 && std::isfinite(value), name, ": expected a finite number >= 0, got ", value);
}

// ln(x) for x >= 0, -inf at 0.
inline double log_or_neg_inf(double x) { return x > 0 ? std::log(x) : -std::numeric_limits<double>::infinity(); }

// Options of the proxy-Dirichlet KL, checked once for both backends.
struct ProxyOptions {
  math::ProxyMode mode = math::ProxyMode::kReverse;
  bool mkl = true;
  double model_offset = 1, log_model_offset = 0, target_offset = 1, eps = 0, max_precision = 0;  // 0: no clamp
};

inline ProxyOptions parse_proxy_options(c10::string_view direction, c10::string_view precision, double model_offset,
                                        double target_offset, double eps, c10::optional<double> max_precision,
                                        bool reference_code_compat) {
  ProxyOptions o;
  TORCH_CHECK_VALUE(direction == "reverse" || direction == "forward",
                    "direction: expected one of 'reverse', 'forward', got '", direction, "'");
  TORCH_CHECK_VALUE(precision == "mkl" || precision == "epkl", "precision: expected one of 'mkl', 'epkl', got '",
                    precision, "'");
  TORCH_CHECK_VALUE(!(reference_code_compat && direction != "reverse"),
                    "reference_code_compat: the released code's objective exists for direction='reverse' only, got "
                    "direction='", direction, "'");
  check_nonnegative_option(model_offset, "model_offset");
  check_nonnegative_option(target_offset, "target_offset");
  check_positive_option(eps, "eps");
  if (max_precision.has_value()) check_positive_option(*max_precision, "max_precision");
  o.mode = reference_code_compat ? math::ProxyMode::kReferenceCompat
                                 : (direction == "reverse" ? math::ProxyMode::kReverse : math::ProxyMode::kForward);
  o.mkl = precision == "mkl";
  o.model_offset = model_offset;
  o.log_model_offset = log_or_neg_inf(model_offset);
  o.target_offset = target_offset;
  o.eps = eps;
  o.max_precision = max_precision.has_value() ? *max_precision : 0.0;
  return o;
}

inline math::TeacherNorm parse_teacher_norm(c10::string_view name) {
  if (name == "log_softmax") return math::TeacherNorm::kLogSoftmax;
  if (name == "center") return math::TeacherNorm::kCenter;
  TORCH_CHECK_VALUE(name == "none", "teacher_norm: expected one of 'log_softmax', 'center', 'none', got '", name, "'");
  return math::TeacherNorm::kNone;
}

// true for "laplace", false for "gaussian".
inline bool parse_logit_family(c10::string_view family) {
  TORCH_CHECK_VALUE(family == "gaussian" || family == "laplace", "family: expected one of 'gaussian', 'laplace', got '",
                    family, "'");
  return family == "laplace";
}

template <typename T>
struct TypeTag {
  using type = T;
};

// The compute type of a student/teacher pair: float64 when either is float64, else float32.
template <typename student_t, typename teacher_t>
using loss_acc_t = std::conditional_t<std::is_same_v<student_t, double> || std::is_same_v<teacher_t, double>, double,
                                      float>;

// Calls f(TypeTag<student_t>{}, TypeTag<teacher_t>{}) for the runtime dtypes (each of float16, bfloat16,
// float32, float64): the student and the teacher may differ, and no converted copy of the teacher is made.
template <typename F>
void dispatch_student_teacher(at::ScalarType student, at::ScalarType teacher, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher, "edd_ext::loss (teacher)", [&] {
    using teacher_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student, "edd_ext::loss (student)",
                                    [&] { f(TypeTag<scalar_t>{}, TypeTag<teacher_t>{}); });
  });
}

}  // namespace edd_ext
