// CUDA kernel of the EnD baseline, KL from the ensemble mean to the student's categorical (SPEC section 2.4),
// forward and closed-form gradient in one launch. One block per position (blocks loop over positions): block
// log-sum-exps of the student and of each member (float64 running sums), then one streaming pass over the
// teacher per class (edd_ext/logit_math.h, ensemble_kl_class); gradients are written already multiplied by the
// reduction's factor. No host sync; the kernel runs on the current stream.
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

// L = sum_k pi^_k (ln pi^_k - log q_k), q = softmax(z), log q_k = (z_k - max z) - ln sum exp(z - max z).
// dL/dz_j = -pi^_j + (sum_k pi^_k) q_j = q_j - pi^_j. pi^_k = (1/M) sum_m exp(l_mk) from the members'
// log-probabilities l_mk, with 0 ln 0 = 0 where they underflow; from statistics pi^_k = mean_probs_k.
template <typename student_t, typename teacher_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    ensemble_kl_kernel(const student_t* __restrict__ student, const teacher_t* __restrict__ logits,
                       const teacher_t* __restrict__ rows, const bool* __restrict__ mask, int64_t positions,
                       int64_t members, int64_t vocab, cuda::GradScale grad_scale,
                       acc_t* __restrict__ member_workspace, int64_t member_row, acc_t* __restrict__ loss,
                       student_t* __restrict__ grad) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const acc_t log_m = acc_t(log(double(members > 0 ? members : 1)));
  const acc_t scale = acc_t(grad_scale.get());

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    student_t* g = grad != nullptr ? grad + n * vocab : nullptr;
    if (mask != nullptr && !mask[n]) {
      if (threadIdx.x == 0) loss[n] = acc_t(0);
      cuda::block_zero_row(g, vocab);
      continue;
    }
    const student_t* z = student + n * vocab;
    cuda::RowLogSumExp<acc_t> acc;
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) acc.push(acc_t(z[k]));
    const cuda::RowLogSumExp<acc_t> total = cuda::block_logsumexp(acc, scratch.lse);
    const acc_t z_max = total.max, z_log_sum = acc_t(::log(total.sum));
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    if (logits != nullptr) {
      cuda::block_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift, offset,
                                     scratch);
    }
    double sum[1] = {0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      acc_t mean_prob, log_mean_prob;
      if (logits != nullptr) {
        acc_t sum_p = 0;
        for (int64_t m = 0; m < members; ++m) sum_p += math::exp_((acc_t(row[m * vocab + k]) - shift[m]) - offset[m]);
        mean_prob = sum_p * inv_m;
        log_mean_prob = math::log_(sum_p) - log_m;
      } else {
        mean_prob = acc_t(row[k]);
        log_mean_prob = math::log_(mean_prob);
      }
      const math::KLClass<acc_t> t = math::ensemble_kl_class(acc_t(z[k]), z_max, z_log_sum, mean_prob, log_mean_prob);
      sum[0] += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * scale);
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t(sum[0]);
    __syncthreads();  // shift[] / offset[] are rewritten by the next position
  }
}

std::tuple<at::Tensor, at::Tensor> ensemble_kl_cuda(const at::Tensor& student_logits,
                                                    const c10::optional<at::Tensor>& teacher_logits,
                                                    const c10::optional<at::Tensor>& mean_probs,
                                                    const c10::optional<at::Tensor>& mask, int64_t reduction,
                                                    bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_probs, "mean_probs", c10::nullopt,
                                       nullptr, mask, reduction, compute_grad);
  if (p.positions == 0) return {reduced_loss(p), p.grad};
  const c10::cuda::CUDAGuard guard(p.student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scale_holder;
  const cuda::GradScale grad_scale = cuda::grad_scale_for(p, scale_holder);
  dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(t)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    const bool from_logits = p.teacher_logits.defined();
    const auto kernel = ensemble_kl_kernel<student_t, teacher_t, acc_t>;
    const cuda::LossLaunch<acc_t> l = cuda::loss_launch<acc_t>(kernel, p, from_logits ? p.members : 0);
    kernel<<<l.blocks, l.threads, l.members.shared_bytes, stream>>>(
        p.student.const_data_ptr<student_t>(), from_logits ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr,
        from_logits ? nullptr : p.teacher_rows.const_data_ptr<teacher_t>(), p.mask_data(), p.positions, p.members,
        p.vocab, grad_scale, l.member_workspace(), l.members.global_row, p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduced_loss(p), p.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("ensemble_kl", &ensemble_kl_cuda); }

}  // namespace edd_ext
