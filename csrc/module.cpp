// The Python extension module edd_ext._C: loading it registers every op (TORCH_LIBRARY in the other
// translation units of this library) and chooses the CPU kernels' capability. It also exposes build
// information, the capability, and the CPU kernels' test hooks (no tensors: plain pybind11).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "edd_ext/cpu/capability.h"
#include "edd_ext/cpu/kernels.h"
#include "edd_ext/cpu/parallel.h"

namespace {

namespace cpu = edd_ext::cpu;

bool cuda_built() {
#ifdef EDD_EXT_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool openmp_built() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

std::string build_info() {
  std::string info = "edd_ext C++ extension; CUDA kernels: ";
  info += cuda_built() ? "yes" : "no";
#ifdef EDD_EXT_CUDA_ARCHS
  info += "; CUDA archs: " EDD_EXT_CUDA_ARCHS;
#endif
  info += "; CPU kernels for: ";
  for (int c = 0; c <= int(cpu::built_capability()); ++c) {
    if (c) info += ", ";
    info += cpu::capability_name(cpu::Capability(c));
  }
  info += " (running: ";
  info += cpu::capability_name(cpu::capability());
  info += "); OpenMP: ";
  info += openmp_built() ? "yes" : "no";
  info += "; compiler: ";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " __VERSION__;
#endif
  return info;
}

cpu::Capability parse_capability(const std::string& name) {
  for (int c = 0; c < cpu::kNumCapabilities; ++c) {
    if (name == cpu::capability_name(cpu::Capability(c))) return cpu::Capability(c);
  }
  throw pybind11::value_error("capability: expected one of 'default', 'avx2', 'avx512', got '" + name + "'");
}

// The capabilities this process can run: from "default" up to the best the CPU supports and the build has.
std::vector<std::string> cpu_capabilities() {
  std::vector<std::string> names;
  const int best = std::min(int(cpu::supported_capability()), int(cpu::built_capability()));
  for (int c = 0; c <= best; ++c) names.push_back(cpu::capability_name(cpu::Capability(c)));
  return names;
}

std::tuple<std::string, std::string> choose_cpu_capability(const std::string& requested, const std::string& supported,
                                                           const std::string& built) {
  const cpu::CapabilityChoice c =
      cpu::choose_capability(requested.c_str(), parse_capability(supported), parse_capability(built));
  return {cpu::capability_name(c.chosen), c.note};
}

pybind11::dict compiled_for() {
  const cpu::CompiledFor c = cpu::compiled_for_kernel.get()();
  pybind11::dict d;
  d["capability"] = cpu::capability_name(c.capability);
  d["lanes"] = c.lanes;
  d["avx2"] = c.avx2;
  d["avx512"] = c.avx512;
  return d;
}

std::vector<int64_t> dispatch_counts() {
  std::vector<int64_t> counts;
  for (int c = 0; c < cpu::kNumCapabilities; ++c) counts.push_back(cpu::dispatch_count(cpu::Capability(c)));
  return counts;
}

// Evaluates the vector function `name` (a cpu::VectorFunction) `repeats` times over `values` on every thread of
// the running capability's build; returns the sum of the results (so that nothing is optimised away).
double vector_throughput(const std::string& name, const std::vector<float>& values, int64_t repeats) {
  static const char* const kNames[] = {"lgamma", "digamma", "trigamma", "exp", "log", "exp_nonpositive",
                                       "lgamma_digamma", "gamma_family"};
  int which = -1;
  for (int i = 0; i < int(cpu::VectorFunction::kCount); ++i) {
    if (name == kNames[i]) which = i;
  }
  if (which < 0) throw pybind11::value_error("name: unknown vector function '" + name + "'");
  cpu::VectorThroughputKernel* kernel = cpu::vector_throughput_kernel.get();
  std::vector<double> sums(size_t(repeats > 0 ? repeats : 0));
  {
    pybind11::gil_scoped_release release;
    cpu::parallel_positions(repeats, 1, [&](int64_t begin, int64_t end) {
      sums[size_t(begin)] = kernel(cpu::VectorFunction(which), values.data(), int64_t(values.size()), end - begin);
    });
  }
  double total = 0;
  for (double s : sums) total += s;
  return total;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "edd_ext compiled ops (registered under torch.ops.edd_ext)";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build.");
  m.def("openmp_built", &openmp_built, "True when the CPU ops run on OpenMP threads (at::parallel_for).");
  m.def("build_info", &build_info, "A one-line description of this build.");
  // The capability is chosen here, when the module loads (the Python layer warns with the note).
  cpu::capability_choice();
  m.def("cpu_capability", [] { return std::string(cpu::capability_name(cpu::capability())); },
        "The instruction set of the CPU kernels running in this process: 'default', 'avx2' or 'avx512'.");
  m.def("cpu_capability_note", [] { return cpu::capability_choice().note; },
        "Why EDD_EXT_CPU_CAPABILITY was not honoured as asked ('' when it was, or was not set).");
  m.def("cpu_capabilities", &cpu_capabilities, "The capabilities this process can run, best last.");
  // test hooks
  m.def("choose_cpu_capability", &choose_cpu_capability, "The capability rule: (requested, supported, built) -> "
        "(chosen, note).");
  m.def("cpu_kernels_compiled_for", &compiled_for, "What the running CPU kernels were compiled for.");
  m.def("cpu_dispatch_counts", &dispatch_counts, "Kernel calls served by each capability's build so far.");
  m.def("record_cpu_threads", &cpu::testing::record_threads, "Starts (True) or stops (False) recording the threads "
        "that run the CPU ops' chunks of positions; returns the distinct threads recorded so far.");
  m.def("cpu_vector_throughput", &vector_throughput, "Evaluates a vector helper over a block (benchmarks).");
}
