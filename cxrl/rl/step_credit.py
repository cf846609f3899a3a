"""Which DDIM steps are worth training: how much of each reward's spread a step's noise decides, and how loud
that step's log-probability gradient is.

DDPO-style training puts a trajectory's whole advantage on every trained step. A step whose noise barely changes
the final image contributes a gradient that is pure noise, and at the end of a short DDIM schedule such a step is
also the loudest: its step std sigma_t is tiny, and the log-prob gradient scales as |d mu / d eps| / sigma_t. With
the demo's 10 steps, step 8 (t 101 -> 1) has sigma 0.015 and a gradient ~10x any other step's, yet branching the
trajectories there leaves the rewards unchanged: trained, it dominates the clipped update with noise and the
samples turn grainy (docs/method.md, "Which steps to train").

:func:`measure_step_credit` measures both on the current policy:

* **Reward variance per step** by branching: for each prompt a trunk trajectory is sampled; at every step ``j``,
  ``branches`` continuations share the trunk up to ``x_j`` and draw fresh noise from step ``j`` on. The
  within-prompt variance ``V(j)`` of a reward over those continuations is the variance decided by steps ``j..T-1``
  (``V(-1)``: fresh ``x_T`` as well). ``tail_share[j] = V(j) / V(-1)``; ``V(j) - V(j+1)`` is step j's own share.
* **Gradient norm per step**: the norm of ``d log pi(x_{j+1} | x_j) / d theta`` over the trained weights, averaged
  over a few stored transitions.

:func:`suggest_skip_last` turns the first into ``train.skip_last_steps``: the trailing steps that together decide
less than ``threshold`` of every reward's variance (a tail share, so it does not rest on differences of noisy
estimates).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cxrl.diffusion.ddim import ddim_step_with_logprob
from cxrl.diffusion.rollout import _context, _unet, recompute_log_prob, schedule
from cxrl.rl.prompts import reward_metadata


@dataclass
class StepCredit:
    timesteps: list[int]                      # t of x_t at each step
    sigma: list[float]                        # the step's std sigma_t
    variance: dict[str, list[float]]          # per reward: V(-1), V(0), ..., V(T-1)
    grad_norm: list[float]                    # mean per-sample log-prob gradient norm per step
    prompts: int = 0
    branches: int = 0
    notes: list[str] = field(default_factory=list)

    def tail_share(self, name: str) -> list[float]:
        """V(j) / V(-1) for j = 0..T-1: the share of the reward's within-prompt variance steps j.. decide."""
        v = self.variance[name]
        return [x / v[0] if v[0] > 0 else float("nan") for x in v[1:]]

    def step_share(self, name: str) -> list[float]:
        """(V(j) - V(j+1)) / V(-1): step j's own share (x_T first, then steps 0..T-1); noisy, may be < 0."""
        v = self.variance[name] + [0.0]
        return [(v[i] - v[i + 1]) / v[0] if v[0] > 0 else float("nan") for i in range(len(v) - 1)]


def suggest_skip_last(credit: StepCredit, threshold: float = 0.02) -> int:
    """Trailing steps whose noise together decides less than ``threshold`` of every reward's variance."""
    steps = len(credit.timesteps)
    skip = 0
    for j in range(steps - 1, 0, -1):   # at least one step stays trainable
        if all(credit.tail_share(name)[j] < threshold for name in credit.variance):
            skip = steps - j
        else:
            break
    return skip


def _step(gen, tables, x, t, context, mask, eta, guidance, generator):
    uncond, cond = _unet(gen, x, t, context, mask, True)
    x, _ = ddim_step_with_logprob(tables, uncond, t, x, eta, generator=generator,
                                  model_output_text=cond, guidance_scale=guidance)
    return x


