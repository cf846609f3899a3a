"""A training run with model.compile: rollouts and the PPO recompute go through the compiled UNet (after each input
signature's one eager call), and the first minibatch's importance ratio stays 1 to rounding."""
import pytest
import torch

from rl_run_helpers import tiny_overrides
from cxrl.compose import build_trainer
from cxrl.config import Config, apply_overrides
from cxrl.diffusion.compiled import CompiledForward
from cxrl.rl.prompts import PromptPool


def _compiled_epoch(gen_dir, out, extra=()):
    torch._dynamo.reset()
    cfg = apply_overrides(Config(), tiny_overrides(gen_dir, out, extra=["model.compile=default", *extra]))
    tr = build_trainer(cfg, PromptPool([{"prompt": p, "labels": None} for p in ["a", "b small effusion"]]))
    assert isinstance(tr.gen.unet.forward, CompiledForward)
    entries, seeds, local = tr.draw_prompts(0)
    batch = tr.collect_rollouts(0, entries[local], seeds[local], local.start)
    reward_out, _ = tr.score(batch)
    adv, _ = tr.advantages(entries, local, reward_out)
    batch.store.write_advantages(0, adv)
    return tr, tr.update(0, batch)


@pytest.mark.parametrize("finetune, workers", [("lora", 0), ("full", 0), ("lora", 2)])
def test_a_compiled_run_samples_and_updates_through_the_compiled_unet(tiny_pixel_dir, tmp_path, monkeypatch, finetune,
                                                                      workers):
    monkeypatch.setenv("CXRL_COMPILE_BACKEND", "aot_eager")   # traced in seconds; the slow test below uses inductor
    # workers=2: two rollout chunks sampled at once on two threads, both through the one compiled forward
    tr, result = _compiled_epoch(tiny_pixel_dir, tmp_path, [f"model.finetune={finetune}",
                                                            f"train.rollout_workers={workers}", "rewards.overlap=false"])
    calls = tr.gen.unet.forward.calls
    assert calls["compiled"] > calls["eager"] > 0            # 3 sampling steps, anchor and recompute calls
    if finetune == "full":                                    # the frozen anchor copy compiles on its own
        assert isinstance(tr.policy.anchor_unet.forward, CompiledForward)
    assert abs(result.first_ratios[0] - 1.0) < 1e-4
    assert all(torch.isfinite(p).all() for p in tr.policy.params)


@pytest.mark.slow
def test_a_run_compiled_by_inductor_keeps_its_first_ratio_at_one(tiny_pixel_dir, tmp_path):
    tr, result = _compiled_epoch(tiny_pixel_dir, tmp_path)
    assert tr.gen.unet.forward.calls["compiled"] > 0
    assert abs(result.first_ratios[0] - 1.0) < 1e-4
