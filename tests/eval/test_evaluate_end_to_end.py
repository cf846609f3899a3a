"""evaluate_models and the `cxrl sample` / `cxrl evaluate` commands end to end on tiny random
generators and tiny evaluators loaded through the real loaders."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cxrl.cli import main as cli_main
from cxrl.config import Config, apply_overrides
from cxrl.eval.evaluate import evaluate_models, generate_samples
from cxrl.eval.evaluators import load_evaluators
from cxrl.eval.fid import ClassifierFeatures
from cxrl.eval.run import run_evaluation

CFG = apply_overrides(Config(), ["eval.samples_per_prompt=4", "sampling.num_steps=3", "sampling.guidance_scale=2.0",
                                 "eval.seed=3", "eval.batch_size=8", "eval.bootstrap=20"])


def test_evaluate_models_pairs_noise_and_writes_report(tiny_generators, evaluator_root, make_items, tmp_path):
    from cxrl.diffusion import load_generator

    models = {name: load_generator(path) for name, path in tiny_generators.items()}
    evaluators = load_evaluators(evaluator_root)
    items = make_items(3)
    extractor = ClassifierFeatures(evaluators.diagnostic, name="toy-diagnostic")
    every_label = dataclasses.replace(CFG.eval, min_label_prompts=1)   # 3 prompts: 2 labels with both classes
    measured = evaluate_models(models, items, evaluators, extractor, every_label, CFG.sampling)
    samples = measured.samples
    assert samples["base"].shape == (3, 4, 1, 32, 32)
    assert 0 <= samples["base"].min() and samples["base"].max() <= 1
    # same model, same settings -> bit-identical samples (the base/tuned pairing relies on it)
    again = generate_samples(models["base"], [it["prompt"] for it in items], CFG.eval, CFG.sampling)
    torch.testing.assert_close(again, samples["base"], rtol=0, atol=0)
    assert not torch.equal(samples["base"], samples["tuned"])
    for name in ("base", "tuned"):
        m = measured.results[name]
        assert m["n_prompts"] == 3 and m["feature_extractor"] == "toy-diagnostic"
        assert m["fid"] is not None and m["fid"] >= 0 and m["posture"] <= 0
        # the per-sample scores a comparison resamples are the ones the metrics were computed from
        assert m["posture"] == float(measured.scores[name].posture.flatten().mean())
    evaluation = run_evaluation(models, items, evaluators, extractor, every_label, CFG.sampling, out_dir=tmp_path)
    assert evaluation.results == measured.results     # the full path samples and scores exactly the same
    assert set(evaluation.comparison) >= {"posture", "auroc", "consistency"}
    assert evaluation.comparison["posture"]["diff"] == pytest.approx(
        measured.results["tuned"]["posture"] - measured.results["base"]["posture"], abs=1e-12)
    assert set(json.loads((tmp_path / "metrics.json").read_text())) == {"base", "tuned"}
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["bootstrap_resamples"] == 20
    # per label: the labels of the macro AUROC, each with its own tuned − base as metrics.json has it
    per_label, results = saved["auroc_per_label"], measured.results
    assert list(per_label) == results["base"]["auroc_labels"] == ["No Finding", "Pleural Effusion"]
    assert per_label == evaluation.per_label and "AUROC per label" in (tmp_path / "results.md").read_text()
    for name, entry in per_label.items():
        assert entry["diff"] == pytest.approx(results["tuned"]["auroc_per_label"][name]
                                              - results["base"]["auroc_per_label"][name], abs=1e-12)
    run_info = json.loads((tmp_path / "run.json").read_text())
    assert run_info["prompt_ids"] == ["item-0", "item-1", "item-2"]
    assert (tmp_path / "grids" / "comparison.png").is_file()
    with pytest.raises(ValueError, match="unknown model"):
        run_evaluation(models, items, evaluators, None, CFG.eval, CFG.sampling, aces={"other": None})


def test_sample_command_writes_pngs_and_grid(tiny_generators, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Small left pleural effusion.\n\nNo acute cardiopulmonary process.\n")
    out = tmp_path / "samples"
    rc = cli_main(["sample", "--model", str(tiny_generators["base"]), "--prompts", str(prompts), "--n", "2",
                   "--steps", "2", "--seed", "5", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    pngs = sorted(p.name for p in out.glob("p*_s*.png"))
    assert pngs == ["p000_s00.png", "p000_s01.png", "p001_s00.png", "p001_s01.png"]
    assert np.asarray(Image.open(out / "p000_s00.png")).shape == (32, 32)
    assert (out / "prompts.txt").read_text().splitlines() == ["Small left pleural effusion.", "No acute cardiopulmonary process."]
    assert (out / "grid.png").is_file()
    # --ace: the tokens saved in MODEL/ace/ condition the samples (same seed, different images)
    import shutil

    from cxrl.diffusion.ace import AdaptiveConditionEmbedding

    with_ace = tmp_path / "with_ace"
    shutil.copytree(tiny_generators["base"], with_ace)
    ace = AdaptiveConditionEmbedding(num_tokens=2, dim=32, text_std=1.0, relative_scale=3.0, seed=1)
    ace.save(with_ace)
    for flag, target in (([], "plain"), (["--ace"], "ace")):
        assert cli_main(["sample", "--model", str(with_ace), "--prompt", "Small left pleural effusion.", "--n", "1",
                         "--steps", "2", "--seed", "5", "--out", str(tmp_path / target), "--device", "cpu", *flag]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain" / "p000_s00.png"))
    conditioned = np.asarray(Image.open(tmp_path / "ace" / "p000_s00.png"))
    assert not np.array_equal(plain, conditioned)
    capsys.readouterr()
    assert cli_main(["sample", "--model", str(tiny_generators["base"]), "--prompt", "x", "--ace", "--out", str(out),
                     "--device", "cpu", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ACE directory" in err[0]      # one line, naming what is missing


def test_evaluate_command_on_phantom_world(tiny_generators, evaluator_root, tmp_path):
    out = tmp_path / "eval"
    rc = cli_main(["evaluate", "--model", str(tiny_generators["tuned"]), "--baseline", str(tiny_generators["base"]),
                   "--data", "phantom", "--n-prompts", "3", "--samples-per-prompt", "4", "--steps", "2",
                   "--evaluators", str(evaluator_root), "--out", str(out), "--device", "cpu"])
    assert rc == 0
    payload = json.loads((out / "metrics.json").read_text())
    assert list(payload) == ["base", "tuned"]
    tuned = payload["tuned"]
    for key in ("posture", "auroc", "consistency", "fid", "ms_ssim", "n_prompts", "feature_extractor"):
        assert key in tuned
    # phantom world: FID against the phantom renders of the same prompts, with the evaluator's features
    assert tuned["n_prompts"] == 3 and tuned["fid"] is not None and tuned["fid_reference_images"] == 3
    assert tuned["feature_extractor"].startswith("cxrl-diagnostic-evaluator/features")
    assert tuned["evaluators"]["posture"].startswith(str(evaluator_root))
    run_info = json.loads((out / "run.json").read_text())
    assert run_info["data"] == "phantom" and run_info["model_dirs"]["base"] == str(tiny_generators["base"])
    # the third column of the comparison grid is the phantom world's render of the report, labelled so
    assert run_info["comparison_grid_columns"] == ["base", "tuned", "phantom render"]
    assert len(run_info["prompt_ids"]) == 3 and all(i.startswith("phantom-test-") for i in run_info["prompt_ids"])
    table = (out / "results.md").read_text()
    assert "| base |" in table and "| tuned |" in table and "FID features: cxrl-diagnostic-evaluator" in table
    assert (out / "grids" / "tuned.png").is_file()
    # comparison grid: prompt column (240 px) + base, tuned and the real phantom render (128-px cells)
    assert Image.open(out / "grids" / "comparison.png").size[0] == 4 + 240 + 3 * (128 + 4)


def test_evaluate_command_refuses_missing_xrv_weights(tiny_generators, evaluator_root, tmp_path, capsys):
    assert cli_main(["evaluate", "--model", str(tiny_generators["tuned"]), "--data", "iuxray", "--n-prompts", "2",
                     "--steps", "1", "--evaluators", str(evaluator_root), "--fid-features", "xrv",
                     "--xrv-cache-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 2
    assert "FID feature extractor 'xrv-densenet121" in capsys.readouterr().err


def test_sampling_workers_give_the_one_thread_samples_and_their_cache_key(tiny_generators, evaluator_root, make_items):
    """Batches sampled side by side (one thread each) are the bits of one batch at a time on one thread, in order;
    the cache key records the one thread they were sampled with."""
    from cxrl.diffusion import load_generator
    from cxrl.eval.cache import evaluation_key

    gen = load_generator(tiny_generators["base"])
    prompts = [it["prompt"] for it in make_items(5)]
    one_at_a_time = apply_overrides(CFG, ["eval.batch_size=3"]).eval   # 20 samples: 7 batches, the last one short
    side_by_side = apply_overrides(CFG, ["eval.batch_size=3", "eval.sampling_workers=2"]).eval
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = generate_samples(gen, prompts, one_at_a_time, CFG.sampling)
        key_one_thread = evaluation_key(gen, None, make_items(5), load_evaluators(evaluator_root), None,
                                        one_at_a_time, CFG.sampling)
    finally:
        torch.set_num_threads(before)
    torch.set_num_threads(2)
    try:
        parallel = generate_samples(gen, prompts, side_by_side, CFG.sampling)
        assert torch.get_num_threads() == 2
        key_workers = evaluation_key(gen, None, make_items(5), load_evaluators(evaluator_root), None,
                                     side_by_side, CFG.sampling)
    finally:
        torch.set_num_threads(before)
    assert parallel.shape == (5, 4, 1, 32, 32)
    torch.testing.assert_close(parallel, reference, rtol=0, atol=0)
    assert key_workers == key_one_thread
