"""Rollouts of the DDIM policy: batched trajectories with log-probs, and the PPO log-prob recompute.

Every step is :func:`cxrl.diffusion.ddim.ddim_step_with_logprob` (the fused DDIM update + log-density,
classifier-free guidance combined inside it). The sampling loop never synchronises with the host: the
schedule is checked once before the loop, timesteps live on the device, and the only per-step Python
work is launching the UNet, the fused step and the store write.

Classifier-free guidance: ``guidance_scale == 1`` is a single conditional forward; otherwise the
unconditional and conditional branches run as one ``[2B]`` UNet batch (``negative_embeds``, default
the empty prompt). With ACE the unconditional rows get the ACE slots masked out — see
:mod:`cxrl.diffusion.ace` for why.

Randomness: ``generator`` (a ``torch.Generator`` or an int seed) draws the initial noise (unless
``initial_noise`` is given) and then every step's noise, with the same calls diffusers' pipeline and
``DDIMScheduler.step`` make, so the same seed gives the same trajectory. A given ``initial_noise`` is
not drawn, so the step noise then starts at the generator's first draw: to replay a trajectory's noise
exactly (the RLCF anchor), pass the same ``initial_noise`` *and* a generator with the same seed to both
the policy and the anchor.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

from cxrl.diffusion.ace import guided_context
from cxrl.diffusion.ddim import DDIMTables, ddim_step_with_logprob, tables_for
from cxrl.kernels.ddim_logprob import fused_ddim_step

DEFAULT_GUIDANCE_SCALE = 5.0


@dataclass
class RolloutOutput:
    latents_final: torch.Tensor       # x_0 [B, *latent_shape]
    images: torch.Tensor | None       # decoded [B, C, H, W] in [0, 1] (None with decode=False)
    log_probs: torch.Tensor           # [B, T] float32, log pi(x_{t-1} | x_t) per step
    timesteps: torch.Tensor           # [B, T] long, the t of x_t at each step (descending)
    initial_noise: torch.Tensor       # x_T [B, *latent_shape], to hand to the anchor for RLCF


@dataclass
class LogProbDetails:
    log_prob: torch.Tensor            # [B] float32, differentiable
    noise_pred: torch.Tensor          # the guided model output u + s (c - u) (or c without CFG)
    mean: torch.Tensor                # mu_theta(x_t, t, c) of the DDIM step, differentiable
    std: torch.Tensor                 # sigma_t [B]: the KL to the anchor is ||mu - mu_anchor||^2 / (2 sigma^2)


def _as_generator(generator, device: torch.device):
    """None, a torch.Generator, a list of them (one per sample: each sample's noise is then its own, whatever
    else is in the batch), or an int seed."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        return list(generator)
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(generator)
    raise ValueError(f"generator: expected a torch.Generator, a list of them, an int seed or None, "
                     f"got {type(generator).__name__}")


def _check_embeds(gen, prompt_embeds: torch.Tensor) -> None:
    if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.dim() != 3 or prompt_embeds.shape[-1] != gen.context_dim:
        shape = list(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds).__name__
        raise ValueError(f"prompt_embeds: expected [B, L, {gen.context_dim}] (gen.encode_prompts output), got {shape}")


def _check_scale(guidance_scale: float) -> bool:
    if not guidance_scale >= 1.0:
        raise ValueError(f"guidance_scale={guidance_scale}: must be >= 1 (1 = no classifier-free guidance)")
    return guidance_scale != 1.0


def _context(gen, prompt_embeds, negative_embeds, ace, use_cfg):
    if use_cfg and negative_embeds is None:
        negative_embeds = gen.empty_embeds()
    return guided_context(prompt_embeds.to(gen.dtype), None if negative_embeds is None else negative_embeds.to(gen.dtype),
                          ace, use_cfg)


# The scheduler is shared by every thread sampling from one generator (rollout and evaluation batches run side by
# side: cxrl.machine.map_batches). diffusers' set_timesteps sets num_inference_steps before it replaces
# timesteps, so without the lock a second thread could see the new count with the old (1000-step) timesteps.
_SCHEDULE_LOCK = threading.Lock()


def schedule(gen, num_steps: int) -> tuple[DDIMTables, torch.Tensor]:
    """The DDIM tables and the host (CPU, int64) timesteps of ``num_steps`` steps, setting the generator's
    scheduler to that many steps first if needed; safe to call from several threads at once."""
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps <= 0:
        raise ValueError(f"num_steps={num_steps!r}: must be a positive int")
    with _SCHEDULE_LOCK:
        if gen.scheduler.num_inference_steps != num_steps:
            gen.scheduler.set_timesteps(num_steps, device="cpu")
        return tables_for(gen.scheduler, gen.device), gen.scheduler.timesteps.to("cpu", torch.long)


