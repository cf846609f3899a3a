"""AUROC of a classifier's scores on generated images against the labels of the prompts' reports.

Convention: for each label, only images whose report states the label as positive (1) or negative (0)
count; uncertain (-1) and unmentioned (NaN) entries are excluded. A label enters the macro average only
if both classes remain, and, when the caller asks for it (``columns`` from :func:`supported_label_columns`),
only if it has enough positive and negative prompts: a label stated positive by one prompt makes its AUROC
a verdict on that prompt's few images, and with a dozen labels in the macro mean such labels dominate the
noise of a small held-out set (CheXpert reports its five best-supported labels for the same reason).
AUROC is the Mann–Whitney statistic P(score_pos > score_neg) + 0.5 P(tie), computed from average ranks, so
ties are handled exactly and any monotone transform of the scores (logits vs probabilities) gives the same value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given the mean of the ranks they span."""
    order = torch.argsort(values, stable=True)
    sorted_vals = values[order]
    n = values.numel()
    # boundaries of runs of equal values in sorted order
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_vals[1:] != sorted_vals[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    positions = torch.arange(1, n + 1, dtype=torch.float64)
    run_sum = torch.zeros(int(run_id[-1]) + 1, dtype=torch.float64).index_add_(0, run_id, positions)
    run_len = torch.zeros_like(run_sum).index_add_(0, run_id, torch.ones(n, dtype=torch.float64))
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = (run_sum / run_len)[run_id]
    return ranks


def binary_auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """AUROC of ``scores [N]`` for binary ``targets [N]`` in {0, 1}; NaN if one class is absent."""
    scores = torch.as_tensor(scores).detach().cpu().double().flatten()
    targets = torch.as_tensor(targets).detach().cpu().double().flatten()
    if scores.shape != targets.shape:
        raise ValueError(f"scores and targets differ in length: {scores.numel()} vs {targets.numel()}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or Inf")
    if not ((targets == 0) | (targets == 1)).all():
        raise ValueError("targets must be 0 or 1 (filter uncertain / unmentioned labels first)")
    positives = int(targets.sum())
    negatives = targets.numel() - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(scores)
    rank_sum_pos = float(ranks[targets == 1].sum())
    u_statistic = rank_sum_pos - positives * (positives + 1) / 2
    return u_statistic / (positives * negatives)


@dataclass(frozen=True)
class MacroAUROC:
    """Macro AUROC over the labels that had both classes; ``per_label`` names each included label."""

    macro: float
    per_label: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)   # left out by ``columns`` (too few prompts)


def supported_label_columns(labels: torch.Tensor, min_count: int) -> list[int]:
    """Columns of ``labels [N, L]`` with at least ``min_count`` positive (1) and ``min_count`` negative (0)
    rows — pass the per-*prompt* labels, so the count is of prompts, not of images."""
    labels = torch.as_tensor(labels).detach().cpu().double()
    if labels.dim() != 2:
        raise ValueError(f"labels must be [N, L], got shape {tuple(labels.shape)}")
    if int(min_count) < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    positives, negatives = (labels == 1).sum(dim=0), (labels == 0).sum(dim=0)
    return [c for c in range(labels.shape[1]) if int(positives[c]) >= min_count and int(negatives[c]) >= min_count]


def macro_auroc(scores: torch.Tensor, labels: torch.Tensor, label_names: list[str] | None = None,
                columns=None) -> MacroAUROC:
    """Macro AUROC of ``scores [N, L]`` against report ``labels [N, L]`` (1 pos, 0 neg, -1 uncertain,
    NaN unmentioned). Labels without both classes, or whose scores are not finite (the classifier has
    no output for them), are skipped and listed in ``skipped``; labels outside ``columns`` (None: all)
    are listed in ``excluded``; the macro value is NaN when no label qualifies."""
    scores = torch.as_tensor(scores).detach().cpu().double()
    labels = torch.as_tensor(labels).detach().cpu().double()
    if scores.dim() != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores and labels must both be [N, L] of the same shape, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    names = list(label_names) if label_names is not None else [str(i) for i in range(scores.shape[1])]
    if len(names) != scores.shape[1]:
        raise ValueError(f"label_names has {len(names)} entries for {scores.shape[1]} score columns")
    per_label: dict[str, float] = {}
    skipped: list[str] = []
    wanted = set(range(scores.shape[1])) if columns is None else {int(c) for c in columns}
    excluded = [name for col, name in enumerate(names) if col not in wanted]
    for col, name in enumerate(names):
        if col not in wanted:
            continue
        target = labels[:, col]
        known = (target == 0) | (target == 1)  # NaN compares False: unmentioned drops out here too
        column = scores[known, col]
        # a classifier without an output for this label (NaN column, e.g. xrv vs CheXpert) cannot be scored
        usable = known.any() and bool(torch.isfinite(column).all())
        value = binary_auroc(column, target[known]) if usable else math.nan
        if math.isnan(value):
            skipped.append(name)
        else:
            per_label[name] = value
    macro = sum(per_label.values()) / len(per_label) if per_label else math.nan
    return MacroAUROC(macro=macro, per_label=per_label, skipped=skipped, excluded=excluded)
