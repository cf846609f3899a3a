"""The pool of prompts an RL run draws from each epoch, and the per-epoch draw.

Entries are dataset items (``{"prompt": str, "labels": FloatTensor[14] | None, ...}``); statistics
(advantages, the anchor cache) are keyed by prompt text. Each epoch draws
``samples_per_epoch / group_size`` prompts with a generator derived from ``(seed, epoch)`` — the
same on every rank and after a resume — and repeats each ``group_size`` times (the group).
"""
from __future__ import annotations

import numpy as np

from cxrl.rl.seeding import derive_seed


class PromptPool:
    def __init__(self, entries: list[dict]):
        if not entries:
            raise ValueError("prompt pool is empty: the data source yielded no prompts")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("prompt"), str) or not e["prompt"].strip():
                raise ValueError(f"prompt pool entry {i} has no non-empty 'prompt' string: {e!r}")
        self.entries = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def draw(self, num_prompts: int, group_size: int, seed: int, epoch: int) -> list[dict]:
        """``num_prompts * group_size`` entries: distinct prompts while the pool allows, each ``group_size`` times."""
        rng = np.random.default_rng(derive_seed(seed, epoch, 0, "prompts"))
        replace = num_prompts > len(self.entries)
        idx = rng.choice(len(self.entries), size=num_prompts, replace=replace)
        return [self.entries[int(i)] for i in idx for _ in range(group_size)]


def load_prompt_pool(data_cfg, tokenizer=None) -> PromptPool:
    """The configured data source as a :class:`PromptPool` of distinct prompts (``data.max_prompts`` caps it).

    phantom and iu_xray both draw the IU X-ray reports shipped in torchxrayvision (the phantom world
    renders its images from those reports; only the prompt and labels matter here).
    """
    source = data_cfg.source
    if source == "file":
        if not data_cfg.path:
            raise ValueError("data.source is 'file' but data.path is empty: name a .txt/.csv/.jsonl prompt file")
        entries = read_prompt_file(data_cfg.path)
    elif source in ("iu_xray", "phantom"):
        from cxrl.data.iuxray import IUXrayReports

        reports = IUXrayReports(split=data_cfg.split, tokenizer=tokenizer)
        entries = [{"prompt": p, "labels": reports.label_tensor(i)} for i, p in enumerate(reports.prompts)]
    elif source == "mimic":
        entries = _mimic_entries(data_cfg, tokenizer)
    else:
        raise ValueError(f"data.source {source!r} is not one of phantom, iu_xray, mimic, file")
    unique = list({e["prompt"]: e for e in reversed(entries)}.values())[::-1]   # first occurrence wins
    if data_cfg.max_prompts:
        unique = unique[: data_cfg.max_prompts]
    return PromptPool(unique)


def _mimic_entries(data_cfg, tokenizer) -> list[dict]:
    if not data_cfg.path:
        raise ValueError("data.source is 'mimic' but data.path is empty: name the MIMIC-CXR-JPG root")
    from cxrl.data.labels import apply_label_policy
    from cxrl.data.mimic import MimicCXR

    ds = MimicCXR(data_cfg.path, split=data_cfg.split, reports_root=data_cfg.reports_path or None,
                  tokenizer=tokenizer, check_files=False)
    entries = []
    for i in range(len(ds)):  # prompts and labels only: no image is read
        raw = ds.labels[i]
        prompt, _ = ds._prompt(i, raw)
        entries.append({"prompt": prompt, "labels": apply_label_policy(raw, ds.uncertain, ds.blank)})
    return entries


def read_prompt_file(path) -> list[dict]:
    """Prompts from ``.txt`` (one per line), ``.csv`` (column ``prompt`` or ``report``) or ``.jsonl``
    (objects with ``prompt`` and optional ``labels``: 14 numbers in CheXpert order or a {label: value} dict)."""
    import csv
    import json
    from pathlib import Path

    import torch

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return [{"prompt": line.strip(), "labels": None} for line in p.read_text().splitlines() if line.strip()]
    if suffix == ".csv":
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
        column = next((c for c in ("prompt", "report") if rows and c in rows[0]), None)
        if column is None:
            raise ValueError(f"{p}: CSV needs a 'prompt' or 'report' column, found {list(rows[0]) if rows else 'no rows'}")
        return [{"prompt": r[column].strip(), "labels": None} for r in rows if (r[column] or "").strip()]
    if suffix == ".jsonl":
        from cxrl.data.labels import labels_to_tensor

        entries = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{p}:{n}: not valid JSON ({err})") from err
            if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
                raise ValueError(f"{p}:{n}: each line must be an object with a 'prompt' string")
            labels = obj.get("labels")
            if isinstance(labels, dict):
                labels = labels_to_tensor(labels)
            elif labels is not None:
                labels = torch.tensor([float("nan") if v is None else float(v) for v in labels], dtype=torch.float32)
                if labels.numel() != 14:
                    raise ValueError(f"{p}:{n}: 'labels' has {labels.numel()} entries, expected 14 (CheXpert order)")
            entries.append({"prompt": obj["prompt"], "labels": labels})
        return entries
    raise ValueError(f"{p}: unsupported prompt file type '{suffix}' (use .txt, .csv or .jsonl)")
