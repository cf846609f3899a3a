"""One rollout DDIM step with its log-prob (CFG combine included): cxrl's fused step vs the eager way.

Providers, all given the same model outputs (uncond + text), x_t, timestep tensor [B] and noise:
  eager_ddpo       CFG combine, ``timestep.cpu()`` to index the schedule on the host (ddpo-pytorch
                   does this every step: a device sync on CUDA), ``DDIMScheduler.step`` with the
                   noise, then the log-prob as separate torch ops (mean = x_prev - sigma * noise).
  cxrl_reference   ``DDIMTables.coefficients`` (on-device gather) + ``fused_ddim_step`` reference path.
  cxrl_triton      the same with the fused Triton kernel (CUDA only); cxrl_triton_kernel: the kernel
                   and its partial-sum reduction alone (coefficients gathered once), for the GB/s.
  copy_yardstick   ``torch.empty_like(y).copy_(y)`` of a tensor holding as many bytes as the fused
                   kernel moves (reads u, c, x_t, noise; writes x_prev), CUDA only: the achieved
                   GB/s of the fused kernel is reported as a fraction of this copy's GB/s.
Mode ``ppo-recompute-backward``: the log-prob of a stored x_prev and its gradient w.r.t. both model
outputs (the PPO update's share of the step); eager_ddpo gets the mean from ``DDIMScheduler.step``
with zero noise and differentiates through it.
On CUDA each timed call runs ``inner`` back-to-back steps and the per-step time is reported; the CPU
size runs with one intra-op thread (stable numbers on a shared machine).

``python -m benchmarks.bench_ddim_step [--size cpu|gpu]`` (or ``cxrl bench ddim_step``).
"""
from __future__ import annotations

import math

import torch

from .harness import CaseResult, Timing, case_main, device_for_size, single_thread_on_cpu, time_side_by_side

CASE = "ddim_step"
SHAPES = {"sd-32x4x64x64": (32, 4, 64, 64), "pixel-32x1x64x64": (32, 1, 64, 64)}
GUIDANCE = 7.5
ETA = 1.0


def _scheduler():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                      set_alpha_to_one=False, steps_offset=1)
    s.set_timesteps(50)
    return s


def eager_ddpo_step(scheduler, uncond, text, timestep, sample, noise):
    """The ddpo-pytorch pattern: host-side schedule lookup, diffusers' step, log-prob as extra ops."""
    model_output = uncond + GUIDANCE * (text - uncond)
    t = int(timestep.cpu()[0])  # per-step host sync on CUDA, as ddpo-pytorch's timestep.cpu()
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    std = ETA * scheduler._get_variance(t, prev_t) ** 0.5
    prev = scheduler.step(model_output, t, sample, eta=ETA, variance_noise=noise).prev_sample
    mean = prev - std.to(prev.device) * noise
    log_prob = -((prev.detach() - mean) ** 2) / (2 * std.to(prev.device) ** 2) - torch.log(std) - math.log(
        math.sqrt(2 * math.pi))
    return prev, log_prob.mean(dim=tuple(range(1, prev.dim())))


def eager_ddpo_recompute(scheduler, uncond, text, timestep, sample, prev):
    model_output = uncond + GUIDANCE * (text - uncond)
    t = int(timestep.cpu()[0])
    prev_t = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    std = (ETA * scheduler._get_variance(t, prev_t) ** 0.5).to(prev.device)
    mean = scheduler.step(model_output, t, sample, eta=ETA, variance_noise=torch.zeros_like(sample)).prev_sample
    log_prob = -((prev - mean) ** 2) / (2 * std**2) - torch.log(std) - math.log(math.sqrt(2 * math.pi))
    return log_prob.mean(dim=tuple(range(1, prev.dim())))


def _with_grad(recompute):
    """Log-prob of the stored step and its gradient w.r.t. both model outputs (leaves)."""
    def step(uncond, text, timestep, sample, prev):
        with torch.enable_grad():
            log_prob = recompute(uncond, text, timestep, sample, prev)
            return log_prob, torch.autograd.grad(log_prob.sum(), (uncond, text))
    return step


def _cxrl_recompute(tables, backend):
    from cxrl.kernels.ddim_logprob import fused_ddim_step

    def recompute(uncond, text, timestep, sample, prev):
        a_t, a_prev, sigma = tables.coefficients(timestep, sample.shape[0], ETA)
        return fused_ddim_step(uncond, sample, a_t, a_prev, sigma, model_output_text=text,
                               guidance_scale=GUIDANCE, prev_sample=prev, prediction_type=tables.prediction_type,
                               clip_sample_range=tables.clip_sample_range, backend=backend)[1]

    return recompute


def _cxrl_step(tables, backend):
    from cxrl.kernels.ddim_logprob import fused_ddim_step

    def step(uncond, text, timestep, sample, noise):
        a_t, a_prev, sigma = tables.coefficients(timestep, sample.shape[0], ETA)
        return fused_ddim_step(uncond, sample, a_t, a_prev, sigma, model_output_text=text,
                               guidance_scale=GUIDANCE, noise=noise, prediction_type=tables.prediction_type,
                               clip_sample_range=tables.clip_sample_range, backend=backend)

    return step


