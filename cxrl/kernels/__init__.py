"""Triton kernels with torch references (``cxrl.kernels``): one op per file, read top to bottom."""
from .ddim_logprob import ddim_step_reference, fused_ddim_step
from .flash_attention import flash_attention

__all__ = ["ddim_step_reference", "flash_attention", "fused_ddim_step"]
