// Every op schema of the edd_ext library, in one place: the public ops (torch.ops.edd_ext.*, exactly what the
// Python API calls) and, in a namespace of their own, the ops that only the tests use to reach the shared math
// and the noise generator (torch.ops.edd_ext_testing.*). Implementations register per backend in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); Python-side fake (meta) kernels and autograd live in
// edd_ext/_ops/ (one module per op family).
#include <torch/library.h>

TORCH_LIBRARY(edd_ext, m) {
  // ---- teacher statistics (SPEC section 1) ----
  // teacher_logits [*, M, V] -> mean_probs [*, V], mean_log_probs [*, V], measures [*, 5]
  m.def(
      "ensemble_stats(Tensor teacher_logits, float temperature, float smoothing)"
      " -> (Tensor mean_probs, Tensor mean_log_probs, Tensor measures)");
  // teacher_logits [*, M, V] -> measures [*, 5] (total, data, mutual_information, epkl, rmi)
  m.def("ensemble_uncertainty(Tensor teacher_logits, float temperature, float smoothing) -> Tensor");

  // ---- distillation losses (SPEC section 2) ----
  // Each returns the loss (float32; float64 when the student or the teacher is float64) under `reduction`:
  // 0 = none, the per-position loss [*]; 1 = sum, 2 = mean over the unmasked positions (0 when none is),
  // a 0-dim tensor; and, with compute_grad, the closed-form gradient of that output with respect to the
  // student tensor(s) [*, V] in the student's dtype (an empty [0] tensor otherwise): of each position's own
  // loss for none and sum, divided by the unmasked positions for mean. reuse_grad: the caller drops the gradient
  // output (as the edd_ext.* wrappers do), so the registered backward may hand that very tensor to autograd or
  // scale it in place when the graph is freed after it (edd_ext/_ops/losses.py); keep it False when holding it. The teacher is either raw logits [*, M, V] or the rows
  // of an EnsembleStats [*, V] (exactly one of them); it is a constant. Masked positions (mask [*] False)
  // get loss 0 and gradient 0 whatever they hold.
  //
  // EnD^2 (2.1): Dirichlet NLL of the members; from statistics it needs mean_log_probs.
  m.def(
      "dirichlet_nll(Tensor student_logits, Tensor? teacher_logits, Tensor? mean_log_probs, Tensor? mask,"
      " float model_offset, int reduction, bool compute_grad, bool reuse_grad=False)"
      " -> (Tensor loss, Tensor grad)");
  // Proxy-Dirichlet KL (2.2): direction "reverse" | "forward"; precision "mkl" | "epkl". From statistics it
  // needs mean_probs and teacher_measure [*], the ensemble's RMI (mkl) or EPKL (epkl).
  m.def(
      "proxy_dirichlet_kl(Tensor student_logits, Tensor? teacher_logits, Tensor? mean_probs, Tensor? teacher_measure,"
      " Tensor? mask, str direction, str precision, float model_offset, float target_offset, float eps,"
      " float? max_precision, bool reference_code_compat, int reduction, bool compute_grad, bool reuse_grad=False)"
      " -> (Tensor loss, Tensor grad)");
  // Logit-space Gaussian / Laplace NLL (2.3): family "gaussian" | "laplace"; teacher_norm "log_softmax" |
  // "center" | "none".
  m.def(
      "logit_nll(Tensor loc, Tensor log_scale, Tensor teacher_logits, Tensor? mask, str family, str teacher_norm,"
      " float temperature, float min_scale, int reduction, bool compute_grad, bool reuse_grad=False)"
      " -> (Tensor loss, Tensor grad_loc, Tensor grad_log_scale)");
  // EnD baseline (2.4): KL[pi^ || softmax(z)]; from statistics it needs mean_probs.
  m.def(
      "ensemble_kl(Tensor student_logits, Tensor? teacher_logits, Tensor? mean_probs, Tensor? mask,"
      " int reduction, bool compute_grad, bool reuse_grad=False) -> (Tensor loss, Tensor grad)");
  // The registered backward of the losses: grad [*, V] *= factor (0-dim, or [*] one per position) in place,
  // leaving rows whose factor is exactly 1 and masked rows (mask [*] False) untouched (edd_ext/grad_scale.h).
  m.def("scale_grad_(Tensor(a!) grad, Tensor factor, Tensor? mask) -> ()");

  // ---- compact top-k teacher statistics (SPEC section 1.1) and the losses that read them ----
  // teacher_logits [*, M, V] -> indices [*, k] int64 (the k classes of largest mean probability, by decreasing
  // mean probability, ties: smaller class first), mean_probs [*, k], mean_log_probs [*, k], tail_mass [*] (the
  // other classes' total mean probability), tail_mean_log_prob [*] (the mean of their mean log-probabilities;
  // both 0 when k = V), measures [*, 5] (exact over all V); float32, or float64 for float64 input.
  m.def(
      "topk_ensemble_stats(Tensor teacher_logits, int k, float temperature, float smoothing)"
      " -> (Tensor indices, Tensor mean_probs, Tensor mean_log_probs, Tensor tail_mass, Tensor tail_mean_log_prob,"
      " Tensor measures)");
  // The losses of section 2 against a sparse target: student_logits [*, V], indices [*, k] int64 (k distinct
  // classes in [0, V) per unmasked position), the listed values [*, k] and the tail [*]; every class outside the
  // list takes the tail's value (mean probability tail_mass / (V - k), mean log-probability tail_mean_log_prob).
  // Outputs, reduction, gradient and mask as for the dense ops above.
  m.def(
      "topk_dirichlet_nll(Tensor student_logits, Tensor indices, Tensor mean_log_probs, Tensor tail_mean_log_prob,"
      " Tensor? mask, float model_offset, int reduction, bool compute_grad, bool reuse_grad=False)"
      " -> (Tensor loss, Tensor grad)");
  // teacher_measure [*]: the ensemble's RMI (mkl) or EPKL (epkl).
  m.def(
      "topk_proxy_dirichlet_kl(Tensor student_logits, Tensor indices, Tensor mean_probs, Tensor tail_mass,"
      " Tensor teacher_measure, Tensor? mask, str direction, str precision, float model_offset, float target_offset,"
      " float eps, float? max_precision, bool reference_code_compat, int reduction, bool compute_grad,"
      " bool reuse_grad=False) -> (Tensor loss, Tensor grad)");
  m.def(
      "topk_ensemble_kl(Tensor student_logits, Tensor indices, Tensor mean_probs, Tensor tail_mass, Tensor? mask,"
      " int reduction, bool compute_grad, bool reuse_grad=False) -> (Tensor loss, Tensor grad)");

  // ---- student uncertainty (SPEC section 3) ----
  // student_logits [*, V] -> [*, 7] float64: total, data, mutual_information, epkl, rmi, precision,
  // differential_entropy of Dir(exp(z) + model_offset)
  m.def("dirichlet_uncertainty(Tensor student_logits, float model_offset) -> Tensor");
  // loc, log_scale [*, V] -> [*, 5] (total, data, mutual_information, epkl, rmi) of num_samples Monte-Carlo
  // draws z = loc + (exp(log_scale) + min_scale) * eps, eps from Philox4x32-10 keyed by (seed, position,
  // sample, class); family: "gaussian" | "laplace". float32, or float64 for float64 input.
  m.def(
      "logit_distribution_uncertainty(Tensor loc, Tensor log_scale, str family, int num_samples, int seed,"
      " float temperature, float min_scale) -> Tensor");
}

// Test-only ops: not part of the public API, kept out of torch.ops.edd_ext.
TORCH_LIBRARY(edd_ext_testing, m) {
  // The shared special functions, so that tests reach the host/device math: name "lgamma" | "digamma" |
  // "trigamma" (and "simd_*" on CPU); x > 0
  m.def("special_function(Tensor x, str name) -> Tensor");
  // Access to the generator: counters [*, 4] (int64 holding 32-bit words) -> [*, 4] Philox4x32-10 output
  // words under the key (seed mod 2^32, seed div 2^32).
  m.def("philox4x32(Tensor counters, int seed) -> Tensor");
  // The float32 noise the logit kernels draw at positions [P] (int64 indices): [P, num_samples, vocab].
  m.def("philox_noise(Tensor positions, int seed, int num_samples, int vocab, str family) -> Tensor");
}
