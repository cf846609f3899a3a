"""Trajectory store: one epoch of write + plan + gather + advantages, side by side with two baselines.

Providers (all in one process, alternated by the harness):
* ``ddpo_list_stack`` (baseline): ddpo-pytorch's way -- per-step tensors in Python lists, ``torch.stack``
  per rollout batch, latents kept twice (``latents[:, :-1]`` and ``[:, 1:]`` concatenated), the whole
  epoch re-indexed (sample shuffle, then per-sample step permutation) before the minibatch loop.
* ``torch_indexing``: one preallocated tensor per field, ``copy_`` writes, plain advanced indexing
  ``lat[s, j]`` / ``lat[s, j + 1]`` per minibatch.
* ``cxrl``: :class:`cxrl.trajectory.TrajectoryStore` (C++ arena on the CPU; torch backend on the GPU).

Workload per epoch: N samples in rollout batches of 64, T steps; minibatches of 32 samples x every
timestep (timestep_fraction 1.0); per-prompt advantages over 32 prompts (8 samples each).
``python -m benchmarks.bench_trajectory [--size cpu|gpu]`` prints tables and appends to results/.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from .harness import CaseResult, case_main, device_for_size, time_side_by_side
from cxrl.trajectory import AdvantageTracker, TrajectoryStore

ROLLOUT_BATCH, TRAIN_BATCH, NUM_PROMPTS = 64, 32, 32


@dataclass
class Workload:
    n: int
    t: int
    shape: tuple[int, ...]
    device: str
    reps: int
    warmup: int

    def __post_init__(self):
        g = torch.Generator().manual_seed(0)
        dev = self.device
        # what a rollout hands over each step; a small pool is reused (their creation is not the store's cost)
        self.sources = [torch.randn((ROLLOUT_BATCH, *self.shape), generator=g).to(dev) for _ in range(4)]
        self.log_prob = torch.randn(ROLLOUT_BATCH, generator=g).to(dev)
        self.timesteps = torch.arange(self.t * 20, 0, -20).to(dev)  # the t of x_t at each step
        self.prompts = [f"prompt {i % NUM_PROMPTS}" for i in range(self.n)]
        self.prompt_ids = torch.tensor([i % NUM_PROMPTS for i in range(self.n)], device=dev)
        self.rewards = torch.randn(self.n, 1, generator=g).to(dev)

    @property
    def label(self) -> str:
        return f"N{self.n}_T{self.t}_{'x'.join(map(str, self.shape))}_fp32"


class NumpyPerPromptTracker:
    """ddpo-pytorch's PerPromptStatTracker (numpy, deque per prompt) for the two baselines."""

    def __init__(self, window=16, min_count=16):
        self.window, self.min_count, self.stats = window, min_count, {}

    def update(self, prompts, rewards):
        prompts, out = np.array(prompts), np.empty_like(rewards)
        for p in np.unique(prompts):
            r = rewards[prompts == p]
            self.stats[p] = (self.stats.get(p, []) + list(r))[-self.window:]
            pool = rewards if len(self.stats[p]) < self.min_count else np.array(self.stats[p])
            out[prompts == p] = (r - pool.mean()) / (pool.std() + 1e-6)
        return np.clip(out, -5, 5)


