"""The real peer of the RL-epoch case: TRL's ``DDPOTrainer`` (``trl==0.22.2``, ``pip install '.[peers]'``).

Both sides load the SAME Stable-Diffusion-layout directory the way their users would: cxrl through
``model.path`` (its ``Trainer`` builds the generator, LoRA, optimizer, reward suite), TRL through
``DefaultDDPOStableDiffusionPipeline(dir, use_lora=...)``. One timed call is one RL epoch of each:
``Trainer.run_epoch`` against ``DDPOTrainer.step`` (sample, reward, advantages, PPO update).

Equal settings come from one cxrl :class:`~cxrl.config.Config` mapped by :func:`ddpo_settings`: images
per epoch, sampling batch, steps, eta, CFG, trained timesteps, train batch, gradient accumulation, PPO clip,
advantage clip, per-prompt advantages, AdamW, LoRA r4/alpha 4 on to_q/to_k/to_v/to_out.0 or full
fine-tuning, precision. What TRL cannot express is refused with the reason: RLCF's frozen anchor (the
peer rows use ``rewards.feedback=direct``), ACE (``model.ace_tokens=0``), a trained text encoder, group
advantages, KL, EMA.
Both sides score with the same reward (mean image intensity). Before timing, one audited epoch of each
counts the rows run by the UNet (with and without grad) and by the VAE decoder and the trained
parameters; unequal work is refused. Everything else is each library's own default behaviour (cxrl:
``train.deterministic``, overlapped scoring, ``model.attention=auto``; TRL: its pipeline and accelerate).

Presets: ``defaults`` = cxrl's config defaults (20 steps, CFG 5, 32 images in batches of 4, timestep
fraction 1.0, train batch 2) and ``case`` = the rl_epoch case's setting (8 images, 4 steps, 2 trained on the
CPU; 32 images, 20 steps, 10 trained at the GPU's SD-1.5 shape).

``python -m benchmarks.peer_trl [--size cpu|gpu] [--preset defaults|case] [--threads N] [--reps N] [--set K=V]``
(``--threads 0``: torch's default thread count, as a new user's process has it).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .bench_rl_epoch import (SETTINGS, TINY_SD15, EpochSetting, UNetAudit, _prompt_entries, build_generator,
                             mean_intensity)
from .harness import CaseResult, progress, synced_clock, time_side_by_side

CASE = "rl_epoch_trl"
TRL_VERSION = "0.22.2"
REWARD_CALLABLE = f"{mean_intensity.__module__}:mean_intensity"   # the rl_epoch case's reward
TRL_LORA = {"rank": 4, "alpha": 4.0}   # DefaultDDPOStableDiffusionPipeline hard-codes r=4, lora_alpha=4

# The model of each size and the presets run on it. CPU: cxrl's tiny latent generator (the SD layout in
# miniature: a 2-level UNet with cross-attention at 8x8, a 2x AutoencoderKL, a 2-layer CLIP) for 3x32x32
# images; GPU: the SD-1.5 shape of the rl_epoch case (bf16 weights on both sides).
PEER_SETTINGS = {
    "cpu": dataclasses.replace(SETTINGS["cpu"], name="cpu-tiny-latent-4x16x16", arch="latent", widths=(32, 64),
                               latent=16, image_channels=3, reps=7),
    "gpu": SETTINGS["gpu"],
}
# The suite runs the case's setting; ``--preset defaults`` (cxrl's config defaults: 32 images x 20 steps, every
# step trained) takes minutes per provider on a CPU and is run on its own (docs/benchmarks.md).
PEER_PRESETS = {"cpu": ("case",), "gpu": ("case",)}
# The smoke test's sizes: the CPU path (tiny latent generator) and the GPU path (SD-1.5 layout) at tiny widths.
TINY_PEERS = {"cpu-path": dataclasses.replace(PEER_SETTINGS["cpu"], name="tiny-latent", latent=8, samples=4,
                                              sample_batch=2, steps=2, train_batch=1, reps=1),
              "gpu-path": dataclasses.replace(TINY_SD15, name="tiny-sd15-layout")}


def trl_unavailable_reason() -> str | None:
    """Why the TRL provider cannot run here; None when ``trl==0.22.2``'s DDPO modules import."""
    try:
        import trl
    except ImportError as exc:
        return f"trl is not installed ({exc}); install the peer with: pip install '.[peers]'"
    if trl.__version__ != TRL_VERSION:
        return f"trl {trl.__version__} is installed; the peer provider is pinned to trl=={TRL_VERSION}"
    try:   # the DDPO modules only: trl's package-level extras (datasets, pyarrow) are not needed
        import trl.models.modeling_sd_base  # noqa: F401
        import trl.trainer.ddpo_config  # noqa: F401
        import trl.trainer.ddpo_trainer  # noqa: F401
    except Exception as exc:   # any import-time failure of the optional peer is a reason, not a crash
        return f"trl {TRL_VERSION}'s DDPO modules do not import: {type(exc).__name__}: {exc}"
    return None


