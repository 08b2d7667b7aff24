// CUDA kernel of the compact top-k teacher statistics (SPEC section 1.1; the listing order and the tail are
// edd_ext/topk_math.h). One block per position (blocks loop over positions):
//   1. the members' block log-sum-exps;
//   2. one pass over the classes (edd_ext/ensemble_math.h, ensemble_class_terms) that sums the five measures and
//      pi^, l- over all V classes in float64, and keeps pi^ and l- in this block's two scratch rows [V] (global
//      memory, re-read from L2: O(V) per block, never [*, V]);
//   3. the selection (edd_ext/cuda/block_select.cuh): a radix select finds the k-th largest pi^ exactly in a
//      fixed 4 passes over the scratch row (8 for float64: 8 bits per pass, a 256-bin shared histogram); an
//      ordered compaction (block prefix counts in class order) takes every class above it and the first ones equal
//      to it, so ties go to the smaller class as on the CPU; a bitonic sort in shared memory puts the k in the
//      listing order;
//   4. the listed values, their float64 sums, and the tail.
// Why a radix select: k rounds of block argmax would read the row k times (64x the class pass at k = 64), and
// per-thread candidate lists need k registers per thread; the radix select's cost does not grow with k. The sort
// keeps k <= 1024 (kMaxTopK; its shared arrays). No host sync; the kernel runs on the current stream.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cuda/block_select.cuh"
#include "edd_ext/cuda/loss_rows.cuh"
#include "edd_ext/ensemble_math.h"
#include "edd_ext/topk_host.h"
#include "edd_ext/topk_math.h"

namespace edd_ext {
namespace {

constexpr int kMaxTopK = 1024;

int sort_size(int64_t k) {
  int size = 1;
  while (size < k) size <<= 1;
  return size;
}

struct StatsOptions {
  double inv_t, inv_m, log_m, log1m_eps, log_eps_v;
  bool smooth;
};

// Dynamic shared memory: the sort's keys and classes ([sort_width] each), then the members' normalisers (2 M
// values) unless they live in the global workspace (large M: launch.cuh, place_scratch).
template <typename acc_t>
__host__ __device__ size_t sort_bytes(int sort_width) {
  return size_t(sort_width) * (sizeof(typename cuda::SelectionKey<acc_t>::type) + sizeof(int32_t));
}

template <typename scalar_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
topk_stats_kernel(const scalar_t* __restrict__ logits, int64_t positions, int64_t members, int64_t vocab, int k,
                  int sort_width, StatsOptions o, acc_t* __restrict__ member_workspace, int64_t member_row,
                  acc_t* __restrict__ rows, int64_t* __restrict__ indices, acc_t* __restrict__ listed_probs,
                  acc_t* __restrict__ listed_log_probs, acc_t* __restrict__ tail_mass,
                  acc_t* __restrict__ tail_mean_log_prob, acc_t* __restrict__ measures) {
  using K = typename cuda::SelectionKey<acc_t>::type;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  K* keys = reinterpret_cast<K*>(shared_raw);                        // [sort_width]
  int32_t* classes = reinterpret_cast<int32_t*>(keys + sort_width);  // [sort_width]
  acc_t* shift = cuda::block_scratch(member_workspace, member_row, shared_raw + sort_bytes<acc_t>(sort_width));
  acc_t* log_sum = shift + members;  // [members] each
  __shared__ cuda::LossScratch<acc_t> scratch;
  __shared__ cuda::SelectScratch select;
  constexpr int kSums = math::kNumMeasures + math::ClassSums::kSize;
  __shared__ double sum_scratch[kSums * cuda::kMaxWarps];
  const acc_t inv_t = acc_t(o.inv_t), inv_m = acc_t(o.inv_m), log_m = acc_t(o.log_m);
  const acc_t log1m_eps = acc_t(o.log1m_eps), log_eps_v = acc_t(o.log_eps_v);
  acc_t* prob_row = rows + int64_t(blockIdx.x) * 2 * vocab;
  acc_t* log_prob_row = prob_row + vocab;

  for (int64_t n = blockIdx.x; n < positions; n += gridDim.x) {
    const scalar_t* row = logits + n * members * vocab;
    cuda::block_target_normalizers(row, members, vocab, inv_t, math::TeacherNorm::kLogSoftmax, shift, log_sum, scratch);
    double sums[kSums] = {};
    math::ClassSums all;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const math::ClassTerms<acc_t> t = math::ensemble_class_terms(row, j, members, vocab, shift, log_sum, inv_t,
                                                                   o.smooth, log1m_eps, log_eps_v, inv_m, log_m);
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) sums[i] += double(t.measure[i]);
      all.push(double(t.mean_prob), double(t.mean_log_prob));
      prob_row[j] = t.mean_prob;
      log_prob_row[j] = t.mean_log_prob;
    }
#pragma unroll
    for (int i = 0; i < math::ClassSums::kSize; ++i) sums[math::kNumMeasures + i] = all.v[i];
    cuda::block_sum(sums, sum_scratch);  // also orders the scratch rows' writes before the selection reads them

