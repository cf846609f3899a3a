"""Seeds, derived per-epoch generators and the full RNG snapshot a checkpoint stores.

Per-epoch randomness (prompt draws, rollout noise, minibatch plans) comes from generators derived
from ``(seed, epoch, rank, purpose)``, so a resumed run draws exactly what the uninterrupted one did.
The process-global RNGs (python, numpy, torch, CUDA) are still captured and restored so that any
library code drawing from them also replays.
"""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

PURPOSES = ("prompts", "rollout", "plan", "grid")


def derive_seed(seed: int, epoch: int, rank: int, purpose: str) -> int:
    """A 63-bit seed that is stable across processes and Python versions (no ``hash()``)."""
    if purpose not in PURPOSES:
        raise ValueError(f"derive_seed: unknown purpose '{purpose}' (expected one of {PURPOSES})")
    digest = hashlib.sha256(f"cxrl:{seed}:{epoch}:{rank}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting before the first matmul to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode would also fill every fresh torch.empty with NaN (integers with their max),
        # on every device: a memset per allocation that costs bandwidth and time, for memory that correct
        # code always overwrites before reading. The NaN fill is a debugging aid, not determinism.
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, json_state)``: torch/CUDA states as uint8 tensors, python/numpy as JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    py_version, py_internal, py_gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_state = {
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    return tensors, json_state


def restore_rng_state(tensors: dict[str, torch.Tensor], json_state: dict) -> None:
    if "torch" not in tensors or "python" not in json_state or "numpy" not in json_state:
        raise ValueError("RNG state is incomplete: expected torch, python and numpy entries")
    torch.set_rng_state(tensors["torch"].to(torch.uint8).cpu())
    cuda_states = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda_states[: torch.cuda.device_count()]])
    py = json_state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npst = json_state["numpy"]
    np.random.set_state((npst["kind"], np.asarray(npst["keys"], dtype=np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