# -- equal settings ---------------------------------------------------------------------------------


def ddpo_settings(cfg, device_type: str) -> tuple[dict, bool]:
    """(``DDPOConfig`` keyword arguments, ``use_lora``) doing what the cxrl ``cfg`` does; a ValueError names
    each cxrl setting TRL cannot express. Needs no trl."""
    m, s, r, t = cfg.model, cfg.sampling, cfg.rewards, cfg.train
    problems = []
    if m.ace_tokens:
        problems.append(f"model.ace_tokens={m.ace_tokens}: TRL has no ACE (set model.ace_tokens=0)")
    if m.train_text_encoder:
        problems.append("model.train_text_encoder=true: TRL's DDPOTrainer keeps the text encoder frozen (set it to false)")
    if r.feedback != "direct":
        problems.append(f"rewards.feedback={r.feedback!r} samples the frozen RLCF anchor; TRL has none (set rewards.feedback=direct)")
    if t.advantage != "per_prompt":
        problems.append(f"train.advantage={t.advantage!r}: TRL normalises per prompt or over the batch only")
    for key, value in (("train.kl_beta", t.kl_beta), ("train.ema_decay", t.ema_decay), ("train.warmup_steps", t.warmup_steps)):
        if value:
            problems.append(f"{key}={value}: TRL's DDPOTrainer has no such setting (set it to 0)")
    if m.gradient_checkpointing:
        problems.append("model.gradient_checkpointing=true: TRL's DDPOTrainer does not checkpoint (set it to false)")
    if m.finetune == "lora" and (m.lora_rank, m.lora_alpha) != (TRL_LORA["rank"], TRL_LORA["alpha"]):
        problems.append(f"model.lora_rank={m.lora_rank}, lora_alpha={m.lora_alpha}: TRL's pipeline hard-codes rank 4, alpha 4")
    trained_cxrl, trained_trl = math.ceil(s.num_steps * t.timestep_fraction), int(s.num_steps * t.timestep_fraction)
    if trained_cxrl != trained_trl:
        problems.append(f"train.timestep_fraction={t.timestep_fraction} of {s.num_steps} steps trains {trained_cxrl} steps in "
                        f"cxrl (ceil) but {trained_trl} in TRL (int): pick a fraction with a whole number of steps")
    if s.samples_per_epoch % s.batch_size:
        problems.append(f"sampling.samples_per_epoch={s.samples_per_epoch} is not a multiple of sampling.batch_size="
                        f"{s.batch_size}: TRL samples whole batches")
    if s.batch_size % t.batch_size:
        problems.append(f"sampling.batch_size={s.batch_size} is not a multiple of train.batch_size={t.batch_size} (TRL requires it)")
    if s.samples_per_epoch % (t.batch_size * t.gradient_accumulation):
        problems.append(f"sampling.samples_per_epoch={s.samples_per_epoch} is not a multiple of train.batch_size x "
                        f"gradient_accumulation = {t.batch_size * t.gradient_accumulation} (TRL requires it)")
    autocast_bf16 = t.mixed_precision == "bf16" or (t.mixed_precision == "auto" and device_type == "cuda")
    if not autocast_bf16 and m.dtype == "float32":
        precision = "no"
    elif autocast_bf16 and m.dtype == "bfloat16" and m.finetune == "lora":
        precision = "bf16"   # TRL casts the frozen weights to bf16 and, with LoRA, runs without autocast
    else:
        precision = None
        problems.append(f"model.dtype={m.dtype} with train.mixed_precision={t.mixed_precision} on {device_type}: TRL's "
                        "mixed_precision casts every frozen weight (and, fine-tuning fully, the trained ones) to its dtype; "
                        "equal settings are float32 without autocast, or LoRA with bfloat16 weights and bf16")
    if problems:
        raise ValueError("TRL cannot run these cxrl settings: " + "; ".join(problems))
    kwargs = dict(
        seed=t.seed, mixed_precision=precision, sample_num_steps=s.num_steps, sample_eta=s.eta,
        sample_guidance_scale=s.guidance_scale, sample_batch_size=s.batch_size,
        sample_num_batches_per_epoch=s.samples_per_epoch // s.batch_size, train_batch_size=t.batch_size,
        train_gradient_accumulation_steps=t.gradient_accumulation, train_timestep_fraction=t.timestep_fraction,
        train_cfg=s.guidance_scale > 1.0, train_clip_range=t.clip_range, train_adv_clip_max=t.adv_clip,
        train_max_grad_norm=t.max_grad_norm if t.max_grad_norm > 0 else math.inf, train_learning_rate=t.learning_rate,
        train_adam_beta1=t.adam_beta1, train_adam_beta2=t.adam_beta2, train_adam_weight_decay=t.weight_decay,
        train_adam_epsilon=t.adam_eps, train_num_inner_epochs=t.inner_epochs, per_prompt_stat_tracking=True,
        per_prompt_stat_tracking_buffer_size=t.advantage_window, per_prompt_stat_tracking_min_count=t.advantage_min_count,
        save_freq=10**9)   # TRL checkpoints every epoch by default; neither side checkpoints inside the timed epoch
    return kwargs, m.finetune == "lora"


