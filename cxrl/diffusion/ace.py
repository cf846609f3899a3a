"""ACE: adaptive condition embeddings (CXRL, MICCAI 2024).

``n`` learnable tokens ``c_s in R^{n x d}`` (``d`` = the UNet's cross-attention width) are concatenated
*after* the text-encoder output ``c_p``: the policy is conditioned on ``[c_p ; c_s]`` and the tokens are
optimised with the same policy gradient as the UNet/LoRA. The frozen anchor never sees them.

Initialisation: ``tokens ~ N(0, (relative_scale * text_std)^2)``, default ``relative_scale = 0.1``,
where ``text_std`` is the standard deviation of the text encoder's output embeddings (measure it with
:meth:`AdaptiveConditionEmbedding.for_generator`; CLIP's final-layer-norm outputs are of order 1, the
constructor's default). Small tokens start the policy close to the anchor, yet the tokens receive a
non-zero gradient from the first step (their keys and values enter every cross-attention layer).

Classifier-free guidance: both branches must have the same context length to run as one batch. The
unconditional branch gets the ACE slots **masked out** (zero tokens plus ``encoder_attention_mask = 0``
on those slots): its prediction is then exactly the anchor-style unconditional prediction of the
current UNet, so ACE only acts through the conditional branch — it is part of the *condition*, which is
what guidance amplifies, and the policy/anchor comparison differs only by what the policy learned. The
gradient to the tokens flows through the conditional branch, scaled by the guidance scale. Attention
processors used with ACE + CFG must honour ``encoder_attention_mask`` (diffusers' own processors do).

On disk (next to a saved generator): ``ace/ace.safetensors`` holding one tensor ``"tokens"``
``[n, d]`` and ``ace/config.json`` ``{"format": "cxrl-ace", "version": 1, "num_tokens": n, "dim": d,
"init_std": s}``. ``num_tokens = 0`` (or passing ``ace=None``) is the "w/o ACE" ablation.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ACE_DIR = "ace"
ACE_WEIGHTS = "ace.safetensors"
ACE_CONFIG = "config.json"
ACE_FORMAT = "cxrl-ace"


class AdaptiveConditionEmbedding(nn.Module):
    """``num_tokens`` learnable context tokens of width ``dim`` appended to the text embeddings."""

    def __init__(
        self,
        num_tokens: int = 2,
        dim: int = 768,
        *,
        text_std: float = 1.0,
        relative_scale: float = 0.1,
        seed: int | None = 0,
    ):
        super().__init__()
        if not isinstance(num_tokens, int) or num_tokens < 0:
            raise ValueError(f"num_tokens={num_tokens!r}: must be an int >= 0 (0 disables ACE)")
        if not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim={dim!r}: must be a positive int (the UNet's cross-attention width)")
        if not text_std > 0 or not relative_scale >= 0:
            raise ValueError(f"text_std={text_std}, relative_scale={relative_scale}: need text_std > 0, relative_scale >= 0")
        self.num_tokens = num_tokens
        self.dim = dim
        self.init_std = float(text_std * relative_scale)
        rng = torch.Generator().manual_seed(seed) if seed is not None else None
        tokens = torch.randn(num_tokens, dim, generator=rng) * self.init_std
        self.tokens = nn.Parameter(tokens)

    @classmethod
    def for_generator(cls, gen, num_tokens: int = 2, *, prompts: list[str] | None = None,
                      relative_scale: float = 0.1, seed: int | None = 0) -> "AdaptiveConditionEmbedding":
        """ACE sized for ``gen`` with the init scale measured from its text encoder, on its device."""
        probe = prompts or ["", "no acute cardiopulmonary process", "small left pleural effusion"]
        with torch.no_grad():
            text_std = float(gen.encode_prompts(list(probe)).float().std())
        ace = cls(num_tokens, gen.context_dim, text_std=text_std, relative_scale=relative_scale, seed=seed)
        return ace.to(device=gen.device, dtype=gen.dtype)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        """``context [B, L, dim] -> [B, L + num_tokens, dim]`` (the tokens after the text)."""
        if context.dim() != 3 or context.shape[-1] != self.dim:
            raise ValueError(f"context: expected [B, L, {self.dim}], got {list(context.shape)}")
        if self.num_tokens == 0:
            return context
        tokens = self.tokens.to(dtype=context.dtype).unsqueeze(0).expand(context.shape[0], -1, -1)
        return torch.cat([context, tokens], dim=1)

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, dim={self.dim}, init_std={self.init_std:.4g}"

    def save(self, directory: str | Path) -> Path:
        """Write ``directory/ace/ace.safetensors`` + ``directory/ace/config.json``; returns the ace dir."""
        out = Path(directory) / ACE_DIR
        out.mkdir(parents=True, exist_ok=True)
        save_file({"tokens": self.tokens.detach().float().cpu().contiguous()}, str(out / ACE_WEIGHTS))
        config = {"format": ACE_FORMAT, "version": 1, "num_tokens": self.num_tokens, "dim": self.dim,
                  "init_std": self.init_std}
        (out / ACE_CONFIG).write_text(json.dumps(config, indent=2))
        return out


def load_ace(directory: str | Path, device="cpu", dtype: torch.dtype = torch.float32,
             required: bool = False) -> AdaptiveConditionEmbedding | None:
    """Load ``directory/ace/`` written by :meth:`AdaptiveConditionEmbedding.save`.

    Returns ``None`` when the generator was saved without ACE, unless ``required``.
    """
    ace_dir = Path(directory) / ACE_DIR
    config_path, weights_path = ace_dir / ACE_CONFIG, ace_dir / ACE_WEIGHTS
    if not ace_dir.exists():
        if required:
            raise FileNotFoundError(f"{ace_dir}: no ACE directory (expected {ACE_CONFIG} and {ACE_WEIGHTS} there)")
        return None
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; an ACE directory needs {ACE_CONFIG} and {ACE_WEIGHTS}")
    config = json.loads(config_path.read_text())
    if config.get("format") != ACE_FORMAT:
        raise ValueError(f"{config_path}: 'format' is {config.get('format')!r}, expected {ACE_FORMAT!r}")
    tensors = load_file(str(weights_path))
    if set(tensors) != {"tokens"}:
        raise ValueError(f"{weights_path}: expected exactly one tensor 'tokens', found {sorted(tensors)}")
    tokens = tensors["tokens"]
    shape = [int(config.get("num_tokens", -1)), int(config.get("dim", -1))]
    if list(tokens.shape) != shape:
        raise ValueError(f"{weights_path}: 'tokens' has shape {list(tokens.shape)} but {config_path} says {shape}")
    ace = AdaptiveConditionEmbedding(shape[0], shape[1], seed=None)
    ace.init_std = float(config.get("init_std", 0.0))
    with torch.no_grad():
        ace.tokens.copy_(tokens)
    return ace.to(device=device, dtype=dtype)


def guided_context(
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    ace: AdaptiveConditionEmbedding | None,
    use_cfg: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The UNet context for one (possibly guided) forward, and its encoder attention mask.

    Without CFG: ``ace(prompt_embeds)`` ``[B, L+n, D]``. With CFG: ``[uncond ; cond]`` stacked on the
    batch dimension (``[2B, L+n, D]``), the unconditional rows padded with ``n`` masked zero tokens
    (see the module docstring). The mask is ``[2B, L+n]`` (1 = attend) or ``None`` when nothing is
    masked, so plain calls keep the unmasked fast attention path.
    """
    if prompt_embeds.dim() != 3:
        raise ValueError(f"prompt_embeds: expected [B, L, D], got {list(prompt_embeds.shape)}")
    batch, length, _ = prompt_embeds.shape
    cond = ace(prompt_embeds) if ace is not None else prompt_embeds
    if not use_cfg:
        return cond, None
    if negative_embeds is None:
        raise ValueError("negative_embeds: required when guidance_scale != 1 (encode [''] for the usual CFG)")
    if negative_embeds.dim() != 3 or negative_embeds.shape[0] not in (1, batch) or negative_embeds.shape[1:] != prompt_embeds.shape[1:]:
        raise ValueError(
            f"negative_embeds: expected [1 or {batch}, {length}, {prompt_embeds.shape[-1]}] like prompt_embeds, "
            f"got {list(negative_embeds.shape)}"
        )
    uncond = negative_embeds.to(cond.dtype).expand(batch, -1, -1)
    extra = cond.shape[1] - length
    if extra == 0:
        return torch.cat([uncond, cond], dim=0), None
    uncond = torch.cat([uncond, uncond.new_zeros(batch, extra, uncond.shape[-1])], dim=1)
    mask = torch.ones(2 * batch, length + extra, device=cond.device, dtype=cond.dtype)
    mask[:batch, length:] = 0
    return torch.cat([uncond, cond], dim=0), mask
