"""Denoising pre-training of the demo base generator (the RL "anchor") on the phantom world.

A small pixel-space text-to-image model (``cxrl.diffusion.tiny`` layout: UNet2DConditionModel +
2-layer CLIP text encoder + a BPE tokenizer trained on the train-split reports) learns
epsilon-prediction on phantoms rendered from IU X-ray reports:

* loss: ``|| eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t, c) ||^2`` with ``t`` uniform over the
  scheduler's training timesteps (DDPM linear betas) — UNet and text encoder trained jointly;
* condition dropout: a fraction of prompts is replaced by the empty prompt, so classifier-free
  guidance has an unconditional model to push against;
* AdamW, linear warm-up then cosine (or constant) learning rate, gradient-norm clipping;
* an exponential moving average of all weights; the EMA is what is saved.

Deterministic given ``seed``: the weights are initialised from it (``make_tiny_generator``), and one
``torch.Generator`` seeded from it draws the batch order, timesteps, noise and dropout.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from tqdm import tqdm

from cxrl.config import PretrainConfig, validate_section
from cxrl.diffusion.generator import load_generator, save_generator
from cxrl.diffusion.tiny import make_tiny_generator
from cxrl.training.pretrain_data import PhantomTrainingSet

STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


class ExponentialMovingAverage:
    """EMA of a list of parameters; the decay ramps up as ``(1 + n) / (10 + n)`` early on so the
    average is not dominated by the random initialisation in a short run."""

    def __init__(self, params, decay: float):
        self.params = list(params)
        self.decay = float(decay)
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for shadow, param in zip(self.shadow, self.params):
            param.copy_(shadow)


def learning_rate_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over ``warmup_steps`` then constant or cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_initial_generator(cfg: PretrainConfig, tokenizer_texts, workdir: str | Path):
    """The random-init generator of ``cfg`` (BPE tokenizer trained on ``tokenizer_texts``), loaded on CPU,
    with the scheduler's ``clip_sample`` set from the config."""
    path = make_tiny_generator(
        Path(workdir) / "init", kind="pixel", resolution=cfg.resolution, channels=1,
        block_out_channels=tuple(cfg.block_out_channels), cross_attention_dim=cfg.cross_attention_dim,
        tokenizer_texts=tokenizer_texts, seed=cfg.seed, text_layers=cfg.text_layers, text_heads=cfg.text_heads,
        vocab_size=cfg.vocab_size, layers_per_block=cfg.layers_per_block, attention_head_dim=cfg.attention_head_dim)
    gen = load_generator(path, device="cpu", dtype=torch.float32)
    gen.scheduler = DDIMScheduler.from_config({**gen.scheduler.config, "clip_sample": cfg.clip_sample,
                                               "clip_sample_range": 1.0})
    return gen


def tokenize(gen, prompts) -> torch.Tensor:
    """``[P, L]`` token ids exactly as ``Generator.encode_prompts`` makes them (max-length padding)."""
    return gen.tokenizer(list(prompts), padding="max_length", max_length=gen.max_length, truncation=True,
                         return_tensors="pt").input_ids


def denoising_loss(gen, x0: torch.Tensor, input_ids: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
    """Epsilon-prediction MSE of ``gen`` (text encoder included, so it is trained too)."""
    alphas = gen.scheduler.alphas_cumprod.to(x0.device, torch.float32)[timesteps].view(-1, 1, 1, 1)
    noisy = alphas.sqrt() * x0 + (1.0 - alphas).sqrt() * noise
    context = gen.text_encoder(input_ids)[0]
    prediction = gen.unet(noisy, timesteps, context).sample
    return torch.nn.functional.mse_loss(prediction.float(), noise)


@dataclass
class FixedBatch:
    """One batch with frozen noise and timesteps: a loss that only the weights can change."""

    x0: torch.Tensor
    input_ids: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def fixed_batch(gen, data: PhantomTrainingSet, size: int, seed: int) -> FixedBatch:
    rng = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(data), generator=rng)[:size]
    x0 = data.pixels(index)
    timesteps = torch.randint(0, gen.scheduler.config.num_train_timesteps, (len(index),), generator=rng)
    noise = torch.randn(x0.shape, generator=rng)
    return FixedBatch(x0, tokenize(gen, data.prompts_of(data.prompt_index[index])), timesteps, noise)


