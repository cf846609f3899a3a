"""What an RL config costs in GPU-hours, from counted FLOPs: an ESTIMATE, not a measurement (docs/paper_run.md).

The FLOPs of one UNet row (forward; forward+backward with the config's LoRA and gradient checkpointing), one VAE
decode, one text encoding and one reward-model pass are counted with ``torch.utils.flop_counter`` — the counter
``bench_rl_epoch`` uses — on the ``meta`` device at the real shapes (SD-1.5 / RoentGen: UNet 320/640/1280/1280,
4x64x64 latents, 77 + ACE tokens of width 768; VAE decoder to 3x512x512), so no weights, GPU or time are needed.
They are multiplied by the work the config asks for (rollouts with CFG, the RLCF anchor's rollouts, PPO
recomputes of the trained timesteps, decodes, the end-of-run evaluation) and divided by an assumed sustained
rate: MFU x peak bf16 dense TFLOP/s.

    python -m benchmarks.paper_run_cost [--config configs/mimic_roentgen.yaml] [--gpus 8] [--anchor-hit-rate 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = 989.0          # H100 SXM and H200 (same compute die), dense bf16, NVIDIA's datasheets
MFU_RANGE = (0.15, 0.25, 0.40)    # low / central / high sustained fraction of that peak (docs/paper_run.md)


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The generator and reward shapes whose FLOPs are counted (default: SD-1.5, the RoentGen layout)."""

    unet_widths: tuple = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    cross_dim: int = 768
    heads: int = 8
    latent: int = 64
    vae_widths: tuple = (128, 256, 512, 512)
    text_layers: int = 12
    text_heads: int = 12
    tokens: int = 77
    reward_resolution: int = 224   # a DenseNet-121 diagnostic (torchxrayvision) and a CLIP ViT-B/16 consistency model


SD15 = Shapes()


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def count_flops(shapes: Shapes = SD15, lora_rank: int | None = 16, ace_tokens: int = 2, checkpointing: bool = True) -> dict:
    """FLOPs (not TFLOP) per unit: ``unet_forward`` / ``unet_train`` (forward + backward, LoRA of ``lora_rank`` on the
    attention projections as cxrl applies it, or every weight trained when ``lora_rank`` is None; gradient
    checkpointing recompute included when ``checkpointing``) per latent row; ``vae_decode`` and ``rewards`` per image;
    ``text_encode`` per prompt."""
    # imported when counting, as in bench_rl_epoch: diffusers, transformers and cxrl are heavy and --help needs none
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    from cxrl.diffusion.lora import apply_lora

    s, levels = shapes, len(shapes.unet_widths)
    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=s.latent, in_channels=4, out_channels=4, block_out_channels=s.unet_widths,
                                    layers_per_block=s.layers_per_block, cross_attention_dim=s.cross_dim,
                                    attention_head_dim=s.heads,
                                    down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1))
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=s.vae_widths,
                            layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * len(s.vae_widths),
                            up_block_types=("UpDecoderBlock2D",) * len(s.vae_widths))
        text = CLIPTextModel(CLIPTextConfig(hidden_size=s.cross_dim, intermediate_size=4 * s.cross_dim,
                                            num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads,
                                            max_position_embeddings=s.tokens))
        vision = CLIPVisionModel(CLIPVisionConfig(image_size=s.reward_resolution, patch_size=16))
        x = torch.zeros(2, 4, s.latent, s.latent)   # one CFG pair
        t = torch.zeros(2, dtype=torch.long)
        context = torch.zeros(2, s.tokens + ace_tokens, s.cross_dim)
        with torch.no_grad():
            unet_forward = _count(lambda: unet(x, t, encoder_hidden_states=context)) / 2
            vae_decode = _count(lambda: vae.decode(torch.zeros(1, 4, s.latent, s.latent)))
            text_encode = _count(lambda: text(torch.zeros(1, s.tokens, dtype=torch.long)))
            clip_image = _count(lambda: vision(torch.zeros(1, 3, s.reward_resolution, s.reward_resolution)))
        densenet = _densenet121_flops(s.reward_resolution)
        if lora_rank is not None:
            apply_lora(unet, rank=lora_rank, alpha=float(lora_rank))
        for name, p in unet.named_parameters():
            p.requires_grad_(lora_rank is None or "lora_" in name)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        unet_train = _count(lambda: unet(x, t, encoder_hidden_states=context).sample.sum().backward()) / 2
    return {"unet_forward": unet_forward, "unet_train": unet_train, "vae_decode": vae_decode,
            "text_encode": text_encode, "rewards": densenet + clip_image}


def _densenet121_flops(resolution: int) -> float:
    """torchvision's DenseNet-121 layout (torchxrayvision's, 1 input channel): only its shape matters here."""
    from torchvision.models import densenet121

    with torch.device("meta"):
        net = densenet121(num_classes=18)
        net.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        net.eval()
        with torch.no_grad():
            return _count(lambda: net(torch.zeros(1, 1, resolution, resolution)))


