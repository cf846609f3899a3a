"""Vectorised 2-D field helpers for the phantom renderer: everything is evaluated at per-pixel
canonical coordinates ``(u, v)`` in [-1, 1] (u to the image right, v down), no per-pixel Python."""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def pixel_grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (``align_corners=False`` convention), float32 ``[H, W]``."""
    c = (2.0 * np.arange(resolution, dtype=np.float32) + 1.0) / resolution - 1.0
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def sample(grid: np.ndarray, u: np.ndarray, v: np.ndarray, padded: bool = False) -> np.ndarray:
    """Bilinear lookup of a 2-D array covering [-1, 1]^2 at (u, v); 0 outside. ``padded``: ``grid``
    already carries a one-cell zero border (callers sampling one array many times pad it once)."""
    padded_grid = grid if padded else np.pad(grid.astype(np.float32, copy=False), 1)
    h, w = padded_grid.shape[0] - 2, padded_grid.shape[1] - 2
    px = (u + 1.0) * (w * 0.5) - 0.5
    py = (v + 1.0) * (h * 0.5) - 0.5
    x0 = np.floor(px).astype(np.int32)
    y0 = np.floor(py).astype(np.int32)
    fx = (px - x0).astype(np.float32)
    fy = (py - y0).astype(np.float32)
    x0 = np.clip(x0 + 1, 0, w + 1)
    y0 = np.clip(y0 + 1, 0, h + 1)
    x1 = np.clip(x0 + 1, 0, w + 1)
    y1 = np.clip(y0 + 1, 0, h + 1)
    top = padded_grid[y0, x0] * (1 - fx) + padded_grid[y0, x1] * fx
    bottom = padded_grid[y1, x0] * (1 - fx) + padded_grid[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def sample_stack(padded: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup of ``[C, h+2, w+2]`` zero-padded maps at (u, v) -> ``[C, H, W]`` (one index
    computation for all channels)."""
    h, w = padded.shape[1] - 2, padded.shape[2] - 2
    px = (u + 1.0) * (w * 0.5) + 0.5
    py = (v + 1.0) * (h * 0.5) + 0.5
    x0 = np.clip(np.floor(px), 0, w + 1).astype(np.int32)
    y0 = np.clip(np.floor(py), 0, h + 1).astype(np.int32)
    fx = np.clip(px - x0, 0.0, 1.0).astype(np.float32)
    fy = np.clip(py - y0, 0.0, 1.0).astype(np.float32)
    x1 = np.minimum(x0 + 1, w + 1)
    y1 = np.minimum(y0 + 1, h + 1)
    top = padded[:, y0, x0] * (1 - fx) + padded[:, y0, x1] * fx
    bottom = padded[:, y1, x0] * (1 - fx) + padded[:, y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def noise(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1] with ``cells`` lattice cells across the canonical square."""
    return sample(rng.random((cells + 1, cells + 1), dtype=np.float32), u * cells / (cells + 1), v * cells / (cells + 1))


def ridges(rng: np.random.Generator, cells: int, u: np.ndarray, v: np.ndarray, sharpness: float = 6.0) -> np.ndarray:
    """Thin branching lines (ridged noise): 1 on the zero set of a smooth field, fading away from it."""
    n = noise(rng, cells, u, v) * 2.0 - 1.0
    return np.exp(-sharpness * np.abs(n) * cells / 4.0)


def ellipse(u, v, cu, cv, ru, rv, angle: float = 0.0, softness: float = 0.06) -> np.ndarray:
    """Soft filled ellipse (1 inside, 0 outside, a ``softness``-wide ramp at the edge)."""
    c, s = np.cos(angle), np.sin(angle)
    du, dv = u - cu, v - cv
    x = (c * du + s * dv) / ru
    y = (-s * du + c * dv) / rv
    r = np.sqrt(x * x + y * y)
    return 1.0 - smoothstep(1.0 - softness / min(ru, rv), 1.0 + softness / min(ru, rv), r)


def gaussian(u, v, cu, cv, su, sv) -> np.ndarray:
    return np.exp(-0.5 * (((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2))


def polyline_distance(u, v, points: np.ndarray) -> np.ndarray:
    """Distance from every pixel to a polyline given as ``[K, 2]`` (u, v) points."""
    best = np.full(u.shape, np.inf, dtype=np.float32)
    for (au, av), (bu, bv) in zip(points[:-1], points[1:]):
        du, dv = bu - au, bv - av
        length2 = max(du * du + dv * dv, 1e-12)
        t = np.clip(((u - au) * du + (v - av) * dv) / length2, 0.0, 1.0)
        d = np.hypot(u - (au + t * du), v - (av + t * dv))
        np.minimum(best, d, out=best)
    return best


def line(u, v, points: np.ndarray, width: float) -> np.ndarray:
    """A soft line of half-width ``width`` along a polyline."""
    return 1.0 - smoothstep(width * 0.5, width * 1.5, polyline_distance(u, v, points))
