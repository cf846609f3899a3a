#include "plan.hpp"

#include <numeric>
#include <stdexcept>
#include <string>

#include "common.hpp"

namespace cxrl {

Plan build_plan(int64_t n, int64_t t, int64_t batch_size, int64_t trained, uint64_t seed) {
  if (n < 1) throw std::invalid_argument("plan: num_samples must be >= 1, got " + std::to_string(n));
  if (t < 1 || t >= (int64_t(1) << 32)) throw std::invalid_argument("plan: num_steps must be in [1, 2^32), got " + std::to_string(t));
  if (n >= (int64_t(1) << 32)) throw std::invalid_argument("plan: num_samples must be < 2^32");
  if (batch_size < 1) throw std::invalid_argument("plan: batch_size must be >= 1, got " + std::to_string(batch_size));
  if (trained < 1 || trained > t)
    throw std::invalid_argument("plan: trained_steps must be in [1, " + std::to_string(t) + "], got " + std::to_string(trained));

  SplitMix64 rng(seed);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  rng.shuffle(order.data(), n);
  std::vector<int64_t> steps(n * trained), perm(t);
  for (int64_t pos = 0; pos < n; ++pos) {
    std::iota(perm.begin(), perm.end(), 0);
    rng.shuffle(perm.data(), t);
    std::copy(perm.begin(), perm.begin() + trained, steps.begin() + pos * trained);
  }

  Plan plan;
  plan.sample_idx.reserve(n * trained);
  plan.step_idx.reserve(n * trained);
  plan.offsets.push_back(0);
  for (int64_t b0 = 0; b0 < n; b0 += batch_size) {
    const int64_t b1 = std::min(n, b0 + batch_size);
    for (int64_t j = 0; j < trained; ++j) {
      for (int64_t pos = b0; pos < b1; ++pos) {
        plan.sample_idx.push_back(order[pos]);
        plan.step_idx.push_back(steps[pos * trained + j]);
      }
      plan.offsets.push_back(static_cast<int64_t>(plan.sample_idx.size()));
    }
  }
  return plan;
}

}  // namespace cxrl
