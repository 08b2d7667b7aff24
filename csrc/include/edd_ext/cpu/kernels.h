// The per-capability CPU kernels (csrc/cpu/simd/*.cpp, compiled once per capability) as the op code, compiled
// once, calls them: each kernel's arguments (views of raw pointers and sizes: the kernels are built without
// torch's tensor headers, so that three builds of them stay cheap), its signature and its table (a
// Kernel<Fn>, edd_ext/cpu/capability.h). The op code validates, allocates, runs cpu::parallel_positions and
// calls `table.get()(view, ..., begin, end)` on each chunk of positions; float64 inputs keep the scalar
// kernels of the op files.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

#include "edd_ext/cpu/capability.h"
#include "edd_ext/cpu/loss_view.h"
#include "edd_ext/cpu/simd_limits.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/proxy_options.h"
#include "edd_ext/student_math.h"

namespace edd_ext {
namespace cpu {

// ---- distillation losses (LossView, edd_ext/cpu/loss_view.h): float32 / float16 / bfloat16 students and
// teachers, float32 math and loss ----
struct DirichletNllArgs {
  double model_offset = 1, log_model_offset = 0;
};

struct LogitNllArgs {
  bool laplace = false;
  math::TeacherNorm norm = math::TeacherNorm::kLogSoftmax;
  double inv_temperature = 1, log_min_scale = 0;  // log_min_scale = -inf: no minimum scale
};

using EnsembleKlKernel = void(const LossView& v, int64_t begin, int64_t end);
using DirichletNllKernel = void(const LossView& v, const DirichletNllArgs& a, int64_t begin, int64_t end);
using ProxyKlKernel = void(const LossView& v, const ProxyOptions& o, int64_t begin, int64_t end);
using LogitNllKernel = void(const LossView& v, const LogitNllArgs& a, int64_t begin, int64_t end);

extern Kernel<EnsembleKlKernel> ensemble_kl_kernel;
extern Kernel<DirichletNllKernel> dirichlet_nll_kernel;
extern Kernel<ProxyKlKernel> proxy_kl_kernel;
extern Kernel<LogitNllKernel> logit_nll_kernel;

// ---- ensemble statistics: float32 / float16 / bfloat16 logits, float32 outputs ----
struct EnsembleStatsView {
  const void* logits = nullptr;  // [N, M, V]
  c10::ScalarType dtype = c10::ScalarType::Float;
  float* mean_probs = nullptr;      // [N, V], or nullptr (measures only)
  float* mean_log_probs = nullptr;  // [N, V], or nullptr
  float* measures = nullptr;        // [N, 5]
  int64_t positions = 0, members = 0, vocab = 0;
  double inv_temperature = 1, inv_members = 1, log_members = 0;
  bool smooth = false;
  double log1m_eps = 0, log_eps_over_v = 0;
};

using EnsembleStatsKernel = void(const EnsembleStatsView& v, int64_t begin, int64_t end);
extern Kernel<EnsembleStatsKernel> ensemble_stats_kernel;

// ---- Dirichlet uncertainty of a student: float32 / float16 / bfloat16 logits, model_offset >=
// kMinSimdModelOffset ----
struct DirichletUncertaintyView {
  const void* logits = nullptr;  // [N, V]
  c10::ScalarType dtype = c10::ScalarType::Float;
  double* out = nullptr;  // [N, 7]
  int64_t positions = 0, vocab = 0;
  double offset = 1, log_offset = 0;
};

using DirichletUncertaintyKernel = void(const DirichletUncertaintyView& v, int64_t begin, int64_t end);
extern Kernel<DirichletUncertaintyKernel> dirichlet_uncertainty_kernel;

// ---- Monte-Carlo uncertainty of a logit distribution (edd_ext/cpu/logit_sampling.h): the table's kernels take
// float32 / float16 / bfloat16 loc and log_scale; the op file runs the float64 instance itself ----
struct LogitSamplingView {
  const void* loc = nullptr;        // [N, V]
  const void* log_scale = nullptr;  // [N, V]
  c10::ScalarType dtype = c10::ScalarType::Float;
  void* out = nullptr;  // [N, 5] in the compute type (float32, float64 for float64 inputs)
  int64_t positions = 0, vocab = 0, samples = 0;
  math::Family family = math::Family::kGaussian;
  uint64_t seed = 0;
  double inv_temperature = 1, min_scale = 0, inv_samples = 1, log_samples = 0;
};

using LogitSamplingKernel = void(const LogitSamplingView& v, int64_t begin, int64_t end);
extern Kernel<LogitSamplingKernel> logit_sampling_kernel;

// ---- the vector helpers themselves, for the tests (edd_ext_testing::special_function "simd_*") and the
// micro-benchmark of the floor (benchmarks/bench_floor.py) ----
enum class VectorFunction : int {
  kLgamma = 0,
  kDigamma,
  kTrigamma,
  kExp,             // exp_fast
  kLog,             // log_fast
  kExpNonpositive,  // exp_nonpositive (x <= 0)
  kLgammaDigamma,   // lnG and psi together (gamma_terms<true, true, false>), the EnD^2 pair; returns their sum
  kGammaFamily,     // lnG, psi and psi' together (gamma_family), the reverse KL's; returns their sum
  kCount
};

// out[i] = f(x[i]) for i < n.
using VectorFunctionKernel = void(VectorFunction f, const float* x, float* out, int64_t n);
// sum of f over x[0:n], `repeats` times (a cache-resident block: the cost of the arithmetic alone).
using VectorThroughputKernel = double(VectorFunction f, const float* x, int64_t n, int64_t repeats);
extern Kernel<VectorFunctionKernel> vector_function_kernel;
extern Kernel<VectorThroughputKernel> vector_throughput_kernel;

// ---- what the running kernels were compiled for (tests: the forced capability is the one that runs) ----
struct CompiledFor {
  Capability capability;  // the table slot the kernel was registered in
  int64_t lanes;          // floats per vector
  bool avx2, avx512;      // __AVX2__ / __AVX512F__ were defined when it was compiled
};

using CompiledForKernel = CompiledFor();
extern Kernel<CompiledForKernel> compiled_for_kernel;

// The reduced-precision floating types the SIMD kernels take: f(DtypeTag<T>{}) for T = float, c10::Half or
// c10::BFloat16 (float64 never reaches them).
template <typename T>
struct DtypeTag {
  using type = T;
};

template <typename F>
void dispatch_simd_dtype(c10::ScalarType t, F&& f) {
  switch (t) {
    case c10::ScalarType::Half:
      return f(DtypeTag<c10::Half>{});
    case c10::ScalarType::BFloat16:
      return f(DtypeTag<c10::BFloat16>{});
    default:
      return f(DtypeTag<float>{});
  }
}

// f(DtypeTag<student_t>{}, DtypeTag<teacher_t>{}) for a loss view's student and teacher dtypes.
template <typename F>
void dispatch_simd_pair(const LossView& v, F&& f) {
  dispatch_simd_dtype(v.teacher_type, [&](auto t) { dispatch_simd_dtype(v.student_type, [&](auto s) { f(s, t); }); });
}

}  // namespace cpu
}  // namespace edd_ext
