// CUDA kernel of the logit-distribution student's uncertainty measures (SPEC section 3), one block per
// position, on the current stream, no host synchronisation; row sums are reduced in float64 (the Dirichlet
// student's kernel is in dirichlet_uncertainty.cu). Also the test-only access to the noise generator.
//
// The noise is a pure function of (seed, position, sample, class) (edd_ext/philox.h), so each pass regenerates
// what it needs and nothing of size [S, V] is stored:
//   pass 1, per group of four samples (one Philox call per class): each thread streams the four samples'
//           log-sum-exp over its classes; the block merges them into ln sum_k exp(z_k / T) of each sample,
//           kept in a [S] workspace row of the block;
//   pass 2, per class: the S log-probabilities l_s = z_sk / T - lse_s go through `MemberMoments`
//           (edd_ext/ensemble_math.h), whose `finish` gives the class's share of the five measures.
// The CPU kernel draws the very same numbers (it keeps one [4, V] group at a time instead).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "edd_ext/cuda/block_reduce.cuh"
#include "edd_ext/cuda/launch.cuh"
#include "edd_ext/student_uncertainty_host.h"

namespace edd_ext {
namespace {

using math::Family;

// ---------------------------------------------------------------------------------------------------
// Logit distribution
// ---------------------------------------------------------------------------------------------------

template <typename acc_t>
struct LogitArgs {
  int64_t positions, vocab, samples;
  uint64_t seed;
  acc_t inv_t, min_scale, inv_samples, log_samples;
};

// z_k / T = a + b eps with a = mu_k / T, b = s_k / T (rounded as the CPU kernel rounds them).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void location_and_scale(const scalar_t* mu, const scalar_t* rho, int64_t k,
                                                   const LogitArgs<acc_t>& args, acc_t& a, acc_t& b) {
  a = math::sample_location(acc_t(mu[k]), args.inv_t);
  b = math::sample_scale(acc_t(rho[k]), args.min_scale, args.inv_t);
}

// The samples' streaming log-sum-exp: the Monte-Carlo exponential, a float64 running sum.
template <typename acc_t>
using SampleLogSumExp = math::OnlineLogSumExp<acc_t, double, math::SampleExp>;

template <Family kFamily, typename scalar_t, typename acc_t>
EDD_EXT_BLOCK_KERNEL(acc_t)
    logit_kernel(const scalar_t* __restrict__ loc, const scalar_t* __restrict__ log_scale, LogitArgs<acc_t> args,
                 acc_t* __restrict__ workspace, acc_t* __restrict__ out) {
  __shared__ cuda::LogSumExpScratch<acc_t, double> lse_scratch;
  __shared__ double sum_scratch[math::kNumMeasures * cuda::kMaxWarps];
  acc_t* lse = workspace + blockIdx.x * args.samples;  // [S] of this block
  const int64_t vocab = args.vocab, groups = (args.samples + 3) / 4;
  for (int64_t n = blockIdx.x; n < args.positions; n += gridDim.x) {
    const scalar_t* mu = loc + n * vocab;
    const scalar_t* rho = log_scale + n * vocab;
    const philox::Stream stream(args.seed, uint64_t(n));

    // Pass 1: ln sum_k exp(z_sk / T) of every sample, four samples per Philox call.
    for (int64_t g = 0; g < groups; ++g) {
      SampleLogSumExp<acc_t> acc[4];
      for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
        acc_t a, b;
        location_and_scale(mu, rho, k, args, a, b);
        const math::Noise4 e = math::noise4<kFamily>(stream.bits(uint32_t(k), uint32_t(g)));
        acc[0].push(math::sample_rn(a, b, e.e0));
        acc[1].push(math::sample_rn(a, b, e.e1));
        acc[2].push(math::sample_rn(a, b, e.e2));
        acc[3].push(math::sample_rn(a, b, e.e3));
      }
      const int rows = args.samples - 4 * g < 4 ? int(args.samples - 4 * g) : 4;
#pragma unroll
      for (int j = 0; j < 4; ++j) {  // unrolled: acc[] stays in registers
        if (j < rows) {
          const SampleLogSumExp<acc_t> total = cuda::block_logsumexp(acc[j], lse_scratch);
          if (threadIdx.x == 0) lse[4 * g + j] = total.result();
        }
      }
    }
    __syncthreads();  // lse[] complete

    // Pass 2: per class, the moments of its S log-probabilities.
    double sums[math::kNumMeasures] = {0, 0, 0, 0, 0};
    for (int64_t k = threadIdx.x; k < vocab; k += blockDim.x) {
      acc_t a, b;
      location_and_scale(mu, rho, k, args, a, b);
      math::MemberMoments<acc_t> moments;
      for (int64_t g = 0; g < groups; ++g) {
        const math::Noise4 e = math::noise4<kFamily>(stream.bits(uint32_t(k), uint32_t(g)));
        const int rows = args.samples - 4 * g < 4 ? int(args.samples - 4 * g) : 4;
        const acc_t* l = lse + 4 * g;
        moments.push(math::sample_rn(a, b, e.e0) - l[0]);
        if (rows > 1) moments.push(math::sample_rn(a, b, e.e1) - l[1]);
        if (rows > 2) moments.push(math::sample_rn(a, b, e.e2) - l[2]);
        if (rows > 3) moments.push(math::sample_rn(a, b, e.e3) - l[3]);
      }
      const math::ClassTerms<acc_t> terms = moments.finish(args.inv_samples, args.log_samples);
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) sums[i] += double(terms.measure[i]);
    }
    cuda::block_sum(sums, sum_scratch);
    if (threadIdx.x == 0) {
#pragma unroll
      for (int i = 0; i < math::kNumMeasures; ++i) out[n * math::kNumMeasures + i] = acc_t(sums[i]);
    }
    __syncthreads();  // lse[] is rewritten by the block's next position
  }
}

