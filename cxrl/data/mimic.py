"""MIMIC-CXR-JPG v2.x reader (credentialed data: users bring the directory).

Layout (REFERENCE.md §2): ``<root>/files/pXX/p<subject>/s<study>/<dicom>.jpg`` and the CSVs
``mimic-cxr-2.0.0-{metadata,split,chexpert|negbio}.csv`` (plain or ``.gz``) in ``root``. Free-text
reports (from the MIMIC-CXR release) live under ``<reports_root>/files/pXX/p<subject>/s<study>.txt``.
Rows are joined on dicom_id (split) and (subject_id, study_id) (labels); views filtered by
ViewPosition (empty ones only when ``""`` is in ``views``). Bad rows and files are skipped, counted
and listed in ``.issues`` (``strict=True`` raises instead).
"""
from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import torch

from cxrl.config.sections import SPLITS
from cxrl.data.image_cache import DONE, FAILED, open_image_cache, prepare_image_cache
from cxrl.data.images import IMAGE_ERRORS, load_gray_uint8, resolve_inside, uint8_to_tensor
from cxrl.data.issues import DataIssues
from cxrl.data.labels import CHEXPERT_LABELS, NUM_LABELS, apply_label_policy
from cxrl.data.prompts import build_prompt, prompt_from_labels

PREFIX = "mimic-cxr-2.0.0-"
_HOW_TO_GET = "MIMIC-CXR-JPG is credentialed data: download it from https://physionet.org/content/mimic-cxr-jpg/"


def find_csv(root: Path, name: str) -> Path:
    for candidate in (root / f"{PREFIX}{name}.csv", root / f"{PREFIX}{name}.csv.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root / (PREFIX + name)}.csv(.gz): not found. {_HOW_TO_GET}")


