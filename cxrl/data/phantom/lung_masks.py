"""Real lung shapes for the phantom: the 517 binary lung masks shipped in torchxrayvision
(``semantic_masks_v7labs_lungs.zip``), normalised once into a canonical box and cached.

Each mask is cropped to its lungs' bounding box and resized to ``MASK_SIZE`` squared, so every
phantom's lungs fill the same canonical box and the only misalignment is the recorded posture ψ.
The two lungs are split at the mediastinal gap (the emptiest column near the middle). The result
is cached in memory and, as a plain ``.npz`` (no pickles), under ``$CXRL_CACHE_DIR`` (default
``~/.cache/cxrl``) because decoding the 517 images takes a few seconds.
"""
from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from cxrl.data.iuxray import torchxrayvision_data_file

MASK_SIZE = 128
_CACHE_VERSION = 1
_LOCK = threading.Lock()
_MASKS: np.ndarray | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("CXRL_CACHE_DIR", Path.home() / ".cache" / "cxrl"))


def _split_lungs(mask: np.ndarray) -> np.ndarray | None:
    """Binary mask -> uint8 [2, S, S] (image-left lung, image-right lung) in the canonical box, or
    None for a mask that is not two plausible frontal lungs."""
    rows, cols = np.nonzero(mask)
    if rows.size < 500:
        return None
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    box = mask[top:bottom, left:right]
    w = box.shape[1]
    column_fill = box.sum(axis=0)
    middle = slice(int(w * 0.3), int(w * 0.7))
    gap = int(np.argmin(column_fill[middle])) + middle.start
    left_half, right_half = box.copy(), box.copy()
    left_half[:, gap:] = False
    right_half[:, :gap] = False
    halves = (left_half, right_half)
    fill = box.mean()
    left_share = halves[0].sum() / max(box.sum(), 1)
    if not (0.25 < fill < 0.85 and 0.25 < left_share < 0.75 and 0.5 < box.shape[0] / box.shape[1] < 1.6):
        return None
    out = []
    for half in halves:
        img = Image.fromarray(half.astype(np.uint8) * 255).resize((MASK_SIZE, MASK_SIZE), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


def _decode_zip(path: Path) -> np.ndarray:
    masks = []
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            if name.endswith("/"):
                continue
            try:
                with Image.open(io.BytesIO(zf.read(name))) as img:
                    img.draft("L", (512, 512))
                    arr = np.asarray(img.convert("L"))
            except (OSError, ValueError):
                continue  # an unreadable member only means one shape fewer
            small = np.asarray(Image.fromarray(arr).resize((256, round(256 * arr.shape[0] / arr.shape[1]))))
            split = _split_lungs(small > 127)
            if split is not None:
                masks.append(split)
    if not masks:
        raise RuntimeError(f"{path}: no usable lung masks found")
    return np.stack(masks)


def load_lung_masks() -> np.ndarray:
    """uint8 ``[N, 2, MASK_SIZE, MASK_SIZE]`` (0/255 with soft edges); loaded once per process."""
    global _MASKS
    with _LOCK:
        if _MASKS is not None:
            return _MASKS
        source = torchxrayvision_data_file("semantic_masks_v7labs_lungs.zip")
        stamp = f"{source.stat().st_size}"
        cached = cache_dir() / f"phantom_lung_masks_v{_CACHE_VERSION}_{MASK_SIZE}.npz"
        if cached.is_file():
            try:
                with np.load(cached, allow_pickle=False) as data:
                    if str(data["stamp"]) == stamp:
                        _MASKS = data["masks"]
                        return _MASKS
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache is rebuilt below
        masks = _decode_zip(source)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
            np.savez(tmp, masks=masks, stamp=np.array(stamp))
            os.replace(tmp, cached)
        except OSError:
            pass  # read-only home: keep the in-memory copy only
        _MASKS = masks
        return _MASKS
