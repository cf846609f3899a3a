"""RewardSuite: several reward models, their weights and RLCF combined into one reward per image.

    feedback="comparative":  r_k = s_k(x) − s_k(x̂)   for comparative components (x̂: the frozen anchor's
                                                       image for the same prompt from the same initial noise)
                             r_k = s_k(x)             for the others (posture by default)
    feedback="direct":       r_k = s_k(x)             for every component (the "w/o RLCF" ablation)
    R = Σ_k w_k r_k

Component order is fixed: the order the models were given in (``suite.names``). Anchor scores come
from, in order of preference: ``anchor_images`` passed in; the :class:`AnchorScoreCache` for
(prompt, seed); the ``anchor_sampler(prompts, initial_noise) -> images`` callable run on the policy's
exact initial noise (or the seed bank's noise for the seeds when none is given).

A non-finite component (policy or anchor side) is never propagated: it is logged with the reward name and
the prompt, set to 0, and the sample is marked invalid in ``valid`` so the trainer excludes it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from cxrl.rewards.base import RewardModel
from cxrl.rewards.rlcf import AnchorScoreCache, SeedBank, noise_for

log = logging.getLogger(__name__)
FEEDBACK_MODES = ("comparative", "direct")


@dataclass
class RewardOutput:
    names: tuple[str, ...]
    components: torch.Tensor        # [B, K] r_k used for the update (0 where non-finite)
    combined: torch.Tensor          # [B]   Σ w_k r_k (0 where invalid)
    valid: torch.Tensor             # [B]   bool: every component finite
    policy_scores: torch.Tensor     # [B, K] s_k(x)
    anchor_scores: torch.Tensor | None  # [B, K] s_k(x̂), nan for non-comparative components; None if direct

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {n: self.components[:, i] for i, n in enumerate(self.names)}


class RewardSuite:
    def __init__(self, models: Sequence[RewardModel] | Mapping[str, RewardModel], weights: Mapping[str, float] | None = None,
                 feedback: str = "comparative", comparative: Mapping[str, bool] | None = None,
                 anchor_sampler: Callable | None = None, cache: AnchorScoreCache | None = None,
                 seed_bank: SeedBank | None = None, latent_shape: Sequence[int] | None = None):
        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"RewardSuite: feedback must be one of {FEEDBACK_MODES}, got {feedback!r}")
        items = list(models.items()) if isinstance(models, Mapping) else [(m.name, m) for m in models]
        if not items:
            raise ValueError("RewardSuite: at least one reward model is needed")
        names = [n for n, _ in items]
        if len(set(names)) != len(names):
            raise ValueError(f"RewardSuite: reward names must be unique, got {names}")
        self.names = tuple(names)
        self.models = dict(items)
        weights = dict(weights or {})
        unknown = set(weights) - set(names)
        if unknown:
            raise ValueError(f"RewardSuite: weights given for unknown rewards {sorted(unknown)}; rewards: {names}")
        comparative = dict(comparative or {})
        unknown = set(comparative) - set(names)
        if unknown:
            raise ValueError(f"RewardSuite: 'comparative' given for unknown rewards {sorted(unknown)}; rewards: {names}")
        self.weights = torch.tensor([float(weights.get(n, 1.0)) for n in names])
        self.comparative = tuple(bool(comparative.get(n, self.models[n].comparative)) for n in names)
        self.feedback = feedback
        self.anchor_sampler = anchor_sampler
        self.cache = cache
        self.seed_bank = seed_bank
        self.latent_shape = tuple(latent_shape) if latent_shape is not None else None
        self.anchor_images_generated = 0

    @property
    def uses_anchor(self) -> bool:
        return self.feedback == "comparative" and any(self.comparative)

    def to(self, device) -> "RewardSuite":
        for m in self.models.values():
            m.to(device)
        return self

    def score_images(self, images: torch.Tensor, prompts: list[str], metadata: list[dict], which: Sequence[int] | None = None) -> torch.Tensor:
        """[B, K] raw scores s_k (nan for components not in ``which``)."""
        out = torch.full((images.shape[0], len(self.names)), float("nan"), device=images.device)
        for k, name in enumerate(self.names):
            if which is None or k in which:
                out[:, k] = self.models[name](images, prompts, metadata).to(out.device)
        return out

    def anchor_scores(self, prompts, metadata, seeds, initial_noise, device) -> torch.Tensor:
        """[B, K] anchor scores s_k(x̂) of the comparative components (nan elsewhere): cached ones where the cache
        has them, else sampled from ``initial_noise`` (or the seeds' noise) and put in the cache."""
        comp = [k for k, c in enumerate(self.comparative) if c]
        comp_names = [self.names[k] for k in comp]
        anchor = torch.full((len(prompts), len(self.names)), float("nan"), device=device)
        todo = list(range(len(prompts)))
        if self.cache is not None:
            if seeds is None:
                raise ValueError("RewardSuite: the anchor cache needs the seeds of the batch (seeds=SeedBank.seeds_for(prompts))")
            todo = []
            for i, (p, s) in enumerate(zip(prompts, seeds)):
                hit = self.cache.get(p, s, comp_names)
                if hit is None:
                    todo.append(i)
                else:
                    anchor[i, comp] = torch.tensor([hit[n] for n in comp_names], device=device)
        if todo:
            if self.anchor_sampler is None:
                raise ValueError("RewardSuite: comparative feedback needs anchor_images or an anchor_sampler")
            if initial_noise is not None:
                noise = initial_noise[todo]
            elif seeds is not None and self.latent_shape is not None:
                noise = noise_for([seeds[i] for i in todo], self.latent_shape, device=device)
            else:
                raise ValueError("RewardSuite: re-sampling the anchor needs the policy's initial_noise "
                                 "(or seeds and latent_shape to rebuild it)")
            sub_prompts = [prompts[i] for i in todo]
            sub_meta = [metadata[i] for i in todo]
            with torch.no_grad():
                anchor_images = self.anchor_sampler(sub_prompts, noise)
            self.anchor_images_generated += len(todo)
            scores = self.score_images(anchor_images, sub_prompts, sub_meta, which=comp).to(device)
            anchor[todo] = scores
            if self.cache is not None:
                cpu = scores.cpu()
                for j, i in enumerate(todo):
                    vals = {self.names[k]: float(cpu[j, k]) for k in comp}
                    if all(torch.isfinite(torch.tensor(list(vals.values())))):
                        self.cache.put(prompts[i], seeds[i], vals)
        return anchor

    def __call__(self, images, prompts, metadata=None, **kwargs) -> RewardOutput:
        return self.score(images, prompts, metadata, **kwargs)

    def score(self, images: torch.Tensor, prompts: Sequence[str], metadata: Sequence[dict] | None = None, *,
              seeds: Sequence[int] | None = None, initial_noise: torch.Tensor | None = None,
              anchor_images: torch.Tensor | None = None) -> RewardOutput:
        prompts = list(prompts)
        metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"RewardSuite: {len(seeds)} seeds for {len(prompts)} prompts")
        policy = self.score_images(images, prompts, metadata)
        components = policy.clone()
        anchor = None
        if self.uses_anchor:
            comp = [k for k, c in enumerate(self.comparative) if c]
            if anchor_images is not None:
                if anchor_images.shape[0] != images.shape[0]:
                    raise ValueError(f"RewardSuite: {anchor_images.shape[0]} anchor images for {images.shape[0]} policy images")
                anchor = self.score_images(anchor_images, prompts, metadata, which=comp).to(policy.device)
            else:
                anchor = self.anchor_scores(prompts, metadata, seeds, initial_noise, policy.device)
            components[:, comp] = policy[:, comp] - anchor[:, comp]
        finite = torch.isfinite(components)
        valid = finite.all(dim=1)
        if not bool(valid.all()):
            for i, k in (~finite).nonzero().tolist():
                side = "policy" if not torch.isfinite(policy[i, k]) else "anchor"
                log.error("reward '%s' is non-finite (%s image) for prompt %r: sample excluded from the update",
                          self.names[k], side, prompts[i][:120])
        components = torch.where(finite, components, torch.zeros_like(components))
        combined = (components * self.weights.to(components.device)).sum(dim=1)
        combined = torch.where(valid, combined, torch.zeros_like(combined))
        return RewardOutput(self.names, components, combined, valid, policy, anchor)

    def nonfinite(self, out: RewardOutput) -> torch.Tensor:
        """[B, K] bool: where a component of ``out`` was non-finite (policy or anchor side) and was set to 0."""
        bad = ~torch.isfinite(out.policy_scores)
        if out.anchor_scores is not None:
            comparative = torch.tensor(self.comparative, device=bad.device)
            bad |= comparative & ~torch.isfinite(out.anchor_scores.to(bad.device))
        return bad

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.flush()
