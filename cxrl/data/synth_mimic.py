"""A synthetic MIMIC-CXR-JPG v2 world to rehearse the credentialed path on (``cxrl data synth-mimic``).

``write_synthetic_mimic(out, ...)`` writes, from the phantom world and the real IU X-ray reports:

* ``files/pXX/p<subject>/s<study>/<dicom_id>.jpg``: one to three 8-bit grayscale JPEGs (quality 95, as
  MIMIC-CXR-JPG) per study. PA and AP images are phantoms (``render_phantom``) drawn from the labels
  of the study's report, in a random posture ψ (AP, the portable film, at twice the PA strength).
  LATERAL/LL images are *not* lateral projections: the identity-pose phantom of the same report with
  its two halves superimposed (as a lateral superimposes the lungs), squeezed to 70 % width, with a
  spine band along the posterior edge — a non-frontal picture for view filters to drop.
* ``mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz`` with MIMIC's column names and value
  conventions. Labels are ``cxrl.data.label_report`` on the written report text (1.0/0.0/-1.0/blank;
  -1.0 where the report hedges); the NegBio file holds the same labels (cxrl has one labeler).
  Splits keep each IU report's own split (train / validate / test), so held-out text stays
  held out; a subject's studies are all in one split, as in MIMIC.
* ``reports/files/pXX/p<subject>/s<study>.txt`` (or ``reports_out``): MIMIC-style report text.
* Deliberate bad data: ``num_blank_views`` frontal images with an empty ViewPosition,
  ``num_corrupt`` unreadable JPEGs (alternately truncated and an HTML error page) and
  ``num_missing`` rows whose JPEG is absent, all among PA/AP rows so the default readers meet them.
* ``synthetic-manifest.csv`` (per image: what it is, its state, IU report id, seed, ψ) and
  ``SYNTHETIC.txt``.

Deterministic: the same arguments give the same bytes (CSV, reports, JPEGs).
"""
from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from cxrl.config.sections import SPLITS
from cxrl.data import synth_mimic_format as fmt
from cxrl.data.iuxray import IUReport, load_iu_reports, split_of
from cxrl.data.labeler import label_report
from cxrl.data.labels import labels_to_tensor
from cxrl.data.mimic import image_relpath
from cxrl.data.phantom import render_phantom, sample_posture

DEFAULT_STUDIES = 200
MARKER = "SYNTHETIC.txt"
MANIFEST = "synthetic-manifest.csv"
MANIFEST_COLUMNS = ("dicom_id", "subject_id", "study_id", "split", "ViewPosition", "projection", "pixels", "state",
                    "iu_report_id", "seed", "s_x", "s_y", "t_x", "t_y", "theta")
# (projections of one study, share of studies); "LATERAL" becomes "LL" for LL_SHARE of lateral images.
VIEW_PATTERNS = ((("PA", "LATERAL"), 0.45), (("AP",), 0.30), (("PA",), 0.07), (("AP", "LATERAL"), 0.06),
                 (("AP", "AP"), 0.05), (("PA", "PA", "LATERAL"), 0.04), (("LATERAL",), 0.03))
LL_SHARE = 0.15
POSTURE_STRENGTH = {"PA": 0.5, "AP": 1.0}
CORRUPT_KINDS = ("truncated", "html")
_HTML_ERROR_PAGE = b"<html><head><title>503 Service Unavailable</title></head><body>503</body></html>\n"


@dataclass(frozen=True)
class SynthImage:
    dicom_id: str
    view: str                    # ViewPosition as written ("" for a blanked frontal view)
    projection: str              # PA | AP | LATERAL | LL: what was drawn
    state: str                   # ok | corrupt-truncated | corrupt-html | missing
    seed: int
    posture: tuple | None        # ψ of a frontal phantom; None for a lateral

    @property
    def pixels(self) -> str:
        return "frontal" if self.projection in ("PA", "AP") else "lateral"


@dataclass(frozen=True)
class SynthStudy:
    subject_id: str
    study_id: str
    split: str                   # MIMIC split name: train | validate | test
    report: IUReport
    text: str                    # the written MIMIC-style report
    labels: dict                 # label_report(text)
    images: tuple
    study_date: str
    study_time: str


@dataclass
class SyntheticMimic:
    root: Path
    reports_root: Path
    resolution: int
    studies: list

    def rows(self):
        """(study, image) in metadata-row order."""
        return [(study, image) for study in self.studies for image in study.images]