@torch.no_grad()
def evaluate_loss(gen, batch: FixedBatch) -> float:
    return float(denoising_loss(gen, batch.x0, batch.input_ids, batch.timesteps, batch.noise))


@dataclass
class PretrainResult:
    gen: object                   # the generator carrying the EMA weights, frozen, eval mode
    config: PretrainConfig
    history: list                 # [{"step", "loss", "lr"}] every ``log_every`` steps (mean over the window)
    final_loss: float             # mean training loss of the last window
    wall_s: float


def pretrain(cfg: PretrainConfig, data: PhantomTrainingSet, tokenizer_texts, *, workdir: str | Path | None = None,
             progress: bool = False, log_every: int = 50, on_log=None) -> PretrainResult:
    """Train a base generator on ``data``; ``on_log(record)`` is called every ``log_every`` steps."""
    validate_section(cfg, "pretrain")
    if data.resolution != cfg.resolution:
        raise ValueError(f"data: images are {data.resolution} px but the config's resolution is {cfg.resolution}")
    if log_every < 1:
        raise ValueError(f"log_every: must be >= 1, got {log_every}")
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="cxrl-pretrain-") as tmp:
        gen = build_initial_generator(cfg, tokenizer_texts, workdir or tmp)
    modules = (gen.unet, gen.text_encoder)
    params = [p for m in modules for p in m.parameters()]
    for module in modules:
        module.requires_grad_(True)
        module.train()
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = ExponentialMovingAverage(params, cfg.ema_decay) if cfg.ema_decay > 0 else None

    prompt_ids = tokenize(gen, data.prompts)
    empty_ids = tokenize(gen, [""])[0]
    num_timesteps = int(gen.scheduler.config.num_train_timesteps)
    rng = torch.Generator().manual_seed(cfg.seed)
    order, cursor = torch.randperm(len(data), generator=rng), 0
    history, window = [], []
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, desc="pretrain", unit="step", mininterval=2.0)
    start = time.perf_counter()
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):  # a fresh permutation each pass over the set
            order, cursor = torch.randperm(len(data), generator=rng), 0
        index = order[cursor:cursor + cfg.batch_size]
        cursor += cfg.batch_size
        x0 = data.pixels(index)
        ids = prompt_ids[data.prompt_index[index]]
        dropped = torch.rand(len(index), generator=rng) < cfg.cond_dropout
        ids = torch.where(dropped[:, None], empty_ids[None], ids)
        timesteps = torch.randint(0, num_timesteps, (len(index),), generator=rng)
        noise = torch.randn(x0.shape, generator=rng)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, cfg)
        loss = denoising_loss(gen, x0, ids, timesteps, noise)
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretrain: non-finite loss {float(loss)} at step {step} (lower learning_rate?)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        if ema is not None:
            ema.update()

        window.append(float(loss.detach()))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            record = {"step": step + 1, "loss": sum(window) / len(window), "lr": optimizer.param_groups[0]["lr"],
                      "elapsed_s": round(time.perf_counter() - start, 2)}
            history.append(record)
            window = []
            if on_log is not None:
                on_log(record)
            if bar is not None:
                bar.set_postfix(loss=f"{record['loss']:.4f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    if ema is not None:
        ema.copy_to_params()
    for module in modules:
        module.requires_grad_(False)
        module.eval()
    gen._empty_embeds = None  # the text encoder changed
    return PretrainResult(gen=gen, config=cfg, history=history, final_loss=history[-1]["loss"],
                          wall_s=time.perf_counter() - start)


PROVENANCE_FILE = "pretrain.json"


def save_pretrained_base(result: PretrainResult, path: str | Path, *, overwrite: bool = False,
                         extra: dict | None = None) -> Path:
    """Save the base in the diffusers layout (``storage_dtype`` weights) plus ``pretrain.json``: the
    config, seed, loss history and timing that reproduce it."""
    stored = copy.deepcopy(result.gen)
    dtype = STORAGE_DTYPES[result.config.storage_dtype]
    for module in (stored.unet, stored.text_encoder):
        # plain nn.Module.to: diffusers' override warns about fp16 casts meant for inference
        torch.nn.Module.to(module, dtype=dtype)
    stored.dtype = dtype
    out = save_generator(stored, path, overwrite=overwrite)
    provenance = {"config": dataclasses.asdict(result.config), "final_loss": result.final_loss,
                  "train_wall_s": round(result.wall_s, 1), "history": result.history,
                  "torch": torch.__version__, **(extra or {})}
    (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return out
