"""A whole RL run from its configuration: the parts of a :class:`~cxrl.rl.trainer.Trainer`, built in one order
(the order fixes how much of the global RNG each part draws, and with it a run's exact numbers)."""
from __future__ import annotations

import threading
from pathlib import Path

from cxrl.compose.models import build_generator, build_optimizer, build_policy, resolve_asset
from cxrl.compose.monitor import build_monitor
from cxrl.compose.rewards import build_reward_suite
from cxrl.compose.sources import prompt_pool
from cxrl.config import Config
from cxrl.config.sections import GROUP_ADVANTAGES
from cxrl.hashing import generator_fingerprint
from cxrl.rl.anchor import FrozenAnchor
from cxrl.rl.distributed import DistContext
from cxrl.rl.logging import MetricsLogger
from cxrl.rl.precision import autocast_dtype
from cxrl.rl.prompts import PromptPool
from cxrl.rl.seeding import seed_everything
from cxrl.rl.trainer import Trainer, TrainerParts
from cxrl.rl.update import EMA, PPOUpdater
from cxrl.trajectory import AdvantageTracker


def anchor_cache_path(cfg: Config, out: Path, dist: DistContext) -> Path:
    """``rewards.anchor_cache`` or ``<out>/anchor_cache.json``; one file per rank under torchrun, so ranks never
    overwrite each other's entries."""
    path = Path(cfg.rewards.anchor_cache) if cfg.rewards.anchor_cache else out / "anchor_cache.json"
    return path.with_name(f"{path.stem}.rank{dist.rank}{path.suffix}") if dist.enabled else path


def build_trainer(cfg: Config, pool: PromptPool | None = None, dist: DistContext | None = None,
                  output_dir: str | Path | None = None, generator=None) -> Trainer:
    """The trainer of ``cfg``: prompts (``pool``, default: the ``data`` section's), generator (``generator``, an
    already loaded :class:`~cxrl.diffusion.generator.Generator`, default: ``model.path``; its UNet gets the LoRA
    adapters or is made trainable here), policy, optimizer, PPO updater, advantage tracker, frozen anchor and
    reward suite, writing to ``output_dir`` (default ``log.output_dir``)."""
    dist = dist or DistContext()
    out = Path(output_dir or cfg.log.output_dir)
    if generator is None and cfg.model.path != "tiny":   # fail before the slow steps when the generator is missing
        resolve_asset(cfg.model.path)
    pool = pool if pool is not None else prompt_pool(cfg.data)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    logger = MetricsLogger(out, enabled=dist.is_main, tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
    gen = generator if generator is not None else build_generator(cfg.model, dist.device, workdir=out / "work" / f"rank{dist.rank}")
    anchor_hash = generator_fingerprint(gen)   # before the policy changes the UNet
    policy = build_policy(gen, cfg.model, cfg.train.seed)
    optimizer = build_optimizer(policy, cfg.train)
    t = cfg.train
    precision = autocast_dtype(t.mixed_precision, dist.device)
    updater = PPOUpdater(policy.params, optimizer, t, precision, dist=dist,
                         ema=EMA(policy.params, t.ema_decay) if t.ema_decay > 0 else None,
                         samples_per_rank=cfg.sampling.samples_per_epoch // dist.world_size)
    tracker = AdvantageTracker(mode=t.advantage, window=t.advantage_window, min_count=t.advantage_min_count,
                               group_size=cfg.sampling.group_size if t.advantage in GROUP_ADVANTAGES else None, clip=t.adv_clip)
    unet_lock = threading.RLock()
    anchor = FrozenAnchor(policy, cfg.sampling, dist.device, precision, unet_lock)
    suite = build_reward_suite(cfg.rewards, cfg.sampling, dist.device, anchor_sampler=anchor.images, anchor_hash=anchor_hash,
                               latent_shape=gen.latent_shape, seed=cfg.rewards.seed_bank_seed, cache_path=anchor_cache_path(cfg, out, dist))
    monitor = build_monitor(cfg, gen, dist.device, precision, suite) if dist.is_main else None
    parts = TrainerParts(policy=policy, optimizer=optimizer, updater=updater, tracker=tracker, suite=suite, anchor=anchor,
                         pool=pool, logger=logger, unet_lock=unet_lock, monitor=monitor)
    return Trainer(cfg, parts, dist, out)
