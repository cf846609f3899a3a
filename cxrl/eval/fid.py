"""Fréchet distance between Gaussian fits of two feature sets (FID), and its named feature extractors.

Convention: features are fitted with the sample mean and the unbiased covariance (``ddof = 1``, as
pytorch-fid / clean-fid do), everything in float64. The cross term ``tr sqrt(S1 S2)`` is computed as
``sum sqrt(eig(S1^1/2 S2 S1^1/2))``: that matrix is symmetric positive semi-definite, so a symmetric
eigendecomposition is exact up to rounding, with no complex parts and no iteration (scipy's
``sqrtm(S1 @ S2)`` of the non-symmetric product is the usual source of imaginary noise in FID code).

An FID is only meaningful next to the name of the network that produced the features, so every
extractor here carries a ``name`` that goes into ``metrics.json`` as ``feature_extractor``:

* ``XRVDenseNetFeatures`` — torchxrayvision DenseNet-121 ``features2`` (1024-d, input 224, pixel range
  [-1024, 1024]); its weights must already be in the cache dir (nothing is downloaded).
* ``ClassifierFeatures`` — the ``features(images)`` embedding of one of the project's own classifiers
  (the phantom world's held-out diagnostic evaluator).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cxrl.rewards.base import to_grayscale
from cxrl.rewards.xrv_backend import xrv_weights_path

XRV_DEFAULT_WEIGHTS = "densenet121-res224-all"


@dataclass(frozen=True)
class GaussianStats:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of a feature set of ``count`` rows."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def feature_statistics(features: torch.Tensor) -> GaussianStats:
    """Gaussian fit of ``features [N, D]``: sample mean and unbiased covariance (ddof = 1), float64."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(f"features must be a 2-D tensor [N, D], got {getattr(features, 'shape', type(features))}")
    if features.shape[0] < 2:
        raise ValueError(f"features: need at least 2 rows to fit a covariance, got {features.shape[0]}")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or Inf")
    x = features.detach().to("cpu", torch.float64)
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return GaussianStats(mean=mean, cov=cov, count=int(x.shape[0]))


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite matrix via ``eigh``.

    Eigenvalues that rounding pushed slightly below zero are clipped to zero (a PSD matrix has none).
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {tuple(matrix.shape)}")
    sym = 0.5 * (matrix + matrix.T)  # remove asymmetric rounding noise before eigh
    evals, evecs = torch.linalg.eigh(sym)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def frechet_distance(a: GaussianStats, b: GaussianStats) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)`` (>= 0, 0 for identical fits)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature dimensions differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    mean_a, mean_b = a.mean.double(), b.mean.double()
    cov_a, cov_b = a.cov.double(), b.cov.double()
    root_a = sqrtm_psd(cov_a)
    # S_a^1/2 S_b S_a^1/2 is similar to S_a S_b, so its eigenvalues are those of S_a S_b, and it is PSD.
    middle = root_a @ cov_b @ root_a
    middle = 0.5 * (middle + middle.T)
    trace_cross = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    diff = mean_a - mean_b
    value = diff.dot(diff) + cov_a.trace() + cov_b.trace() - 2.0 * trace_cross
    return max(float(value), 0.0)  # rounding can give -1e-12 for identical sets


def fid_from_features(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID between two feature sets ``[N_a, D]`` and ``[N_b, D]`` (see :func:`frechet_distance`)."""
    return frechet_distance(feature_statistics(features_a), feature_statistics(features_b))


class XRVDenseNetFeatures:
    """torchxrayvision DenseNet-121 ``features2``: 1024-d, input 1x224x224 in [-1024, 1024].

    The weights file must already be in ``cache_dir`` (default ``~/.torchxrayvision/models_data/``);
    a missing file is a ``FileNotFoundError`` that names the path and the URL to fetch it from — it is
    never replaced by another network. torchxrayvision unpickles its weight files
    (``torch.load(weights_only=False)``), so only put trusted files in the cache dir.
    """
    input_size = 224
    dim = 1024
    reason = ""   # why it was chosen (cxrl.compose.rewards.fid_extractor sets it; the report records it)

    def __init__(self, weights: str = XRV_DEFAULT_WEIGHTS, cache_dir: str | None = None, device: str | torch.device = "cpu"):
        import torchxrayvision as xrv  # heavy (skimage, pandas): only when these features are asked for

        if weights not in xrv.models.model_urls or not weights.startswith("densenet121"):
            valid = sorted(k for k in xrv.models.model_urls if k.startswith("densenet121"))
            raise ValueError(f"feature extractor weights '{weights}' is not a torchxrayvision DenseNet-121; valid: {valid}")

        try:
            folder = str(xrv_weights_path(weights, cache_dir).parent)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"FID feature extractor 'xrv-{weights}': {err}") from None
        self.weights = weights
        self.name = f"xrv-{weights}/features2"
        self.device = torch.device(device)
        self.model = xrv.models.DenseNet(weights=weights, cache_dir=folder).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_grayscale(images, "FID features").to(self.device, torch.float32)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0, 1) * 2048.0 - 1024.0  # torchxrayvision's pixel convention
        return self.model.features2(x).float()


class ClassifierFeatures:
    """Features from a model's ``features(images [B,C,H,W] in [0,1]) -> [B, D]`` (e.g. the phantom
    world's held-out diagnostic evaluator). ``name`` identifies the network in the results."""

    reason = ""   # why it was chosen (cxrl.compose.rewards.fid_extractor sets it; the report records it)

    def __init__(self, model, name: str):
        if not callable(getattr(model, "features", None)):
            raise ValueError(f"feature extractor '{name}': the model has no features(images) method")
        self.model = model
        self.name = name

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model.features(images)
        if out.dim() != 2:
            out = out.flatten(1)
        return out.float()


@torch.no_grad()
def extract_features(extractor, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Run ``extractor`` over ``images [N, C, H, W]`` in batches; returns ``[N, D]`` float32 on the CPU."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    chunks = [extractor(images[i:i + batch_size]).detach().cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks).float()
