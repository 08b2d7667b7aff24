// CUDA kernels of the losses against a top-k target (SPEC section 1.1 with 2.1 EnD^2, 2.2 the proxy-Dirichlet KL
// and 2.4 the ensemble KL), forward and closed-form gradient in one launch, reading the sparse target — k listed
// classes with their values, and the tail's one value — directly: no [V] target row is built.
//
// One block per position (blocks loop over positions). The block marks the listed classes in a bitmap of V bits
// (this block's global scratch, ceil(V / 32) words, L1/L2-resident; a class outside [0, V) or listed twice trips
// a device assertion and is skipped), then runs the loss's per-position reductions (alpha_0, the log-sum-exp) and
// one pass over the V classes in which every unmarked class takes the tail's target, followed by one pass over
// the k listed classes with their own values. Each class is computed once, by the per-class functions of the
// dense kernels (edd_ext/dirichlet_math.h, logit_math.h), and nothing is subtracted. Row sums in float64. No
// host sync; the kernels run on the current stream.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cuda/loss_rows.cuh"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/topk_host.h"
#include "edd_ext/topk_math.h"

namespace edd_ext {
namespace {

__host__ __device__ inline int64_t bitmap_words(int64_t vocab) { return (vocab + 31) / 32; }

__device__ __forceinline__ bool valid_class(int64_t c, int64_t vocab) { return c >= 0 && c < vocab; }

// Clears this block's bitmap and sets the bits of the k listed classes. Every thread must call it.
__device__ void block_mark_listed(const int64_t* __restrict__ listed, int k, int64_t vocab, uint32_t* bitmap) {
  for (int64_t w = threadIdx.x; w < bitmap_words(vocab); w += blockDim.x) bitmap[w] = 0u;
  __syncthreads();
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t c = listed[i];
    CUDA_KERNEL_ASSERT(valid_class(c, vocab) && "indices: expected classes in [0, V)");
    if (!valid_class(c, vocab)) continue;
    const uint32_t bit = 1u << (c & 31);
    const uint32_t before = atomicOr(&bitmap[c >> 5], bit);
    CUDA_KERNEL_ASSERT(!(before & bit) && "indices: expected k distinct classes per position");
  }
  __syncthreads();
}

// This thread's share of one position's loss sum, writing the gradient entries it owns (g may be nullptr):
// every unmarked class j gets class_fn(j, tail_value), every listed class c = listed[i] class_fn(c, values[i]);
// class_fn returns the class's {loss, grad}.
template <typename student_t, typename teacher_t, typename acc_t, typename ClassFn>
__device__ double class_pass(const int64_t* __restrict__ listed, const teacher_t* __restrict__ values, int k,
                             int64_t vocab, const uint32_t* __restrict__ bitmap, acc_t tail_value, student_t* g,
                             ClassFn&& class_fn) {
  double sum = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    if ((bitmap[j >> 5] >> (j & 31)) & 1u) continue;
    const auto t = class_fn(j, tail_value);
    sum += double(t.loss);
    if (g != nullptr) g[j] = student_t(t.grad);
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t c = listed[i];
    if (!valid_class(c, vocab)) continue;
    const auto t = class_fn(c, acc_t(values[i]));
    sum += double(t.loss);
    if (g != nullptr) g[c] = student_t(t.grad);
  }
  return sum;
}

// The pointers every kernel gets; the per-position pointers are offset by the position.
template <typename student_t, typename teacher_t, typename acc_t>
struct Args {
  const student_t* student;
  const int64_t* indices;
  const teacher_t* values;
  const double* tail;
  const double* measure;  // proxy only
  const bool* mask;
  int64_t positions, vocab;
  int k;
  uint32_t* bitmaps;  // [blocks, bitmap_words(vocab)]
  acc_t* loss;
  student_t* grad;
};

