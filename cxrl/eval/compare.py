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


def _resampled_label_aurocs(probs: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor,
                            columns) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Each label's AUROC in every resample, ``{column: (auroc [R], defined [R])}``, for the labels (of ``columns``;
    None = all) with both classes on the full prompt set, without building a resample: a prompt drawn c times
    repeats its S images c times, so the Mann–Whitney count of a label is ``c_pos · W · c_neg`` with ``W[p, q]`` =
    the (ties ½) wins of prompt p's images over prompt q's, computed once per label. The same values as ranking
    every resample's images, up to float64 rounding. ``defined`` is False where a resample lacks a class or draws a
    prompt whose score for the label is not finite."""
    probs, labels = probs.double(), labels.double()
    per_prompt = probs.shape[1]
    wanted = range(probs.shape[2]) if columns is None else sorted({int(c) for c in columns})
    out = {}
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
        defined = (n_pos > 0) & (n_neg > 0) & (counts[:, bad].sum(dim=1) == 0)
        out[col] = (((c_pos @ wins) * c_neg).sum(dim=1) / (n_pos * n_neg * per_prompt ** 2).clamp_min(1.0), defined)
    return out


def _resampled_macro_auroc(probs: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor, columns) -> torch.Tensor:
    """:func:`cxrl.eval.auroc.macro_auroc` of each resample (``[R]``; NaN where no label has both classes): the mean
    of the labels defined in that resample."""
    total = torch.zeros(counts.shape[0], dtype=torch.float64)
    included = torch.zeros(counts.shape[0], dtype=torch.float64)
    for auroc, defined in _resampled_label_aurocs(probs, labels, counts, columns).values():
        total += torch.where(defined, auroc, torch.zeros_like(auroc))
        included += defined.double()
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
    return {key: _difference_entry(base_all[key], tuned_all[key], tuned_draws[key] - base_draws[key])
            for key in base_all}


def _difference_entry(base: float, tuned: float, draws: torch.Tensor) -> dict:
    """One row of a comparison: the full-set values and the bootstrap std and 95% interval of the difference over
    the resamples in which it is defined (finite)."""
    diff = tuned - base
    draws = draws[torch.isfinite(draws)]
    entry = {"base": base, "tuned": tuned, "diff": diff if math.isfinite(diff) else None,
             "std": None, "ci_low": None, "ci_high": None, "resamples": int(draws.numel())}
    if draws.numel() >= 2:
        entry.update(std=float(draws.std()), ci_low=float(draws.quantile(0.025)), ci_high=float(draws.quantile(0.975)))
    return entry


def paired_bootstrap_per_label(base: SampleScores, tuned: SampleScores, labels: torch.Tensor, resamples: int,
                               seed: int, names, columns=None) -> dict:
    """tuned − base of each label's AUROC (the labels of ``columns`` with both classes; None = all), paired and
    resampled exactly as :func:`paired_bootstrap` (same seed, same resamples): ``{name: entry}`` in label order.
    A macro AUROC change is an average over a handful of labels, each judged on its own few positive prompts;
    this says which labels carry it and which fall (the demo's Lung Lesion, docs/demo.md)."""
    if base.probs is None or tuned.probs is None:
        return {}
    counts = resample_counts(labels.shape[0], resamples, seed)
    base_draws = _resampled_label_aurocs(base.probs, labels, counts, columns)
    tuned_draws = _resampled_label_aurocs(tuned.probs, labels, counts, columns)
    repeated = labels.repeat_interleave(base.probs.shape[1], dim=0)
    base_full = macro_auroc(base.probs.double().flatten(0, 1), repeated, list(names), columns).per_label
    tuned_full = macro_auroc(tuned.probs.double().flatten(0, 1), repeated, list(names), columns).per_label
    out = {}
    for col, (base_auroc, base_defined) in base_draws.items():
        name = names[col]
        if name not in base_full or name not in tuned_full:
            continue   # not finite on the full set for one of the models
        tuned_auroc, tuned_defined = tuned_draws[col]
        nan = torch.full_like(base_auroc, math.nan)
        draws = torch.where(base_defined & tuned_defined, tuned_auroc - base_auroc, nan)
        out[name] = _difference_entry(base_full[name], tuned_full[name], draws)
    return out


def improved(comparison: dict, metric: str) -> bool:
    """True when tuned beats base on ``metric`` (one of posture, auroc, consistency)."""
    higher = dict(TARGET_METRICS)[metric]
    diff = comparison[metric]["diff"]
    return diff is not None and (diff > 0 if higher else diff < 0)


def comparison_markdown(comparison: dict, resamples: int, per_label: dict | None = None) -> str:
    """The tuned − base table; with ``per_label`` (:func:`paired_bootstrap_per_label`) a second one, per AUROC label."""
    text = _difference_table("## Tuned − base (paired by prompt and initial noise)", "metric", comparison, resamples)
    if per_label:
        text += "\n" + _difference_table("### AUROC per label, tuned − base (the same resamples)", "label", per_label,
                                         resamples)
    return text


def _difference_table(title: str, first_column: str, rows: dict, resamples: int) -> str:
    lines = [title, "",
             f"| {first_column} | base | tuned | tuned − base | bootstrap std | 95% CI ({resamples} prompt resamples) |",
             "|---|---|---|---|---|---|"]
    for key, entry in rows.items():
        def fmt(v, signed=False):
            return "n/a" if v is None else (f"{v:+.4f}" if signed else f"{v:.4f}")
        ci = "n/a" if entry["ci_low"] is None else f"[{entry['ci_low']:+.4f}, {entry['ci_high']:+.4f}]"
        lines.append(f"| {key} | {fmt(entry['base'])} | {fmt(entry['tuned'])} | {fmt(entry['diff'], True)} | "
                     f"{fmt(entry['std'])} | {ci} |")
    return "\n".join(lines) + "\n"
