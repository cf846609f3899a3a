"""Build what a run needs from its :class:`~cxrl.config.Config`: generator + trainable policy, ACE,
the frozen anchor's sampler, the reward suite, and the prompt pool. Each builder is usable alone.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_asset(path: str) -> Path:
    """``asset:NAME`` -> the directory shipped at ``cxrl/assets/NAME``; anything else is a plain path."""
    if not path.startswith("asset:"):
        return Path(path).expanduser()
    name = path[len("asset:"):]
    target = Path(str(resources.files("cxrl").joinpath("assets", *name.split("/"))))
    if not target.exists():
        raise FileNotFoundError(
            f"shipped asset '{name}' is not installed at {target}. The demo weights are produced by "
            "`cxrl pretrain` (generator) and `cxrl train-reward` (rewards) and shipped with the package; "
            "until they exist, pass your own: model.path=/path/to/generator (diffusers layout) or model.path=tiny")
    return target


def build_generator(model_cfg, device: torch.device, workdir: str | Path | None = None):
    """Load the generator named by ``model.path`` ('tiny' builds the random tiny one in ``workdir``)."""
    from cxrl.diffusion.generator import load_generator

    if model_cfg.path == "tiny":
        from cxrl.diffusion.tiny import make_tiny_generator

        where = Path(workdir or tempfile.mkdtemp(prefix="cxrl-tiny-")) / f"tiny_generator_{model_cfg.tiny_seed}"
        path = make_tiny_generator(where, seed=model_cfg.tiny_seed)
    else:
        path = resolve_asset(model_cfg.path)
    gen = load_generator(path, device=device, dtype=DTYPES[model_cfg.dtype])
    if model_cfg.attention != "diffusers":
        from cxrl.diffusion.attention import set_attention_backend

        set_attention_backend(gen.unet, model_cfg.attention)
    return gen


@dataclass
class Policy:
    """The trained part of the generator: UNet parameters (LoRA or full) and the ACE tokens."""

    gen: object
    ace: torch.nn.Module | None
    unet_params: list
    ace_params: list
    anchor_unet: torch.nn.Module | None   # a frozen copy for full fine-tuning; None = LoRA disabled

    @property
    def params(self) -> list:
        return self.unet_params + self.ace_params

    def named_trainable(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by a stable name (what a checkpoint stores)."""
        out = {f"unet.{n}": p for n, p in self.gen.unet.named_parameters() if p.requires_grad}
        if self.ace is not None:
            out.update({f"ace.{n}": p for n, p in self.ace.named_parameters()})
        return out


def build_policy(gen, model_cfg, seed: int) -> Policy:
    """Make the UNet trainable (LoRA adapters or all weights, float32) and add ACE."""
    from cxrl.diffusion.ace import AdaptiveConditionEmbedding
    from cxrl.diffusion.lora import apply_lora, trainable_parameters

    anchor_unet = None
    if model_cfg.finetune == "lora":
        apply_lora(gen.unet, rank=model_cfg.lora_rank, alpha=model_cfg.lora_alpha)
    else:
        anchor_unet = copy.deepcopy(gen.unet).requires_grad_(False).eval()
        gen.unet.requires_grad_(True)
    if model_cfg.gradient_checkpointing:
        gen.unet.enable_gradient_checkpointing()
    unet_params = trainable_parameters(gen.unet)
    for p in unet_params:  # master weights in float32 whatever the frozen dtype
        p.data = p.data.float()
    ace = None
    if model_cfg.ace_tokens > 0:
        ace = AdaptiveConditionEmbedding.for_generator(gen, model_cfg.ace_tokens, seed=seed).float()
    ace_params = list(ace.parameters()) if ace is not None else []
    return Policy(gen=gen, ace=ace, unet_params=unet_params, ace_params=ace_params, anchor_unet=anchor_unet)


def build_optimizer(policy: Policy, train_cfg) -> torch.optim.AdamW:
    groups = [{"params": policy.unet_params, "lr": train_cfg.learning_rate}]
    if policy.ace_params:
        groups.append({"params": policy.ace_params, "lr": train_cfg.ace_learning_rate})
    return torch.optim.AdamW(groups, betas=(train_cfg.adam_beta1, train_cfg.adam_beta2), eps=train_cfg.adam_eps,
                             weight_decay=train_cfg.weight_decay)


def lr_schedule(warmup_steps: int):
    """Multiplier of the base learning rate at optimizer step ``step``: linear warm-up, then constant."""
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return factor


def build_reward_suite(rewards_cfg, device, anchor_sampler, anchor_hash: str, sampler_settings: dict,
                       latent_shape, seed: int, cache_path: Path):
    from cxrl.rewards import AnchorScoreCache, RewardSuite, SeedBank, reward_from_config

    models, weights = [], {}
    for entry in rewards_cfg.components:
        model, weight = reward_from_config(entry, device=device)
        models.append(model)
        weights[model.name] = weight
    reward_ids = {json.dumps(e, sort_keys=True): e.get("name") for e in rewards_cfg.components}
    cache = None
    if rewards_cfg.feedback == "comparative":
        cache = AnchorScoreCache(cache_path, anchor_hash=anchor_hash, sampler_settings=sampler_settings,
                                 reward_ids=reward_ids)
    bank = SeedBank(seeds_per_prompt=rewards_cfg.seed_bank_size, base_seed=seed)
    suite = RewardSuite(models, weights, feedback=rewards_cfg.feedback, anchor_sampler=anchor_sampler,
                        cache=cache, seed_bank=bank, latent_shape=latent_shape)
    return suite
