"""SSIM / MS-SSIM in torch and the MS-SSIM sample-diversity metric.

Convention (Wang, Simoncelli & Bovik 2003): Gaussian window 11 x 11 with sigma 1.5, K1 = 0.01,
K2 = 0.03, ``data_range = 1`` (images in [0, 1]), statistics over the *valid* region only (no padding),
population (biased) variances. Colour images are reduced to grayscale by ITU-R BT.601 luminance, as
the reward models do (``cxrl.rewards.base``).

MS-SSIM: at scales 1..M the contrast-structure term ``cs`` is averaged over the map, the image is
2x average-pooled between scales, and at the coarsest scale the full SSIM is used:
``MS = prod_{j<M} cs_j^{w_j} * ssim_M^{w_M}`` with the standard weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333). A 5-scale pyramid needs a 176-px image for an 11-px window at
the coarsest scale, so for small images (e.g. the 64-px phantom world) **M is reduced** to the largest
number of scales whose coarsest side is still >= the window, and the first M weights are renormalised to
sum to 1. Results always report the scales used. Negative ``cs``/``ssim`` values (anti-correlated
images) are clamped to 0 before the fractional powers, which would otherwise be undefined.

Diversity: 4 samples per prompt, MS-SSIM of all 6 pairs, averaged per prompt then over prompts;
lower = more diverse.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrl.rewards.base import LUMINANCE_WEIGHTS

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WINDOW_SIZE = 11
WINDOW_SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = WINDOW_SIGMA, dtype=torch.float64) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps centred on the middle one."""
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"SSIM inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dim() != 4:
        raise ValueError(f"SSIM inputs must be [B, C, H, W], got shape {tuple(x.shape)}")


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"SSIM inputs must have 1 or 3 channels, got {x.shape[1]}")
    weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable valid-mode Gaussian filter of ``[B, 1, H, W]``."""
    k = window.to(x)
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    return F.conv2d(x, k.view(1, 1, 1, -1))


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, data_range: float, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term, each ``[B]``."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    sxx = _filter(x * x, window) - mu_x**2
    syy = _filter(y * y, window) - mu_y**2
    sxy = _filter(x * y, window) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs_map).flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Single-scale SSIM per image pair, ``[B]`` (grayscale, Gaussian 11/1.5, valid region), float64."""
    _check_pair(x, y)
    if min(x.shape[-2:]) < WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {WINDOW_SIZE} px, got {tuple(x.shape[-2:])}")
    x, y = _grayscale(x).double(), _grayscale(y).double()
    return _ssim_and_cs(x, y, data_range, gaussian_window())[0]


def ms_ssim_num_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Largest number of scales (<= max_scales) whose coarsest side is still >= the window size."""
    side = min(height, width)
    if side < WINDOW_SIZE:
        raise ValueError(f"MS-SSIM needs images of at least {WINDOW_SIZE} px, got {height}x{width}")
    scales = 1
    while scales < max_scales and side // 2**scales >= WINDOW_SIZE:
        scales += 1
    return scales


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, scales: int | None = None) -> torch.Tensor:
    """MS-SSIM per image pair ``[B]`` (float64). ``scales=None`` picks :func:`ms_ssim_num_scales`."""
    _check_pair(x, y)
    num = ms_ssim_num_scales(*x.shape[-2:]) if scales is None else int(scales)
    if not 1 <= num <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"scales must be in [1, {len(MS_SSIM_WEIGHTS)}], got {scales}")
    if min(x.shape[-2:]) // 2 ** (num - 1) < WINDOW_SIZE:
        raise ValueError(f"scales={num} is too many for {tuple(x.shape[-2:])} images with an {WINDOW_SIZE}-px window")
    weights = torch.tensor(MS_SSIM_WEIGHTS[:num], dtype=torch.float64)
    weights = weights / weights.sum()
    window = gaussian_window()
    x, y = _grayscale(x).double(), _grayscale(y).double()
    result = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
    for j in range(num):
        s, cs = _ssim_and_cs(x, y, data_range, window)
        term = s if j == num - 1 else cs
        result = result * term.clamp_min(0) ** weights[j].to(x.device)
        if j < num - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


@dataclass(frozen=True)
class DiversityResult:
    """Mean pairwise MS-SSIM over prompts (lower = more diverse) and how it was computed."""

    mean: float
    per_prompt: list[float]
    scales: int
    weights: tuple[float, ...]
    image_size: tuple[int, int]


def ms_ssim_diversity(samples: torch.Tensor, data_range: float = 1.0) -> DiversityResult:
    """Diversity of ``samples [P, S, C, H, W]`` (S samples per prompt, S = 4 in the paper's protocol):
    MS-SSIM of every unordered pair within a prompt (6 pairs for S = 4), averaged per prompt, then the
    mean over prompts."""
    if samples.dim() != 5:
        raise ValueError(f"samples must be [prompts, samples_per_prompt, C, H, W], got shape {tuple(samples.shape)}")
    num_prompts, per_prompt = samples.shape[:2]
    if per_prompt < 2 or num_prompts < 1:
        raise ValueError(f"samples: need >= 1 prompt and >= 2 samples per prompt, got shape {tuple(samples.shape)}")
    height, width = samples.shape[-2:]
    num = ms_ssim_num_scales(height, width)
    pairs = list(itertools.combinations(range(per_prompt), 2))
    first = torch.stack([samples[:, i] for i, _ in pairs], dim=1).flatten(0, 1)
    second = torch.stack([samples[:, j] for _, j in pairs], dim=1).flatten(0, 1)
    values = ms_ssim(first, second, data_range=data_range, scales=num).view(num_prompts, len(pairs))
    per_prompt_mean = values.mean(dim=1)
    w = torch.tensor(MS_SSIM_WEIGHTS[:num], dtype=torch.float64)
    return DiversityResult(
        mean=float(per_prompt_mean.mean()),
        per_prompt=[float(v) for v in per_prompt_mean],
        scales=num,
        weights=tuple(round(float(v), 6) for v in w / w.sum()),
        image_size=(int(height), int(width)),
    )
