"""The one precision rule of a run: rollouts (policy and anchor) and the PPO recompute run under the same
autocast, so the stored and the recomputed log-probs come from the same arithmetic."""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512-BF16 or AMX); elsewhere it emulates it, slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``bf16`` and for ``auto`` on CUDA; None (full precision) for ``no`` and for ``auto`` on the CPU.

    On the CPU bf16 is opt-in: the demo's epochs took 5.6 s instead of 9.2 s on an AVX-512-BF16 CPU (docs/demo.md,
    "Session 18"), but a CPU without native bf16 emulates it, and the shipped recipe's seed tables are fp32."""
    if mixed_precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        log.warning("train.mixed_precision=bf16 on a CPU without native bf16 (AVX-512-BF16 or AMX): oneDNN emulates "
                    "it, which is usually slower than full precision; 'no' (or 'auto') runs in fp32")
    if mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(dtype: torch.dtype | None, device_type: str):
    """``torch.autocast(device_type, dtype)``, or nothing when ``dtype`` is None. ``device_type`` is where the
    autocast region's tensors live ('cuda' or 'cpu'): an autocast of the other type would leave them in fp32."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
