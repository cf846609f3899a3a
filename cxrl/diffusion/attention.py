"""Attention processor for diffusers UNets that routes attention through a chosen backend.

``set_attention_backend(unet, "auto" | "triton" | "xformers" | "sdpa")`` installs one
:class:`CXRLAttnProcessor` on every diffusers ``Attention`` module. The processor does what diffusers'
``AttnProcessor2_0`` does (spatial norm, 4-D reshape, group norm, cross norm, q/k norms, output
projection, residual, ``rescale_output_factor``, attention mask) and calls ``attn.to_q`` etc. as
modules, so LoRA-wrapped projections (peft) keep working; the key length is whatever the context has
(77 text tokens, or 77 + n with ACE tokens).

Backends:
  * ``triton``   -- ``cxrl.kernels.flash_attention`` (CUDA, or CPU under ``TRITON_INTERPRET=1``)
  * ``xformers`` -- only when it imports *and* runs on the device (``cxrl._backend.xformers_attention``)
  * ``sdpa``     -- ``torch.nn.functional.scaled_dot_product_attention``
  * ``auto``     -- ``sdpa`` on CPU; on CUDA one decision per shape family (self/cross, bucketed
                    lengths, head dim, dtype; not batch size, not train/infer), timed once and kept
                    on disk per device, so sampling and the PPO recompute run the same arithmetic
                    and the UNet is never slower than with SDPA alone (:mod:`.attention_auto`).
Every choice is recorded with ``cxrl._backend.record_choice("attention[<shape family>]", ...)`` and shows
in ``cxrl.backend_report()``. A masked call goes to SDPA (the Triton and xformers paths here take no
mask); that too is recorded, never silent.
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.nn.functional as F

from cxrl import _backend
from cxrl.diffusion.attention_auto import AutoAttention, Timer, shape_family, time_on_cuda
from cxrl.kernels.flash_attention import MAX_HEAD_DIM, SUPPORTED_DTYPES, flash_attention, uses_triton

BACKENDS = ("auto", "triton", "xformers", "sdpa")

_recorded: dict[str, str] = {}  # shape family -> the choice last written to the backend report
# (backend asked, cross, shapes, dtype, device, masked) -> the backend resolved for that call. A UNet makes the same
# few calls every step; on a GPU the family key, the locks and the report check cost 8-30 us a call (auto vs SDPA in
# the GPU suite's attention rows), a tenth of a small kernel. Cleared with the decider (configure_auto).
_resolved: dict[tuple, str] = {}
_lock = threading.Lock()


# ---------------------------------------------------------------------------------------------
# the backends, all on q [B, H, N, D], k/v [B, H, Nk, D]
# ---------------------------------------------------------------------------------------------
def _sdpa(q, k, v, scale, attention_mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=scale)


def _triton(q, k, v, scale, attention_mask=None):
    return flash_attention(q, k, v, scale=scale)


def _xformers(q, k, v, scale, attention_mask=None):
    import xformers.ops as xops

    # xformers takes [B, N, H, D]; the transposes are views
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
    return out.transpose(1, 2)


_RUNNERS = {"sdpa": _sdpa, "triton": _triton, "xformers": _xformers}


def backend_unavailable_reason(backend: str, q: torch.Tensor) -> str | None:
    """Why ``backend`` cannot run attention on tensors like ``q``; ``None`` when it can."""
    if backend == "sdpa":
        status = _backend.sdpa_attention()
        return None if status.active else status.reason
    if backend == "xformers":
        status = _backend.xformers_attention()
        if not status.active:
            return status.reason
        if q.device.type != "cuda":
            return f"xformers runs on CUDA only; tensors are on {q.device}"
        if q.dtype not in SUPPORTED_DTYPES:
            return f"xformers path takes float16/bfloat16/float32, got {q.dtype}"
        return None
    if backend == "triton":
        status = _backend.triton_kernels()
        if not status.active:
            return status.reason
        if q.dtype not in SUPPORTED_DTYPES:
            return f"the triton kernel takes float16/bfloat16/float32, got {q.dtype}"
        if q.shape[-1] > MAX_HEAD_DIM:
            return f"the triton kernel takes head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}"
        if not uses_triton(q.device, q.dtype):
            return (f"the triton kernel does not run for {q.dtype} tensors on {q.device} "
                    "(needs CUDA, or CPU with TRITON_INTERPRET=1 and a dtype other than bfloat16)")
        return None
    raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")


def _record_once(key: str, description: str) -> None:
    # the report is written only when a key's choice changes, not on every attention call
    with _lock:
        if _recorded.get(key) == description:
            return
        _recorded[key] = description
    _backend.record_choice(f"attention[{key}]", description)


# ---------------------------------------------------------------------------------------------
# auto: one decision per shape family (attention_auto.py)
# ---------------------------------------------------------------------------------------------
def configure_auto(*, timer: Timer = time_on_cuda, cache_dir: str | Path | None = None,
                   timed_devices: tuple[str, ...] = ("cuda",)) -> AutoAttention:
    """Start ``auto`` afresh (no decisions in memory) with these settings; returns the new decider.

    ``cache_dir`` overrides ``$CXRL_ATTENTION_CACHE_DIR`` / ``~/.cache/cxrl/attention``; ``timer`` and
    ``timed_devices`` exist so that tests can drive the decision on the CPU.
    """
    global AUTO
    _resolved.clear()
    AUTO = AutoAttention(_RUNNERS, backend_unavailable_reason, timer=timer, cache_dir=cache_dir,
                         timed_devices=timed_devices)
    return AUTO


AUTO = configure_auto()


def _resolve(q, k, v, scale, attention_mask, backend: str, cross: bool) -> str:
    """The backend to run for this call; every choice goes to the backend report (once per shape family). Masked
    calls are cached too (always SDPA): ACE masks the unconditional rows' cross-attention, and a compiled UNet
    (cxrl/diffusion/compiled.py) must find every call resolved, with no lock to trace."""
    masked = attention_mask is not None
    fast_key = (backend, cross, q.shape, k.shape, q.dtype, q.device, masked)
    name = _resolved.get(fast_key)
    if name is None:
        name = _resolved[fast_key] = _resolve_slow(q, k, v, scale, attention_mask, backend, cross)
    return name


def _resolve_slow(q, k, v, scale, attention_mask, backend: str, cross: bool) -> str:
    key = shape_family(q, k, cross)
    if attention_mask is not None:
        _record_once(key + " masked", f"sdpa: attention_mask given (requested {backend}); the triton and "
                                      "xformers paths here take no mask")
        return "sdpa"
    if backend != "auto":
        reason = backend_unavailable_reason(backend, q)
        if reason is not None:
            raise RuntimeError(f"attention backend {backend!r} was requested but cannot run: {reason}")
        _record_once(key, f"{backend}: requested explicitly")
        return backend
    decision = AUTO.choose(q, k, v, scale, cross)
    _record_once(key, f"{decision.backend}: {decision.why}")
    return decision.backend


def dispatch_attention(q, k, v, scale: float | None = None, attention_mask: torch.Tensor | None = None,
                       backend: str = "auto", cross: bool | None = None) -> torch.Tensor:
    """Scaled-dot-product attention of ``q [B, H, N, D]`` over ``k, v [B, H, Nk, D]`` via ``backend``.

    ``cross``: whether this is cross-attention (part of ``auto``'s shape family); None infers it from
    the lengths (``Nk != N``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if cross is None:
        cross = k.shape[2] != q.shape[2]
    name = _resolve(q, k, v, scale, attention_mask, backend, cross)
    return _RUNNERS[name](q, k, v, scale, attention_mask)


# ---------------------------------------------------------------------------------------------
# the diffusers processor
# ---------------------------------------------------------------------------------------------
class CXRLAttnProcessor:
    """Drop-in for diffusers' ``AttnProcessor2_0`` whose attention call goes through :func:`dispatch_attention`."""

    def __init__(self, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend

    def __repr__(self) -> str:
        return f"CXRLAttnProcessor(backend={self.backend!r})"

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # [B, C, H, W] feature maps attend over their H*W positions
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        cross = encoder_hidden_states is not None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch_size, key_length, _ = context.shape

        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states  # self-attention sees the group-normed states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        # [B, N, H*D] -> [B, H, N, D] as views; the kernels take the strides as they are
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = dispatch_attention(query, key, value, scale=attn.scale, attention_mask=attention_mask,
                                           backend=self.backend, cross=cross)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)

        hidden_states = attn.to_out[0](hidden_states)  # output projection (LoRA-wrapped or not)
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def set_attention_backend(model: torch.nn.Module, backend: str = "auto") -> int:
    """Install a :class:`CXRLAttnProcessor` on every diffusers ``Attention`` module of ``model``.

    Returns how many modules got it; raises ``ValueError`` for an unknown backend or a model without
    any diffusers attention module. An explicit backend that cannot run raises on the first call.
    """
    from diffusers.models.attention_processor import Attention

    processor = CXRLAttnProcessor(backend)
    count = 0
    for module in model.modules():
        if isinstance(module, Attention):
            module.set_processor(processor)
            count += 1
    if count == 0:
        raise ValueError(f"set_attention_backend: {type(model).__name__} has no diffusers Attention modules")
    return count
