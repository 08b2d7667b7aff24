// The thread-recording test hook of cpu::parallel_positions (edd_ext/cpu/parallel.h): the tests turn it on
// around a large call and check that its chunks ran on as many threads as torch.get_num_threads() allows.
#include "edd_ext/cpu/parallel.h"

#include <atomic>
#include <functional>
#include <mutex>
#include <set>
#include <thread>

namespace edd_ext {
namespace cpu {
namespace testing {
namespace {

std::atomic<bool> recording{false};
std::mutex threads_mutex;
std::set<int64_t> threads_seen;

}  // namespace

bool recording_threads() { return recording.load(std::memory_order_relaxed); }

void record_thread() {
  const int64_t id = int64_t(std::hash<std::thread::id>{}(std::this_thread::get_id()));
  std::lock_guard<std::mutex> lock(threads_mutex);
  threads_seen.insert(id);
}

std::vector<int64_t> record_threads(bool on) {
  std::lock_guard<std::mutex> lock(threads_mutex);
  std::vector<int64_t> seen(threads_seen.begin(), threads_seen.end());
  if (on) threads_seen.clear();
  recording.store(on, std::memory_order_relaxed);
  return seen;
}

}  // namespace testing
}  // namespace cpu
}  // namespace edd_ext
