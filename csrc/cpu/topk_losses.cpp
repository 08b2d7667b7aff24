// The CPU ops of the losses against a top-k target (SPEC section 1.1 with 2.1 EnD^2, 2.2 the proxy-Dirichlet KL
// and 2.4 the ensemble KL): the checks, the outputs, the gradient's scale and the reduction here, compiled once;
// the kernels (csrc/cpu/simd/topk_losses.cpp, edd_ext/cpu/topk_kernels.h) compiled once per CPU capability.
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <tuple>

#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/cpu/topk_kernels.h"
#include "edd_ext/loss_options.h"
#include "edd_ext/loss_reduction.h"
#include "edd_ext/topk_host.h"

namespace edd_ext {
namespace cpu {

Kernel<TopkDirichletNllKernel> topk_dirichlet_nll_kernel;
Kernel<TopkProxyKlKernel> topk_proxy_kl_kernel;
Kernel<TopkEnsembleKlKernel> topk_ensemble_kl_kernel;

}  // namespace cpu

namespace {

// Sets the gradient's scale, runs the running capability's `kernel` on the positions, and reduces the loss.
template <typename Fn, typename... Args>
std::tuple<at::Tensor, at::Tensor> run(const cpu::Kernel<Fn>& kernel, LossProblem& p, const TopKTarget& t,
                                       const Args&... args) {
  p.grad_scale = host_grad_scale(p);
  if (p.compute_grad) cpu::advise_huge_pages(p.grad.mutable_data_ptr(), p.grad.nbytes());
  if (p.positions > 0) kernel.get()(p, t, args...);
  return {reduced_loss(p), p.grad};
}

std::tuple<at::Tensor, at::Tensor> topk_dirichlet_nll_cpu(const at::Tensor& student_logits, const at::Tensor& indices,
                                                          const at::Tensor& mean_log_probs,
                                                          const at::Tensor& tail_mean_log_prob,
                                                          const c10::optional<at::Tensor>& mask, double model_offset,
                                                          int64_t reduction, bool compute_grad,
                                                          bool /*reuse_grad: read by the Python backward only*/) {
  TopKTarget t;
  LossProblem p = topk_dirichlet_nll_problem(student_logits, indices, mean_log_probs, tail_mean_log_prob, mask,
                                             model_offset, reduction, compute_grad, t);
  return run(cpu::topk_dirichlet_nll_kernel, p, t, model_offset);
}

std::tuple<at::Tensor, at::Tensor> topk_proxy_dirichlet_kl_cpu(
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
  return run(cpu::topk_proxy_kl_kernel, p, t, o);
}

std::tuple<at::Tensor, at::Tensor> topk_ensemble_kl_cpu(const at::Tensor& student_logits, const at::Tensor& indices,
                                                        const at::Tensor& mean_probs, const at::Tensor& tail_mass,
                                                        const c10::optional<at::Tensor>& mask, int64_t reduction,
                                                        bool compute_grad,
                                                        bool /*reuse_grad: read by the Python backward only*/) {
  TopKTarget t;
  LossProblem p =
      topk_ensemble_kl_problem(student_logits, indices, mean_probs, tail_mass, mask, reduction, compute_grad, t);
  return run(cpu::topk_ensemble_kl_kernel, p, t);
}

}  // namespace

TORCH_LIBRARY_IMPL(edd_ext, CPU, m) {
  m.impl("topk_dirichlet_nll", &topk_dirichlet_nll_cpu);
  m.impl("topk_proxy_dirichlet_kl", &topk_proxy_dirichlet_kl_cpu);
  m.impl("topk_ensemble_kl", &topk_ensemble_kl_cpu);
}

}  // namespace edd_ext
