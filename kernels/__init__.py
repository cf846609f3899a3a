from .flash_attention import flash_attention  # noqa: F401
from .ddim_logprob import ddim_step_reference, fused_ddim_step  # noqa: F401
