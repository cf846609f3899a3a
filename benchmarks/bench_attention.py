"""Attention at the UNet's shapes: cxrl's Triton flash attention vs SDPA (and xformers where it runs).

Shapes (batch 2 = one CFG pair; 512x512 images -> 64x64 latents):
  SD-1.5   heads 8, head dim 40 / 80 / 160 at 4096 / 1024 / 256 tokens; self-attention and
           cross-attention to Nk = 77 text tokens
  SD-2     head dim 64 (5 / 10 / 20 heads) at the same token counts
  d128     heads 8, head dim 128, 4096 tokens (the other power-of-two head dim)
Modes: ``forward`` and ``forward_backward`` (gradients of q, k, v), fp16. TFLOP/s counts the useful
(unpadded) work: forward 4*B*H*N*Nk*D, backward 2.5x that.
Providers on CUDA: ``sdpa`` (baseline), ``triton``, ``xformers`` (only when it imports and runs);
each is checked against SDPA before it is timed. ``auto_pick`` in a row's extras is the provider the
``auto`` dispatcher would keep for that shape (the fastest), so the UNet never runs slower than SDPA.
On the CPU (``size="cpu"``) Triton does not run: SDPA is timed against the plain torch reference at
small fp32 shapes, one intra-op thread.

``python -m benchmarks.bench_attention [--size cpu|gpu]`` (or ``python -m benchmarks attention``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .harness import CaseResult, Timing, case_main, device_for_size, single_thread_on_cpu, time_side_by_side

CASE = "attention"


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    heads: int
    n_q: int
    n_k: int
    head_dim: int

    def forward_flops(self) -> float:
        return 4.0 * self.batch * self.heads * self.n_q * self.n_k * self.head_dim


def gpu_shapes() -> list[Shape]:
    shapes = []
    for n, d in ((4096, 40), (1024, 80), (256, 160)):  # SD-1.5: 8 heads at every level
        shapes += [Shape(f"sd15-self-N{n}-D{d}", 2, 8, n, n, d),
                   Shape(f"sd15-cross-N{n}-D{d}", 2, 8, n, 77, d)]
    for n, h in ((4096, 5), (1024, 10), (256, 20)):  # SD-2: head dim 64 at every level
        shapes += [Shape(f"sd2-self-N{n}-H{h}-D64", 2, h, n, n, 64),
                   Shape(f"sd2-cross-N{n}-H{h}-D64", 2, h, n, 77, 64)]
    shapes.append(Shape("d128-self-N4096", 2, 8, 4096, 4096, 128))
    return shapes


def cpu_shapes() -> list[Shape]:
    return [
        Shape("sd15-self-N1024-D40", 1, 8, 1024, 1024, 40),
        Shape("sd15-cross-N1024-D40", 1, 8, 1024, 77, 40),
        Shape("sd15-self-N256-D80", 1, 8, 256, 256, 80),
        Shape("sd15-self-N64-D160", 1, 8, 64, 64, 160),
    ]


def _providers(device: str) -> dict:
    from cxrl.kernels.flash_attention import attention_reference, flash_attention

    if device == "cpu":
        return {"torch_reference": lambda q, k, v: attention_reference(q, k, v)[0],
                "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    providers = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v), "triton": flash_attention}
    from cxrl._backend import xformers_attention

    if xformers_attention().active:
        import xformers.ops as xops

        providers["xformers"] = lambda q, k, v: xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return providers


def _inputs(shape: Shape, device: str, dtype: torch.dtype, grad: bool):
    g = torch.Generator(device=device).manual_seed(0)
    make = lambda n: torch.randn(shape.batch, shape.heads, n, shape.head_dim, generator=g,  # noqa: E731
                                 device=device, dtype=dtype).requires_grad_(grad)
    return make(shape.n_q), make(shape.n_k), make(shape.n_k), make(shape.n_q).detach()


def _call(fn, q, k, v, dout, backward: bool):
    if not backward:
        return lambda: fn(q, k, v)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)


def _check_against_baseline(providers: dict, baseline: str, q, k, v, dout, backward: bool, atol: float) -> None:
    """Every provider gives the baseline's answer (outputs and, in backward mode, gradients) before timing."""
    ref = _call(providers[baseline], q, k, v, dout, backward)()
    ref = ref if isinstance(ref, tuple) else (ref,)
    for name, fn in providers.items():
        got = _call(fn, q, k, v, dout, backward)()
        got = got if isinstance(got, tuple) else (got,)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=1e-2,
                                       msg=lambda m: f"{CASE}: {name} disagrees with {baseline}: {m}")


def _case(shape: Shape, device: str, dtype: torch.dtype, backward: bool, reps: int, inner: int) -> CaseResult:
    providers = _providers(device)
    baseline = next(iter(providers))  # torch_reference on the CPU, sdpa on CUDA
    q, k, v, dout = _inputs(shape, device, dtype, grad=backward)
    atol = 1e-4 if dtype == torch.float32 else 2e-2
    _check_against_baseline(providers, baseline, q, k, v, dout, backward, atol)

    def repeated(fn):
        call = _call(fn, q, k, v, dout, backward)

        def run():
            for _ in range(inner):
                call()
        return run

    raw = time_side_by_side({n: repeated(fn) for n, fn in providers.items()}, reps=reps, warmup=2, device=device)
    timings = {n: Timing(n, [s / inner for s in t.seconds]) for n, t in raw.items()}
    flops = shape.forward_flops() * (3.5 if backward else 1.0)
    extra: dict = {f"tflops_{n}": flops / t.median / 1e12 for n, t in timings.items()}
    extra["auto_pick"] = min(timings, key=lambda n: timings[n].median) if device == "cuda" else "sdpa"
    mode = f"{'forward_backward' if backward else 'forward'}-{str(dtype).replace('torch.', '')}"
    return CaseResult(CASE, shape.name, mode, timings, baseline=baseline, extra=extra)


def run(size: str = "cpu") -> list[CaseResult]:
    """``cpu``: SDPA vs the torch reference at small fp32 shapes; ``gpu``: SD shapes, fp16, with Triton."""
    device = device_for_size(size)
    dtype = torch.float16 if device == "cuda" else torch.float32
    shapes = gpu_shapes() if device == "cuda" else cpu_shapes()
    reps, inner = (10, 20) if device == "cuda" else (7, 1)
    with single_thread_on_cpu(device):
        return [_case(s, device, dtype, backward, reps, inner) for backward in (False, True) for s in shapes]


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
