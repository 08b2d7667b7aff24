// The CPU capability of this process (edd_ext/cpu/capability.h): what the CPU supports, what the build has,
// what EDD_EXT_CPU_CAPABILITY asks for; the kernel tables (edd_ext/cpu/kernels.h) and their bookkeeping.
// Compiled once, for the baseline: nothing here may need more than the CPU it runs on.
#include "edd_ext/cpu/capability.h"

#include "edd_ext/cpu/kernels.h"

#include <atomic>
#include <cctype>
#include <cstdlib>
#include <string>

namespace edd_ext {
namespace cpu {
namespace {

std::atomic<int> registered_mask{0};
std::atomic<int64_t> dispatch_counts[kNumCapabilities] = {};

const char* const kNames[kNumCapabilities] = {"default", "avx2", "avx512"};

std::string lower(const char* s) {
  std::string out(s);
  for (char& ch : out) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  return out;
}

Capability lesser(Capability a, Capability b) { return int(a) < int(b) ? a : b; }

}  // namespace

const char* capability_name(Capability c) { return kNames[int(c)]; }

CapabilityChoice choose_capability(const char* requested, Capability supported, Capability built) {
  const Capability best = lesser(supported, built);
  CapabilityChoice choice;
  choice.chosen = best;
  if (requested == nullptr || requested[0] == '\0') return choice;
  const std::string name = lower(requested);
  for (int c = 0; c < kNumCapabilities; ++c) {
    if (name != kNames[c]) continue;
    if (c <= int(best)) {
      choice.chosen = Capability(c);
    } else {
      const bool cpu_lacks = c > int(supported);
      choice.note = std::string("EDD_EXT_CPU_CAPABILITY=") + requested + " asks for " + kNames[c] +
                    (cpu_lacks ? ", which this CPU does not support" : ", which this build was compiled without") +
                    "; using " + kNames[int(best)] + ", the best available";
    }
    return choice;
  }
  choice.note = std::string("EDD_EXT_CPU_CAPABILITY=") + requested +
                " is not one of default, avx2, avx512; using " + kNames[int(best)] + ", the best available";
  return choice;
}

Capability supported_capability() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports also checks that the operating system saves the wider registers (XSAVE/XCR0).
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (avx512) return Capability::kAvx512;
  if (avx2) return Capability::kAvx2;
#endif
  return Capability::kDefault;
}

Capability built_capability() {
  const int mask = registered_mask.load(std::memory_order_relaxed);
  for (int c = kNumCapabilities - 1; c > 0; --c) {
    if (mask & (1 << c)) return Capability(c);
  }
  return Capability::kDefault;
}

const CapabilityChoice& capability_choice() {
  static const CapabilityChoice choice =
      choose_capability(std::getenv("EDD_EXT_CPU_CAPABILITY"), supported_capability(), built_capability());
  return choice;
}

void note_registered(Capability c) { registered_mask.fetch_or(1 << int(c), std::memory_order_relaxed); }

void count_dispatch(Capability c) { dispatch_counts[int(c)].fetch_add(1, std::memory_order_relaxed); }

int64_t dispatch_count(Capability c) { return dispatch_counts[int(c)].load(std::memory_order_relaxed); }

// The tables, filled by the per-capability kernel sources' static registrations.
Kernel<EnsembleKlKernel> ensemble_kl_kernel;
Kernel<DirichletNllKernel> dirichlet_nll_kernel;
Kernel<ProxyKlKernel> proxy_kl_kernel;
Kernel<LogitNllKernel> logit_nll_kernel;
Kernel<EnsembleStatsKernel> ensemble_stats_kernel;
Kernel<DirichletUncertaintyKernel> dirichlet_uncertainty_kernel;
Kernel<LogitSamplingKernel> logit_sampling_kernel;
Kernel<VectorFunctionKernel> vector_function_kernel;
Kernel<VectorThroughputKernel> vector_throughput_kernel;
Kernel<CompiledForKernel> compiled_for_kernel;

}  // namespace cpu
}  // namespace edd_ext
