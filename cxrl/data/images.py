"""Image decoding shared by the readers: 1 channel, aspect-preserving resize, centre crop, and the
check that a path named by a CSV/XML stays inside its dataset root."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# PIL refuses to decode absurd sizes by default (decompression bomb); real CXRs are < 5k x 5k.
Image.MAX_IMAGE_PIXELS = 60_000_000
IMAGE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` resolved (symlinks followed), or None when it escapes ``root``."""
    root_resolved = Path(os.path.realpath(root))
    candidate = Path(os.path.realpath(root_resolved / relative))
    if candidate == root_resolved or root_resolved not in candidate.parents:
        return None
    return candidate


def _to_uint8_gray(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit PNG/DICOM exports: stretch to 8 bit
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return arr.astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side -> ``resolution`` (aspect kept), then the central square."""
    w, h = img.size
    scale = resolution / min(w, h)
    new_w, new_h = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=2.0)
    left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def load_gray_uint8(path: Path | str, resolution: int) -> np.ndarray:
    """Decode ``path`` -> uint8 ``[resolution, resolution]``; raises one of ``IMAGE_ERRORS`` when the
    file is unreadable or truncated (``img.load()`` forces the full decode so corruption shows here)."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("L", (resolution, resolution))  # DCT-domain downscale: 4-8x faster on big JPEGs
        img.load()
        gray = Image.fromarray(_to_uint8_gray(img))
    return np.asarray(resize_center_crop(gray, resolution), dtype=np.uint8)


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W]`` -> float32 ``[1, H, W]`` in [0, 1]."""
    return torch.from_numpy(np.array(arr, dtype=np.uint8)).to(torch.float32).div_(255.0).unsqueeze(0)  # copy: memmap rows are read-only