def eligible_reports() -> dict[str, list[IUReport]]:
    """IU X-ray reports with FINDINGS or IMPRESSION text, by MIMIC split name, in id order."""
    reports, _ = load_iu_reports()
    out = {name: [] for name in SPLITS}
    for report in reports:
        if report.sections.get("findings") or report.sections.get("impression"):
            out[split_of(report.id)].append(report)
    return out


def split_counts(num_studies: int | None, available: dict[str, int]) -> dict[str, int]:
    """Studies per split: proportional to the IU split sizes, at least one in each."""
    total = sum(available.values())
    if num_studies is None:
        return dict(available)
    if not isinstance(num_studies, int) or isinstance(num_studies, bool) or num_studies < len(available):
        raise ValueError(f"num_studies: expected an int >= {len(available)} (one study per split), got {num_studies!r}")
    if num_studies > total:
        raise ValueError(f"num_studies={num_studies}: only {total} IU X-ray reports have findings or impression")
    counts = {s: max(1, round(num_studies * n / total)) for s, n in available.items() if s != "train"}
    counts = {"train": num_studies - sum(counts.values()), **counts}
    for split, n in counts.items():
        if n > available[split]:
            raise ValueError(f"num_studies={num_studies}: split '{split}' needs {n} reports, has {available[split]}")
    return counts


def _pick_bad_rows(rng, frontal: list[tuple[int, int]], blank: int, corrupt: int, missing: int) -> dict:
    """(study, image) position -> "blank" | "corrupt-<kind>" | "missing", drawn among PA/AP images."""
    if blank + corrupt + missing > len(frontal):
        raise ValueError(f"num_blank_views + num_corrupt + num_missing = {blank + corrupt + missing} exceeds the "
                         f"{len(frontal)} PA/AP images that may be spoiled (write more studies)")
    chosen = [frontal[i] for i in rng.permutation(len(frontal))[: blank + corrupt + missing]]
    plan = {key: "blank" for key in chosen[:blank]}
    plan.update({key: f"corrupt-{CORRUPT_KINDS[n % 2]}" for n, key in enumerate(chosen[blank:blank + corrupt])})
    plan.update({key: "missing" for key in chosen[blank + corrupt:]})
    return plan


def _study_images(rng, pattern: tuple[str, ...]) -> list[dict]:
    images = []
    for projection in pattern:
        if projection == "LATERAL" and rng.random() < LL_SHARE:
            projection = "LL"
        seed = int(rng.integers(0, 2**31))
        posture = None
        if projection in POSTURE_STRENGTH:
            psi = sample_posture(np.random.default_rng([seed, 7]), POSTURE_STRENGTH[projection])
            posture = tuple(round(float(v), 6) for v in psi)
        images.append({"dicom_id": fmt.dicom_id(rng), "view": projection, "projection": projection, "state": "ok",
                       "seed": seed, "posture": posture})
    return images


def plan_studies(num_studies: int | None = DEFAULT_STUDIES, seed: int = 0, *, num_corrupt: int = 2,
                 num_missing: int = 2, num_blank_views: int | None = None) -> list[SynthStudy]:
    """Which report becomes which study, its subject, views, seeds and bad rows (nothing written)."""
    bad_counts = (("num_blank_views", num_blank_views), ("num_corrupt", num_corrupt), ("num_missing", num_missing))
    for name, value in bad_counts:
        if not (value is None and name == "num_blank_views") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    rng = np.random.default_rng([int(seed), 0x5EED])
    by_split = eligible_reports()
    counts = split_counts(num_studies, {s: len(r) for s, r in by_split.items()})
    groups = []  # (split, [reports of one subject])
    for split, reports in by_split.items():
        picked = [reports[i] for i in rng.permutation(len(reports))[: counts[split]]]
        while picked:
            size = int(rng.integers(1, 4))
            groups.append((split, picked[:size]))
            picked = picked[size:]
    total = sum(len(g) for _, g in groups)
    subject_ids = rng.choice(10_000_000, size=len(groups), replace=False) + 10_000_000
    study_ids = iter(rng.choice(10_000_000, size=total, replace=False) + 50_000_000)
    weights = np.array([w for _, w in VIEW_PATTERNS])
    # The first study of each split always has a PA/AP image that stays readable, so every split can
    # be read however small the world (its other rows may be anything).
    with_frontal = np.array([any(v in POSTURE_STRENGTH for v in p) for p, _ in VIEW_PATTERNS]) * weights
    drafts, protected, splits_seen = [], set(), set()
    for (split, reports), subject in zip(groups, subject_ids):
        day = date(int(rng.integers(2110, 2190)), 1, 1) + timedelta(days=int(rng.integers(0, 365)))
        for report in reports:
            day += timedelta(days=int(rng.integers(1, 400)))
            seconds = int(rng.integers(0, 86_400_000))
            hms = f"{seconds // 3_600_000:02d}{seconds // 60_000 % 60:02d}{seconds // 1000 % 60:02d}.{seconds % 1000:03d}"
            first = split not in splits_seen
            splits_seen.add(split)
            p = with_frontal if first else weights
            pattern = VIEW_PATTERNS[int(rng.choice(len(VIEW_PATTERNS), p=p / p.sum()))][0]
            if first:
                protected.add((len(drafts), 0))
            drafts.append({"subject_id": str(subject), "study_id": str(next(study_ids)), "split": split,
                           "report": report, "images": _study_images(rng, pattern), "study_date": day.strftime("%Y%m%d"),
                           "study_time": hms})
    frontal = [(s, i) for s, d in enumerate(drafts) for i, im in enumerate(d["images"])
               if im["view"] in POSTURE_STRENGTH and (s, i) not in protected]
    if num_blank_views is None:  # 4 %, at least one where the other bad rows leave room
        num_blank_views = min(max(1, round(0.04 * len(frontal))), max(0, len(frontal) - num_corrupt - num_missing))
    for (s, i), state in _pick_bad_rows(rng, frontal, num_blank_views, num_corrupt, num_missing).items():
        image = drafts[s]["images"][i]
        if state == "blank":
            image["view"] = ""
        else:
            image["state"] = state
    studies = []
    for d in sorted(drafts, key=lambda d: (d["subject_id"], d["study_date"], d["study_id"])):
        projections = tuple(im["projection"] for im in d["images"])
        text = fmt.mimic_report(d["report"].sections, fmt.procedure_description(projections))
        studies.append(SynthStudy(d["subject_id"], d["study_id"], d["split"], d["report"], text, label_report(text),
                                  tuple(SynthImage(**im) for im in d["images"]), d["study_date"], d["study_time"]))
    return studies


