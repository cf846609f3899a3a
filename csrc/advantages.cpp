#include "advantages.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>

namespace cxrl {
namespace {

struct Moments {
  double mean, std;
};

// Two-pass mean and population std: stable for rewards with a large common offset.
template <typename It>
Moments moments(It begin, It end) {
  double n = 0, sum = 0;
  for (It it = begin; it != end; ++it, ++n) sum += *it;
  const double mean = sum / n;
  double ss = 0;
  for (It it = begin; it != end; ++it) ss += (*it - mean) * (*it - mean);
  return {mean, std::sqrt(ss / n)};
}

}  // namespace

AdvantageStats::AdvantageStats(int mode, int64_t window, int64_t min_count, int64_t group_size, double clip, double eps)
    : mode_(mode), window_(window), min_count_(min_count), group_size_(group_size), clip_(clip), eps_(eps) {
  if (mode != kPerPrompt && mode != kGroup && mode != kGroupBatch)
    throw std::invalid_argument("mode must be 0 (per_prompt), 1 (group) or 2 (group_batch)");
  if (window < 1) throw std::invalid_argument("window must be >= 1, got " + std::to_string(window));
  if (min_count < 1 || min_count > window)
    throw std::invalid_argument("min_count must be in [1, window=" + std::to_string(window) + "], got " + std::to_string(min_count));
  if (group_size < 0) throw std::invalid_argument("group_size must be >= 0 (0 = any), got " + std::to_string(group_size));
  if (!(clip > 0)) throw std::invalid_argument("clip must be > 0");
  if (!(eps > 0)) throw std::invalid_argument("eps must be > 0");
}

std::vector<float> AdvantageStats::compute(const int64_t* keys, const double* rewards, int64_t n) {
  if (n < 1) throw std::invalid_argument("advantages: need at least one reward");
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(rewards[i]))
      throw std::invalid_argument("advantages: reward " + std::to_string(i) + " is not finite (" + std::to_string(rewards[i]) + ")");
  // members of each key in order of first appearance
  std::unordered_map<int64_t, size_t> slot;
  std::vector<int64_t> order;
  std::vector<std::vector<int64_t>> members;
  for (int64_t i = 0; i < n; ++i) {
    auto it = slot.find(keys[i]);
    if (it == slot.end()) {
      it = slot.emplace(keys[i], members.size()).first;
      order.push_back(keys[i]);
      members.emplace_back();
    }
    members[it->second].push_back(i);
  }
  std::vector<float> out(n);
  if (mode_ != kPerPrompt && group_size_ > 0)
    for (size_t g = 0; g < order.size(); ++g)
      if (static_cast<int64_t>(members[g].size()) != group_size_)
        throw std::invalid_argument("advantages: prompt id " + std::to_string(order[g]) + " has " + std::to_string(members[g].size()) +
                                    " samples in this batch; group mode needs exactly group_size=" + std::to_string(group_size_));
  if (mode_ == kGroupBatch) {
    // centre each group on its mean, then one scale: the std of all centred rewards (in sample order)
    std::vector<double> centred(n), values;
    for (const auto& idx : members) {
      values.clear();
      for (int64_t i : idx) values.push_back(rewards[i]);
      const double mean = moments(values.begin(), values.end()).mean;
      for (int64_t i : idx) centred[i] = rewards[i] - mean;
    }
    const double scale = moments(centred.begin(), centred.end()).std + eps_;
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::clamp(centred[i] / scale, -clip_, clip_));
    return out;
  }
  const Moments batch = moments(rewards, rewards + n);
  std::vector<double> values;
  for (size_t g = 0; g < order.size(); ++g) {
    const auto& idx = members[g];
    values.clear();
    for (int64_t i : idx) values.push_back(rewards[i]);
    Moments m;
    if (mode_ == kGroup) {
      m = moments(values.begin(), values.end());
    } else {
      auto& win = windows_[order[g]];
      for (double v : values) {
        win.push_back(v);
        if (static_cast<int64_t>(win.size()) > window_) win.pop_front();
      }
      m = static_cast<int64_t>(win.size()) < min_count_ ? batch : moments(win.begin(), win.end());
    }
    for (int64_t i : idx) {
      const double a = (rewards[i] - m.mean) / (m.std + eps_);
      out[i] = static_cast<float>(std::clamp(a, -clip_, clip_));
    }
  }
  return out;
}

void AdvantageStats::export_state(std::vector<int64_t>& keys, std::vector<int64_t>& counts, std::vector<double>& values) const {
  keys.clear();
  counts.clear();
  values.clear();
  for (const auto& kv : windows_) {
    keys.push_back(kv.first);
    counts.push_back(static_cast<int64_t>(kv.second.size()));
    values.insert(values.end(), kv.second.begin(), kv.second.end());
  }
}

void AdvantageStats::import_state(const std::vector<int64_t>& keys, const std::vector<int64_t>& counts, const std::vector<double>& values) {
  if (keys.size() != counts.size()) throw std::invalid_argument("advantage state: keys and counts differ in length");
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 0 || counts[i] > window_)
      throw std::invalid_argument("advantage state: window of key " + std::to_string(keys[i]) + " holds " +
                                  std::to_string(counts[i]) + " rewards; must be in [0, window=" + std::to_string(window_) + "]");
    total += counts[i];
  }
  if (total != static_cast<int64_t>(values.size())) throw std::invalid_argument("advantage state: counts do not sum to the number of values");
  for (double v : values)
    if (!std::isfinite(v)) throw std::invalid_argument("advantage state: a stored reward is not finite");
  std::map<int64_t, std::deque<double>> fresh;
  int64_t off = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (fresh.count(keys[i])) throw std::invalid_argument("advantage state: key " + std::to_string(keys[i]) + " appears twice");
    fresh[keys[i]] = std::deque<double>(values.begin() + off, values.begin() + off + counts[i]);
    off += counts[i];
  }
  windows_.swap(fresh);
}

}  // namespace cxrl
