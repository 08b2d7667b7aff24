// Kernels that evaluate the Monte-Carlo noise path of csrc/include/edd_ext/student_math.h on the device, compiled
// to PTX by tests/test_noise_ptx.py to check that nvcc fused none of its products and sums into FMAs (the CPU
// build does not contract, so a contraction would change the bits of the noise on the GPU).
#include "edd_ext/philox.h"
#include "edd_ext/student_math.h"

using edd_ext::math::Family;

template <Family kFamily>
__global__ void noise_probe(const uint32_t* w, float* out) {
  const int i = threadIdx.x;
  const edd_ext::math::Noise4 e = edd_ext::math::noise4<kFamily>(edd_ext::philox::Stream(w[0], w[1]).bits(i, w[2]));
  out[4 * i] = e.e0;
  out[4 * i + 1] = e.e1;
  out[4 * i + 2] = e.e2;
  out[4 * i + 3] = e.e3;
}
template __global__ void noise_probe<Family::kGaussian>(const uint32_t*, float*);
template __global__ void noise_probe<Family::kLaplace>(const uint32_t*, float*);

// One sample of a logit over the temperature, a + b eps, as the logit-distribution kernel forms it (float and
// double), and the float exponential of its softmax (in double the device's exp is its own implementation).
template <typename T>
__global__ void sample_probe(const T* mu, const T* rho, const float* eps, T* out, T inv_t, T min_scale) {
  const int i = threadIdx.x;
  const T a = edd_ext::math::sample_location(mu[i], inv_t);
  const T b = edd_ext::math::sample_scale(rho[i], min_scale, inv_t);
  out[i] = edd_ext::math::sample_rn(a, b, eps[i]);
}
template __global__ void sample_probe<float>(const float*, const float*, const float*, float*, float, float);

__global__ void sample_double_probe(const double* a, const double* b, const float* eps, double* out) {
  const int i = threadIdx.x;
  out[i] = edd_ext::math::sample_rn(a[i], b[i], eps[i]);
}

__global__ void exp_flush_probe(const float* x, float* out) {
  const int i = threadIdx.x;
  out[i] = edd_ext::math::exp_flush(x[i]);
}

// The control: plain a * b + c, which nvcc does contract (so that the test can tell a contraction when it sees one).
__global__ void contraction_control(const float* a, const float* b, const float* c, float* out) {
  const int i = threadIdx.x;
  out[i] = a[i] * b[i] + c[i];
}
