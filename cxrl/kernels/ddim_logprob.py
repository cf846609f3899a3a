"""Fused DDIM step + Gaussian log-probability, classifier-free-guidance combine included.

Read top to bottom: torch reference (the spec) -> Triton forward/backward kernels -> launchers ->
``autograd.Function`` -> :func:`fused_ddim_step`, the entry point (Triton on CUDA, reference elsewhere).

Per sample b (coefficients are tensors [B] on the device, so nothing here syncs with the host)::

    m      = u + s * (c - u)                          CFG combine (m = u without CFG)
    x0, e  = from m and x_t by prediction type        epsilon | sample | v_prediction (as diffusers)
    x0     = clamp(x0, -r, r)                         clip_sample; dynamic thresholding: reference only
    mu     = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * e
    x_prev = mu + sigma * z                           "draw" mode (noise z given); or x_prev given
    logp   = mean_i [ -(x_prev_i - mu_i)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi) ]

The order of the floating-point operations follows ``diffusers.DDIMScheduler.step`` so that the fp32
mean agrees with it to rounding. Arithmetic is fp32 whatever the input dtype (fp64 in the reference
for fp64 inputs); ``x_prev`` is returned in ``promote_types(model_output, sample)`` like diffusers,
and the log-prob is measured against that rounded ``x_prev`` (the action that is stored) in fp32.

Gradients flow to the model output(s) only: x_t, the coefficients, the noise and a given x_prev are
constants (DDPO convention: the log-prob treats x_prev as data). In draw mode the returned x_prev
also carries a gradient through mu.

Log-prob reduction (Triton): one program per (sample, block of elements) writes its partial sum to a
[B, n_blocks] buffer, and ``partials.sum(1)`` finishes it. This is deterministic (bitwise equal on
repeated calls, unlike atomic_add), at the price of one tiny extra launch.

Dispatch: Triton for CUDA tensors in fp32/fp16/bf16 when ``cxrl._backend.triton_kernels()`` is active;
dynamic thresholding (a per-sample quantile) and fp64 inputs take the torch reference on CUDA too. The
choice is recorded as ``ddim_step`` in ``cxrl.backend_report()``. sigma = 0 (eta = 0, or a schedule whose
final step has alpha_prev = 1) has no density: the log-prob is NaN there; ``cxrl.diffusion.ddim``
refuses such steps up front.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .ddim_logprob_dispatch import PREDICTION_TYPES, pick_backend, validate_inputs

try:  # the reference below works without triton; _backend reports why triton is off
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton ships with torch on Linux
    triton = None

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------
# torch reference: the spec
# ----------------------------------------------------------------------------------------------
def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen dynamic thresholding as diffusers applies it: per sample s = clamp(quantile(|x0|), 1, max)."""
    flat = x0.reshape(x0.shape[0], -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape)


