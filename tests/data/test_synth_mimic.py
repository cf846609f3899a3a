"""The synthetic MIMIC-CXR-JPG world: read back by the real reader, labels and sections checked against
the labeler and the source IU X-ray reports, pixels against the phantom renderer, bytes across runs."""
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from mimic_fixture import META_COLS
from PIL import Image

from cxrl.data import MimicCXR
from cxrl.data.iuxray import load_iu_reports, split_of
from cxrl.data.labeler import label_report
from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.data.mimic import read_csv
from cxrl.data.phantom import render_phantom
from cxrl.data.sections import parse_sections
from cxrl.data.synth_mimic import lateral_view, read_manifest, write_synthetic_mimic
from cxrl.data.synth_mimic_format import mimic_report

RES = 32
PLAN = {"resolution": RES, "num_studies": 14, "seed": 3, "num_corrupt": 2, "num_missing": 2, "num_blank_views": 2}
CELL = {1: "1.0", 0: "0.0", -1: "-1.0", None: ""}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_synthetic_mimic(tmp_path_factory.mktemp("synth") / "mimic", **PLAN)


@pytest.fixture(scope="module")
def iu_by_id():
    return {r.id: r for r in load_iu_reports()[0]}


def _report_path(world, subject, study):
    return world.reports_root / f"files/p{subject[:2]}/p{subject}/s{study}.txt"


def test_reader_sees_exactly_the_planned_rows_and_bad_items(world, tmp_path):
    manifest = read_manifest(world.root)
    states = Counter(r["state"] for r in manifest)
    assert states["missing"] == 2 and states["corrupt-truncated"] + states["corrupt-html"] == 2
    assert sum(r["ViewPosition"] == "" for r in manifest) == 2
    assert {r["ViewPosition"] for r in manifest} >= {"PA", "AP", "LATERAL", ""}
    for split in ("train", "validate", "test"):
        rows = [r for r in manifest if r["split"] == split]
        frontal = [r for r in rows if r["ViewPosition"] in ("PA", "AP")]
        ds = MimicCXR(world.root, split=split, resolution=RES, reports_root=world.reports_root,
                      cache_dir=tmp_path / "cache")
        assert len(ds) >= 1
        assert ds.ids() == [r["dicom_id"] for r in frontal if r["state"] != "missing"]
        assert ds.stats["other_view"] == len(rows) - len(frontal)  # LATERAL, LL and blank views dropped
        missing = [r["dicom_id"] for r in frontal if r["state"] == "missing"]
        assert dict(ds.issues.counts) == ({"missing_image": len(missing)} if missing else {})
        assert all(any(d in m for m in ds.issues.examples["missing_image"]) for d in missing)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (1, RES, RES)
            study = item["report"]
            assert "FINAL REPORT" in study and item["prompt"]
        corrupt = sorted(r["dicom_id"] for r in frontal if r["state"].startswith("corrupt"))
        flagged = sorted(Path(m.split(": ")[0]).stem for m in ds.issues.examples.get("corrupt_image", []))
        assert flagged == corrupt
        with_blank = MimicCXR(world.root, split=split, views=("PA", "AP", ""), resolution=RES, cache_dir=tmp_path / "c")
        blank = [r["dicom_id"] for r in rows if r["ViewPosition"] == "" and r["state"] == "ok"]
        assert set(with_blank.ids()) - set(ds.ids()) == set(blank)


