"""cxrl: policy-gradient RL fine-tuning of text-to-chest-X-ray diffusion models (CXRL, MICCAI 2024).

Each stage is usable alone: ``cxrl.trajectory`` (the store), ``cxrl.diffusion`` (generator, ACE,
rollouts), ``cxrl.rewards`` (reward models, RLCF), ``cxrl.rl`` (the trainer), ``cxrl.data``.
"""
from cxrl._backend import backend_report

__version__ = "0.1.0"
__all__ = ["backend_report", "__version__"]
