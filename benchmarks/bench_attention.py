"""Attention at SD-1.5's UNet shapes: cxrl's Triton flash attention vs SDPA and xformers, and what ``auto`` picks.

Shapes (SD-1.5, 8 heads at every level, 512x512 images -> 64x64 latents, batch 16 = one CFG-doubled
training micro-batch of 8): head dim 40 / 80 / 160 / 160 at N = 4096 / 1024 / 256 / 64 tokens, each as
self-attention (Nk = N) and as cross-attention to Nk = 77 text tokens.
Modes: ``forward`` and ``forward_backward`` (gradients of q, k, v), bf16. TFLOP/s counts the useful
(unpadded) work: forward 4*B*H*N*Nk*D, forward+backward 3.5x that.
Providers on CUDA: ``sdpa`` (baseline), ``triton`` (``cxrl.kernels.flash_attention``), ``xformers`` (only
when it imports and runs) and ``auto`` (cxrl's dispatcher: its first call per shape times the backends
and keeps one; ``auto_pick`` is what it recorded in ``cxrl.backend_report()``). Before anything is timed,
every provider's output and gradients are checked against SDPA on fp32 copies with the kernel tests'
rule: |provider - ref| <= 2 |sdpa in the same dtype - ref| + atol.
q, k, v are [B, H, N, D] views of [B, N, H, D] memory, as the UNet's attention processor passes them.
The first call of each provider is timed apart (``first_call_s``: Triton's autotune, auto's one-time
timing), so compile seconds never mix with the timed calls; in the GPU suite a parallel warm-up compiles
every row's kernels before the rows run (``warm_up``).

Sizes: ``gpu`` the table above; ``cpu`` SDPA against the plain torch reference at small fp32 shapes (Triton
does not run on a CPU); the GPU suite's rehearsal (``suite_step`` with ``rehearse=True``) runs the GPU
providers on the CPU at tiny N with the kernel interpreted, in fp32 (the interpreter's ``tl.dot`` reads
bf16 as raw bits, so ``flash_attention`` would quietly use SDPA for bf16 there).

``python -m benchmarks.bench_attention [--size cpu|gpu]`` (or ``python -m benchmarks attention``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .harness import CaseResult, Timing, case_main, device_for_size, single_thread_on_cpu, time_side_by_side

CASE = "attention"
SD15_LEVELS = ((4096, 40), (1024, 80), (256, 160), (64, 160))   # (tokens, head dim) per UNet level
REHEARSAL_LEVELS = ((64, 40), (16, 80), (4, 160), (1, 160))
TEXT_TOKENS = 77
AUTO_SLOWER_MARGIN = 1.05   # auto counts as slower than the best only beyond timing noise


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


@dataclass(frozen=True)
class Plan:
    shapes: list
    dtype: torch.dtype
    providers: tuple
    reps: int
    inner: int


def sd15_shapes(levels=SD15_LEVELS, batch: int = 16, heads: int = 8) -> list[Shape]:
    shapes = []
    for n, d in levels:
        shapes += [Shape(f"sd15-self-N{n}-D{d}", batch, heads, n, n, d),
                   Shape(f"sd15-cross-N{n}-Nk{TEXT_TOKENS}-D{d}", batch, heads, n, TEXT_TOKENS, d)]
    return shapes


def gpu_shapes() -> list[Shape]:
    return sd15_shapes()


def cpu_shapes() -> list[Shape]:
    return [
        Shape("sd15-self-N1024-D40", 1, 8, 1024, 1024, 40),
        Shape("sd15-cross-N1024-D40", 1, 8, 1024, 77, 40),
        Shape("sd15-self-N256-D80", 1, 8, 256, 256, 80),
        Shape("sd15-self-N64-D160", 1, 8, 64, 64, 160),
    ]


def _triton_runs(device: str, dtype: torch.dtype) -> bool:
    # flash_attention quietly calls SDPA where Triton cannot run; a 'triton' row must time the kernel
    return device == "cuda" or (os.environ.get("TRITON_INTERPRET") == "1" and dtype != torch.bfloat16)


def _providers(device: str, names: tuple, dtype: torch.dtype) -> dict:
    # cxrl imported here, as in every case: cxrl.kernels imports triton, which must see TRITON_INTERPRET first
    from cxrl._backend import xformers_attention
    from cxrl.kernels.flash_attention import attention_reference, flash_attention

    available = {"torch_reference": lambda q, k, v: attention_reference(q, k, v)[0],
                 "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v)}
    if _triton_runs(device, dtype):
        available["triton"] = flash_attention
    if xformers_attention().active:
        import xformers.ops as xops

        available["xformers"] = lambda q, k, v: xops.memory_efficient_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    if "auto" in names:
        from cxrl.diffusion.attention import dispatch_attention  # what CXRLAttnProcessor("auto") calls

        available["auto"] = lambda q, k, v: dispatch_attention(q, k, v, backend="auto")
    return {n: available[n] for n in names if n in available}


def _inputs(shape: Shape, device: str, dtype: torch.dtype, grad: bool):
    """q, k, v, dout as [B, H, N, D] views of [B, N, H, D] memory: the layout CXRLAttnProcessor hands over
    (so the kernels compiled here are the ones the UNet steps load from the shared Triton cache)."""
    g = torch.Generator(device=device).manual_seed(0)

    def make(n):
        t = torch.randn(shape.batch, n, shape.heads, shape.head_dim, generator=g, device=device, dtype=dtype)
        return t.transpose(1, 2).requires_grad_(grad)
    return make(shape.n_q), make(shape.n_k), make(shape.n_k), make(shape.n_q).detach()


def _call(fn, q, k, v, dout, backward: bool):
    if not backward:
        return lambda: fn(q, k, v)
    return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), dout)


def _outputs(fn, q, k, v, dout, backward: bool) -> tuple:
    with torch.enable_grad() if backward else torch.no_grad():
        got = _call(fn, q, k, v, dout, backward)()
    return got if isinstance(got, tuple) else (got,)


def _check(providers: dict, q, k, v, dout, backward: bool) -> dict[str, float]:
    """Worst |provider - ref| / allowed over the output (and q/k/v gradients); ref is SDPA on fp32 copies.

    allowed = 2 |sdpa in the inputs' dtype - ref| + atol * max|ref| (atol 1e-4 fp32, 2e-3 fp16/bf16)."""
    up = [t.detach().float().requires_grad_(backward) for t in (q, k, v)]
    ref = _outputs(F.scaled_dot_product_attention, *up, dout.float(), backward)
    same = _outputs(F.scaled_dot_product_attention, q, k, v, dout, backward)
    atol = 1e-4 if q.dtype == torch.float32 else 2e-3
    worst = {}
    for name, fn in providers.items():
        got = _outputs(fn, q, k, v, dout, backward)
        ratios = []
        for a, s, r in zip(got, same, ref):
            allowed = 2 * (s.float() - r).abs().max().item() + atol * max(1.0, r.abs().max().item())
            ratios.append((a.float() - r).abs().max().item() / allowed)
        worst[name] = max(ratios)
    return worst


