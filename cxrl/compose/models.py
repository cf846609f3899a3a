"""Generators and policies by name: ``model.path`` ('asset:NAME', a directory, or 'tiny') becomes a loaded
:class:`~cxrl.diffusion.generator.Generator`; the ``model`` and ``train`` sections make it a trainable
:class:`~cxrl.rl.policy.Policy` with its optimizer."""
from __future__ import annotations

import copy
import tempfile
from importlib import resources
from pathlib import Path

import torch

from cxrl.config import ModelConfig, TrainConfig
from cxrl.diffusion.ace import AdaptiveConditionEmbedding
from cxrl.diffusion.attention import set_attention_backend
from cxrl.diffusion.compiled import compile_unet
from cxrl.diffusion.generator import load_generator
from cxrl.diffusion.lora import apply_lora, trainable_parameters
from cxrl.diffusion.tiny import make_tiny_generator
from cxrl.rl.policy import Policy

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ASSET_PREFIX = "asset:"


def resolve_asset(path: str | Path) -> Path:
    """``asset:NAME`` -> the directory shipped at ``cxrl/assets/NAME``; anything else is a plain path."""
    path = str(path)
    if not path.startswith(ASSET_PREFIX):
        return Path(path).expanduser()
    name = path[len(ASSET_PREFIX):]
    target = Path(str(resources.files("cxrl").joinpath("assets", *name.split("/"))))
    if not target.exists():
        raise FileNotFoundError(
            f"shipped asset '{name}' is not installed at {target}. The demo weights are produced by "
            "`cxrl pretrain` (generator) and `cxrl train-reward` (rewards) and shipped with the package; "
            "until they exist, pass your own: model.path=/path/to/generator (diffusers layout) or model.path=tiny")
    return target


def build_generator(model: ModelConfig, device: torch.device, workdir: str | Path | None = None):
    """Load the generator named by ``model.path`` ('tiny' builds the random tiny one in ``workdir``) with the
    configured attention backend."""
    if model.path == "tiny":
        where = Path(workdir or tempfile.mkdtemp(prefix="cxrl-tiny-")) / f"tiny_generator_{model.tiny_seed}"
        path = make_tiny_generator(where, seed=model.tiny_seed)
    else:
        path = resolve_asset(model.path)
    gen = load_generator(path, device=device, dtype=DTYPES[model.dtype])
    if model.attention != "diffusers":
        set_attention_backend(gen.unet, model.attention)
    if model.memory_format == "channels_last":
        gen.unet.to(memory_format=torch.channels_last)   # 4-D weights only; a copy for the anchor keeps the layout
    return gen


def build_policy(gen, model: ModelConfig, seed: int) -> Policy:
    """Make the UNet trainable (LoRA adapters or all weights, float32) and add ACE."""
    anchor_unet = None
    if model.finetune == "lora":
        apply_lora(gen.unet, rank=model.lora_rank, alpha=model.lora_alpha)
    else:
        anchor_unet = copy.deepcopy(gen.unet).requires_grad_(False).eval()
        gen.unet.requires_grad_(True)
    if model.gradient_checkpointing:
        gen.unet.enable_gradient_checkpointing()
    # after the adapters and the anchor's copy exist: the compiled graphs contain the adapters, the copy compiles alone
    compile_unet(gen.unet, model.compile)
    if anchor_unet is not None:
        compile_unet(anchor_unet, model.compile)
    unet_params = trainable_parameters(gen.unet)
    for p in unet_params:  # master weights in float32 whatever the frozen dtype
        p.data = p.data.float()
    ace = None
    if model.ace_tokens > 0:
        ace = AdaptiveConditionEmbedding.for_generator(gen, model.ace_tokens, seed=seed).float()
    ace_params = list(ace.parameters()) if ace is not None else []
    text_params, anchor_text_encoder = [], None
    if model.train_text_encoder:
        anchor_text_encoder = copy.deepcopy(gen.text_encoder).requires_grad_(False).eval()
        gen.text_encoder.float().requires_grad_(True)   # stays in eval mode: no dropout in a policy's log-density
        text_params = list(gen.text_encoder.parameters())
    return Policy(gen=gen, ace=ace, unet_params=unet_params, ace_params=ace_params, anchor_unet=anchor_unet,
                  text_params=text_params, anchor_text_encoder=anchor_text_encoder)


def build_optimizer(policy: Policy, train: TrainConfig) -> torch.optim.AdamW:
    groups = [{"params": policy.unet_params, "lr": train.learning_rate}]
    if policy.ace_params:
        groups.append({"params": policy.ace_params, "lr": train.ace_learning_rate})
    if policy.text_params:   # no decay: it pulls toward zero, not toward the base (the KL does that)
        groups.append({"params": policy.text_params, "lr": train.text_encoder_learning_rate, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_eps,
                             weight_decay=train.weight_decay)
