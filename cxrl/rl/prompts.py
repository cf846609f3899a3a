"""The pool of prompts an RL run draws from each epoch, and the per-epoch draw.

Entries are dataset items (``{"prompt": str, "labels": FloatTensor[14] | None, ...}``, plus an optional
``"metadata"`` dict of extra prompt-file columns handed to the rewards); statistics (advantages, the anchor
cache) are keyed by prompt text. Each epoch draws ``samples_per_epoch / group_size`` prompts with a generator
derived from ``(seed, epoch)`` — the same on every rank and after a resume — and repeats each ``group_size``
times (the group). Draws take distinct prompts while the pool allows (so a group is one prompt's images);
weighted draws (``PromptPool(entries, weights)``) pick them one after the other, each in proportion to its
weight among the prompts not yet drawn this epoch (zero weight: never drawn).
"""
from __future__ import annotations

import numpy as np

from cxrl.rl.seeding import derive_seed


class PromptPool:
    def __init__(self, entries: list[dict], weights=None):
        if not entries:
            raise ValueError("prompt pool is empty: the data source yielded no prompts")
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("prompt"), str) or not e["prompt"].strip():
                raise ValueError(f"prompt pool entry {i} has no non-empty 'prompt' string: {e!r}")
        self.entries = list(entries)
        self.weights = None
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(self.entries),):
                raise ValueError(f"prompt weights: {w.size} weights for {len(self.entries)} prompts")
            bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
            if bad.size:
                raise ValueError(f"prompt weights must be finite and >= 0; prompt {self.entries[bad[0]]['prompt']!r} "
                                 f"has weight {w[bad[0]]}")
            if w.sum() <= 0:
                raise ValueError("prompt weights are all zero: no prompt could ever be drawn")
            self.weights = w / w.sum()

    def __len__(self) -> int:
        return len(self.entries)

    def draw(self, num_prompts: int, group_size: int, seed: int, epoch: int) -> list[dict]:
        """``num_prompts * group_size`` entries: distinct prompts while the pool allows, each ``group_size`` times."""
        rng = np.random.default_rng(derive_seed(seed, epoch, 0, "prompts"))
        if self.weights is not None:   # each pick in proportion to the weights of the prompts not yet drawn
            replace = num_prompts > int(np.count_nonzero(self.weights))
            idx = rng.choice(len(self.entries), size=num_prompts, replace=replace, p=self.weights)
        else:   # (kept apart: uniform draws stay identical to runs made before weights existed)
            replace = num_prompts > len(self.entries)
            idx = rng.choice(len(self.entries), size=num_prompts, replace=replace)
        return [self.entries[int(i)] for i in idx for _ in range(group_size)]


def load_prompt_pool(data_cfg, tokenizer=None) -> PromptPool:
    """The configured data source as a :class:`PromptPool` of distinct prompts (``data.max_prompts`` caps it).

    phantom and iu_xray both draw the IU X-ray reports shipped in torchxrayvision (the phantom world
    renders its images from those reports; only the prompt and labels matter here).
    """
    source = data_cfg.source
    prompt_column, weight_column = getattr(data_cfg, "prompt_column", ""), getattr(data_cfg, "weight_column", "")
    if source != "file" and (prompt_column or weight_column):
        raise ValueError(f"data.prompt_column / data.weight_column are for data.source 'file' (CSV/JSONL), not {source!r}")
    if source == "file":
        if not data_cfg.path:
            raise ValueError("data.source is 'file' but data.path is empty: name a .txt/.csv/.jsonl prompt file")
        entries = read_prompt_file(data_cfg.path, prompt_column=prompt_column, weight_column=weight_column)
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
    return PromptPool(unique, weights=[e["weight"] for e in unique] if weight_column else None)


def reward_metadata(entry: dict) -> dict:
    """What a reward gets as ``metadata[i]`` for a pool entry: its extra prompt-file columns and ``labels``
    (only when known)."""
    meta = dict(entry.get("metadata") or {})
    if entry.get("labels") is not None:
        meta["labels"] = entry["labels"]
    return meta


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


