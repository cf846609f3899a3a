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


def resample_counts(num_prompts: int, resamples: int, seed: int) -> torch.Tensor:
    """``[resamples, num_prompts]`` float64: how often each prompt is drawn in each bootstrap resample (``num_prompts``
    draws with replacement per resample, one seeded generator, resample after resample)."""
    generator = torch.Generator().manual_seed(int(seed))
    counts = torch.zeros(resamples, num_prompts, dtype=torch.float64)
    for r in range(resamples):
        counts[r] = torch.bincount(torch.randint(num_prompts, (num_prompts,), generator=generator), minlength=num_prompts)
    return counts


def _resampled_means(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The mean of ``values [P, S]`` over each resample's prompts (with their repeats): ``[R]``."""
    values = values.double()
    return counts @ values.sum(dim=1) / (counts.sum(dim=1) * values.shape[1])


def _resampled_macro_auroc(probs: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, columns) -> torch.Tensor:
    """:func:`cxrl.eval.auroc.macro_auroc` of each resample (``[R]``; NaN where no label has both classes), without
    building it: a prompt drawn c times repeats its S images c times, so the Mann–Whitney count of a label is
    ``c_pos · W · c_neg`` with ``W[p, q]`` = the (ties ½) wins of prompt p's images over prompt q's, computed once
    per label. The same value as ranking every resample's images, up to float64 rounding."""
    probs, labels = probs.double(), labels.double()
    per_prompt = probs.shape[1]
    wanted = range(probs.shape[2]) if columns is None else sorted({int(c) for c in columns})
    total = torch.zeros(counts.shape[0], dtype=torch.float64)
    included = torch.zeros(counts.shape[0], dtype=torch.float64)
    for col in wanted:
        pos, neg = labels[:, col] == 1, labels[:, col] == 0
        if not pos.any() or not neg.any():
            continue
        scores = probs[:, :, col]
        # a prompt with a non-finite score makes the label unscorable in every resample that draws it
        bad = (pos | neg) & ~torch.isfinite(scores).all(dim=1)
        scores = torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)
        a, b = scores[pos].reshape(-1, 1), scores[neg].reshape(1, -1)
        wins = (a > b).double() + 0.5 * (a == b).double()             # [pos images, neg images]
        wins = wins.view(int(pos.sum()), per_prompt, int(neg.sum()), per_prompt).sum(dim=(1, 3))
        c_pos, c_neg = counts[:, pos], counts[:, neg]
        n_pos, n_neg = c_pos.sum(dim=1), c_neg.sum(dim=1)
        valid = (n_pos > 0) & (n_neg > 0) & (counts[:, bad].sum(dim=1) == 0)
        auroc = ((c_pos @ wins) * c_neg).sum(dim=1) / (n_pos * n_neg * per_prompt ** 2).clamp_min(1.0)
        total += torch.where(valid, auroc, torch.zeros_like(auroc))
        included += valid.double()
    return torch.where(included > 0, total / included.clamp_min(1.0), torch.full_like(total, math.nan))


def resampled_metric_values(scores: SampleScores, labels: torch.Tensor, counts: torch.Tensor,
                            columns=None) -> dict[str, torch.Tensor]:
    """:func:`metric_values` of every resample of ``counts`` (:func:`resample_counts`) at once: ``{metric: [R]}``."""
    values = {}
    for kind in ("posture", "consistency"):
        if getattr(scores, kind) is not None:
            values[kind] = _resampled_means(getattr(scores, kind), counts)
    if scores.probs is not None:
        values["auroc"] = _resampled_macro_auroc(scores.probs, labels, counts, columns)
        if columns is not None:
            values["auroc_all_labels"] = _resampled_macro_auroc(scores.probs, labels, counts, None)
    return values


def paired_bootstrap(base: SampleScores, tuned: SampleScores, labels: torch.Tensor, resamples: int, seed: int,
                     columns=None) -> dict:
    """tuned − base for posture, AUROC and consistency on all prompts, and over ``resamples`` bootstrap draws
    of the prompts (the same draw for both models: the samples are paired by prompt and initial noise).
    ``columns``: the labels of the AUROC (:func:`cxrl.eval.auroc.supported_label_columns`; None = all).
    Returns ``{metric: {"base", "tuned", "diff", "std", "ci_low", "ci_high", "resamples"}}`` (2.5 / 97.5 percentiles);
    a resample in which a metric is undefined for either model (no label with both classes) is left out of it."""
    num_prompts = labels.shape[0]
    full = torch.arange(num_prompts)
    base_all, tuned_all = metric_values(base, labels, full, columns), metric_values(tuned, labels, full, columns)
    counts = resample_counts(num_prompts, resamples, seed)
    base_draws = resampled_metric_values(base, labels, counts, columns)
    tuned_draws = resampled_metric_values(tuned, labels, counts, columns)
    out = {}
    for key in base_all:
        diff = tuned_all[key] - base_all[key]
        draws = tuned_draws[key] - base_draws[key]
        draws = draws[torch.isfinite(draws)]
        entry = {"base": base_all[key], "tuned": tuned_all[key], "diff": diff if math.isfinite(diff) else None,
                 "std": None, "ci_low": None, "ci_high": None, "resamples": int(draws.numel())}
        if draws.numel() >= 2:
            entry.update(std=float(draws.std()), ci_low=float(draws.quantile(0.025)),
                         ci_high=float(draws.quantile(0.975)))
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
