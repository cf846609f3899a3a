"""IU X-ray (Open-i) reports: the 3,955 real reports shipped inside the torchxrayvision wheel.

``IUXrayReports(split=...)`` parses ``<torchxrayvision>/data/NLMCXR_reports.tgz`` once per process
(cached in memory), labels each report with :func:`cxrl.data.label_report`, and keeps its MeSH tags.
The split is a hash of the report id, so it is the same on every machine and never reshuffles when
reports are added. Images are optional: pass ``images_dir`` holding the Open-i PNGs
(``CXR<id>_<n>_IM-....png``); frontal views are picked with the DICOM metadata shipped beside the
reports. The reports are CC BY-NC-ND 4.0 (stated in every file).
"""
from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import torch

from cxrl.config.sections import SPLITS
from cxrl.data.images import IMAGE_ERRORS, load_gray_uint8, resolve_inside, uint8_to_tensor
from cxrl.data.issues import DataIssues
from cxrl.data.labeler import label_sections
from cxrl.data.labels import labels_to_tensor
from cxrl.data.prompts import build_prompt

_SECTION_ORDER = ("indication", "comparison", "findings", "impression")


def torchxrayvision_data_file(name: str) -> Path:
    """A data file shipped inside the torchxrayvision wheel, found without importing the package (its import
    pulls in scikit-image and pandas: seconds per process, for a path)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:  # a declared dependency, but say what to do
        raise FileNotFoundError(f"{name}: needs the torchxrayvision package (pip install torchxrayvision)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; reinstall torchxrayvision (>= 1.2) which ships this file")
    return path


def split_of(report_id: int) -> str:
    """80/10/10 train/validate/test by a stable hash of the id."""
    bucket = zlib.crc32(f"iuxray-{report_id}".encode()) % 10
    return "train" if bucket < 8 else ("validate" if bucket == 8 else "test")


@dataclass(frozen=True)
class IUReport:
    id: int
    sections: dict            # canonical section name -> text
    mesh_major: tuple         # e.g. ("Cardiomegaly/mild", "Pleural Effusion/left")
    mesh_minor: tuple
    image_ids: tuple          # Open-i image names, e.g. "CXR1_1_IM-0001-3001"
    labels: dict              # from the rule labeler

    @property
    def text(self) -> str:
        return "\n".join(f"{n.upper()}: {self.sections[n]}" for n in _SECTION_ORDER if self.sections.get(n))


def _parse_xml(data: bytes) -> tuple[int, dict, tuple, tuple, tuple]:
    root = ElementTree.fromstring(data)
    node = root.find("IUXRId")
    report_id = int(node.get("id")) if node is not None else -1
    sections = {}
    for abstract in root.iter("AbstractText"):
        label = (abstract.get("Label") or "").strip().lower()
        body = " ".join((abstract.text or "").split())
        if label and body:
            sections[label] = body
    major = tuple((m.text or "").strip() for m in root.iter("major") if (m.text or "").strip())
    minor = tuple((m.text or "").strip() for m in root.iter("minor") if (m.text or "").strip())
    images = tuple(img.get("id") for img in root.iter("parentImage") if img.get("id"))
    return report_id, sections, major, minor, images


_CACHE: dict[tuple, tuple[list[IUReport], DataIssues]] = {}
_CACHE_LOCK = threading.Lock()


FROZEN_LABELS = Path(__file__).resolve().parent.parent / "assets" / "iuxray_labels_v1.json.gz"


def frozen_labels() -> dict[int, dict]:
    """The phantom world's labels of the shipped IU X-ray reports: what labeler v1 read, kept as data.

    The phantom renders, the shipped base generator, reward models and evaluators, and the demo's held-out
    labels are all built from these labels, so they are part of the world's definition, like the CheXpert
    CSV of MIMIC-CXR: a better labeler (``cxrl.data.labeler``, measured by ``cxrl data labeler-eval``) labels
    new reports and user prompts, and changing the world's labels means re-releasing every shipped model."""
    with gzip.open(FROZEN_LABELS, "rt", encoding="utf-8") as fh:
        payload = json.load(fh)
    codes, order = payload["codes"], payload["labels_order"]
    return {int(rid): {name: codes[c] for name, c in zip(order, text)} for rid, text in payload["labels"].items()}


def load_iu_reports(path: Path | str | None = None) -> tuple[list[IUReport], DataIssues]:
    """Every report in the archive (all splits), labelled; parsed once per process and path. The archive shipped
    in torchxrayvision (``path`` None) carries the phantom world's frozen labels (:func:`frozen_labels`); any
    other archive is labelled by the current rule labeler."""
    shipped = path is None
    path = Path(path) if path is not None else torchxrayvision_data_file("NLMCXR_reports.tgz")
    if not path.is_file():
        raise FileNotFoundError(f"IU X-ray reports archive {path}: not found")
    key = (str(path.resolve()), path.stat().st_mtime_ns, shipped)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        issues = DataIssues(source=f"iuxray reports ({path.name})")
        frozen = frozen_labels() if shipped else {}
        reports: list[IUReport] = []
        with tarfile.open(path, "r:gz") as tar:  # members are read as bytes, never extracted to disk
            for member in tar:
                if not (member.isfile() and member.name.endswith(".xml")):
                    continue
                try:
                    report_id, sections, major, minor, images = _parse_xml(tar.extractfile(member).read())
                except (ElementTree.ParseError, ValueError) as exc:
                    issues.add("corrupt_report", member.name, str(exc))
                    continue
                if report_id < 0:
                    issues.add("missing_ids", member.name, "no <IUXRId>")
                    continue
                labels = frozen[report_id] if report_id in frozen else label_sections(sections)
                reports.append(IUReport(report_id, sections, major, minor, images, labels))
        reports.sort(key=lambda r: r.id)
        _CACHE[key] = (reports, issues)
        return reports, issues


