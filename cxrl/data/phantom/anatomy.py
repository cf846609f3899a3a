"""The normal chest of a phantom: body, lungs (real mask shapes), heart, mediastinum and spine,
diaphragm and stomach gas, clavicles, ribs, shoulders and breast shadows.

Densities are in arbitrary attenuation units: soft tissue ~0.75, aerated lung ~0.25, bone adds
~0.1–0.3. ``Anatomy`` keeps the parts separate so that findings can fill air spaces (effusion,
consolidation) or add air (pneumothorax) before everything is summed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from cxrl.data.phantom import fields as F

# Canonical layout (normalised coordinates, image-left = patient's right).
LUNG_BOX = (-0.80, 0.80, -0.74, 0.62)  # u0, u1, v0, v1: where the normalised lung masks are placed
HEART_CENTER = (0.10, 0.33)
NORMAL_HEART_HALF_WIDTH = 0.33         # cardiothoracic ratio ~0.41 against the 1.6-wide thorax
HILA = ((-0.24, -0.08), (0.24, -0.10))


@dataclass
class Anatomy:
    u: np.ndarray
    v: np.ndarray
    lungs: tuple[np.ndarray, np.ndarray]  # image-left (patient right), image-right lung, 0..1
    body: np.ndarray
    heart: np.ndarray
    heart_half_width: float
    soft: np.ndarray                      # soft tissue + mediastinum + heart density
    bone: np.ndarray                      # ribs, spine, clavicles, humeri
    markings: np.ndarray                  # vascular markings density (only shows inside aerated lung)
    masks: dict = field(default_factory=dict)


@lru_cache(maxsize=64)
def _padded_mask(masks_id: int, index: int, side: int) -> np.ndarray:
    """Float [0, 1] mask with a zero border, converted once per (shape, side)."""
    masks = _MASK_ARRAYS[masks_id]
    return np.pad(masks[index, side].astype(np.float32) * (1.0 / 255.0), 1)


_MASK_ARRAYS: dict[int, np.ndarray] = {}


def lung_fields(masks: np.ndarray, index: int, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample the two normalised lung masks of shape ``index`` at canonical (u, v)."""
    _MASK_ARRAYS[id(masks)] = masks
    u0, u1, v0, v1 = LUNG_BOX
    mu = (u - u0) / (u1 - u0) * 2.0 - 1.0
    mv = (v - v0) / (v1 - v0) * 2.0 - 1.0
    return tuple(F.sample(_padded_mask(id(masks), index, k), mu, mv, padded=True) for k in (0, 1))


def heart_field(u, v, half_width: float) -> np.ndarray:
    """Heart silhouette: a tilted ellipse whose left border grows more than the right (as LV
    enlargement does), apex toward the image right and down."""
    grow = half_width - NORMAL_HEART_HALF_WIDTH
    cu = HEART_CENTER[0] + 0.45 * grow
    return F.ellipse(u, v, cu, HEART_CENTER[1] + 0.25 * grow, half_width, 0.27 + 0.35 * grow, angle=-0.35, softness=0.03)


