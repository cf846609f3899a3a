"""Cheap deterministic rewards for the RL tests (loaded by name as custom rewards)."""
import torch


def brightness(images, prompts, metadata):
    """Mean pixel value: a smooth reward every tiny generator can move."""
    return images.float().mean(dim=(1, 2, 3))


def contrast(images, prompts, metadata):
    return images.float().flatten(1).std(dim=1)


def poisoned(images, prompts, metadata):
    """Brightness, but NaN for prompts containing 'poison' (exercises the non-finite paths)."""
    out = images.float().mean(dim=(1, 2, 3))
    bad = torch.tensor(["poison" in p for p in prompts], device=out.device)
    return torch.where(bad, torch.full_like(out, float("nan")), out)
