"""Minibatch plans: the DDPO training order of one epoch, and the minibatch a gather returns.

:func:`reference_plan` is the specification of ``cxrl._C.build_plan``: the same seed gives the same
plan bit for bit (SplitMix64 + Fisher-Yates with the constants of csrc/common.hpp).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

MASK64 = (1 << 64) - 1
# Minibatch fields that hold gathered data (moved between devices); sample_idx/step_idx stay with the plan
DATA_FIELDS = ("x_t", "x_prev", "timesteps", "log_probs", "advantages", "prompt_ids")


def _splitmix64(state: int) -> tuple[int, int]:
    """One SplitMix64 step: returns (new_state, output). Same constants as csrc/common.hpp."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class _Rng:
    def __init__(self, seed: int):
        self.state = seed

    def bounded(self, n: int) -> int:
        """Integer in [0, n): multiply-shift of the top 32 bits, as the C++ does."""
        self.state, out = _splitmix64(self.state)
        return ((out >> 32) * n) >> 32

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.bounded(i + 1)
            items[i], items[j] = items[j], items[i]


def num_trained_steps(num_steps: int, timestep_fraction: float) -> int:
    """``ceil(T * fraction)``, immune to float noise (0.3 * 50 is 15.000000000000002, not 16 steps)."""
    if not isinstance(timestep_fraction, (int, float)) or not 0.0 < timestep_fraction <= 1.0:
        raise ValueError(f"timestep_fraction must be in (0, 1], got {timestep_fraction!r}")
    return max(1, min(num_steps, math.ceil(round(num_steps * timestep_fraction, 9))))


def reference_plan(num_samples: int, num_steps: int, batch_size: int, trained_steps: int, seed: int):
    """(sample_idx, step_idx, offsets) as int64 tensors; the spec of ``cxrl._C.build_plan``.

    One SplitMix64 stream: shuffle the samples, then per shuffled position a permutation of the T
    steps whose first ``trained_steps`` are trained. Sample batches outer, trained-step column inner.
    """
    rng = _Rng(seed)
    order = list(range(num_samples))
    rng.shuffle(order)
    steps = []
    for _ in range(num_samples):
        perm = list(range(num_steps))
        rng.shuffle(perm)
        steps.append(perm[:trained_steps])
    sample_idx, step_idx, offsets = [], [], [0]
    for b0 in range(0, num_samples, batch_size):
        positions = range(b0, min(num_samples, b0 + batch_size))
        for j in range(trained_steps):
            sample_idx += [order[p] for p in positions]
            step_idx += [steps[p][j] for p in positions]
            offsets.append(len(sample_idx))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return as_long(sample_idx), as_long(step_idx), as_long(offsets)


@dataclass(frozen=True)
class MinibatchPlan:
    """Training order for one epoch: minibatch m is entries ``offsets[m]:offsets[m+1]`` (CPU int64)."""

    sample_idx: torch.Tensor
    step_idx: torch.Tensor
    offsets: torch.Tensor
    num_samples: int
    num_steps: int
    batch_size: int
    trained_steps: int
    timestep_fraction: float
    seed: int

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def bounds(self, m: int) -> tuple[int, int]:
        if not 0 <= m < len(self):
            raise IndexError(f"minibatch {m} is outside the plan's {len(self)} minibatches")
        return int(self.offsets[m]), int(self.offsets[m + 1])


@dataclass
class Minibatch:
    """One gathered minibatch. From the C++ store the tensors live in a staging buffer that the next
    minibatch overwrites: ``.clone()`` (or move to the GPU) what must outlive the loop iteration."""

    x_t: torch.Tensor  # [B, *latent_shape]
    x_prev: torch.Tensor  # [B, *latent_shape]
    timesteps: torch.Tensor  # int64 [B]
    log_probs: torch.Tensor  # float32 [B]: log-prob under the rollout policy
    advantages: torch.Tensor  # float32 [B]
    prompt_ids: torch.Tensor  # int64 [B]
    sample_idx: torch.Tensor  # int64 [B], CPU (a slice of the plan)
    step_idx: torch.Tensor  # int64 [B], CPU (a slice of the plan)

    def map_data(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Minibatch:
        """A minibatch with ``fn`` applied to each data tensor; ``sample_idx``/``step_idx`` are kept."""
        return Minibatch(**{k: fn(getattr(self, k)) for k in DATA_FIELDS},
                         sample_idx=self.sample_idx, step_idx=self.step_idx)

    def to(self, device: torch.device, non_blocking: bool = False) -> Minibatch:
        """The data tensors moved to ``device``; the plan's indices stay on the CPU."""
        return self.map_data(lambda t: t.to(device, non_blocking=non_blocking))


def make_plan(store, batch_size: int, timestep_fraction: float, seed: int, builder,
              steps: tuple[int, int] | None = None) -> MinibatchPlan:
    """Validate plan arguments and wrap a builder's (sample_idx, step_idx, offsets) in a MinibatchPlan.

    ``steps=(first, end)`` trains only DDIM steps ``first <= j < end`` (the fraction applies to that window):
    the builder plans over ``end - first`` steps and its step indices are shifted by ``first``, so the window's
    plans are the full-range plans of a shorter trajectory, C++ and reference alike."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"plan: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MASK64:
        raise ValueError(f"plan: seed must be an int in [0, 2**64), got {seed!r}")
    first, end = check_step_window(steps, store.num_steps)
    trained = num_trained_steps(end - first, timestep_fraction)
    s, j, o = builder(store.num_samples, end - first, batch_size, trained, seed)
    j = torch.as_tensor(j)
    if first:
        j = j + first
    return MinibatchPlan(torch.as_tensor(s), j, torch.as_tensor(o), store.num_samples,
                         store.num_steps, batch_size, trained, float(timestep_fraction), seed)


def check_step_window(steps: tuple[int, int] | None, num_steps: int) -> tuple[int, int]:
    """``(first, end)`` of the trained-step window, checked against a trajectory of ``num_steps`` steps."""
    if steps is None:
        return 0, num_steps
    first, end = steps
    if not (isinstance(first, int) and isinstance(end, int)) or not 0 <= first < end <= num_steps:
        raise ValueError(f"plan: the trained steps [{first}, {end}) must be a non-empty range inside the "
                         f"trajectory's {num_steps} steps")
    return first, end
