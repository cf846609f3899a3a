"""Resumable cache of decoded, resized images in one memory-mapped file.

``prepare_image_cache`` decodes every image once into ``<stem>.u8`` (uint8 ``[N, R, R]``) with a
``<stem>.status.npy`` (0 pending, 1 done, 2 unreadable) and a ``<stem>.json`` manifest naming the ids
it holds. Re-running it resumes: finished rows are skipped, and the status file is flushed every
``flush_every`` images, so a killed run loses at most that many. An epoch then reads rows from the
memmap and never decodes a JPEG again.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrl.data.images import IMAGE_ERRORS, load_gray_uint8

PENDING, DONE, FAILED = 0, 1, 2


def ids_digest(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


@dataclass
class ImageCache:
    stem: Path
    ids: list[str]
    resolution: int
    images: np.memmap
    status: np.ndarray

    def row(self, index: int) -> np.ndarray | None:
        return np.asarray(self.images[index]) if self.status[index] == DONE else None


def _paths(stem: Path) -> tuple[Path, Path, Path]:
    return stem.with_suffix(".u8"), stem.with_suffix(".status.npy"), stem.with_suffix(".json")


def _save_status(path: Path, status: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, status)
    os.replace(tmp, path)


def open_image_cache(stem: Path, ids: list[str], resolution: int, create: bool = False) -> ImageCache | None:
    """Open the cache at ``stem`` if its manifest matches ``ids``/``resolution`` (None otherwise);
    ``create`` makes a new empty one, replacing a mismatched one."""
    data_path, status_path, manifest_path = _paths(stem)
    manifest = {"ids_sha1": ids_digest(ids), "count": len(ids), "resolution": int(resolution), "dtype": "uint8"}
    shape = (len(ids), resolution, resolution)
    if manifest_path.is_file() and data_path.is_file() and status_path.is_file():
        try:
            found = json.loads(manifest_path.read_text())
            status = np.load(status_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            if not create:
                raise RuntimeError(f"image cache {stem}: unreadable manifest/status ({exc}); re-run prepare") from exc
            found, status = None, None
        if found is not None and all(found.get(k) == v for k, v in manifest.items()) and status is not None and status.shape == (len(ids),):
            images = np.memmap(data_path, dtype=np.uint8, mode="r+" if create else "r", shape=shape)
            return ImageCache(stem, ids, resolution, images, status.astype(np.int8))
    if not create:
        return None
    stem.parent.mkdir(parents=True, exist_ok=True)
    images = np.memmap(data_path, dtype=np.uint8, mode="w+", shape=shape)
    status = np.zeros(len(ids), dtype=np.int8)
    _save_status(status_path, status)
    manifest_path.write_text(json.dumps({**manifest, "ids": ids}) if len(ids) <= 1000 else json.dumps(manifest))
    # the manifest is written last: a cache without one is never mistaken for a finished cache
    return ImageCache(stem, ids, resolution, images, status)


def prepare_image_cache(stem: Path, ids: list[str], paths: list[Path], resolution: int, flush_every: int = 512,
                        progress=None, limit: int | None = None) -> dict:
    """Decode every pending image into the cache; returns ``{"done", "failed", "skipped", "errors"}``.

    ``limit`` stops after that many newly decoded images (the next call resumes from there).
    ``progress``: optional callable ``(done_so_far, total)``.
    """
    if len(ids) != len(paths):
        raise ValueError(f"prepare_image_cache: {len(ids)} ids but {len(paths)} paths")
    cache = open_image_cache(stem, ids, resolution, create=True)
    _, status_path, _ = _paths(stem)
    pending = np.flatnonzero(cache.status == PENDING)
    if limit is not None:
        pending = pending[:limit]
    errors: list[str] = []
    skipped = len(ids) - int((cache.status == PENDING).sum())
    for n, index in enumerate(pending, 1):
        try:
            cache.images[index] = load_gray_uint8(paths[index], resolution)
            cache.status[index] = DONE
        except IMAGE_ERRORS as exc:
            cache.status[index] = FAILED
            errors.append(f"{paths[index]}: {exc}")
        if n % flush_every == 0:
            cache.images.flush()  # pixels on disk before the status says so
            _save_status(status_path, cache.status)
            if progress is not None:
                progress(skipped + n, len(ids))
    cache.images.flush()
    _save_status(status_path, cache.status)
    return {"done": int((cache.status == DONE).sum()), "failed": int((cache.status == FAILED).sum()),
            "skipped": skipped, "pending": int((cache.status == PENDING).sum()), "errors": errors}
