"""Input checks and the backend choice for :func:`cxrl.kernels.ddim_logprob.fused_ddim_step`.

Kept apart from the kernel file so that file reads reference -> kernels -> launchers -> autograd ->
entry point; nothing here launches anything.
"""
from __future__ import annotations

import os

import torch

from cxrl._backend import record_choice, triton_kernels

PREDICTION_TYPES = {"epsilon": 0, "sample": 1, "v_prediction": 2}


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


_last_choice: str | None = None


def _record(choice: str) -> None:
    global _last_choice
    if choice != _last_choice:  # the report keeps the latest; skip the lock when nothing changed
        record_choice("ddim_step", choice)
        _last_choice = choice


def validate_inputs(model_output, sample, coefficients, model_output_text, noise, prev_sample, prediction_type):
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} must be one of {sorted(PREDICTION_TYPES)}")
    if sample.dim() < 2:
        raise ValueError(f"sample must be [B, ...] with at least 2 dims, got shape {tuple(sample.shape)}")
    named = {"model_output": model_output, "model_output_text": model_output_text, "noise": noise,
             "prev_sample": prev_sample}
    for name, t in named.items():
        if t is None:
            continue
        if t.shape != sample.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the shape of sample {tuple(sample.shape)}")
        if t.device != sample.device:
            raise ValueError(f"{name} is on {t.device} but sample is on {sample.device}")
    for name, t in [("sample", sample)] + [(k, v) for k, v in named.items() if v is not None]:
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if (noise is None) == (prev_sample is None):
        raise ValueError("give exactly one of noise (draw x_prev) and prev_sample (log-prob of a stored x_prev)")
    for name, t in coefficients.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor [B] on the device (per-sample coefficients)")
        if t.shape != (sample.shape[0],):
            raise ValueError(f"{name} must have shape [B] = [{sample.shape[0]}], got {tuple(t.shape)}")
        if t.device != sample.device:
            raise ValueError(f"{name} is on {t.device} but sample is on {sample.device}")


def pick_backend(backend, tensors, threshold) -> str:
    if backend not in ("auto", "triton", "reference"):
        raise ValueError(f"backend {backend!r} must be 'auto', 'triton' or 'reference'")
    fp_ok = all(t.dtype in (torch.float32, torch.float16, torch.bfloat16) for t in tensors)
    if backend == "triton":
        if not _triton_installed():
            raise RuntimeError("backend='triton' was requested but triton is not installed")
        if threshold is not None:
            raise ValueError("dynamic thresholding needs a per-sample quantile: use backend='reference'")
        if not fp_ok:
            raise ValueError("the Triton DDIM kernel takes fp32/fp16/bf16 tensors; use backend='reference' for fp64")
        if tensors[0].device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        return "triton"
    if backend == "reference":
        return "reference"
    if tensors[0].device.type != "cuda":
        _record(f"torch reference ({tensors[0].device.type} tensors)")
        return "reference"
    status = triton_kernels()
    if not status.active:
        _record(f"torch reference on CUDA: {status.reason}")
        return "reference"
    if threshold is not None:
        _record("torch reference on CUDA: dynamic thresholding needs a per-sample quantile")
        return "reference"
    if not fp_ok:
        _record("torch reference on CUDA: fp64 inputs (the kernel computes in fp32)")
        return "reference"
    _record("fused Triton kernel (CFG + DDIM + noise + log-prob)")
    return "triton"