def run_work(cfg, anchor_hit_rate: float = 0.0) -> dict:
    """Units of work of the whole run (all epochs, all GPUs) and of its end-of-run evaluation, from the config."""
    s, t, e = cfg.sampling, cfg.train, cfg.eval
    cfg_rows = 2 if s.guidance_scale != 1.0 else 1               # CFG: the unconditional and the text row
    images = t.epochs * s.samples_per_epoch
    anchor_images = images * (1.0 - anchor_hit_rate) if cfg.rewards.feedback == "comparative" else 0.0
    trained_steps = max(1, min(s.num_steps, math.ceil(round(s.num_steps * t.timestep_fraction, 9))))
    prompts = t.epochs * s.samples_per_epoch / s.group_size
    eval_images = (2 * e.num_prompts * e.samples_per_prompt) if e.enabled else 0   # base and tuned
    return {
        "rollout_rows": images * s.num_steps * cfg_rows,
        "anchor_rows": anchor_images * s.num_steps * cfg_rows,
        "train_rows": images * trained_steps * cfg_rows * t.inner_epochs,
        "decodes": images + anchor_images,
        "reward_passes": images + anchor_images,
        "text_encodes": 2 * prompts,                             # policy (+ ACE) and anchor contexts
        "eval_rows": eval_images * s.num_steps * cfg_rows,
        "eval_decodes": eval_images,
        "trained_steps": trained_steps, "cfg_rows": cfg_rows, "images": images, "anchor_images": anchor_images,
    }


def estimate(cfg, flops: dict, gpus: int = 8, anchor_hit_rate: float = 0.0, peak_tflops: float = PEAK_BF16_TFLOPS,
             mfu_range=MFU_RANGE) -> dict:
    """TFLOP per part and GPU-hours per MFU: the training parts run data-parallel on ``gpus`` GPUs; the evaluation
    runs on rank 0 alone while the other GPUs of the job wait (counted: a job holds all of them)."""
    w = run_work(cfg, anchor_hit_rate)
    parts = {
        "policy rollouts (UNet forward)": w["rollout_rows"] * flops["unet_forward"],
        "RLCF anchor rollouts (UNet forward)": w["anchor_rows"] * flops["unet_forward"],
        "PPO recompute (UNet forward + backward)": w["train_rows"] * flops["unet_train"],
        "VAE decodes": w["decodes"] * flops["vae_decode"],
        "reward models": w["reward_passes"] * flops["rewards"],
        "text encoder": w["text_encodes"] * flops["text_encode"],
    }
    train_tflop = sum(parts.values()) / 1e12
    eval_tflop = (w["eval_rows"] * flops["unet_forward"] + w["eval_decodes"] * flops["vae_decode"]) / 1e12
    rows = []
    for mfu in mfu_range:
        rate = mfu * peak_tflops
        train_wall_h = train_tflop / rate / gpus / 3600
        eval_wall_h = eval_tflop / rate / 3600
        rows.append({"mfu": mfu, "tflops_per_gpu": rate, "train_wall_h": train_wall_h, "eval_wall_h": eval_wall_h,
                     "gpu_hours": gpus * (train_wall_h + eval_wall_h)})
    return {"work": w, "parts_tflop": {k: v / 1e12 for k, v in parts.items()}, "train_tflop": train_tflop,
            "eval_tflop": eval_tflop, "rows": rows, "gpus": gpus, "peak_tflops": peak_tflops}


def report(cfg, flops: dict, result: dict) -> str:
    w, s, t = result["work"], cfg.sampling, cfg.train
    lines = ["Counted FLOPs (torch.utils.flop_counter, meta device):"]
    lines += [f"  {name:12s} {value / 1e12:10.4f} TFLOP" for name, value in flops.items()]
    lines += [f"Work: {t.epochs} epochs x {s.samples_per_epoch} images = {w['images']} images; {s.num_steps} steps x "
              f"{w['cfg_rows']} CFG rows; {w['trained_steps']} trained steps; anchor images {w['anchor_images']:.0f}",
              "", "| part | units | TFLOP |", "|---|---|---|"]
    units = [w["rollout_rows"], w["anchor_rows"], w["train_rows"], w["decodes"], w["reward_passes"], w["text_encodes"]]
    for (name, tflop), count in zip(result["parts_tflop"].items(), units):
        lines.append(f"| {name} | {count:,.0f} | {tflop:,.0f} |")
    lines.append(f"| **training total** | | **{result['train_tflop']:,.0f}** |")
    lines.append(f"| end-of-run evaluation (rank 0) | {w['eval_rows']:,.0f} rows + {w['eval_decodes']:,} decodes | "
                 f"{result['eval_tflop']:,.0f} |")
    lines += ["", f"| MFU (of {result['peak_tflops']:.0f} TFLOP/s) | TFLOP/s per GPU | training wall ({result['gpus']} GPUs) "
              f"| evaluation wall | GPU-hours ({result['gpus']} held) |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['mfu'] * 100:g}% | {row['tflops_per_gpu']:.0f} | {row['train_wall_h']:.2f} h | "
                     f"{row['eval_wall_h'] * 60:.0f} min | {row['gpu_hours']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from cxrl.config import load_config  # imported when run, as count_flops' imports

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "mimic_roentgen.yaml"))
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--anchor-hit-rate", type=float, default=0.0, help="share of anchor images the cache saves")
    parser.add_argument("--mfu", type=float, action="append", default=[],
                        help="also a row at this MFU, e.g. one measured (repeatable; a fraction of the peak, 0-1)")
    args = parser.parse_args(argv)
    bad = [m for m in args.mfu if not 0 < m <= 1]
    if bad:
        parser.error(f"--mfu takes a fraction of the peak in (0, 1], got {bad}")
    cfg = load_config(args.config)
    rank = cfg.model.lora_rank if cfg.model.finetune == "lora" else None
    flops = count_flops(SD15, rank, cfg.model.ace_tokens, cfg.model.gradient_checkpointing)
    mfus = tuple(sorted(set(MFU_RANGE) | set(args.mfu)))
    print(report(cfg, flops, estimate(cfg, flops, args.gpus, args.anchor_hit_rate, mfu_range=mfus)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
