// CUDA kernel of the logit-space distillation losses (SPEC section 2.3): Gaussian and Laplace NLL of the
// members' normalised teacher logits, forward and closed-form gradients in one launch. One block per position
// (blocks loop over positions): block reductions for the members' normalisers, then one streaming pass over
// the teacher per class (edd_ext/logit_math.h, shared with the CPU kernel). Gaussian deviations in centred
// form around a pivot member; gradients written already multiplied by the reduction's factor. No host sync;
// the kernel runs on the current stream.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cuda/loss_rows.cuh"
#include "edd_ext/logit_math.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {
namespace {

// Gaussian: L_k = ln s + ln(2 pi)/2 + v / (2 s^2), v = spread/M + (x- - mu)^2, s = exp(rho) + s_min:
//   dL/dmu = (mu - x-)/s^2;  dL/drho = (1 - v/s^2) (s - s_min)/s   (d ln s / drho = (s - s_min)/s).
// Laplace:  L_k = ln s + ln 2 + a/s, a = (1/M) sum_m |x_m - mu|:
//   dL/dmu = -(1/(M s)) sum_m sign(x_m - mu);  dL/drho = (1 - a/s) (s - s_min)/s.
template <typename student_t, typename teacher_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    logit_nll_kernel(const student_t* __restrict__ locs, const student_t* __restrict__ log_scales,
                     const teacher_t* __restrict__ logits, const bool* __restrict__ mask, int64_t positions,
                     int64_t members, int64_t vocab, bool laplace, math::TeacherNorm norm, acc_t inv_t,
                     acc_t log_min_scale, cuda::GradScale grad_scale, acc_t* __restrict__ member_workspace,
                     int64_t member_row, acc_t* __restrict__ loss, student_t* __restrict__ grad_loc,
                     student_t* __restrict__ grad_log_scale) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t inv_m = acc_t(1.0 / double(members));
  const acc_t scale = acc_t(grad_scale.get());

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    student_t* g_loc = grad_loc != nullptr ? grad_loc + n * vocab : nullptr;
    student_t* g_rho = grad_log_scale != nullptr ? grad_log_scale + n * vocab : nullptr;
    if (mask != nullptr && !mask[n]) {
      if (threadIdx.x == 0) loss[n] = acc_t(0);
      cuda::block_zero_row(g_loc, vocab);
      cuda::block_zero_row(g_rho, vocab);
      continue;
    }
    const teacher_t* row = logits + n * members * vocab;
    cuda::block_target_normalizers(row, members, vocab, inv_t, norm, shift, offset, scratch);
    auto target = [&](int64_t m, int64_t k) { return (acc_t(row[m * vocab + k]) * inv_t - shift[m]) - offset[m]; };
    double sum[1] = {0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      const acc_t mu = acc_t(locs[n * vocab + k]), rho = acc_t(log_scales[n * vocab + k]);
      math::LocScaleLossGrad<acc_t> t;
      if (laplace) {
        acc_t abs_sum = 0, sign_sum = 0;
        for (int64_t m = 0; m < members; ++m) {
          const acc_t d = target(m, k) - mu;
          abs_sum += math::abs_(d);
          sign_sum += math::sign_of(d);
        }
        t = math::laplace_class(rho, log_min_scale, abs_sum, sign_sum, inv_m);
      } else {
        math::CentredMoments<acc_t> c;
        c.first(target(0, k));
        for (int64_t m = 1; m < members; ++m) c.add(target(m, k));
        c.finish_mean(inv_m);
        for (int64_t m = 0; m < members; ++m) c.add_spread(target(m, k));
        t = math::gaussian_of(c, rho, log_min_scale, mu, inv_m);
      }
      sum[0] += double(t.loss);
      if (g_loc != nullptr) {
        g_loc[k] = student_t(t.grad_loc * scale);
        g_rho[k] = student_t(t.grad_log_scale * scale);
      }
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t(sum[0]);
    __syncthreads();  // shift[] / offset[] are rewritten by the next position
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> logit_nll_cuda(const at::Tensor& loc, const at::Tensor& log_scale,
                                                              const at::Tensor& teacher_logits,
                                                              const c10::optional<at::Tensor>& mask,
                                                              c10::string_view family, c10::string_view teacher_norm,
                                                              double temperature, double min_scale, int64_t reduction,
                                                              bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const bool laplace = parse_logit_family(family);
  const math::TeacherNorm norm = parse_teacher_norm(teacher_norm);
  check_positive_option(temperature, "temperature");
  check_nonnegative_option(min_scale, "min_scale");
  LossProblem p = make_logit_problem(loc, log_scale, teacher_logits, mask, reduction, compute_grad);
  if (p.positions == 0) return {reduced_loss(p), p.grad, p.grad_log_scale};
  const c10::cuda::CUDAGuard guard(p.student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scale_holder;
  const cuda::GradScale grad_scale = cuda::grad_scale_for(p, scale_holder);
  dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(t)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    const auto kernel = logit_nll_kernel<student_t, teacher_t, acc_t>;
    const cuda::LossLaunch<acc_t> l = cuda::loss_launch<acc_t>(kernel, p, p.members);
    kernel<<<l.blocks, l.threads, l.members.shared_bytes, stream>>>(
        p.student.const_data_ptr<student_t>(), p.log_scale.const_data_ptr<student_t>(),
        p.teacher_logits.const_data_ptr<teacher_t>(), p.mask_data(), p.positions, p.members, p.vocab, laplace, norm,
        acc_t(1.0 / temperature), acc_t(log_or_neg_inf(min_scale)), grad_scale, l.member_workspace(),
        l.members.global_row, p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr,
        p.compute_grad ? p.grad_log_scale.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduced_loss(p), p.grad, p.grad_log_scale};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("logit_nll", &logit_nll_cuda); }

}  // namespace edd_ext
