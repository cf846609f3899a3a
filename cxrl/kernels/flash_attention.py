"""Flash attention (non-causal, no mask) in Triton: forward and backward, any query/key length.

Same layout and semantics as ``torch.nn.functional.scaled_dot_product_attention`` for
``q [B, H, N, D]``, ``k, v [B, H, Nk, D]`` -> ``out [B, H, N, D]``, with ``scale`` defaulting to
``1/sqrt(D)``. The N x Nk score matrix never exists in memory: the forward keeps a running row max
and row sum (online softmax) and stores one logsumexp per query row; the backward
(``flash_attention_bwd.py``) recomputes the probabilities block by block from that logsumexp.

Read top to bottom:
  1. torch reference (the spec the tests compare against)
  2. @triton.jit forward kernel
  3. launcher (fixed blocks under TRITON_INTERPRET=1, autotuned configs that fit the device on CUDA)
  4. autograd.Function (its backward calls ``flash_attention_bwd.attention_backward``)
  5. entry point ``flash_attention`` that picks Triton on CUDA (or the interpreter on CPU) and SDPA
     elsewhere.

The head dim is a compile-time constant (any D <= 256): powers of two load unmasked along D; SD-1.5's
40, 80, 160 are padded to the next power of two with a compile-time mask (``flash_attention_common``).
fp16/bf16 inputs accumulate in fp32; fp32 inputs use TF32 dots only when torch allows TF32 matmuls.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .flash_attention_bwd import attention_backward
from .flash_attention_common import (  # noqa: F401  (INTERPRETER_BLOCKS: tests shrink the interpreter's blocks)
    INTERPRETER_BLOCKS,
    MAX_HEAD_DIM,
    autotuned,
    block_d,
    dot_precision,
    interpreting,
    load_tile,
    pick,
    store_tile,
    strides3,
    tile_ptrs,
    tl,
    triton,
)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634


# ----------------------------------------------------------------------------------------------
# 1. torch reference
# ----------------------------------------------------------------------------------------------
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Plain math attention in the inputs' own dtype: softmax(q k^T * scale) v.

    Returns ``(out, lse)`` where ``lse [B, H, N]`` is the natural-log logsumexp of the scaled scores
    (what the Triton forward stores for its backward).
    """
    scale = default_scale(q.shape[-1]) if scale is None else scale
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    lse = torch.logsumexp(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v), lse


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


# ----------------------------------------------------------------------------------------------
# 2. Triton forward kernel (the backward kernels are in flash_attention_bwd.py)
# ----------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_on,
        n_q, n_k, qk_scale_log2,  # softmax scale * log2(e): the kernel works in base 2
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)  # int64: batch * stride can pass 2**31 on big batches
        off_b = tl.program_id(2).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        row_ok = offs_m < n_q
        # padded head-dim columns (D = 40/80/160) load as 0 and add nothing to q.k
        q = load_tile(tile_ptrs(Q, off_b, off_h, stride_qb, stride_qh, stride_qn, offs_m, BLOCK_D),
                      row_ok, HEAD_DIM, BLOCK_D)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # pointer blocks are built once and advanced by one key block per step
        k_ptrs = tile_ptrs(K, off_b, off_h, stride_kb, stride_kh, stride_kn, offs_n, BLOCK_D)
        v_ptrs = tile_ptrs(V, off_b, off_h, stride_vb, stride_vh, stride_vn, offs_n, BLOCK_D)
        for start_n in range(0, n_k, BLOCK_N):
            col_ok = (start_n + offs_n) < n_k
            k = load_tile(k_ptrs, col_ok, HEAD_DIM, BLOCK_D)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
            s = tl.where(col_ok[None, :], s, float("-inf"))
            # every block holds >= 1 real key, so m_new is finite and alpha = 0 on the first block
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = load_tile(v_ptrs, col_ok, HEAD_DIM, BLOCK_D)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn

        acc = acc / l_i[:, None]
        store_tile(tile_ptrs(O, off_b, off_h, stride_ob, stride_oh, stride_on, offs_m, BLOCK_D),
                   acc.to(O.dtype.element_ty), row_ok, HEAD_DIM, BLOCK_D)
        # stored in natural log so it can be checked against torch.logsumexp
        lse_ptrs = LSE + (off_b * tl.num_programs(1) + off_h) * n_q + offs_m
        tl.store(lse_ptrs, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=row_ok)

    _attn_fwd_tuned = autotuned(_attn_fwd_kernel, "fwd")


