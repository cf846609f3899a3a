"""Cached model evaluations: one model's samples, per-sample scores and metrics under one evaluation protocol,
stored under a key that hashes everything they depend on — the generator's weights, scheduler and tokenizer
(and its ACE tokens), the evaluators' weights and the FID features, the held-out items (ids, prompts, labels,
reference images), the evaluation and sampler settings, the scoring code's version, torch, the device and the
CPU thread count.
Any change gives another key, so a stale entry is never used: the model is evaluated afresh.

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


def items_digest(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.get('id')}\x00{item['prompt']}\x00".encode())
        for key in ("labels", "image"):
            if item.get(key) is not None:
                _update_with_tensor(h, torch.as_tensor(item[key]))
    return h.hexdigest()


def evaluation_key(gen, ace, items, evaluators: Evaluators, feature_extractor, e: EvalConfig, s: SamplingConfig) -> str:
    """The cache key of one model's evaluation (see the module docstring for what it covers)."""
    # torch's version, the device and (on the CPU) the thread count a batch is sampled with: each can change a
    # sample's last bits (eval.sampling_workers > 1 samples each batch on one thread)
    threads = None
    if gen.device.type == "cpu":
        threads = 1 if e.sampling_workers > 1 else torch.get_num_threads()
    parts = {"version": SCORING_VERSION, "torch": torch.__version__, "device": str(gen.device.type), "threads": threads,
             "dtype": str(gen.dtype),
             "generator": generator_fingerprint(gen, ace), "items": items_digest(items), "evaluators": evaluators.digests,
             "evaluator_kinds": sorted(evaluators.describe()), "features": getattr(feature_extractor, "name", None),
             "eval": {k: getattr(e, k) for k in ("samples_per_prompt", "seed", "batch_size", "min_label_prompts")},
             "sampling": {k: getattr(s, k) for k in ("num_steps", "guidance_scale", "eta")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


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

    def get(self, key: str) -> CachedEvaluation | None:
        for directory in (*self.read, *([self.write] if self.write else [])):
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
