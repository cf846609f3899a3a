"""Rewards and evaluators by name: ``rewards.components`` entries become reward models and a
:class:`~cxrl.rewards.RewardSuite` (with RLCF's seed bank and anchor-score cache); the ``eval`` section
becomes the held-out :class:`~cxrl.eval.evaluators.Evaluators` and the FID feature extractor."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Mapping

import torch

from cxrl.compose.models import ASSET_PREFIX, resolve_asset
from cxrl.config import (
    EVALUATOR_KINDS,
    REWARD_ENTRY_KEYS,
    Config,
    EvalConfig,
    RewardsConfig,
    SamplingConfig,
    phantom_evaluators_refused,
)
from cxrl.eval.evaluators import DEFAULT_EVALUATOR_ROOT, SHIPPED_REWARD_ROOT, XRV_PREFIX, Evaluators, load_evaluators
from cxrl.eval.fid import ClassifierFeatures, XRVDenseNetFeatures
from cxrl.rewards import AnchorScoreCache, RewardModel, RewardSuite, SeedBank, load_custom_reward, load_reward_model
from cxrl.rewards.xrv_backend import xrv_weights_present

log = logging.getLogger(__name__)
SCORE_NEUTRAL_KEYS = ("weight", "comparative", "strict")   # how a score is used, not what it is
# anchor scores `cxrl anchor-scores` precomputed, one file per cache namespace (the demo's ship with cxrl)
SHIPPED_ANCHOR_SCORES = Path(__file__).resolve().parent.parent / "assets" / "anchor_scores"


def reward_from_config(entry: Mapping, device="cpu") -> tuple[RewardModel, float]:
    """(model, weight) from a config entry, e.g.
    ``{"name": "diagnostic", "weight": 1.0, "path": null, "backend": "own", "comparative": true}`` or
    ``{"name": "brightness", "callable": "my_rewards.py:brightness", "weight": 0.5, "comparative": false}``."""
    entry = dict(entry)
    unknown = set(entry) - set(REWARD_ENTRY_KEYS)
    if unknown:
        raise ValueError(f"reward config entry {entry.get('name')!r}: unknown keys {sorted(unknown)}; allowed: {sorted(REWARD_ENTRY_KEYS)}")
    if "name" not in entry:
        raise ValueError(f"reward config entry {entry}: missing 'name'")
    weight = float(entry.get("weight", 1.0))
    dtype = getattr(torch, entry["dtype"]) if entry.get("dtype") else None
    if entry.get("callable"):
        model = load_custom_reward(entry["callable"], name=entry["name"], comparative=entry.get("comparative"),
                                   strict=bool(entry.get("strict", False)), kwargs=entry.get("kwargs"))
        return model.to(device), weight
    kwargs = dict(entry.get("kwargs") or {})
    if entry.get("comparative") is not None:
        kwargs["comparative"] = bool(entry["comparative"])
    paths = entry_paths(entry)
    path = paths if isinstance(entry.get("path"), list) else paths[0]
    model = load_reward_model(entry["name"], path, backend=entry.get("backend", "own"), device=device,
                              dtype=dtype, **kwargs)
    return model, weight


def entry_paths(entry: Mapping) -> list:
    """The model directories of a reward entry: ``path`` (one, or a list for an ensemble), ``asset:NAME`` resolved
    to the shipped ``cxrl/assets/NAME``; None = the shipped weights of the entry's name."""
    raw = entry.get("path")
    return [resolve_asset(p) if isinstance(p, str) and p.startswith(ASSET_PREFIX) else p
            for p in (raw if isinstance(raw, list) else [raw])]


def build_reward_suite(rewards: RewardsConfig, sampling: SamplingConfig, device, *, anchor_sampler: Callable | None,
                       anchor_hash: str, latent_shape, seed: int, cache_path: Path) -> RewardSuite:
    """The configured reward models, weights and feedback; with comparative feedback, the anchor-score cache at
    ``cache_path`` (namespaced by ``anchor_hash`` — the anchor's content hash —, the sampler settings and every
    reward's config entry and weights) and the seed bank
    whose seeds make (prompt, seed) pairs recur."""
    models, weights = [], {}
    for entry in rewards.components:
        model, weight = reward_from_config(entry, device=device)
        models.append(model)
        weights[model.name] = weight
    # each reward by what its scores depend on: its config entry (less the weight and feedback flags, which use the
    # scores but do not change them) and the content hash of its weights (a reward retrained in place misses)
    reward_ids = {model.name: {"entry": json.dumps({k: v for k, v in entry.items() if k not in SCORE_NEUTRAL_KEYS},
                                                   sort_keys=True), "weights": model.fingerprint()}
                  for entry, model in zip(rewards.components, models)}
    cache = None
    if rewards.feedback == "comparative":
        # the anchor's step noise is per sample (cxrl.rl.anchor): its scores do not depend on the batch size
        sampler_settings = {"num_steps": sampling.num_steps, "guidance_scale": sampling.guidance_scale,
                            "eta": sampling.eta, "step_noise": "per-sample"}
        cache = AnchorScoreCache(cache_path, anchor_hash=anchor_hash, sampler_settings=sampler_settings,
                                 reward_ids=reward_ids,
                                 preload_dirs=[*([rewards.anchor_scores] if rewards.anchor_scores else []), SHIPPED_ANCHOR_SCORES])
        if cache.preloaded:
            log.info("RLCF: %d precomputed anchor scores of this exact anchor, sampler and rewards (namespace %s)",
                     cache.preloaded, cache.namespace[:16])
    bank = SeedBank(seeds_per_prompt=rewards.seed_bank_size, base_seed=seed)
    return RewardSuite(models, weights, feedback=rewards.feedback, anchor_sampler=anchor_sampler, cache=cache,
                       seed_bank=bank, latent_shape=latent_shape)


