// CPU kernels of the losses against a top-k target (SPEC section 1.1 with 2.1 EnD^2, 2.2 the proxy-Dirichlet KL
// and 2.4 the ensemble KL), forward and closed-form gradient in one call. They read the sparse target — k listed
// classes with their values, and the tail's one value — directly: no [V] target row is built.
//
// One task per position. Its listed classes are sorted by class (O(k log k); out-of-range and repeated classes
// are reported here), then one walk over the V classes in order: each run of tail classes between two listed
// ones takes the tail's constant target (SIMD blocks of kLanes classes, the scalar function for the run's last
// few), each listed class its own value. Every class's loss and gradient come from the per-class functions of
// the dense kernels (edd_ext/dirichlet_math.h, logit_math.h, and their SIMD forms in cpu/loss_blocks.h), each
// class is computed once and nothing is subtracted, so the sums stay exact where a tail term is infinite.
// Per-class math in float32 (float64 for float64 inputs), row sums and per-position scalars in float64; masked
// positions get loss 0 and a zero gradient row.
// Compiled once per CPU capability (edd_ext/cpu/topk_kernels.h); csrc/cpu/topk_losses.cpp has the ops, which set up
// each problem and call the running capability's kernel.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <type_traits>
#include <vector>

#include "edd_ext/cpu/loss_blocks.h"
#include "edd_ext/cpu/loss_rows.h"
#include "edd_ext/cpu/topk_kernels.h"
#include "edd_ext/dirichlet_math.h"
#include "edd_ext/logit_math.h"
#include "edd_ext/topk_host.h"
#include "edd_ext/topk_math.h"

