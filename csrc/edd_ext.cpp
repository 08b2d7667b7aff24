// Every op schema of the edd_ext library, in one place. Implementations register per backend in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); Python-side fake (meta) kernels and autograd live in
// edd_ext/_ops.py.
#include <torch/library.h>

TORCH_LIBRARY(edd_ext, m) {
  // ---- teacher statistics (SPEC section 1) ----
  // teacher_logits [*, M, V] -> mean_probs [*, V], mean_log_probs [*, V], measures [*, 5]
  m.def(
      "ensemble_stats(Tensor teacher_logits, float temperature, float smoothing)"
      " -> (Tensor mean_probs, Tensor mean_log_probs, Tensor measures)");
  // teacher_logits [*, M, V] -> measures [*, 5] (total, data, mutual_information, epkl, rmi)
  m.def("ensemble_uncertainty(Tensor teacher_logits, float temperature, float smoothing) -> Tensor");

  // ---- shared special functions, exposed so that tests reach the host/device math ----
  // name: "lgamma" | "digamma" | "trigamma"; x > 0
  m.def("special_function(Tensor x, str name) -> Tensor");

  // ---- distillation losses (SPEC section 2) ----

  // ---- student uncertainty (SPEC section 3) ----
}
