"""``evaluate_models``: sample every model on the same held-out prompts from the same initial noise,
score the samples with the held-out evaluators, optionally write the report.

Pairing: sample ``s`` of prompt ``p`` starts from the same ``x_T`` for every model (drawn from one seeded
generator), so base-vs-tuned differences are the models' and not the noise's. Used by
``cxrl evaluate`` and by the trainer at the end of the demo.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch

from cxrl.eval.evaluators import Evaluators
from cxrl.eval.fid import XRV_DEFAULT_WEIGHTS, ClassifierFeatures, XRVDenseNetFeatures, extract_features
from cxrl.eval.report import showcase_order, write_report
from cxrl.eval.scoring import item_labels, reference_images, score_samples


FID_FEATURE_CHOICES = ("auto", "evaluator", "xrv", "none")


def build_feature_extractor(choice: str, data: str, evaluators: Evaluators | None, *, has_references: bool = True,
                            xrv_weights: str = XRV_DEFAULT_WEIGHTS, xrv_cache_dir: str | None = None, device="cpu"):
    """The named FID feature extractor, or None when FID is not computed.

    ``choice``: ``evaluator`` = the diagnostic evaluator's own features; ``xrv`` = torchxrayvision
    DenseNet-121 ``features2`` (weights must be in the cache: missing is a FileNotFoundError, never a
    silent switch); ``none``; ``auto`` = ``evaluator`` on the phantom world (``data="phantom"``), ``xrv`` on
    real CXRs, and None when there is no reference set (``has_references=False``) to compare with.
    """
    if choice not in FID_FEATURE_CHOICES:
        raise ValueError(f"FID feature extractor {choice!r}: choose one of {FID_FEATURE_CHOICES}")
    if choice == "auto":
        if not has_references:
            return None
        choice = "evaluator" if data == "phantom" else "xrv"
    if choice == "none":
        return None
    if choice == "xrv":
        return XRVDenseNetFeatures(xrv_weights, cache_dir=xrv_cache_dir, device=device)
    if evaluators is None or evaluators.diagnostic is None:
        raise ValueError("FID feature extractor 'evaluator' needs the diagnostic evaluator (load_evaluators)")
    digest = evaluators.digests.get("diagnostic", "")
    if digest.startswith("xrv-"):  # a torchxrayvision diagnostic evaluator: its DenseNet features2
        name = f"{digest}/features2"
    else:
        name = "cxrl-diagnostic-evaluator/features" + (f" (sha256 {digest})" if digest else "")
    return ClassifierFeatures(evaluators.diagnostic, name=name)


@dataclass
class SamplingSettings:
    """How evaluation samples are drawn (recorded in metrics.json)."""

    samples_per_prompt: int = 4     # the MS-SSIM protocol: 4 samples -> 6 pairs per prompt
    num_steps: int = 50
    guidance_scale: float = 5.0     # cxrl.diffusion.rollout's default, so evaluation samples like training
    eta: float = 1.0                # the stochastic DDIM policy the RL trains; must be in (0, 1]
    seed: int = 0
    batch_size: int = 16

    def validate(self) -> "SamplingSettings":
        if self.samples_per_prompt < 1:
            raise ValueError(f"samples_per_prompt must be >= 1, got {self.samples_per_prompt}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 < self.eta <= 1:
            raise ValueError(f"eta must be in (0, 1] (the policy's stochastic DDIM step), got {self.eta}")
        return self


def initial_noise(latent_shape: Sequence[int], count: int, seed: int) -> torch.Tensor:
    """``count`` standard-normal ``x_T`` of ``latent_shape`` from one CPU generator (device-independent)."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(count, *latent_shape, generator=generator)


