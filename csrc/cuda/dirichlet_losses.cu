// CUDA kernels of the Dirichlet distillation losses (SPEC sections 2.1 and 2.2): EnD^2 and the
// proxy-Dirichlet KL, forward and closed-form gradient in one launch. One block per position (blocks loop over
// positions, as many blocks as are resident at once): block reductions give alpha_0 (float64) and the members'
// log-sum-exps, then one streaming pass over the teacher per class. The per-class math is
// edd_ext/dirichlet_math.h, shared with the CPU kernels. Gradients are written already multiplied by the
// reduction's factor (one rounding, as on the CPU). No host sync; the kernels run on the current stream.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cuda/loss_rows.cuh"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/ensemble_math.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/loss_reduction.h"

namespace edd_ext {
namespace {

// EnD^2 per position: L = sum_k [lnG(alpha_k) - (alpha_k - 1) l_k] - lnG(alpha_0), l_k = (1/M) sum_m ln pi^(m)_k.
// dL/dalpha_k = psi(alpha_k) - psi(alpha_0) - l_k; with d alpha_k / dz_k = exp(z_k):
//   dL/dz_k = exp(z_k) (psi(alpha_k) - psi(alpha_0) - l_k).
// Block reductions: alpha_0 (float64), the M log-sum-exps (teacher logits only), the loss (float64).
template <typename student_t, typename teacher_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    dirichlet_nll_kernel(const student_t* __restrict__ student, const teacher_t* __restrict__ logits,
                         const teacher_t* __restrict__ rows, const bool* __restrict__ mask, int64_t positions,
                         int64_t members, int64_t vocab, double model_offset, acc_t log_c,
                         cuda::GradScale grad_scale, acc_t* __restrict__ member_workspace,
                         int64_t member_row, acc_t* __restrict__ loss, student_t* __restrict__ grad) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(model_offset), c_minus_one = acc_t(model_offset - 1);
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const acc_t scale = acc_t(grad_scale.get());

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    student_t* g = grad != nullptr ? grad + n * vocab : nullptr;
    if (mask != nullptr && !mask[n]) {
      if (threadIdx.x == 0) loss[n] = acc_t(0);
      cuda::block_zero_row(g, vocab);
      continue;
    }
    const student_t* z = student + n * vocab;
    const double alpha0 = cuda::block_student_precision<student_t, acc_t>(z, vocab, model_offset, scratch);
    const acc_t digamma_alpha0 = acc_t(math::digamma(alpha0));
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    if (logits != nullptr) {
      cuda::block_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift, offset,
                                     scratch);
    }
    double sum[1] = {0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      acc_t l;
      if (logits != nullptr) {
        l = 0;
        for (int64_t m = 0; m < members; ++m) l += (acc_t(row[m * vocab + k]) - shift[m]) - offset[m];
        l *= inv_m;
      } else {
        l = acc_t(row[k]);
      }
      const math::ClassLossGrad<acc_t> t = math::dirichlet_nll_class(acc_t(z[k]), c, log_c, c_minus_one, l, digamma_alpha0);
      sum[0] += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * scale);
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t(sum[0] - math::lgamma(alpha0));
    __syncthreads();  // shift[] / offset[] are rewritten by the next position
  }
}

// pi^_k and its share of the precision's measure (RMI for mkl, EPKL for epkl) from the members'
// log-probabilities l_mk = (u_mk - shift_m) - offset_m (ensemble_math.h, MemberMoments). Both passes of
// proxy_kl_kernel call it, so that the class pass recomputes exactly the pi^_k that the measure pass summed.
template <typename teacher_t, typename acc_t>
__device__ __forceinline__ void proxy_mean_prob_and_measure(const teacher_t* __restrict__ row, int64_t k,
                                                            int64_t members, int64_t vocab, const acc_t* shift,
                                                            const acc_t* offset, acc_t inv_m, acc_t log_m, bool mkl,
                                                            acc_t& mean_prob, acc_t& measure) {
  math::MemberMoments<acc_t> moments;
  for (int64_t m = 0; m < members; ++m) moments.push((acc_t(row[m * vocab + k]) - shift[m]) - offset[m]);
  const math::ClassTerms<acc_t> terms = moments.finish(inv_m, log_m);
  mean_prob = terms.mean_prob;
  measure = mkl ? terms.measure[4] : terms.measure[3];  // rmi, epkl (constant indices: no local memory)
}