at::Tensor logit_distribution_uncertainty_cuda(const at::Tensor& loc, const at::Tensor& log_scale,
                                               c10::string_view family, int64_t num_samples, int64_t seed,
                                               double temperature, double min_scale) {
  LogitProblem p = make_logit_problem(loc, log_scale, family, num_samples, seed, temperature, min_scale);
  if (p.positions == 0) return p.out;
  const c10::cuda::CUDAGuard guard(p.loc.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int threads = cuda::threads_for(p.vocab);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.loc.scalar_type(), "edd_ext::logit_distribution_uncertainty_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto kernel = p.family == Family::kGaussian ? logit_kernel<Family::kGaussian, scalar_t, acc_t>
                                                          : logit_kernel<Family::kLaplace, scalar_t, acc_t>;
        const int64_t blocks = cuda::resident_grid(kernel, threads, 0, p.positions);
        at::Tensor workspace = at::empty({blocks, p.samples}, p.out.options());  // [S] log-sum-exps per block
        LogitArgs<acc_t> args;
        args.positions = p.positions;
        args.vocab = p.vocab;
        args.samples = p.samples;
        args.seed = p.seed;
        args.inv_t = acc_t(p.inv_temperature);
        args.min_scale = acc_t(p.min_scale);
        args.inv_samples = acc_t(p.inv_samples);
        args.log_samples = acc_t(p.log_samples);
        const scalar_t* mu = p.loc.const_data_ptr<scalar_t>();
        const scalar_t* rho = p.log_scale.const_data_ptr<scalar_t>();
        acc_t* ws = workspace.mutable_data_ptr<acc_t>();
        acc_t* out = p.out.mutable_data_ptr<acc_t>();
        kernel<<<blocks, threads, 0, stream>>>(mu, rho, args, ws, out);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return p.out;
}

// ---------------------------------------------------------------------------------------------------
// Test access to the generator
// ---------------------------------------------------------------------------------------------------

__global__ void __launch_bounds__(cuda::kElementwiseThreads) philox_kernel(const int64_t* __restrict__ counters, int64_t count, uint64_t seed,
                              int64_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t* c = counters + 4 * i;
    const philox::Words w = philox::philox4x32_10(uint32_t(c[0]), uint32_t(c[1]), uint32_t(c[2]), uint32_t(c[3]),
                                                  uint32_t(seed), uint32_t(seed >> 32));
    out[4 * i] = w.w0;
    out[4 * i + 1] = w.w1;
    out[4 * i + 2] = w.w2;
    out[4 * i + 3] = w.w3;
  }
}

template <Family kFamily>
__global__ void __launch_bounds__(cuda::kElementwiseThreads) noise_kernel(const int64_t* __restrict__ positions, int64_t count, uint64_t seed, int64_t samples,
                             int64_t vocab, float* __restrict__ out) {
  const int64_t total = count * samples * vocab;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % vocab, s = (i / vocab) % samples, row = i / (vocab * samples);
    const philox::Stream stream(seed, uint64_t(positions[row]));
    out[i] = math::noise_component(math::noise4<kFamily>(stream.bits(uint32_t(k), uint32_t(s / 4))), int(s % 4));
  }
}

int64_t elementwise_blocks(int64_t count) {
  return std::max<int64_t>(1, std::min<int64_t>((count + cuda::kElementwiseThreads - 1) / cuda::kElementwiseThreads,
                                                65535));
}

at::Tensor philox4x32_cuda(const at::Tensor& counters, int64_t seed) {
  check_philox_counters(counters);
  const at::Tensor in = counters.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t count = in.numel() / 4;
  if (count == 0) return out;
  const c10::cuda::CUDAGuard guard(in.device());
  philox_kernel<<<elementwise_blocks(count), cuda::kElementwiseThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      in.const_data_ptr<int64_t>(), count, uint64_t(seed), out.mutable_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor philox_noise_cuda(const at::Tensor& positions, int64_t seed, int64_t num_samples, int64_t vocab,
                             c10::string_view family) {
  check_philox_noise_args(positions, num_samples, vocab, family);
  const at::Tensor pos = positions.contiguous();
  at::Tensor out = at::empty({pos.size(0), num_samples, vocab}, pos.options().dtype(at::kFloat));
  const int64_t total = out.numel();
  if (total == 0) return out;
  const c10::cuda::CUDAGuard guard(pos.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (parse_family(family) == Family::kGaussian) {
    noise_kernel<Family::kGaussian><<<elementwise_blocks(total), cuda::kElementwiseThreads, 0, stream>>>(
        pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab, out.mutable_data_ptr<float>());
  } else {
    noise_kernel<Family::kLaplace><<<elementwise_blocks(total), cuda::kElementwiseThreads, 0, stream>>>(
        pos.const_data_ptr<int64_t>(), pos.size(0), uint64_t(seed), num_samples, vocab, out.mutable_data_ptr<float>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CUDA, m) { m.impl("logit_distribution_uncertainty", &logit_distribution_uncertainty_cuda); }

TORCH_LIBRARY_IMPL(edd_ext_testing, CUDA, m) {
  m.impl("philox4x32", &philox4x32_cuda);
  m.impl("philox_noise", &philox_noise_cuda);
}

}  // namespace edd_ext
