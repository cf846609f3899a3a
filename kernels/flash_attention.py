"""Flash attention (non-causal, no mask) in Triton: forward and backward, any query/key length.

Same layout and semantics as ``torch.nn.functional.scaled_dot_product_attention`` for
``q [B, H, N, D]``, ``k, v [B, H, Nk, D]`` -> ``out [B, H, N, D]``, with ``scale`` defaulting to
``1/sqrt(D)``. The N x Nk score matrix never exists in memory: the forward keeps a running row max
and row sum (online softmax) and stores one logsumexp per query row; the backward recomputes the
probabilities block by block from that logsumexp.

Read top to bottom:
  1. torch reference (the spec the tests compare against)
  2. @triton.jit kernels: forward, backward preprocess (delta = rowsum(dO * O)), dK/dV, dQ
  3. launchers (fixed blocks under TRITON_INTERPRET=1, a small autotuned list on CUDA)
  4. autograd.Function
  5. entry point ``flash_attention`` that picks Triton on CUDA (or the interpreter on CPU) and SDPA
     elsewhere.

Head dims that are not powers of two (SD-1.5 uses 40, 80, 160) are masked up to the next power of two
inside the kernel, so any D <= 256 works; fp16/bf16 inputs accumulate in fp32.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the entry point then uses SDPA; cxrl.backend_report() says triton is off and why
    triton = None
    tl = None

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
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
# 2. Triton kernels
# ----------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _attn_fwd_kernel(
        Q, K, V, O, LSE,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_on,
        n_q, n_k, head_dim, qk_scale_log2,  # softmax scale * log2(e): the kernel works in base 2
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)  # int64: batch * stride can pass 2**31 on big batches
        off_b = tl.program_id(2).to(tl.int64)
        n_heads = tl.num_programs(1)
        Q += off_b * stride_qb + off_h * stride_qh
        K += off_b * stride_kb + off_h * stride_kh
        V += off_b * stride_vb + off_h * stride_vh
        O += off_b * stride_ob + off_h * stride_oh
        LSE += (off_b * n_heads + off_h) * n_q

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < n_q
        d_ok = offs_d < head_dim  # padded head-dim columns load as 0 and add nothing to q.k
        q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        # pointer blocks are built once and advanced by one key block per step
        k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :]
        for start_n in range(0, n_k, BLOCK_N):
            col_ok = (start_n + offs_n) < n_k
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
            s = tl.where(col_ok[None, :], s, float("-inf"))
            # every block holds >= 1 real key, so m_new is finite and alpha = 0 on the first block
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
            m_i = m_new
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn

        acc = acc / l_i[:, None]
        tl.store(O + offs_m[:, None] * stride_on + offs_d[None, :], acc.to(O.dtype.element_ty),
                 mask=row_ok[:, None] & d_ok[None, :])
        # stored in natural log so it can be checked against torch.logsumexp
        tl.store(LSE + offs_m, (m_i + tl.log2(l_i)) / 1.4426950408889634, mask=row_ok)

    @triton.jit
    def _attn_bwd_preprocess_kernel(
        O, DO, DELTA,
        stride_ob, stride_oh, stride_on,
        stride_dob, stride_doh, stride_don,
        n_q, head_dim,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """delta_i = sum_d dO_id * O_id  (= sum_j P_ij dP_ij, the softmax-backward row term)."""
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)
        off_b = tl.program_id(2).to(tl.int64)
        n_heads = tl.num_programs(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_m < n_q)[:, None] & (offs_d < head_dim)[None, :]
        o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :],
                    mask=mask, other=0.0).to(tl.float32)
        do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :],
                     mask=mask, other=0.0).to(tl.float32)
        tl.store(DELTA + (off_b * n_heads + off_h) * n_q + offs_m, tl.sum(o * do, 1), mask=offs_m < n_q)

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_don,
        stride_dkb, stride_dkh, stride_dkn,
        stride_dvb, stride_dvh, stride_dvn,
        n_q, n_k, head_dim, sm_scale, qk_scale_log2,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """One program owns a block of keys and sweeps all queries: dV = P^T dO, dK = scale * dS^T Q."""
        pid_n = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)
        off_b = tl.program_id(2).to(tl.int64)
        n_heads = tl.num_programs(1)
        Q += off_b * stride_qb + off_h * stride_qh
        K += off_b * stride_kb + off_h * stride_kh
        V += off_b * stride_vb + off_h * stride_vh
        DO += off_b * stride_dob + off_h * stride_doh
        DK += off_b * stride_dkb + off_h * stride_dkh
        DV += off_b * stride_dvb + off_h * stride_dvh
        LSE += (off_b * n_heads + off_h) * n_q
        DELTA += (off_b * n_heads + off_h) * n_q

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        col_ok = offs_n < n_k
        d_ok = offs_d < head_dim
        kv_mask = col_ok[:, None] & d_ok[None, :]
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        q_ptrs = Q + offs_m[:, None] * stride_qn + offs_d[None, :]
        do_ptrs = DO + offs_m[:, None] * stride_don + offs_d[None, :]
        for start_m in range(0, n_q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < n_q
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_ptrs, mask=q_mask, other=0.0)
            do = tl.load(do_ptrs, mask=q_mask, other=0.0)
            lse_log2 = tl.load(LSE + rows, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + rows, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
            # padded rows/columns must contribute exactly nothing: with every real score << 0, a
            # padded column's score 0 would give exp(0 - lse) = inf and NaN gradients
            s = tl.where(row_ok[:, None] & col_ok[None, :], s, float("-inf"))
            p = tl.exp2(s - lse_log2[:, None])
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
            q_ptrs += BLOCK_M * stride_qn
            do_ptrs += BLOCK_M * stride_don
        dk *= sm_scale
        tl.store(DK + offs_n[:, None] * stride_dkn + offs_d[None, :], dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + offs_n[:, None] * stride_dvn + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_don,
        stride_dqb, stride_dqh, stride_dqn,
        n_q, n_k, head_dim, sm_scale, qk_scale_log2,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
    ):
        """One program owns a block of queries and sweeps all keys: dQ = scale * dS K (no atomics)."""
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)
        off_b = tl.program_id(2).to(tl.int64)
        n_heads = tl.num_programs(1)
        Q += off_b * stride_qb + off_h * stride_qh
        K += off_b * stride_kb + off_h * stride_kh
        V += off_b * stride_vb + off_h * stride_vh
        DO += off_b * stride_dob + off_h * stride_doh
        DQ += off_b * stride_dqb + off_h * stride_dqh
        LSE += (off_b * n_heads + off_h) * n_q
        DELTA += (off_b * n_heads + off_h) * n_q

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        row_ok = offs_m < n_q
        d_ok = offs_d < head_dim
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :], mask=q_mask, other=0.0)
        lse_log2 = tl.load(LSE + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :]
        for start_n in range(0, n_k, BLOCK_N):
            col_ok = (start_n + offs_n) < n_k
            kv_mask = col_ok[:, None] & d_ok[None, :]
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
            s = tl.where(row_ok[:, None] & col_ok[None, :], s, float("-inf"))  # as in the dK/dV kernel
            p = tl.exp2(s - lse_log2[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
        dq *= sm_scale
        tl.store(DQ + offs_m[:, None] * stride_dqn + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)

    # ------------------------------------------------------------------------------------------
    # 3. launchers
    # ------------------------------------------------------------------------------------------
    def _configs(shapes: list[tuple[int, int, int, int]]) -> list:
        """(BLOCK_M, BLOCK_N, num_warps, num_stages) tuples; the padded head dim picks the subset."""
        return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]

    # Small per-head-dim lists keep compile time low: at most 3 candidates per (N, Nk, D) key.
    # Larger padded head dims need smaller tiles to stay in registers / shared memory.
    _FWD_CONFIGS = {
        64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4)],
        128: [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3)],
        256: [(64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2)],
    }
    _BWD_CONFIGS = {
        64: [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3)],
        128: [(64, 64, 8, 3), (64, 32, 4, 3), (32, 64, 4, 3)],
        256: [(32, 32, 4, 2), (64, 32, 8, 2), (32, 64, 8, 2)],
    }

    def _tier(block_d: int) -> int:
        return 64 if block_d <= 64 else block_d

    def _prune_for(table):
        def prune(configs, named_args, **kwargs):
            wanted = table[_tier(kwargs.get("BLOCK_D", named_args.get("BLOCK_D")))]
            keep = [c for c in configs if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
            return keep or configs[:1]
        return prune

    def _autotuned(kernel, table):
        every = sorted({cfg for cfgs in table.values() for cfg in cfgs})
        return triton.autotune(configs=_configs(every), key=["n_q", "n_k", "BLOCK_D"],
                               prune_configs_by={"early_config_prune": _prune_for(table)})(kernel)

    _attn_fwd_tuned = _autotuned(_attn_fwd_kernel, _FWD_CONFIGS)
    _attn_bwd_dkdv_tuned = _autotuned(_attn_bwd_dkdv_kernel, _BWD_CONFIGS)
    _attn_bwd_dq_tuned = _autotuned(_attn_bwd_dq_kernel, _BWD_CONFIGS)

# Under the interpreter every program runs serially in numpy: one fixed block size, no autotuning.
_INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))  # tl.dot needs every dim >= 16


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs follow torch's own TF32 switch so the kernel matches what SDPA / matmul would do
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"  # fp16/bf16 ignore it; fp32 without TF32 gets full-precision dots


def _strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _pick(tuned, plain, device: torch.device):
    """The autotuned kernel on CUDA; the plain kernel with fixed blocks under the interpreter."""
    if device.type == "cuda" and not _interpreting():
        return tuned, {}
    return plain, dict(_INTERPRETER_BLOCKS)


def _forward(q, k, v, scale: float):
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    # [B, N, H, D] storage seen as [B, H, N, D]: the attention processor's transpose+reshape back to
    # [B, N, H*D] is then free
    out = torch.empty((B, n_q, H, D), device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    kernel, blocks = _pick(_attn_fwd_tuned, _attn_fwd_kernel, q.device)
    grid = lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), H, B)  # noqa: E731
    kernel[grid](
        q, k, v, out, lse, *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(out),
        n_q, n_k, D, scale * _LOG2E,
        BLOCK_D=_block_d(D), DOT_PRECISION=_dot_precision(q.dtype), **blocks,
    )
    return out, lse


def _backward(q, k, v, out, lse, dout, scale: float):
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    block_d = _block_d(D)
    precision = _dot_precision(q.dtype)
    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    pre_block = 64 if block_d <= 128 else 32
    _attn_bwd_preprocess_kernel[(triton.cdiv(n_q, pre_block), H, B)](
        out, dout, delta, *_strides3(out), *_strides3(dout), n_q, D, BLOCK_M=pre_block, BLOCK_D=block_d,
    )
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    common = dict(BLOCK_D=block_d, DOT_PRECISION=precision)
    kernel, blocks = _pick(_attn_bwd_dkdv_tuned, _attn_bwd_dkdv_kernel, q.device)
    kernel[lambda meta: (triton.cdiv(n_k, meta["BLOCK_N"]), H, B)](
        q, k, v, dout, lse, delta, dk, dv,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(dout), *_strides3(dk), *_strides3(dv),
        n_q, n_k, D, scale, scale * _LOG2E, **common, **blocks,
    )
    kernel, blocks = _pick(_attn_bwd_dq_tuned, _attn_bwd_dq_kernel, q.device)
    kernel[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), H, B)](
        q, k, v, dout, lse, delta, dq,
        *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(dout), *_strides3(dq),
        n_q, n_k, D, scale, scale * _LOG2E, **common, **blocks,
    )
    return dq, dk, dv


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
        dq, dk, dv = _backward(q, k, v, out, lse, _unit_stride_last(dout), ctx.scale)
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
    if device.type == "cuda" and not _interpreting():
        return True
    # The interpreter's tl.dot multiplies bfloat16 bit patterns (triton-lang/triton#11584: bf16 is
    # unsupported there), so bf16 on the interpreter goes to SDPA instead of giving wrong numbers.
    return device.type == "cpu" and _interpreting() and dtype != torch.bfloat16


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
