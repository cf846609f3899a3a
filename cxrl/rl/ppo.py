"""The DDPO-IS policy-gradient objective and its diagnostics.

ρ = exp(log π_θ − log π_old);  L = −E[min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)], advantages clipped to ±adv_clip.
Optional KL to the frozen anchor for Gaussian steps with a shared σ_t: β·‖μ_θ − μ_anchor‖²/(2σ_t²).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PPOStats:
    """Detached per-minibatch diagnostics (tensors, so logging them costs no host sync here)."""

    loss: torch.Tensor
    ratio_mean: torch.Tensor
    approx_kl: torch.Tensor
    clip_fraction: torch.Tensor


def importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_prob - old_log_prob)


def approx_kl(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance estimator ½·E[(log π_θ − log π_old)²] (≥ 0, 0 iff equal)."""
    return 0.5 * torch.mean((log_prob - old_log_prob) ** 2)


def clip_fraction(ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """Share of samples whose ratio lies outside [1−ε, 1+ε] (the clipped term is active there)."""
    return torch.mean((torch.abs(ratio - 1.0) > clip_range).float())


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float, adv_clip: float) -> tuple[torch.Tensor, PPOStats]:
    """Clipped surrogate loss (mean over the batch) and its diagnostics. All inputs are ``[B]``."""
    if log_prob.shape != old_log_prob.shape or log_prob.shape != advantages.shape:
        raise ValueError(f"ppo_clip_loss: shapes differ: log_prob {tuple(log_prob.shape)}, "
                         f"old_log_prob {tuple(old_log_prob.shape)}, advantages {tuple(advantages.shape)}")
    if clip_range <= 0 or adv_clip <= 0:
        raise ValueError(f"ppo_clip_loss: clip_range ({clip_range}) and adv_clip ({adv_clip}) must be > 0")
    adv = torch.clamp(advantages.to(log_prob.dtype), -adv_clip, adv_clip)
    ratio = importance_ratio(log_prob, old_log_prob.to(log_prob.dtype))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.mean(torch.maximum(unclipped, clipped))
    with torch.no_grad():
        stats = PPOStats(loss=loss.detach(), ratio_mean=ratio.mean(),
                         approx_kl=approx_kl(log_prob, old_log_prob), clip_fraction=clip_fraction(ratio, clip_range))
    return loss, stats


def kl_to_anchor(mean: torch.Tensor, anchor_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ_θ, σ²) ‖ N(μ_anchor, σ²)) per sample, averaged over non-batch dims (like the log-prob).

    ``std`` is σ_t broadcastable to ``mean`` (e.g. ``[B, 1, 1, 1]``); returns ``[B]``.
    """
    if mean.shape != anchor_mean.shape:
        raise ValueError(f"kl_to_anchor: mean {tuple(mean.shape)} and anchor_mean {tuple(anchor_mean.shape)} differ")
    per_elem = (mean - anchor_mean.detach()) ** 2 / (2.0 * std ** 2)
    return per_elem.flatten(1).mean(dim=1)
