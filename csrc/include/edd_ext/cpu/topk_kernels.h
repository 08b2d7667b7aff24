// The top-k ops' CPU kernels, compiled once per CPU capability (csrc/cpu/simd/topk_*.cpp) and chosen at run time
// like the dense ones (edd_ext/cpu/capability.h). Unlike those (edd_ext/cpu/kernels.h: views of raw pointers, no
// tensor headers), they take the ops' problems (tensors) and run the parallel loop over positions themselves.
// The ops (csrc/cpu/topk_*.cpp, compiled once) check the inputs, allocate the outputs, set the gradient's scale
// and reduce the loss; the kernels fill every position's outputs.
#pragma once

#include "edd_ext/cpu/capability.h"
#include "edd_ext/loss_problem.h"
#include "edd_ext/proxy_options.h"
#include "edd_ext/topk_host.h"

namespace edd_ext {
namespace cpu {

// The compact statistics of every position (indices, listed rows, tail, measures).
using TopkStatsKernel = void(const TopKStatsProblem& p);

// The losses against a top-k target: every position's loss and (when p.compute_grad) gradient row, the gradient
// times p.grad_scale.
using TopkDirichletNllKernel = void(const LossProblem& p, const TopKTarget& t, double model_offset);
using TopkProxyKlKernel = void(const LossProblem& p, const TopKTarget& t, const ProxyOptions& o);
using TopkEnsembleKlKernel = void(const LossProblem& p, const TopKTarget& t);

extern Kernel<TopkStatsKernel> topk_ensemble_stats_kernel;
extern Kernel<TopkDirichletNllKernel> topk_dirichlet_nll_kernel;
extern Kernel<TopkProxyKlKernel> topk_proxy_kl_kernel;
extern Kernel<TopkEnsembleKlKernel> topk_ensemble_kl_kernel;

}  // namespace cpu
}  // namespace edd_ext
