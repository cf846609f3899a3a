"""Writes a small MIMIC-CXR-JPG tree with the real file and column names and its edge cases
(gz and plain CSVs, -1/blank labels, missing and corrupt images, LATERAL and empty views, a path that
escapes the root, a row with missing ids, a study without a labels row)."""
import csv
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.data.mimic import image_relpath

META_COLS = ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
             "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
             "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"]

# dicom, subject, study, view, split, what the file on disk is
ROWS = [
    ("d-ok-pa", "10000032", "50414267", "PA", "train", "jpg"),
    ("d-ok-ap", "10000032", "50414267", "AP", "train", "jpg-wide"),
    ("d-lateral", "10000032", "50414267", "LATERAL", "train", "jpg"),
    ("d-noview", "10000764", "57375967", "", "train", "jpg"),
    ("d-missing", "10000764", "57375967", "PA", "train", None),
    ("d-corrupt", "10000898", "50771383", "PA", "train", "corrupt"),
    ("../../../../../../escape", "10000898", "50771383", "PA", "train", None),
    ("d-test", "10000935", "51178377", "PA", "test", "jpg"),
    ("d-nolabels", "10000980", "58206436", "AP", "train", "jpg"),
]


def _write_csv(path: Path, header, rows, gz: bool):
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def make_fixture(root: Path, gz_meta=True, gz_split=False, gz_labels=True) -> Path:
    rng = np.random.default_rng(0)
    for dicom, subject, study, view, split, kind in ROWS:
        if kind is None:
            continue
        path = root / image_relpath(subject, study, dicom)
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "corrupt":
            good = root / "tmp_good.jpg"
            Image.fromarray(rng.integers(0, 255, (96, 80), dtype=np.uint8)).save(good, quality=90)
            path.write_bytes(good.read_bytes()[:300])  # truncated JPEG
            good.unlink()
        else:
            w, h = (120, 60) if kind == "jpg-wide" else (80, 96)
            arr = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
            Image.fromarray(arr).save(path, quality=95)
    meta = [[d, s, st, "CHEST (PA AND LAT)", v, 96, 80, "21800506", "213014.531", "Chest", "postero-anterior", "Erect"]
            for d, s, st, v, _, _ in ROWS]
    meta.append(["d-noids", "", "", "", "PA", 1, 1, "", "", "", "", ""])  # a row with missing ids
    _write_csv(root / ("mimic-cxr-2.0.0-metadata.csv" + (".gz" if gz_meta else "")), META_COLS, meta, gz_meta)
    split_rows = [[d, st, s, sp] for d, s, st, _, sp, _ in ROWS]
    _write_csv(root / ("mimic-cxr-2.0.0-split.csv" + (".gz" if gz_split else "")),
               ["dicom_id", "study_id", "subject_id", "split"], split_rows, gz_split)
    blank = [""] * 14
    lab_a = list(blank)
    lab_a[CHEXPERT_LABELS.index("Cardiomegaly")] = "1.0"
    lab_a[CHEXPERT_LABELS.index("Edema")] = "-1.0"
    lab_a[CHEXPERT_LABELS.index("Pneumothorax")] = "0.0"
    lab_b = list(blank)
    lab_b[0] = "1.0"
    labels = [["10000032", "50414267", *lab_a], ["10000764", "57375967", *lab_b], ["10000898", "50771383", *lab_b],
              ["10000935", "51178377", *lab_b]]
    _write_csv(root / ("mimic-cxr-2.0.0-chexpert.csv" + (".gz" if gz_labels else "")),
               ["subject_id", "study_id", *CHEXPERT_LABELS], labels, gz_labels)
    return root
