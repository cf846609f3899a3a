"""``cxrl pretrain``: train the demo base generator on the phantom world (docs/demo.md).

    cxrl pretrain --out cxrl/assets/base --overwrite                         # reproduces the shipped base
    cxrl pretrain --out /tmp/base pretrain.steps=200 pretrain.num_images=2000  # any 'pretrain' key as key=value
    cxrl pretrain --config my.yaml --out /tmp/base                           # the 'pretrain' section of a config

Renders ``num_images`` phantoms from the IU X-ray *train* reports (validation/test prompts stay held
out), trains the UNet + text encoder (cxrl.training.pretrain), saves the EMA weights in the diffusers
layout with ``pretrain.json`` beside them, and writes into ``--log-dir``: ``loss.jsonl`` (the loss
every ``--log-every`` steps) and ``samples.png`` — generated images for held-out validation prompts
(top rows) above phantoms rendered from the same reports (bottom rows).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from cxrl.config import load_config
from cxrl.diffusion.rollout import sample_images
from cxrl.eval.grids import save_grid
from cxrl.training.pretrain import pretrain, save_pretrained_base
from cxrl.training.pretrain_data import load_reports, render_training_set, report_texts

log = logging.getLogger(__name__)
GRID_SAMPLING = {"num_steps": 20, "guidance_scale": 3.0, "eta": 1.0}


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. pretrain.steps=200 pretrain.learning_rate=5e-4 (section "
                             "'pretrain' of cxrl/config/sections.py)")
    parser.add_argument("--config", type=Path, default=None, help="YAML config; its 'pretrain' section is used")
    parser.add_argument("--out", type=Path, default=Path("runs/pretrain/base"),
                        help="generator directory to write (default runs/pretrain/base; the shipped one is cxrl/assets/base)")
    parser.add_argument("--log-dir", type=Path, default=Path("runs/pretrain"),
                        help="loss.jsonl + samples.png (default runs/pretrain)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's choice; on a loaded machine 1 is often fastest)")
    parser.add_argument("--log-every", type=int, default=50, help="steps between loss records (default 50)")
    parser.add_argument("--grid-prompts", type=int, default=8, help="held-out prompts in samples.png (0: no grid)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def held_out_grid(gen, cfg, count: int, path: Path) -> Path:
    """Samples for ``count`` distinct validation prompts (half of them with findings) above phantoms
    rendered from the same reports."""
    reports = load_reports("validate", cfg.prompt_source)
    reference = render_training_set(reports, len(reports), cfg.resolution, cfg.seed + 1, cfg.posture_strength,
                                    split="validate")
    normal, abnormal, seen = [], [], set()
    for i, prompt in enumerate(reports.prompts):  # reference item i is report i
        if prompt in seen:
            continue
        seen.add(prompt)
        labels = reports.label_tensor(i)
        (abnormal if bool((labels[1:] == 1).any()) else normal).append(i)
    picks = (abnormal[: count - count // 2] + normal)[:count]
    prompts = [reports.prompts[i] for i in picks]
    generated = sample_images(gen, prompts, generator=cfg.seed, **GRID_SAMPLING)
    real = reference.images[picks].float() / 255.0
    images = torch.cat([generated, real])
    captions = [f"gen: {p}" for p in prompts] + [f"phantom: {p}" for p in prompts]
    return save_grid(images, captions, path, ncols=min(count, 4))


def run(args) -> int:
    cfg = load_config(args.config, args.overrides).pretrain
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out}: already exists (pass --overwrite to replace it)")
    log_dir = args.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    t0 = time.perf_counter()

    reports = load_reports("train", cfg.prompt_source)
    data = render_training_set(reports, cfg.num_images, cfg.resolution, cfg.seed, cfg.posture_strength,
                               split="train", progress=progress)
    render_s = time.perf_counter() - t0
    log.info("training set: %d phantoms at %d px from %d train reports (%d distinct prompts), rendered in %.0f s",
             len(data), cfg.resolution, len(reports), len(data.prompts), render_s)

    loss_log = (log_dir / "loss.jsonl").open("w")

    def on_log(record):
        loss_log.write(json.dumps(record) + "\n")
        loss_log.flush()
        if not progress:
            log.info("step %d: loss %.4f lr %.2e", record["step"], record["loss"], record["lr"])

    try:
        result = pretrain(cfg, data, report_texts(reports), progress=progress, log_every=args.log_every, on_log=on_log)
    finally:
        loss_log.close()
    extra = {"command": " ".join(["cxrl pretrain", *args.overrides]), "threads": torch.get_num_threads(),
             "render_s": round(render_s, 1), "train_images": len(data), "train_prompts": len(data.prompts)}
    out = save_pretrained_base(result, args.out, overwrite=args.overwrite, extra=extra)
    size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"saved base generator to {out} ({size_mb:.2f} MB): final loss {result.final_loss:.4f}, "
          f"training {result.wall_s:.0f} s", flush=True)
    if args.grid_prompts > 0:
        grid = held_out_grid(result.gen, cfg, args.grid_prompts, log_dir / "samples.png")
        print(f"sample grid: {grid}", flush=True)
    log.info("total wall time %.0f s", time.perf_counter() - t0)
    return 0
