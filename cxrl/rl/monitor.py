"""A reward-hacking monitor: the policy on a fixed probe set, scored by the held-out evaluators, beside the
training rewards.

The RL optimises reward models; a policy can learn to please one particular network without the images getting
better. Every ``monitor.every`` epochs (and once before the first update) the trainer samples the policy on
a fixed set of probe prompts from fixed initial noises and scores the samples with the held-out evaluator
of each reward that has one (``posture``, ``diagnostic``, ``consistency``): ``probe/<reward>`` in
metrics.jsonl and TensorBoard, plotted beside the training curve in reward_curves.png. Because the prompts
and noises are fixed, two probes are paired sample by sample, so a change between them has a standard
error; when a training reward rose over the epochs between two probes while its probe fell by more than two
standard errors, the log warns.

The same probe images are also scored by the training reward models themselves (``probe/<reward>/reward``): the
reward the policy climbs and its held-out counterpart on identical, paired samples. A rise of the one beyond two
standard errors while the other falls beyond two is the plainest sign of reward hacking, free of the prompt-to-prompt
noise of the training batches' means (each epoch draws other prompts).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cxrl.config import SamplingConfig
from cxrl.diffusion.rollout import sample_images
from cxrl.eval.evaluators import Evaluators
from cxrl.eval.metrics import batched_scores
from cxrl.eval.scoring import item_labels
from cxrl.machine import map_batches
from cxrl.rl.precision import autocast

log = logging.getLogger(__name__)
Z_WARN = 2.0   # a probe fall counts when it exceeds this many standard errors of the paired difference


@dataclass
class ProbeSet:
    """The fixed probe: prompts, their labels, and one initial noise per sample (same every probe)."""

    prompts: list[str]
    labels: torch.Tensor          # [P * S, NUM_LABELS]
    noise: torch.Tensor           # [P * S, *latent_shape]
    seed: int


@dataclass
class ProbeMonitor:
    """``kinds``: {reward name: evaluator kind} for the rewards with a held-out counterpart; ``reward_scorer``:
    ``(images, prompts, metadata) -> {reward name or "combined": per-sample score}`` of the training reward models
    (None: only the held-out evaluators score the probe)."""

    probe: ProbeSet
    evaluators: Evaluators
    kinds: dict[str, str]
    sampling: SamplingConfig
    every: int
    batch_size: int
    autocast_dtype: torch.dtype | None = None
    workers: int = 0                           # probe batches sampled at a time on the CPU (cxrl.machine.map_batches)
    last: dict = field(default_factory=dict)   # {"epochs": n, "scores": {reward: [per-sample scores]}}
    train_means: dict = field(default_factory=dict)   # {reward: [training reward mean per epoch since the last probe]}
    reward_scorer: Callable | None = None

    def due(self, epochs_trained: int) -> bool:
        return epochs_trained == 0 and not self.last or (epochs_trained > 0 and epochs_trained % self.every == 0)

    @torch.no_grad()
    def measure(self, gen, ace) -> dict[str, torch.Tensor]:
        """Per-sample scores ``{series: [P * S] float64}`` of the policy (``gen`` + ``ace``) on the probe: ``<reward>``
        by its held-out evaluator and, with a ``reward_scorer``, ``<reward>/reward`` by the training reward model."""
        p = self.probe

        def sample_batch(begin: int) -> torch.Tensor:   # its noise depends on ``begin`` alone
            end = min(len(p.prompts), begin + self.batch_size)
            generator = torch.Generator(device=gen.device).manual_seed(p.seed + begin)
            with autocast(self.autocast_dtype, gen.device.type):
                return sample_images(gen, p.prompts[begin:end], ace=ace, num_steps=self.sampling.num_steps,
                                     guidance_scale=self.sampling.guidance_scale, eta=self.sampling.eta,
                                     initial_noise=p.noise[begin:end].to(gen.device, gen.dtype),
                                     generator=generator).float()

        images = torch.cat(map_batches(sample_batch, range(0, len(p.prompts), self.batch_size), self.workers,
                                       gen.device.type))
        metadata = [{"labels": p.labels[i]} for i in range(len(p.prompts))]
        scores = {name: batched_scores(getattr(self.evaluators, kind), images, p.prompts, metadata, self.batch_size)
                  for name, kind in self.kinds.items()}
        if self.reward_scorer is not None:   # the training reward models; "combined": their weighted sum
            trained = self.reward_scorer(images, p.prompts, metadata)
            scores.update({f"{name}/reward": values.double().cpu() for name, values in trained.items()
                           if name in self.kinds or name == "combined"})
        return scores

    def record_training(self, metrics: dict) -> None:
        for name in self.kinds:
            value = metrics.get(f"reward/{name}/mean")
            if value is not None:
                self.train_means.setdefault(name, []).append(float(value))

    def step(self, epochs_trained: int, gen, ace, last_epoch: bool = False) -> dict:
        """Probe if due (or ``last_epoch``: the policy the run ends with is always probed); returns the metrics to log
        (``probe/<reward>``, its paired change since the last probe and that change's standard error) and warns about
        training rewards that rose while their probe fell."""
        if not (self.due(epochs_trained) or (last_epoch and epochs_trained > self.last.get("epochs", -1))):
            return {}
        scores = self.measure(gen, ace)
        out = {"probe/epochs_trained": epochs_trained}
        changes = {}
        for series, values in scores.items():
            out[f"probe/{series}"] = float(values.mean())
            previous = self.last.get("scores", {}).get(series)
            if previous is None:
                continue
            diff = values - torch.tensor(previous, dtype=torch.float64)
            changes[series] = (float(diff.mean()), float(diff.std() / math.sqrt(diff.numel())))
            out[f"probe/{series}/change"], out[f"probe/{series}/change_stderr"] = changes[series]
        for name in self.kinds:
            if name in changes and changes[name][0] < -Z_WARN * changes[name][1]:
                self._warn_if_diverging(name, changes, scores[name].numel(), epochs_trained, out)
        self.last = {"epochs": epochs_trained, "scores": {k: v.tolist() for k, v in scores.items()}}
        self.train_means = {}
        return out

    def _warn_if_diverging(self, name: str, changes: dict, samples: int, epochs_trained: int, out: dict) -> None:
        """Held-out probe of ``name`` fell beyond its noise: warn when its reward rose meanwhile — the training
        batches' means (a trend over the epochs) or the reward model on the same probe images (a paired change)."""
        change, stderr = changes[name]
        since = self.last["epochs"]
        rise = _trend(self.train_means.get(name, []))
        if rise is not None and rise > 0:
            out[f"probe/{name}/diverging"] = 1
            log.warning("reward '%s' rose over epochs %d-%d (training mean %+.4g per epoch) while its held-out "
                        "probe fell by %.4g (%.1f standard errors, %d paired samples): the policy may be pleasing "
                        "the reward model rather than getting better", name, since, epochs_trained - 1,
                        rise, -change, -change / max(stderr, 1e-12), samples)
        reward_change, reward_stderr = changes.get(f"{name}/reward", (0.0, 0.0))
        if reward_change > Z_WARN * reward_stderr:
            out[f"probe/{name}/diverging"] = 1
            log.warning("on the same %d probe images, reward model '%s' rose by %.4g (%.1f standard errors) since the "
                        "probe after %d epochs while its held-out evaluator fell by %.4g (%.1f standard errors): the policy is "
                        "pleasing the reward model, not getting better", samples, name, reward_change,
                        reward_change / max(reward_stderr, 1e-12), since, -change, -change / max(stderr, 1e-12))

    def state_dict(self) -> dict:
        return {"last": self.last, "train_means": self.train_means}

    def load_state_dict(self, state: dict) -> None:
        self.last, self.train_means = dict(state.get("last") or {}), dict(state.get("train_means") or {})


def _trend(values: list[float]) -> float | None:
    """Least-squares slope per epoch of the training reward means between two probes (None: too few)."""
    if len(values) < 2:
        return None
    n = len(values)
    xs = [i - (n - 1) / 2 for i in range(n)]
    mean = sum(values) / n
    return sum(x * (v - mean) for x, v in zip(xs, values)) / sum(x * x for x in xs)


def probe_set(items: list[dict], samples_per_prompt: int, latent_shape, seed: int) -> ProbeSet:
    """``samples_per_prompt`` samples of each item's prompt, from noises drawn once from ``seed``."""
    prompts = [item["prompt"] for item in items for _ in range(samples_per_prompt)]
    labels = item_labels(items).repeat_interleave(samples_per_prompt, dim=0)
    noise = torch.randn(len(prompts), *latent_shape, generator=torch.Generator().manual_seed(int(seed)))
    return ProbeSet(prompts, labels, noise, int(seed))