// Proxy-Dirichlet KL per position (formulas and gradient derivations: dirichlet_math.h, proxy_kl_class):
//   target beta_k = beta^_0 pi^_k + t, beta^_0 = (V - 1) / (2 RMI + eps) or (V - 1) / (EPKL + eps);
//   reverse: L = KL[Dir(alpha) || Dir(beta)] / beta_0,
//            dL/dz_k = e_k [psi'(alpha_k)(alpha_k - beta_k) - psi'(alpha_0)(alpha_0 - beta_0)] / beta_0;
//   forward: L = KL[Dir(beta) || Dir(alpha)] / beta_0,
//            dL/dz_k = e_k [psi(alpha_k) - psi(alpha_0) - psi(beta_k) + psi(beta_0)] / beta_0;
//   compat:  the released code's objective (see proxy_kl_class).
// From logits, pass 1 block-reduces RMI / EPKL and sum pi^ over the classes; the class pass forms pi^_k again
// from the members (M more reads of the teacher row, often from L2) instead of keeping a [V] row per block:
// the kernel needs no workspace of the size of the vocabulary.
template <typename student_t, typename teacher_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    proxy_kl_kernel(const student_t* __restrict__ student, const teacher_t* __restrict__ logits,
                    const teacher_t* __restrict__ rows, const double* __restrict__ measures,
                    const bool* __restrict__ mask, int64_t positions, int64_t members, int64_t vocab, ProxyOptions o,
                    cuda::GradScale grad_scale, acc_t* __restrict__ member_workspace, int64_t member_row,
                    acc_t* __restrict__ loss, student_t* __restrict__ grad) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(o.model_offset), log_c = acc_t(o.log_model_offset), t_off = acc_t(o.target_offset);
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
    const teacher_t* row = logits != nullptr ? logits + n * members * vocab : rows + n * vocab;
    // sums: [0] the measure (from logits), [1] sum_k pi^_k
    double sums[2] = {0, 0};
    if (logits != nullptr) {
      cuda::block_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift, offset,
                                     scratch);
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
        acc_t mean_prob, measure;
        proxy_mean_prob_and_measure(row, k, members, vocab, shift, offset, inv_m, log_m, o.mkl, mean_prob, measure);
        sums[0] += double(measure);
        sums[1] += double(mean_prob);
      }
    } else {
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) sums[1] += double(acc_t(row[k]));
    }
    cuda::block_sum(sums, scratch.sums);
    const double measure = logits != nullptr ? sums[0] : measures[n];
    const double alpha0 = cuda::block_student_precision<student_t, acc_t>(z, vocab, o.model_offset, scratch);
    const double target_precision = math::proxy_target_precision(measure, o.mkl, double(vocab), o.eps, o.max_precision);
    const math::ProxyScalars s = math::proxy_scalars(o.mode, alpha0, target_precision, o.target_offset, double(vocab), sums[1]);
    const acc_t class_precision = acc_t(o.mode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const acc_t dig_a0 = acc_t(s.digamma_alpha0), dig_b0 = acc_t(s.digamma_beta0);
    const acc_t grad_shift = acc_t(s.grad_shift), inv_beta0 = acc_t(s.inv_beta0);
    double sum[1] = {0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      acc_t pi, unused;
      if (logits != nullptr) {
        proxy_mean_prob_and_measure(row, k, members, vocab, shift, offset, inv_m, log_m, o.mkl, pi, unused);
      } else {
        pi = acc_t(row[k]);
      }
      const math::ClassLossGrad<acc_t> t = math::proxy_kl_class(o.mode, acc_t(z[k]), c, log_c, pi, class_precision,
                                                                t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
      sum[0] += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad * scale);
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t((sum[0] + s.loss_shift) * s.inv_beta0);
    __syncthreads();
  }
}

std::tuple<at::Tensor, at::Tensor> dirichlet_nll_cuda(const at::Tensor& student_logits,
                                                      const c10::optional<at::Tensor>& teacher_logits,
                                                      const c10::optional<at::Tensor>& mean_log_probs,
                                                      const c10::optional<at::Tensor>& mask, double model_offset,
                                                      int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  check_nonnegative_option(model_offset, "model_offset");
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_log_probs, "mean_log_probs",
                                       c10::nullopt, nullptr, mask, reduction, compute_grad);
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
    const auto kernel = dirichlet_nll_kernel<student_t, teacher_t, acc_t>;
    const cuda::LossLaunch<acc_t> l = cuda::loss_launch<acc_t>(kernel, p, from_logits ? p.members : 0);
    kernel<<<l.blocks, l.threads, l.members.shared_bytes, stream>>>(
        p.student.const_data_ptr<student_t>(), from_logits ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr,
        from_logits ? nullptr : p.teacher_rows.const_data_ptr<teacher_t>(), p.mask_data(), p.positions, p.members,
        p.vocab, model_offset, acc_t(log_or_neg_inf(model_offset)), grad_scale, l.member_workspace(),
        l.members.global_row, p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduced_loss(p), p.grad};
}

std::tuple<at::Tensor, at::Tensor> proxy_dirichlet_kl_cuda(
    const at::Tensor& student_logits, const c10::optional<at::Tensor>& teacher_logits,
    const c10::optional<at::Tensor>& mean_probs, const c10::optional<at::Tensor>& teacher_measure,
    const c10::optional<at::Tensor>& mask, c10::string_view direction, c10::string_view precision,
    double model_offset, double target_offset, double eps, c10::optional<double> max_precision,
    bool reference_code_compat, int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const ProxyOptions o = parse_proxy_options(direction, precision, model_offset, target_offset, eps, max_precision,
                                             reference_code_compat);
  LossProblem p = make_distill_problem(student_logits, teacher_logits, mean_probs, "mean_probs", teacher_measure,
                                       "teacher_measure", mask, reduction, compute_grad);
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
    const auto kernel = proxy_kl_kernel<student_t, teacher_t, acc_t>;
    const cuda::LossLaunch<acc_t> l = cuda::loss_launch<acc_t>(kernel, p, from_logits ? p.members : 0);
    kernel<<<l.blocks, l.threads, l.members.shared_bytes, stream>>>(
        p.student.const_data_ptr<student_t>(), from_logits ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr,
        from_logits ? nullptr : p.teacher_rows.const_data_ptr<teacher_t>(),
        from_logits ? nullptr : p.teacher_measure.const_data_ptr<double>(), p.mask_data(), p.positions, p.members,
        p.vocab, o, grad_scale, l.member_workspace(), l.members.global_row, p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduced_loss(p), p.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) {
  m.impl("dirichlet_nll", &dirichlet_nll_cuda);
  m.impl("proxy_dirichlet_kl", &proxy_dirichlet_kl_cuda);
}

}  // namespace edd_ext
