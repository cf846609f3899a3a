"""How the synthetic MIMIC-CXR-JPG tree spells things (REFERENCE.md §2): ids, CSV columns and cell
values, byte-stable ``.csv.gz`` files, and MIMIC-CXR-style report text built from an IU X-ray report.

Everything here is a pure function of its arguments, so two writes of the same plan give the same
bytes.
"""
from __future__ import annotations

import csv
import gzip
import io
import textwrap
from pathlib import Path

import numpy as np

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.data.sections import has_headers, parse_sections

PREFIX = "mimic-cxr-2.0.0-"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
                    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_LABELS)
VIEW_CODE_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral",
                     "": ""}
# Portable AP films are taken lying or sitting in bed; PA and lateral films standing.
PATIENT_ORIENTATION = {"PA": "Erect", "AP": "Recumbent", "LATERAL": "Erect", "LL": "Erect", "": ""}
REPORT_WIDTH = 78  # MIMIC-CXR reports are hard-wrapped at about 78 columns, each line indented by one space
_LABEL_CELL = {1: "1.0", 0: "0.0", -1: "-1.0", None: ""}


def dicom_id(rng: np.random.Generator) -> str:
    """A 44-character id in MIMIC-CXR-JPG's form: five dash-joined groups of 8 lower-case hex digits."""
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def label_cell(value) -> str:
    """A labeler value (1, 0, -1, None) as the CheXpert/NegBio CSVs write it (1.0, 0.0, -1.0, blank)."""
    try:
        return _LABEL_CELL[value]
    except KeyError:
        raise ValueError(f"label value {value!r} is not one of 1, 0, -1, None") from None


def label_row(subject_id: str, study_id: str, labels: dict) -> list[str]:
    return [subject_id, study_id, *(label_cell(labels[name]) for name in CHEXPERT_LABELS)]


def procedure_description(projections: tuple[str, ...]) -> str:
    """PerformedProcedureStepDescription of a study from the projections it holds."""
    frontal = [p for p in projections if p in ("PA", "AP")]
    lateral = any(p in ("LATERAL", "LL") for p in projections)
    if "PA" in frontal:
        return "CHEST (PA AND LAT)" if lateral else "CHEST (SINGLE VIEW)"
    if frontal:
        return "CHEST (AP AND LAT)" if lateral else "CHEST (PORTABLE AP)"
    return "CHEST (LAT)"


def csv_bytes(header, rows) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def write_csv_gz(path: Path, header, rows) -> None:
    """gzip with a zero timestamp and no embedded file name: the bytes depend on the rows only."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(csv_bytes(header, rows))


def _is_header_like(line: str) -> bool:
    """Would ``cxrl.data.sections`` read this line as the start of a new section?"""
    return line.strip().upper() == "FINAL REPORT" or has_headers(parse_sections(line))


def _wrap(text: str, first_width: int) -> list[str]:
    """Hard-wrap ``text``; a continuation line that would parse as a section header ("XXXX: ...") is
    joined to the line above, so wrapping never changes how the report splits into sections."""
    lines = textwrap.wrap(text, width=REPORT_WIDTH - 1, initial_indent=" " * (REPORT_WIDTH - 1 - first_width),
                          break_long_words=False, break_on_hyphens=False)
    if lines:
        lines[0] = lines[0].lstrip()
    merged: list[str] = []
    for line in lines:
        if merged and _is_header_like(line):
            merged[-1] = f"{merged[-1]} {line}"
        else:
            merged.append(line)
    return merged


def _inline_section(header: str, body: str) -> list[str]:
    """``HEADER:  text`` on one line, continued on the following lines (indication, comparison)."""
    lead = f" {header}:  "
    lines = _wrap(body, REPORT_WIDTH - len(lead))
    return [lead + lines[0], *(" " + line for line in lines[1:])]


def _block_section(header: str, body: str) -> list[str]:
    """``HEADER:``, a blank line, then the wrapped text (findings, impression). Text whose first line
    would itself look like a header starts on the header line instead."""
    lines = _wrap(body, REPORT_WIDTH - 1)
    if _is_header_like(lines[0]):
        return [f" {header}:  {lines[0]}", *(" " + line for line in lines[1:])]
    return [f" {header}: ", " ", *(" " + line for line in lines)]


def mimic_report(sections: dict[str, str], examination: str) -> str:
    """MIMIC-CXR-style free text from an IU X-ray report's sections.

    ``FINAL REPORT``, ``EXAMINATION:`` (the study's procedure), ``INDICATION:`` and ``COMPARISON:``
    (the IU text, or MIMIC's ``___`` / ``None.`` when the IU report has none), then ``FINDINGS:`` and
    ``IMPRESSION:`` when the IU report has them. The IU text is kept verbatim (its ``XXXX``
    de-identification marks included), so ``parse_sections`` gives back the same findings and
    impression.
    """
    if not (sections.get("findings") or sections.get("impression")):
        raise ValueError("report sections: need FINDINGS or IMPRESSION text")
    out = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {examination}", " "]
    out += _inline_section("INDICATION", sections.get("indication") or "___") + [" "]
    out += _inline_section("COMPARISON", sections.get("comparison") or "None.")
    for name in ("findings", "impression"):
        if sections.get(name):
            out += [" ", *_block_section(name.upper(), sections[name])]
    return "\n".join(out) + "\n"
