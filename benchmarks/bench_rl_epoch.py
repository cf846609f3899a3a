"""One RL epoch end to end (rollout, RLCF anchor, reward scoring, PPO update): cxrl's trainer vs the eager way.

Providers, side by side on the same UNet + LoRA, prompts, initial noise and settings (docs/benchmarks.md):
  eager_ddpo   ddpo-pytorch's way: ``DDIMScheduler.step`` + log-prob as separate ops with ``timestep.cpu()``
               host syncs, lists + ``torch.stack``, latents kept twice, the anchor re-sampled every epoch,
               numpy per-prompt tracker, whole-epoch re-indexing, host-gathered schedules in training.
  cxrl         ``Trainer.run_epoch``: fused step, trajectory store, anchor-score cache (prompts and seeds
               recur, so after a warm-up epoch every anchor score is a hit), overlapped reward scoring.
  cxrl_sequential_scoring   the same with ``rewards.overlap=false``.
  bare_unet    the cxrl epoch's UNet forwards and forward+backwards on the same tensors, nothing else.
  trl          TRL's ``DDPOTrainer`` (the real peer, ``pip install '.[peers]'``): its own rows, case ``rl_epoch_trl``,
               on an SD-layout model at equal settings with no anchor on either side (``benchmarks/peer_trl.py``).
Each provider first runs one audited epoch counting the UNet rows it processes; unequal work is refused.
UNet FLOPs come from ``torch.utils.flop_counter``; MFU is against a matmul measured in the same run.
Sizes: ``cpu`` a tiny pixel UNet; ``gpu`` the SD-1.5 UNet shape with random weights and an SD VAE, batch
32, CFG 5, bf16 autocast, **20 steps, timestep_fraction 0.5** (reduced from 50/1.0 so that the GPU suite
fits in 8 minutes), a 1-layer random CLIP text encoder standing in for CLIP.

``python -m benchmarks.bench_rl_epoch [--size cpu|gpu]`` (or ``cxrl bench rl_epoch``).
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .eager_ddpo import EagerEpoch
from .harness import (CaseResult, case_main, device_for_size, progress, single_thread_on_cpu, synced_clock,
                      time_side_by_side)

CASE = "rl_epoch"


@dataclasses.dataclass(frozen=True)
class EpochSetting:
    name: str
    arch: str                  # "pixel": tiny pixel-space UNet; "sd15": SD-1.5-layout UNet + VAE decoder
    widths: tuple
    cross_dim: int
    latent: int                # latent (or pixel) side
    samples: int               # images per epoch
    sample_batch: int          # images per rollout forward (before CFG doubling)
    steps: int
    timestep_fraction: float
    train_batch: int
    grad_accum: int
    guidance: float
    group_size: int            # images per prompt; = seed_bank_size, so the (prompt, seed) pairs recur
    reps: int
    layers_per_block: int = 1
    vae_widths: tuple = ()     # sd15: AutoencoderKL widths (one 2x upsampling per extra level)
    image_channels: int = 1
    attention_backend: str | None = None   # sd15: cxrl's attention processor backend; None: diffusers' own

    @property
    def trained_steps(self) -> int:
        return math.ceil(self.steps * self.timestep_fraction)


SETTINGS = {
    "cpu": EpochSetting("cpu-pixel-1x32x32", "pixel", (32, 64), 32, 32, samples=8, sample_batch=4, steps=4,
                        timestep_fraction=0.5, train_batch=2, grad_accum=2, guidance=3.0, group_size=2, reps=3),
    "gpu": EpochSetting("gpu-sd15-4x64x64", "sd15", (320, 640, 1280, 1280), 768, 64, samples=32, sample_batch=32,
                        steps=20, timestep_fraction=0.5, train_batch=8, grad_accum=4, guidance=5.0, group_size=4,
                        reps=2, layers_per_block=2, vae_widths=(128, 256, 512, 512), image_channels=3,
                        attention_backend="auto"),
}
# What the GPU suite runs (8-minute budget): the SD-1.5 shape at a quarter of the work. On an H200 the full setting's
# first epoch took 33 s (TRL's audited epoch, 2026-12-04), so its nine epochs (warm-up, four audited, four timed) do
# not fit the suite; 16 images x 10 steps (5 trained) keeps every shape and batch of the UNet calls but the count.
GPU_SUITE = dataclasses.replace(SETTINGS["gpu"], name="gpu-sd15-4x64x64-suite", samples=16, sample_batch=16, steps=10,
                                grad_accum=2, reps=1)
# The GPU case's code path at a size a CPU runs in seconds (the smoke test uses it).
TINY_SD15 = dataclasses.replace(SETTINGS["gpu"], name="tiny-sd15", widths=(32, 32, 32, 32), cross_dim=32, latent=8,
                                samples=4, sample_batch=2, steps=2, train_batch=1, grad_accum=2, group_size=2,
                                reps=1, layers_per_block=1, vae_widths=(32, 32))


def mean_intensity(images, prompts, metadata):
    """The trainer's placeholder reward until the bench swaps in the project's reward suite."""
    return images.float().mean(dim=(1, 2, 3))


# -- models -----------------------------------------------------------------------------------------


def build_generator(s: EpochSetting, device, workdir: Path):
    """A real cxrl Generator: a small random CLIP text encoder + tokenizer, and the setting's UNet (+ VAE)."""
    from cxrl.diffusion.generator import load_generator
    from cxrl.diffusion.tiny import make_tiny_generator

    if s.arch == "pixel":
        path = make_tiny_generator(workdir / "gen", kind="pixel", resolution=s.latent, block_out_channels=s.widths,
                                   cross_attention_dim=s.cross_dim)
        return load_generator(path, device=device)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    text_dir = make_tiny_generator(workdir / "text", kind="pixel", resolution=8, cross_attention_dim=s.cross_dim,
                                   text_layers=1, text_heads=2)
    gen = load_generator(text_dir, device=device)
    levels, vae_levels = len(s.widths), len(s.vae_widths)
    torch.manual_seed(0)
    with torch.device(device):   # initialise on the device: 860M parameters are slow to init on a CPU
        unet = UNet2DConditionModel(sample_size=s.latent, in_channels=4, out_channels=4, block_out_channels=s.widths,
                                    layers_per_block=s.layers_per_block, cross_attention_dim=s.cross_dim,
                                    attention_head_dim=8,
                                    down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1))
        vae = AutoencoderKL(in_channels=s.image_channels, out_channels=s.image_channels, latent_channels=4,
                            block_out_channels=s.vae_widths, layers_per_block=s.layers_per_block,
                            down_block_types=("DownEncoderBlock2D",) * vae_levels,
                            up_block_types=("UpDecoderBlock2D",) * vae_levels,
                            sample_size=s.latent * 2 ** (vae_levels - 1))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    if s.attention_backend is not None:
        # imported here like the other cxrl modules of this file: the CPU size never needs diffusers' Attention
        from cxrl.diffusion.attention import set_attention_backend

        set_attention_backend(unet, s.attention_backend)
    for m in (unet, vae):
        m.requires_grad_(False).eval()
    return dataclasses.replace(gen, unet=unet, vae=vae, scheduler=scheduler, _empty_embeds=None)


