#include "arena.hpp"

#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

#include "common.hpp"

namespace cxrl {
namespace {

constexpr size_t kPage = 4096;  // page alignment: cudaHostRegister pins whole pages
constexpr uint64_t kSectionAlign = 64;

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

uint64_t checked_mul(uint64_t a, uint64_t b, const char* what) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a)
    throw std::invalid_argument(std::string("trajectory arena too large: ") + what + " overflows 64 bits");
  return a * b;
}

}  // namespace

int64_t itemsize_of(uint32_t code) {
  switch (code) {
    case kFloat32: return 4;
    case kFloat16: return 2;
    case kBFloat16: return 2;
    case kFloat64: return 8;
    default: throw std::invalid_argument("unknown latent dtype code " + std::to_string(code) + " (1=f32, 2=f16, 3=bf16, 4=f64)");
  }
}

TrajectoryArena::TrajectoryArena(int64_t num_samples, int64_t num_steps, std::vector<int64_t> latent_shape,
                                 int64_t num_rewards, uint32_t dtype_code)
    : n_(num_samples), t_(num_steps), k_(num_rewards), e_(1), itemsize_(itemsize_of(dtype_code)),
      dtype_(dtype_code), shape_(std::move(latent_shape)) {
  if (n_ < 1) throw std::invalid_argument("num_samples must be >= 1, got " + std::to_string(n_));
  if (t_ < 1) throw std::invalid_argument("num_steps must be >= 1, got " + std::to_string(t_));
  if (k_ < 1) throw std::invalid_argument("num_rewards must be >= 1, got " + std::to_string(k_));
  if (shape_.empty() || shape_.size() > 8)
    throw std::invalid_argument("latent_shape must have 1 to 8 dimensions, got " + std::to_string(shape_.size()));
  for (size_t i = 0; i < shape_.size(); ++i) {
    if (shape_[i] < 1)
      throw std::invalid_argument("latent_shape[" + std::to_string(i) + "] must be >= 1, got " + std::to_string(shape_[i]));
    e_ = static_cast<int64_t>(checked_mul(e_, shape_[i], "latent_shape"));
  }
  uint64_t nt = checked_mul(n_, t_, "num_samples * num_steps");
  uint64_t lat = checked_mul(checked_mul(checked_mul(n_, t_ + 1, "latents"), e_, "latents"), itemsize_, "latents");
  off_logp_ = align_up(lat, kSectionAlign);
  off_t_ = align_up(off_logp_ + checked_mul(nt, 4, "log_probs"), kSectionAlign);
  off_pid_ = align_up(off_t_ + checked_mul(nt, 8, "timesteps"), kSectionAlign);
  off_rew_ = align_up(off_pid_ + checked_mul(n_, 8, "prompt_ids"), kSectionAlign);
  off_adv_ = align_up(off_rew_ + checked_mul(checked_mul(n_, k_, "rewards"), 4, "rewards"), kSectionAlign);
  total_ = align_up(off_adv_ + checked_mul(n_, 4, "advantages"), kPage);
  try {
    base_ = static_cast<unsigned char*>(::operator new(total_, std::align_val_t(kPage)));
  } catch (const std::bad_alloc&) {
    throw std::runtime_error("cannot allocate the trajectory arena: " + std::to_string(total_) + " bytes");
  }
  // Zero so unwritten slots read as zeros rather than stale heap bytes; also faults every page in
  // now, so peak memory is known at construction instead of growing during the epoch.
  std::memset(base_, 0, total_);
}

TrajectoryArena::~TrajectoryArena() { ::operator delete(base_, std::align_val_t(kPage)); }

std::vector<Section> TrajectoryArena::sections() const {
  const uint64_t nt = static_cast<uint64_t>(n_) * t_;
  return {
      {"latents", latents(), static_cast<uint64_t>(n_) * (t_ + 1) * e_ * itemsize_},
      {"log_probs", base_ + off_logp_, nt * 4},
      {"timesteps", base_ + off_t_, nt * 8},
      {"prompt_ids", base_ + off_pid_, static_cast<uint64_t>(n_) * 8},
      {"rewards", base_ + off_rew_, static_cast<uint64_t>(n_) * k_ * 4},
      {"advantages", base_ + off_adv_, static_cast<uint64_t>(n_) * 4},
  };
}

