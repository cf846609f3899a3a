"""Compiled UNet calls (``model.compile``): ``torch.compile`` of a UNet's forward, the same work in fewer kernels.

At equal settings an RL epoch is UNet work on both cxrl and TRL's DDPOTrainer (docs/benchmarks.md, "The real
peer": 0.99-1.06x on an H200), so only a faster UNet can make it faster. This wraps the forward of the policy's UNet
(after its LoRA adapters are in place) and of a full fine-tune's frozen anchor copy.

Two things shape it:
- cxrl's attention processor resolves its backend on the first call of each shape (on CUDA ``auto`` may time the
  candidates), under locks that torch.compile cannot trace: traced then, the UNet would break into a graph per
  attention layer and keep that broken graph. So the first call of each input signature runs eagerly and fills the
  processor's per-shape cache; the compiled forward sees only resolved shapes and traces one graph.
- The compiled graph's arithmetic is not the eager one's (fused kernels round differently), and sampling (no
  grad) and the PPO recompute (grad) compile to different graphs: stored and recomputed log-probabilities then
  agree to rounding, not to the bit, and the first minibatch's importance ratio is 1 within ~1e-5, not exactly.
"""
from __future__ import annotations

import os
import shutil
import threading

import torch

COMPILE_MODES = ("off", "default")   # CUDA-graph / max-autotune modes: not offered until measured in training


def _signature(args, kwargs) -> tuple:
    """What the attention processor's cache and the compiled graph's guards depend on: tensor shapes, dtypes and
    devices, and the autocast state the call runs under."""
    parts = []
    for value in (*args, *(kwargs[k] for k in sorted(kwargs))):
        if isinstance(value, torch.Tensor):
            parts.append((tuple(value.shape), value.dtype, value.device.type))
        else:
            parts.append(type(value).__name__)
    autocast = tuple((kind, torch.is_autocast_enabled(kind)) for kind in ("cpu", "cuda"))
    return tuple(parts), autocast


class CompiledForward:
    """A UNet's forward: eager on the first call of each input signature, compiled after it."""

    def __init__(self, eager_forward, backend: str = "inductor"):
        self.eager = eager_forward
        self.compiled = torch.compile(eager_forward, backend=backend, dynamic=False)
        self.seen: set = set()
        self.calls = {"eager": 0, "compiled": 0}
        self._lock = threading.Lock()   # rollout workers call the UNet from two threads on the CPU

    def __call__(self, *args, **kwargs):
        key = _signature(args, kwargs)
        with self._lock:
            first = key not in self.seen
            self.seen.add(key)
            self.calls["eager" if first else "compiled"] += 1
        return (self.eager if first else self.compiled)(*args, **kwargs)


def compile_unet(unet: torch.nn.Module, mode: str, backend: str | None = None) -> CompiledForward | None:
    """Route ``unet``'s forward through :class:`CompiledForward` (module hooks, weights and saving unchanged);
    None for ``mode='off'``. Apply after LoRA adapters are added, so the compiled graph contains them. ``backend``:
    torch.compile's (default ``$CXRL_COMPILE_BACKEND`` or 'inductor'; 'aot_eager' traces without generating code,
    to check a model compiles in seconds)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if mode == "off":
        return None
    if isinstance(unet.forward, CompiledForward):
        raise ValueError("compile_unet: this UNet's forward is compiled already")
    backend = backend or os.environ.get("CXRL_COMPILE_BACKEND") or "inductor"
    device = next(unet.parameters()).device
    if backend == "inductor" and device.type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++")):
        # inductor writes C++ for the CPU; without a compiler the first compiled call fails deep inside torch
        raise RuntimeError("model.compile=default on the CPU needs a C++ compiler (inductor generates C++): install "
                           "g++ (e.g. apt-get install g++) or set model.compile=off")
    wrapped = CompiledForward(unet.forward, backend)
    unet.forward = wrapped   # an instance attribute: nn.Module.__call__ (hooks included) calls it
    return wrapped
