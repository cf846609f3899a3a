"""LoRA on the UNet's attention projections (peft, through diffusers' ``add_adapter``).

The text encoder always stays frozen. Either LoRA adapters are trained (``apply_lora``) or the full
UNet (``unet.requires_grad_(True)``); :func:`trainable_parameters` returns whichever is trainable.

On disk (``save_lora`` / ``load_lora``): ``<dir>/adapter_model.safetensors`` (the peft state dict,
adapter name stripped) and ``<dir>/adapter_config.json`` ``{"format": "cxrl-lora", "rank", "alpha",
"target_modules"}``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_WEIGHTS = "adapter_model.safetensors"
LORA_CONFIG = "adapter_config.json"
LORA_FORMAT = "cxrl-lora"


def has_lora(unet: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in unet.modules())


def apply_lora(unet: nn.Module, rank: int = 4, alpha: float | None = None,
               target_modules: tuple[str, ...] | list[str] = LORA_TARGETS) -> nn.Module:
    """Freeze ``unet`` and add one LoRA adapter (``B`` zero-initialised, so outputs are unchanged).

    ``alpha`` defaults to ``rank`` (LoRA scale 1).
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank={rank!r}: LoRA rank must be a positive int")
    alpha = float(rank if alpha is None else alpha)
    if alpha <= 0:
        raise ValueError(f"alpha={alpha}: LoRA alpha must be > 0")
    if has_lora(unet):
        raise ValueError("unet: already has LoRA layers; merge_lora(unet) first or reuse the existing adapter")
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                        target_modules=list(target_modules))
    unet.add_adapter(config)
    unet.cxrl_lora_config = {"rank": rank, "alpha": alpha, "target_modules": list(target_modules)}
    return unet


def trainable_parameters(unet: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimiser should see: LoRA weights if present, else whatever requires grad."""
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors only (peft strips the adapter name: keys like ``...to_q.lora_A.weight``), detached."""
    if not has_lora(unet):
        raise ValueError("unet: has no LoRA layers (call apply_lora first)")
    return {k: v.detach() for k, v in get_peft_model_state_dict(unet).items()}


def load_lora_state_dict(unet: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy LoRA tensors into ``unet``'s existing adapter; every key must match exactly."""
    expected = lora_state_dict(unet)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"LoRA state dict does not match the unet's adapter: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    for key, value in state_dict.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"LoRA tensor {key}: shape {list(value.shape)}, the adapter has {list(expected[key].shape)}")
    set_peft_model_state_dict(unet, state_dict)


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fold the LoRA deltas into the base weights and remove the adapter layers (in place)."""
    if not has_lora(unet):
        raise ValueError("unet: has no LoRA layers to merge")
    unet.fuse_lora()
    unet.unload_lora()
    if hasattr(unet, "cxrl_lora_config"):
        del unet.cxrl_lora_config
    return unet


def merged_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's state dict with LoRA folded in, under the plain (adapter-free) key names.

    Computed without touching ``unet`` (training goes on after a checkpoint) and without copying the
    whole model: only the adapted layers get a new merged weight tensor.
    """
    merged: dict[str, torch.Tensor] = {}
    lora_prefixes = []
    for name, module in unet.named_modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        lora_prefixes.append(name + ".")
        base = module.get_base_layer()
        weight = base.weight.detach()
        if not module.merged:
            for adapter in module.active_adapters:
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        merged[f"{name}.weight"] = weight
        if getattr(base, "bias", None) is not None:
            merged[f"{name}.bias"] = base.bias.detach()
    for key, value in unet.state_dict().items():
        if not any(key.startswith(p) for p in lora_prefixes):
            merged[key] = value.detach()
    return merged


def save_lora(unet: nn.Module, directory: str | Path) -> Path:
    config = getattr(unet, "cxrl_lora_config", None)
    if config is None:
        raise ValueError("unet: its LoRA adapter was not added by cxrl.diffusion.apply_lora, so its rank/alpha are unknown")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.float().cpu().contiguous() for k, v in lora_state_dict(unet).items()}
    save_file(tensors, str(out / LORA_WEIGHTS))
    (out / LORA_CONFIG).write_text(json.dumps({"format": LORA_FORMAT, **config}, indent=2))
    return out


def load_lora(unet: nn.Module, directory: str | Path) -> nn.Module:
    """Add the adapter described by ``directory/adapter_config.json`` to ``unet`` and load its weights."""
    directory = Path(directory)
    config_path, weights_path = directory / LORA_CONFIG, directory / LORA_WEIGHTS
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; a cxrl LoRA directory holds {LORA_CONFIG} and {LORA_WEIGHTS}")
    config = json.loads(config_path.read_text())
    if config.get("format") != LORA_FORMAT:
        raise ValueError(f"{config_path}: 'format' is {config.get('format')!r}, expected {LORA_FORMAT!r}")
    for field in ("rank", "alpha", "target_modules"):
        if field not in config:
            raise ValueError(f"{config_path}: missing field {field!r}")
    apply_lora(unet, int(config["rank"]), float(config["alpha"]), config["target_modules"])
    reference = next(unet.parameters())
    tensors = {k: v.to(device=reference.device, dtype=reference.dtype) for k, v in load_file(str(weights_path)).items()}
    load_lora_state_dict(unet, tensors)
    return unet
