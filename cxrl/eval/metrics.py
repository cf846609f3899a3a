"""The paper's evaluation metrics as plain functions (Tables 1–2 of CXRL, MICCAI 2024).

* r_align ↑ — :func:`posture_alignment`: mean of the posture reward ``-||psi - psi_identity||`` over
  the generated images (0 = perfectly aligned; values are negative).
* AUROC ↑ — :func:`cxrl.eval.auroc.macro_auroc` of a classifier's scores vs the prompts' report labels.
* sim ↑ — :func:`image_report_consistency`: mean cosine similarity of image and report embeddings of a
  dual encoder (the consistency reward's raw score).
* FID ↓ — :func:`cxrl.eval.fid.fid_from_features` with a named feature extractor.
* MS-SSIM ↓ — :func:`cxrl.eval.ms_ssim.ms_ssim_diversity` (4 samples per prompt, 6 pairs).

The reward-based metrics take the *held-out evaluator* models (see ``cxrl.eval.evaluators``), never
the reward models the RL run optimised: a policy can overfit the exact network it was rewarded by.
"""
from __future__ import annotations

from typing import Sequence

import torch

from cxrl.eval.auroc import MacroAUROC, binary_auroc, macro_auroc
from cxrl.eval.fid import feature_statistics, fid_from_features, frechet_distance
from cxrl.eval.ms_ssim import DiversityResult, ms_ssim, ms_ssim_diversity, ssim

__all__ = [
    "posture_alignment", "image_report_consistency", "batched_scores",
    "binary_auroc", "macro_auroc", "MacroAUROC",
    "fid_from_features", "frechet_distance", "feature_statistics",
    "ssim", "ms_ssim", "ms_ssim_diversity", "DiversityResult",
]


@torch.no_grad()
def batched_scores(model, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
                   batch_size: int = 32, device: str | torch.device | None = None) -> torch.Tensor:
    """Call a reward-style model ``model(images, prompts, metadata) -> [B]`` over ``images [N, C, H, W]``
    in batches; returns ``[N]`` float64 on the CPU."""
    prompts = list(prompts)
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    if len(prompts) != images.shape[0] or len(metadata) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts and {len(metadata)} metadata dicts")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = torch.device(device) if device is not None else images.device
    out = []
    for i in range(0, images.shape[0], batch_size):
        scores = model(images[i:i + batch_size].to(target), prompts[i:i + batch_size], metadata[i:i + batch_size])
        out.append(torch.as_tensor(scores).detach().cpu().double().flatten())
    values = torch.cat(out)
    if values.numel() != images.shape[0]:
        raise ValueError(f"model {getattr(model, 'name', type(model).__name__)} returned {values.numel()} scores for {images.shape[0]} images")
    return values


def finite_mean(values: torch.Tensor, what: str) -> float:
    """Mean of an evaluator's scores; an empty or non-finite set is an error naming ``what``."""
    if values.numel() == 0:
        raise ValueError(f"{what}: no images to score")
    if not torch.isfinite(values).all():
        raise ValueError(f"{what}: the evaluator returned non-finite scores for {int((~torch.isfinite(values)).sum())} images")
    return float(values.mean())


def posture_alignment(posture_model, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None,
                      batch_size: int = 32) -> float:
    """r_align: mean posture reward ``-||psi - psi_identity||`` over the images (higher is better, <= 0)."""
    return finite_mean(batched_scores(posture_model, images, prompts, metadata, batch_size), "posture r_align")


def image_report_consistency(consistency_model, images: torch.Tensor, prompts: Sequence[str],
                             metadata: Sequence[dict] | None = None, batch_size: int = 32) -> float:
    """sim: mean cosine similarity of image and report embeddings (in [-1, 1], higher is better)."""
    return finite_mean(batched_scores(consistency_model, images, prompts, metadata, batch_size), "image-report consistency")
