"""score_samples / write_report on fixed images with tiny real evaluators loaded through the loader:
each metric equals a direct computation with the same evaluator, and the files are well formed."""
import json
import math

import pytest
import torch

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.eval.auroc import macro_auroc
from cxrl.eval.evaluators import load_evaluators
from cxrl.eval.fid import ClassifierFeatures, extract_features, fid_from_features
from cxrl.eval.ms_ssim import ms_ssim_diversity
from cxrl.eval.report import write_report
from cxrl.eval.scoring import item_labels, reference_images, score_samples


def test_load_evaluators_records_sources_and_refuses_missing(evaluator_root, tmp_path):
    evaluators = load_evaluators(evaluator_root)
    assert set(evaluators.describe()) == {"posture", "diagnostic", "consistency"}
    assert str(evaluator_root / "posture") in evaluators.describe()["posture"]
    with pytest.raises(FileNotFoundError, match="train-reward posture"):
        load_evaluators(tmp_path)
    with pytest.raises(ValueError, match="reward model the RL optimises"):
        load_evaluators(evaluator_root, kinds=("posture",), forbidden=(evaluator_root,))
    with pytest.raises(ValueError, match="unknown evaluator kind"):
        load_evaluators(evaluator_root, paths={"posure": evaluator_root})


def test_score_samples_matches_direct_computation(evaluator_root, make_items):
    evaluators = load_evaluators(evaluator_root)
    items = make_items(6)
    g = torch.Generator().manual_seed(1)
    samples = torch.rand(6, 4, 1, 32, 32, generator=g)
    extractor = ClassifierFeatures(evaluators.diagnostic, name="toy-diagnostic")
    refs = extract_features(extractor, reference_images(items))
    result = score_samples(samples, items, evaluators, extractor, refs, batch_size=5)

    flat = samples.flatten(0, 1)
    prompts = [it["prompt"] for it in items for _ in range(4)]
    labels = item_labels(items).repeat_interleave(4, dim=0)
    meta = [{"labels": l} for l in labels]
    assert result["posture"] == pytest.approx(float(evaluators.posture(flat, prompts, meta).mean()), abs=1e-6)
    assert result["posture"] < 0
    assert result["consistency"] == pytest.approx(float(evaluators.consistency(flat, prompts, meta).mean()), abs=1e-6)
    expected_auroc = macro_auroc(evaluators.diagnostic.predict_proba(flat), labels).macro
    assert result["auroc"] == pytest.approx(expected_auroc, abs=1e-9)
    assert set(result["auroc_per_label"]) == {"No Finding", "Pleural Effusion"}
    assert result["fid"] == pytest.approx(fid_from_features(extractor(flat), refs), rel=1e-6)
    assert result["ms_ssim"] == pytest.approx(ms_ssim_diversity(samples).mean)
    assert result["ms_ssim_scales"] == 2  # 32 px: 32 -> 16 >= 11, 8 < 11
    assert result["feature_extractor"] == "toy-diagnostic" and result["n_prompts"] == 6


def test_missing_pieces_are_none_with_reasons(evaluator_root, make_items):
    from cxrl.eval.evaluators import Evaluators

    evaluators = load_evaluators(evaluator_root, kinds=("posture",))
    result = score_samples(torch.rand(3, 1, 1, 32, 32), make_items(3), evaluators)
    assert result["auroc"] is None and result["consistency"] is None and result["fid"] is None
    assert result["ms_ssim"] is None
    assert any("diagnostic evaluator" in n for n in result["notes"])
    assert any("2 samples" in n for n in result["notes"])
    with pytest.raises(ValueError, match="items for samples"):
        score_samples(torch.rand(3, 2, 1, 32, 32), make_items(2), Evaluators())


def test_write_report_files(evaluator_root, make_items, tmp_path):
    evaluators = load_evaluators(evaluator_root)
    items = make_items(4)
    samples = {"base": torch.rand(4, 4, 1, 32, 32), "tuned": torch.rand(4, 4, 1, 32, 32)}
    results = {name: score_samples(s, items, evaluators) for name, s in samples.items()}
    results["tuned"]["auroc"] = math.nan  # must be written as null, not the invalid JSON token NaN
    from cxrl.eval.scoring import _clean

    results["tuned"] = {k: _clean(v) for k, v in results["tuned"].items()}
    written = write_report(results, tmp_path, samples, [it["prompt"] for it in items], extra={"data": "toy"})
    payload = json.loads(written["metrics"].read_text())
    assert set(payload) == {"base", "tuned"} and json.loads(written["run"].read_text()) == {"data": "toy"}
    for key in ("posture", "auroc", "consistency", "fid", "ms_ssim", "n_prompts", "feature_extractor"):
        assert key in payload["base"]
    assert payload["tuned"]["auroc"] is None
    table = written["table"].read_text()
    assert "| Model | r_align ↑ | AUROC ↑ | sim ↑ | FID ↓ | MS-SSIM ↓ |" in table
    assert "posture evaluator: " + str(evaluator_root / "posture") in table
    assert written["grid:base"].is_file() and written["comparison"].is_file()


def test_write_report_adds_resized_real_column(tmp_path):
    from PIL import Image

    results = {"base": {"posture": -0.3, "n_prompts": 2, "samples_per_prompt": 2}}
    samples = {"base": torch.zeros(2, 2, 1, 32, 32)}
    references = torch.ones(2, 1, 64, 64)  # a different size than the samples: resized for the grid
    written = write_report(results, tmp_path, samples, ["a", "b"], references=references)
    grid = Image.open(written["comparison"]).convert("L")
    assert grid.size[0] == 4 + 240 + 2 * (128 + 4)
    assert grid.getpixel((4 + 240 + 132 + 10, 30)) == 255 and grid.getpixel((4 + 240 + 10, 30)) == 0


