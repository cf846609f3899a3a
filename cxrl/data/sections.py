"""Split a free-text radiology report into its sections (FINDINGS, IMPRESSION, and the rest).

Headers are an upper-case phrase at the start of a line followed by a colon (``FINDINGS:``,
``IMPRESSION:``, ``CLINICAL HISTORY:``), the way MIMIC-CXR and IU X-ray reports write them.
Header spellings are folded onto a few canonical names so that callers can ask for ``findings`` or
``impression`` without caring which hospital wrote the report.
"""
from __future__ import annotations

import re

# canonical name -> header spellings (upper case, single spaces)
_HEADER_ALIASES = {
    "findings": ("FINDINGS", "FINDING", "REPORT", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"),
    "impression": ("IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS", "OPINION", "SUMMARY"),
    "indication": ("INDICATION", "INDICATIONS", "HISTORY", "CLINICAL HISTORY", "CLINICAL INDICATION",
                   "REASON FOR EXAM", "REASON FOR EXAMINATION", "CLINICAL INFORMATION"),
    "comparison": ("COMPARISON", "COMPARISONS", "PRIOR", "PRIORS"),
    "technique": ("TECHNIQUE", "PROCEDURE"),
    "examination": ("EXAMINATION", "EXAM", "STUDY", "TYPE OF EXAMINATION"),
}
_CANONICAL = {alias: name for name, aliases in _HEADER_ALIASES.items() for alias in aliases}
# sections that describe why/how the study was done, not what the image shows
NON_FINDING_SECTIONS = frozenset({"indication", "comparison", "technique", "examination", "preamble",
                                  "notification", "wet read", "final report", "addendum"})

# A header: start of a line, 2-40 chars of upper-case words, a colon. The lookahead keeps
# "NOTE: ..." style one-word headers but rejects mid-sentence colons ("ratio: 0.5").
_HEADER_RE = re.compile(r"^[ \t]*([A-Z][A-Z /&\-]{1,40}?)[ \t]*:", re.MULTILINE)
_FINAL_REPORT_RE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)


def _canonical(header: str) -> str:
    key = " ".join(header.split()).upper()
    return _CANONICAL.get(key, key.lower())


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_sections(text: str) -> dict[str, str]:
    """Report text -> ``{section name: text}`` in report order, whitespace normalised.

    Text before the first header is ``preamble``. A header repeated (rare) has its texts joined.
    A report with no headers at all comes back as ``{"preamble": text}``.
    """
    if not isinstance(text, str):
        raise ValueError(f"report text: expected str, got {type(text).__name__}")
    text = _FINAL_REPORT_RE.sub("", text)
    matches = list(_HEADER_RE.finditer(text))
    sections: dict[str, str] = {}

    def add(name: str, body: str) -> None:
        body = _clean(body)
        if not body:
            sections.setdefault(name, "")
            return
        sections[name] = f"{sections[name]} {body}".strip() if sections.get(name) else body

    start = 0
    name = "preamble"
    for m in matches:
        add(name, text[start:m.start()])
        name = _canonical(m.group(1))
        start = m.end()
    add(name, text[start:])
    if not sections.get("preamble"):
        sections.pop("preamble", None)
    return sections


def has_headers(sections: dict[str, str]) -> bool:
    return any(name != "preamble" for name in sections)


def findings_and_impression(sections: dict[str, str]) -> str:
    """The text a labeler should read: findings + impression; when neither is present, every section
    that is not about indication/comparison/technique (a headerless report is read whole)."""
    picked = [sections[n] for n in ("findings", "impression") if sections.get(n)]
    if picked:
        return " ".join(picked)
    return " ".join(body for name, body in sections.items() if name not in NON_FINDING_SECTIONS or
                    (name == "preamble" and not has_headers(sections)))
