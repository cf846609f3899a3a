"""The fused DDIM step's memory bandwidth against a device copy of the same bytes, measured in the same run.

One rollout step with CFG (``fused_ddim_step``, Triton) reads u, c, x_t and noise and writes x_prev: 5
tensors' bytes (its per-block log-prob partial sums are a few KB). The yardstick copies a buffer of half
that size (read + write = the same bytes), alternated with the kernel rep by rep. Two sizes:
  ``sd``   the real rollout shape 32x4x64x64 (10 MB in fp32: it fits in an H200's 60 MB L2, so this row
           says how close the step is to launch-bound, not what HBM gives);
  ``hbm``  1024x4x64x64 (335 MB in fp32), several times the L2: the row that answers "≥ 80 % of copy".
fp32 and bf16. Each kernel's output is checked against ``ddim_step_reference`` before it is timed.
The rehearsal runs the same code on the CPU at tiny shapes with the kernel interpreted.
"""
from __future__ import annotations

import time

import torch

from .gpu_steps import StepRecord, device_for, median_ms, timed_first_call

GOAL_FRACTION_OF_COPY = 0.8
SIZES = {"sd": (32, 4, 64, 64), "hbm": (1024, 4, 64, 64)}
REHEARSAL_SIZES = {"sd": (2, 4, 8, 8), "hbm": (4, 4, 16, 16)}   # hbm: 1024 elements a sample, so 512 splits it
# (elements per program, warps or None for the default's): 2048/4096 at 8 warps keep 8 elements a thread, as the
# default does; at 4 warps a thread loads 32 or 64 bytes of each input, in bf16 as much as fp32 does at the default
BLOCK_CANDIDATES = ((2048, None), (4096, None), (2048, 4), (4096, 4))
REHEARSAL_BLOCKS = ((256, None), (512, None), (512, 2))   # below the rehearsal's 1024 elements a sample: 4 or 2 programs
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=1e-2)}


