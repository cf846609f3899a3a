"""The RL loop. One epoch = draw prompts → rollout (policy + ACE) → rewards with RLCF → advantages →
PPO-clip updates → log / sample grid / checkpoint. Each stage is a method; the trainer only wires them.

Determinism: every epoch's randomness comes from generators derived from ``(train.seed, epoch, …)``
(prompt draw, rollout step noise per sampling chunk, minibatch plans) and initial noises come from the
reward suite's seed bank, so an epoch's result depends only on the state at its start — which is
exactly what a checkpoint holds. That makes a resumed run bitwise equal to an uninterrupted one on
CPU, and a data-parallel run equal to a single-process run with the same global batch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from pathlib import Path

import torch

from cxrl.config import Config, to_yaml
from cxrl.diffusion.rollout import recompute_log_prob, rollout
from cxrl.eval.grids import save_grid
from cxrl.machine import intra_op_threads, map_batches
from cxrl.messages import warnings_file
from cxrl.rewards import AsyncScorer, RewardOutput, RewardSuite, noise_for
from cxrl.rl import checkpoint as ckpt
from cxrl.rl import trainer_state
from cxrl.rl.anchor import FrozenAnchor
from cxrl.rl.distributed import DistContext
from cxrl.rl.logging import MetricsLogger, plot_reward_curves
from cxrl.rl.monitor import ProbeMonitor
from cxrl.rl.policy import Policy
from cxrl.rl.ppo import kl_to_anchor
from cxrl.rl.precision import autocast
from cxrl.rl.prompts import PromptPool, reward_metadata
from cxrl.rl.seeding import derive_seed, torch_generator
from cxrl.rl.selection import ProbeSelection
from cxrl.rl.update import PPOUpdater
from cxrl.trajectory import AdvantageTracker, TrajectoryStore

log = logging.getLogger(__name__)


class AllRewardsInvalid(ValueError):
    """Every sample of an epoch has a non-finite reward: the run cannot learn anything and stops."""


def concat_reward_outputs(outputs: list) -> RewardOutput:
    """One :class:`~cxrl.rewards.RewardOutput` from per-chunk outputs (in order)."""
    first = outputs[0]
    anchor = None if first.anchor_scores is None else torch.cat([o.anchor_scores for o in outputs])
    return RewardOutput(first.names, *(torch.cat([getattr(o, f) for o in outputs])
                                       for f in ("components", "combined", "valid", "policy_scores")), anchor)


def normalized_combination(components: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor,
                           eps: float = 1e-6) -> torch.Tensor:
    """Σ_k w_k r_k / σ_k over the valid samples (σ_k: component k's std over them), 0 for invalid samples: each
    weight then says how much its reward counts, whatever that reward's scale."""
    scale = components[valid].std(dim=0, unbiased=False) + eps if bool(valid.any()) else torch.ones(components.shape[1])
    combined = (components / scale * weights.to(components)).sum(dim=1)
    return torch.where(valid, combined, torch.zeros_like(combined))


@dataclasses.dataclass
class EpochBatch:
    """This rank's share of one epoch: prompts, metadata, seeds and the filled trajectory store."""

    entries: list[dict]
    seeds: list[int]
    store: object = None
    images: torch.Tensor | None = None
    initial_noise: torch.Tensor | None = None
    embeds: torch.Tensor | None = None          # [P_local, L, D] unique prompts of this rank
    unique_prompts: list[str] | None = None     # those prompts (the update re-encodes them when it trains the encoder)
    sample_seconds: float = 0.0
    score_work_seconds: float = 0.0             # summed over chunks (overlapped or not): the scoring work

    @property
    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.entries]


@dataclasses.dataclass
class TrainerParts:
    """Everything a :class:`Trainer` works with, built from a config by :func:`cxrl.compose.build_trainer`."""

    policy: Policy                  # the generator being trained (``policy.gen``), its trained tensors and ACE
    optimizer: torch.optim.Optimizer
    updater: PPOUpdater
    tracker: AdvantageTracker
    suite: RewardSuite
    anchor: FrozenAnchor
    pool: PromptPool
    logger: MetricsLogger
    unet_lock: threading.RLock      # the policy UNet is shared by the rollout and the anchor sampler
    monitor: ProbeMonitor | None = None   # the reward-hacking monitor (monitor.every > 0 and a reward to watch)


