// Host-side argument checks and output allocation for the student-uncertainty ops (SPEC section 3),
// shared by the CPU and CUDA implementations so that both accept and return exactly the same things.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "edd_ext/checks.h"
#include "edd_ext/ensemble_math.h"
#include "edd_ext/student_math.h"

namespace edd_ext {

inline void check_finite_at_least(double value, double minimum, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value >= minimum, name, ": expected a finite number >= ", minimum,
                    ", got ", value);
}

// ---- dirichlet_uncertainty ----

struct DirichletProblem {
  at::Tensor logits;  // [*, V], contiguous
  at::Tensor out;     // [*, 7] float64: total, data, mutual_information, epkl, rmi, precision, differential_entropy
  int64_t positions = 0, vocab = 0;
  double offset = 1, log_offset = 0;
};

inline DirichletProblem make_dirichlet_problem(const at::Tensor& student_logits, double model_offset) {
  check_student(student_logits, "student_logits");
  check_finite_at_least(model_offset, 0.0, "model_offset");
  DirichletProblem p;
  p.logits = student_logits.contiguous();
  p.vocab = p.logits.size(-1);
  p.positions = p.logits.numel() / p.vocab;
  p.out = at::empty(with_trailing(leading_shape(p.logits, 1), math::kNumDirichletMeasures),
                    p.logits.options().dtype(at::kDouble));
  p.offset = model_offset;
  p.log_offset = model_offset > 0 ? std::log(model_offset) : -std::numeric_limits<double>::infinity();
  return p;
}

// ---- logit_distribution_uncertainty ----

inline math::Family parse_family(c10::string_view family) {
  if (family == "gaussian") return math::Family::kGaussian;
  TORCH_CHECK_VALUE(family == "laplace", "family: expected one of 'gaussian', 'laplace', got '", std::string(family),
                    "'");
  return math::Family::kLaplace;
}

struct LogitProblem {
  at::Tensor loc, log_scale;  // [*, V], contiguous
  at::Tensor out;             // [*, 5] (float32, or float64 for float64 input)
  int64_t positions = 0, vocab = 0, samples = 0;
  math::Family family = math::Family::kGaussian;
  uint64_t seed = 0;
  double inv_temperature = 1, min_scale = 0, inv_samples = 1, log_samples = 0;
};

inline LogitProblem make_logit_problem(const at::Tensor& loc, const at::Tensor& log_scale, c10::string_view family,
                                       int64_t num_samples, int64_t seed, double temperature, double min_scale) {
  check_student(loc, "loc");
  check_student(log_scale, "log_scale");
  TORCH_CHECK_VALUE(loc.sizes() == log_scale.sizes(), "log_scale: expected the shape of loc ", shape_str(loc),
                    " ([*, V]), got ", shape_str(log_scale));
  TORCH_CHECK_VALUE(loc.scalar_type() == log_scale.scalar_type(), "log_scale: expected the dtype of loc (",
                    loc.scalar_type(), "), got ", log_scale.scalar_type(), " (shape ", shape_str(log_scale), ")");
  check_same_device(loc, "loc", log_scale, "log_scale");
  LogitProblem p;
  p.family = parse_family(family);
  TORCH_CHECK_VALUE(num_samples >= 1 && num_samples <= (int64_t(1) << 32),
                    "num_samples: expected an int in [1, 2^32], got ", num_samples);
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, "temperature: expected a positive number, got ",
                    temperature);
  check_finite_at_least(min_scale, 0.0, "min_scale");
  p.loc = loc.contiguous();
  p.log_scale = log_scale.contiguous();
  p.vocab = p.loc.size(-1);
  TORCH_CHECK_VALUE(p.vocab <= (int64_t(1) << 32), "loc: expected V <= 2^32 classes, got shape ", shape_str(loc));
  p.positions = p.loc.numel() / p.vocab;
  const auto opts = p.loc.options().dtype(p.loc.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  p.out = at::empty(with_trailing(leading_shape(p.loc, 1), math::kNumMeasures), opts);
  p.samples = num_samples;
  p.seed = uint64_t(seed);
  p.inv_temperature = 1.0 / temperature;
  p.min_scale = min_scale;
  p.inv_samples = 1.0 / double(num_samples);
  p.log_samples = std::log(double(num_samples));
  return p;
}

// ---- test access to the generator ----

inline void check_philox_counters(const at::Tensor& counters) {
  TORCH_CHECK_VALUE(counters.scalar_type() == at::kLong && counters.dim() >= 1 && counters.size(-1) == 4,
                    "counters: expected an int64 tensor [*, 4] of 32-bit counter words, got ", counters.scalar_type(),
                    " with shape ", shape_str(counters));
}

inline void check_philox_noise_args(const at::Tensor& positions, int64_t num_samples, int64_t vocab,
                                    c10::string_view family) {
  parse_family(family);
  TORCH_CHECK_VALUE(positions.scalar_type() == at::kLong && positions.dim() == 1,
                    "positions: expected a 1-d int64 tensor of position indices, got ", positions.scalar_type(),
                    " with shape ", shape_str(positions));
  TORCH_CHECK_VALUE(num_samples >= 1 && num_samples <= (int64_t(1) << 32),
                    "num_samples: expected an int in [1, 2^32], got ", num_samples);
  TORCH_CHECK_VALUE(vocab >= 1 && vocab <= (int64_t(1) << 32), "vocab: expected an int in [1, 2^32], got ", vocab);
}

}  // namespace edd_ext
