"""The reward-hacking monitor from the configuration: which rewards have a held-out counterpart (a built-in
reward name with an evaluator of that kind), the probe prompts of ``monitor.split`` and the evaluators."""
from __future__ import annotations

import logging

import torch

from cxrl.compose.rewards import build_evaluators
from cxrl.compose.sources import held_out_items, open_dataset
from cxrl.config import Config
from cxrl.eval.evaluators import EVALUATOR_KINDS
from cxrl.rl.monitor import ProbeMonitor, probe_set

log = logging.getLogger(__name__)


def held_out_counterparts(cfg: Config) -> tuple[dict[str, str], list[str]]:
    """({reward name: evaluator kind} for the built-in rewards, [names of rewards without a counterpart])."""
    kinds, without = {}, []
    for entry in cfg.rewards.components:
        name = entry["name"]
        if name in EVALUATOR_KINDS and not entry.get("callable"):
            kinds[name] = name
        else:
            without.append(name)
    return kinds, without


def build_monitor(cfg: Config, gen, device, autocast_dtype, suite=None) -> ProbeMonitor | None:
    """The monitor of ``monitor.*``, or None: when ``monitor.every`` is 0, or (said once, with the reason) when no
    reward has a held-out evaluator to watch it with. ``suite``: the run's :class:`~cxrl.rewards.suite.RewardSuite`,
    whose models also score the probe images (raw scores, beside their held-out evaluators)."""
    m = cfg.monitor
    if not m.every:
        return None
    kinds, without = held_out_counterparts(cfg)
    if not kinds:
        log.info("reward-hacking monitor off: no reward has a held-out evaluator (rewards %s; counterparts exist for "
                 "%s)", without, list(EVALUATOR_KINDS))
        return None
    if without:
        log.info("reward-hacking monitor watches %s; %s have no held-out evaluator", sorted(kinds), without)
    with torch.random.fork_rng(devices=[]):   # loading builds modules, which draw init weights: keep the run's RNG
        evaluators = build_evaluators(cfg, device, kinds=tuple(sorted(set(kinds.values()))))
    dataset = open_dataset(cfg.eval.source, m.split, path=cfg.data.path if cfg.eval.source != "phantom" else "",
                           reports_path=cfg.data.reports_path, resolution=gen.resolution[0])
    items = held_out_items(dataset, m.num_prompts, m.seed)
    scorer = None
    if suite is not None:
        def scorer(images, prompts, metadata):   # raw scores s_k and their weighted sum (what train.final_policy ranks)
            raw = suite.score_images(images, list(prompts), list(metadata))
            scores = {name: raw[:, k] for k, name in enumerate(suite.names) if name in kinds}
            scores["combined"] = (raw * suite.weights.to(raw)).sum(dim=1)
            return scores
    return ProbeMonitor(probe_set(items, m.samples_per_prompt, gen.latent_shape, m.seed), evaluators, kinds,
                        cfg.sampling, m.every, cfg.eval.batch_size, autocast_dtype, workers=cfg.train.rollout_workers,
                        reward_scorer=scorer)