@torch.no_grad()
def sample_trunks(gen, embeds: torch.Tensor, *, num_steps: int, guidance_scale: float, eta: float, ace=None,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """One trajectory per prompt embedding: ``[x_T, x_{after step 0}, ..., x_0]``."""
    n = embeds.shape[0]
    tables, timesteps = schedule(gen, num_steps)
    timesteps = timesteps.to(gen.device)
    ctx, mask = _context(gen, embeds, None, ace, True)
    trunk = [torch.randn((n, *gen.latent_shape), generator=generator, device=gen.device, dtype=gen.dtype)]
    for j in range(num_steps):
        trunk.append(_step(gen, tables, trunk[-1], timesteps[j].expand(n), ctx, mask, eta, guidance_scale, generator))
    return trunk


@torch.no_grad()
def branch_variances(gen, suite, entries: list[dict], *, num_steps: int, guidance_scale: float, eta: float,
                     ace=None, branches: int = 4, seed: int = 0) -> dict[str, list[float]]:
    """Within-prompt reward variance V(-1), V(0), ..., V(T-1) of ``branches`` continuations per prompt (module doc)."""
    if guidance_scale <= 1.0:
        raise ValueError("step credit measures a guided sampler (sampling.guidance_scale > 1)")
    if branches < 2:
        raise ValueError(f"branches must be >= 2 to measure a variance, got {branches}")
    n, device = len(entries), gen.device
    prompts = [e["prompt"] for e in entries]
    metadata = [reward_metadata(e) for e in entries]
    embeds = gen.encode_prompts(prompts)
    g = torch.Generator(device=device).manual_seed(seed)
    trunk = sample_trunks(gen, embeds, num_steps=num_steps, guidance_scale=guidance_scale, eta=eta, ace=ace, generator=g)
    tables, timesteps = schedule(gen, num_steps)
    timesteps = timesteps.to(device)
    ctx, mask = _context(gen, embeds.repeat_interleave(branches, 0), None, ace, True)
    variance: dict[str, list[float]] = {name: [] for name in suite.names}
    for level in range(-1, num_steps):
        if level < 0:
            x = torch.randn((n * branches, *gen.latent_shape), generator=g, device=device, dtype=gen.dtype)
        else:
            x = trunk[level].repeat_interleave(branches, 0)
        for j in range(max(level, 0), num_steps):
            x = _step(gen, tables, x, timesteps[j].expand(n * branches), ctx, mask, eta, guidance_scale, g)
        scores = suite.score_images(gen.decode(x), [p for p in prompts for _ in range(branches)],
                                    [m for m in metadata for _ in range(branches)]).view(n, branches, -1).double()
        within = scores.var(dim=1, unbiased=True).nanmean(dim=0)
        for k, name in enumerate(suite.names):
            variance[name].append(float(within[k]))
    return variance


def log_prob_grad_norms(gen, params: list[torch.nn.Parameter], embeds: torch.Tensor, trunk: list[torch.Tensor], *,
                        num_steps: int, guidance_scale: float, eta: float, ace=None) -> list[float]:
    """Per step, the mean over the trunk's samples of ``|| d log pi(x_{j+1} | x_j) / d params ||`` (one backward per
    sample and step: a batch would give the norm of the summed gradient instead)."""
    timesteps = schedule(gen, num_steps)[1].to(gen.device)
    n = embeds.shape[0]
    norms = []
    for j in range(num_steps):
        total = 0.0
        for i in range(n):
            for p in params:
                p.grad = None
            log_prob = recompute_log_prob(gen, trunk[j][i:i + 1], trunk[j + 1][i:i + 1], timesteps[j:j + 1],
                                          embeds[i:i + 1], ace=ace, guidance_scale=guidance_scale, eta=eta,
                                          num_steps=num_steps)
            log_prob.sum().backward()
            total += float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params if p.grad is not None)))
        norms.append(total / n)
    for p in params:
        p.grad = None
    return norms


def measure_step_credit(trainer, num_prompts: int = 32, branches: int = 4, gradient_prompts: int = 4,
                        seed: int = 0) -> StepCredit:
    """Both measurements on a built trainer's policy, prompts drawn from its pool with ``seed``."""
    s = trainer.cfg.sampling
    entries = trainer.pool.draw(num_prompts, 1, seed, 0)
    gen, ace = trainer.gen, trainer.policy.ace
    settings = dict(num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta, ace=ace)
    was_training = gen.unet.training
    gen.unet.eval()
    try:
        variance = branch_variances(gen, trainer.suite, entries, branches=branches, seed=seed, **settings)
        embeds = gen.encode_prompts([e["prompt"] for e in entries[:gradient_prompts]])
        trunk = sample_trunks(gen, embeds, generator=torch.Generator(device=gen.device).manual_seed(seed + 1), **settings)
        grad_norm = log_prob_grad_norms(gen, trainer.policy.params, embeds, trunk, **settings)
    finally:
        gen.unet.train(was_training)
    tables, timesteps = schedule(gen, s.num_steps)
    timesteps = timesteps.to(gen.device)
    _, _, std = tables.coefficients(timesteps, len(timesteps), float(s.eta))
    return StepCredit(timesteps=[int(t) for t in timesteps], sigma=[float(x) for x in std.flatten()],
                      variance=variance, grad_norm=grad_norm, prompts=len(entries), branches=branches)
