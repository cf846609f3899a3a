// TrajectoryArena: one contiguous, zero-initialised, page-aligned allocation holding an epoch of
// rollouts -- latents [N, T+1, *shape] (x_T first, every latent stored once), log_probs f32 [N, T],
// timesteps i64 [N, T], prompt_ids i64 [N], rewards f32 [N, K], advantages f32 [N].
// The arena knows element sizes, not element types: fp16 and bf16 latents are both 2-byte words
// (torch views them with the right dtype), which keeps this library free of libtorch.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace cxrl {

// dtype codes shared with Python (cxrl/trajectory_reference.py: DTYPE_CODES)
enum DtypeCode : uint32_t { kFloat32 = 1, kFloat16 = 2, kBFloat16 = 3, kFloat64 = 4 };
int64_t itemsize_of(uint32_t dtype_code);  // throws std::invalid_argument on an unknown code

struct Section {
  const char* name;
  unsigned char* data;
  uint64_t nbytes;
};

class TrajectoryArena {
 public:
  TrajectoryArena(int64_t num_samples, int64_t num_steps, std::vector<int64_t> latent_shape,
                  int64_t num_rewards, uint32_t dtype_code);
  ~TrajectoryArena();
  TrajectoryArena(const TrajectoryArena&) = delete;
  TrajectoryArena& operator=(const TrajectoryArena&) = delete;

  int64_t num_samples() const { return n_; }
  int64_t num_steps() const { return t_; }
  int64_t num_rewards() const { return k_; }
  uint32_t dtype_code() const { return dtype_; }
  int64_t itemsize() const { return itemsize_; }
  const std::vector<int64_t>& latent_shape() const { return shape_; }
  int64_t latent_numel() const { return e_; }            // elements in one latent
  int64_t latent_bytes() const { return e_ * itemsize_; }  // bytes in one latent
  uint64_t nbytes() const { return total_; }
  unsigned char* base() const { return base_; }

  unsigned char* latents() const { return base_; }
  float* log_probs() const { return reinterpret_cast<float*>(base_ + off_logp_); }
  int64_t* timesteps() const { return reinterpret_cast<int64_t*>(base_ + off_t_); }
  int64_t* prompt_ids() const { return reinterpret_cast<int64_t*>(base_ + off_pid_); }
  float* rewards() const { return reinterpret_cast<float*>(base_ + off_rew_); }
  float* advantages() const { return reinterpret_cast<float*>(base_ + off_adv_); }
  std::vector<Section> sections() const;  // payload order of the file format

  // Batched writes: rows [start, start + count). Index errors throw std::out_of_range.
  void write_latents(int64_t start, int64_t count, int64_t slot, const unsigned char* src, int threads);
  void write_step_scalars(int64_t start, int64_t count, int64_t step, const float* log_prob,
                          const int64_t* timestep);
  void write_prompt_ids(int64_t start, int64_t count, const int64_t* ids);
  void write_rewards(int64_t start, int64_t count, const float* rewards);
  void write_advantages(int64_t start, int64_t count, const float* adv);

  // Throws std::out_of_range naming the first (sample, step) pair outside [0,N) x [0,T).
  void check_indices(const int64_t* samples, const int64_t* steps, int64_t count) const;
  // Copies, for i < count: x_t = latents[s_i, t_i], x_prev = latents[s_i, t_i + 1] and the scalars,
  // into caller-owned staging buffers. Indices must have been checked. Safe without the GIL.
  void gather(const int64_t* samples, const int64_t* steps, int64_t count, unsigned char* x_t,
              unsigned char* x_prev, int64_t* t_out, float* logp_out, float* adv_out, int64_t* pid_out,
              int threads) const;

  void save(const std::string& path) const;
  static std::unique_ptr<TrajectoryArena> load(const std::string& path);

 private:
  void check_rows(const char* what, int64_t start, int64_t count) const;
  int64_t n_, t_, k_, e_, itemsize_;
  uint32_t dtype_;
  std::vector<int64_t> shape_;
  uint64_t off_logp_, off_t_, off_pid_, off_rew_, off_adv_, total_;
  unsigned char* base_ = nullptr;
};

}  // namespace cxrl
