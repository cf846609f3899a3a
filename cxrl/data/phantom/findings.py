"""Findings drawn onto a phantom chest.

Each function adds to a :class:`Layers` object: ``fill`` (fraction of lung air replaced by fluid or
tissue — effusion, opacities, consolidation, atelectasis, edema, nodules), ``pneumothorax`` (pleural
air without lung markings), ``pleural_line``, ``metal`` (devices) and ``bone`` edits (fracture).
``severity`` is 1 for a positive label and 0.5 for an uncertain one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cxrl.data.phantom import fields as F
from cxrl.data.phantom.anatomy import HILA, LUNG_BOX, Anatomy, lung_fields


@dataclass
class Layers:
    fill: np.ndarray
    pneumothorax: np.ndarray
    pleural_line: np.ndarray
    metal: np.ndarray
    bone_delta: np.ndarray
    marking_gain: float = 1.0
    masks: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, shape) -> "Layers":
        z = lambda: np.zeros(shape, dtype=np.float32)  # noqa: E731
        return cls(z(), z(), z(), z(), z())

    def add_fill(self, amount: np.ndarray) -> None:
        np.maximum(self.fill, np.clip(amount, 0.0, 1.0), out=self.fill)


def _side(rng: np.random.Generator, both_ok: bool = True) -> tuple[int, ...]:
    """Which lungs: (0,) image-left, (1,) image-right, or both."""
    r = rng.random()
    if both_ok and r < 0.35:
        return (0, 1)
    return (0,) if r < 0.675 else (1,)


def _lung_point(rng: np.random.Generator, masks: np.ndarray, index: int, side: int, v_range=(-0.5, 0.45)) -> tuple[float, float]:
    """A random (u, v) inside lung ``side`` of mask ``index`` (canonical coordinates)."""
    mask = masks[index, side]
    size = mask.shape[0]
    u0, u1, v0, v1 = LUNG_BOX
    for _ in range(64):
        i, j = rng.integers(0, size, size=2)
        u = u0 + (j + 0.5) / size * (u1 - u0)
        v = v0 + (i + 0.5) / size * (v1 - v0)
        behind_heart = ((u - 0.1) / 0.45) ** 2 + ((v - 0.33) / 0.32) ** 2 < 1.0
        if mask[i, j] > 200 and v_range[0] <= v <= v_range[1] and not behind_heart:
            return float(u), float(v)
    return (-0.45 if side == 0 else 0.45), 0.1


def effusion(a: Anatomy, layers: Layers, rng, severity: float) -> None:
    """Basal fluid: dense, level with an upward meniscus at the chest wall, angle blunted."""
    region = np.zeros_like(a.u)
    for side in _side(rng):
        lung = a.lungs[side]
        depth = severity * rng.uniform(0.26, 0.42)
        level = LUNG_BOX[3] - depth
        lateral = np.clip((np.abs(a.u) - 0.15) / 0.6, 0.0, 1.0)
        top = level - 0.45 * depth * lateral ** 2
        fluid = lung * F.smoothstep(top - 0.03, top + 0.03, a.v)
        np.maximum(region, fluid, out=region)
    layers.add_fill(region)
    layers.masks["effusion"] = region > 0.5


def patchy_opacity(a: Anatomy, layers: Layers, rng, severity: float, masks, index) -> None:
    region = np.zeros_like(a.u)
    texture = 0.45 + 0.55 * F.noise(rng, 12, a.u, a.v)
    for _ in range(int(rng.integers(2, 5))):
        side = int(rng.integers(0, 2))
        cu, cv = _lung_point(rng, masks, index, side)
        size = rng.uniform(0.09, 0.15)
        blob = F.gaussian(a.u, a.v, cu, cv, size, size * rng.uniform(0.7, 1.3)) * a.lungs[side]
        np.maximum(region, blob, out=region)
    layers.add_fill(0.8 * severity * region * texture)
    layers.masks["opacity"] = region > 0.4


def consolidation(a: Anatomy, layers: Layers, rng, severity: float, masks, index, patchy: bool = False) -> None:
    """A dense lobar region (air bronchograms left dark inside); ``patchy`` for pneumonia."""
    side = int(rng.integers(0, 2))
    cu, cv = _lung_point(rng, masks, index, side, v_range=(-0.2, 0.45))
    region = F.ellipse(a.u, a.v, cu, cv, rng.uniform(0.17, 0.24), rng.uniform(0.14, 0.2), rng.uniform(-0.5, 0.5), 0.08)
    region *= a.lungs[side]
    texture = (0.55 + 0.45 * F.noise(rng, 14, a.u, a.v)) if patchy else 1.0 - 0.35 * F.ridges(rng, 8, a.u, a.v)
    layers.add_fill(0.95 * severity * region * texture)
    layers.masks["pneumonia" if patchy else "consolidation"] = region > 0.5


def atelectasis(a: Anatomy, layers: Layers, rng, severity: float) -> None:
    """Plate-like band in a lower zone plus a little basal density."""
    region = np.zeros_like(a.u)
    for side in _side(rng, both_ok=False):
        sign = -1.0 if side == 0 else 1.0
        v0 = rng.uniform(0.18, 0.36)
        pts = np.array([[sign * 0.18, v0], [sign * 0.45, v0 + rng.uniform(-0.05, 0.05)], [sign * 0.7, v0 - 0.04]])
        band = F.line(a.u, a.v, pts, 0.035)
        basal = F.smoothstep(0.38, 0.58, a.v) * 0.5
        np.maximum(region, np.maximum(band, basal) * a.lungs[side], out=region)
    layers.add_fill(0.9 * severity * region)
    layers.masks["atelectasis"] = region > 0.4


def edema(a: Anatomy, layers: Layers, rng, severity: float) -> None:
    """Bilateral perihilar (bat-wing) haze and engorged markings."""
    haze = sum(F.gaussian(a.u, a.v, hu * 1.2, hv + 0.08, 0.24, 0.30) for hu, hv in HILA)
    lungs = np.clip(a.lungs[0] + a.lungs[1], 0.0, 1.0)
    region = np.clip(haze, 0.0, 1.0) * lungs * (0.7 + 0.3 * F.noise(rng, 10, a.u, a.v))
    layers.add_fill(0.7 * severity * region)
    layers.marking_gain *= 1.0 + 1.2 * severity
    layers.masks["edema"] = region > 0.35


def lung_lesion(a: Anatomy, layers: Layers, rng, severity: float, masks, index) -> None:
    side = int(rng.integers(0, 2))
    cu, cv = _lung_point(rng, masks, index, side, v_range=(-0.55, 0.3))
    radius = rng.uniform(0.05, 0.09) * (0.7 + 0.3 * severity)
    region = F.ellipse(a.u, a.v, cu, cv, radius, radius * rng.uniform(0.85, 1.15), 0.0, 0.02)
    layers.add_fill(region)
    layers.metal += 0.05 * region  # a solid nodule is a bit denser than fluid
    layers.masks["lesion"] = region > 0.5


def pneumothorax(a: Anatomy, layers: Layers, rng, severity: float, masks, index) -> None:
    """The lung collapses toward its hilum: pleural air without markings at the apex and lateral
    side, with a thin visible visceral pleural line."""
    side = _side(rng, both_ok=False)[0]
    hu, hv = HILA[side]
    shrink = 1.0 - severity * rng.uniform(0.22, 0.32)
    cu, cv = hu + (a.u - hu) / shrink, hv + (a.v - hv) / shrink
    collapsed = lung_fields(masks, index, cu, cv)[side]
    air = np.clip(a.lungs[side] - collapsed, 0.0, 1.0)
    edge = np.clip(4.0 * collapsed * (1.0 - collapsed), 0.0, 1.0) * a.lungs[side]
    layers.pneumothorax = np.maximum(layers.pneumothorax, air)
    layers.pleural_line = np.maximum(layers.pleural_line, edge)
    layers.masks["pneumothorax"] = air > 0.5


def pleural_other(a: Anatomy, layers: Layers, rng, severity: float, masks, index) -> None:
    """Pleural thickening: a dense rim along the apical and lateral pleura of one lung."""
    side = _side(rng, both_ok=False)[0]
    cu, cv = (-0.42 if side == 0 else 0.42), 0.0
    shrink = 0.90
    inner = lung_fields(masks, index, cu + (a.u - cu) / shrink, cv + (a.v - cv) / shrink)[side]
    rim = np.clip(a.lungs[side] - inner, 0.0, 1.0) * (1.0 - F.smoothstep(0.1, 0.4, a.v))
    layers.add_fill(0.9 * severity * rim)
    layers.masks["pleural_other"] = rim > 0.4


def fracture(a: Anatomy, layers: Layers, rng, severity: float) -> None:
    """A displaced lateral rib fracture with callus: a dark gap and a bright bump."""
    sign = -1.0 if rng.random() < 0.5 else 1.0
    cu, cv = sign * rng.uniform(0.62, 0.74), rng.uniform(-0.45, 0.15)
    gap = F.ellipse(a.u, a.v, cu, cv, 0.025, 0.06, 0.3, 0.01)
    callus = F.ellipse(a.u, a.v, cu + sign * 0.035, cv + 0.02, 0.05, 0.035, 0.0, 0.015)
    layers.bone_delta += severity * (0.35 * callus - 0.15 * gap)
    layers.masks["fracture"] = (callus + gap) > 0.5


def support_devices(a: Anatomy, layers: Layers, rng, severity: float) -> None:
    """One to three of: endotracheal tube, central venous line, pacemaker with lead, gastric tube."""
    chosen = rng.permutation(4)[: int(rng.integers(1, 4))]
    metal = np.zeros_like(a.u)
    for kind in chosen:
        if kind == 0:  # endotracheal tube: midline, tip above the carina
            pts = np.array([[0.0, -1.05], [0.0, rng.uniform(-0.42, -0.32)]])
            metal = np.maximum(metal, F.line(a.u, a.v, pts, 0.03))
        elif kind == 1:  # right subclavian / jugular central line into the SVC
            pts = np.array([[-0.7, -0.86], [-0.35, -0.72], [-0.08, -0.55], [-0.06, rng.uniform(-0.2, -0.05)]])
            metal = np.maximum(metal, F.line(a.u, a.v, pts, 0.018))
        elif kind == 2:  # pacemaker generator in the left upper chest, lead into the RV
            box = F.ellipse(a.u, a.v, 0.55, -0.62, 0.12, 0.08, 0.2, 0.01)
            pts = np.array([[0.5, -0.6], [0.25, -0.55], [0.02, -0.35], [0.0, 0.1], [0.2, 0.42]])
            metal = np.maximum(metal, np.maximum(box, F.line(a.u, a.v, pts, 0.014)))
        else:  # gastric tube down the midline into the stomach
            pts = np.array([[0.0, -1.05], [0.02, 0.3], [0.2, 0.62], [0.42, 0.78]])
            metal = np.maximum(metal, F.line(a.u, a.v, pts, 0.018))
    layers.metal += (0.45 + 0.25 * severity) * metal
    layers.masks["devices"] = metal > 0.5
