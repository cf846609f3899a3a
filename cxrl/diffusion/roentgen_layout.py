"""A RoentGen-layout generator in miniature: Stable Diffusion v1.x's directory, classes and scheduler
with small widths and random weights, to rehearse the paper's path where RoentGen itself (gated
weights) is not at hand.

What matches RoentGen / SD v1.x: ``model_index.json`` exactly as ``StableDiffusionPipeline.save_pretrained``
writes it (it is written by that call), ``vae/`` an AutoencoderKL on **3-channel RGB** with 4 latent
channels, an 8x downsampling (four encoder levels) and scaling factor 0.18215, ``text_encoder/`` a
CLIPTextModel (quick-GELU, 77 positions), ``tokenizer/`` a CLIPTokenizer, ``unet/`` a
UNet2DConditionModel on 4 latent channels with cross-attention in every level but the deepest (SD's
block pattern), ``scheduler/`` SD's schedule (scaled-linear betas 0.00085 -> 0.012, steps_offset 1,
no sample clipping, set_alpha_to_one false, epsilon prediction) as a DDIMScheduler. What differs:
widths, depth and the tokenizer's vocabulary (a BPE trained locally: the OpenAI CLIP vocabulary
cannot be downloaded here).

The directory loads with ``cxrl.diffusion.load_generator`` (images come out ``[B, 3, H, W]``; the
reward models and metrics reduce RGB to gray by BT.601 luminance) and with
``diffusers.StableDiffusionPipeline.from_pretrained(dir, safety_checker=None)``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cxrl.diffusion.tiny import REPORT_LIKE_SENTENCES
from cxrl.diffusion.tokenizer import build_clip_tokenizer

SD_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
                "set_alpha_to_one": False, "prediction_type": "epsilon"}
SD_VAE_SCALING_FACTOR = 0.18215
PROVENANCE_FILE = "cxrl_roentgen_layout.json"  # marks a directory this module wrote (and may overwrite)
IMAGE_CHANNELS = 3   # RoentGen keeps SD's RGB autoencoder; its X-rays are gray images stored as RGB
LATENT_CHANNELS = 4


def _check(resolution, unet_channels, vae_channels, cross_attention_dim, text_heads) -> int:
    """Validate the sizes; returns the group-norm group count."""
    for name, channels in (("unet_block_out_channels", unet_channels), ("vae_block_out_channels", vae_channels)):
        if len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ValueError(f"{name}={channels}: need at least two positive ints")
    groups = min(32, *unet_channels, *vae_channels)
    if any(c % groups for c in (*unet_channels, *vae_channels)):
        raise ValueError(f"block widths {unet_channels} / {vae_channels}: each must be divisible by {groups} (group norm)")
    factor = 2 ** (len(vae_channels) - 1) * 2 ** (len(unet_channels) - 1)
    if not isinstance(resolution, int) or resolution < factor or resolution % factor:
        raise ValueError(f"resolution={resolution}: must be a multiple of {factor} (the VAE's "
                         f"{2 ** (len(vae_channels) - 1)}x times the UNet's {2 ** (len(unet_channels) - 1)}x downsampling)")
    if cross_attention_dim % text_heads:
        raise ValueError(f"cross_attention_dim={cross_attention_dim} is not divisible by text_heads={text_heads}")
    return groups


def make_roentgen_layout_generator(
    out_dir: str | Path,
    resolution: int = 64,
    *,
    unet_block_out_channels: tuple[int, ...] = (32, 64),
    vae_block_out_channels: tuple[int, ...] = (32, 32, 64, 64),
    cross_attention_dim: int = 32,
    text_layers: int = 2,
    text_heads: int = 2,
    vocab_size: int = 1024,
    model_max_length: int = 77,
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
    tokenizer_texts=None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a random-init RoentGen-layout generator for ``resolution`` x ``resolution`` RGB images.

    ``vae_block_out_channels`` sets the VAE depth (four levels = SD's 8x); latents are
    ``4 x resolution/8 x resolution/8`` with the default. The tokenizer is a BPE of at most
    ``vocab_size`` entries trained on ``tokenizer_texts`` (default: a few dozen report-like sentences).
    The same seed gives the same weights. An existing non-empty ``out_dir`` is an error unless
    ``overwrite``, and even then only a directory this function wrote (it holds ``PROVENANCE_FILE``).
    """
    unet_channels, vae_channels = tuple(unet_block_out_channels), tuple(vae_block_out_channels)
    groups = _check(resolution, unet_channels, vae_channels, cross_attention_dim, text_heads)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out}: exists and is not empty (pass overwrite=True to replace it)")
        if not (out / PROVENANCE_FILE).is_file():
            raise FileExistsError(f"{out}: not written by make_roentgen_layout_generator (no {PROVENANCE_FILE}); "
                                  "refusing to delete it")
        shutil.rmtree(out)
    texts = list(tokenizer_texts) if tokenizer_texts is not None else list(REPORT_LIKE_SENTENCES)
    with tempfile.TemporaryDirectory(prefix="cxrl-tokenizer-") as tmp:
        tokenizer = build_clip_tokenizer(texts, vocab_size, tmp, model_max_length=model_max_length)
    levels = len(unet_channels)
    with torch.random.fork_rng(devices=[]):  # a private RNG stream: the caller's global RNG is untouched
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=cross_attention_dim, intermediate_size=4 * cross_attention_dim,
            num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=model_max_length,
            hidden_act="quick_gelu", projection_dim=cross_attention_dim, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
        vae = AutoencoderKL(
            in_channels=IMAGE_CHANNELS, out_channels=IMAGE_CHANNELS, latent_channels=LATENT_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(vae_channels), block_out_channels=vae_channels,
            layers_per_block=1, norm_num_groups=groups, sample_size=resolution, scaling_factor=SD_VAE_SCALING_FACTOR)
        unet = UNet2DConditionModel(
            sample_size=resolution // 2 ** (len(vae_channels) - 1), in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS, layers_per_block=layers_per_block, block_out_channels=unet_channels,
            down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
            cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim, norm_num_groups=groups)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(str(out))
    provenance = {"what": "RoentGen-layout generator with RANDOM weights (cxrl.diffusion.roentgen_layout)",
                  "resolution": resolution, "seed": seed, "unet_block_out_channels": list(unet_channels),
                  "vae_block_out_channels": list(vae_channels), "cross_attention_dim": cross_attention_dim,
                  "text_layers": text_layers, "vocab_size": len(tokenizer), "tokenizer_texts": len(texts)}
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out