def test_csv_labels_are_the_labeler_on_the_written_reports(world, iu_by_id):
    chexpert = read_csv(world.root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    negbio = read_csv(world.root / "mimic-cxr-2.0.0-negbio.csv.gz")
    assert list(chexpert[0]) == ["subject_id", "study_id", *CHEXPERT_LABELS] and chexpert == negbio
    manifest = {(r["subject_id"], r["study_id"]): int(r["iu_report_id"]) for r in read_manifest(world.root)}
    assert {(r["subject_id"], r["study_id"]) for r in chexpert} == set(manifest)
    seen = Counter()
    for row in chexpert:
        text = _report_path(world, row["subject_id"], row["study_id"]).read_text()
        labels = label_report(text)
        assert [row[n] for n in CHEXPERT_LABELS] == [CELL[labels[n]] for n in CHEXPERT_LABELS]
        assert labels == iu_by_id[manifest[(row["subject_id"], row["study_id"])]].labels
        seen.update(row[n] for n in CHEXPERT_LABELS)
    assert seen["1.0"] and seen["0.0"] and seen[""]


def test_uncertain_labels_come_through_as_minus_one(tmp_path):
    # The 14-study world may hold no hedged report; a larger one must (IU has ~420 uncertain labels).
    big = write_synthetic_mimic(tmp_path / "big", resolution=16, num_studies=120, seed=0)
    cells = [row[n] for row in read_csv(big.root / "mimic-cxr-2.0.0-chexpert.csv.gz") for n in CHEXPERT_LABELS]
    assert "-1.0" in cells
    assert sum(v == -1 for s in big.studies for v in s.labels.values()) == cells.count("-1.0")


def test_reports_hold_the_iu_sections_and_keep_the_iu_split(world, iu_by_id):
    split_rows = read_csv(world.root / "mimic-cxr-2.0.0-split.csv.gz")
    split_of_dicom = {r["dicom_id"]: r["split"] for r in split_rows}
    for row in read_manifest(world.root):
        source = iu_by_id[int(row["iu_report_id"])]
        assert split_of_dicom[row["dicom_id"]] == split_of(source.id)   # one spelling: train / validate / test
        text = _report_path(world, row["subject_id"], row["study_id"]).read_text()
        assert text.lstrip().startswith("FINAL REPORT\n EXAMINATION:  CHEST")
        sections = parse_sections(text)
        for name in ("findings", "impression"):
            assert sections.get(name) == source.sections.get(name)
        assert sections["indication"] == source.sections.get("indication", "___")


def test_wrapping_never_makes_a_new_section():
    # Put an upper-case "WORD:" at every offset: some land at the start of a wrapped line.
    for n in range(0, 90, 3):
        findings = "a" * n + " clear lungs " + "word " * 20 + "COMPARISON: XXXX. PA: heart normal. " + "x " * 30
        text = mimic_report({"findings": findings, "impression": "IMPRESSION: none."}, "CHEST (PA AND LAT)")
        parsed = parse_sections(text)
        assert parsed["findings"] == " ".join(findings.split()) and parsed["impression"] == "IMPRESSION: none."


def test_layout_ids_and_columns(world):
    meta = read_csv(world.root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta[0]) == META_COLS  # the hand-written fixture's copy of MIMIC's column list
    assert list(read_csv(world.root / "mimic-cxr-2.0.0-split.csv.gz")[0]) == ["dicom_id", "study_id", "subject_id", "split"]
    subject_split = {}
    for row in meta:
        assert re.fullmatch(r"1\d{7}", row["subject_id"]) and re.fullmatch(r"5\d{7}", row["study_id"])
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", row["dicom_id"]) and len(row["dicom_id"]) == 44
        assert row["Rows"] == row["Columns"] == str(RES) and re.fullmatch(r"2[12]\d{6}", row["StudyDate"])
    for row in read_manifest(world.root):
        assert subject_split.setdefault(row["subject_id"], row["split"]) == row["split"]  # one split per subject
    on_disk = {p.relative_to(world.root).as_posix() for p in (world.root / "files").rglob("*.jpg")}
    expected = {f"files/p{r['subject_id'][:2]}/p{r['subject_id']}/s{r['study_id']}/{r['dicom_id']}.jpg"
                for r in read_manifest(world.root) if r["state"] != "missing"}
    assert on_disk == expected
    assert "SYNTHETIC" in (world.root / "SYNTHETIC.txt").read_text() and "CC BY-NC-ND 4.0" in (world.root / "SYNTHETIC.txt").read_text()


def test_pixels_are_the_recorded_phantoms(world):
    studies = {s.study_id: s for s in world.studies}
    checked = Counter()
    for row in read_manifest(world.root):
        if row["state"] != "ok":
            continue
        path = world.root / f"files/p{row['subject_id'][:2]}/p{row['subject_id']}/s{row['study_id']}/{row['dicom_id']}.jpg"
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "L" and img.size == (RES, RES)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
        labels = studies[row["study_id"]].labels
        if row["pixels"] == "frontal":
            psi = np.array([float(row[k]) for k in ("s_x", "s_y", "t_x", "t_y", "theta")], dtype=np.float32)
            reference = render_phantom(labels, posture=psi, seed=int(row["seed"]), resolution=RES)[0]
        else:
            reference = lateral_view(render_phantom(labels, posture=None, seed=int(row["seed"]), resolution=RES)[0])
        assert np.abs(pixels - reference).mean() < 0.02  # JPEG quality 95 round trip
        checked[row["pixels"]] += 1
    assert checked["frontal"] and checked["lateral"]


def test_two_writes_give_the_same_bytes(world, tmp_path):
    again = write_synthetic_mimic(tmp_path / "again", **PLAN)
    files = sorted(p.relative_to(world.root) for p in world.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    assert all((world.root / f).read_bytes() == (again.root / f).read_bytes() for f in files)
    other = write_synthetic_mimic(tmp_path / "other", **{**PLAN, "seed": 4})
    name = "mimic-cxr-2.0.0-metadata.csv.gz"
    assert (other.root / name).read_bytes() != (world.root / name).read_bytes()


def test_bad_arguments_and_existing_directories(tmp_path):
    with pytest.raises(ValueError, match="num_studies"):
        write_synthetic_mimic(tmp_path / "a", num_studies=2)
    with pytest.raises(ValueError, match="exceeds"):
        write_synthetic_mimic(tmp_path / "a", resolution=16, num_studies=3, num_corrupt=50)
    with pytest.raises(ValueError, match="resolution"):
        write_synthetic_mimic(tmp_path / "a", resolution=8)
    real = tmp_path / "real"
    real.mkdir()
    (real / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        write_synthetic_mimic(real, resolution=16, num_studies=3, num_corrupt=0, num_missing=0)
    with pytest.raises(FileExistsError, match="refusing"):
        write_synthetic_mimic(real, resolution=16, num_studies=3, num_corrupt=0, num_missing=0, overwrite=True)
    assert (real / "precious.txt").read_text() == "keep"
    first = write_synthetic_mimic(tmp_path / "s", resolution=16, num_studies=3, num_corrupt=0, num_missing=0)
    second = write_synthetic_mimic(tmp_path / "s", resolution=16, num_studies=4, num_corrupt=0, num_missing=0,
                                   overwrite=True)
    assert len(second.studies) == 4 and first.root == second.root


def test_command_writes_tree_reports_and_generator(tmp_path, capsys):
    from cxrl.cli import main
    from cxrl.diffusion import load_generator

    out, reports, gen_dir = tmp_path / "mimic", tmp_path / "reports", tmp_path / "roentgen"
    args = ["data", "synth-mimic", str(out), "--resolution", "32", "--studies", "8", "--seed", "1", "--corrupt", "1",
            "--missing", "0", "--reports-out", str(reports), "--generator-out", str(gen_dir)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "8 studies" in text and "1 corrupt and 0 missing" in text
    manifest = read_manifest(out)
    train = [r for r in manifest if r["split"] == "train" and r["ViewPosition"] in ("PA", "AP")]
    assert main(["data", "inspect", "--source", "mimic", "--root", str(out), "--reports-root", str(reports),
                 "--resolution", "32"]) == 0
    assert f"mimic [train]: {len(train)} items" in capsys.readouterr().out
    assert len(list((reports / "files").rglob("*.txt"))) == 8 and not (out / "reports").exists()
    gen = load_generator(gen_dir)
    assert gen.image_channels == 3 and gen.resolution == (32, 32) and gen.latent_shape == (4, 4, 4)
    provenance = json.loads((gen_dir / "cxrl_roentgen_layout.json").read_text())
    assert provenance["tokenizer_texts"] == len({r["study_id"] for r in manifest if r["split"] == "train"})
    assert len(gen.tokenizer("xxxx").input_ids) == 3  # IU's de-identification mark is one learned token
    capsys.readouterr()
    assert main(args) == 2  # a second write without --overwrite: one line, nothing overwritten
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