// A masked position: loss 0 and a zero gradient row. Every thread must call it.
template <typename student_t, typename teacher_t, typename acc_t>
__device__ bool skip_masked(const Args<student_t, teacher_t, acc_t>& a, int64_t n, student_t* g) {
  if (a.mask == nullptr || a.mask[n]) return false;
  if (threadIdx.x == 0) a.loss[n] = acc_t(0);
  cuda::block_zero_row(g, a.vocab);
  return true;
}

template <typename student_t, typename teacher_t, typename acc_t>
__global__ void topk_dirichlet_nll_kernel(Args<student_t, teacher_t, acc_t> a, double model_offset, acc_t log_c) {
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(model_offset), c_minus_one = acc_t(model_offset - 1);
  uint32_t* bitmap = a.bitmaps + int64_t(blockIdx.x) * bitmap_words(a.vocab);
  for (int64_t n = blockIdx.x; n < a.positions; n += gridDim.x) {
    student_t* g = a.grad != nullptr ? a.grad + n * a.vocab : nullptr;
    if (skip_masked(a, n, g)) continue;
    const student_t* z = a.student + n * a.vocab;
    block_mark_listed(a.indices + n * a.k, a.k, a.vocab, bitmap);
    const double alpha0 = cuda::block_student_precision<student_t, acc_t>(z, a.vocab, model_offset, scratch);
    const acc_t digamma_alpha0 = acc_t(math::digamma(alpha0));
    double sum[1] = {class_pass(a.indices + n * a.k, a.values + n * a.k, a.k, a.vocab, bitmap, acc_t(a.tail[n]), g,
                                [&](int64_t j, acc_t mean_log_prob) {
                                  return math::dirichlet_nll_class(acc_t(z[j]), c, log_c, c_minus_one, mean_log_prob,
                                                                   digamma_alpha0);
                                })};
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) a.loss[n] = acc_t(sum[0] - math::lgamma(alpha0));
    __syncthreads();  // the bitmap is rewritten by the next position
  }
}

template <typename student_t, typename teacher_t, typename acc_t>
__global__ void topk_proxy_kl_kernel(Args<student_t, teacher_t, acc_t> a, ProxyOptions o) {
  __shared__ cuda::LossScratch<acc_t> scratch;
  const acc_t c = acc_t(o.model_offset), log_c = acc_t(o.log_model_offset), t_off = acc_t(o.target_offset);
  uint32_t* bitmap = a.bitmaps + int64_t(blockIdx.x) * bitmap_words(a.vocab);
  for (int64_t n = blockIdx.x; n < a.positions; n += gridDim.x) {
    student_t* g = a.grad != nullptr ? a.grad + n * a.vocab : nullptr;
    if (skip_masked(a, n, g)) continue;
    const student_t* z = a.student + n * a.vocab;
    const teacher_t* values = a.values + n * a.k;
    block_mark_listed(a.indices + n * a.k, a.k, a.vocab, bitmap);
    const double tail_prob = math::tail_class_mean_prob(a.tail[n], a.vocab, a.k);
    double mass[1] = {0};
    for (int i = threadIdx.x; i < a.k; i += blockDim.x) mass[0] += double(acc_t(values[i]));
    cuda::block_sum(mass, scratch.sums);
    const double alpha0 = cuda::block_student_precision<student_t, acc_t>(z, a.vocab, o.model_offset, scratch);
    const double target_precision =
        math::proxy_target_precision(a.measure[n], o.mkl, double(a.vocab), o.eps, o.max_precision);
    const math::ProxyScalars s = math::proxy_scalars(o.mode, alpha0, target_precision, o.target_offset,
                                                     double(a.vocab), mass[0] + tail_prob * double(a.vocab - a.k));
    const acc_t class_precision = acc_t(o.mode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const acc_t dig_a0 = acc_t(s.digamma_alpha0), dig_b0 = acc_t(s.digamma_beta0);
    const acc_t grad_shift = acc_t(s.grad_shift), inv_beta0 = acc_t(s.inv_beta0);
    double sum[1] = {class_pass(a.indices + n * a.k, values, a.k, a.vocab, bitmap, acc_t(tail_prob), g,
                                [&](int64_t j, acc_t mean_prob) {
                                  return math::proxy_kl_class(o.mode, acc_t(z[j]), c, log_c, mean_prob,
                                                              class_precision, t_off, dig_a0, dig_b0, grad_shift,
                                                              inv_beta0);
                                })};
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) a.loss[n] = acc_t((sum[0] + s.loss_shift) * s.inv_beta0);
    __syncthreads();
  }
}

