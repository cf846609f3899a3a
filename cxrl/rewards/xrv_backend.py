"""torchxrayvision classifiers as a diagnostic backend (DenseNet-121 at 224 px, ResNet-50 at 512 px).

Input convention of torchxrayvision: 1 channel, ``input_resolution`` px (224 or 512), intensities in
[−1024, 1024]; our images in [0, 1] map by x·2048 − 1024. Its 18 pathology outputs are mapped onto the
CheXpert-14 labels by name (``XRV_TO_CHEXPERT``); CheXpert labels with no xrv counterpart (No Finding,
Pleural Other, Support Devices) get nan probability, i.e. are masked by the reward.

Weights are never downloaded here: they must already be in ``cache_dir``. torchxrayvision's own loader
unpickles the file (``torch.load(weights_only=False)``) — it can execute code, so only files the user put
in their own cache dir are loaded, and only through this explicit backend.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rewards.base import to_grayscale

# torchxrayvision pathology name -> CheXpert label. Pleural_Thickening is not Pleural Other (which also
# covers plaques, fibrothorax), Infiltration/Nodule/Mass overlap several CheXpert labels: left unmapped.
XRV_TO_CHEXPERT = {
    "Enlarged Cardiomediastinum": "Enlarged Cardiomediastinum",
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": "Lung Opacity",
    "Lung Lesion": "Lung Lesion",
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Effusion": "Pleural Effusion",
    "Fracture": "Fracture",
}

XRV_RANGE = 1024.0


def xrv_mapping_indices(pathologies) -> torch.Tensor:
    """LongTensor [NUM_LABELS]: for each CheXpert label the index of its xrv output, or −1 when unmapped."""
    index = {name: i for i, name in enumerate(pathologies) if name}
    out = []
    for label in CHEXPERT_LABELS:
        src = [k for k, v in XRV_TO_CHEXPERT.items() if v == label]
        out.append(index[src[0]] if src and src[0] in index else -1)
    return torch.tensor(out, dtype=torch.long)


def xrv_weights_path(weights: str, cache_dir=None) -> Path:
    """Where torchxrayvision looks for ``weights`` (``cache_dir`` None: its default cache); FileNotFoundError
    (file, folder, download URL) if absent."""
    import torchxrayvision as xrv  # heavy (skimage, pandas): imported only when an xrv model is asked for

    if cache_dir is None:
        cache_dir = xrv.utils.get_cache_dir()
    if weights not in xrv.models.model_urls:
        names = sorted(k for k in xrv.models.model_urls if "-" in k)
        raise ValueError(f"diagnostic backend torchxrayvision: unknown weights {weights!r}; known: {names}")
    url = xrv.models.model_urls[weights]["weights_url"]
    folder = Path(os.path.expanduser(str(cache_dir)))
    path = folder / os.path.basename(url)
    if not path.is_file():
        raise FileNotFoundError(
            f"torchxrayvision weights '{weights}' not found: expected the file {path.name} in {folder}. "
            f"cxrl never downloads at run time; fetch it yourself from {url} "
            f"(e.g. `wget {url} -O {path}`) and pass cache_dir={folder}."
        )
    return path


def xrv_weights_present(weights: str, cache_dir=None) -> bool:
    """True when torchxrayvision's ``weights`` file is on disk (nothing is ever downloaded)."""
    try:
        xrv_weights_path(weights, cache_dir)
    except FileNotFoundError:
        return False
    return True


class XRVClassifier(nn.Module):
    """Adapter: [B,1,H,W] in [0,1] -> xrv input -> CheXpert-14 probabilities (nan where unmapped) / features."""

    def __init__(self, model: nn.Module, input_resolution: int | None = None):
        super().__init__()
        import torchxrayvision as xrv  # heavy: only when an xrv model is used

        self.model = model
        pathologies = getattr(model, "pathologies", None) or getattr(model, "targets", None) or xrv.datasets.default_pathologies
        self.pathologies = list(pathologies)
        self.resolution = int(input_resolution or getattr(model, "input_resolution", 224))
        self.register_buffer("mapping", xrv_mapping_indices(self.pathologies), persistent=False)

    @classmethod
    def from_weights(cls, weights: str = "densenet121-res224-all", cache_dir=None) -> "XRVClassifier":
        import torchxrayvision as xrv  # heavy: only when an xrv model is asked for

        path = xrv_weights_path(weights, cache_dir)
        # torchxrayvision unpickles the weights file here (torch.load(weights_only=False)); the file was
        # checked to exist in the user's own cache dir above, so nothing is fetched.
        model = xrv.models.get_model(weights, cache_dir=str(path.parent))
        return cls(model)

    def prepare(self, images: torch.Tensor, name: str, dtype) -> torch.Tensor:
        x = to_grayscale(images, name).to(dtype).clamp(0.0, 1.0)
        if x.shape[-2:] != (self.resolution, self.resolution):
            down = max(x.shape[-2:]) > self.resolution
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=down)
        return x * (2 * XRV_RANGE) - XRV_RANGE

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features2(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x).float()
        # xrv applies sigmoid (+ operating-point normalisation) itself when the weights carry op_threshs
        calibrated = getattr(self.model, "op_threshs", None) is not None or getattr(self.model, "apply_sigmoid", False)
        probs = out if calibrated else torch.sigmoid(out)
        mapping = self.mapping.to(probs.device)
        picked = probs[:, mapping.clamp(min=0)]
        return torch.where(mapping >= 0, picked, torch.full_like(picked, float("nan")))
