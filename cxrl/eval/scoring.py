"""Score a set of generated samples with the held-out evaluators: the five paper metrics for one model.

``score_samples`` is independent of how the samples were made (any generator, or real images as a
sanity check), so it is the piece to reuse from a notebook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from cxrl.data.labels import CHEXPERT_LABELS, NUM_LABELS
from cxrl.eval.auroc import macro_auroc, supported_label_columns
from cxrl.eval.evaluators import Evaluators
from cxrl.eval.fid import extract_features, fid_from_features
from cxrl.eval.metrics import batched_scores, finite_mean
from cxrl.eval.ms_ssim import ms_ssim_diversity


@dataclass
class SampleScores:
    """The evaluators' raw outputs per sample, ``[P, S]`` (prompt, sample): posture r_align and consistency
    (float64), the diagnostic evaluator's probabilities ``probs [P, S, NUM_LABELS]``; None where that
    evaluator is absent. Metrics and paired comparisons are computed from these."""

    posture: torch.Tensor | None
    consistency: torch.Tensor | None
    probs: torch.Tensor | None


def _clean(value):
    """JSON-safe number: NaN/Inf become None (json.dumps would write the invalid token NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def item_labels(items: Sequence[dict]) -> torch.Tensor:
    """Stack the items' ``labels`` (FloatTensor[NUM_LABELS] each; a missing one is all-unmentioned) -> [P, NUM_LABELS]."""
    rows = []
    for i, item in enumerate(items):
        labels = item.get("labels")
        labels = torch.full((NUM_LABELS,), math.nan) if labels is None else torch.as_tensor(labels, dtype=torch.float32).flatten()
        if labels.numel() != NUM_LABELS:
            raise ValueError(f"items[{i}] (id {item.get('id')!r}): 'labels' has {labels.numel()} entries, expected {NUM_LABELS}")
        rows.append(labels)
    return torch.stack(rows)


def score_samples(samples: torch.Tensor, items: Sequence[dict], evaluators: Evaluators,
                  feature_extractor=None, reference_features: torch.Tensor | None = None,
                  batch_size: int = 32, min_label_prompts: int = 1) -> tuple[dict, SampleScores]:
    """The paper metrics for ``samples [P, S, C, H, W]`` in [0, 1] made from ``items[p]["prompt"]``, and the
    per-sample evaluator outputs they were computed from.

    Returns a JSON-ready dict: ``posture`` (r_align), ``auroc`` (macro over the labels with at least
    ``min_label_prompts`` positive and as many negative prompts; ``auroc_all_labels``: every label with both classes),
    ``consistency`` (mean cosine sim), ``fid`` (vs ``reference_features`` with ``feature_extractor``),
    ``ms_ssim`` (diversity), ``n_prompts`` and the details of how each was computed. A metric whose
    evaluator or reference set is absent is ``None`` and the reason is recorded under ``notes``.
    """
    if samples.dim() != 5:
        raise ValueError(f"samples must be [prompts, samples_per_prompt, C, H, W], got shape {tuple(samples.shape)}")
    num_prompts, per_prompt = samples.shape[:2]
    if len(items) != num_prompts:
        raise ValueError(f"{len(items)} items for samples of {num_prompts} prompts")
    images = samples.flatten(0, 1)
    prompts = [items[p]["prompt"] for p in range(num_prompts) for _ in range(per_prompt)]
    prompt_labels = item_labels(items)
    labels = prompt_labels.repeat_interleave(per_prompt, dim=0)
    metadata = [{"labels": labels[i]} for i in range(images.shape[0])]
    notes: list[str] = []
    result: dict = {"n_prompts": int(num_prompts), "samples_per_prompt": int(per_prompt), "n_images": int(images.shape[0])}

    scores = SampleScores(None, None, None)
    for kind, what in (("posture", "posture r_align"), ("consistency", "image-report consistency")):
        model = getattr(evaluators, kind)
        if model is not None:
            values = batched_scores(model, images, prompts, metadata, batch_size)
            result[kind] = finite_mean(values, what)
            setattr(scores, kind, values.view(num_prompts, per_prompt))
        else:
            result[kind] = None
    if evaluators.diagnostic is not None:
        probs = torch.cat([evaluators.diagnostic.predict_proba(images[i:i + batch_size]).detach().cpu()
                           for i in range(0, images.shape[0], batch_size)])
        scores.probs = probs.view(num_prompts, per_prompt, -1)
        columns = supported_label_columns(prompt_labels, min_label_prompts)
        auroc = macro_auroc(probs, labels, list(CHEXPERT_LABELS), columns=columns)
        every_label = macro_auroc(probs, labels, list(CHEXPERT_LABELS))
        result["auroc"] = _clean(auroc.macro)
        result["auroc_min_label_prompts"] = int(min_label_prompts)
        result["auroc_labels"] = list(auroc.per_label)
        result["auroc_all_labels"] = _clean(every_label.macro)
        result["auroc_per_label"] = {k: round(v, 6) for k, v in every_label.per_label.items()}
        result["auroc_skipped_labels"] = every_label.skipped
        if math.isnan(auroc.macro):
            notes.append(f"AUROC undefined: no label had at least {min_label_prompts} positive and "
                         f"{min_label_prompts} negative prompt(s)")
    else:
        result["auroc"] = None
    for kind, key in (("posture", "posture"), ("diagnostic", "auroc"), ("consistency", "consistency")):
        if getattr(evaluators, kind) is None:
            notes.append(f"{key}: no {kind} evaluator given")

    if per_prompt >= 2:
        diversity = ms_ssim_diversity(samples)
        result.update(ms_ssim=diversity.mean, ms_ssim_scales=diversity.scales, ms_ssim_weights=list(diversity.weights))
    else:
        result["ms_ssim"] = None
        notes.append("MS-SSIM needs >= 2 samples per prompt")

    result["feature_extractor"] = getattr(feature_extractor, "name", None)
    if getattr(feature_extractor, "reason", ""):
        result["feature_extractor_reason"] = feature_extractor.reason
    if feature_extractor is None:
        result["fid"] = None
        notes.append("FID: no feature extractor chosen")
    elif reference_features is None:
        result["fid"] = None
        notes.append("FID: no reference images for these prompts")
    else:
        generated = extract_features(feature_extractor, images, batch_size)
        result["fid"] = fid_from_features(generated, reference_features)
        result["fid_reference_images"] = int(reference_features.shape[0])
    result["evaluators"] = evaluators.describe()
    result["notes"] = notes
    return {k: _clean(v) for k, v in result.items()}, scores


def reference_images(items: Sequence[dict]) -> torch.Tensor | None:
    """The items' real images stacked ``[N, 1, H, W]`` (None if no item has one); all must share a size."""
    images = [item["image"] for item in items if item.get("image") is not None]
    if not images:
        return None
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) != 1:
        raise ValueError(f"reference images differ in shape {sorted(shapes)}; resize them to one size first")
    return torch.stack([torch.as_tensor(img, dtype=torch.float32) for img in images])