    int equal_to_take = 0;
    const K kth = cuda::block_kth_largest_key(prob_row, vocab, k, select, &equal_to_take);
    cuda::block_gather_selected(prob_row, vocab, k, kth, equal_to_take, select, keys, classes);
    cuda::block_sort_listed(keys, classes, k, sort_width);

    double listed_sums[math::ClassSums::kSize] = {};
    for (int i = threadIdx.x; i < k; i += blockDim.x) {
      const int32_t c = classes[i];
      const acc_t p = prob_row[c], l = log_prob_row[c];
      indices[n * k + i] = c;
      listed_probs[n * k + i] = p;
      listed_log_probs[n * k + i] = l;
      math::ClassSums one;
      one.push(double(p), double(l));
#pragma unroll
      for (int s = 0; s < math::ClassSums::kSize; ++s) listed_sums[s] += one.v[s];
    }
    cuda::block_sum(listed_sums, sum_scratch);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) measures[n * math::kNumMeasures + i] = acc_t(sums[i]);
      math::ClassSums total, listed;
#pragma unroll
      for (int s = 0; s < math::ClassSums::kSize; ++s) {
        total.v[s] = sums[math::kNumMeasures + s];
        listed.v[s] = listed_sums[s];
      }
      math::tail_of(total, listed, vocab, int64_t(k), tail_mass + n, tail_mean_log_prob + n);
    }
    __syncthreads();  // the scratch rows, shift[], log_sum[] and the sort arrays are rewritten next
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_ensemble_stats_cuda(
    const at::Tensor& teacher_logits, int64_t k, double temperature, double smoothing) {
  TopKStatsProblem p = make_topk_stats_problem(teacher_logits, k, temperature, smoothing);
  const EnsembleStatsProblem& d = p.dense;
  TORCH_CHECK_VALUE(k <= kMaxTopK, "k: the CUDA kernel takes k <= ", kMaxTopK, ", got ", k);
  if (d.positions > 0) {
    const c10::cuda::CUDAGuard guard(d.logits.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int threads = cuda::threads_for(d.vocab);
    const int width = sort_size(k);
    const StatsOptions o{d.inv_temperature, d.inv_members, d.log_members, d.log1m_eps, d.log_eps_over_v, d.smooth};
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, d.logits.scalar_type(), "edd_ext::topk_stats_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto kernel = topk_stats_kernel<scalar_t, acc_t>;
      // the sort arrays always in shared memory; the members' normalisers beside them when all fit, else global
      const size_t sort = sort_bytes<acc_t>(width);
      const int64_t sort_values = int64_t((sort + sizeof(acc_t) - 1) / sizeof(acc_t));
      const bool fits = cuda::place_scratch(kernel, 2 * d.members + sort_values, sizeof(acc_t)).shared_bytes > 0;
      const int64_t member_row = fits ? 0 : 2 * d.members;
      const size_t shared = sort + (fits ? size_t(2 * d.members) * sizeof(acc_t) : 0);
      const int64_t blocks = cuda::resident_grid(kernel, threads, shared, d.positions);
      at::Tensor workspace;
      if (member_row > 0) workspace = at::empty({blocks * member_row}, d.measures.options());
      at::Tensor rows = at::empty({blocks * 2 * d.vocab}, d.measures.options());
      kernel<<<blocks, threads, shared, stream>>>(
          d.logits.const_data_ptr<scalar_t>(), d.positions, d.members, d.vocab, int(k), width, o,
          workspace.defined() ? workspace.mutable_data_ptr<acc_t>() : nullptr, member_row,
          rows.mutable_data_ptr<acc_t>(), p.indices.mutable_data_ptr<int64_t>(),
          p.listed_probs.mutable_data_ptr<acc_t>(), p.listed_log_probs.mutable_data_ptr<acc_t>(),
          p.tail_mass.mutable_data_ptr<acc_t>(), p.tail_mean_log_prob.mutable_data_ptr<acc_t>(),
          d.measures.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {p.indices, p.listed_probs, p.listed_log_probs, p.tail_mass, p.tail_mean_log_prob, d.measures};
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("topk_ensemble_stats", &topk_ensemble_stats_cuda); }

}  // namespace edd_ext
