"""Data sources by name: the one place where ``phantom | iuxray | mimic | file`` and a split become a reader.

``open_dataset`` gives a dataset whose items follow the shared contract (``id``, ``prompt``, ``labels``,
``image``, ``posture``, ``report``) and whose ``prompt_entry(i)`` gives prompt and labels without reading an
image; ``prompt_pool`` turns the ``data`` config section into the RL's :class:`~cxrl.rl.prompts.PromptPool`;
``held_out_items`` chooses the evaluation prompts. Sources and splits are spelled as in
:data:`cxrl.config.DATA_SOURCES` and :data:`cxrl.config.SPLITS` everywhere (config, CLI, readers).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from cxrl.config import DATA_SOURCES, SPLITS, DataConfig
from cxrl.data.iuxray import IUXrayReports
from cxrl.data.mimic import MimicCXR
from cxrl.data.phantom import PhantomCXR
from cxrl.data.prompt_files import read_prompt_file
from cxrl.rl.prompts import PromptPool, without_findings

log = logging.getLogger(__name__)
DATASET_SOURCES = tuple(s for s in DATA_SOURCES if s != "file")   # the ones with images and splits
DEFAULT_RESOLUTION = {"phantom": 64, "iuxray": 512, "mimic": 512}


def open_dataset(source: str, split: str, *, path: str | Path = "", reports_path: str | Path = "",
                 resolution: int | None = None, seed: int = 0, posture_strength: float = 0.5,
                 views=("PA", "AP"), cache_dir=None, strict: bool = False, tokenizer=None, check_files: bool = True):
    """The reader of ``source`` for ``split``. ``path``: the MIMIC-CXR-JPG root (mimic, required) or the Open-i
    PNG directory (iuxray, optional: without it items have no image); ``reports_path``: the MIMIC-CXR reports
    root (mimic; without it prompts are written from the labels); ``seed``/``posture_strength``: the phantom
    renders; ``views``/``cache_dir``/``check_files``: MIMIC's view filter, image cache and file check."""
    if source not in DATASET_SOURCES:
        raise ValueError(f"data source {source!r} is not one of {DATASET_SOURCES}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    size = int(resolution or DEFAULT_RESOLUTION[source])
    if source == "phantom":
        return PhantomCXR(split=split, resolution=size, seed=seed, posture_strength=posture_strength)
    if source == "iuxray":
        return IUXrayReports(split=split, images_dir=path or None, resolution=size, tokenizer=tokenizer, strict=strict)
    if not path:
        raise ValueError("data source 'mimic' needs the MIMIC-CXR-JPG root directory (data.path; --root or --data-root on the command line)")
    return MimicCXR(path, split=split, views=tuple(views), resolution=size, reports_root=reports_path or None,
                    tokenizer=tokenizer, cache_dir=cache_dir, strict=strict, check_files=check_files)


def prompt_entries(dataset) -> list[dict]:
    """``{"prompt", "labels"}`` of every item of ``dataset`` (no image is read)."""
    return [dataset.prompt_entry(i) for i in range(len(dataset))]


def prompt_pool(data: DataConfig, tokenizer=None) -> PromptPool:
    """The configured data source as a :class:`PromptPool` of distinct prompts (``data.max_prompts`` caps it).

    phantom and iuxray both draw the IU X-ray reports shipped in torchxrayvision (the phantom world renders
    its images from those reports; only the prompt and labels matter here)."""
    if data.source != "file" and (data.prompt_column or data.weight_column):
        raise ValueError(f"data.prompt_column / data.weight_column are for data.source 'file' (CSV/JSONL), not {data.source!r}")
    if data.source == "file":
        if not data.path:
            raise ValueError("data.source is 'file' but data.path is empty: name a .txt/.csv/.jsonl prompt file")
        entries = read_prompt_file(data.path, prompt_column=data.prompt_column, weight_column=data.weight_column)
    else:
        # the RL reads prompts only: no Open-i image directory, no check that MIMIC's JPEGs exist
        path = data.path if data.source == "mimic" else ""
        entries = prompt_entries(open_dataset(data.source, data.split, path=path, reports_path=data.reports_path,
                                              tokenizer=tokenizer, check_files=False))
    unique = list({e["prompt"]: e for e in reversed(entries)}.values())[::-1]   # first occurrence wins
    if data.exclude_findings:
        kept = without_findings(unique, data.exclude_findings)
        log.info("data.exclude_findings: %d of %d prompts state %s present and are left out of the RL prompt pool",
                 len(unique) - len(kept), len(unique), " or ".join(data.exclude_findings))
        unique = kept
    if data.max_prompts:
        unique = unique[: data.max_prompts]
    return PromptPool(unique, weights=[e["weight"] for e in unique] if data.weight_column else None,
                      balanced=data.draw == "balanced", label_balance=data.label_balance)


def held_out_items(dataset, num_prompts: int, seed: int) -> list[dict]:
    """Items of ``num_prompts`` distinct prompts of ``dataset`` (the first item of each prompt; chosen by ``seed``,
    0 = all of them, in dataset order) — the evaluation prompts, with their images as the FID reference set."""
    first_of_prompt: dict[str, int] = {}
    for index in range(len(dataset)):
        first_of_prompt.setdefault(dataset.prompt_entry(index)["prompt"], index)
    candidates = sorted(first_of_prompt.values())
    if num_prompts == 0:
        return [dataset[i] for i in candidates]
    if num_prompts > len(candidates):
        raise ValueError(f"{num_prompts} held-out prompts requested: the split has only {len(candidates)} distinct prompts")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(int(seed)))[:num_prompts]
    return [dataset[candidates[i]] for i in sorted(order.tolist())]