def _inputs(shape, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    u, c, x, noise = (torch.randn(shape, generator=g, device=device).to(dtype) for _ in range(4))
    batch = shape[0]
    a_t = torch.rand(batch, generator=g, device=device) * 0.5 + 0.2
    a_prev = (a_t + 0.2).clamp(max=0.999)
    sigma = torch.rand(batch, generator=g, device=device) * 0.1 + 0.05
    return u, c, x, noise, a_t, a_prev, sigma


def _alternated_ms(providers: dict, reps: int, device: str, inner: int) -> dict[str, float]:
    """Median ms per call of each provider, the providers alternated within every repetition."""
    samples: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(reps):
        for name, fn in providers.items():
            samples[name].append(median_ms(fn, 1, device, inner))
    return {name: sorted(ts)[len(ts) // 2] for name, ts in samples.items()}


def block_label(block: int, warps: int | None) -> str:
    return f"b{block}" + (f"w{warps}" if warps else "")


def _measure(rec: StepRecord, size: str, shape: tuple, dtype: torch.dtype, device: str, reps: int,
             block: tuple[int, int | None] | None = None) -> dict:
    # imported here: cxrl.kernels imports triton, which must see TRITON_INTERPRET (set by the suite) first
    from cxrl.kernels import ddim_step_reference, fused_ddim_step
    from cxrl.kernels.ddim_logprob import max_block

    dname = str(dtype).replace("torch.", "")
    if block is not None:   # the same row with up to ``block[0]`` elements per program and ``block[1]`` warps
        with max_block(*block):
            return _measure(rec, f"{size}-{block_label(*block)}", shape, dtype, device, reps)
    u, c, x, noise, a_t, a_prev, sigma = _inputs(shape, dtype, device)
    kw = dict(model_output_text=c, guidance_scale=7.5, noise=noise)

    def fused():
        return fused_ddim_step(u, x, a_t, a_prev, sigma, backend="triton", **kw)

    first_s = timed_first_call(fused, device)   # the compile, on the first shape of each dtype
    prev, log_prob = fused()
    prev_ref, log_prob_ref = ddim_step_reference(u, x, a_t, a_prev, sigma, **kw)
    err_prev = (prev.double() - prev_ref.double()).abs().max().item()
    err_lp = (log_prob.double() - log_prob_ref.double()).abs().max().item()
    ok = torch.allclose(prev.float(), prev_ref.float(), **TOLERANCE[dtype]) and torch.allclose(
        log_prob, log_prob_ref.float(), atol=1e-4 if dtype == torch.float32 else 2e-3, rtol=1e-5)
    rec.check(f"fused step == reference, {size} {dname}", ok, f"max|Δx_prev|={err_prev:.2e} max|Δlogp|={err_lp:.2e}")

    moved = 5 * u.numel() * u.element_size()
    src = torch.randn(moved // 2 // 4, device=device)   # fp32 words: read + write = moved bytes
    dst = torch.empty_like(src)
    inner = 1 if device == "cpu" else max(5, int(2e8 // moved))   # ~0.2 GB per timing on the GPU
    t0 = time.perf_counter()
    ms = _alternated_ms({"fused": fused, "copy": lambda: dst.copy_(src)}, reps, device, inner)
    rec.add_time(compile_s=first_s, run_s=time.perf_counter() - t0)
    fused_gbps, copy_gbps = moved / ms["fused"] / 1e6, moved / ms["copy"] / 1e6
    row = {"size": size, "dtype": dname, "shape": "x".join(map(str, shape)), "moved_MB": moved / 1e6,
           "fused_us": 1e3 * ms["fused"], "copy_us": 1e3 * ms["copy"], "fused_GBps": fused_gbps,
           "copy_GBps": copy_gbps, "fraction_of_copy": fused_gbps / copy_gbps, "first_call_s": first_s}
    rec.row(row)
    print(f"  {size:9s} {dname:8s} {moved / 1e6:8.2f} MB  fused {row['fused_us']:9.2f} us {fused_gbps:8.1f} GB/s"
          f"  copy {copy_gbps:8.1f} GB/s  {row['fraction_of_copy']:.2f} of copy", flush=True)
    return row


def bandwidth_step(rec: StepRecord, rehearse: bool) -> None:
    """Every (dtype, size) row on its own: one that raises fails its check and the next one runs."""
    import traceback

    device = device_for(rehearse)
    sizes = REHEARSAL_SIZES if rehearse else SIZES
    rec.headline(goal_fraction_of_copy=GOAL_FRACTION_OF_COPY)
    fractions = []
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            dname = str(dtype).replace("torch.", "")
            for size, shape in sizes.items():
                try:
                    row = _measure(rec, size, shape, dtype, device, reps=3 if rehearse else 15)
                except Exception as err:
                    traceback.print_exc()
                    rec.check(f"{size} {dname}", False, f"raised {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                    continue
                if size == "hbm":
                    fractions.append(row["fraction_of_copy"])
                    rec.headline(**{f"hbm_{dname}_fused_GBps": row["fused_GBps"],
                                    f"hbm_{dname}_copy_GBps": row["copy_GBps"],
                                    f"hbm_{dname}_fraction": row["fraction_of_copy"]})
                else:
                    rec.headline(**{f"sd_{dname}_fused_us": row["fused_us"]})
    rec.headline(goal_met=len(fractions) == 2 and min(fractions) >= GOAL_FRACTION_OF_COPY)
    # larger blocks at the HBM size, beside the default: the evidence for (or against) changing MAX_BLOCK
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            for block in REHEARSAL_BLOCKS if rehearse else BLOCK_CANDIDATES:
                try:
                    row = _measure(rec, "hbm", sizes["hbm"], dtype, device, reps=3 if rehearse else 15, block=block)
                except Exception as err:
                    traceback.print_exc()
                    rec.check(f"hbm-{block_label(*block)} {dtype}", False,
                              f"raised {type(err).__name__}: {str(err).splitlines()[0][:300]}")
                    continue
                rec.headline(**{f"hbm_{row['dtype']}_{block_label(*block)}_fraction": row["fraction_of_copy"]})