def _frontal_views() -> dict[str, str]:
    """Open-i image id -> DICOM ViewPosition, from the metadata shipped with torchxrayvision."""
    views = {}
    with gzip.open(torchxrayvision_data_file("nlmcxr_dicom_metadata.csv.gz"), "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            views[row["imageid"]] = (row.get("View Position") or "").strip().upper()
    return views


class IUXrayReports(torch.utils.data.Dataset):
    """IU X-ray reports as dataset items (``image`` None unless ``images_dir`` is given).

    ``prompt_source``: impression | findings | both. Reports with neither findings nor impression are
    skipped and counted as ``empty_report`` (see ``.issues``); with ``images_dir``, reports without a
    readable frontal image are skipped and counted too (``strict=True`` raises instead).
    """
    def __init__(self, split: str | None = "train", path: Path | str | None = None, images_dir: Path | str | None = None,

                 resolution: int = 512, prompt_source: str = "impression", max_prompt_tokens: int | None = None,
                 tokenizer=None, strict: bool = False):
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"split '{split}' is not one of {SPLITS} (or None for all reports)")
        if resolution < 8:
            raise ValueError(f"resolution: must be >= 8, got {resolution}")
        self.split, self.resolution = split, int(resolution)
        self.images_dir = Path(images_dir) if images_dir is not None else None
        if self.images_dir is not None and not self.images_dir.is_dir():
            raise FileNotFoundError(f"images_dir {self.images_dir}: not a directory (Open-i PNGs expected)")
        all_reports, parse_issues = load_iu_reports(path)
        self.issues = DataIssues(source=f"iuxray[{split or 'all'}]", strict=strict)
        for kind, count in parse_issues.counts.items():
            self.issues.counts[kind] += count
            self.issues.examples.setdefault(kind, []).extend(parse_issues.examples.get(kind, []))
        views = _frontal_views() if self.images_dir is not None else {}
        self.reports: list[IUReport] = []
        self.prompts: list[str] = []
        self.image_paths: list[Path | None] = []
        for report in all_reports:
            if split is not None and split_of(report.id) != split:
                continue
            prompt = build_prompt(report.sections, prompt_source, max_prompt_tokens, tokenizer)
            if not prompt or not (report.sections.get("findings") or report.sections.get("impression")):
                self.issues.add("empty_report", f"report {report.id}", "no FINDINGS or IMPRESSION text")
                continue
            image_path = None
            if self.images_dir is not None:
                image_path = self._find_image(report, views)
                if image_path is None:
                    continue
            self.reports.append(report)
            self.prompts.append(prompt)
            self.image_paths.append(image_path)

    def _find_image(self, report: IUReport, views: dict[str, str]) -> Path | None:
        frontal = [i for i in report.image_ids if views.get(i, "") in ("PA", "AP", "")]
        ranked = sorted(frontal, key=lambda i: views.get(i, "") == "")  # known PA/AP before unknown
        for image_id in ranked:
            for ext in (".png", ".jpg", ".jpeg"):
                path = resolve_inside(self.images_dir, image_id + ext)
                if path is None:
                    self.issues.add("path_escapes_root", f"report {report.id}", image_id + ext)
                    break
                if path.is_file():
                    return path
        self.issues.add("missing_image", f"report {report.id}", f"no frontal image of {list(report.image_ids)} in {self.images_dir}")
        return None

    def __len__(self) -> int:
        return len(self.reports)

    def label_tensor(self, index: int) -> torch.Tensor:
        return labels_to_tensor(self.reports[index].labels)

    def prompt_entry(self, index: int) -> dict:
        """``{"prompt", "labels"}`` of item ``index`` without reading its image."""
        return {"prompt": self.prompts[index], "labels": self.label_tensor(index)}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.reports):
            raise IndexError(f"IUXrayReports index {index} out of range [0, {len(self.reports)})")
        report = self.reports[index]
        image = None
        path = self.image_paths[index]
        if path is not None:
            try:
                image = uint8_to_tensor(load_gray_uint8(path, self.resolution))
            except IMAGE_ERRORS as exc:
                self.issues.add("corrupt_image", str(path), str(exc))
        return {"id": f"iu-{report.id}", "prompt": self.prompts[index], "labels": self.label_tensor(index),
                "image": image, "posture": None, "report": report.text}
