// Block-wide selection of the k largest values of a row (blockDim.x a multiple of 32, <= 1024), for the top-k
// statistics kernel: a radix select of the k-th largest key, an ordered compaction of the selected classes and a
// bitonic sort of them, all in the listing order of edd_ext/topk_math.h (larger key first, ties: smaller class).
//
// Keys: a mean probability's selection_key (itself when positive, else 0) as its IEEE bit pattern, which orders
// non-negative floats as their values: uint32 for float, uint64 for double.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "edd_ext/cuda/block_reduce.cuh"

namespace edd_ext {
namespace cuda {

template <typename T>
struct SelectionKey;

template <>
struct SelectionKey<float> {
  using type = uint32_t;
  static constexpr int kBits = 32;
  static __device__ __forceinline__ type of(float p) { return p > 0.f ? __float_as_uint(p) : 0u; }
};

template <>
struct SelectionKey<double> {
  using type = unsigned long long;
  static constexpr int kBits = 64;
  static __device__ __forceinline__ type of(double p) {
    return p > 0.0 ? static_cast<type>(__double_as_longlong(p)) : 0ull;
  }
};

template <typename K>
__device__ __forceinline__ bool key_before(K ka, int32_t a, K kb, int32_t b) {
  return ka > kb || (ka == kb && a < b);
}

// Shared memory of the selection (besides the sort arrays, which the caller sizes).
struct SelectScratch {
  int hist[256];
  int warp_counts[kMaxWarps];
  int digit, remaining;
};

// Over the block, in thread order: this thread's number of set flags before it, and the block's total.
__device__ __forceinline__ int block_exclusive_count(bool flag, int* warp_counts, int* total) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int warps = (blockDim.x + kWarpSize - 1) / kWarpSize;
  const unsigned ballot = __ballot_sync(0xffffffffu, flag);
  __syncthreads();  // warp_counts may still be read by a previous count
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  int before = 0, sum = 0;
  for (int w = 0; w < warps; ++w) {
    const int c = warp_counts[w];
    if (w < warp) before += c;
    sum += c;
  }
  *total = sum;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// The k-th largest key of row[0, vocab) (1 <= k <= vocab) by a most-significant-digit radix select, 8 bits per
// pass: each pass histograms the keys that share the digits fixed so far and fixes the digit where the count
// from the top reaches k. Returns the key; *equal_to_take = how many classes with exactly that key belong to
// the k largest (the others above it all do). Every thread must call it; all receive the results.
template <typename T>
__device__ typename SelectionKey<T>::type block_kth_largest_key(const T* __restrict__ row, int64_t vocab, int k,
                                                                SelectScratch& s, int* equal_to_take) {
  using K = typename SelectionKey<T>::type;
  K prefix = 0, fixed = 0;
  int remaining = k;
  for (int shift = SelectionKey<T>::kBits - 8; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
    __syncthreads();
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const K key = SelectionKey<T>::of(row[j]);
      if ((key & fixed) == prefix) atomicAdd(&s.hist[int((key >> shift) & K(255))], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0, b = 255;
      for (; b > 0 && above + s.hist[b] < remaining; --b) above += s.hist[b];
      s.digit = b;
      s.remaining = remaining - above;
    }
    __syncthreads();
    prefix |= K(s.digit) << shift;
    fixed |= K(255) << shift;
    remaining = s.remaining;
  }
  *equal_to_take = remaining;
  return prefix;
}

// Writes the k largest classes of row[0, vocab) (keys above `kth`, then the first `equal_to_take` classes whose
// key equals it, in class order) into keys[0, k) and classes[0, k), unordered. Every thread must call it.
template <typename T>
__device__ void block_gather_selected(const T* __restrict__ row, int64_t vocab, int k,
                                      typename SelectionKey<T>::type kth, int equal_to_take, SelectScratch& s,
                                      typename SelectionKey<T>::type* keys, int32_t* classes) {
  using K = typename SelectionKey<T>::type;
  int taken = 0, equal_seen = 0;
  for (int64_t start = 0; start < vocab && taken < k; start += blockDim.x) {
    const int64_t j = start + threadIdx.x;
    const K key = j < vocab ? SelectionKey<T>::of(row[j]) : K(0);
    const bool equal = j < vocab && key == kth;
    int equal_total = 0, take_total = 0;
    const int equal_rank = block_exclusive_count(equal, s.warp_counts, &equal_total);
    const bool take = j < vocab && (key > kth || (equal && equal_seen + equal_rank < equal_to_take));
    const int slot = taken + block_exclusive_count(take, s.warp_counts, &take_total);
    if (take) {
      keys[slot] = key;
      classes[slot] = int32_t(j);
    }
    taken += take_total;
    equal_seen += equal_total;
  }
  __syncthreads();
}

// Sorts keys/classes[0, size) (size a power of two >= k; entries [k, size) are filled with padding that sorts
// last) into the listing order with a bitonic network. Every thread must call it.
template <typename K>
__device__ void block_sort_listed(K* keys, int32_t* classes, int k, int size) {
  for (int i = k + threadIdx.x; i < size; i += blockDim.x) {
    keys[i] = K(0);
    classes[i] = INT32_MAX;
  }
  __syncthreads();
  for (int width = 2; width <= size; width <<= 1) {
    for (int stride = width >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < size; i += blockDim.x) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool listing_order = (i & width) == 0;  // this half is sorted in the listing order
        if (key_before(keys[j], classes[j], keys[i], classes[i]) == listing_order) {
          const K tk = keys[i];
          keys[i] = keys[j];
          keys[j] = tk;
          const int32_t tc = classes[i];
          classes[i] = classes[j];
          classes[j] = tc;
        }
      }
      __syncthreads();
    }
  }
}

}  // namespace cuda
}  // namespace edd_ext
