"""score_samples / write_report on fixed images with tiny real evaluators loaded through the loader:
each metric equals a direct computation with the same evaluator, and the files are well formed."""
import json
import math

import pytest
import torch

from cxrl.compose import fid_extractor
from cxrl.config import Config, apply_overrides
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
    result, scores = score_samples(samples, items, evaluators, extractor, refs, batch_size=5)

    flat = samples.flatten(0, 1)
    prompts = [it["prompt"] for it in items for _ in range(4)]
    labels = item_labels(items).repeat_interleave(4, dim=0)
    meta = [{"labels": l} for l in labels]
    assert result["posture"] == pytest.approx(float(evaluators.posture(flat, prompts, meta).mean()), abs=1e-6)
    assert result["posture"] < 0
    # the per-sample scores returned beside the metrics are the evaluators' outputs, laid out [prompt, sample]
    torch.testing.assert_close(scores.posture, evaluators.posture(flat, prompts, meta).double().view(6, 4))
    torch.testing.assert_close(scores.probs, evaluators.diagnostic.predict_proba(flat).view(6, 4, -1))
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
    result, _ = score_samples(torch.rand(3, 1, 1, 32, 32), make_items(3), evaluators)
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
    results = {name: score_samples(s, items, evaluators)[0] for name, s in samples.items()}
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


def _eval_section(**values):
    return apply_overrides(Config(), [f"eval.{k}={v}" for k, v in values.items()]).eval


def test_fid_extractor_choices(evaluator_root, tmp_path, caplog, make_items):
    from cxrl.eval.evaluators import Evaluators

    evaluators = load_evaluators(evaluator_root, kinds=("diagnostic",))
    auto = fid_extractor(_eval_section(fid_features="auto", source="phantom"), evaluators, has_references=True)
    assert auto.name.startswith("cxrl-diagnostic-evaluator/features (sha256 ")
    assert fid_extractor(_eval_section(source="iuxray"), evaluators, has_references=False) is None
    assert fid_extractor(_eval_section(fid_features="none"), evaluators, has_references=True) is None
    with pytest.raises(ValueError, match="needs the diagnostic evaluator"):
        fid_extractor(_eval_section(fid_features="evaluator"), Evaluators(), has_references=True)
    with pytest.raises(ValueError, match="eval.fid_features"):
        _eval_section(fid_features="inception")
    # real CXRs without torchxrayvision's weights on disk: auto never fails, it takes the evaluator's features and says so
    caplog.set_level("INFO", logger="cxrl")
    real = fid_extractor(_eval_section(source="mimic", xrv_cache_dir=tmp_path / "empty"), evaluators, has_references=True)
    assert real.name.startswith("cxrl-diagnostic-evaluator/features")
    assert "torchxrayvision weights 'densenet121-res224-all' are not in the cache" in caplog.text
    assert real.reason.startswith("eval.fid_features=auto on real CXRs: torchxrayvision weights 'densenet121-res224-all' "
                                  f"are not in the cache ({tmp_path / 'empty'})")
    assert auto.reason == "eval.fid_features=auto on the phantom world: the diagnostic evaluator's features"
    # the report carries the reason: metrics.json per model and the results.md notes
    result, _ = score_samples(torch.rand(2, 2, 1, 32, 32), make_items(2), evaluators, real,
                              reference_features=torch.randn(3, 16), batch_size=4)
    assert result["feature_extractor_reason"] == real.reason
    write_report({"tuned": result}, tmp_path / "report")
    assert f"({real.reason})" in (tmp_path / "report" / "results.md").read_text()
    with pytest.raises(FileNotFoundError, match="xrv-densenet121-res224-all"):   # asked for explicitly: an error
        fid_extractor(_eval_section(source="mimic", fid_features="xrv", xrv_cache_dir=tmp_path / "empty"), evaluators,
                      has_references=True)


def test_mimic_evaluation_refuses_the_phantom_evaluators(evaluator_root):
    from cxrl.compose import build_evaluators
    from cxrl.eval.evaluators import DEFAULT_EVALUATOR_ROOT

    mimic = ["eval.source=mimic", "data.path=/data/mimic"]
    shipped_diagnostic = f"eval.evaluator_paths.diagnostic={DEFAULT_EVALUATOR_ROOT / 'diagnostic'}"
    for how in ([f"eval.evaluators={DEFAULT_EVALUATOR_ROOT}"], [f"eval.evaluators={evaluator_root}", shipped_diagnostic]):
        with pytest.raises(ValueError, match=r"evaluator would be the phantom world's .*cxrl train-reward \w+ --data mimic"):
            build_evaluators(apply_overrides(Config(), mimic + how), "cpu")
    loaded = build_evaluators(apply_overrides(Config(), [*mimic, f"eval.evaluators={evaluator_root}"]), "cpu")
    assert set(loaded.describe()) == {"posture", "diagnostic", "consistency"}
    # the phantom world itself keeps its shipped evaluators
    assert build_evaluators(apply_overrides(Config(), [f"eval.evaluators={DEFAULT_EVALUATOR_ROOT}"]), "cpu").posture is not None


def test_xrv_diagnostic_evaluator_scores_only_mapped_labels(tmp_path, make_items):
    import os

    xrv = pytest.importorskip("torchxrayvision")

    url = xrv.models.model_urls["densenet121-res224-all"]["weights_url"]
    torch.manual_seed(0)
    torch.save(xrv.models.DenseNet(num_classes=18), os.path.join(tmp_path, os.path.basename(url)))
    evaluators = load_evaluators(paths={"diagnostic": "xrv:densenet121-res224-all"}, kinds=("diagnostic",),
                                 xrv_cache_dir=tmp_path)
    assert evaluators.describe() == {"diagnostic": "torchxrayvision densenet121-res224-all"}
    result, _ = score_samples(torch.rand(4, 2, 1, 32, 32), make_items(4), evaluators)
    # make_items labels "No Finding" (no xrv output -> skipped) and "Pleural Effusion" (xrv "Effusion")
    assert set(result["auroc_per_label"]) == {"Pleural Effusion"} and "No Finding" in result["auroc_skipped_labels"]
    extractor = fid_extractor(_eval_section(source="mimic", fid_features="evaluator"), evaluators, has_references=True)
    assert extractor.name == "xrv-densenet121-res224-all/features2"
    # with the weights on disk, auto picks torchxrayvision's DenseNet on real CXRs
    auto = fid_extractor(_eval_section(source="mimic", xrv_cache_dir=tmp_path), evaluators, has_references=True)
    assert auto.name == "xrv-densenet121-res224-all/features2" and type(auto).__name__ == "XRVDenseNetFeatures"
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

    strict, _ = score_samples(samples, items, evaluators, min_label_prompts=3)
    assert strict["auroc_labels"] == ["No Finding"] and strict["auroc_min_label_prompts"] == 3
    assert strict["auroc"] == pytest.approx(macro_auroc(probs, labels, names, columns=[0]).macro, abs=1e-9)
    assert strict["auroc_all_labels"] == pytest.approx(macro_auroc(probs, labels).macro, abs=1e-9)
    assert set(strict["auroc_per_label"]) == {"No Finding", "Pleural Effusion"}

    loose, _ = score_samples(samples, items, evaluators, min_label_prompts=2)
    assert loose["auroc_labels"] == ["No Finding", "Pleural Effusion"] and loose["auroc"] == loose["auroc_all_labels"]
    none, _ = score_samples(samples, items, evaluators, min_label_prompts=4)
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