void TrajectoryArena::check_rows(const char* what, int64_t start, int64_t count) const {
  if (start < 0 || count < 0 || start > n_ || count > n_ - start)
    throw std::out_of_range(std::string(what) + ": rows [" + std::to_string(start) + ", " +
                            std::to_string(start + count) + ") are outside the store's capacity of " +
                            std::to_string(n_) + " samples");
}

void TrajectoryArena::write_latents(int64_t start, int64_t count, int64_t slot, const unsigned char* src,
                                    int threads) {
  check_rows("write latents", start, count);
  if (slot < 0 || slot > t_)
    throw std::out_of_range("latent slot " + std::to_string(slot) + " is outside [0, " + std::to_string(t_) + "]");
  const int64_t row = latent_bytes();
  const int64_t stride = (t_ + 1) * row;
  unsigned char* dst = latents() + start * stride + slot * row;
  parallel_for(count, count * row >= kParallelCopyBytes ? threads : 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memcpy(dst + i * stride, src + i * row, row);
  });
}

void TrajectoryArena::write_step_scalars(int64_t start, int64_t count, int64_t step, const float* log_prob,
                                         const int64_t* timestep) {
  check_rows("write step", start, count);
  if (step < 0 || step >= t_)
    throw std::out_of_range("step " + std::to_string(step) + " is outside [0, " + std::to_string(t_) + ")");
  for (int64_t i = 0; i < count; ++i) {
    log_probs()[(start + i) * t_ + step] = log_prob[i];
    timesteps()[(start + i) * t_ + step] = timestep[i];
  }
}

void TrajectoryArena::write_prompt_ids(int64_t start, int64_t count, const int64_t* ids) {
  check_rows("write prompt ids", start, count);
  std::memcpy(prompt_ids() + start, ids, count * sizeof(int64_t));
}

void TrajectoryArena::write_rewards(int64_t start, int64_t count, const float* r) {
  check_rows("write rewards", start, count);
  std::memcpy(rewards() + start * k_, r, count * k_ * sizeof(float));
}

void TrajectoryArena::write_advantages(int64_t start, int64_t count, const float* a) {
  check_rows("write advantages", start, count);
  std::memcpy(advantages() + start, a, count * sizeof(float));
}

void TrajectoryArena::check_indices(const int64_t* samples, const int64_t* steps, int64_t count) const {
  for (int64_t i = 0; i < count; ++i) {
    if (samples[i] < 0 || samples[i] >= n_ || steps[i] < 0 || steps[i] >= t_)
      throw std::out_of_range("plan entry " + std::to_string(i) + " = (sample " + std::to_string(samples[i]) +
                              ", step " + std::to_string(steps[i]) + ") is outside the store's [0, " +
                              std::to_string(n_) + ") x [0, " + std::to_string(t_) + ")");
  }
}

void TrajectoryArena::gather(const int64_t* samples, const int64_t* steps, int64_t count, unsigned char* x_t,
                             unsigned char* x_prev, int64_t* t_out, float* logp_out, float* adv_out,
                             int64_t* pid_out, int threads) const {
  const int64_t row = latent_bytes();
  const int64_t stride = (t_ + 1) * row;
  const unsigned char* lat = latents();
  // x_t and x_prev are adjacent in the arena (slots t and t+1), so each row is one read stream.
  parallel_for(count, 2 * count * row >= kParallelCopyBytes ? threads : 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const unsigned char* src = lat + samples[i] * stride + steps[i] * row;
      std::memcpy(x_t + i * row, src, row);
      std::memcpy(x_prev + i * row, src + row, row);
    }
  });
  for (int64_t i = 0; i < count; ++i) {
    const int64_t s = samples[i], j = s * t_ + steps[i];
    t_out[i] = timesteps()[j];
    logp_out[i] = log_probs()[j];
    adv_out[i] = advantages()[s];
    pid_out[i] = prompt_ids()[s];
  }
}

}  // namespace cxrl
