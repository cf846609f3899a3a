"""Helpers for RL tests that run ``python -m cxrl`` (imported by name: a module called ``conftest``
is ambiguous when several test folders each have one)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS_RL = Path(__file__).resolve().parent


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", TQDM_DISABLE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_RL), str(REPO), env.get("PYTHONPATH", "")])
    return env


def tiny_overrides(gen_dir, out_dir, epochs=2, extra=()):
    """A run small enough for a CPU test: 4 images/epoch, 3 DDIM steps, two cheap custom rewards."""
    return [
        f"model.path={gen_dir}", "model.device=cpu", "model.finetune=lora", "model.lora_rank=2", "model.ace_tokens=2",
        "sampling.num_steps=3", "sampling.batch_size=2", "sampling.samples_per_epoch=4", "sampling.group_size=2",
        "sampling.guidance_scale=2.0",
        "rewards.components=[{name: bright, callable: 'tiny_rewards:brightness'}, "
        "{name: contrast, callable: 'tiny_rewards:contrast', comparative: false, weight: 0.5}]",
        f"train.epochs={epochs}", "train.batch_size=1", "train.gradient_accumulation=2", "train.advantage=group",
        "train.timestep_fraction=0.67", "train.learning_rate=1e-3", "train.clip_range=0.2",
        f"log.output_dir={out_dir}", "log.progress=false", "log.sample_every=1", "log.sample_count=4",
        "checkpoint.every=1", "checkpoint.keep=2", "eval.enabled=false", *extra,
    ]