def _unet(gen, x, t, context, mask, use_cfg):
    """The UNet's prediction(s): (uncond, cond) with CFG, (cond, None) without."""
    if use_cfg:
        out = gen.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=context,
                       encoder_attention_mask=mask).sample
        uncond, cond = out.chunk(2)
        return uncond, cond
    return gen.unet(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample, None


def _check_store(store, batch: int, start: int, num_steps: int, latent_shape) -> None:
    latents = store.latents
    expected = (num_steps + 1, *latent_shape)
    if tuple(latents.shape[1:]) != expected:
        raise ValueError(f"store: latents are [N, {', '.join(map(str, latents.shape[1:]))}], this rollout writes "
                         f"[N, {', '.join(map(str, expected))}] (num_steps + 1 latents per sample)")
    if not 0 <= start <= latents.shape[0] - batch:
        raise ValueError(f"start={start}: rows [{start}, {start + batch}) do not fit a store of {latents.shape[0]} samples")


def rollout(gen, prompt_embeds: torch.Tensor, store=None, start: int = 0, *, ace=None, negative_embeds=None,
            num_steps: int = 20, guidance_scale: float = DEFAULT_GUIDANCE_SCALE, eta: float = 1.0,
            initial_noise: torch.Tensor | None = None, generator=None, decode: bool = True) -> RolloutOutput:
    """Sample ``B = len(prompt_embeds)`` trajectories of ``num_steps`` DDIM steps (no grad).

    With a ``store`` (``cxrl.trajectory.TrajectoryStore`` of ``num_steps`` steps and the generator's
    latent shape) the trajectory goes to rows ``[start, start + B)``: ``write_initial`` with x_T, then
    one ``write_step`` per step for the whole batch. ``eta`` must be in (0, 1] (a log-prob needs a
    stochastic step); ``initial_noise`` [B, *latent_shape] replaces the drawn x_T.
    """
    _check_embeds(gen, prompt_embeds)
    use_cfg = _check_scale(guidance_scale)
    batch = prompt_embeds.shape[0]
    device, dtype = gen.device, gen.dtype
    shape = (batch, *gen.latent_shape)
    tables, host_timesteps = schedule(gen, num_steps)
    tables.check_stochastic(host_timesteps)  # once, on the host: the loop below never looks at values
    if store is not None:
        _check_store(store, batch, start, num_steps, gen.latent_shape)
    generator = _as_generator(generator, device)
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"generator: {len(generator)} generators for a batch of {batch} (one per sample)")

    if initial_noise is None:
        initial_noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    elif tuple(initial_noise.shape) != shape:
        raise ValueError(f"initial_noise: expected {list(shape)}, got {list(initial_noise.shape)}")
    initial_noise = initial_noise.to(device=device, dtype=dtype)

    with torch.no_grad():
        context, mask = _context(gen, prompt_embeds.to(device), negative_embeds, ace, use_cfg)
        timesteps = host_timesteps.to(device).unsqueeze(0).expand(batch, -1).contiguous()
        log_probs = torch.empty(batch, num_steps, dtype=torch.float32, device=device)
        x = initial_noise
        # The store may keep latents in another dtype than the UNet runs in (e.g. fp32 store, fp16 UNet).
        store_dtype = getattr(store, "dtype", dtype)
        if store is not None:
            store.write_initial(start, x.to(store_dtype))
        for step in range(num_steps):
            t = timesteps[:, step]
            uncond, cond = _unet(gen, x, t, context, mask, use_cfg)
            if use_cfg:
                x, log_prob = ddim_step_with_logprob(tables, uncond, t, x, eta, generator=generator,
                                                     model_output_text=cond, guidance_scale=guidance_scale)
            else:
                x, log_prob = ddim_step_with_logprob(tables, uncond, t, x, eta, generator=generator)
            x = x.to(dtype)
            log_probs[:, step] = log_prob
            if store is not None:
                store.write_step(step, start, x.to(store_dtype), log_prob, t)
        images = gen.decode(x) if decode else None
    return RolloutOutput(latents_final=x, images=images, log_probs=log_probs, timesteps=timesteps,
                         initial_noise=initial_noise)


