"""MIMIC-CXR-JPG reader on a small on-disk fixture written with the real file and column names."""
import math

import numpy as np
import pytest
from mimic_fixture import ROWS, make_fixture  # noqa: F401  (tests/data is on sys.path under pytest)

from cxrl.data import DataError, MimicCXR


@pytest.fixture
def mimic_root(tmp_path):
    return make_fixture(tmp_path / "mimic")


def test_index_filters_and_counts(mimic_root, tmp_path):
    ds = MimicCXR(mimic_root, split="train", resolution=32, cache_dir=tmp_path / "cache")
    ids = ds.ids()
    assert ids == ["d-ok-pa", "d-ok-ap", "d-corrupt", "d-nolabels"]  # lateral, blank view, test split excluded
    assert ds.stats["other_view"] == 2 and ds.stats["other_split"] == 1
    c = ds.issues.counts
    assert c["missing_image"] == 1 and c["path_escapes_root"] == 1 and c["missing_ids"] == 1
    assert c["missing_labels"] == 1
    summary = ds.issues.summary()
    assert "d-missing" in summary and "escape" in summary


def test_empty_views_only_when_asked(mimic_root, tmp_path):
    ds = MimicCXR(mimic_root, split="train", views=("PA", "AP", ""), resolution=32, cache_dir=tmp_path / "c")
    assert "d-noview" in ds.ids() and "d-lateral" not in ds.ids()


def test_items_labels_and_image(mimic_root, tmp_path):
    ds = MimicCXR(mimic_root, split="train", resolution=32, cache_dir=tmp_path / "cache")
    item = ds[0]
    assert set(item) == {"id", "prompt", "labels", "image", "posture", "report"}
    assert item["id"] == "d-ok-pa" and item["image"].shape == (1, 32, 32) and item["posture"] is None
    lab = item["labels"]
    assert lab[2] == 1 and lab[5] == -1 and lab[9] == 0 and math.isnan(lab[0].item())
    assert item["prompt"] == "Cardiomegaly. Possible edema."
    # aspect-preserving resize + centre crop: the horizontal ramp of the wide image keeps its middle
    wide = ds[1]["image"][0]
    assert 0.2 < wide[:, 0].mean() < 0.45 and 0.55 < wide[:, -1].mean() < 0.8
    assert float(ds[0]["image"][0, :, 0].mean()) < 0.1  # narrow image: full ramp, starts dark
    ones = MimicCXR(mimic_root, split="train", resolution=32, uncertain="ones", blank="zeros", cache_dir=tmp_path / "c")
    assert ones[0]["labels"][5] == 1 and ones[0]["labels"][0] == 0


def test_corrupt_image_is_skipped_counted_once_and_strict_raises(mimic_root, tmp_path):
    ds = MimicCXR(mimic_root, split="train", resolution=32, cache_dir=tmp_path / "cache")
    corrupt = ds.ids().index("d-corrupt")
    for _ in range(2):  # two epochs
        item = ds[corrupt]
        assert item["id"] == "d-nolabels" and item["image"] is not None
    assert ds.issues.counts["corrupt_image"] == 1
    with pytest.raises(DataError, match="strict mode"):
        MimicCXR(mimic_root, split="train", resolution=32, strict=True)  # the bad CSV rows stop indexing
    strict = MimicCXR(mimic_root, split="train", resolution=32, cache_dir=tmp_path / "c2")
    strict.issues.strict = True
    with pytest.raises(DataError, match="corrupt_image.*d-corrupt"):
        strict[corrupt]


def test_plain_csvs_and_missing_csv_message(tmp_path):
    root = make_fixture(tmp_path / "plain", gz_meta=False, gz_split=True, gz_labels=False)
    assert len(MimicCXR(root, split="train", resolution=16, cache_dir=tmp_path / "c")) == 4
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="split.csv"):
        MimicCXR(root, split="train")
    with pytest.raises(ValueError, match="split"):
        MimicCXR(root, split="holdout")


def test_prepare_cache_resumes_and_serves_items(mimic_root, tmp_path):
    ds = MimicCXR(mimic_root, split="train", resolution=24, cache_dir=tmp_path / "cache")
    first = ds.prepare(limit=2)
    assert first["done"] == 2 and first["pending"] == 2
    second = ds.prepare()
    assert second["skipped"] == 2 and second["done"] == 3 and second["failed"] == 1 and second["pending"] == 0
    assert ds.issues.counts["corrupt_image"] == 1
    fresh = MimicCXR(mimic_root, split="train", resolution=24, cache_dir=tmp_path / "cache")
    direct = MimicCXR(mimic_root, split="train", resolution=24, cache_dir=tmp_path / "nocache")
    assert fresh._open_cache() is not None and direct._open_cache() is None
    assert np.array_equal(fresh[0]["image"].numpy(), direct[0]["image"].numpy())


def test_reports_root_gives_prompts_and_counts_empty(mimic_root, tmp_path):
    reports = tmp_path / "reports"
    (reports / "files/p10/p10000032").mkdir(parents=True)
    (reports / "files/p10/p10000032/s50414267.txt").write_text(
        "FINDINGS: Enlarged heart.\n IMPRESSION: Cardiomegaly without edema.\n")
    (reports / "files/p10/p10000980").mkdir(parents=True)
    (reports / "files/p10/p10000980/s58206436.txt").write_text("   \n")
    ds = MimicCXR(mimic_root, split="train", resolution=16, reports_root=reports, cache_dir=tmp_path / "c")
    assert ds[0]["prompt"] == "Cardiomegaly without edema." and "Enlarged heart" in ds[0]["report"]
    ds[ds.ids().index("d-nolabels")]
    assert ds.issues.counts["empty_report"] == 1
