"""RL with Comparative Feedback: the seed bank, deterministic initial noise and the anchor-score cache.

RLCF compares each policy image x with the frozen anchor's image x̂ for the same prompt from the *same
initial noise*: r_k = s_k(x) − s_k(x̂). The anchor is frozen, so s_k(x̂) depends only on (anchor weights,
prompt, seed, sampler settings, reward models) and can be computed once per run instead of once per
epoch — provided the same (prompt, seed) pairs recur. The :class:`SeedBank` makes them recur: each prompt
draws its initial noises from a fixed set of ``seeds_per_prompt`` seeds; :func:`noise_for` builds the
noise from a seed identically on every device.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import threading
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Mapping

import torch

_SEED_MASK = (1 << 63) - 1


class SeedBank:
    """Per-(prompt, k) seeds, k in [0, seeds_per_prompt): a stable hash of (base_seed, prompt, k)."""

    def __init__(self, seeds_per_prompt: int = 4, base_seed: int = 0):
        if int(seeds_per_prompt) < 1:
            raise ValueError(f"SeedBank: seeds_per_prompt must be >= 1, got {seeds_per_prompt}")
        self.seeds_per_prompt = int(seeds_per_prompt)
        self.base_seed = int(base_seed)

    def seed(self, prompt: str, k: int) -> int:
        if not 0 <= int(k) < self.seeds_per_prompt:
            raise ValueError(f"SeedBank: k={k} out of range [0, {self.seeds_per_prompt})")
        digest = hashlib.sha256(f"{self.base_seed}\x00{int(k)}\x00{prompt}".encode()).digest()
        return int.from_bytes(digest[:8], "little") & _SEED_MASK

    def seeds_for(self, prompts: Iterable[str], ks: Iterable[int] | None = None, offset: int = 0) -> list[int]:
        """Seeds for a batch. Without ``ks`` the i-th occurrence of a prompt in the batch takes
        k = (i + offset) mod seeds_per_prompt, so G copies of one prompt get G different seeds."""
        prompts = list(prompts)
        if ks is None:
            seen: dict[str, int] = defaultdict(int)
            ks = []
            for p in prompts:
                ks.append((seen[p] + offset) % self.seeds_per_prompt)
                seen[p] += 1
        ks = list(ks)
        if len(ks) != len(prompts):
            raise ValueError(f"SeedBank: {len(ks)} ks for {len(prompts)} prompts")
        return [self.seed(p, k) for p, k in zip(prompts, ks)]

    def state_dict(self) -> dict:
        return {"seeds_per_prompt": self.seeds_per_prompt, "base_seed": self.base_seed}


def noise_for(seeds: Iterable[int], shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Initial noise [len(seeds), *shape]: one CPU generator per seed (identical on every device), then moved."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32) for s in seeds]
    if not rows:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    return torch.stack(rows).to(device=device, dtype=dtype)


class AnchorScoreCache:
    """Anchor scores per (prompt, seed) under one namespace = hash(anchor weights, sampler settings, rewards).

    Stored as one small JSON file: ``{"namespace": ..., "meta": ..., "entries": {key: {reward: score}}}``.
    A file written under another namespace (other anchor, other settings) is ignored and replaced, never
    mixed in. Writes are atomic (temp file + os.replace). Thread-safe (the AsyncScorer worker uses it).
    """

    def __init__(self, path=None, anchor_hash: str = "", sampler_settings: Mapping | None = None,
                 reward_ids: Mapping | None = None, preload_dirs: Iterable = ()):
        meta = {"anchor_hash": anchor_hash, "sampler": dict(sampler_settings or {}), "rewards": dict(reward_ids or {})}
        self.meta = meta
        self.namespace = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict[str, float]] = {}
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._dirty = False
        if self.path is not None and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"anchor cache {self.path} is not valid JSON ({err}); delete it to start a fresh cache") from err
            if data.get("namespace") == self.namespace:
                self.entries = {k: dict(v) for k, v in data.get("entries", {}).items()}
        self.preloaded = 0
        for directory in preload_dirs:   # precomputed scores of this exact namespace (`cxrl anchor-scores`)
            shipped = Path(directory) / f"{self.namespace}.json.gz"
            if shipped.is_file():
                with gzip.open(shipped, "rt", encoding="utf-8") as fh:
                    entries = json.load(fh)["entries"]
                for key, scores in entries.items():
                    self.entries.setdefault(key, dict(scores))
                self.preloaded += len(entries)

    @staticmethod
    def key(prompt: str, seed: int) -> str:
        return hashlib.sha256(f"{int(seed)}\x00{prompt}".encode()).hexdigest()[:32]

    def get(self, prompt: str, seed: int, names: Iterable[str]) -> dict[str, float] | None:
        """The cached scores for (prompt, seed) if all of ``names`` are present, else None (a miss)."""
        with self._lock:
            entry = self.entries.get(self.key(prompt, seed))
            if entry is not None and all(n in entry for n in names):
                self.hits += 1
                return entry
            self.misses += 1
            return None

    def put(self, prompt: str, seed: int, scores: Mapping[str, float]) -> None:
        with self._lock:
            self.entries.setdefault(self.key(prompt, seed), {}).update({k: float(v) for k, v in scores.items()})
            self._dirty = True

    def __len__(self) -> int:
        return len(self.entries)

    def flush(self) -> None:
        if self.path is None or not self._dirty:
            return
        with self._lock:
            payload = json.dumps({"namespace": self.namespace, "meta": self.meta, "entries": self.entries})
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(payload)
            os.replace(tmp, self.path)
            self._dirty = False

    def export(self, directory) -> Path:
        """Write every entry to ``directory/<namespace>.json.gz``: what ``preload_dirs`` reads back."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"{self.namespace}.json.gz"
        with self._lock:
            payload = json.dumps({"namespace": self.namespace, "meta": self.meta, "entries": self.entries},
                                 sort_keys=True, separators=(",", ":"))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=target.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(payload.encode())
        os.chmod(tmp, 0o644)   # mkstemp makes it private; a shipped asset is read by everyone
        os.replace(tmp, target)
        return target

    def stats(self) -> dict:
        return {"entries": len(self.entries), "hits": self.hits, "misses": self.misses, "preloaded": self.preloaded}
