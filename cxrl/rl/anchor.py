"""The frozen anchor of RLCF and of the KL penalty: the base generator, sampled from the policy's own initial
noise. For LoRA fine-tuning it is the policy's UNet with the adapters disabled, so the anchor and the
policy share one lock: with ``rewards.overlap`` the anchor is sampled on the scoring thread while the
main thread samples the policy, and the two must never run on that UNet at once."""
from __future__ import annotations

import hashlib
import threading

import torch

from cxrl.config import SamplingConfig
from cxrl.diffusion.rollout import recompute_log_prob, sample_images
from cxrl.rl.policy import Policy
from cxrl.rl.precision import autocast
from cxrl.rl.seeding import torch_generator


def noise_seed(noise: torch.Tensor) -> int:
    """A 63-bit seed from an initial noise's bytes: the anchor's step noise for that sample."""
    digest = hashlib.sha256(noise.detach().float().cpu().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class FrozenAnchor:
    def __init__(self, policy: Policy, sampling: SamplingConfig, device: torch.device,
                 autocast_dtype: torch.dtype | None, unet_lock: threading.RLock):
        self.policy, self.sampling, self.device = policy, sampling, device
        self.autocast_dtype, self.unet_lock = autocast_dtype, unet_lock

    def images(self, prompts: list[str], initial_noise: torch.Tensor) -> torch.Tensor:
        """The anchor's images from the policy's initial noise, in chunks of ``sampling.batch_size``. Each sample's
        step noise comes from a generator seeded by its own initial noise, so an anchor image (and its cached
        score) depends on its prompt and noise only — not on the epoch, the rank, or which other samples
        shared its batch (up to the last bits of batched arithmetic)."""
        s = self.sampling
        images = []
        with self.unet_lock, self.policy.lora_disabled(), autocast(self.autocast_dtype, self.device.type):
            for begin in range(0, len(prompts), s.batch_size):
                noise = initial_noise[begin:begin + s.batch_size]
                generators = [torch_generator(noise_seed(row), self.device) for row in noise]
                images.append(sample_images(self.policy.anchor_generator(), prompts[begin:begin + s.batch_size],
                                            num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta,
                                            initial_noise=noise, generator=generators))
        return torch.cat(images)

    @torch.no_grad()
    def log_prob_details(self, x_t, x_prev, timesteps, embeds, negative_embeds=None):
        """The anchor's step mean (and log-prob) on stored transitions: the other side of the KL penalty.
        ``embeds``/``negative_embeds`` must be the anchor's text encoder's (default negative: its empty prompt)."""
        s = self.sampling
        with self.policy.lora_disabled():
            return recompute_log_prob(self.policy.anchor_generator(), x_t, x_prev, timesteps, embeds,
                                      negative_embeds=negative_embeds,
                                      guidance_scale=s.guidance_scale, eta=s.eta, num_steps=s.num_steps,
                                      return_details=True)