def _auto_pick(q, k, v, cross: bool) -> str:
    """The backend ``auto`` runs for this shape family (its decision is made once, on the first call)."""
    from cxrl.diffusion import attention  # the module whose AUTO decider CXRLAttnProcessor("auto") uses

    return attention.AUTO.choose(q, k, v, None, cross).backend


def measure(shape: Shape, device: str, plan: Plan, backward: bool) -> tuple[CaseResult, dict]:
    """One row: each provider's first call timed apart, the correctness check, then the side-by-side timing."""
    providers = _providers(device, plan.providers, plan.dtype)
    q, k, v, dout = _inputs(shape, device, plan.dtype, grad=backward)
    info: dict = {}
    for name, fn in providers.items():
        t0 = time.perf_counter()
        _outputs(fn, q, k, v, dout, backward)
        if device == "cuda":
            torch.cuda.synchronize()
        info[f"first_call_s_{name}"] = time.perf_counter() - t0
    if "auto" in providers:
        info["auto_pick"] = _auto_pick(q, k, v, cross=shape.n_k != shape.n_q)   # as dispatch_attention infers it
    info["worst_error_vs_allowed"] = _check(providers, q, k, v, dout, backward)

    def repeated(fn):
        call = _call(fn, q, k, v, dout, backward)

        def run():
            for _ in range(plan.inner):
                call()
        return run

    baseline = next(iter(providers))
    raw = time_side_by_side({n: repeated(fn) for n, fn in providers.items()}, reps=plan.reps, warmup=1, device=device)
    timings = {n: Timing(n, [s / plan.inner for s in t.seconds]) for n, t in raw.items()}
    flops = shape.forward_flops() * (3.5 if backward else 1.0)
    extra: dict = {f"tflops_{n}": flops / t.median / 1e12 for n, t in timings.items()}
    if "auto" in timings:
        best = min(t.median for n, t in timings.items() if n != "auto")
        extra["auto_pick"] = info["auto_pick"]
        extra["auto_vs_best"] = timings["auto"].median / best
    mode = f"{'forward_backward' if backward else 'forward'}-{str(plan.dtype).replace('torch.', '')}"
    return CaseResult(CASE, shape.name, mode, timings, baseline=baseline, extra=extra), info


def plan_for(size: str) -> Plan:
    if size == "gpu":
        return Plan(gpu_shapes(), torch.bfloat16, ("sdpa", "triton", "xformers", "auto"), reps=10, inner=5)
    if size == "rehearse":
        return Plan(sd15_shapes(REHEARSAL_LEVELS, batch=1, heads=2), torch.float32, ("sdpa", "triton", "auto"),
                    reps=2, inner=1)
    return Plan(cpu_shapes(), torch.float32, ("torch_reference", "sdpa"), reps=7, inner=1)


