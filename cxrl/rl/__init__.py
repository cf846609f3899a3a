"""RL fine-tuning: PPO-clip (DDPO-IS) loss, the trainer loop, checkpoint/resume, data parallelism.

Stages are usable alone: :func:`ppo_clip_loss` on any log-probs, :class:`PPOUpdater` over any
``TrajectoryStore``, :mod:`cxrl.rl.checkpoint` for any nested state, :class:`Trainer` wiring them.
"""
from cxrl.rl.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cxrl.rl.distributed import DistContext, RemoteRankError, init_distributed
from cxrl.rl.ppo import approx_kl, clip_fraction, kl_to_anchor, ppo_clip_loss
from cxrl.rl.prompts import PromptPool, load_prompt_pool, read_prompt_file
from cxrl.rl.update import EMA, NonFiniteAbort, PPOUpdater, UpdateSettings

__all__ = ["DistContext", "EMA", "NonFiniteAbort", "PPOUpdater", "PromptPool", "RemoteRankError", "Trainer",
           "UpdateSettings", "approx_kl", "clip_fraction", "init_distributed", "kl_to_anchor", "latest_checkpoint",
           "load_checkpoint", "load_prompt_pool", "ppo_clip_loss", "read_prompt_file", "save_checkpoint"]


def __getattr__(name):
    # The trainer pulls in diffusion + rewards; import it only when asked for.
    if name == "Trainer":
        from cxrl.rl.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'cxrl.rl' has no attribute {name!r}")
