"""The embedded demo: `cxrl train` out of the box, its end-of-run evaluation, and the ablation configs.

The fast tests run the real demo path (shipped base generator, shipped reward models, held-out evaluators)
with tiny overrides; ``test_full_demo_improves`` (``pytest -m slow``) runs the shipped demo as a user would and
checks that the tuned generator beats the base on the three held-out metrics.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from cxrl.config import load_config, packaged_config_text, to_dict

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = {   # file -> the dotted config keys it changes relative to the demo (plus log.output_dir)
    "no_ace.yaml": {"model.ace_tokens"},
    "rlcf.yaml": {"rewards.feedback"},
    "posture_only.yaml": {"rewards.components"},
    "diagnostic_only.yaml": {"rewards.components"},
    "consistency_only.yaml": {"rewards.components"},
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_demo_config_enables_held_out_evaluation():
    cfg = load_config(None)
    assert cfg.eval.enabled and cfg.eval.split != cfg.data.split and cfg.eval.samples_per_prompt == 4
    assert cfg.train.torch_threads >= 1


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablation_config_changes_only_its_keys(name):
    demo = _flat(to_dict(load_config("packaged:demo.yaml")))
    ablation = _flat(to_dict(load_config(REPO / "configs" / "ablations" / name)))
    changed = {k for k in demo if demo[k] != ablation[k]}
    assert changed == ABLATIONS[name] | {"log.output_dir"}


def test_32_epoch_demo_is_the_previous_default():
    """configs/demo_32_epochs.yaml is the demo of sessions 6-8 (its seed table in docs/demo.md): the demo with the
    keys the 16-epoch recipe changed set back, and nothing else — the evaluation and every other setting are the demo's."""
    demo = _flat(to_dict(load_config("packaged:demo.yaml")))
    old = _flat(to_dict(load_config(REPO / "configs" / "demo_32_epochs.yaml")))
    assert {k for k in demo if demo[k] != old[k]} == {
        "sampling.group_size", "rewards.components", "train.epochs", "train.timestep_fraction", "train.clip_range",
        "train.advantage", "train.final_policy", "log.output_dir", "log.sample_every"}
    assert (demo["train.epochs"], demo["train.advantage"], demo["sampling.group_size"]) == (16, "group_batch", 8)
    assert (old["train.epochs"], old["train.advantage"], old["sampling.group_size"]) == (32, "group", 4)
    assert (demo["train.final_policy"], old["train.final_policy"]) == ("best_probe", "last")
    weights = {name: {e["name"]: e["weight"] for e in cfg["rewards.components"]} for name, cfg in (("demo", demo), ("old", old))}
    assert weights == {"demo": {"posture": 30.0, "diagnostic": 6.0, "consistency": 6.5},
                       "old": {"posture": 30.0, "diagnostic": 6.0, "consistency": 8.0}}
    consistency = {name: next(e for e in cfg["rewards.components"] if e["name"] == "consistency")
                   for name, cfg in (("demo", demo), ("old", old))}
    assert len(consistency["demo"]["path"]) == 3 and consistency["old"].get("path") is None   # ensemble vs the shipped one


def test_one_step_candidate_changes_only_the_rollout_split():
    """configs/demo_one_step.yaml (session 15) is the demo with one trained step per image and twice the images an
    epoch: the same optimizer steps an epoch, fewer epochs, and nothing else — the rewards and evaluation are the demo's."""
    demo = _flat(to_dict(load_config("packaged:demo.yaml")))
    cand = _flat(to_dict(load_config(REPO / "configs" / "demo_one_step.yaml")))
    assert {k for k in demo if demo[k] != cand[k]} == {
        "sampling.samples_per_epoch", "train.epochs", "train.timestep_fraction", "train.batch_size", "monitor.every",
        "log.output_dir"}
    from cxrl.trajectory.plan import num_trained_steps
    window = cand["sampling.num_steps"] - cand["train.skip_last_steps"]
    assert num_trained_steps(window, cand["train.timestep_fraction"]) == 1
    assert num_trained_steps(window, demo["train.timestep_fraction"]) == 3
    # the same optimizer steps an epoch (samples / batch), and 1.5x the rollouts a run
    assert cand["sampling.samples_per_epoch"] // cand["train.batch_size"] == demo["sampling.samples_per_epoch"] // demo["train.batch_size"]
    assert cand["sampling.samples_per_epoch"] * cand["train.epochs"] == 1.5 * demo["sampling.samples_per_epoch"] * demo["train.epochs"]


