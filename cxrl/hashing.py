"""Content hashes that key cached results: a cached anchor score or evaluation is used only when everything
it depends on hashes the same, so a model retrained or edited in place is never served stale numbers."""
from __future__ import annotations

import hashlib
import json
from typing import Mapping

import torch


def state_dict_hash(module_or_state_dict, chunk_bytes: int = 1 << 24) -> str:
    """sha256 over a state dict (sorted names, dtype, shape, raw bytes), streamed in chunks."""
    state = module_or_state_dict.state_dict() if hasattr(module_or_state_dict, "state_dict") else module_or_state_dict
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict_hash: expected a module or a state dict, got {type(state).__name__}")
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        for start in range(0, flat.numel(), chunk_bytes):
            h.update(flat[start:start + chunk_bytes].numpy().tobytes())
    return h.hexdigest()


def generator_fingerprint(gen, ace=None) -> str:
    """sha256 of everything a generator's samples depend on: the weights of the UNet, text encoder and VAE, the
    tokenizer (vocabulary and merges), the scheduler's configuration, and the ACE tokens when given."""
    h = hashlib.sha256()
    for part in (gen.unet, gen.text_encoder, gen.vae, ace):
        h.update((state_dict_hash(part) if part is not None else "none").encode())
    backend = getattr(gen.tokenizer, "backend_tokenizer", None)
    if backend is not None:
        tokenizer = json.loads(backend.to_str())
        for state in ("truncation", "padding"):   # set by each call's arguments, not part of what the model is
            tokenizer.pop(state, None)
    else:
        tokenizer = sorted(gen.tokenizer.get_vocab().items())
    scheduler = {k: v for k, v in dict(gen.scheduler.config).items() if not k.startswith("_")}
    h.update(json.dumps([type(gen.scheduler).__name__, scheduler, tokenizer], sort_keys=True, default=str).encode())
    return h.hexdigest()