# ----------------------------------------------------------------------------------------------
# 3. launcher (fixed blocks under TRITON_INTERPRET=1, autotuned configs that fit the device on CUDA)
# ----------------------------------------------------------------------------------------------
def forward_launch_settings(q: torch.Tensor) -> dict:
    """The compile-time constants the forward kernel gets for ``q``: the head dim, its padded tile
    width and the dot precision (tf32 for fp32 only when torch allows it)."""
    D = q.shape[-1]
    return dict(HEAD_DIM=D, BLOCK_D=block_d(D), DOT_PRECISION=dot_precision(q.dtype))


def _forward(q, k, v, scale: float):
    B, H, n_q, _ = q.shape
    n_k = k.shape[2]
    # [B, N, H, D] storage seen as [B, H, N, D]: the attention processor's transpose+reshape back to
    # [B, N, H*D] is then free
    out = torch.empty((B, n_q, H, q.shape[3]), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    kernel, blocks = pick(_attn_fwd_tuned, _attn_fwd_kernel, q.device)
    kernel[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), H, B)](
        q, k, v, out, lse, *strides3(q), *strides3(k), *strides3(v), *strides3(out),
        n_q, n_k, scale * _LOG2E, **forward_launch_settings(q), **blocks,
    )
    return out, lse


def _unit_stride_last(t: torch.Tensor) -> torch.Tensor:
    # the kernels address the head dim with stride 1; every other stride is passed through
    return t if t.stride(-1) == 1 else t.contiguous()


# ----------------------------------------------------------------------------------------------
# 4. autograd.Function
# ----------------------------------------------------------------------------------------------
class FlashAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = (_unit_stride_last(t) for t in (q, k, v))
        out, lse = _forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, out, lse, _unit_stride_last(dout), ctx.scale)
        return dq, dk, dv, None


# ----------------------------------------------------------------------------------------------
# 5. entry point
# ----------------------------------------------------------------------------------------------
def _validate(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"flash_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"flash_attention: {name} must be 4-D [B, H, N, D], got shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"flash_attention: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"flash_attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"flash_attention: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch, heads and head dim"
        )
    if q.shape[3] > MAX_HEAD_DIM or q.shape[3] < 1:
        raise ValueError(f"flash_attention: head dim (q.shape[3]) = {q.shape[3]} must be in 1..{MAX_HEAD_DIM}")
    if k.shape[2] < 1:
        raise ValueError("flash_attention: key length (k.shape[2]) must be >= 1")


def uses_triton(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether :func:`flash_attention` runs the Triton kernels for tensors on ``device`` of ``dtype``."""
    if triton is None:
        return False
    if device.type == "cuda" and not interpreting():
        return True
    # The interpreter's tl.dot multiplies bfloat16 bit patterns (triton-lang/triton#11584: bf16 is
    # unsupported there), so bf16 on the interpreter goes to SDPA instead of giving wrong numbers.
    return device.type == "cpu" and interpreting() and dtype != torch.bfloat16


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale) v`` for ``q [B, H, N, D]``, ``k, v [B, H, Nk, D]``; differentiable.

    Triton on CUDA, and on CPU when ``TRITON_INTERPRET=1`` (that is how the tests run the kernel bodies;
    bfloat16 excepted, see :func:`uses_triton`); elsewhere ``torch.nn.functional.scaled_dot_product_attention`` (same semantics).
    """
    _validate(q, k, v)
    if scale is None:
        scale = default_scale(q.shape[-1])
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"flash_attention: scale must be finite, got {scale}")
    if not uses_triton(q.device, q.dtype) or q.shape[2] == 0:  # SDPA also handles an empty query
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return FlashAttentionFunction.apply(q, k, v, scale)