def read_csv(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        text = fh.read()
    return list(csv.DictReader(io.StringIO(text)))


def _require_columns(rows: list[dict], path: Path, columns: tuple[str, ...]) -> None:
    present = set(rows[0]) if rows else set()
    missing = [c for c in columns if c not in present]
    if rows and missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {sorted(present)}")


def _clean_id(value: str | None) -> str:
    value = (value or "").strip()
    return value[:-2] if value.endswith(".0") else value  # ids saved through pandas as floats


def _parse_label(value: str) -> float | None:
    value = (value or "").strip()
    if value == "":
        return float("nan")
    try:
        f = float(value)
    except ValueError:
        return None
    return f if f in (1.0, 0.0, -1.0) else None


def image_relpath(subject_id: str, study_id: str, dicom_id: str) -> str:
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


class MimicCXR(torch.utils.data.Dataset):
    """MIMIC-CXR-JPG frontal images with CheXpert (or NegBio) labels and report prompts.

    ``uncertain``: keep | ones | zeros | ignore; ``blank``: ignore | zeros (see ``apply_label_policy``).
    ``prompt_source``: impression | findings | both (used when ``reports_root`` is given; otherwise,
    and for a missing/empty report, the prompt is written from the labels).
    ``cache_dir``: where :meth:`prepare` writes the resized-image memmap (default ``~/.cache/cxrl/mimic``).
    """
    def __init__(self, root, split: str = "train", views=("PA", "AP"), resolution: int = 512, reports_root=None,

                 label_source: str = "chexpert", uncertain: str = "keep", blank: str = "ignore",
                 prompt_source: str = "impression", max_prompt_tokens: int | None = None, tokenizer=None,
                 cache_dir=None, strict: bool = False, check_files: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"MIMIC-CXR-JPG root {self.root}: not a directory. {_HOW_TO_GET}")
        if split not in SPLITS:
            raise ValueError(f"split '{split}' is not one of {SPLITS}")
        if label_source not in ("chexpert", "negbio"):
            raise ValueError(f"label_source '{label_source}' is not one of ('chexpert', 'negbio')")
        if resolution < 8:
            raise ValueError(f"resolution: must be >= 8, got {resolution}")
        self.split, self.views, self.resolution = split, tuple(v.upper() for v in views), int(resolution)
        self.reports_root = Path(reports_root) if reports_root is not None else None
        if self.reports_root is not None and not self.reports_root.is_dir():
            raise FileNotFoundError(f"reports_root {self.reports_root}: not a directory (MIMIC-CXR reports 'files/' tree expected)")
        self.uncertain, self.blank = uncertain, blank
        apply_label_policy(torch.zeros(NUM_LABELS), uncertain, blank)  # validates the policy names now
        self.prompt_source, self.max_prompt_tokens, self.tokenizer = prompt_source, max_prompt_tokens, tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "cxrl" / "mimic"
        self.issues = DataIssues(source=f"mimic-cxr[{split}]", strict=strict)
        self.stats = {"rows": 0, "other_split": 0, "other_view": 0}
        self._reported: set[tuple[str, str]] = set()
        self._index(label_source, check_files)
        self._cache = None

    # ---- indexing -------------------------------------------------------------------------------
    def _index(self, label_source: str, check_files: bool) -> None:
        split_path, meta_path, label_path = (find_csv(self.root, n) for n in ("split", "metadata", label_source))
        split_rows, meta_rows, label_rows = read_csv(split_path), read_csv(meta_path), read_csv(label_path)
        _require_columns(split_rows, split_path, ("dicom_id", "study_id", "subject_id", "split"))
        _require_columns(meta_rows, meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
        _require_columns(label_rows, label_path, ("subject_id", "study_id", *CHEXPERT_LABELS))
        split_of = {_clean_id(r["dicom_id"]): r["split"].strip() for r in split_rows if _clean_id(r["dicom_id"])}
        labels: dict[tuple[str, str], torch.Tensor] = {}
        for n, row in enumerate(label_rows, 2):
            key = (_clean_id(row["subject_id"]), _clean_id(row["study_id"]))
            if not all(key):
                self.issues.add("missing_ids", f"{label_path.name}:{n}", "subject_id/study_id empty")
                continue
            values = []
            for name in CHEXPERT_LABELS:
                parsed = _parse_label(row[name])
                if parsed is None:
                    self.issues.add("bad_label", f"{label_path.name}:{n}", f"{name}={row[name]!r} (read as blank)")
                    parsed = float("nan")
                values.append(parsed)
            labels[key] = torch.tensor(values, dtype=torch.float32)

        self.records: list[tuple[str, str, str, str]] = []  # dicom, subject, study, view
        self.paths: list[Path] = []
        self.labels: list[torch.Tensor] = []
        for n, row in enumerate(meta_rows, 2):
            self.stats["rows"] += 1
            dicom, subject, study = (_clean_id(row[k]) for k in ("dicom_id", "subject_id", "study_id"))
            where = f"{meta_path.name}:{n}"
            if not (dicom and subject and study):
                self.issues.add("missing_ids", where, f"dicom_id={dicom!r} subject_id={subject!r} study_id={study!r}")
                continue
            row_split = split_of.get(dicom)
            if row_split is None:
                self.issues.add("missing_ids", where, f"dicom_id {dicom} not in {split_path.name}")
                continue
            if row_split != self.split:
                self.stats["other_split"] += 1
                continue
            view = (row.get("ViewPosition") or "").strip().upper()
            if view not in self.views:
                self.stats["other_view"] += 1
                continue
            if not (subject.isdigit() and study.isdigit()):
                self.issues.add("bad_ids", where, f"subject_id={subject!r} study_id={study!r} are not numeric")
                continue
            path = resolve_inside(self.root, image_relpath(subject, study, dicom))
            if path is None:
                self.issues.add("path_escapes_root", where, f"dicom_id={dicom!r} resolves outside {self.root}")
                continue
            if check_files and not path.is_file():
                self.issues.add("missing_image", where, str(path))
                continue
            label = labels.get((subject, study))
            if label is None:
                self.issues.add("missing_labels", where, f"study s{study} has no row in {label_path.name}; labels left blank")
                label = torch.full((NUM_LABELS,), float("nan"))
            self.records.append((dicom, subject, study, view))
            self.paths.append(path)
            self.labels.append(label)

    # ---- cache ----------------------------------------------------------------------------------
    @property
    def cache_stem(self) -> Path:
        views = "-".join(v or "none" for v in self.views)
        return self.cache_dir / f"mimic_{self.split}_{views}_{self.resolution}"

    def ids(self) -> list[str]:
        return [r[0] for r in self.records]

    def prepare(self, limit: int | None = None, progress=None) -> dict:
        """Decode all images once into the memmap cache (resumes an interrupted run)."""
        result = prepare_image_cache(self.cache_stem, self.ids(), self.paths, self.resolution, limit=limit, progress=progress)
        for message in result["errors"]:
            path, _, detail = message.partition(": ")
            self._report("corrupt_image", path, detail)
        self._cache = None
        return result

    def _open_cache(self):
        if self._cache is None:
            self._cache = open_image_cache(self.cache_stem, self.ids(), self.resolution) or False
        return self._cache or None

    # ---- items ----------------------------------------------------------------------------------
    def _report(self, kind: str, where: str, detail: str) -> None:
        if (kind, where) not in self._reported:  # an item met again next epoch is not a new problem
            self._reported.add((kind, where))
            self.issues.add(kind, where, detail)

    def _image(self, index: int) -> torch.Tensor | None:
        cache = self._open_cache()
        if cache is not None:
            if cache.status[index] == DONE:
                return uint8_to_tensor(cache.images[index])
            if cache.status[index] == FAILED:
                self._report("corrupt_image", str(self.paths[index]), "unreadable when the cache was prepared")
                return None
        try:
            return uint8_to_tensor(load_gray_uint8(self.paths[index], self.resolution))
        except IMAGE_ERRORS as exc:
            self._report("corrupt_image", str(self.paths[index]), str(exc))
            return None

    def _prompt(self, index: int, labels: torch.Tensor) -> tuple[str, str]:
        dicom, subject, study, _ = self.records[index]
        if self.reports_root is None:
            return prompt_from_labels(labels), ""
        path = resolve_inside(self.reports_root, f"files/p{subject[:2]}/p{subject}/s{study}.txt")
        if path is None or not path.is_file():
            self._report("missing_report", f"s{study}", str(path))
            return prompt_from_labels(labels), ""
        report = path.read_text(encoding="utf-8", errors="replace")
        prompt = build_prompt(report, self.prompt_source, self.max_prompt_tokens, self.tokenizer)
        if not prompt:
            self._report("empty_report", f"s{study}", str(path))
            return prompt_from_labels(labels), report
        return prompt, report

    def __len__(self) -> int:
        return len(self.records)

    def prompt_entry(self, index: int) -> dict:
        """``{"prompt", "labels"}`` of item ``index`` (labels after the label policy) without reading its image."""
        raw = self.labels[index]
        return {"prompt": self._prompt(index, raw)[0], "labels": apply_label_policy(raw, self.uncertain, self.blank)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.records):
            raise IndexError(f"MimicCXR index {index} out of range [0, {len(self.records)})")
        # A corrupt image is counted and replaced by the next readable one, so an epoch never dies.
        for step in range(len(self.records)):
            i = (index + step) % len(self.records)
            image = self._image(i)  # raises DataError in strict mode
            if image is not None:
                break
        else:
            raise RuntimeError(f"{self.root}: no readable image in split '{self.split}'")
        raw = self.labels[i]
        labels = apply_label_policy(raw, self.uncertain, self.blank)
        prompt, report = self._prompt(i, raw)
        return {"id": self.records[i][0], "prompt": prompt, "labels": labels, "image": image, "posture": None,
                "report": report}