def test_text_encoder_candidate_changes_only_the_text_encoder():
    """configs/demo_text_encoder.yaml (session 20) is the demo with its text encoder trained, at the UNet's learning
    rate, and nothing else; the demo keeps it frozen."""
    demo = _flat(to_dict(load_config("packaged:demo.yaml")))
    cand = _flat(to_dict(load_config(REPO / "configs" / "demo_text_encoder.yaml")))
    assert {k for k in demo if demo[k] != cand[k]} == {"model.train_text_encoder", "log.output_dir"}
    assert cand["model.train_text_encoder"] and not demo["model.train_text_encoder"]
    assert cand["train.text_encoder_learning_rate"] == cand["train.learning_rate"]


def test_single_reward_ablations_keep_one_reward():
    """Each keeps the demo's own entry for its reward — the same ensemble of models — so the ablation removes the
    other two rewards and changes nothing else about the kept one."""
    demo_entries = {e["name"]: e for e in load_config("packaged:demo.yaml").rewards.components}
    for kind in ("posture", "diagnostic", "consistency"):
        cfg = load_config(REPO / "configs" / "ablations" / f"{kind}_only.yaml")
        assert cfg.rewards.components == [demo_entries[kind]]


def test_extends_errors_name_the_file(tmp_path):
    missing = tmp_path / "child.yaml"
    missing.write_text("extends: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(missing)
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        load_config(a)
    (tmp_path / "sub").mkdir()
    bad = tmp_path / "sub" / "bad.yaml"
    bad.write_text("extends: ../demo.yaml\ntrain: {learning_rat: 1.0}\n")
    (tmp_path / "demo.yaml").write_text(packaged_config_text("demo.yaml"))
    with pytest.raises(ValueError, match="train.learning_rate"):
        load_config(bad)


def test_eval_split_must_be_held_out():
    with pytest.raises(ValueError, match="eval.split"):
        load_config(None, ["eval.split=train"])
    with pytest.raises(ValueError, match="eval.enabled"):
        load_config(None, ["data.source=mimic", "data.path=/data/mimic"])
    assert load_config(None, ["data.source=mimic", "data.path=/data/mimic", "eval.enabled=false"]).eval.enabled is False


SMOKE = ["train.epochs=1", "sampling.samples_per_epoch=8", "sampling.batch_size=8", "sampling.num_steps=4",
         "train.batch_size=4", "train.gradient_accumulation=1", "eval.num_prompts=8", "eval.samples_per_prompt=2",
         "eval.bootstrap=20", "eval.seed=5", "eval.min_label_prompts=1", "eval.torch_threads=2", "log.progress=false", "log.sample_every=0", "model.device=cpu"]


def test_demo_smoke_through_the_cli(tmp_path, capsys):
    from cxrl.cli import main

    before = torch.get_num_threads()
    try:
        rc = main(["train", "--output", str(tmp_path / "run"), *SMOKE])
    finally:
        torch.set_num_threads(before)
    assert rc == 0
    eval_dir = tmp_path / "run" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert set(metrics) == {"base", "tuned"}
    for name in ("base", "tuned"):
        for key in ("posture", "auroc", "consistency", "fid", "ms_ssim"):
            assert isinstance(metrics[name][key], float) and math.isfinite(metrics[name][key]), (name, key)
        assert all("assets/evaluators" in source for source in metrics[name]["evaluators"].values())
    assert metrics["tuned"]["ace"] and not metrics["base"]["ace"]
    assert json.loads((eval_dir / "run.json").read_text())["torch_threads"] == 2   # eval.torch_threads applied
    comparison = json.loads((eval_dir / "comparison.json").read_text())["comparison"]
    for key in ("posture", "auroc", "consistency"):
        entry = comparison[key]
        assert entry["diff"] == pytest.approx(metrics["tuned"][key] - metrics["base"][key], abs=1e-9)
    assert (eval_dir / "grids" / "comparison.png").is_file() and (tmp_path / "run" / "final" / "unet").is_dir()
    out = capsys.readouterr()
    assert "| base |" in out.out and "| tuned |" in out.out and "Tuned − base" in out.out
    assert "held-out evaluators" in out.err and "not the reward models" in out.err


@pytest.mark.slow
def test_full_demo_improves(tmp_path):
    """The shipped demo exactly as `cxrl train` runs it: tuned beats base on the held-out evaluators, with the
    95% paired-bootstrap interval of each difference above 0."""
    from cxrl.cli import main

    before = torch.get_num_threads()
    try:
        assert main(["train", "--output", str(tmp_path / "demo")]) == 0
    finally:
        torch.set_num_threads(before)
    comparison = json.loads((tmp_path / "demo" / "eval" / "comparison.json").read_text())["comparison"]
    for key in ("posture", "auroc", "consistency"):
        assert comparison[key]["ci_low"] > 0, (key, comparison[key])   # beyond the paired bootstrap noise