def lateral_view(frontal: np.ndarray) -> np.ndarray:
    """The lateral stand-in described in the module docstring, float32 ``[R, R]`` in [0, 1]."""
    size = frontal.shape[0]
    superimposed = 0.5 * (frontal + frontal[:, ::-1])
    width = max(8, round(0.7 * size))
    squeezed = np.asarray(Image.fromarray(superimposed.astype(np.float32), mode="F").resize((width, size), Image.BILINEAR))
    out = np.zeros_like(frontal)
    left = (size - width) // 2
    out[:, left:left + width] = squeezed
    x = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    y = x[:, None]
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * (y + 1.0) / 0.12)
    spine = np.exp(-(((x[None, :] - 0.42) / 0.06) ** 2)) * vertebrae * (np.abs(y) < 0.85)
    return np.clip(out + 0.22 * spine, 0.0, 1.0).astype(np.float32)


def render_image(study: SynthStudy, image: SynthImage, resolution: int) -> np.ndarray:
    """uint8 ``[resolution, resolution]`` pixels of one planned image."""
    labels = labels_to_tensor(study.labels)
    if image.pixels == "frontal":
        pixels, _ = render_phantom(labels, posture=np.asarray(image.posture, dtype=np.float32), seed=image.seed,
                                   resolution=resolution)
    else:
        pixels = lateral_view(render_phantom(labels, posture=None, seed=image.seed, resolution=resolution)[0])
    return np.round(pixels * 255.0).clip(0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _check_target(path: Path, overwrite: bool, what: str) -> bool:
    """True when ``path`` holds an earlier synthetic tree to replace; an existing non-empty directory
    is replaced only with ``overwrite`` and only when it holds ``SYNTHETIC.txt`` — never real data."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return False
    if not overwrite:
        raise FileExistsError(f"{what} {path}: exists and is not empty (pass overwrite to replace a synthetic tree)")
    if not (path / MARKER).is_file():
        raise FileExistsError(f"{what} {path}: not a synthetic tree (no {MARKER}); refusing to delete it")
    return True


def marker_text(world: SyntheticMimic, seed: int) -> str:
    rows = world.rows()
    states = {s: sum(1 for _, im in rows if im.state.startswith(s)) for s in ("corrupt", "missing")}
    per_split = {s: sum(1 for st in world.studies if st.split == s) for s in ("train", "validate", "test")}
    return (
        "SYNTHETIC DATA - not MIMIC-CXR. Written by cxrl (cxrl data synth-mimic) in the MIMIC-CXR-JPG v2.0.0 layout\n"
        "so that the credentialed-data path can be rehearsed without credentialed data.\n\n"
        "Images: procedural phantom radiographs (cxrl.data.phantom) drawn from each report's labels; LATERAL/LL\n"
        "images are a squeezed, left-right superimposed phantom, not real lateral projections.\n"
        "Reports: real IU X-ray (Open-i) report text, CC BY-NC-ND 4.0 (https://openi.nlm.nih.gov), re-laid out\n"
        "with MIMIC-CXR section headers; labels are cxrl's rule labeler on that text (NegBio file = same labels).\n\n"
        f"seed {seed}, resolution {world.resolution}, {len(world.studies)} studies {per_split}, {len(rows)} image rows,\n"
        f"{sum(1 for _, im in rows if im.view == '')} blank ViewPosition, {states['corrupt']} corrupt and "
        f"{states['missing']} missing JPEGs on purpose (see {MANIFEST}).\n"
    )


def write_synthetic_mimic(out, *, resolution: int = 64, num_studies: int | None = DEFAULT_STUDIES, seed: int = 0,
                          num_corrupt: int = 2, num_missing: int = 2, num_blank_views: int | None = None,
                          reports_out=None, overwrite: bool = False, progress=None) -> SyntheticMimic:
    """Write the tree described in the module docstring; ``num_studies=None`` uses every eligible
    report (3,927). ``num_blank_views`` defaults to 4 % of the PA/AP images (at least one).
    ``progress(done, total)`` is called after each study's images."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 16:
        raise ValueError(f"resolution: expected an int >= 16 (the phantom renderer's minimum), got {resolution!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    root = Path(out)
    reports_root = Path(reports_out) if reports_out is not None else root / "reports"
    targets = [(root, "out")] + ([(reports_root, "reports_out")] if reports_out is not None else [])
    replace = [path for path, what in targets if _check_target(path, overwrite, what)]
    studies = plan_studies(num_studies, seed, num_corrupt=num_corrupt, num_missing=num_missing,
                           num_blank_views=num_blank_views)  # every argument checked before anything is deleted
    for path in replace:
        shutil.rmtree(path)
    for path, _ in targets:
        path.mkdir(parents=True, exist_ok=True)
    world = SyntheticMimic(root, reports_root, resolution, studies)
    # The marker goes first: a write that dies half-way still leaves a tree that overwrite may replace.
    (root / MARKER).write_text(marker_text(world, seed))
    if reports_out is not None:
        (reports_root / MARKER).write_text(f"SYNTHETIC reports for the tree at {root}; see {root / MARKER}\n")

    for n, study in enumerate(studies, 1):
        report_path = reports_root / f"files/p{study.subject_id[:2]}/p{study.subject_id}/s{study.study_id}.txt"
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(study.text, encoding="utf-8")
        for image in study.images:
            path = root / image_relpath(study.subject_id, study.study_id, image.dicom_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            if image.state == "missing":
                continue
            if image.state == "corrupt-html":
                path.write_bytes(_HTML_ERROR_PAGE)
                continue
            data = jpeg_bytes(render_image(study, image, resolution))
            path.write_bytes(data[: len(data) // 3] if image.state == "corrupt-truncated" else data)
        if progress is not None:
            progress(n, len(studies))

    metadata, splits, manifest = [], [], []
    for study, image in world.rows():
        description = fmt.procedure_description(tuple(im.projection for im in study.images))
        metadata.append([image.dicom_id, study.subject_id, study.study_id, description, image.view, resolution,
                         resolution, study.study_date, study.study_time, description,
                         fmt.VIEW_CODE_MEANING[image.view], fmt.PATIENT_ORIENTATION[image.view]])
        splits.append([image.dicom_id, study.study_id, study.subject_id, study.split])
        manifest.append([image.dicom_id, study.subject_id, study.study_id, study.split, image.view, image.projection,
                         image.pixels, image.state, study.report.id, image.seed, *(image.posture or [""] * 5)])
    labels = [fmt.label_row(study.subject_id, study.study_id, study.labels) for study in studies]
    fmt.write_csv_gz(root / f"{fmt.PREFIX}metadata.csv.gz", fmt.METADATA_COLUMNS, metadata)
    fmt.write_csv_gz(root / f"{fmt.PREFIX}split.csv.gz", fmt.SPLIT_COLUMNS, splits)
    for source in ("chexpert", "negbio"):
        fmt.write_csv_gz(root / f"{fmt.PREFIX}{source}.csv.gz", fmt.LABEL_COLUMNS, labels)
    (root / MANIFEST).write_bytes(fmt.csv_bytes(MANIFEST_COLUMNS, manifest))
    return world


def read_manifest(root) -> list[dict]:
    """The rows of ``synthetic-manifest.csv`` (what each image is and which are broken on purpose)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (not a tree written by write_synthetic_mimic)")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