def peer_config(preset: str, s: EpochSetting, model_dir: Path, out_dir: Path, device: str, overrides=()):
    """The cxrl config of a preset: its defaults or the case's numbers, made expressible in TRL (no anchor,
    no ACE) and with the same reward; the run-time settings (determinism, overlap, attention) stay cxrl's
    unless ``overrides`` (``key=value`` as on cxrl's command line) change them."""
    from cxrl.config import apply_overrides, from_dict

    if preset not in ("defaults", "case"):
        raise ValueError(f"preset {preset!r}: expected 'defaults' or 'case'")
    cuda = torch.device(device).type == "cuda"
    tree = {"model": {"path": str(model_dir), "device": torch.device(device).type, "ace_tokens": 0,
                      "dtype": "bfloat16" if cuda else "float32"},   # TRL runs frozen weights in bf16 on the GPU
            "rewards": {"components": [{"name": "intensity", "callable": REWARD_CALLABLE}], "feedback": "direct"},
            "train": {"epochs": 10**6},
            "log": {"output_dir": str(out_dir), "progress": False, "tensorboard": "off", "sample_every": 0}}
    if preset == "case":
        tree["sampling"] = {"num_steps": s.steps, "guidance_scale": s.guidance, "batch_size": s.sample_batch,
                            "samples_per_epoch": s.samples, "group_size": s.group_size}
        tree["train"].update({"batch_size": s.train_batch, "gradient_accumulation": s.grad_accum,
                              "timestep_fraction": s.timestep_fraction, "advantage_window": 16, "advantage_min_count": 16})
    return apply_overrides(from_dict(tree), list(overrides))


# -- the two providers ----------------------------------------------------------------------------


