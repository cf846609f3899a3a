"""Diagnostic-condition reward s_diag: a CXR classifier scored against the report's labels.

    s_diag = −mean_{c labelled} BCE(p_c, y_c)

over the CheXpert-14 classes whose report label is positive (1) or negative (0); uncertain (−1) and
unmentioned (nan) labels are masked, and so are the labels named in ``ignore_labels`` and the classes the
classifier does not predict (nan probability, e.g. the torchxrayvision outputs with no CheXpert counterpart).
A report labelled No Finding is scored as negative for the labels named in ``implied_negatives`` that it does
not mention; ``unmentioned="negative"`` scores every unmentioned finding (and the No Finding of a report that states
a finding) as negative, the convention of a model trained with ``reward_training.unmentioned=negative``.
A sample with no labelled class gets 0 and is flagged in ``last_unlabelled`` (and warned about once per call).

Backends: the project's own small classifier (:class:`CXRClassifier`, trained with
``cxrl train-reward diagnostic``) and torchxrayvision models (``xrv_backend.XRVClassifier``). Both
expose ``probabilities(x) -> [B, 14]`` and ``features(x) -> [B, D]`` on prepared inputs;
:meth:`DiagnosticReward.features` is the FID feature extractor of the phantom world.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxrl.data.labels import CHEXPERT_LABELS
from cxrl.rewards.base import RewardModel, labels_from_metadata, prepare_cxr
from cxrl.rewards.nets import ConvEncoder, load_state_strict, read_model_dir, save_model_dir

log = logging.getLogger(__name__)
NUM_LABELS = 14
_EPS = 1e-6


def masked_bce_score(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_diag [B], has_label [B]): −mean BCE over classes with a 0/1 label and a finite probability."""
    mask = ((labels == 0) | (labels == 1)) & torch.isfinite(probs)
    p = torch.where(mask, probs, torch.full_like(probs, 0.5)).clamp(_EPS, 1 - _EPS)
    y = torch.where(mask, labels, torch.zeros_like(labels))
    bce = -(y * torch.log(p) + (1 - y) * torch.log1p(-p))
    count = mask.sum(dim=1)
    score = -(bce * mask).sum(dim=1) / count.clamp(min=1)
    return score, count > 0


def with_implied_negatives(labels: torch.Tensor, columns: list[int]) -> torch.Tensor:
    """A copy of ``labels`` [B, 14] where rows labelled No Finding (1) get 0 in ``columns`` they leave unmentioned
    (nan); a mentioned label (positive, negative or uncertain) is kept as the report states it."""
    out = labels.clone()
    normal = labels[:, CHEXPERT_LABELS.index("No Finding")] == 1
    block = out[:, columns]
    out[:, columns] = torch.where(normal[:, None] & torch.isnan(block), torch.zeros_like(block), block)
    return out


def unmentioned_as_negative(labels: torch.Tensor) -> torch.Tensor:
    """A copy of ``labels`` [N, 14] with every unmentioned (nan) finding set to 0, and No Finding set to 0 where it is
    nan and the report states a finding (positive or uncertain). True of the phantom world, which draws only the
    findings a report states. The CheXpert labeler writes No Finding = 1 or nothing, never 0, so under masking that
    head only ever sees positives and calls every image normal."""
    out = labels.clone()
    no_finding = CHEXPERT_LABELS.index("No Finding")
    findings = [i for i in range(len(CHEXPERT_LABELS)) if i != no_finding]
    stated = ((labels[:, findings] == 1) | (labels[:, findings] == -1)).any(dim=1)
    block = out[:, findings]
    out[:, findings] = torch.where(torch.isnan(block), torch.zeros_like(block), block)
    abnormal = torch.isnan(out[:, no_finding]) & stated
    out[:, no_finding] = torch.where(abnormal, torch.zeros_like(out[:, no_finding]), out[:, no_finding])
    return out


UNMENTIONED = ("masked", "negative")


def masked_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Training loss: BCE-with-logits averaged over the 0/1-labelled entries of the batch."""
    mask = (labels == 0) | (labels == 1)
    y = torch.where(mask, labels, torch.zeros_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp(min=1)


class CXRClassifier(nn.Module):
    """The project's own small CheXpert-14 classifier: ConvEncoder features -> 14 logits."""

    def __init__(self, widths=(16, 32, 64, 128), feature_dim: int = 128, resolution: int = 64):
        super().__init__()
        self.encoder = ConvEncoder(widths, feature_dim)
        self.classifier = nn.Linear(feature_dim, NUM_LABELS)
        self.resolution = resolution
        self.arch = {"widths": list(widths), "feature_dim": feature_dim, "resolution": resolution}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))

    def prepare(self, images: torch.Tensor, name: str, dtype) -> torch.Tensor:
        return prepare_cxr(images, self.resolution, name, dtype)


