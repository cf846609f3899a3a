"""The eager baseline of the RL-epoch benchmark: one epoch the way ddpo-pytorch does it.

``DDIMScheduler.step`` + a separately computed log-prob with host lookups of the schedule, python lists of
per-step tensors + ``torch.stack``, latents kept twice (x_t and x_{t-1}), the anchor re-sampled every epoch,
a numpy per-prompt tracker, whole-epoch re-indexing. Kept apart from ``bench_rl_epoch.py`` so the case file
reads as set-up → providers → result; numerically it matches cxrl's fused step (tests/test_benchmarks.py).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .harness import synced_clock

if TYPE_CHECKING:
    from .bench_rl_epoch import EpochSetting


# -- the eager (ddpo-pytorch style) epoch -------------------------------------------------------------


def eager_sampling_step(scheduler, guided, t, sample, eta, generator):
    """``DDIMScheduler.step`` with the noise drawn here, then the log-prob as separate ops (host lookups)."""
    from diffusers.utils.torch_utils import randn_tensor

    t_host = int(t.cpu())   # ddpo-pytorch's timestep.cpu(): a device sync every step on CUDA
    prev_t = t_host - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    std = (eta * scheduler._get_variance(t_host, prev_t) ** 0.5).to(sample.device)
    noise = randn_tensor(guided.shape, generator=generator, device=guided.device, dtype=guided.dtype)
    prev = scheduler.step(guided, t_host, sample, eta=eta, variance_noise=noise).prev_sample
    mean = prev - std * noise
    return prev, _gaussian_log_prob(prev, mean, std)


def eager_recompute_log_prob(scheduler, guided, timesteps, sample, prev_sample, eta):
    """ddpo-pytorch's ddim_step_with_logprob for per-sample timesteps: schedule gathered on the host."""
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = torch.clamp(timesteps - ratio, 0, scheduler.config.num_train_timesteps - 1)
    view = (-1,) + (1,) * (sample.dim() - 1)
    alpha_t = scheduler.alphas_cumprod.gather(0, timesteps.cpu()).view(view).to(sample.device)
    alpha_prev = scheduler.alphas_cumprod.gather(0, prev_t.cpu()).view(view).to(sample.device)
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance**0.5
    pred_x0 = (sample - (1 - alpha_t) ** 0.5 * guided) / alpha_t**0.5
    mean = alpha_prev**0.5 * pred_x0 + (1 - alpha_prev - std**2) ** 0.5 * guided
    return _gaussian_log_prob(prev_sample, mean, std)


def _gaussian_log_prob(x, mean, std):
    lp = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return lp.mean(dim=tuple(range(1, x.dim())))


