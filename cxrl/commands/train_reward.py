"""``cxrl train-reward posture|diagnostic|consistency --data phantom|mimic --out DIR [key=value ...]``.

Trains one of the project's own reward models and writes model.safetensors + config.json (with the
training config, data description and measured validation numbers) into ``--out``; the consistency
model also writes its tokenizer into ``--out/tokenizer``. Training settings are the ``reward_training``
section of the configuration (``--config FILE`` and ``reward_training.KEY=VALUE`` overrides; ``--epochs``,
``--batch-size``, ``--lr`` and ``--seed`` are shortcuts for its most used keys). docs/rewards.md lists the
exact commands that produced the shipped weights.

On MIMIC-CXR-JPG (``--data mimic --mimic-root ROOT``) the train split is halved by a stable hash of the study id
(``--report-subset reward|evaluator|all``): the reward models the RL optimises train on one half, their held-out
evaluators on the other. With ``--reports-root`` the prompts are the report prompts the RL draws
(``data.reports_path``); the consistency model requires it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from cxrl.config import load_config
from cxrl.diffusion.tokenizer import build_clip_tokenizer
from cxrl.rewards.consistency import load_tokenizer
from cxrl.training.reward_data import load_training_set, mimic_training_set, phantom_training_set, save_training_set
from cxrl.training.reward_models import train_consistency, train_diagnostic, train_posture

log = logging.getLogger(__name__)
KINDS = ("posture", "diagnostic", "consistency")
SHORTCUTS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate", "seed": "seed"}


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS, help="which reward model to train")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides of the reward_training section, e.g. reward_training.widths=[8,16]")
    parser.add_argument("--config", default=None, help="YAML config; its 'reward_training' section is used")
    parser.add_argument("--data", choices=("phantom", "mimic"), default="phantom", help="training images")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    parser.add_argument("--seed", type=int, default=None, help="= reward_training.seed (init, batches, augmentations)")
    parser.add_argument("--report-subset", choices=("reward", "evaluator", "all"), default="reward",
                        help="which half of the train reports (phantom: by IU X-ray report id; mimic: by study id): "
                             "reward models train on 'reward', their held-out evaluators on 'evaluator'")
    parser.add_argument("--phantom-seed", type=int, default=0, help="phantom: base seed of the renders")
    parser.add_argument("--renders-per-report", type=int, default=4, help="phantom: images rendered per report")
    parser.add_argument("--resolution", type=int, default=64, help="image size the model works at")
    parser.add_argument("--max-items", type=int, default=None, help="cap the number of training images")
    parser.add_argument("--data-cache", default=None, help="safetensors file caching the rendered/read training set")
    parser.add_argument("--mimic-root", default=None, help="mimic: MIMIC-CXR-JPG root directory")
    parser.add_argument("--reports-root", default=None,
                        help="mimic: the MIMIC-CXR reports root (files/pXX/...); prompts are then the report prompts the "
                             "RL draws (data.reports_path); required for consistency")
    parser.add_argument("--cache-dir", default=None,
                        help="mimic: the image cache `cxrl data prepare --cache-dir` wrote (default ~/.cache/cxrl/mimic)")
    parser.add_argument("--epochs", type=int, default=None, help="= reward_training.epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="= reward_training.batch_size")
    parser.add_argument("--lr", type=float, default=None, help="= reward_training.learning_rate")
    parser.add_argument("--tokenizer", default=None,
                        help="consistency: the generator's tokenizer directory (default: build a CLIP-format BPE from the training prompts)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="consistency: vocabulary of a tokenizer built here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def training_section(args):
    """The ``reward_training`` section: --config, then the shortcut flags, then key=value overrides."""
    shortcuts = [f"reward_training.{key}={getattr(args, flag)}" for flag, key in SHORTCUTS.items()
                 if getattr(args, flag) is not None]
    return load_config(args.config or None, shortcuts + list(args.overrides)).reward_training


def _load_data(args) -> dict:
    if args.data == "phantom":
        stray = [flag for flag in ("mimic_root", "reports_root", "cache_dir") if getattr(args, flag)]
        if stray:
            raise ValueError(f"--{stray[0].replace('_', '-')} is for --data mimic (the phantom world renders its own images)")
        expected = {"source": "phantom", "subset": args.report_subset, "phantom_seed": args.phantom_seed,
                    "renders_per_report": args.renders_per_report, "resolution": args.resolution}
    else:
        if not args.mimic_root:
            raise ValueError("--data mimic needs --mimic-root DIR (the MIMIC-CXR-JPG root)")
        if args.kind == "consistency" and not args.reports_root:
            raise ValueError("cxrl train-reward consistency --data mimic needs --reports-root DIR (the MIMIC-CXR reports): the "
                             "model must learn from the report prompts the RL draws, not from sentences written from the labels")
        expected = {"source": "mimic", "root": str(args.mimic_root), "resolution": args.resolution,
                    "subset": args.report_subset, "reports_root": str(args.reports_root) if args.reports_root else None}
    if args.data_cache:
        data = load_training_set(args.data_cache, expected)
        if data is not None and (args.max_items is None or data["meta"]["n"] >= args.max_items):
            log.info("training set: %d images from cache %s", data["meta"]["n"], args.data_cache)
            return _cap(data, args.max_items)
    if args.data == "phantom":
        data = phantom_training_set(args.report_subset, args.phantom_seed, args.renders_per_report, args.resolution, args.max_items)
    else:
        data = mimic_training_set(args.mimic_root, "train", args.resolution, args.max_items, reports_root=args.reports_root,
                                  subset=args.report_subset, cache_dir=args.cache_dir)
    log.info("training set: %s", json.dumps(data["meta"]))
    if args.data_cache:
        save_training_set(data, args.data_cache)
    return data


def _cap(data: dict, n) -> dict:
    if n is None or data["images"].shape[0] <= n:
        return data
    return {"images": data["images"][:n], "labels": data["labels"][:n], "prompts": data["prompts"][:n],
            "meta": {**data["meta"], "n": n}}


def run(args) -> int:
    cfg = training_section(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    data = _load_data(args)
    images = data["images"]
    if args.kind == "posture":
        model, metrics = train_posture(images, cfg)
    elif args.kind == "diagnostic":
        model, metrics = train_diagnostic(images, data["labels"], cfg)
    else:
        tokenizer = (load_tokenizer(args.tokenizer) if args.tokenizer else
                     build_clip_tokenizer(sorted(set(data["prompts"])), args.vocab_size, out / "tokenizer"))
        model, metrics = train_consistency(images, data["prompts"], tokenizer, cfg, labels=data["labels"])
    extra = {
        "training": {"command": "cxrl train-reward " + args.kind, "data": data["meta"], "config": dataclasses.asdict(cfg),
                     "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__},
        "metrics": metrics,
    }
    model.save(out, extra)
    print(f"saved {args.kind} reward model to {out}: {json.dumps(metrics)}", flush=True)
    return 0
