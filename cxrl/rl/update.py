"""PPO-clip updates over one epoch's stored transitions.

Minibatches follow the store's DDPO plan: sample batches outer, that batch's trained timesteps inner.
Gradients accumulate over the inner timesteps and over ``gradient_accumulation`` sample batches, then
one optimizer step: all-reduce (data parallel) → global-norm clip → finite check → AdamW → EMA.

Old log-probs: until the first optimizer step of an RL epoch the policy *is* the old policy, so the
old log-prob of those minibatches is the detached recomputed one (ratio exactly 1, immune to the
rounding differences between the sampling and the training forward); afterwards the stored ones.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from cxrl.config import TrainConfig
from cxrl.rl.ppo import ppo_clip_loss
from cxrl.rl.precision import autocast
from cxrl.trajectory import num_trained_steps

log = logging.getLogger(__name__)


class NonFiniteAbort(RuntimeError):
    """Too many consecutive updates with a non-finite loss or gradient."""


def lr_schedule(warmup_steps: int, kind: str = "constant", total_steps: int = 0) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step``: linear warm-up over ``warmup_steps``, then
    constant, or (``kind="cosine"``) a cosine decay that reaches 0 at ``total_steps`` and stays there."""
    if kind not in ("constant", "cosine"):
        raise ValueError(f"learning-rate schedule {kind!r}: choose 'constant' or 'cosine'")
    if kind == "cosine" and total_steps <= 0:
        raise ValueError(f"a cosine learning-rate schedule needs the run's optimizer steps (got {total_steps})")

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def optimizer_steps_per_epoch(settings: TrainConfig, samples_per_rank: int) -> int:
    """Optimizer steps one epoch's update takes (none skipped): each inner epoch steps once per
    ``gradient_accumulation`` sample minibatches of ``batch_size``."""
    sample_batches = math.ceil(samples_per_rank / settings.batch_size)
    return settings.inner_epochs * math.ceil(sample_batches / settings.gradient_accumulation)


