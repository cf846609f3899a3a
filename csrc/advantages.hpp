// Advantage statistics that persist across epochs.
//
// per_prompt (DDPO's PerPromptStatTracker): each prompt id owns a window of its last `window`
// rewards. For a call with rewards r over prompts p, each prompt's rewards in this call are first
// appended to its window (oldest dropped); then if that window holds fewer than `min_count` rewards,
// the prompt's samples are normalised with the mean/std of *all* rewards of this call ("batch
// statistics"), otherwise with the mean/std of its window. A = (r - mean) / (std + eps).
// group: the samples of one prompt within this call form a group (exactly `group_size` of them when
// group_size > 0); A = (r - mean_group) / (std_group + eps). No state is kept.
// group_batch: the same groups and group means, but one scale for the whole call: A = c / (std_c + eps) with
// c = r - mean_group and std_c the std of every c of the call. No state is kept.
// Both: population std (divide by n), eps = 1e-6, computed in double, clipped to [-clip, clip].
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <vector>

namespace cxrl {

class AdvantageStats {
 public:
  enum Mode { kPerPrompt = 0, kGroup = 1, kGroupBatch = 2 };
  AdvantageStats(int mode, int64_t window, int64_t min_count, int64_t group_size, double clip, double eps);

  // keys/rewards of length n -> advantages (float32) of length n. Throws std::invalid_argument for a
  // non-finite reward (naming its index) or a group of the wrong size (naming its key).
  std::vector<float> compute(const int64_t* keys, const double* rewards, int64_t n);

  // State: the windows, flattened in ascending key order (deterministic files).
  void export_state(std::vector<int64_t>& keys, std::vector<int64_t>& counts, std::vector<double>& values) const;
  void import_state(const std::vector<int64_t>& keys, const std::vector<int64_t>& counts, const std::vector<double>& values);
  void clear() { windows_.clear(); }
  int64_t num_keys() const { return static_cast<int64_t>(windows_.size()); }

 private:
  int mode_;
  int64_t window_, min_count_, group_size_;
  double clip_, eps_;
  std::map<int64_t, std::deque<double>> windows_;
};

}  // namespace cxrl
