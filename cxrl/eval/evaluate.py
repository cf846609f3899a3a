"""Sample every model on the same held-out prompts from the same initial noise and score the samples
with the held-out evaluators.

Pairing: sample ``s`` of prompt ``p`` starts from the same ``x_T`` for every model (drawn from one seeded
generator), so base-vs-tuned differences are the models' and not the noise's. The sampler is the run's
(``sampling`` section: steps, CFG, eta); how many samples, which seed and batch come from the ``eval``
section. :func:`cxrl.eval.run.run_evaluation` puts this together with the paired comparison and the report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch

from cxrl.config import EvalConfig, SamplingConfig
from cxrl.diffusion.rollout import sample_images
from cxrl.eval.cache import EvaluationCache, evaluation_key_parts, key_of
from cxrl.eval.evaluators import Evaluators
from cxrl.eval.fid import extract_features
from cxrl.eval.scoring import SampleScores, reference_images, score_samples
from cxrl.machine import map_batches

log = logging.getLogger(__name__)


def sampling_record(e: EvalConfig, s: SamplingConfig) -> dict:
    """How the evaluation samples were drawn, as metrics.json records it."""
    return {"samples_per_prompt": e.samples_per_prompt, "num_steps": s.num_steps, "guidance_scale": s.guidance_scale,
            "eta": s.eta, "seed": e.seed, "batch_size": e.batch_size}


def initial_noise(latent_shape: Sequence[int], count: int, seed: int) -> torch.Tensor:
    """``count`` standard-normal ``x_T`` of ``latent_shape`` from one CPU generator (device-independent)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(count, *latent_shape, generator=generator)


@torch.no_grad()
def generate_samples(gen, prompts: Sequence[str], e: EvalConfig, s: SamplingConfig, ace=None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images ``[P, S, C, H, W]`` in [0, 1] on the CPU: ``S = e.samples_per_prompt`` per prompt, sample ``s`` of
    prompt ``p`` from ``noise[p * S + s]`` (default: :func:`initial_noise` of ``e.seed``), in batches of
    ``e.batch_size`` (``e.sampling_workers`` batches at a time on the CPU), with the sampler of ``s``."""
    prompts = list(prompts)
    per_prompt = e.samples_per_prompt
    flat_prompts = [p for p in prompts for _ in range(per_prompt)]
    if noise is None:
        noise = initial_noise(gen.latent_shape, len(flat_prompts), e.seed)
    if noise.shape[0] != len(flat_prompts):
        raise ValueError(f"noise has {noise.shape[0]} rows for {len(flat_prompts)} samples")

    def sample_batch(start: int) -> torch.Tensor:   # batch k's noises depend on k alone: any order, the same bits
        stop = start + e.batch_size
        images = sample_images(
            gen, flat_prompts[start:stop], ace=ace, num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta,
            initial_noise=noise[start:stop].to(gen.device, gen.dtype),
            generator=torch.Generator(device=gen.device).manual_seed(e.seed + start),
        )
        return images.detach().float().cpu()

    starts = range(0, len(flat_prompts), e.batch_size)
    images = torch.cat(map_batches(sample_batch, starts, e.sampling_workers, gen.device.type))
    return images.view(len(prompts), per_prompt, *images.shape[1:])


@dataclass
class ModelEvaluation:
    """Per model: ``results[name]`` (metrics.json's object), ``samples[name]`` ``[P, S, C, H, W]`` and the
    evaluators' per-sample ``scores[name]`` (what a paired comparison resamples)."""

    results: dict[str, dict]
    samples: dict[str, torch.Tensor]
    scores: dict[str, SampleScores]


def _report_miss(cache: EvaluationCache, key_parts: dict, name: str) -> None:
    """Say why a model with a cached evaluation of the same name is sampled afresh (a shipped base evaluation that
    does not match costs the whole base sampling: the user should see which input differed)."""
    nearest = cache.nearest_miss(key_parts, name)
    if nearest is not None:
        meta, differ = nearest
        log.info("evaluation of '%s' not in the cache: the nearest entry (%s) differs in %s; sampling it", name,
                 meta.name, ", ".join(differ))


def evaluate_models(models: dict, items: Sequence[dict], evaluators: Evaluators, feature_extractor, e: EvalConfig,
                    s: SamplingConfig, aces: dict | None = None, cache: EvaluationCache | None = None) -> ModelEvaluation:
    """Sample and score ``models`` (``{name: Generator}``, e.g. ``{"base": anchor, "tuned": policy}``) on ``items``
    (dataset items: ``prompt``, ``labels``, and ``image`` when a real reference exists); ``aces[name]``: ACE tokens
    to condition that model with. FID compares with the items' images through ``feature_extractor`` (None: no FID).
    ``cache``: a model whose evaluation is cached under its content key is not sampled again (and new ones are put)."""
    if not models:
        raise ValueError("evaluate_models: no models given")
    if not items:
        raise ValueError("evaluate_models: no prompts/items given")
    aces = dict(aces or {})
    unknown = sorted(set(aces) - set(models))
    if unknown:
        raise ValueError(f"evaluate_models: aces given for unknown model(s) {unknown}; models: {sorted(models)}")
    prompts = [item["prompt"] for item in items]
    references = reference_images(items)
    reference_features = None
    if feature_extractor is not None and references is not None:
        reference_features = extract_features(feature_extractor, references, e.batch_size)
    if reference_features is not None and reference_features.shape[0] < 2:
        raise ValueError("FID needs at least 2 reference images; evaluate on more prompts")
    out = ModelEvaluation({}, {}, {})
    shared_noise: dict[tuple, torch.Tensor] = {}
    for name, gen in models.items():
        key_parts = evaluation_key_parts(gen, aces.get(name), items, evaluators, feature_extractor, e, s) if cache else None
        cache_key = key_of(key_parts) if cache else None
        hit = cache.get(cache_key) if cache else None
        if hit is not None:
            log.info("evaluation of '%s' taken from the cache (key %s: same weights, evaluators, items and settings)",
                     name, cache_key)
            out.results[name], out.scores[name], out.samples[name] = hit.results, hit.scores, hit.samples
            continue
        if cache is not None:
            _report_miss(cache, key_parts, name)
        key = tuple(gen.latent_shape)
        if key not in shared_noise:  # one x_T set per latent shape: identical across same-shape models
            shared_noise[key] = initial_noise(key, len(prompts) * e.samples_per_prompt, e.seed)
        out.samples[name] = generate_samples(gen, prompts, e, s, ace=aces.get(name), noise=shared_noise[key])
        metrics, out.scores[name] = score_samples(out.samples[name], items, evaluators, feature_extractor,
                                                  reference_features, e.batch_size, min_label_prompts=e.min_label_prompts)
        metrics["ace"] = aces.get(name) is not None
        metrics["sampling"] = sampling_record(e, s)
        out.results[name] = metrics
        if cache is not None:
            cache.put(cache_key, metrics, out.scores[name], out.samples[name], note={"model": name, "key_parts": key_parts})
    return out
