"""The 14 CheXpert labels and their two shared representations.

As a dict ``{label: 1 | 0 | -1 | None}`` (positive, negative, uncertain, not mentioned) and as a
``float32 [14]`` tensor in the order of :data:`CHEXPERT_LABELS` (``nan`` for not mentioned).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
NUM_LABELS = len(CHEXPERT_LABELS)
_VALID_VALUES = (1, 0, -1, None)


def empty_labels() -> dict[str, int | None]:
    """Every label not mentioned."""
    return {name: None for name in CHEXPERT_LABELS}


def _check_value(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if value in (1, 0, -1) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"label '{name}': value {value!r} is not one of 1, 0, -1, None")


def labels_to_tensor(labels: Mapping[str, int | None]) -> torch.Tensor:
    """``{label: 1|0|-1|None}`` -> ``float32 [14]`` (nan for None / missing keys)."""
    unknown = set(labels) - set(CHEXPERT_LABELS)
    if unknown:
        raise ValueError(f"labels: unknown label name(s) {sorted(unknown)}; expected names from CHEXPERT_LABELS")
    out = torch.full((NUM_LABELS,), float("nan"), dtype=torch.float32)
    for name, value in labels.items():
        checked = _check_value(name, value)
        if checked is not None:
            out[LABEL_INDEX[name]] = float(checked)
    return out


def tensor_to_labels(tensor: torch.Tensor) -> dict[str, int | None]:
    """``float [14]`` -> ``{label: 1|0|-1|None}``; the inverse of :func:`labels_to_tensor`."""
    t = torch.as_tensor(tensor)
    if t.shape != (NUM_LABELS,):
        raise ValueError(f"labels tensor: expected shape ({NUM_LABELS},), got {tuple(t.shape)}")
    out: dict[str, int | None] = {}
    for name, value in zip(CHEXPERT_LABELS, t.tolist()):
        out[name] = _check_value(name, value)
    return out


def as_label_dict(labels) -> dict[str, int | None]:
    """Accept a dict (possibly partial) or a ``[14]`` tensor/array; return a full dict."""
    if isinstance(labels, Mapping):
        full = empty_labels()
        for name, value in labels.items():
            if name not in LABEL_INDEX:
                raise ValueError(f"labels: unknown label name '{name}'; expected names from CHEXPERT_LABELS")
            full[name] = _check_value(name, value)
        return full
    return tensor_to_labels(torch.as_tensor(labels, dtype=torch.float32))


UNCERTAIN_POLICIES = ("keep", "ones", "zeros", "ignore")
BLANK_POLICIES = ("ignore", "zeros")


def apply_label_policy(tensor: torch.Tensor, uncertain: str = "keep", blank: str = "ignore") -> torch.Tensor:
    """Map uncertain (-1) and blank (nan) entries.

    ``uncertain``: ``keep`` (-1 stays), ``ones`` (U-Ones), ``zeros`` (U-Zeros), ``ignore`` (-> nan, i.e.
    masked like an unmentioned label). ``blank``: ``ignore`` (nan stays) or ``zeros`` (not mentioned =
    negative, as many CheXpert baselines do).
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain policy '{uncertain}' is not one of {UNCERTAIN_POLICIES}")
    if blank not in BLANK_POLICIES:
        raise ValueError(f"blank policy '{blank}' is not one of {BLANK_POLICIES}")
    out = tensor.clone().to(torch.float32)
    is_unc = out == -1
    is_blank = torch.isnan(out)  # taken before 'ignore' turns uncertain entries into nan
    if uncertain == "ones":
        out[is_unc] = 1.0
    elif uncertain == "zeros":
        out[is_unc] = 0.0
    elif uncertain == "ignore":
        out[is_unc] = float("nan")
    if blank == "zeros":
        out[is_blank] = 0.0
    return out
