"""``cxrl anchor-scores [--config FILE] [key=value ...] --out DIR``: precompute RLCF's anchor scores.

RLCF compares each policy image with the frozen anchor's image from the same initial noise. The anchor is frozen,
so its score for a (prompt, seed-bank seed) pair is a pure function of the anchor's weights, the sampler, the
reward models, the prompt and the seed — the anchor-score cache's namespace hashes all of them. This command
samples and scores the anchor for every prompt of the config's pool and every seed of its seed bank, and writes
``DIR/<namespace>.json.gz``; a run whose namespace matches (same anchor, sampler and rewards) then reads its
anchor scores instead of sampling the anchor, from any training seed. The demo's file ships in
``cxrl/assets/anchor_scores`` and was written by ``cxrl anchor-scores --out cxrl/assets/anchor_scores
rewards.feedback=comparative`` (the demo itself trains with direct feedback; ``configs/ablations/rlcf.yaml`` uses them).
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cxrl.compose import build_trainer
from cxrl.config import load_config
from cxrl.rl.prompts import reward_metadata

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--config", default=None, help="YAML config (default: the packaged demo config)")
    parser.add_argument("--out", type=Path, required=True, help="directory of the <namespace>.json.gz file")
    parser.add_argument("--max-prompts", type=int, default=0, help="only the first N prompts of the pool (0 = all)")


def run(args) -> int:
    cfg = load_config(args.config, list(args.overrides) + ["eval.enabled=false", "monitor.every=0",
                                                          "train.final_policy=last"])
    if cfg.rewards.feedback != "comparative":
        raise ValueError("rewards.feedback is 'direct' (the demo's since issue 15): there is no anchor to score; "
                         "add rewards.feedback=comparative to score the anchor of the RLCF variant")
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    with tempfile.TemporaryDirectory(prefix="cxrl-anchor-scores-") as work:
        trainer = build_trainer(cfg, output_dir=work)
        suite, entries = trainer.suite, trainer.pool.entries
        if args.max_prompts:
            entries = entries[: args.max_prompts]
        pairs = [(entry, k) for entry in entries for k in range(suite.seed_bank.seeds_per_prompt)]
        start, size = time.perf_counter(), cfg.sampling.batch_size
        for begin in tqdm(range(0, len(pairs), size), desc="anchor scores", disable=not cfg.log.progress):
            chunk = pairs[begin:begin + size]
            prompts = [entry["prompt"] for entry, _ in chunk]
            seeds = [suite.seed_bank.seed(entry["prompt"], k) for entry, k in chunk]
            suite.anchor_scores(prompts, [reward_metadata(entry) for entry, _ in chunk], seeds, None, trainer.device)
        path = suite.cache.export(args.out)
    stats = suite.cache.stats()
    print(f"cxrl anchor-scores: {stats['entries']} (prompt, seed) pairs, {suite.anchor_images_generated} anchor images "
          f"sampled in {time.perf_counter() - start:.0f} s -> {path}")
    return 0
