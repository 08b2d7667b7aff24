// Run-time choice of the CPU kernels' instruction set (the idea of ATen's DispatchStub and CPU_CAPABILITY).
//
// The vectorised kernels (csrc/cpu/simd/*.cpp) are compiled once per capability: "default" (the x86-64 baseline,
// or whatever the target's plain build is), "avx2" (AVX2 + FMA + F16C) and "avx512" (AVX-512 F/BW/VL/DQ), the
// last two on x86-64 only. Each build of a kernel registers itself in that kernel's table (Kernel<Fn>,
// EDD_EXT_REGISTER_CPU_KERNEL), and the op code, compiled once, calls the table's get(): the version of the
// capability chosen when the extension loads, which is the best one the CPU supports and the build has, or
// the one EDD_EXT_CPU_CAPABILITY=default|avx2|avx512 asks for when that is not above it (a request above it
// falls back to the best available, with a note that the Python layer raises as a warning). So one build runs
// on any x86-64 CPU and uses the widest vectors it has.
//
// Header-only declarations with no torch dependency: included by the per-capability kernels as well.
#pragma once

#include <cstdint>
#include <string>

namespace edd_ext {
namespace cpu {

enum class Capability : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr int kNumCapabilities = 3;

// "default", "avx2", "avx512".
const char* capability_name(Capability c);

struct CapabilityChoice {
  Capability chosen = Capability::kDefault;
  std::string note;  // why the requested capability is not the one chosen; empty when it is (or none was asked for)
};

// The rule, without side effects: `requested` (the variable's value, nullptr or "" when unset; case-insensitive)
// if it names a capability not above min(supported, built); otherwise that minimum, with a note.
CapabilityChoice choose_capability(const char* requested, Capability supported, Capability built);

// The best capability this CPU (and its operating system) supports.
Capability supported_capability();

// The best capability with a registered kernel in this build.
Capability built_capability();

// The choice for this process, made once (at the first call: the extension module makes it when it loads)
// from EDD_EXT_CPU_CAPABILITY, the CPU and the build.
const CapabilityChoice& capability_choice();

inline Capability capability() { return capability_choice().chosen; }

// ---- kernel tables ----

// Bookkeeping of the tables (capability.cpp): which capabilities registered kernels, and, for the tests, how
// many kernel calls each capability's versions have served (one relaxed atomic add per op call).
void note_registered(Capability c);
void count_dispatch(Capability c);
int64_t dispatch_count(Capability c);

// One kernel compiled once per capability. Constant-initialised (all empty), so registrations made by static
// initialisers of other translation units always find it ready.
template <typename Fn>
class Kernel {
 public:
  constexpr Kernel() = default;

  void set(Capability c, Fn* fn) {
    versions_[int(c)] = fn;
    note_registered(c);
  }

  // The version of the running capability: the best registered one not above it (every kernel has a
  // "default" version, so this never comes back empty in a complete build).
  Fn* get() const {
    for (int c = int(capability()); c >= 0; --c) {
      if (versions_[c] != nullptr) {
        count_dispatch(Capability(c));
        return versions_[c];
      }
    }
    return nullptr;
  }

 private:
  Fn* versions_[kNumCapabilities] = {};
};

// The capability of the translation unit being compiled: the per-capability kernel sources are built with
// CPU_CAPABILITY_AVX512 or CPU_CAPABILITY_AVX2 defined for the vector builds (as ATen's are).
#if defined(CPU_CAPABILITY_AVX512)
constexpr Capability kCompiledCapability = Capability::kAvx512;
#elif defined(CPU_CAPABILITY_AVX2)
constexpr Capability kCompiledCapability = Capability::kAvx2;
#else
constexpr Capability kCompiledCapability = Capability::kDefault;
#endif

// Opens the per-capability inline namespace in the kernel sources (CPU_CAPABILITY defined) and nothing in the
// code compiled once: for headers of inline functions and templates that both instantiate, so that the kernel
// builds' copies never merge with the baseline one at link time.
#if defined(CPU_CAPABILITY)
#define EDD_EXT_CPU_CAPABILITY_NAMESPACE_BEGIN inline namespace CPU_CAPABILITY {
#define EDD_EXT_CPU_CAPABILITY_NAMESPACE_END }
#else
#define EDD_EXT_CPU_CAPABILITY_NAMESPACE_BEGIN
#define EDD_EXT_CPU_CAPABILITY_NAMESPACE_END
#endif

#define EDD_EXT_CPU_CONCAT_(a, b) a##b
#define EDD_EXT_CPU_CONCAT(a, b) EDD_EXT_CPU_CONCAT_(a, b)

// In a per-capability kernel source: registers `fn` as this capability's version of the table `kernel` (a
// Kernel<Fn> declared in edd_ext/cpu/kernels.h).
#define EDD_EXT_REGISTER_CPU_KERNEL(kernel, fn)                                                        \
  static const bool EDD_EXT_CPU_CONCAT(edd_ext_registered_, kernel) =                                  \
      (::edd_ext::cpu::kernel.set(::edd_ext::cpu::kCompiledCapability, &(fn)), true)

}  // namespace cpu
}  // namespace edd_ext