def ddim_step_reference(
    model_output, sample, alpha_prod_t, alpha_prod_prev, std_dev_t, *, model_output_text=None,
    guidance_scale=1.0, noise=None, prev_sample=None, prediction_type="epsilon", clip_sample_range=None,
    threshold=None,
):
    """Plain torch DDIM step + log-prob; differentiable w.r.t. the model output(s) by torch autograd.

    ``threshold``: ``(ratio, max_value)`` for dynamic thresholding, or None. Returns (prev_sample, log_prob [B]).
    """
    tensors = [model_output, sample] + ([model_output_text] if model_output_text is not None else [])
    compute = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    out_dtype = _result_dtype(model_output, sample, model_output_text)
    view = (sample.shape[0],) + (1,) * (sample.dim() - 1)
    a_t = alpha_prod_t.detach().to(compute).view(view)
    a_prev = alpha_prod_prev.detach().to(compute).view(view)
    sigma = std_dev_t.detach().to(compute).view(view)
    x = sample.detach().to(compute)

    m = model_output.to(compute)
    if model_output_text is not None:
        m = m + guidance_scale * (model_output_text.to(compute) - m)

    beta_t = 1 - a_t
    if prediction_type == "epsilon":
        x0 = (x - beta_t.sqrt() * m) / a_t.sqrt()
        eps = m
    elif prediction_type == "sample":
        x0 = m
        eps = (x - a_t.sqrt() * x0) / beta_t.sqrt()
    elif prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - beta_t.sqrt() * m
        eps = a_t.sqrt() * m + beta_t.sqrt() * x
    else:
        raise ValueError(f"prediction_type {prediction_type!r} must be one of {sorted(PREDICTION_TYPES)}")

    if threshold is not None:
        x0 = dynamic_threshold(x0, *threshold)
    elif clip_sample_range is not None:
        # the gradient passes strictly inside the range, as in the Triton kernel: torch's own clamp backward
        # differs at the bounds themselves between versions/devices (0 on the CPU with torch 2.14, 1 on CUDA with
        # 2.11), and a model output of exactly +-1 is common in bf16
        inside = (x0 > -clip_sample_range) & (x0 < clip_sample_range)
        x0 = torch.where(inside, x0, x0.detach().clamp(-clip_sample_range, clip_sample_range))

    direction = (1 - a_prev - sigma**2).clamp_min(0).sqrt() * eps
    mean = a_prev.sqrt() * x0 + direction
    if noise is not None:
        prev_sample = (mean + sigma * noise.detach().to(compute)).to(out_dtype)
    diff = prev_sample.detach().to(compute) - mean
    # mean_i[-d_i^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)], with the per-sample terms after the mean
    sq_mean = (diff**2).mean(dim=tuple(range(1, sample.dim())))
    sigma = sigma.flatten()
    return prev_sample, -sq_mean / (2 * sigma**2) - sigma.log() - LOG_SQRT_2PI


