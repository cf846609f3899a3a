"""Base-generator pre-training: loss goes down, the saved model loads and samples, runs are
reproducible, bad configs are refused by name, and the shipped base (when present) works."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from cxrl.config import PretrainConfig, section_from_dict
from cxrl.training.pretrain import (ExponentialMovingAverage, build_initial_generator, evaluate_loss, fixed_batch,
                                    learning_rate_at, pretrain, save_pretrained_base)
from cxrl.training.pretrain_data import PhantomTrainingSet, load_reports, render_training_set, report_texts

SHIPPED_BASE = Path(__file__).resolve().parents[2] / "cxrl" / "assets" / "base"


def tiny_config(**changes) -> PretrainConfig:
    values = dict(resolution=16, block_out_channels=[16, 32], cross_attention_dim=32, attention_head_dim=4,
                  vocab_size=600, num_images=96, steps=30, batch_size=16, learning_rate=2e-3, warmup_steps=3,
                  ema_decay=0.9, seed=3)
    values.update(changes)
    return section_from_dict(PretrainConfig, values)


@pytest.fixture(scope="module")
def reports():
    return load_reports("train")


@pytest.fixture(scope="module")
def corpus(reports):
    return report_texts(reports)[:300]


@pytest.fixture(scope="module")
def tiny_data(reports):
    cfg = tiny_config()
    return render_training_set(reports, cfg.num_images, cfg.resolution, cfg.seed, cfg.posture_strength)


def test_training_set_matches_the_phantom_dataset(reports, tiny_data):
    from cxrl.data.phantom.dataset import PhantomCXR

    assert tiny_data.images.dtype == torch.uint8 and tiny_data.images.shape == (96, 1, 16, 16)
    reference = PhantomCXR(split="train", resolution=16, seed=3, posture_strength=1.0, reports=reports, length=96)
    for i in (0, 17, 95):
        item = reference[i]
        assert tiny_data.prompts[int(tiny_data.prompt_index[i])] == item["prompt"]
        assert torch.allclose(tiny_data.images[i].float() / 255.0, item["image"], atol=0.5 / 255 + 1e-6)
    pixels = tiny_data.pixels(torch.arange(96))
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0 and pixels.std() > 0.1
    assert len(set(tiny_data.prompts)) == len(tiny_data.prompts)  # distinct prompts, stored once
    again = render_training_set(reports, 96, 16, 3, 1.0)
    assert torch.equal(again.images, tiny_data.images) and again.prompts == tiny_data.prompts


def test_pretrain_lowers_loss_and_the_saved_base_loads_and_samples(tmp_path, one_thread, tiny_data, corpus):
    from cxrl.diffusion.generator import load_generator
    from cxrl.diffusion.rollout import sample_images

    cfg = tiny_config()
    initial = build_initial_generator(cfg, corpus, tmp_path)
    batch = fixed_batch(initial, tiny_data, size=32, seed=123)
    before = evaluate_loss(initial, batch)
    records = []
    result = pretrain(cfg, tiny_data, corpus, log_every=10, on_log=records.append)
    after = evaluate_loss(result.gen, batch)
    assert after < 0.7 * before, (before, after)
    assert [r["step"] for r in records] == [10, 20, 30] and result.final_loss == records[-1]["loss"]
    assert not any(p.requires_grad for p in result.gen.unet.parameters())

    out = save_pretrained_base(result, tmp_path / "base")
    provenance = json.loads((out / "pretrain.json").read_text())
    assert provenance["config"] == dataclasses.asdict(cfg) and provenance["history"] == records
    loaded = load_generator(out)
    assert loaded.unet.dtype == torch.float32 and loaded.latent_shape == (1, 16, 16)
    assert loaded.scheduler.config.clip_sample is True and loaded.scheduler.config.clip_sample_range == 1.0
    # fp16 storage rounds the weights: the loss moves by far less than training changed it
    assert abs(evaluate_loss(loaded, batch) - after) < 0.05 * (before - after)
    images = sample_images(loaded, ["No acute disease.", "Moderate cardiomegaly."], num_steps=4,
                           guidance_scale=3.0, generator=0)
    assert images.shape == (2, 1, 16, 16) and images.min() >= 0 and images.max() <= 1
    with pytest.raises(FileExistsError, match="base"):
        save_pretrained_base(result, out)


def _weights(gen) -> dict:
    return {**{f"unet.{k}": v for k, v in gen.unet.state_dict().items()},
            **{f"text.{k}": v for k, v in gen.text_encoder.state_dict().items()}}


def test_same_seed_same_weights_other_seed_differs(one_thread, tiny_data, corpus):
    cfg = tiny_config(steps=4, warmup_steps=1)
    first = _weights(pretrain(cfg, tiny_data, corpus).gen)
    second = _weights(pretrain(cfg, tiny_data, corpus).gen)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _weights(pretrain(tiny_config(steps=4, warmup_steps=1, seed=4), tiny_data, corpus).gen)
    assert any(not torch.equal(first[k], other[k]) for k in first)


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, "steps"),
    ("batch_size", -1, "batch_size"),
    ("learning_rate", 0.0, "learning_rate"),
    ("learning_rate", float("nan"), "learning_rate"),
    ("cond_dropout", 1.0, "cond_dropout"),
    ("ema_decay", 1.0, "ema_decay"),
    ("warmup_steps", 30, "warmup_steps"),
    ("resolution", 8, "resolution"),
    ("block_out_channels", [32], "block_out_channels"),
    ("vocab_size", 100, "vocab_size"),
    ("posture_strength", 3.0, "posture_strength"),
    ("lr_schedule", "linear", "lr_schedule"),
    ("storage_dtype", "int8", "storage_dtype"),
    ("steps", "many", "steps"),
    ("num_images", True, "num_images"),
])
def test_bad_config_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**{field: value})


def test_unknown_config_key_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        section_from_dict(PretrainConfig, {"learning_rat": 1e-3})


def test_mismatched_data_resolution_is_refused(tiny_data, corpus):
    with pytest.raises(ValueError, match="resolution"):
        pretrain(tiny_config(resolution=32), tiny_data, corpus)


def test_training_set_validates_its_tensors():
    with pytest.raises(ValueError, match="images"):
        PhantomTrainingSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])
    with pytest.raises(ValueError, match="prompt_index"):
        PhantomTrainingSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 5]), ["a"])


def test_learning_rate_schedule():
    cfg = PretrainConfig(steps=110, warmup_steps=10, learning_rate=1.0)
    assert learning_rate_at(0, cfg) == pytest.approx(0.1) and learning_rate_at(9, cfg) == pytest.approx(1.0)
    assert learning_rate_at(10, cfg) == pytest.approx(1.0)
    assert learning_rate_at(60, cfg) == pytest.approx(0.5)
    assert learning_rate_at(109, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)))
    constant = PretrainConfig(steps=110, warmup_steps=10, learning_rate=1.0, lr_schedule="constant")
    assert learning_rate_at(100, constant) == 1.0


def test_ema_follows_its_formula():
    param = torch.nn.Parameter(torch.tensor([0.0, 2.0]))
    ema = ExponentialMovingAverage([param], decay=0.5)
    expected = param.detach().clone()
    for step, value in enumerate([1.0, 3.0, -2.0], start=1):
        param.data.fill_(value)
        ema.update()
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * param.detach()
    assert torch.allclose(ema.shadow[0], expected)
    ema.copy_to_params()
    assert torch.allclose(param.detach(), expected)


def test_cli_pretrain_end_to_end(tmp_path, one_thread, capsys):
    from cxrl.cli import main

    out, logs = tmp_path / "base", tmp_path / "logs"
    args = ["pretrain", "--out", str(out), "--log-dir", str(logs), "--no-progress", "--grid-prompts", "2",
            "--log-every", "2", "pretrain.resolution=16", "pretrain.block_out_channels=[16, 32]",
            "pretrain.cross_attention_dim=32", "pretrain.vocab_size=600", "pretrain.num_images=32", "pretrain.steps=4",
            "pretrain.batch_size=8", "pretrain.warmup_steps=1"]
    assert main(args) == 0
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file() and (out / "pretrain.json").is_file()
    assert [json.loads(line)["step"] for line in (logs / "loss.jsonl").read_text().splitlines()] == [2, 4]
    assert (logs / "samples.png").stat().st_size > 0
    capsys.readouterr()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err        # an existing --out is kept
    assert main(["pretrain", "--out", str(tmp_path / "other"), "pretrain.stpes=3"]) == 2
    assert "did you mean 'pretrain.steps'" in capsys.readouterr().err
    # a key from before the sections existed says what to rename it to
    assert main(["pretrain", "--out", str(tmp_path / "other"), "steps=3"]) == 2
    assert "unknown config key 'steps'; did you mean 'pretrain.steps'" in capsys.readouterr().err


@pytest.mark.skipif(not (SHIPPED_BASE / "unet").is_dir(), reason="shipped base not built (cxrl pretrain --out cxrl/assets/base)")
def test_shipped_base_loads_and_samples(one_thread):
    from cxrl.diffusion.generator import load_generator
    from cxrl.diffusion.rollout import sample_images

    size = sum(f.stat().st_size for f in SHIPPED_BASE.rglob("*") if f.is_file())
    assert size <= 6 * 2**20, f"shipped base is {size / 2**20:.2f} MB"
    provenance = json.loads((SHIPPED_BASE / "pretrain.json").read_text())
    assert section_from_dict(PretrainConfig, provenance["config"]).posture_strength >= 0.5
    gen = load_generator(SHIPPED_BASE)
    assert not gen.is_latent and gen.latent_shape[0] == 1
    images = sample_images(gen, ["No acute cardiopulmonary abnormality.", "Large right pleural effusion."],
                           num_steps=10, guidance_scale=3.0, generator=0)
    assert images.shape == (2, 1, *gen.resolution)
    assert images.min() >= 0 and images.max() <= 1
    # a recognisable radiograph, not a saturated frame (what unclipped pixel-space DDIM sampling gives)
    means = images.mean(dim=(1, 2, 3))
    assert ((means > 0.2) & (means < 0.8)).all(), means
    assert (images.flatten(1).std(dim=1) > 0.1).all()