def _kernel_only(tables, uncond, text, timestep, sample, noise):
    """The fused kernel (+ its partial-sum reduction) with the coefficients gathered once: its GB/s."""
    from cxrl.kernels.ddim_logprob import fused_ddim_step

    a_t, a_prev, sigma = tables.coefficients(timestep, sample.shape[0], ETA)
    return lambda: fused_ddim_step(uncond, sample, a_t, a_prev, sigma, model_output_text=text,
                                   guidance_scale=GUIDANCE, noise=noise, backend="triton")


def _repeat(fn, args, inner):
    def call():
        for _ in range(inner):
            fn(*args)
    return call


def _inputs(shape, device):
    from cxrl.diffusion.ddim import DDIMTables

    scheduler = _scheduler()
    g = torch.Generator(device=device).manual_seed(0)
    uncond, text, sample, noise = (torch.randn(shape, generator=g, device=device) for _ in range(4))
    timestep = torch.full((shape[0],), int(scheduler.timesteps[25]), device=device)
    return scheduler, DDIMTables(scheduler, device), (uncond, text, timestep, sample, noise)


def _timed(providers, device, reps, inner):
    raw = time_side_by_side(providers, reps=reps, warmup=2, device=device)
    timings = {k: Timing(k, [s / inner for s in t.seconds]) for k, t in raw.items()}
    return timings, {f"us_per_step_{k}": 1e6 * t.median for k, t in timings.items()}


def _ppo_case(name, shape, device, reps, inner):
    scheduler, tables, (uncond, text, timestep, sample, noise) = _inputs(shape, device)
    prev = eager_ddpo_step(scheduler, uncond, text, timestep, sample, noise)[0]
    uncond, text = uncond.requires_grad_(True), text.requires_grad_(True)
    args = (uncond, text, timestep, sample, prev)
    steps = {"eager_ddpo": _with_grad(lambda *a: eager_ddpo_recompute(scheduler, *a)),
             "cxrl_reference": _with_grad(_cxrl_recompute(tables, "reference"))}
    if device == "cuda":
        steps["cxrl_triton"] = _with_grad(_cxrl_recompute(tables, "triton"))
    ref_lp, ref_grads = steps["eager_ddpo"](*args)
    for step in steps.values():  # same answer from every provider before timing anything
        lp, grads = step(*args)
        torch.testing.assert_close(lp, ref_lp, rtol=1e-4, atol=1e-4)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)
    timings, extra = _timed({k: _repeat(v, args, inner) for k, v in steps.items()}, device, reps, inner)
    return CaseResult(CASE, name, "ppo-recompute-backward-fp32", timings, baseline="eager_ddpo", extra=extra)


def _case(name, shape, device, reps, inner):
    scheduler, tables, args = _inputs(shape, device)
    uncond = args[0]

    # same answer from every provider before timing anything
    ref_prev, ref_lp = eager_ddpo_step(scheduler, *args)
    providers = {"eager_ddpo": _repeat(lambda *a: eager_ddpo_step(scheduler, *a), args, inner),
                 "cxrl_reference": _repeat(_cxrl_step(tables, "reference"), args, inner)}
    checks = [_cxrl_step(tables, "reference")(*args)]
    extra: dict[str, float] = {}
    if device == "cuda":
        triton_step = _cxrl_step(tables, "triton")
        checks.append(triton_step(*args))
        providers["cxrl_triton"] = _repeat(triton_step, args, inner)
        providers["cxrl_triton_kernel"] = _repeat(_kernel_only(tables, *args), (), inner)
        moved_bytes = 5 * uncond.numel() * uncond.element_size()  # read u, c, x_t, noise; write x_prev
        yard = torch.randn(moved_bytes // 2 // 4, device=device)  # copy: reads + writes moved_bytes
        providers["copy_yardstick"] = _repeat(lambda y: torch.empty_like(y).copy_(y), (yard,), inner)
    for prev, lp in checks:
        torch.testing.assert_close(prev, ref_prev, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lp, ref_lp.float(), rtol=1e-4, atol=1e-4)

    timings, timing_extra = _timed(providers, device, reps, inner)
    extra.update(timing_extra)
    if device == "cuda":
        fused_gbps = moved_bytes / timings["cxrl_triton_kernel"].median / 1e9
        copy_gbps = moved_bytes / timings["copy_yardstick"].median / 1e9
        extra.update(fused_GBps=fused_gbps, copy_GBps=copy_gbps, fused_fraction_of_copy=fused_gbps / copy_gbps)
    return CaseResult(CASE, name, "rollout-cfg-fp32", timings, baseline="eager_ddpo", extra=extra)


def run(size: str = "cpu") -> list[CaseResult]:
    """``cpu``: both shapes on the CPU (reference path vs eager); ``gpu``: both shapes on CUDA with Triton."""
    device = device_for_size(size)
    reps, inner = (20, 200) if device == "cuda" else (30, 1)
    with single_thread_on_cpu(device):
        with torch.no_grad():
            rollout = [_case(name, shape, device, reps, inner) for name, shape in SHAPES.items()]
        return rollout + [_ppo_case(name, shape, device, reps, inner) for name, shape in SHAPES.items()]


if __name__ == "__main__":
    raise SystemExit(case_main(run, __doc__))
