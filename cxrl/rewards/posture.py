"""Posture alignment reward r_align.

A small CNN predicts ψ = (s_x, s_y, t_x, t_y, θ) for an image: the affine map from the image to the
canonical pose, in the convention of docs/architecture.md and of the phantom world —
``canonicalize(image, ψ) = grid_sample(image, affine_grid(A(ψ)))`` is the canonical-pose image, with
A(ψ) = [[s_x cosθ, −s_y sinθ, t_x], [s_x sinθ, s_y cosθ, t_y]]; conversely ``pose_images(canonical, ψ)``
warps a canonical image with A(ψ)⁻¹ into posture ψ. ψ = identity (1, 1, 0, 0, 0) means canonical.

    r_align = −‖w ∘ (ψ − identity)‖₂         (w: per-component weights, default all 1)

so 0 is perfectly aligned and values are negative. Training is self-supervised (``training.py``):
near-canonical images are warped with known random ψ and the network regresses ψ.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cxrl.data.phantom.posture import IDENTITY_POSTURE, posture_matrix
from cxrl.rewards.base import RewardModel, prepare_cxr
from cxrl.rewards.nets import ConvEncoder, load_state_strict, read_model_dir, save_model_dir

POSTURE_COMPONENTS = ("s_x", "s_y", "t_x", "t_y", "theta")


def _inverse(theta: torch.Tensor) -> torch.Tensor:
    linear, shift = theta[:, :, :2], theta[:, :, 2:]
    inv = torch.linalg.inv(linear)
    return torch.cat([inv, -inv @ shift], dim=2)


def _warp(images: torch.Tensor, theta: torch.Tensor, padding_mode: str) -> torch.Tensor:
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def canonicalize(images: torch.Tensor, psi: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Map images [B, C, H, W] in posture ψ [B, 5] back to the canonical pose (grid_sample with A(ψ))."""
    return _warp(images, posture_matrix(psi.float()), padding_mode)


def pose_images(canonical: torch.Tensor, psi: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Warp canonical images [B, C, H, W] into posture ψ [B, 5] (grid_sample with A(ψ)⁻¹), so that
    ``canonicalize(pose_images(x, ψ), ψ) ≈ x``. Border padding: a zero border would be a give-away
    the network could learn that generated images never show."""
    return _warp(canonical, _inverse(posture_matrix(psi.float())), padding_mode)


def sample_postures(n: int, generator: torch.Generator, max_scale: float = 0.15, max_shift: float = 0.15,
                    max_rotation: float = 0.3, identity_fraction: float = 0.1) -> torch.Tensor:
    """Random ψ [n, 5] (ranges cover the phantom world's ``sample_posture`` at strength ~1.3): each component uniform within its range, scaled by a per-sample strength in [0, 1]
    (so small perturbations are as common as large ones), and ``identity_fraction`` exact identities."""
    u = torch.rand(n, 5, generator=generator) * 2 - 1
    strength = torch.rand(n, 1, generator=generator)
    strength[torch.rand(n, generator=generator) < identity_fraction] = 0.0
    span = torch.tensor([max_scale, max_scale, max_shift, max_shift, max_rotation])
    return torch.tensor(IDENTITY_POSTURE) + u * strength * span


class PostureNet(nn.Module):
    """CNN -> ψ. The head predicts (log s_x, log s_y, t_x, t_y, θ) offsets from identity."""

    def __init__(self, widths=(16, 32, 64, 128), feature_dim: int = 128, resolution: int = 64):
        super().__init__()
        self.encoder = ConvEncoder(widths, feature_dim)
        self.head = nn.Linear(feature_dim, 5)
        nn.init.zeros_(self.head.weight)  # start at identity: a fresh model says "aligned"
        nn.init.zeros_(self.head.bias)
        self.resolution = resolution
        self.arch = {"widths": list(widths), "feature_dim": feature_dim, "resolution": resolution}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.head(self.encoder(x))
        scale = torch.exp(raw[:, :2])
        return torch.cat([scale, raw[:, 2:]], dim=1)


class PostureReward(RewardModel):
    """r_align = −‖w ∘ (ψ̂ − identity)‖ with ψ̂ from a :class:`PostureNet`. Absolute by default (not comparative)."""

    name = "posture"
    comparative = False

    def __init__(self, net: PostureNet, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0), name: str | None = None,
                 comparative: bool | None = None, dtype: torch.dtype = torch.float32):
        super().__init__(name, comparative)
        if len(weights) != 5:
            raise ValueError(f"reward '{self.name}': posture weights need 5 entries {POSTURE_COMPONENTS}, got {len(weights)}")
        self.net = net.eval().requires_grad_(False)
        self.weights = torch.tensor([float(w) for w in weights])
        self.dtype = dtype
        self.net.to(dtype)

    def to(self, device, dtype: torch.dtype | None = None) -> "PostureReward":
        if dtype is not None:
            self.dtype = dtype
            self.net.to(dtype)
        super().to(device)
        self.weights = self.weights.to(self.device)
        return self

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """ψ̂ [B, 5] (float32) for images [B, C, H, W] in [0, 1]."""
        x = prepare_cxr(images, self.net.resolution, self.name, self.dtype).to(self.device)
        with torch.no_grad():
            return self.net(x).float()

    def score(self, images, prompts, metadata) -> torch.Tensor:
        psi = self.predict(images)
        identity = torch.tensor(IDENTITY_POSTURE, device=psi.device)
        return -torch.linalg.vector_norm((psi - identity) * self.weights.to(psi.device), dim=1).to(images.device)

    def save(self, out_dir, extra: dict | None = None) -> Path:
        cfg = {"kind": "posture", "arch": self.net.arch, "weights": self.weights.tolist(), **(extra or {})}
        return save_model_dir(self.net, cfg, out_dir)

    @classmethod
    def load(cls, path, weights: Sequence[float] | None = None, **kwargs) -> "PostureReward":
        config, state = read_model_dir(path, "posture")
        net = PostureNet(**config["arch"])
        load_state_strict(net, state, path)
        return cls(net, weights=weights if weights is not None else config.get("weights", [1.0] * 5), **kwargs)
