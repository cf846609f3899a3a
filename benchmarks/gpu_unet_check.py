"""A UNet run through cxrl's attention processor equals the same UNet through diffusers' SDPA processor.

The SD-1.5 UNet layout (random weights, batch 2 = one CFG pair, 64x64 latents, 77 context tokens) runs
forward + backward under bf16 autocast three ways on the same weights and inputs: diffusers'
``AttnProcessor2_0`` (SDPA), ``set_attention_backend(unet, "triton")`` (cxrl's Triton flash attention in
every attention module) and ``set_attention_backend(unet, "auto")``. A fourth run in fp32 with SDPA (TF32
off) is the reference. Pass rule, per output and per gradient (all UNet parameters, and the attention
modules' alone): relative L2 error vs the reference <= 2 x SDPA's own bf16 error + 1e-3. Also timed:
one forward+backward per processor.

The rehearsal uses the same code at a tiny width in fp32 with the kernel interpreted: widths 40/80/160/160
with one head, so the head dims are SD-1.5's 40/80/160 (the interpreter cannot run bf16 dots).
"""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

from .gpu_steps import StepRecord, device_for, median_ms

GPU_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
                attention_head_dim=8, sample_size=64)
REHEARSAL_UNET = dict(block_out_channels=(40, 80, 160, 160), layers_per_block=1, cross_attention_dim=32,
                      attention_head_dim=1, sample_size=8, norm_num_groups=8)
FLOOR = {torch.bfloat16: 1e-3, torch.float32: 1e-4}   # added to 2x SDPA's own error


def build_unet(cfg: dict, device: str):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    levels = len(cfg["block_out_channels"])
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4,
                                    down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                                    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1), **cfg)
    return unet.train()


def _inputs(cfg: dict, device: str):
    g = torch.Generator(device=device).manual_seed(1)
    side = cfg["sample_size"]
    x = torch.randn(2, 4, side, side, generator=g, device=device)
    t = torch.tensor([981, 981], device=device)
    ctx = torch.randn(2, 77, cfg["cross_attention_dim"], generator=g, device=device)
    weight = torch.randn(2, 4, side, side, generator=g, device=device)   # the loss: a random projection
    return x, t, ctx, weight


def _forward_backward(unet, inputs, autocast, keep: bool = True) -> tuple[torch.Tensor, dict]:
    x, t, ctx, weight = inputs
    unet.zero_grad(set_to_none=True)
    with autocast():
        out = unet(x, t, encoder_hidden_states=ctx).sample
    (out.float() * weight).sum().backward()
    if not keep:
        return out, {}
    grads = {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def _flat(grads: dict, only_attention: bool) -> torch.Tensor:
    return torch.cat([g.flatten().float() for n, g in sorted(grads.items()) if not only_attention or ".attn" in n])


def _use(unet, processor: str) -> int:
    # imported here: cxrl.diffusion.attention imports the Triton kernels, which must see TRITON_INTERPRET first
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from cxrl.diffusion.attention import set_attention_backend

    if processor == "sdpa":
        modules = [m for m in unet.modules() if isinstance(m, Attention)]
        unet.set_attn_processor(AttnProcessor2_0())
        return len(modules)
    return set_attention_backend(unet, processor)


def _attention_choices() -> dict:
    import cxrl

    return {k: v for k, v in cxrl.backend_report()["choices"].items() if k.startswith("attention")}


def unet_equivalence_step(rec: StepRecord, rehearse: bool) -> None:
    import traceback

    device = device_for(rehearse)
    cfg = REHEARSAL_UNET if rehearse else GPU_UNET
    dtype = torch.float32 if rehearse else torch.bfloat16
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if device == "cuda" else nullcontext
    torch.backends.cuda.matmul.allow_tf32 = False   # the fp32 reference must be fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    unet = build_unet(cfg, device)
    inputs = _inputs(cfg, device)
    rec.headline(widths=list(cfg["block_out_channels"]), precision="bf16-autocast" if dtype == torch.bfloat16 else "fp32",
                 parameters_M=sum(p.numel() for p in unet.parameters()) / 1e6)

    _use(unet, "sdpa")
    out_ref, grads_ref = _forward_backward(unet, inputs, nullcontext)
    ref = {"out": out_ref, "grad": _flat(grads_ref, False), "attn_grad": _flat(grads_ref, True)}
    del grads_ref
    errors, ms = {}, {}
    for processor in ("sdpa", "triton", "auto"):
        try:
            modules = _use(unet, processor)
            t0 = time.perf_counter()
            out, grads = _forward_backward(unet, inputs, autocast)   # first call: compiles, auto decides
            first_s = time.perf_counter() - t0
            if processor == "triton":   # what the dispatcher recorded for this run's attention calls
                on_triton = [k for k, v in _attention_choices().items() if v.startswith("triton")]
                rec.check("the Triton kernel ran inside the UNet", len(on_triton) > 0,
                          f"{len(on_triton)} attention shapes recorded on triton")
                rec.headline(triton_attention_shapes=len(on_triton))
            errors[processor] = {"out": _rel(out, ref["out"]), "grad": _rel(_flat(grads, False), ref["grad"]),
                                 "attn_grad": _rel(_flat(grads, True), ref["attn_grad"])}
            del grads
            t0 = time.perf_counter()
            ms[processor] = median_ms(lambda: _forward_backward(unet, inputs, autocast, keep=False),
                                      1 if rehearse else 3, device)
        except Exception as err:
            traceback.print_exc()
            rec.check(f"{processor} processor runs", False, f"raised {type(err).__name__}: {str(err).splitlines()[0][:300]}")
            continue
        rec.add_time(compile_s=first_s, run_s=time.perf_counter() - t0)
        rec.row({"processor": processor, "attention_modules": modules, "fwd_bwd_ms": ms[processor],
                 "first_call_s": first_s, **{f"rel_err_{k}": v for k, v in errors[processor].items()}})
        print(f"  {processor:7s} {modules} attention modules  fwd+bwd {ms[processor]:9.2f} ms  "
              f"rel err out {errors[processor]['out']:.2e} grad {errors[processor]['grad']:.2e}", flush=True)
        rec.headline(**{f"rel_err_{processor}_{w}": e for w, e in errors[processor].items()},
                     **{f"fwd_bwd_ms_{processor}": ms[processor]})

    if "sdpa" not in errors:
        rec.check("SDPA processor baseline", False, "the SDPA run failed: nothing to compare with")
        return
    for processor in ("triton", "auto"):
        for what, err in errors.get(processor, {}).items():
            allowed = 2 * errors["sdpa"][what] + FLOOR[dtype]
            rec.check(f"{processor} processor {what} == SDPA processor", err <= allowed,
                      f"rel err {err:.2e} vs allowed {allowed:.2e} (sdpa's own {errors['sdpa'][what]:.2e})")
