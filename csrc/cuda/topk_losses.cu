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
#include <type_traits>

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
                             acc_t grad_scale, ClassFn&& class_fn) {
  double sum = 0;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    if ((bitmap[j >> 5] >> (j & 31)) & 1u) continue;
    const auto t = class_fn(j, tail_value);
    sum += double(t.loss);
    if (g != nullptr) g[j] = student_t(t.grad * grad_scale);
  }
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    const int64_t c = listed[i];
    if (!valid_class(c, vocab)) continue;
    const auto t = class_fn(c, acc_t(values[i]));
    sum += double(t.loss);
    if (g != nullptr) g[c] = student_t(t.grad * grad_scale);
  }
  return sum;
}

// The position loop of the kernels: a masked position gets loss 0 and a zero gradient row; every other position
// has its listed classes marked in this block's bitmap, then body(n, student row, values row, gradient row) returns
// its loss (the block's total, on every thread). Every thread must call it.
template <typename S, typename T, typename A, typename Body>
__device__ void for_each_listed_position(const TopKArgs<S, T, A>& a, uint32_t* bitmaps, Body&& body) {
  uint32_t* bitmap = bitmaps + int64_t(blockIdx.x) * bitmap_words(a.vocab);
  for (int64_t n = blockIdx.x; n < a.positions; n += gridDim.x) {
    S* g = a.grad != nullptr ? a.grad + n * a.vocab : nullptr;
    if (a.mask != nullptr && !a.mask[n]) {
      if (threadIdx.x == 0) a.loss[n] = A(0);
      cuda::block_zero_row(g, a.vocab);
      continue;
    }
    block_mark_listed(a.indices + n * a.k, int(a.k), a.vocab, bitmap);
    const double loss = body(n, a.student + n * a.vocab, a.values + n * a.k, g, bitmap);
    if (threadIdx.x == 0) a.loss[n] = A(loss);
    __syncthreads();  // the bitmap is rewritten by the next position
  }
}

template <typename S, typename T, typename A>
EDD_EXT_BLOCK_KERNEL(A)
topk_dirichlet_nll_kernel(TopKArgs<S, T, A> a, uint32_t* bitmaps, cuda::GradScale grad_scale, double model_offset,
                          A log_c) {
  __shared__ cuda::LossScratch<A> scratch;
  const A c = A(model_offset), c_minus_one = A(model_offset - 1), scale = A(grad_scale.get());
  for_each_listed_position(a, bitmaps, [&](int64_t n, const S* z, const T* values, S* g, const uint32_t* bitmap) {
    const double alpha0 = cuda::block_student_precision<S, A>(z, a.vocab, model_offset, scratch);
    const A digamma_alpha0 = A(math::digamma(alpha0));
    double sum[1] = {class_pass(a.indices + n * a.k, values, int(a.k), a.vocab, bitmap, A(a.tail[n]), g, scale,
                                [&](int64_t j, A mean_log_prob) {
                                  return math::dirichlet_nll_class(A(z[j]), c, log_c, c_minus_one, mean_log_prob,
                                                                   digamma_alpha0);
                                })};
    cuda::block_sum(sum, scratch.sums);
    return sum[0] - math::lgamma(alpha0);
  });
}