namespace edd_ext {
namespace cpu {
inline namespace CPU_CAPABILITY {
namespace {

// One position's listed classes in increasing class order, with the slot of each one's value.
struct ListedClasses {
  std::vector<int64_t> cls, slot;

  void sort(const int64_t* indices, int64_t k, int64_t vocab, int64_t position) {
    slot.resize(size_t(k));
    cls.resize(size_t(k));
    std::iota(slot.begin(), slot.end(), int64_t(0));
    std::sort(slot.begin(), slot.end(), [&](int64_t a, int64_t b) { return indices[a] < indices[b]; });
    for (int64_t i = 0; i < k; ++i) {
      cls[size_t(i)] = indices[slot[size_t(i)]];
      TORCH_CHECK_VALUE(cls[size_t(i)] >= 0 && cls[size_t(i)] < vocab, "indices: expected classes in [0, V) = [0, ",
                        vocab, "), got ", cls[size_t(i)], " at position ", position);
      TORCH_CHECK_VALUE(i == 0 || cls[size_t(i)] != cls[size_t(i - 1)],
                        "indices: expected k distinct classes per position, got class ", cls[size_t(i)],
                        " twice at position ", position);
    }
  }
};

// One position's loss sum over the V classes and its gradient row g (times grad_scale; g may be nullptr): the
// runs of tail classes through block(j, loss, grad) (kLanes classes from j, SIMD kernels only) and
// scalar(j, -1), each listed class through scalar(j, slot); scalar returns the class's {loss, grad}.
template <bool kSimd, typename student_t, typename acc_t, typename Block, typename Scalar>
double class_pass(const ListedClasses& listed, int64_t vocab, student_t* g, acc_t grad_scale, Block&& block,
                  Scalar&& scalar) {
  double total = 0;
  cpu::ChunkedSum block_sum;
  const VecF vgrad_scale = VecF(float(grad_scale));
  auto one = [&](int64_t j, int64_t slot) {
    const auto t = scalar(j, slot);
    total += double(t.loss);
    if (g != nullptr) g[j] = student_t(t.grad * grad_scale);
  };
  auto tail_run = [&](int64_t j, int64_t end) {
    if constexpr (kSimd) {
      VecF loss, grad;
      for (; j + kLanes <= end; j += kLanes) {
        block(j, loss, grad);
        block_sum.push(loss);
        if (g != nullptr) cpu::store_float(grad * vgrad_scale, g + j);
      }
    }
    for (; j < end; ++j) one(j, -1);
  };
  int64_t next = 0;
  for (size_t i = 0; i < listed.cls.size(); ++i) {
    tail_run(next, listed.cls[i]);
    one(listed.cls[i], listed.slot[i]);
    next = listed.cls[i] + 1;
  }
  tail_run(next, vocab);
  return kSimd ? total + block_sum.result() : total;
}

// The position loop (cpu::for_each_position: a masked position gets its zero loss and gradient row): every other
// position n has its listed classes sorted, then loss[n] = body(n, scratch, listed classes, student row, values
// row, gradient row), `make_scratch()` called once per task.
template <typename student_t, typename teacher_t, typename acc_t, typename MakeScratch, typename Body>
void for_each_listed_position(const LossProblem& p, const TopKArgs<student_t, teacher_t, acc_t>& a,
                              MakeScratch&& make_scratch, Body&& body) {
  struct Scratch {
    decltype(make_scratch()) own;
    ListedClasses listed;
  };
  cpu::for_each_position<acc_t, student_t>(
      p, [&] { return Scratch{make_scratch(), ListedClasses{}}; },
      [&](int64_t n, Scratch& scratch, cpu::GradRows<student_t> rows) {
        scratch.listed.sort(a.indices + n * a.k, a.k, a.vocab, n);
        return body(n, scratch.own, scratch.listed, a.student + n * a.vocab, a.values + n * a.k, rows.student);
      });
}

// alpha_0 = sum_k exp(z_k) + c V of a student row in float64; the SIMD kernels also keep e = exp(z) in `excess`
// (a float16 / bfloat16 row widened into it first, then exponentiated in place).
template <bool kSimd, typename student_t, typename acc_t>
double student_alpha0(const student_t* z, int64_t vocab, double c, std::vector<float>& excess) {
  if constexpr (kSimd) return cpu::student_excess_row(cpu::float_row(z, vocab, excess.data()), vocab, c, excess.data());
  return cpu::student_precision<student_t, acc_t>(z, vocab, c);
}

template <bool kSimd>
auto excess_scratch(int64_t vocab) {
  return [vocab] { return std::vector<float>(kSimd ? size_t(vocab) : 0); };
}

// EnD^2 (dirichlet_nll_class): l-_j = the listed mean log-probability, or lambda for a tail class.
template <bool kSimd, typename student_t, typename teacher_t, typename acc_t>
void dirichlet_nll_rows(const LossProblem& p, const TopKArgs<student_t, teacher_t, acc_t>& a, acc_t grad_scale,
                        double model_offset) {
  const acc_t c = acc_t(model_offset), log_c = acc_t(log_or_neg_inf(model_offset));
  const acc_t c_minus_one = acc_t(model_offset - 1);
  for_each_listed_position(
      p, a, excess_scratch<kSimd>(a.vocab),
      [&](int64_t n, std::vector<float>& excess, const ListedClasses& listed, const student_t* z, const teacher_t* row,
          student_t* g) {
        const double alpha0 = student_alpha0<kSimd, student_t, acc_t>(z, a.vocab, model_offset, excess);
        const acc_t digamma_alpha0 = acc_t(math::digamma(alpha0)), tail_log_prob = acc_t(a.tail[n]);
        const cpu::NllConsts consts{VecF(float(c)), VecF(float(c_minus_one)), VecF(float(digamma_alpha0))};
        const VecF vtail = VecF(float(tail_log_prob));
        const double sum = class_pass<kSimd, student_t, acc_t>(
            listed, a.vocab, g, grad_scale,
            [&](int64_t j, VecF& l, VecF& dz) {
              cpu::dirichlet_nll_block(VecF::loadu(excess.data() + j), vtail, consts, l, dz);
            },
            [&](int64_t j, int64_t slot) {
              return math::dirichlet_nll_class(acc_t(z[j]), c, log_c, c_minus_one,
                                               slot < 0 ? tail_log_prob : acc_t(row[slot]), digamma_alpha0);
            });
        return sum - math::lgamma(alpha0);
      });
}

// Proxy-Dirichlet KL (proxy_kl_class): pi^_j = the listed mean probability, or tau / (V - k) for a tail class;
// sum_j pi^_j = the listed ones' sum + tau. The SIMD kernels take the mode as kMode; the scalar ones read o.mode.
template <bool kSimd, math::ProxyMode kMode, typename student_t, typename teacher_t, typename acc_t>
void proxy_kl_rows(const LossProblem& p, const TopKArgs<student_t, teacher_t, acc_t>& a, acc_t grad_scale,
                   const ProxyOptions& o) {
  const acc_t c = acc_t(o.model_offset), log_c = acc_t(o.log_model_offset), t_off = acc_t(o.target_offset);
  for_each_listed_position(
      p, a, excess_scratch<kSimd>(a.vocab),
      [&](int64_t n, std::vector<float>& excess, const ListedClasses& listed, const student_t* z, const teacher_t* row,
          student_t* g) {
        const double tail_prob = math::tail_class_mean_prob(a.tail[n], a.vocab, a.k);
        double mass = tail_prob * double(a.vocab - a.k);
        for (int64_t i = 0; i < a.k; ++i) mass += double(acc_t(row[i]));
        const double alpha0 = student_alpha0<kSimd, student_t, acc_t>(z, a.vocab, o.model_offset, excess);
        const double target_precision =
            math::proxy_target_precision(a.measure[n], o.mkl, double(a.vocab), o.eps, o.max_precision);
        const math::ProxyScalars s =
            math::proxy_scalars(o.mode, alpha0, target_precision, o.target_offset, double(a.vocab), mass);
        const acc_t class_precision = acc_t(o.mode == math::ProxyMode::kReferenceCompat ? s.beta0 : target_precision);
        const acc_t dig_a0 = acc_t(s.digamma_alpha0), dig_b0 = acc_t(s.digamma_beta0);
        const acc_t grad_shift = acc_t(s.grad_shift), inv_beta0 = acc_t(s.inv_beta0);
        const cpu::ProxyConsts consts{VecF(float(c)),          VecF(float(c) - 1.f),  VecF(float(class_precision)),
                                      VecF(float(t_off)),      VecF(float(dig_a0)),   VecF(float(dig_b0)),
                                      VecF(float(grad_shift)), VecF(float(inv_beta0))};
        const VecF vtail = VecF(float(tail_prob));
        const double sum = class_pass<kSimd, student_t, acc_t>(
            listed, a.vocab, g, grad_scale,
            [&](int64_t j, VecF& l, VecF& dz) {
              cpu::proxy_kl_block<kMode>(VecF::loadu(excess.data() + j), vtail, consts, l, dz);
            },
            [&](int64_t j, int64_t slot) {
              return math::proxy_kl_class(o.mode, acc_t(z[j]), c, log_c, slot < 0 ? acc_t(tail_prob) : acc_t(row[slot]),
                                          class_precision, t_off, dig_a0, dig_b0, grad_shift, inv_beta0);
            });
        return (sum + s.loss_shift) * s.inv_beta0;
      });
}

// Ensemble KL (ensemble_kl_class): pi^_j = the listed mean probability, or tau / (V - k) for a tail class.
template <bool kSimd, typename student_t, typename teacher_t, typename acc_t>
void ensemble_kl_rows(const LossProblem& p, const TopKArgs<student_t, teacher_t, acc_t>& a, acc_t grad_scale) {
  auto no_scratch = [] { return 0; };
  for_each_listed_position(
      p, a, no_scratch,
      [&](int64_t n, int&, const ListedClasses& listed, const student_t* z, const teacher_t* row, student_t* g) {
        acc_t z_max, z_log_sum;
        if constexpr (kSimd) {
          cpu::member_normalizers(z, 1, a.vocab, 1.f, &z_max, &z_log_sum);
        } else {
          math::OnlineLogSumExp<acc_t, double> lse;
          for (int64_t j = 0; j < a.vocab; ++j) lse.push(acc_t(z[j]));
          z_max = lse.max;
          z_log_sum = acc_t(std::log(lse.sum));
        }
        const acc_t tail_prob = acc_t(math::tail_class_mean_prob(a.tail[n], a.vocab, a.k));
        const acc_t tail_log_prob = math::log_(tail_prob);
        const VecF vz_max = VecF(float(z_max)), vz_log_sum = VecF(float(z_log_sum));
        const VecF vtail = VecF(float(tail_prob)), vtail_log = VecF(float(tail_log_prob));
        return class_pass<kSimd, student_t, acc_t>(
            listed, a.vocab, g, grad_scale,
            [&](int64_t j, VecF& l, VecF& dz) {
              cpu::ensemble_kl_block(cpu::load_float(z + j), vz_max, vz_log_sum, vtail, vtail_log, l, dz);
            },
            [&](int64_t j, int64_t slot) {
              const acc_t mean_prob = slot < 0 ? tail_prob : acc_t(row[slot]);
              const acc_t log_mean_prob = slot < 0 ? tail_log_prob : math::log_(mean_prob);
              return math::ensemble_kl_class(acc_t(z[j]), z_max, z_log_sum, mean_prob, log_mean_prob);
            });
      });
}

// Calls f(args, grad_scale) for the problem's dtypes with the kernels' compute type: float when neither input is
// float64 (kFloat below: the SIMD kernels' float32 math).
template <typename F>
void dispatch(const LossProblem& p, const TopKTarget& t, F&& f) {
  dispatch_student_teacher(p.student.scalar_type(), t.values.scalar_type(), [&](auto s, auto tt) {
    using student_t = typename decltype(s)::type;
    using teacher_t = typename decltype(tt)::type;
    using acc_t = loss_acc_t<student_t, teacher_t>;
    f(topk_args<student_t, teacher_t, acc_t>(p, t), acc_t(p.grad_scale));
  });
}

template <typename Args>
constexpr bool kFloat = std::is_same_v<typename std::decay_t<Args>::acc_type, float>;

void topk_dirichlet_nll(const LossProblem& p, const TopKTarget& t, double model_offset) {
  dispatch(p, t, [&](const auto& a, auto grad_scale) {
    if constexpr (kFloat<decltype(a)>) {
      if (model_offset >= cpu::kMinSimdModelOffset) return dirichlet_nll_rows<true>(p, a, grad_scale, model_offset);
    }
    dirichlet_nll_rows<false>(p, a, grad_scale, model_offset);
  });
}

void topk_proxy_kl(const LossProblem& p, const TopKTarget& t, const ProxyOptions& o) {
  dispatch(p, t, [&](const auto& a, auto grad_scale) {
    using math::ProxyMode;
    if constexpr (kFloat<decltype(a)>) {
      if (o.model_offset >= cpu::kMinSimdModelOffset) {
        if (o.mode == ProxyMode::kReverse) return proxy_kl_rows<true, ProxyMode::kReverse>(p, a, grad_scale, o);
        if (o.mode == ProxyMode::kForward) return proxy_kl_rows<true, ProxyMode::kForward>(p, a, grad_scale, o);
        return proxy_kl_rows<true, ProxyMode::kReferenceCompat>(p, a, grad_scale, o);
      }
    }
    proxy_kl_rows<false, ProxyMode::kReverse>(p, a, grad_scale, o);  // the scalar kernel reads the mode from o
  });
}

void topk_ensemble_kl(const LossProblem& p, const TopKTarget& t) {
  dispatch(p, t, [&](const auto& a, auto grad_scale) {
    if constexpr (kFloat<decltype(a)>) {
      ensemble_kl_rows<true>(p, a, grad_scale);
    } else {
      ensemble_kl_rows<false>(p, a, grad_scale);
    }
  });
}

}  // namespace

EDD_EXT_REGISTER_CPU_KERNEL(topk_dirichlet_nll_kernel, topk_dirichlet_nll);
EDD_EXT_REGISTER_CPU_KERNEL(topk_proxy_kl_kernel, topk_proxy_kl);
EDD_EXT_REGISTER_CPU_KERNEL(topk_ensemble_kl_kernel, topk_ensemble_kl);

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace edd_ext