def test_build_feature_extractor_choices(evaluator_root):
    from cxrl.eval.evaluate import build_feature_extractor
    from cxrl.eval.evaluators import Evaluators

    evaluators = load_evaluators(evaluator_root, kinds=("diagnostic",))
    auto = build_feature_extractor("auto", "phantom", evaluators)
    assert auto.name.startswith("cxrl-diagnostic-evaluator/features (sha256 ")
    assert build_feature_extractor("auto", "iuxray", evaluators, has_references=False) is None
    assert build_feature_extractor("none", "phantom", evaluators) is None
    with pytest.raises(ValueError, match="needs the diagnostic evaluator"):
        build_feature_extractor("evaluator", "phantom", Evaluators())
    with pytest.raises(ValueError, match="choose one of"):
        build_feature_extractor("inception", "mimic", evaluators)


def test_xrv_diagnostic_evaluator_scores_only_mapped_labels(tmp_path, make_items):
    import os

    xrv = pytest.importorskip("torchxrayvision")
    from cxrl.eval.evaluate import build_feature_extractor

    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    torch.manual_seed(0)
    torch.save(xrv.models.DenseNet(num_classes=18), os.path.join(tmp_path, os.path.basename(url)))
    evaluators = load_evaluators(paths={"diagnostic": "xrv:densenet121-res224-all"}, kinds=("diagnostic",),
                                 xrv_cache_dir=tmp_path)
    assert evaluators.describe() == {"diagnostic": "torchxrayvision densenet121-res224-all"}
    result = score_samples(torch.rand(4, 2, 1, 32, 32), make_items(4), evaluators)
    # make_items labels "No Finding" (no xrv output -> skipped) and "Pleural Effusion" (xrv "Effusion")
    assert set(result["auroc_per_label"]) == {"Pleural Effusion"} and "No Finding" in result["auroc_skipped_labels"]
    extractor = build_feature_extractor("evaluator", "mimic", evaluators)
    assert extractor.name == "xrv-densenet121-res224-all/features2"
    with pytest.raises(ValueError, match="only be the diagnostic"):
        load_evaluators(paths={"posture": "xrv:densenet121-res224-all"}, kinds=("posture",))


def test_auroc_over_labels_with_enough_prompts(evaluator_root, make_items):
    """``auroc`` averages the labels with >= min_label_prompts prompts of each class; ``auroc_all_labels`` all."""
    evaluators = load_evaluators(evaluator_root, kinds=("diagnostic",))
    items = make_items(6)
    items[1]["labels"] = items[1]["labels"].clone()
    items[1]["labels"][10] = float("nan")          # Pleural Effusion: 2 positive prompts, 3 negative
    samples = torch.rand(6, 2, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    probs = evaluators.diagnostic.predict_proba(samples.flatten(0, 1))
    labels = item_labels(items).repeat_interleave(2, dim=0)
    names = list(CHEXPERT_LABELS)

    strict = score_samples(samples, items, evaluators, min_label_prompts=3)
    assert strict["auroc_labels"] == ["No Finding"] and strict["auroc_min_label_prompts"] == 3
    assert strict["auroc"] == pytest.approx(macro_auroc(probs, labels, names, columns=[0]).macro, abs=1e-9)
    assert strict["auroc_all_labels"] == pytest.approx(macro_auroc(probs, labels).macro, abs=1e-9)
    assert set(strict["auroc_per_label"]) == {"No Finding", "Pleural Effusion"}

    loose = score_samples(samples, items, evaluators, min_label_prompts=2)
    assert loose["auroc_labels"] == ["No Finding", "Pleural Effusion"] and loose["auroc"] == loose["auroc_all_labels"]
    none = score_samples(samples, items, evaluators, min_label_prompts=4)
    assert none["auroc"] is None and any("at least 4 positive" in note for note in none["notes"])


def test_showcase_order_puts_one_prompt_per_finding_first():
    from cxrl.eval.report import showcase_order

    nan = float("nan")
    labels = torch.full((6, 14), nan)
    labels[[0, 1, 4], 0] = 1.0          # No Finding does not count as a finding
    labels[3, 2] = 1.0                  # Cardiomegaly
    labels[5, 2] = 1.0                  # Cardiomegaly again: only the first is brought forward
    labels[2, 10] = 1.0                 # Pleural Effusion
    labels[3, 10] = 1.0                 # taken already by Cardiomegaly
    labels[1, 5] = 0.0                  # a negative is not a finding
    assert showcase_order(labels) == [3, 2, 0, 1, 4, 5]


def test_write_report_grid_order_moves_prompts_with_their_images(tmp_path):
    from PIL import Image

    results = {"base": {"posture": -0.3, "n_prompts": 2, "samples_per_prompt": 1}}
    samples = {"base": torch.stack([torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32)])}
    references = torch.stack([torch.zeros(1, 32, 32), torch.ones(1, 32, 32)])
    in_order = write_report(results, tmp_path / "a", samples, ["dark", "bright"], references=references)
    swapped = write_report(results, tmp_path / "b", samples, ["dark", "bright"], references=references, grid_order=[1, 0])
    first_row = (4 + 240 + 10, 30)
    assert Image.open(in_order["comparison"]).convert("L").getpixel(first_row) == 0
    assert Image.open(swapped["comparison"]).convert("L").getpixel(first_row) == 255
    # the reference column moves with its prompt
    assert Image.open(swapped["comparison"]).convert("L").getpixel((first_row[0] + 132, 30)) == 255