@contextmanager
def deterministic_algorithms(on: bool):
    """Process-global torch flags that cxrl sets at ``Trainer`` init when ``train.deterministic`` (deterministic
    algorithms, deterministic cuDNN) and TRL leaves off: each provider runs with its own, as in its own process."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic = before[2]


class CpuClock:
    """Calls ``fn`` and keeps the process CPU seconds of each call (all threads): on a loaded shared CPU this
    varies far less than wall time, which waits for other jobs."""

    def __init__(self, fn):
        self.fn, self.seconds = fn, []

    def __call__(self):
        start = time.process_time()
        self.fn()
        self.seconds.append(time.process_time() - start)


class StageClock:
    """Wall seconds of named bound methods of one object (per call, appended), without changing them."""

    def __init__(self, obj, names: tuple[str, ...], device):
        self.seconds: dict[str, list[float]] = {n: [] for n in names}
        now = synced_clock(device)
        for name in names:
            method = getattr(obj, name)

            def timed(*args, _method=method, _name=name, **kwargs):
                t0 = now()
                out = _method(*args, **kwargs)
                self.seconds[_name].append(now() - t0)
                return out
            setattr(obj, name, timed)


class TRLEpoch:
    """One ``DDPOTrainer.step`` per call, on the model directory and prompts the cxrl side uses."""

    STAGES = ("_generate_samples", "compute_rewards", "_train_batched_samples")

    def __init__(self, cfg, model_dir: Path, entries: list[dict], group_size: int, device: str, workdir: Path):
        # trl is an optional extra: imported here so that the case and the mapping above run without it
        from accelerate import PartialState
        from trl.models.modeling_sd_base import DefaultDDPOStableDiffusionPipeline
        from trl.trainer.ddpo_config import DDPOConfig
        from trl.trainer.ddpo_trainer import DDPOTrainer

        kwargs, use_lora = ddpo_settings(cfg, torch.device(device).type)
        PartialState(cpu=torch.device(device).type == "cpu")   # TRL's pipeline logs through accelerate: state first
        pipeline = DefaultDDPOStableDiffusionPipeline(str(model_dir), use_lora=use_lora)
        config = DDPOConfig(**kwargs, num_epochs=10**6, logdir=str(workdir), project_kwargs={"project_dir": str(workdir)},
                            exp_name="bench")
        order = [e for e in entries for _ in range(group_size)]   # cxrl's draw: each prompt group_size times
        draws = iter(range(10**12))

        def prompt_fn():
            e = order[next(draws) % len(order)]
            return e["prompt"], {"labels": e["labels"]}

        def reward_fn(images, prompts, metadata):
            return mean_intensity(images, prompts, metadata), {}

        self.trainer = DDPOTrainer(config, reward_fn, prompt_fn, pipeline)
        pipeline.set_progress_bar_config(disable=True)   # cxrl's bars are off too (log.progress=false)
        self.unet, self.decoder = pipeline.unet, pipeline.vae.decoder
        self.params = list(self.trainer.trainable_layers) if isinstance(self.trainer.trainable_layers, list) \
            else [p for p in self.trainer.trainable_layers.parameters() if p.requires_grad]
        self.clock = StageClock(self.trainer, self.STAGES, device)
        self.epoch, self.global_step = 0, 0

    def __call__(self):
        with deterministic_algorithms(False):
            self.global_step = self.trainer.step(self.epoch, self.global_step)
        self.epoch += 1


def build_cxrl(cfg, entries: list[dict], device: str, out_dir: Path):
    from cxrl.compose import build_trainer   # as every case: see benchmarks/__init__.py
    from cxrl.rl.distributed import DistContext
    from cxrl.rl.prompts import PromptPool

    trainer = build_trainer(cfg, PromptPool(entries), dist=DistContext(device=torch.device(device)), output_dir=out_dir)
    metrics: list[dict] = []
    epochs = iter(range(1, 10**9))

    def call():
        with deterministic_algorithms(cfg.train.deterministic):
            metrics.append(trainer.run_epoch(next(epochs)))
    return trainer, call, metrics


# -- the case --------------------------------------------------------------------------------------


def save_model(s: EpochSetting, device: str, workdir: Path) -> Path:
    """The setting's SD-layout model (random weights) saved as a StableDiffusionPipeline directory."""
    from cxrl.diffusion.generator import load_generator, save_generator
    from cxrl.diffusion.tiny import make_tiny_generator

    if s.arch == "latent":
        gen = load_generator(make_tiny_generator(workdir / "tiny", kind="latent", channels=s.image_channels,
                                                 resolution=2 * s.latent, block_out_channels=s.widths,
                                                 cross_attention_dim=s.cross_dim))
    elif s.arch == "sd15":
        gen = build_generator(s, device, workdir / "build")
    else:
        raise ValueError(f"setting {s.name}: the TRL peer needs a latent model (arch 'latent' or 'sd15'), got {s.arch!r}")
    return save_generator(gen, workdir / "model")   # with the model_index.json diffusers' pipeline loads


def audit(unet, decoder, fn) -> dict:
    """UNet rows (with / without grad) and VAE-decoder rows of one call of ``fn``."""
    decoded = {}
    rows = UNetAudit(unet)(lambda: decoded.update(UNetAudit(decoder)(fn)))
    return {"unet_no_grad": rows["no_grad"], "unet_grad": rows["grad"], "vae_decode": decoded["no_grad"] + decoded["grad"]}