def run(size: str = "cpu") -> list[CaseResult]:
    """``cpu``: SDPA vs the torch reference at small fp32 shapes; ``gpu``: SD-1.5 shapes, bf16, every provider."""
    device = device_for_size(size)
    plan = plan_for(size)
    results = []
    with single_thread_on_cpu(device):
        for backward in (False, True):
            for shape in plan.shapes:
                result, info = measure(shape, device, plan, backward)
                bad = {n: r for n, r in info["worst_error_vs_allowed"].items() if r > 1}
                if bad:
                    raise AssertionError(f"{CASE} {shape.name} {result.mode}: providers off the reference: {bad}")
                results.append(result)
    return results


def _warm_worker_init() -> None:
    # autotune picks made while several processes share the GPU are not kept: the step re-tunes alone
    os.environ["TRITON_CACHE_AUTOTUNING"] = "0"


def _warm_row(shape: Shape, backward: bool, dtype_name: str, device: str) -> float:
    """In a spawned worker: run the Triton kernel once for one row, so its compiles land in the shared cache."""
    from cxrl.kernels import flash_attention  # after _warm_worker_init, as in _providers

    q, k, v, dout = _inputs(shape, device, getattr(torch, dtype_name), grad=backward)
    t0 = time.perf_counter()
    _outputs(flash_attention, q, k, v, dout, backward)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def warm_up(plan: Plan, device: str, workers: int, shapes: list | None = None) -> tuple[float, list[str]]:
    """Compile every row's Triton kernels in parallel processes first (Triton compiles one kernel at a time
    per process; a cold compile of the 16 rows' variants, autotune configs included, is the slow part).
    Returns (wall seconds, errors); an error here reappears, and is recorded, when the row itself runs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.perf_counter()
    errors = []
    dtype_name = str(plan.dtype).replace("torch.", "")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_warm_worker_init) as pool:
        jobs = {pool.submit(_warm_row, s, b, dtype_name, device): f"{s.name} {'fwd+bwd' if b else 'fwd'}"
                for b in (False, True) for s in (plan.shapes if shapes is None else shapes)}
        for future, name in jobs.items():
            try:
                future.result()
            except Exception as err:
                errors.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    return time.perf_counter() - t0, errors


def suite_step(rec, rehearse: bool) -> None:
    """The GPU suite's attention step: a parallel compile warm-up, then every row, each recorded as it
    finishes; a row that raises or disagrees with the reference fails its check and the next row runs."""
    import traceback

    from .gpu_steps import device_for
    from .harness import append_csv

    device = device_for(rehearse)
    plan = plan_for("rehearse" if rehearse else "gpu")
    rec.headline(dtype=str(plan.dtype).replace("torch.", ""), batch=plan.shapes[0].batch,
                 heads=plan.shapes[0].heads, auto_slower_margin=AUTO_SLOWER_MARGIN)
    if "triton" in plan.providers and _triton_runs(device, plan.dtype):
        workers = 2 if rehearse else min(8, max(1, (os.cpu_count() or 2) // 2))
        # the rehearsal has nothing to compile: one shape exercises the pool and the workers
        warm_s, errors = warm_up(plan, device, workers, plan.shapes[:1] if rehearse else None)
        rec.add_time(compile_s=warm_s)
        rec.headline(warm_up_s=warm_s, warm_up_workers=workers)
        for err in errors:
            rec.note(f"warm-up: {err}")
    auto_slower = []
    for backward in (False, True):
        for shape in plan.shapes:
            mode = "fwd+bwd" if backward else "fwd"
            t0 = time.perf_counter()
            try:
                result, info = measure(shape, device, plan, backward)
            except Exception as err:
                traceback.print_exc()
                rec.check(f"{shape.name} {mode}", False, f"raised {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                continue
            first = sum(v for k, v in info.items() if k.startswith("first_call_s"))
            rec.add_time(compile_s=first, run_s=time.perf_counter() - t0 - first)
            append_csv(result, os.environ.get("CXRL_BENCH_RESULTS"))
            worst = info["worst_error_vs_allowed"]
            rec.check(f"{shape.name} {mode}: every provider matches fp32 SDPA", max(worst.values()) <= 1,
                      ", ".join(f"{n} {r:.2f}" for n, r in worst.items()) + " of the allowed error")
            row = {"shape": shape.name, "mode": mode, "auto_pick": info.get("auto_pick"),
                   **{f"ms_{n}": 1e3 * t.median for n, t in result.timings.items()},
                   **{k: v for k, v in result.extra.items() if k.startswith("tflops") or k == "auto_vs_best"},
                   **{k: v for k, v in info.items() if k.startswith("first_call_s")}}
            rec.row(row)
            print(result.table(), flush=True)
            if row.get("auto_vs_best", 1.0) > AUTO_SLOWER_MARGIN:
                auto_slower.append(f"{shape.name} {mode}")
            rec.headline(rows=len(rec.data["rows"]), auto_slower_than_best=auto_slower,
                         goal_met=not auto_slower)


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