def _result_dtype(model_output, sample, model_output_text=None) -> torch.dtype:
    dtype = torch.promote_types(model_output.dtype, sample.dtype)
    return dtype if model_output_text is None else torch.promote_types(dtype, model_output_text.dtype)


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------
if triton is not None:

    @triton.jit
    def _ddim_mean(m, x, a_t, a_prev, sigma, clip_range, PRED_TYPE: tl.constexpr, CLIP: tl.constexpr):
        """mu and d mu / d m (elementwise) for one block; the op order mirrors diffusers."""
        sqrt_a_t = tl.sqrt_rn(a_t)
        sqrt_b_t = tl.sqrt_rn(1.0 - a_t)
        if PRED_TYPE == 0:  # epsilon
            x0 = tl.div_rn(x - sqrt_b_t * m, sqrt_a_t)
            eps = m
            dx0 = -tl.div_rn(sqrt_b_t, sqrt_a_t)
            deps = 1.0
        elif PRED_TYPE == 1:  # sample
            x0 = m
            eps = tl.div_rn(x - sqrt_a_t * x0, sqrt_b_t)
            dx0 = 1.0
            deps = -tl.div_rn(sqrt_a_t, sqrt_b_t)
        else:  # v_prediction
            x0 = sqrt_a_t * x - sqrt_b_t * m
            eps = sqrt_a_t * m + sqrt_b_t * x
            dx0 = -sqrt_b_t
            deps = sqrt_a_t
        dx0 = dx0 + tl.zeros_like(x0)
        if CLIP:  # torch.clamp passes no gradient at the bounds themselves (lo < x < hi); neither do we
            inside = (x0 > -clip_range) & (x0 < clip_range)
            dx0 = tl.where(inside, dx0, 0.0)
            x0 = tl.minimum(tl.maximum(x0, -clip_range), clip_range)
        sqrt_a_prev = tl.sqrt_rn(a_prev)
        c_dir = tl.sqrt_rn(tl.maximum(1.0 - a_prev - sigma * sigma, 0.0))
        mean = sqrt_a_prev * x0 + c_dir * eps
        return mean, sqrt_a_prev * dx0 + c_dir * deps

    @triton.jit
    def _load_mean(u_ptr, c_ptr, x_ptr, a_t_ptr, a_prev_ptr, sigma_ptr, b, idx, valid, guidance_scale, clip_range,
                   PRED_TYPE: tl.constexpr, HAS_CFG: tl.constexpr, CLIP: tl.constexpr):
        """Sample b's coefficients, the guided model output m and x_t for one block -> (mu, d mu/d m, sigma)."""
        a_t = tl.load(a_t_ptr + b).to(tl.float32)
        a_prev = tl.load(a_prev_ptr + b).to(tl.float32)
        sigma = tl.load(sigma_ptr + b).to(tl.float32)
        m = tl.load(u_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        if HAS_CFG:
            m = m + guidance_scale * (tl.load(c_ptr + idx, mask=valid, other=0.0).to(tl.float32) - m)
        x = tl.load(x_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        mean, dmean = _ddim_mean(m, x, a_t, a_prev, sigma, clip_range, PRED_TYPE, CLIP)
        return mean, dmean, sigma  # the forward leaves dmean unused; the compiler drops it

    @triton.jit
    def _cast_rne(x, dtype: tl.constexpr):
        """fp32 -> ``dtype`` rounding to nearest-even. GPUs round on fp32 -> bf16 casts but the Triton
        interpreter truncates, so bf16 is rounded here by hand and both agree bitwise with torch."""
        if dtype == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            x = (bits & 0xFFFF0000).to(tl.float32, bitcast=True)
        return x.to(dtype)

    @triton.jit
    def _ddim_logprob_fwd_kernel(
        u_ptr, c_ptr, x_ptr, z_ptr, prev_ptr, a_t_ptr, a_prev_ptr, sigma_ptr, partial_ptr,
        n_per_sample, n_blocks, guidance_scale, clip_range,
        PRED_TYPE: tl.constexpr, HAS_CFG: tl.constexpr, DRAW: tl.constexpr, CLIP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        b = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n_per_sample
        idx = b.to(tl.int64) * n_per_sample + offs
        mean, _, sigma = _load_mean(u_ptr, c_ptr, x_ptr, a_t_ptr, a_prev_ptr, sigma_ptr, b, idx, valid,
                                    guidance_scale, clip_range, PRED_TYPE, HAS_CFG, CLIP)
        if DRAW:
            z = tl.load(z_ptr + idx, mask=valid, other=0.0).to(tl.float32)
            prev_out = _cast_rne(mean + sigma * z, prev_ptr.dtype.element_ty)
            tl.store(prev_ptr + idx, prev_out, mask=valid)
            prev = prev_out.to(tl.float32)  # the density of the stored (rounded) action
        else:
            prev = tl.load(prev_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        zz = (prev - mean) / sigma
        sq = tl.where(valid, zz * zz, 0.0)
        partial = -0.5 * tl.sum(sq, axis=0) / n_per_sample
        # the constant -log sigma - log sqrt(2 pi) is added once per sample, by its first block
        partial = partial - tl.where(blk == 0, tl.log(sigma) + 0.9189385332046727, 0.0)
        tl.store(partial_ptr + b * n_blocks + blk, partial)

    @triton.jit
    def _ddim_logprob_bwd_kernel(
        u_ptr, c_ptr, x_ptr, prev_ptr, g_prev_ptr, g_lp_ptr, a_t_ptr, a_prev_ptr, sigma_ptr,
        g_u_ptr, g_c_ptr, n_per_sample, guidance_scale, clip_range,
        PRED_TYPE: tl.constexpr, HAS_CFG: tl.constexpr, HAS_G_PREV: tl.constexpr, CLIP: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        blk = tl.program_id(0)
        b = tl.program_id(1)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        valid = offs < n_per_sample
        idx = b.to(tl.int64) * n_per_sample + offs
        mean, dmean, sigma = _load_mean(u_ptr, c_ptr, x_ptr, a_t_ptr, a_prev_ptr, sigma_ptr, b, idx, valid,
                                        guidance_scale, clip_range, PRED_TYPE, HAS_CFG, CLIP)
        g_lp = tl.load(g_lp_ptr + b).to(tl.float32)
        prev = tl.load(prev_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        # d logp / d mu = (x_prev - mu) / (sigma^2 n); divided in two steps to stay in range
        g_mean = g_lp * ((prev - mean) / sigma / sigma) / n_per_sample
        if HAS_G_PREV:
            g_mean += tl.load(g_prev_ptr + idx, mask=valid, other=0.0).to(tl.float32)
        g_m = g_mean * dmean
        if HAS_CFG:
            tl.store(g_u_ptr + idx, _cast_rne((1.0 - guidance_scale) * g_m, g_u_ptr.dtype.element_ty), mask=valid)
            tl.store(g_c_ptr + idx, _cast_rne(guidance_scale * g_m, g_c_ptr.dtype.element_ty), mask=valid)
        else:
            tl.store(g_u_ptr + idx, _cast_rne(g_m, g_u_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------
MAX_BLOCK = 1024
_max_block_override: list[tuple[int, int | None]] = []   # set only by max_block() (the GPU suite's bandwidth step)


@contextlib.contextmanager
def max_block(elements: int, num_warps: int | None = None):
    """Launch with up to ``elements`` per program inside the block (a power of two >= 16), and with ``num_warps`` warps
    when given (else 4 up to 1024 elements, 8 above). For measurements: on an H200 the bf16 step took as long as the
    fp32 one for half the bytes, and blocks of 2048/4096 at 8 warps were slower still (docs/benchmarks.md, "GPU
    results"). Both of those keep 8 elements per thread, one 16-byte load per input in bf16 against two in fp32, so
    the suite also times 2048 and 4096 at 4 warps (16 and 32 elements per thread) before any default changes."""
    if elements < 16 or elements & (elements - 1):
        raise ValueError(f"max_block: elements must be a power of two >= 16, got {elements}")
    if num_warps is not None and num_warps not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"max_block: num_warps must be a power of two from 1 to 32, got {num_warps}")
    _max_block_override.append((elements, num_warps))
    try:
        yield
    finally:
        _max_block_override.pop()


def _launch_config(n_per_sample: int) -> tuple[int, int]:
    # 1024 elements (4 KiB of fp32 per input) per program keeps enough programs in flight at SD
    # shape (32 x 16 per step) while the log-prob partials buffer stays tiny
    cap, warps = _max_block_override[-1] if _max_block_override else (MAX_BLOCK, None)
    block = min(cap, triton.next_power_of_2(max(n_per_sample, 16)))
    return block, warps or (4 if block <= 1024 else 8)


def _forward_triton(u, c, x, noise, prev, a_t, a_prev, sigma, guidance_scale, prediction_type, clip_range):
    batch = x.shape[0]
    n = x[0].numel()
    block, warps = _launch_config(n)
    n_blocks = triton.cdiv(n, block)
    draw = noise is not None
    if draw:
        prev = torch.empty(x.shape, dtype=_result_dtype(u, x, c), device=x.device)
    partials = torch.empty((batch, n_blocks), dtype=torch.float32, device=x.device)
    _ddim_logprob_fwd_kernel[(n_blocks, batch)](
        u, c if c is not None else u, x, noise if draw else x, prev, a_t, a_prev, sigma, partials,
        n, n_blocks, float(guidance_scale), float(clip_range or 0.0),
        PRED_TYPE=PREDICTION_TYPES[prediction_type], HAS_CFG=c is not None, DRAW=draw,
        CLIP=clip_range is not None, BLOCK=block, num_warps=warps,
    )
    return prev, (partials[:, 0] if n_blocks == 1 else partials.sum(dim=1))


def _backward_triton(u, c, x, prev, g_prev, g_lp, a_t, a_prev, sigma, guidance_scale, prediction_type, clip_range):
    n = x[0].numel()
    block, warps = _launch_config(n)
    g_u = torch.empty_like(u)
    g_c = torch.empty_like(c) if c is not None else None
    _ddim_logprob_bwd_kernel[(triton.cdiv(n, block), x.shape[0])](
        u, c if c is not None else u, x, prev, g_prev if g_prev is not None else x, g_lp.contiguous(),
        a_t, a_prev, sigma, g_u, g_c if g_c is not None else g_u, n, float(guidance_scale),
        float(clip_range or 0.0),
        PRED_TYPE=PREDICTION_TYPES[prediction_type], HAS_CFG=c is not None, HAS_G_PREV=g_prev is not None,
        CLIP=clip_range is not None, BLOCK=block, num_warps=warps,
    )
    return g_u, g_c


# ----------------------------------------------------------------------------------------------
# autograd.Function
# ----------------------------------------------------------------------------------------------
class FusedDDIMStepFunction(torch.autograd.Function):
    """Triton forward/backward. Outputs (prev_sample, log_prob) in draw mode, log_prob alone otherwise."""

    @staticmethod
    def forward(ctx, u, c, x, noise, prev, a_t, a_prev, sigma, guidance_scale, prediction_type, clip_range):
        prev_out, log_prob = _forward_triton(u, c, x, noise, prev, a_t, a_prev, sigma, guidance_scale,
                                             prediction_type, clip_range)
        ctx.save_for_backward(u, c, x, prev_out, a_t, a_prev, sigma)
        ctx.settings = (guidance_scale, prediction_type, clip_range)
        ctx.draw = noise is not None
        if ctx.draw:
            return prev_out, log_prob
        return log_prob

    @staticmethod
    def backward(ctx, *grads):
        u, c, x, prev, a_t, a_prev, sigma = ctx.saved_tensors
        g_prev, g_lp = grads if ctx.draw else (None, grads[0])
        if g_lp is None:
            g_lp = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        if g_prev is not None:
            g_prev = g_prev.contiguous()
        g_u, g_c = _backward_triton(u, c, x, prev, g_prev, g_lp, a_t, a_prev, sigma, *ctx.settings)
        return g_u, g_c, None, None, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------------
def fused_ddim_step(
    model_output, sample, alpha_prod_t, alpha_prod_prev, std_dev_t, *, model_output_text=None,
    guidance_scale=1.0, noise=None, prev_sample=None, prediction_type="epsilon", clip_sample_range=None,
    threshold=None, backend="auto",
):
    """One DDIM step with the log-density of x_prev, CFG combine included.

    model_output: the model's prediction (the *unconditional* one when ``model_output_text`` is given,
        then combined as ``u + guidance_scale * (text - u)``); sample: x_t. Both [B, ...].
    alpha_prod_t, alpha_prod_prev, std_dev_t: per-sample tensors [B] on the tensors' device.
    noise: draw mode, x_prev = mu + sigma * noise. prev_sample: log-prob of this stored x_prev. Exactly one.
    prediction_type: 'epsilon' | 'sample' | 'v_prediction'; clip_sample_range: clamp x0 to [-r, r] or None;
    threshold: (ratio, max_value) for dynamic thresholding (reference path only).
    backend: 'auto' (Triton for CUDA tensors when triton is active, else the torch reference; the choice
        is recorded in ``cxrl.backend_report()``), 'triton' or 'reference'.

    Returns (prev_sample, log_prob [B] float32, or float64 for fp64 inputs on the reference path).
    A sigma of 0 (a deterministic step) has no density: its log-prob comes out NaN; callers that know
    the schedule on the host should refuse such steps (``cxrl.diffusion.DDIMTables.check_stochastic``).
    """
    coefficients = {"alpha_prod_t": alpha_prod_t, "alpha_prod_prev": alpha_prod_prev, "std_dev_t": std_dev_t}
    validate_inputs(model_output, sample, coefficients, model_output_text, noise, prev_sample, prediction_type)
    inputs = [model_output, sample] + [t for t in (model_output_text, noise, prev_sample) if t is not None]
    if pick_backend(backend, inputs, threshold) == "reference":
        return ddim_step_reference(
            model_output, sample, alpha_prod_t, alpha_prod_prev, std_dev_t, model_output_text=model_output_text,
            guidance_scale=guidance_scale, noise=noise, prev_sample=prev_sample, prediction_type=prediction_type,
            clip_sample_range=clip_sample_range, threshold=threshold,
        )

    def prep(t):
        return None if t is None else t.contiguous()

    out = FusedDDIMStepFunction.apply(
        prep(model_output), prep(model_output_text), prep(sample).detach(), prep(noise),
        None if prev_sample is None else prep(prev_sample).detach(), prep(alpha_prod_t).detach(),
        prep(alpha_prod_prev).detach(), prep(std_dev_t).detach(), float(guidance_scale), prediction_type,
        None if clip_sample_range is None else float(clip_sample_range),
    )
    return out if noise is not None else (prev_sample, out)
