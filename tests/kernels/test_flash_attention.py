"""Flash attention kernel bodies (TRITON_INTERPRET=1) against an fp64 math reference.

Tolerance rule for fp16/bf16 (flash-attention's): max|fast - ref64| <= 2 * max|plain torch in the same
dtype - ref64| + atol. fp32 must match the fp64 reference to ~1e-5.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

# As tests/conftest.py: the kernel bodies run in the CPU interpreter unless CXRL_TEST_GPU=1 on a CUDA
# machine, where the same tests run the compiled kernels. Must precede the first triton import.
if os.environ.get("CXRL_TEST_GPU") != "1" or not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")

pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton.runtime import interpreter as triton_interpreter  # noqa: E402

from cxrl.kernels import flash_attention  # noqa: E402
from cxrl.kernels.flash_attention import (  # noqa: E402
    FlashAttentionFunction,
    _forward,
    attention_reference,
    default_scale,
    uses_triton,
)

# (B, H, N, Nk, D): N and Nk not multiples of the 32-row interpreter block; SD head dims 40/80/160,
# a cross-attention key length of 77 (+2 ACE tokens = 79), tiny D that pads to the 16-wide minimum.
SHAPES = [
    (1, 2, 37, 77, 40),
    (1, 2, 37, 37, 80),
    (2, 1, 19, 79, 64),
    (1, 1, 17, 23, 160),
    (1, 3, 5, 3, 8),
]
HALF_ATOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def interpreter_bf16_dot(monkeypatch):
    """Make the interpreter's tl.dot read bfloat16 values instead of their uint16 bit patterns.

    The interpreter stores bf16 as uint16 and its dot only converts fp8 operands
    (triton-lang/triton#11584). The GPU converts, so this makes the interpreter run our kernel the way
    the GPU does; every other op of the kernel runs unchanged.
    """
    original = triton_interpreter.InterpreterBuilder.create_dot

    def as_float32(handle):
        if handle.dtype.scalar != tl.bfloat16:
            return handle
        data = triton_interpreter._convert_float(handle.data, tl.bfloat16, tl.float32, None).view(np.float32)
        return triton_interpreter.TensorHandle(data, tl.float32)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return original(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    monkeypatch.setattr(triton_interpreter.InterpreterBuilder, "create_dot", create_dot)


def _inputs(shape, dtype, seed=0):
    B, H, N, Nk, D = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, D, generator=g).to(dtype)
    k = torch.randn(B, H, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Nk, D, generator=g).to(dtype)
    dout = torch.randn(B, H, N, D, generator=g).to(dtype)
    return tuple(t.to(DEVICE) for t in (q, k, v, dout))


def _out_and_grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    return (out.detach(), *grads)


def _reference_fn(q, k, v):
    return attention_reference(q, k, v)[0]


def _kernel_fn(q, k, v):
    # the autograd.Function directly: the entry point would route bf16 to SDPA under the interpreter
    return FlashAttentionFunction.apply(q, k, v, default_scale(q.shape[-1]))


def test_triton_path_is_taken():
    if INTERPRETED:
        assert uses_triton(torch.device("cpu"), torch.float32)
        assert uses_triton(torch.device("cpu"), torch.float16)
        assert not uses_triton(torch.device("cpu"), torch.bfloat16)
    else:
        assert all(uses_triton(DEVICE, dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}N{}Nk{}D{}".format(*s))
def test_fp32_forward_and_grads_match_fp64(shape):
    q, k, v, dout = _inputs(shape, torch.float32)
    fast = _out_and_grads(_kernel_fn, q, k, v, dout)
    ref = _out_and_grads(_reference_fn, q.double(), k.double(), v.double(), dout.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES[:3], ids=lambda s: "B{}H{}N{}Nk{}D{}".format(*s))
def test_half_precision_within_twice_plain_torch_error(shape, dtype, interpreter_bf16_dot):
    q, k, v, dout = _inputs(shape, dtype, seed=1)
    fast = _out_and_grads(_kernel_fn, q, k, v, dout)
    plain = _out_and_grads(_reference_fn, q, k, v, dout)
    ref = _out_and_grads(_reference_fn, q.double(), k.double(), v.double(), dout.double())
    for name, f, p, r in zip(("out", "dq", "dk", "dv"), fast, plain, ref):
        assert f.dtype == dtype, name
        fast_err = (f.double() - r).abs().max().item()
        plain_err = (p.double() - r).abs().max().item()
        assert fast_err <= 2 * plain_err + HALF_ATOL[dtype], f"{name}: kernel err {fast_err:.3g}, torch {dtype} err {plain_err:.3g}"


def test_logsumexp_stored_by_forward_matches_reference():
    q, k, v, _ = _inputs((2, 2, 37, 77, 40), torch.float32, seed=2)
    out, lse = _forward(q, k, v, 0.37)
    ref_out, ref_lse = attention_reference(q.double(), k.double(), v.double(), 0.37)
    assert lse.shape == (2, 2, 37) and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["mixed", "all_negative"])
def test_large_scores_do_not_overflow(sign):
    # |scores| ~ 1e3: a naive exp overflows; the online softmax subtracts the running max. With every
    # score ~ -1e3 the logsumexp is ~ -1e3, so the padded key columns (score 0) must be masked out of
    # the backward or exp(0 - lse) = inf turns dQ into NaN.
    q, k, v, dout = _inputs((1, 1, 33, 40, 16), torch.float32, seed=3)
    if sign > 0:
        q = q * 30
    else:
        q, k = q.abs() + 8, -(k.abs() + 8)
    fast = _out_and_grads(lambda a, b, c: flash_attention(a, b, c, scale=1.0), q, k, v, dout)
    ref = _out_and_grads(lambda a, b, c: attention_reference(a, b, c, 1.0)[0], q.double(), k.double(), v.double(), dout.double())
    for name, a, b in zip(("out", "dq", "dk", "dv"), fast, ref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a.double(), b, atol=1e-3, rtol=1e-3, msg=lambda m: f"{name}: {m}")


def test_strided_inputs_as_the_attention_processor_passes_them():
    # the processor hands [B, N, H, D] storage viewed as [B, H, N, D]; strides must be honoured
    B, H, N, Nk, D = 2, 3, 21, 50, 40
    g = torch.Generator().manual_seed(4)
    q, k, v, dout = (torch.randn(B, n, H, D, generator=g).to(DEVICE).transpose(1, 2) for n in (N, Nk, Nk, N))
    assert not q.is_contiguous()
    strided = _out_and_grads(flash_attention, q, k, v, dout)
    dense = _out_and_grads(flash_attention, q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous())
    for name, a, b in zip(("out", "dq", "dk", "dv"), strided, dense):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"{name}: {m}")
    torch.testing.assert_close(strided[0], F.scaled_dot_product_attention(q, k, v), atol=2e-5, rtol=1e-4)


def test_entry_point_matches_sdpa_with_custom_scale_and_bf16_route():
    q, k, v, _ = _inputs((1, 2, 9, 77, 80), torch.float32, seed=5)
    torch.testing.assert_close(flash_attention(q, k, v, scale=0.05),
                               F.scaled_dot_product_attention(q, k, v, scale=0.05), atol=2e-5, rtol=1e-4)
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()  # routed to SDPA under the interpreter
    torch.testing.assert_close(flash_attention(qb, kb, vb), F.scaled_dot_product_attention(qb, kb, vb),
                               atol=1e-2, rtol=1.6e-2)


@pytest.mark.parametrize(
    "q_shape,k_shape,dtype,match",
    [
        ((1, 2, 8, 16), (1, 2, 8, 16), torch.float64, "dtype"),
        ((2, 8, 16), (2, 8, 16), torch.float32, "4-D"),
        ((1, 2, 8, 16), (1, 3, 8, 16), torch.float32, "batch, heads and head dim"),
        ((1, 2, 8, 16), (1, 2, 8, 32), torch.float32, "batch, heads and head dim"),
        ((1, 1, 4, 320), (1, 1, 4, 320), torch.float32, "head dim"),
        ((1, 1, 4, 16), (1, 1, 0, 16), torch.float32, "key length"),
    ],
)
def test_bad_inputs_raise_naming_the_problem(q_shape, k_shape, dtype, match):
    q = torch.randn(q_shape, dtype=dtype)
    k = torch.randn(k_shape, dtype=dtype)
    with pytest.raises(ValueError, match=match):
        flash_attention(q, k, k)


def test_mismatched_dtypes_and_value_shape_raise():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="share a dtype"):
        flash_attention(q, q.half(), q)
    with pytest.raises(ValueError, match="k and v"):
        flash_attention(q, q, torch.randn(1, 1, 5, 16))
    with pytest.raises(ValueError, match="scale"):
        flash_attention(q, q, q, scale=float("nan"))
