// scale_grad_ on CUDA (edd_ext/grad_scale.h): blocks loop over rows; each reads its factor on the device, so
// that an incoming gradient of exactly 1 (the usual `loss.backward()`) ends the kernel before any gradient
// element is read, without a host synchronisation. Runs on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/cuda/launch.cuh"
#include "edd_ext/grad_scale.h"

namespace edd_ext {
namespace {

template <typename grad_t, typename factor_t>
EDD_EXT_BLOCK_KERNEL(at::opmath_type<grad_t>)
    scale_rows_kernel(grad_t* __restrict__ grad, const factor_t* __restrict__ factor, int64_t factor_stride,
                      const bool* __restrict__ keep, int64_t rows, int64_t vocab) {
  using acc_t = at::opmath_type<grad_t>;
  if (factor_stride == 0 && factor[0] == factor_t(1)) return;
  for (int64_t n = blockIdx.x; n < rows; n += gridDim.x) {
    const factor_t f = factor[n * factor_stride];
    if ((keep != nullptr && !keep[n]) || f == factor_t(1)) continue;
    const acc_t s = acc_t(f);
    grad_t* g = grad + n * vocab;
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) g[k] = grad_t(acc_t(g[k]) * s);
  }
}

template <typename grad_t, typename factor_t>
void launch(const GradScaleProblem& p, at::Tensor& grad, cudaStream_t stream) {
  const auto kernel = scale_rows_kernel<grad_t, factor_t>;
  const int threads = cuda::threads_for(p.vocab);
  const int64_t blocks = cuda::resident_grid(kernel, threads, 0, p.rows);
  kernel<<<blocks, threads, 0, stream>>>(grad.mutable_data_ptr<grad_t>(), p.factor.const_data_ptr<factor_t>(),
                                         p.factor_stride, p.mask_data(), p.rows, p.vocab);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void scale_grad_cuda(at::Tensor& grad, const at::Tensor& factor, const c10::optional<at::Tensor>& mask) {
  const GradScaleProblem p = make_grad_scale_problem(grad, factor, mask);
  if (p.rows == 0) return;
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "edd_ext::scale_grad_cuda", [&] {
    if (p.factor.scalar_type() == at::kDouble) {
      launch<scalar_t, double>(p, grad, stream);
    } else {
      launch<scalar_t, float>(p, grad, stream);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("scale_grad_", &scale_grad_cuda); }

}  // namespace edd_ext
