"""``render_phantom``: one procedural frontal chest radiograph from labels, a posture and a seed."""
from __future__ import annotations

import numpy as np
import torch

from cxrl.data.labels import LABEL_INDEX, as_label_dict
from cxrl.data.phantom import fields as F
from cxrl.data.phantom import findings as Fd
from cxrl.data.phantom.anatomy import LUNG_BOX, NORMAL_HEART_HALF_WIDTH, build_anatomy, heart_field
from cxrl.data.phantom.lung_masks import load_lung_masks
from cxrl.data.phantom.posture import IDENTITY_POSTURE, inverse_affine, posture_matrix

RENDERED_LABELS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                   "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                   "Pleural Other", "Fracture", "Support Devices")
UNCERTAIN_SEVERITY = 0.5  # an uncertain (-1) label is drawn at half strength
THORAX_WIDTH = LUNG_BOX[1] - LUNG_BOX[0]


def _severities(labels) -> dict[str, float]:
    if isinstance(labels, (torch.Tensor, np.ndarray)) or (isinstance(labels, (list, tuple)) and len(labels) == len(LABEL_INDEX)):
        labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    d = as_label_dict(labels)
    return {n: (1.0 if d[n] == 1 else UNCERTAIN_SEVERITY) for n in RENDERED_LABELS if d[n] in (1, -1)}


def _to_image(density: np.ndarray) -> np.ndarray:
    """Attenuation -> film brightness in [0, 1] (bright = dense), a gentle film curve."""
    return np.clip(1.0 - np.exp(-2.4 * np.clip(density, 0.0, None)), 0.0, 1.0) * 1.1 - 0.03


def render_phantom(labels, posture=None, seed: int = 0, resolution: int = 64) -> tuple[np.ndarray, dict]:
    """Render a phantom CXR.

    ``labels``: dict ``{label: 1|0|-1|None}`` (partial is fine) or a ``[14]`` tensor/array in
    CHEXPERT_LABELS order. ``posture``: ψ (5 values) or None for the identity; the image satisfies
    ``grid_sample(image, affine_grid(A(ψ)))`` ≈ the identity-posture render of the same seed.
    Returns ``(image float32 [H, W] in [0, 1], info)``; ``info`` holds ``posture`` (ψ),
    ``mask_index`` (which real lung shape), ``severity`` per drawn label, ``heart_half_width``,
    ``ctr`` (cardiothoracic ratio) and boolean ``masks`` in image space (lungs, heart, findings).
    """
    if not isinstance(resolution, (int, np.integer)) or resolution < 16:
        raise ValueError(f"resolution: expected an int >= 16, got {resolution!r}")
    psi = np.array(IDENTITY_POSTURE, dtype=np.float32) if posture is None else np.asarray(posture, dtype=np.float32).reshape(-1)
    inv = inverse_affine(posture_matrix(psi))
    severity = _severities(labels)
    rng = np.random.default_rng(int(seed))
    masks = load_lung_masks()
    mask_index = int(rng.integers(0, masks.shape[0]))

    x, y = F.pixel_grid(int(resolution))
    u = (inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]).astype(np.float32)
    v = (inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]).astype(np.float32)

    # Each finding draws from its own child generator, so adding one label never changes the
    # anatomy or the other findings of the same seed (tests compare images that differ by one label).
    children = {name: np.random.default_rng([int(seed), RENDERED_LABELS.index(name)]) for name in severity}
    heart_hw = NORMAL_HEART_HALF_WIDTH * rng.uniform(0.92, 1.06)
    if "Cardiomegaly" in severity:
        heart_hw *= 1.0 + severity["Cardiomegaly"] * children["Cardiomegaly"].uniform(0.4, 0.55)
    mediastinum_hw = 0.12 + 0.10 * severity.get("Enlarged Cardiomediastinum", 0.0)
    anatomy = build_anatomy(rng, masks, mask_index, u, v, heart_hw, mediastinum_hw)
    film_rng = np.random.default_rng([int(seed), 999])

    layers = Fd.Layers.empty(u.shape)
    c = children
    if "Pleural Effusion" in severity:
        Fd.effusion(anatomy, layers, c["Pleural Effusion"], severity["Pleural Effusion"])
    if "Consolidation" in severity:
        Fd.consolidation(anatomy, layers, c["Consolidation"], severity["Consolidation"], masks, mask_index)
    if "Pneumonia" in severity:
        Fd.consolidation(anatomy, layers, c["Pneumonia"], severity["Pneumonia"], masks, mask_index, patchy=True)
    if "Lung Opacity" in severity:
        Fd.patchy_opacity(anatomy, layers, c["Lung Opacity"], severity["Lung Opacity"], masks, mask_index)
    if "Atelectasis" in severity:
        Fd.atelectasis(anatomy, layers, c["Atelectasis"], severity["Atelectasis"])
    if "Edema" in severity:
        Fd.edema(anatomy, layers, c["Edema"], severity["Edema"])
    if "Lung Lesion" in severity:
        Fd.lung_lesion(anatomy, layers, c["Lung Lesion"], severity["Lung Lesion"], masks, mask_index)
    if "Pneumothorax" in severity:
        Fd.pneumothorax(anatomy, layers, c["Pneumothorax"], severity["Pneumothorax"], masks, mask_index)
    if "Pleural Other" in severity:
        Fd.pleural_other(anatomy, layers, c["Pleural Other"], severity["Pleural Other"], masks, mask_index)
    if "Fracture" in severity:
        Fd.fracture(anatomy, layers, c["Fracture"], severity["Fracture"])
    if "Support Devices" in severity:
        Fd.support_devices(anatomy, layers, c["Support Devices"], severity["Support Devices"])

    lungs = np.clip(anatomy.lungs[0] + anatomy.lungs[1], 0.0, 1.0)
    visible_lung = lungs * (1.0 - 0.85 * anatomy.heart)
    aerated = visible_lung * (1.0 - layers.fill) * (1.0 - layers.pneumothorax)
    apical_gain = 1.0 + 0.25 * np.clip(-anatomy.v, 0.0, 1.0)  # less soft tissue over the apices
    air = 0.27 * aerated * apical_gain + 0.45 * layers.pneumothorax * visible_lung
    density = anatomy.soft - air + anatomy.bone + layers.bone_delta + layers.metal + 0.12 * layers.pleural_line
    density += anatomy.markings * aerated * layers.marking_gain
    exposure = 0.06 * (F.noise(film_rng, 3, x, y) - 0.5)  # uneven exposure / scatter across the film
    image = _to_image(density + exposure)
    image += film_rng.normal(0.0, 0.012, size=image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)

    out_masks = {"lungs": lungs > 0.5, **anatomy.masks, **layers.masks}
    info = {"posture": psi.astype(np.float32), "mask_index": mask_index, "severity": severity,
            "heart_half_width": float(heart_hw), "ctr": float(2.0 * heart_hw / THORAX_WIDTH),
            "masks": out_masks, "seed": int(seed), "resolution": int(resolution)}
    return image, info


def canonical_heart_mask(heart_half_width: float, resolution: int) -> np.ndarray:
    """The heart silhouette in the canonical (identity posture) frame, for tests and metrics."""
    x, y = F.pixel_grid(int(resolution))
    return heart_field(x, y, heart_half_width) > 0.5
