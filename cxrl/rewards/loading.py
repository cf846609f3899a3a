"""Load reward models by name: shipped defaults, user directories, other backends, config entries.

``load_reward_model("posture" | "diagnostic" | "consistency", path=None)`` with no path loads the weights
shipped in ``cxrl/assets/rewards/<name>/`` (trained on the phantom world, see docs/rewards.md);
``load_evaluator(name)`` loads the held-out evaluator set from ``cxrl/assets/evaluators/<name>/`` — the
models evaluation uses, never the ones the RL optimised. A list of paths loads an ensemble: the mean of the
members' scores (``cxrl.rewards.ensemble``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from cxrl.rewards.base import RewardModel
from cxrl.rewards.consistency import ConsistencyReward
from cxrl.rewards.diagnostic import DiagnosticReward
from cxrl.rewards.ensemble import EnsembleReward
from cxrl.rewards.posture import PostureReward
from cxrl.rewards.xrv_backend import XRVClassifier

ASSETS = Path(__file__).resolve().parent.parent / "assets"
REWARDS_DIR = ASSETS / "rewards"
EVALUATORS_DIR = ASSETS / "evaluators"
BUILTIN = ("posture", "diagnostic", "consistency")
BACKENDS = {"posture": ("own",), "diagnostic": ("own", "xrv"), "consistency": ("own", "clip")}
REWARD_CLASSES = {"posture": PostureReward, "diagnostic": DiagnosticReward, "consistency": ConsistencyReward}


def shipped_path(name: str, evaluator: bool = False) -> Path:
    if name not in BUILTIN:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {BUILTIN}")
    path = (EVALUATORS_DIR if evaluator else REWARDS_DIR) / name
    if not (path / "config.json").is_file():
        which = "evaluator" if evaluator else "reward"
        raise FileNotFoundError(
            f"shipped {which} model '{name}' not found at {path}; it is produced by "
            f"`cxrl train-reward {name} --data phantom --out {path}` (exact commands in docs/rewards.md)"
        )
    return path


def load_reward_model(name: str, path=None, *, backend: str = "own", device="cpu", dtype: torch.dtype | None = None,
                      evaluator: bool = False, **kwargs) -> RewardModel:
    """A built-in reward model, frozen, on ``device``.

    backend "own": the project's model from ``path`` (default: the shipped weights).
    diagnostic backend "xrv": torchxrayvision's own architecture with weights by name (``weights=``, default
    densenet121-res224-all) from a local directory (``path`` or ``cache_dir=``; default torchxrayvision's cache;
    nothing is downloaded; see xrv_backend).
    consistency backend "clip": a transformers CLIP-style model directory ``path`` (``tokenizer=`` optional).
    Extra kwargs go to the reward (e.g. posture ``weights=``, ``name=``, ``comparative=``).
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {BUILTIN} (custom rewards: load_custom_reward)")
    if isinstance(path, (list, tuple)):   # several models of this kind: the mean of their scores (rewards/ensemble.py)
        member_kwargs = {k: v for k, v in kwargs.items() if k not in ("name", "comparative")}
        members = [load_reward_model(name, p, backend=backend, device=device, dtype=dtype, evaluator=evaluator,
                                     **member_kwargs) for p in path]
        return EnsembleReward(members, name=kwargs.get("name"), comparative=kwargs.get("comparative"))
    if backend not in BACKENDS[name]:
        raise ValueError(f"reward '{name}': unknown backend {backend!r}; choose from {BACKENDS[name]}")
    if name == "diagnostic" and backend == "xrv":
        xrv_args = {k: kwargs.pop(k) for k in ("weights", "cache_dir") if k in kwargs}
        if path is not None:   # a config entry's path: the local directory holding torchxrayvision's weight file
            if xrv_args.get("cache_dir") is not None and Path(xrv_args["cache_dir"]) != Path(path):
                raise ValueError(f"reward 'diagnostic' backend 'xrv': path {path} and cache_dir {xrv_args['cache_dir']} "
                                 "both name the weights directory; give one")
            xrv_args["cache_dir"] = path
        model = DiagnosticReward(XRVClassifier.from_weights(**xrv_args), **kwargs)
    elif name == "consistency" and backend == "clip":
        if path is None:
            raise ValueError("reward 'consistency' backend 'clip' needs path= a local transformers CLIP model directory")
        model = ConsistencyReward.from_clip_dir(path, **kwargs)
    else:
        path = Path(path) if path is not None else shipped_path(name, evaluator)
        model = REWARD_CLASSES[name].load(path, **kwargs)
    return model.to(device, dtype) if dtype is not None else model.to(device)


def load_evaluator(name: str, path=None, **kwargs) -> RewardModel:
    """A held-out evaluator model (default: ``cxrl/assets/evaluators/<name>/``)."""
    return load_reward_model(name, path, evaluator=True, **kwargs)
