"""RL fine-tuning: PPO-clip (DDPO-IS) loss, the trainer loop, checkpoint/resume, data parallelism.

Stages are usable alone: :func:`ppo_clip_loss` on any log-probs, :class:`PPOUpdater` over any
``TrajectoryStore``, :mod:`cxrl.rl.checkpoint` for any nested state, :class:`Trainer` wiring parts that
:func:`cxrl.compose.build_trainer` builds from a config.
"""
from cxrl.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cxrl.rl.distributed import DistContext, RemoteRankError, init_distributed
from cxrl.rl.policy import Policy
from cxrl.rl.ppo import approx_kl, clip_fraction, kl_to_anchor, ppo_clip_loss
from cxrl.rl.prompts import PromptPool
from cxrl.rl.update import EMA, NonFiniteAbort, PPOUpdater, lr_schedule

__all__ = ["DistContext", "EMA", "NonFiniteAbort", "PPOUpdater", "Policy", "PromptPool", "RemoteRankError",
           "approx_kl", "clip_fraction", "init_distributed", "kl_to_anchor", "latest_checkpoint", "load_checkpoint",
           "lr_schedule", "ppo_clip_loss", "save_checkpoint"]
