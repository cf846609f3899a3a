"""Tuned − base, paired: the difference of each target metric on the same prompts and initial noises, with a
bootstrap over prompts (the same resample for both models) for its confidence interval, so a reader can tell
an improvement from evaluation noise."""
from __future__ import annotations

import math

import torch

from cxrl.eval.auroc import macro_auroc
from cxrl.eval.scoring import SampleScores

# (metric, higher is better) of the three reward-like metrics the RL is meant to improve
TARGET_METRICS = (("posture", True), ("auroc", True), ("consistency", True))


def metric_values(scores: SampleScores, labels: torch.Tensor, index: torch.Tensor, columns=None) -> dict[str, float]:
    """posture / consistency / auroc of the prompts ``index`` (with repeats, as a bootstrap draws them); ``auroc``
    over the label ``columns`` (fixed on the full prompt set, so every resample averages the same labels) and
    ``auroc_all_labels`` over every label."""
    values = {}
    for kind in ("posture", "consistency"):
        if getattr(scores, kind) is not None:
            values[kind] = float(getattr(scores, kind)[index].mean())
    if scores.probs is not None:
        probs = scores.probs.double()
        per_prompt = probs.shape[1]
        repeated = labels[index].repeat_interleave(per_prompt, dim=0)
        values["auroc"] = macro_auroc(probs[index].flatten(0, 1), repeated, columns=columns).macro
        if columns is not None:
            values["auroc_all_labels"] = macro_auroc(probs[index].flatten(0, 1), repeated).macro
    return values


def paired_bootstrap(base: SampleScores, tuned: SampleScores, labels: torch.Tensor, resamples: int, seed: int,
                     columns=None) -> dict:
    """tuned − base for posture, AUROC and consistency on all prompts, and over ``resamples`` bootstrap draws
    of the prompts (the same draw for both models: the samples are paired by prompt and initial noise).
    ``columns``: the labels of the AUROC (:func:`cxrl.eval.auroc.supported_label_columns`; None = all).
    Returns ``{metric: {"base", "tuned", "diff", "std", "ci_low", "ci_high", "resamples"}}`` (2.5 / 97.5 percentiles)."""
    num_prompts = labels.shape[0]
    full = torch.arange(num_prompts)
    base_all, tuned_all = metric_values(base, labels, full, columns), metric_values(tuned, labels, full, columns)
    draws: dict[str, list[float]] = {k: [] for k in base_all}
    generator = torch.Generator().manual_seed(int(seed))
    for _ in range(resamples):
        index = torch.randint(num_prompts, (num_prompts,), generator=generator)
        b, t = metric_values(base, labels, index, columns), metric_values(tuned, labels, index, columns)
        for key in draws:
            diff = t[key] - b[key]
            if math.isfinite(diff):  # a draw without both classes for any label has no AUROC
                draws[key].append(diff)
    out = {}
    for key in base_all:
        diff = tuned_all[key] - base_all[key]
        entry = {"base": base_all[key], "tuned": tuned_all[key], "diff": diff if math.isfinite(diff) else None,
                 "std": None, "ci_low": None, "ci_high": None, "resamples": len(draws[key])}
        if len(draws[key]) >= 2:
            values = torch.tensor(draws[key], dtype=torch.float64)
            entry.update(std=float(values.std()), ci_low=float(values.quantile(0.025)),
                         ci_high=float(values.quantile(0.975)))
        out[key] = entry
    return out


def improved(comparison: dict, metric: str) -> bool:
    """True when tuned beats base on ``metric`` (one of posture, auroc, consistency)."""
    higher = dict(TARGET_METRICS)[metric]
    diff = comparison[metric]["diff"]
    return diff is not None and (diff > 0 if higher else diff < 0)


def comparison_markdown(comparison: dict, resamples: int) -> str:
    lines = ["## Tuned − base (paired by prompt and initial noise)", "",
             f"| metric | base | tuned | tuned − base | bootstrap std | 95% CI ({resamples} prompt resamples) |",
             "|---|---|---|---|---|---|"]
    for key, entry in comparison.items():
        def fmt(v, signed=False):
            return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")
        ci = "n/a" if entry["ci_low"] is None else f"[{entry['ci_low']:+.4f}, {entry['ci_high']:+.4f}]"
        lines.append(f"| {key} | {fmt(entry['base'])} | {fmt(entry['tuned'])} | {fmt(entry['diff'], True)} | "
                     f"{fmt(entry['std'])} | {ci} |")
    return "\n".join(lines) + "\n"
