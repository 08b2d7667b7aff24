// The Monte-Carlo kernel of the logit-distribution uncertainty for float32 / float16 / bfloat16 inputs
// (edd_ext/cpu/logit_sampling.h; the op is csrc/cpu/student_uncertainty.cpp), compiled once per CPU capability:
// its row loops are plain code that the compiler vectorises for the capability.
#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/logit_sampling.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

void logit_sampling(const LogitSamplingView& p, int64_t begin, int64_t end) {
  dispatch_simd_dtype(p.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::type;
    if (p.family == Family::kGaussian) {
      logit_positions<Family::kGaussian, scalar_t, float>(p, begin, end);
    } else {
      logit_positions<Family::kLaplace, scalar_t, float>(p, begin, end);
    }
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(logit_sampling_kernel, logit_sampling);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