def ddpo_epoch(w: Workload, tracker: NumpyPerPromptTracker, seed: int) -> float:
    chunks, checksum = [], 0.0
    for b0 in range(0, w.n, ROLLOUT_BATCH):
        b = min(ROLLOUT_BATCH, w.n - b0)
        latents, log_probs = [w.sources[0][:b]], []
        for step in range(w.t):
            latents.append(w.sources[(step + 1) % 4][:b])
            log_probs.append(w.log_prob[:b])
        latents = torch.stack(latents, dim=1)
        chunks.append({"latents": latents[:, :-1], "next_latents": latents[:, 1:],
                       "log_probs": torch.stack(log_probs, dim=1), "timesteps": w.timesteps.repeat(b, 1),
                       "prompt_ids": w.prompt_ids[b0:b0 + ROLLOUT_BATCH]})
    samples = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    del chunks, latents
    adv = tracker.update(w.prompts, w.rewards[:, 0].cpu().numpy().astype(np.float64))
    samples["advantages"] = torch.as_tensor(adv, device=w.device)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(w.n, generator=g).to(w.device)
    samples = {k: v[perm] for k, v in samples.items()}
    perms = torch.stack([torch.randperm(w.t, generator=g) for _ in range(w.n)]).to(w.device)
    rows = torch.arange(w.n, device=w.device)[:, None]
    for key in ("timesteps", "latents", "next_latents", "log_probs"):
        samples[key] = samples[key][rows, perms]
    for b0 in range(0, w.n, TRAIN_BATCH):
        batch = {k: v[b0:b0 + TRAIN_BATCH] for k, v in samples.items()}
        for j in range(w.t):
            x_t, x_prev = batch["latents"][:, j].contiguous(), batch["next_latents"][:, j].contiguous()
            _ = (batch["timesteps"][:, j], batch["log_probs"][:, j], batch["advantages"], batch["prompt_ids"])
            checksum += x_t.numel() + x_prev.numel()
    return checksum


class TorchIndexingStore:
    """One preallocated tensor per field; plain torch writes and advanced-indexing gathers."""

    def __init__(self, w: Workload):
        z = lambda *s, dtype=torch.float32: torch.zeros(s, dtype=dtype, device=w.device)  # noqa: E731
        self.w, self.lat = w, z(w.n, w.t + 1, *w.shape)
        self.lp, self.ts, self.adv = z(w.n, w.t), z(w.n, w.t, dtype=torch.int64), z(w.n)
        self.pid, self.rew = z(w.n, dtype=torch.int64), z(w.n, 1)
        self.tracker = NumpyPerPromptTracker()

    def write(self):
        w = self.w
        for b0 in range(0, w.n, ROLLOUT_BATCH):
            b = min(ROLLOUT_BATCH, w.n - b0)
            rows = slice(b0, b0 + b)
            self.lat[rows, 0].copy_(w.sources[0][:b])
            for step in range(w.t):
                self.lat[rows, step + 1].copy_(w.sources[(step + 1) % 4][:b])
                self.lp[rows, step].copy_(w.log_prob[:b])
                self.ts[rows, step] = w.timesteps[step]
        self.pid.copy_(w.prompt_ids)
        self.rew.copy_(w.rewards)

    def gather_all(self, sample_idx, step_idx, offsets) -> float:
        checksum = 0.0
        for m in range(len(offsets) - 1):
            s, j = sample_idx[offsets[m]:offsets[m + 1]], step_idx[offsets[m]:offsets[m + 1]]
            x_t, x_prev = self.lat[s, j], self.lat[s, j + 1]
            _ = (self.ts[s, j], self.lp[s, j], self.adv[s], self.pid[s])
            checksum += x_t.numel() + x_prev.numel()
        return checksum

    def epoch(self, seed: int) -> float:
        w = self.w
        self.write()
        self.adv.copy_(torch.as_tensor(self.tracker.update(w.prompts, self.rew[:, 0].cpu().numpy().astype(np.float64))))
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(w.n, generator=g)
        perms = torch.stack([torch.randperm(w.t, generator=g) for _ in range(w.n)])
        sample_idx, step_idx, offsets = [], [], [0]
        for b0 in range(0, w.n, TRAIN_BATCH):
            for j in range(w.t):
                sample_idx.append(order[b0:b0 + TRAIN_BATCH])
                step_idx.append(perms[b0:b0 + TRAIN_BATCH, j])
                offsets.append(offsets[-1] + sample_idx[-1].numel())
        dev = w.device
        return self.gather_all(torch.cat(sample_idx).to(dev), torch.cat(step_idx).to(dev), offsets)


def cxrl_write(store: TrajectoryStore, w: Workload) -> None:
    for b0 in range(0, w.n, ROLLOUT_BATCH):
        b = min(ROLLOUT_BATCH, w.n - b0)
        store.write_initial(b0, w.sources[0][:b])
        for step in range(w.t):
            store.write_step(step, b0, w.sources[(step + 1) % 4][:b], w.log_prob[:b], w.timesteps[step])
    store.write_prompt_ids(0, w.prompt_ids)
    store.write_rewards(0, w.rewards)