def _prompt_entries(n: int) -> list[dict]:
    from .bench_rewards import _labels, _prompts

    return [{"prompt": p, "labels": m["labels"]} for p, m in zip(_prompts(n), _labels(n))]


def build_trainer(s: EpochSetting, device, workdir: Path):
    from cxrl.compose import build_trainer as compose_trainer
    from cxrl.config import from_dict
    from cxrl.rewards import AnchorScoreCache, RewardSuite
    from cxrl.rl.distributed import DistContext
    from cxrl.rl.prompts import PromptPool

    from .bench_rewards import _reward_models

    cfg = from_dict({
        "model": {"path": "tiny", "lora_rank": 4, "ace_tokens": 0},   # no ACE: the eager baseline has none
        "sampling": {"num_steps": s.steps, "guidance_scale": s.guidance, "eta": 1.0, "batch_size": s.sample_batch,
                     "samples_per_epoch": s.samples, "group_size": s.group_size},
        "rewards": {"components": [{"name": "intensity", "callable": f"{__name__}:mean_intensity"}],
                    "seed_bank_size": s.group_size, "overlap": True},
        "train": {"epochs": 10**6, "batch_size": s.train_batch, "gradient_accumulation": s.grad_accum,
                  "timestep_fraction": s.timestep_fraction, "advantage": "per_prompt", "advantage_window": 16,
                  "advantage_min_count": 16, "clip_range": 1e-4, "deterministic": False},
        "log": {"output_dir": str(workdir / "run"), "progress": False, "tensorboard": "off", "sample_every": 0},
    })
    gen = build_generator(s, device, workdir)
    num_prompts = s.samples // s.group_size
    trainer = compose_trainer(cfg, PromptPool(_prompt_entries(num_prompts)), dist=DistContext(device=torch.device(device)),
                              output_dir=workdir / "run", generator=gen)
    # The project's three reward models (shipped weights when present, else the same nets at random init).
    models = _reward_models(device)
    cache = AnchorScoreCache(None, "bench-anchor", {"steps": s.steps, "guidance": s.guidance})
    trainer.suite = RewardSuite(models, feedback="comparative", anchor_sampler=trainer.suite.anchor_sampler, cache=cache,
                                seed_bank=trainer.suite.seed_bank, latent_shape=gen.latent_shape)
    return trainer, models