def run_preset(preset: str, s: EpochSetting, device: str, workdir: Path, model_dir: Path, overrides=()) -> CaseResult:
    cfg = peer_config(preset, s, model_dir, workdir / f"cxrl-{preset}", device, overrides)
    sampling = cfg.sampling
    entries = _prompt_entries(sampling.samples_per_epoch // sampling.group_size)
    trainer, cxrl_call, cxrl_metrics = build_cxrl(cfg, entries, device, workdir / f"cxrl-{preset}")
    trl = TRLEpoch(cfg, model_dir, entries, sampling.group_size, device, workdir / f"trl-{preset}")
    rows = {}
    for name, (unet, decoder, call) in {"trl": (trl.unet, trl.decoder, trl),
                                        "cxrl": (trainer.gen.unet, trainer.gen.vae.decoder, cxrl_call)}.items():
        t0 = time.perf_counter()
        rows[name] = audit(unet, decoder, call)
        progress(f"{name} audited epoch ({preset})", time.perf_counter() - t0)
    params = {"trl": sum(p.numel() for p in trl.params), "cxrl": sum(p.numel() for p in trainer.policy.params)}
    if rows["trl"] != rows["cxrl"] or params["trl"] != params["cxrl"]:
        raise RuntimeError(f"{CASE} [{preset}]: TRL ran {rows['trl']} rows training {params['trl']} parameters, cxrl "
                           f"{rows['cxrl']} rows training {params['cxrl']}: not the same work")
    for lst in (cxrl_metrics, *trl.clock.seconds.values()):
        lst.clear()   # stage figures from the timed epochs only
    cpu = {"trl": CpuClock(trl), "cxrl": CpuClock(cxrl_call)}
    timings = time_side_by_side(cpu, reps=s.reps, warmup=0, device=device)
    trainer.close()
    return _result(preset, s, cfg, timings, rows["cxrl"], params["cxrl"], trl, cxrl_metrics, cpu, overrides)


def _result(preset, s, cfg, timings, rows, params, trl, cxrl_metrics, cpu, overrides) -> CaseResult:
    med = statistics.median
    n, t = cfg.sampling.samples_per_epoch, cfg.train
    extra = {"images_per_epoch": float(n), "steps": float(cfg.sampling.num_steps),
             "trained_steps": float(math.ceil(cfg.sampling.num_steps * t.timestep_fraction)),
             "unet_rows_fwd": float(rows["unet_no_grad"]), "unet_rows_fwd_bwd": float(rows["unet_grad"]),
             "vae_decode_rows": float(rows["vae_decode"]), "trained_parameters": float(params),
             "torch_threads": float(torch.get_num_threads())}
    for stage, method in (("sample", "_generate_samples"), ("score", "compute_rewards"), ("train", "_train_batched_samples")):
        extra[f"trl_{stage}_s"] = med(trl.clock.seconds[method])
    for stage, key in (("sample", "sample_seconds"), ("score", "score_wait_seconds"), ("train", "update_seconds")):
        extra[f"cxrl_{stage}_s"] = med([m[f"throughput/{key}"] for m in cxrl_metrics])
    for name, timing in timings.items():
        extra[f"{name}_epoch_img_per_s"] = n / timing.median
        extra[f"{name}_epoch_cpu_s"] = med(cpu[name].seconds)
    extra["cpu_time_trl_over_cxrl"] = extra["trl_epoch_cpu_s"] / extra["cxrl_epoch_cpu_s"]
    precision = "bf16" if cfg.model.dtype == "bfloat16" else "fp32"
    mode = (f"{preset}-{n}img-{cfg.sampling.num_steps}steps-tf{t.timestep_fraction}-cfg{cfg.sampling.guidance_scale}-"
            f"{cfg.model.finetune}-{precision}" + "".join(f" cxrl:{o}" for o in overrides))
    return CaseResult(CASE, s.name, mode, timings, baseline="trl", extra=extra)


def run_peers(size: str, device: str, workdir: Path, presets=None, reps: int | None = None,
              overrides=()) -> list[CaseResult]:
    """The TRL peer rows of a size; none (and one line on stderr saying why) when trl is not importable."""
    reason = trl_unavailable_reason()
    if reason is not None:
        print(f"rl_epoch: TRL peer skipped: {reason}", file=sys.stderr, flush=True)
        return []
    s = PEER_SETTINGS[size] if reps is None else dataclasses.replace(PEER_SETTINGS[size], reps=reps)
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = save_model(s, device, workdir)
    return [run_preset(p, s, device, workdir, model_dir, overrides) for p in (presets or PEER_PRESETS[size])]


def main(argv=None) -> int:
    import argparse

    from .harness import append_csv, device_for_size

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--size", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", action="append", choices=["defaults", "case"], help="default: the size's presets")
    parser.add_argument("--threads", type=int, default=1, help="intra-op torch threads on the CPU (0 = torch's default)")
    parser.add_argument("--reps", type=int, default=None, help="timed epochs per provider (default: the size's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a cxrl setting for the cxrl side, e.g. train.deterministic=false (TRL gets the mapped ones)")
    parser.add_argument("--no-csv", action="store_true", help="print only; do not append to benchmarks/results")
    args = parser.parse_args(argv)
    device = device_for_size(args.size)
    if args.threads and device == "cpu":
        torch.set_num_threads(args.threads)
    reason = trl_unavailable_reason()
    if reason is not None:
        print(f"peer_trl: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="cxrl-bench-trl-") as work:
        for result in run_peers(args.size, device, Path(work), args.preset, args.reps, args.overrides):
            if not args.no_csv:
                print("  ->", append_csv(result))
            print(result.table(), flush=True)
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"peer_trl: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    raise SystemExit(code)
