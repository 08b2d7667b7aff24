// Limits of the vectorised CPU kernels, shared by the per-capability builds (csrc/cpu/simd/) and the code compiled
// once that routes positions to them (csrc/cpu/). Light header: no torch includes.
#pragma once

namespace edd_ext {
namespace cpu {

// The smallest model_offset c the SIMD Dirichlet kernels take: below it, alpha = exp(z) + c can underflow
// and the scalar per-class functions switch to their small-argument forms (tiny_concentration), so those
// positions route to the scalar kernels.
constexpr double kMinSimdModelOffset = 1e-6;

}  // namespace cpu
}  // namespace edd_ext
