"""The pool of prompts an RL run draws from each epoch, and the per-epoch draw.

Entries are dataset items (``{"prompt": str, "labels": FloatTensor[14] | None, ...}``, plus an optional
``"metadata"`` dict of extra prompt-file columns handed to the rewards); statistics (advantages, the anchor
cache) are keyed by prompt text. Each epoch draws ``samples_per_epoch / group_size`` prompts with a generator
derived from ``(seed, epoch)`` — the same on every rank and after a resume — and repeats each ``group_size``
times (the group). Draws take distinct prompts while the pool allows (so a group is one prompt's images);
weighted draws (``PromptPool(entries, weights)``) pick them one after the other, each in proportion to its
weight among the prompts not yet drawn this epoch (zero weight: never drawn).

Balanced draws (``PromptPool(entries, balanced=True)``, ``data.draw: balanced``): a run sees only
``epochs * prompts_per_epoch`` prompts (the demo: 64), and a uniform draw of 64 can be far from the pool's mix of
findings — the demo's seed 4 drew 32 Lung Opacity prompts where the pool's share is 20, 18 with no finding where it is
26, and it was the seed whose held-out consistency fell (docs/demo.md, "Session 11": balanced draws fixed that and
missed AUROC for other seeds, so the demo draws uniformly). Each epoch then makes
``BALANCE_CANDIDATES`` draws in the uniform (or weighted) way from its ``(seed, epoch)`` generator and keeps the one
that brings the run's count of each finding (label = 1) so far closest to the pool's share, counted in binomial
standard errors so that a rare finding weighs as much as a common one. It is stratification, not selection by reward:
it looks at the labels of the prompts only. An epoch's draw depends on the earlier epochs' draws, which are replayed
from the seed (a resume draws the same prompts).

Label-balanced weights (``PromptPool(entries, label_balance=a)``, ``data.label_balance``): a run of 64 prompts
drawn uniformly from the IU X-ray train pool sees ~1.5 Pneumonia and ~2.3 Fracture reports and ~26 with no finding,
so the rare findings a macro-averaged metric weighs like the common ones are learnt from one or two prompts. Each
prompt's weight is ``n ** -a`` for the rarest class it belongs to, a class being a finding stated present, or a
finding stated absent (a report's "no pneumothorax"), ``n`` its number of prompts in the pool; a prompt that states
nothing weighs as the largest class. ``a = 0.5`` is square-root class-balanced sampling: Pneumonia 1.5 -> 3.1 and
Fracture 2.3 -> 4.1 prompts a run, No Finding 26 -> 20. The weights multiply a prompt file's weight column and
become the share that balanced draws aim at.
"""
from __future__ import annotations

import numpy as np

from cxrl.data.labels import LABEL_INDEX
from cxrl.rl.seeding import derive_seed

BALANCE_CANDIDATES = 8   # uniform draws an epoch chooses among under data.draw=balanced (1 would be the uniform draw)


