"""The one precision rule of a run: rollouts (policy and anchor) and the PPO recompute run under the same
autocast, so the stored and the recomputed log-probs come from the same arithmetic."""
from __future__ import annotations

import contextlib

import torch


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA for ``auto``/``bf16``, None (full precision) for ``no`` and on the CPU under ``auto``."""
    if mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda"):
        if device.type != "cuda":
            raise ValueError("train.mixed_precision 'bf16' autocast is for CUDA; use 'auto' or 'no' on CPU")
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None):
    """``torch.autocast("cuda", dtype)``, or nothing when ``dtype`` is None."""
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()
