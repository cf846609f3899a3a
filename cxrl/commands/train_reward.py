"""``cxrl train-reward posture|diagnostic|consistency --data phantom|mimic --out DIR --seed S``.

Trains one of the project's own reward models and writes model.safetensors + config.json (with the
training config, data description and measured validation numbers) into ``--out``; the consistency
model also writes its tokenizer into ``--out/tokenizer``. docs/rewards.md lists the exact commands that
produced the shipped weights.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

KINDS = ("posture", "diagnostic", "consistency")


def add_arguments(parser) -> None:
    parser.add_argument("kind", choices=KINDS, help="which reward model to train")
    parser.add_argument("--data", choices=("phantom", "mimic"), default="phantom", help="training images")
    parser.add_argument("--out", required=True, help="output directory (model.safetensors + config.json)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (init, batches, augmentations)")
    parser.add_argument("--report-subset", choices=("reward", "evaluator", "all"), default="reward",
                        help="phantom: which half of the IU X-ray train reports (evaluators use the other half)")
    parser.add_argument("--phantom-seed", type=int, default=0, help="phantom: base seed of the renders")
    parser.add_argument("--renders-per-report", type=int, default=4, help="phantom: images rendered per report")
    parser.add_argument("--resolution", type=int, default=64, help="image size the model works at")
    parser.add_argument("--max-items", type=int, default=None, help="cap the number of training images")
    parser.add_argument("--data-cache", default=None, help="safetensors file caching the rendered/read training set")
    parser.add_argument("--mimic-root", default=None, help="mimic: MIMIC-CXR-JPG root directory")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--tokenizer", default=None,
                        help="consistency: the generator's tokenizer directory (default: build a CLIP-format BPE from the training prompts)")
    parser.add_argument("--vocab-size", type=int, default=2048, help="consistency: vocabulary of a tokenizer built here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def _load_data(args) -> dict:
    from cxrl.rewards.reward_data import (load_training_set, mimic_training_set, phantom_training_set,
                                          save_training_set)

    if args.data == "phantom":
        expected = {"source": "phantom", "subset": args.report_subset, "phantom_seed": args.phantom_seed,
                    "renders_per_report": args.renders_per_report, "resolution": args.resolution}
    else:
        if not args.mimic_root:
            raise ValueError("--data mimic needs --mimic-root DIR (the MIMIC-CXR-JPG root)")
        expected = {"source": "mimic", "root": str(args.mimic_root), "resolution": args.resolution}
    if args.data_cache:
        data = load_training_set(args.data_cache, expected)
        if data is not None and (args.max_items is None or data["meta"]["n"] >= args.max_items):
            print(f"training set: {data['meta']['n']} images from cache {args.data_cache}", flush=True)
            return _cap(data, args.max_items)
    if args.data == "phantom":
        data = phantom_training_set(args.report_subset, args.phantom_seed, args.renders_per_report, args.resolution, args.max_items)
    else:
        data = mimic_training_set(args.mimic_root, "train", args.resolution, args.max_items)
    print(f"training set: {json.dumps(data['meta'])}", flush=True)
    if args.data_cache:
        save_training_set(data, args.data_cache)
    return data


def _cap(data: dict, n) -> dict:
    if n is None or data["images"].shape[0] <= n:
        return data
    return {"images": data["images"][:n], "labels": data["labels"][:n], "prompts": data["prompts"][:n],
            "meta": {**data["meta"], "n": n}}


def run(args) -> int:
    import torch

    from cxrl.rewards.training import TrainConfig, config_dict, train_consistency, train_diagnostic, train_posture

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        data = _load_data(args)
    except (ValueError, FileNotFoundError) as err:  # bad arguments / missing data: a message, not a traceback
        print(f"cxrl train-reward: {err}", file=sys.stderr)
        return 2
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    images = data["images"]
    if args.kind == "posture":
        model, metrics = train_posture(images, cfg)
    elif args.kind == "diagnostic":
        model, metrics = train_diagnostic(images, data["labels"], cfg)
    else:
        from cxrl.rewards.consistency import load_tokenizer

        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            from cxrl.diffusion.tokenizer import build_clip_tokenizer

            tokenizer = build_clip_tokenizer(sorted(set(data["prompts"])), args.vocab_size, out / "tokenizer")
        model, metrics = train_consistency(images, data["prompts"], tokenizer, cfg, labels=data["labels"])
    extra = {
        "training": {"command": "cxrl train-reward " + args.kind, "data": data["meta"], "config": config_dict(cfg),
                     "seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__},
        "metrics": metrics,
    }
    model.save(out, extra)
    print(f"saved {args.kind} reward model to {out}: {json.dumps(metrics)}", flush=True)
    return 0
