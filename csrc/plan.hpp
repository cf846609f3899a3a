// DDPO-style minibatch plans over a store of N samples x T steps.
#pragma once

#include <cstdint>
#include <vector>

namespace cxrl {

struct Plan {
  std::vector<int64_t> sample_idx;  // [N * trained_steps], in training order
  std::vector<int64_t> step_idx;    // same length: step j means (x_t, x_prev) = latents[s, j], latents[s, j+1]
  std::vector<int64_t> offsets;     // [num_minibatches + 1]: minibatch m is entries [offsets[m], offsets[m+1])
};

// One SplitMix64 stream seeded with `seed`: first a Fisher-Yates shuffle of the N samples, then, for
// each sample position in the shuffled order, a Fisher-Yates permutation of [0, T) whose first
// `trained_steps` entries are trained. Minibatches iterate sample batches of `batch_size` (the last
// may be smaller) outer and the trained-step column inner, so one sample batch yields `trained_steps`
// consecutive minibatches (the trainer accumulates gradients across them).
Plan build_plan(int64_t num_samples, int64_t num_steps, int64_t batch_size, int64_t trained_steps, uint64_t seed);

}  // namespace cxrl
