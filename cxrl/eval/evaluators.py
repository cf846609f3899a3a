"""The held-out evaluator models the metrics are computed with.

Evaluation must not use the reward models the RL run optimised: a policy can learn to please one
particular network without the images getting better. The package ships separately trained evaluators
in ``cxrl/assets/evaluators/<kind>/`` (``posture``, ``diagnostic``, ``consistency``; each a reward
model directory of ``config.json`` + ``model.safetensors``), and every result records the path of each
evaluator that produced it. Any of them can be replaced by a user directory (e.g. a CLIP-style
consistency model, or a torchxrayvision classifier for MIMIC).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cxrl.config import EVALUATOR_KINDS
from cxrl.rewards.loading import load_reward_model

DEFAULT_EVALUATOR_ROOT = Path(__file__).resolve().parent.parent / "assets" / "evaluators"
# the shipped *reward* models the RL optimises by default: refused as evaluators
SHIPPED_REWARD_ROOT = Path(__file__).resolve().parent.parent / "assets" / "rewards"


@dataclass
class Evaluators:
    """Frozen evaluator models (any may be ``None`` = that metric is not computed) and where each came from.

    ``diagnostic`` must offer ``predict_proba(images) -> [B, 14]`` (AUROC) and, for the phantom world's
    FID, ``features(images) -> [B, D]``; ``posture`` and ``consistency`` are reward-style callables.
    """

    posture: object | None = None
    diagnostic: object | None = None
    consistency: object | None = None
    sources: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # short sha256 of each evaluator's weights

    def to(self, device) -> "Evaluators":
        for kind in EVALUATOR_KINDS:
            model = getattr(self, kind)
            if model is not None and hasattr(model, "to"):
                setattr(self, kind, model.to(device))
        return self

    def describe(self) -> dict[str, str]:
        """``{kind: source}`` for every evaluator present (goes into metrics.json and the table notes)."""
        return {kind: self.sources.get(kind, type(getattr(self, kind)).__name__)
                for kind in EVALUATOR_KINDS if getattr(self, kind) is not None}


def _weights_digest(directory: Path) -> str:
    """Short SHA-256 of the directory's weight files, so results identify the exact evaluator."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


XRV_PREFIX = "xrv:"


def load_evaluators(root: str | Path | None = None, paths: dict[str, str | Path] | None = None,
                    kinds: tuple[str, ...] = EVALUATOR_KINDS, device="cpu",
                    forbidden: tuple[str | Path, ...] = (SHIPPED_REWARD_ROOT,), xrv_cache_dir=None) -> Evaluators:
    """Load evaluators of ``kinds`` from ``paths[kind]`` or else ``root/<kind>`` (default root: the
    shipped ``cxrl/assets/evaluators``), through the reward loader ``cxrl.rewards.load_reward_model``.

    A missing directory is a ``FileNotFoundError`` naming it and how to make one. A directory inside
    one of ``forbidden`` (default: the shipped reward models the RL optimises; add the reward paths of
    your own training config) is refused with a ``ValueError``. ``paths["diagnostic"] = "xrv:<weights>"``
    uses a torchxrayvision classifier (e.g. ``xrv:densenet121-res224-mimic_ch`` for MIMIC-CXR) from
    ``xrv_cache_dir`` — only when the RL did not optimise that same network.
    """
    paths = dict(paths or {})
    unknown = sorted(set(paths) - set(EVALUATOR_KINDS)) + sorted(set(kinds) - set(EVALUATOR_KINDS))
    if unknown:
        raise ValueError(f"unknown evaluator kind(s) {unknown}; valid: {list(EVALUATOR_KINDS)}")
    base = Path(root) if root is not None else DEFAULT_EVALUATOR_ROOT
    evaluators = Evaluators()
    for kind in kinds:
        spec = str(paths.get(kind, ""))
        if spec.startswith(XRV_PREFIX):
            if kind != "diagnostic":
                raise ValueError(f"evaluator '{kind}': {spec!r} — torchxrayvision models can only be the diagnostic evaluator")
            weights = spec[len(XRV_PREFIX):]
            cache = {"cache_dir": str(xrv_cache_dir)} if xrv_cache_dir is not None else {}
            evaluators.diagnostic = load_reward_model("diagnostic", backend="xrv", device=device, weights=weights, **cache)
            evaluators.digests[kind] = f"xrv-{weights}"
            evaluators.sources[kind] = f"torchxrayvision {weights}"
            continue
        directory = Path(paths.get(kind, base / kind)).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(
                f"evaluator '{kind}': directory {directory} not found. Evaluators are reward models trained "
                f"separately from the ones the RL run optimised: `cxrl train-reward {kind} --data phantom "
                f"--out {directory}` (with a different seed / data split), or pass your own directory."
            )
        for bad in forbidden:
            bad = Path(bad).expanduser().resolve()
            if directory.resolve() == bad or bad in directory.resolve().parents:
                raise ValueError(f"evaluator '{kind}': {directory} is a reward model the RL optimises ({bad}); "
                                 f"evaluate with held-out evaluators (default {DEFAULT_EVALUATOR_ROOT / kind})")
        setattr(evaluators, kind, load_reward_model(kind, directory, device=device))
        evaluators.digests[kind] = _weights_digest(directory)
        evaluators.sources[kind] = f"{directory} (sha256 {evaluators.digests[kind]})"
    return evaluators
