"""Write an evaluation to disk: ``metrics.json``, ``results.md`` (the paper-style table) and sample grids.

Layout of ``out_dir``::

    metrics.json          {name: metrics} — one object per model: posture, auroc, consistency, fid,
                          ms_ssim, n_prompts, feature_extractor (+ feature_extractor_reason: why those
                          features), evaluators, sampling, details
    run.json              what was evaluated: data, split, model dirs, prompt ids, ... (``extra``)
    results.md            Markdown table (r_align ↑, AUROC ↑, sim ↑, FID ↓, MS-SSIM ↓) + notes
    grids/<name>.png      first prompts x all samples of each model, captioned with the prompt
    grids/comparison.png  first sample per prompt, one column per model (base vs tuned side by side),
                          plus the real image of the prompt when there is one
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cxrl.eval.grids import save_comparison_grid, save_grid
from cxrl.eval.tables import markdown_table

GRID_PROMPTS = 4        # prompts shown per model grid (all their samples)
COMPARISON_PROMPTS = 8  # prompts shown in the side-by-side grid


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table_notes(results: dict[str, dict]) -> list[str]:
    """Which evaluators / feature extractor / MS-SSIM scales produced the numbers (shared across models)."""
    first = next(iter(results.values()))
    notes = []
    for kind, source in (first.get("evaluators") or {}).items():
        notes.append(f"{kind} evaluator: {source}")
    notes.append(f"FID features: {first.get('feature_extractor') or 'none'}"
                 + (f" vs {first['fid_reference_images']} reference images" if first.get("fid_reference_images") else "")
                 + (f" ({first['feature_extractor_reason']})" if first.get("feature_extractor_reason") else ""))
    if first.get("ms_ssim_scales"):
        notes.append(f"MS-SSIM: {first['ms_ssim_scales']} scales (weights {first.get('ms_ssim_weights')}), "
                     f"{first.get('samples_per_prompt')} samples per prompt, all pairs")
    notes.append(f"{first.get('n_prompts')} held-out prompts x {first.get('samples_per_prompt')} samples per model")
    if first.get("auroc_labels") is not None:
        min_prompts = first.get("auroc_min_label_prompts")
        labels = ", ".join(first["auroc_labels"]) or "none"
        notes.append(f"AUROC: macro over the labels with >= {min_prompts} positive and >= {min_prompts} negative prompts "
                     f"({labels}); over every label with both classes: "
                     + ", ".join(f"{name} {_fmt(m.get('auroc_all_labels'))}" for name, m in results.items()))
    for name, metrics in results.items():
        for note in metrics.get("notes") or []:
            notes.append(f"{name}: {note}")
    return notes


def showcase_order(labels: torch.Tensor) -> list[int]:
    """Prompt indices for the sample grids: first one prompt per finding label that some prompt states positive
    (labels in CheXpert order, the first such prompt not already taken), then every other prompt in order — so a
    held-out set that is mostly normal reports still shows its findings in the first rows. ``labels``: [P, 14]."""
    labels = torch.as_tensor(labels)
    chosen: list[int] = []
    for column in range(1, labels.shape[1]):   # column 0 is No Finding
        for p in (labels[:, column] == 1).nonzero().flatten().tolist():
            if p not in chosen:
                chosen.append(p)
                break
    return chosen + [p for p in range(labels.shape[0]) if p not in chosen]


def write_report(results: dict[str, dict], out_dir, samples: dict[str, torch.Tensor] | None = None,
                 prompts: Sequence[str] | None = None, extra: dict | None = None,
                 references: torch.Tensor | None = None, grid_order: Sequence[int] | None = None,
                 reference_label: str = "real") -> dict[str, Path]:
    """Write metrics.json, run.json (``extra``), results.md and (when ``samples[name] [P, S, C, H, W]`` and ``prompts`` are
    given) the grids; ``references [P, C, H, W]`` (the reference images of the prompts) become a column headed
    ``reference_label`` ("real" for real CXRs, "phantom render" for the phantom world's renders of the report)
    of the comparison grid; ``grid_order`` (e.g. :func:`showcase_order`) picks which prompts the grids show first
    (default: in order). Returns ``{artifact: path}``."""
    if not results:
        raise ValueError("write_report: no results to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["metrics"] = out / "metrics.json"
    written["metrics"].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    if extra:
        written["run"] = out / "run.json"
        written["run"].write_text(json.dumps(extra, indent=2, allow_nan=False) + "\n")
    written["table"] = out / "results.md"
    written["table"].write_text("# Evaluation\n\n" + markdown_table(results, table_notes(results)))
    if samples:
        if prompts is None:
            raise ValueError("write_report: prompts are needed to caption the sample grids")
        if grid_order is not None:
            index = torch.as_tensor(list(grid_order), dtype=torch.long)
            samples = {name: images[index] for name, images in samples.items()}
            prompts = [prompts[int(i)] for i in index]
            references = references[index] if references is not None else None
        for name, images in samples.items():
            shown = images[:GRID_PROMPTS]
            per_prompt = shown.shape[1]
            captions = [f"{k + 1}/{per_prompt} {prompts[p]}" for p in range(shown.shape[0]) for k in range(per_prompt)]
            written[f"grid:{name}"] = save_grid(shown.flatten(0, 1), captions, out / "grids" / f"{_safe_name(name)}.png",
                                                ncols=per_prompt)
        columns = {name: images[:COMPARISON_PROMPTS, 0] for name, images in samples.items()}
        if references is not None:
            first = next(iter(columns.values()))
            real = references[:COMPARISON_PROMPTS].float()
            if real.shape[0] != first.shape[0]:
                raise ValueError(f"write_report: {references.shape[0]} reference images for {next(iter(samples.values())).shape[0]} prompts")
            if real.shape[1:] != first.shape[1:]:  # e.g. 512-px MIMIC JPGs next to a 64-px model
                real = F.interpolate(real.mean(1, keepdim=True), size=first.shape[-2:], mode="bilinear",
                                     antialias=True, align_corners=False).expand(-1, first.shape[1], -1, -1)
            columns[reference_label] = real.clamp(0, 1)
        if len(columns) > 1:
            written["comparison"] = save_comparison_grid(columns, list(prompts[:COMPARISON_PROMPTS]), out / "grids" / "comparison.png")
    return written