class EagerEpoch:
    """ddpo-pytorch's epoch on the trainer's generator, LoRA weights and reward models."""

    def __init__(self, trainer, models, s: EpochSetting, autocast):
        from cxrl.rewards import RewardSuite

        from .bench_trajectory import NumpyPerPromptTracker

        self.tr, self.s, self.autocast = trainer, s, autocast
        self.gen, self.unet, self.device = trainer.gen, trainer.gen.unet, trainer.device
        self.params = trainer.policy.params
        self.optimizer = torch.optim.AdamW(self.params, lr=trainer.cfg.train.learning_rate, weight_decay=1e-4)
        self.tracker = NumpyPerPromptTracker(window=16, min_count=16)
        self.suite = RewardSuite(models, feedback="comparative", anchor_sampler=self.anchor_images)  # no cache
        self.stage_seconds: dict[str, list[float]] = {"sample": [], "score": [], "train": []}

    def _context(self, embeds):
        return torch.cat([self.gen.empty_embeds().expand_as(embeds), embeds])

    def sample(self, embeds, noise, generator):
        scheduler, B = self.gen.scheduler, noise.shape[0]
        scheduler.set_timesteps(self.s.steps, device=self.device)
        latents, all_latents, all_log_probs = noise, [noise], []
        context = self._context(embeds)
        for t in scheduler.timesteps:
            with torch.no_grad(), self.autocast():
                out = self.unet(torch.cat([latents] * 2), t, encoder_hidden_states=context).sample
            uncond, cond = out.chunk(2)
            guided = uncond + self.s.guidance * (cond - uncond)
            latents, log_prob = eager_sampling_step(scheduler, guided, t, latents, 1.0, generator)
            all_latents.append(latents)
            all_log_probs.append(log_prob)
        with torch.no_grad(), self.autocast():
            images = self.gen.decode(latents.float())
        return images, torch.stack(all_latents, dim=1), torch.stack(all_log_probs, dim=1), scheduler.timesteps.repeat(B, 1)

    def anchor_images(self, prompts, noise):
        embeds = self.gen.encode_prompts(list(prompts))
        g = torch.Generator(device=self.device).manual_seed(1)
        with self.tr.policy.lora_disabled():
            return torch.cat([self.sample(embeds[i:i + self.s.sample_batch], noise[i:i + self.s.sample_batch], g)[0]
                              for i in range(0, len(prompts), self.s.sample_batch)])

    def __call__(self, epoch: int):
        from cxrl.rewards import noise_for

        s, sync = self.s, synced_clock(self.device)
        entries, seeds, _ = self.tr.draw_prompts(epoch)
        prompts = [e["prompt"] for e in entries]
        noise = noise_for(seeds, self.gen.latent_shape, device=self.device)
        g = torch.Generator(device=self.device).manual_seed(epoch)
        t0 = sync()
        samples = []
        for i in range(0, s.samples, s.sample_batch):
            embeds = self.gen.encode_prompts(prompts[i:i + s.sample_batch])
            images, latents, log_probs, timesteps = self.sample(embeds, noise[i:i + s.sample_batch], g)
            samples.append({"prompt_embeds": embeds, "timesteps": timesteps, "latents": latents[:, :-1],
                            "next_latents": latents[:, 1:], "log_probs": log_probs, "images": images})
        t1 = sync()
        images = torch.cat([x["images"] for x in samples])
        meta = [{"labels": e["labels"]} for e in entries]
        rewards = self.suite.score(images, prompts, meta, initial_noise=noise).combined   # anchor re-sampled
        t2 = sync()
        samples = {k: torch.cat([x[k] for x in samples]) for k in samples[0] if k != "images"}
        adv = self.tracker.update(prompts, rewards.cpu().numpy())
        samples["advantages"] = torch.as_tensor(adv, device=self.device)
        self.train(samples, epoch)
        t3 = sync()
        for k, a, b in (("sample", t0, t1), ("score", t1, t2), ("train", t2, t3)):
            self.stage_seconds[k].append(b - a)

    def train(self, samples, epoch):
        s, n, T = self.s, self.s.samples, self.s.steps
        g = torch.Generator(device=self.device).manual_seed(epoch)
        perm = torch.randperm(n, generator=g, device=self.device)
        samples = {k: v[perm] for k, v in samples.items()}
        perms = torch.stack([torch.randperm(T, generator=g, device=self.device) for _ in range(n)])
        for key in ("timesteps", "latents", "next_latents", "log_probs"):
            samples[key] = samples[key][torch.arange(n, device=self.device)[:, None], perms]
        batched = {k: v.reshape(-1, s.train_batch, *v.shape[1:]) for k, v in samples.items()}
        batched = [dict(zip(batched, x)) for x in zip(*batched.values())]
        self.unet.train()
        info = {"approx_kl": [], "clipfrac": [], "loss": []}
        clip = self.tr.cfg.train.clip_range
        for i, sample in enumerate(batched):
            context = self._context(sample["prompt_embeds"])
            for j in range(s.trained_steps):
                x, t = sample["latents"][:, j], sample["timesteps"][:, j]
                with self.autocast():
                    out = self.unet(torch.cat([x] * 2), torch.cat([t] * 2), encoder_hidden_states=context).sample
                    uncond, cond = out.chunk(2)
                    guided = uncond + s.guidance * (cond - uncond)
                    log_prob = eager_recompute_log_prob(self.gen.scheduler, guided, t, x, sample["next_latents"][:, j], 1.0)
                adv = torch.clamp(sample["advantages"], -5.0, 5.0)
                ratio = torch.exp(log_prob - sample["log_probs"][:, j])
                loss = torch.mean(torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)))
                info["approx_kl"].append(0.5 * torch.mean((log_prob - sample["log_probs"][:, j]) ** 2))
                info["clipfrac"].append(torch.mean((torch.abs(ratio - 1.0) > clip).float()))
                info["loss"].append(loss)
                (loss / (s.trained_steps * s.grad_accum)).backward()
            if (i + 1) % s.grad_accum == 0 or i + 1 == len(batched):
                torch.nn.utils.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad()
        self.unet.eval()
        return {k: torch.mean(torch.stack(v)).item() for k, v in info.items()}   # ddpo's logging: host syncs
