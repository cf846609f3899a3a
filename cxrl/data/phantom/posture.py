"""Posture ψ = (s_x, s_y, t_x, t_y, θ) of a phantom (docs/architecture.md).

ψ is the transform that maps the rendered image back to the canonical pose:
``grid_sample(image, affine_grid(posture_matrix(ψ)))`` ≈ the same phantom rendered with the identity
posture. A pixel at normalised position y therefore shows the canonical scene at ``A(ψ)^-1 · y``,
which is how the renderer evaluates its anatomy.
"""
from __future__ import annotations

import numpy as np

IDENTITY_POSTURE = np.array([1.0, 1.0, 0.0, 0.0, 0.0], dtype=np.float32)


def posture_matrix(psi) -> np.ndarray:
    """ψ -> the 2x3 affine ``[[s_x cosθ, -s_y sinθ, t_x], [s_x sinθ, s_y cosθ, t_y]]``."""
    psi = np.asarray(psi, dtype=np.float64).reshape(-1)
    if psi.shape != (5,) or not np.all(np.isfinite(psi)):
        raise ValueError(f"posture: expected 5 finite values (s_x, s_y, t_x, t_y, theta), got {psi.tolist()}")
    sx, sy, tx, ty, theta = psi
    if sx <= 0 or sy <= 0:
        raise ValueError(f"posture: scales s_x, s_y must be positive, got {sx}, {sy}")
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[sx * c, -sy * s, tx], [sx * s, sy * c, ty]], dtype=np.float64)


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
