"""``cxrl train``: RL fine-tuning. With no arguments it runs the demo config shipped in the package.

    cxrl train [--config FILE] [key=value ...] [--output DIR] [--resume DIR]
    torchrun --nproc_per_node N -m cxrl train ...        (data parallel; gloo on CPU, nccl on GPU)

``--resume DIR`` continues the run in DIR from its newest complete checkpoint, with the config the run
was started with (``DIR/config.yaml``) unless ``--config`` is given; overrides apply on top.
Every finished run saves the tuned generator to ``<output>/final`` (diffusers layout, ACE tokens in ``ace/``).
With ``eval.enabled`` (on in the demo config) it then evaluates base vs tuned on held-out prompts with the
held-out evaluators — the same path as ``cxrl evaluate`` (:func:`cxrl.eval.run.run_evaluation`): the
paper-layout table is printed and metrics.json / results.md / comparison.json / grids go to ``<output>/eval``.
Exit codes: 0 done, 2 bad config/missing input, 3 aborted on repeated non-finite updates, 1 other error.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cxrl.compose import build_generator, build_trainer, evaluation_inputs
from cxrl.config import load_config, to_yaml
from cxrl.diffusion.generator import save_generator
from cxrl.eval.run import run_evaluation
from cxrl.rl.distributed import init_distributed

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None, help="YAML config (default: the packaged demo config)")
    parser.add_argument("--output", default=None, help="run directory (overrides log.output_dir)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR from its last complete checkpoint")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.learning_rate=1e-4")


def resolve_config(args):
    config_path = args.config
    if args.resume and config_path is None:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (is it a cxrl run directory?); "
                                    "pass --config explicitly")
        config_path = saved
    cfg = load_config(config_path, args.overrides)
    if args.resume:
        cfg.log.output_dir = str(args.resume)
    elif args.output:
        cfg.log.output_dir = str(args.output)
    return cfg


def run(args) -> int:
    cfg = resolve_config(args)
    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    dist = init_distributed(cfg.model.device, cfg.dist.backend, cfg.dist.timeout_s)
    out = Path(cfg.log.output_dir)
    try:
        with dist.stage("setup"):
            trainer = build_trainer(cfg, dist=dist)
        if args.resume and not trainer.resume(out):
            log.info("no complete checkpoint in %s; starting from epoch 0", out / "checkpoints")
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.yaml").write_text(to_yaml(cfg))
        started = time.perf_counter()
        trainer.fit()
        log.info("done: %d epochs in %.0f s; outputs in %s", cfg.train.epochs, time.perf_counter() - started, out)
    finally:
        dist.close()
    if not dist.is_main:
        return 0
    save_final(cfg, trainer, out)
    if cfg.eval.enabled:
        final_evaluation(cfg, trainer, out)
    return 0


def save_final(cfg, trainer, out: Path) -> Path:
    """The tuned generator in the diffusers layout at ``<out>/final`` (what ``cxrl sample`` / ``cxrl evaluate`` load)."""
    final = save_generator(trainer.gen, out / "final", ace=trainer.policy.ace, overwrite=True)
    what = "full UNet weights" if cfg.model.finetune == "full" else "LoRA merged into the UNet"
    ace = ", ACE tokens in ace/" if trainer.policy.ace is not None else ""
    log.info("tuned generator saved to %s (%s%s)", final, what, ace)
    return final


def final_evaluation(cfg, trainer, out: Path) -> None:
    """Evaluate the tuned generator against a fresh load of the base (the untouched anchor)."""
    if cfg.eval.torch_threads:
        torch.set_num_threads(cfg.eval.torch_threads)
    base = build_generator(cfg.model, trainer.device, workdir=out / "work" / "rank0")
    inputs = evaluation_inputs(cfg, trainer.gen.resolution[0], trainer.device)
    extra = {"data": cfg.eval.source, "split": cfg.eval.split, "rl_prompt_split": cfg.data.split,
             "torch_threads": torch.get_num_threads(),
             "note": "scored by held-out evaluators, never the reward models the RL optimised"}
    aces = {"tuned": trainer.policy.ace} if trainer.policy.ace is not None else None
    evaluation = run_evaluation({"base": base, "tuned": trainer.gen}, inputs.items, inputs.evaluators,
                                inputs.feature_extractor, cfg.eval, cfg.sampling, aces=aces,
                                out_dir=out / cfg.eval.output_subdir, extra=extra)
    print("\n" + evaluation.table, flush=True)
    log.info("evaluation took %.0f s; metrics.json, results.md, comparison.json and grids/ in %s",
             evaluation.seconds, evaluation.out_dir)
