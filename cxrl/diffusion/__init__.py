"""The diffusion policy: generator load/save, tokenizer, ACE, LoRA, DDIM step + log-prob, rollouts.

Names are resolved lazily (module ``__getattr__``), so ``import cxrl.diffusion`` is cheap and each
submodule is only imported — with its diffusers/transformers/triton dependencies — when used.

``cxrl.diffusion.rollout`` is the rollout *function* (the module of the same name is reached with
``from cxrl.diffusion.rollout import ...`` or ``sys.modules``).
"""
from __future__ import annotations

import importlib
import sys
import types

_EXPORTS = {
    # generator.py
    "Generator": "generator", "load_generator": "generator", "save_generator": "generator",
    # tokenizer.py
    "build_clip_tokenizer": "tokenizer",
    # ace.py
    "AdaptiveConditionEmbedding": "ace", "load_ace": "ace", "guided_context": "ace",
    # lora.py
    "apply_lora": "lora", "trainable_parameters": "lora", "lora_state_dict": "lora",
    "load_lora_state_dict": "lora", "merge_lora": "lora", "has_lora": "lora", "save_lora": "lora",
    "load_lora": "lora", "merged_state_dict": "lora",
    # rollout.py
    "rollout": "rollout", "sample_images": "rollout", "recompute_log_prob": "rollout",
    "RolloutOutput": "rollout", "LogProbDetails": "rollout",
    # tiny.py
    "make_tiny_generator": "tiny",
    # roentgen_layout.py
    "make_roentgen_layout_generator": "roentgen_layout",
    # ddim.py
    "ddim_step_with_logprob": "ddim", "DDIMTables": "ddim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'cxrl.diffusion' has no attribute {name!r}")
    module = importlib.import_module(f"cxrl.diffusion.{module_name}")
    for exported, owner in _EXPORTS.items():  # bind all of that module's names: later lookups are plain
        if owner == module_name:
            globals()[exported] = getattr(module, exported)
    return globals()[name]


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # The import system binds every imported submodule as an attribute of its package; for
        # ``rollout`` that would hide the exported function of the same name.
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
