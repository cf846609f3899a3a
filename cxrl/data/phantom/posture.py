"""Posture ψ = (s_x, s_y, t_x, t_y, θ): the one definition of the convention, shared by the phantom renderer
(numpy) and the posture reward (torch; ``cxrl.rewards.posture``). See docs/architecture.md.

ψ is the transform that maps the rendered image back to the canonical pose:
``grid_sample(image, affine_grid(posture_matrix(ψ)))`` ≈ the same phantom rendered with the identity
posture. A pixel at normalised position y therefore shows the canonical scene at ``A(ψ)^-1 · y``,
which is how the renderer evaluates its anatomy.
"""
from __future__ import annotations

import numpy as np
import torch

IDENTITY_POSTURE = (1.0, 1.0, 0.0, 0.0, 0.0)   # canonical pose: unit scales, no shift, no rotation


def posture_matrix(psi):
    """ψ ``[..., 5]`` -> the affine ``[..., 2, 3]`` ``[[s_x cosθ, -s_y sinθ, t_x], [s_x sinθ, s_y cosθ, t_y]]``,
    for a numpy array (one phantom's ψ; float64 out, with finite values and positive scales checked) or a torch
    tensor (a batch of predicted ψ, in its dtype)."""
    lib = torch if isinstance(psi, torch.Tensor) else np
    if lib is np:
        psi = np.asarray(psi, dtype=np.float64).reshape(-1)
        if psi.shape != (5,) or not np.all(np.isfinite(psi)):
            raise ValueError(f"posture: expected 5 finite values (s_x, s_y, t_x, t_y, theta), got {psi.tolist()}")
        if psi[0] <= 0 or psi[1] <= 0:
            raise ValueError(f"posture: scales s_x, s_y must be positive, got {psi[0]}, {psi[1]}")
    elif psi.dim() != 2 or psi.shape[1] != 5:
        raise ValueError(f"posture psi must have shape [B, 5] (s_x, s_y, t_x, t_y, theta), got {tuple(psi.shape)}")
    sx, sy, tx, ty, theta = (psi[..., k] for k in range(5))
    c, s = lib.cos(theta), lib.sin(theta)
    return lib.stack([lib.stack([sx * c, -sy * s, tx], -1), lib.stack([sx * s, sy * c, ty], -1)], -2)


def inverse_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (as 2x3)."""
    linear, shift = matrix[:, :2], matrix[:, 2]
    inv = np.linalg.inv(linear)
    return np.concatenate([inv, -(inv @ shift)[:, None]], axis=1)


def sample_posture(rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """A random ψ; ``strength`` 0 gives the identity, 1 gives up to ±15% scale, ±0.12 shift, ±0.2 rad
    (~11°) rotation — the range of patient positioning seen on frontal radiographs."""
    if not 0.0 <= strength <= 2.0:
        raise ValueError(f"posture strength: expected a value in [0, 2], got {strength}")
    u = rng.uniform(-1.0, 1.0, size=5)
    common = 0.12 * u[0]  # patient distance to the detector scales both axes together
    psi = np.array([1.0 + strength * (common + 0.04 * u[1]), 1.0 + strength * (common - 0.04 * u[1]),
                    0.12 * strength * u[2], 0.10 * strength * u[3], 0.2 * strength * u[4]], dtype=np.float32)
    return psi