template <typename student_t, typename teacher_t, typename acc_t>
__global__ void topk_ensemble_kl_kernel(Args<student_t, teacher_t, acc_t> a) {
  __shared__ cuda::LossScratch<acc_t> scratch;
  uint32_t* bitmap = a.bitmaps + int64_t(blockIdx.x) * bitmap_words(a.vocab);
  for (int64_t n = blockIdx.x; n < a.positions; n += gridDim.x) {
    student_t* g = a.grad != nullptr ? a.grad + n * a.vocab : nullptr;
    if (skip_masked(a, n, g)) continue;
    const student_t* z = a.student + n * a.vocab;
    block_mark_listed(a.indices + n * a.k, a.k, a.vocab, bitmap);
    math::OnlineLogSumExp<acc_t> acc;
    for (int64_t j = threadIdx.x; j < a.vocab; j += blockDim.x) acc.push(acc_t(z[j]));
    const math::OnlineLogSumExp<acc_t> lse = cuda::block_logsumexp(acc, scratch.lse);
    const acc_t z_max = lse.max, z_log_sum = math::log_(lse.sum);
    const acc_t tail_prob = acc_t(math::tail_class_mean_prob(a.tail[n], a.vocab, a.k));
    double sum[1] = {class_pass(a.indices + n * a.k, a.values + n * a.k, a.k, a.vocab, bitmap, tail_prob, g,
                                [&](int64_t j, acc_t mean_prob) {
                                  return math::ensemble_kl_class(acc_t(z[j]), z_max, z_log_sum, mean_prob,
                                                                 math::log_(mean_prob));
                                })};
    cuda::block_sum(sum, scratch.sums);
    if (threadIdx.x == 0) a.loss[n] = acc_t(sum[0]);
    __syncthreads();
  }
}

