"""User prompt files: ``.txt`` (one prompt per line), ``.csv`` or ``.jsonl`` with optional CheXpert labels,
a sampling-weight column and any other columns, which reach the rewards as ``metadata``.

Each entry is ``{"prompt": str, "labels": FloatTensor[NUM_LABELS] | None, ["weight": float],
["metadata": dict]}``; every malformed line is an error naming the file and the line.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import torch

from cxrl.data.labels import CHEXPERT_LABELS, NUM_LABELS, labels_to_tensor


def read_prompt_file(path, prompt_column: str = "", weight_column: str = "") -> list[dict]:
    """Prompt entries from a file: ``.txt`` (one prompt per line), ``.csv`` or ``.jsonl``.

    CSV/JSONL: the prompt is column/key ``prompt_column`` ('' = ``prompt``, else ``report``). Optional labels:
    JSONL ``labels`` (NUM_LABELS = 14 numbers in CheXpert order or a {label: value} dict), or CSV columns named after
    CheXpert labels (1, 0, -1, blank; an all-blank row has no labels). ``weight_column`` names a non-negative
    sampling weight (``entry["weight"]``). Every other column/key goes to ``entry["metadata"]`` (CSV values as
    strings), which rewards receive.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        if prompt_column or weight_column:
            raise ValueError(f"{p}: a .txt prompt file has one prompt per line and no columns; "
                             "use a .csv/.jsonl file for data.prompt_column / data.weight_column")
        return [{"prompt": line.strip(), "labels": None} for line in read_utf8(p).splitlines() if line.strip()]
    if suffix == ".csv":
        return _read_prompt_csv(p, prompt_column, weight_column)
    if suffix == ".jsonl":
        entries = []
        for n, line in enumerate(read_utf8(p).splitlines(), 1):
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


def read_utf8(path: Path) -> str:
    """The text of ``path``; a file that is not UTF-8 is an error naming the file, line and column."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                         "save the file as UTF-8") from None


def _read_prompt_csv(p, prompt_column: str, weight_column: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(read_utf8(p), newline=""))
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
    if labels is None:
        return None
    if isinstance(labels, dict):
        return labels_to_tensor(labels)
    labels = torch.tensor([float("nan") if v is None else float(v) for v in labels], dtype=torch.float32)
    if labels.numel() != NUM_LABELS:
        raise ValueError(f"{where}: 'labels' has {labels.numel()} entries, expected {NUM_LABELS} (CheXpert order)")
    return labels


def _entry(record: dict, prompt_key: str, weight_key: str, where: str, labels) -> dict:
    """One pool entry from a CSV row / JSONL object: prompt, labels, optional weight, the rest as metadata."""
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
