"""The run's one precision rule on the CPU: bf16 autocast is opt-in there, reaches every UNet region (rollout, PPO
recompute), and keeps the stored and recomputed log-probabilities equal."""
import logging
import warnings

import pytest
import torch

from rl_run_helpers import tiny_overrides
from cxrl.compose import build_trainer
from cxrl.config import Config, apply_overrides
from cxrl.rl import precision
from cxrl.rl.precision import autocast, autocast_dtype
from cxrl.rl.prompts import PromptPool

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_is_bf16_on_cuda_only_and_bf16_is_opt_in_on_the_cpu():
    assert autocast_dtype("auto", CPU) is None
    assert autocast_dtype("auto", CUDA) is torch.bfloat16
    assert autocast_dtype("no", CUDA) is None and autocast_dtype("no", CPU) is None
    assert autocast_dtype("bf16", CPU) is torch.bfloat16


def test_bf16_on_a_cpu_without_native_bf16_warns_that_it_is_emulated(monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="cxrl.rl.precision"):
        assert autocast_dtype("bf16", CPU) is torch.bfloat16
    assert "emulates" in caplog.text
    caplog.clear()
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="cxrl.rl.precision"):
        autocast_dtype("bf16", CPU)
    assert caplog.text == ""


def test_the_autocast_region_follows_the_named_device_type():
    layer, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    with autocast(torch.bfloat16, "cpu"):
        assert layer(x).dtype is torch.bfloat16
    with autocast(None, "cpu"):
        assert layer(x).dtype is torch.float32
    with warnings.catch_warnings():           # without CUDA, torch says it disables the region
        warnings.simplefilter("ignore", UserWarning)
        with autocast(torch.bfloat16, "cuda"):   # a CUDA region leaves CPU tensors in full precision
            assert layer(x).dtype is torch.float32


def _epoch(gen_dir, out, mixed_precision):
    cfg = apply_overrides(Config(), tiny_overrides(gen_dir, out, extra=[f"train.mixed_precision={mixed_precision}"]))
    tr = build_trainer(cfg, PromptPool([{"prompt": p, "labels": None} for p in ["a", "b small effusion"]]))
    entries, seeds, local = tr.draw_prompts(0)
    batch = tr.collect_rollouts(0, entries[local], seeds[local], local.start)
    reward_out, _ = tr.score(batch)
    adv, _ = tr.advantages(entries, local, reward_out)
    batch.store.write_advantages(0, adv)
    return tr, batch


def test_a_bf16_run_on_the_cpu_samples_in_bf16_and_its_first_ratio_is_one(tiny_pixel_dir, tmp_path):
    full, full_batch = _epoch(tiny_pixel_dir, tmp_path / "fp32", "no")
    half, half_batch = _epoch(tiny_pixel_dir, tmp_path / "bf16", "bf16")
    assert half.updater.autocast_dtype is torch.bfloat16 and full.updater.autocast_dtype is None
    # the same noises and weights: the rollouts differ only by the arithmetic, by bf16's rounding and not more
    a, b = full_batch.store.latents[:, 1], half_batch.store.latents[:, 1]
    assert not torch.equal(a, b)
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    result = half.update(0, half_batch)
    assert result.first_ratios[0] == 1.0      # the recompute ran under the rollout's autocast, to the last bit
    assert all(torch.isfinite(p).all() for p in half.policy.params)
