// Elementwise lgamma / digamma / trigamma on CUDA through the shared header (tests compare against the CPU
// path and scipy.special when a GPU is present).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "edd_ext/checks.h"
#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/special_functions.h"

namespace edd_ext {
namespace {

template <typename T>
__global__ void __launch_bounds__(cuda::kElementwiseThreads) special_function_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, int which) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T v = x[i];
    y[i] = which == 0 ? math::lgamma(v) : (which == 1 ? math::digamma(v) : math::trigamma(v));
  }
}

at::Tensor special_function_cuda(const at::Tensor& x, c10::string_view name) {
  int which = 2;
  if (name == "lgamma") which = 0;
  else if (name == "digamma") which = 1;
  else TORCH_CHECK_VALUE(name == "trigamma", "name: expected one of 'lgamma', 'digamma', 'trigamma', got '", name, "'");
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                    "x: expected float32 or float64, got ", x.scalar_type());
  const at::Tensor in = x.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t n = in.numel();
  if (n == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  const int threads = cuda::kElementwiseThreads;
  const int64_t blocks = std::min<int64_t>((n + threads - 1) / threads, 65535);
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), "edd_ext::special_function_cuda", [&] {
    special_function_kernel<scalar_t><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, which);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext_testing, CUDA, m) { m.impl("special_function", &special_function_cuda); }

}  // namespace edd_ext
