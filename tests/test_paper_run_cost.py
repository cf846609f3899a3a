"""benchmarks/paper_run_cost.py: FLOPs counted on the meta device equal FLOPs counted on real tensors of the same
shapes (with attention as explicit matmuls, which the counter always sees), and the GPU-hours arithmetic is the
work of the config times those counts over the assumed rate."""
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import paper_run_cost as cost
from cxrl.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = cost.Shapes(unet_widths=(32, 64), layers_per_block=1, cross_dim=32, heads=2, latent=8, vae_widths=(32, 32),
                   text_layers=1, text_heads=2, tokens=77, reward_resolution=32)


def _real_counts(shapes, lora_rank, ace_tokens):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor

    from cxrl.diffusion.lora import apply_lora

    s = shapes
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=s.latent, in_channels=4, out_channels=4, block_out_channels=s.unet_widths,
                                layers_per_block=s.layers_per_block, cross_attention_dim=s.cross_dim, attention_head_dim=s.heads,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s.vae_widths, layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    for model in (unet, vae):   # bmm attention: counted on any device (a CPU SDPA kernel may not be)
        model.set_attn_processor(AttnProcessor())
    x, t = torch.randn(2, 4, s.latent, s.latent), torch.tensor([10, 10])
    context = torch.randn(2, s.tokens + ace_tokens, s.cross_dim)
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        unet(x, t, encoder_hidden_states=context)
    with FlopCounterMode(display=False) as dec, torch.no_grad():
        vae.decode(torch.randn(1, 4, s.latent, s.latent))
    apply_lora(unet, rank=lora_rank, alpha=float(lora_rank))
    unet.set_attn_processor(AttnProcessor())
    for name, p in unet.named_parameters():
        p.requires_grad_("lora_" in name)
    with FlopCounterMode(display=False) as both:
        unet(x, t, encoder_hidden_states=context).sample.sum().backward()
    return fwd.get_total_flops() / 2, both.get_total_flops() / 2, dec.get_total_flops()


def test_meta_counts_equal_real_counts_and_checkpointing_adds_a_recompute():
    counted = cost.count_flops(TINY, lora_rank=2, ace_tokens=2, checkpointing=False)
    forward, train, decode = _real_counts(TINY, lora_rank=2, ace_tokens=2)
    assert counted["unet_forward"] == forward and counted["unet_train"] == train and counted["vae_decode"] == decode
    # LoRA: the frozen weights need gradients of their inputs only, so the backward is about one forward, not two
    assert 1.8 * forward < train < 2.6 * forward
    recomputed = cost.count_flops(TINY, lora_rank=2, ace_tokens=2, checkpointing=True)["unet_train"]
    assert train < recomputed <= train + forward   # checkpointing re-runs (at most) the forward
    full = cost.count_flops(TINY, lora_rank=None, ace_tokens=2, checkpointing=False)["unet_train"]
    assert full > train   # weight gradients of every layer: the classic backward ~ 2x forward
    assert 2.6 * forward < full < 3.4 * forward


def test_estimate_is_the_configs_work_times_the_counts():
    cfg = load_config(ROOT / "configs" / "mimic_roentgen.yaml")
    unit = {"unet_forward": 1e12, "unet_train": 3e12, "vae_decode": 2e12, "text_encode": 0.0, "rewards": 0.0}
    result = cost.estimate(cfg, unit, gpus=8, anchor_hit_rate=0.0)
    images = 100 * 256
    assert result["work"]["rollout_rows"] == images * 50 * 2 == result["work"]["anchor_rows"]   # 50 steps, CFG pairs
    assert result["work"]["train_rows"] == images * 25 * 2                                      # half the steps trained
    expected_train = (2 * images * 50 * 2 * 1 + images * 25 * 2 * 3 + 2 * images * 2)        # TFLOP
    assert result["train_tflop"] == pytest.approx(expected_train)
    assert result["eval_tflop"] == pytest.approx(2 * 256 * 4 * (50 * 2 * 1 + 2))
    for row in result["rows"]:
        rate = row["mfu"] * cost.PEAK_BF16_TFLOPS
        assert row["gpu_hours"] == pytest.approx(8 * (expected_train / rate / 8 + result["eval_tflop"] / rate) / 3600)
    cached = cost.estimate(cfg, unit, anchor_hit_rate=0.5)["work"]
    assert cached["anchor_rows"] == images // 2 * 50 * 2
    direct = dataclasses.replace(cfg, rewards=dataclasses.replace(cfg.rewards, feedback="direct"),
                                 sampling=dataclasses.replace(cfg.sampling, guidance_scale=1.0))
    work = cost.run_work(direct)
    assert work["anchor_rows"] == 0 and work["rollout_rows"] == images * 50 and work["train_rows"] == images * 25
    odd = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, timestep_fraction=0.3))
    assert cost.run_work(odd)["trained_steps"] == math.ceil(50 * 0.3) == 15


def test_a_measured_mfu_gets_its_own_row_and_a_bad_one_is_refused(capsys):
    cfg = load_config(ROOT / "configs" / "mimic_roentgen.yaml")
    unit = {"unet_forward": 1e12, "unet_train": 3e12, "vae_decode": 2e12, "text_encode": 0.0, "rewards": 0.0}
    result = cost.estimate(cfg, unit, mfu_range=(0.15, 0.156, 0.25))
    hours = {row["mfu"]: row["gpu_hours"] for row in result["rows"]}
    assert hours[0.15] > hours[0.156] > hours[0.25]
    assert hours[0.156] == pytest.approx(hours[0.15] * 0.15 / 0.156)      # hours scale as 1 / MFU
    table = cost.report(cfg, unit, result)
    assert "| 15.6% | 154 |" in table and "| 15% | 148 |" in table
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(SystemExit):
            cost.main(["--mfu", bad])
        assert "--mfu takes a fraction of the peak" in capsys.readouterr().err