// Launches kernel(args, extra...) over the problem's dtypes with one bitmap per block, then scales the gradient.
template <template <typename, typename, typename> class Launcher, typename... Extra>
std::tuple<at::Tensor, at::Tensor> run(LossProblem& p, const TopKTarget& t, Extra... extra) {
  if (p.positions == 0) return {reduced_loss(p), p.grad};
  const c10::cuda::CUDAGuard guard(p.student.device());
  const int64_t blocks = cuda::loss_blocks(p.positions, p.student.get_device());
  const int threads = cuda::threads_for(p.vocab);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor bitmaps = at::empty({blocks * bitmap_words(p.vocab)}, p.student.options().dtype(at::kInt));
  dispatch_student_teacher(p.student.scalar_type(), t.values.scalar_type(), [&](auto s, auto tt) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(tt)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    const Args<student_t, teacher_t, acc_t> a{
        p.student.const_data_ptr<student_t>(), t.indices.const_data_ptr<int64_t>(),
        t.values.const_data_ptr<teacher_t>(), t.tail.const_data_ptr<double>(),
        p.teacher_measure.defined() ? p.teacher_measure.const_data_ptr<double>() : nullptr, p.mask_data(),
        p.positions, p.vocab, int(t.k), reinterpret_cast<uint32_t*>(bitmaps.mutable_data_ptr<int32_t>()),
        p.loss.mutable_data_ptr<acc_t>(), p.compute_grad ? p.grad.mutable_data_ptr<student_t>() : nullptr};
    Launcher<student_t, teacher_t, acc_t>::launch(blocks, threads, stream, a, extra...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  scale_grad_on_device(p);
  return {reduced_loss(p), p.grad};
}

template <typename S, typename T, typename A>
struct DirichletLaunch {
  static void launch(int64_t blocks, int threads, cudaStream_t stream, const Args<S, T, A>& a, double c) {
    topk_dirichlet_nll_kernel<S, T, A><<<blocks, threads, 0, stream>>>(a, c, A(log_or_neg_inf(c)));
  }
};

template <typename S, typename T, typename A>
struct ProxyLaunch {
  static void launch(int64_t blocks, int threads, cudaStream_t stream, const Args<S, T, A>& a, ProxyOptions o) {
    topk_proxy_kl_kernel<S, T, A><<<blocks, threads, 0, stream>>>(a, o);
  }
};

template <typename S, typename T, typename A>
struct EnsembleKLLaunch {
  static void launch(int64_t blocks, int threads, cudaStream_t stream, const Args<S, T, A>& a) {
    topk_ensemble_kl_kernel<S, T, A><<<blocks, threads, 0, stream>>>(a);
  }
};

std::tuple<at::Tensor, at::Tensor> topk_dirichlet_nll_cuda(const at::Tensor& student_logits, const at::Tensor& indices,
                                                           const at::Tensor& mean_log_probs,
                                                           const at::Tensor& tail_mean_log_prob,
                                                           const c10::optional<at::Tensor>& mask, double model_offset,
                                                           int64_t reduction, bool compute_grad,
                                                           bool /*reuse_grad: read by the Python backward only*/) {
  check_nonnegative_option(model_offset, "model_offset");
  TopKTarget t;
  LossProblem p = make_topk_loss_problem(student_logits, indices, mean_log_probs, "mean_log_probs",
                                         tail_mean_log_prob, "tail_mean_log_prob", c10::nullopt, mask, reduction,
                                         compute_grad, t);
  return run<DirichletLaunch>(p, t, model_offset);
}

std::tuple<at::Tensor, at::Tensor> topk_proxy_dirichlet_kl_cuda(
    const at::Tensor& student_logits, const at::Tensor& indices, const at::Tensor& mean_probs,
    const at::Tensor& tail_mass, const at::Tensor& teacher_measure, const c10::optional<at::Tensor>& mask,
    c10::string_view direction, c10::string_view precision, double model_offset, double target_offset, double eps,
    c10::optional<double> max_precision, bool reference_code_compat, int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const ProxyOptions o = parse_proxy_options(direction, precision, model_offset, target_offset, eps, max_precision,
                                             reference_code_compat);
  TopKTarget t;
  LossProblem p = make_topk_loss_problem(student_logits, indices, mean_probs, "mean_probs", tail_mass, "tail_mass",
                                         teacher_measure, mask, reduction, compute_grad, t);
  return run<ProxyLaunch>(p, t, o);
}

std::tuple<at::Tensor, at::Tensor> topk_ensemble_kl_cuda(const at::Tensor& student_logits, const at::Tensor& indices,
                                                         const at::Tensor& mean_probs, const at::Tensor& tail_mass,
                                                         const c10::optional<at::Tensor>& mask, int64_t reduction,
                                                         bool compute_grad,
                                                         bool /*reuse_grad: read by the Python backward only*/) {
  TopKTarget t;
  LossProblem p = make_topk_loss_problem(student_logits, indices, mean_probs, "mean_probs", tail_mass, "tail_mass",
                                         c10::nullopt, mask, reduction, compute_grad, t);
  return run<EnsembleKLLaunch>(p, t);
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) {
  m.impl("topk_dirichlet_nll", &topk_dirichlet_nll_cuda);
  m.impl("topk_proxy_dirichlet_kl", &topk_proxy_dirichlet_kl_cuda);
  m.impl("topk_ensemble_kl", &topk_ensemble_kl_cuda);
}

}  // namespace edd_ext