# -- the bare UNet work of the cxrl epoch ---------------------------------------------------------------


class BareUNet:
    """The forwards and forward+backwards of one cxrl epoch on its own (pre-built) inputs, nothing else."""

    def __init__(self, trainer, s: EpochSetting, autocast):
        self.unet, self.autocast, self.params = trainer.gen.unet, autocast, trainer.policy.params
        entries, seeds, local = trainer.draw_prompts(0)
        with torch.no_grad():
            batch = trainer.collect_rollouts(0, entries[local], seeds[local], 0)
        store, embeds = batch.store, batch.embeds
        neg = trainer.gen.empty_embeds()
        context = torch.cat([neg.expand(len(entries), -1, -1), embeds[store.prompt_ids.to(embeds.device)]])
        self.sampling = []
        for b in range(0, s.samples, s.sample_batch):
            rows = torch.arange(b, min(s.samples, b + s.sample_batch), device=context.device)
            ctx = torch.cat([context[rows], context[rows + len(entries)]])
            for j in range(s.steps):
                x = store.latents[b:b + len(rows), j].to(trainer.device)
                t = store.timesteps[b:b + len(rows), j].to(trainer.device)
                self.sampling.append((torch.cat([x, x]), torch.cat([t, t]), ctx))
        self.training = []
        for mb in store.minibatches(store.plan(s.train_batch, timestep_fraction=s.timestep_fraction, seed=0)):
            cond = embeds[mb.prompt_ids.to(embeds.device)]
            ctx = torch.cat([neg.expand_as(cond), cond])
            x, t = mb.x_t.to(trainer.device), mb.timesteps.to(trainer.device)
            self.training.append((torch.cat([x, x]), torch.cat([t, t]), ctx))

    def __call__(self):
        with torch.no_grad(), self.autocast():
            for x, t, ctx in self.sampling:
                self.unet(x, t, encoder_hidden_states=ctx)
        self.unet.train()
        for x, t, ctx in self.training:
            with self.autocast():
                out = self.unet(x, t, encoder_hidden_states=ctx).sample
            out.float().mean().backward()
        self.unet.eval()
        for p in self.params:
            p.grad = None

    def flops(self) -> float:
        """FLOPs of one call: one CFG pair's forward and forward+backward counted, scaled by the rows run."""
        from torch.utils.flop_counter import FlopCounterMode

        x, t, ctx = self.sampling[0]
        pair = [x[:1].repeat(2, 1, 1, 1), t[:1].repeat(2), ctx[:1].repeat(2, 1, 1)]
        with FlopCounterMode(display=False) as fwd, torch.no_grad(), self.autocast():
            self.unet(*pair[:2], encoder_hidden_states=pair[2])
        with FlopCounterMode(display=False) as both:
            with self.autocast():
                out = self.unet(*pair[:2], encoder_hidden_states=pair[2]).sample
            out.float().mean().backward()
        for p in self.params:
            p.grad = None
        rows_fwd = sum(x.shape[0] for x, _, _ in self.sampling) / 2
        rows_train = sum(x.shape[0] for x, _, _ in self.training) / 2
        return rows_fwd * fwd.get_total_flops() + rows_train * both.get_total_flops()


