"""The pool of prompts an RL run draws from each epoch, and the per-epoch draw.

Entries are dataset items (``{"prompt": str, "labels": FloatTensor[14] | None, ...}``, plus an optional
``"metadata"`` dict of extra prompt-file columns handed to the rewards); statistics (advantages, the anchor
cache) are keyed by prompt text. Each epoch draws ``samples_per_epoch / group_size`` prompts with a generator
derived from ``(seed, epoch)`` — the same on every rank and after a resume — and repeats each ``group_size``
times (the group). Draws take distinct prompts while the pool allows (so a group is one prompt's images);
weighted draws (``PromptPool(entries, weights)``) pick them one after the other, each in proportion to its
weight among the prompts not yet drawn this epoch (zero weight: never drawn).
"""
from __future__ import annotations

import numpy as np

from cxrl.rl.seeding import derive_seed


class PromptPool:
    def __init__(self, entries: list[dict], weights=None):
        if not entries:
            raise ValueError("prompt pool is empty: the data source yielded no prompts")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("prompt"), str) or not e["prompt"].strip():
                raise ValueError(f"prompt pool entry {i} has no non-empty 'prompt' string: {e!r}")
        self.entries = list(entries)
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.entries),):
                raise ValueError(f"prompt weights: {w.size} weights for {len(self.entries)} prompts")
            bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
            if bad.size:
                raise ValueError(f"prompt weights must be finite and >= 0; prompt {self.entries[bad[0]]['prompt']!r} "
                                 f"has weight {w[bad[0]]}")
            if w.sum() <= 0:
                raise ValueError("prompt weights are all zero: no prompt could ever be drawn")
            self.weights = w / w.sum()

    def __len__(self) -> int:
        return len(self.entries)

    def draw(self, num_prompts: int, group_size: int, seed: int, epoch: int) -> list[dict]:
        """``num_prompts * group_size`` entries: distinct prompts while the pool allows, each ``group_size`` times."""
        rng = np.random.default_rng(derive_seed(seed, epoch, 0, "prompts"))
        if self.weights is not None:   # each pick in proportion to the weights of the prompts not yet drawn
            replace = num_prompts > int(np.count_nonzero(self.weights))
            idx = rng.choice(len(self.entries), size=num_prompts, replace=replace, p=self.weights)
        else:   # (kept apart: uniform draws stay identical to runs made before weights existed)
            replace = num_prompts > len(self.entries)
            idx = rng.choice(len(self.entries), size=num_prompts, replace=replace)
        return [self.entries[int(i)] for i in idx for _ in range(group_size)]


def reward_metadata(entry: dict) -> dict:
    """What a reward gets as ``metadata[i]`` for a pool entry: its extra prompt-file columns and ``labels``
    (only when known)."""
    meta = dict(entry.get("metadata") or {})
    if entry.get("labels") is not None:
        meta["labels"] = entry["labels"]
    return meta