@torch.no_grad()
def generate_samples(gen, prompts: Sequence[str], settings: SamplingSettings, ace=None,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
    """Images ``[P, S, C, H, W]`` in [0, 1] on the CPU: ``S = settings.samples_per_prompt`` per prompt,
    sample ``s`` of prompt ``p`` from ``noise[p * S + s]`` (default: :func:`initial_noise` of the seed)."""
    from cxrl.diffusion import sample_images

    settings.validate()
    prompts = list(prompts)
    per_prompt = settings.samples_per_prompt
    flat_prompts = [p for p in prompts for _ in range(per_prompt)]
    if noise is None:
        noise = initial_noise(gen.latent_shape, len(flat_prompts), settings.seed)
    if noise.shape[0] != len(flat_prompts):
        raise ValueError(f"noise has {noise.shape[0]} rows for {len(flat_prompts)} samples")
    chunks = []
    for start in range(0, len(flat_prompts), settings.batch_size):
        stop = start + settings.batch_size
        images = sample_images(
            gen, flat_prompts[start:stop], ace=ace, num_steps=settings.num_steps,
            guidance_scale=settings.guidance_scale, eta=settings.eta,
            initial_noise=noise[start:stop].to(gen.device, gen.dtype),
            generator=torch.Generator(device=gen.device).manual_seed(settings.seed + start),
        )
        chunks.append(images.detach().float().cpu())
    images = torch.cat(chunks)
    return images.view(len(prompts), per_prompt, *images.shape[1:])


def evaluate_models(models: dict, items: Sequence[dict], evaluators: Evaluators, feature_extractor=None, *,
                    aces: dict | None = None, settings: SamplingSettings | None = None, out_dir=None,
                    extra: dict | None = None, return_samples: bool = False, min_label_prompts: int = 1):
    """Evaluate ``models`` (``{name: Generator}``, e.g. ``{"base": anchor, "tuned": policy}``) on
    ``items`` (dataset items: ``prompt``, ``labels``, and ``image`` when a real reference exists).

    ``aces[name]``: ACE tokens to condition that model with. ``feature_extractor``: a named extractor
    for FID (``cxrl.eval.fid``); the reference set is the items' real images (the phantom world's renders
    for the same prompts); FID is ``None`` when either is missing. Returns ``{name: metrics dict}``
    (and ``{name: samples [P, S, C, H, W]}`` too when ``return_samples``); ``min_label_prompts``: a label
    enters the macro AUROC with at least that many positive and negative prompts; with ``out_dir`` also writes
    metrics.json, run.json, results.md and the grids (see ``cxrl.eval.report``).
    """
    if not models:
        raise ValueError("evaluate_models: no models given")
    if not items:
        raise ValueError("evaluate_models: no prompts/items given")
    settings = (settings or SamplingSettings()).validate()
    aces = dict(aces or {})
    unknown = sorted(set(aces) - set(models))
    if unknown:
        raise ValueError(f"evaluate_models: aces given for unknown model(s) {unknown}; models: {sorted(models)}")
    prompts = [item["prompt"] for item in items]
    references = reference_images(items)
    reference_features = None
    if feature_extractor is not None and references is not None:
        reference_features = extract_features(feature_extractor, references, settings.batch_size)
    if reference_features is not None and reference_features.shape[0] < 2:
        raise ValueError("FID needs at least 2 reference images; evaluate on more prompts (--n-prompts)")

    results: dict[str, dict] = {}
    samples: dict[str, torch.Tensor] = {}
    shared_noise: dict[tuple, torch.Tensor] = {}
    for name, gen in models.items():
        key = tuple(gen.latent_shape)
        if key not in shared_noise:  # one x_T set per latent shape: identical across same-shape models
            shared_noise[key] = initial_noise(key, len(prompts) * settings.samples_per_prompt, settings.seed)
        samples[name] = generate_samples(gen, prompts, settings, ace=aces.get(name), noise=shared_noise[key])
        metrics = score_samples(samples[name], items, evaluators, feature_extractor, reference_features, settings.batch_size,
                                min_label_prompts=min_label_prompts)
        metrics["ace"] = aces.get(name) is not None
        metrics["sampling"] = asdict(settings)
        results[name] = metrics
    if out_dir is not None:
        info = {"evaluators": evaluators.describe(), "feature_extractor": getattr(feature_extractor, "name", None),
                "prompt_ids": [str(item.get("id", i)) for i, item in enumerate(items)], **(extra or {})}
        every_item_has_image = references is not None and references.shape[0] == len(items)
        write_report(results, out_dir, samples, prompts, extra=info, references=references if every_item_has_image else None,
                     grid_order=showcase_order(item_labels(items)))
    return (results, samples) if return_samples else results
