"""Cached model evaluations: one model's samples, per-sample scores and metrics under one evaluation protocol,
stored under a key that hashes everything they depend on — the generator's weights, scheduler and tokenizer
(and its ACE tokens), the evaluators' weights and the FID features, the held-out items (ids, prompts, labels,
reference images), the evaluation and sampler settings, the scoring code's version, torch, the device and the
CPU thread count.
Any change gives another key, so a stale entry is never used: the model is evaluated afresh.

What the key does *not* see is the last bit of floating-point rounding that can differ between CPUs (the SIMD paths
of numpy's ``exp``/``sin`` and oneDNN's convolutions): reference images are hashed to 2^-16, not bit for bit,
so the phantom renders of one item hash the same on every machine. A shipped entry made on another CPU therefore
stands for this machine's evaluation of the same model under the same protocol; measured on an AMD EPYC (AVX2) against the
shipped base entry (made on another VM), a fresh evaluation agreed with it to the seventh decimal or
better in every metric (docs/demo.md, "Session 10").
Each entry records its key's parts, so a miss says which input differed from the nearest entry.

The demo ships its base model's evaluation (``cxrl/assets/eval_cache``), so ``cxrl train`` samples only the
tuned model at the end; ``cxrl evaluate --cache-dir DIR`` writes entries (that is how the asset is made).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from cxrl.config import EvalConfig, SamplingConfig
from cxrl.eval.evaluators import Evaluators
from cxrl.eval.scoring import SampleScores
from cxrl.hashing import generator_fingerprint

log = logging.getLogger(__name__)
SCORING_VERSION = 1   # bump when sampling or scoring arithmetic changes: every cached entry becomes a miss
SHIPPED_CACHE = Path(__file__).resolve().parent.parent / "assets" / "eval_cache"


def _update_with_tensor(h, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


IMAGE_HASH_STEP = 2.0 ** -16   # reference images are hashed on this grid (see the module docstring)


def items_digest(items) -> str:
    """sha256 of the held-out items: ids, prompts and labels exactly, reference images to ``IMAGE_HASH_STEP``."""
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.get('id')}\x00{item['prompt']}\x00".encode())
        if item.get("labels") is not None:
            _update_with_tensor(h, torch.as_tensor(item["labels"]))
        if item.get("image") is not None:
            image = torch.as_tensor(item["image"]).double()
            _update_with_tensor(h, torch.round(image / IMAGE_HASH_STEP).to(torch.int64))
    return h.hexdigest()


def evaluation_key_parts(gen, ace, items, evaluators: Evaluators, feature_extractor, e: EvalConfig,
                         s: SamplingConfig) -> dict:
    """Everything one model's evaluation depends on, as JSON-able values (what its cache key hashes)."""
    # torch's version, the device and (on the CPU) the thread count a batch is sampled with: each can change a
    # sample's last bits (eval.sampling_workers > 1 samples each batch on one thread)
    threads = None
    if gen.device.type == "cpu":
        threads = 1 if e.sampling_workers > 1 else torch.get_num_threads()
    return {"version": SCORING_VERSION, "torch": torch.__version__, "device": str(gen.device.type), "threads": threads,
            "dtype": str(gen.dtype),
            "generator": generator_fingerprint(gen, ace), "items": items_digest(items), "evaluators": evaluators.digests,
            "evaluator_kinds": sorted(evaluators.describe()), "features": getattr(feature_extractor, "name", None),
            "eval": {k: getattr(e, k) for k in ("samples_per_prompt", "seed", "batch_size", "min_label_prompts")},
            "sampling": {k: getattr(s, k) for k in ("num_steps", "guidance_scale", "eta")}}


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def evaluation_key(gen, ace, items, evaluators: Evaluators, feature_extractor, e: EvalConfig, s: SamplingConfig) -> str:
    """The cache key of one model's evaluation (see the module docstring for what it covers)."""
    return key_of(evaluation_key_parts(gen, ace, items, evaluators, feature_extractor, e, s))


@dataclass
class CachedEvaluation:
    results: dict
    scores: SampleScores
    samples: torch.Tensor   # [P, S, C, H, W] float in [0, 1] (stored as 8-bit: it only draws the grids)


class EvaluationCache:
    """Entries ``<key>.json`` + ``<key>.safetensors`` in the ``read`` directories (first hit wins); ``put`` writes to
    ``write`` (None: read-only)."""

    def __init__(self, read: list[str | Path], write: str | Path | None = None):
        self.read = [Path(p) for p in read]
        self.write = Path(write) if write is not None else None

    def _directories(self) -> list[Path]:
        return [*self.read, *([self.write] if self.write else [])]

    def get(self, key: str) -> CachedEvaluation | None:
        for directory in self._directories():
            meta, blob = directory / f"{key}.json", directory / f"{key}.safetensors"
            if meta.is_file() and blob.is_file():
                try:
                    tensors = load_file(str(blob))
                    results = json.loads(meta.read_text())["results"]
                except (OSError, ValueError) as err:   # a damaged entry is a miss, said once
                    log.warning("evaluation cache entry %s is unreadable (%s); evaluating afresh", meta, err)
                    continue
                scores = SampleScores(tensors.get("posture"), tensors.get("consistency"), tensors.get("probs"))
                return CachedEvaluation(results, scores, tensors["samples"].float() / 255.0)
        return None

    def nearest_miss(self, parts: dict, model: str) -> tuple[Path, list[str]] | None:
        """The entry of ``model`` whose recorded key parts differ from ``parts`` in the fewest places, with those
        places (None when no entry of that model records its parts): what a miss reports."""
        best = None
        for directory in self._directories():
            for meta in sorted(directory.glob("*.json")) if directory.is_dir() else []:
                try:
                    entry = json.loads(meta.read_text())
                except (OSError, ValueError):
                    continue
                recorded = entry.get("key_parts")
                if entry.get("model") != model or not isinstance(recorded, dict):
                    continue
                differ = sorted(k for k in set(parts) | set(recorded)
                                if json.dumps(parts.get(k), sort_keys=True, default=str)
                                != json.dumps(recorded.get(k), sort_keys=True, default=str))
                if best is None or len(differ) < len(best[1]):
                    best = (meta, differ)
        return best

    def put(self, key: str, results: dict, scores: SampleScores, samples: torch.Tensor, note: dict | None = None) -> None:
        if self.write is None:
            return
        self.write.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in asdict(scores).items() if v is not None}
        tensors["samples"] = (samples.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).contiguous()
        for suffix, write in ((".safetensors", lambda p: save_file(tensors, str(p))),
                              (".json", lambda p: p.write_text(json.dumps({"results": results, **(note or {})},
                                                                         indent=1, allow_nan=False) + "\n"))):
            fd, tmp = tempfile.mkstemp(dir=self.write, prefix=key, suffix=suffix + ".tmp")
            os.close(fd)
            write(Path(tmp))
            os.chmod(tmp, 0o644)   # mkstemp makes it private; a cache (the shipped one too) is read by everyone
            os.replace(tmp, self.write / f"{key}{suffix}")
