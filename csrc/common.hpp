// Shared helpers for the trajectory store: error types, a tiny deterministic RNG and a parallel loop.
// The RNG and the shuffle are part of the plan specification: cxrl/trajectory_reference.py implements
// the very same arithmetic in Python, so a plan is identical whichever backend built it.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace cxrl {

// A saved file that is truncated, corrupted or not ours. Mapped to a Python ValueError subclass.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// SplitMix64 (Steele, Lea & Flood 2014): one 64-bit state, full period, passes BigCrush; trivially
// reproducible in Python with integer arithmetic masked to 64 bits.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    state_ += 0x9E3779B97F4A7C15ULL;
    uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  // Integer in [0, n) for n < 2^32 by multiply-shift of the top 32 bits (bias < n / 2^32: negligible
  // for permutations of a few thousand items, and portable without 128-bit integers).
  uint64_t bounded(uint64_t n) { return ((next() >> 32) * n) >> 32; }

  // Fisher-Yates from the back, exactly as the Python reference does it.
  template <typename T>
  void shuffle(T* data, int64_t n) {
    for (int64_t i = n - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(bounded(static_cast<uint64_t>(i + 1)));
      T tmp = data[i];
      data[i] = data[j];
      data[j] = tmp;
    }
  }

 private:
  uint64_t state_;
};

// Copies below this many bytes stay on the calling thread. Measured on a 2-vCPU VM (docs/benchmarks.md):
// a 1 MB gather took 54 us on one thread and 88 us on two (the spawn costs more than it saves), a 4 MB
// one 150 us either way (memory-bound); threads only pay off on copies well above that.
constexpr int64_t kParallelCopyBytes = int64_t(1) << 23;

// Splits [0, n) into up to `threads` contiguous chunks and runs fn(begin, end) on each; the calling
// thread takes the first chunk. Small jobs stay single-threaded: spawning costs ~20-50 us a thread.
template <typename Fn>
void parallel_for(int64_t n, int threads, Fn fn) {
  if (n <= 0) return;
  if (threads < 1) threads = 1;
  if (threads > n) threads = static_cast<int>(n);
  if (threads == 1) {
    fn(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (n + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    int64_t b = t * chunk, e = std::min<int64_t>(n, b + chunk);
    if (b >= e) break;
    pool.emplace_back([=] { fn(b, e); });
  }
  fn(int64_t{0}, std::min<int64_t>(n, chunk));
  for (auto& th : pool) th.join();
}

}  // namespace cxrl
