"""What the flash-attention forward (``flash_attention.py``) and backward (``flash_attention_bwd.py``)
share: head-dim tiers, autotune configs that fit the device's shared memory, the dot precision, and the
@triton.jit tile load/store helpers that mask the head dim only where it is padded.

Head dim: ``HEAD_DIM`` (the real D) and ``BLOCK_D`` (the next power of two, at least 16, because
``tl.arange`` and ``tl.dot`` need powers of two) are compile-time constants. For D = 16/32/64/128/256
they are equal and the loads carry only the sequence-tail mask; for D = 40/80/160 the padded columns
are masked by a compile-time predicate and load as 0, adding nothing to q.k or to the outputs.

Autotune configs: one list per head-dim tier (BLOCK_D <= 64, 128, 256), fastest-first guesses for a
Hopper part. Before autotuning, :func:`fitting_configs` drops every config whose shared-memory estimate
(:func:`shared_memory_bytes`) exceeds the device's per-block limit, and it never returns an empty list:
each tier ends with a small config that fits 99 KB (consumer GPUs) even in fp32, and if a device had
less than that, the config with the smallest estimate is kept.
"""
from __future__ import annotations

import functools
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the entry point then uses SDPA; cxrl.backend_report() says triton is off and why
    triton = None
    tl = None

MAX_HEAD_DIM = 256
KERNELS = ("fwd", "bwd_dkdv", "bwd_dq")

# (BLOCK_M, BLOCK_N, num_warps, num_stages). At most 4 candidates per tier keeps compile time low;
# larger padded head dims need smaller tiles. The last entry of every list fits 99 KB in fp32.
FWD_CONFIGS = {
    64: [(128, 64, 4, 3), (128, 128, 8, 3), (64, 64, 4, 4), (64, 32, 4, 2)],
    128: [(128, 64, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3), (32, 32, 4, 2)],
    256: [(64, 32, 4, 2), (64, 64, 8, 2), (128, 32, 8, 2), (32, 16, 4, 1)],
}
BWD_CONFIGS = {  # shared by the dK/dV and the dQ kernel; each is pruned by its own estimate
    64: [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 3), (32, 32, 4, 2)],
    128: [(64, 64, 8, 3), (64, 32, 4, 3), (32, 64, 4, 3), (32, 32, 4, 1)],
    256: [(32, 32, 4, 2), (64, 32, 8, 2), (32, 64, 8, 2), (16, 16, 4, 1)],
}
# Under the interpreter every program runs serially in numpy: one fixed block size, no autotuning.
INTERPRETER_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 32}


def block_d(head_dim: int) -> int:
    """The compile-time tile width of the head dim: D itself when it is a power of two >= 16."""
    return max(16, 1 << (int(head_dim) - 1).bit_length())


def tier(block: int) -> int:
    return 64 if block <= 64 else 128 if block <= 128 else 256


def shared_memory_bytes(kernel: str, block_m: int, block_n: int, block: int, num_stages: int, elem_size: int) -> int:
    """Upper estimate of one program's shared memory, in bytes.

    Tiles that stay put for the whole program count once; tiles loaded inside the loop count once per
    pipeline stage (Triton's software pipeliner keeps up to ``num_stages`` copies in flight); the
    [BLOCK_M, BLOCK_N] probability / score tiles that feed a second ``tl.dot`` count once each.
    """
    if kernel == "fwd":  # Q stays; K and V stream; P feeds P @ V
        resident, streamed, score_tiles = block_m * block, 2 * block_n * block, 1
    elif kernel == "bwd_dkdv":  # K and V stay; Q and dO stream; P^T and dS^T feed two dots
        resident, streamed, score_tiles = 2 * block_n * block, 2 * block_m * block, 2
    elif kernel == "bwd_dq":  # Q and dO stay; K and V stream; dS feeds dS @ K
        resident, streamed, score_tiles = 2 * block_m * block, 2 * block_n * block, 1
    else:
        raise ValueError(f"shared_memory_bytes: kernel must be one of {KERNELS}, got {kernel!r}")
    return elem_size * (resident + max(1, num_stages) * streamed + score_tiles * block_m * block_n)


