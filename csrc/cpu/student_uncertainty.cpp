// CPU kernels for the uncertainty of a student (SPEC section 3): the Monte-Carlo measures of a Gaussian or
// Laplace distribution over logits (the Dirichlet measures are in dirichlet_uncertainty.cpp), and the test access
// to the noise generator. The Monte-Carlo kernel itself is edd_ext/cpu/logit_sampling.h: float32 math for
// float32/float16/bfloat16 inputs through the per-capability build (csrc/cpu/simd/student_uncertainty.cpp),
// float64 math for float64 inputs here; one chunk of positions per parallel task.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/logit_sampling.h"
#include "edd_ext/cpu/parallel.h"
#include "edd_ext/student_uncertainty_host.h"

namespace edd_ext {
namespace {

using math::Family;

// ---------------------------------------------------------------------------------------------------
// Logit distribution
// ---------------------------------------------------------------------------------------------------

at::Tensor logit_distribution_uncertainty_cpu(const at::Tensor& loc, const at::Tensor& log_scale,
                                              c10::string_view family, int64_t num_samples, int64_t seed,
                                              double temperature, double min_scale) {
  LogitProblem p = make_logit_problem(loc, log_scale, family, num_samples, seed, temperature, min_scale);
  if (p.positions == 0) return p.out;
  const cpu::LogitSamplingView v{
      .loc = p.loc.const_data_ptr(), .log_scale = p.log_scale.const_data_ptr(), .dtype = p.loc.scalar_type(),
      .out = p.out.mutable_data_ptr(), .positions = p.positions, .vocab = p.vocab, .samples = p.samples,
      .family = p.family, .seed = p.seed, .inv_temperature = p.inv_temperature, .min_scale = p.min_scale,
      .inv_samples = p.inv_samples, .log_samples = p.log_samples};
  if (v.dtype != at::kDouble) {
    cpu::run_kernel(cpu::logit_sampling_kernel, p.positions, 1, v);
  } else if (p.family == Family::kGaussian) {
    cpu::parallel_positions(p.positions, 1, [&](int64_t begin, int64_t end) {
      cpu::logit_positions<Family::kGaussian, double, double>(v, begin, end);
    });
  } else {
    cpu::parallel_positions(p.positions, 1, [&](int64_t begin, int64_t end) {
      cpu::logit_positions<Family::kLaplace, double, double>(v, begin, end);
    });
  }
  return p.out;
}

// ---------------------------------------------------------------------------------------------------
// Test access to the generator
// ---------------------------------------------------------------------------------------------------

at::Tensor philox4x32_cpu(const at::Tensor& counters, int64_t seed) {
  check_philox_counters(counters);
  const at::Tensor in = counters.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t* c = in.const_data_ptr<int64_t>();
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const uint64_t key = uint64_t(seed);
  for (int64_t i = 0; i < in.numel() / 4; ++i) {
    const philox::Words w = philox::philox4x32_10(uint32_t(c[4 * i]), uint32_t(c[4 * i + 1]), uint32_t(c[4 * i + 2]),
                                                  uint32_t(c[4 * i + 3]), uint32_t(key), uint32_t(key >> 32));
    o[4 * i] = w.w0;
    o[4 * i + 1] = w.w1;
    o[4 * i + 2] = w.w2;
    o[4 * i + 3] = w.w3;
  }
  return out;
}

template <Family kFamily>
void noise_rows(const int64_t* positions, int64_t count, uint64_t seed, int64_t samples, int64_t vocab, float* out) {
  cpu::parallel_positions(count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const philox::Stream stream(seed, uint64_t(positions[i]));
      float* rows = out + i * samples * vocab;
      for (int64_t s = 0; s < samples; ++s) {
        for (int64_t k = 0; k < vocab; ++k) {
          const math::Noise4 e = math::noise4<kFamily>(stream.bits(uint32_t(k), uint32_t(s / 4)));
          rows[s * vocab + k] = math::noise_component(e, int(s % 4));
        }
      }
    }
  });
}

at::Tensor philox_noise_cpu(const at::Tensor& positions, int64_t seed, int64_t num_samples, int64_t vocab,
                            c10::string_view family) {
  check_philox_noise_args(positions, num_samples, vocab, family);
  const at::Tensor pos = positions.contiguous();
  at::Tensor out = at::empty({pos.size(0), num_samples, vocab}, pos.options().dtype(at::kFloat));
  if (parse_family(family) == Family::kGaussian) {
    noise_rows<Family::kGaussian>(pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab,
                                  out.mutable_data_ptr<float>());
  } else {
    noise_rows<Family::kLaplace>(pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab,
                                 out.mutable_data_ptr<float>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) { m.impl("logit_distribution_uncertainty", &logit_distribution_uncertainty_cpu); }

TORCH_LIBRARY_IMPL(edd_ext_testing, CPU, m) {
  m.impl("philox4x32", &philox4x32_cpu);
  m.impl("philox_noise", &philox_noise_cpu);
}

}  // namespace edd_ext
