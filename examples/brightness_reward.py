"""A custom cxrl reward in a few lines: make the generated images brighter.

Trained with ``cxrl train --config examples/brightness.yaml`` (see docs/dropin.md).
"""
import torch


def brightness(images: torch.Tensor, prompts: list[str], metadata: list[dict]) -> torch.Tensor:
    """images [B, C, H, W] in [0, 1] on the policy's device -> one float reward per image, shape [B].

    ``metadata[i]`` holds the prompt's extra CSV/JSONL columns; an optional ``gain`` column scales it.
    """
    gain = torch.tensor([float(m.get("gain", 1.0)) for m in metadata], device=images.device)
    return gain * images.mean(dim=(1, 2, 3))