def fitting_configs(kernel: str, block: int, elem_size: int, limit_bytes: int) -> list[tuple[int, int, int, int]]:
    """The tier's configs whose estimate fits ``limit_bytes``, in the table's order; never empty."""
    table = FWD_CONFIGS if kernel == "fwd" else BWD_CONFIGS
    candidates = table[tier(block)]

    def estimate(cfg):
        return shared_memory_bytes(kernel, cfg[0], cfg[1], block, cfg[3], elem_size)

    fits = [cfg for cfg in candidates if estimate(cfg) <= limit_bytes]
    # a device below even the small config: the smallest one still compiles if the estimate is loose,
    # and Triton names the shortfall (OutOfResources) if it is not
    return fits or [min(candidates, key=estimate)]


def device_shared_memory(device: torch.device) -> int:
    """The per-block shared-memory limit a kernel on ``device`` may opt into (H200: 227 KB, A100: 163 KB)."""
    return _opt_in_limit(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _opt_in_limit(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin


def dot_precision(dtype: torch.dtype) -> str:
    """``tf32`` for fp32 inputs only when torch allows TF32 matmuls; ``ieee`` otherwise.

    Read through ``fp32_precision`` where torch has it: reading the legacy ``allow_tf32`` raises once
    a program has set the new API. fp16/bf16 dots ignore the setting.
    """
    if dtype != torch.float32:
        return "ieee"
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # "tf32", "ieee", or "none" (= the global setting, ieee by default)
        allowed = matmul.fp32_precision == "tf32"
    else:
        allowed = bool(matmul.allow_tf32)
    return "tf32" if allowed else "ieee"


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def strides3(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


if triton is not None:

    def _prune_for(kernel: str):
        def prune(configs, named_args, **kwargs):
            q = named_args["Q"]
            wanted = fitting_configs(kernel, kwargs["BLOCK_D"], q.element_size(), device_shared_memory(q.device))
            return [c for c in configs
                    if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in wanted]
        return prune

    def autotuned(kernel_fn, kernel: str):
        """``kernel_fn`` autotuned over its tier's configs that fit the device, keyed on the lengths and D."""
        table = FWD_CONFIGS if kernel == "fwd" else BWD_CONFIGS
        every = sorted({cfg for cfgs in table.values() for cfg in cfgs})
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in every]
        return triton.autotune(configs=configs, key=["n_q", "n_k", "HEAD_DIM"],
                               prune_configs_by={"early_config_prune": _prune_for(kernel)})(kernel_fn)

    def pick(tuned, plain, device: torch.device):
        """The autotuned kernel on CUDA; the plain kernel with fixed blocks under the interpreter."""
        if device.type == "cuda" and not interpreting():
            return tuned, {}
        return plain, dict(INTERPRETER_BLOCKS)

    @triton.jit
    def tile_ptrs(base, off_b, off_h, stride_b, stride_h, stride_n, rows, BLOCK_D: tl.constexpr):
        """Pointers to rows ``rows`` x all BLOCK_D columns of head ``off_h`` of sample ``off_b`` (D has stride 1)."""
        return base + off_b * stride_b + off_h * stride_h + rows[:, None] * stride_n + tl.arange(0, BLOCK_D)[None, :]

    @triton.jit
    def load_tile(ptrs, row_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
        """A [rows, BLOCK_D] tile; rows past the sequence end and padded head-dim columns read 0."""
        if HEAD_DIM == BLOCK_D:  # power-of-two head dim: only the sequence tail is masked
            tile = tl.load(ptrs, mask=row_ok[:, None], other=0.0)
        else:
            d_ok = tl.arange(0, BLOCK_D) < HEAD_DIM  # a compile-time predicate: HEAD_DIM is constexpr
            tile = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        return tile

    @triton.jit
    def store_tile(ptrs, value, row_ok, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
        if HEAD_DIM == BLOCK_D:
            tl.store(ptrs, value, mask=row_ok[:, None])
        else:
            d_ok = tl.arange(0, BLOCK_D) < HEAD_DIM
            tl.store(ptrs, value, mask=row_ok[:, None] & d_ok[None, :])
else:  # nothing launches without triton (uses_triton() is False); the names exist for the imports
    _prune_for = autotuned = pick = tile_ptrs = load_tile = store_tile = None
