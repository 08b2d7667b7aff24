// Philox4x32-10, the counter-based generator of Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as
// easy as 1, 2, 3" (SC 2011), for host and device code alike.
//
// A call maps a 128-bit counter and a 64-bit key to 128 random bits, with no state: the logit-distribution
// uncertainty kernels (csrc/{cpu,cuda}/student_uncertainty.*) draw the noise of sample s, class k of
// position n as a pure function of (seed, n, s, k), so every pass over a row can regenerate exactly the
// numbers an earlier pass used, on either device, and no [*, S, V] sample tensor is ever stored.
//
// Counter layout used by those kernels (one call gives four samples of one class):
//   counter = (k, s / 4, n mod 2^32, n / 2^32),  key = (seed mod 2^32, seed / 2^32)  (seed as uint64)
// Output word j of that call is the noise of sample 4 * (s / 4) + j.
//
// Verified against the Random123 known-answer vectors (tests/test_philox.py).
#pragma once

#include <cstdint>

#include "edd_ext/macros.h"

// EDD_HD, and always inlined on the host too: the CPU loops that call these are compiled for several
// instruction sets (target clones), and a call out of the loop would stop its vectorisation.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define EDD_HD_INLINE EDD_HD
#elif defined(__GNUC__)
#define EDD_HD_INLINE inline __attribute__((always_inline))
#else
#define EDD_HD_INLINE inline
#endif

namespace edd_ext {
namespace philox {

constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kRounds = 10;

struct Words {
  uint32_t w0, w1, w2, w3;
};

// One Philox round: two 32x32 -> 64-bit products, their halves xor-ed with the other words and the key.
EDD_HD_INLINE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0, uint32_t k1) {
  const uint32_t hi0 = uint32_t((uint64_t(kMul0) * uint64_t(c0)) >> 32), lo0 = kMul0 * c0;
  const uint32_t hi1 = uint32_t((uint64_t(kMul1) * uint64_t(c2)) >> 32), lo1 = kMul1 * c2;
  c0 = hi1 ^ c1 ^ k0;
  c1 = lo1;
  c2 = hi0 ^ c3 ^ k1;
  c3 = lo0;
}

// Philox4x32 with 10 rounds. Written as straight-line code on scalars, so that a loop over counters
// vectorises on the CPU.
EDD_HD_INLINE Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int r = 0; r < kRounds; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
  return Words{c0, c1, c2, c3};
}

// The key and the constant counter words of one position's noise stream.
struct Stream {
  uint32_t key0, key1;  // seed
  uint32_t pos0, pos1;  // position index n

  EDD_HD_INLINE Stream(uint64_t seed, uint64_t position)
      : key0(uint32_t(seed)), key1(uint32_t(seed >> 32)), pos0(uint32_t(position)), pos1(uint32_t(position >> 32)) {}

  // The 4 x 32 random bits of samples 4 * group .. 4 * group + 3 of class k.
  EDD_HD_INLINE Words bits(uint32_t k, uint32_t group) const { return philox4x32_10(k, group, pos0, pos1, key0, key1); }
};

}  // namespace philox
}  // namespace edd_ext