@dataclass
class UpdateResult:
    optimizer_steps: int = 0
    skipped_steps: int = 0
    minibatches: int = 0
    first_ratios: list = field(default_factory=list)   # ratio mean of each inner epoch's first minibatch
    sums: dict = field(default_factory=dict)
    grad_norms: list = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0

    def metrics(self) -> dict:
        out = {k: v / max(1, self.minibatches) for k, v in self.sums.items()}
        out.update({"train/optimizer_steps": self.optimizer_steps, "train/skipped_steps": self.skipped_steps,
                    "train/minibatches": self.minibatches})
        if self.grad_norms:
            out["train/grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
            out["train/grad_norm_max"] = max(self.grad_norms)
        if self.seconds > 0:
            out["throughput/train_images_per_s"] = self.samples / self.seconds
        return out


class EMA:
    """Exponential moving average of the trained parameters (kept in float32 on their device). With
    ``train.ema_decay`` > 0 it is the run's policy: the monitor probes it and the run ends with it (the trained
    weights go on training underneath, and the checkpoints keep both)."""

    def __init__(self, params: list[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.params = params
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for s, p in zip(self.shadow, self.params):
            p.copy_(s.to(p.dtype))

    @contextlib.contextmanager
    def applied(self):
        """The averaged weights in the parameters while the block runs, the trained ones back after it."""
        trained = [p.detach().clone() for p in self.params]
        self.copy_to_params()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(self.params, trained):
                    p.copy_(t)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": list(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state has {len(state['shadow'])} tensors, the model has {len(self.shadow)} trained parameters")
        for s, t in zip(self.shadow, state["shadow"]):
            s.copy_(t)


def trained_step_window(num_steps: int, skip_first: int, skip_last: int) -> tuple[int, int]:
    """``(first, end)`` of the trainable steps. The skips are capped so that one step stays trainable: a config
    tuned for the demo's 10 steps (skip_last_steps 2) still trains when a test or a smoke run samples 1-2 steps."""
    first = min(skip_first, num_steps - 1)
    return first, max(first + 1, num_steps - skip_last)


class PPOUpdater:
    """Owns the optimizer-step logic and the non-finite streak across epochs. ``settings``: the ``train``
    section (batch size, trained-timestep fraction, accumulation, inner epochs, clipping, KL weight, ...);
    ``autocast_dtype``: the run's precision (:mod:`cxrl.rl.precision`); ``lr_at``: the learning-rate factor
    per optimizer step (default: ``settings.warmup_steps`` of linear warm-up, then ``settings.lr_schedule`` over
    ``settings.epochs`` epochs of ``samples_per_rank`` samples each)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, settings: TrainConfig,
                 autocast_dtype: torch.dtype | None = None, lr_at: Callable[[int], float] | None = None, dist=None,
                 ema: EMA | None = None, samples_per_rank: int | None = None):
        self.params = params
        self.optimizer = optimizer
        self.settings = settings
        self.autocast_dtype = autocast_dtype
        self.device_type = params[0].device.type if params else "cpu"   # where the recompute's autocast applies
        if lr_at is None:
            if settings.lr_schedule == "cosine" and samples_per_rank is None:
                raise ValueError("train.lr_schedule=cosine: PPOUpdater needs samples_per_rank (the samples each epoch's "
                                 "update sees on this rank) to know where the run ends")
            total = settings.epochs * optimizer_steps_per_epoch(settings, samples_per_rank or 1)
            lr_at = lr_schedule(settings.warmup_steps, settings.lr_schedule, total)
        self.lr_at = lr_at
        self.dist = dist
        self.ema = ema
        self.global_step = 0        # optimizer steps taken (drives the LR schedule)
        self.nonfinite_streak = 0
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "nonfinite_streak": self.nonfinite_streak, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.nonfinite_streak = int(state["nonfinite_streak"])
        self.base_lrs = [float(x) for x in state["base_lrs"]]

    def run(self, store, log_prob_fn: Callable, plan_seed: int, describe: Callable[[list[int]], list[str]]) -> UpdateResult:
        """All inner epochs over ``store``. ``log_prob_fn(mb) -> (log_prob [B], kl [B] | None)``;
        ``describe(sample_indices)`` names the prompts of a skipped update in the warning."""
        s = self.settings
        steps = store.log_probs.shape[1]
        # the store's own float-safe count: its plans have exactly this many timesteps per sample
        window = trained_step_window(steps, s.skip_first_steps, s.skip_last_steps)
        trained_t = num_trained_steps(window[1] - window[0], s.timestep_fraction)
        num_samples = store.log_probs.shape[0]
        sample_batches = math.ceil(num_samples / s.batch_size)
        result = UpdateResult(samples=num_samples * s.inner_epochs)
        updated = False
        start = time.perf_counter()
        for inner in range(s.inner_epochs):
            plan = store.plan(s.batch_size, timestep_fraction=s.timestep_fraction, seed=plan_seed + inner, steps=window)
            group_samples: list[torch.Tensor] = []
            for i, mb in enumerate(store.minibatches(plan)):
                sb = i // trained_t                          # which sample batch this minibatch belongs to
                group_start = (sb // s.gradient_accumulation) * s.gradient_accumulation
                group_len = min(s.gradient_accumulation, sample_batches - group_start)
                with autocast(self.autocast_dtype, self.device_type):
                    log_prob, kl = log_prob_fn(mb)
                log_prob = log_prob.float()
                old = log_prob.detach() if not updated else mb.log_probs.to(log_prob.device, torch.float32)
                loss, stats = ppo_clip_loss(log_prob, old, mb.advantages.to(log_prob.device), s.clip_range, s.adv_clip)
                if kl is not None and s.kl_beta > 0:
                    kl_mean = kl.float().mean()
                    loss = loss + s.kl_beta * kl_mean
                    self._add(result, "train/kl_to_anchor", kl_mean.detach())
                (loss / (trained_t * group_len)).backward()
                if i % trained_t == 0 and sb == 0:
                    result.first_ratios.append(stats.ratio_mean.item())
                for name, value in (("train/loss", stats.loss), ("train/approx_kl", stats.approx_kl),
                                    ("train/clip_fraction", stats.clip_fraction), ("train/ratio", stats.ratio_mean)):
                    self._add(result, name, value)
                result.minibatches += 1
                group_samples.append(mb.sample_idx.clone())   # the store reuses its staging buffers
                last_of_group = (i + 1) % trained_t == 0 and (sb + 1 == group_start + group_len)
                if last_of_group:
                    if self._optimizer_step(result, torch.cat(group_samples), describe):
                        updated = True
                    group_samples = []
        result.sums = {k: float(v) for k, v in result.sums.items()}
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _add(result: UpdateResult, name: str, value: torch.Tensor) -> None:
        result.sums[name] = result.sums.get(name, 0.0) + value.detach().float()

    def _optimizer_step(self, result: UpdateResult, sample_idx: torch.Tensor, describe) -> bool:
        if self.dist is not None:
            self.dist.average_gradients(self.params)
        max_norm = self.settings.max_grad_norm if self.settings.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not bool(torch.isfinite(norm)):  # one host sync per optimizer step; identical on all ranks
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
            result.skipped_steps += 1
            prompts = describe(sorted(set(sample_idx.tolist())))
            log.warning("non-finite loss or gradient at optimizer step %d: update skipped (%d in a row); prompts: %s",
                        self.global_step, self.nonfinite_streak, prompts)
            if self.nonfinite_streak >= self.settings.max_nonfinite:
                raise NonFiniteAbort(f"{self.nonfinite_streak} consecutive updates had a non-finite loss or gradient "
                                     f"(train.max_nonfinite={self.settings.max_nonfinite}); stopping, the last "
                                     "checkpoint is intact")
            return False
        factor = self.lr_at(self.global_step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.global_step += 1
        self.nonfinite_streak = 0
        result.optimizer_steps += 1
        result.grad_norms.append(float(norm))
        return True
