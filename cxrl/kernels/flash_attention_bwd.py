"""Flash attention backward in Triton: the half of ``flash_attention.py`` that runs under autograd.

Read top to bottom:
  1. @triton.jit kernels: preprocess (delta = rowsum(dO * O)), the score/probability tile both
     gradient kernels recompute, dK/dV (one program per key block, sweeping the queries) and dQ (one
     program per query block, sweeping the keys). Two kernels instead of one with atomics: the result
     is deterministic and needs no fp32 scratch for dQ.
  2. launcher :func:`attention_backward`, called by ``FlashAttentionFunction.backward``.

The probabilities are recomputed from the logsumexp the forward stored (natural log), so the N x Nk
matrix never exists in memory here either. Head-dim handling and autotune configs: see
``flash_attention_common.py``.
"""
from __future__ import annotations

import torch

from .flash_attention_common import (
    autotuned,
    block_d,
    dot_precision,
    load_tile,
    pick,
    store_tile,
    strides3,
    tile_ptrs,
    tl,
    triton,
)

_LOG2E = 1.4426950408889634

# ----------------------------------------------------------------------------------------------
# 1. Triton kernels
# ----------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _attn_bwd_preprocess_kernel(
        O, DO, DELTA,
        stride_ob, stride_oh, stride_on,
        stride_dob, stride_doh, stride_don,
        n_q,
        BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        """delta_i = sum_d dO_id * O_id  (= sum_j P_ij dP_ij, the softmax-backward row term)."""
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)
        off_b = tl.program_id(2).to(tl.int64)
        n_heads = tl.num_programs(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < n_q
        o = load_tile(tile_ptrs(O, off_b, off_h, stride_ob, stride_oh, stride_on, offs_m, BLOCK_D),
                      row_ok, HEAD_DIM, BLOCK_D).to(tl.float32)
        do = load_tile(tile_ptrs(DO, off_b, off_h, stride_dob, stride_doh, stride_don, offs_m, BLOCK_D),
                       row_ok, HEAD_DIM, BLOCK_D).to(tl.float32)
        tl.store(DELTA + (off_b * n_heads + off_h) * n_q + offs_m, tl.sum(o * do, 1), mask=row_ok)

    @triton.jit
    def _probs_and_dscores(q, k, v, do, lse_log2, delta, valid, qk_scale_log2, DOT_PRECISION: tl.constexpr):
        """P (from the stored logsumexp) and dS = P * (dP - delta) for one [queries, keys] tile.

        Invalid entries (padded rows or columns) must contribute exactly nothing: with every real score
        << 0, a padded column's score 0 would give exp(0 - lse) = inf and NaN gradients.
        """
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale_log2
        s = tl.where(valid, s, float("-inf"))
        p = tl.exp2(s - lse_log2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        return p, p * (dp - delta[:, None])

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        Q, K, V, DO, LSE, DELTA, DK, DV,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_don,
        stride_dkb, stride_dkh, stride_dkn,
        stride_dvb, stride_dvh, stride_dvn,
        n_q, n_k, sm_scale, qk_scale_log2,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program owns a block of keys and sweeps all queries: dV = P^T dO, dK = scale * dS^T Q."""
        pid_n = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)  # int64: batch * stride can pass 2**31 on big batches
        off_b = tl.program_id(2).to(tl.int64)
        row_base = (off_b * tl.num_programs(1) + off_h) * n_q  # LSE and DELTA are [B, H, n_q]
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        col_ok = offs_n < n_k
        k = load_tile(tile_ptrs(K, off_b, off_h, stride_kb, stride_kh, stride_kn, offs_n, BLOCK_D),
                      col_ok, HEAD_DIM, BLOCK_D)
        v = load_tile(tile_ptrs(V, off_b, off_h, stride_vb, stride_vh, stride_vn, offs_n, BLOCK_D),
                      col_ok, HEAD_DIM, BLOCK_D)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        q_ptrs = tile_ptrs(Q, off_b, off_h, stride_qb, stride_qh, stride_qn, offs_m, BLOCK_D)
        do_ptrs = tile_ptrs(DO, off_b, off_h, stride_dob, stride_doh, stride_don, offs_m, BLOCK_D)
        for start_m in range(0, n_q, BLOCK_M):
            rows = start_m + offs_m
            row_ok = rows < n_q
            q = load_tile(q_ptrs, row_ok, HEAD_DIM, BLOCK_D)
            do = load_tile(do_ptrs, row_ok, HEAD_DIM, BLOCK_D)
            lse_log2 = tl.load(LSE + row_base + rows, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + row_base + rows, mask=row_ok, other=0.0)
            p, ds = _probs_and_dscores(q, k, v, do, lse_log2, delta, row_ok[:, None] & col_ok[None, :],
                                       qk_scale_log2, DOT_PRECISION)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)
            q_ptrs += BLOCK_M * stride_qn
            do_ptrs += BLOCK_M * stride_don
        dk *= sm_scale
        store_tile(tile_ptrs(DK, off_b, off_h, stride_dkb, stride_dkh, stride_dkn, offs_n, BLOCK_D),
                   dk.to(DK.dtype.element_ty), col_ok, HEAD_DIM, BLOCK_D)
        store_tile(tile_ptrs(DV, off_b, off_h, stride_dvb, stride_dvh, stride_dvn, offs_n, BLOCK_D),
                   dv.to(DV.dtype.element_ty), col_ok, HEAD_DIM, BLOCK_D)

    @triton.jit
    def _attn_bwd_dq_kernel(
        Q, K, V, DO, LSE, DELTA, DQ,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_dob, stride_doh, stride_don,
        stride_dqb, stride_dqh, stride_dqn,
        n_q, n_k, sm_scale, qk_scale_log2,
        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program owns a block of queries and sweeps all keys: dQ = scale * dS K (no atomics)."""
        pid_m = tl.program_id(0)
        off_h = tl.program_id(1).to(tl.int64)
        off_b = tl.program_id(2).to(tl.int64)
        row_base = (off_b * tl.num_programs(1) + off_h) * n_q
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        row_ok = offs_m < n_q
        q = load_tile(tile_ptrs(Q, off_b, off_h, stride_qb, stride_qh, stride_qn, offs_m, BLOCK_D),
                      row_ok, HEAD_DIM, BLOCK_D)
        do = load_tile(tile_ptrs(DO, off_b, off_h, stride_dob, stride_doh, stride_don, offs_m, BLOCK_D),
                       row_ok, HEAD_DIM, BLOCK_D)
        lse_log2 = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_ptrs = tile_ptrs(K, off_b, off_h, stride_kb, stride_kh, stride_kn, offs_n, BLOCK_D)
        v_ptrs = tile_ptrs(V, off_b, off_h, stride_vb, stride_vh, stride_vn, offs_n, BLOCK_D)
        for start_n in range(0, n_k, BLOCK_N):
            col_ok = (start_n + offs_n) < n_k
            k = load_tile(k_ptrs, col_ok, HEAD_DIM, BLOCK_D)
            v = load_tile(v_ptrs, col_ok, HEAD_DIM, BLOCK_D)
            _, ds = _probs_and_dscores(q, k, v, do, lse_log2, delta, row_ok[:, None] & col_ok[None, :],
                                       qk_scale_log2, DOT_PRECISION)
            dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)
            k_ptrs += BLOCK_N * stride_kn
            v_ptrs += BLOCK_N * stride_vn
        dq *= sm_scale
        store_tile(tile_ptrs(DQ, off_b, off_h, stride_dqb, stride_dqh, stride_dqn, offs_m, BLOCK_D),
                   dq.to(DQ.dtype.element_ty), row_ok, HEAD_DIM, BLOCK_D)

    _attn_bwd_dkdv_tuned = autotuned(_attn_bwd_dkdv_kernel, "bwd_dkdv")
    _attn_bwd_dq_tuned = autotuned(_attn_bwd_dq_kernel, "bwd_dq")


# ----------------------------------------------------------------------------------------------
# 2. launcher
# ----------------------------------------------------------------------------------------------
def attention_backward(q, k, v, out, lse, dout, scale: float):
    """(dq, dk, dv) for ``out = softmax(q k^T * scale) v`` given the forward's natural-log ``lse``."""
    B, H, n_q, D = q.shape
    n_k = k.shape[2]
    constants = dict(HEAD_DIM=D, BLOCK_D=block_d(D))
    delta = torch.empty((B, H, n_q), device=q.device, dtype=torch.float32)
    pre_block = 64 if constants["BLOCK_D"] <= 128 else 32  # two [rows, BLOCK_D] fp32 tiles in registers
    _attn_bwd_preprocess_kernel[(triton.cdiv(n_q, pre_block), H, B)](
        out, dout, delta, *strides3(out), *strides3(dout), n_q, BLOCK_M=pre_block, **constants,
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    constants["DOT_PRECISION"] = dot_precision(q.dtype)
    kernel, blocks = pick(_attn_bwd_dkdv_tuned, _attn_bwd_dkdv_kernel, q.device)
    kernel[lambda meta: (triton.cdiv(n_k, meta["BLOCK_N"]), H, B)](
        q, k, v, dout, lse, delta, dk, dv,
        *strides3(q), *strides3(k), *strides3(v), *strides3(dout), *strides3(dk), *strides3(dv),
        n_q, n_k, scale, scale * _LOG2E, **constants, **blocks,
    )
    kernel, blocks = pick(_attn_bwd_dq_tuned, _attn_bwd_dq_kernel, q.device)
    kernel[lambda meta: (triton.cdiv(n_q, meta["BLOCK_M"]), H, B)](
        q, k, v, dout, lse, delta, dq,
        *strides3(q), *strides3(k), *strides3(v), *strides3(dout), *strides3(dq),
        n_q, n_k, scale, scale * _LOG2E, **constants, **blocks,
    )
    return dq, dk, dv