def _static_fields(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Everything that depends on position only: ``[body, soft tissue, bone, hilar falloff]``."""
    au = np.abs(u)
    # Body outline: a superellipse trunk, narrower neck above the shoulders.
    trunk = 1.0 - F.smoothstep(0.9, 1.05, (au / 0.97) ** 4 + ((v - 0.1) / 1.25) ** 4)
    neck = (1.0 - F.smoothstep(0.26, 0.32, au)) * (v < -0.7)
    body = np.maximum(trunk, neck)
    shoulders = F.ellipse(u, v, -0.98, -0.86, 0.3, 0.22) + F.ellipse(u, v, 0.98, -0.86, 0.3, 0.22)
    body = np.maximum(body, np.clip(shoulders, 0, 1))

    aortic_knob = F.ellipse(u, v, 0.12, -0.42, 0.08, 0.07)
    trachea = (1.0 - F.smoothstep(0.025, 0.045, np.abs(u + 0.005))) * (1.0 - F.smoothstep(-0.32, -0.24, v))
    breast = F.gaussian(u, v, -0.5, 0.52, 0.22, 0.14) + F.gaussian(u, v, 0.5, 0.52, 0.22, 0.14)
    stomach_gas = F.ellipse(u, v, 0.42, 0.80, 0.13, 0.07)
    chest_wall = 0.85 + 0.15 * F.smoothstep(0.55, 0.8, v)  # thinner soft tissue beside the lungs than below them
    soft = 0.55 * body * chest_wall + 0.08 * aortic_knob + 0.06 * breast - 0.18 * trachea - 0.30 * stomach_gas * body

    # Spine: vertebral bodies with darker discs.
    spine_band = 1.0 - F.smoothstep(0.06, 0.09, au)
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * (v + 1.0) / 0.12)
    spine = 0.10 * spine_band * vertebrae * (1.0 - 0.5 * F.smoothstep(0.55, 0.8, v))
    # Clavicles: S-curved bars from the sternal notch to the shoulders.
    t = np.clip((au - 0.07) / 0.72, 0.0, 1.0)
    centre = -0.80 - 0.10 * t + 0.05 * np.sin(np.pi * t)
    clavicles = (1.0 - F.smoothstep(0.014, 0.042, np.abs(v - centre))) * F.smoothstep(0.05, 0.09, au)
    clavicles *= 1.0 - F.smoothstep(0.78, 0.82, au)
    # Posterior ribs: arcs rising a little from the spine, then curving down laterally.
    phase = (v + 0.95 + 0.15 * au - 0.65 * au * au) / 0.165
    ribs = np.clip(np.cos(2.0 * np.pi * phase) * 1.6 - 0.6, 0.0, 1.0)
    thorax = (1.0 - F.smoothstep(0.78, 0.9, au)) * F.smoothstep(0.07, 0.12, au) * (1.0 - F.smoothstep(0.45, 0.65, v))
    ribs *= thorax * F.smoothstep(-0.95, -0.8, v)
    humeri = F.ellipse(u, v, -0.93, -0.70, 0.10, 0.11) + F.ellipse(u, v, 0.93, -0.70, 0.10, 0.11)
    bone = spine + 0.22 * clavicles + 0.11 * ribs + 0.22 * np.clip(humeri, 0, 1)

    r_hila = np.minimum(np.hypot(u - HILA[0][0], v - HILA[0][1]), np.hypot(u - HILA[1][0], v - HILA[1][1]))
    hilar = 0.10 * np.exp(-r_hila / 0.35)
    hilar_shadow = 0.12 * (F.gaussian(u, v, *HILA[0], 0.07, 0.10) + F.gaussian(u, v, *HILA[1], 0.07, 0.10))
    return np.stack([body, soft, bone, hilar, hilar_shadow]).astype(np.float32)


@lru_cache(maxsize=8)
def static_maps(size: int) -> np.ndarray:
    """The static fields on a canonical ``size``² grid, zero-padded by one cell for ``sample_stack``.
    Computed once per size: each phantom then only resamples them at its posture."""
    u, v = F.pixel_grid(size)
    maps = np.pad(_static_fields(u, v), ((0, 0), (1, 1), (1, 1)))
    maps.setflags(write=False)
    return maps


def build_anatomy(rng: np.random.Generator, masks: np.ndarray, mask_index: int, u: np.ndarray, v: np.ndarray,
                  heart_half_width: float, mediastinum_half_width: float) -> Anatomy:
    lung_r, lung_l = lung_fields(masks, mask_index, u, v)
    size = int(min(1024, max(128, 2 * u.shape[0])))
    body, soft, bone, hilar, hilar_shadow = F.sample_stack(static_maps(size), u, v)

    heart = heart_field(u, v, heart_half_width)
    upper = 1.0 - F.smoothstep(0.15, 0.35, v)  # mediastinum above the heart
    mediastinum = (1.0 - F.smoothstep(mediastinum_half_width - 0.03, mediastinum_half_width + 0.03, np.abs(u - 0.02))) * upper
    mediastinum *= F.smoothstep(-1.0, -0.8, v)
    soft = soft + 0.22 * mediastinum + 0.17 * heart * (1.0 - 0.6 * mediastinum)

    # Vascular markings fan out from the hila and fade toward the periphery.
    markings = hilar * F.ridges(rng, 10, u, v) + hilar_shadow

    masks = {"lung_left_image": lung_r > 0.5, "lung_right_image": lung_l > 0.5, "heart": heart > 0.5,
             "body": body > 0.5}
    return Anatomy(u, v, (lung_r, lung_l), body, heart, heart_half_width, soft, bone, markings, masks)