# -- auditing and timing helpers -------------------------------------------------------------------


class UNetAudit:
    """Counts the rows the UNet processes with and without grad (any thread) while active."""

    def __init__(self, unet):
        self.unet, self.lock, self.rows = unet, threading.Lock(), {"no_grad": 0, "grad": 0}

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        with self.lock:
            self.rows["grad" if torch.is_grad_enabled() else "no_grad"] += int(x.shape[0])

    def __call__(self, fn):
        self.rows = {"no_grad": 0, "grad": 0}
        handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        try:
            fn()
        finally:
            handle.remove()
        return dict(self.rows)


def matmul_tflops(device) -> tuple[float, str]:
    """Achieved TFLOP/s of a big matmul: bf16 8192^3 on CUDA, fp32 1024^3 on the CPU."""
    cuda = torch.device(device).type == "cuda"
    n, dtype, reps = (8192, torch.bfloat16, 20) if cuda else (1024, torch.float32, 5)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    now = synced_clock(device)
    a @ b
    t0 = now()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (now() - t0) / 1e12, str(dtype).replace("torch.", "")


def run_setting(s: EpochSetting, device: str, workdir: Path | None = None) -> CaseResult:
    cuda = torch.device(device).type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else nullcontext
    workdir = Path(workdir or tempfile.mkdtemp(prefix="cxrl-bench-rl-"))
    trainer, models = build_trainer(s, device, workdir)
    eager, bare = EagerEpoch(trainer, models, s, autocast), BareUNet(trainer, s, autocast)
    epoch = iter(range(1, 10**9))
    cxrl_metrics: dict[str, list[dict]] = {"cxrl": [], "cxrl_sequential_scoring": []}

    def cxrl_epoch(name, overlap):
        def call():
            trainer.cfg.rewards.overlap = overlap
            cxrl_metrics[name].append(trainer.run_epoch(next(epoch)))
        return call

    providers = {"eager_ddpo": lambda: eager(next(epoch)), "cxrl": cxrl_epoch("cxrl", True),
                 "cxrl_sequential_scoring": cxrl_epoch("cxrl_sequential_scoring", False), "bare_unet": bare}
    t0 = time.perf_counter()
    providers["cxrl"]()   # fills the anchor-score cache: (prompt, seed) pairs recur from here on
    progress("cxrl warm-up epoch (anchor cache, compiles)", time.perf_counter() - t0)
    audit = UNetAudit(trainer.gen.unet)
    rows = {}
    for name, fn in providers.items():
        t0 = time.perf_counter()
        rows[name] = audit(fn)
        progress(f"{name} audited epoch", time.perf_counter() - t0)
    anchor_rows = 2 * s.samples * s.steps   # the eager epoch re-samples the anchor (CFG: 2 rows per image)
    expected = {"cxrl": rows["bare_unet"], "cxrl_sequential_scoring": rows["bare_unet"],
                "eager_ddpo": {"no_grad": rows["bare_unet"]["no_grad"] + anchor_rows, "grad": rows["bare_unet"]["grad"]}}
    for name, want in expected.items():
        if rows[name] != want:
            raise RuntimeError(f"rl_epoch: provider {name} ran UNet rows {rows[name]}, expected {want}: not the same work")
    for lst in (*cxrl_metrics.values(), *eager.stage_seconds.values()):
        lst.clear()   # stage figures from the timed epochs only
    anchor_before = trainer.suite.anchor_images_generated
    timings = time_side_by_side(providers, reps=s.reps, warmup=0, device=device)
    result = _result(s, device, timings, eager, cxrl_metrics, bare, rows)
    result.extra["cxrl_anchor_images_sampled_in_timed_epochs"] = float(trainer.suite.anchor_images_generated - anchor_before)
    trainer.close()
    return result


