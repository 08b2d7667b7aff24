// CUDA kernels of the Dirichlet distillation losses (SPEC sections 2.1 and 2.2): EnD^2 and the
// proxy-Dirichlet KL, forward and closed-form gradient in one launch. One block per position (blocks loop over
// positions): block reductions give alpha_0 (float64) and the members' log-sum-exps, then one streaming pass
// over the teacher per class. The per-class math is edd_ext/dirichlet_math.h, shared with the CPU kernels.
// No host sync; the kernels run on the current stream.
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
__global__ void dirichlet_nll_kernel(const student_t* __restrict__ student, const teacher_t* __restrict__ logits,
                                     const teacher_t* __restrict__ rows, const bool* __restrict__ mask,
                                     int64_t positions, int64_t members, int64_t vocab, double model_offset,
                                     acc_t log_c, acc_t* __restrict__ loss, student_t* __restrict__ grad) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = reinterpret_cast<acc_t*>(shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(model_offset), c_minus_one = acc_t(model_offset - 1);
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));

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
      if (g != nullptr) g[k] = student_t(t.grad);
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t(sum[0] - math::lgamma(alpha0));
    __syncthreads();  // shift[] / offset[] are rewritten by the next position
  }
}

// Proxy-Dirichlet KL per position (formulas and gradient derivations: dirichlet_math.h, proxy_kl_class):
//   target beta_k = beta^_0 pi^_k + t, beta^_0 = (V - 1) / (2 RMI + eps) or (V - 1) / (EPKL + eps);
//   reverse: L = KL[Dir(alpha) || Dir(beta)] / beta_0,
//            dL/dz_k = e_k [psi'(alpha_k)(alpha_k - beta_k) - psi'(alpha_0)(alpha_0 - beta_0)] / beta_0;
//   forward: L = KL[Dir(beta) || Dir(alpha)] / beta_0,
//            dL/dz_k = e_k [psi(alpha_k) - psi(alpha_0) - psi(beta_k) + psi(beta_0)] / beta_0;
//   compat:  the released code's objective (see proxy_kl_class).
// From logits, pass 1 writes pi^ into this block's scratch row and block-reduces RMI / EPKL and sum pi^; each
// thread later reads back only the classes it wrote, so no barrier is needed between the passes.
template <typename student_t, typename teacher_t, typename acc_t>
__global__ void proxy_kl_kernel(const student_t* __restrict__ student, const teacher_t* __restrict__ logits,
                                const teacher_t* __restrict__ rows, const double* __restrict__ measures,
                                const bool* __restrict__ mask, int64_t positions, int64_t members, int64_t vocab,
                                ProxyOptions o, acc_t* __restrict__ mean_prob_scratch, acc_t* __restrict__ loss,
                                student_t* __restrict__ grad) {
  extern __shared__ unsigned char shared_raw[];
  acc_t* shift = reinterpret_cast<acc_t*>(shared_raw);
  acc_t* offset = shift + members;
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(o.model_offset), log_c = acc_t(o.log_model_offset), t_off = acc_t(o.target_offset);
  const acc_t inv_m = acc_t(1.0 / double(members > 0 ? members : 1));
  const acc_t log_m = acc_t(log(double(members > 0 ? members : 1)));
  const int measure_index = o.mkl ? 4 : 3;  // rmi, epkl in the ensemble measure order
  acc_t* pi_row = logits != nullptr ? mean_prob_scratch + int64_t(blockIdx.x) * vocab : nullptr;

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    student_t* g = grad != nullptr ? grad + n * vocab : nullptr;
    if (mask != nullptr && !mask[n]) {
      if (threadIdx.x == 0) loss[n] = acc_t(0);
      cuda::block_zero_row(g, vocab);
      continue;
    }
    const student_t* z = student + n * vocab;
    // sums: [0] the measure (from logits), [1] sum_k pi^_k
    double sums[2] = {0, 0};
    if (logits != nullptr) {
      const teacher_t* row = logits + n * members * vocab;
      cuda::block_target_normalizers(row, members, vocab, acc_t(1), math::TeacherNorm::kLogSoftmax, shift, offset,
                                     scratch);
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
        math::MemberMoments<acc_t> moments;
        for (int64_t m = 0; m < members; ++m) moments.push((acc_t(row[m * vocab + k]) - shift[m]) - offset[m]);
        const math::ClassTerms<acc_t> terms = moments.finish(inv_m, log_m);
        pi_row[k] = terms.mean_prob;
        sums[0] += double(terms.measure[measure_index]);
        sums[1] += double(terms.mean_prob);
      }
    } else {
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) sums[1] += double(acc_t(rows[n * vocab + k]));
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
      const acc_t pi = logits != nullptr ? pi_row[k] : acc_t(rows[n * vocab + k]);
      const math::ClassLossGrad<acc_t> t = math::proxy_kl_class(o.mode, acc_t(z[k]), c, log_c, pi, class_precision,
                                                                t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
      sum[0] += double(t.loss);
      if (g != nullptr) g[k] = student_t(t.grad);
    }
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) loss[n] = acc_t((sum[0] + s.loss_shift) * s.inv_beta0);
    __syncthreads();
  }
}

struct Launch {
  int64_t blocks;
  int threads;
  cudaStream_t stream;
};

Launch launch_for(const LossProblem& p) {
  return {cuda::loss_blocks(p.positions, p.student.get_device()), cuda::threads_for(p.vocab),
          c10::cuda::getCurrentCUDAStream()};
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
  const Launch l = launch_for(p);
  dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(t)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    const bool from_logits = p.teacher_logits.defined();
    const size_t shared = cuda::member_shared_bytes(p.members, sizeof(acc_t));
    dirichlet_nll_kernel<student_t, teacher_t, acc_t><<<l.blocks, l.threads, shared, l.stream>>>(
        p.student.const_data_ptr<student_t>(), from_logits ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr,
        from_logits ? nullptr : p.teacher_rows.const_data_ptr<teacher_t>(), p.mask_data(), p.positions, p.members,
        p.vocab, model_offset, acc_t(log_or_neg_inf(model_offset)), p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  scale_grad_on_device(p);
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
  const Launch l = launch_for(p);
  dispatch_student_teacher(p.student.scalar_type(), p.teacher_type(), [&](auto s, auto t) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(t)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    const bool from_logits = p.teacher_logits.defined();
    // one O(V) row of mean probabilities per block (from logits only)
    at::Tensor scratch = at::empty({from_logits ? l.blocks * p.vocab : 0},
                                   p.student.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    const size_t shared = cuda::member_shared_bytes(p.members, sizeof(acc_t));
    proxy_kl_kernel<student_t, teacher_t, acc_t><<<l.blocks, l.threads, shared, l.stream>>>(
        p.student.const_data_ptr<student_t>(), from_logits ? p.teacher_logits.const_data_ptr<teacher_t>() : nullptr,
        from_logits ? nullptr : p.teacher_rows.const_data_ptr<teacher_t>(),
        from_logits ? nullptr : p.teacher_measure.const_data_ptr<double>(), p.mask_data(), p.positions, p.members,
        p.vocab, o, from_logits ? scratch.mutable_data_ptr<acc_t>() : nullptr, p.loss.mutable_data_ptr<acc_t>(),
        p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  scale_grad_on_device(p);
  return {reduced_loss(p), p.grad};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) {
  m.impl("dirichlet_nll", &dirichlet_nll_cuda);
  m.impl("proxy_dirichlet_kl", &proxy_dirichlet_kl_cuda);
}

}  // namespace edd_ext