class PromptPool:
    def __init__(self, entries: list[dict], weights=None, balanced: bool = False, label_balance: float = 0.0):
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
        if not np.isfinite(label_balance) or label_balance < 0:
            raise ValueError(f"data.label_balance must be a finite exponent >= 0, not {label_balance}")
        self.findings = None   # [N, 14] 1 where a prompt reports the finding (balanced draws)
        if balanced or label_balance > 0:
            labels = self._labels("data.draw=balanced balances" if balanced else "data.label_balance weighs")
            if label_balance > 0:
                w = label_balanced_weights(labels, label_balance)
                w = w if self.weights is None else w * self.weights
                self.weights = w / w.sum()
            if balanced:
                self.findings = (labels == 1).astype(np.float64)
        self._balanced_picks: dict = {}   # (seed, num_prompts) -> the picks of epochs 0, 1, ... so far

    def _labels(self, what: str) -> np.ndarray:
        unlabelled = [i for i, e in enumerate(self.entries) if e.get("labels") is None]
        if unlabelled:
            raise ValueError(f"{what} the findings of the prompts, but {len(unlabelled)} of "
                             f"{len(self.entries)} prompts have no labels (e.g. "
                             f"{self.entries[unlabelled[0]]['prompt'][:60]!r}); give the prompt file a labels "
                             "column, or use data.draw=uniform and data.label_balance=0")
        return np.stack([np.asarray(e["labels"], dtype=np.float64) for e in self.entries])

    def __len__(self) -> int:
        return len(self.entries)

    def _pick(self, rng: np.random.Generator, num_prompts: int) -> np.ndarray:
        if self.weights is not None:   # each pick in proportion to the weights of the prompts not yet drawn
            replace = num_prompts > int(np.count_nonzero(self.weights))
            return rng.choice(len(self.entries), size=num_prompts, replace=replace, p=self.weights)
        # (kept apart: uniform draws stay identical to runs made before weights existed)
        return rng.choice(len(self.entries), size=num_prompts, replace=num_prompts > len(self.entries))

    def _balanced_pick(self, num_prompts: int, seed: int, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s pick under balanced draws; the earlier epochs' picks are replayed once and memoised."""
        share = self.findings.mean(axis=0) if self.weights is None else self.weights @ self.findings
        kept = (share > 0) & (share < 1)   # a finding no prompt (or every prompt) reports cannot be balanced
        picks = self._balanced_picks.setdefault((seed, num_prompts), [])   # [(pick, finding counts after it)]
        while len(picks) <= epoch:
            e = len(picks)
            before = picks[-1][1] if picks else np.zeros(self.findings.shape[1])
            rng = np.random.default_rng(derive_seed(seed, e, 0, "prompts"))
            candidates = [self._pick(rng, num_prompts) for _ in range(BALANCE_CANDIDATES)]
            n = (e + 1) * num_prompts
            target, scale = n * share[kept], np.sqrt(n * share[kept] * (1 - share[kept]))
            imbalance = [float(((((before + self.findings[idx].sum(axis=0))[kept] - target) / scale) ** 2).sum())
                         for idx in candidates]
            chosen = candidates[int(np.argmin(imbalance))]   # the first of equals: deterministic
            picks.append((chosen, before + self.findings[chosen].sum(axis=0)))
        return picks[epoch][0]

    def draw(self, num_prompts: int, group_size: int, seed: int, epoch: int) -> list[dict]:
        """``num_prompts * group_size`` entries: distinct prompts while the pool allows, each ``group_size`` times."""
        if self.findings is not None:
            idx = self._balanced_pick(num_prompts, seed, epoch)
        else:
            idx = self._pick(np.random.default_rng(derive_seed(seed, epoch, 0, "prompts")), num_prompts)
        return [self.entries[int(i)] for i in idx for _ in range(group_size)]


def label_balanced_weights(labels: np.ndarray, power: float) -> np.ndarray:
    """Draw weights (summing to 1) of prompts with CheXpert ``labels`` [N, 14] (1 present, 0 absent, -1 uncertain,
    nan unmentioned): ``n ** -power`` of the rarest class a prompt belongs to, the classes being each label stated
    present and each label stated absent, ``n`` the class's size; a prompt in no class weighs as the largest one."""
    labels = np.asarray(labels, dtype=np.float64)
    classes = np.concatenate([labels == 1, labels == 0], axis=1)   # [N, 28]
    sizes = classes.sum(axis=0)
    class_weight = np.where(sizes > 0, np.maximum(sizes, 1.0) ** -power, 0.0)
    w = (classes * class_weight).max(axis=1)
    w[~classes.any(axis=1)] = class_weight[sizes > 0].min() if (sizes > 0).any() else 1.0
    return w / w.sum()


def without_findings(entries: list[dict], findings) -> list[dict]:
    """The entries whose labels state none of ``findings`` (CheXpert label names) present, in order. Uncertain and
    negated mentions stay: only a prompt asking for the finding is left out."""
    columns = [LABEL_INDEX[name] for name in findings]
    unlabelled = [e for e in entries if e.get("labels") is None]
    if unlabelled:
        raise ValueError(f"data.exclude_findings needs the findings of the prompts, but {len(unlabelled)} of "
                         f"{len(entries)} prompts have no labels (e.g. {unlabelled[0]['prompt'][:60]!r}); give the "
                         "prompt file a labels column")
    kept = [e for e in entries if not any(float(e["labels"][c]) == 1.0 for c in columns)]
    if not kept:
        raise ValueError(f"data.exclude_findings {list(findings)}: every one of the {len(entries)} prompts states one "
                         "of them; no prompt is left to train on")
    return kept


def reward_metadata(entry: dict) -> dict:
    """What a reward gets as ``metadata[i]`` for a pool entry: its extra prompt-file columns and ``labels``
    (only when known)."""
    meta = dict(entry.get("metadata") or {})
    if entry.get("labels") is not None:
        meta["labels"] = entry["labels"]
    return meta
