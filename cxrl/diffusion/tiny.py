"""Tiny random-weight generators in the diffusers layout, for tests and as the demo's starting point.

Every component is a real diffusers/transformers model (UNet2DConditionModel, CLIPTextModel,
CLIPTokenizer trained locally, DDIMScheduler, optionally AutoencoderKL) with small widths, so the
whole stack — loading, LoRA, ACE, rollouts, saving, diffusers' own pipeline — runs in milliseconds on
a CPU. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from cxrl.diffusion.tokenizer import build_clip_tokenizer

# Handwritten report-like sentences: the default tokenizer corpus when no reports are given.
REPORT_LIKE_SENTENCES = (
    "No acute cardiopulmonary process.",
    "The heart size is normal. The lungs are clear.",
    "Heart size is mildly enlarged. No focal consolidation.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Moderate right pleural effusion. No pneumothorax.",
    "There is no pneumothorax or pleural effusion.",
    "Mild cardiomegaly with pulmonary vascular congestion.",
    "Findings are consistent with mild pulmonary edema.",
    "Right lower lobe opacity concerning for pneumonia.",
    "Left basilar opacity likely atelectasis, pneumonia not excluded.",
    "Endotracheal tube terminates 4 cm above the carina.",
    "Nasogastric tube courses below the diaphragm.",
    "Right internal jugular central venous catheter tip in the superior vena cava.",
    "Left chest wall pacemaker with leads in the right atrium and ventricle.",
    "Healed fracture of the left sixth rib.",
    "Acute displaced fracture of the right clavicle.",
    "Large right pneumothorax with mediastinal shift.",
    "Small apical pneumothorax on the left.",
    "Enlarged cardiomediastinal silhouette, possibly due to technique.",
    "Widened mediastinum, recommend CT for further evaluation.",
    "A 1.5 cm nodule in the right upper lobe.",
    "Spiculated mass in the left upper lobe, suspicious for malignancy.",
    "Bilateral interstitial opacities, likely edema.",
    "Patchy consolidation in the lingula.",
    "Pleural thickening at the right apex, unchanged.",
    "Calcified granuloma in the right mid lung.",
    "Hyperinflated lungs consistent with emphysema.",
    "Degenerative changes of the thoracic spine.",
    "Sternotomy wires are intact.",
    "Lungs are well expanded and clear. No effusion.",
    "Stable appearance of the chest compared to prior.",
    "Interval improvement of the left lower lobe consolidation.",
    "Portable AP view of the chest. Lines and tubes as above.",
    "PA and lateral views of the chest were obtained.",
    "Mild bibasilar atelectasis. Otherwise unremarkable.",
    "Elevated right hemidiaphragm.",
)


@dataclass(frozen=True)
class _Spec:
    kind: str
    resolution: int
    channels: int
    block_out_channels: tuple[int, ...]
    cross_attention_dim: int
    text_layers: int
    text_heads: int
    model_max_length: int
    layers_per_block: int
    attention_head_dim: int
    latent_channels: int

    @property
    def vae_factor(self) -> int:
        return 2 if self.kind == "latent" else 1

    @property
    def groups(self) -> int:
        return min(32, *self.block_out_channels)

    def validate(self) -> None:
        if self.kind not in ("pixel", "latent"):
            raise ValueError(f"kind={self.kind!r}: expected 'pixel' or 'latent'")
        levels = len(self.block_out_channels)
        if levels < 2:
            raise ValueError(f"block_out_channels={self.block_out_channels}: need at least two levels")
        factor = 2 ** (levels - 1) * self.vae_factor
        if self.resolution % factor:
            raise ValueError(f"resolution={self.resolution}: must be divisible by {factor} for {levels} UNet levels"
                             f"{' and the 2x VAE' if self.vae_factor > 1 else ''}")
        if any(c % self.groups for c in self.block_out_channels):
            raise ValueError(f"block_out_channels={self.block_out_channels}: each must be divisible by "
                             f"{self.groups} (group norm)")
        if self.cross_attention_dim % self.text_heads:
            raise ValueError(f"cross_attention_dim={self.cross_attention_dim} is not divisible by "
                             f"text_heads={self.text_heads}")


def make_tiny_generator(
    out_dir: str | Path,
    kind: str = "pixel",
    resolution: int = 32,
    channels: int = 1,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    tokenizer_texts=None,
    seed: int = 0,
    *,
    text_layers: int = 2,
    text_heads: int = 2,
    vocab_size: int = 1024,
    model_max_length: int = 77,
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
    latent_channels: int = 4,
) -> Path:
    """Build and save a random-init generator; returns ``out_dir``.

    ``kind="pixel"`` diffuses ``[channels, resolution, resolution]`` pixels directly; ``kind="latent"``
    adds an AutoencoderKL with a 2x downsampling (``latent_channels`` x resolution/2 latents, the
    Stable Diffusion layout in miniature). The UNet has ``len(block_out_channels)`` levels, the deepest
    with cross-attention; the text encoder is a ``text_layers``-layer CLIP of width
    ``cross_attention_dim`` over a BPE vocabulary (at most ``vocab_size``) trained on
    ``tokenizer_texts`` (default: a few dozen report-like sentences). The same seed gives the same
    weights.
    """
    spec = _Spec(kind, resolution, channels, tuple(block_out_channels), cross_attention_dim, text_layers,
                 text_heads, model_max_length, layers_per_block, attention_head_dim, latent_channels)
    spec.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = list(tokenizer_texts) if tokenizer_texts is not None else list(REPORT_LIKE_SENTENCES)
    tokenizer = build_clip_tokenizer(texts, vocab_size, out / "tokenizer", model_max_length=model_max_length)
    # A private RNG stream: the caller's global RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _save_text_encoder(spec, tokenizer, out / "text_encoder")
        _save_unet(spec, out / "unet")
        if kind == "latent":
            _save_vae(spec, out / "vae")
    _save_scheduler(spec, out / "scheduler")
    return out


def _save_text_encoder(spec: _Spec, tokenizer, where: Path) -> None:
    width = spec.cross_attention_dim
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=spec.text_layers, num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.model_max_length, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=width,
    )
    CLIPTextModel(config).save_pretrained(str(where))


def _save_unet(spec: _Spec, where: Path) -> None:
    levels = len(spec.block_out_channels)
    diffused = spec.latent_channels if spec.kind == "latent" else spec.channels
    unet = UNet2DConditionModel(
        sample_size=spec.resolution // spec.vae_factor, in_channels=diffused, out_channels=diffused,
        layers_per_block=spec.layers_per_block, block_out_channels=spec.block_out_channels,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        cross_attention_dim=spec.cross_attention_dim, attention_head_dim=spec.attention_head_dim,
        norm_num_groups=spec.groups,
    )
    unet.save_pretrained(str(where))


def _save_vae(spec: _Spec, where: Path) -> None:
    vae = AutoencoderKL(
        in_channels=spec.channels, out_channels=spec.channels, latent_channels=spec.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(spec.groups, spec.groups), layers_per_block=1, norm_num_groups=spec.groups,
        sample_size=spec.resolution, scaling_factor=0.18215,
    )
    vae.save_pretrained(str(where))


def _save_scheduler(spec: _Spec, where: Path) -> None:
    if spec.kind == "latent":
        # Stable Diffusion's schedule (what RoentGen ships), so the tiny latent model mirrors it.
        betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    else:
        # The DDPM linear schedule usual for pixel-space models.
        betas = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    # No sample clipping (the DDIM step stays a plain Gaussian policy); set_alpha_to_one=False and
    # steps_offset=1 keep the last step stochastic, so every step has a log-density.
    DDIMScheduler(**betas, clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(str(where))
