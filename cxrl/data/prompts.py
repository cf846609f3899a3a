"""Report -> prompt text for the text encoder.

The prompt is the impression, the findings, or both (``source``), cut on a sentence boundary so that
it fits the tokenizer's limit (CLIP: 77 tokens including start/end). Without a tokenizer the length
is estimated as words + punctuation marks, which over-counts CLIP BPE slightly less often than it
under-counts, so a prompt that fits the estimate nearly always fits the real tokenizer.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

from cxrl.data.labeler import split_sentences
from cxrl.data.labels import CHEXPERT_LABELS, as_label_dict
from cxrl.data.sections import parse_sections

PROMPT_SOURCES = ("impression", "findings", "both")
DEFAULT_MAX_TOKENS = 77
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Word + punctuation count, plus 2 for the start/end tokens a CLIP tokenizer adds."""
    return len(_TOKEN_RE.findall(text)) + 2


def _token_counter(tokenizer) -> Callable[[str], int]:
    if tokenizer is None:
        return estimate_tokens
    if callable(tokenizer):
        return lambda text: len(tokenizer(text)["input_ids"])
    raise ValueError(f"tokenizer: expected a callable returning {{'input_ids': ...}} (a transformers tokenizer), got {type(tokenizer).__name__}")


def truncate_to_limit(text: str, max_tokens: int | None = None, tokenizer=None) -> str:
    """Longest prefix of whole sentences within ``max_tokens``; a first sentence that alone is too
    long is cut word by word (the only case that breaks a sentence)."""
    if max_tokens is None:
        max_tokens = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_TOKENS
        max_tokens = min(int(max_tokens), 10_000)  # HF uses a huge sentinel when no limit is set
    if max_tokens < 3:
        raise ValueError(f"max_tokens: must be at least 3, got {max_tokens}")
    count = _token_counter(tokenizer)
    text = " ".join(text.split())
    if count(text) <= max_tokens:
        return text
    kept: list[str] = []
    for sentence in split_sentences(text):
        candidate = " ".join(kept + [sentence])
        if count(candidate) > max_tokens:
            break
        kept.append(sentence)
    if kept:
        return " ".join(kept)
    words = text.split()
    lo, hi = 0, len(words)  # binary search: the longest word prefix that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(" ".join(words[:mid])) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def build_prompt(report: str | Mapping[str, str], source: str = "impression", max_tokens: int | None = None,
                 tokenizer=None) -> str:
    """Report text (or its sections dict) -> prompt.

    ``source``: ``impression`` (falls back to findings when there is none), ``findings`` (falls back
    to impression), or ``both`` (findings then impression). A report with neither section uses its
    whole text. Returns ``""`` for an empty report; callers decide what to do with that.
    """
    if source not in PROMPT_SOURCES:
        raise ValueError(f"prompt source '{source}' is not one of {PROMPT_SOURCES}")
    sections = parse_sections(report) if isinstance(report, str) else dict(report)
    findings, impression = sections.get("findings", ""), sections.get("impression", "")
    if source == "impression":
        text = impression or findings
    elif source == "findings":
        text = findings or impression
    else:
        text = " ".join(t for t in (findings, impression) if t)
    if not text:
        text = " ".join(body for name, body in sections.items() if name not in ("indication", "comparison", "technique", "examination"))
    return truncate_to_limit(text, max_tokens, tokenizer) if text.strip() else ""


def prompt_from_labels(labels) -> str:
    """A short report-like prompt written from labels (when no report text exists), e.g.
    ``"Cardiomegaly. Pleural effusion. Possible atelectasis."``; normal studies get
    ``"No acute cardiopulmonary abnormality."``."""
    d = as_label_dict(labels)
    positive = [n.lower() for n in CHEXPERT_LABELS[1:] if d[n] == 1]
    uncertain = [n.lower() for n in CHEXPERT_LABELS[1:] if d[n] == -1]
    parts = [p[0].upper() + p[1:] + "." for p in positive]
    parts += [f"Possible {u}." for u in uncertain]
    if not any(d[n] in (1, -1) for n in CHEXPERT_LABELS[1:13]):
        parts.insert(0, "No acute cardiopulmonary abnormality.")
    return " ".join(parts)