class Trainer:
    def __init__(self, cfg: Config, parts: TrainerParts, dist: DistContext, output_dir: str | Path):
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.out = Path(output_dir)
        self.policy, self.gen = parts.policy, parts.policy.gen
        self.optimizer, self.updater, self.tracker = parts.optimizer, parts.updater, parts.tracker
        self.suite, self.anchor, self.pool, self.logger = parts.suite, parts.anchor, parts.pool, parts.logger
        self._unet_lock = parts.unet_lock
        self.monitor = parts.monitor if dist.is_main else None   # probes are rank 0's: no collective inside
        self.selection = None   # train.final_policy=best_probe: the probes' best policy so far (rank 0)
        if cfg.train.final_policy == "best_probe" and dist.is_main:
            if self.monitor is None or self.monitor.reward_scorer is None:
                log.warning("train.final_policy=best_probe has no probes to choose from (the monitor is off: "
                            "monitor.every=0, or no reward has a held-out evaluator): the run ends with its last policy")
            else:
                self.selection = ProbeSelection()
        self._async_scorer = None
        self.epoch = 0   # the next epoch to run
        self.run_id: str | None = None   # the run this trainer continues (run.json); written into every checkpoint
        self.on_checkpoint = None        # rank 0 calls it with each new checkpoint's path (cxrl train: run.json)

    # -- stages -----------------------------------------------------------------------------------

    def draw_prompts(self, epoch: int) -> tuple[list[dict], list[int], slice]:
        """The global draw (identical on every rank), its seed-bank seeds, and this rank's slice."""
        s = self.cfg.sampling
        entries = self.pool.draw(s.samples_per_epoch // s.group_size, s.group_size, self.cfg.train.seed, epoch)
        seeds = self.suite.seed_bank.seeds_for([e["prompt"] for e in entries])
        return entries, seeds, self.dist.shard(len(entries))

    def collect_rollouts(self, epoch: int, entries: list[dict], seeds: list[int], first_sample: int,
                         on_chunk=None) -> EpochBatch:
        """Sample this rank's trajectories in chunks of ``sampling.batch_size`` into a new store.
        ``on_chunk(batch, begin, end, images)`` is called after each chunk (the overlapped scoring hook)."""
        s = self.cfg.sampling
        batch = EpochBatch(entries=entries, seeds=seeds)
        n = len(entries)
        store = TrajectoryStore(num_samples=n, num_steps=s.num_steps, latent_shape=self.gen.latent_shape,
                                num_rewards=len(self.suite.names), dtype=torch.float32, device=self.device)
        index = {p: i for i, p in enumerate(dict.fromkeys(batch.prompts))}
        unique = list(index)
        ids = torch.tensor([index[p] for p in batch.prompts], dtype=torch.long)
        batch.unique_prompts = unique
        batch.embeds = self.gen.encode_prompts(unique)
        noise = noise_for(seeds, self.gen.latent_shape, device=self.device, dtype=self.gen.dtype)
        batch.initial_noise = noise
        start_time = time.perf_counter()
        bar = self.logger.progress(n, f"epoch {epoch} sampling")
        # side by side (train.rollout_workers): the caller holds the UNet lock for all chunks; the overlapped
        # scorer's hook needs the chunks in order, so it keeps them one at a time
        workers = self.cfg.train.rollout_workers if on_chunk is None else 0
        side_by_side = workers > 1 and self.device.type == "cpu"
        chunk_lock = contextlib.nullcontext() if side_by_side else self._unet_lock

        def sample_chunk(begin: int) -> torch.Tensor:   # writes only its own rows of the store
            end = min(n, begin + s.batch_size)
            # one generator per global chunk: the same step noise whatever the sharding or the order chunks run in
            chunk = (first_sample + begin) // s.batch_size
            gen_rng = torch_generator(derive_seed(self.cfg.train.seed, epoch, chunk, "rollout"), self.device)
            with chunk_lock, autocast(self.anchor.autocast_dtype, self.device.type):
                out = rollout(self.gen, batch.embeds[ids[begin:end].to(batch.embeds.device)], store, begin,
                              ace=self.policy.ace, num_steps=s.num_steps, guidance_scale=s.guidance_scale, eta=s.eta,
                              initial_noise=noise[begin:end], generator=gen_rng)
            if on_chunk is not None:
                on_chunk(batch, begin, end, out.images)
            bar.update(end - begin)
            return out.images

        with self._unet_lock if side_by_side else contextlib.nullcontext():
            images = map_batches(sample_chunk, range(0, n, s.batch_size), workers, self.device.type)
        bar.close()
        store.write_prompt_ids(0, ids)
        batch.store, batch.images = store, torch.cat(images)
        if self.device.type == "cuda":   # the sampling's own stream only: overlapped scoring keeps running
            torch.cuda.current_stream(self.device).synchronize()
        batch.sample_seconds = time.perf_counter() - start_time
        return batch

    def _score_chunk(self, images, prompts, metadata, *, seeds, initial_noise):
        """One rollout chunk's rewards and the seconds they took; the same call inline or on the scoring thread."""
        start = time.perf_counter()
        out = self.suite.score(images, prompts, metadata, seeds=seeds, initial_noise=initial_noise)
        if images.is_cuda:   # on the scoring thread this is its own stream: the work, not the queueing
            torch.cuda.current_stream(images.device).synchronize()
        return out, time.perf_counter() - start

    def _chunk_args(self, batch: EpochBatch, begin: int, end: int, images: torch.Tensor):
        metadata = [reward_metadata(e) for e in batch.entries[begin:end]]   # prompt-file columns + labels
        return (images, batch.prompts[begin:end], metadata), {"seeds": batch.seeds[begin:end],
                                                               "initial_noise": batch.initial_noise[begin:end]}

    def score(self, batch: EpochBatch, pending=None):
        """Rewards of the batch, scored per rollout chunk of ``sampling.batch_size`` (so the overlapped and the
        inline path make exactly the same calls), written to the store. ``pending``: the futures of chunks
        already submitted to the scoring thread by :meth:`run_epoch`. Returns (RewardOutput, seconds waited)."""
        start = time.perf_counter()
        if pending is None:
            size = self.cfg.sampling.batch_size
            results = []
            for begin in range(0, len(batch.entries), size):
                end = min(len(batch.entries), begin + size)
                args, kwargs = self._chunk_args(batch, begin, end, batch.images[begin:end])
                results.append(self._score_chunk(*args, **kwargs))
        else:
            results = [f.result() for f in pending]
        out = concat_reward_outputs([r for r, _ in results])
        batch.score_work_seconds = sum(seconds for _, seconds in results)
        batch.store.write_rewards(0, out.components.to(torch.float32))
        return out, time.perf_counter() - start

    def _scorer(self):
        if self._async_scorer is None:
            self._async_scorer = AsyncScorer(self._score_chunk, device=self.device)
        return self._async_scorer

    def close(self) -> None:
        """Stop the scoring thread (if rewards.overlap started one); the trainer stays usable."""
        if self._async_scorer is not None:
            self._async_scorer.close()
            self._async_scorer = None

    def advantages(self, global_entries: list[dict], local: slice, reward_out) -> tuple[torch.Tensor, dict]:
        """Gather rewards from all ranks, compute advantages on the global set, keep this rank's slice."""
        combined = self.dist.all_gather_cat(reward_out.combined.float().cpu())
        components = self.dist.all_gather_cat(reward_out.components.float().cpu())
        valid = self.dist.all_gather_cat(reward_out.valid.to(torch.uint8).cpu()).bool()
        if not bool(valid.any()):
            raise AllRewardsInvalid(self._invalid_message(global_entries[local], reward_out, len(valid)))
        invalid_fraction = float((~valid).float().mean())
        if invalid_fraction >= 0.5 and self.dist.is_main:
            log.warning("%d of %d samples of this epoch have a non-finite reward and do not move the policy",
                        int((~valid).sum()), len(valid))
        if self.cfg.train.reward_normalization == "components":
            combined = normalized_combination(components, self.suite.weights, valid)
        adv = self.tracker.compute([e["prompt"] for e in global_entries], combined)
        adv = torch.where(valid, adv, torch.zeros_like(adv))   # invalid samples do not move the policy
        stats = {"reward/invalid_fraction": invalid_fraction,
                 "reward/combined/mean": combined.mean(), "reward/combined/std": combined.std(unbiased=False),
                 "advantage/mean": adv.mean(), "advantage/std": adv.std(unbiased=False),
                 "advantage/abs_max": adv.abs().max(), "reward/invalid_samples": int((~valid).sum())}
        for k, name in enumerate(self.suite.names):
            stats[f"reward/{name}/mean"] = components[:, k].mean()
            stats[f"reward/{name}/std"] = components[:, k].std(unbiased=False)
        return adv[local], stats

    def _invalid_message(self, entries: list[dict], reward_out, total: int) -> str:
        bad = self.suite.nonfinite(reward_out)
        per_reward = [f"'{name}' on {int(bad[:, k].sum())}" for k, name in enumerate(self.suite.names) if bad[:, k].any()]
        example = entries[int(bad.any(dim=1).nonzero()[0])]["prompt"][:80] if bad.any() else "?"
        return (f"every one of the {total} samples of this epoch has a non-finite reward (reward {', '.join(per_reward)} "
                f"sample(s); e.g. prompt {example!r}): there is nothing to train on, so the run stops without "
                "saving a model; fix the reward (strict: true in its entry fails at the first bad value)")

    def update(self, epoch: int, batch: EpochBatch):
        s, ace = self.cfg.sampling, self.policy.ace

        trains_text = self.policy.trains_text_encoder
        if trains_text:   # the anchor's side of the KL sees its own frozen encoder's embeddings
            anchor_gen = self.policy.anchor_generator()
            anchor_embeds, anchor_negative = anchor_gen.encode_prompts(batch.unique_prompts), anchor_gen.empty_embeds()

        def log_prob_fn(mb):
            ids = mb.prompt_ids.to(batch.embeds.device)
            negative = None
            if trains_text:   # through the encoder, so that its weights get a gradient (the empty prompt's too)
                embeds = self.gen.encode_prompts(batch.unique_prompts, with_grad=True)[ids]
                negative = self.gen.encode_prompts([""], with_grad=True)
            else:
                embeds = batch.embeds[ids]
            kw = dict(negative_embeds=negative, guidance_scale=s.guidance_scale, eta=s.eta, num_steps=s.num_steps)
            if self.cfg.train.kl_beta <= 0:
                return recompute_log_prob(self.gen, mb.x_t, mb.x_prev, mb.timesteps, embeds, ace=ace, **kw), None
            details = recompute_log_prob(self.gen, mb.x_t, mb.x_prev, mb.timesteps, embeds, ace=ace,
                                         return_details=True, **kw)
            if trains_text:
                anchor = self.anchor.log_prob_details(mb.x_t, mb.x_prev, mb.timesteps, anchor_embeds[ids], anchor_negative)
            else:
                anchor = self.anchor.log_prob_details(mb.x_t, mb.x_prev, mb.timesteps, embeds)
            std = details.std.view(-1, *([1] * (details.mean.dim() - 1)))
            return details.log_prob, kl_to_anchor(details.mean.float(), anchor.mean.float(), std.float())

        self.gen.unet.train()
        try:
            seed = derive_seed(self.cfg.train.seed, epoch, self.dist.rank, "plan")
            return self.updater.run(batch.store, log_prob_fn, seed, lambda idx: [batch.prompts[i][:80] for i in idx])
        finally:
            self.gen.unet.eval()

    # -- one epoch and the run --------------------------------------------------------------------

    def warnings_log(self):
        """While it is open, rank 0 appends cxrl's warnings to ``<output>/warnings.log`` (epochs and resumes
        open it, so a run's warnings are on disk however the trainer is driven)."""
        return warnings_file(self.out / "warnings.log") if self.dist.is_main else contextlib.nullcontext()

    def run_epoch(self, epoch: int) -> dict:
        with self.warnings_log():
            return self._run_epoch(epoch)

    def policy_weights(self):
        """The weights the run would end with now: the EMA of the trained ones with ``train.ema_decay`` > 0 (in
        the parameters while the block runs), else the trained ones."""
        ema = self.updater.ema
        return contextlib.nullcontext() if ema is None else ema.applied()

    def _probe(self, epochs_trained: int) -> None:
        if self.monitor is not None:
            self.gen.unet.eval()
            # the last epoch is probed whatever monitor.every says: best_probe compares against the policy the run
            # ends with, not an earlier one
            last_epoch = epochs_trained == self.cfg.train.epochs
            with intra_op_threads(self.cfg.train.rollout_threads), self.policy_weights():
                probe = self.monitor.step(epochs_trained, self.gen, self.policy.ace, last_epoch=last_epoch)
                if probe and self.selection is not None and epochs_trained > 0:   # the weights just probed
                    combined = torch.tensor(self.monitor.last["scores"]["combined/reward"], dtype=torch.float64)
                    self.selection.observe(epochs_trained, combined, self.policy.named_trainable())
            self.logger.log_probe(epochs_trained, probe)

    def _run_epoch(self, epoch: int) -> dict:
        d = self.dist
        if epoch == 0:
            self._probe(0)   # the baseline every later probe is compared with
        with d.stage("draw prompts"):
            entries, seeds, local = self.draw_prompts(epoch)
        epoch_start = time.perf_counter()
        pending, on_chunk = None, None
        if self.cfg.rewards.overlap:   # score chunk k on the scoring thread while chunk k+1 is sampled
            pending, scorer = [], self._scorer()

            def on_chunk(batch, begin, end, images):
                args, kwargs = self._chunk_args(batch, begin, end, images)
                pending.append(scorer.submit(*args, **kwargs))
        # forward passes only (train.rollout_threads); the update below keeps train.torch_threads
        with intra_op_threads(self.cfg.train.rollout_threads):
            with d.stage("rollout"):
                batch = self.collect_rollouts(epoch, entries[local], seeds[local], local.start, on_chunk=on_chunk)
            with d.stage("rewards"):
                reward_out, score_seconds = self.score(batch, pending)
        adv, stats = self.advantages(entries, local, reward_out)
        batch.store.write_advantages(0, adv.to(batch.store.advantages.device))
        with d.stage("update"):
            result = self.update(epoch, batch)
        n = len(batch.entries)
        metrics = {**stats, **result.metrics(), "lr": self.optimizer.param_groups[0]["lr"],
                   "throughput/sample_images_per_s": n / max(batch.sample_seconds, 1e-9),
                   "throughput/score_images_per_s": n / max(batch.score_work_seconds, 1e-9),
                   # wall-clock seconds per stage (score_wait: what scoring added after sampling ended)
                   "throughput/sample_seconds": batch.sample_seconds, "throughput/score_seconds": batch.score_work_seconds,
                   "throughput/score_wait_seconds": score_seconds, "throughput/update_seconds": result.seconds,
                   "throughput/epoch_seconds": time.perf_counter() - epoch_start,
                   "anchor/images_generated": self.suite.anchor_images_generated}
        if self.suite.cache is not None:
            metrics.update({f"anchor_cache/{k}": v for k, v in self.suite.cache.stats().items()})
        if result.first_ratios:
            metrics["train/first_minibatch_ratio"] = result.first_ratios[0]
        self.logger.log(epoch, metrics)
        if self.monitor is not None:
            self.monitor.record_training(metrics)
            self._probe(epoch + 1)
        every = self.cfg.log.sample_every
        if every and self.dist.is_main and (epoch + 1) % every == 0:
            k = min(self.cfg.log.sample_count, n)
            save_grid(batch.images[:k], batch.prompts[:k], self.out / f"samples_epoch{epoch:04d}.png")
        return metrics

    def fit(self) -> list[dict]:
        """Run the remaining epochs (checkpointing as configured); rank 0 plots the reward curves at the end."""
        history = []
        total = self.cfg.train.epochs
        bar = self.logger.progress(total, "epochs")
        bar.update(self.epoch)
        while self.epoch < total:
            metrics = self.run_epoch(self.epoch)
            history.append(metrics)
            self.epoch += 1
            if self.epoch % self.cfg.checkpoint.every == 0 or self.epoch == total:
                self.save_checkpoint()
            bar.set_postfix(reward=f"{float(metrics['reward/combined/mean']):.4g}")
            bar.update(1)
        bar.close()
        self.close()
        self.finish_policy()
        if self.dist.is_main:
            self.suite.flush()
            try:   # a picture of the metrics: never a reason to lose the trained model
                plot_reward_curves(self.logger.path, self.out / "reward_curves.png", self.cfg.monitor.smoothing)
            except (ValueError, OSError) as err:
                log.warning("reward curves not drawn: %s", err)
        self.logger.close()
        return history

    def finish_policy(self) -> None:
        """Put the policy the run ends with into the parameters (what ``final/`` saves and the evaluation samples):
        the EMA of the trained weights when ``train.ema_decay`` > 0, then, with ``train.final_policy=best_probe``,
        the probes' best when it beats that. The checkpoints keep the trained weights, so a resume with more
        epochs continues from them."""
        ema = self.updater.ema
        if ema is not None:
            ema.copy_to_params()
            if self.dist.is_main:
                log.info("final policy: the EMA of the trained weights (train.ema_decay=%g)", ema.decay)
        if self.selection is not None:
            self.apply_final_policy()

    def apply_final_policy(self) -> int:
        """train.final_policy=best_probe: switch to the best probe's weights when they beat the last policy beyond
        the noise (:class:`~cxrl.rl.selection.ProbeSelection`); returns the epochs the final policy was trained for."""
        chosen, why = self.selection.choice()
        epochs = self.epoch
        if chosen is not None:
            named = self.policy.named_trainable()
            with torch.no_grad():
                for k, p in named.items():
                    p.copy_(chosen["weights"][k].to(p.device, p.dtype))
            epochs = chosen["epochs"]
        log.info("final policy (train.final_policy=best_probe): %s", why if chosen is None else
                 f"the policy after {epochs} of {self.epoch} epochs — {why}")
        record = {"epochs_trained": epochs, "epochs_run": self.epoch, "selected_earlier_probe": chosen is not None,
                  "weights": "trained" if self.updater.ema is None else f"ema (decay {self.updater.ema.decay:g})",
                  "why": why}
        (self.out / "final_policy.json").write_text(json.dumps(record, indent=1) + "\n")
        return epochs

    # -- checkpoint -------------------------------------------------------------------------------

    def state_groups(self) -> dict:
        """Everything an epoch's result depends on, as a checkpoint stores it (:mod:`cxrl.rl.trainer_state`)."""
        return trainer_state.state_groups(self)

    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes; every rank waits for it, so no rank races ahead of a checkpoint."""
        path = None
        with self.dist.stage("checkpoint"):
            if self.dist.is_main:
                self.suite.flush()   # the cache file the checkpoint points to holds every entry so far
                root = self.out / "checkpoints"
                path = ckpt.save_checkpoint(root, self.epoch, self.state_groups(), {"config.yaml": to_yaml(self.cfg)})
                ckpt.prune_checkpoints(root, self.cfg.checkpoint.keep)
                if self.on_checkpoint is not None:
                    self.on_checkpoint(path)
        self.dist.barrier()
        return path

    def load_state_groups(self, groups: dict) -> None:
        trainer_state.load_state_groups(self, groups)

    def resume(self, run_dir: str | Path) -> bool:
        """Continue from the newest complete checkpoint under ``run_dir``; False if there is none (the run starts
        over at epoch 0). Either way ``metrics.jsonl`` keeps only the epochs before the one that runs next."""
        with self.warnings_log():
            path = ckpt.latest_checkpoint(Path(run_dir) / "checkpoints", quiet=not self.dist.is_main)
        if path is None:
            self.logger.truncate_after(-2)   # everything: epoch 0 runs again, the monitor's baseline (-1) too
            return False
        _, groups = ckpt.load_checkpoint(path)
        saved_run = groups["trainer"].get("run_id")
        if saved_run is not None and self.run_id is not None and saved_run != self.run_id:
            raise ValueError(f"checkpoint {path} belongs to run {saved_run}, but {Path(run_dir) / 'run.json'} records "
                             f"run {self.run_id}: the directory mixes two runs; resume from a directory holding one")
        self.run_id = self.run_id or saved_run
        self.load_state_groups(groups)
        self.logger.truncate_after(self.epoch - 1)
        if self.dist.is_main:
            log.info("resumed from %s (next epoch %d)", path, self.epoch)
        return True

