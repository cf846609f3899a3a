"""``cxrl step-credit [--config FILE] [key=value ...]``: which DDIM steps of a config's sampler are worth training.

Prints, per step, the share of each reward's within-prompt variance that the step and everything after it decide
(branching the policy's trajectories there, :mod:`cxrl.rl.step_credit`) and the norm of the step's log-prob
gradient, then the ``train.skip_last_steps`` that drops the trailing steps deciding under ``--threshold`` of every
reward. ``--json FILE`` writes the numbers. The demo's table is in docs/method.md ("Which steps to train").
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from cxrl.compose import build_trainer
from cxrl.config import load_config
from cxrl.rl.step_credit import measure_step_credit, suggest_skip_last


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--config", default=None, help="YAML config (default: the packaged demo config)")
    parser.add_argument("--prompts", type=int, default=32, help="prompts drawn from the config's pool (default 32)")
    parser.add_argument("--branches", type=int, default=4, help="continuations per prompt and step (default 4)")
    parser.add_argument("--gradient-prompts", type=int, default=4, help="trajectories whose per-step gradient "
                        "norms are averaged (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="prompt draw and noises (default 0)")
    parser.add_argument("--threshold", type=float, default=0.02, help="a tail of steps deciding less than this "
                        "share of every reward's variance is suggested for train.skip_last_steps (default 0.02)")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements to this JSON file")


def format_table(credit, skip_last: int) -> str:
    names = list(credit.variance)
    head = ["step", "t", "sigma_t", "grad norm"] + [f"{n}: steps j.. decide" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    tails = {n: credit.tail_share(n) for n in names}
    for j, t in enumerate(credit.timesteps):
        cells = [str(j), str(t), f"{credit.sigma[j]:.4f}", f"{credit.grad_norm[j]:.3g}"]
        cells += [f"{100 * tails[n][j]:.1f}%" for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"suggested: train.skip_last_steps={skip_last}"
                 + (" (no trailing step is below the threshold)" if skip_last == 0 else ""))
    return "\n".join(lines)


def run(args) -> int:
    if args.prompts < 1 or args.gradient_prompts < 1:
        raise ValueError("--prompts and --gradient-prompts must be >= 1")
    if not 0 < args.threshold < 1:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    cfg = load_config(args.config, list(args.overrides) + ["eval.enabled=false", "monitor.every=0",
                                                          "train.final_policy=last"])
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cxrl-step-credit-") as work:
        trainer = build_trainer(cfg, output_dir=work)
        credit = measure_step_credit(trainer, num_prompts=args.prompts, branches=args.branches,
                                     gradient_prompts=args.gradient_prompts, seed=args.seed)
    skip = suggest_skip_last(credit, args.threshold)
    print(format_table(credit, skip))
    print(f"cxrl step-credit: {credit.prompts} prompts x {credit.branches} branches per step, "
          f"{time.perf_counter() - start:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({**asdict(credit), "suggested_skip_last_steps": skip}, indent=1))
    return 0
