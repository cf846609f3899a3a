"""Text-to-image generators in the diffusers directory layout: load, encode, decode, save.

Layout (read by :func:`load_generator`, written by :func:`save_generator`)::

    <dir>/unet/            UNet2DConditionModel (config.json + diffusion_pytorch_model.safetensors)
    <dir>/text_encoder/    transformers CLIPTextModel
    <dir>/tokenizer/       transformers CLIPTokenizer (vocab.json + merges.txt or tokenizer.json)
    <dir>/scheduler/       any diffusers scheduler config; used as a DDIMScheduler built from it
    <dir>/vae/             optional AutoencoderKL -> latent model (Stable Diffusion / RoentGen layout)
    <dir>/model_index.json written on save (a StableDiffusionPipeline index for latent models)
    <dir>/lora/            optional, written by save_generator(merge_lora=False): a cxrl LoRA adapter
                           (see cxrl.diffusion.lora) applied on top of unet/ when loading
    <dir>/ace/             optional ACE tokens: ace.safetensors + config.json (see cxrl.diffusion.ace)

With a VAE the diffusion runs on latents scaled by ``vae.config.scaling_factor``; without one it runs
on pixels in [-1, 1] (the small demo models). Images outside the diffusion are ``[B, C, H, W]`` in
[0, 1]. Nothing is downloaded: every component is read with ``local_files_only=True`` and a missing
one is a ``FileNotFoundError`` naming the directory and file expected.

A saved latent generator with merged LoRA loads in diffusers with
``StableDiffusionPipeline.from_pretrained(dir, safety_checker=None, feature_extractor=None,
requires_safety_checker=False)``; the ACE tokens (a cxrl addition) are then ignored by diffusers.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from cxrl.diffusion.lora import has_lora, load_lora, merged_state_dict, save_lora

LORA_DIR = "lora"
REQUIRED_COMPONENTS = {
    "unet": ("config.json", "UNet2DConditionModel"),
    "text_encoder": ("config.json", "transformers CLIPTextModel"),
    "tokenizer": (None, "transformers CLIPTokenizer"),
    "scheduler": ("scheduler_config.json", "diffusers scheduler"),
}
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))


@dataclass
class Generator:
    """A loaded text-to-image diffusion model; the UNet is what RL trains (plus optional ACE)."""

    unet: nn.Module = field(repr=False)
    text_encoder: nn.Module = field(repr=False)
    tokenizer: object = field(repr=False)
    scheduler: object = field(repr=False)
    vae: nn.Module | None = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    source: Path | None = None
    _empty_embeds: tuple | None = field(default=None, repr=False)   # (text encoder state, embedding)

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale_factor(self) -> int:
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the diffused tensor (latents for a VAE model, pixels otherwise)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(height), int(width)

    @property
    def image_channels(self) -> int:
        return int(self.vae.config.out_channels if self.vae is not None else self.unet.config.out_channels)

    @property
    def resolution(self) -> tuple[int, int]:
        """``(H, W)`` of decoded images."""
        _, height, width = self.latent_shape
        return height * self.vae_scale_factor, width * self.vae_scale_factor

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def max_length(self) -> int:
        return int(self.tokenizer.model_max_length)

    def encode_prompts(self, prompts: list[str], *, with_grad: bool = False) -> torch.Tensor:
        """Text-encoder output ``[B, model_max_length, D]``: padded with the pad token, truncated.

        Deterministic and detached (the encoder is in eval mode), so callers may cache it while the encoder's
        weights stay as they are; ``with_grad`` keeps the graph (an RL update that trains the text encoder).
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts: expected a list of strings, got {type(prompts).__name__}")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompts[{i}]: expected str, got {type(prompt).__name__}")
        if not prompts:
            raise ValueError("prompts: empty list")
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_length,
                                truncation=True, return_tensors="pt")
        with torch.set_grad_enabled(with_grad):
            hidden = self.text_encoder(tokens.input_ids.to(self.device))[0]
        return hidden.to(self.dtype)

    def _text_encoder_state(self) -> tuple:
        # every in-place change of a parameter (an optimizer step, a restored checkpoint, an EMA swap) bumps its
        # version counter, and a copied encoder has other tensors: either makes a cached embedding stale
        return tuple((id(p), p._version) for p in self.text_encoder.parameters())

    def empty_embeds(self) -> torch.Tensor:
        """Embedding of the empty prompt ``[1, L, D]`` (the usual CFG negative), computed once."""
        state = self._text_encoder_state()
        if self._empty_embeds is None or self._empty_embeds[0] != state:
            self._empty_embeds = (state, self.encode_prompts([""]))
        return self._empty_embeds[1]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Diffused tensor ``[B, *latent_shape]`` -> images ``[B, C, H, W]`` in [0, 1]."""
        if latents.dim() != 4 or tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents: expected [B, {', '.join(map(str, self.latent_shape))}], got {list(latents.shape)}")
        if self.vae is None:
            pixels = latents
        else:
            scaled = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            shift = getattr(self.vae.config, "shift_factor", None)
            if shift:
                scaled = scaled + shift
            pixels = self.vae.decode(scaled).sample
        return (pixels.float() / 2 + 0.5).clamp(0, 1)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Generator":
        device = torch.device(device) if device is not None else self.device
        dtype = dtype or self.dtype
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        self.device, self.dtype, self._empty_embeds = device, dtype, None
        return self


def _check_layout(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: generator directory not found (expected the diffusers layout "
                                "unet/ text_encoder/ tokenizer/ scheduler/ [vae/])")
    for name, (config_file, what) in REQUIRED_COMPONENTS.items():
        sub = root / name
        if not sub.is_dir():
            raise FileNotFoundError(f"{sub}: missing component directory '{name}/' ({what}) of generator {root}")
        if config_file is not None and not (sub / config_file).is_file():
            raise FileNotFoundError(f"{sub / config_file}: missing config of component '{name}' ({what})")
    if not any(all((root / "tokenizer" / f).is_file() for f in files) for files in TOKENIZER_FILES):
        raise FileNotFoundError(f"{root / 'tokenizer'}: expected vocab.json + merges.txt or tokenizer.json "
                                "(build one with cxrl.diffusion.tokenizer.build_clip_tokenizer)")
    vae = root / "vae"
    if vae.exists() and not (vae / "config.json").is_file():
        raise FileNotFoundError(f"{vae / 'config.json'}: vae/ exists but has no config.json (AutoencoderKL)")


def load_generator(path: str | Path, device="cpu", dtype: torch.dtype = torch.float32) -> Generator:
    """Load a generator directory (see the module docstring) onto ``device`` in ``dtype``.

    All modules are frozen and in eval mode; make the UNet trainable with ``apply_lora`` or
    ``gen.unet.requires_grad_(True)``. A ``lora/`` adapter saved beside the weights is re-attached,
    frozen too (to train it further: ``requires_grad_(True)`` on the parameters named ``lora_``).
    """
    root = Path(path)
    _check_layout(root)
    device = torch.device(device)
    unet = UNet2DConditionModel.from_pretrained(str(root / "unet"), torch_dtype=dtype, local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), dtype=dtype, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    scheduler_config = DDIMScheduler.load_config(str(root / "scheduler"), local_files_only=True)
    scheduler = DDIMScheduler.from_config(scheduler_config)
    vae = None
    if (root / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(str(root / "vae"), torch_dtype=dtype, local_files_only=True)

    cross_dim = unet.config.cross_attention_dim
    if not isinstance(cross_dim, int):
        raise ValueError(f"{root / 'unet' / 'config.json'}: cross_attention_dim={cross_dim!r}; cxrl needs one int width")
    if text_encoder.config.hidden_size != cross_dim:
        raise ValueError(f"{root}: text_encoder hidden_size {text_encoder.config.hidden_size} != unet "
                         f"cross_attention_dim {cross_dim}")
    if tokenizer.model_max_length > text_encoder.config.max_position_embeddings:
        raise ValueError(f"{root}: tokenizer model_max_length {tokenizer.model_max_length} exceeds text_encoder "
                         f"max_position_embeddings {text_encoder.config.max_position_embeddings}")
    if vae is not None and vae.config.latent_channels != unet.config.in_channels:
        raise ValueError(f"{root}: vae latent_channels {vae.config.latent_channels} != unet in_channels "
                         f"{unet.config.in_channels}")

    for module in (unet, text_encoder, vae):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
            module.to(device)
    if (root / LORA_DIR).is_dir():
        load_lora(unet, root / LORA_DIR)
        unet.requires_grad_(False)
    return Generator(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                     vae=vae, device=device, dtype=dtype, source=root)


def _model_index(gen: Generator) -> dict:
    index = {
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    if gen.is_latent:
        index.update({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
                      "safety_checker": [None, None], "feature_extractor": [None, None],
                      "requires_safety_checker": False})
    else:
        # No diffusers pipeline runs a text-conditioned pixel-space UNet2DConditionModel; the index
        # still lists the components, and cxrl.diffusion.load_generator is the loader.
        index["_class_name"] = "CXRLPixelTextToImage"
    return index


def _save_unet(unet: nn.Module, out: Path, merge: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(str(out))
    if has_lora(unet) and merge:
        state = merged_state_dict(unet)
    else:
        # Plain weights; with an unmerged adapter, the base layers under their adapter-free names.
        state = {k.replace(".base_layer.", "."): v.detach() for k, v in unet.state_dict().items() if ".lora_" not in k}
    save_file({k: v.cpu().contiguous() for k, v in state.items()}, str(out / "diffusion_pytorch_model.safetensors"))


def save_generator(gen: Generator, path: str | Path, ace=None, merge_lora: bool = True,
                   overwrite: bool = False) -> Path:
    """Write ``gen`` (and ``ace`` if given) in the layout above; returns the directory.

    ``merge_lora=True`` folds LoRA into ``unet/`` (loadable by diffusers as is); ``False`` keeps the
    base weights in ``unet/`` and the adapter in ``lora/``. The live ``gen`` is not modified. The
    directory is written beside the target and renamed into place, so a crash never leaves half a
    checkpoint; an existing target is replaced only with ``overwrite=True``.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True to replace it)")
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        _save_unet(gen.unet, staging / "unet", merge_lora)
        if has_lora(gen.unet) and not merge_lora:
            save_lora(gen.unet, staging / LORA_DIR)
        gen.text_encoder.save_pretrained(str(staging / "text_encoder"))
        gen.tokenizer.save_pretrained(str(staging / "tokenizer"))
        gen.scheduler.save_pretrained(str(staging / "scheduler"))
        if gen.vae is not None:
            gen.vae.save_pretrained(str(staging / "vae"))
        if ace is not None:
            if ace.dim != gen.context_dim:
                raise ValueError(f"ace: dim {ace.dim} != the generator's cross-attention width {gen.context_dim}")
            ace.save(staging)
        (staging / "model_index.json").write_text(json.dumps(_model_index(gen), indent=2))
    except SafetensorError as err:   # how safetensors reports a full disk: an OSError like any other write
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(f"cannot write the generator to {target} ({err}); is the disk full?") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old)
    else:
        staging.rename(target)
    return target