class DiagnosticReward(RewardModel):
    """s_diag for a classifier backend (own :class:`CXRClassifier` or ``XRVClassifier``). Comparative by default."""

    name = "diagnostic"
    comparative = True

    def __init__(self, classifier: nn.Module, name: str | None = None, comparative: bool | None = None,
                 dtype: torch.dtype = torch.float32, ignore_labels=(), implied_negatives=(), unmentioned: str = "masked"):
        super().__init__(name, comparative)
        # how a report's unmentioned labels are scored: 'masked' (CheXpert's convention) or 'negative' (the phantom
        # world's truth; a model trained that way, ``reward_training.unmentioned``, scores that way when loaded)
        if unmentioned not in UNMENTIONED:
            raise ValueError(f"reward '{self.name}': unmentioned must be one of {list(UNMENTIONED)}, got {unmentioned!r}")
        self.unmentioned = unmentioned
        # labels scored as if the report did not mention them (a reward-entry kwarg: `kwargs: {ignore_labels:
        # [...]}`), for a classifier whose judgement of a label on generated images cannot be trusted
        self.ignored_columns = self._label_columns(ignore_labels, "ignore_labels")
        # labels a "No Finding" report leaves unmentioned, scored as negative: CheXpert's No Finding means that
        # none of the findings is present, but the labeler marks a 0 only where the text negates one, so without
        # this a normal prompt's image may grow, say, a nodule at no cost (docs/demo.md, "Session 13")
        self.implied_negative_columns = self._label_columns(implied_negatives, "implied_negatives")
        if CHEXPERT_LABELS.index("No Finding") in self.implied_negative_columns:
            raise ValueError(f"reward '{self.name}': implied_negatives names the findings a No Finding report "
                             "rules out; 'No Finding' itself cannot be one")
        self.classifier = classifier.eval().requires_grad_(False)
        self.dtype = dtype
        self.classifier.to(dtype)
        self.last_unlabelled = torch.zeros(0, dtype=torch.bool)

    def _label_columns(self, names, option: str) -> list[int]:
        """Column indices of CheXpert label ``names`` (a name or a list), refusing unknown names."""
        if isinstance(names, str):
            names = [names]
        unknown = [label for label in names if label not in CHEXPERT_LABELS]
        if unknown:
            raise ValueError(f"reward '{self.name}': {option} {unknown} are not CheXpert labels; "
                             f"choose from {list(CHEXPERT_LABELS)}")
        return [CHEXPERT_LABELS.index(label) for label in names]

    def to(self, device, dtype: torch.dtype | None = None) -> "DiagnosticReward":
        if dtype is not None:
            self.dtype = dtype
            self.classifier.to(dtype)
        return super().to(device)

    def _prepared(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.prepare(images, self.name, self.dtype).to(self.device)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [B, 14] (float32, CheXpert order; nan where the backend has no output)."""
        with torch.no_grad():
            return self.classifier.probabilities(self._prepared(images)).float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, D] (float32): the phantom world's FID feature extractor."""
        with torch.no_grad():
            return self.classifier.features(self._prepared(images)).float()

    def score(self, images, prompts, metadata) -> torch.Tensor:
        labels = labels_from_metadata(self.name, prompts, metadata, self.device)
        if self.unmentioned == "negative":
            labels = unmentioned_as_negative(labels)
        if self.implied_negative_columns:
            labels = with_implied_negatives(labels, self.implied_negative_columns)
        if self.ignored_columns:
            labels[:, self.ignored_columns] = float("nan")
        scores, has_label = masked_bce_score(self.predict_proba(images), labels)
        self.last_unlabelled = ~has_label
        if not bool(has_label.all()) and self.warn_about_inputs:
            idx = (~has_label).nonzero().flatten().tolist()
            log.warning("reward '%s': %d sample(s) have no labelled class, scored 0: %s", self.name, len(idx),
                        [prompts[i][:80] for i in idx[:3]])
        return scores.to(images.device)

    def fingerprint(self) -> str:
        """The weights' fingerprint, plus how the report's labels are read when that differs from the default: the
        same classifier scoring with other label conventions gives other scores (and other cached anchor scores).
        The default adds nothing, so fingerprints made before these options existed stay valid."""
        settings = {"unmentioned": self.unmentioned, "ignored": self.ignored_columns,
                    "implied_negatives": self.implied_negative_columns}
        if settings == {"unmentioned": "masked", "ignored": [], "implied_negatives": []}:
            return super().fingerprint()
        return hashlib.sha256(f"{super().fingerprint()}|{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()

    def save(self, out_dir, extra: dict | None = None) -> Path:
        if not isinstance(self.classifier, CXRClassifier):
            raise ValueError(f"reward '{self.name}': only the own CXRClassifier backend is saved by cxrl")
        return save_model_dir(self.classifier, {"kind": "diagnostic", "arch": self.classifier.arch, **(extra or {})}, out_dir)

    @classmethod
    def load(cls, path, **kwargs) -> "DiagnosticReward":
        config, state = read_model_dir(path, "diagnostic")
        net = CXRClassifier(**config["arch"])
        load_state_strict(net, state, path)
        # score with the label convention the model was trained with unless the entry says otherwise
        trained = ((config.get("training") or {}).get("config") or {}).get("unmentioned", "masked")
        return cls(net, **{"unmentioned": trained, **kwargs})