def sample_images(gen, prompts, *, ace=None, negative_embeds=None, num_steps: int = 20,
                  guidance_scale: float = DEFAULT_GUIDANCE_SCALE, eta: float = 1.0,
                  initial_noise: torch.Tensor | None = None, generator=None,
                  batch_size: int | None = None) -> torch.Tensor:
    """Images ``[B, C, H, W]`` in [0, 1] for a list of prompts or their embeddings (evaluation, anchor).

    ``batch_size`` splits the work into chunks of that many samples (memory); chunks draw their noise
    one after the other from ``generator``, so chunked and unchunked runs differ unless
    ``initial_noise`` is given and ``eta``'s step noise does not matter to the caller.
    """
    embeds = gen.encode_prompts(list(prompts)) if not isinstance(prompts, torch.Tensor) else prompts
    total = embeds.shape[0]
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size <= 0):
        raise ValueError(f"batch_size={batch_size!r}: must be a positive int or None")
    size = batch_size or total
    generator = _as_generator(generator, gen.device)
    if negative_embeds is not None and negative_embeds.shape[0] not in (1, total):
        raise ValueError(f"negative_embeds: batch {negative_embeds.shape[0]} must be 1 or {total}")
    images = []
    for begin in range(0, total, size):
        end = min(begin + size, total)
        negative = negative_embeds
        if negative is not None and negative.shape[0] == total:
            negative = negative[begin:end]
        noise = initial_noise[begin:end] if initial_noise is not None else None
        chunk_generator = generator[begin:end] if isinstance(generator, list) else generator
        out = rollout(gen, embeds[begin:end], ace=ace, negative_embeds=negative, num_steps=num_steps,
                      guidance_scale=guidance_scale, eta=eta, initial_noise=noise, generator=chunk_generator)
        images.append(out.images)
    return torch.cat(images)


def recompute_log_prob(gen, x_t: torch.Tensor, x_prev: torch.Tensor, timesteps: torch.Tensor,
                       prompt_embeds: torch.Tensor, *, ace=None, negative_embeds=None,
                       guidance_scale: float = DEFAULT_GUIDANCE_SCALE, eta: float = 1.0,
                       num_steps: int | None = None, return_details: bool = False):
    """``log pi_theta(x_prev | x_t, t, c)`` [B] under the current weights (differentiable w.r.t. the
    UNet/LoRA parameters and ACE) for the PPO ratio.

    ``num_steps`` must be the rollout's (it fixes t_prev = t - 1000 // num_steps); None reuses the
    generator scheduler's current setting (the last rollout's). With ``return_details`` a
    :class:`LogProbDetails` also carries the guided noise prediction and the step's mean and std.
    """
    _check_embeds(gen, prompt_embeds)
    use_cfg = _check_scale(guidance_scale)
    if num_steps is None:
        num_steps = gen.scheduler.num_inference_steps
        if num_steps is None:
            raise ValueError("num_steps: not given and the scheduler has never been set (pass the rollout's num_steps)")
    tables = schedule(gen, num_steps)[0]
    batch = prompt_embeds.shape[0]
    for name, tensor in (("x_t", x_t), ("x_prev", x_prev)):
        if tuple(tensor.shape) != (batch, *gen.latent_shape):
            raise ValueError(f"{name}: expected {[batch, *gen.latent_shape]}, got {list(tensor.shape)}")
    if timesteps.shape != (batch,):
        raise ValueError(f"timesteps: expected [{batch}], got {list(timesteps.shape)}")
    device = gen.device
    x_t = x_t.to(device=device, dtype=gen.dtype)
    x_prev = x_prev.to(device=device, dtype=gen.dtype)
    timesteps = timesteps.to(device=device, dtype=torch.long)
    context, mask = _context(gen, prompt_embeds.to(device), negative_embeds, ace, use_cfg)
    uncond, cond = _unet(gen, x_t, timesteps, context, mask, use_cfg)
    extra = {"model_output_text": cond, "guidance_scale": guidance_scale} if use_cfg else {}
    _, log_prob = ddim_step_with_logprob(tables, uncond, timesteps, x_t, eta, prev_sample=x_prev, **extra)
    if not return_details:
        return log_prob
    alpha_t, alpha_prev, std = tables.coefficients(timesteps, batch, float(eta))
    # Drawing with zero noise returns the mean itself, through the same fused arithmetic.
    mean, _ = fused_ddim_step(uncond, x_t, alpha_t, alpha_prev, std, noise=torch.zeros_like(x_t),
                              prediction_type=tables.prediction_type, clip_sample_range=tables.clip_sample_range,
                              threshold=tables.threshold, **extra)
    noise_pred = uncond + guidance_scale * (cond - uncond) if use_cfg else uncond
    return LogProbDetails(log_prob=log_prob, noise_pred=noise_pred, mean=mean, std=std)