def read_prompt_file(path, prompt_column: str = "", weight_column: str = "") -> list[dict]:
    """Prompt entries from a file: ``.txt`` (one prompt per line), ``.csv`` or ``.jsonl``.

    CSV/JSONL: the prompt is column/key ``prompt_column`` ('' = ``prompt``, else ``report``). Optional labels:
    JSONL ``labels`` (14 numbers in CheXpert order or a {label: value} dict), or CSV columns named after
    CheXpert labels (1, 0, -1, blank; an all-blank row has no labels). ``weight_column`` names a non-negative
    sampling weight (``entry["weight"]``). Every other column/key goes to ``entry["metadata"]`` (CSV values as
    strings), which rewards receive.
    """
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        if prompt_column or weight_column:
            raise ValueError(f"{p}: a .txt prompt file has one prompt per line and no columns; "
                             "use a .csv/.jsonl file for data.prompt_column / data.weight_column")
        return [{"prompt": line.strip(), "labels": None} for line in p.read_text().splitlines() if line.strip()]
    if suffix == ".csv":
        return _read_prompt_csv(p, prompt_column, weight_column)
    if suffix == ".jsonl":
        entries = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{p}:{n}: not valid JSON ({err})") from err
            key = prompt_column or "prompt"
            if not isinstance(obj, dict) or not isinstance(obj.get(key), str):
                raise ValueError(f"{p}:{n}: each line must be an object with a {key!r} string")
            entries.append(_entry(obj, key, weight_column, f"{p}:{n}", _jsonl_labels(obj.get("labels"), f"{p}:{n}")))
        return entries
    raise ValueError(f"{p}: unsupported prompt file type '{suffix}' (use .txt, .csv or .jsonl)")


def _read_prompt_csv(p, prompt_column: str, weight_column: str) -> list[dict]:
    import csv

    import torch

    from cxrl.data.labels import CHEXPERT_LABELS

    with open(p, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, columns = list(reader), list(reader.fieldnames or [])
    column = prompt_column or next((c for c in ("prompt", "report") if c in columns), None)
    if column is None or column not in columns:
        want = repr(prompt_column) if prompt_column else "a 'prompt' or 'report'"
        raise ValueError(f"{p}: CSV needs {want} column, found {columns or 'no header'}")
    label_columns = [c for c in columns if c in CHEXPERT_LABELS]
    entries = []
    for n, row in enumerate(rows, 2):   # line 1 is the header
        if not (row[column] or "").strip():
            continue
        labels = None
        if label_columns:
            labels = torch.full((len(CHEXPERT_LABELS),), float("nan"))
            for c in label_columns:
                raw = (row[c] or "").strip()
                if raw:
                    try:
                        value = float(raw)
                    except ValueError:
                        value = None
                    if value not in (1.0, 0.0, -1.0):
                        raise ValueError(f"{p}:{n}: label column {c!r} is {raw!r}; expected 1, 0, -1 or blank")
                    labels[CHEXPERT_LABELS.index(c)] = value
            if bool(torch.isnan(labels).all()):
                labels = None   # nothing given for this row: unknown, as for a .txt prompt
        row = {k: v for k, v in row.items() if k not in label_columns and k is not None}
        entries.append(_entry(row, column, weight_column, f"{p}:{n}", labels))
    return entries


def _jsonl_labels(labels, where: str):
    import torch

    from cxrl.data.labels import labels_to_tensor

    if labels is None:
        return None
    if isinstance(labels, dict):
        return labels_to_tensor(labels)
    labels = torch.tensor([float("nan") if v is None else float(v) for v in labels], dtype=torch.float32)
    if labels.numel() != 14:
        raise ValueError(f"{where}: 'labels' has {labels.numel()} entries, expected 14 (CheXpert order)")
    return labels


def _entry(record: dict, prompt_key: str, weight_key: str, where: str, labels) -> dict:
    """One pool entry from a CSV row / JSONL object: prompt, labels, optional weight, the rest as metadata."""
    import math

    entry = {"prompt": record[prompt_key].strip(), "labels": labels}
    if weight_key:
        if weight_key not in record:
            raise ValueError(f"{where}: no weight column {weight_key!r} (data.weight_column); found {sorted(record)}")
        try:
            weight = float(record[weight_key])
        except (TypeError, ValueError):
            weight = float("nan")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}: weight column {weight_key!r} is {record[weight_key]!r}; expected a number >= 0")
        entry["weight"] = weight
    meta = {k: v for k, v in record.items() if k not in (prompt_key, weight_key, "labels")}
    if meta:
        entry["metadata"] = meta
    return entry
