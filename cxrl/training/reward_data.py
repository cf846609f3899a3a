"""Training sets of the reward models, rendered / read once and held in memory (optionally cached on disk).

Phantom world: real IU X-ray reports of the *train* split, split again into two disjoint halves by a
stable hash of the report id — ``subset="reward"`` trains the reward models the RL optimises,
``subset="evaluator"`` trains the held-out evaluators that judge it (``"all"`` uses both). Each report is
rendered ``renders_per_report`` times in canonical posture (ψ = identity) with seeds derived from
(phantom_seed, report id, k); posture variation is added by the training augmentations.
MIMIC-CXR-JPG: the items of ``cxrl.data.MimicCXR(root, split)``, halved the same way by a stable hash of the
study id, with the prompts the RL draws from the reports (``reports_root``).
"""
from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cxrl.data import IUXrayReports, MimicCXR
from cxrl.data.phantom import render_phantom

SUBSETS = ("reward", "evaluator", "all")


def report_subset_of(report_id) -> str:
    """Stable half of the report ids: 'reward' or 'evaluator'."""
    return "reward" if zlib.crc32(f"cxrl-reward-split-{report_id}".encode()) % 2 == 0 else "evaluator"


def phantom_training_set(subset: str = "reward", phantom_seed: int = 0, renders_per_report: int = 4,
                         resolution: int = 64, max_items: int | None = None, split: str = "train") -> dict:
    """{"images": float16 [N,1,R,R] in [0,1], "labels": float32 [N,14], "prompts": list[str], "meta": dict}."""
    if subset not in SUBSETS:
        raise ValueError(f"report subset must be one of {SUBSETS}, got {subset!r}")
    if renders_per_report < 1:
        raise ValueError(f"renders_per_report must be >= 1, got {renders_per_report}")

    reports = IUXrayReports(split=split)
    t0 = time.perf_counter()
    images, labels, prompts = [], [], []
    for i in range(len(reports)):
        report_id = reports.reports[i].id
        if subset != "all" and report_subset_of(report_id) != subset:
            continue
        lab = reports.label_tensor(i)
        for k in range(renders_per_report):
            seed = zlib.crc32(f"{phantom_seed}-{report_id}-{k}".encode())
            image, _ = render_phantom(lab, posture=None, seed=seed, resolution=resolution)
            images.append(torch.as_tensor(image, dtype=torch.float32))
            labels.append(lab)
            prompts.append(reports.prompts[i])
            if max_items is not None and len(images) >= max_items:
                break
        if max_items is not None and len(images) >= max_items:
            break
    if not images:
        raise ValueError(f"phantom training set: no reports in split {split!r} subset {subset!r}")
    meta = {"source": "phantom", "split": split, "subset": subset, "phantom_seed": phantom_seed,
            "renders_per_report": renders_per_report, "resolution": resolution, "n": len(images),
            "n_reports": len(set(prompts)), "render_seconds": round(time.perf_counter() - t0, 2)}
    return {"images": torch.stack(images).unsqueeze(1).clamp(0, 1).half(), "labels": torch.stack(labels),
            "prompts": prompts, "meta": meta}


def mimic_training_set(root, split: str = "train", resolution: int = 64, limit: int | None = 20000, *,
                       reports_root=None, subset: str = "all", cache_dir=None) -> dict:
    """MIMIC-CXR-JPG items of ``split`` (frontal views), at most ``limit`` images, as
    {"images": float16 [N,1,R,R] in [0,1], "labels": float32 [N,14], "prompts": list[str], "meta": dict}.

    ``reports_root``: the MIMIC-CXR reports tree; the prompts are then the ones the RL prompt pool draws
    (:meth:`MimicCXR.prompt_entry`, the same reader and prompt builder as ``data.reports_path``), otherwise they
    are written from the labels. ``subset``: the study-id half, as :func:`report_subset_of` halves the phantom
    world's reports — "reward" for the models the RL optimises, "evaluator" for the held-out evaluators, "all".
    ``cache_dir``: where ``cxrl data prepare`` cached the decoded images (default ``~/.cache/cxrl/mimic``).
    Unreadable images are skipped (the reader would stand the next readable image in for them)."""
    if subset not in SUBSETS:
        raise ValueError(f"report subset must be one of {SUBSETS}, got {subset!r}")
    ds = MimicCXR(root, split=split, resolution=resolution, reports_root=reports_root, cache_dir=cache_dir)
    ids = ds.ids()
    images, labels, prompts, studies = [], [], [], set()
    for i in range(len(ds)):
        study = ds.records[i][2]
        if subset != "all" and report_subset_of(study) != subset:
            continue
        if limit is not None and len(images) >= limit:
            break
        item = ds[i]
        if item["id"] != ids[i]:   # image i is unreadable: the reader handed over a later item instead
            continue
        images.append(item["image"].float().reshape(1, resolution, resolution))
        labels.append(item["labels"])
        prompts.append(item["prompt"])
        studies.add(study)
    if not images:
        raise ValueError(f"MIMIC-CXR at {root}: no readable images in split {split!r} (report subset {subset!r})")
    meta = {"source": "mimic", "root": str(root), "split": split, "resolution": resolution, "subset": subset,
            "reports_root": str(reports_root) if reports_root is not None else None,
            "prompts_from": "reports" if reports_root is not None else "labels", "n": len(images),
            "n_studies": len(studies), "n_prompts": len(set(prompts)), "data_issues": dict(ds.issues.counts)}
    return {"images": torch.stack(images).clamp(0, 1).half(), "labels": torch.stack(labels), "prompts": prompts, "meta": meta}


def save_training_set(data: dict, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"meta": json.dumps(data["meta"], sort_keys=True), "prompts": json.dumps(data["prompts"])}
    save_file({"images": data["images"].contiguous(), "labels": data["labels"].contiguous()}, str(path), metadata=meta)


def load_training_set(path, expected_meta: dict | None = None) -> dict | None:
    """The cached set at ``path``, or None when absent or rendered with other settings."""
    path = Path(path)
    if not path.is_file():
        return None

    with safe_open(str(path), "pt") as f:
        header = f.metadata() or {}
    meta = json.loads(header.get("meta", "{}"))
    if expected_meta is not None and any(meta.get(k) != v for k, v in expected_meta.items()):
        return None
    tensors = load_file(str(path))
    return {"images": tensors["images"], "labels": tensors["labels"], "prompts": json.loads(header["prompts"]), "meta": meta}