def forbidden_evaluator_dirs(rewards: RewardsConfig) -> tuple:
    """The shipped reward models plus every reward directory the run optimised: never evaluators."""
    return (SHIPPED_REWARD_ROOT, *(Path(p) for e in rewards.components if isinstance(e, dict)
                                   for p in entry_paths(e) if p is not None))


def build_evaluators(cfg: Config, device, kinds: tuple[str, ...] = EVALUATOR_KINDS) -> Evaluators:
    """The held-out evaluators (``kinds`` of them) of ``eval.evaluators`` / ``eval.evaluator_paths`` (default: the
    shipped ones), refusing any reward model the run's ``rewards`` section optimises, and for ``eval.source: mimic``
    the shipped phantom-world evaluators (MIMIC runs are judged by evaluators trained on MIMIC's evaluator half)."""
    e = cfg.eval
    if e.source == "mimic":
        _refuse_phantom_evaluators(e)
    return load_evaluators(e.evaluators or None, dict(e.evaluator_paths), kinds=kinds, device=device,
                           forbidden=forbidden_evaluator_dirs(cfg.rewards), xrv_cache_dir=e.xrv_cache_dir or None)


def _refuse_phantom_evaluators(e: EvalConfig) -> None:
    """A MIMIC evaluation judged by the shipped evaluators (trained on phantom renders) would measure nothing."""
    root = Path(e.evaluators).expanduser() if e.evaluators else DEFAULT_EVALUATOR_ROOT
    shipped = DEFAULT_EVALUATOR_ROOT.resolve()
    for kind in EVALUATOR_KINDS:
        spec = str(e.evaluator_paths.get(kind, root / kind))
        if spec.startswith(XRV_PREFIX):
            continue
        directory = Path(spec).expanduser().resolve()
        if directory == shipped or shipped in directory.parents:
            raise phantom_evaluators_refused(kind, str(directory))


def fid_features_choice(e: EvalConfig, *, has_references: bool) -> tuple[str, str]:
    """Which FID features ``eval.fid_features`` resolves to (``xrv`` | ``evaluator`` | ``none``) and why, in words
    that go into the evaluation report."""
    if e.fid_features != "auto":
        return e.fid_features, f"eval.fid_features={e.fid_features}"
    if not has_references:
        return "none", "eval.fid_features=auto: the held-out prompts have no reference images"
    if e.source == "phantom":
        return "evaluator", "eval.fid_features=auto on the phantom world: the diagnostic evaluator's features"
    where = e.xrv_cache_dir or "torchxrayvision's default cache"
    if xrv_weights_present(e.xrv_weights, e.xrv_cache_dir or None):
        return "xrv", f"eval.fid_features=auto on real CXRs: torchxrayvision weights '{e.xrv_weights}' found in {where}"
    return "evaluator", (f"eval.fid_features=auto on real CXRs: torchxrayvision weights '{e.xrv_weights}' are not in the "
                         f"cache ({where}), so the diagnostic evaluator's features are used (eval.fid_features=xrv with "
                         "eval.xrv_cache_dir to insist)")


def fid_extractor(e: EvalConfig, evaluators: Evaluators | None, *, has_references: bool, device="cpu"):
    """The FID feature extractor of ``eval.fid_features``, or None when FID is not computed; its ``reason`` says why
    it was chosen (logged, and recorded in metrics.json and results.md).

    ``evaluator`` = the diagnostic evaluator's own features; ``xrv`` = torchxrayvision DenseNet-121 ``features2``
    (weights must be in ``eval.xrv_cache_dir``: missing is an error, never a silent switch); ``none``; ``auto`` =
    the evaluator's features on the phantom world, torchxrayvision's on real CXRs when its weights are on disk
    (else the evaluator's, and the report says so), and None without a reference set."""
    choice, reason = fid_features_choice(e, has_references=has_references)
    log.info("FID features: %s", reason)
    if choice == "none":
        return None
    if choice == "xrv":
        extractor = XRVDenseNetFeatures(e.xrv_weights, cache_dir=e.xrv_cache_dir or None, device=device)
    else:
        if evaluators is None or evaluators.diagnostic is None:
            raise ValueError("FID feature extractor 'evaluator' needs the diagnostic evaluator")
        digest = evaluators.digests.get("diagnostic", "")
        if digest.startswith("xrv-"):  # a torchxrayvision diagnostic evaluator: its DenseNet features2
            name = f"{digest}/features2"
        else:
            name = "cxrl-diagnostic-evaluator/features" + (f" (sha256 {digest})" if digest else "")
        extractor = ClassifierFeatures(evaluators.diagnostic, name=name)
    extractor.reason = reason
    return extractor
