// The one parallel loop over positions of every CPU op: at::parallel_for (OpenMP threads: the build compiles and
// links with -fopenmp, without which ATen's inline parallel_for runs everything on the calling thread), plus a
// test hook that records which threads ran the chunks (off unless a test turns it on: one relaxed load per
// chunk).
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#include "edd_ext/cpu/capability.h"

namespace edd_ext {
namespace cpu {

namespace testing {
// While on, every chunk of parallel_positions records its thread (parallel.cpp).
bool recording_threads();
void record_thread();
// Turns recording on (clearing what was recorded) or off; returns the distinct threads recorded so far.
std::vector<int64_t> record_threads(bool on);
}  // namespace testing

// f(begin, end) over chunks of [0, positions), in parallel, each chunk at least `grain` positions.
template <typename F>
void parallel_positions(int64_t positions, int64_t grain, const F& f) {
  at::parallel_for(0, positions, grain, [&](int64_t begin, int64_t end) {
    if (testing::recording_threads()) testing::record_thread();
    f(begin, end);
  });
}

// A per-capability kernel (edd_ext/cpu/kernels.h) on every chunk of [0, positions), in parallel: the running
// capability's version of `kernel`, called as version(view, args..., begin, end).
template <typename Fn, typename View, typename... Args>
void run_kernel(const Kernel<Fn>& kernel, int64_t positions, int64_t grain, const View& view, const Args&... args) {
  Fn* version = kernel.get();
  parallel_positions(positions, grain, [&](int64_t begin, int64_t end) { version(view, args..., begin, end); });
}

}  // namespace cpu
}  // namespace edd_ext