def cxrl_epoch(store: TrajectoryStore, tracker: AdvantageTracker, w: Workload, seed: int) -> float:
    cxrl_write(store, w)
    store.write_advantages(0, tracker.compute(w.prompts, store.rewards[:, 0]))
    checksum = 0.0
    for mb in store.minibatches(store.plan(TRAIN_BATCH, 1.0, seed=seed)):
        checksum += mb.x_t.numel() + mb.x_prev.numel()
    return checksum


def _rss() -> int:
    """Resident set size in bytes: /proc on Linux (no extra dependency), psutil elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def cxrl_peak_memory(w: Workload) -> tuple[TrajectoryStore, AdvantageTracker, float, int]:
    """Build the store and run one epoch while sampling RSS every 2 ms (or CUDA peak allocation).
    Returns (store, tracker, peak growth / arena bytes, arena bytes)."""
    if w.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        store = TrajectoryStore(w.n, w.t, w.shape, 1, device=w.device)
        tracker = AdvantageTracker()
        cxrl_epoch(store, tracker, w, seed=0)
        torch.cuda.synchronize()
        return store, tracker, (torch.cuda.max_memory_allocated() - base) / store.nbytes, store.nbytes
    base, peak, stop = _rss(), [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    store = TrajectoryStore(w.n, w.t, w.shape, 1, device=w.device)
    tracker = AdvantageTracker()
    cxrl_epoch(store, tracker, w, seed=0)
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _rss())
    arena = store._arena.nbytes if store.backend == "cpp" else store.nbytes
    return store, tracker, (peak[0] - base) / arena, arena


def run_case(w: Workload) -> list[CaseResult]:
    store, tracker, mem_ratio, arena_bytes = cxrl_peak_memory(w)  # first, before baselines touch memory
    plain = TorchIndexingStore(w)
    ddpo_tracker = NumpyPerPromptTracker()
    seeds = iter(range(1, 10_000))
    epoch = time_side_by_side({
        "ddpo_list_stack": lambda: ddpo_epoch(w, ddpo_tracker, next(seeds)),
        "torch_indexing": lambda: plain.epoch(next(seeds)),
        "cxrl": lambda: cxrl_epoch(store, tracker, w, next(seeds)),
    }, reps=w.reps, warmup=w.warmup, device=w.device)
    extra = {"arena_bytes": arena_bytes, "cxrl_peak_mem_over_arena": mem_ratio, "backend": store.backend}
    results = [CaseResult("trajectory_store", w.label, "epoch", epoch, "ddpo_list_stack", dict(extra))]

    # gather alone, same plan for both: staging copies vs advanced indexing (tensors allocated per minibatch)
    plain.write()
    plan = store.plan(TRAIN_BATCH, 1.0, seed=123)
    s_dev, j_dev = plan.sample_idx.to(w.device), plan.step_idx.to(w.device)
    offsets = plan.offsets.tolist()
    gather = time_side_by_side({
        "torch_indexing": lambda: plain.gather_all(s_dev, j_dev, offsets),
        "cxrl": lambda: sum(mb.x_t.numel() for mb in store.minibatches(plan)),
    }, reps=max(3, w.reps), warmup=1, device=w.device)
    moved = 2 * plan.sample_idx.numel() * int(np.prod(w.shape)) * 4
    results.append(CaseResult("trajectory_store", w.label, "gather", gather, "torch_indexing",
                              {"latent_bytes_moved": moved,
                               "cxrl_gather_GBps": moved / gather["cxrl"].median / 1e9, "backend": store.backend}))
    return results


def run(size: str = "cpu") -> list[CaseResult]:
    device = device_for_size(size)
    cases = [Workload(256, 50, (1, 64, 64), device, reps=5, warmup=1),
             Workload(256, 50, (4, 64, 64), device, reps=3, warmup=1)]
    results = []
    for w in cases:
        results += run_case(w)
        torch.cuda.empty_cache() if device == "cuda" else None
    return results


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