def _result(s, device, timings, eager, cxrl_metrics, bare, rows) -> CaseResult:
    med = lambda xs: float(np.median(xs))
    n = s.samples
    extra: dict = {"images_per_epoch": float(n), "steps": float(s.steps), "trained_steps": float(s.trained_steps),
                   "unet_rows_fwd": float(rows["bare_unet"]["no_grad"]),
                   "unet_rows_fwd_bwd": float(rows["bare_unet"]["grad"])}
    for stage, key in (("sample", "sample"), ("score", "score"), ("train", "train")):
        extra[f"eager_ddpo_{stage}_img_per_s"] = n / med(eager.stage_seconds[key])
    for name, ms in cxrl_metrics.items():
        for stage, key in (("sample", "sample_seconds"), ("score", "score_seconds"), ("train", "update_seconds")):
            extra[f"{name}_{stage}_img_per_s"] = n / med([m[f"throughput/{key}"] for m in ms])
        extra[f"{name}_score_wait_s"] = med([m["throughput/score_wait_seconds"] for m in ms])
    bare_s, cxrl_s = timings["bare_unet"].median, timings["cxrl"].median
    cm = cxrl_metrics["cxrl"]
    extra["overhead_epoch_vs_bare_unet"] = cxrl_s / bare_s
    extra["overhead_sample_plus_train_vs_bare_unet"] = med([m["throughput/sample_seconds"] + m["throughput/update_seconds"]
                                                            for m in cm]) / bare_s
    extra["overlap_saves_s"] = timings["cxrl_sequential_scoring"].median - cxrl_s
    flops = bare.flops()
    peak, dtype = matmul_tflops(device)
    extra.update({"unet_tflop_per_epoch": flops / 1e12, "matmul_tflops_" + dtype: peak,
                  "mfu_bare_unet": flops / bare_s / 1e12 / peak, "mfu_cxrl_epoch": flops / cxrl_s / 1e12 / peak})
    for name, t in timings.items():
        extra[f"{name}_epoch_img_per_s"] = n / t.median
    precision = "bf16-autocast" if device.startswith("cuda") else "fp32"
    mode = f"{s.steps}steps-tf{s.timestep_fraction}-cfg{s.guidance}-{precision}"
    return CaseResult(CASE, s.name, mode, timings, baseline="eager_ddpo", extra=extra)


def run(size: str = "cpu") -> list[CaseResult]:
    """``cpu``: the tiny pixel setting on the CPU, one intra-op thread; ``gpu``: the SD-1.5 shape on CUDA."""
    # peer_trl builds on this module's settings and audit, so importing it at the top would be a cycle
    from .peer_trl import run_peers

    device = device_for_size(size)
    with single_thread_on_cpu(device), tempfile.TemporaryDirectory(prefix="cxrl-bench-rl-") as work:
        results = [run_setting(SETTINGS[size], device, Path(work))]
        return results + run_peers(size, device, Path(work) / "trl")   # [] (and why, on stderr) without trl


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