template <typename S, typename T, typename A>
EDD_EXT_BLOCK_KERNEL(A)
topk_proxy_kl_kernel(TopKArgs<S, T, A> a, uint32_t* bitmaps, cuda::GradScale grad_scale, ProxyOptions o) {
  __shared__ cuda::LossScratch<A> scratch;
  const A c = A(o.model_offset), log_c = A(o.log_model_offset), t_off = A(o.target_offset);
  const A scale = A(grad_scale.get());
  for_each_listed_position(a, bitmaps, [&](int64_t n, const S* z, const T* values, S* g, const uint32_t* bitmap) {
    const double tail_prob = math::tail_class_mean_prob(a.tail[n], a.vocab, a.k);
    double mass[1] = {0};
    for (int i = threadIdx.x; i < a.k; i += blockDim.x) mass[0] += double(A(values[i]));
    cuda::block_sum(mass, scratch.sums);
    const double alpha0 = cuda::block_student_precision<S, A>(z, a.vocab, o.model_offset, scratch);
    const double target_precision =
        math::proxy_target_precision(a.measure[n], o.mkl, double(a.vocab), o.eps, o.max_precision);
    const math::ProxyScalars s = math::proxy_scalars(o.mode, alpha0, target_precision, o.target_offset, double(a.vocab),
                                                     mass[0] + tail_prob * double(a.vocab - a.k));
    const A class_precision = A(o.mode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
    const A dig_a0 = A(s.digamma_alpha0), dig_b0 = A(s.digamma_beta0);
    const A grad_shift = A(s.grad_shift), inv_beta0 = A(s.inv_beta0);
    double sum[1] = {class_pass(a.indices + n * a.k, values, int(a.k), a.vocab, bitmap, A(tail_prob), g, scale,
                                [&](int64_t j, A mean_prob) {
                                  return math::proxy_kl_class(o.mode, A(z[j]), c, log_c, mean_prob, class_precision,
                                                              t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
                                })};
    cuda::block_sum(sum, scratch.sums);
    return (sum[0] + s.loss_shift) * s.inv_beta0;
  });
}

template <typename S, typename T, typename A>
EDD_EXT_BLOCK_KERNEL(A)
topk_ensemble_kl_kernel(TopKArgs<S, T, A> a, uint32_t* bitmaps, cuda::GradScale grad_scale) {
  __shared__ cuda::LossScratch<A> scratch;
  const A scale = A(grad_scale.get());
  for_each_listed_position(a, bitmaps, [&](int64_t n, const S* z, const T* values, S* g, const uint32_t* bitmap) {
    cuda::RowLogSumExp<A> acc;
    for (int64_t j = threadIdx.x; j < a.vocab; j += blockDim.x) acc.push(A(z[j]));
    const cuda::RowLogSumExp<A> lse = cuda::block_logsumexp(acc, scratch.lse);
    const A z_max = lse.max, z_log_sum = A(::log(lse.sum));
    const A tail_prob = A(math::tail_class_mean_prob(a.tail[n], a.vocab, a.k));
    double sum[1] = {class_pass(
        a.indices + n * a.k, values, int(a.k), a.vocab, bitmap, tail_prob, g, scale, [&](int64_t j, A mean_prob) {
          return math::ensemble_kl_class(A(z[j]), z_max, z_log_sum, mean_prob, math::log_(mean_prob));
        })};
    cuda::block_sum(sum, scratch.sums);
    return sum[0];
  });
}

// The launch of a top-k loss kernel: the resident grid, and one bitmap of V bits per block.
struct TopKLaunch {
  int64_t blocks = 1;
  int threads = 128;
  at::Tensor bitmaps;  // [blocks, bitmap_words(V)]

  uint32_t* bits() const { return reinterpret_cast<uint32_t*>(bitmaps.mutable_data_ptr<int32_t>()); }
};

template <typename Kernel>
TopKLaunch topk_launch(Kernel kernel, const LossProblem& p) {
  TopKLaunch l;
  l.threads = cuda::threads_for(p.vocab);
  l.blocks = cuda::resident_grid(kernel, l.threads, 0, p.positions);
  l.bitmaps = at::empty({l.blocks * bitmap_words(p.vocab)}, p.student.options().dtype(at::kInt));
  return l;
}

// Calls launch(args, gradient factor, stream) for the problem's dtypes; the factor (the mean's 1 / count) is
// folded into every gradient element the kernels write, as on the CPU.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> run(LossProblem& p, const TopKTarget& t, Launch&& launch) {
  if (p.positions == 0) return {reduced_loss(p), p.grad};
  const c10::cuda::CUDAGuard guard(p.student.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor scale_holder;
  const cuda::GradScale grad_scale = cuda::grad_scale_for(p, scale_holder);
  dispatch_student_teacher(p.student.scalar_type(), t.values.scalar_type(), [&](auto s, auto tt) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(tt)::type;
    launch(topk_args<student_t, teacher_t, loss_acc_t<student_t, teacher_t>>(p, t), grad_scale, stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {reduced_loss(p), p.grad};
}

// The instance of kernel template `name` for the TopKArgs<S, T, A> of `args`.
#define EDD_TOPK_KERNEL(name, args)                                                                              \
  name<typename std::decay_t<decltype(args)>::student_type, typename std::decay_t<decltype(args)>::teacher_type, \
       typename std::decay_t<decltype(args)>::acc_type>

std::tuple<at::Tensor, at::Tensor> topk_dirichlet_nll_cuda(const at::Tensor& student_logits, const at::Tensor& indices,
                                                           const at::Tensor& mean_log_probs,
                                                           const at::Tensor& tail_mean_log_prob,
                                                           const c10::optional<at::Tensor>& mask, double model_offset,
                                                           int64_t reduction, bool compute_grad,
                                                           bool /*reuse_grad: read by the Python backward only*/) {
  TopKTarget t;
  LossProblem p = topk_dirichlet_nll_problem(student_logits, indices, mean_log_probs, tail_mean_log_prob, mask,
                                             model_offset, reduction, compute_grad, t);
  return run(p, t, [&](const auto& a, cuda::GradScale grad_scale, cudaStream_t stream) {
    using A = typename std::decay_t<decltype(a)>::acc_type;
    const auto kernel = EDD_TOPK_KERNEL(topk_dirichlet_nll_kernel, a);
    const TopKLaunch l = topk_launch(kernel, p);
    kernel<<<l.blocks, l.threads, 0, stream>>>(a, l.bits(), grad_scale, model_offset, A(log_or_neg_inf(model_offset)));
  });
}

std::tuple<at::Tensor, at::Tensor> topk_proxy_dirichlet_kl_cuda(
    const at::Tensor& student_logits, const at::Tensor& indices, const at::Tensor& mean_probs,
    const at::Tensor& tail_mass, const at::Tensor& teacher_measure, const c10::optional<at::Tensor>& mask,
    c10::string_view direction, c10::string_view precision, double model_offset, double target_offset, double eps,
    c10::optional<double> max_precision, bool reference_code_compat, int64_t reduction, bool compute_grad,
    bool /*reuse_grad: read by the Python backward only*/) {
  const ProxyOptions o =
      parse_proxy_options(direction, precision, model_offset, target_offset, eps, max_precision, reference_code_compat);
  TopKTarget t;
  LossProblem p = topk_proxy_problem(student_logits, indices, mean_probs, tail_mass, teacher_measure, mask, reduction,
                                     compute_grad, t);
  return run(p, t, [&](const auto& a, cuda::GradScale grad_scale, cudaStream_t stream) {
    const auto kernel = EDD_TOPK_KERNEL(topk_proxy_kl_kernel, a);
    const TopKLaunch l = topk_launch(kernel, p);
    kernel<<<l.blocks, l.threads, 0, stream>>>(a, l.bits(), grad_scale, o);
  });
}

std::tuple<at::Tensor, at::Tensor> topk_ensemble_kl_cuda(const at::Tensor& student_logits, const at::Tensor& indices,
                                                         const at::Tensor& mean_probs, const at::Tensor& tail_mass,
                                                         const c10::optional<at::Tensor>& mask, int64_t reduction,
                                                         bool compute_grad,
                                                         bool /*reuse_grad: read by the Python backward only*/) {
  TopKTarget t;
  LossProblem p =
      topk_ensemble_kl_problem(student_logits, indices, mean_probs, tail_mass, mask, reduction, compute_grad, t);
  return run(p, t, [&](const auto& a, cuda::GradScale grad_scale, cudaStream_t stream) {
    const auto kernel = EDD_TOPK_KERNEL(topk_ensemble_kl_kernel, a);
    const TopKLaunch l = topk_launch(kernel, p);
    kernel<<<l.blocks, l.threads, 0, stream>>>(a, l.bits(), grad_scale);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) {
  m.impl("topk_dirichlet_nll", &topk_dirichlet_nll_cuda);
  m.impl("topk_proxy_dirichlet_kl", &topk_proxy_dirichlet_kl_cuda);
  m.impl("topk_ensemble_kl", &topk_ensemble_kl_cuda);
}

}  // namespace edd_ext
