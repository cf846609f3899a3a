"""Small CNN building blocks of the project's own reward models, and their on-disk format.

Every own reward model is saved as ``model.safetensors`` + ``config.json`` in one directory; the config
holds ``{"kind": ..., "arch": {...constructor kwargs...}, ...training facts...}`` so that loading
needs no code but this module (nothing is unpickled).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ConvEncoder(nn.Module):
    """1-channel image -> feature vector: stride-2 conv blocks (conv-GroupNorm-SiLU x2), global mean pool.

    GroupNorm rather than BatchNorm: the reward is evaluated on batches of generated images whose
    statistics differ from the training set, and a frozen model must not depend on batch composition.
    The first (highest-resolution) stage has no norm: on CPU GroupNorm over 32x32 maps cost ~5x the
    whole rest of the network's training step, and the stages after it are normalised anyway.
    """

    def __init__(self, widths=(16, 32, 64, 128), feature_dim: int = 128, in_channels: int = 1):
        super().__init__()
        layers = []
        prev = in_channels
        for stage, w in enumerate(widths):
            groups = 8 if w % 8 == 0 else 1
            norm = (lambda: nn.GroupNorm(groups, w)) if stage > 0 else nn.Identity
            layers += [
                nn.Conv2d(prev, w, 3, stride=2, padding=1), norm(), nn.SiLU(),
                nn.Conv2d(w, w, 3, padding=1), norm(), nn.SiLU(),
            ]
            prev = w
        self.body = nn.Sequential(*layers)
        # mean + max pooling keeps both diffuse (edema) and focal (pneumothorax rim) evidence
        self.head = nn.Sequential(nn.Linear(2 * prev, feature_dim), nn.SiLU())
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


def save_model_dir(module: nn.Module, config: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().float() for k, v in module.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


def read_model_dir(path, expected_kind: str) -> tuple[dict, dict]:
    """Read ``config.json`` and the safetensors weights of an own reward model; check its kind."""
    root = Path(path)
    cfg_path, w_path = root / CONFIG_FILE, root / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"reward model '{expected_kind}': missing {p.name} in {root} (expected {CONFIG_FILE} + {WEIGHTS_FILE}; "
                f"train one with `cxrl train-reward {expected_kind} --data phantom --out {root}`)"
            )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"reward model '{expected_kind}': {cfg_path} is not valid JSON ({err})") from err
    kind = config.get("kind")
    if kind != expected_kind:
        raise ValueError(f"reward model at {root}: config.json says kind={kind!r}, expected {expected_kind!r}")
    if not isinstance(config.get("arch"), dict):
        raise ValueError(f"reward model at {root}: config.json lacks an 'arch' object")
    return config, load_file(str(w_path))


def load_state_strict(module: nn.Module, state: dict, where) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights in {where} do not match the architecture: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
