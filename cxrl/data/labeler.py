"""Rule-based CheXpert-14 report labeler.

``label_report(text) -> {label: 1 | 0 | -1 | None}``. The report is cut into sections and the labeler
reads findings + impression (the whole text when it has no headers). Each sentence is searched for
mentions (``labeler_rules.MENTIONS``); a mention's polarity comes from the nearest negation or
uncertainty cue in its own clause before it ("no effusion", "possible pneumonia"), or from what follows
it: a hedge ("pneumonia cannot be excluded") or a negating predicate ("effusion has resolved", "heart
size and pulmonary vascular engorgement appear within limits of normal" — the first verb group after
the mention, reached through at most a coordinated subject, so "cardiomegaly is stable and edema has
resolved" keeps the cardiomegaly). Neutral subjects ("heart size", "pulmonary vascularity") give a 0
the same way. A label is positive if any mention is, else uncertain if any is, else negative if any
mention (or "normal" phrase) says so, else None.
"No Finding" follows the CheXpert rule: 1 when no pathology (anything but Support Devices) is
positive or uncertain, otherwise None (CheXpert files never hold a 0 there).
"""
from __future__ import annotations

import re

from cxrl.data import labeler_rules as rules
from cxrl.data.labels import CHEXPERT_LABELS, empty_labels
from cxrl.data.sections import findings_and_impression, parse_sections

# Sentence ends: . ; ! ? and line breaks, but not the dot in "1.5 cm".
_SENTENCE_RE = re.compile(r"[^.;!?\n]+(?:(?<=\d)\.(?=\d)[^.;!?\n]*)*[.;!?\n]?")


def _normalise(text: str) -> str:
    text = text.lower().replace("x-xxxx", "x-ray")
    return " ".join(text.split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip(" .;!\n")]


def _last_match_end(pattern: re.Pattern, text: str) -> int:
    end = -1
    for m in pattern.finditer(text):
        end = m.end()
    return end


def _coordinated_subject(words: str) -> bool:
    """True when ``words`` (between a mention and its predicate) can only extend the subject: a short
    noun list ("and pulmonary vascular engorgement", ", mediastinal contour and vascularity")."""
    if len(words.split()) > 12:
        return False
    if "," in words:  # "A, B and C are normal" is a list; "cardiomegaly, lungs are clear" is two clauses
        return re.search(r"\b(?:and|or|nor)\b", words.rsplit(",", 1)[1]) is not None
    return True


def _post_negated(sentence: str, start: int, end: int) -> bool:
    """Whether the predicate that follows the mention denies it ("... appear within limits of normal",
    "... has resolved", "... is no longer seen"), within its clause."""
    if rules.PREDICATIVE_MENTION.search(sentence[start:end]):
        return False
    post = sentence[end:]
    stop = rules.SCOPE_END_POST.search(post)
    post = post[: stop.start()] if stop else post
    predicate = rules.PREDICATE_START.search(post)
    if predicate is None:
        return False
    between, at = post[: predicate.start()], predicate.start()
    if rules.NEGATING_PREDICATE.match(post, at):
        return _coordinated_subject(between)
    if rules.NEGATING_PREDICATE_BARE.match(post, at):  # verbless: a short subject without commas
        return len(between.split()) <= 6 and "," not in between
    return False


def _mention_value(sentence: str, start: int, end: int) -> int:
    """1 / 0 / -1 for one mention, from the cues scoped to its clause."""
    matched = sentence[start:end]
    if re.search(r"\b(?:not|no)\b", matched):  # "heart is not enlarged"
        return 0
    if rules.HEDGED_MENTION.search(matched):
        return -1
    pre = sentence[:start]
    cut = _last_match_end(rules.SCOPE_END_PRE, pre)
    pre = pre[cut:] if cut >= 0 else pre
    neg_end = _last_match_end(rules.NEGATION_PRE, pre)
    unc_end = _last_match_end(rules.UNCERTAIN_PRE, pre)
    post = sentence[end:]
    stop = rules.SCOPE_END_POST.search(post)
    post = post[: stop.start()] if stop else post
    post = post.split(",", 1)[0]  # an uncertainty cue after a comma is about something else
    if rules.UNCERTAIN_POST.search(post) or sentence.rstrip().endswith("?"):
        return -1
    if _post_negated(sentence, start, end):
        return 0
    if unc_end > neg_end:
        return -1
    if neg_end >= 0:
        return 0
    return 1


def label_text(text: str) -> dict[str, int | None]:
    """Label raw text (no section handling); see :func:`label_report`."""
    found: dict[str, list[int]] = {name: [] for name in CHEXPERT_LABELS}
    for sentence in split_sentences(_normalise(text)):
        for label, pattern in rules.MENTIONS.items():
            excluded = rules.EXCLUDED_AFTER.get(label)
            for m in pattern.finditer(sentence):
                if excluded is not None and excluded.search(sentence[max(0, m.start() - 40): m.start()]):
                    continue
                found[label].append(_mention_value(sentence, m.start(), m.end()))
        for label, pattern in rules.SUBJECTS.items():
            if any(_post_negated(sentence, m.start(), m.end()) for m in pattern.finditer(sentence)):
                found[label].append(0)
        for label, pattern in rules.NORMALS.items():
            if pattern.search(sentence):
                found[label].append(0)
    labels = empty_labels()
    for label, values in found.items():
        if not values:
            continue
        labels[label] = 1 if 1 in values else (-1 if -1 in values else 0)
    pathology_seen = any(labels[name] in (1, -1) for name in rules.PATHOLOGIES)
    labels["No Finding"] = None if pathology_seen else 1
    return labels


def label_report(text: str) -> dict[str, int | None]:
    """Free-text report -> ``{label: 1 | 0 | -1 | None}`` over the 14 CheXpert labels.

    Reads findings + impression when the report has section headers (indication and comparison
    text would otherwise leak "rule out pneumonia" into the labels); the whole text otherwise.
    """
    if not isinstance(text, str):
        raise ValueError(f"report text: expected str, got {type(text).__name__}")
    return label_text(findings_and_impression(parse_sections(text)))


def label_sections(sections: dict[str, str]) -> dict[str, int | None]:
    """Label a report that is already split into sections (e.g. IU X-ray XML)."""
    return label_text(findings_and_impression(sections))
