// The Python extension module edd_ext._C: loading it registers every op (TORCH_LIBRARY in the other
// translation units of this library). It also exposes build information.
#include <pybind11/pybind11.h>

#include <string>

namespace {

bool cuda_built() {
#ifdef EDD_EXT_WITH_CUDA
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
  info += "; compiler: ";
#if defined(__clang__)
  info += "clang " __clang_version__;
#elif defined(__GNUC__)
  info += "gcc " __VERSION__;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "edd_ext compiled ops (registered under torch.ops.edd_ext)";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled into this build.");
  m.def("build_info", &build_info, "A one-line description of this build.");
}
